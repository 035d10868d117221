"""Infrastructure outages against the production process layout, with real processes.

One stack for the module: `python app.py` (production mode) on a private PostgreSQL cluster, a
private `redis-server` and moto's S3 in this process, one Procfile worker and one `rq cron` kept
running by a supervisor, a 4-node `sentinel-cp simulate` fleet in project `faults`, and two probe
nodes (project `probes`) whose every heartbeat and poll the test sends and records itself. Each
test breaks one service while probes keep calling the API, then measures how long recovery took
and checks that nothing was lost:

- Redis stopped for 30 s (and back empty): node heartbeats and polls keep working, the operator
  API and `/ready` answer 503 + `Retry-After`, no rollout moves while the queue is away, and the
  rollout under way completes afterwards.
- PostgreSQL restarted: everything that needs it answers 503 + `Retry-After` while it is down,
  then works again without restarting the application.
- S3 away: a compile stays `pending` with a clear reason and is retried by the compile sweep;
  nodes keep their last known good bundle and converge once S3 is back.
- The console (NiceGUI `user` harness) shows a Redis outage and reloads when it is over.

Each test writes its row of the fault table (`fault_support.record_row`).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from bundle_helpers import route_config
from conftest import require_service, wait_for
from fault_support import (
    Answer,
    FaultRow,
    FaultStack,
    PostgresCluster,
    ProbeNode,
    Probes,
    RedisProcess,
    Restart,
    RestartableS3,
    audit_verify,
    elapsed,
    fault_stack,
    fleet_heartbeats,
    hold,
    query,
    record_row,
    register_probe_node,
    statuses,
)
from nicegui import ui
from nicegui.testing import User
from rollout_e2e_helpers import Fleet, Operator, operator, simulated_fleet

from sentinel_cp.accounts import SCOPES

if TYPE_CHECKING:
    from console_support import Console

pytest_plugins = ["console_support"]
pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis, pytest.mark.s3]

PROJECT = "faults"
PROBES = "probes"
NODES = 4
REDIS_OUTAGE_S = 30  # the number
RECOVERY_TIMEOUT_S = 60
STORED_WITHIN_S = 5  # an acknowledged heartbeat is stored at once, or by the next 0.5 s flush
# The compile sweep runs every 30 s and takes bundles pending for more than 30 s.
COMPILE_RETRY_TIMEOUT_S = 90
# What a Redis without persistence loses by itself, beyond what the checks cover.
REDIS_CONTENTS = (
    "; Redis came back empty: its queued jobs were found again by the sweeps, rate-limit "
    "windows restarted, but logged-out session ids were forgotten (a revoked session cookie "
    "is accepted again until it expires: open, revocations live only in Redis)"
)
# Not exercised here (it takes minutes): what happens when S3 stays away longer.
S3_LIMIT = (
    "; for an outage within the compile's 5 attempts (~2-2.5 min of sweeps): beyond that the "
    "bundle fails with storage_unavailable and identical content cannot be resubmitted (open)"
)
COMMAND = (
    "cd /work/main && TEST_REDIS_URL=redis://127.0.0.1:6379/11 "
    ".venv/bin/python -m pytest tests/test_faults_infra.py -q -s"
)


@dataclass
class Infra:
    redis_server: RedisProcess
    cluster: PostgresCluster
    s3: RestartableS3
    stack: FaultStack
    ops: Operator
    fleet: Fleet
    steady: ProbeNode  # heartbeats only when the test says (durability checks)
    through: ProbeNode  # probed all through every fault
    bundles: dict[str, str]  # version → bundle id
    session_cookie: str  # the admin's login, from before any fault
    current: str | None = None  # the bundle every fleet node runs now

    def next_bundle(self) -> str:
        """A compiled bundle the fleet does not run yet (v1, then v2, then v1 again)."""
        return next(b for b in self.bundles.values() if b != self.current)

    @property
    def url(self) -> str:
        return self.stack.server.url

    @property
    def database_url(self) -> str:
        return self.stack.database_url


@pytest.fixture(scope="module")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infra]:
    require_service(RedisProcess.available(), "redis-server is not installed")
    require_service(
        PostgresCluster.available(),
        "a private PostgreSQL cluster needs /usr/lib/postgresql/15/bin and root (runuser)",
    )
    require_service(RestartableS3.available(), "moto[s3] is not installed (dev dependency)")
    tmp = tmp_path_factory.mktemp("faults-infra")
    with ExitStack() as resources:
        redis_server = resources.enter_context(RedisProcess(tmp))
        cluster = resources.enter_context(PostgresCluster())
        s3 = resources.enter_context(RestartableS3())
        stack = resources.enter_context(
            fault_stack(
                tmp,
                cluster.create_database("sentinel"),
                redis_server.url(),
                s3.env(f"faults-{uuid.uuid4().hex[:8]}"),
            )
        )
        ops = resources.enter_context(operator(stack.server, PROJECT))
        # The operator works with an API key (kept in PostgreSQL): a Redis that comes back
        # empty ends every session, by design, and the Redis test checks that on this cookie.
        key = ops.api.post("/api/v1/api-keys", json={"name": "faults", "scopes": list(SCOPES)})
        assert key.status_code == 201, key.text
        session_cookie = ops.api.headers.pop("Cookie")
        ops.api.headers["Authorization"] = f"Bearer {key.json()['key']}"
        # Heartbeats every 5 s are expected and 15 s of silence is offline: a node whose
        # heartbeats an outage refused would be marked offline (and a rollout would see it).
        patched = ops.api.patch(
            f"/api/v1/projects/{PROJECT}",
            json={
                "settings": {
                    "heartbeat_interval_s": 5,
                    "poll_interval_s": 5,
                    "staleness_timeout_s": 15,
                }
            },
        )
        assert patched.status_code == 200, patched.text
        bundles = {v: ops.submit(route_config(n, tag=v), v) for v, n in (("v1", 2), ("v2", 3))}
        created = ops.api.post("/api/v1/projects", json={"slug": PROBES, "name": "Probes"})
        assert created.status_code == 201, created.text
        token = ops.api.post(f"/api/v1/projects/{PROBES}/registration-token", json={})
        steady, through = (
            register_probe_node(stack.server.url, PROBES, token.json()["token"], name)
            for name in ("probe-steady", "probe-through")
        )
        fleet = resources.enter_context(
            simulated_fleet(
                stack.server, PROJECT, ops.registration_token(), NODES, "edge", tmp, stagger=0.5
            )
        )
        ops.wait_online(NODES)
        for bundle_id in bundles.values():
            ops.wait_compiled(bundle_id)
        yield Infra(
            redis_server, cluster, s3, stack, ops, fleet, steady, through, bundles, session_cookie
        )


# --- helpers --------------------------------------------------------------------------------


def start_probes(infra: Infra, probes: Probes) -> None:
    """What keeps calling through a fault: readiness, a node's heartbeat and poll, and the
    operator API with an admin's API key (its rate limit needs Redis)."""
    auth = {"Authorization": infra.ops.api.headers["Authorization"]}
    probes.add("ready", lambda http: http.get("/ready"))
    probes.add("heartbeat", infra.through.heartbeat, interval_s=1.05)  # the server allows 1/s
    probes.add("poll", infra.through.poll)
    probes.add(
        "operator",
        lambda http: http.get(f"/api/v1/projects/{PROJECT}/nodes", headers=auth),
    )
    for name in ("ready", "heartbeat", "poll", "operator"):
        probes.first_ok_after(name, 0, timeout=30)


