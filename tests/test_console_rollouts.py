"""The Rollouts pages of the console, driven by NiceGUI's simulated user (and once by Chromium).

Bundles and nodes are seeded with the harness (`console.add_bundle`, `console.add_nodes`);
rollouts are created and ticked through the engine and node reports go through
`distribution.report_status`, so every page shows what the real engine wrote. The Chromium test
drives a real `python app.py` whose own worker compiles and ticks.
"""

from __future__ import annotations

import importlib
import uuid
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import test_server
from bundle_helpers import CONFIG
from conftest import PASSWORD, wait_for
from nicegui.testing import User
from test_server import ARTIFACTS, start_server, wait_for_websocket

if TYPE_CHECKING:
    from console_support import Console

pytest_plugins = ["console_support"]
chromium = test_server.chromium  # the Selenium fixture of the server tests, shared
SETTLE = 100  # should_see retries (0.1 s each) for what a handler's database round trip changes


# --- seeding through the domain ---------------------------------------------------------------


def start_rollout(console: Console, bundle_id: str, *, role: str = "operator", **body: Any) -> str:
    """Create a rollout as `role` would through the API, and run its first tick."""
    from sentinel_cp import projects
    from sentinel_cp.audit import Actor
    from sentinel_cp.rollouts import engine

    creator = uuid.UUID(console.user_ids[role])
    request = {
        "bundle_id": bundle_id,
        "target_selector": body.pop("target_selector", None),
        "start": body.pop("start", True),
        "config": body,
    }

    def create() -> str:
        project = projects.get_project(console.project)
        actor = Actor("user", str(creator), console.emails[role])
        return str(engine.create(actor, project, request, user_id=creator).id)

    rollout_id = console.run(create)
    tick(console, rollout_id)
    return rollout_id


def tick(console: Console, rollout_id: str) -> None:
    from sentinel_cp.rollouts import engine

    console.run(engine.tick, uuid.UUID(rollout_id))


def report(console: Console, node_id: str, bundle_id: str, state: str, reason: str = "") -> None:
    """A node's delivery report, as the node API records it."""
    from sentinel_cp.bundles import distribution
    from sentinel_cp.db import db
    from sentinel_cp.nodes import Node

    def record() -> None:
        node = db.session.get(Node, uuid.UUID(node_id))
        distribution.report_status(
            node_id=node.id,
            node_name=node.name,
            project_id=node.project_id,
            bundle_id=bundle_id,
            state=state,
            reason=reason or None,
            logs=None,
        )

    console.run(record)


def rollout_state(console: Console, rollout_id: str) -> tuple[str, str | None]:
    from sentinel_cp.db import db
    from sentinel_cp.rollouts.models import Rollout

    def read() -> tuple[str, str | None]:
        row = db.session.get(Rollout, uuid.UUID(rollout_id))
        return row.state, row.reason

    return console.run(read)


def audited(console: Console, rollout_id: str) -> list[tuple[str, dict[str, Any]]]:
    """(action, metadata) of every audit row about this rollout, oldest first."""
    from sqlalchemy import select

    from sentinel_cp.audit import AuditLog
    from sentinel_cp.db import db

    def read() -> list[tuple[str, dict[str, Any]]]:
        rows = db.session.scalars(
            select(AuditLog).where(AuditLog.resource_id == rollout_id).order_by(AuditLog.seq)
        )
        return [(row.action, dict(row.meta or {})) for row in rows]

    return console.run(read)


def set_role(console: Console, role: str, new_role: str) -> None:
    """Change a user's role as an admin would (their session stays valid)."""
    from sentinel_cp import accounts
    from sentinel_cp.audit import Actor

    console.run(
        accounts.update_user,
        Actor.system("test"),
        uuid.UUID(console.user_ids[role]),
        role=new_role,
    )


def grid_html(user: User) -> str:
    return str(user.find(marker="node-grid").elements.pop().content)


