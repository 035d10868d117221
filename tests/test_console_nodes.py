"""The Nodes pages of the console, driven by NiceGUI's simulated user (and once by Chromium)."""

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
from e2e_helpers import admin_api, registration_token
from nicegui import ui
from nicegui.testing import User
from test_server import ARTIFACTS, start_server, wait_for_websocket

from sentinel_cp.errors import DomainError, Forbidden, Invalid

if TYPE_CHECKING:
    from console_support import Console

pytest_plugins = ["console_support"]
chromium = test_server.chromium  # the Selenium fixture of the server tests, shared


def names(console: Console, user: User) -> list[str]:
    return [row["name"] for row in console.table_rows(user, "nodes-table")]


def node_state(console: Console, node_id: str) -> dict[str, Any]:
    """What the database holds for the node: its labels and whether its key is revoked."""
    from sentinel_cp.db import db
    from sentinel_cp.nodes import Node

    def read() -> dict[str, Any]:
        node = db.session.get(Node, uuid.UUID(node_id))
        assert node is not None
        return {"labels": dict(node.labels), "revoked": node.key_hash is None}

    return console.run(read)


def nodes_module() -> Any:
    """The page module the running console imported (NiceGUI re-imports pages per test)."""
    return importlib.import_module("console.nodes")


async def show_table(user: User, console: Console, expected: list[str]) -> None:
    await console.eventually(lambda: names(console, user) == expected, what=f"rows {expected}")


# --- the domain queries the table pages with (both backends) ----------------------------------


def test_list_nodes_page_sorts_any_column_and_puts_unseen_nodes_last(app: Any) -> None:
    from conftest import make_project

    from sentinel_cp import nodes
    from sentinel_cp.db import db

    project_id = uuid.UUID(make_project(app, "sorting"))
    seen = datetime(2026, 1, 1, tzinfo=UTC)
    with app.app_context():
        for name, status, minutes in (
            ("b", "online", 5),
            ("a", "offline", 1),
            ("c", "online", None),
            ("d", "unknown", 3),
        ):
            last_seen = None if minutes is None else seen + timedelta(minutes=minutes)
            db.session.add(
                nodes.Node(project_id=project_id, name=name, status=status, last_seen_at=last_seen)
            )
        db.session.commit()

        def page(**order: Any) -> list[str]:
            result = nodes.list_nodes_page(project_id, nodes.NodeFilter(), limit=10, **order)
            assert result.total == 4
            return [node.name for node in result.items]

        assert page() == ["a", "b", "c", "d"]
        assert page(sort="last_seen", descending=True) == ["b", "d", "a", "c"]
        assert page(sort="last_seen") == ["a", "d", "b", "c"]
        assert page(sort="status") == ["a", "b", "c", "d"]  # offline, online (by name), unknown
        second = nodes.list_nodes_page(
            project_id, nodes.NodeFilter(status="online"), offset=1, limit=1
        )
        assert ([n.name for n in second.items], second.total) == (["c"], 2)
        with pytest.raises(Invalid):
            nodes.list_nodes_page(project_id, nodes.NodeFilter(), sort="key_hash")
        with pytest.raises(Invalid):
            nodes.list_nodes_page(project_id, nodes.NodeFilter(), limit=0)


# --- the harness itself -----------------------------------------------------------------------


async def test_dashboard_counts_seeded_nodes(user: User, console: Console) -> None:
    console.add_nodes(3, status="online")
    console.add_nodes(2, prefix="gone", status="offline")
    await console.open(user, "/", ready="nodes-online")
    await user.should_see(marker="nodes-online", content="3")
    await user.should_see(marker="nodes-offline", content="2")
    await user.should_see("admin@example.com")


async def test_visitor_without_session_is_sent_to_login(console: Console) -> None:
    visitor = console.anonymous()
    await console.open(visitor, "/nodes", ready="login")
    await visitor.should_not_see(marker="nodes-table")