def wall() -> datetime:
    return datetime.now(UTC)


def stored_last_seen(infra: Infra, node: ProbeNode) -> datetime:
    rows = query(infra.database_url, "SELECT last_seen_at FROM nodes WHERE id = %s", node.node_id)
    value: datetime = rows[0][0]
    return value


def stored_within(infra: Infra, node: ProbeNode, at: datetime, timeout: float) -> bool:
    """Whether the node's stored last heartbeat is `at` within `timeout` (the heartbeat buffer
    writes an acknowledged steady heartbeat within its next flush)."""
    try:
        wait_for(lambda: stored_last_seen(infra, node) == at, timeout=timeout, what="stored")
    except AssertionError:
        return False
    return True


def acked_at(answer: Answer) -> datetime:
    return datetime.fromisoformat(answer.body["last_seen_at"])


def rollout_actions_between(
    infra: Infra, rollout_id: str, since: datetime, until: datetime
) -> list[str]:
    rows = query(
        infra.database_url,
        "SELECT action FROM audit_logs WHERE resource_type = 'rollout' AND resource_id = %s "
        "AND created_at > %s AND created_at < %s ORDER BY seq",
        rollout_id,
        since,
        until,
    )
    return [row[0] for row in rows]


def first_rollout_action_after(infra: Infra, rollout_id: str, since: datetime) -> datetime:
    rows = query(
        infra.database_url,
        "SELECT min(created_at) FROM audit_logs WHERE resource_type = 'rollout' "
        "AND resource_id = %s AND created_at > %s",
        rollout_id,
        since,
    )
    moment: datetime = rows[0][0]
    return moment


