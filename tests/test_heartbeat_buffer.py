"""The heartbeat buffer (`sentinel_cp.heartbeat_buffer`): steady heartbeats answered from memory
and written in batches, and never an answer or a write the database path would not give.

Through the API on both backends with the poll cache (whose listener keeps the buffer true)
turned on, and a clock the test moves (the protocol allows one heartbeat a second): a steady
heartbeat runs no SQL statement and lands with the next flush; a heartbeat too soon is 429
from memory; everything that is not steady — a changed running bundle, the minute's history
sample, a node the staleness sweep took offline, a revoked key — goes to the database. Then the
write's guards (a newer heartbeat written by another process wins), a failing flush that keeps
what it could not write, and a listener that is not subscribed.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from bundle_helpers import operator_key, register_node, setup_project
from conftest import Statements, bearer, drain_events, wait_for
from sqlalchemy import func, select

from blueprints import node_api, steady_heartbeats
from sentinel_cp import heartbeat_buffer, nodes
from sentinel_cp.db import db, hot_connection, utcnow

BUNDLE_A = "a" * 64
BUNDLE_B = "b" * 64


class Clock:
    """What `utcnow()` answers in the heartbeat endpoint."""

    def __init__(self) -> None:
        self.now = utcnow().replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def fleet(app: Any, client: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """A project, one node, a subscribed poll cache and its heartbeat buffer (whose flush
    thread is stopped: the test flushes)."""
    app.config["POLL_CACHE"] = True
    project_id = setup_project(app)
    key = operator_key(app)
    node_id, node_key = register_node(client, "edge-1")
    clock = Clock()
    monkeypatch.setattr(node_api, "utcnow", clock)
    with app.test_request_context():
        buffer = heartbeat_buffer.for_app(app)
    assert buffer is not None
    buffer.stopping.set()  # the test decides when to flush
    wait_for(buffer.cache.subscribed.is_set, timeout=10, what="the poll cache to subscribe")
    drain_events(buffer.cache, project_id)  # the registration's event must not land mid-test
    yield {
        "project_id": project_id,
        "key": key,
        "node": (node_id, node_key),
        "buffer": buffer,
        "clock": clock,
    }
    buffer.stop()
    buffer.cache.stop()


def beat(client: Any, fleet: dict[str, Any], **body: Any) -> Any:
    node_id, node_key = fleet["node"]
    return client.post(
        f"/api/v1/nodes/{node_id}/heartbeat", json=body, headers={"X-Sentinel-Node-Key": node_key}
    )


def stored(app: Any, node_id: str) -> nodes.Node:
    with app.app_context():
        node = db.session.get(nodes.Node, uuid.UUID(node_id))
        assert node is not None
        db.session.expunge(node)
        return node


def online(client: Any, fleet: dict[str, Any]) -> None:
    """A node the buffer remembers, a second after its last heartbeat: the first heartbeat
    (unknown -> online) publishes an event, which makes the process read the node again on the
    next one (through the database, remembered)."""
    cache = fleet["buffer"].cache
    since = cache.version
    assert beat(client, fleet, active_bundle_id=BUNDLE_A).status_code == 200
    wait_for(lambda: cache.version > since, timeout=10, what="the node's online event")
    fleet["clock"].advance(1)
    assert beat(client, fleet).status_code == 200
    fleet["clock"].advance(1)


def test_a_steady_heartbeat_runs_no_statement_and_lands_with_the_flush(
    app: Any, client: Any, fleet: dict[str, Any]
) -> None:
    node_id = fleet["node"][0]
    online(client, fleet)
    sent_at = fleet["clock"].now
    with Statements() as statements:
        answer = beat(
            client,
            fleet,
            health={"status": "degraded"},
            metrics={"error_rate": 0.5},
            version="2.1.0",
            metadata={"rack": "r7"},
        )
    assert answer.status_code == 200, answer.get_json()
    assert statements.count == 0
    assert answer.get_json()["node_id"] == node_id
    assert answer.get_json()["last_seen_at"] == sent_at.isoformat()
    assert stored(app, node_id).last_heartbeat_at != sent_at  # not written yet
    assert fleet["buffer"].flush() == 1
    node = stored(app, node_id)
    assert node.last_heartbeat_at == sent_at and node.last_seen_at == sent_at
    assert node.health == {"status": "degraded"}
    assert node.metrics == {"error_rate": 0.5}
    assert node.version == "2.1.0" and node.meta == {"rack": "r7"}
    assert node.active_bundle_id == BUNDLE_A  # absent from the report: left alone
    assert node.hostname is None and node.ip == "127.0.0.1"
    assert fleet["buffer"].flush() == 0


def test_a_steady_heartbeat_is_answered_before_flask_exactly_as_the_route_answers_it(
    client: Any, fleet: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`blueprints.steady_heartbeats` answers a steady heartbeat without Flask's request
    machinery (the route's shortcut never runs), with the route's status, body and headers;
    turned off, the route gives the same answer."""
    online(client, fleet)
    routed: list[str] = []
    shortcut = node_api.buffered_heartbeat

    def counting(node_id: str) -> Any:
        routed.append(node_id)
        return shortcut(node_id)

    monkeypatch.setattr(node_api, "buffered_heartbeat", counting)
    node_id, node_key = fleet["node"]
    url = f"/api/v1/nodes/{node_id}/heartbeat"
    headers = {"X-Sentinel-Node-Key": node_key, "X-Request-ID": "req-42"}
    report = {"metrics": {"error_rate": 0.5}, "version": "2.1.0"}
    early = client.post(url, json=report, headers=headers)
    assert early.status_code == 200 and routed == []
    fleet["clock"].advance(1)
    monkeypatch.setattr(steady_heartbeats.SteadyHeartbeats, "_answer", lambda *_: None)
    late = client.post(url, json=report, headers=headers)
    assert late.status_code == 200 and routed == [node_id]

    def same(response: Any) -> tuple[Any, ...]:
        body = response.get_json()
        body.pop("last_seen_at")
        return body, sorted((k, v) for k, v in response.headers.items() if k != "Date")

    assert same(early) == same(late)
    assert early.headers["X-Request-ID"] == "req-42"
    assert early.data.endswith(b"\n") and early.data.count(b" ") == late.data.count(b" ")
    assert fleet["buffer"].flush() == 1


