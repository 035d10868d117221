"""Events published after commit, the periodic schedule as data, jobs on a real RQ worker,
the CLI, and documentation that must match the code."""

from __future__ import annotations

import io
import json
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import ROOT, make_project
from rq import Queue, SimpleWorker
from sqlalchemy import select

from sentinel_cp import events, projects, scheduling
from sentinel_cp.audit import Actor
from sentinel_cp.db import db


def subscribe(url: str) -> Any:
    pubsub = redis.Redis.from_url(url).pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(events.CHANNEL)
    assert pubsub.get_message(timeout=2) is None  # the subscription is confirmed
    return pubsub


def next_event(pubsub: Any, project_id: str) -> dict[str, Any] | None:
    """The next event about `project_id` (other test processes may share the server)."""
    while (message := pubsub.get_message(timeout=1)) is not None:
        event = json.loads(message["data"])
        if event.get("project") == project_id:
            return event  # type: ignore[no-any-return]
    return None


def test_events_are_published_when_the_transaction_commits(app: Any, backend: Any) -> None:
    pubsub = subscribe(backend.redis_url)
    with app.app_context():
        project = projects.create_project(Actor.system("test"), slug="beta", name="Beta")
        project_id = str(project.id)
        assert next_event(pubsub, project_id) is None  # not before the commit
        db.session.commit()
    event = next_event(pubsub, project_id)
    assert event is not None
    assert (event["kind"], event["state"]) == ("audit", "project.created")


def test_a_rolled_back_change_publishes_nothing(app: Any, backend: Any) -> None:
    pubsub = subscribe(backend.redis_url)
    with app.app_context():
        project = projects.create_project(Actor.system("test"), slug="gamma", name="Gamma")
        project_id = str(project.id)
        db.session.rollback()
        db.session.commit()
    assert next_event(pubsub, project_id) is None


