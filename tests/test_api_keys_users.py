"""API keys (`/api/v1/api-keys`) and users (`/api/v1/users`): creation rules, what is stored,
revocation, pagination, and the admin-only user management with its last-admin guard."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import PASSWORD, bearer, login, make_key, make_project, make_user

ADMIN = "admin@example.com"
OPERATOR = "operator@example.com"
READER = "reader@example.com"

API_KEYS = "/api/v1/api-keys"
USERS = "/api/v1/users"
GLOBAL_AUDIT = "/api/v1/audit"
NEW_USER = {"email": "new@example.com", "password": "a-long-enough-password", "role": "operator"}

# Cookie-authenticated unsafe requests must declare JSON, even without a body (CSRF).
JSON_HEADERS = {"Content-Type": "application/json"}


# --- helpers -----------------------------------------------------------------------------


@pytest.fixture
def admin(app: Any) -> Any:
    """A test client logged in as the only admin."""
    make_user(app, ADMIN, "admin")
    client = app.test_client()
    assert login(client, ADMIN).status_code == 200
    return client


def admin_id(app: Any) -> str:
    return user_id_of(app, ADMIN)


def user_id_of(app: Any, email: str) -> str:
    from sqlalchemy import select

    from sentinel_cp.accounts import User
    from sentinel_cp.db import db

    with app.app_context():
        return str(db.session.scalar(select(User.id).where(User.email == email)))


def key_count(app: Any) -> int:
    from sqlalchemy import func, select

    from sentinel_cp.accounts import ApiKey
    from sentinel_cp.db import db

    with app.app_context():
        return int(db.session.scalar(select(func.count()).select_from(ApiKey)))


def user_count(app: Any) -> int:
    from sqlalchemy import func, select

    from sentinel_cp.accounts import User
    from sentinel_cp.db import db

    with app.app_context():
        return int(db.session.scalar(select(func.count()).select_from(User)))


def raw_rows(app: Any, table: str) -> list[dict[str, Any]]:
    """Every column of every row of `table`, as the database returns it."""
    from sentinel_cp.db import db

    with app.app_context():
        query = db.metadata.tables[table].select()
        return [dict(row) for row in db.session.execute(query).mappings()]


def audit_entries(client: Any, **filters: str) -> dict[str, Any]:
    response = client.get(GLOBAL_AUDIT, query_string=filters)
    assert response.status_code == 200, response.get_json()
    return response.get_json()  # type: ignore[no-any-return]


def cursor_of(*values: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(values)).encode()).decode().rstrip("=")


# --- creating keys -----------------------------------------------------------------------


def test_created_key_is_201_with_the_raw_key_and_documented_fields(admin: Any) -> None:
    make_project(admin.application, "alpha")
    expires = "2031-01-01T00:00:00+00:00"
    response = admin.post(
        API_KEYS,
        json={
            "name": "deploy",
            "scopes": ["nodes:write", "audit:read", "nodes:write"],
            "project": "alpha",
            "expires_at": expires,
        },
    )
    assert response.status_code == 201
    body = response.get_json()
    assert body["name"] == "deploy"
    assert body["key"].startswith("sk_")
    assert len(body["key"]) == 3 + 43
    assert body["prefix"] == body["key"][:12]
    assert body["scopes"] == ["audit:read", "nodes:write"]
    assert body["project"] == "alpha"
    assert datetime.fromisoformat(body["expires_at"]) == datetime(2031, 1, 1, tzinfo=UTC)
    assert body["created_by"] == ADMIN
    assert body["revoked_at"] is None and body["last_used_at"] is None

    me = admin.get("/api/v1/me", headers=bearer(body["key"])).get_json()
    assert me["api_key"] == {
        "id": body["id"],
        "name": "deploy",
        "prefix": body["prefix"],
        "project": "alpha",
    }


def test_raw_key_appears_only_in_the_creation_response(admin: Any) -> None:
    created = admin.post(API_KEYS, json={"name": "ci", "scopes": ["audit:read"]}).get_json()
    raw = created["key"]

    shown = admin.get(f"{API_KEYS}/{created['id']}")
    assert shown.status_code == 200
    assert "key" not in shown.get_json()
    assert shown.get_json()["prefix"] == created["prefix"]
    listed = admin.get(API_KEYS).get_json()
    assert [item["id"] for item in listed["items"]] == [created["id"]]
    assert "key" not in listed["items"][0]
    assert raw not in shown.get_data(as_text=True)
    assert raw not in admin.get(API_KEYS).get_data(as_text=True)


def test_key_is_stored_only_as_its_sha256_hash(admin: Any) -> None:
    app = admin.application
    created = admin.post(API_KEYS, json={"name": "ci", "scopes": ["audit:read"]}).get_json()
    raw, secret_part = created["key"], created["key"][12:]

    (row,) = raw_rows(app, "api_keys")
    assert row["key_hash"] == hashlib.sha256(raw.encode()).hexdigest()
    for column, value in row.items():
        assert secret_part not in str(value), f"raw key material in api_keys.{column}"
    for entry in raw_rows(app, "audit_logs"):
        assert secret_part not in json.dumps(entry, default=str)


def test_key_scopes_beyond_the_creator_role_are_refused_with_scope_exceeds_role(
    app: Any,
) -> None:
    # Only admins reach POST /api-keys, and an admin holds every scope, so the ceiling is
    # exercised through the domain (what the console and API both call).
    from sentinel_cp.errors import Forbidden

    make_user(app, OPERATOR, "operator")
    with pytest.raises(Forbidden) as caught:
        make_key(app, OPERATOR, ["nodes:write", "projects:admin"])
    assert caught.value.code == "scope_exceeds_role"
    assert "projects:admin" in caught.value.message
    assert key_count(app) == 0
    assert make_key(app, OPERATOR, ["nodes:write", "audit:read"]).startswith("sk_")


def test_key_cannot_create_a_key_with_scopes_it_does_not_hold(admin: Any) -> None:
    # "A key can never hold more than its creator": a CI key allowed only to manage keys
    # must not mint itself a projects:admin key.
    app = admin.application
    limited = make_key(app, ADMIN, ["api_keys:admin"])
    response = admin.post(
        API_KEYS, headers=bearer(limited), json={"name": "escalate", "scopes": ["projects:admin"]}
    )
    assert response.status_code == 403
    assert response.get_json()["code"] == "scope_exceeds_role"
    assert key_count(app) == 1


@pytest.mark.parametrize("scopes", [["nodes:read", "nodes:admin"], ["everything"], ["NODES:READ"]])
def test_unknown_scope_names_are_422_naming_scopes(admin: Any, scopes: list[str]) -> None:
    response = admin.post(API_KEYS, json={"name": "ci", "scopes": scopes})
    assert response.status_code == 422
    body = response.get_json()
    assert body["code"] == "invalid"
    assert body["fields"]["scopes"]
    assert key_count(admin.application) == 0


def test_empty_scopes_are_422(admin: Any) -> None:
    response = admin.post(API_KEYS, json={"name": "ci", "scopes": []})
    assert response.status_code == 422
    assert "scopes" in response.get_json()["fields"]
    assert key_count(admin.application) == 0


def test_expiry_in_the_past_is_422(admin: Any) -> None:
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    response = admin.post(
        API_KEYS, json={"name": "ci", "scopes": ["audit:read"], "expires_at": past}
    )
    assert response.status_code == 422
    assert "expires_at" in response.get_json()["fields"]
    assert key_count(admin.application) == 0


def test_expiry_without_a_timezone_is_422_not_a_server_error(admin: Any) -> None:
    response = admin.post(
        API_KEYS, json={"name": "ci", "scopes": ["audit:read"], "expires_at": "2031-01-01T00:00:00"}
    )
    assert response.status_code == 422
    assert "expires_at" in response.get_json()["fields"]
    assert key_count(admin.application) == 0


def test_project_bound_key_creates_keys_only_for_its_own_project(admin: Any) -> None:
    app = admin.application
    make_project(app, "alpha")
    make_project(app, "beta")
    bound = make_key(app, ADMIN, ["api_keys:admin", "audit:read"], project="alpha")

    unbound = admin.post(
        API_KEYS, headers=bearer(bound), json={"name": "x", "scopes": ["audit:read"]}
    )
    assert unbound.status_code == 403
    assert unbound.get_json()["code"] == "project_binding"
    other = admin.post(
        API_KEYS,
        headers=bearer(bound),
        json={"name": "x", "scopes": ["audit:read"], "project": "beta"},
    )
    assert other.status_code == 404
    own = admin.post(
        API_KEYS,
        headers=bearer(bound),
        json={"name": "x", "scopes": ["audit:read"], "project": "alpha"},
    )
    assert own.status_code == 201
    assert own.get_json()["project"] == "alpha"


def test_project_bound_key_lists_only_keys_of_its_project(admin: Any) -> None:
    app = admin.application
    make_project(app, "alpha")
    make_project(app, "beta")
    make_key(app, ADMIN, ["audit:read"])
    make_key(app, ADMIN, ["audit:read"], project="beta")
    bound = make_key(app, ADMIN, ["api_keys:admin"], project="alpha")

    listed = admin.get(API_KEYS, headers=bearer(bound)).get_json()
    assert listed["total"] == 1
    assert [item["project"] for item in listed["items"]] == ["alpha"]
    assert admin.get(API_KEYS).get_json()["total"] == 3


# --- revoking keys -----------------------------------------------------------------------


def test_revoke_is_idempotent_and_audited_once(admin: Any) -> None:
    created = admin.post(API_KEYS, json={"name": "ci", "scopes": ["audit:read"]}).get_json()
    path = f"{API_KEYS}/{created['id']}/revoke"

    first = admin.post(path, headers=JSON_HEADERS)
    second = admin.post(path, json={})
    assert first.status_code == second.status_code == 200
    assert first.get_json()["revoked_at"] is not None
    assert second.get_json()["revoked_at"] == first.get_json()["revoked_at"]
    assert (
        admin.get(f"{API_KEYS}/{created['id']}").get_json()["revoked_at"]
        == (first.get_json()["revoked_at"])
    )

    entries = audit_entries(admin, action="api_key.revoked", resource=f"api_key:{created['id']}")
    assert entries["total"] == 1
    assert entries["items"][0]["actor"]["label"] == ADMIN
    assert entries["items"][0]["changes"] == {"prefix": created["prefix"]}
    assert admin.get("/api/v1/me", headers=bearer(created["key"])).status_code == 401


def test_revoking_an_unknown_key_is_404_and_a_malformed_id_400(admin: Any) -> None:
    unknown = admin.post(
        f"{API_KEYS}/00000000-0000-4000-8000-000000000000/revoke", headers=JSON_HEADERS
    )
    assert unknown.status_code == 404
    malformed = admin.post(f"{API_KEYS}/not-a-key/revoke", headers=JSON_HEADERS)
    assert malformed.status_code == 400
    assert malformed.get_json()["code"] == "malformed_id"
    assert admin.get(f"{API_KEYS}/12345").get_json()["code"] == "malformed_id"


# --- listing keys ------------------------------------------------------------------------


def _create_keys_for_pagination(app: Any) -> set[str]:
    """Six keys: three with distinct creation times and three sharing one instant."""
    from sqlalchemy import select

    from sentinel_cp import accounts
    from sentinel_cp.db import db

    for _ in range(3):
        make_key(app, ADMIN, ["audit:read"])
    same_instant = datetime.now(UTC) - timedelta(hours=1)
    with app.app_context():
        user = db.session.scalar(select(accounts.User).where(accounts.User.email == ADMIN))
        principal = accounts.principal_for_user(user)
        for n in range(3):
            accounts.create_api_key(
                principal,
                name=f"twin {n}",
                scopes=["nodes:read"],
                project_id=None,
                expires_at=None,
                now=same_instant,
            )
        db.session.commit()
    with app.app_context():
        return {str(key_id) for key_id in db.session.scalars(select(accounts.ApiKey.id))}


def test_key_list_with_limit_1_follows_next_cursor_through_every_key_once(admin: Any) -> None:
    app = admin.application
    expected = _create_keys_for_pagination(app)
    assert len(expected) == 6

    seen: list[str] = []
    created: list[str] = []
    cursor: str | None = None
    for _ in range(20):
        query = {"limit": "1", **({"cursor": cursor} if cursor else {})}
        response = admin.get(API_KEYS, query_string=query)
        assert response.status_code == 200
        page = response.get_json()
        assert len(page["items"]) == 1
        assert page["total"] == 6
        seen.append(page["items"][0]["id"])
        created.append(page["items"][0]["created_at"])
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert len(seen) == len(set(seen)) == 6
    assert set(seen) == expected
    stamps = [datetime.fromisoformat(c) for c in created]
    assert stamps == sorted(stamps, reverse=True)


def test_key_list_cursor_is_stable_when_keys_are_added_between_pages(admin: Any) -> None:
    app = admin.application
    for _ in range(3):
        make_key(app, ADMIN, ["audit:read"])
    first = admin.get(API_KEYS, query_string={"limit": "2"}).get_json()
    make_key(app, ADMIN, ["audit:read"])  # newer than everything already listed

    rest = admin.get(
        API_KEYS, query_string={"limit": "2", "cursor": first["next_cursor"]}
    ).get_json()
    first_ids = [item["id"] for item in first["items"]]
    rest_ids = [item["id"] for item in rest["items"]]
    assert len(rest_ids) == 1
    assert not set(first_ids) & set(rest_ids)
    assert rest["next_cursor"] is None


@pytest.mark.parametrize(
    "cursor",
    [
        "garbage",
        "!!!not-base64!!!",
        "",
        cursor_of("2030-01-01T00:00:00+00:00"),
        cursor_of("not-a-date", "00000000-0000-4000-8000-000000000000"),
        cursor_of("2030-01-01T00:00:00+00:00", "not-a-uuid"),
        cursor_of(1, 2),
    ],
)
def test_garbage_key_list_cursor_is_422_naming_cursor(admin: Any, cursor: str) -> None:
    make_key(admin.application, ADMIN, ["audit:read"])
    response = admin.get(API_KEYS, query_string={"cursor": cursor})
    assert response.status_code == 422
    body = response.get_json()
    assert body["code"] == "invalid"
    assert any("cursor" in name for name in body["fields"])


# --- users: who may manage them ----------------------------------------------------------


def test_admin_creates_a_user_who_can_then_log_in(admin: Any) -> None:
    response = admin.post(USERS, json={**NEW_USER, "email": "New@Example.COM"})
    assert response.status_code == 201
    body = response.get_json()
    assert body["email"] == "new@example.com"
    assert body["role"] == "operator"
    assert body["disabled"] is False
    assert body["last_login_at"] is None
    assert "password" not in body and "password_hash" not in body

    fresh = admin.application.test_client()
    assert login(fresh, "new@example.com", NEW_USER["password"]).get_json()["role"] == "operator"
    assert audit_entries(admin, action="user.created", resource=f"user:{body['id']}")["total"] == 1


def test_creating_a_user_with_a_taken_email_is_409(admin: Any) -> None:
    assert admin.post(USERS, json=NEW_USER).status_code == 201
    response = admin.post(USERS, json={**NEW_USER, "email": "NEW@example.com"})
    assert response.status_code == 409
    assert response.get_json()["code"] == "email_taken"
    assert user_count(admin.application) == 2


def test_creating_a_user_with_a_short_password_is_422(admin: Any) -> None:
    response = admin.post(USERS, json={**NEW_USER, "password": "short"})
    assert response.status_code == 422
    assert "password" in response.get_json()["fields"]
    assert user_count(admin.application) == 1


@pytest.mark.parametrize("role", ["operator", "reader"])
def test_non_admin_sessions_get_403_on_users(app: Any, role: str) -> None:
    make_user(app, ADMIN, "admin")
    email = f"{role}@example.com"
    make_user(app, email, role)
    client = app.test_client()
    assert login(client, email).status_code == 200

    for response in (
        client.get(USERS),
        client.post(USERS, json=NEW_USER),
        client.patch(f"{USERS}/{admin_id(app)}", json={"disabled": True}),
    ):
        assert response.status_code == 403
        assert response.get_json()["code"] == "insufficient_scope"
        assert response.get_json()["required"] == "api_keys:admin"
    assert user_count(app) == 2


def test_project_bound_key_with_api_keys_admin_gets_403_on_users(admin: Any) -> None:
    app = admin.application
    make_project(app, "alpha")
    bound = make_key(app, ADMIN, ["api_keys:admin"], project="alpha")

    listed = admin.get(USERS, headers=bearer(bound))
    assert listed.status_code == 403
    assert listed.get_json()["code"] == "project_binding"
    created = admin.post(USERS, headers=bearer(bound), json=NEW_USER)
    assert created.status_code == 403
    assert user_count(app) == 1
    unbound = make_key(app, ADMIN, ["api_keys:admin"])
    assert admin.get(USERS, headers=bearer(unbound)).status_code == 200


def test_admin_lists_users(admin: Any) -> None:
    make_user(admin.application, READER, "reader")
    listed = admin.get(USERS).get_json()
    assert listed["total"] == 2
    assert [u["email"] for u in listed["items"]] == [ADMIN, READER]


# --- users: changing them ----------------------------------------------------------------


def test_patch_changes_role_and_is_audited_as_user_updated(admin: Any) -> None:
    reader_id = make_user(admin.application, READER, "reader")
    response = admin.patch(f"{USERS}/{reader_id}", json={"role": "operator"})
    assert response.status_code == 200
    assert response.get_json()["role"] == "operator"
    assert admin.get(f"{USERS}/{reader_id}").get_json()["role"] == "operator"

    entries = audit_entries(admin, action="user.updated")
    assert entries["total"] == 1
    entry = entries["items"][0]
    assert entry["resource"] == {"type": "user", "id": reader_id}
    assert entry["changes"] == {"role": ["reader", "operator"]}
    assert entry["actor"] == {"type": "user", "id": admin_id(admin.application), "label": ADMIN}


def test_patch_disables_a_user_and_is_audited_as_user_updated(admin: Any) -> None:
    reader_id = make_user(admin.application, READER, "reader")
    response = admin.patch(f"{USERS}/{reader_id}", json={"disabled": True})
    assert response.status_code == 200
    assert response.get_json()["disabled"] is True

    entries = audit_entries(admin, action="user.updated", resource=f"user:{reader_id}")
    assert entries["total"] == 1
    assert entries["items"][0]["changes"] == {"disabled": [False, True]}
    assert login(admin.application.test_client(), READER).status_code == 401


def test_patch_that_changes_nothing_is_not_audited(admin: Any) -> None:
    reader_id = make_user(admin.application, READER, "reader")
    response = admin.patch(f"{USERS}/{reader_id}", json={"role": "reader", "disabled": False})
    assert response.status_code == 200
    assert audit_entries(admin, action="user.updated")["total"] == 0


@pytest.mark.parametrize("change", [{"role": "operator"}, {"role": "reader"}, {"disabled": True}])
def test_demoting_or_disabling_the_last_admin_is_409_last_admin(
    admin: Any, change: dict[str, Any]
) -> None:
    app = admin.application
    # Another admin exists but is disabled: it does not count.
    make_user(app, "dormant@example.com", "admin")
    admin.patch(f"{USERS}/{user_id_of(app, 'dormant@example.com')}", json={"disabled": True})

    response = admin.patch(f"{USERS}/{admin_id(app)}", json=change)
    assert response.status_code == 409
    assert response.get_json()["code"] == "last_admin"
    me = admin.get(f"{USERS}/{admin_id(app)}").get_json()
    assert me["role"] == "admin" and me["disabled"] is False


def test_demoting_an_admin_is_allowed_while_another_active_admin_remains(admin: Any) -> None:
    app = admin.application
    other_id = make_user(app, "other-admin@example.com", "admin")
    response = admin.patch(f"{USERS}/{other_id}", json={"role": "reader"})
    assert response.status_code == 200
    assert response.get_json()["role"] == "reader"
    assert admin.patch(f"{USERS}/{admin_id(app)}", json={"role": "reader"}).status_code == 409


def test_patch_with_an_unknown_role_is_422(admin: Any) -> None:
    reader_id = make_user(admin.application, READER, "reader")
    response = admin.patch(f"{USERS}/{reader_id}", json={"role": "superuser"})
    assert response.status_code == 422
    assert "role" in response.get_json()["fields"]


@pytest.mark.parametrize("method", ["GET", "PATCH"])
def test_malformed_user_id_is_400_malformed_id(admin: Any, method: str) -> None:
    response = admin.open(
        f"{USERS}/not-a-uuid", method=method, json={"role": "reader"} if method == "PATCH" else None
    )
    assert response.status_code == 400
    assert response.get_json()["code"] == "malformed_id"


@pytest.mark.parametrize("method", ["GET", "PATCH"])
def test_unknown_user_id_is_404(admin: Any, method: str) -> None:
    response = admin.open(
        f"{USERS}/00000000-0000-4000-8000-000000000000",
        method=method,
        json={"role": "reader"} if method == "PATCH" else None,
    )
    assert response.status_code == 404
    assert response.get_json()["code"] == "not_found"


def test_admin_password_reset_lets_the_user_log_in_with_the_new_password(admin: Any) -> None:
    reader_id = make_user(admin.application, READER, "reader")
    new_password = "reset-by-the-admin-2024"
    assert admin.patch(f"{USERS}/{reader_id}", json={"password": new_password}).status_code == 200
    client = admin.application.test_client()
    assert login(client, READER, PASSWORD).status_code == 401
    assert login(client, READER, new_password).status_code == 200
    entries = audit_entries(admin, action="user.updated", resource=f"user:{reader_id}")
    assert entries["items"][0]["changes"] == {"password": "changed"}
    assert new_password not in json.dumps(entries)
