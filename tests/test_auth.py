"""Who may call the operator API: API keys, session cookies, CSRF, throttling, rate limits.

The operator endpoints used as probes:
- `GET /api/v1/projects/alpha/audit` needs `audit:read` (a reader may call it);
- `POST /api/v1/projects` and `PATCH /api/v1/projects/<slug>` need `projects:admin`;
- `POST /api/v1/api-keys` needs `api_keys:admin`.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import PASSWORD, bearer, login, make_key, make_project, make_user

ADMIN = "admin@example.com"
OPERATOR = "operator@example.com"
READER = "reader@example.com"

AUDIT = "/api/v1/projects/alpha/audit"
PROJECTS = "/api/v1/projects"
API_KEYS = "/api/v1/api-keys"
ME = "/api/v1/me"
NEW_PROJECT = {"slug": "gamma", "name": "Gamma"}
NEW_KEY = {"name": "ci", "scopes": ["audit:read"]}
FOREIGN_ORIGIN = "https://evil.example"
COOKIE = "sentinel_session"

# Cookie-authenticated unsafe requests must declare JSON, even without a body (CSRF).
JSON_HEADERS = {"Content-Type": "application/json"}


# --- helpers -----------------------------------------------------------------------------


@pytest.fixture
def admin_key(app: Any) -> str:
    """An admin, project `alpha`, and an admin key holding every scope."""
    make_user(app, ADMIN, "admin")
    make_project(app, "alpha")
    from sentinel_cp.accounts import SCOPES

    return make_key(app, ADMIN, list(SCOPES))


def error_of(response: Any) -> dict[str, Any]:
    body = response.get_json()
    assert isinstance(body, dict), response.data
    return body


def key_row(app: Any, raw: str) -> Any:
    """The stored API key row for a raw key (looked up by its hash)."""
    from sqlalchemy import select

    from sentinel_cp.accounts import ApiKey
    from sentinel_cp.db import db

    with app.app_context():
        digest = hashlib.sha256(raw.encode()).hexdigest()
        row = db.session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
        assert row is not None
        db.session.expunge(row)
        return row


def set_key_columns(app: Any, raw: str, **values: Any) -> None:
    """Write columns of a stored key directly (what the API refuses, e.g. a past expiry)."""
    from sqlalchemy import update

    from sentinel_cp.accounts import ApiKey
    from sentinel_cp.db import db

    with app.app_context():
        digest = hashlib.sha256(raw.encode()).hexdigest()
        db.session.execute(update(ApiKey).where(ApiKey.key_hash == digest).values(**values))
        db.session.commit()


def update_user(app: Any, email: str, **changes: Any) -> None:
    """Change a user through the domain, as the system actor."""
    from sqlalchemy import select

    from sentinel_cp import accounts
    from sentinel_cp.audit import Actor
    from sentinel_cp.db import db

    with app.app_context():
        user = db.session.scalar(select(accounts.User).where(accounts.User.email == email))
        accounts.update_user(Actor.system("test"), user.id, **changes)
        db.session.commit()


def project_count(app: Any) -> int:
    from sqlalchemy import func, select

    from sentinel_cp.db import db
    from sentinel_cp.projects import Project

    with app.app_context():
        return int(db.session.scalar(select(func.count()).select_from(Project)))


def key_count(app: Any) -> int:
    from sqlalchemy import func, select

    from sentinel_cp.accounts import ApiKey
    from sentinel_cp.db import db

    with app.app_context():
        return int(db.session.scalar(select(func.count()).select_from(ApiKey)))


def logged_in(app: Any, email: str, role: str, **environ: str) -> Any:
    """A fresh test client holding a session cookie for a new user with `role`."""
    make_user(app, email, role)
    client = app.test_client()
    if environ:
        client.environ_base.update(environ)
    assert login(client, email).status_code == 200
    return client


# --- no or unusable credentials -----------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), [("GET", AUDIT), ("POST", PROJECTS)])
def test_request_without_credentials_is_401_unauthenticated(
    client: Any, admin_key: str, method: str, path: str
) -> None:
    response = client.open(path, method=method, json=NEW_PROJECT if method == "POST" else None)
    assert response.status_code == 401
    assert error_of(response)["code"] == "unauthenticated"
    assert project_count(client.application) == 1


@pytest.mark.parametrize(
    "header",
    [
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer    ",
        "sk_abcdefghijklmnop",
        "Token sk_abcdefghijklmnop",
    ],
)
def test_malformed_authorization_header_is_401(client: Any, admin_key: str, header: str) -> None:
    response = client.get(AUDIT, headers={"Authorization": header})
    assert response.status_code == 401
    assert error_of(response)["code"] == "invalid_authorization"


def test_malformed_authorization_header_wins_over_a_valid_session_cookie(app: Any) -> None:
    make_project(app, "alpha")
    admin = logged_in(app, ADMIN, "admin")
    assert admin.get(AUDIT).status_code == 200
    response = admin.get(AUDIT, headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert response.status_code == 401


@pytest.mark.parametrize(
    "token",
    [
        "sk_" + "A" * 43,
        "not-an-sk-key",
        "sk_" + "x" * 200,
    ],
)
def test_unknown_api_key_is_401_invalid_api_key(client: Any, admin_key: str, token: str) -> None:
    response = client.get(AUDIT, headers=bearer(token))
    assert response.status_code == 401
    assert error_of(response)["code"] == "invalid_api_key"


def test_revoked_key_is_401_api_key_revoked(client: Any, admin_key: str) -> None:
    victim = make_key(client.application, ADMIN, ["audit:read"])
    assert client.get(AUDIT, headers=bearer(victim)).status_code == 200
    key_id = str(key_row(client.application, victim).id)

    revoked = client.post(f"{API_KEYS}/{key_id}/revoke", headers=bearer(admin_key))
    assert revoked.status_code == 200

    response = client.get(AUDIT, headers=bearer(victim))
    assert response.status_code == 401
    assert error_of(response)["code"] == "api_key_revoked"


def test_expired_key_is_401_api_key_expired(client: Any, admin_key: str) -> None:
    app = client.application
    raw = make_key(app, ADMIN, ["audit:read"], expires_at=datetime.now(UTC) + timedelta(days=1))
    assert client.get(AUDIT, headers=bearer(raw)).status_code == 200

    set_key_columns(app, raw, expires_at=datetime.now(UTC) - timedelta(minutes=1))

    response = client.get(AUDIT, headers=bearer(raw))
    assert response.status_code == 401
    assert error_of(response)["code"] == "api_key_expired"


def test_key_expires_exactly_at_its_expiry_instant(app: Any) -> None:
    from sentinel_cp import accounts
    from sentinel_cp.errors import Unauthorized

    make_user(app, ADMIN, "admin")
    expiry = datetime(2031, 1, 1, tzinfo=UTC)
    raw = make_key(app, ADMIN, ["audit:read"], expires_at=expiry)
    with app.app_context():
        principal = accounts.authenticate_api_key(raw, now=expiry - timedelta(seconds=1))
        assert principal.scopes == {"audit:read"}
        with pytest.raises(Unauthorized) as caught:
            accounts.authenticate_api_key(raw, now=expiry)
        assert caught.value.code == "api_key_expired"


def test_key_of_a_disabled_owner_is_401(client: Any, admin_key: str) -> None:
    app = client.application
    make_user(app, OPERATOR, "operator")
    raw = make_key(app, OPERATOR, ["audit:read"])
    assert client.get(AUDIT, headers=bearer(raw)).status_code == 200

    update_user(app, OPERATOR, disabled=True)

    response = client.get(AUDIT, headers=bearer(raw))
    assert response.status_code == 401
    assert error_of(response)["code"] == "api_key_owner_disabled"


# --- scopes and project binding ----------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "scopes", "required"),
    [
        ("GET", AUDIT, ["nodes:read", "projects:admin"], "audit:read"),
        ("POST", PROJECTS, ["audit:read", "nodes:write"], "projects:admin"),
    ],
)
def test_key_without_the_route_scope_is_403_naming_the_required_scope(
    client: Any, admin_key: str, method: str, path: str, scopes: list[str], required: str
) -> None:
    raw = make_key(client.application, ADMIN, scopes)
    response = client.open(
        path, method=method, headers=bearer(raw), json=NEW_PROJECT if method == "POST" else None
    )
    assert response.status_code == 403
    body = error_of(response)
    assert body["code"] == "insufficient_scope"
    assert body["required"] == required
    assert body["error"].startswith("Insufficient scope")
    assert project_count(client.application) == 1


def test_key_with_the_route_scope_is_allowed(client: Any, admin_key: str) -> None:
    raw = make_key(client.application, ADMIN, ["projects:admin"])
    response = client.post(PROJECTS, headers=bearer(raw), json=NEW_PROJECT)
    assert response.status_code == 201
    assert response.get_json()["slug"] == "gamma"


def test_project_bound_key_sees_its_own_project_and_404_for_others(
    client: Any, admin_key: str
) -> None:
    app = client.application
    make_project(app, "beta")
    raw = make_key(app, ADMIN, ["audit:read", "projects:admin"], project="alpha")

    assert client.get(AUDIT, headers=bearer(raw)).status_code == 200
    other = client.get("/api/v1/projects/beta/audit", headers=bearer(raw))
    assert other.status_code == 404
    assert error_of(other)["code"] == "not_found"
    assert client.get("/api/v1/projects/beta", headers=bearer(raw)).status_code == 404
    listed = client.get(PROJECTS, headers=bearer(raw)).get_json()
    assert [p["slug"] for p in listed["items"]] == ["alpha"]
    assert listed["total"] == 1


def test_project_bound_key_cannot_create_projects(client: Any, admin_key: str) -> None:
    raw = make_key(client.application, ADMIN, ["projects:admin"], project="alpha")
    response = client.post(PROJECTS, headers=bearer(raw), json=NEW_PROJECT)
    assert response.status_code == 403
    assert error_of(response)["code"] == "project_binding"
    assert project_count(client.application) == 1


def test_demoted_owner_key_loses_scopes_beyond_the_new_role(client: Any, admin_key: str) -> None:
    app = client.application
    make_user(app, "second-admin@example.com", "admin")  # so the first may be demoted
    raw = make_key(app, ADMIN, ["audit:read", "nodes:write", "projects:admin"])
    assert client.post(PROJECTS, headers=bearer(raw), json=NEW_PROJECT).status_code == 201

    update_user(app, ADMIN, role="reader")

    refused = client.post(PROJECTS, headers=bearer(raw), json={"slug": "delta", "name": "D"})
    assert refused.status_code == 403
    assert error_of(refused)["required"] == "projects:admin"
    assert client.get(AUDIT, headers=bearer(raw)).status_code == 200
    assert client.get(ME, headers=bearer(raw)).get_json()["scopes"] == ["audit:read"]


def test_reader_session_cannot_patch_a_project(app: Any) -> None:
    make_project(app, "alpha")
    reader = logged_in(app, READER, "reader")
    assert reader.get(AUDIT).status_code == 200

    response = reader.patch("/api/v1/projects/alpha", json={"name": "Renamed"})
    assert response.status_code == 403
    body = error_of(response)
    assert (body["code"], body["required"]) == ("insufficient_scope", "projects:admin")
    assert reader.get("/api/v1/projects/alpha").get_json()["name"] == "Alpha"


def test_reader_session_cannot_create_api_keys(app: Any) -> None:
    reader = logged_in(app, READER, "reader")
    response = reader.post(API_KEYS, json=NEW_KEY)
    assert response.status_code == 403
    assert error_of(response)["code"] == "insufficient_scope"
    assert error_of(response)["required"] == "api_keys:admin"
    assert key_count(app) == 0


# --- last_used_at ------------------------------------------------------------------------


def test_last_used_at_is_set_when_a_key_is_used(client: Any, admin_key: str) -> None:
    app = client.application
    raw = make_key(app, ADMIN, ["audit:read"])
    assert key_row(app, raw).last_used_at is None

    before = datetime.now(UTC)
    assert client.get(AUDIT, headers=bearer(raw)).status_code == 200

    used = key_row(app, raw).last_used_at
    assert used is not None
    assert before - timedelta(seconds=1) <= used <= datetime.now(UTC)


def test_last_used_at_is_set_when_a_key_is_used_on_a_route_that_does_not_write(
    client: Any, admin_key: str
) -> None:
    # GET /users/<id> never commits, so the last_used_at update made while authenticating
    # is rolled back with the request's session.
    app = client.application
    user_id = make_user(app, READER, "reader")
    raw = make_key(app, ADMIN, ["api_keys:admin"])
    response = client.get(f"/api/v1/users/{user_id}", headers=bearer(raw))
    assert response.status_code == 200
    assert key_row(app, raw).last_used_at is not None


# --- login -------------------------------------------------------------------------------


def test_login_returns_the_user_and_sets_the_session_cookie(app: Any) -> None:
    user_id = make_user(app, ADMIN, "admin")
    client = app.test_client()
    response = login(client, "  Admin@Example.com ")
    assert response.status_code == 200
    assert response.get_json() == {"id": user_id, "email": ADMIN, "role": "admin"}
    cookie = client.get_cookie(COOKIE)
    assert cookie is not None and cookie.value
    assert cookie.http_only
    me = client.get(ME)
    assert me.status_code == 200
    assert me.get_json()["email"] == ADMIN
    assert me.get_json()["api_key"] is None


def test_wrong_password_and_unknown_email_get_the_same_401(app: Any) -> None:
    make_user(app, ADMIN, "admin")
    client = app.test_client()
    wrong_password = login(client, ADMIN, "not-the-password-at-all")
    unknown_email = login(client, "nobody@example.com")
    assert wrong_password.status_code == unknown_email.status_code == 401
    assert wrong_password.get_json() == unknown_email.get_json()
    assert wrong_password.get_json()["code"] == "invalid_credentials"
    assert client.get(ME).status_code == 401


def test_disabled_user_cannot_log_in_and_gets_the_invalid_credentials_answer(app: Any) -> None:
    make_user(app, ADMIN, "admin")
    make_user(app, READER, "reader")
    update_user(app, READER, disabled=True)
    client = app.test_client()
    response = login(client, READER)
    assert response.status_code == 401
    assert response.get_json() == login(client, "nobody@example.com").get_json()


def test_login_failures_are_recorded_in_the_audit_log(app: Any) -> None:
    make_user(app, ADMIN, "admin")
    audit_key = make_key(app, ADMIN, ["audit:read"])
    client = app.test_client()
    login(client, ADMIN, "not-the-password-at-all")
    entries = client.get(
        "/api/v1/audit?action=session.login_failed", headers=bearer(audit_key)
    ).get_json()
    assert entries["total"] == 1
    assert entries["items"][0]["metadata"]["email"] == ADMIN


def test_repeated_failures_for_one_account_are_throttled_with_retry_after(app: Any) -> None:
    make_user(app, ADMIN, "admin")
    make_user(app, READER, "reader")
    client = app.test_client()
    # Five failures, each from a different address: the per-account limit still applies.
    for n in range(5):
        client.environ_base["REMOTE_ADDR"] = f"10.0.0.{n + 1}"
        assert login(client, ADMIN, f"wrong-password-{n}").status_code == 401

    client.environ_base["REMOTE_ADDR"] = "10.0.0.99"
    throttled = login(client, ADMIN)  # even the right password
    assert throttled.status_code == 429
    assert 1 <= int(throttled.headers["Retry-After"]) <= 900
    assert client.get_cookie(COOKIE) is None

    assert login(client, READER).status_code == 200  # other accounts are unaffected


def test_four_failures_then_a_success_resets_the_account_counter(app: Any) -> None:
    make_user(app, ADMIN, "admin")
    client = app.test_client()
    for n in range(4):
        assert login(client, ADMIN, f"wrong-password-{n}").status_code == 401
    assert login(client, ADMIN).status_code == 200
    for n in range(4):
        assert login(client, ADMIN, f"wrong-password-{n}").status_code == 401
    assert login(client, ADMIN).status_code == 200


def test_repeated_failures_from_one_address_are_throttled_with_retry_after(app: Any) -> None:
    make_user(app, ADMIN, "admin")
    attacker = app.test_client()
    attacker.environ_base["REMOTE_ADDR"] = "203.0.113.7"
    # 20 failures spread over five accounts (4 each, under the per-account limit).
    for n in range(20):
        response = login(attacker, f"victim{n % 5}@example.com", "wrong-password")
        assert response.status_code == 401, n

    throttled = login(attacker, ADMIN)
    assert throttled.status_code == 429
    assert 1 <= int(throttled.headers["Retry-After"]) <= 300

    elsewhere = app.test_client()
    elsewhere.environ_base["REMOTE_ADDR"] = "198.51.100.1"
    assert login(elsewhere, ADMIN).status_code == 200


# --- logout and ending sessions ----------------------------------------------------------


def test_logout_revokes_the_old_cookie_server_side(app: Any) -> None:
    make_user(app, ADMIN, "admin")
    browser = app.test_client()
    assert login(browser, ADMIN).status_code == 200
    stolen = browser.get_cookie(COOKIE).value

    replay = app.test_client()
    replay.set_cookie(COOKIE, stolen)
    assert replay.get(ME).status_code == 200  # the copied cookie works before logout

    assert browser.delete("/api/v1/session", headers=JSON_HEADERS).status_code == 200
    assert browser.get(ME).status_code == 401

    again = app.test_client()
    again.set_cookie(COOKIE, stolen)
    response = again.get(ME)
    assert response.status_code == 401
    assert error_of(response)["code"] == "unauthenticated"


def test_a_redis_that_lost_its_data_cannot_bring_a_logged_out_session_back(app: Any) -> None:
    from sentinel_cp import broker

    make_user(app, ADMIN, "admin")
    browser = app.test_client()
    assert login(browser, ADMIN).status_code == 200
    stolen = browser.get_cookie(COOKIE).value
    assert browser.delete("/api/v1/session", headers=JSON_HEADERS).status_code == 200

    with app.app_context():
        broker.connection().flushdb()  # Redis restarted empty: the revocation is gone
    replay = app.test_client()
    replay.set_cookie(COOKIE, stolen)
    assert replay.get(ME).status_code == 401  # of the old generation: refused all the same

    fresh = app.test_client()
    assert login(fresh, ADMIN).status_code == 200  # a new generation begins at the next login
    assert fresh.get(ME).status_code == 200


def test_logout_does_not_end_other_sessions_of_the_same_user(app: Any) -> None:
    make_user(app, ADMIN, "admin")
    laptop, phone = app.test_client(), app.test_client()
    assert login(laptop, ADMIN).status_code == 200
    assert login(phone, ADMIN).status_code == 200
    assert laptop.delete("/api/v1/session", headers=JSON_HEADERS).status_code == 200
    assert phone.get(ME).status_code == 200


def test_disabling_a_user_ends_their_existing_session(app: Any) -> None:
    make_user(app, ADMIN, "admin")
    reader_id = make_user(app, READER, "reader")
    reader = app.test_client()
    assert login(reader, READER).status_code == 200
    assert reader.get(ME).status_code == 200
    admin = app.test_client()
    assert login(admin, ADMIN).status_code == 200

    patched = admin.patch(f"/api/v1/users/{reader_id}", json={"disabled": True})
    assert patched.status_code == 200

    response = reader.get(ME)
    assert response.status_code == 401
    assert error_of(response)["code"] == "unauthenticated"


def test_password_change_ends_sessions_and_only_the_new_password_works(app: Any) -> None:
    make_user(app, ADMIN, "admin")
    reader_id = make_user(app, READER, "reader")
    reader = app.test_client()
    assert login(reader, READER).status_code == 200
    admin = app.test_client()
    assert login(admin, ADMIN).status_code == 200

    new_password = "a-brand-new-password-42"
    patched = admin.patch(f"/api/v1/users/{reader_id}", json={"password": new_password})
    assert patched.status_code == 200

    assert reader.get(ME).status_code == 401
    fresh = app.test_client()
    assert login(fresh, READER, PASSWORD).status_code == 401
    assert login(fresh, READER, new_password).status_code == 200
    assert fresh.get(ME).status_code == 200


# --- CSRF (cookie-authenticated unsafe requests) -----------------------------------------


def test_cookie_post_from_a_foreign_origin_is_403_csrf_origin(app: Any) -> None:
    admin = logged_in(app, ADMIN, "admin")
    response = admin.post(API_KEYS, json=NEW_KEY, headers={"Origin": FOREIGN_ORIGIN})
    assert response.status_code == 403
    assert error_of(response)["code"] == "csrf_origin"
    assert key_count(app) == 0


def test_cookie_post_from_our_own_origin_is_accepted(app: Any) -> None:
    admin = logged_in(app, ADMIN, "admin")
    response = admin.post(API_KEYS, json=NEW_KEY, headers={"Origin": "http://localhost"})
    assert response.status_code == 201
    assert key_count(app) == 1


@pytest.mark.parametrize(
    "origin", ["null", "http://localhost.evil.example", "http://evil.example/localhost"]
)
def test_cookie_patch_from_lookalike_origins_is_refused(app: Any, origin: str) -> None:
    make_project(app, "alpha")
    admin = logged_in(app, ADMIN, "admin")
    response = admin.patch(
        "/api/v1/projects/alpha", json={"name": "Owned"}, headers={"Origin": origin}
    )
    assert response.status_code == 403
    assert error_of(response)["code"] == "csrf_origin"
    assert admin.get("/api/v1/projects/alpha").get_json()["name"] == "Alpha"


def test_cookie_form_post_is_refused_and_creates_nothing(app: Any) -> None:
    admin = logged_in(app, ADMIN, "admin")
    response = admin.post(PROJECTS, data={"slug": "gamma", "name": "Gamma"})
    assert response.status_code in (403, 415)
    assert project_count(app) == 0


def test_cookie_text_plain_post_with_json_text_is_refused(app: Any) -> None:
    admin = logged_in(app, ADMIN, "admin")
    response = admin.post(
        PROJECTS, data='{"slug": "gamma", "name": "Gamma"}', content_type="text/plain"
    )
    assert response.status_code in (403, 415)
    assert project_count(app) == 0


def test_cookie_form_post_without_a_body_is_refused(app: Any) -> None:
    # The spec: a cookie-authenticated unsafe request must be JSON; "a form post is 403".
    # An empty cross-site form (no Origin from older browsers) can hit action endpoints.
    make_user(app, ADMIN, "admin")
    raw = make_key(app, ADMIN, ["audit:read"])
    key_id = str(key_row(app, raw).id)
    admin = app.test_client()
    assert login(admin, ADMIN).status_code == 200

    response = admin.post(
        f"{API_KEYS}/{key_id}/revoke", content_type="application/x-www-form-urlencoded"
    )
    assert response.status_code in (403, 415)
    assert key_row(app, raw).revoked_at is None


def test_login_from_a_foreign_origin_is_refused(app: Any) -> None:
    make_user(app, ADMIN, "admin")
    client = app.test_client()
    response = client.post(
        "/api/v1/session",
        json={"email": ADMIN, "password": PASSWORD},
        headers={"Origin": FOREIGN_ORIGIN},
    )
    assert response.status_code == 403
    assert error_of(response)["code"] == "csrf_origin"
    assert client.get(ME).status_code == 401


def test_bearer_requests_are_not_subject_to_the_origin_check(client: Any, admin_key: str) -> None:
    headers = {**bearer(admin_key), "Origin": FOREIGN_ORIGIN}
    created_key = client.post(API_KEYS, json=NEW_KEY, headers=headers)
    assert created_key.status_code == 201
    created_project = client.post(PROJECTS, json=NEW_PROJECT, headers=headers)
    assert created_project.status_code == 201
    assert project_count(client.application) == 2


# --- API rate limit ----------------------------------------------------------------------


def test_key_authenticated_responses_carry_rate_limit_headers(client: Any, admin_key: str) -> None:
    first = client.get(AUDIT, headers=bearer(admin_key))
    second = client.get(AUDIT, headers=bearer(admin_key))
    assert first.headers["X-RateLimit-Limit"] == "1200"
    assert int(first.headers["X-RateLimit-Remaining"]) == 1199
    assert int(second.headers["X-RateLimit-Remaining"]) == 1198
    assert 1 <= int(second.headers["X-RateLimit-Reset"]) <= 60


def test_session_authenticated_responses_carry_rate_limit_headers(app: Any) -> None:
    admin = logged_in(app, ADMIN, "admin")
    response = admin.get(ME)
    assert response.status_code == 200
    assert response.headers["X-RateLimit-Limit"] == "1200"
    assert int(response.headers["X-RateLimit-Remaining"]) == 1199


def test_unauthenticated_responses_carry_no_rate_limit_headers(client: Any) -> None:
    response = client.get(ME)
    assert response.status_code == 401
    assert "X-RateLimit-Limit" not in response.headers


def test_key_over_its_rate_limit_is_429_with_retry_after(client: Any, admin_key: str) -> None:
    from sentinel_cp import broker

    key_id = key_row(client.application, admin_key).id
    with client.application.app_context():
        broker.connection().set(f"sentinel:throttle:api:key:{key_id}", 1200, ex=30)

    response = client.get(AUDIT, headers=bearer(admin_key))
    assert response.status_code == 429
    assert error_of(response)["code"] == "rate_limit_exceeded"
    assert 1 <= int(response.headers["Retry-After"]) <= 30
    # Another key of the same user has its own budget.
    other = make_key(client.application, ADMIN, ["audit:read"])
    assert client.get(AUDIT, headers=bearer(other)).status_code == 200
