"""Node credentials: `Authorization: Bearer <jwt>` (alone, when present) or the node key in
`X-Sentinel-Node-Key` (`X-Zentinel-Node-Key` accepted). The node in the path must be the
authenticated node (403 `node_mismatch`)."""

from __future__ import annotations

from collections.abc import Mapping

from flask import current_app, g, request

from blueprints.ids import parse_uuid
from sentinel_cp import nodes
from sentinel_cp.bundles import pollcache
from sentinel_cp.bundles.pollcache import PollCache
from sentinel_cp.db import hot_connection
from sentinel_cp.errors import Unauthorized

KEY_HEADERS = ("X-Sentinel-Node-Key", "X-Zentinel-Node-Key")


def require_node(path_node_id: str, *, hot: bool = False) -> nodes.NodeContext:
    """The authenticated node. `hot` reads the credential on an autocommit hot-path
    connection (closed when the request ends) that the endpoint then writes through.

    With the poll cache on, a good credential is remembered as who it is (`NodeWho`), for the
    status reports and downloads that follow (`require_node_who`)."""
    node_id = parse_uuid(path_node_id, "node_id")
    cache = pollcache.for_app(current_app)
    key = credential_key(path_node_id) if cache is not None else None
    version = cache.version if cache is not None else 0  # before the database read
    connection = None
    if hot:
        connection = g.hot_connection = hot_connection()
    header, value = presented_credential()
    if header == "Authorization":
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized(
                "Authorization header must be 'Bearer <token>'", code="invalid_authorization"
            )
        ctx = nodes.authenticate_token(token.strip(), connection=connection)
    else:
        if not value:
            raise Unauthorized("Missing node credentials", code="missing_credentials")
        ctx = nodes.authenticate_key(value, connection)
    nodes.require_same_node(ctx, node_id)
    g.node = ctx
    if cache is not None and key is not None:
        good_for_s = ctx.good_for_s(pollcache.MAX_AGE_S)
        cache.remember_who(key, ctx.who, str(ctx.node.project_id), version, good_for_s)
    return ctx


def require_node_who(path_node_id: str) -> nodes.NodeWho:
    """Who the authenticated node is (`require_node`, reduced to `NodeWho`), answered from the
    process's poll cache when this credential was found good and nothing but the node's own
    progress through a bundle happened to it since (`PollCache.who_for`)."""
    cache = pollcache.for_app(current_app)
    key = credential_key(path_node_id) if cache is not None else None
    if cache is not None and key is not None:
        who = cache.who_for(key)
        if who is not None:
            return who  # type: ignore[no-any-return]
    return require_node(path_node_id).who


def credential_key(path_node_id: str) -> tuple[str, str] | None:
    """(node, digest of the credential) this request presents, normalised the way
    `require_node` reads them — what the per-process node caches are keyed by; None when
    there is no credential or the node id is one `require_node` refuses."""
    header, value = presented_credential()
    if not value:
        return None
    return PollCache.credential_key(path_node_id, header, value)


def presented_credential() -> tuple[str, str]:
    """(header, value) of the credential this request presents: `Authorization` when present
    (it alone counts), else the node key header; ("", "") when there is none."""
    return credential_in(request.headers)


def credential_in(headers: Mapping[str, str]) -> tuple[str, str]:
    """`presented_credential` of any request's headers (case-insensitive mapping)."""
    header = headers.get("Authorization")
    if header is not None:
        return "Authorization", header
    for name in KEY_HEADERS:
        value = headers.get(name)
        if value is not None:
            return name, value
    return "", ""


def close_hot_connection(_exc: BaseException | None) -> None:
    connection = g.pop("hot_connection", None)
    if connection is not None:
        connection.close()