async def confirm_action(user: User, action: str, text: str = "") -> None:
    """Click an action button, fill the dialog's text and confirm."""
    user.find(marker=f"action-{action}").click()
    await user.should_see(marker="action-confirm")
    if text:
        user.find(marker="action-text").type(text)
    user.find(marker="action-confirm").click()


# --- /rollouts ----------------------------------------------------------------------------------


async def test_the_list_shows_rollouts_newest_first_and_follows_new_ones_live(
    console: Console,
) -> None:
    bundle = console.add_bundle("v1")
    newer_bundle = console.add_bundle("v2")
    ids = console.add_nodes(5, prefix="edge")
    first = start_rollout(console, bundle, target_selector={"node_ids": ids[:2]})
    report(console, ids[0], bundle, "verified")
    second = start_rollout(
        console, newer_bundle, target_selector={"node_ids": ids[2:4]}, strategy="canary"
    )
    user = await console.login("reader")
    await console.open(user, "/rollouts", ready="rollouts-table")
    rows = console.table_rows(user, "rollouts-table")
    assert [r["id"] for r in rows] == [second, first]
    assert [(r["state"], r["strategy"]) for r in rows] == [
        ("running", "canary"),
        ("running", "rolling"),
    ]
    assert rows[0]["bundle"].startswith("v2 (") and rows[1]["bundle"].startswith("v1 (")
    assert rows[1]["progress"] == "1/2 verified"
    await user.should_see(marker="rollouts-position", content="1–2 of 2")
    await user.should_not_see(marker="new-rollout")  # a reader cannot create one

    await console.listener_ready()  # a new rollout appears on top, live
    third = start_rollout(console, bundle, target_selector={"node_ids": ids[4:]}, start=False)
    await console.eventually(
        lambda: (
            [r["id"] for r in console.table_rows(user, "rollouts-table")] == [third, second, first]
        ),
        what="the new rollout at the top of the list",
    )


async def test_the_list_pages_on_the_server(console: Console) -> None:
    bundle = console.add_bundle("v1")
    ids = console.add_nodes(23, prefix="edge")
    made = [
        start_rollout(console, bundle, target_selector={"node_ids": [node]}, start=False)
        for node in ids
    ]
    user = await console.login("operator")
    await console.open(user, "/rollouts", ready="rollouts-position")
    await user.should_see(marker="rollouts-position", content="1–20 of 23")
    assert [r["id"] for r in console.table_rows(user, "rollouts-table")] == made[::-1][:20]
    await user.should_not_see(marker="newer")
    user.find(marker="older").click()
    await user.should_see(marker="rollouts-position", content="21–23 of 23", retries=SETTLE)
    assert [r["id"] for r in console.table_rows(user, "rollouts-table")] == made[::-1][20:]
    user.find(marker="newer").click()
    await user.should_see(marker="rollouts-position", content="1–20 of 23", retries=SETTLE)
    user.find(marker="state-filter").elements.pop().set_value("running")
    await user.should_see(marker="no-rollouts", retries=SETTLE)


# --- /rollouts/new --------------------------------------------------------------------------


async def test_the_form_counts_matching_nodes_live_and_previews_the_plan(
    console: Console,
) -> None:
    console.add_bundle("v1")
    console.add_nodes(3, prefix="prod", labels={"env": "prod"})
    console.add_nodes(2, prefix="dev", labels={"env": "dev"})
    user = await console.login("operator")
    await console.open(user, "/rollouts/new", ready="match-count")
    await user.should_see(marker="match-count", content="5 nodes match", retries=SETTLE)
    user.find(marker="selector-kind").elements.pop().set_value("labels")
    user.find(marker="selector-labels").type("env=prod")
    await user.should_see(marker="match-count", content="3 nodes match", retries=SETTLE)
    user.find(marker="batch-size").elements.pop().set_value(2)
    await user.should_see(marker="plan-state", content="2 steps", retries=SETTLE)
    await user.should_see(marker="plan-step-0", content="prod-00001, prod-00002")
    await user.should_see(marker="plan-step-1", content="prod-00003")
    await user.should_not_see(content="dev-00001")


