"""The audit log: hash chain tamper detection, same-transaction writes, concurrent appends,
listing with filters and cursors, and export.

Every test taking `app`/`client` runs on both backends (SQLite + fakeredis, PostgreSQL + Redis).
Time is injected through the domain functions' `now=` arguments; tampering is plain SQL, as an
attacker with database access would do it.
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from conftest import bearer, make_key, make_user
from sqlalchemy import bindparam, select, text

from sentinel_cp.db import queued as queued_for_commit

T0 = datetime(2030, 1, 1, tzinfo=UTC)
ADMIN = "admin@example.com"


# --- helpers ------------------------------------------------------------------------------


def admin_key(app: Any, *, project: str | None = None) -> dict[str, str]:
    """An admin user (idempotent) and a key with audit + project scopes."""
    from sqlalchemy import select

    from sentinel_cp import accounts
    from sentinel_cp.db import db

    with app.app_context():
        exists = db.session.scalar(select(accounts.User.id).where(accounts.User.email == ADMIN))
    if exists is None:
        make_user(app, ADMIN)
    return bearer(make_key(app, ADMIN, ["audit:read", "projects:admin"], project=project))


def seed_project(app: Any, slug: str = "alpha") -> dict[str, str]:
    """A project whose chain holds 5 rows at known times, actors, actions and resources.

    seq 1 project.created   system:test          project:<id>  T0
    seq 2 node.registered   node n1 "node-1"     node:n1       T0+1h
    seq 3 node.updated      user u1 "ops@…"      node:n1       T0+2h
    seq 4 rollout.paused    user u1 "ops@…"      rollout:r1    T0+3h
    seq 5 rollout.resumed   api_key k1 "ci"      rollout:r1    T0+4h
    """
    from sentinel_cp import audit, projects
    from sentinel_cp.audit import Actor
    from sentinel_cp.db import db

    user = Actor("user", "u1", "ops@example.com")
    with app.app_context():
        project = projects.create_project(
            Actor.system("test"), slug=slug, name=slug.title(), now=T0
        )
        db.session.commit()
        pid = project.id
        entries = [
            (Actor("node", "n1", "node-1"), "node.registered", "node", "n1"),
            (user, "node.updated", "node", "n1"),
            (user, "rollout.paused", "rollout", "r1"),
            (Actor("api_key", "k1", "ci"), "rollout.resumed", "rollout", "r1"),
        ]
        for hour, (actor, action, rtype, rid) in enumerate(entries, start=1):
            audit.record(
                actor,
                action,
                resource_type=rtype,
                resource_id=rid,
                project_id=pid,
                changes={"step": hour, "labels": {"b": 2, "a": 1}},
                metadata={"reason": f"because {hour}"},
                now=T0 + timedelta(hours=hour),
            )
            db.session.commit()
    # The node's row (seq 2) is linked by the background linker (PostgreSQL), and so is any
    # row committed while that linker held the chain head.
    assert audit.linker.wait_idle()
    return {"slug": slug, "id": str(pid)}


def chain_rows(app: Any, chain: str) -> list[dict[str, Any]]:
    """The rows of one chain in seq order, read with plain SQL."""
    from sentinel_cp.db import db

    with app.app_context():
        result = (
            db.session.execute(
                text("SELECT id, seq, action FROM audit_logs WHERE chain = :chain ORDER BY seq"),
                {"chain": chain},
            )
            .mappings()
            .all()
        )
        db.session.commit()
        return [
            {"id": str(uuid.UUID(str(r["id"]))), "seq": r["seq"], "action": r["action"]}
            for r in result
        ]


def sql(app: Any, statement: Any, **params: Any) -> int:
    """Run one tampering statement and commit; returns the affected row count."""
    from sentinel_cp.db import db

    with app.app_context():
        result = db.session.execute(statement, params)
        db.session.commit()
        return int(result.rowcount)


def row_id_param(app: Any, row_id: str) -> Any:
    """The id as the database stores it (native uuid on PostgreSQL, 32 hex chars on SQLite)."""
    from sentinel_cp.db import db

    with app.app_context():
        dialect = db.engine.dialect.name
    return uuid.UUID(row_id) if dialect == "postgresql" else uuid.UUID(row_id).hex


def delete_row(app: Any, row_id: str) -> None:
    count = sql(app, text("DELETE FROM audit_logs WHERE id = :id"), id=row_id_param(app, row_id))
    assert count == 1


def verify(client: Any, headers: dict[str, str], slug: str | None) -> dict[str, Any]:
    url = f"/api/v1/projects/{slug}/audit/verify" if slug else "/api/v1/audit/verify"
    response = client.get(url, headers=headers)
    assert response.status_code == 200, response.get_json()
    return response.get_json()  # type: ignore[no-any-return]


# --- tamper detection ---------------------------------------------------------------------


def test_untouched_project_chain_is_valid_and_counts_every_row(app: Any, client: Any) -> None:
    headers = admin_key(app)
    project = seed_project(app)
    assert verify(client, headers, "alpha") == {
        "valid": True,
        "checked": 5,
        "first_bad_id": None,
        "reason": None,
    }
    assert len(chain_rows(app, project["id"])) == 5


def test_editing_action_via_sql_is_reported_at_that_row(app: Any, client: Any) -> None:
    headers = admin_key(app)
    project = seed_project(app)
    target = chain_rows(app, project["id"])[2]
    sql(
        app,
        text("UPDATE audit_logs SET action = 'rollout.approved' WHERE id = :id"),
        id=row_id_param(app, target["id"]),
    )
    verdict = verify(client, headers, "alpha")
    assert verdict["valid"] is False
    assert verdict["first_bad_id"] == target["id"]
    assert verdict["checked"] == 3
    assert "hash" in verdict["reason"]


def test_editing_changes_via_sql_is_reported_at_that_row(app: Any, client: Any) -> None:
    from sentinel_cp.db import JSONType

    headers = admin_key(app)
    project = seed_project(app)
    target = chain_rows(app, project["id"])[1]
    statement = text("UPDATE audit_logs SET changes = :changes WHERE id = :id").bindparams(
        bindparam("changes", type_=JSONType)
    )
    sql(
        app,
        statement,
        changes={"step": 99, "labels": {"a": 1, "b": 2}},
        id=row_id_param(app, target["id"]),
    )
    verdict = verify(client, headers, "alpha")
    assert verdict["valid"] is False
    assert verdict["first_bad_id"] == target["id"]


def test_editing_created_at_via_sql_is_reported_at_that_row(app: Any, client: Any) -> None:
    from sentinel_cp.db import UTCDateTime

    headers = admin_key(app)
    project = seed_project(app)
    target = chain_rows(app, project["id"])[3]
    statement = text("UPDATE audit_logs SET created_at = :ts WHERE id = :id").bindparams(
        bindparam("ts", type_=UTCDateTime())
    )
    sql(app, statement, ts=T0 + timedelta(hours=3, seconds=1), id=row_id_param(app, target["id"]))
    verdict = verify(client, headers, "alpha")
    assert verdict["valid"] is False
    assert verdict["first_bad_id"] == target["id"]


def test_editing_a_row_and_recomputing_its_hash_breaks_the_next_link(app: Any, client: Any) -> None:
    """An attacker who re-hashes the edited row is caught by the next row's prev_hash."""
    from sqlalchemy import select

    from sentinel_cp import audit
    from sentinel_cp.db import db

    headers = admin_key(app)
    project = seed_project(app)
    rows = chain_rows(app, project["id"])
    with app.app_context():
        row = db.session.scalar(
            select(audit.AuditLog).where(audit.AuditLog.id == uuid.UUID(rows[1]["id"]))
        )
        row.actor_label = "somebody-else"
        row.entry_hash = audit.compute_hash(row)
        db.session.commit()
    verdict = verify(client, headers, "alpha")
    assert verdict["valid"] is False
    assert verdict["first_bad_id"] == rows[2]["id"]
    assert "previous" in verdict["reason"]