@dataclass(frozen=True)
class Losses:
    """The "nothing lost" checks after a fault (each one asserted by `assert_nothing_lost`)."""

    audit: dict[str, dict[str, Any]]
    unfinished_rollouts: list[tuple[str, str]]
    not_converged: list[tuple[str, str, str | None]]
    marked_offline: int
    heartbeat_lost: bool
    audit_rows: int

    def sentence(self) -> str:
        return (
            f"nothing: audit chains valid ({self.audit_rows} rows), "
            f"{len(self.unfinished_rollouts)} rollouts stuck, "
            f"{NODES - len(self.not_converged)}/{NODES} nodes converged, "
            f"{self.marked_offline} nodes marked offline, "
            f"last acknowledged heartbeat {'missing' if self.heartbeat_lost else 'stored'}"
        )


def api_verify(infra: Infra, chain: str | None) -> dict[str, Any]:
    path = f"/api/v1/projects/{chain}/audit/verify" if chain else "/api/v1/audit/verify"
    answer = infra.ops.api.get(path)
    assert answer.status_code == 200, answer.text
    verdict: dict[str, Any] = answer.json()
    return verdict


def check_losses(infra: Infra, since: datetime, probes: Probes, *, cli: bool = False) -> Losses:
    """Audit chains verify (`/audit/verify`, and `sentinel-cp audit verify` when `cli`), every
    rollout completed, every fleet node online on `infra.current`, no node marked offline since
    `since`, and the last heartbeat the probe node was answered 200 for is what the database
    holds."""
    probe = probes["heartbeat"]
    probe.pause()
    last = probe.last_ok()
    assert last is not None
    heartbeat_lost = not stored_within(infra, infra.through, acked_at(last), STORED_WITHIN_S)
    probe.resume()
    audit = {chain or "global": api_verify(infra, chain) for chain in (PROJECT, PROBES, None)}
    if cli:  # the same check as an operator's shell would run it (a process start: ~2-5 s)
        audit[f"{PROJECT} (sentinel-cp audit verify)"] = audit_verify(infra.stack.env, PROJECT)
    unfinished = query(
        infra.database_url, "SELECT id::text, state FROM rollouts WHERE state <> 'completed'"
    )
    nodes = query(
        infra.database_url,
        "SELECT n.name, n.status, n.active_bundle_id FROM nodes n JOIN projects p "
        "ON p.id = n.project_id WHERE p.slug = %s",
        PROJECT,
    )
    assert len(nodes) == NODES
    offline = query(
        infra.database_url,
        "SELECT count(*) FROM audit_logs a JOIN projects p ON p.id = a.project_id "
        "WHERE p.slug = %s AND a.action = 'node.offline' AND a.created_at >= %s",
        PROJECT,
        since,
    )[0][0]
    return Losses(
        audit=audit,
        unfinished_rollouts=[(str(r[0]), str(r[1])) for r in unfinished],
        not_converged=[
            (name, status, active)
            for name, status, active in nodes
            if status != "online" or active != infra.current
        ],
        marked_offline=int(offline),
        heartbeat_lost=heartbeat_lost,
        audit_rows=sum(int(v["checked"]) for k, v in audit.items() if "(" not in k),
    )


