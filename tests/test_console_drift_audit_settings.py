"""The Drift, Audit log and Settings pages of the console, driven by NiceGUI's simulated user
(and once by Chromium).

Data is seeded through the domain or as plain rows (drift events); every change a page makes
is checked in the database and in the audit log, and every control a reader does not get is
also refused by the handler behind it when called with the reader's own session cookie.
"""

from __future__ import annotations

import importlib
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import test_server
from conftest import PASSWORD
from nicegui.testing import User
from test_server import ARTIFACTS, start_server, wait_for_websocket

from sentinel_cp.errors import DomainError, Forbidden

if TYPE_CHECKING:
    from console_support import Console

pytest_plugins = ["console_support"]
chromium = test_server.chromium  # the Selenium fixture of the server tests, shared


def page(name: str) -> Any:
    """The page module the running console imported (NiceGUI re-imports pages per test)."""
    return importlib.import_module(f"console.{name}")


def notified(user: User, text: str) -> bool:
    return any(text in message for message in user.notify.messages)


def texts(user: User, marker: str) -> list[str]:
    """The texts of the labels marked `marker` now (a refresh may have replaced them)."""
    return [element.text for element in user._gather_elements(marker=marker)]


def global_audit(console: Console) -> list[tuple[str, str]]:
    """The global chain (users, API keys, sessions) as (action, actor), oldest first."""
    from sqlalchemy import select

    from sentinel_cp.audit import AuditLog
    from sentinel_cp.db import db

    with console.app.app_context():
        rows = db.session.execute(
            select(AuditLog.action, AuditLog.actor_label)
            .where(AuditLog.chain == "global")
            .order_by(AuditLog.seq)
        )
        return [(action, actor) for action, actor in rows]


# --- drift ------------------------------------------------------------------------------------


def add_drift(
    console: Console,
    node_id: str,
    node_name: str,
    *,
    severity: str = "high",
    status: str = "active",
    expected: str | None = None,
    actual: str | None = None,
    opened: datetime | None = None,
) -> str:
    """Insert a drift event row as the drift job would have opened it (no audit, no event)."""
    from sentinel_cp.db import db
    from sentinel_cp.drift import DriftEvent

    opened = opened or datetime.now(UTC) - timedelta(minutes=20)
    resolved = status == "resolved"
    event = DriftEvent(
        id=uuid.uuid4(),
        project_id=uuid.UUID(console.project_id),
        node_id=uuid.UUID(node_id),
        node_name=node_name,
        kind="bundle",
        reason="bundle_mismatch",
        severity=severity,
        status=status,
        expected_bundle_id=expected,
        actual_bundle_id=actual,
        first_seen_at=opened - timedelta(minutes=1),
        opened_at=opened,
        resolved_at=opened + timedelta(minutes=5) if resolved else None,
        resolution="auto_resolved" if resolved else None,
        resolved_by="drift" if resolved else None,
    )

    def insert() -> str:
        db.session.add(event)
        return str(event.id)

    return console.run(insert)


def drift_state(console: Console, event_id: str) -> dict[str, Any]:
    from sentinel_cp.db import db
    from sentinel_cp.drift import DriftEvent

    def read() -> dict[str, Any]:
        event = db.session.get(DriftEvent, uuid.UUID(event_id))
        return {"status": event.status, "comment": event.comment, "by": event.resolved_by}

    return console.run(read)


def drift_fleet(console: Console) -> dict[str, Any]:
    """Three nodes: two drifting now (high, low), one whose drift resolved itself."""
    old, new = console.add_bundle("v1"), console.add_bundle("v2")
    ids = console.add_nodes(3, prefix="edge")
    return {
        "old": old,
        "new": new,
        "high": add_drift(console, ids[0], "edge-00001", expected=new, actual=old),
        "low": add_drift(console, ids[1], "edge-00002", severity="low", expected=new, actual=None),
        "resolved": add_drift(
            console, ids[2], "edge-00003", status="resolved", expected=new, actual=old
        ),
    }


def nodes_of(console: Console, user: User) -> list[str]:
    return [row["node"] for row in console.table_rows(user, "drift-table")]


async def test_drift_page_shows_open_events_with_expected_and_actual_bundles(
    user: User, console: Console
) -> None:
    fleet = drift_fleet(console)
    await console.open(user, "/drift", ready="drift-table")
    await user.should_see(marker="drift-stat-active", content="2")
    await user.should_see(marker="drift-stat-drifted_nodes", content="2")
    await user.should_see(marker="drift-stat-high", content="1")
    await user.should_see(marker="drift-stat-resolved", content="1")
    rows = {row["node"]: row for row in console.table_rows(user, "drift-table")}
    assert set(rows) == {"edge-00001", "edge-00002"}  # open events by default
    high = rows["edge-00001"]
    assert high["expected"] == f"v2 ({fleet['new'][:8]})"
    assert high["actual"] == f"v1 ({fleet['old'][:8]})"
    assert (high["severity"], high["since"], high["active"]) == ("high", "20 min", True)
    assert rows["edge-00002"]["actual"] == "none"

    await console.set_value(user, "drift-filter-status", "resolved")
    await console.eventually(
        lambda: nodes_of(console, user) == ["edge-00003"], what="resolved events"
    )
    (resolved,) = console.table_rows(user, "drift-table")
    assert resolved["state"].startswith("back in sync, ")
    await console.set_value(user, "drift-filter-status", "")
    await console.set_value(user, "drift-filter-severity", "low")
    await console.eventually(
        lambda: nodes_of(console, user) == ["edge-00002"], what="low severity only"
    )