def test_a_chunked_heartbeat_is_left_to_the_route_which_reads_its_body(
    app: Any, fleet: dict[str, Any]
) -> None:
    """A body without Content-Length (chunked) is not one the layer can read safely: the
    route answers, and what the body said is what gets written."""
    from werkzeug.test import EnvironBuilder, run_wsgi_app

    node_id, node_key = fleet["node"]
    with app.test_client() as client:
        online(client, fleet)
    environ = EnvironBuilder(
        path=f"/api/v1/nodes/{node_id}/heartbeat",
        method="POST",
        json={"version": "9.9.9"},
        headers={"X-Sentinel-Node-Key": node_key, "Transfer-Encoding": "chunked"},
    ).get_environ()
    del environ["CONTENT_LENGTH"]
    environ["wsgi.input_terminated"] = True
    _, status, _ = run_wsgi_app(app, environ, buffered=True)
    assert status == "200 OK"
    assert fleet["buffer"].flush() == 1
    assert stored(app, node_id).version == "9.9.9"


def test_a_steady_heartbeat_of_a_node_not_remembered_costs_one_read(
    app: Any, client: Any, fleet: dict[str, Any]
) -> None:
    node_id = fleet["node"][0]
    buffer = fleet["buffer"]
    online(client, fleet)
    buffer.entries.clear()  # forgotten, as after 60-90 s
    sent_at = fleet["clock"].now
    with Statements() as statements:
        assert beat(client, fleet, metrics={"error_rate": 0.3}).status_code == 200
    assert statements.count == 1  # the credential read; the write waits for the flush
    assert node_id in buffer.entries
    buffer.entries.clear()
    fleet["clock"].advance(0.5)  # too soon after a heartbeat the database has not seen yet
    assert beat(client, fleet).status_code == 429
    assert buffer.flush() == 1
    node = stored(app, node_id)
    assert node.last_heartbeat_at == sent_at and node.metrics == {"error_rate": 0.3}