def test_a_savepoint_keeps_or_drops_its_audit_rows_events_and_jobs_together(
    app: Any, backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One on-commit queue for the three: what a rolled-back savepoint queued is gone (row,
    event and job alike), a released savepoint's entries wait for the outer commit (not sent
    when the savepoint is released), and nothing is sent before that commit."""
    from sentinel_cp import audit, jobqueue

    pushed: list[str] = []
    monkeypatch.setattr(jobqueue, "_backend", lambda _name, _args, job, _queue: pushed.append(job))
    pubsub = subscribe(backend.redis_url)
    with app.app_context():
        project = projects.create_project(Actor.system("test"), slug="delta", name="Delta")
        project_id = str(project.id)
        db.session.commit()
        assert next_event(pubsub, project_id) is not None  # project.created

        def change(tag: str) -> None:
            audit.record(Actor.system("t"), f"x.{tag}", resource_type="x", project_id=project.id)
            jobqueue.enqueue_after_commit("noop", job_id=f"job-{tag}")

        change("outer")
        with db.session.begin_nested():
            change("released")
        assert pushed == [] and next_event(pubsub, project_id) is None  # savepoint released
        savepoint = db.session.begin_nested()
        change("dropped")
        savepoint.rollback()
        assert pushed == [] and next_event(pubsub, project_id) is None
        db.session.commit()
        actions = [e["state"] for e in iter(lambda: next_event(pubsub, project_id), None)]
        chain = [r.action for r in db.session.scalars(
            select(audit.AuditLog).where(audit.AuditLog.project_id == project.id)
            .order_by(audit.AuditLog.seq)
        )]  # fmt: skip
    assert pushed == ["job-outer", "job-released"]
    assert actions == ["x.outer", "x.released"]
    assert chain == ["project.created", "x.outer", "x.released"]


def test_periodic_jobs_are_declared_once_as_data() -> None:
    from jobs.cron import PERIODIC_JOBS

    names = [f"{job.func.__module__}.{job.func.__name__}" for job in PERIODIC_JOBS]
    assert len(names) == len(set(names))
    assert "jobs.maintenance.record_beat" in names
    assert all(job.interval_s > 0 and job.timeout_s > 0 for job in PERIODIC_JOBS)


def test_beat_job_runs_on_a_real_worker_and_is_idempotent(
    app: Any, backend: Any, monkeypatch: Any
) -> None:
    from jobs.maintenance import record_beat

    monkeypatch.setenv("REDIS_URL", backend.redis_url)
    connection = redis.Redis.from_url(backend.redis_url)
    queue = Queue("maintenance", connection=connection)
    first = queue.enqueue(record_beat)
    second = queue.enqueue(record_beat)
    SimpleWorker([queue], connection=connection).work(burst=True)
    assert first.get_status() == second.get_status() == "finished"
    with app.app_context():
        assert scheduling.last_beat() == second.return_value()
    assert connection.ttl(scheduling.BEAT_KEY) > 0


def cli(
    monkeypatch: Any, backend: Any, tmp_path: Path, *args: str, stdin: str = ""
) -> tuple[int, str]:
    from sentinel_cp import cli as cli_module

    monkeypatch.setenv("DATABASE_URL", backend.database_url)
    monkeypatch.setenv("REDIS_URL", backend.redis_url)
    monkeypatch.setenv("SENTINEL_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SECRET_KEY_BASE", "s" * 40)
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    with pytest.raises(SystemExit) as exit_info:
        cli_module.main(list(args))
    return int(exit_info.value.code or 0), out.getvalue()


def test_cli_creates_a_user_with_the_password_from_stdin(
    app: Any, backend: Any, client: Any, monkeypatch: Any, tmp_path: Path
) -> None:
    code, out = cli(
        monkeypatch,
        backend,
        tmp_path,
        "create-user",
        "--email",
        "ops@example.com",
        "--role",
        "operator",
        stdin="a-long-password-1\n",
    )
    assert code == 0
    assert json.loads(out)["role"] == "operator"
    login = client.post(
        "/api/v1/session", json={"email": "ops@example.com", "password": "a-long-password-1"}
    )
    assert login.status_code == 200


def test_cli_refuses_a_short_password(
    app: Any, backend: Any, monkeypatch: Any, tmp_path: Path
) -> None:
    code, _ = cli(
        monkeypatch, backend, tmp_path, "create-user", "--email", "x@example.com", stdin="short\n"
    )
    assert code == 1


def test_docs_openapi_json_matches_the_generated_document(app: Any) -> None:
    from blueprints.openapi import build_document

    committed = json.loads((ROOT / "docs" / "openapi.json").read_text())
    assert committed == json.loads(json.dumps(build_document(app))), (
        "docs/openapi.json is stale: run `.venv/bin/sentinel-cp openapi > docs/openapi.json`"
    )


def test_readme_quick_start_is_exactly_make_run_and_make_test() -> None:
    readme = (ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    assert quick_start.strip().splitlines() == ["make run", "make test"]


def test_setup_created_project_is_visible_to_the_dashboard_query(app: Any) -> None:
    make_project(app, "delta")
    from console.frame import _project_slugs

    with app.app_context():
        assert _project_slugs() == ["delta"]


def test_revoking_a_node_key_publishes_a_node_event(app: Any, backend: Any) -> None:
    from sentinel_cp import nodes

    with app.app_context():
        project = projects.create_project(Actor.system("test"), slug="delta", name="Delta")
        node = nodes.Node(project_id=project.id, name="edge-1", key_hash="x" * 64)
        db.session.add(node)
        db.session.commit()
        project_id = str(project.id)
        pubsub = subscribe(backend.redis_url)
        nodes.revoke_credentials(Actor.system("test"), node)
        db.session.commit()
        seen = [event for _ in range(3) if (event := next_event(pubsub, project_id))]
    assert {"kind": "node", "id": str(node.id), "state": "key_revoked"} in [
        {k: e[k] for k in ("kind", "id", "state")} for e in seen
    ]


def test_every_audited_node_change_publishes_its_node_event_in_the_same_batch(
    app: Any, backend: Any
) -> None:
    """The poll cache, the heartbeat buffer and the console's fleet pages pass over the audit
    echo of a `node.*` action (`events.is_node_audit_echo`) because the change's own `node`
    event goes out after the same commit, in the same pipelined publish. Each audited node
    action here must show that: an echo never arrives in a batch without a node event."""
    from unittest import mock

    from bundle_helpers import operator_key, register_node, setup_project
    from conftest import bearer

    from sentinel_cp import nodes
    from sentinel_cp.db import utcnow

    setup_project(app)
    key = operator_key(app)
    client = app.test_client()
    batches: list[list[dict[str, Any]]] = []
    with mock.patch("sentinel_cp.events.send", lambda payloads: batches.append(list(payloads))):
        node_id, node_key = register_node(client, "edge-pair")
        heartbeat = f"/api/v1/nodes/{node_id}/heartbeat"
        beat = {"X-Sentinel-Node-Key": node_key}
        with app.app_context():
            assert nodes.mark_stale_nodes(now=utcnow() + timedelta(hours=1)) == 1
            db.session.commit()
        assert client.post(heartbeat, json={}, headers=beat).status_code == 200  # back online
        base = f"/api/v1/projects/default/nodes/{node_id}"
        patched = client.patch(base, json={"labels": {"tier": "edge"}}, headers=bearer(key))
        assert patched.status_code == 200, patched.get_json()
        assert client.post(f"{base}/revoke-key", json={}, headers=bearer(key)).status_code == 200
        node_id, _ = register_node(client, "edge-pair")  # re-registered after the revocation
        deleted = client.delete(f"/api/v1/projects/default/nodes/{node_id}", headers=bearer(key))
        assert deleted.status_code == 200, deleted.get_json()
    seen: set[str] = set()
    for batch in batches:
        echoes = [e for e in batch if events.is_node_audit_echo(e)]
        node_events = [e for e in batch if e["kind"] == "node"]
        assert len(node_events) >= len(echoes), batch
        seen |= {e["state"] for e in echoes}
    assert seen >= {
        "node.registered",
        "node.offline",
        "node.online",
        "node.labels_updated",
        "node.key_revoked",
        "node.re_registered",
        "node.deleted",
    }