async def test_drift_pages_through_the_database(user: User, console: Console) -> None:
    ids = console.add_nodes(30, prefix="n")
    start = datetime.now(UTC) - timedelta(hours=1)
    for i, node_id in enumerate(ids):
        add_drift(console, node_id, f"n-{i + 1:05d}", opened=start + timedelta(minutes=i))
    await console.open(user, "/drift", ready="drift-table")
    await user.should_see(marker="drift-summary", content="1–25 of 30 events")
    assert nodes_of(console, user)[0] == "n-00030"  # newest first
    user.find(marker="drift-older").click()
    await user.should_see(marker="drift-summary", content="26–30 of 30 events")
    assert nodes_of(console, user) == [f"n-{i:05d}" for i in range(5, 0, -1)]
    user.find(marker="drift-newer").click()
    await user.should_see(marker="drift-summary", content="1–25 of 30 events")


async def test_drift_export_links_follow_the_filters_and_download(
    user: User, console: Console
) -> None:
    drift_fleet(console)
    await console.open(user, "/drift", ready="drift-table")
    await user.should_see(marker="drift-table")
    await console.set_value(user, "drift-filter-severity", "high")
    await console.eventually(lambda: nodes_of(console, user) == ["edge-00001"], what="high only")
    (link,) = user.find(marker="drift-export-csv").elements
    href = link.props["href"]
    assert (
        href
        == f"/api/v1/projects/{console.project}/drift/export?format=csv&status=active&severity=high"
    )
    response = await user.http_client.get(href)  # the session cookie authenticates the API
    assert response.status_code == 200
    assert "edge-00001" in response.text
    assert "edge-00002" not in response.text


async def test_reader_gets_no_resolve_controls_and_the_handlers_refuse(console: Console) -> None:
    fleet = drift_fleet(console)
    reader = await console.login("reader")
    await console.open(reader, "/drift", ready="drift-table")
    await reader.should_see(marker="drift-table")
    await reader.should_not_see(marker="drift-resolve-all")
    (table,) = reader.find(marker="drift-table").elements
    assert "actions" not in [column["name"] for column in table.columns]
    reader.find(marker="drift-table").trigger("resolve", {"id": fleet["high"]})  # crafted
    await reader.should_not_see(marker="drift-comment")
    cookie = console.cookie(reader)
    with pytest.raises(Forbidden):
        await page("drift").resolve_event(cookie, console.project, fleet["high"], "by hand")
    with pytest.raises(Forbidden):
        await page("drift").resolve_all(cookie, console.project, "all of them")
    with pytest.raises(DomainError):  # no session, no action
        await page("drift").resolve_all(None, console.project, "all of them")
    assert drift_state(console, fleet["high"])["status"] == "active"
    assert "drift.resolved" not in console.audit_actions()


async def test_operator_resolves_one_event_with_a_comment_persisted_and_audited(
    console: Console,
) -> None:
    fleet = drift_fleet(console)
    operator = await console.login("operator")
    await console.open(operator, "/drift", ready="drift-table")
    await operator.should_see(marker="drift-table")
    operator.find(marker="drift-table").trigger("resolve", {"id": fleet["high"]})
    await operator.should_see(marker="drift-comment")
    operator.find(marker="drift-confirm").click()  # a blank comment is refused by the domain
    await console.eventually(lambda: notified(operator, "A comment is required"), what="refusal")
    assert drift_state(console, fleet["high"])["status"] == "active"

    operator.find(marker="drift-table").trigger("resolve", {"id": fleet["high"]})
    await operator.should_see(marker="drift-comment")
    await console.set_value(operator, "drift-comment", "rolled back by hand, see INC-42")
    operator.find(marker="drift-confirm").click()
    await operator.should_see("Drift of edge-00001 resolved")
    await console.eventually(
        lambda: nodes_of(console, operator) == ["edge-00002"], what="one left open"
    )
    assert drift_state(console, fleet["high"]) == {
        "status": "resolved",
        "comment": "rolled back by hand, see INC-42",
        "by": "operator@example.com",
    }
    (entry,) = [e for e in console.audit_entries() if e["action"] == "drift.resolved"]
    assert (entry["actor"], entry["resource_id"]) == ("operator@example.com", fleet["high"])


