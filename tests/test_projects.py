"""Projects: the API (create, validate settings, merge, rotate the registration token, list,
bind, delete) and the audit row each mutation writes.

Every test taking `app`/`client` runs on both backends (SQLite + fakeredis, PostgreSQL + Redis).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import bearer, login, make_key, make_project, make_user

ADMIN = "admin@example.com"
T0 = datetime(2030, 1, 1, tzinfo=UTC)
DEFAULT_SETTINGS = {
    "heartbeat_interval_s": 30,
    "poll_interval_s": 30,
    "staleness_timeout_s": 120,
    "approvals_required": 0,
    "approvals_required_high_risk": 0,
    "open_registration": False,
    "drift_grace_s": 60,
    "drift_auto_remediate": False,
    "standby_slot": "green",
}


# --- helpers ------------------------------------------------------------------------------


def admin_headers(
    app: Any, *, project: str | None = None, scopes: list[str] | None = None
) -> dict[str, str]:
    from sqlalchemy import select

    from sentinel_cp import accounts
    from sentinel_cp.db import db

    with app.app_context():
        exists = db.session.scalar(select(accounts.User.id).where(accounts.User.email == ADMIN))
    if exists is None:
        make_user(app, ADMIN)
    return bearer(make_key(app, ADMIN, scopes or ["projects:admin", "audit:read"], project=project))


def create(client: Any, headers: dict[str, str], slug: str = "alpha", **body: Any) -> Any:
    return client.post(
        "/api/v1/projects",
        headers=headers,
        json={"slug": slug, "name": body.pop("name", slug.title()), **body},
    )


def audit_rows(
    app: Any, *, action: str | None = None, chain: str | None = None
) -> list[dict[str, Any]]:
    """Audit rows (as the API shows them), oldest first, optionally filtered."""
    from sqlalchemy import select

    from sentinel_cp import audit
    from sentinel_cp.db import db

    with app.app_context():
        query = select(audit.AuditLog).order_by(audit.AuditLog.chain, audit.AuditLog.seq)
        if action:
            query = query.where(audit.AuditLog.action == action)
        if chain:
            query = query.where(audit.AuditLog.chain == chain)
        rows = [
            {**row.to_dict(), "chain": row.chain} for row in db.session.execute(query).scalars()
        ]
        db.session.commit()
        return rows


def project_row(app: Any, slug: str) -> Any:
    from sentinel_cp import projects
    from sentinel_cp.db import db

    with app.app_context():
        project = projects.get_project(slug)
        db.session.expunge(project)
        return project


# --- create -------------------------------------------------------------------------------


def test_create_answers_201_with_default_settings(app: Any, client: Any) -> None:
    headers = admin_headers(app)
    response = create(client, headers, "alpha", name="Alpha Fleet")
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["slug"] == "alpha"
    assert body["name"] == "Alpha Fleet"
    assert body["settings"] == DEFAULT_SETTINGS
    assert body["has_registration_token"] is False
    uuid.UUID(body["id"])


def test_create_merges_given_settings_over_defaults(app: Any, client: Any) -> None:
    headers = admin_headers(app)
    response = create(
        client,
        headers,
        settings={"heartbeat_interval_s": 10, "open_registration": True, "standby_slot": "blue"},
    )
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["settings"] == {
        **DEFAULT_SETTINGS,
        "heartbeat_interval_s": 10,
        "open_registration": True,
        "standby_slot": "blue",
    }
    assert project_row(app, "alpha").settings["heartbeat_interval_s"] == 10


def test_create_with_a_duplicate_slug_is_409(app: Any, client: Any) -> None:
    headers = admin_headers(app)
    assert create(client, headers, "alpha").status_code == 201
    response = create(client, headers, "alpha", name="Other")
    assert response.status_code == 409
    assert response.get_json()["code"] == "slug_taken"
    assert len(audit_rows(app, action="project.created")) == 1


@pytest.mark.parametrize(
    "slug", ["Alpha", "-alpha", "alpha-", "al_pha", "al pha", "a", "a" * 51, "ålpha"]
)
def test_create_with_an_invalid_slug_is_422_naming_slug(app: Any, client: Any, slug: str) -> None:
    headers = admin_headers(app)
    response = create(client, headers, slug, name="X")
    assert response.status_code == 422, response.get_json()
    assert "slug" in response.get_json()["fields"]
    assert audit_rows(app, action="project.created") == []


@pytest.mark.parametrize("slug", ["ab", "a1", "edge-fleet-01", "a" * 50])
def test_create_accepts_valid_slugs(app: Any, client: Any, slug: str) -> None:
    headers = admin_headers(app)
    assert create(client, headers, slug, name="X").status_code == 201


def test_create_with_an_unknown_settings_key_is_422(app: Any, client: Any) -> None:
    headers = admin_headers(app)
    response = create(client, headers, settings={"poll_interval_s": 30, "colour": "red"})
    assert response.status_code == 422
    assert "settings.colour" in response.get_json()["fields"]


def test_create_with_an_unknown_top_level_field_is_422(app: Any, client: Any) -> None:
    headers = admin_headers(app)
    response = create(client, headers, owner="me")
    assert response.status_code == 422
    assert "owner" in response.get_json()["fields"]


@pytest.mark.parametrize(
    "field,value",
    [
        ("heartbeat_interval_s", 4),
        ("heartbeat_interval_s", 3601),
        ("poll_interval_s", 0),
        ("staleness_timeout_s", 86401),
        ("approvals_required", -1),
        ("approvals_required_high_risk", 11),
        ("drift_grace_s", -5),
    ],
)
def test_create_with_an_out_of_range_setting_is_422_naming_it(
    app: Any, client: Any, field: str, value: int
) -> None:
    headers = admin_headers(app)
    response = create(client, headers, settings={field: value})
    assert response.status_code == 422, response.get_json()
    assert f"settings.{field}" in response.get_json()["fields"]


@pytest.mark.parametrize(
    "field,value",
    [
        ("heartbeat_interval_s", "30"),
        ("poll_interval_s", 30.5),
        ("approvals_required", True),
        ("open_registration", "yes"),
        ("drift_auto_remediate", 1),
        ("standby_slot", "red"),
    ],
)
def test_create_with_a_wrongly_typed_setting_is_422_naming_it(
    app: Any, client: Any, field: str, value: Any
) -> None:
    headers = admin_headers(app)
    response = create(client, headers, settings={field: value})
    assert response.status_code == 422, response.get_json()
    assert f"settings.{field}" in response.get_json()["fields"]


@pytest.mark.parametrize(
    "settings",
    [
        {"staleness_timeout_s": 30},  # == default heartbeat 30
        {"heartbeat_interval_s": 200},  # > default staleness 120
        {"heartbeat_interval_s": 60, "staleness_timeout_s": 60},
    ],
)
def test_create_with_staleness_not_longer_than_heartbeat_is_422(
    app: Any, client: Any, settings: dict[str, int]
) -> None:
    headers = admin_headers(app)
    response = create(client, headers, settings=settings)
    assert response.status_code == 422, response.get_json()
    fields = response.get_json()["fields"]
    assert any(name.startswith("settings") for name in fields), fields
    assert "staleness_timeout_s" in json.dumps(fields)


def test_create_with_staleness_just_longer_than_heartbeat_is_accepted(
    app: Any, client: Any
) -> None:
    headers = admin_headers(app)
    response = create(
        client, headers, settings={"heartbeat_interval_s": 60, "staleness_timeout_s": 61}
    )
    assert response.status_code == 201, response.get_json()


def test_create_needs_the_projects_admin_scope(app: Any, client: Any) -> None:
    headers = admin_headers(app, scopes=["audit:read", "nodes:read"])
    response = create(client, headers)
    assert response.status_code == 403
    assert response.get_json()["required"] == "projects:admin"


def test_create_by_a_project_bound_key_is_403(app: Any, client: Any) -> None:
    make_project(app, "alpha")
    headers = admin_headers(app, project="alpha")
    response = create(client, headers, "beta")
    assert response.status_code == 403
    assert response.get_json()["code"] == "project_binding"


def test_create_through_the_session_cookie_records_the_user_as_actor(app: Any, client: Any) -> None:
    user_id = make_user(app, ADMIN)
    assert login(client, ADMIN).status_code == 200
    response = client.post("/api/v1/projects", json={"slug": "alpha", "name": "Alpha"})
    assert response.status_code == 201, response.get_json()
    (row,) = audit_rows(app, action="project.created")
    assert row["actor"] == {"type": "user", "id": user_id, "label": ADMIN}


# --- every mutation is audited ------------------------------------------------------------


def test_create_writes_one_project_created_row_on_the_projects_chain(app: Any, client: Any) -> None:
    headers = admin_headers(app)
    body = create(client, headers, settings={"poll_interval_s": 45}).get_json()
    rows = audit_rows(app, chain=body["id"])
    assert [r["action"] for r in rows] == ["project.created"]
    row = rows[0]
    assert row["seq"] == 1
    assert row["project_id"] == body["id"]
    assert row["resource"] == {"type": "project", "id": body["id"]}
    assert row["actor"]["type"] == "api_key"
    assert row["changes"]["slug"] == "alpha"
    assert row["changes"]["settings"]["poll_interval_s"] == 45


def test_update_writes_one_project_updated_row_with_the_diff(app: Any, client: Any) -> None:
    headers = admin_headers(app)
    pid = create(client, headers).get_json()["id"]
    response = client.patch(
        "/api/v1/projects/alpha",
        headers=headers,
        json={"name": "Renamed", "settings": {"poll_interval_s": 60}},
    )
    assert response.status_code == 200, response.get_json()
    rows = audit_rows(app, chain=pid)
    assert [r["action"] for r in rows] == ["project.created", "project.updated"]
    assert rows[1]["changes"] == {
        "name": ["Alpha", "Renamed"],
        "settings": {"poll_interval_s": [30, 60]},
    }


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": "Alpha"},
        {"settings": {}},
        {"settings": {"poll_interval_s": 30}},
        {"name": "Alpha", "settings": {"standby_slot": "green", "open_registration": False}},
    ],
)
def test_a_patch_that_changes_nothing_writes_no_audit_row(
    app: Any, client: Any, body: dict[str, Any]
) -> None:
    headers = admin_headers(app)
    created = create(client, headers).get_json()
    response = client.patch("/api/v1/projects/alpha", headers=headers, json=body)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["updated_at"] == created["updated_at"]
    assert [r["action"] for r in audit_rows(app, chain=created["id"])] == ["project.created"]


def test_delete_writes_one_project_deleted_row_on_the_global_chain(app: Any, client: Any) -> None:
    from sentinel_cp import audit

    headers = admin_headers(app)
    pid = create(client, headers).get_json()["id"]
    before_global = audit_rows(app, chain=audit.GLOBAL_CHAIN)
    assert client.delete("/api/v1/projects/alpha", headers=headers).status_code == 200
    after_global = audit_rows(app, chain=audit.GLOBAL_CHAIN)
    new_rows = after_global[len(before_global) :]
    assert [r["action"] for r in new_rows] == ["project.deleted"]
    assert new_rows[0]["project_id"] is None
    assert new_rows[0]["resource"] == {"type": "project", "id": pid}
    assert new_rows[0]["changes"] == {"slug": "alpha", "name": "Alpha", "api_keys_removed": []}
    # Nothing new on the project's own chain.
    assert [r["action"] for r in audit_rows(app, chain=pid)] == ["project.created"]


def test_rotation_writes_one_token_rotated_row_without_the_token(app: Any, client: Any) -> None:
    headers = admin_headers(app)
    pid = create(client, headers).get_json()["id"]
    first = client.post("/api/v1/projects/alpha/registration-token", headers=headers)
    second = client.post("/api/v1/projects/alpha/registration-token", headers=headers)
    rows = audit_rows(app, chain=pid)
    assert [r["action"] for r in rows] == [
        "project.created",
        "project.registration_token_rotated",
        "project.registration_token_rotated",
    ]
    assert rows[1]["metadata"] == {"replaced_previous": False}
    assert rows[2]["metadata"] == {"replaced_previous": True}
    dumped = json.dumps(rows)
    assert first.get_json()["token"] not in dumped
    assert second.get_json()["token"] not in dumped


def test_a_rejected_patch_writes_no_row_and_changes_nothing(app: Any, client: Any) -> None:
    headers = admin_headers(app)
    pid = create(
        client, headers, settings={"heartbeat_interval_s": 20, "staleness_timeout_s": 60}
    ).get_json()["id"]
    response = client.patch(
        "/api/v1/projects/alpha",
        headers=headers,
        json={"name": "New", "settings": {"heartbeat_interval_s": 90}},
    )
    assert response.status_code == 422
    shown = client.get("/api/v1/projects/alpha", headers=headers).get_json()
    assert shown["name"] == "Alpha"
    assert shown["settings"]["heartbeat_interval_s"] == 20
    assert [r["action"] for r in audit_rows(app, chain=pid)] == ["project.created"]


def test_update_project_records_its_audit_row_at_the_injected_time(app: Any) -> None:
    """`now=` is the clock for the mutation: updated_at and the audit row must agree."""
    from sentinel_cp import projects
    from sentinel_cp.audit import Actor
    from sentinel_cp.db import db

    with app.app_context():
        project = projects.create_project(Actor.system("test"), slug="alpha", name="Alpha", now=T0)
        db.session.commit()
        later = T0 + timedelta(days=3)
        projects.update_project(Actor.system("test"), project, name="Renamed", now=later)
        db.session.commit()
        assert project.updated_at == later
    (row,) = audit_rows(app, action="project.updated")
    assert row["created_at"] == later.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_domain_mutations_keep_the_project_chain_valid(app: Any) -> None:
    from sentinel_cp import audit, projects
    from sentinel_cp.audit import Actor
    from sentinel_cp.db import db

    actor = Actor.system("test")
    with app.app_context():
        project = projects.create_project(actor, slug="alpha", name="Alpha", now=T0)
        db.session.commit()
        projects.update_project(
            actor, project, settings={"approvals_required": 2}, now=T0 + timedelta(hours=1)
        )
        projects.rotate_registration_token(actor, project)
        db.session.commit()
        verdict = audit.verify_chain(project.id)
        assert verdict.valid, verdict
        assert verdict.checked == 3


# --- PATCH merges -------------------------------------------------------------------------


def test_patch_merges_settings_and_keeps_unnamed_keys(app: Any, client: Any) -> None:
    headers = admin_headers(app)
    create(
        client,
        headers,
        settings={
            "heartbeat_interval_s": 10,
            "staleness_timeout_s": 100,
            "open_registration": True,
        },
    )
    response = client.patch(
        "/api/v1/projects/alpha", headers=headers, json={"settings": {"poll_interval_s": 60}}
    )
    assert response.status_code == 200, response.get_json()
    expected = {
        **DEFAULT_SETTINGS,
        "heartbeat_interval_s": 10,
        "staleness_timeout_s": 100,
        "open_registration": True,
        "poll_interval_s": 60,
    }
    assert response.get_json()["settings"] == expected
    assert client.get("/api/v1/projects/alpha", headers=headers).get_json()["settings"] == expected
    assert project_row(app, "alpha").settings == expected


def test_patch_renames_without_touching_settings(app: Any, client: Any) -> None:
    headers = admin_headers(app)
    create(client, headers, settings={"approvals_required": 2})
    body = client.patch(
        "/api/v1/projects/alpha", headers=headers, json={"name": "Renamed"}
    ).get_json()
    assert body["name"] == "Renamed"
    assert body["slug"] == "alpha"
    assert body["settings"]["approvals_required"] == 2


def test_patch_checks_staleness_against_the_stored_heartbeat(app: Any, client: Any) -> None:
    headers = admin_headers(app)
    create(client, headers, settings={"heartbeat_interval_s": 60})
    response = client.patch(
        "/api/v1/projects/alpha", headers=headers, json={"settings": {"staleness_timeout_s": 60}}
    )
    assert response.status_code == 422


@pytest.mark.parametrize(
    "settings,field",
    [
        ({"colour": "red"}, "settings.colour"),
        ({"poll_interval_s": 1}, "settings.poll_interval_s"),
        ({"poll_interval_s": "60"}, "settings.poll_interval_s"),
    ],
)
def test_patch_rejects_bad_settings_naming_the_field(
    app: Any, client: Any, settings: dict[str, Any], field: str
) -> None:
    headers = admin_headers(app)
    create(client, headers)
    response = client.patch("/api/v1/projects/alpha", headers=headers, json={"settings": settings})
    assert response.status_code == 422
    assert field in response.get_json()["fields"]


def test_patch_of_an_unknown_project_is_404(app: Any, client: Any) -> None:
    headers = admin_headers(app)
    response = client.patch("/api/v1/projects/nope", headers=headers, json={"name": "X"})
    assert response.status_code == 404


def test_patch_advances_updated_at(app: Any, client: Any) -> None:
    from sentinel_cp import projects
    from sentinel_cp.db import db

    past = datetime(2020, 1, 1, tzinfo=UTC)
    headers = admin_headers(app)
    make_project(app, "alpha")
    with app.app_context():
        project = projects.get_project("alpha")
        project.updated_at = project.created_at = past
        db.session.commit()
    body = client.patch(
        "/api/v1/projects/alpha", headers=headers, json={"name": "Renamed"}
    ).get_json()
    assert datetime.fromisoformat(body["updated_at"]) > past
    assert datetime.fromisoformat(body["created_at"]) == past


# --- registration token -------------------------------------------------------------------


def test_rotation_returns_an_rt_token_once_with_201(app: Any, client: Any) -> None:
    headers = admin_headers(app)
    create(client, headers)
    response = client.post("/api/v1/projects/alpha/registration-token", headers=headers)
    assert response.status_code == 201
    body = response.get_json()
    assert set(body) == {"token"}
    assert body["token"].startswith("rt_")
    assert len(body["token"]) > 30
    shown = client.get("/api/v1/projects/alpha", headers=headers)
    assert shown.get_json()["has_registration_token"] is True
    assert body["token"] not in shown.get_data(as_text=True)


def test_rotation_makes_the_old_token_stop_matching(app: Any, client: Any) -> None:
    from sentinel_cp import projects

    headers = admin_headers(app)
    create(client, headers)
    old = client.post("/api/v1/projects/alpha/registration-token", headers=headers).get_json()[
        "token"
    ]
    assert projects.registration_token_matches(project_row(app, "alpha"), old)
    new = client.post("/api/v1/projects/alpha/registration-token", headers=headers).get_json()[
        "token"
    ]
    assert new != old
    project = project_row(app, "alpha")
    assert not projects.registration_token_matches(project, old)
    assert projects.registration_token_matches(project, new)


def test_registration_token_matches_refuses_empty_wrong_and_unset(app: Any) -> None:
    from sentinel_cp import projects
    from sentinel_cp.audit import Actor
    from sentinel_cp.db import db

    make_project(app, "alpha")
    project = project_row(app, "alpha")
    assert not projects.registration_token_matches(project, None)
    assert not projects.registration_token_matches(project, "")
    assert not projects.registration_token_matches(project, "rt_anything")
    with app.app_context():
        live = projects.get_project("alpha")
        token = projects.rotate_registration_token(Actor.system("test"), live)
        db.session.commit()
    project = project_row(app, "alpha")
    assert projects.registration_token_matches(project, token)
    assert not projects.registration_token_matches(project, token + "x")
    assert not projects.registration_token_matches(project, token[:-1])


def test_the_token_is_stored_only_as_a_hash(app: Any, client: Any) -> None:
    headers = admin_headers(app)
    create(client, headers)
    token = client.post("/api/v1/projects/alpha/registration-token", headers=headers).get_json()[
        "token"
    ]
    stored = project_row(app, "alpha").registration_token_hash
    assert stored and token not in stored and len(stored) == 64


def test_project_responses_never_include_the_token_or_its_hash(app: Any, client: Any) -> None:
    headers = admin_headers(app)
    create(client, headers)
    token = client.post("/api/v1/projects/alpha/registration-token", headers=headers).get_json()[
        "token"
    ]
    token_hash = project_row(app, "alpha").registration_token_hash
    responses = [
        client.get("/api/v1/projects/alpha", headers=headers),
        client.get("/api/v1/projects", headers=headers),
        client.patch("/api/v1/projects/alpha", headers=headers, json={"name": "Renamed"}),
        client.get("/api/v1/projects/alpha/audit", headers=headers),
        client.get("/api/v1/projects/alpha/audit/export?format=csv", headers=headers),
    ]
    for response in responses:
        assert response.status_code == 200, response.get_json()
        text_body = response.get_data(as_text=True)
        assert token not in text_body
        assert token_hash not in text_body
        assert "registration_token_hash" not in text_body
    assert set(responses[0].get_json()) == {
        "id",
        "slug",
        "name",
        "settings",
        "has_registration_token",
        "created_at",
        "updated_at",
    }


def test_rotation_of_another_projects_token_by_a_bound_key_is_404(app: Any, client: Any) -> None:
    make_project(app, "alpha")
    make_project(app, "beta")
    headers = admin_headers(app, project="alpha")
    response = client.post("/api/v1/projects/beta/registration-token", headers=headers)
    assert response.status_code == 404
    assert project_row(app, "beta").registration_token_hash is None


# --- list, show, binding ------------------------------------------------------------------


def test_list_paginates_by_slug_with_a_stable_cursor(app: Any, client: Any) -> None:
    headers = admin_headers(app)
    for slug in ["echo", "alpha", "delta", "bravo", "charlie"]:
        make_project(app, slug)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        query: dict[str, Any] = {"limit": 2}
        if cursor:
            query["cursor"] = cursor
        body = client.get("/api/v1/projects", headers=headers, query_string=query).get_json()
        assert body["total"] == (5 if pages == 0 else 6)
        seen += [item["slug"] for item in body["items"]]
        pages += 1
        if pages == 1:
            make_project(app, "aaa")  # sorts before the cursor: must not shift later pages
        cursor = body["next_cursor"]
        if cursor is None:
            break
        assert pages < 10
    assert seen == ["alpha", "bravo", "charlie", "delta", "echo"]
    assert pages == 3


def test_list_reports_total_and_a_null_cursor_on_the_last_page(app: Any, client: Any) -> None:
    headers = admin_headers(app)
    for slug in ["alpha", "bravo", "charlie"]:
        make_project(app, slug)
    body = client.get("/api/v1/projects?limit=3", headers=headers).get_json()
    assert body["total"] == 3
    assert body["next_cursor"] is None
    assert [item["slug"] for item in body["items"]] == ["alpha", "bravo", "charlie"]


@pytest.mark.parametrize("query", ["cursor=garbage!", "limit=0", "limit=501", "colour=red"])
def test_list_rejects_bad_query_parameters_with_422(app: Any, client: Any, query: str) -> None:
    headers = admin_headers(app)
    make_project(app, "alpha")
    assert client.get(f"/api/v1/projects?{query}", headers=headers).status_code == 422


def test_a_bound_key_sees_only_its_project(app: Any, client: Any) -> None:
    for slug in ["alpha", "beta", "gamma"]:
        make_project(app, slug)
    headers = admin_headers(app, project="beta")
    body = client.get("/api/v1/projects", headers=headers).get_json()
    assert [item["slug"] for item in body["items"]] == ["beta"]
    assert body["total"] == 1
    assert client.get("/api/v1/projects/beta", headers=headers).status_code == 200
    assert client.get("/api/v1/projects/alpha", headers=headers).status_code == 404
    assert (
        client.patch("/api/v1/projects/alpha", headers=headers, json={"name": "X"}).status_code
        == 404
    )
    assert client.delete("/api/v1/projects/gamma", headers=headers).status_code == 404
    assert project_row(app, "gamma").name == "Gamma"


def test_an_unbound_key_sees_every_project(app: Any, client: Any) -> None:
    for slug in ["alpha", "beta"]:
        make_project(app, slug)
    headers = admin_headers(app)
    body = client.get("/api/v1/projects", headers=headers).get_json()
    assert [item["slug"] for item in body["items"]] == ["alpha", "beta"]


def test_listing_projects_needs_authentication(app: Any, client: Any) -> None:
    make_project(app, "alpha")
    assert client.get("/api/v1/projects").status_code == 401


def test_show_an_unknown_project_is_404(app: Any, client: Any) -> None:
    headers = admin_headers(app)
    response = client.get("/api/v1/projects/nope", headers=headers)
    assert response.status_code == 404
    assert response.get_json()["code"] == "not_found"


# --- delete -------------------------------------------------------------------------------


def test_delete_removes_the_project_then_it_is_404(app: Any, client: Any) -> None:
    headers = admin_headers(app)
    create(client, headers)
    response = client.delete("/api/v1/projects/alpha", headers=headers)
    assert response.status_code == 200
    assert response.get_json() == {"status": "deleted"}
    assert client.get("/api/v1/projects/alpha", headers=headers).status_code == 404
    assert client.delete("/api/v1/projects/alpha", headers=headers).status_code == 404
    assert client.get("/api/v1/projects", headers=headers).get_json()["total"] == 0


def test_deleted_projects_audit_chain_still_verifies(app: Any, client: Any) -> None:
    from sentinel_cp import audit

    headers = admin_headers(app)
    pid = create(client, headers).get_json()["id"]
    client.patch("/api/v1/projects/alpha", headers=headers, json={"name": "Renamed"})
    client.post("/api/v1/projects/alpha/registration-token", headers=headers)
    assert client.delete("/api/v1/projects/alpha", headers=headers).status_code == 200
    with app.app_context():
        verdict = audit.verify_chain(uuid.UUID(pid))
        assert verdict.valid, verdict
        assert verdict.checked == 3
    body = client.get("/api/v1/audit/verify", headers=headers).get_json()
    assert body["valid"] is True, body
    assert len(audit_rows(app, chain=pid)) == 3  # the log outlives the project


def test_slug_of_a_deleted_project_can_be_reused_with_a_fresh_chain(app: Any, client: Any) -> None:
    from sentinel_cp import audit

    headers = admin_headers(app)
    old = create(client, headers).get_json()["id"]
    client.delete("/api/v1/projects/alpha", headers=headers)
    new = create(client, headers).get_json()["id"]
    assert new != old
    verdict = client.get("/api/v1/projects/alpha/audit/verify", headers=headers).get_json()
    assert verdict == {"valid": True, "checked": 1, "first_bad_id": None, "reason": None}
    with app.app_context():
        assert audit.verify_chain(uuid.UUID(old)).valid


def test_deleting_a_project_removes_the_keys_bound_to_it(app: Any, client: Any) -> None:
    """api_keys.project_id is ON DELETE CASCADE: a key bound to a deleted project must stop
    authenticating, on SQLite as on PostgreSQL (SQLite enforces foreign keys only when the
    connection enables them)."""
    from sqlalchemy import func, select

    from sentinel_cp import accounts
    from sentinel_cp.db import db

    admin = admin_headers(app)
    make_project(app, "alpha")
    bound = admin_headers(app, project="alpha")
    assert client.get("/api/v1/projects", headers=bound).status_code == 200
    assert client.delete("/api/v1/projects/alpha", headers=admin).status_code == 200
    with app.app_context():
        orphans = db.session.scalar(
            select(func.count())
            .select_from(accounts.ApiKey)
            .where(accounts.ApiKey.project_id.is_not(None))
        )
        db.session.commit()
    assert orphans == 0
    assert client.get("/api/v1/projects", headers=bound).status_code == 401
