"""Rollouts through the API with real ticks on a real RQ worker: plan, create, advance step by
step on node reports and heartbeats, pause on failures, operator actions, conflicts."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from bundle_helpers import (
    CONFIG,
    operator_key,
    register_node,
    route_config,
    run_jobs,
    setup_project,
    submit,
)
from conftest import bearer, drain_events, make_key, make_project, make_user, wait_for
from sqlalchemy import func, select, update

from sentinel_cp import heartbeat_buffer
from sentinel_cp.audit import AuditLog
from sentinel_cp.bundles.models import NodeBundleStatus
from sentinel_cp.db import db, utcnow
from sentinel_cp.nodes import Node
from sentinel_cp.rollouts.models import Rollout

BASE = "/api/v1/projects/default"


@pytest.fixture
def key(app: Any) -> str:
    setup_project(app)
    make_user(app, "ops@example.com", "admin")
    return make_key(
        app,
        "ops@example.com",
        ["bundles:read", "bundles:write", "nodes:read", "rollouts:read", "rollouts:write"],
    )


@pytest.fixture
def bundle_id(client: Any, app: Any, backend: Any, key: str) -> str:
    bundle = submit(client, key, CONFIG, "v1").get_json()["id"]
    run_jobs(app, backend.redis_url)
    return str(bundle)


@pytest.fixture
def fleet(client: Any, app: Any) -> list[tuple[str, str]]:
    nodes = [register_node(client, f"edge-{i}") for i in range(4)]
    for node_id, node_key in nodes:
        beat(client, app, node_id, node_key)
    return nodes


def beat(client: Any, app: Any, node_id: str, node_key: str, **body: Any) -> Any:
    """A heartbeat now (the 1/s limit is rewound: these tests act faster than a node)."""
    with app.app_context():
        db.session.execute(
            update(Node).where(Node.id == uuid.UUID(node_id)).values(last_heartbeat_at=None)
        )
        db.session.commit()
    payload = {"health": {"status": "healthy"}, "metrics": {"error_rate": 0.1}, **body}
    response = client.post(
        f"/api/v1/nodes/{node_id}/heartbeat",
        json=payload,
        headers={"X-Sentinel-Node-Key": node_key},
    )
    assert response.status_code == 200, response.get_json()
    return response


def apply_bundle(client: Any, app: Any, node: tuple[str, str], bundle_id: str) -> None:
    """What a healthy agent does: report each state, then heartbeat with the new bundle."""
    node_id, node_key = node
    for state in ("downloaded", "staged", "activated", "verified"):
        response = client.post(
            f"/api/v1/nodes/{node_id}/bundles/{bundle_id}/{state}",
            json={},
            headers={"X-Sentinel-Node-Key": node_key},
        )
        assert response.status_code == 200, response.get_json()
    beat(client, app, node_id, node_key, active_bundle_id=bundle_id)


def create(client: Any, key: str, **body: Any) -> Any:
    return client.post(f"{BASE}/rollouts", json=body, headers=bearer(key))


def show(client: Any, key: str, rollout_id: str) -> dict[str, Any]:
    response = client.get(f"{BASE}/rollouts/{rollout_id}", headers=bearer(key))
    assert response.status_code == 200
    return dict(response.get_json())


def assigned(app: Any, nodes: list[tuple[str, str]], bundle_id: str) -> list[str]:
    with app.app_context():
        ids = [uuid.UUID(n) for n, _ in nodes]
        rows = db.session.scalars(
            select(Node.name).where(Node.id.in_(ids), Node.assigned_bundle_id == bundle_id)
        ).all()
    return sorted(rows)


def test_plan_is_a_dry_run_ordered_by_name(
    client: Any, app: Any, key: str, bundle_id: str, fleet: list[tuple[str, str]]
) -> None:
    response = client.post(
        f"{BASE}/rollouts/plan",
        json={"bundle_id": bundle_id, "strategy": "rolling", "batch_size": 3},
        headers=bearer(key),
    )
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert [[n["name"] for n in s["nodes"]] for s in body["steps"]] == [
        ["edge-0", "edge-1", "edge-2"],
        ["edge-3"],
    ]
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Rollout)) == 0


def test_a_rolling_rollout_completes_step_by_step(
    client: Any, app: Any, backend: Any, key: str, bundle_id: str, fleet: list[tuple[str, str]]
) -> None:
    response = create(client, key, bundle_id=bundle_id, strategy="rolling", batch_size=2)
    assert response.status_code == 201, response.get_json()
    rollout_id = response.get_json()["id"]
    assert response.get_json()["state"] == "running"
    run_jobs(app, backend.redis_url)
    assert assigned(app, fleet, bundle_id) == ["edge-0", "edge-1"]
    for node in fleet[:2]:
        apply_bundle(client, app, node, bundle_id)
    run_jobs(app, backend.redis_url)
    body = show(client, key, rollout_id)
    assert [s["state"] for s in body["steps"]] == ["completed", "running"]
    assert assigned(app, fleet, bundle_id) == ["edge-0", "edge-1", "edge-2", "edge-3"]
    for node in fleet[2:]:
        apply_bundle(client, app, node, bundle_id)
    run_jobs(app, backend.redis_url)
    body = show(client, key, rollout_id)
    assert body["state"] == "completed", body
    assert body["progress"]["verified"] == 4
    with app.app_context():
        expected = db.session.scalars(select(Node.expected_bundle_id)).all()
        assert set(expected) == {bundle_id}
        actions = db.session.scalars(
            select(AuditLog.action).where(AuditLog.resource_id == rollout_id).order_by(AuditLog.seq)
        ).all()
    assert actions[:2] == ["rollout.created", "rollout.started"]
    assert actions.count("rollout.step_started") == 2
    assert actions.count("rollout.step_completed") == 2
    assert actions[-1] == "rollout.completed"


def test_only_reports_that_can_advance_a_rollout_ask_for_a_tick(
    client: Any, app: Any, backend: Any, key: str, bundle_id: str, fleet: list[tuple[str, str]]
) -> None:
    """`downloaded`, `staged` and `activated` leave a node in progress; `failed` may pause the
    step and `verified` may complete it, so they enqueue a tick at once — `verified` only when
    no delivery of its step is still on its way (the last one of the step asks)."""
    import redis
    from rq import Queue

    response = create(client, key, bundle_id=bundle_id, strategy="all_at_once")
    assert response.status_code == 201, response.get_json()
    run_jobs(app, backend.redis_url)
    queue = Queue("default", connection=redis.Redis.from_url(backend.redis_url))
    (node_id, node_key), (other_id, other_key) = fleet[0], fleet[1]
    queued: dict[str, bool] = {}
    for node, node_key_, state in (
        (node_id, node_key, "downloaded"),
        (node_id, node_key, "staged"),
        (node_id, node_key, "activated"),
        (node_id, node_key, "verified"),
        (other_id, other_key, "failed"),
        *[(n, k, "verified") for n, k in fleet[2:]],
    ):
        queue.empty()
        reply = client.post(
            f"/api/v1/nodes/{node}/bundles/{bundle_id}/{state}",
            json={"reason": "test"} if state == "failed" else {},
            headers={"X-Sentinel-Node-Key": node_key_},
        )
        assert reply.status_code == 200, reply.get_json()
        queued[f"{fleet.index((node, node_key_))}:{state}"] = any(
            j.startswith("tick-") for j in queue.get_job_ids()
        )
    assert queued == {
        "0:downloaded": False,
        "0:staged": False,
        "0:activated": False,
        "0:verified": False,  # nodes 2 and 3 are still on their way
        "1:failed": True,
        "2:verified": False,  # node 3 still is
        "3:verified": True,  # the step's last delivery settled: it may complete
    }


def test_the_first_heartbeat_after_the_last_verified_report_ticks_the_rollout(
    client: Any, app: Any, backend: Any, key: str, bundle_id: str, fleet: list[tuple[str, str]]
) -> None:
    """The gates count only heartbeats sent after activation, so a step whose nodes all
    verified waits for each node's next heartbeat. A heartbeat answered by the buffer is
    written by its flush; the flush then ticks the rollout when the heartbeat is a node's first
    since its `verified` report and the step has nothing left on its way — not for a node whose
    step is still in progress (its last `verified` report ticks), not twice for one report."""
    import redis
    from rq import Queue

    app.config["POLL_CACHE"] = True
    with app.test_request_context():
        buffer = heartbeat_buffer.for_app(app)
    assert buffer is not None
    buffer.stopping.set()  # the test flushes
    try:
        wait_for(buffer.cache.subscribed.is_set, timeout=10, what="the poll cache to subscribe")
        response = create(client, key, bundle_id=bundle_id, strategy="all_at_once")
        assert response.status_code == 201, response.get_json()
        rollout_id = response.get_json()["id"]
        run_jobs(app, backend.redis_url)
        queue = Queue("default", connection=redis.Redis.from_url(backend.redis_url))

        def report(node: tuple[str, str], *states: str) -> None:
            for state in states:
                reply = client.post(
                    f"/api/v1/nodes/{node[0]}/bundles/{bundle_id}/{state}",
                    json={},
                    headers={"X-Sentinel-Node-Key": node[1]},
                )
                assert reply.status_code == 200, reply.get_json()

        with app.app_context():
            project_id = str(db.session.get(Rollout, uuid.UUID(rollout_id)).project_id)

        def ticks_after_flush(node: tuple[str, str]) -> bool:
            drain_events(buffer.cache, project_id)  # the reports' events are in
            queue.empty()
            beat(client, app, *node, active_bundle_id=bundle_id)
            buffer.flush()
            return f"tick-{rollout_id}" in queue.get_job_ids()

        for node in fleet[:3]:
            report(node, "downloaded", "staged", "activated", "verified")
        report(fleet[3], "downloaded", "staged", "activated")
        assert not ticks_after_flush(fleet[0])  # fleet[3] is still on its way
        report(fleet[3], "verified")
        assert ticks_after_flush(fleet[1])
        assert not ticks_after_flush(fleet[1])  # its second heartbeat since the report
        assert not ticks_after_flush(fleet[0])  # the note was taken by its first one
        assert ticks_after_flush(fleet[2])
        assert ticks_after_flush(fleet[3])
        run_jobs(app, backend.redis_url)
        assert show(client, key, rollout_id)["state"] == "completed"
    finally:
        buffer.stop()
        buffer.cache.stop()


def test_every_audited_rollout_change_publishes_its_rollout_event_in_the_same_batch(
    client: Any, app: Any, backend: Any, key: str, bundle_id: str, fleet: list[tuple[str, str]]
) -> None:
    """The poll cache and the heartbeat buffer pass over the audit echo of a `rollout.*`
    action (`events.is_rollout_audit_echo`) because the change's own `rollout` event goes out
    after the same commit, in the same pipelined publish. Engine transitions, operator actions
    and a rollback must each show that: an echo never arrives without a rollout event."""
    from unittest import mock

    from sentinel_cp import events

    batches: list[list[dict[str, Any]]] = []
    with mock.patch("sentinel_cp.events.send", lambda payloads: batches.append(list(payloads))):
        created = create(client, key, bundle_id=bundle_id, strategy="rolling", batch_size=2)
        assert created.status_code == 201, created.get_json()
        rollout_id = created.get_json()["id"]
        run_jobs(app, backend.redis_url)
        for node in fleet[:2]:
            apply_bundle(client, app, node, bundle_id)
        run_jobs(app, backend.redis_url)  # step 1 bakes and completes, step 2 starts
        for action in ("pause", "resume", "rollback"):
            reply = client.post(
                f"{BASE}/rollouts/{rollout_id}/{action}", json={}, headers=bearer(key)
            )
            assert reply.status_code == 200, (action, reply.get_json())
        run_jobs(app, backend.redis_url)
        other = create(client, key, bundle_id=bundle_id, strategy="all_at_once")
        assert other.status_code == 201, other.get_json()
        cancelled = client.post(
            f"{BASE}/rollouts/{other.get_json()['id']}/cancel", json={}, headers=bearer(key)
        )
        assert cancelled.status_code == 200, cancelled.get_json()
    seen: set[str] = set()
    for batch in batches:
        echoes = [e for e in batch if events.is_rollout_audit_echo(e)]
        rollout_events = [e for e in batch if e["kind"] == "rollout"]
        assert rollout_events or not echoes, batch
        seen |= {e["state"] for e in echoes}
    assert seen >= {
        "rollout.created",
        "rollout.started",
        "rollout.step_started",
        "rollout.step_baking",
        "rollout.step_completed",
        "rollout.paused",
        "rollout.resumed",
        "rollout.rolling_back",
        "rollout.cancelled",
    }, seen


def test_nodes_in_a_running_rollout_are_told_to_come_back_sooner(
    client: Any, app: Any, backend: Any, key: str, bundle_id: str, fleet: list[tuple[str, str]]
) -> None:
    from sentinel_cp.nodes import ROLLOUT_POLL_AFTER_S

    def poll_after(node: tuple[str, str]) -> tuple[int, int]:
        heartbeat = beat(client, app, *node).get_json()["poll_after_s"]
        poll = client.get(
            f"/api/v1/nodes/{node[0]}/bundles/latest", headers={"X-Sentinel-Node-Key": node[1]}
        )
        return heartbeat, poll.get_json()["poll_after_s"]

    rollout_id = create(client, key, bundle_id=bundle_id, strategy="rolling", batch_size=2)
    rollout_id = rollout_id.get_json()["id"]
    run_jobs(app, backend.redis_url)
    fast = (ROLLOUT_POLL_AFTER_S, ROLLOUT_POLL_AFTER_S)
    assert [poll_after(node) for node in fleet] == [fast, fast, (30, 30), (30, 30)]
    # A node running its assigned bundle has converged: back on the project's interval.
    for state in ("downloaded", "staged", "activated"):
        reply = client.post(
            f"/api/v1/nodes/{fleet[0][0]}/bundles/{bundle_id}/{state}",
            json={},
            headers={"X-Sentinel-Node-Key": fleet[0][1]},
        )
        assert reply.status_code == 200, reply.get_json()
    assert [poll_after(node) for node in fleet[:2]] == [(30, 30), fast]
    paused = client.post(f"{BASE}/rollouts/{rollout_id}/pause", json={}, headers=bearer(key))
    assert paused.status_code == 200
    assert [poll_after(node) for node in fleet[:2]] == [(30, 30), (30, 30)]


def test_replaying_a_tick_changes_nothing(
    client: Any, app: Any, backend: Any, key: str, bundle_id: str, fleet: list[tuple[str, str]]
) -> None:
    from sentinel_cp.rollouts import engine

    rollout_id = create(client, key, bundle_id=bundle_id, batch_size=2).get_json()["id"]
    run_jobs(app, backend.redis_url)
    with app.app_context():
        count = db.session.scalar(select(func.count()).select_from(AuditLog))
        assert engine.tick(uuid.UUID(rollout_id)) == []
        assert engine.tick(uuid.UUID(rollout_id)) == []
        assert db.session.scalar(select(func.count()).select_from(AuditLog)) == count


def test_a_failed_node_pauses_the_rollout_with_the_reason(
    client: Any, app: Any, backend: Any, key: str, bundle_id: str, fleet: list[tuple[str, str]]
) -> None:
    rollout_id = create(client, key, bundle_id=bundle_id, batch_size=2).get_json()["id"]
    run_jobs(app, backend.redis_url)
    node_id, node_key = fleet[0]
    client.post(
        f"/api/v1/nodes/{node_id}/bundles/{bundle_id}/failed",
        json={"reason": "health check failed"},
        headers={"X-Sentinel-Node-Key": node_key},
    )
    run_jobs(app, backend.redis_url)
    body = show(client, key, rollout_id)
    assert body["state"] == "paused"
    assert body["reason"] == "max_failures_exceeded"
    assert body["steps"][0]["state"] == "failed"
    assert assigned(app, fleet, bundle_id) == ["edge-0", "edge-1"]  # step 2 never started


def test_overlapping_rollouts_conflict_unless_busy_nodes_are_skipped(
    client: Any, app: Any, backend: Any, key: str, bundle_id: str, fleet: list[tuple[str, str]]
) -> None:
    first = create(client, key, bundle_id=bundle_id, batch_size=2).get_json()["id"]
    other = submit(client, key, route_config(2), "v2").get_json()["id"]
    run_jobs(app, backend.redis_url)
    refused = create(client, key, bundle_id=other)
    assert refused.status_code == 409
    assert first in refused.get_json()["error"]
    skipped = create(client, key, bundle_id=other, skip_busy_nodes=True)
    assert skipped.status_code == 422  # every target is busy: nothing left


def test_pause_resume_and_cancel_move_the_state_and_refuse_illegal_actions(
    client: Any, app: Any, backend: Any, key: str, bundle_id: str, fleet: list[tuple[str, str]]
) -> None:
    rollout_id = create(client, key, bundle_id=bundle_id, batch_size=2).get_json()["id"]
    url = f"{BASE}/rollouts/{rollout_id}"
    paused = client.post(f"{url}/pause", json={"reason": "lunch"}, headers=bearer(key))
    assert paused.status_code == 200 and paused.get_json()["state"] == "paused"
    again = client.post(f"{url}/pause", json={}, headers=bearer(key))
    assert again.status_code == 409 and "paused" in again.get_json()["error"]
    run_jobs(app, backend.redis_url)
    assert assigned(app, fleet, bundle_id) == []  # a paused rollout starts no step
    resumed = client.post(f"{url}/resume", json={}, headers=bearer(key))
    assert resumed.get_json()["state"] == "running"
    run_jobs(app, backend.redis_url)
    assert assigned(app, fleet, bundle_id) == ["edge-0", "edge-1"]
    cancelled = client.post(f"{url}/cancel", json={"reason": "wrong bundle"}, headers=bearer(key))
    assert cancelled.get_json()["state"] == "cancelled"
    assert assigned(app, fleet, bundle_id) == []  # undelivered assignments taken back
    assert client.post(f"{url}/resume", json={}, headers=bearer(key)).status_code == 409


def test_a_revoked_bundle_cannot_be_rolled_out_and_fails_a_running_rollout(
    client: Any, app: Any, backend: Any, key: str, bundle_id: str, fleet: list[tuple[str, str]]
) -> None:
    rollout_id = create(client, key, bundle_id=bundle_id, batch_size=2).get_json()["id"]
    run_jobs(app, backend.redis_url)
    client.post(f"{BASE}/bundles/{bundle_id}/revoke", json={}, headers=bearer(key))
    with app.app_context():
        from sentinel_cp.rollouts import engine

        engine.tick(uuid.UUID(rollout_id))
    body = show(client, key, rollout_id)
    assert body["state"] == "failed" and body["reason"] == "bundle_revoked"
    refused = create(client, key, bundle_id=bundle_id)
    assert refused.status_code == 409
    assert refused.get_json()["code"] == "bundle_revoked"


def test_bad_rollout_requests_name_the_field(
    client: Any, key: str, bundle_id: str, fleet: list[tuple[str, str]]
) -> None:
    cases = [
        ({"bundle_id": bundle_id, "batch_size": 0}, "batch_size"),
        ({"bundle_id": bundle_id, "on_failure": "retry"}, "on_failure"),
        ({"bundle_id": bundle_id, "target_selector": {"node_ids": [str(uuid.uuid4())]}}, "node"),
        ({"bundle_id": bundle_id, "strategy": "yolo"}, "strategy"),
    ]
    for body, field in cases:
        response = create(client, key, **body)
        assert response.status_code == 422, (body, response.get_json())
        assert field in str(response.get_json()["fields"]), response.get_json()
    unknown = create(client, key, bundle_id="f" * 64)
    assert unknown.status_code == 404


def test_a_reader_sees_rollouts_but_cannot_act(
    client: Any, app: Any, key: str, bundle_id: str, fleet: list[tuple[str, str]]
) -> None:
    rollout_id = create(client, key, bundle_id=bundle_id).get_json()["id"]
    make_user(app, "reader@example.com", "reader")
    reader = make_key(app, "reader@example.com", ["rollouts:read"])
    assert client.get(f"{BASE}/rollouts", headers=bearer(reader)).get_json()["total"] == 1
    refused = client.post(f"{BASE}/rollouts/{rollout_id}/pause", json={}, headers=bearer(reader))
    assert refused.status_code == 403


def test_delivery_rows_record_the_previous_bundle(
    client: Any, app: Any, backend: Any, key: str, bundle_id: str, fleet: list[tuple[str, str]]
) -> None:
    create(client, key, bundle_id=bundle_id, strategy="all_at_once")
    run_jobs(app, backend.redis_url)
    with app.app_context():
        rows = db.session.scalars(select(NodeBundleStatus)).all()
        assert len(rows) == 4
        assert {r.state for r in rows} == {"assigned"}
        assert {r.previous_bundle_id for r in rows} == {None}
        assert {r.step_index for r in rows} == {0}
    _ = utcnow, operator_key


def finish(client: Any, app: Any, backend: Any, key: str, nodes: Any, bundle_id: str) -> str:
    """Roll `bundle_id` out to `nodes` all at once and let every node apply it."""
    rollout_id = create(client, key, bundle_id=bundle_id, strategy="all_at_once").get_json()["id"]
    run_jobs(app, backend.redis_url)
    for node in nodes:
        apply_bundle(client, app, node, bundle_id)
    run_jobs(app, backend.redis_url)
    assert show(client, key, rollout_id)["state"] == "completed"
    return str(rollout_id)


def actives(app: Any) -> set[str | None]:
    with app.app_context():
        return set(db.session.scalars(select(Node.active_bundle_id)).all())


def test_rollback_returns_every_node_to_its_previous_bundle(
    client: Any, app: Any, backend: Any, key: str, bundle_id: str, fleet: list[tuple[str, str]]
) -> None:
    finish(client, app, backend, key, fleet, bundle_id)
    newer = submit(client, key, route_config(3), "v2").get_json()["id"]
    run_jobs(app, backend.redis_url)
    bad = finish(client, app, backend, key, fleet, newer)
    assert actives(app) == {newer}
    response = client.post(
        f"{BASE}/rollouts/{bad}/rollback", json={"reason": "5xx spike"}, headers=bearer(key)
    )
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["state"] == "rolling_back"
    back_id = response.get_json()["details"]["rollback_rollout_id"]
    run_jobs(app, backend.redis_url)
    assert assigned(app, fleet, bundle_id) == ["edge-0", "edge-1", "edge-2", "edge-3"]
    for node in fleet:
        apply_bundle(client, app, node, bundle_id)
    run_jobs(app, backend.redis_url)
    back = show(client, key, back_id)
    assert back["state"] == "completed" and back["rollback_of"] == bad
    assert show(client, key, bad)["state"] == "rolled_back"
    assert actives(app) == {bundle_id}
    with app.app_context():
        assert set(db.session.scalars(select(Node.expected_bundle_id)).all()) == {bundle_id}
    again = client.post(f"{BASE}/rollouts/{bad}/rollback", json={}, headers=bearer(key))
    assert again.status_code == 409


def test_assignments_taken_back_publish_an_event_for_each_node(
    client: Any, app: Any, backend: Any, key: str, bundle_id: str, fleet: list[tuple[str, str]]
) -> None:
    """A rollback with nothing to return a node to (it ran no bundle before) and a cancelled
    rollout take assignments back; each such node gets a `node` event, so every process forgets
    what it answered it (a rollout's own events reach only the nodes still waiting for it)."""
    from unittest import mock

    ids = {node_id for node_id, _ in fleet}
    first = finish(client, app, backend, key, fleet, bundle_id)  # the fleet ran nothing before
    newer = submit(client, key, route_config(3), "v2").get_json()["id"]
    run_jobs(app, backend.redis_url)
    batches: list[list[dict[str, Any]]] = []

    def taken_back() -> set[str]:
        found = {e["id"] for b in batches for e in b if e["state"] == "unassigned"}
        batches.clear()
        return found & ids

    with mock.patch("sentinel_cp.events.send", lambda payloads: batches.append(list(payloads))):
        rollback = client.post(f"{BASE}/rollouts/{first}/rollback", json={}, headers=bearer(key))
        assert rollback.status_code == 200, rollback.get_json()
        assert taken_back() == ids
        other = create(client, key, bundle_id=newer, strategy="all_at_once")
        assert other.status_code == 201, other.get_json()
        run_jobs(app, backend.redis_url)  # every node assigned v2
        assert taken_back() == set()
        cancelled = client.post(
            f"{BASE}/rollouts/{other.get_json()['id']}/cancel", json={}, headers=bearer(key)
        )
        assert cancelled.status_code == 200, cancelled.get_json()
        assert taken_back() == ids  # none had reported: every assignment went back
    assert assigned(app, fleet, newer) == []


def test_on_failure_rollback_rolls_back_the_touched_nodes_automatically(
    client: Any, app: Any, backend: Any, key: str, bundle_id: str, fleet: list[tuple[str, str]]
) -> None:
    finish(client, app, backend, key, fleet, bundle_id)
    newer = submit(client, key, route_config(3), "v2").get_json()["id"]
    run_jobs(app, backend.redis_url)
    rollout_id = create(
        client, key, bundle_id=newer, batch_size=2, on_failure="rollback"
    ).get_json()["id"]
    run_jobs(app, backend.redis_url)
    apply_bundle(client, app, fleet[0], newer)
    node_id, node_key = fleet[1]
    client.post(
        f"/api/v1/nodes/{node_id}/bundles/{newer}/failed",
        json={"reason": "proxy test failed"},
        headers={"X-Sentinel-Node-Key": node_key},
    )
    run_jobs(app, backend.redis_url)
    body = show(client, key, rollout_id)
    assert body["state"] == "rolling_back" and body["reason"] == "max_failures_exceeded"
    # only the two touched nodes go back; the others never left the old bundle
    assert assigned(app, fleet, bundle_id) == ["edge-0", "edge-1", "edge-2", "edge-3"]
    with app.app_context():
        rows = db.session.scalars(
            select(NodeBundleStatus.node_id).where(
                NodeBundleStatus.bundle_id == bundle_id, NodeBundleStatus.state == "assigned"
            )
        ).all()
    assert sorted(str(r) for r in rows) == sorted([fleet[0][0], fleet[1][0]])


def test_approvals_gate_the_start_and_refuse_self_approval(
    client: Any, app: Any, backend: Any, key: str, bundle_id: str, fleet: list[tuple[str, str]]
) -> None:
    client.patch(BASE, json={"settings": {"approvals_required": 1}}, headers=bearer(admin_key(app)))
    body = create(client, key, bundle_id=bundle_id).get_json()
    assert (body["state"], body["approval_state"]) == ("pending", "pending_approval")
    url = f"{BASE}/rollouts/{body['id']}"
    own = client.post(f"{url}/approve", json={}, headers=bearer(key))
    assert own.status_code == 409 and own.get_json()["code"] == "self_approval"
    make_user(app, "second@example.com", "operator")
    second = make_key(app, "second@example.com", ["rollouts:read", "rollouts:write"])
    assert client.post(f"{url}/reject", json={}, headers=bearer(second)).status_code == 422
    approved = client.post(f"{url}/approve", json={"comment": "ok"}, headers=bearer(second))
    assert approved.status_code == 200, approved.get_json()
    assert (approved.get_json()["state"], approved.get_json()["approval_state"]) == (
        "running",
        "approved",
    )


def admin_key(app: Any) -> str:
    make_user(app, "root@example.com", "admin")
    return make_key(app, "root@example.com", ["projects:admin"])


def test_blue_green_waits_for_promotion_after_the_standby_set(
    client: Any, app: Any, backend: Any, key: str, bundle_id: str, fleet: list[tuple[str, str]]
) -> None:
    rollout_id = create(client, key, bundle_id=bundle_id, strategy="blue_green").get_json()["id"]
    run_jobs(app, backend.redis_url)
    assert assigned(app, fleet, bundle_id) == ["edge-0", "edge-1"]
    for node in fleet[:2]:
        apply_bundle(client, app, node, bundle_id)
    run_jobs(app, backend.redis_url)
    body = show(client, key, rollout_id)
    assert (body["state"], body["reason"]) == ("paused", "awaiting_promotion")
    url = f"{BASE}/rollouts/{rollout_id}"
    assert client.post(f"{url}/resume", json={}, headers=bearer(key)).status_code == 409
    promoted = client.post(f"{url}/promote", json={}, headers=bearer(key))
    assert promoted.status_code == 200 and promoted.get_json()["state"] == "running"
    run_jobs(app, backend.redis_url)
    assert assigned(app, fleet, bundle_id) == ["edge-0", "edge-1", "edge-2", "edge-3"]


def test_a_freeze_window_pauses_a_rollout_unless_an_admin_overrides_it(
    client: Any, app: Any, backend: Any, key: str, bundle_id: str, fleet: list[tuple[str, str]]
) -> None:
    admin = admin_key(app)
    now = utcnow()
    window = client.post(
        f"{BASE}/freeze-windows",
        json={
            "kind": "one_off",
            "name": "black friday",
            "starts_at": (now.replace(microsecond=0)).isoformat(),
            "ends_at": (now.replace(year=now.year + 1)).isoformat(),
        },
        headers=bearer(admin),
    )
    assert window.status_code == 201, window.get_json()
    assert window.get_json()["active"] is True
    frozen = create(client, key, bundle_id=bundle_id).get_json()["id"]
    run_jobs(app, backend.redis_url)
    body = show(client, key, frozen)
    assert (body["state"], body["reason"]) == ("paused", "freeze_window")
    assert assigned(app, fleet, bundle_id) == []
    refused = create(
        client, key, bundle_id=bundle_id, override_freeze="hotfix", skip_busy_nodes=True
    )
    assert refused.status_code == 403, refused.get_json()  # only admins override
    listed = client.get(f"{BASE}/freeze-windows", headers=bearer(key)).get_json()["items"]
    assert [w["name"] for w in listed] == ["black friday"]
    bad = client.post(
        f"{BASE}/freeze-windows",
        json={
            "kind": "weekly",
            "name": "w",
            "days": ["fri"],
            "start_time": "22:00",
            "duration_minutes": 60,
            "time_zone": "Mars/Olympus",
        },
        headers=bearer(admin),
    )
    assert bad.status_code == 422 and "time_zone" in str(bad.get_json()["fields"])


def test_a_template_supplies_settings_the_request_does_not(
    client: Any, app: Any, key: str, bundle_id: str, fleet: list[tuple[str, str]]
) -> None:
    made = client.post(
        f"{BASE}/rollout-templates",
        json={"name": "careful", "strategy": "rolling", "batch_size": 3, "bake_s": 30},
        headers=bearer(key),
    )
    assert made.status_code == 201, made.get_json()
    body = create(client, key, bundle_id=bundle_id, template="careful").get_json()
    assert body["config"]["batch_size"] == 3 and body["config"]["bake_s"] == 30
    assert [len(s["nodes"]) for s in body["steps"]] == [3, 1]
    twice = client.post(f"{BASE}/rollout-templates", json={"name": "careful"}, headers=bearer(key))
    assert twice.status_code == 409
    missing = create(client, key, bundle_id=bundle_id, template="nope", skip_busy_nodes=True)
    assert missing.status_code == 404


def test_a_request_changing_the_templates_strategy_drops_the_templates_strategy_settings(
    client: Any, app: Any, key: str, bundle_id: str, fleet: list[tuple[str, str]]
) -> None:
    made = client.post(
        f"{BASE}/rollout-templates",
        json={"name": "steady", "strategy": "rolling", "batch_size": 3, "bake_s": 30},
        headers=bearer(key),
    )
    assert made.status_code == 201, made.get_json()
    canary = client.post(
        f"{BASE}/rollouts/plan",
        json={"bundle_id": bundle_id, "template": "steady", "strategy": "canary"},
        headers=bearer(key),
    )
    assert canary.status_code == 200, canary.get_json()
    assert canary.get_json()["config"]["strategy"] == "canary"
    assert canary.get_json()["config"]["bake_s"] == 30  # the template's shared settings stay
    share = client.post(
        f"{BASE}/rollouts/plan",
        json={"bundle_id": bundle_id, "template": "steady", "batch_percent": 50},
        headers=bearer(key),
    )
    assert share.status_code == 200, share.get_json()
    assert [len(s["nodes"]) for s in share.get_json()["steps"]] == [2, 2]


def test_a_tick_requested_while_one_runs_is_queued_once_as_a_follow_up(
    app: Any, backend: Any
) -> None:
    import redis
    from rq import Queue
    from rq.job import JobStatus

    from jobs.queue import enqueue

    connection = redis.Redis.from_url(backend.redis_url)
    queue = Queue("default", connection=connection)
    with app.app_context():
        enqueue("tick_rollout", ("r1",), "tick-r1", "default")
        running = queue.fetch_job("tick-r1")
        assert running is not None
        running.set_status(JobStatus.STARTED)  # what a worker does when it takes the job
        enqueue("tick_rollout", ("r1",), "tick-r1", "default")
        enqueue("tick_rollout", ("r1",), "tick-r1", "default")
    assert queue.fetch_job("tick-r1-again") is not None
    assert queue.get_job_ids().count("tick-r1-again") == 1


def test_a_tick_on_a_baking_step_stops_after_refreshing_the_verdict(
    client: Any, app: Any, backend: Any, key: str, bundle_id: str, fleet: list[tuple[str, str]]
) -> None:
    from sentinel_cp.rollouts import engine
    from sentinel_cp.rollouts.types import RecordGates

    rollout_id = create(
        client, key, bundle_id=bundle_id, strategy="all_at_once", bake_s=300
    ).get_json()["id"]
    run_jobs(app, backend.redis_url)
    for node in fleet:
        apply_bundle(client, app, node, bundle_id)
    run_jobs(app, backend.redis_url)
    assert show(client, key, rollout_id)["steps"][0]["state"] == "baking"
    with app.app_context():
        actions = engine.tick(uuid.UUID(rollout_id))
    assert len(actions) == 1 and isinstance(actions[0], RecordGates)
    assert actions[0].changed is False


# --- fleet scale: what a tick reads must not grow with the fleet ----------------------------


def seed_fleet(app: Any, slug: str, nodes: int) -> tuple[uuid.UUID, str]:
    """A project of `nodes` online nodes (one insert, no HTTP) and a compiled bundle row (as
    the compile job leaves it; nothing here downloads it)."""
    from sentinel_cp.bundles.models import Bundle

    project_id = uuid.UUID(make_project(app, slug))
    now = utcnow()
    bundle_id = f"{nodes:064x}"
    with app.app_context():
        db.session.execute(
            Node.__table__.insert(),
            [
                {
                    "id": uuid.uuid4(),
                    "project_id": project_id,
                    "name": f"{slug}-{i:03d}",
                    "labels": {},
                    "capabilities": [],
                    "metadata": {},
                    "status": "online",
                    "registered_at": now,
                    "last_heartbeat_at": now,
                    "health": {"status": "healthy"},
                    "metrics": {"error_rate": 0.1},
                }
                for i in range(nodes)
            ],
        )
        db.session.add(
            Bundle(
                id=bundle_id,
                project_id=project_id,
                version="v1",
                status="compiled",
                size_bytes=0,
                storage_key=f"test/{bundle_id}",
                files={},
                manifest={},
                config_sha256=bundle_id,
                signature="test-signature",
                signing_key_id="test-key",
            )
        )
        db.session.commit()
    return project_id, bundle_id


def tick_reads(app: Any, rollout_id: uuid.UUID) -> tuple[list[str], int, list[str]]:
    """One tick: its actions, the SQL statements it ran and how many delivery rows it loaded
    as ORM objects."""
    from sqlalchemy import event

    from sentinel_cp.rollouts import engine

    statements: list[str] = []
    loaded: list[object] = []

    def executed(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    def load(target: object, context: Any) -> None:
        loaded.append(target)

    with app.app_context():
        event.listen(db.engine, "before_cursor_execute", executed)
        event.listen(NodeBundleStatus, "load", load)
        try:
            actions = [type(a).__name__ for a in engine.tick(rollout_id)]
        finally:
            event.remove(db.engine, "before_cursor_execute", executed)
            event.remove(NodeBundleStatus, "load", load)
    return actions, len(loaded), statements


def fleet_ticks(app: Any, nodes: int) -> dict[str, tuple[int, int, frozenset[str]]]:
    """An all-at-once rollout over `nodes` nodes: its first tick (assigns), a tick with nothing
    changed, and the tick after every node verified; per tick (statements, ORM delivery rows
    loaded, distinct statement texts)."""
    from sentinel_cp.audit import Actor
    from sentinel_cp.projects import Project
    from sentinel_cp.rollouts import engine

    project_id, bundle_id = seed_fleet(app, f"fleet-{nodes}", nodes)
    with app.app_context():
        rollout_id = engine.create(
            Actor.system("test"),
            db.session.get(Project, project_id),
            {"bundle_id": bundle_id, "config": {"strategy": "all_at_once", "bake_s": 0}},
        ).id
        db.session.commit()
    result = {}
    for kind, expected in (
        ("first", ["StartStep"]),
        ("steady", []),
        ("verified", ["StartBaking", "CompleteStep", "Complete"]),
    ):
        if kind == "verified":
            with app.app_context():
                # what the reports and the next heartbeat leave behind, written in bulk
                now = utcnow()
                db.session.execute(
                    update(NodeBundleStatus)
                    .where(NodeBundleStatus.rollout_id == rollout_id)
                    .values(
                        state="verified",
                        activated_at=now - timedelta(seconds=2),
                        verified_at=now,
                    )
                )
                db.session.execute(
                    update(Node)
                    .where(Node.project_id == project_id)
                    .values(
                        active_bundle_id=bundle_id, last_heartbeat_at=now - timedelta(seconds=1)
                    )
                )
                db.session.commit()
        actions, loaded, statements = tick_reads(app, rollout_id)
        assert actions == expected, (kind, actions)
        result[kind] = (len(statements), loaded, frozenset(statements))
    with app.app_context():
        assert db.session.get(Rollout, rollout_id).state == "completed"
        assert set(
            db.session.scalars(select(Node.expected_bundle_id).where(Node.project_id == project_id))
        ) == {bundle_id}
    return result


def test_a_ticks_reads_do_not_grow_with_the_fleet(app: Any, backend: Any) -> None:
    """10 or 50 nodes: the same number of statements per tick (no query per node), no ORM
    object per delivery (the objects, and the garbage collections they set off, made a
    10,000-node tick cost more per node than a 1,000-node one: bench/tick_cost.py), and on
    PostgreSQL the same statement texts once nodes are assigned (one array parameter where
    an IN list had one parameter per node)."""
    small, large = fleet_ticks(app, 10), fleet_ticks(app, 50)
    for kind in ("first", "steady", "verified"):
        assert small[kind][0] == large[kind][0], (kind, small[kind][0], large[kind][0])
        assert small[kind][1] == large[kind][1] == 0, (kind, small[kind][1], large[kind][1])
    if backend.name == "postgres":
        # the first tick's assignment (bundles/distribution.assign) still lists the node ids
        for kind in ("steady", "verified"):
            assert small[kind][2] == large[kind][2], kind


def test_a_tick_that_waited_for_the_lock_acts_after_the_tick_it_waited_for(
    app: Any, backend: Any
) -> None:
    """Ticks are serialised by the rollout's row lock, and a tick reads the clock once it holds
    the lock: one that waited for another never starts a step before the previous one finished
    (bench/scale_out.py, two workers: a step "started" 0.5 s before its predecessor finished)."""
    from unittest import mock

    from sentinel_cp.audit import Actor
    from sentinel_cp.projects import Project
    from sentinel_cp.rollouts import engine
    from sentinel_cp.rollouts.models import RolloutStep

    project_id, bundle_id = seed_fleet(app, "locked", 4)
    with app.app_context():
        rollout_id = engine.create(
            Actor.system("test"),
            db.session.get(Project, project_id),
            {"bundle_id": bundle_id, "config": {"strategy": "rolling", "batch_size": 2}},
        ).id
        db.session.commit()
    assert tick_reads(app, rollout_id)[0] == ["StartStep"]
    lock = engine._lock
    waited: list[bool] = []

    def lock_after_another_tick(rollout_id: uuid.UUID, now: Any) -> Any:
        if not waited:  # what another worker's tick commits while this one waits for the lock
            waited.append(True)
            with db.engine.begin() as other:
                other.execute(
                    update(RolloutStep)
                    .where(RolloutStep.rollout_id == rollout_id, RolloutStep.index == 0)
                    .values(state="completed", finished_at=utcnow())
                )
        return lock(rollout_id, now)

    with app.app_context(), mock.patch.object(engine, "_lock", lock_after_another_tick):
        assert [type(a).__name__ for a in engine.tick(rollout_id)] == ["StartStep"]
    with app.app_context():
        first, second = db.session.scalars(
            select(RolloutStep)
            .where(RolloutStep.rollout_id == rollout_id)
            .order_by(RolloutStep.index)
        ).all()
    assert (first.state, second.state) == ("completed", "running")
    assert second.started_at >= first.finished_at, (second.started_at, first.finished_at)