async def test_resolve_all_happens_only_after_confirming(user: User, console: Console) -> None:
    fleet = drift_fleet(console)
    await console.open(user, "/drift", ready="drift-table")
    await user.should_see(marker="drift-stat-active", content="2")
    user.find(marker="drift-resolve-all").click()
    await user.should_see("Resolve all 2 open drift events?")
    user.find("Cancel").click()
    await user.should_not_see(marker="drift-comment")
    assert drift_state(console, fleet["low"])["status"] == "active"

    user.find(marker="drift-resolve-all").click()
    await user.should_see(marker="drift-comment")
    await console.set_value(user, "drift-comment", "fleet re-imaged")
    user.find(marker="drift-confirm").click()
    await user.should_see("2 drift events resolved")
    await user.should_see(marker="drift-stat-active", content="0")
    assert drift_state(console, fleet["low"])["status"] == "resolved"
    assert console.audit_actions().count("drift.resolved") == 2


async def test_drift_page_follows_new_events_live(user: User, console: Console) -> None:
    from sentinel_cp import events

    (node_id,) = console.add_nodes(1, prefix="late")
    await console.open(user, "/drift", ready="drift-table")
    await user.should_see(marker="drift-stat-active", content="0")
    await console.listener_ready()
    event_id = add_drift(console, node_id, "late-00001")
    console.run(
        events.publish_now, events.event_payload(console.project_id, "drift", event_id, "opened")
    )
    await console.eventually(
        lambda: nodes_of(console, user) == ["late-00001"], what="the new event"
    )
    await user.should_see(marker="drift-stat-active", content="1")


# --- audit ------------------------------------------------------------------------------------


def record(
    console: Console,
    action: str,
    *,
    resource: str = "rollout",
    ident: str = "r-1",
    actor: str = "ops@example.com",
    when: datetime | None = None,
    project: bool = True,
    **changes: Any,
) -> None:
    from sentinel_cp import audit
    from sentinel_cp.audit import Actor

    console.run(
        audit.record,
        Actor("user", None, actor),
        action,
        resource_type=resource,
        resource_id=ident,
        project_id=uuid.UUID(console.project_id) if project else None,
        changes=changes,
        now=when,
    )


def actions_of(console: Console, user: User) -> list[str]:
    return [row["action"] for row in console.table_rows(user, "audit-table")]


async def test_audit_page_shows_entries_newest_first_under_an_intact_chain(
    user: User, console: Console
) -> None:
    record(console, "rollout.paused", state=["running", "paused"])
    record(console, "rollout.resumed", state=["paused", "running"])
    await console.open(user, "/audit", ready="audit-table")
    await user.should_see(marker="audit-verdict-title", content="Audit project chain intact")
    await user.should_see(marker="audit-verdict-detail", content="3 entries verified")
    assert actions_of(console, user) == ["rollout.resumed", "rollout.paused", "project.created"]
    newest = console.table_rows(user, "audit-table")[0]
    assert (newest["seq"], newest["actor"], newest["resource"]) == (
        3,
        "ops@example.com",
        "rollout:r-1",
    )
    assert newest["details"] == "state: paused → running"
    reader = await console.login("reader")  # every role reads the audit log
    await console.open(reader, "/audit", ready="audit-table")
    await reader.should_see(marker="audit-verdict-title", content="intact")


async def test_a_tampered_row_breaks_the_chain_and_is_pointed_out(
    user: User, console: Console
) -> None:
    from sqlalchemy import update

    from sentinel_cp.audit import AuditLog
    from sentinel_cp.db import db

    for i in range(30):
        record(console, "rollout.paused", ident=f"r-{i}")
    await console.open(user, "/audit", ready="audit-table")
    await user.should_see(marker="audit-verdict-title", content="intact")
    console.run(
        lambda: db.session.execute(
            update(AuditLog)
            .where(AuditLog.seq == 7, AuditLog.project_id == uuid.UUID(console.project_id))
            .values(actor_label="someone else")
        )
    )
    user.find(marker="audit-verify").click()
    await user.should_see(marker="audit-verdict-title", content="Audit project chain BROKEN")
    await user.should_see(marker="audit-verdict-detail", content="first bad entry #7")
    await user.should_see(marker="audit-verdict-detail", content="row content does not match")
    user.find(marker="audit-show-bad").click()
    await console.eventually(
        lambda: console.table_rows(user, "audit-table")[0]["seq"] == 7, what="the bad row on top"
    )
    await user.should_see(marker="audit-summary", content="#7–#1 of 31 entries")


