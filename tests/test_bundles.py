"""Bundles end to end through the API: submit, compile on a real RQ worker, sign, store, serve,
report, revoke, collect — on SQLite + embedded Redis and on PostgreSQL + Redis."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
from datetime import timedelta
from typing import Any

import pytest
from bundle_helpers import (
    BROKEN,
    CONFIG,
    operator_key,
    register_node,
    route_config,
    run_jobs,
    setup_project,
    submit,
)
from conftest import bearer, make_project
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select, update

from sentinel_cp.audit import AuditLog
from sentinel_cp.bundles import compiler, distribution, gc
from sentinel_cp.bundles.models import Bundle
from sentinel_cp.db import db, utcnow
from sentinel_cp.errors import Conflict, Unavailable

INCLUDE_MAIN = CONFIG.replace("upstreams {", 'include "upstreams.kdl"\nupstreams_placeholder {', 1)


@pytest.fixture
def key(app: Any) -> str:
    setup_project(app)
    return operator_key(app)


@pytest.fixture
def compiled(client: Any, app: Any, backend: Any, key: str) -> dict[str, Any]:
    response = submit(client, key, CONFIG, "v1")
    assert response.status_code == 201, response.get_json()
    run_jobs(app, backend.redis_url)
    return client.get(
        f"/api/v1/projects/default/bundles/{response.get_json()['id']}", headers=bearer(key)
    ).get_json()


def actions(app: Any, action: str) -> list[AuditLog]:
    with app.app_context():
        return list(db.session.scalars(select(AuditLog).where(AuditLog.action == action)))


def assign(app: Any, bundle_id: str, *node_ids: str) -> None:
    import uuid

    with app.app_context():
        bundle = db.session.get(Bundle, bundle_id)
        distribution.assign(bundle, [uuid.UUID(n) for n in node_ids])
        db.session.commit()


def node_headers(key: str) -> dict[str, str]:
    return {"X-Sentinel-Node-Key": key}


# --- submission -----------------------------------------------------------------------------


def test_submission_answers_201_pending_with_the_content_address(client: Any, key: str) -> None:
    response = submit(client, key, CONFIG, "v1")
    assert response.status_code == 201
    body = response.get_json()
    assert body["status"] == "pending"
    assert body["id"] == body["checksum"] and len(body["id"]) == 64
    assert body["existing"] is False


def test_identical_content_returns_the_existing_bundle(client: Any, key: str) -> None:
    first = submit(client, key, CONFIG, "v1").get_json()
    again = submit(client, key, CONFIG, "v2")
    assert again.status_code == 200
    assert again.get_json()["id"] == first["id"]
    assert again.get_json()["existing"] is True
    assert again.get_json()["version"] == "v1"


def test_a_taken_version_is_409(client: Any, key: str) -> None:
    submit(client, key, CONFIG, "v1")
    response = submit(client, key, route_config(2), "v1")
    assert response.status_code == 409
    assert response.get_json()["code"] == "version_taken"


def test_multi_file_json_with_include_compiles(
    client: Any, app: Any, backend: Any, key: str
) -> None:
    upstreams = 'upstreams {\n    upstream "backend" {\n        target "127.0.0.1:9000"\n    }\n}\n'
    main = CONFIG.split("upstreams {")[0] + 'include "routes/*.kdl"\n'
    response = client.post(
        "/api/v1/projects/default/bundles",
        json={"version": "v1", "files": {"sentinel.kdl": main, "routes/up.kdl": upstreams}},
        headers=bearer(key),
    )
    assert response.status_code == 201, response.get_json()
    run_jobs(app, backend.redis_url)
    body = client.get(
        f"/api/v1/projects/default/bundles/{response.get_json()['id']}", headers=bearer(key)
    ).get_json()
    assert body["status"] == "compiled", body["errors"]
    assert body["files"] == ["routes/up.kdl", "sentinel.kdl"]
    text = client.get(
        f"/api/v1/projects/default/bundles/{body['id']}/files/routes/up.kdl", headers=bearer(key)
    )
    assert text.status_code == 200 and text.get_data(as_text=True) == upstreams


def test_multipart_kdl_upload_is_accepted(client: Any, key: str) -> None:
    response = client.post(
        "/api/v1/projects/default/bundles",
        data={"version": "v1", "files": [(io.BytesIO(CONFIG.encode()), "sentinel.kdl")]},
        headers=bearer(key),
        content_type="multipart/form-data",
    )
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["files"] == ["sentinel.kdl"]


def test_multipart_targz_upload_is_accepted(client: Any, key: str) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        data = CONFIG.encode()
        info = tarfile.TarInfo("config/sentinel.kdl")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    response = client.post(
        "/api/v1/projects/default/bundles",
        data={"version": "v1", "files": [(io.BytesIO(buffer.getvalue()), "config.tar.gz")]},
        headers=bearer(key),
        content_type="multipart/form-data",
    )
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["source_type"] == "upload"


def test_a_targz_with_a_symlink_is_422_naming_it(client: Any, key: str) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        data = CONFIG.encode()
        info = tarfile.TarInfo("sentinel.kdl")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("evil.kdl")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        archive.addfile(link)
    response = client.post(
        "/api/v1/projects/default/bundles",
        data={"version": "v1", "files": [(io.BytesIO(buffer.getvalue()), "c.tar.gz")]},
        headers=bearer(key),
        content_type="multipart/form-data",
    )
    assert response.status_code == 422
    assert "evil.kdl" in json.dumps(response.get_json()["fields"])


@pytest.mark.parametrize(
    "body,field",
    [
        ({"version": "v1", "files": {"../etc/sentinel.kdl": "x"}}, "../etc/sentinel.kdl"),
        ({"version": "v1", "files": {"/abs/sentinel.kdl": "x"}}, "/abs/sentinel.kdl"),
        ({"version": "v1", "files": {"routes.kdl": "x"}}, "sentinel.kdl"),
        ({"version": "has space", "config_source": CONFIG}, "version"),
        ({"version": "v1", "config_source": 5}, "config_source"),
        ({"version": "v1"}, "files"),  # one of files or config_source
    ],
)
def test_bad_submissions_are_422_naming_the_field(
    client: Any, key: str, body: dict[str, Any], field: str
) -> None:
    response = client.post("/api/v1/projects/default/bundles", json=body, headers=bearer(key))
    assert response.status_code == 422, response.get_json()
    assert field in json.dumps(response.get_json()["fields"])


def test_malformed_json_is_400(client: Any, key: str) -> None:
    response = client.post(
        "/api/v1/projects/default/bundles",
        data=b'{"version": "v1", "config_source": ',
        headers={**bearer(key), "Content-Type": "application/json"},
    )
    assert response.status_code == 400


def test_a_huge_submission_is_413(client: Any, key: str) -> None:
    response = client.post(
        "/api/v1/projects/default/bundles",
        json={"version": "v1", "config_source": "x" * (5 * 1024 * 1024)},
        headers=bearer(key),
    )
    assert response.status_code == 413


def test_more_than_a_mebibyte_of_source_is_422(client: Any, key: str) -> None:
    files = {"sentinel.kdl": CONFIG, **{f"f{i}.kdl": "// " + "x" * 300_000 for i in range(4)}}
    response = client.post(
        "/api/v1/projects/default/bundles",
        json={"version": "v1", "files": files},
        headers=bearer(key),
    )
    assert response.status_code == 422


def test_a_reader_cannot_submit(client: Any, app: Any, key: str) -> None:
    from conftest import make_key, make_user

    make_user(app, "reader@example.com", "reader")
    reader = make_key(app, "reader@example.com", ["bundles:read"])
    response = submit(client, reader, CONFIG, "v1")
    assert response.status_code == 403


# --- compile --------------------------------------------------------------------------------


def test_compile_job_signs_stores_and_audits(
    client: Any, app: Any, compiled: dict[str, Any], key: str
) -> None:
    assert compiled["status"] == "compiled"
    assert compiled["signed"] is True
    assert compiled["risk_level"] == "low" and compiled["risk_reasons"] == ["initial"]
    verify = client.get(
        f"/api/v1/projects/default/bundles/{compiled['id']}/verify", headers=bearer(key)
    ).get_json()
    assert verify["verified"] is True and verify["checksum_valid"] is True
    assert [row.resource_id for row in actions(app, "bundle.compiled")] == [compiled["id"]]
    assert len(actions(app, "bundle.submitted")) == 1


def test_the_id_is_the_sha256_of_the_downloaded_archive(
    client: Any, compiled: dict[str, Any], key: str
) -> None:
    archive = client.get(
        f"/api/v1/projects/default/bundles/{compiled['id']}/download", headers=bearer(key)
    )
    assert archive.status_code == 200
    assert hashlib.sha256(archive.data).hexdigest() == compiled["id"]


def test_an_invalid_config_fails_with_errors_at_their_line(
    client: Any, app: Any, backend: Any, key: str
) -> None:
    bundle_id = submit(client, key, BROKEN, "bad").get_json()["id"]
    run_jobs(app, backend.redis_url)
    body = client.get(
        f"/api/v1/projects/default/bundles/{bundle_id}", headers=bearer(key)
    ).get_json()
    assert body["status"] == "failed"
    error = body["errors"][0]
    assert error["file"] == "sentinel.kdl" and error["line"] > 1 and "nowhere" in error["message"]
    assert body["signed"] is False
    download = client.get(
        f"/api/v1/projects/default/bundles/{bundle_id}/download", headers=bearer(key)
    )
    assert download.status_code == 404
    assert len(actions(app, "bundle.failed")) == 1


def test_running_a_compile_twice_records_one_outcome(
    client: Any, app: Any, compiled: dict[str, Any]
) -> None:
    with app.app_context():
        assert compiler.compile_bundle(compiled["id"]) is None
    assert len(actions(app, "bundle.compiled")) == 1


def test_a_compile_left_by_a_dead_worker_is_recovered(
    client: Any, app: Any, backend: Any, key: str
) -> None:
    bundle_id = submit(client, key, CONFIG, "v1").get_json()["id"]
    with app.app_context():
        # what a worker killed after its claim leaves behind
        db.session.execute(
            update(Bundle)
            .where(Bundle.id == bundle_id)
            .values(status="compiling", compile_started_at=utcnow(), compile_attempts=1)
        )
        db.session.commit()
    run_jobs(app, backend.redis_url)  # the original job finds a fresh claim and leaves it
    with app.app_context():
        assert db.session.get(Bundle, bundle_id).status == "compiling"
        later = utcnow() + compiler.COMPILE_TIMEOUT + timedelta(seconds=1)
        assert compiler.recover_stuck_compiles(now=later) == [bundle_id]
        assert compiler.compile_bundle(bundle_id, now=later) == "compiled"
        assert db.session.get(Bundle, bundle_id).compile_attempts == 2
    assert len(actions(app, "bundle.compiled")) == 1


def test_storage_down_leaves_the_bundle_pending_then_fails_it_after_retries(
    client: Any, app: Any, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle_id = submit(client, key, CONFIG, "v1").get_json()["id"]

    def down(_self: Any, _key: str, _data: bytes) -> bool:
        raise Unavailable("S3 bucket sentinel-bundles is unreachable; retry later")

    with app.app_context():
        monkeypatch.setattr(type(app.extensions["sentinel_storage"]), "put", down)
        assert compiler.compile_bundle(bundle_id) == "pending"
        row = db.session.get(Bundle, bundle_id)
        db.session.refresh(row)
        assert "unreachable" in row.output["last_error"]
        for _ in range(compiler.MAX_ATTEMPTS - 1):
            outcome = compiler.compile_bundle(bundle_id)
        assert outcome == "failed"
        db.session.refresh(row)
        assert row.errors[0]["code"] == "storage_unavailable"
        monkeypatch.undo()

    # Storage is back: submitting the same content again compiles it (it is the same bundle).
    again = submit(client, key, CONFIG, "v1")
    assert again.status_code == 200
    assert (again.get_json()["id"], again.get_json()["status"]) == (bundle_id, "pending")
    with app.app_context():
        assert compiler.compile_bundle(bundle_id) == "compiled"
    assert len(actions(app, "bundle.retried")) == 1
    assert submit(client, key, CONFIG, "v1").get_json()["status"] == "compiled"  # a no-op now
    assert len(actions(app, "bundle.retried")) == 1


def test_validate_is_a_dry_run(client: Any, app: Any, key: str) -> None:
    response = client.post(
        "/api/v1/projects/default/bundles/validate",
        json={"config_source": BROKEN},
        headers=bearer(key),
    )
    assert response.status_code == 200
    body = response.get_json()
    assert body["valid"] is False and body["errors"][0]["line"] > 1
    with app.app_context():
        assert db.session.scalars(select(Bundle)).all() == []


def test_list_filters_by_status_and_pages(client: Any, app: Any, backend: Any, key: str) -> None:
    for i in range(3):
        submit(client, key, route_config(i + 1), f"v{i}")
    submit(client, key, BROKEN, "bad")
    run_jobs(app, backend.redis_url)
    failed = client.get(
        "/api/v1/projects/default/bundles?status=failed", headers=bearer(key)
    ).get_json()
    assert [b["version"] for b in failed["items"]] == ["bad"]
    first = client.get("/api/v1/projects/default/bundles?limit=2", headers=bearer(key)).get_json()
    assert first["total"] == 4 and len(first["items"]) == 2
    rest = client.get(
        f"/api/v1/projects/default/bundles?limit=2&cursor={first['next_cursor']}",
        headers=bearer(key),
    ).get_json()
    seen = [b["id"] for b in first["items"] + rest["items"]]
    assert len(set(seen)) == 4
    bad = client.get("/api/v1/projects/default/bundles?status=nope", headers=bearer(key))
    assert bad.status_code == 422


def test_diff_shows_files_and_semantic_changes(
    client: Any, app: Any, backend: Any, key: str
) -> None:
    old = submit(client, key, route_config(1), "v1").get_json()["id"]
    new = submit(client, key, route_config(3), "v2").get_json()["id"]
    run_jobs(app, backend.redis_url)
    body = client.get(
        f"/api/v1/projects/default/bundles/{new}/diff?against={old}", headers=bearer(key)
    ).get_json()
    assert body["files"][0]["path"] == "sentinel.kdl" and "+" in body["files"][0]["diff"]
    assert sorted(body["summary"]["routes"]["added"]) == ["r1", "r2"]
    shown = client.get(f"/api/v1/projects/default/bundles/{new}", headers=bearer(key)).get_json()
    assert shown["parent_bundle_id"] == old


def test_sbom_lists_every_file_with_its_hash(
    client: Any, compiled: dict[str, Any], key: str
) -> None:
    body = client.get(
        f"/api/v1/projects/default/bundles/{compiled['id']}/sbom", headers=bearer(key)
    ).get_json()
    assert body["bomFormat"] == "CycloneDX"
    assert [c["name"] for c in body["components"]] == ["sentinel.kdl"]


def test_another_projects_bundle_is_404(
    client: Any, app: Any, compiled: dict[str, Any], key: str
) -> None:
    make_project(app, "other")
    response = client.get(f"/api/v1/projects/other/bundles/{compiled['id']}", headers=bearer(key))
    assert response.status_code == 404
    assert (
        client.get("/api/v1/projects/default/bundles/xyz", headers=bearer(key)).status_code == 404
    )


# --- distribution ---------------------------------------------------------------------------


def test_a_node_polls_downloads_verifies_and_reports_its_way_to_active(
    client: Any, app: Any, compiled: dict[str, Any]
) -> None:
    node_id, node_key = register_node(client, "edge-1")
    headers = node_headers(node_key)
    nothing = client.get(f"/api/v1/nodes/{node_id}/bundles/latest", headers=headers)
    assert nothing.get_json() == {"no_update": True, "poll_after_s": 30}
    assign(app, compiled["id"], node_id)
    offer = client.get(f"/api/v1/nodes/{node_id}/bundles/latest", headers=headers)
    body = offer.get_json()
    assert body["bundle_id"] == compiled["id"] == body["checksum"]
    assert body["download_url"].endswith(
        f"/api/v1/nodes/{node_id}/bundles/{compiled['id']}/download"
    )
    archive = client.get(body["download_url"], headers=headers)
    assert archive.status_code == 200 and archive.headers["Content-Type"] == "application/zstd"
    assert hashlib.sha256(archive.data).hexdigest() == body["checksum"]
    keys = client.get("/api/v1/projects/default/signing-keys").get_json()["keys"]
    public = next(k for k in keys if k["kid"] == body["signing_key_id"])
    message = f"sentinel-bundle-v1\n{body['project_id']}\n{body['checksum']}".encode()
    Ed25519PublicKey.from_public_bytes(base64.b64decode(public["public_key"])).verify(
        base64.b64decode(body["signature"]), message
    )
    for state in ("downloaded", "staged", "activated", "verified"):
        reply = client.post(
            f"/api/v1/nodes/{node_id}/bundles/{compiled['id']}/{state}", json={}, headers=headers
        )
        assert reply.get_json() == {"status": "ok", "state": state}
    with app.app_context():
        from sentinel_cp.nodes import Node

        assert (
            db.session.get(Node, __import__("uuid").UUID(node_id)).active_bundle_id
            == compiled["id"]
        )
    after = client.get(f"/api/v1/nodes/{node_id}/bundles/latest", headers=headers)
    assert after.get_json()["no_update"] is True


def test_a_delivery_row_keeps_what_each_report_said(
    client: Any, app: Any, compiled: dict[str, Any]
) -> None:
    """A report's reason and logs are stored and kept by later reports that send none; each
    state is timed: `activated` sets `activated_at`, `verified` sets `verified_at` and keeps
    the activation time (or takes its own when `activated` was never reported)."""
    import uuid

    from sentinel_cp.bundles.models import NodeBundleStatus

    def delivery(node_id: str) -> NodeBundleStatus:
        with app.app_context():
            row = db.session.scalars(
                select(NodeBundleStatus).where(NodeBundleStatus.node_id == uuid.UUID(node_id))
            ).one()
            db.session.expunge(row)
            return row

    def report(node: tuple[str, str], state: str, **body: str) -> None:
        url = f"/api/v1/nodes/{node[0]}/bundles/{compiled['id']}/{state}"
        reply = client.post(url, json=body, headers=node_headers(node[1]))
        assert reply.get_json() == {"status": "ok", "state": state}

    edge, other = register_node(client, "edge-1"), register_node(client, "edge-2")
    for node_id, _ in (edge, other):
        assign(app, compiled["id"], node_id)
    report(edge, "downloaded", reason="cache miss", logs="fetched 18231 bytes")
    report(edge, "staged")
    row = delivery(edge[0])
    assert (row.state, row.reason, row.logs) == ("staged", "cache miss", "fetched 18231 bytes")
    assert row.activated_at is None and row.verified_at is None
    report(edge, "activated", logs="reloaded")
    activated = delivery(edge[0])
    assert activated.activated_at is not None and activated.logs == "reloaded"
    assert activated.reason == "cache miss"
    report(edge, "verified")
    verified = delivery(edge[0])
    assert verified.state == "verified" and verified.activated_at == activated.activated_at
    assert verified.verified_at is not None and verified.verified_at >= verified.activated_at
    report(other, "verified")  # straight to verified: activated then as well
    straight = delivery(other[0])
    assert straight.activated_at == straight.verified_at is not None
    assert straight.reason is None and straight.logs is None


def test_a_matching_etag_gets_304(client: Any, app: Any, compiled: dict[str, Any]) -> None:
    node_id, node_key = register_node(client, "edge-1")
    assign(app, compiled["id"], node_id)
    first = client.get(f"/api/v1/nodes/{node_id}/bundles/latest", headers=node_headers(node_key))
    again = client.get(
        f"/api/v1/nodes/{node_id}/bundles/latest",
        headers={**node_headers(node_key), "If-None-Match": first.headers["ETag"]},
    )
    assert again.status_code == 304 and again.data == b""


def test_status_reports_move_forward_only_and_repeat_safely(
    client: Any, app: Any, compiled: dict[str, Any]
) -> None:
    node_id, node_key = register_node(client, "edge-1")
    assign(app, compiled["id"], node_id)
    url = f"/api/v1/nodes/{node_id}/bundles/{compiled['id']}"
    headers = node_headers(node_key)
    assert client.post(f"{url}/staged", json={}, headers=headers).status_code == 200
    assert client.post(f"{url}/staged", json={}, headers=headers).status_code == 200
    backwards = client.post(f"{url}/downloaded", json={}, headers=headers)
    assert backwards.status_code == 409
    assert backwards.get_json()["code"] == "invalid_transition"
    failed = client.post(f"{url}/failed", json={"reason": "bad signature"}, headers=headers)
    assert failed.status_code == 200
    assert client.post(f"{url}/verified", json={}, headers=headers).status_code == 409
    assert [r.changes for r in actions(app, "node.bundle_staged")] == [
        {"state": ["assigned", "staged"]}
    ]
    assert client.post(f"{url}/exploded", json={}, headers=headers).status_code == 404


def test_a_report_for_a_bundle_never_assigned_is_404(client: Any, compiled: dict[str, Any]) -> None:
    node_id, node_key = register_node(client, "edge-1")
    response = client.post(
        f"/api/v1/nodes/{node_id}/bundles/{compiled['id']}/downloaded",
        json={},
        headers=node_headers(node_key),
    )
    assert response.status_code == 404


def test_a_node_cannot_download_a_bundle_it_was_not_given(
    client: Any, app: Any, compiled: dict[str, Any]
) -> None:
    node_id, node_key = register_node(client, "edge-1")
    other_id, _ = register_node(client, "edge-2")
    assign(app, compiled["id"], other_id)
    response = client.get(
        f"/api/v1/nodes/{node_id}/bundles/{compiled['id']}/download",
        headers=node_headers(node_key),
    )
    assert response.status_code == 404
    mismatch = client.get(
        f"/api/v1/nodes/{other_id}/bundles/{compiled['id']}/download",
        headers=node_headers(node_key),
    )
    assert mismatch.status_code == 403


def test_heartbeat_names_the_assigned_bundle(
    client: Any, app: Any, compiled: dict[str, Any]
) -> None:
    node_id, node_key = register_node(client, "edge-1")
    assign(app, compiled["id"], node_id)
    reply = client.post(
        f"/api/v1/nodes/{node_id}/heartbeat", json={}, headers=node_headers(node_key)
    )
    assert reply.get_json()["assigned_bundle_id"] == compiled["id"]


def test_revoking_stops_every_poll_and_refuses_rollouts(
    client: Any, app: Any, compiled: dict[str, Any], key: str
) -> None:
    node_id, node_key = register_node(client, "edge-1")
    assign(app, compiled["id"], node_id)
    revoked = client.post(
        f"/api/v1/projects/default/bundles/{compiled['id']}/revoke",
        json={"reason": "leaks a header"},
        headers=bearer(key),
    )
    assert revoked.status_code == 200 and revoked.get_json()["status"] == "revoked"
    poll = client.get(f"/api/v1/nodes/{node_id}/bundles/latest", headers=node_headers(node_key))
    assert poll.get_json()["no_update"] is True
    beat = client.post(
        f"/api/v1/nodes/{node_id}/heartbeat", json={}, headers=node_headers(node_key)
    )
    assert beat.get_json()["assigned_bundle_id"] is None
    download = client.get(
        f"/api/v1/nodes/{node_id}/bundles/{compiled['id']}/download",
        headers=node_headers(node_key),
    )
    assert download.status_code == 404
    with app.app_context():
        bundle = db.session.get(Bundle, compiled["id"])
        with pytest.raises(Conflict) as refused:
            distribution.require_distributable(bundle)
        assert refused.value.code == "bundle_revoked"
    again = client.post(
        f"/api/v1/projects/default/bundles/{compiled['id']}/revoke", json={}, headers=bearer(key)
    )
    assert again.status_code == 409
    assert len(actions(app, "bundle.revoked")) == 1


# --- garbage collection ---------------------------------------------------------------------


def test_gc_deletes_only_unreferenced_old_artifacts_and_keeps_rows(
    client: Any, app: Any, backend: Any, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gc, "KEEP_NEWEST", 1)
    ids = [submit(client, key, route_config(i + 1), f"v{i}").get_json()["id"] for i in range(3)]
    run_jobs(app, backend.redis_url)
    node_id, _ = register_node(client, "edge-1")
    assign(app, ids[0], node_id)  # in use: kept
    later = utcnow() + gc.RETENTION + timedelta(days=1)
    with app.app_context():
        dry = gc.collect(dry_run=True, now=later)
        assert [b["id"] for b in dry["bundles"]] == [ids[1]]  # ids[2] is the newest
        assert db.session.get(Bundle, ids[1]).artifact_deleted_at is None
        done = gc.collect(dry_run=False, now=later)
        assert [b["id"] for b in done["bundles"]] == [ids[1]]
        row = db.session.get(Bundle, ids[1])
        db.session.refresh(row)
        assert row.artifact_deleted_at is not None
        assert not app.extensions["sentinel_storage"].exists(row.storage_key)
        assert gc.collect(dry_run=False, now=later)["bundles"] == []
    verify = client.get(f"/api/v1/projects/default/bundles/{ids[1]}/verify", headers=bearer(key))
    assert verify.get_json()["artifact_present"] is False


def test_a_node_with_a_jwt_polls_and_heartbeats(
    client: Any, app: Any, compiled: dict[str, Any]
) -> None:
    node_id, node_key = register_node(client, "edge-1")
    assign(app, compiled["id"], node_id)
    token = client.post(
        f"/api/v1/nodes/{node_id}/token", json={}, headers=node_headers(node_key)
    ).get_json()["token"]
    poll = client.get(f"/api/v1/nodes/{node_id}/bundles/latest", headers=bearer(token))
    assert poll.status_code == 200 and poll.get_json()["bundle_id"] == compiled["id"]
    beat = client.post(f"/api/v1/nodes/{node_id}/heartbeat", json={}, headers=bearer(token))
    assert beat.status_code == 200 and beat.get_json()["assigned_bundle_id"] == compiled["id"]
