"""`/api/openapi.json`, built from the route declarations, and `/api/docs`, a readable page of it.

The document is generated from the live URL map and the pydantic schemas each route declared,
so every route the app serves is in it (a test checks), and its shapes are the ones the code
validates against.
"""

from __future__ import annotations

import html
import re
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from blueprints.api import REGISTRY, RouteSpec, route
from blueprints.schemas import ErrorOut

bp = Blueprint("openapi", __name__)

ERROR_DESCRIPTIONS = {
    400: "Malformed JSON, body or id",
    401: "Missing, invalid, revoked or expired credential",
    403: "Credential valid but not allowed (scope, role, origin)",
    404: "No such thing visible to this caller",
    409: "State conflict",
    413: "Body too large",
    415: "Body is not JSON",
    422: "Well-formed but invalid fields",
    429: "Too many requests (see Retry-After)",
    503: "A dependency is down (see Retry-After)",
}


def _path(rule: str) -> str:
    return re.sub(r"<(?:[a-z_]+:)?([a-z_]+)>", r"{\1}", rule)


def _error_statuses(spec: RouteSpec, has_path_params: bool) -> set[int]:
    statuses = {400, 503}
    if spec.auth in ("operator", "node"):
        statuses |= {401, 403, 429}
    if spec.body is not None or spec.method in ("POST", "PATCH", "PUT"):
        statuses |= {413, 415, 422}
    if spec.query is not None or spec.auth == "operator":
        statuses.add(422)
    if has_path_params or spec.auth == "operator":
        statuses.add(404)
    statuses |= {s for s in spec.responses if s >= 400}
    if spec.rule == "/api/v1/session" and spec.method == "POST":
        statuses |= {401, 403, 429}
    return statuses


def _query_value_schema(prop: dict[str, Any]) -> dict[str, Any]:
    """A query parameter is optional by being absent: a query string cannot carry JSON
    `null` (`?state=null` is the string "null", refused), so the `| None` branch goes."""
    branches = [b for b in prop.get("anyOf", []) if b != {"type": "null"}]
    if not branches or len(branches) == len(prop["anyOf"]):
        return prop
    rest = {k: v for k, v in prop.items() if k != "anyOf" and not (k == "default" and v is None)}
    if len(branches) == 1:
        return {**branches[0], **rest}
    return {**rest, "anyOf": branches}