def test_a_heartbeat_too_soon_is_refused_from_memory(
    app: Any, client: Any, fleet: dict[str, Any]
) -> None:
    online(client, fleet)
    assert beat(client, fleet).status_code == 200
    fleet["clock"].advance(0.5)
    with Statements() as statements:
        refused = beat(client, fleet)
    assert refused.status_code == 429
    assert refused.get_json()["code"] == "heartbeat_too_fast"
    assert statements.count == 0


def test_bad_input_is_refused_before_memory_answers(client: Any, fleet: dict[str, Any]) -> None:
    online(client, fleet)
    fleet["buffer"].flush()
    node_id, node_key = fleet["node"]
    url = f"/api/v1/nodes/{node_id}/heartbeat"
    headers = {"X-Sentinel-Node-Key": node_key}
    wrong = client.post(url, json={"health": {"status": "fine"}}, headers=headers)
    assert wrong.status_code == 422 and "health.status" in str(wrong.get_json())
    huge = client.post(url, data=b" " * (node_api.SMALL_BODY + 1), headers=headers)
    assert huge.status_code == 413
    other = register_node(client, "edge-2")
    mismatch = client.post(f"/api/v1/nodes/{other[0]}/heartbeat", json={}, headers=headers)
    assert mismatch.status_code == 403
    assert fleet["buffer"].pending == {}


def test_what_is_not_steady_goes_to_the_database(
    app: Any, client: Any, fleet: dict[str, Any]
) -> None:
    node_id = fleet["node"][0]
    cache = fleet["buffer"].cache
    online(client, fleet)
    since = cache.version
    with Statements() as statements:  # a changed running bundle
        assert beat(client, fleet, active_bundle_id=BUNDLE_B).status_code == 200
    assert statements.count > 0
    assert stored(app, node_id).active_bundle_id == BUNDLE_B
    # ...publishes its event, which makes every process read the node again once
    wait_for(lambda: cache.version > since, timeout=10, what="the change's event")
    for _ in range(2):
        fleet["clock"].advance(1)
        with Statements() as statements:
            assert beat(client, fleet, active_bundle_id=BUNDLE_B).status_code == 200
    assert statements.count == 0  # the second: remembered again, with the new bundle
    fleet["clock"].advance(nodes.SAMPLE_EVERY.total_seconds())
    with app.app_context():
        samples = db.session.scalar(select(func.count()).select_from(nodes.NodeHeartbeat))
    with Statements() as statements:  # the minute's history sample
        assert beat(client, fleet).status_code == 200
    assert statements.count > 0
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(nodes.NodeHeartbeat)) == (
            samples + 1
        )


def test_a_node_taken_offline_is_not_brought_back_by_the_flush(
    app: Any, client: Any, fleet: dict[str, Any]
) -> None:
    node_id = fleet["node"][0]
    online(client, fleet)
    buffer = fleet["buffer"]
    assert beat(client, fleet).status_code == 200
    since = buffer.cache.version
    with app.app_context():  # the sweep runs before the flush
        assert nodes.mark_stale_nodes(now=utcnow() + timedelta(days=1)) == 1
        db.session.commit()
    assert buffer.flush() == 1
    assert stored(app, node_id).status == "offline"
    wait_for(lambda: buffer.cache.version > since, timeout=10, what="the sweep's event")
    fleet["clock"].advance(1)
    with Statements() as statements:  # back online through the database, audited
        assert beat(client, fleet).status_code == 200
    assert statements.count > 0
    assert stored(app, node_id).status == "online"