async def test_creating_from_the_form_starts_the_rollout_and_audits_it(console: Console) -> None:
    from sentinel_cp.db import db
    from sentinel_cp.rollouts.models import Rollout

    console.add_bundle("v1")
    console.add_nodes(4, prefix="edge")
    user = await console.login("operator")
    await console.open(user, "/rollouts/new", ready="match-count")
    await user.should_see(marker="match-count", content="4 nodes match", retries=SETTLE)
    user.find(marker="strategy").elements.pop().set_value("canary")
    user.find(marker="canary-steps").type("25, 100")
    user.find(marker="max-failures").type("10%")
    user.find(marker="bake").elements.pop().set_value(30)
    user.find(marker="gate-error-rate").elements.pop().set_value(2.5)
    await user.should_see(marker="plan-state", content="2 steps", retries=SETTLE)
    user.find(marker="create").click()
    await user.should_see(marker="rollout-state", retries=SETTLE)

    rows = console.run(lambda: [(r.id, r.created_by, r.config) for r in db.session.query(Rollout)])
    assert len(rows) == 1
    rollout_id, created_by, config = rows[0]
    assert created_by == console.emails["operator"]
    assert config["strategy"] == "canary" and config["canary_steps"] == [25, 100]
    assert (config["max_failures"], config["bake_s"]) == ("10%", 30)
    assert config["health_gates"]["max_error_rate"] == 2.5
    assert [a for a, _ in audited(console, str(rollout_id))][:2] == [
        "rollout.created",
        "rollout.started",
    ]
    await user.should_see(marker="rollout-state", content="running")


async def test_a_conflict_names_the_other_rollout_instead_of_creating(console: Console) -> None:
    bundle = console.add_bundle("v1")
    console.add_nodes(3, prefix="edge")
    busy = start_rollout(console, bundle)
    user = await console.login("operator")
    await console.open(user, "/rollouts/new", ready="conflicts")
    await user.should_see(f"rollout {busy[:8]}")
    user.find(marker="create").click()
    await console.eventually(
        lambda: any(busy in m for m in user.notify.messages), what="the conflict notification"
    )
    assert "already part of rollout" in user.notify.messages[-1]
    assert len(rows_in_db(console)) == 1


async def test_invalid_settings_are_a_notification_naming_the_field(console: Console) -> None:
    console.add_bundle("v1")
    console.add_nodes(2, prefix="edge")
    user = await console.login("operator")
    await console.open(user, "/rollouts/new", ready="match-count")
    await user.should_see(marker="match-count", content="2 nodes match", retries=SETTLE)
    user.find(marker="max-failures").type("lots")
    await user.should_see(marker="plan-state", content="cannot plan", retries=SETTLE)
    user.find(marker="create").click()
    await console.eventually(lambda: user.notify.messages, what="a notification")
    assert "max_failures" in user.notify.messages[-1]
    assert "Traceback" not in user.notify.messages[-1]
    assert rows_in_db(console) == []


async def test_a_template_prefills_the_form(console: Console) -> None:
    from sentinel_cp.audit import Actor
    from sentinel_cp.rollouts import catalog

    console.add_bundle("v1")
    console.add_nodes(4, prefix="edge", labels={"env": "prod"})
    console.run(
        catalog.add_template,
        Actor.system("test"),
        uuid.UUID(console.project_id),
        name="careful",
        target_selector={"labels": {"env": "prod"}},
        config={"strategy": "rolling", "batch_size": 3, "bake_s": 30, "on_failure": "rollback"},
    )
    user = await console.login("operator")
    await console.open(user, "/rollouts/new", ready="match-count")
    await user.should_see(marker="match-count", content="4 nodes match", retries=SETTLE)
    user.find(marker="template").elements.pop().set_value("careful")
    await user.should_see(marker="plan-state", content="2 steps", retries=SETTLE)
    assert user.find(marker="batch-size").elements.pop().value == 3
    assert user.find(marker="bake").elements.pop().value == 30
    assert user.find(marker="on-failure").elements.pop().value == "rollback"
    assert user.find(marker="selector-labels").elements.pop().value == "env=prod"