def test_deleting_a_middle_row_is_reported_at_the_row_after_it(app: Any, client: Any) -> None:
    headers = admin_key(app)
    project = seed_project(app)
    rows = chain_rows(app, project["id"])
    delete_row(app, rows[2]["id"])
    verdict = verify(client, headers, "alpha")
    assert verdict["valid"] is False
    assert verdict["first_bad_id"] == rows[3]["id"]
    assert "missing" in verdict["reason"]


def test_deleting_the_newest_row_is_detected_as_deleted_rows(app: Any, client: Any) -> None:
    headers = admin_key(app)
    project = seed_project(app)
    rows = chain_rows(app, project["id"])
    delete_row(app, rows[-1]["id"])
    verdict = verify(client, headers, "alpha")
    assert verdict["valid"] is False
    assert verdict["checked"] == 4
    assert "deleted" in verdict["reason"]


def test_deleting_the_first_row_is_reported_at_the_second(app: Any, client: Any) -> None:
    headers = admin_key(app)
    project = seed_project(app)
    rows = chain_rows(app, project["id"])
    delete_row(app, rows[0]["id"])
    verdict = verify(client, headers, "alpha")
    assert verdict["valid"] is False
    assert verdict["first_bad_id"] == rows[1]["id"]


def test_tampering_one_project_leaves_another_projects_chain_valid(app: Any, client: Any) -> None:
    headers = admin_key(app)
    alpha = seed_project(app, "alpha")
    seed_project(app, "beta")
    target = chain_rows(app, alpha["id"])[1]
    sql(
        app,
        text("UPDATE audit_logs SET action = 'x.y' WHERE id = :id"),
        id=row_id_param(app, target["id"]),
    )
    assert verify(client, headers, "alpha")["valid"] is False
    assert verify(client, headers, "beta") == {
        "valid": True,
        "checked": 5,
        "first_bad_id": None,
        "reason": None,
    }


def test_untouched_global_chain_is_valid_and_counts_every_row(app: Any, client: Any) -> None:
    from sentinel_cp import audit

    headers = admin_key(app)  # user.created + api_key.created (at least) on the global chain
    make_user(app, "second@example.com", role="reader")
    rows = chain_rows(app, audit.GLOBAL_CHAIN)
    assert len(rows) >= 3
    assert verify(client, headers, None) == {
        "valid": True,
        "checked": len(rows),
        "first_bad_id": None,
        "reason": None,
    }


def test_editing_a_global_row_via_sql_is_reported_at_that_row(app: Any, client: Any) -> None:
    from sentinel_cp import audit

    headers = admin_key(app)
    make_user(app, "second@example.com", role="reader")
    make_user(app, "third@example.com", role="reader")
    rows = chain_rows(app, audit.GLOBAL_CHAIN)
    target = rows[1]
    sql(
        app,
        text("UPDATE audit_logs SET action = 'user.deleted' WHERE id = :id"),
        id=row_id_param(app, target["id"]),
    )
    verdict = verify(client, headers, None)
    assert verdict["valid"] is False
    assert verdict["first_bad_id"] == target["id"]


def test_deleting_a_global_middle_row_is_reported_at_the_row_after_it(
    app: Any, client: Any
) -> None:
    from sentinel_cp import audit

    headers = admin_key(app)
    make_user(app, "second@example.com", role="reader")
    make_user(app, "third@example.com", role="reader")
    rows = chain_rows(app, audit.GLOBAL_CHAIN)
    delete_row(app, rows[1]["id"])
    verdict = verify(client, headers, None)
    assert verdict["valid"] is False
    assert verdict["first_bad_id"] == rows[2]["id"]