# --- /nodes -----------------------------------------------------------------------------------


async def test_nodes_page_shows_counts_and_first_page(user: User, console: Console) -> None:
    console.add_nodes(60, status="online")
    console.add_nodes(4, prefix="dark", status="offline")
    console.add_nodes(1, prefix="new", status="unknown")
    await console.open(user, "/nodes", ready="nodes-table")
    await user.should_see(marker="stat-total", content="65")
    await user.should_see(marker="stat-online", content="60")
    await user.should_see(marker="stat-offline", content="4")
    await user.should_see(marker="stat-unknown", content="1")
    await user.should_see(marker="nodes-matching", content="1–50 of 65 matching nodes")
    assert names(console, user)[:2] == ["dark-00001", "dark-00002"]
    assert len(names(console, user)) == 50
    row = console.table_rows(user, "nodes-table")[0]
    assert row["href"] == f"/nodes/{row['id']}"
    assert row["status"] == "offline"


async def test_filters_narrow_the_table(user: User, console: Console) -> None:
    old = console.add_bundle("v1")
    new = console.add_bundle("v2")
    console.add_nodes(3, prefix="prod", labels={"env": "prod"}, version="1.0.0")
    console.add_nodes(2, prefix="stage", labels={"env": "staging"}, version="2.0.0")
    console.add_nodes(
        2, prefix="drift", status="offline", active_bundle_id=old, expected_bundle_id=new
    )
    console.add_nodes(1, prefix="synced", active_bundle_id=new, expected_bundle_id=new)
    await console.open(user, "/nodes", ready="nodes-table")
    await user.should_see(marker="stat-drifted", content="2")

    await console.set_value(user, "filter-status", "offline")
    await show_table(user, console, ["drift-00001", "drift-00002"])
    await console.set_value(user, "filter-status", "")
    await console.set_value(user, "filter-labels", "env=prod")
    await show_table(user, console, ["prod-00001", "prod-00002", "prod-00003"])
    await console.set_value(user, "filter-labels", "")
    await console.set_value(user, "filter-version", "2.0.0")
    await show_table(user, console, ["stage-00001", "stage-00002"])
    await console.set_value(user, "filter-version", "")
    await console.set_value(user, "filter-bundle", new)
    await show_table(user, console, ["synced-00001"])
    await console.set_value(user, "filter-bundle", "")
    await console.set_value(user, "filter-drift", "drifted")
    await show_table(user, console, ["drift-00001", "drift-00002"])
    await console.set_value(user, "filter-drift", "")
    await console.set_value(user, "filter-q", "stage-00002")
    await show_table(user, console, ["stage-00002"])
    await user.should_see(marker="nodes-matching", content="1–1 of 1 matching nodes")
    user.find(marker="clear-filters").click()
    await console.eventually(lambda: len(names(console, user)) == 8, what="every node again")


async def test_a_malformed_label_filter_is_explained_not_applied(
    user: User, console: Console
) -> None:
    console.add_nodes(2)
    await console.open(user, "/nodes", ready="nodes-table")
    await console.set_value(user, "filter-labels", "env")
    (labels,) = user.find(kind=ui.input, marker="filter-labels").elements
    await console.eventually(lambda: labels.error, what="an error on the label filter")
    assert "use key=value" in str(labels.error)
    assert names(console, user) == ["node-00001", "node-00002"]