async def test_only_admins_may_override_a_freeze_window(console: Console) -> None:
    from sentinel_cp.audit import Actor
    from sentinel_cp.db import utcnow
    from sentinel_cp.rollouts import catalog

    rollouts = importlib.import_module("console.rollouts")  # the module the console runs

    bundle = console.add_bundle("v1")
    console.add_nodes(2, prefix="edge")
    now = utcnow().replace(microsecond=0)
    console.run(
        catalog.add_freeze_window,
        Actor.system("test"),
        uuid.UUID(console.project_id),
        {
            "kind": "one_off",
            "name": "launch",
            "starts_at": now.isoformat(),
            "ends_at": (now + timedelta(days=1)).isoformat(),
        },
    )
    operator = await console.login("operator")
    await console.open(operator, "/rollouts/new", ready="freeze-active")
    await operator.should_not_see(marker="override-freeze")
    request = {"bundle_id": bundle, "target_selector": {"all": True}, "override_freeze": "hotfix"}
    with operator.client:  # what a crafted "create" event from this page would reach
        assert await rollouts.create_rollout(console.project, request) is None
    assert "Not allowed" in operator.notify.messages[-1]
    assert rows_in_db(console) == []

    admin = await console.login("admin")
    await console.open(admin, "/rollouts/new", ready="override-freeze")
    admin.find(marker="override-freeze").type("security fix")
    admin.find(marker="create").click()
    await admin.should_see(marker="rollout-state", retries=SETTLE)
    (rollout_id,) = rows_in_db(console)
    tick(console, rollout_id)
    assert rollout_state(console, rollout_id)[0] == "running"  # not paused by the window
    created = dict(audited(console, rollout_id))["rollout.created"]
    assert created["freeze_override"] == "security fix"


def rows_in_db(console: Console) -> list[str]:
    from sentinel_cp.db import db
    from sentinel_cp.rollouts.models import Rollout

    return console.run(lambda: [str(r.id) for r in db.session.query(Rollout)])


# --- /rollouts/{id}: what it shows ------------------------------------------------------------


async def test_the_detail_shows_steps_node_grid_and_gate_verdicts(console: Console) -> None:
    bundle = console.add_bundle("v1")
    ids = console.add_nodes(4, prefix="edge")
    rollout = start_rollout(console, bundle, strategy="rolling", batch_size=2, bake_s=300)
    for node in ids[:2]:
        report(console, node, bundle, "verified")
    tick(console, rollout)  # every node verified: the step bakes and its gates are judged

    user = await console.login("reader")
    await console.open(user, f"/rollouts/{rollout}", ready="rollout-state")
    await user.should_see(marker="rollout-state", content="running")
    step0 = user.find(marker="step-0").elements.pop()
    step1 = user.find(marker="step-1").elements.pop()
    assert (step0.props["subtitle"], step1.props["subtitle"]) == ("baking", "pending")
    grid = grid_html(user)
    assert 'title="edge-00001: verified"' in grid and 'title="edge-00003: pending"' in grid
    await user.should_see(marker="rollout-progress", content="2/4 verified")
    await user.should_see(marker="verdict-state", content="waiting")
    verdict = console.table_rows(user, "verdict-nodes")
    assert [(r["name"], r["result"], r["data"]) for r in verdict] == [
        ("edge-00001", "waiting", "awaiting heartbeat"),
        ("edge-00002", "waiting", "awaiting heartbeat"),
    ]
    await user.should_see(content="healthy heartbeat")


async def test_an_unknown_rollout_says_so(console: Console) -> None:
    user = await console.login("reader")
    await console.open(user, f"/rollouts/{uuid.uuid4()}", ready="rollout-missing")
    await console.open(user, "/rollouts/not-an-id", ready="rollout-missing")
    await user.should_see(content="There is no rollout not-an-id in project alpha")