def test_a_revoked_key_is_refused_on_the_next_heartbeat(client: Any, fleet: dict[str, Any]) -> None:
    online(client, fleet)
    node_id = fleet["node"][0]
    buffer = fleet["buffer"]
    assert beat(client, fleet).status_code == 200
    since = buffer.cache.version
    revoked = client.post(
        f"/api/v1/projects/default/nodes/{node_id}/revoke-key",
        json={},
        headers=bearer(fleet["key"]),
    )
    assert revoked.status_code == 200, revoked.get_json()
    wait_for(
        lambda: buffer.cache.node_invalidated_at.get(node_id, 0) > since,
        timeout=10,
        what="the revocation's event",
    )
    fleet["clock"].advance(1)
    assert beat(client, fleet).status_code == 401


def test_nothing_is_answered_from_memory_while_the_listener_is_not_subscribed(
    client: Any, fleet: dict[str, Any]
) -> None:
    online(client, fleet)
    buffer = fleet["buffer"]
    buffer.cache.stop()  # its listener forgets everything on the way out
    wait_for(lambda: not buffer.cache.subscribed.is_set(), timeout=10, what="unsubscribed")
    with Statements() as statements:
        assert beat(client, fleet).status_code == 200
    assert statements.count > 0
    assert fleet["node"][0] not in buffer.entries  # read, not remembered


def test_a_newer_heartbeat_written_by_another_process_wins(
    app: Any, client: Any, fleet: dict[str, Any]
) -> None:
    node_id = fleet["node"][0]
    online(client, fleet)
    now = fleet["clock"].now
    node = uuid.UUID(node_id)
    newer = {"last_seen_at": now + timedelta(seconds=5), "status": "online"}
    newer |= {"last_heartbeat_at": newer["last_seen_at"], "metrics": {"error_rate": 0.1}}
    older = {"last_seen_at": now + timedelta(seconds=3), "status": "online"}
    older |= {"last_heartbeat_at": older["last_seen_at"], "metrics": {"error_rate": 0.9}}
    with app.app_context():
        for batch in ({node: newer}, {node: older}):  # two processes, the later one first
            connection = hot_connection()
            try:
                nodes.write_heartbeats(connection, batch)
            finally:
                connection.close()
    stored_node = stored(app, node_id)
    assert stored_node.last_heartbeat_at == newer["last_heartbeat_at"]
    assert stored_node.metrics == {"error_rate": 0.1}


def test_a_failed_flush_keeps_the_write_for_the_next_one(
    app: Any, client: Any, fleet: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    node_id = fleet["node"][0]
    online(client, fleet)
    sent_at = fleet["clock"].now
    assert beat(client, fleet, metrics={"error_rate": 0.2}).status_code == 200
    real = nodes.write_heartbeats

    def broken(*_args: Any) -> None:
        raise RuntimeError("database away")

    monkeypatch.setattr(nodes, "write_heartbeats", broken)
    assert fleet["buffer"].flush() == 0
    monkeypatch.setattr(nodes, "write_heartbeats", real)
    assert fleet["buffer"].flush() == 1
    assert stored(app, node_id).last_heartbeat_at == sent_at
    assert stored(app, node_id).metrics == {"error_rate": 0.2}

    # While writes fail, no heartbeat is acknowledged from memory: the database answers (503
    # while it is away), and once it has taken one, memory answers again.
    fleet["clock"].advance(1)
    assert beat(client, fleet).status_code == 200
    monkeypatch.setattr(nodes, "write_heartbeats", broken)
    assert fleet["buffer"].flush() == 0
    for expected in (1, 0):
        fleet["clock"].advance(1)
        with Statements() as statements:
            assert beat(client, fleet).status_code == 200
        assert (statements.count > 0) == bool(expected)
    monkeypatch.setattr(nodes, "write_heartbeats", real)
    assert fleet["buffer"].flush() == 1  # the kept write, merged into the node's newest one
    assert stored(app, node_id).last_heartbeat_at == fleet["clock"].now
