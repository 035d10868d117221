"""Nodes and groups for operators: list, stats, show, labels, delete, revoke, history."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from blueprints.api import page_body, route
from blueprints.ids import parse_uuid
from blueprints.projects import visible_project
from blueprints.schemas import (
    GroupCreateIn,
    GroupListOut,
    GroupOut,
    GroupPatchIn,
    HeartbeatSampleOut,
    ListOut,
    NodeEventOut,
    NodeOut,
    NodePatchIn,
    NodeQuery,
    NodeStatsOut,
    PageQuery,
    SigningKeyOut,
    StatusOut,
)
from sentinel_cp import nodes, signing
from sentinel_cp.accounts import Principal
from sentinel_cp.db import db

bp = Blueprint("nodes", __name__, url_prefix="/api/v1/projects/<slug>")
READ, WRITE = "nodes:read", "nodes:write"


def _node(principal: Principal, slug: str, node_id: str) -> nodes.Node:
    project = visible_project(principal, slug)
    return nodes.get_node(project.id, parse_uuid(node_id, "node_id"))


@route(
    bp,
    "/nodes",
    summary="List nodes (filters: status, label=k:v, version, bundle, drifted, q, group)",
    scope=READ,
    query=NodeQuery,
    response=ListOut[NodeOut],
)
def list_nodes(principal: Principal, slug: str, query: NodeQuery) -> dict[str, Any]:
    project = visible_project(principal, slug)
    labels: dict[str, str] = {}
    for pair in query.label:
        key, _, value = pair.partition(":")
        labels[key] = value
    filters = nodes.NodeFilter(
        status=query.status,
        labels=labels,
        version=query.version,
        bundle=query.bundle,
        drifted=query.drifted,
        q=query.q,
        group=query.group,
    )
    page = nodes.list_nodes(project.id, filters, limit=query.limit, cursor=query.cursor)
    db.session.commit()
    return page_body(page, lambda node: node.to_dict())


@route(
    bp,
    "/nodes/stats",
    summary="Node counts by status and by active bundle",
    scope=READ,
    response=NodeStatsOut,
)
def stats(principal: Principal, slug: str) -> dict[str, Any]:
    result = nodes.node_stats(visible_project(principal, slug).id)
    db.session.commit()
    return result


@route(bp, "/nodes/<node_id>", summary="Show a node", scope=READ, response=NodeOut)
def show_node(principal: Principal, slug: str, node_id: str) -> dict[str, Any]:
    node = _node(principal, slug, node_id)
    db.session.commit()
    return node.to_dict()


@route(
    bp,
    "/nodes/<node_id>",
    "PATCH",
    summary="Replace a node's labels",
    scope=WRITE,
    body=NodePatchIn,
    response=NodeOut,
)
def update_node(principal: Principal, slug: str, node_id: str, body: NodePatchIn) -> dict[str, Any]:
    node = nodes.set_labels(principal.actor, _node(principal, slug, node_id), body.labels)
    db.session.commit()
    return node.to_dict()


@route(
    bp,
    "/nodes/<node_id>",
    "DELETE",
    summary="Delete a node (its credentials die with it)",
    scope=WRITE,
    response=StatusOut,
)
def delete_node(principal: Principal, slug: str, node_id: str) -> dict[str, str]:
    nodes.delete_node(principal.actor, _node(principal, slug, node_id))
    db.session.commit()
    return {"status": "deleted"}


@route(
    bp,
    "/nodes/<node_id>/revoke-key",
    "POST",
    summary="Invalidate the node's key and tokens (it must re-register)",
    scope=WRITE,
    response=NodeOut,
)
def revoke_key(principal: Principal, slug: str, node_id: str) -> dict[str, Any]:
    node = nodes.revoke_credentials(principal.actor, _node(principal, slug, node_id))
    db.session.commit()
    return node.to_dict()


@route(
    bp,
    "/nodes/<node_id>/heartbeats",
    summary="Sampled heartbeat history, newest first",
    scope=READ,
    query=PageQuery,
    response=ListOut[HeartbeatSampleOut],
)
def heartbeats(principal: Principal, slug: str, node_id: str, query: PageQuery) -> dict[str, Any]:
    page = nodes.list_heartbeats(
        _node(principal, slug, node_id), limit=query.limit, cursor=query.cursor
    )
    db.session.commit()
    return page_body(page, lambda row: row.to_dict())


@route(
    bp,
    "/nodes/<node_id>/events",
    summary="Node events, newest first",
    scope=READ,
    query=PageQuery,
    response=ListOut[NodeEventOut],
)
def events(principal: Principal, slug: str, node_id: str, query: PageQuery) -> dict[str, Any]:
    page = nodes.list_events(
        _node(principal, slug, node_id), limit=query.limit, cursor=query.cursor
    )
    db.session.commit()
    return page_body(page, lambda row: row.to_dict())


@route(
    bp,
    "/groups",
    summary="List groups (named label selectors) with node counts",
    scope=READ,
    response=GroupListOut,
)
def list_groups(principal: Principal, slug: str) -> dict[str, Any]:
    rows = nodes.list_groups(visible_project(principal, slug).id)
    db.session.commit()
    return {"items": [group.to_dict(count) for group, count in rows]}


@route(
    bp,
    "/groups",
    "POST",
    summary="Create a group",
    scope=WRITE,
    body=GroupCreateIn,
    response=GroupOut,
    status=201,
    responses={409: "name_taken"},
)
def create_group(
    principal: Principal, slug: str, body: GroupCreateIn
) -> tuple[dict[str, Any], int]:
    project = visible_project(principal, slug)
    group = nodes.create_group(
        principal.actor,
        project.id,
        name=body.name,
        description=body.description,
        labels=body.selector.labels,
    )
    count = nodes.count_matching(project.id, group.selector)
    db.session.commit()
    return group.to_dict(count), 201


@route(bp, "/groups/<name>", summary="Show a group", scope=READ, response=GroupOut)
def show_group(principal: Principal, slug: str, name: str) -> dict[str, Any]:
    project = visible_project(principal, slug)
    group = nodes.get_group(project.id, name)
    count = nodes.count_matching(project.id, group.selector)
    db.session.commit()
    return group.to_dict(count)


@route(
    bp,
    "/groups/<name>",
    "PATCH",
    summary="Change a group's description or selector",
    scope=WRITE,
    body=GroupPatchIn,
    response=GroupOut,
)
def update_group(principal: Principal, slug: str, name: str, body: GroupPatchIn) -> dict[str, Any]:
    project = visible_project(principal, slug)
    group = nodes.update_group(
        principal.actor,
        nodes.get_group(project.id, name),
        description=body.description,
        labels=body.selector.labels if body.selector else None,
    )
    count = nodes.count_matching(project.id, group.selector)
    db.session.commit()
    return group.to_dict(count)


@route(bp, "/groups/<name>", "DELETE", summary="Delete a group", scope=WRITE, response=StatusOut)
def delete_group(principal: Principal, slug: str, name: str) -> dict[str, str]:
    project = visible_project(principal, slug)
    nodes.delete_group(principal.actor, nodes.get_group(project.id, name))
    db.session.commit()
    return {"status": "deleted"}


@route(
    bp,
    "/signing-keys/rotate",
    "POST",
    summary="Make a new signing key the signer",
    scope="projects:admin",
    response=SigningKeyOut,
    status=201,
)
def rotate_signing_key(principal: Principal, slug: str) -> tuple[dict[str, Any], int]:
    project = visible_project(principal, slug)
    key = signing.rotate(principal.actor, project.id)
    db.session.commit()
    return key.public_dict(), 201


@route(
    bp,
    "/signing-keys/<kid>/retire",
    "POST",
    summary="Retire a signing key: what it signed stops verifying",
    scope="projects:admin",
    response=SigningKeyOut,
    responses={409: "already_retired"},
)
def retire_signing_key(principal: Principal, slug: str, kid: str) -> dict[str, Any]:
    project = visible_project(principal, slug)
    key = signing.retire(principal.actor, project.id, kid)
    db.session.commit()
    return key.public_dict()