async def test_the_detail_says_why_a_rollout_paused(console: Console) -> None:
    bundle = console.add_bundle("v1")
    ids = console.add_nodes(2, prefix="edge")
    rollout = start_rollout(console, bundle, strategy="all_at_once")
    report(console, ids[0], bundle, "failed", "config test failed")
    tick(console, rollout)
    assert rollout_state(console, rollout) == ("paused", "max_failures_exceeded")

    user = await console.login("operator")
    await user.open(f"/rollouts/{rollout}")
    await user.should_see(
        marker="rollout-why-headline", content="Max failures exceeded", retries=SETTLE
    )
    await user.should_see(marker="rollout-details", content="edge-00001")
    assert 'title="edge-00001: failed — config test failed"' in grid_html(user)
    await user.should_see(marker="action-resume")
    await user.should_not_see(marker="action-pause")


async def test_the_node_grid_follows_reports_live_while_the_browser_is_connected(
    console: Console,
) -> None:
    live = importlib.import_module("console.live")
    bundle = console.add_bundle("v1")
    ids = console.add_nodes(2, prefix="edge")
    rollout = start_rollout(console, bundle, strategy="all_at_once")
    listening = len(live.changes.callbacks)
    user = await console.login("reader")
    await console.open(user, f"/rollouts/{rollout}", ready="node-grid")
    assert len(live.changes.callbacks) == listening + 1
    assert 'title="edge-00001: assigned"' in grid_html(user)
    await console.listener_ready()
    report(console, ids[0], bundle, "verified")
    await console.eventually(
        lambda: 'title="edge-00001: verified"' in grid_html(user), what="the live grid"
    )
    await user.should_see(marker="rollout-progress", content="1/2 verified")

    client = user.client
    assert client is not None
    for handler in client.disconnect_handlers:  # what a closed tab or lost network does
        client.safe_invoke(handler)
    assert len(live.changes.callbacks) == listening
    for handler in client.connect_handlers:  # the browser comes back: listening again
        client.safe_invoke(handler)
    assert len(live.changes.callbacks) == listening + 1
    report(console, ids[1], bundle, "verified")
    await console.eventually(
        lambda: 'title="edge-00002: verified"' in grid_html(user),
        what="the grid after reconnecting",
    )


# --- /rollouts/{id}: who may act ----------------------------------------------------------------


async def test_a_reader_gets_no_action_and_the_handler_refuses_one(console: Console) -> None:
    rollouts = importlib.import_module("console.rollouts")  # the module the console runs

    bundle = console.add_bundle("v1")
    console.add_nodes(2, prefix="edge")
    rollout = start_rollout(console, bundle)
    reader = await console.login("reader")
    await console.open(reader, f"/rollouts/{rollout}", ready="rollout-state")
    await reader.should_see(marker="rollout-state", content="running")
    for action in ("pause", "cancel", "rollback", "resume", "approve", "reject", "promote"):
        await reader.should_not_see(marker=f"action-{action}", retries=1)
    with reader.client:  # what a crafted "pause" event from this page would reach
        taken = await rollouts.act_on_rollout(console.project, rollout, "pause", "because")
    assert taken is False
    assert "Not allowed: Insufficient scope: rollouts:write" in reader.notify.messages[-1]
    assert rollout_state(console, rollout)[0] == "running"
    assert "rollout.paused" not in [a for a, _ in audited(console, rollout)]


async def test_an_operator_demoted_while_the_page_is_open_is_refused(console: Console) -> None:
    bundle = console.add_bundle("v1")
    console.add_nodes(2, prefix="edge")
    rollout = start_rollout(console, bundle)
    user = await console.login("operator")
    await console.open(user, f"/rollouts/{rollout}", ready="action-pause")
    set_role(console, "operator", "reader")
    await confirm_action(user, "pause", "maintenance")
    await console.eventually(lambda: user.notify.messages, what="a notification")
    assert "Not allowed" in user.notify.messages[-1]
    assert rollout_state(console, rollout)[0] == "running"