def test_deleting_the_newest_global_row_is_detected(app: Any, client: Any) -> None:
    from sentinel_cp import audit

    headers = admin_key(app)
    make_user(app, "second@example.com", role="reader")
    rows = chain_rows(app, audit.GLOBAL_CHAIN)
    delete_row(app, rows[-1]["id"])
    verdict = verify(client, headers, None)
    assert verdict["valid"] is False
    assert "deleted" in verdict["reason"]


def test_global_verify_is_hidden_from_a_project_bound_key(app: Any, client: Any) -> None:
    seed_project(app)
    headers = admin_key(app, project="alpha")
    assert client.get("/api/v1/audit/verify", headers=headers).status_code == 404
    assert client.get("/api/v1/audit", headers=headers).status_code == 404
    assert verify(client, headers, "alpha")["valid"] is True


def test_verify_needs_the_audit_read_scope(app: Any, client: Any) -> None:
    seed_project(app)
    make_user(app, ADMIN)
    headers = bearer(make_key(app, ADMIN, ["nodes:read"]))
    response = client.get("/api/v1/projects/alpha/audit/verify", headers=headers)
    assert response.status_code == 403
    assert response.get_json()["required"] == "audit:read"


# --- CLI ----------------------------------------------------------------------------------


@pytest.fixture
def cli_env(backend: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point `sentinel-cp` (which builds its own app from the environment) at the test backend."""
    monkeypatch.setenv("SENTINEL_ENV", "test")
    monkeypatch.setenv("DATABASE_URL", backend.database_url)
    monkeypatch.setenv("SENTINEL_DATA_DIR", str(tmp_path / "cli"))
    monkeypatch.setenv("SECRET_KEY_BASE", "test-secret-" + "x" * 40)
    monkeypatch.setenv("REDIS_URL", backend.redis_url)


def run_cli(argv: list[str]) -> int:
    from sentinel_cp import cli

    with pytest.raises(SystemExit) as exc_info:
        cli.main(argv)
    return int(exc_info.value.code or 0)


def test_cli_audit_verify_exits_0_for_an_untouched_project_chain(
    app: Any, cli_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    seed_project(app)
    assert run_cli(["audit", "verify", "--project", "alpha"]) == 0
    verdict = json.loads(capsys.readouterr().out)
    assert verdict == {
        "chain": "alpha",
        "valid": True,
        "checked": 5,
        "first_bad_id": None,
        "reason": None,
    }


def test_cli_audit_verify_exits_1_and_names_the_edited_row(
    app: Any, cli_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    project = seed_project(app)
    target = chain_rows(app, project["id"])[2]
    sql(
        app,
        text("UPDATE audit_logs SET action = 'rollout.approved' WHERE id = :id"),
        id=row_id_param(app, target["id"]),
    )
    assert run_cli(["audit", "verify", "--project", "alpha"]) == 1
    out = capsys.readouterr().out
    assert target["id"] in out
    assert json.loads(out)["first_bad_id"] == target["id"]


def test_cli_audit_verify_exits_1_for_a_deleted_middle_row(
    app: Any, cli_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    project = seed_project(app)
    rows = chain_rows(app, project["id"])
    delete_row(app, rows[1]["id"])
    assert run_cli(["audit", "verify", "--project", "alpha"]) == 1
    assert json.loads(capsys.readouterr().out)["first_bad_id"] == rows[2]["id"]


def test_cli_audit_verify_checks_the_global_chain_by_default(
    app: Any, cli_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    from sentinel_cp import audit

    make_user(app, ADMIN)
    make_user(app, "second@example.com", role="reader")
    assert run_cli(["audit", "verify"]) == 0
    assert json.loads(capsys.readouterr().out)["valid"] is True
    rows = chain_rows(app, audit.GLOBAL_CHAIN)
    sql(
        app,
        text("UPDATE audit_logs SET actor_label = 'mallory' WHERE id = :id"),
        id=row_id_param(app, rows[0]["id"]),
    )
    assert run_cli(["audit", "verify"]) == 1
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["chain"] == "global"
    assert verdict["first_bad_id"] == rows[0]["id"]


def test_cli_audit_verify_of_an_unknown_project_exits_1_with_a_message(
    app: Any, cli_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(["audit", "verify", "--project", "nope"]) == 1
    assert "nope" in capsys.readouterr().err


# --- same transaction ---------------------------------------------------------------------


def _head(chain: str) -> tuple[int, str] | None:
    from sentinel_cp import audit
    from sentinel_cp.db import db

    head = db.session.get(audit.AuditChainHead, chain)
    return (head.seq, head.last_hash) if head else None


def test_rolled_back_update_leaves_no_audit_row_and_no_head_advance(app: Any) -> None:
    from sqlalchemy import func, select

    from sentinel_cp import audit, projects
    from sentinel_cp.audit import Actor
    from sentinel_cp.db import db

    project = seed_project(app)
    with app.app_context():
        before = _head(project["id"])
        assert before is not None and before[0] == 5
        row = projects.get_project("alpha")
        projects.update_project(Actor.system("test"), row, name="Renamed")
        db.session.flush()
        # Queued on the session, linked only at commit: the head is not locked yet.
        queued = queued_for_commit(db.session(), audit.PENDING_KEY)
        assert [r.action for r in queued] == ["project.updated"]
        assert _head(project["id"]) == before
        db.session.rollback()
    with app.app_context():
        assert (
            db.session.scalar(
                select(func.count())
                .select_from(audit.AuditLog)
                .where(audit.AuditLog.action == "project.updated")
            )
            == 0
        )
        assert _head(project["id"]) == before
        assert projects.get_project("alpha").name == "Alpha"
        assert audit.verify_chain(uuid.UUID(project["id"])).valid
        # The next committed write takes seq 6: no gap left by the rolled-back one.
        projects.update_project(Actor.system("test"), projects.get_project("alpha"), name="B")
        db.session.commit()
        assert [r["seq"] for r in chain_rows(app, project["id"])] == [1, 2, 3, 4, 5, 6]
        assert audit.verify_chain(uuid.UUID(project["id"])).valid


def test_rolled_back_create_leaves_neither_project_nor_audit_row_nor_head(app: Any) -> None:
    from sqlalchemy import func, select

    from sentinel_cp import audit, projects
    from sentinel_cp.audit import Actor
    from sentinel_cp.db import db

    with app.app_context():
        project = projects.create_project(Actor.system("test"), slug="ghost", name="Ghost")
        pid = project.id
        db.session.rollback()
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(audit.AuditLog)) == 0
        assert db.session.scalar(select(func.count()).select_from(projects.Project)) == 0
        assert _head(str(pid)) is None


def test_rolled_back_record_does_not_advance_the_global_head(app: Any) -> None:
    from sentinel_cp import audit
    from sentinel_cp.audit import Actor
    from sentinel_cp.db import db

    make_user(app, ADMIN)
    with app.app_context():
        before = _head(audit.GLOBAL_CHAIN)
        audit.record(Actor.system("test"), "user.updated", resource_type="user")
        db.session.rollback()
    with app.app_context():
        assert _head(audit.GLOBAL_CHAIN) == before
        assert audit.verify_chain(None).valid


# --- concurrency --------------------------------------------------------------------------


def test_concurrent_appends_to_one_chain_are_gap_free_and_valid(app: Any) -> None:
    """8 threads x 10 committed records on one project chain: seq 1..81, a valid chain."""
    from sentinel_cp import audit
    from sentinel_cp.audit import Actor
    from sentinel_cp.db import db

    project = seed_project(app)  # 5 rows already
    pid = uuid.UUID(project["id"])
    threads_n, per_thread = 8, 10
    barrier = threading.Barrier(threads_n)
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            with app.app_context():
                barrier.wait(timeout=30)
                for i in range(per_thread):
                    audit.record(
                        Actor.system(f"worker-{n}"),
                        "test.appended",
                        resource_type="test",
                        resource_id=f"{n}-{i}",
                        project_id=pid,
                        now=T0 + timedelta(days=1, seconds=n * per_thread + i),
                    )
                    db.session.commit()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a writer hung"
    assert errors == [], f"concurrent writers failed: {errors[:3]!r}"

    total = 5 + threads_n * per_thread
    assert audit.linker.wait_idle()  # what committed while a writer linked is left to it
    rows = chain_rows(app, project["id"])
    assert [r["seq"] for r in rows] == list(range(1, total + 1))
    appended = [r for r in rows if r["action"] == "test.appended"]
    assert len(appended) == threads_n * per_thread
    with app.app_context():
        verdict = audit.verify_chain(pid)
        assert verdict.valid, verdict
        assert verdict.checked == total
        assert _head(project["id"])[0] == total  # type: ignore[index]


# --- linking: at commit on SQLite, right after it on PostgreSQL ------------------------------


def _record_one(app: Any, pid: uuid.UUID, resource_id: str, actor: Any = None) -> None:
    from sentinel_cp import audit
    from sentinel_cp.audit import Actor
    from sentinel_cp.db import db

    with app.app_context():
        audit.record(
            actor or Actor.system("test"),
            "test.linked",
            resource_type="test",
            resource_id=resource_id,
            project_id=pid,
            now=T0 + timedelta(days=2),
        )
        db.session.commit()


def _dialect(app: Any) -> str:
    from sentinel_cp.db import db

    with app.app_context():
        return str(db.engine.dialect.name)


@contextlib.contextmanager
def _committed_while_the_head_is_held(
    app: Any, pid: uuid.UUID, resource_id: str, actor: Any = None
) -> Iterator[None]:
    """One audited change committed (by a thread of its own) while another transaction holds
    the chain head's row lock, which it keeps for the body of the `with` (PostgreSQL)."""
    from sentinel_cp.db import db

    with app.app_context():
        holder = db.engine.connect()
        holder.execute(
            text("SELECT seq FROM audit_chain_heads WHERE chain = :c FOR UPDATE"), {"c": str(pid)}
        )
        try:
            writer = threading.Thread(target=_record_one, args=(app, pid, resource_id, actor))
            writer.start()
            writer.join(timeout=30)
            assert not writer.is_alive(), "the audited commit waited for the chain head"
            yield
        finally:
            holder.rollback()
            holder.close()


def test_a_commit_never_waits_for_a_held_chain_head_on_postgres(app: Any) -> None:
    """On PostgreSQL a request's transaction does not touch the chain head: with the head
    locked by another transaction the audited commit returns, its row unlinked and not yet
    listed or verified; the next linker links it. On SQLite the row is linked at commit."""
    from sentinel_cp import audit
    from sentinel_cp.db import db

    project = seed_project(app)
    pid = uuid.UUID(project["id"])
    if _dialect(app) == "sqlite":
        _record_one(app, pid, "sqlite")
        assert [r["seq"] for r in chain_rows(app, project["id"])] == [1, 2, 3, 4, 5, 6]
        return
    with app.app_context():
        with _committed_while_the_head_is_held(app, pid, "while-held"):
            rows = chain_rows(app, project["id"])
            assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5, None]
            verdict = audit.verify_chain(pid)
            assert (verdict.valid, verdict.checked) == (True, 5)
            page = audit.list_entries(pid, audit.AuditFilter(), limit=50, cursor=None)
            assert page.total == 5 and "test.linked" not in [r.action for r in page.items]
            assert audit.link_chain(db.engine, project["id"]) == 0  # held elsewhere: skipped
        assert audit.link_all(db.engine) == 1
        assert audit.link_all(db.engine) == 0  # nothing left: a repeat does nothing
        db.session.rollback()
        verdict = audit.verify_chain(pid)
        assert (verdict.valid, verdict.checked) == (True, 6)
    assert [r["seq"] for r in chain_rows(app, project["id"])] == [1, 2, 3, 4, 5, 6]