async def test_audit_filters_narrow_the_list_and_the_export_and_bad_ones_are_explained(
    user: User, console: Console
) -> None:
    day = datetime(2030, 3, 10, 12, 0, tzinfo=UTC)  # after the project was created (now)
    record(console, "rollout.paused", ident="r-1", when=day)
    record(console, "rollout.resumed", ident="r-2", actor="bob@example.com", when=day)
    record(console, "bundle.compiled", resource="bundle", ident="b-1", when=day + timedelta(days=2))
    await console.open(user, "/audit", ready="audit-table")
    await user.should_see(marker="audit-table")
    await console.set_value(user, "audit-filter-action", "rollout.*")
    await console.eventually(
        lambda: actions_of(console, user) == ["rollout.resumed", "rollout.paused"],
        what="rollouts only",
    )
    await console.set_value(user, "audit-filter-actor", "bob@example.com")
    await console.eventually(
        lambda: actions_of(console, user) == ["rollout.resumed"], what="bob only"
    )
    await console.set_value(user, "audit-filter-actor", "")
    await console.set_value(user, "audit-filter-action", "")
    await console.set_value(user, "audit-filter-resource_type", "rollout")
    await console.set_value(user, "audit-filter-resource_id", "r-1")
    await console.eventually(
        lambda: actions_of(console, user) == ["rollout.paused"], what="rollout r-1"
    )
    await console.set_value(user, "audit-filter-resource_type", "")
    await console.set_value(user, "audit-filter-resource_id", "")
    await console.set_value(user, "audit-filter-since", "2030-03-11")
    await console.eventually(
        lambda: actions_of(console, user) == ["bundle.compiled"], what="later ones"
    )
    await console.set_value(user, "audit-filter-since", "2030-03-10")
    await console.set_value(user, "audit-filter-until", "2030-03-10")  # a bare date: all of it
    await console.eventually(
        lambda: actions_of(console, user) == ["rollout.resumed", "rollout.paused"], what="that day"
    )
    (link,) = user.find(marker="audit-export-csv").elements
    assert "until=2030-03-11T00%3A00%3A00%2B00%3A00" in link.props["href"]
    exported = await user.http_client.get(link.props["href"])  # the session cookie suffices
    assert exported.status_code == 200, exported.text
    header, *lines = exported.text.strip().splitlines()
    assert header.startswith("seq,id,created_at")
    assert [line.split(",")[6] for line in lines] == ["rollout.paused", "rollout.resumed"]

    await console.set_value(user, "audit-filter-action", "Not An Action")
    await console.set_value(user, "audit-filter-since", "yesterday")
    (action,) = user.find(marker="audit-filter-action").elements
    (since,) = user.find(marker="audit-filter-since").elements
    await console.eventually(lambda: action.error and since.error, what="inline errors")
    assert "rollout.*" in action.error
    assert "YYYY-MM-DD" in since.error
    assert actions_of(console, user) == ["rollout.resumed", "rollout.paused"]  # last good ones


async def test_audit_pages_and_reads_the_global_chain(user: User, console: Console) -> None:
    for i in range(30):
        record(console, "rollout.paused", ident=f"r-{i}")
    await console.open(user, "/audit", ready="audit-table")
    await user.should_see(marker="audit-summary", content="1–25 of 31 entries")
    user.find(marker="audit-older").click()
    await user.should_see(marker="audit-summary", content="26–31 of 31 entries")
    assert actions_of(console, user)[-1] == "project.created"

    await console.set_value(user, "audit-chain", "global")
    await user.should_see(marker="audit-verdict-title", content="Audit global chain intact")
    await console.eventually(
        lambda: "user.created" in actions_of(console, user), what="global entries"
    )
    assert "rollout.paused" not in actions_of(console, user)
    (link,) = user.find(marker="audit-export-json").elements
    assert link.props["href"].startswith("/api/v1/audit/export?format=json")


async def test_audit_page_follows_new_entries_and_lets_go_when_the_browser_leaves(
    user: User, console: Console
) -> None:
    live = importlib.import_module("console.live")
    before = len(live.changes.callbacks)
    client = await console.open(user, "/audit", ready="audit-table")
    await user.should_see(marker="audit-table")
    assert len(live.changes.callbacks) == before + 1
    await console.listener_ready()
    record(console, "rollout.cancelled")  # publishes after commit, through the embedded Redis
    await console.eventually(
        lambda: actions_of(console, user)[:1] == ["rollout.cancelled"], what="the new entry on top"
    )
    (socket_id,) = client._socket_to_document_id
    client.handle_disconnect(socket_id)
    assert len(live.changes.callbacks) == before
    client.delete()
    assert len(live.changes.callbacks) == before


# --- settings ---------------------------------------------------------------------------------


def project_state(console: Console) -> dict[str, Any]:
    from sentinel_cp import projects

    return console.run(lambda: projects.get_project(console.project).to_dict())


def add_window(console: Console, name: str = "release freeze") -> str:
    from sentinel_cp.audit import Actor
    from sentinel_cp.rollouts import catalog

    definition = {
        "kind": "weekly",
        "name": name,
        "days": ["fri"],
        "start_time": "22:00",
        "duration_minutes": 3360,
        "time_zone": "Europe/Berlin",
    }
    row = console.run(
        catalog.add_freeze_window,
        Actor("user", None, "admin@example.com"),
        uuid.UUID(console.project_id),
        definition,
    )
    return str(row.id)


