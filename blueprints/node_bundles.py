"""The node side of distribution (spec/node-protocol.md): poll, download, status reports."""

from __future__ import annotations

from typing import Any

from flask import (
    Blueprint,
    Response,
    current_app,
    g,
    jsonify,
    redirect,
    request,
    stream_with_context,
    url_for,
)

from blueprints import node_auth
from blueprints.api import route
from blueprints.schemas import (
    BundleStatusReportIn,
    BundleStatusReportOut,
    PollOut,
)
from sentinel_cp import metrics, nodes, storage
from sentinel_cp.bundles import distribution, pollcache
from sentinel_cp.bundles.archive import MEDIA_TYPE
from sentinel_cp.db import db
from sentinel_cp.errors import NotFound

bp = Blueprint("node_bundles", __name__, url_prefix="/api/v1")
bp.teardown_request(node_auth.close_hot_connection)
SMALL_BODY = 64 * 1024
PRESIGNED_TTL_S = 300


def cached_not_modified(node_id: str) -> Response | None:
    """304 from the process's poll cache when this credential was last answered with the
    ETag the node sends (see `pollcache`); None sends the poll down the normal path."""
    cache = pollcache.for_app(current_app)
    if cache is None:
        return None
    key = node_auth.credential_key(node_id)
    if key is None:
        return None
    g.poll_cache = (cache, key, cache.version)  # the version before the database read
    etag = cache.etag_for(key) if request.if_none_match else None
    if etag is None or not request.if_none_match.contains(etag):
        return None
    metrics.NODE_POLLS.labels("304").inc()
    metrics.POLL_CACHE_HITS.inc()
    response = Response(status=304)
    response.set_etag(etag)
    return response


@route(
    bp,
    "/nodes/<node_id>/bundles/latest",
    auth_mode="node",
    summary="What the node should run: an offer or no_update (ETag / If-None-Match → 304)",
    response=PollOut,
    responses={304: "Not modified: If-None-Match holds the current ETag"},
    hot=True,
    shortcut=cached_not_modified,
)
def poll(node: nodes.NodeContext) -> Any:
    identity = node.node
    answer, etag = distribution.poll_answer(
        node_id=identity.id,
        project_id=identity.project_id,
        active_bundle_id=identity.active_bundle_id,
        assigned=identity.assigned,
        rollout_id=identity.assigned_rollout_id,
        poll_after_s=identity.poll_after_s(node.settings),
        download_url=url_for(
            "node_bundles.download",
            node_id=str(identity.id),
            bundle_id=identity.offered_bundle_id or "-",
            _external=True,
        ),
    )
    unchanged = request.if_none_match.contains(etag)
    metrics.NODE_POLLS.labels("304" if unchanged else "200").inc()
    response = Response(status=304) if unchanged else jsonify(answer)
    response.set_etag(etag)
    _remember(etag, node)
    return response


def _remember(etag: str, node: nodes.NodeContext) -> None:
    remembered = g.pop("poll_cache", None)
    if remembered is None:
        return
    cache, key, version = remembered
    identity = node.node
    cache.remember(
        key,
        etag,
        str(identity.project_id),
        version,
        node.good_for_s(pollcache.MAX_AGE_S),
        identity.waits_on,
    )


@route(
    bp,
    "/nodes/<node_id>/bundles/<bundle_id>/download",
    auth_mode="node",
    summary="The archive of the node's assigned or active bundle (or 302 to a presigned URL)",
    produces=MEDIA_TYPE,
    responses={302: "redirect to object storage"},
    who_only=True,
)
def download(node: nodes.NodeWho, bundle_id: str) -> Any:
    bundle = distribution.downloadable(node.project_id, node.id, bundle_id)
    db.session.commit()
    backend = storage.current()
    url = backend.presigned_url(bundle.storage_key, PRESIGNED_TTL_S)
    if url is not None:
        return redirect(url, code=302)
    chunks, size = backend.stream(bundle.storage_key)
    response = Response(stream_with_context(chunks), mimetype=MEDIA_TYPE)
    response.headers["Content-Length"] = str(size)
    response.headers["ETag"] = f'"{bundle.id}"'
    return response


@route(
    bp,
    "/nodes/<node_id>/bundles/<bundle_id>/<state>",
    "POST",
    auth_mode="node",
    summary="Report progress with a bundle: downloaded, staged, activated, verified, failed, "
    "rolled_back",
    body=BundleStatusReportIn,
    response=BundleStatusReportOut,
    max_body=SMALL_BODY,
    responses={409: "invalid_transition"},
    who_only=True,
)
def report(
    node: nodes.NodeWho, bundle_id: str, state: str, body: BundleStatusReportIn
) -> dict[str, Any]:
    if state not in distribution.REPORTABLE:
        raise NotFound(f"Unknown state {state}", code="unknown_state")
    distribution.report_status(
        node_id=node.id,
        node_name=node.name,
        project_id=node.project_id,
        bundle_id=bundle_id,
        state=state,
        reason=body.reason,
        logs=body.logs,
    )
    db.session.commit()
    return {"status": "ok", "state": state}