async def test_the_creator_may_reject_but_not_approve_and_reject_needs_a_comment(
    console: Console,
) -> None:
    from sentinel_cp import projects
    from sentinel_cp.audit import Actor

    console.run(
        lambda: projects.update_project(
            Actor.system("test"),
            projects.get_project(console.project),
            settings={"approvals_required": 1},
        )
    )
    bundle = console.add_bundle("v1")
    console.add_nodes(2, prefix="edge")
    rollout = start_rollout(console, bundle, role="operator")
    assert rollout_state(console, rollout)[0] == "pending"

    creator = await console.login("operator")
    await creator.open(f"/rollouts/{rollout}")
    await creator.should_see(
        marker="rollout-why-headline", content="Waiting for approval", retries=SETTLE
    )
    await creator.should_see(marker="action-reject")
    await creator.should_not_see(marker="action-approve")

    admin = await console.login("admin")
    await console.open(admin, f"/rollouts/{rollout}", ready="action-approve")
    await confirm_action(admin, "reject")
    await console.eventually(lambda: admin.notify.messages, what="a notification")
    assert "A rejection needs a comment" in admin.notify.messages[-1]
    await confirm_action(admin, "reject", "not during the launch")
    await admin.should_see(marker="approval-state", content="rejected", retries=SETTLE)
    rejected = dict(audited(console, rollout))["rollout.rejected"]
    assert rejected["comment"] == "not during the launch"


# --- /rollouts/{id}: what each action changes -------------------------------------------------


async def test_pause_resume_and_cancel_change_the_state_and_are_audited(console: Console) -> None:
    bundle = console.add_bundle("v1")
    console.add_nodes(2, prefix="edge")
    rollout = start_rollout(console, bundle, strategy="rolling")
    user = await console.login("operator")
    await console.open(user, f"/rollouts/{rollout}", ready="action-pause")

    await confirm_action(user, "pause", "maintenance window")
    await user.should_see(marker="rollout-state", content="paused", retries=SETTLE)
    assert rollout_state(console, rollout) == ("paused", "operator_paused")
    await user.should_see(marker="rollout-why-message", content="maintenance window")
    await user.should_not_see(marker="action-pause")

    await confirm_action(user, "resume")
    await user.should_see(marker="rollout-state", content="running", retries=SETTLE)
    await confirm_action(user, "cancel", "wrong bundle")
    await user.should_see(marker="rollout-state", content="cancelled", retries=SETTLE)
    await user.should_not_see(marker="action-cancel")
    assert rollout_state(console, rollout)[0] == "cancelled"

    actions = audited(console, rollout)
    operator_actions = [
        (a, m.get("reason"))
        for a, m in actions
        if a.split(".")[1]
        in (
            "paused",
            "resumed",
            "cancelled",
        )
    ]
    assert operator_actions == [
        ("rollout.paused", "maintenance window"),
        ("rollout.resumed", None),
        ("rollout.cancelled", "wrong bundle"),
    ]


async def test_rollback_links_the_rollback_rollout_and_is_audited(console: Console) -> None:
    old = console.add_bundle("v1")
    new = console.add_bundle("v2")
    ids = console.add_nodes(2, prefix="edge", active_bundle_id=old)
    rollout = start_rollout(console, new, strategy="all_at_once")
    report(console, ids[0], new, "verified")
    user = await console.login("operator")
    await console.open(user, f"/rollouts/{rollout}", ready="action-rollback")
    await confirm_action(user, "rollback", "errors up")
    await user.should_see(marker="rollout-state", content="rolling back", retries=SETTLE)
    await user.should_see(marker="linked-rollout")
    assert rollout_state(console, rollout)[0] == "rolling_back"
    rolling_back = dict(audited(console, rollout))["rollout.rolling_back"]
    assert rolling_back["reason"] == "errors up"


# --- the rule behind the buttons -------------------------------------------------------------