def add_key(console: Console, name: str = "ci") -> tuple[str, str]:
    from sentinel_cp import accounts

    def create() -> tuple[str, str]:
        admin = accounts.get_user(uuid.UUID(console.user_ids["admin"]))
        key, raw = accounts.create_api_key(
            accounts.principal_for_user(admin),
            name=name,
            scopes=["nodes:read"],
            project_id=None,
            expires_at=None,
        )
        return str(key.id), raw

    return console.run(create)


async def test_readers_and_operators_get_only_the_controls_they_may_use(
    console: Console,
) -> None:
    add_window(console)
    reader = await console.login("reader")
    await console.open(reader, "/settings", ready="freeze-windows-table")
    await reader.should_see(marker="fact-heartbeat_interval_s", content="30")
    await reader.should_see(marker="fact-open_registration", content="off")
    await reader.should_see(marker="token-state", content="No token yet")
    await reader.should_see(marker="access-admins-only")
    (window,) = console.table_rows(reader, "freeze-windows-table")
    assert window["schedule"] == "Fri at 22:00 for 2 d 8 h (Europe/Berlin)"
    await reader.should_see(marker="templates-table")
    for marker in (
        "setting-heartbeat_interval_s",
        "settings-save",
        "rotate-token",
        "api-keys-table",
        "new-api-key",
        "users-table",
        "new-user",
        "new-freeze-window",
        "new-template",
    ):
        await reader.should_not_see(marker=marker)
    (table,) = reader.find(marker="freeze-windows-table").elements
    assert "actions" not in [column["name"] for column in table.columns]

    operator = await console.login("operator")
    await console.open(operator, "/settings", ready="freeze-windows-table")
    await operator.should_see(marker="new-template")
    for marker in ("settings-save", "rotate-token", "new-api-key", "new-user", "new-freeze-window"):
        await operator.should_not_see(marker=marker)


async def test_every_settings_handler_refuses_a_reader(console: Console) -> None:
    window_id = add_window(console)
    key_id, _ = add_key(console)
    reader = await console.login("reader")
    cookie = console.cookie(reader)
    settings = page("settings")
    slug, admin_id = console.project, console.user_ids["admin"]
    attempts = [
        settings.save_settings(cookie, slug, "Renamed", {"open_registration": True}),
        settings.rotate_token(cookie, slug),
        settings.create_api_key(cookie, "mine", ["nodes:read"], None),
        settings.revoke_api_key(cookie, key_id),
        settings.create_user(cookie, "eve@example.com", PASSWORD, "admin"),
        settings.update_user(cookie, admin_id, role="reader"),
        settings.add_freeze_window(
            cookie,
            slug,
            {
                "kind": "one_off",
                "name": "x",
                "starts_at": "2030-01-01T00:00:00+00:00",
                "ends_at": "2030-01-02T00:00:00+00:00",
            },
        ),
        settings.delete_freeze_window(cookie, slug, window_id),
        settings.add_template(cookie, slug, "sneaky", {}, {"strategy": "all_at_once"}),
    ]
    before_project, before_global = console.audit_actions(), global_audit(console)
    for attempt in attempts:
        with pytest.raises(Forbidden):
            await attempt
    operator_cookie = console.cookie(await console.login("operator"))
    for attempt in (  # what is the admins' alone
        settings.save_settings(operator_cookie, slug, "Renamed", {}),
        settings.create_api_key(operator_cookie, "mine", ["nodes:read"], None),
        settings.update_user(operator_cookie, admin_id, disabled=True),
        settings.delete_freeze_window(operator_cookie, slug, window_id),
    ):
        with pytest.raises(Forbidden):
            await attempt
    state = project_state(console)
    assert (state["name"], state["has_registration_token"]) == ("Alpha", False)
    assert console.audit_actions() == before_project
    assert [a for a, _ in global_audit(console)] == [a for a, _ in before_global] + [
        "session.login"  # the operator's login above; nothing else
    ]


async def test_admin_saves_settings_persisted_and_audited(user: User, console: Console) -> None:
    await console.open(user, "/settings", ready="freeze-windows-table")
    await user.should_see(marker="setting-heartbeat_interval_s")
    await console.set_value(user, "setting-name", "Alpha fleet")
    await console.set_value(user, "setting-heartbeat_interval_s", 15)
    await console.set_value(user, "setting-drift_auto_remediate", True)
    user.find(marker="settings-save").click()
    await user.should_see("Settings saved")
    state = project_state(console)
    assert state["name"] == "Alpha fleet"
    assert state["settings"]["heartbeat_interval_s"] == 15
    assert state["settings"]["drift_auto_remediate"] is True
    (entry,) = [e for e in console.audit_entries() if e["action"] == "project.updated"]
    assert entry["actor"] == "admin@example.com"
    assert entry["changes"] == {
        "name": ["Alpha", "Alpha fleet"],
        "settings": {"heartbeat_interval_s": [30, 15], "drift_auto_remediate": [False, True]},
    }