async def test_table_pages_and_sorts_in_the_database(user: User, console: Console) -> None:
    console.add_nodes(120)  # node-00001 was seen last: `last_seen_at = now - i seconds`
    await console.open(user, "/nodes", ready="nodes-table")
    table = user.find(marker="nodes-table")

    table.trigger("request", {"pagination": {"page": 3, "rowsPerPage": 50, "sortBy": "name"}})
    await show_table(user, console, [f"node-{i:05d}" for i in range(101, 121)])
    await user.should_see(marker="nodes-matching", content="101–120 of 120 matching nodes")

    request = {"page": 1, "rowsPerPage": 25, "sortBy": "name", "descending": True}
    table.trigger("request", {"pagination": request})
    await show_table(user, console, [f"node-{i:05d}" for i in range(120, 95, -1)])

    request = {"page": 1, "rowsPerPage": 25, "sortBy": "last_seen", "descending": True}
    table.trigger("request", {"pagination": request})
    await show_table(user, console, [f"node-{i:05d}" for i in range(1, 26)])
    (element,) = user.find(kind=ui.table, marker="nodes-table").elements
    pagination = element.pagination
    assert pagination["rowsNumber"] == 120
    assert pagination["sortBy"] == "last_seen"


async def test_ten_thousand_nodes_render_their_first_page(user: User, console: Console) -> None:
    console.add_nodes(10_000)
    await console.open(user, "/nodes", ready="nodes-table")
    await user.should_see(marker="stat-total", content="10,000")
    await user.should_see(marker="nodes-matching", content="1–50 of 10,000 matching nodes")
    assert names(console, user) == [f"node-{i:05d}" for i in range(1, 51)]
    pagination = {"page": 200, "rowsPerPage": 50, "sortBy": "name"}
    user.find(marker="nodes-table").trigger("request", {"pagination": pagination})
    await show_table(user, console, [f"node-{i:05d}" for i in range(9951, 10_001)])