def test_the_actions_offered_are_exactly_those_the_engine_accepts(console: Console) -> None:
    """`catalog.legal_actions` (what the console shows) against the engine (what it does),
    for every rollout state and the approval, promotion and rollback variants."""
    from sqlalchemy import update

    from sentinel_cp.audit import Actor
    from sentinel_cp.db import db
    from sentinel_cp.errors import Conflict
    from sentinel_cp.rollouts import catalog, engine
    from sentinel_cp.rollouts.models import Rollout
    from sentinel_cp.rollouts.types import ROLLOUT_STATES

    bundle = console.add_bundle("v1")
    ids = console.add_nodes(2, prefix="edge")
    rollout = uuid.UUID(start_rollout(console, bundle, target_selector={"node_ids": ids[:1]}))
    other = start_rollout(console, bundle, target_selector={"node_ids": ids[1:]})
    approver = uuid.UUID(console.user_ids["admin"])
    actor = Actor("user", str(approver), console.emails["admin"])
    calls = {
        "pause": lambda: engine.pause(actor, rollout, reason=None),
        "resume": lambda: engine.resume(actor, rollout, reason=None),
        "cancel": lambda: engine.cancel(actor, rollout, reason=None),
        "promote": lambda: engine.promote(actor, rollout, reason=None),
        "rollback": lambda: engine.rollback(actor, rollout, reason=None),
        "approve": lambda: engine.approve(actor, rollout, user_id=approver, comment=None),
        "reject": lambda: engine.reject(actor, rollout, user_id=approver, comment="no"),
    }
    variants = [
        (state, approval, reason, rollback_of)
        for state in ROLLOUT_STATES
        for approval in (
            ("not_required", "pending_approval", "approved", "rejected")
            if state == "pending"
            else ("not_required",)
        )
        for reason in ((None, "awaiting_promotion") if state == "paused" else (None,))
        for rollback_of in (None, uuid.UUID(other))
    ]
    with console.app.app_context():
        for state, approval, reason, rollback_of in variants:
            values = {
                "state": state,
                "approval_state": approval,
                "reason": reason,
                "rollback_of": rollback_of,
            }
            db.session.execute(update(Rollout).where(Rollout.id == rollout).values(**values))
            db.session.commit()
            offered = catalog.legal_actions(db.session.get(Rollout, rollout))
            accepted = []
            for action, act in calls.items():
                try:
                    act()
                    accepted.append(action)
                except Conflict:
                    pass
                db.session.rollback()
            assert sorted(offered) == sorted(accepted), values


# --- Chromium -----------------------------------------------------------------------------------


def node_report(server: str, node: dict[str, Any], bundle_id: str, state: str, **body: Any) -> None:
    response = httpx.post(
        f"{server}/api/v1/nodes/{node['node_id']}/bundles/{bundle_id}/{state}",
        json=body,
        headers={"X-Sentinel-Node-Key": node["node_key"]},
    )
    assert response.status_code == 200, response.text


def heartbeat(server: str, node: dict[str, Any], **body: Any) -> None:
    """A healthy heartbeat, retried past the one-per-second limit (a 429 is not a failure)."""
    payload = {"health": {"status": "healthy"}, "metrics": {"error_rate": 0.2}, **body}

    def accepted() -> bool:
        response = httpx.post(
            f"{server}/api/v1/nodes/{node['node_id']}/heartbeat",
            json=payload,
            headers={"X-Sentinel-Node-Key": node["node_key"]},
        )
        assert response.status_code in (200, 429), response.text
        return response.status_code == 200

    wait_for(accepted, timeout=10, what="a heartbeat", tolerate_errors=False)