async def test_invalid_settings_are_explained_beside_their_fields(
    user: User, console: Console
) -> None:
    await console.open(user, "/settings", ready="freeze-windows-table")
    await user.should_see(marker="setting-heartbeat_interval_s")
    await console.set_value(user, "setting-poll_interval_s", 2)
    user.find(marker="settings-save").click()
    (poll,) = user.find(marker="setting-poll_interval_s").elements
    await console.eventually(lambda: poll.error, what="the field's error")
    assert "greater than or equal to 5" in poll.error

    await console.set_value(user, "setting-poll_interval_s", 30)
    await console.set_value(
        user, "setting-staleness_timeout_s", 20
    )  # not longer than the heartbeat (30)
    user.find(marker="settings-save").click()
    await user.should_see(marker="settings-error", content="must be longer than heartbeat")
    assert poll.error is None
    assert project_state(console)["settings"]["staleness_timeout_s"] == 120
    assert "project.updated" not in console.audit_actions()


async def test_admin_rotates_the_registration_token_once_confirmed_and_sees_it_once(
    user: User, console: Console
) -> None:
    from sentinel_cp import projects

    await console.open(user, "/settings", ready="freeze-windows-table")
    user.find(marker="rotate-token").click()
    await user.should_see(marker="confirm-action")
    user.find(marker="confirm-cancel").click()
    await user.should_not_see(marker="confirm-action")
    assert project_state(console)["has_registration_token"] is False

    user.find(marker="rotate-token").click()
    await user.should_see(marker="confirm-action")
    user.find(marker="confirm-action").click()
    await user.should_see(marker="new-secret")
    (field,) = user.find(marker="new-secret").elements
    token = field.value
    assert token.startswith("rt_")
    assert console.run(
        lambda: projects.registration_token_matches(projects.get_project(console.project), token)
    )
    user.find(marker="secret-done").click()
    await user.should_not_see(marker="new-secret")
    await user.should_see(marker="token-state", content="A token is set")
    assert console.audit_actions().count("project.registration_token_rotated") == 1


async def test_admin_creates_an_api_key_and_sees_its_secret_once(
    user: User, console: Console
) -> None:
    await console.open(user, "/settings", ready="freeze-windows-table")
    user.find(marker="new-api-key").click()
    await user.should_see(marker="key-name")
    await console.set_value(user, "key-name", "deploy bot")
    user.find(marker="create-key").click()  # no scope yet: the domain says why
    await user.should_see(marker="key-error", content="scopes: must not be empty")
    user.find(marker="key-scope-nodes:read").click()
    user.find(marker="key-scope-rollouts:write").click()
    user.find(marker="create-key").click()
    await user.should_see(marker="new-secret")
    (field,) = user.find(marker="new-secret").elements
    raw = field.value
    assert raw.startswith("sk_")
    async with httpx.AsyncClient(  # no cookie: the key alone
        transport=httpx.ASGITransport(console.asgi), base_url="http://console.test"
    ) as api:
        listed = await api.get(
            f"/api/v1/projects/{console.project}/nodes", headers={"Authorization": f"Bearer {raw}"}
        )
    assert listed.status_code == 200, listed.text
    user.find(marker="secret-done").click()
    await user.should_not_see(marker="new-secret")
    (row,) = console.table_rows(user, "api-keys-table")
    assert (row["name"], row["scopes"], row["project"]) == (
        "deploy bot",
        ["nodes:read", "rollouts:write"],
        console.project,
    )
    assert raw not in str(row)
    assert ("api_key.created", "admin@example.com") in global_audit(console)


async def test_admin_revokes_a_key_only_after_confirming(user: User, console: Console) -> None:
    key_id, raw = add_key(console, "old ci")
    await console.open(user, "/settings", ready="freeze-windows-table")
    await console.eventually(lambda: console.table_rows(user, "api-keys-table"), what="the key")
    user.find(marker="api-keys-table").trigger("revoke", {"id": key_id})
    await user.should_see(marker="confirm-action")
    user.find(marker="confirm-cancel").click()
    await user.should_not_see(marker="confirm-action")
    assert console.table_rows(user, "api-keys-table")[0]["state"] == "active"

    user.find(marker="api-keys-table").trigger("revoke", {"id": key_id})
    await user.should_see(marker="confirm-action")
    user.find(marker="confirm-action").click()
    await user.should_see("Key “old ci” revoked")
    await console.eventually(
        lambda: console.table_rows(user, "api-keys-table")[0]["state"] == "revoked", what="revoked"
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(console.asgi), base_url="http://console.test"
    ) as api:
        refused = await api.get("/api/v1/me", headers={"Authorization": f"Bearer {raw}"})
    assert refused.status_code == 401
    assert ("api_key.revoked", "admin@example.com") in global_audit(console)