async def test_a_burst_of_events_reloads_the_table_once(
    user: User, console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    console.add_nodes(2)
    await console.open(user, "/nodes", ready="nodes-table")
    page = nodes_module()
    loads = []
    original = page.load_table

    def counted(*args: Any) -> Any:
        loads.append(args)
        return original(*args)

    monkeypatch.setattr(page, "load_table", counted)
    console.add_nodes(1, prefix="late")
    live = importlib.import_module("console.live")
    for _ in range(50):
        live.changes.emit({"project": console.project_id, "kind": "node", "id": None})
    live.changes.emit({"project": str(uuid.uuid4()), "kind": "node", "id": None})
    await show_table(user, console, ["late-00001", "node-00001", "node-00002"])
    assert len(loads) == 1


async def test_table_follows_changes_published_over_redis(user: User, console: Console) -> None:
    from sentinel_cp import nodes
    from sentinel_cp.audit import Actor

    (node_id,) = console.add_nodes(1)
    await console.listener_ready()
    await console.open(user, "/nodes", ready="nodes-table")
    assert console.table_rows(user, "nodes-table")[0]["labels"] == {}

    def relabel() -> None:
        node = nodes.get_node(uuid.UUID(console.project_id), uuid.UUID(node_id))
        nodes.set_labels(Actor.system("test"), node, {"tier": "edge"})

    console.run(relabel)  # publishes after commit, through the embedded Redis
    await console.eventually(
        lambda: console.table_rows(user, "nodes-table")[0]["labels"] == {"tier": "edge"},
        what="the relabelled node in the table",
    )


async def test_page_unsubscribes_from_live_events_when_its_browser_leaves(
    user: User, console: Console
) -> None:
    live = importlib.import_module("console.live")
    before = len(live.changes.callbacks)
    client = await console.open(user, "/nodes", ready="nodes-table")
    await user.should_see(marker="nodes-table")
    assert len(live.changes.callbacks) == before + 1
    (socket_id,) = client._socket_to_document_id  # the simulated browser's one socket
    client.handle_disconnect(socket_id)
    assert len(live.changes.callbacks) == before
    client.delete()
    assert len(live.changes.callbacks) == before


# --- /nodes/{id} ------------------------------------------------------------------------------


def seed_history(console: Console, node_id: str, bundle_ids: list[str]) -> None:
    from sentinel_cp.bundles.models import NodeBundleStatus
    from sentinel_cp.db import db
    from sentinel_cp.nodes import NodeEvent, NodeHeartbeat

    start = datetime.now(UTC) - timedelta(minutes=30)

    def insert() -> None:
        for minute in range(30):
            db.session.add(
                NodeHeartbeat(
                    node_id=uuid.UUID(node_id),
                    created_at=start + timedelta(minutes=minute),
                    status="online",
                    metrics={
                        "error_rate": 0.5,
                        "latency_p99_ms": 40 + minute,
                        "cpu_percent": 20.0,
                        "memory_percent": 45.5,
                    },
                )
            )
        db.session.add(
            NodeEvent(
                node_id=uuid.UUID(node_id),
                created_at=start,
                event_type="config_reload",
                severity="warning",
                message="reload took 2 s",
            )
        )
        for bundle_id, state in zip(bundle_ids, ("verified", "activated"), strict=True):
            db.session.add(
                NodeBundleStatus(
                    project_id=uuid.UUID(console.project_id),
                    node_id=uuid.UUID(node_id),
                    bundle_id=bundle_id,
                    state=state,
                )
            )

    console.run(insert)


async def test_node_detail_shows_state_bundles_charts_events_and_history(
    user: User, console: Console
) -> None:
    old, new = console.add_bundle("v1"), console.add_bundle("v2")
    (node_id,) = console.add_nodes(
        1,
        prefix="edge",
        labels={"env": "prod", "region": "eu"},
        version="0.9.3",
        hostname="edge-1.example",
        active_bundle_id=old,
        assigned_bundle_id=new,
        expected_bundle_id=new,
    )
    seed_history(console, node_id, [old, new])
    await console.open(user, f"/nodes/{node_id}", ready="node-summary")
    await user.should_see("edge-00001")
    await user.should_see(marker="node-status", content="online")
    await user.should_see(marker="node-version", content="0.9.3")
    await user.should_see(marker="node-hostname", content="edge-1.example")
    await user.should_see(marker="node-drifted")
    await user.should_see(marker="bundle-active", content=f"v1 ({old[:8]})")
    await user.should_see(marker="bundle-assigned", content=f"v2 ({new[:8]})")
    await user.should_see(marker="node-label", content="region=eu")
    await user.should_not_see(marker="no-samples")
    for key in ("error_rate", "latency_p99_ms", "cpu_percent", "memory_percent"):
        (chart,) = user.find(kind=ui.echart, marker=f"chart-{key}").elements
        assert len(chart.options["series"][0]["data"]) == 30
    (chart,) = user.find(kind=ui.echart, marker="chart-latency_p99_ms").elements
    assert [point[1] for point in chart.options["series"][0]["data"][:2]] == [40, 41]
    assert [row["type"] for row in console.table_rows(user, "node-events")] == ["config_reload"]
    history = console.table_rows(user, "bundle-history")
    assert [(row["bundle"][:2], row["state"]) for row in history] == [
        ("v2", "activated"),
        ("v1", "verified"),
    ]


async def test_unknown_node_says_so(user: User, console: Console) -> None:
    await console.open(user, f"/nodes/{uuid.uuid4()}", ready="node-not-found")
    await user.should_see(marker="node-not-found")
    await console.open(user, "/nodes/not-a-uuid", ready="node-not-found")


async def test_reader_sees_no_label_or_revoke_controls(console: Console) -> None:
    (node_id,) = console.add_nodes(1, labels={"env": "prod"})
    reader = await console.login("reader")
    await console.open(reader, f"/nodes/{node_id}", ready="node-summary")
    await reader.should_see(marker="node-label", content="env=prod")
    await reader.should_not_see(marker="edit-labels")
    await reader.should_not_see(marker="revoke-key")


async def test_reader_is_refused_by_the_handlers_themselves(console: Console) -> None:
    (node_id,) = console.add_nodes(1, labels={"env": "prod"})
    reader = await console.login("reader")
    cookie = console.cookie(reader)
    page = nodes_module()
    with pytest.raises(Forbidden):
        await page.save_labels(cookie, console.project, node_id, {"env": "dev"})
    with pytest.raises(Forbidden):
        await page.revoke_key(cookie, console.project, node_id)
    with pytest.raises(DomainError):  # no cookie, no action
        await page.revoke_key(None, console.project, node_id)
    assert node_state(console, node_id) == {"labels": {"env": "prod"}, "revoked": False}
    assert "node.labels_updated" not in console.audit_actions()
    assert "node.key_revoked" not in console.audit_actions()


async def edit_labels(console: Console, user: User, text: str) -> None:
    await user.should_see(marker="edit-labels")
    user.find(marker="edit-labels").click()
    await console.set_value(user, "labels-input", text)
    user.find(marker="save-labels").click()


async def test_operator_edits_labels_persisted_and_audited(console: Console) -> None:
    (node_id,) = console.add_nodes(1, labels={"env": "prod"})
    operator = await console.login("operator")
    await console.open(operator, f"/nodes/{node_id}", ready="node-summary")
    await edit_labels(console, operator, "env=staging\nregion = eu\n")
    await operator.should_see("Labels saved")
    await operator.should_see(marker="node-label", content="region=eu")
    assert node_state(console, node_id)["labels"] == {"env": "staging", "region": "eu"}
    (entry,) = [e for e in console.audit_entries() if e["action"] == "node.labels_updated"]
    assert entry["actor"] == "operator@example.com"
    assert entry["resource_id"] == node_id
    assert entry["changes"] == {"labels": [{"env": "prod"}, {"env": "staging", "region": "eu"}]}


async def test_invalid_label_keys_are_refused_with_the_reason(user: User, console: Console) -> None:
    (node_id,) = console.add_nodes(1, labels={"env": "prod"})
    await console.open(user, f"/nodes/{node_id}", ready="node-summary")
    await edit_labels(console, user, "bad key!=x")
    await user.should_see("must be 1–63 letters")
    assert node_state(console, node_id)["labels"] == {"env": "prod"}


async def test_operator_demoted_after_the_page_loaded_cannot_save(console: Console) -> None:
    from sentinel_cp import accounts
    from sentinel_cp.audit import Actor

    (node_id,) = console.add_nodes(1, labels={"env": "prod"})
    operator = await console.login("operator")
    await console.open(operator, f"/nodes/{node_id}", ready="node-summary")
    await operator.should_see(marker="edit-labels")

    def demote() -> None:
        user_id = uuid.UUID(console.user_ids["operator"])
        accounts.update_user(Actor.system("test"), user_id, role="reader")

    console.run(demote)
    await edit_labels(console, operator, "env=dev")
    await operator.should_see("Insufficient scope")
    assert node_state(console, node_id)["labels"] == {"env": "prod"}


async def test_admin_revokes_a_key_only_after_confirming(user: User, console: Console) -> None:
    (node_id,) = console.add_nodes(1)
    await console.open(user, f"/nodes/{node_id}", ready="node-summary")
    user.find(marker="revoke-key").click()
    await user.should_see(marker="confirm-revoke")
    user.find("Cancel").click()
    await user.should_not_see(marker="confirm-revoke")
    assert node_state(console, node_id)["revoked"] is False

    user.find(marker="revoke-key").click()
    await user.should_see(marker="confirm-revoke")
    user.find(marker="confirm-revoke").click()
    await user.should_see("Key of node-00001 revoked")
    await user.should_see(marker="key-revoked")
    assert node_state(console, node_id)["revoked"] is True
    (entry,) = [e for e in console.audit_entries() if e["action"] == "node.key_revoked"]
    assert (entry["actor"], entry["resource_id"]) == ("admin@example.com", node_id)


# --- in a real browser ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.browser
def test_nodes_page_in_chromium(tmp_path: Path, chromium: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    server = start_server({}, tmp_path)
    try:
        with admin_api(server) as api:
            token = registration_token(api)
        fleet = [
            ("edge-fra-1", {"env": "prod", "region": "eu"}, "0.9.3"),
            ("edge-fra-2", {"env": "prod", "region": "eu"}, "0.9.3"),
            ("edge-iad-1", {"env": "staging", "region": "us"}, "0.9.4"),
        ]
        for name, labels, version in fleet:
            registered = httpx.post(
                f"{server.url}/api/v1/projects/default/nodes/register",
                json={"name": name, "labels": labels, "version": version},
                headers={"X-Sentinel-Registration-Token": token},
            )
            assert registered.status_code == 201, registered.text
        node = registered.json()
        beat = httpx.post(
            f"{server.url}/api/v1/nodes/{node['node_id']}/heartbeat",
            json={"metrics": {"error_rate": 0.4, "latency_p99_ms": 38, "cpu_percent": 21.5}},
            headers={"X-Sentinel-Node-Key": node["node_key"]},
        )
        assert beat.status_code == 200, beat.text

        ARTIFACTS.mkdir(exist_ok=True)
        wait = WebDriverWait(chromium, 20)
        chromium.get(f"{server.url}/nodes")
        wait.until(ec.url_contains("/login"))
        email = wait.until(
            ec.presence_of_element_located((By.CSS_SELECTOR, "input[autocomplete=username]"))
        )
        wait_for_websocket(chromium)
        email.send_keys("admin@localhost")
        chromium.find_element(By.CSS_SELECTOR, "input[type=password]").send_keys(PASSWORD)
        chromium.find_element(By.XPATH, "//button[contains(., 'Log in')]").click()
        wait.until(ec.text_to_be_present_in_element((By.TAG_NAME, "body"), "edge-iad-1"))
        wait_for_websocket(chromium)
        body = chromium.find_element(By.TAG_NAME, "body").text
        assert "edge-fra-1" in body and "edge-fra-2" in body
        assert "1–3 of 3 matching nodes" in body
        assert "region=eu" in body
        chromium.save_screenshot(str(ARTIFACTS / "console-nodes.png"))

        def first_row() -> str:  # read in one script: Vue replaces the rows under Selenium
            return str(
                chromium.execute_script("return document.querySelector('tbody td').innerText")
            )

        assert first_row() == "edge-fra-1"
        chromium.find_element(By.XPATH, "//th[contains(., 'Name')]").click()  # server-side sort
        wait.until(lambda _: first_row() == "edge-iad-1")

        chromium.find_element(By.LINK_TEXT, "edge-iad-1").click()
        wait.until(ec.url_contains(f"/nodes/{node['node_id']}"))
        wait.until(ec.text_to_be_present_in_element((By.TAG_NAME, "body"), "Bundle history"))
        wait_for_websocket(chromium)
        assert "env=staging" in chromium.find_element(By.TAG_NAME, "body").text
        chromium.set_window_size(1280, 1500)  # the whole page: charts, events, history
        chromium.save_screenshot(str(ARTIFACTS / "console-node-detail.png"))
    finally:
        assert server.stop() == 0


def test_the_fleet_pages_follow_a_node_change_once_not_its_audit_echo() -> None:
    """A node change publishes a `node` event and, audited in the same commit, an `audit`
    event: the fleet pages follow the first only (one refresh per change, not two)."""
    from console.live import for_project_changes
    from sentinel_cp.events import event_payload

    project, other, node = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    hears = for_project_changes(str(project))
    assert hears(event_payload(project, "node", node, "online"))
    assert hears(event_payload(project, "rollout", uuid.uuid4(), "running"))
    assert hears(event_payload(project, "audit", uuid.uuid4(), "group.created"))
    assert not hears(event_payload(project, "audit", uuid.uuid4(), "node.online"))
    assert not hears(event_payload(project, "audit", uuid.uuid4(), "node.bundle_verified"))
    assert not hears(event_payload(project, "audit", None, "audit.linked"))
    assert not hears(event_payload(other, "node", node, "online"))