@pytest.mark.slow
@pytest.mark.browser
def test_a_rollout_detail_page_in_chromium(tmp_path: Path, chromium: Any) -> None:
    """A rolling rollout on a real server: step 1 done, step 2 paused on a failed node."""
    from e2e_helpers import admin_api, registration_token, submit_and_compile
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    server = start_server({}, tmp_path)
    try:
        with admin_api(server) as api:
            token = registration_token(api)
            fleet = []
            for name in ("edge-fra-1", "edge-fra-2", "edge-iad-1", "edge-iad-2"):
                registered = httpx.post(
                    f"{server.url}/api/v1/projects/default/nodes/register",
                    json={"name": name, "labels": {"env": "prod"}},
                    headers={"X-Sentinel-Registration-Token": token},
                )
                assert registered.status_code == 201, registered.text
                fleet.append(registered.json())
                heartbeat(server.url, fleet[-1])
            bundle = submit_and_compile(api, CONFIG, "2024.06.1")["id"]
            created = api.post(
                "/api/v1/projects/default/rollouts",
                json={
                    "bundle_id": bundle,
                    "target_selector": {"labels": {"env": "prod"}},
                    "strategy": "rolling",
                    "batch_size": 2,
                    "health_gates": {"heartbeat_healthy": True, "max_error_rate": 1.0},
                },
            )
            assert created.status_code == 201, created.text
            rollout = created.json()["id"]

            def step_nodes(index: int, state: str) -> bool:
                body = api.get(f"/api/v1/projects/default/rollouts/{rollout}").json()
                return all(n["state"] == state for n in body["steps"][index]["nodes"])

            wait_for(lambda: step_nodes(0, "assigned"), timeout=20, what="step 1 assigned")
            for node in fleet[:2]:
                for state in ("downloaded", "staged", "activated", "verified"):
                    node_report(server.url, node, bundle, state)
                heartbeat(server.url, node, active_bundle_id=bundle)
            wait_for(lambda: step_nodes(1, "assigned"), timeout=30, what="step 2 assigned")
            for state in ("downloaded", "staged", "activated", "verified"):
                node_report(server.url, fleet[2], bundle, state)
            node_report(
                server.url, fleet[3], bundle, "failed", reason="proxy test: upstream unreachable"
            )
            wait_for(
                lambda: (
                    api.get(f"/api/v1/projects/default/rollouts/{rollout}").json()["state"]
                    == "paused"
                ),
                timeout=20,
                what="the rollout to pause",
            )

        ARTIFACTS.mkdir(exist_ok=True)
        wait = WebDriverWait(chromium, 20)
        chromium.get(f"{server.url}/rollouts/{rollout}")
        email = wait.until(
            ec.presence_of_element_located((By.CSS_SELECTOR, "input[autocomplete=username]"))
        )
        wait_for_websocket(chromium)
        email.send_keys("admin@localhost")
        chromium.find_element(By.CSS_SELECTOR, "input[type=password]").send_keys(PASSWORD)
        chromium.find_element(By.XPATH, "//button[contains(., 'Log in')]").click()
        wait.until(ec.text_to_be_present_in_element((By.TAG_NAME, "body"), "Max failures"))
        wait_for_websocket(chromium)
        chromium.set_window_size(1280, 1500)  # the whole page: timeline, grid and gates
        chromium.save_screenshot(str(ARTIFACTS / "console-rollout.png"))
        body = chromium.find_element(By.TAG_NAME, "body").text.lower()  # buttons are upper case
        assert "paused" in body and "resume" in body and "roll back" in body
        assert "2024.06.1" in body and "proxy test: upstream unreachable" in body

        chromium.get(f"{server.url}/rollouts")
        wait.until(ec.text_to_be_present_in_element((By.TAG_NAME, "body"), "1–1 of 1"))
        chromium.save_screenshot(str(ARTIFACTS / "console-rollouts.png"))
        chromium.get(f"{server.url}/rollouts/new")
        wait.until(ec.text_to_be_present_in_element((By.TAG_NAME, "body"), "Plan preview"))
        wait.until(ec.text_to_be_present_in_element((By.TAG_NAME, "body"), "nodes match"))
        chromium.save_screenshot(str(ARTIFACTS / "console-rollout-new.png"))
    finally:
        assert server.stop() == 0
