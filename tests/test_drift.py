"""Drift: detection (grace, rollouts, config hashes, revoked bundles, severity), automatic
resolution and remediation, idempotent runs, and the operator API — on both backends."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import threading
import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
import redis
from bundle_helpers import CONFIG, operator_key, register_node, run_jobs, setup_project, submit
from conftest import bearer, make_key, make_project, make_user
from rq import Queue, SimpleWorker
from sqlalchemy import func, select, update

from sentinel_cp import drift, projects
from sentinel_cp.audit import Actor, AuditLog
from sentinel_cp.bundles import distribution
from sentinel_cp.bundles.models import Bundle, NodeBundleStatus
from sentinel_cp.db import db, utcnow
from sentinel_cp.nodes import Node

EXPECTED = "e" * 64
OTHER = "f" * 64
T0 = utcnow().replace(microsecond=0)
GRACE = timedelta(seconds=60)


@pytest.fixture
def key(app: Any) -> str:
    setup_project(app)
    return operator_key(app)


@pytest.fixture
def compiled(client: Any, app: Any, backend: Any, key: str) -> dict[str, Any]:
    """A compiled, signed bundle of the default project: its id, config hash and config."""
    response = submit(client, key, CONFIG, "v1")
    assert response.status_code == 201, response.get_json()
    run_jobs(app, backend.redis_url)
    with app.app_context():
        bundle = db.session.get(Bundle, response.get_json()["id"])
        assert bundle is not None and bundle.status == "compiled"
        return {
            "id": bundle.id,
            "config_sha256": bundle.config_sha256,
            "config": bundle.files["sentinel.kdl"],
        }


def set_node(app: Any, node_id: str, **values: Any) -> None:
    with app.app_context():
        db.session.execute(update(Node).where(Node.id == uuid.UUID(node_id)).values(**values))
        db.session.commit()


def set_settings(app: Any, slug: str = "default", **settings: Any) -> None:
    with app.app_context():
        project = projects.get_project(slug)
        projects.update_project(Actor.system("test"), project, settings=settings)
        db.session.commit()


def drifted_node(client: Any, app: Any, name: str, slug: str = "default") -> str:
    """An online node expected to run EXPECTED that reports OTHER."""
    node_id, _ = register_node(client, name, slug)
    set_node(app, node_id, expected_bundle_id=EXPECTED, active_bundle_id=OTHER)
    return node_id


def detect(app: Any, now: datetime) -> drift.DriftRun:
    with app.app_context():
        run = drift.detect_drift(now)
        db.session.commit()
        return run


def open_events(app: Any, now: datetime = T0) -> None:
    """Run the detector at `now` and once the default grace has passed."""
    detect(app, now)
    detect(app, now + GRACE)


def events_of(app: Any) -> list[drift.DriftEvent]:
    with app.app_context():
        rows = list(
            db.session.scalars(select(drift.DriftEvent).order_by(drift.DriftEvent.node_name))
        )
        for row in rows:
            db.session.expunge(row)
        return rows


def audit_actions(app: Any) -> list[str]:
    with app.app_context():
        return list(
            db.session.scalars(
                select(AuditLog.action)
                .where(AuditLog.action.startswith("drift."))
                .order_by(AuditLog.created_at, AuditLog.seq)
            )
        )


# --- detection ------------------------------------------------------------------------------


def test_a_mismatch_opens_an_event_after_the_grace_and_not_before(
    client: Any, app: Any, key: str
) -> None:
    node_id = drifted_node(client, app, "edge-1")
    detect(app, T0)
    detect(app, T0 + GRACE - timedelta(seconds=1))
    assert events_of(app) == []
    detect(app, T0 + GRACE)
    (event,) = events_of(app)
    assert (str(event.node_id), event.kind, event.reason, event.status) == (
        node_id,
        "bundle",
        "bundle_mismatch",
        "active",
    )
    assert (event.expected_bundle_id, event.actual_bundle_id) == (EXPECTED, OTHER)
    assert (event.first_seen_at, event.opened_at, event.severity) == (T0, T0 + GRACE, "low")
    assert audit_actions(app) == ["drift.opened"]


def test_the_grace_is_the_projects_drift_grace_setting(client: Any, app: Any, key: str) -> None:
    set_settings(app, drift_grace_s=300)
    drifted_node(client, app, "edge-1")
    open_events(app)
    assert events_of(app) == []
    detect(app, T0 + timedelta(seconds=300))
    assert len(events_of(app)) == 1


def test_a_node_a_rollout_is_moving_is_not_drifted(client: Any, app: Any, key: str) -> None:
    node_id = drifted_node(client, app, "edge-1")
    set_node(app, node_id, assigned_bundle_id="a" * 64)
    open_events(app)
    detect(app, T0 + timedelta(hours=2))
    assert events_of(app) == []


def test_a_node_assigned_its_expected_bundle_is_still_judged(
    client: Any, app: Any, key: str
) -> None:
    node_id = drifted_node(client, app, "edge-1")
    set_node(app, node_id, assigned_bundle_id=EXPECTED)
    open_events(app)
    assert [event.kind for event in events_of(app)] == ["bundle"]


def test_a_node_reporting_no_active_bundle_is_drifted(client: Any, app: Any, key: str) -> None:
    node_id = drifted_node(client, app, "edge-1")
    set_node(app, node_id, active_bundle_id=None)
    open_events(app)
    assert [event.reason for event in events_of(app)] == ["no_active_bundle"]


def test_an_offline_node_opens_nothing(client: Any, app: Any, key: str) -> None:
    node_id = drifted_node(client, app, "edge-1")
    set_node(app, node_id, status="offline")
    open_events(app)
    assert events_of(app) == []


def test_a_running_config_that_differs_from_the_expected_bundle_is_config_drift(
    client: Any, app: Any, compiled: dict[str, Any]
) -> None:
    node_id, node_key = register_node(client, "edge-1")
    set_node(app, node_id, expected_bundle_id=compiled["id"], active_bundle_id=compiled["id"])
    edited = compiled["config"].replace("worker-threads 2", "worker-threads 8")
    response = client.post(
        f"/api/v1/nodes/{node_id}/config",
        json={"config_kdl": edited},
        headers={"X-Sentinel-Node-Key": node_key},
    )
    assert response.status_code == 200, response.get_json()
    open_events(app)
    (event,) = events_of(app)
    assert (event.kind, event.reason) == ("config", "config_mismatch")
    assert event.expected_config_hash == compiled["config_sha256"]
    assert event.actual_config_hash == hashlib.sha256(edited.encode()).hexdigest()


def test_a_running_config_matching_the_expected_bundle_is_not_drift(
    client: Any, app: Any, compiled: dict[str, Any]
) -> None:
    node_id, node_key = register_node(client, "edge-1")
    set_node(app, node_id, expected_bundle_id=compiled["id"], active_bundle_id=compiled["id"])
    response = client.post(
        f"/api/v1/nodes/{node_id}/config",
        json={"config_kdl": compiled["config"]},
        headers={"X-Sentinel-Node-Key": node_key},
    )
    assert response.json["config_hash"] == compiled["config_sha256"]
    open_events(app)
    assert events_of(app) == []


def test_a_revoked_expected_bundle_is_drift_naming_the_reason(
    client: Any, app: Any, compiled: dict[str, Any]
) -> None:
    set_settings(app, drift_auto_remediate=True)
    node_id, _ = register_node(client, "edge-1")
    set_node(app, node_id, expected_bundle_id=compiled["id"], active_bundle_id=compiled["id"])
    with app.app_context():
        bundle = db.session.get(Bundle, compiled["id"])
        distribution.revoke(Actor.system("test"), bundle, reason="leaked key")
        db.session.commit()
    open_events(app)
    (event,) = events_of(app)
    assert (event.kind, event.reason, event.severity) == (
        "bundle",
        "expected_bundle_revoked",
        "high",
    )
    assert event.remediated_at is None  # a revoked bundle is never handed out again


# --- resolution, idempotence, severity ------------------------------------------------------


def test_an_event_resolves_automatically_when_the_node_is_back_in_sync(
    client: Any, app: Any, key: str
) -> None:
    node_id = drifted_node(client, app, "edge-1")
    open_events(app)
    set_node(app, node_id, active_bundle_id=EXPECTED)
    run = detect(app, T0 + 2 * GRACE)
    assert run.resolved == 1
    (event,) = events_of(app)
    assert (event.status, event.resolution, event.resolved_by) == (
        "resolved",
        "auto_resolved",
        "drift",
    )
    assert event.resolved_at == T0 + 2 * GRACE
    assert audit_actions(app) == ["drift.opened", "drift.resolved"]


def test_an_event_resolves_when_a_rollout_starts_moving_the_node(
    client: Any, app: Any, key: str
) -> None:
    node_id = drifted_node(client, app, "edge-1")
    open_events(app)
    set_node(app, node_id, assigned_bundle_id="a" * 64)
    detect(app, T0 + 2 * GRACE)
    assert [(e.status, e.resolution) for e in events_of(app)] == [("resolved", "auto_resolved")]


def test_an_offline_nodes_event_stays_active(client: Any, app: Any, key: str) -> None:
    node_id = drifted_node(client, app, "edge-1")
    open_events(app)
    set_node(app, node_id, status="offline", active_bundle_id=EXPECTED)
    detect(app, T0 + 2 * GRACE)
    assert [event.status for event in events_of(app)] == ["active"]


def test_running_the_detector_twice_opens_nothing_new_and_audits_nothing_new(
    client: Any, app: Any, key: str
) -> None:
    drifted_node(client, app, "edge-1")
    drifted_node(client, app, "edge-2")
    open_events(app)
    events, actions = events_of(app), audit_actions(app)
    assert len(events) == 2
    again = detect(app, T0 + GRACE)
    later = detect(app, T0 + GRACE + timedelta(seconds=30))
    assert again.to_dict() == later.to_dict() == drift.DriftRun().to_dict()
    assert [e.id for e in events_of(app)] == [e.id for e in events]
    assert audit_actions(app) == actions


def test_workers_running_at_once_open_one_event_per_node(client: Any, app: Any, key: str) -> None:
    drifted_node(client, app, "edge-1")
    detect(app, T0)
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def worker() -> None:
        try:
            barrier.wait()
            detect(app, T0 + GRACE)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert len(events_of(app)) == 1
    assert audit_actions(app) == ["drift.opened"]


def test_severity_escalates_with_duration_while_the_event_is_active(
    client: Any, app: Any, key: str
) -> None:
    drifted_node(client, app, "edge-1")
    open_events(app)
    detect(app, T0 + timedelta(minutes=15))
    assert [event.severity for event in events_of(app)] == ["medium"]
    detect(app, T0 + timedelta(hours=1))
    assert [event.severity for event in events_of(app)] == ["high"]
    assert audit_actions(app) == ["drift.opened", "drift.escalated", "drift.escalated"]


def test_severity_rates_spread_across_the_projects_online_nodes(
    client: Any, app: Any, key: str
) -> None:
    drifted_node(client, app, "edge-1")
    drifted_node(client, app, "edge-2")
    for index in range(3, 5):
        register_node(client, f"edge-{index}")
    open_events(app)  # 2 of 4 online nodes drift: 50 %
    assert [event.severity for event in events_of(app)] == ["critical", "critical"]


@pytest.mark.parametrize(
    ("minutes", "drifting", "online", "reason", "expected"),
    [
        (1, 1, 1, "bundle_mismatch", "low"),  # one node alone never rates by spread
        (14, 1, 10, "bundle_mismatch", "low"),
        (15, 1, 10, "bundle_mismatch", "medium"),
        (60, 1, 10, "bundle_mismatch", "high"),
        (24 * 60, 1, 10, "bundle_mismatch", "critical"),
        (1, 2, 20, "bundle_mismatch", "medium"),  # 10 %
        (1, 5, 20, "config_mismatch", "high"),  # 25 %
        (1, 10, 20, "bundle_mismatch", "critical"),  # 50 %
        (1, 1, 10, "expected_bundle_revoked", "high"),
        (24 * 60, 1, 10, "expected_bundle_revoked", "critical"),
    ],
)
def test_severity_is_the_highest_of_duration_spread_and_cause(
    minutes: int, drifting: int, online: int, reason: str, expected: str
) -> None:
    severity = drift.severity_for(
        drifting_for=timedelta(minutes=minutes),
        drifting_nodes=drifting,
        online_nodes=online,
        reason=reason,
    )
    assert severity == expected


def test_an_operator_resolved_event_reopens_after_another_grace_if_still_drifted(
    client: Any, app: Any, key: str
) -> None:
    drifted_node(client, app, "edge-1")
    open_events(app)
    with app.app_context():
        (event,) = db.session.scalars(select(drift.DriftEvent))
        drift.resolve(Actor.system("test"), event, comment="looked at it", now=T0 + GRACE)
        db.session.commit()
    detect(app, T0 + 2 * GRACE)
    assert [e.status for e in events_of(app)] == ["resolved"]
    detect(app, T0 + 3 * GRACE)
    assert sorted(e.status for e in events_of(app)) == ["active", "resolved"]


# --- remediation ----------------------------------------------------------------------------


def test_auto_remediation_reassigns_the_expected_bundle(
    client: Any, app: Any, compiled: dict[str, Any]
) -> None:
    set_settings(app, drift_auto_remediate=True)
    node_id, _ = register_node(client, "edge-1")
    set_node(app, node_id, expected_bundle_id=compiled["id"], active_bundle_id=OTHER)
    open_events(app)
    (event,) = events_of(app)
    assert event.remediated_at == T0 + GRACE
    with app.app_context():
        node = db.session.get(Node, uuid.UUID(node_id))
        assert node is not None and node.assigned_bundle_id == compiled["id"]
        delivery = db.session.scalars(
            select(NodeBundleStatus).where(NodeBundleStatus.node_id == uuid.UUID(node_id))
        ).one()
        assert (delivery.bundle_id, delivery.state, delivery.previous_bundle_id) == (
            compiled["id"],
            "assigned",
            OTHER,
        )
    assert audit_actions(app) == ["drift.opened", "drift.remediated"]
    detect(app, T0 + 2 * GRACE)  # remediation happens once per event
    assert audit_actions(app) == ["drift.opened", "drift.remediated"]


def test_a_remediated_node_back_in_sync_resolves_as_remediated(
    client: Any, app: Any, compiled: dict[str, Any]
) -> None:
    set_settings(app, drift_auto_remediate=True)
    node_id, _ = register_node(client, "edge-1")
    set_node(app, node_id, expected_bundle_id=compiled["id"], active_bundle_id=OTHER)
    open_events(app)
    set_node(app, node_id, active_bundle_id=compiled["id"])
    detect(app, T0 + 2 * GRACE)
    assert [(e.status, e.resolution) for e in events_of(app)] == [("resolved", "remediated")]


def test_without_auto_remediation_nothing_is_assigned(
    client: Any, app: Any, compiled: dict[str, Any]
) -> None:
    node_id, _ = register_node(client, "edge-1")
    set_node(app, node_id, expected_bundle_id=compiled["id"], active_bundle_id=OTHER)
    open_events(app)
    (event,) = events_of(app)
    assert event.remediated_at is None
    with app.app_context():
        node = db.session.get(Node, uuid.UUID(node_id))
        assert node is not None and node.assigned_bundle_id is None
    assert "drift.remediated" not in audit_actions(app)


def test_the_drift_job_runs_on_a_real_worker(
    client: Any, app: Any, backend: Any, key: str, monkeypatch: Any
) -> None:
    from jobs import context
    from jobs.drift import detect_drift

    set_settings(app, drift_grace_s=0)
    drifted_node(client, app, "edge-1")
    monkeypatch.setenv("REDIS_URL", backend.redis_url)
    context._app = app
    connection = redis.Redis.from_url(backend.redis_url)
    queue = Queue("maintenance", connection=connection)
    job = queue.enqueue(detect_drift)
    SimpleWorker([queue], connection=connection).work(burst=True)
    assert job.get_status() == "finished", job.latest_result()
    assert job.return_value()["opened"] == 1
    assert [event.status for event in events_of(app)] == ["active"]


# --- operator API ---------------------------------------------------------------------------


def api(slug: str = "default") -> str:
    return f"/api/v1/projects/{slug}/drift"


@pytest.fixture
def three_events(client: Any, app: Any, key: str) -> list[str]:
    """Active bundle drift on edge-1..3 (ids in name order)."""
    for index in range(1, 4):
        drifted_node(client, app, f"edge-{index}")
    open_events(app)
    return [str(event.id) for event in events_of(app)]


def test_list_answers_newest_first_and_pages_with_a_cursor(
    client: Any, key: str, three_events: list[str]
) -> None:
    first = client.get(f"{api()}?limit=2", headers=bearer(key)).get_json()
    assert first["total"] == 3 and len(first["items"]) == 2 and first["next_cursor"]
    rest = client.get(f"{api()}?limit=2&cursor={first['next_cursor']}", headers=bearer(key))
    body = rest.get_json()
    assert body["next_cursor"] is None
    seen = [item["id"] for item in first["items"] + body["items"]]
    assert sorted(seen) == sorted(three_events)


def test_list_filters_by_status_severity_kind_and_node(
    client: Any, app: Any, key: str, three_events: list[str]
) -> None:
    with app.app_context():
        db.session.execute(
            update(drift.DriftEvent)
            .where(drift.DriftEvent.id == uuid.UUID(three_events[0]))
            .values(severity="low")
        )
        db.session.commit()
    resolved = client.post(
        f"{api()}/{three_events[1]}/resolve", json={"comment": "known"}, headers=bearer(key)
    )
    assert resolved.status_code == 200

    def ids(query: str) -> list[str]:
        response = client.get(f"{api()}?{query}", headers=bearer(key))
        assert response.status_code == 200, response.get_json()
        return sorted(item["id"] for item in response.get_json()["items"])

    assert ids("status=active") == sorted([three_events[0], three_events[2]])
    assert ids("status=resolved") == [three_events[1]]
    assert ids("severity=low") == [three_events[0]]
    assert ids("kind=config") == []
    node_id = events_of(app)[2].node_id
    assert ids(f"node={node_id}") == [three_events[2]]


def test_stats_count_by_status_severity_and_kind(
    client: Any, key: str, three_events: list[str]
) -> None:
    client.post(f"{api()}/{three_events[0]}/resolve", json={"comment": "ok"}, headers=bearer(key))
    body = client.get(f"{api()}/stats", headers=bearer(key)).get_json()
    assert (body["active"], body["resolved"], body["drifted_nodes"]) == (2, 1, 2)
    assert body["by_kind"] == {"bundle": 2, "config": 0}
    assert sum(body["by_severity"].values()) == 2
    assert body["oldest_active_opened_at"] is not None


def test_show_returns_one_event(client: Any, key: str, three_events: list[str]) -> None:
    response = client.get(f"{api()}/{three_events[0]}", headers=bearer(key))
    assert response.status_code == 200
    body = response.get_json()
    assert (body["id"], body["status"], body["node_name"]) == (three_events[0], "active", "edge-1")


def test_resolve_records_the_operator_and_the_comment(
    client: Any, app: Any, key: str, three_events: list[str]
) -> None:
    response = client.post(
        f"{api()}/{three_events[0]}/resolve",
        json={"comment": "planned maintenance"},
        headers=bearer(key),
    )
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert (body["status"], body["resolution"], body["comment"]) == (
        "resolved",
        "operator",
        "planned maintenance",
    )
    assert body["resolved_by"].startswith("ops@example.com")
    with app.app_context():
        row = db.session.scalars(
            select(AuditLog).where(
                AuditLog.action == "drift.resolved", AuditLog.resource_id == three_events[0]
            )
        ).one()
        assert row.actor_type == "api_key" and row.meta["comment"] == "planned maintenance"


def test_resolving_a_resolved_event_is_409_naming_the_state(
    client: Any, key: str, three_events: list[str]
) -> None:
    path = f"{api()}/{three_events[0]}/resolve"
    assert client.post(path, json={"comment": "once"}, headers=bearer(key)).status_code == 200
    response = client.post(path, json={"comment": "twice"}, headers=bearer(key))
    assert response.status_code == 409
    body = response.get_json()
    assert body["code"] == "drift_event_resolved" and body["state"] == "resolved"
    assert "resolved" in body["error"]


@pytest.mark.parametrize("body", [{}, {"comment": ""}, {"comment": "   "}])
def test_resolving_without_a_comment_is_422_naming_it(
    client: Any, key: str, three_events: list[str], body: dict[str, Any]
) -> None:
    for path in (f"{api()}/{three_events[0]}/resolve", f"{api()}/resolve-all"):
        response = client.post(path, json=body, headers=bearer(key))
        assert response.status_code == 422, path
        assert "comment" in response.get_json()["fields"]


def test_resolve_all_resolves_every_active_event(
    client: Any, app: Any, key: str, three_events: list[str]
) -> None:
    client.post(f"{api()}/{three_events[0]}/resolve", json={"comment": "one"}, headers=bearer(key))
    response = client.post(f"{api()}/resolve-all", json={"comment": "all"}, headers=bearer(key))
    assert response.status_code == 200
    assert response.get_json()["resolved"] == 2
    assert sorted(response.get_json()["ids"]) == sorted(three_events[1:])
    assert all(event.status == "resolved" for event in events_of(app))
    assert audit_actions(app).count("drift.resolved") == 3


def test_export_csv_has_a_header_row_and_parses(
    client: Any, key: str, three_events: list[str]
) -> None:
    client.post(
        f"{api()}/{three_events[0]}/resolve",
        json={"comment": '=HYPERLINK("x")'},
        headers=bearer(key),
    )
    response = client.get(f"{api()}/export?format=csv", headers=bearer(key))
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert list(rows[0]) == drift.CSV_COLUMNS
    assert sorted(row["id"] for row in rows) == sorted(three_events)
    by_id = {row["id"]: row for row in rows}
    assert by_id[three_events[0]]["comment"] == '\'=HYPERLINK("x")'  # never a formula
    assert by_id[three_events[1]]["status"] == "active"


def test_export_json_parses_and_honours_filters(
    client: Any, key: str, three_events: list[str]
) -> None:
    client.post(f"{api()}/{three_events[0]}/resolve", json={"comment": "x"}, headers=bearer(key))
    response = client.get(f"{api()}/export?format=json&status=active", headers=bearer(key))
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    items = json.loads(response.get_data(as_text=True))
    assert sorted(item["id"] for item in items) == sorted(three_events[1:])
    empty = client.get(f"{api()}/export?format=json&kind=config", headers=bearer(key))
    assert json.loads(empty.get_data(as_text=True)) == []


@pytest.mark.parametrize(
    ("path", "parameter"),
    [
        ("?status=open", "query.status"),
        ("?severity=extreme", "query.severity"),
        ("?kind=files", "query.kind"),
        ("?node=edge-1", "query.node"),
        ("?limit=0", "query.limit"),
        ("?cursor=bogus", "cursor"),
        ("?color=red", "query.color"),
        ("/export?format=xml", "query.format"),
        ("/export?status=gone", "query.status"),
    ],
)
def test_bad_query_values_are_422_naming_the_parameter(
    client: Any, key: str, path: str, parameter: str
) -> None:
    response = client.get(f"{api()}{path}", headers=bearer(key))
    assert response.status_code == 422, response.get_json()
    assert parameter in response.get_json()["fields"]


def test_an_event_of_another_project_is_404(
    client: Any, app: Any, key: str, three_events: list[str]
) -> None:
    make_project(app, "other", open_registration=True)
    drifted_node(client, app, "far-1", slug="other")
    open_events(app, T0 + 2 * GRACE)
    foreign = next(str(e.id) for e in events_of(app) if e.node_name == "far-1")
    for response in (
        client.get(f"{api()}/{foreign}", headers=bearer(key)),
        client.post(f"{api()}/{foreign}/resolve", json={"comment": "x"}, headers=bearer(key)),
    ):
        assert response.status_code == 404
        assert response.get_json()["code"] == "drift_event_not_found"
    listed = client.get(api(), headers=bearer(key)).get_json()
    assert foreign not in [item["id"] for item in listed["items"]]


def test_an_unknown_or_malformed_event_id_is_404_or_400(client: Any, key: str) -> None:
    assert client.get(f"{api()}/{uuid.uuid4()}", headers=bearer(key)).status_code == 404
    assert client.get(f"{api()}/not-an-id", headers=bearer(key)).status_code == 400


def test_a_key_bound_to_another_project_sees_no_drift(client: Any, app: Any, key: str) -> None:
    make_project(app, "other", open_registration=True)
    bound = make_key(app, "ops@example.com", ["nodes:read"], project="other")
    assert client.get(api(), headers=bearer(bound)).status_code == 404


def test_reading_needs_nodes_read_and_resolving_needs_nodes_write(
    client: Any, app: Any, key: str, three_events: list[str]
) -> None:
    make_user(app, "reader@example.com", "reader")
    reader = make_key(app, "reader@example.com", ["nodes:read"])
    assert client.get(api(), headers=bearer(reader)).status_code == 200
    for path in (f"{api()}/{three_events[0]}/resolve", f"{api()}/resolve-all"):
        response = client.post(path, json={"comment": "x"}, headers=bearer(reader))
        assert response.status_code == 403
        assert response.get_json()["required"] == "nodes:write"
    with app.app_context():
        active = db.session.scalar(
            select(func.count())
            .select_from(drift.DriftEvent)
            .where(drift.DriftEvent.status == "active")
        )
    assert active == 3
