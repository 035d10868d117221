"""Rollouts end to end, over real HTTP between real processes, in the production layout.

The control plane is `python app.py` with `SENTINEL_ENV=production` on a PostgreSQL database of
this module's own and a real Redis (database 12, flushed before and after); its jobs run in two
separate `rq worker` processes and the periodic sweep in one `rq cron jobs/cron.py` process — the
Procfile's `web`, `worker` and `cron`. Nodes are `sentinel-cp simulate` fleets (the agent's own
apply flow with a simulated proxy), registered with a token from the API. Each test has a
project of its own, so fleets and rollouts never meet.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from bundle_helpers import CONFIG, route_config
from conftest import postgres_available, redis_available, require_service
from rollout_e2e_helpers import (
    Stack,
    operator,
    own_database,
    own_redis_url,
    production_stack,
    query,
    simulated_fleet,
)
from rq.job import Job
from test_server import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]
ROLLOUT_TIMEOUT_S = 60
KILLED_ROLLOUT_TIMEOUT_S = 45  # after the kill: 2-3 steps left


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_service(postgres_available(), "PostgreSQL not reachable")
    redis_url = own_redis_url()
    require_service(redis_available(redis_url), f"Redis not reachable at {redis_url}")
    with (
        own_database() as database_url,
        production_stack(tmp_path_factory.mktemp("rollout-e2e"), database_url, redis_url) as s,
    ):
        yield s


def step_indexes(entries: list[dict[str, Any]]) -> Counter[int]:
    """How many audit rows name each step (StartStep/CompleteStep audit their `index`)."""
    return Counter(int(entry["metadata"]["index"]) for entry in entries)


def delivery_rows_per_node(stack: Stack, rollout_id: str) -> Counter[str]:
    rows = query(
        stack.database_url,
        "SELECT node_id::text FROM node_bundle_statuses WHERE rollout_id = %s",
        rollout_id,
    )
    return Counter(row[0] for row in rows)


def last_tick_ended_at(stack: Stack, rollout_id: str) -> datetime | None:
    """When this rollout's `tick-<id>` job last finished, or None."""
    if not stack.redis().exists(f"rq:job:tick-{rollout_id}"):
        return None
    job = Job.fetch(f"tick-{rollout_id}", connection=stack.redis())
    return job.ended_at if job.get_status(refresh=True) == "finished" else None


def as_utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# --- 1. a 50-node rolling rollout ---------------------------------------------------------


def test_a_50_node_rolling_rollout_verifies_every_node_and_audits_each_step_once(
    stack: Stack, tmp_path: Path
) -> None:
    """50 healthy simulated nodes, 5 steps of 20 %, no bake: the rollout completes, every node
    runs and is expected to run the bundle, and each step started and completed once."""
    with operator(stack.server, "fleet-50") as ops:
        bundle_id = ops.submit(route_config(3, tag="fleet"), "fleet-v1")
        with simulated_fleet(
            stack.server, ops.slug, ops.registration_token(), 50, "r50", tmp_path
        ) as fleet:
            ops.wait_online(50)
            ops.wait_compiled(bundle_id)
            created = ops.create_rollout(
                bundle_id=bundle_id, strategy="rolling", batch_percent=20, bake_s=0
            )
            assert [len(step["nodes"]) for step in created["steps"]] == [10] * 5
            done = ops.wait_rollout(created["id"], ("completed",), ROLLOUT_TIMEOUT_S)
            nodes = ops.nodes()
            started = ops.audit("rollout.step_started", created["id"])
            completed = ops.audit("rollout.step_completed", created["id"])
        summary = fleet.stop()

    assert [step["state"] for step in done["steps"]] == ["completed"] * 5
    assert done["progress"]["verified"] == done["progress"]["total"] == 50
    assert {n["state"] for step in done["steps"] for n in step["nodes"]} == {"verified"}
    assert len(nodes) == 50
    assert {(n["active_bundle_id"], n["expected_bundle_id"]) for n in nodes} == {
        (bundle_id, bundle_id)
    }
    assert step_indexes(started) == Counter(range(5))
    assert step_indexes(completed) == Counter(range(5))
    assert summary["bundles_applied"] == 50, summary
    assert summary["bundles_failed"] == 0, summary


# --- 2. activation failures pause the rollout ---------------------------------------------