def assert_nothing_lost(losses: Losses) -> None:
    for chain, verdict in losses.audit.items():
        assert verdict["valid"] and verdict.get("exit_code", 0) == 0, (chain, verdict)
    assert losses.unfinished_rollouts == []
    assert losses.not_converged == []
    assert losses.marked_offline == 0
    assert not losses.heartbeat_lost


def during(probes: Probes, name: str, since: float, until: float) -> list[Answer]:
    """Answers to calls sent and answered inside the outage, from a second after it began (a
    call in flight at its start may see either side) to the moment the service was being
    brought back."""
    return probes[name].between(since + 1.0, until)


def exits(restarts: list[Restart]) -> str:
    """`cron exited 6×, worker 0×…`: what the supervisor had to start again."""
    counts = Counter(r.process.split("~")[0] for r in restarts)
    worker = sum(n for name, n in counts.items() if name != "cron")
    return (
        f"RQ's cron exited {counts['cron']}× and the worker {worker}× on the lost "
        "connection, each started again by the supervisor"
    )


def summary(answers: list[Answer]) -> str:
    return ", ".join(f"{status}×{count}" for status, count in statuses(answers).items())


# --- Redis ------------------------------------------------------------------------------


def test_redis_away_30_s_keeps_nodes_served_and_the_rollout_resumes_when_it_is_back(
    infra: Infra, tmp_path: Path
) -> None:
    """Redis is stopped for 30 s and comes back empty (no persistence: every queued job, lock,
    rate-limit window and worker registration is gone)."""
    ops = infra.ops
    target = infra.next_bundle()
    with Probes(infra.url) as probes:
        start_probes(infra, probes)
        # Three steps (1, 1 and 2 nodes): stopped once the first completes, at least one step
        # cannot have finished before Redis went away.
        rollout = ops.create_rollout(
            bundle_id=target, strategy="canary", canary_steps=[25, 50, 100], bake_s=0
        )
        rollout_id = rollout["id"]
        wait_for(
            lambda: ops.rollout(rollout_id)["steps"][0]["state"] == "completed",
            timeout=RECOVERY_TIMEOUT_S,
            what="the rollout's first step",
        )
        fleet_before = fleet_heartbeats(infra.fleet.stderr)
        wall_down, down = wall(), infra.redis_server.stop()
        hold(REDIS_OUTAGE_S)
        steps_held = [
            s[0]
            for s in query(
                infra.database_url,
                "SELECT state FROM rollout_steps WHERE rollout_id = %s ORDER BY index",
                rollout_id,
            )
        ]
        fleet_during = fleet_heartbeats(infra.fleet.stderr)
        restoring, wall_back = time.monotonic(), wall()
        back = infra.redis_server.start()
        ready = probes.first_ok_after("ready", back, timeout=RECOVERY_TIMEOUT_S)
        api = probes.first_ok_after("operator", back, timeout=RECOVERY_TIMEOUT_S)
        # Redis came back empty: the admin's session ended rather than forgetting revocations.
        old_session = httpx.get(
            f"{infra.stack.server.url}/api/v1/me", headers={"Cookie": infra.session_cookie}
        )
        done = ops.wait_rollout(rollout_id, ("completed",), RECOVERY_TIMEOUT_S)
        rollout_s = (wall_for(done) - wall_back).total_seconds()
        resumed = first_rollout_action_after(infra, rollout_id, wall_back)
        resumed_s = (resumed - wall_back).total_seconds()
        infra.current = target
        outage = {name: during(probes, name, down, restoring) for name in probes.probes}
        restarts = infra.stack.restarts_since(down)
        losses = check_losses(infra, wall_down, probes)

    # Nodes were served all along: heartbeats and polls only need PostgreSQL.
    assert outage["heartbeat"] and {a.status for a in outage["heartbeat"]} == {200}
    assert outage["poll"] and {a.status for a in outage["poll"]} <= {200, 304}
    assert fleet_during[1] == fleet_before[1], "a fleet heartbeat failed while Redis was away"
    # What needs Redis says so: 503 + Retry-After, never a 500 or a hang.
    for name in ("ready", "operator"):
        assert outage[name] and {a.status for a in outage[name]} == {503}, outage[name][:3]
        assert {a.retry_after for a in outage[name]} == {"5"}
    assert {a.body["checks"]["redis"] != "ok" for a in outage["ready"]} == {True}
    assert {a.body["code"] for a in outage["operator"]} == {"unavailable"}
    assert old_session.status_code == 401, old_session.text
    # No rollout transition while the queue was away; it finished afterwards.
    assert (
        rollout_actions_between(infra, rollout_id, wall_down + timedelta(seconds=2), wall_back)
        == []
    )
    assert steps_held[0] == "completed" and steps_held[-1] != "completed"
    assert {s["state"] for s in done["steps"]} == {"completed"}
    assert_nothing_lost(losses)

    record_row(
        FaultRow(
            fault=f"Redis stopped for {REDIS_OUTAGE_S} s, back empty",
            expected="node heartbeats/polls keep working; operator API and /ready 503 + "
            "Retry-After; no rollout step moves while the queue is away; all resumes",
            observed=(
                f"heartbeats {summary(outage['heartbeat'])}, polls {summary(outage['poll'])}, "
                f"fleet heartbeats failed {fleet_during[1] - fleet_before[1]}; operator API "
                f"{summary(outage['operator'])} and /ready {summary(outage['ready'])}, all "
                f"with Retry-After 5; rollout held at steps {steps_held}, no transition "
                f"during the outage; {exits(restarts)}; the rollout went on from PostgreSQL's "
                "state once Redis was back"
            ),
            recovery_s={
                "/ready 200": elapsed(back, ready.at),
                "operator API 200": elapsed(back, api.at),
                "rollout's next step transition": round(resumed_s, 2),
                "rollout completed": round(rollout_s, 2),
            },
            lost=losses.sentence() + REDIS_CONTENTS,
            command=COMMAND,
            details={"restarts": [r.__dict__ for r in restarts], "outage_s": elapsed(down, back)},
        ),
        tmp_path,
    )


