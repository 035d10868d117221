"""`/api/openapi.json` is a valid OpenAPI document that covers every route the app serves,
and `/api/docs` is a readable page of it."""

from __future__ import annotations

import re
from typing import Any

import pytest
from openapi_spec_validator import validate

IGNORED_METHODS = {"HEAD", "OPTIONS"}
PUBLIC_PATHS = {
    "/health",
    "/ready",
    "/metrics",
    "/api/openapi.json",
    "/api/docs",
    "/api/v1/session",
}


def openapi_path(rule: str) -> str:
    """`/users/<user_id>` or `/x/<path:rest>` -> `/users/{user_id}`, `/x/{rest}`."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def url_rules(app: Any) -> list[tuple[str, str, Any]]:
    """(OpenAPI path, method, rule) for every rule the app serves, minus `static`."""
    return [
        (openapi_path(rule.rule), method, rule)
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in sorted((rule.methods or set()) - IGNORED_METHODS)
    ]


@pytest.fixture
def document(client: Any) -> dict[str, Any]:
    response = client.get("/api/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert isinstance(body, dict)
    return body


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, op) for path, ops in document["paths"].items() for method, op in ops.items()
    ]


def test_openapi_document_is_valid(document: dict[str, Any]) -> None:
    validate(document)
    assert document["openapi"].startswith("3.")


def test_openapi_document_needs_no_authentication(client: Any) -> None:
    response = client.get("/api/openapi.json", headers={"Authorization": "Bearer sk_bogus"})
    assert response.status_code == 200


def test_every_url_rule_is_in_the_document_with_its_method(
    app: Any, document: dict[str, Any]
) -> None:
    rules = url_rules(app)
    assert len(rules) > 10
    missing = [
        f"{method} {path}"
        for path, method, _ in rules
        if method.lower() not in document["paths"].get(path, {})
    ]
    assert not missing, f"routes absent from /api/openapi.json: {missing}"


def test_document_lists_no_route_the_app_does_not_serve(app: Any, document: dict[str, Any]) -> None:
    served = {(path, method.lower()) for path, method, _ in url_rules(app)}
    extra = [
        f"{method.upper()} {path}"
        for path, method, _ in operations(document)
        if (path, method) not in served
    ]
    assert not extra, extra


def test_path_parameters_are_declared(app: Any, document: dict[str, Any]) -> None:
    for path, method, rule in url_rules(app):
        operation = document["paths"][path][method.lower()]
        declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
        assert declared == set(rule.arguments), (method, path, declared)


def test_operation_ids_are_unique(document: dict[str, Any]) -> None:
    ids = [op["operationId"] for _, _, op in operations(document)]
    assert len(ids) == len(set(ids))


def test_every_operator_route_declares_401_and_403(document: dict[str, Any]) -> None:
    operator = [
        (path, method, op)
        for path, method, op in operations(document)
        if path.startswith("/api/v1/") and path not in PUBLIC_PATHS and op.get("security") != []
    ]
    assert len(operator) > 10
    for path, method, op in operator:
        assert {"401", "403"} <= set(op["responses"]), f"{method.upper()} {path}"
        assert op.get("security"), f"{method.upper()} {path} declares no security"


def test_operator_routes_really_answer_401_without_credentials(
    client: Any, document: dict[str, Any]
) -> None:
    for path, method, op in operations(document):
        if not op.get("security"):
            continue
        concrete = re.sub(r"\{[^}]+\}", "00000000-0000-4000-8000-000000000000", path)
        response = client.open(
            concrete, method=method.upper(), json={} if method in ("post", "patch", "put") else None
        )
        assert response.status_code == 401, f"{method.upper()} {path}"
        assert "401" in op["responses"]


def test_every_error_response_uses_the_error_schema(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    for path, method, op in operations(document):
        for status, response in op["responses"].items():
            if int(status) < 400:
                continue
            ref = response["content"]["application/json"]["schema"]["$ref"]
            schema = schemas[ref.rsplit("/", 1)[1]]
            assert {"error", "code"} <= set(schema["required"]), (method, path, status)


def test_body_routes_declare_413_415_and_422(document: dict[str, Any]) -> None:
    for path, method, op in operations(document):
        if "requestBody" in op:
            assert {"413", "415", "422"} <= set(op["responses"]), f"{method.upper()} {path}"


def test_request_bodies_forbid_unknown_fields(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    for path, method, op in operations(document):
        if "requestBody" not in op:
            continue
        ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        schema = schemas[ref.rsplit("/", 1)[1]]
        # A body that takes one of several shapes (node events) is closed in every shape.
        branches = schema.get("anyOf") or schema.get("oneOf") or [{"$ref": ref}]
        for branch in branches:
            closed = schemas[branch["$ref"].rsplit("/", 1)[1]]
            assert closed.get("additionalProperties") is False, f"{method.upper()} {path}"


def test_docs_page_is_html_listing_every_path(client: Any, document: dict[str, Any]) -> None:
    response = client.get("/api/docs")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert page.lstrip().lower().startswith("<!doctype html")
    for path, _method, _ in operations(document):
        assert path in page, path
    assert page.count('class="m"') == len(operations(document))