def test_ten_percent_activation_failures_pause_the_rollout_at_the_failing_step(
    stack: Stack, tmp_path: Path
) -> None:
    """20 nodes in steps of 5, ordered by name: `f1-*` (5 healthy) fill step 1; step 2 is the
    two `f2-*` nodes, whose every activation fails its health check (10 % of the fleet), and
    three healthy `f3-*`; steps 3 and 4 are the other `f3-*` nodes."""
    with operator(stack.server, "fail-10") as ops:
        bundle_id = ops.submit(route_config(2, tag="fail"), "fail-v1")
        token = ops.registration_token()
        with (
            simulated_fleet(stack.server, ops.slug, token, 5, "f1", tmp_path),
            simulated_fleet(
                stack.server, ops.slug, token, 2, "f2", tmp_path, apply_failure_rate=1
            ) as failing,
            simulated_fleet(stack.server, ops.slug, token, 13, "f3", tmp_path),
        ):
            ops.wait_online(20)
            ops.wait_compiled(bundle_id)
            created = ops.create_rollout(
                bundle_id=bundle_id, strategy="rolling", batch_size=5, bake_s=0, max_failures=0
            )
            planned = [[n["name"] for n in step["nodes"]] for step in created["steps"]]
            assert [len(names) for names in planned] == [5, 5, 5, 5]
            assert planned[1][:2] == ["f2-0000", "f2-0001"]
            paused = ops.wait_rollout(created["id"], ("paused",), ROLLOUT_TIMEOUT_S)

            # Let the rest of step 2 finish and a tick run after that: nothing may move on.
            def step_two_settled() -> dict[str, Any] | None:
                body = ops.rollout(created["id"])
                states = {n["name"]: n["state"] for n in body["steps"][1]["nodes"]}
                healthy = [s for name, s in states.items() if name.startswith("f3")]
                return body if healthy == ["verified"] * 3 else None

            wait_for(step_two_settled, timeout=30, what="step 2's healthy nodes to verify")
            settled_at = max(
                row[0]
                for row in query(
                    stack.database_url,
                    "SELECT updated_at FROM node_bundle_statuses WHERE rollout_id = %s",
                    created["id"],
                )
            )
            wait_for(
                lambda: (
                    (ended := last_tick_ended_at(stack, created["id"])) is not None
                    and ended > as_utc(settled_at)
                ),
                timeout=30,
                what="a tick after step 2's last report",
            )
            after = ops.rollout(created["id"])
            started = ops.audit("rollout.step_started", created["id"])
            failed = ops.audit("rollout.step_failed", created["id"])
            unstarted = {n["id"]: n for n in ops.nodes() if n["name"] in planned[2] + planned[3]}
        failures = failing.stop()

    assert paused["reason"] == "max_failures_exceeded"
    assert paused["details"]["step_index"] == 1
    assert after["state"] == "paused"
    assert [step["state"] for step in after["steps"]] == [
        "completed",
        "failed",
        "pending",
        "pending",
    ]
    step_two = after["steps"][1]
    assert step_two["reason"] == "max_failures_exceeded"
    failed_nodes = [n for n in step_two["nodes"] if n["state"] == "failed"]
    assert 1 <= len(failed_nodes) <= 2
    assert {n["name"][:2] for n in failed_nodes} == {"f2"}
    assert all(n["reason"] for n in failed_nodes), failed_nodes
    assert step_indexes(started) == Counter([0, 1])
    assert step_indexes(failed) == Counter([1])
    assert failed[0]["metadata"]["reason"] == "max_failures_exceeded"
    # Steps 3 and 4 never started: no node of theirs was assigned or given a delivery row.
    assert {n["state"] for step in after["steps"][2:] for n in step["nodes"]} == {"pending"}
    assert len(unstarted) == 10
    assert {n["assigned_bundle_id"] for n in unstarted.values()} == {None}
    assert not set(delivery_rows_per_node(stack, created["id"])) & set(unstarted)
    assert failures["bundles_failed"] >= 1, failures


# --- 3. a worker killed mid-rollout -------------------------------------------------------


def test_a_worker_killed_mid_tick_neither_strands_the_rollout_nor_repeats_a_step(
    stack: Stack, tmp_path: Path
) -> None:
    """One of the two workers is SIGKILLed with its work horse while the horse runs one of
    this rollout's ticks, before its last step started; the surviving worker and the cron
    sweep must finish the rollout, and every step must start exactly once."""
    with operator(stack.server, "kill-1") as ops:
        bundle_id = ops.submit(CONFIG, "kill-v1")
        with simulated_fleet(
            stack.server, ops.slug, ops.registration_token(), 12, "k", tmp_path
        ) as fleet:
            ops.wait_online(12)
            ops.wait_compiled(bundle_id)
            created = ops.create_rollout(
                bundle_id=bundle_id, strategy="rolling", batch_size=4, bake_s=0
            )
            rollout_id = created["id"]
            wait_for(
                lambda: ops.rollout(rollout_id)["steps"][0]["state"] in ("running", "baking"),
                timeout=ROLLOUT_TIMEOUT_S,
                what="step 1 to start",
            )
            killed = stack.kill_worker_mid_job(lambda job: job == f"tick-{rollout_id}", timeout=30)
            at_kill = ops.rollout(rollout_id)
            done = ops.wait_rollout(rollout_id, ("completed",), KILLED_ROLLOUT_TIMEOUT_S)
            started = ops.audit("rollout.step_started", rollout_id)
            completed = ops.audit("rollout.step_completed", rollout_id)
            nodes = ops.nodes()
        summary = fleet.stop()

    assert len(killed) == 2, f"the worker and its work horse: {killed}"
    assert at_kill["state"] == "running"
    assert any(step["state"] == "pending" for step in at_kill["steps"]), at_kill["steps"]
    assert [step["state"] for step in done["steps"]] == ["completed"] * 3
    assert done["progress"]["verified"] == 12
    assert step_indexes(started) == Counter(range(3)), started
    assert step_indexes(completed) == Counter(range(3))
    # No step ran twice: every node was assigned exactly once by this rollout.
    assert set(delivery_rows_per_node(stack, rollout_id).values()) == {1}
    assert {(n["active_bundle_id"], n["expected_bundle_id"]) for n in nodes} == {
        (bundle_id, bundle_id)
    }
    assert summary["bundles_applied"] == 12, summary