def wall_for(rollout: dict[str, Any]) -> datetime:
    """When the rollout completed, by the server's clock (same machine as ours)."""
    return datetime.fromisoformat(rollout["finished_at"])


# --- PostgreSQL -------------------------------------------------------------------------


def test_a_postgres_restart_answers_503_while_down_and_recovers_without_an_app_restart(
    infra: Infra, tmp_path: Path
) -> None:
    """A fast shutdown and start of the cluster (what a minor-version upgrade or a failover to
    the same address does) while nodes heartbeat and the operator reads."""
    server = infra.stack.server.process
    with Probes(infra.url) as probes:
        start_probes(infra, probes)
        with httpx.Client(base_url=infra.url, timeout=10) as http:
            acked = infra.steady.heartbeat(http)
        assert acked.status_code == 200, acked.text
        fleet_before = fleet_heartbeats(infra.fleet.stderr)
        wall_down, down = wall(), infra.cluster.stop()
        wait_for(
            lambda: all(len(during(probes, n, down, float("inf"))) >= 3 for n in probes.probes),
            timeout=RECOVERY_TIMEOUT_S,
            what="every probe to be answered while PostgreSQL is down",
        )
        restoring = time.monotonic()
        back = infra.cluster.start()
        # The heartbeat acknowledged just before the shutdown survived it (nothing has
        # written this node since): written before the shutdown, or kept by the heartbeat
        # buffer and written once the database is back.
        acknowledged = datetime.fromisoformat(acked.json()["last_seen_at"])
        steady_kept = stored_within(infra, infra.steady, acknowledged, RECOVERY_TIMEOUT_S)
        outage = {name: during(probes, name, down, restoring) for name in probes.probes}
        first = {
            name: probes.first_ok_after(name, back, timeout=RECOVERY_TIMEOUT_S)
            for name in probes.probes
        }
        fleet_after = fleet_heartbeats(infra.fleet.stderr)
        # An audited write works again on the same processes.
        changed = infra.ops.api.patch(
            f"/api/v1/projects/{PROJECT}", json={"name": f"Faults {uuid.uuid4().hex[:6]}"}
        )
        losses = check_losses(infra, wall_down, probes)

    for name, answers in outage.items():
        if name == "heartbeat":
            # The heartbeat buffer acknowledges steady heartbeats from memory until its first
            # failed write (within 0.5 s of the database going away; those are written when it
            # is back); from the first 503 on, the database path answers.
            refused = [i for i, a in enumerate(answers) if a.status == 503]
            assert refused, (name, answers[:3])
            answers = answers[refused[0] :]
        assert answers and {a.status for a in answers} == {503}, (name, answers[:3])
        assert {a.retry_after for a in answers} == {"5"}, name
    assert {a.body["checks"]["database"] != "ok" for a in outage["ready"]} == {True}
    assert changed.status_code == 200, changed.text
    assert server.poll() is None, "the application was restarted"
    assert steady_kept
    assert_nothing_lost(losses)

    record_row(
        FaultRow(
            fault="PostgreSQL restarted (fast shutdown, start)",
            expected="/ready 503; heartbeats, polls, operator API 503 + Retry-After while "
            "down; all work again without restarting the application",
            observed=(
                f"down {elapsed(down, back)} s: /ready {summary(outage['ready'])}, heartbeats "
                f"{summary(outage['heartbeat'])}, polls {summary(outage['poll'])}, operator "
                f"API {summary(outage['operator'])}, all with Retry-After 5; fleet heartbeats "
                f"failed {fleet_after[1] - fleet_before[1]} (nodes wait Retry-After, then "
                "retry); same server process afterwards, audited write OK, the heartbeat "
                "acknowledged before the shutdown still stored"
            ),
            recovery_s={f"{name} 2xx": elapsed(back, first[name].at) for name in first},
            lost=losses.sentence(),
            command=COMMAND,
        ),
        tmp_path,
    )