def test_a_commit_of_node_rows_is_linked_by_the_audit_linker_which_then_says_so(app: Any) -> None:
    """On PostgreSQL a commit whose every row a node recorded (status reports) is linked by the
    process's audit linker thread, which then publishes `audit.linked` for the chain; a commit
    with anyone else's row is linked by its committer, before it returns. With the chain head
    held elsewhere the node's commit returns at once and its row waits for the holder (here:
    the next linker after it let go)."""
    from sentinel_cp import audit, events
    from sentinel_cp.audit import Actor

    project = seed_project(app)
    pid = uuid.UUID(project["id"])
    node = Actor("node", str(uuid.uuid4()), "edge-1")
    if _dialect(app) == "sqlite":
        _record_one(app, pid, "sqlite", node)
        assert [r["seq"] for r in chain_rows(app, project["id"])] == [1, 2, 3, 4, 5, 6]
        return
    listener = redis.Redis.from_url(app.config["REDIS_URL"]).pubsub(ignore_subscribe_messages=True)
    listener.subscribe(events.CHANNEL)
    try:
        with _committed_while_the_head_is_held(app, pid, "held", node):
            assert audit.linker.wait_idle()
            assert [r["seq"] for r in chain_rows(app, project["id"])][-1] is None
        _record_one(app, pid, "after", node)
        assert audit.linker.wait_idle()
        assert [r["seq"] for r in chain_rows(app, project["id"])] == [1, 2, 3, 4, 5, 6, 7]
        linked = []
        deadline = time.monotonic() + 10
        while not linked and time.monotonic() < deadline:
            message = listener.get_message(timeout=1)  # None also for the subscription's own
            if message is not None and events.is_audit_linked(json.loads(message["data"])):
                linked.append(json.loads(message["data"]))
        assert linked == [events.event_payload(pid, "audit", None, "audit.linked")]
        # An operator's row: linked by its own commit, with no linker to wait for.
        _record_one(app, pid, "operator", Actor("user", "u1", "ops@example.com"))
        assert [r["seq"] for r in chain_rows(app, project["id"])] == [1, 2, 3, 4, 5, 6, 7, 8]
        with app.app_context():
            verdict = audit.verify_chain(pid)
            assert (verdict.valid, verdict.checked) == (True, 8)
    finally:
        listener.close()