def build_document(app: Flask) -> dict[str, Any]:
    """The OpenAPI 3.1 document for every API route registered on `app`."""
    models: list[tuple[type[BaseModel], str]] = [(ErrorOut, "serialization")]
    for spec in REGISTRY.values():
        if spec.body is not None:
            models.append((spec.body, "validation"))
        if spec.response is not None:
            models.append((spec.response, "serialization"))
    key_map, schemas = models_json_schema(models, ref_template="#/components/schemas/{model}")

    def ref(model: type[BaseModel], mode: str) -> dict[str, Any]:
        return key_map[(model, mode)]  # type: ignore[index]

    paths: dict[str, dict[str, Any]] = {}
    for rule in app.url_map.iter_rules():
        spec = REGISTRY.get(rule.endpoint)
        if spec is None:
            continue
        parameters: list[dict[str, Any]] = [
            {"name": arg, "in": "path", "required": True, "schema": {"type": "string"}}
            for arg in sorted(rule.arguments)
        ]
        if spec.query is not None:
            query_schema = spec.query.model_json_schema()
            required = set(query_schema.get("required", []))
            for name, prop in query_schema.get("properties", {}).items():
                parameters.append(
                    {
                        "name": name,
                        "in": "query",
                        "required": name in required,
                        "schema": _query_value_schema(prop),
                    }
                )
        success: dict[str, Any] = {"description": spec.summary}
        if spec.response is not None:
            success["content"] = {
                "application/json": {"schema": ref(spec.response, "serialization")}
            }
        elif spec.produces:
            success["content"] = {
                media_type: {"schema": schema} for media_type, schema in spec.produces.items()
            }
        responses: dict[str, Any] = {str(spec.status): success}
        for status, description in sorted(spec.responses.items()):
            if 200 <= status < 300 and status != spec.status:
                responses[str(status)] = {**success, "description": description}
            elif 300 <= status < 400:  # a redirect or 304: no body
                responses[str(status)] = {"description": description}
        for status in sorted(_error_statuses(spec, bool(rule.arguments))):
            responses[str(status)] = {
                "description": ERROR_DESCRIPTIONS.get(status, spec.responses.get(status, "")),
                "content": {"application/json": {"schema": ref(ErrorOut, "serialization")}},
            }
        operation: dict[str, Any] = {
            "operationId": rule.endpoint.replace(".", "_"),
            "summary": spec.summary,
            "tags": list(spec.tags),
            "parameters": parameters,
            "responses": responses,
        }
        if spec.auth == "operator":
            operation["security"] = [{"bearerAuth": []}, {"cookieAuth": []}]
            if spec.scope:
                operation["description"] = f"Requires scope `{spec.scope}`."
        elif spec.auth == "node":
            operation["security"] = [{"nodeKey": []}, {"nodeKeyZentinel": []}, {"nodeToken": []}]
            operation["description"] = "Node credentials; the path's node must be the caller."
        else:
            operation["security"] = []
        if spec.body is not None:
            operation["requestBody"] = {
                "required": False,
                "content": {"application/json": {"schema": ref(spec.body, "validation")}},
            }
        if spec.multipart:
            operation["requestBody"]["content"]["multipart/form-data"] = {
                "schema": {
                    "type": "object",
                    "required": ["version", "files"],
                    "properties": {
                        "version": {"type": "string", "minLength": 1, "maxLength": 64},
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "`.kdl` files (paths in their filenames) "
                            "or one `.tar.gz`",
                        },
                    },
                }
            }
        paths.setdefault(_path(rule.rule), {})[spec.method.lower()] = operation

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Sentinel Control Plane API",
            "version": "1",
            "description": "Operator and node APIs. Errors are "
            '`{"error": "…", "code": "…", "fields": {…}}`.',
        },
        "servers": [{"url": "/"}],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key: `sk_…`",
                },
                "cookieAuth": {"type": "apiKey", "in": "cookie", "name": "sentinel_session"},
                "nodeKey": {"type": "apiKey", "in": "header", "name": "X-Sentinel-Node-Key"},
                "nodeKeyZentinel": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-Zentinel-Node-Key",
                },
                "nodeToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "A node JWT from POST /api/v1/nodes/{id}/token",
                },
            },
        },
    }


@route(bp, "/api/openapi.json", summary="This OpenAPI document", auth_mode="public")
def openapi_document() -> Response:
    return jsonify(_cached_document())


def _cached_document() -> dict[str, Any]:
    """Built once per app: the routes and schemas do not change while it runs."""
    document = current_app.extensions.get("sentinel_openapi")
    if document is None:
        document = current_app.extensions["sentinel_openapi"] = build_document(current_app)
    return document  # type: ignore[no-any-return]


@route(
    bp,
    "/api/docs",
    summary="Human-readable API reference",
    auth_mode="public",
    produces="text/html",
)
def api_docs() -> Response:
    document = _cached_document()
    parts = [
        "<!doctype html><meta charset=utf-8><title>Sentinel CP API</title>",
        "<style>body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;"
        "padding:0 1rem;color:#1b1f24}code{background:#f0f2f5;padding:0 .25em;border-radius:3px}"
        "h2{margin-top:2rem;border-bottom:1px solid #ddd}.m{font-weight:700;display:inline-block;"
        "width:4.5rem}.s{color:#555}</style>",
        "<h1>Sentinel Control Plane API</h1>",
        '<p>Machine-readable: <a href="/api/openapi.json"><code>/api/openapi.json</code></a>. '
        "Authenticate with <code>Authorization: Bearer sk_…</code> or the console session.</p>",
    ]
    by_tag: dict[str, list[str]] = {}
    for path, operations in document["paths"].items():
        for method, op in operations.items():
            auth_note = "" if op["security"] else "No authentication."
            codes = ", ".join(k for k in op["responses"])
            row = (
                f'<p><span class="m">{method.upper()}</span><code>{html.escape(path)}</code> — '
                f"{html.escape(op['summary'])}<br><span class=s>"
                f"{html.escape(op.get('description', auth_note))}"
                f" Responses: {codes}.</span></p>"
            )
            by_tag.setdefault(op["tags"][0], []).append(row)
    for tag, rows in sorted(by_tag.items()):
        parts.append(f"<h2>{html.escape(tag)}</h2>")
        parts.extend(rows)
    return Response("".join(parts), mimetype="text/html")