async def test_admin_creates_a_user_changes_the_role_and_disables_them(
    user: User, console: Console
) -> None:
    from sentinel_cp import accounts

    await console.open(user, "/settings", ready="freeze-windows-table")
    user.find(marker="new-user").click()
    await user.should_see(marker="user-email")
    await console.set_value(user, "user-email", "carol@example.com")
    await console.set_value(user, "user-password", "short")
    user.find(marker="create-user").click()
    (password,) = user.find(marker="user-password").elements
    await console.eventually(lambda: password.error, what="the password rule")
    await console.set_value(user, "user-password", PASSWORD)
    await console.set_value(user, "user-role", "operator")
    user.find(marker="create-user").click()
    await user.should_see("User carol@example.com created (operator)")
    rows = {row["email"]: row for row in console.table_rows(user, "users-table")}
    carol = rows["carol@example.com"]
    assert (carol["role"], carol["state"]) == ("operator", "active")

    user.find(marker="users-table").trigger("role", {"id": carol["id"]})
    await user.should_see(marker="new-role")
    await console.set_value(user, "new-role", "reader")
    user.find(marker="change-role").click()
    await user.should_see("carol@example.com is now reader")

    user.find(marker="users-table").trigger("disable", {"id": carol["id"]})
    await user.should_see(marker="confirm-action")
    user.find(marker="confirm-action").click()
    await user.should_see("carol@example.com disabled")
    await console.eventually(
        lambda: (
            {r["email"]: r for r in console.table_rows(user, "users-table")}["carol@example.com"][
                "state"
            ]
            == "disabled"
        ),
        what="carol disabled",
    )
    audited = [a for a, actor in global_audit(console) if actor == "admin@example.com"]
    assert audited[-3:] == ["user.created", "user.updated", "user.updated"]
    carol_now = console.run(lambda: accounts.get_user(uuid.UUID(carol["id"])).to_dict())
    assert (carol_now["role"], carol_now["disabled"]) == ("reader", True)

    admin_id = console.user_ids["admin"]  # the domain keeps one active admin
    user.find(marker="users-table").trigger("disable", {"id": admin_id})
    await user.should_see(marker="confirm-action")
    user.find(marker="confirm-action").click()
    await user.should_see("The last active admin cannot be demoted or disabled")
    assert console.run(lambda: accounts.get_user(uuid.UUID(admin_id)).disabled) is False


async def test_admin_adds_and_deletes_a_freeze_window(user: User, console: Console) -> None:
    await console.open(user, "/settings", ready="freeze-windows-table")
    user.find(marker="new-freeze-window").click()
    await user.should_see(marker="window-name")
    await console.set_value(user, "window-name", "year end")
    await console.set_value(user, "window-starts", "2030-12-24 00:00")
    await console.set_value(user, "window-ends", "2030-12-20 00:00")
    user.find(marker="create-window").click()
    (ends,) = user.find(marker="window-ends").elements
    await console.eventually(lambda: ends.error, what="the end-before-start error")
    await console.set_value(user, "window-ends", "2031-01-02 00:00")
    user.find(marker="create-window").click()
    await user.should_see("Freeze window “year end” added")
    await console.eventually(
        lambda: console.table_rows(user, "freeze-windows-table"), what="the window"
    )
    (row,) = console.table_rows(user, "freeze-windows-table")
    assert row["schedule"] == "2030-12-24 00:00 → 2031-01-02 00:00 UTC"
    assert "freeze_window.created" in console.audit_actions()

    user.find(marker="freeze-windows-table").trigger("delete", {"id": row["id"]})
    await user.should_see(marker="confirm-action")
    user.find(marker="confirm-action").click()
    await user.should_see("Freeze window “year end” deleted")
    await console.eventually(
        lambda: not console.table_rows(user, "freeze-windows-table"), what="the window gone"
    )
    (entry,) = [e for e in console.audit_entries() if e["action"] == "freeze_window.deleted"]
    assert (entry["actor"], entry["resource_id"]) == ("admin@example.com", row["id"])


async def test_operator_adds_a_rollout_template(console: Console) -> None:
    from sentinel_cp.rollouts import catalog

    operator = await console.login("operator")
    await console.open(operator, "/settings", ready="freeze-windows-table")
    operator.find(marker="new-template").click()
    await operator.should_see(marker="template-name")
    await console.set_value(operator, "template-name", "not a name!")
    await console.set_value(operator, "template-strategy", "canary")
    await console.set_value(operator, "template-canary_steps", "5, 25, 100")
    await console.set_value(operator, "template-labels", "env=prod")
    operator.find(marker="create-template").click()
    (name,) = operator.find(marker="template-name").elements
    await console.eventually(lambda: name.error, what="the name rule")
    await console.set_value(operator, "template-name", "prod-canary")
    operator.find(marker="create-template").click()
    await operator.should_see("Template “prod-canary” saved")
    await console.eventually(
        lambda: console.table_rows(operator, "templates-table"), what="the row"
    )
    (row,) = console.table_rows(operator, "templates-table")
    assert (row["strategy"], row["targets"]) == ("Canary", "env=prod")
    assert row["settings"].startswith("steps 5% → 25% → 100%")
    stored = console.run(
        lambda: catalog.template_dict(
            catalog.get_template(uuid.UUID(console.project_id), "prod-canary")
        )
    )
    assert stored["config"]["canary_steps"] == [5, 25, 100]
    assert stored["target_selector"] == {"labels": {"env": "prod"}}
    (entry,) = [e for e in console.audit_entries() if e["action"] == "rollout_template.created"]
    assert entry["actor"] == "operator@example.com"