# --- S3 ---------------------------------------------------------------------------------


def downloads_of(infra: Infra, bundle_id: str, since_line: int) -> set[str]:
    """Node ids that asked the server for `bundle_id`'s archive (access log, from a line on)."""
    lines = infra.stack.server.log().splitlines()[since_line:]
    marker = f"/bundles/{bundle_id}/download"
    return {
        line.split("/api/v1/nodes/", 1)[1].split("/", 1)[0]
        for line in lines
        if marker in line and "/api/v1/nodes/" in line
    }


def test_s3_away_keeps_compiles_pending_with_a_reason_and_nodes_on_their_last_good_bundle(
    infra: Infra, tmp_path: Path
) -> None:
    """S3 refuses connections while a bundle is submitted and another is rolled out; then the
    same store (same buckets and objects) is reachable again."""
    ops = infra.ops
    last_good, target = infra.current, infra.next_bundle()
    with Probes(infra.url) as probes:
        start_probes(infra, probes)
        log_mark = len(infra.stack.server.log().splitlines())
        wall_down, down = wall(), infra.s3.stop()
        v3 = ops.submit(route_config(4, tag="v3"), "v3")

        def waiting_for_storage() -> dict[str, Any] | None:
            body: dict[str, Any] = ops.api.get(f"/api/v1/projects/{PROJECT}/bundles/{v3}").json()
            assert body["status"] != "failed", body
            return body if body["output"].get("last_error") else None

        pending = wait_for(
            waiting_for_storage,
            timeout=RECOVERY_TIMEOUT_S,
            what="the compile to meet S3 down",
            tolerate_errors=False,
        )
        rollout = ops.create_rollout(bundle_id=target, strategy="all_at_once")
        # Every node is offered the new bundle and tries to fetch it (a 302 to S3).
        wait_for(
            lambda: len(downloads_of(infra, target, log_mark)) == NODES,
            timeout=RECOVERY_TIMEOUT_S,
            what="every node to try downloading the new bundle",
        )
        wait_for(
            lambda: all(len(during(probes, n, down, float("inf"))) >= 2 for n in probes.probes),
            timeout=RECOVERY_TIMEOUT_S,
            what="every probe to be answered while S3 is away",
        )
        during_nodes = ops.nodes()
        during_rollout = ops.rollout(rollout["id"])
        failed_reports = query(
            infra.database_url,
            "SELECT count(*) FROM node_bundle_statuses WHERE bundle_id = %s AND state = 'failed'",
            target,
        )[0][0]
        restoring, wall_back = time.monotonic(), wall()
        back = infra.s3.start()
        ready = probes.first_ok_after("ready", back, timeout=RECOVERY_TIMEOUT_S)
        done = ops.wait_rollout(rollout["id"], ("completed",), RECOVERY_TIMEOUT_S)
        converged_s = (wall_for(done) - wall_back).total_seconds()
        infra.current = target
        compiled = wait_for(
            lambda: (
                (b := ops.api.get(f"/api/v1/projects/{PROJECT}/bundles/{v3}").json())["status"]
                == "compiled"
                and b
            ),
            timeout=COMPILE_RETRY_TIMEOUT_S,
            what="v3 to compile once S3 is back (the compile sweep retries it)",
        )
        compile_s = (datetime.fromisoformat(compiled["compiled_at"]) - wall_back).total_seconds()
        outage = {name: during(probes, name, down, restoring) for name in probes.probes}
        losses = check_losses(infra, wall_down, probes, cli=True)

    reason = pending["output"]["last_error"]
    assert pending["status"] == "pending" and "unreachable" in reason and "retry later" in reason
    assert {a.status for a in outage["ready"]} == {503}
    assert {a.body["checks"]["storage"] != "ok" for a in outage["ready"]} == {True}
    for name in ("heartbeat", "poll", "operator"):
        assert outage[name] and {a.status for a in outage[name]} <= {200, 304}, name
    assert {(n["status"], n["active_bundle_id"]) for n in during_nodes} == {("online", last_good)}
    assert during_rollout["state"] == "running" and failed_reports == 0
    assert compiled["output"]["attempt"] >= 2  # the first attempt met S3 down
    assert_nothing_lost(losses)

    record_row(
        FaultRow(
            fault="S3 unreachable (connections refused), then the same store back",
            expected="compile stays pending with a clear, retryable reason and is retried; "
            "nodes keep their last known good bundle; all converge once S3 is back",
            observed=(
                f"/ready {summary(outage['ready'])} naming storage; compile pending: "
                f'"{reason}" (retried by the compile sweep: every 30 s for bundles pending '
                "> 30 s, up to 5 attempts); a rollout started meanwhile held every node on "
                "its running bundle (downloads deferred, no failure reported); heartbeats "
                f"{summary(outage['heartbeat'])}, operator API {summary(outage['operator'])}"
            ),
            recovery_s={
                "/ready 200": elapsed(back, ready.at),
                "nodes converged (rollout completed)": round(converged_s, 2),
                "pending compile compiled": round(compile_s, 2),
            },
            lost=losses.sentence() + S3_LIMIT,
            command=COMMAND,
        ),
        tmp_path,
    )