def test_a_request_links_one_round_and_leaves_what_came_meanwhile_to_the_linker(
    app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator's commit links its own row, then stops: a commit that came in meanwhile
    (another thread telling it to look again) is linked by the audit linker thread, not by
    the request, which would otherwise keep linking for as long as others commit."""
    from sentinel_cp import audit

    project = seed_project(app)
    pid = uuid.UUID(project["id"])
    if _dialect(app) == "sqlite":
        return  # linked inside the commit; no linker involved
    real_link_rows = audit._link_rows
    rounds: list[str] = []

    def meanwhile(bind: Any, chain: str, *, once: bool = False) -> tuple[int, bool]:
        rounds.append(threading.current_thread().name)
        if len(rounds) == 1:
            audit._linking[chain] = True  # what a commit of another thread here does
        return real_link_rows(bind, chain, once=once)

    monkeypatch.setattr(audit, "_link_rows", meanwhile)
    _record_one(app, pid, "operator", audit.Actor("user", "u1", "ops@example.com"))
    assert [r["seq"] for r in chain_rows(app, project["id"])] == [1, 2, 3, 4, 5, 6]
    assert audit.linker.wait_idle()
    assert rounds == [threading.current_thread().name, "audit-linker"]
    assert not audit._linking


def test_a_failed_link_keeps_the_change_and_the_sweep_links_it(
    app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A linker that fails after the commit (or a process that dies there) loses nothing:
    the change and its row are committed, and the cron's sweep links the row later."""
    from jobs import maintenance
    from sentinel_cp import audit
    from sentinel_cp.db import db

    project = seed_project(app)
    pid = uuid.UUID(project["id"])
    real_link_chain = audit.link_chain

    def broken(bind: Any, chain: str, *, hand_off: bool = False) -> int:
        raise RuntimeError("connection lost while linking")

    monkeypatch.setattr(audit, "link_chain", broken)
    _record_one(app, pid, "orphan")  # no exception reaches the committer
    monkeypatch.setattr(audit, "link_chain", real_link_chain)
    expected = [1, 2, 3, 4, 5, 6] if _dialect(app) == "sqlite" else [1, 2, 3, 4, 5, None]
    assert [r["seq"] for r in chain_rows(app, project["id"])] == expected
    with app.app_context():
        linked = audit.link_all(db.engine)
    assert linked == (0 if _dialect(app) == "sqlite" else 1)
    assert [r["seq"] for r in chain_rows(app, project["id"])] == [1, 2, 3, 4, 5, 6]
    with app.app_context():
        verdict = audit.verify_chain(pid)
        assert (verdict.valid, verdict.checked) == (True, 6)
    monkeypatch.setattr(maintenance, "app_context", lambda: app.app_context())
    assert maintenance.link_audit_chains() == 0  # the cron's job: nothing left to link


# --- listing ------------------------------------------------------------------------------


def listing(client: Any, headers: dict[str, str], **params: Any) -> Any:
    return client.get("/api/v1/projects/alpha/audit", headers=headers, query_string=params)


def actions(response: Any) -> list[str]:
    assert response.status_code == 200, response.get_json()
    return [item["action"] for item in response.get_json()["items"]]


def test_listing_is_newest_first_with_total(app: Any, client: Any) -> None:
    headers = admin_key(app)
    seed_project(app)
    response = listing(client, headers)
    assert actions(response) == [
        "rollout.resumed",
        "rollout.paused",
        "node.updated",
        "node.registered",
        "project.created",
    ]
    body = response.get_json()
    assert body["total"] == 5
    assert body["next_cursor"] is None
    assert [item["seq"] for item in body["items"]] == [5, 4, 3, 2, 1]


def test_listing_entries_carry_actor_resource_changes_and_hashes(app: Any, client: Any) -> None:
    headers = admin_key(app)
    seed_project(app)
    item = listing(client, headers).get_json()["items"][1]
    assert item["actor"] == {"type": "user", "id": "u1", "label": "ops@example.com"}
    assert item["resource"] == {"type": "rollout", "id": "r1"}
    assert item["changes"] == {"step": 3, "labels": {"a": 1, "b": 2}}
    assert item["metadata"] == {"reason": "because 3"}
    assert item["created_at"].startswith("2030-01-01T03:00:00")
    assert len(item["entry_hash"]) == 64 and len(item["prev_hash"]) == 64


def test_listing_filters_by_actor_id(app: Any, client: Any) -> None:
    headers = admin_key(app)
    seed_project(app)
    assert actions(listing(client, headers, actor="u1")) == ["rollout.paused", "node.updated"]


def test_listing_filters_by_actor_label(app: Any, client: Any) -> None:
    headers = admin_key(app)
    seed_project(app)
    assert actions(listing(client, headers, actor="node-1")) == ["node.registered"]
    assert actions(listing(client, headers, actor="nobody")) == []


def test_listing_filters_by_exact_action(app: Any, client: Any) -> None:
    headers = admin_key(app)
    seed_project(app)
    assert actions(listing(client, headers, action="rollout.paused")) == ["rollout.paused"]
    assert actions(listing(client, headers, action="rollout")) == []


def test_listing_filters_by_action_prefix(app: Any, client: Any) -> None:
    headers = admin_key(app)
    seed_project(app)
    assert actions(listing(client, headers, action="rollout.*")) == [
        "rollout.resumed",
        "rollout.paused",
    ]
    assert actions(listing(client, headers, action="node.*")) == ["node.updated", "node.registered"]


def test_action_prefix_does_not_treat_underscore_as_a_wildcard(app: Any, client: Any) -> None:
    from sentinel_cp import audit
    from sentinel_cp.audit import Actor
    from sentinel_cp.db import db

    headers = admin_key(app)
    project = seed_project(app)
    with app.app_context():
        audit.record(
            Actor.system("t"),
            "nodeXkey.rotated",
            resource_type="node",
            project_id=uuid.UUID(project["id"]),
        )
        audit.record(
            Actor.system("t"),
            "node_key.rotated",
            resource_type="node",
            project_id=uuid.UUID(project["id"]),
        )
        db.session.commit()
    assert actions(listing(client, headers, action="node_key.*")) == ["node_key.rotated"]


def test_listing_filters_by_resource_type(app: Any, client: Any) -> None:
    headers = admin_key(app)
    seed_project(app)
    assert actions(listing(client, headers, resource="rollout")) == [
        "rollout.resumed",
        "rollout.paused",
    ]
    assert actions(listing(client, headers, resource="project")) == ["project.created"]


def test_listing_filters_by_resource_type_and_id(app: Any, client: Any) -> None:
    headers = admin_key(app)
    seed_project(app)
    assert actions(listing(client, headers, resource="node:n1")) == [
        "node.updated",
        "node.registered",
    ]
    assert actions(listing(client, headers, resource="node:n2")) == []
    assert actions(listing(client, headers, resource="rollout:n1")) == []


def test_listing_since_is_inclusive(app: Any, client: Any) -> None:
    headers = admin_key(app)
    seed_project(app)
    assert actions(listing(client, headers, since="2030-01-01T02:00:00Z")) == [
        "rollout.resumed",
        "rollout.paused",
        "node.updated",
    ]


def test_listing_until_is_exclusive(app: Any, client: Any) -> None:
    headers = admin_key(app)
    seed_project(app)
    assert actions(listing(client, headers, until="2030-01-01T02:00:00+00:00")) == [
        "node.registered",
        "project.created",
    ]


def test_listing_since_and_until_combine_and_naive_times_are_utc(app: Any, client: Any) -> None:
    headers = admin_key(app)
    seed_project(app)
    assert actions(
        listing(client, headers, since="2030-01-01T01:00:00", until="2030-01-01T03:00:00")
    ) == ["node.updated", "node.registered"]


def test_listing_since_honours_a_non_utc_offset(app: Any, client: Any) -> None:
    headers = admin_key(app)
    seed_project(app)
    # 05:00+02:00 is 03:00Z.
    assert actions(listing(client, headers, since="2030-01-01T05:00:00+02:00")) == [
        "rollout.resumed",
        "rollout.paused",
    ]


def test_listing_filters_combine(app: Any, client: Any) -> None:
    headers = admin_key(app)
    seed_project(app)
    assert actions(
        listing(client, headers, actor="u1", resource="rollout", action="rollout.*")
    ) == ["rollout.paused"]
    assert listing(client, headers, actor="u1").get_json()["total"] == 2


def test_listing_unknown_filter_parameter_is_422(app: Any, client: Any) -> None:
    headers = admin_key(app)
    seed_project(app)
    response = listing(client, headers, colour="red")
    assert response.status_code == 422
    assert "query.colour" in response.get_json()["fields"]


def test_listing_malformed_since_is_422_naming_it(app: Any, client: Any) -> None:
    headers = admin_key(app)
    seed_project(app)
    response = listing(client, headers, since="yesterday")
    assert response.status_code == 422
    assert "query.since" in response.get_json()["fields"]


def test_listing_malformed_action_and_resource_are_422(app: Any, client: Any) -> None:
    headers = admin_key(app)
    seed_project(app)
    assert listing(client, headers, action="Rollout Paused").status_code == 422
    assert listing(client, headers, action="*").status_code == 422
    assert listing(client, headers, resource="node:a b").status_code == 422


def test_listing_limit_out_of_range_is_422(app: Any, client: Any) -> None:
    headers = admin_key(app)
    seed_project(app)
    assert listing(client, headers, limit=0).status_code == 422
    assert listing(client, headers, limit=501).status_code == 422


def walk(client: Any, headers: dict[str, str], **params: Any) -> list[list[int]]:
    pages: list[list[int]] = []
    cursor = None
    while True:
        query = dict(params, limit=2)
        if cursor:
            query["cursor"] = cursor
        body = listing(client, headers, **query).get_json()
        pages.append([item["seq"] for item in body["items"]])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 20, "pagination does not terminate"


def test_cursor_pagination_walks_every_row_exactly_once(app: Any, client: Any) -> None:
    headers = admin_key(app)
    seed_project(app)
    assert walk(client, headers) == [[5, 4], [3, 2], [1]]


def test_cursor_pagination_with_an_exact_multiple_has_no_empty_last_page(
    app: Any, client: Any
) -> None:
    headers = admin_key(app)
    seed_project(app)
    assert walk(client, headers, action="node.*") == [[3, 2]]
    assert walk(client, headers, since="2030-01-01T00:30:00Z") == [[5, 4], [3, 2]]


def test_cursor_pagination_respects_filters(app: Any, client: Any) -> None:
    headers = admin_key(app)
    seed_project(app)
    assert walk(client, headers, resource="rollout") == [[5, 4]]
    assert walk(client, headers, actor="u1") == [[4, 3]]


def test_cursor_stays_stable_when_rows_are_inserted_between_pages(app: Any, client: Any) -> None:
    from sentinel_cp import audit
    from sentinel_cp.audit import Actor
    from sentinel_cp.db import db

    headers = admin_key(app)
    project = seed_project(app)
    first = listing(client, headers, limit=2).get_json()
    assert [i["seq"] for i in first["items"]] == [5, 4]
    with app.app_context():
        for n in range(3):
            audit.record(
                Actor.system("t"),
                "node.registered",
                resource_type="node",
                project_id=uuid.UUID(project["id"]),
                now=T0 + timedelta(days=2, hours=n),
            )
        db.session.commit()
    seen = [i["seq"] for i in first["items"]]
    cursor = first["next_cursor"]
    while cursor:
        body = listing(client, headers, limit=2, cursor=cursor).get_json()
        seen += [i["seq"] for i in body["items"]]
        cursor = body["next_cursor"]
    assert seen == [5, 4, 3, 2, 1]
    assert listing(client, headers).get_json()["total"] == 8


@pytest.mark.parametrize("cursor", ["garbage!", "bm90IGpzb24", "WyJ4Il0", "WzEsMl0", "W3RydWVd"])
def test_listing_garbage_cursor_is_422_naming_cursor(app: Any, client: Any, cursor: str) -> None:
    # not base64 JSON, "not json", ["x"], [1,2], [true]
    headers = admin_key(app)
    seed_project(app)
    response = listing(client, headers, cursor=cursor)
    assert response.status_code == 422
    assert "cursor" in response.get_json()["fields"]


@pytest.mark.parametrize("seq", [2**31, 10**30])
def test_listing_cursor_with_a_huge_number_is_not_a_server_error(
    app: Any, client: Any, seq: int
) -> None:
    """Cursors are client input: an out-of-range sequence number is a 422 (or simply past
    the newest row), never a 500 from the database driver."""
    from sentinel_cp.pagination import encode_cursor

    headers = admin_key(app)
    seed_project(app)
    response = listing(client, headers, cursor=encode_cursor(seq))
    assert response.status_code in (200, 422), response.status_code
    if response.status_code == 200:
        assert [i["seq"] for i in response.get_json()["items"]] == [5, 4, 3, 2, 1]


def test_global_listing_shows_global_rows_only(app: Any, client: Any) -> None:
    headers = admin_key(app)
    seed_project(app)
    body = client.get("/api/v1/audit", headers=headers).get_json()
    assert body["items"], body
    assert all(item["project_id"] is None for item in body["items"])
    assert "project.created" not in [item["action"] for item in body["items"]]
    assert {"user.created", "api_key.created"} <= {item["action"] for item in body["items"]}


def test_project_listing_of_another_project_is_404_for_a_bound_key(app: Any, client: Any) -> None:
    seed_project(app, "alpha")
    seed_project(app, "beta")
    headers = admin_key(app, project="alpha")
    assert client.get("/api/v1/projects/beta/audit", headers=headers).status_code == 404
    assert client.get("/api/v1/projects/beta/audit/verify", headers=headers).status_code == 404
    assert client.get("/api/v1/projects/beta/audit/export", headers=headers).status_code == 404
    assert listing(client, headers).status_code == 200


# --- export -------------------------------------------------------------------------------


def export(client: Any, headers: dict[str, str], **params: Any) -> Any:
    return client.get("/api/v1/projects/alpha/audit/export", headers=headers, query_string=params)


def test_json_export_is_ndjson_oldest_first_with_linked_hashes(app: Any, client: Any) -> None:
    from sentinel_cp import audit

    headers = admin_key(app)
    seed_project(app)
    response = export(client, headers, format="json")
    assert response.status_code == 200
    assert response.mimetype == "application/x-ndjson"
    assert response.headers["Content-Disposition"] == 'attachment; filename="audit-alpha.jsonl"'
    lines = response.get_data(as_text=True).splitlines()
    assert len(lines) == 5
    entries = [json.loads(line) for line in lines]
    assert [e["seq"] for e in entries] == [1, 2, 3, 4, 5]
    assert entries[0]["prev_hash"] == audit.GENESIS_HASH
    for previous, entry in itertools.pairwise(entries):
        assert entry["prev_hash"] == previous["entry_hash"]
    assert all(len(e["entry_hash"]) == 64 for e in entries)


def test_export_defaults_to_json(app: Any, client: Any) -> None:
    headers = admin_key(app)
    seed_project(app)
    response = export(client, headers)
    assert response.status_code == 200
    assert response.mimetype == "application/x-ndjson"
    assert len(response.get_data(as_text=True).splitlines()) == 5


def test_csv_export_has_a_header_and_one_line_per_row(app: Any, client: Any) -> None:
    from sentinel_cp import audit

    headers = admin_key(app)
    seed_project(app)
    response = export(client, headers, format="csv")
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    assert response.headers["Content-Disposition"] == 'attachment; filename="audit-alpha.csv"'
    rows = list(csv.reader(io.StringIO(response.get_data(as_text=True))))
    assert rows[0] == list(audit.CSV_COLUMNS)
    assert len(rows) == 6
    records = [dict(zip(rows[0], row, strict=True)) for row in rows[1:]]
    assert [r["seq"] for r in records] == ["1", "2", "3", "4", "5"]
    assert records[2]["action"] == "node.updated"
    assert json.loads(records[2]["changes"]) == {"step": 2, "labels": {"a": 1, "b": 2}}
    assert records[1]["prev_hash"] == records[0]["entry_hash"]


def test_csv_export_with_no_matching_rows_is_just_the_header(app: Any, client: Any) -> None:
    from sentinel_cp import audit

    headers = admin_key(app)
    seed_project(app)
    response = export(client, headers, format="csv", action="bundle.*")
    assert response.status_code == 200
    rows = list(csv.reader(io.StringIO(response.get_data(as_text=True))))
    assert rows == [list(audit.CSV_COLUMNS)]


def test_export_applies_filters(app: Any, client: Any) -> None:
    headers = admin_key(app)
    seed_project(app)
    lines = (
        export(client, headers, format="json", resource="rollout:r1")
        .get_data(as_text=True)
        .splitlines()
    )
    assert [json.loads(line)["action"] for line in lines] == ["rollout.paused", "rollout.resumed"]


def test_export_unknown_format_or_parameter_is_422(app: Any, client: Any) -> None:
    headers = admin_key(app)
    seed_project(app)
    assert export(client, headers, format="xml").status_code == 422
    assert export(client, headers, cursor="abc").status_code == 422


def test_global_export_is_an_attachment(app: Any, client: Any) -> None:
    headers = admin_key(app)
    response = client.get("/api/v1/audit/export?format=csv", headers=headers)
    assert response.status_code == 200
    assert response.headers["Content-Disposition"] == 'attachment; filename="audit-global.csv"'
    rows = list(csv.reader(io.StringIO(response.get_data(as_text=True))))
    assert len(rows) >= 3  # header, user.created, api_key.created


def test_rows_queued_in_a_rolled_back_savepoint_are_dropped_the_rest_commit_in_order(
    app: Any,
) -> None:
    from sentinel_cp import audit
    from sentinel_cp.audit import Actor
    from sentinel_cp.db import db

    project = seed_project(app)
    pid = uuid.UUID(project["id"])
    with app.app_context():
        audit.record(Actor.system("t"), "kept.first", resource_type="x", project_id=pid)
        try:
            with db.session.begin_nested():
                audit.record(Actor.system("t"), "dropped", resource_type="x", project_id=pid)
                raise RuntimeError("roll the savepoint back")
        except RuntimeError:
            pass
        with db.session.begin_nested():
            audit.record(Actor.system("t"), "kept.savepoint", resource_type="x", project_id=pid)
        audit.record(Actor.system("t"), "kept.global", resource_type="x")
        audit.record(Actor.system("t"), "kept.last", resource_type="x", project_id=pid)
        db.session.commit()
    rows = chain_rows(app, project["id"])
    assert [(r["seq"], r["action"]) for r in rows[-3:]] == [
        (6, "kept.first"),
        (7, "kept.savepoint"),
        (8, "kept.last"),
    ]
    with app.app_context():
        assert audit.verify_chain(pid).valid
        assert audit.verify_chain(None).valid
        global_actions = db.session.scalars(
            select(audit.AuditLog.action).where(audit.AuditLog.chain == audit.GLOBAL_CHAIN)
        ).all()
        assert "kept.global" in global_actions and "dropped" not in global_actions
        assert queued_for_commit(db.session(), audit.PENDING_KEY) == []


def test_a_closed_session_forgets_what_it_queued(app: Any) -> None:
    from sentinel_cp import audit
    from sentinel_cp.audit import Actor
    from sentinel_cp.db import db

    with app.app_context():
        audit.record(Actor.system("t"), "never.committed", resource_type="x")
        db.session.close()
        audit.record(Actor.system("t"), "committed", resource_type="x")
        db.session.commit()
        actions = db.session.scalars(select(audit.AuditLog.action)).all()
    assert actions == ["committed"]