async def test_settings_follow_changes_made_elsewhere(console: Console) -> None:
    from sentinel_cp import projects
    from sentinel_cp.audit import Actor

    reader = await console.login("reader")
    await console.open(reader, "/settings", ready="freeze-windows-table")
    await reader.should_see(marker="fact-poll_interval_s", content="30")
    await console.listener_ready()

    def change() -> None:
        project = projects.get_project(console.project)
        projects.update_project(Actor.system("test"), project, settings={"poll_interval_s": 45})

    console.run(change)  # audited, so published after commit
    await console.eventually(
        lambda: texts(reader, "fact-poll_interval_s") == ["45"], what="the new poll interval"
    )
    add_window(console, "maintenance")
    await console.eventually(
        lambda: (
            [r["name"] for r in console.table_rows(reader, "freeze-windows-table")]
            == ["maintenance"]
        ),
        what="the new window",
    )


# --- in Chromium ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.browser
def test_settings_and_audit_pages_in_chromium(chromium: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    server = start_server({}, tmp_path)
    try:
        with httpx.Client(base_url=server.url) as api:
            login = api.post(
                "/api/v1/session", json={"email": "admin@localhost", "password": PASSWORD}
            )
            assert login.status_code == 200
            for body in (
                {"name": "ci deploy", "scopes": ["bundles:write", "rollouts:write"]},
                {"name": "grafana", "scopes": ["nodes:read"], "project": "default"},
            ):
                assert api.post("/api/v1/api-keys", json=body).status_code == 201
            assert (
                api.post(
                    "/api/v1/users",
                    json={"email": "ops@example.com", "password": PASSWORD, "role": "operator"},
                ).status_code
                == 201
            )
            assert (
                api.post(
                    "/api/v1/projects/default/freeze-windows",
                    json={
                        "kind": "weekly",
                        "name": "weekend",
                        "reason": "nobody on call",
                        "days": ["sat", "sun"],
                        "start_time": "00:00",
                        "duration_minutes": 1440,
                        "time_zone": "Europe/Berlin",
                    },
                ).status_code
                == 201
            )
            assert (
                api.post(
                    "/api/v1/projects/default/rollout-templates",
                    json={
                        "name": "safe-rolling",
                        "strategy": "rolling",
                        "batch_size": 5,
                        "bake_s": 120,
                        "target_selector": {"labels": {"env": "prod"}},
                    },
                ).status_code
                == 201
            )
            assert (
                api.post("/api/v1/projects/default/registration-token", json={}).status_code == 201
            )

        ARTIFACTS.mkdir(exist_ok=True)
        wait = WebDriverWait(chromium, 20)
        chromium.get(f"{server.url}/login")
        wait.until(
            ec.presence_of_element_located((By.CSS_SELECTOR, "input[autocomplete=username]"))
        ).send_keys("admin@localhost")
        wait_for_websocket(chromium)
        chromium.find_element(By.CSS_SELECTOR, "input[type=password]").send_keys(PASSWORD)
        chromium.find_element(By.XPATH, "//button[contains(., 'Log in')]").click()
        wait.until(ec.url_matches(rf"{server.url}/?$"))

        chromium.get(f"{server.url}/settings")
        wait.until(ec.presence_of_element_located((By.XPATH, "//*[text()='safe-rolling']")))
        wait_for_websocket(chromium)
        body = chromium.find_element(By.TAG_NAME, "body").text
        for expected in ("Project settings", "ci deploy", "ops@example.com", "weekend"):
            assert expected in body
        chromium.set_window_size(1280, 2400)  # the whole page in one picture
        chromium.save_screenshot(str(ARTIFACTS / "console-settings.png"))
        chromium.set_window_size(1280, 800)

        chromium.get(f"{server.url}/audit")
        wait.until(
            ec.text_to_be_present_in_element((By.TAG_NAME, "body"), "Audit project chain intact")
        )
        wait.until(
            ec.text_to_be_present_in_element((By.TAG_NAME, "body"), "rollout_template.created")
        )
        chromium.save_screenshot(str(ARTIFACTS / "console-audit.png"))
    finally:
        server.stop()