# --- the console ------------------------------------------------------------------------


@pytest.fixture
def console_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    require_service(RedisProcess.available(), "redis-server is not installed")
    with RedisProcess(tmp_path) as server:
        yield server


@pytest.fixture
def embedded_redis_url(console_redis: RedisProcess) -> str:
    """The console harness runs on a Redis of this test's own, which it stops and freezes."""
    return console_redis.url()


def shown(user: User, marker: str) -> bool:
    """Whether an element marked `marker` is visible on the page now."""
    try:
        user.find(marker=marker)
    except AssertionError:
        return False
    return True


async def test_the_console_shows_a_redis_outage_and_reloads_the_page_when_it_is_back(
    user: User, console: Console, console_redis: RedisProcess, tmp_path: Path
) -> None:
    """Frozen (SIGSTOP: connections hang) and stopped (connections refused): either way the
    page says live updates are interrupted, and once Redis answers again it shows what changed
    meanwhile, although no event about it was ever heard."""
    console.add_nodes(2, prefix="edge")
    await console.open(user, "/", ready="nodes-online")
    await user.should_see(marker="nodes-online", content="2")
    await console.listener_ready()
    await user.should_not_see(marker="live-interrupted")
    online = next(e for e in user.find(marker="nodes-online").elements if isinstance(e, ui.label))
    # Frozen first: a Redis that comes back empty ends every session (session ids carry its
    # generation), so after "stopped" the page is on borrowed time until its session check.
    faults = {
        "frozen": (console_redis.freeze, console_redis.thaw),
        "stopped": (console_redis.stop, console_redis.start),
    }
    measured: dict[str, float] = {}
    for fault, (break_redis, restore) in faults.items():
        down = await asyncio.to_thread(break_redis)
        await console.eventually(
            lambda: shown(user, "live-interrupted"), what=f"the banner (Redis {fault})"
        )
        measured[f"banner shown ({fault})"] = elapsed(down, time.monotonic())
        if fault == "stopped":  # a page opened now cannot check its session: 503, not a 500
            opened = await user.http_client.get("/")
            assert (opened.status_code, opened.headers.get("Retry-After")) == (503, "5")
            assert "temporarily unavailable" in opened.text
        expected = int(online.text) + 3
        console.add_nodes(3, prefix=f"while-{fault}")  # committed; no event can be heard
        back = await asyncio.to_thread(restore)
        await console.eventually(
            lambda want=str(expected): online.text == want and not shown(user, "live-interrupted"),
            what=f"the page to reload once Redis is back ({fault})",
        )
        measured[f"page reloaded ({fault})"] = elapsed(back, time.monotonic())
    # No check of the page after the last restore: Redis came back empty, which ended the
    # session (see tests/test_auth.py), so the frame's next session check goes to the login.

    record_row(
        FaultRow(
            fault="Redis stopped, then frozen (SIGSTOP) — the console",
            expected="every page shows that live updates are interrupted; once Redis is back "
            "it reloads what it shows (events published meanwhile are lost)",
            observed='banner "Live updates interrupted — reconnecting…" shown in both cases; '
            "a page opened meanwhile answered 503 + Retry-After (a notice that reloads itself) "
            "instead of a 500; nodes added during the outage appeared without any event once "
            "Redis answered",
            recovery_s=measured,
            lost="nothing shown stale: the page reloaded from the database",
            command=COMMAND,
        ),
        tmp_path,
    )


# --- a Redis error nobody expected --------------------------------------------------------


def test_an_unexpected_redis_error_is_a_503_with_retry_after(tmp_path: Path) -> None:
    """A Redis call that no domain function wrapped still leaves as 503 + Retry-After JSON."""
    import redis
    from conftest import build_app

    app = build_app(tmp_path, f"sqlite:///{tmp_path / 'sentinel.db'}", "redis://127.0.0.1:1/0")

    def unwrapped() -> str:
        raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")

    app.add_url_rule("/api/v1/unwrapped-redis", "unwrapped_redis", unwrapped)
    response = app.test_client().get("/api/v1/unwrapped-redis")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert response.get_json() == {
        "error": "Redis unavailable; try again shortly",
        "code": "unavailable",
    }
