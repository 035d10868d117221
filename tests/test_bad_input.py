"""Bad input on the operator API: always a 4xx with a JSON error, never a 500.

Every request goes through `Caller.call`, which asserts the response is below 500 and, for an
error, that the body is JSON with string `error` and `code`. Most tests run with an admin API key
and with the admin's browser session (the two ways an operator authenticates), on both backends.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from conftest import login, make_key, make_project, make_user

ADMIN_EMAIL = "admin@example.com"
ALL_SCOPES = [
    "nodes:read",
    "nodes:write",
    "bundles:read",
    "bundles:write",
    "rollouts:read",
    "rollouts:write",
    "audit:read",
    "projects:admin",
    "api_keys:admin",
]
ONE_MIB = 1024 * 1024
UNKNOWN_ID = "6f1c2a34-6f4e-4d7b-9a55-3c1b0e4f2a10"


@dataclass
class Caller:
    """An authenticated admin; every call checks the never-500 / JSON-error contract."""

    client: Any
    mode: str
    headers: dict[str, str] = field(default_factory=dict)
    admin_id: str = ""

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        if (
            self.mode == "session"
            and method in ("POST", "PUT", "PATCH", "DELETE")
            and "json" not in kwargs
            and "content_type" not in kwargs
        ):
            # The console always sends JSON; a cookie request without it is refused (CSRF).
            kwargs["content_type"] = "application/json"
        response = self.client.open(path, method=method, headers=headers, **kwargs)
        assert response.status_code < 500, (
            f"{method} {path} -> {response.status_code}: {response.get_data()[:300]!r}"
        )
        if response.status_code >= 400:
            assert_error_body(response)
        return response


def assert_error_body(response: Any) -> dict[str, Any]:
    assert response.mimetype == "application/json", response.get_data()[:200]
    body = response.get_json()
    assert isinstance(body, dict)
    assert isinstance(body.get("error"), str) and body["error"]
    assert isinstance(body.get("code"), str) and body["code"]
    return body


def expect(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.get_data()[:300])
    body = assert_error_body(response)
    if code is not None:
        assert body["code"] == code, body
    return body


def expect_4xx(response: Any) -> dict[str, Any]:
    assert 400 <= response.status_code < 500, (response.status_code, response.get_data()[:300])
    return assert_error_body(response)


def _admin(app: Any) -> str:
    admin_id = make_user(app, ADMIN_EMAIL, role="admin")
    make_project(app, "alpha")
    return admin_id


@pytest.fixture(params=["api_key", "session"])
def caller(request: pytest.FixtureRequest, app: Any, client: Any) -> Caller:
    admin_id = _admin(app)
    if request.param == "api_key":
        key = make_key(app, ADMIN_EMAIL, ALL_SCOPES)
        return Caller(client, "api_key", {"Authorization": f"Bearer {key}"}, admin_id)
    assert login(client, ADMIN_EMAIL).status_code == 200
    return Caller(client, "session", {}, admin_id)


@pytest.fixture
def key_caller(app: Any, client: Any) -> Caller:
    admin_id = _admin(app)
    key = make_key(app, ADMIN_EMAIL, ALL_SCOPES)
    return Caller(client, "api_key", {"Authorization": f"Bearer {key}"}, admin_id)


def raw_json(caller: Caller, method: str, path: str, data: bytes | str) -> Any:
    return caller.call(method, path, data=data, content_type="application/json")


# --- malformed bodies -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b'{"slug": ',
        b"{'slug': 'ab'}",
        b'{"slug": "ab",}',
        b"{slug: ab}",
        b'{"slug": "ab"} trailing',
    ],
)
def test_malformed_json_is_400_malformed_json(caller: Caller, data: bytes) -> None:
    expect(raw_json(caller, "POST", "/api/v1/projects", data), 400, "malformed_json")


def test_malformed_json_on_the_login_endpoint_is_400(caller: Caller) -> None:
    expect(raw_json(caller, "POST", "/api/v1/session", b'{"email": '), 400, "malformed_json")


@pytest.mark.parametrize(
    "data", [b"[]", b'[{"slug": "ab", "name": "A"}]', b'"alpha"', b"42", b"null", b"true"]
)
def test_json_body_that_is_not_an_object_is_400(caller: Caller, data: bytes) -> None:
    expect(raw_json(caller, "POST", "/api/v1/projects", data), 400)


def test_array_body_on_a_patch_is_400(caller: Caller) -> None:
    expect(raw_json(caller, "PATCH", "/api/v1/projects/alpha", b'["name"]'), 400)


# --- wrong types and unknown fields -----------------------------------------------------------

WRONG_TYPES = [
    ("POST", "/api/v1/projects", {"slug": "beta", "name": 5}, "name"),
    ("POST", "/api/v1/projects", {"slug": ["beta"], "name": "Beta"}, "slug"),
    (
        "POST",
        "/api/v1/projects",
        {"slug": "beta", "name": "Beta", "settings": {"poll_interval_s": "30"}},
        "settings.poll_interval_s",
    ),
    ("POST", "/api/v1/projects", {"slug": "beta", "name": "Beta", "settings": []}, "settings"),
    (
        "PATCH",
        "/api/v1/projects/alpha",
        {"settings": {"open_registration": "yes"}},
        "settings.open_registration",
    ),
    (
        "PATCH",
        "/api/v1/projects/alpha",
        {"settings": {"poll_interval_s": 30.5}},
        "settings.poll_interval_s",
    ),
    ("POST", "/api/v1/api-keys", {"name": "ci", "scopes": "x"}, "scopes"),
    ("POST", "/api/v1/api-keys", {"name": "ci", "scopes": [1, 2]}, "scopes.0"),
    (
        "POST",
        "/api/v1/api-keys",
        {"name": "ci", "scopes": ["audit:read"], "expires_at": "not-a-date"},
        "expires_at",
    ),
    ("POST", "/api/v1/users", {"email": "x@example.com", "password": 123456789012345}, "password"),
    (
        "POST",
        "/api/v1/users",
        {"email": "x@example.com", "password": "long-enough-pw", "role": "root"},
        "role",
    ),
    ("PATCH", "/api/v1/users/{admin_id}", {"disabled": "true"}, "disabled"),
    ("POST", "/api/v1/session", {"email": ["admin@example.com"], "password": "x"}, "email"),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "name"),
    WRONG_TYPES,
    ids=[f"{m} {p} {n}" for m, p, _, n in WRONG_TYPES],
)
def test_wrong_type_is_422_naming_the_field(
    caller: Caller, method: str, path: str, body: dict[str, Any], name: str
) -> None:
    response = caller.call(method, path.format(admin_id=caller.admin_id), json=body)
    fields = expect(response, 422)["fields"]
    assert name in fields, fields


UNKNOWN_FIELDS = [
    ("POST", "/api/v1/projects", {"slug": "beta", "name": "Beta", "owner": "me"}, "owner"),
    ("PATCH", "/api/v1/projects/alpha", {"settings": {"nope": 1}}, "settings.nope"),
    (
        "POST",
        "/api/v1/users",
        {"email": "x@example.com", "password": "long-enough-pw", "is_admin": True},
        "is_admin",
    ),
    ("PATCH", "/api/v1/users/{admin_id}", {"email": "y@example.com"}, "email"),
    ("POST", "/api/v1/api-keys", {"name": "ci", "scopes": ["audit:read"], "admin": True}, "admin"),
    ("POST", f"/api/v1/api-keys/{UNKNOWN_ID}/revoke", {"reason": "x"}, "reason"),
    ("POST", "/api/v1/projects/alpha/registration-token", {"token": "rt_x"}, "token"),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "name"),
    UNKNOWN_FIELDS,
    ids=[f"{m} {p} {n}" for m, p, _, n in UNKNOWN_FIELDS],
)
def test_unknown_body_field_is_422_naming_it(
    caller: Caller, method: str, path: str, body: dict[str, Any], name: str
) -> None:
    response = caller.call(method, path.format(admin_id=caller.admin_id), json=body)
    fields = expect(response, 422)["fields"]
    assert name in fields, fields


def test_refused_create_leaves_nothing_behind(caller: Caller) -> None:
    caller.call("POST", "/api/v1/projects", json={"slug": "beta", "name": "Beta", "x": 1})
    listing = caller.call("GET", "/api/v1/projects").get_json()
    assert [p["slug"] for p in listing["items"]] == ["alpha"]


# --- content type and size --------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml", None]
)
def test_non_json_content_type_with_a_body_is_415(
    key_caller: Caller, content_type: str | None
) -> None:
    kwargs: dict[str, Any] = {"data": b'{"slug": "beta", "name": "Beta"}'}
    if content_type:
        kwargs["content_type"] = content_type
    expect(key_caller.call("POST", "/api/v1/projects", **kwargs), 415, "unsupported_media_type")


def test_non_json_body_with_a_session_is_refused_with_a_json_4xx(caller: Caller) -> None:
    response = caller.call(
        "POST", "/api/v1/projects", data=b'{"slug": "beta", "name": "B"}', content_type="text/plain"
    )
    assert response.status_code in (403, 415)
    expect_4xx(response)


def _big_body(total: int) -> bytes:
    head, tail = b'{"slug": "beta", "name": "', b'"}'
    return head + b"a" * (total - len(head) - len(tail)) + tail


def test_body_over_one_mib_is_413_body_too_large_json(caller: Caller) -> None:
    response = raw_json(caller, "POST", "/api/v1/projects", _big_body(ONE_MIB + 1))
    expect(response, 413, "body_too_large")
    assert b"<html" not in response.get_data().lower()


def test_body_over_one_mib_on_login_is_413_json(caller: Caller) -> None:
    data = b'{"email": "a@b.c", "password": "' + b"p" * ONE_MIB + b'"}'
    expect(raw_json(caller, "POST", "/api/v1/session", data), 413, "body_too_large")


def test_body_of_exactly_one_mib_is_not_refused_for_size(caller: Caller) -> None:
    response = raw_json(caller, "POST", "/api/v1/projects", _big_body(ONE_MIB))
    body = expect(response, 422)
    assert "name" in body["fields"]


# --- ids, routes and methods ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/users/not-a-uuid"),
        ("PATCH", "/api/v1/users/not-a-uuid"),
        ("GET", "/api/v1/api-keys/xyz"),
        ("POST", "/api/v1/api-keys/xyz/revoke"),
        ("GET", "/api/v1/users/6f1c2a34-6f4e-4d7b-9a55-3c1b0e4f2a1"),
        ("GET", "/api/v1/users/%FF%FE"),
    ],
)
def test_malformed_id_in_path_is_400_malformed_id(caller: Caller, method: str, path: str) -> None:
    kwargs: dict[str, Any] = {"json": {"role": "reader"}} if method == "PATCH" else {}
    expect(caller.call(method, path, **kwargs), 400, "malformed_id")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", f"/api/v1/users/{UNKNOWN_ID}"),
        ("PATCH", f"/api/v1/users/{UNKNOWN_ID}"),
        ("GET", f"/api/v1/api-keys/{UNKNOWN_ID}"),
        ("POST", f"/api/v1/api-keys/{UNKNOWN_ID}/revoke"),
        ("GET", "/api/v1/projects/no-such-project"),
        ("DELETE", "/api/v1/projects/no-such-project"),
        ("GET", "/api/v1/projects/no-such-project/audit"),
        ("GET", "/api/v1/projects/" + "a" * 10_000),
        ("GET", "/api/v1/projects/%FF%FE"),
        ("GET", "/api/v1/projects/a%00b"),
    ],
)
def test_unknown_id_is_404_json(caller: Caller, method: str, path: str) -> None:
    kwargs: dict[str, Any] = {"json": {"role": "reader"}} if method == "PATCH" else {}
    expect(caller.call(method, path, **kwargs), 404)


@pytest.mark.parametrize(
    "path", ["/api/v1/nothing", "/api/v2/users", "/api/v1/users/x/y", "/api/", "/nothing-here"]
)
def test_unknown_route_is_404_json(caller: Caller, path: str) -> None:
    expect(caller.call("GET", path), 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/api/v1/users"),
        ("PUT", "/api/v1/projects/alpha"),
        ("POST", "/api/v1/me"),
        ("PATCH", "/api/v1/api-keys"),
        ("DELETE", "/api/openapi.json"),
    ],
)
def test_wrong_method_is_405_json_with_allow(caller: Caller, method: str, path: str) -> None:
    response = caller.call(method, path, json={})
    expect(response, 405, "method_not_allowed")
    assert response.headers.get("Allow")


# --- query strings ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/users?foo=1",
        "/api/v1/me?foo=1",
        "/api/v1/projects/alpha?foo=1",
        "/api/v1/audit?foo=1",
        "/api/v1/api-keys?foo=1",
        "/api/v1/audit/verify?foo=1",
    ],
)
def test_unknown_query_parameter_is_422_naming_it(caller: Caller, path: str) -> None:
    fields = expect(caller.call("GET", path), 422)["fields"]
    assert "query.foo" in fields, fields


@pytest.mark.parametrize("limit", ["0", "501", "abc", "-1", "1e3", "", "10.5"])
@pytest.mark.parametrize(
    "path", ["/api/v1/users", "/api/v1/api-keys", "/api/v1/projects", "/api/v1/audit"]
)
def test_out_of_range_or_non_numeric_limit_is_422(
    key_caller: Caller, path: str, limit: str
) -> None:
    fields = expect(key_caller.call("GET", path, query_string={"limit": limit}), 422)["fields"]
    assert "query.limit" in fields, fields


@pytest.mark.parametrize("limit", ["0", "501", "abc"])
def test_bad_limit_with_a_session_is_422(caller: Caller, limit: str) -> None:
    response = caller.call("GET", "/api/v1/users", query_string={"limit": limit})
    assert "query.limit" in expect(response, 422)["fields"]


@pytest.mark.parametrize("path", ["/api/v1/users", "/api/v1/projects", "/api/v1/audit"])
def test_limit_bounds_are_accepted(caller: Caller, path: str) -> None:
    for limit in ("1", "500"):
        assert caller.call("GET", path, query_string={"limit": limit}).status_code == 200


@pytest.mark.parametrize(
    "path", ["/api/v1/users", "/api/v1/api-keys", "/api/v1/projects", "/api/v1/audit"]
)
@pytest.mark.parametrize(
    "cursor",
    [
        "garbage",
        "!!!!",
        "W10",
        base64.urlsafe_b64encode(b'["a", "b", "c"]').decode(),
        "\u00e9\u00e9",
    ],
)
def test_foreign_cursor_is_422(key_caller: Caller, path: str, cursor: str) -> None:
    fields = expect(key_caller.call("GET", path, query_string={"cursor": cursor}), 422)["fields"]
    assert any("cursor" in name for name in fields), fields


def _cursor(*values: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(values)).encode()).decode().rstrip("=")


def test_api_key_cursor_with_a_naive_timestamp_is_422(caller: Caller) -> None:
    response = caller.call(
        "GET",
        "/api/v1/api-keys",
        query_string={"cursor": _cursor("2020-01-01T00:00:00", UNKNOWN_ID)},
    )
    expect(response, 422)


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/api-keys",
        "/api/v1/projects/alpha/bundles",
        "/api/v1/projects/alpha/rollouts",
        "/api/v1/projects/alpha/drift",
    ],
)
@pytest.mark.parametrize(
    "values",
    [("not a time", UNKNOWN_ID), ("2020-01-01T00:00:00+00:00", "not-a-uuid"), ("9" * 40, "x")],
)
def test_a_well_formed_cursor_with_bad_values_is_422(
    key_caller: Caller, path: str, values: tuple[str, str]
) -> None:
    if path.endswith("/bundles") and values[1] == "not-a-uuid":
        values = ("2020-01-01T00:00:00", "x")  # bundle ids are not UUIDs: a naive time instead
    response = key_caller.call("GET", path, query_string={"cursor": _cursor(*values)})
    assert "cursor" in str(expect(response, 422)["fields"])


@pytest.mark.parametrize(
    "query",
    [
        {"since": "yesterday"},
        {"until": "2020-13-01T00:00:00Z"},
        {"action": "DROP TABLE"},
        {"resource": "x y"},
        {"format": "xml"},
    ],
)
def test_bad_audit_filters_are_422(caller: Caller, query: dict[str, str]) -> None:
    path = "/api/v1/audit/export" if "format" in query else "/api/v1/audit"
    fields = expect(caller.call("GET", path, query_string=query), 422)["fields"]
    assert f"query.{next(iter(query))}" in fields, fields


@pytest.mark.parametrize("since", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
def test_audit_since_at_the_edge_of_the_calendar_is_not_a_500(caller: Caller, since: str) -> None:
    response = caller.call("GET", "/api/v1/audit", query_string={"since": since})
    assert response.status_code in (200, 422)


# --- huge strings -----------------------------------------------------------------------------

HUGE = "x" * 10_000

HUGE_BODIES = [
    ("POST", "/api/v1/projects", {"slug": "beta", "name": HUGE}, "name"),
    ("POST", "/api/v1/projects", {"slug": "b" * 10_000, "name": "Beta"}, "slug"),
    ("PATCH", "/api/v1/projects/alpha", {"name": HUGE}, "name"),
    ("POST", "/api/v1/api-keys", {"name": HUGE, "scopes": ["audit:read"]}, "name"),
    ("POST", "/api/v1/api-keys", {"name": "ci", "scopes": ["audit:read"] * 10_000}, "scopes"),
    (
        "POST",
        "/api/v1/api-keys",
        {"name": "ci", "scopes": ["audit:read"], "project": HUGE},
        "project",
    ),
    (
        "POST",
        "/api/v1/users",
        {"email": HUGE + "@example.com", "password": "long-enough-pw"},
        "email",
    ),
    ("POST", "/api/v1/users", {"email": "x@example.com", "password": HUGE}, "password"),
    ("PATCH", "/api/v1/users/{admin_id}", {"password": HUGE}, "password"),
    ("POST", "/api/v1/session", {"email": HUGE, "password": "x"}, "email"),
    ("POST", "/api/v1/session", {"email": "a@b.c", "password": HUGE}, "password"),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "name"),
    HUGE_BODIES,
    ids=[f"{m} {p} {n}" for m, p, _, n in HUGE_BODIES],
)
def test_huge_string_is_422_naming_the_field(
    caller: Caller, method: str, path: str, body: dict[str, Any], name: str
) -> None:
    response = caller.call(method, path.format(admin_id=caller.admin_id), json=body)
    fields = expect(response, 422)["fields"]
    assert name in fields, fields


@pytest.mark.parametrize(
    ("path", "param"),
    [
        ("/api/v1/users", "cursor"),
        ("/api/v1/audit", "actor"),
        ("/api/v1/audit", "action"),
        ("/api/v1/audit", "resource"),
    ],
)
def test_huge_query_value_is_422(caller: Caller, path: str, param: str) -> None:
    fields = expect(caller.call("GET", path, query_string={param: HUGE}), 422)["fields"]
    assert f"query.{param}" in fields, fields


# --- hostile encodings ------------------------------------------------------------------------

DEPTH = 10_000


@pytest.mark.parametrize(
    "data",
    [
        "[" * DEPTH + "]" * DEPTH,
        '{"a":' * DEPTH + "1" + "}" * DEPTH,
        '{"slug": "beta", "name": ' + "[" * DEPTH + "]" * DEPTH + "}",
        '{"settings": ' + '{"a":' * DEPTH + "1" + "}" * DEPTH + "}",
    ],
    ids=["arrays", "objects", "nested-in-field", "nested-in-settings"],
)
def test_deeply_nested_json_is_4xx(caller: Caller, data: str) -> None:
    expect_4xx(raw_json(caller, "POST", "/api/v1/projects", data))


def test_deeply_nested_json_on_login_is_4xx(caller: Caller) -> None:
    expect_4xx(raw_json(caller, "POST", "/api/v1/session", "[" * DEPTH + "]" * DEPTH))


@pytest.mark.parametrize(
    "data",
    [
        b'{"slug": "beta", "name": "a\x00b"}',
        b'\x00{"slug": "beta", "name": "Beta"}',
        b'{"slug": "beta", "name": "\xff\xfe"}',
        b'{"slug": "beta", "name": "caf\xc3"}',
        b"\xff\xfe{\x00}\x00",
        b'{"slug": "beta", "name": "\xed\xa0\x80"}',
    ],
    ids=[
        "raw-nul",
        "leading-nul",
        "invalid-utf8",
        "truncated-utf8",
        "bom-junk",
        "encoded-surrogate",
    ],
)
def test_raw_nul_and_invalid_utf8_in_body_are_4xx(caller: Caller, data: bytes) -> None:
    expect_4xx(raw_json(caller, "POST", "/api/v1/projects", data))


ESCAPED = [
    ("POST", "/api/v1/projects", {"slug": "beta", "name": "a\u0000b"}),
    ("PATCH", "/api/v1/projects/alpha", {"name": "a\u0000b"}),
    ("POST", "/api/v1/api-keys", {"name": "a\u0000b", "scopes": ["audit:read"]}),
    ("POST", "/api/v1/users", {"email": "a\u0000@example.com", "password": "long-enough-pw"}),
    ("POST", "/api/v1/session", {"email": "a\u0000@example.com", "password": "long-enough-pw"}),
    ("POST", "/api/v1/api-keys", {"name": "ci", "scopes": ["audit:read"], "project": "a\u0000"}),
]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    ESCAPED,
    ids=["project-name", "project-rename", "key-name", "user-email", "login-email", "key-project"],
)
def test_json_escaped_nul_in_a_string_is_4xx(
    caller: Caller, method: str, path: str, body: dict[str, Any]
) -> None:
    expect_4xx(caller.call(method, path, json=body))


@pytest.mark.parametrize(
    "body",
    [
        b'{"slug": "beta", "name": "\\ud800"}',
        b'{"slug": "beta", "name": "\\udfff tail"}',
    ],
    ids=["lone-high-surrogate", "lone-low-surrogate"],
)
def test_json_escaped_lone_surrogate_is_4xx(caller: Caller, body: bytes) -> None:
    expect_4xx(raw_json(caller, "POST", "/api/v1/projects", body))


@pytest.mark.parametrize(
    ("path", "param"), [("/api/v1/users", "cursor"), ("/api/v1/audit", "actor")]
)
def test_nul_in_a_query_value_is_not_a_500(caller: Caller, path: str, param: str) -> None:
    value = _cursor("a\u0000b") if param == "cursor" else "a\u0000b"
    response = caller.call("GET", path, query_string={param: value})
    assert response.status_code in (200, 422)


# --- datetimes --------------------------------------------------------------------------------


def test_api_key_expiry_without_a_timezone_is_422_or_taken_as_utc(caller: Caller) -> None:
    response = caller.call(
        "POST",
        "/api/v1/api-keys",
        json={"name": "ci", "scopes": ["audit:read"], "expires_at": "2099-01-01T00:00:00"},
    )
    if response.status_code == 201:
        assert response.get_json()["expires_at"].startswith("2099-01-01T00:00:00")
    else:
        assert "expires_at" in expect(response, 422)["fields"]


@pytest.mark.parametrize("expires_at", ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"])
def test_api_key_expiry_at_the_edge_of_the_calendar_is_4xx(caller: Caller, expires_at: str) -> None:
    response = caller.call(
        "POST",
        "/api/v1/api-keys",
        json={"name": "ci", "scopes": ["audit:read"], "expires_at": expires_at},
    )
    assert "expires_at" in expect(response, 422)["fields"]


def test_scope_outside_the_list_is_422_naming_scopes(caller: Caller) -> None:
    response = caller.call(
        "POST", "/api/v1/api-keys", json={"name": "ci", "scopes": ["everything:admin"]}
    )
    fields = expect(response, 422)["fields"]
    assert any(name.startswith("scopes") for name in fields), fields


def test_user_patch_on_a_uuid_in_another_spelling_is_not_a_500(caller: Caller) -> None:
    spelled = "urn:uuid:" + str(uuid.UUID(caller.admin_id))
    response = caller.call("GET", f"/api/v1/users/{spelled}")
    assert response.status_code in (200, 400, 404)
