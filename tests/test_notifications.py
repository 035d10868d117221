"""Outbound notifications: endpoints through the API, signed deliveries to a local HTTP
receiver, the events a real rollout and real drift emit, retries with backoff, permanent
failure, claims, idempotent jobs, bad input and roles — on both backends.

Retries are driven with an injected clock (`deliver(..., now=...)`); the receiver is a
`ThreadingHTTPServer` on 127.0.0.1, so nothing leaves the machine.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from bundle_helpers import CONFIG, register_node, run_jobs, setup_project, submit
from conftest import bearer, make_key, make_project, make_user, wait_for
from sqlalchemy import select, update

from sentinel_cp import drift, jobqueue, notifications
from sentinel_cp.audit import AuditLog
from sentinel_cp.db import db, utcnow
from sentinel_cp.nodes import Node

BASE = "/api/v1/projects/default/notification-endpoints"
PAST = utcnow().replace(microsecond=0) - timedelta(hours=2)  # due for a real-clock worker
GRACE = timedelta(seconds=60)
MIDDLE = lambda: 0.5  # noqa: E731 — jitter at its midpoint: the delays are exactly nominal


# --- the receiver ---------------------------------------------------------------------------


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict[str, Any]:
        return dict(json.loads(self.body))


@dataclass
class Receiver:
    """Records every POST and answers with `statuses` in order (then 200); while `hold` is
    set to an unset Event, each request waits on it before answering."""

    url: str = ""
    received: list[Received] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    hold: threading.Event | None = None
    answer: bytes | None = None  # the body of a non-2xx answer (default: a short text)

    def events(self) -> list[str]:
        return [request.json["event"] for request in self.received]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    fake = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            fake.received.append(Received({k.lower(): v for k, v in self.headers.items()}, body))
            if fake.hold is not None:
                fake.hold.wait(10)
            status = fake.statuses.pop(0) if fake.statuses else 200
            self.send_response(status)
            if 300 <= status < 400:
                self.send_header("Location", fake.url + "/elsewhere")
            answer = b"ok" if status < 300 else (fake.answer or b"receiver says no")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    fake.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/sentinel"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield fake
    if fake.hold is not None:
        fake.hold.set()
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def verify(secret: str, request: Received) -> bool:
    """What a receiver does (the docs' example), written here without the server's code."""
    timestamp = request.headers["x-sentinel-timestamp"]
    expected = hmac.new(
        secret.encode(), timestamp.encode() + b"." + request.body, hashlib.sha256
    ).hexdigest()
    return hmac.compare_digest("sha256=" + expected, request.headers["x-sentinel-signature"])


# --- builders -------------------------------------------------------------------------------


@pytest.fixture
def key(app: Any) -> str:
    setup_project(app)
    make_user(app, "ops@example.com", "admin")
    return make_key(
        app,
        "ops@example.com",
        [
            "projects:admin",
            "bundles:read",
            "bundles:write",
            "nodes:read",
            "nodes:write",
            "rollouts:read",
            "rollouts:write",
        ],
    )


def add_endpoint(client: Any, key: str, url: str, **body: Any) -> dict[str, Any]:
    response = client.post(BASE, json={"name": "ops", "url": url, **body}, headers=bearer(key))
    assert response.status_code == 201, response.get_json()
    return dict(response.get_json())


def ping(client: Any, key: str, endpoint_id: str) -> str:
    response = client.post(f"{BASE}/{endpoint_id}/test", headers=bearer(key))
    assert response.status_code == 202, response.get_json()
    return str(response.get_json()["id"])


def deliveries(client: Any, key: str, endpoint_id: str, **query: Any) -> dict[str, Any]:
    response = client.get(
        f"{BASE}/{endpoint_id}/deliveries", query_string=query, headers=bearer(key)
    )
    assert response.status_code == 200, response.get_json()
    return dict(response.get_json())


def deliver(app: Any, delivery_id: str, now: datetime, **options: Any) -> str:
    with app.app_context():
        return notifications.deliver(uuid.UUID(delivery_id), now=now, rand=MIDDLE, **options)


def row(app: Any, delivery_id: str) -> notifications.NotificationDelivery:
    with app.app_context():
        found = db.session.get(notifications.NotificationDelivery, uuid.UUID(delivery_id))
        assert found is not None
        db.session.expunge(found)
        return found


def audit_rows(app: Any) -> list[AuditLog]:
    with app.app_context():
        rows = list(
            db.session.scalars(
                select(AuditLog)
                .where(AuditLog.action.startswith("notification_endpoint."))
                .order_by(AuditLog.seq)
            )
        )
        for entry in rows:
            db.session.expunge(entry)
        return rows


# --- endpoints ------------------------------------------------------------------------------


def test_creating_an_endpoint_shows_its_secret_once_and_audits_it(
    client: Any, app: Any, key: str, receiver: Receiver
) -> None:
    created = add_endpoint(client, key, receiver.url)
    assert created["secret"].startswith("whsec_") and len(created["secret"]) > 30
    assert created["events"] == list(notifications.EVENTS)
    assert (created["enabled"], created["secret_set"]) == (True, True)
    shown = client.get(f"{BASE}/{created['id']}", headers=bearer(key)).get_json()
    listed = client.get(BASE, headers=bearer(key)).get_json()
    assert "secret" not in shown and listed["total"] == 1
    assert "secret" not in listed["items"][0]
    (entry,) = audit_rows(app)
    assert (entry.action, entry.resource_id) == ("notification_endpoint.created", created["id"])
    assert entry.changes["secret"] == "set"
    assert entry.changes["url"] == receiver.url
    assert created["secret"] not in json.dumps([entry.changes, entry.meta])


def test_updates_and_deletion_are_audited_and_secrets_never_logged(
    client: Any, app: Any, key: str, receiver: Receiver
) -> None:
    endpoint = add_endpoint(client, key, receiver.url, secret="s" * 20)
    url = f"{BASE}/{endpoint['id']}"
    new_secret = "n" * 24
    changed = client.patch(
        url,
        json={"name": "pager", "events": ["drift.opened"], "secret": new_secret},
        headers=bearer(key),
    )
    assert changed.status_code == 200, changed.get_json()
    assert (changed.get_json()["name"], changed.get_json()["events"]) == ("pager", ["drift.opened"])
    assert "secret" not in changed.get_json()
    unchanged = client.patch(url, json={"name": "pager"}, headers=bearer(key))
    assert unchanged.status_code == 200
    deleted = client.delete(url, headers=bearer(key))
    assert deleted.status_code == 200 and deleted.get_json() == {"status": "deleted"}
    assert client.get(url, headers=bearer(key)).status_code == 404
    entries = audit_rows(app)
    assert [e.action for e in entries] == [
        "notification_endpoint.created",
        "notification_endpoint.updated",
        "notification_endpoint.deleted",
    ]
    assert entries[1].changes == {
        "name": ["ops", "pager"],
        "events": [list(notifications.EVENTS), ["drift.opened"]],
        "secret": "changed",
    }
    logged = json.dumps([[e.changes, e.meta] for e in entries])
    assert "s" * 20 not in logged and new_secret not in logged


# --- delivery -------------------------------------------------------------------------------


def test_a_ping_reaches_the_receiver_signed_so_it_can_verify_it(
    client: Any, app: Any, backend: Any, key: str, receiver: Receiver
) -> None:
    endpoint = add_endpoint(client, key, receiver.url)
    delivery_id = ping(client, key, endpoint["id"])
    run_jobs(app, backend.redis_url)
    (request,) = receiver.received
    assert verify(endpoint["secret"], request)
    assert not verify("whsec_not-the-secret", request)
    assert request.headers["x-sentinel-event"] == "ping"
    assert request.headers["x-sentinel-delivery"] == delivery_id
    assert request.headers["content-type"] == "application/json"
    assert request.json["event"] == "ping" and request.json["project"] == "default"
    assert request.json["data"]["endpoint_id"] == endpoint["id"]
    (item,) = deliveries(client, key, endpoint["id"])["items"]
    assert (item["state"], item["attempts"], item["last_status_code"]) == ("delivered", 1, 200)
    assert [a["status_code"] for a in item["attempt_log"]] == [200]
    assert [e.action for e in audit_rows(app)][-1] == "notification_endpoint.tested"


def test_a_500_is_retried_with_backoff_until_delivered_and_every_attempt_is_listed(
    client: Any, app: Any, key: str, receiver: Receiver
) -> None:
    receiver.statuses = [500, 500, 200]
    endpoint = add_endpoint(client, key, receiver.url)
    delivery_id = ping(client, key, endpoint["id"])
    start = row(app, delivery_id).created_at
    assert deliver(app, delivery_id, start) == "pending"
    assert row(app, delivery_id).next_attempt_at == start + timedelta(seconds=10)
    assert deliver(app, delivery_id, start + timedelta(seconds=9)) == "skipped"  # not due yet
    assert deliver(app, delivery_id, start + timedelta(seconds=10)) == "pending"
    assert row(app, delivery_id).next_attempt_at == start + timedelta(seconds=40)
    assert deliver(app, delivery_id, start + timedelta(seconds=40)) == "delivered"
    assert len(receiver.received) == 3
    assert {r.headers["x-sentinel-delivery"] for r in receiver.received} == {delivery_id}
    assert len({r.body for r in receiver.received}) == 1  # the same body every time
    assert all(verify(endpoint["secret"], r) for r in receiver.received)
    (item,) = deliveries(client, key, endpoint["id"])["items"]
    assert (item["state"], item["attempts"], item["last_status_code"]) == ("delivered", 3, 200)
    assert [a["status_code"] for a in item["attempt_log"]] == [500, 500, 200]
    assert item["attempt_log"][0]["error"] == "HTTP 500: receiver says no"
    assert item["attempt_log"][2]["error"] is None
    assert item["last_error"] is None and item["next_attempt_at"] is None


def test_a_delivery_fails_for_good_after_the_last_attempt(
    client: Any, app: Any, key: str, receiver: Receiver
) -> None:
    receiver.statuses = [503] * 20
    endpoint = add_endpoint(client, key, receiver.url)
    delivery_id = ping(client, key, endpoint["id"])
    at = row(app, delivery_id).created_at
    waits = []
    for _ in range(notifications.MAX_ATTEMPTS):
        deliver(app, delivery_id, at)
        following = row(app, delivery_id).next_attempt_at
        if following is None:
            break
        waits.append((following - at).total_seconds())
        at = following
    assert waits == [10, 30, 90, 270, 810, 2430, 3600]
    assert deliver(app, delivery_id, at + timedelta(days=1)) == "skipped"
    assert len(receiver.received) == notifications.MAX_ATTEMPTS
    failed = row(app, delivery_id)
    assert (failed.state, failed.attempts, failed.last_status_code) == ("failed", 8, 503)
    assert failed.last_error == "HTTP 503: receiver says no"
    assert deliveries(client, key, endpoint["id"], state="failed")["total"] == 1


def test_retry_delays_grow_threefold_to_an_hour_with_bounded_jitter() -> None:
    assert notifications.retry_delay(1, lambda: 0.0) == timedelta(seconds=9)
    assert notifications.retry_delay(1, lambda: 1.0) == timedelta(seconds=11)
    assert notifications.retry_delay(3, MIDDLE) == timedelta(seconds=90)
    assert notifications.retry_delay(20, MIDDLE) == timedelta(hours=1)


def test_a_repeated_job_for_a_delivered_delivery_sends_nothing_more(
    client: Any, app: Any, backend: Any, key: str, receiver: Receiver
) -> None:
    endpoint = add_endpoint(client, key, receiver.url)
    delivery_id = ping(client, key, endpoint["id"])
    run_jobs(app, backend.redis_url)
    with app.app_context():
        for _ in range(2):
            jobqueue.enqueue_now(
                "deliver_notification",
                delivery_id,
                job_id=notifications.job_id(uuid.UUID(delivery_id)),
            )
    run_jobs(app, backend.redis_url)
    assert deliver(app, delivery_id, utcnow()) == "skipped"
    assert len(receiver.received) == 1
    assert row(app, delivery_id).attempts == 1


def test_two_workers_claiming_one_due_delivery_send_one_post(
    client: Any, app: Any, key: str, receiver: Receiver
) -> None:
    endpoint = add_endpoint(client, key, receiver.url)
    delivery_id = ping(client, key, endpoint["id"])
    now = row(app, delivery_id).created_at
    receiver.hold = threading.Event()
    outcome: list[str] = []
    first = threading.Thread(target=lambda: outcome.append(deliver(app, delivery_id, now)))
    first.start()
    wait_for(lambda: receiver.received, timeout=10, what="the first POST")
    assert deliver(app, delivery_id, now) == "skipped"  # claimed by the attempt in flight
    receiver.hold.set()
    first.join(timeout=10)
    assert outcome == ["delivered"]
    assert len(receiver.received) == 1


def test_a_claim_left_by_a_dead_worker_is_taken_over_after_its_lease(
    client: Any, app: Any, key: str, receiver: Receiver
) -> None:
    endpoint = add_endpoint(client, key, receiver.url)
    delivery_id = ping(client, key, endpoint["id"])
    now = row(app, delivery_id).created_at
    with app.app_context():
        assert notifications._claim(uuid.UUID(delivery_id), now) == 1  # then the worker dies
        db.session.commit()
    with app.app_context():
        assert notifications.sweep(now + timedelta(seconds=10)) == {"enqueued": 0}
    assert deliver(app, delivery_id, now + timedelta(seconds=10)) == "skipped"
    assert receiver.received == []
    assert deliver(app, delivery_id, now + notifications.CLAIM_LEASE) == "delivered"
    taken_over = row(app, delivery_id)
    assert taken_over.attempts == 2 and len(receiver.received) == 1
    assert [entry["status_code"] for entry in taken_over.attempt_log] == [None, 200]
    assert "worker stopped" in taken_over.attempt_log[0]["error"]


def test_the_sweep_enqueues_a_due_delivery_whose_job_was_lost(
    client: Any, app: Any, backend: Any, key: str, receiver: Receiver
) -> None:
    endpoint = add_endpoint(client, key, receiver.url)
    jobqueue.configure(None)  # the job request is dropped, as with Redis down
    try:
        delivery_id = ping(client, key, endpoint["id"])
    finally:
        from jobs.queue import enqueue

        jobqueue.configure(enqueue)
    assert run_jobs(app, backend.redis_url) == 0
    with app.app_context():
        assert notifications.sweep() == {"enqueued": 1}
    run_jobs(app, backend.redis_url)
    assert [r.headers["x-sentinel-delivery"] for r in receiver.received] == [delivery_id]
    with app.app_context():
        assert notifications.sweep() == {"enqueued": 0}


def test_finished_deliveries_are_pruned_after_the_retention(
    client: Any, app: Any, key: str, receiver: Receiver
) -> None:
    endpoint = add_endpoint(client, key, receiver.url)
    delivered, waiting = ping(client, key, endpoint["id"]), ping(client, key, endpoint["id"])
    deliver(app, delivered, row(app, delivered).created_at)
    later = utcnow() + notifications.RETENTION + timedelta(minutes=1)
    with app.app_context():
        assert notifications.prune(later - timedelta(minutes=2)) == 0
        assert notifications.prune(later) == 1
        db.session.commit()
    assert [item["id"] for item in deliveries(client, key, endpoint["id"])["items"]] == [waiting]


def test_redirects_are_not_followed_and_count_as_a_failed_attempt(
    client: Any, app: Any, key: str, receiver: Receiver
) -> None:
    receiver.statuses = [302]
    endpoint = add_endpoint(client, key, receiver.url)
    delivery_id = ping(client, key, endpoint["id"])
    assert deliver(app, delivery_id, row(app, delivery_id).created_at) == "pending"
    assert len(receiver.received) == 1
    assert row(app, delivery_id).last_error.startswith("HTTP 302 (redirects are not followed)")


def test_a_receiver_slower_than_the_timeout_is_a_failed_attempt(
    client: Any, app: Any, key: str, receiver: Receiver
) -> None:
    receiver.hold = threading.Event()
    endpoint = add_endpoint(client, key, receiver.url)
    delivery_id = ping(client, key, endpoint["id"])
    sender = notifications.HttpSender(timeout_s=0.3)
    at = row(app, delivery_id).created_at
    assert deliver(app, delivery_id, at, sender=sender) == "pending"
    slow = row(app, delivery_id)
    assert (slow.last_status_code, slow.last_error) == (None, "timed out after 0.3 s")


def test_a_disabled_endpoint_gets_no_test_and_its_pending_deliveries_fail_unsent(
    client: Any, app: Any, key: str, receiver: Receiver
) -> None:
    endpoint = add_endpoint(client, key, receiver.url)
    delivery_id = ping(client, key, endpoint["id"])
    url = f"{BASE}/{endpoint['id']}"
    assert client.patch(url, json={"enabled": False}, headers=bearer(key)).status_code == 200
    refused = client.post(f"{url}/test", headers=bearer(key))
    assert refused.status_code == 409
    assert refused.get_json()["code"] == "notification_endpoint_disabled"
    assert deliver(app, delivery_id, row(app, delivery_id).created_at) == "failed"
    assert receiver.received == []
    assert row(app, delivery_id).last_error == "endpoint disabled: not sent"


def test_only_enabled_endpoints_subscribed_to_the_event_get_a_delivery(
    client: Any, app: Any, key: str, receiver: Receiver
) -> None:
    everything = add_endpoint(client, key, receiver.url, name="all")
    drift_only = add_endpoint(client, key, receiver.url, name="drift", events=["drift.opened"])
    add_endpoint(client, key, receiver.url, name="off", enabled=False)
    make_project(app, "other")
    add_other = client.post(
        "/api/v1/projects/other/notification-endpoints",
        json={"name": "all", "url": receiver.url},
        headers=bearer(key),
    )
    assert add_other.status_code == 201
    with app.app_context():
        from sentinel_cp import projects

        project_id = projects.get_project("default").id
        queued = notifications.notify(project_id, "rollout.completed", {"rollout_id": "r1"})
        queued += notifications.notify(project_id, "drift.opened", {"id": "d1"})
        db.session.commit()
        targets = sorted((str(d.endpoint_id), d.event) for d in queued)
    assert targets == sorted(
        [
            (everything["id"], "rollout.completed"),
            (everything["id"], "drift.opened"),
            (drift_only["id"], "drift.opened"),
        ]
    )


def test_deliveries_are_listed_newest_first_with_a_cursor(
    client: Any, app: Any, key: str, receiver: Receiver
) -> None:
    endpoint = add_endpoint(client, key, receiver.url)
    with app.app_context():
        from sentinel_cp.audit import Actor

        row_ = db.session.get(notifications.NotificationEndpoint, uuid.UUID(endpoint["id"]))
        ids = [
            str(
                notifications.send_test(
                    Actor.system("test"), row_, now=PAST + timedelta(minutes=i)
                ).id
            )
            for i in range(3)
        ]
        db.session.commit()
    first = deliveries(client, key, endpoint["id"], limit=2)
    assert [item["id"] for item in first["items"]] == [ids[2], ids[1]]
    assert first["total"] == 3 and first["next_cursor"]
    rest = deliveries(client, key, endpoint["id"], limit=2, cursor=first["next_cursor"])
    assert [item["id"] for item in rest["items"]] == [ids[0]] and rest["next_cursor"] is None
    assert deliveries(client, key, endpoint["id"], event="ping", state="pending")["total"] == 3
    assert deliveries(client, key, endpoint["id"], event="drift.opened")["total"] == 0


# --- the events -----------------------------------------------------------------------------


def beat(client: Any, app: Any, node_id: str, node_key: str, **body: Any) -> None:
    with app.app_context():
        db.session.execute(
            update(Node).where(Node.id == uuid.UUID(node_id)).values(last_heartbeat_at=None)
        )
        db.session.commit()
    response = client.post(
        f"/api/v1/nodes/{node_id}/heartbeat",
        json={"health": {"status": "healthy"}, "metrics": {"error_rate": 0.1}, **body},
        headers={"X-Sentinel-Node-Key": node_key},
    )
    assert response.status_code == 200, response.get_json()


def report(client: Any, node: tuple[str, str], bundle_id: str, state: str) -> None:
    node_id, node_key = node
    response = client.post(
        f"/api/v1/nodes/{node_id}/bundles/{bundle_id}/{state}",
        json={"reason": "health check failed"} if state == "failed" else {},
        headers={"X-Sentinel-Node-Key": node_key},
    )
    assert response.status_code == 200, response.get_json()


@pytest.fixture
def rollout_setup(
    client: Any, app: Any, backend: Any, key: str
) -> tuple[str, list[tuple[str, str]]]:
    """A compiled bundle and two healthy nodes of the default project."""
    bundle_id = str(submit(client, key, CONFIG, "v1").get_json()["id"])
    run_jobs(app, backend.redis_url)
    fleet = [register_node(client, f"edge-{i}") for i in range(2)]
    for node_id, node_key in fleet:
        beat(client, app, node_id, node_key)
    return bundle_id, fleet


def start_rollout(client: Any, key: str, bundle_id: str) -> str:
    response = client.post(
        "/api/v1/projects/default/rollouts",
        json={"bundle_id": bundle_id, "batch_size": 2},
        headers=bearer(key),
    )
    assert response.status_code == 201, response.get_json()
    return str(response.get_json()["id"])


def test_a_paused_then_completed_rollout_notifies_both(
    client: Any,
    app: Any,
    backend: Any,
    key: str,
    receiver: Receiver,
    rollout_setup: tuple[str, list[tuple[str, str]]],
) -> None:
    bundle_id, fleet = rollout_setup
    endpoint = add_endpoint(client, key, receiver.url)
    rollout_id = start_rollout(client, key, bundle_id)
    rollouts = "/api/v1/projects/default/rollouts"
    paused = client.post(f"{rollouts}/{rollout_id}/pause", json={}, headers=bearer(key))
    assert paused.status_code == 200
    client.post(f"{rollouts}/{rollout_id}/resume", json={}, headers=bearer(key))
    run_jobs(app, backend.redis_url)
    for node in fleet:
        for state in ("downloaded", "staged", "activated", "verified"):
            report(client, node, bundle_id, state)
        beat(client, app, *node, active_bundle_id=bundle_id)
    run_jobs(app, backend.redis_url)
    assert receiver.events() == ["rollout.paused", "rollout.completed"]
    pause_body, done_body = (r.json for r in receiver.received)
    assert pause_body["data"]["rollout_id"] == rollout_id
    assert (pause_body["data"]["state"], pause_body["data"]["reason"]) == (
        "paused",
        "operator_paused",
    )
    assert done_body["project"] == "default"
    assert (done_body["data"]["state"], done_body["data"]["bundle_version"]) == ("completed", "v1")
    assert done_body["data"]["bundle_id"] == bundle_id
    assert all(verify(endpoint["secret"], r) for r in receiver.received)


def test_a_failing_node_pause_and_a_rollback_notify_paused_and_rolled_back(
    client: Any,
    app: Any,
    backend: Any,
    key: str,
    receiver: Receiver,
    rollout_setup: tuple[str, list[tuple[str, str]]],
) -> None:
    bundle_id, fleet = rollout_setup
    add_endpoint(client, key, receiver.url)
    rollout_id = start_rollout(client, key, bundle_id)
    run_jobs(app, backend.redis_url)
    report(client, fleet[0], bundle_id, "failed")
    run_jobs(app, backend.redis_url)
    rolled = client.post(
        f"/api/v1/projects/default/rollouts/{rollout_id}/rollback", json={}, headers=bearer(key)
    )
    assert rolled.status_code == 200, rolled.get_json()
    run_jobs(app, backend.redis_url)
    assert receiver.events() == ["rollout.paused", "rollout.rolled_back"]
    paused, rolled_back = (r.json["data"] for r in receiver.received)
    assert (paused["rollout_id"], paused["reason"]) == (rollout_id, "max_failures_exceeded")
    assert (rolled_back["rollout_id"], rolled_back["state"]) == (rollout_id, "rolled_back")


def test_drift_opening_and_resolving_are_notified(
    client: Any, app: Any, backend: Any, key: str, receiver: Receiver
) -> None:
    add_endpoint(client, key, receiver.url, events=["drift.opened", "drift.resolved"])
    node_id, _ = register_node(client, "edge-1")

    def set_node(**values: Any) -> None:
        with app.app_context():
            db.session.execute(update(Node).where(Node.id == uuid.UUID(node_id)).values(**values))
            db.session.commit()

    def detect(now: datetime) -> None:
        with app.app_context():
            drift.detect_drift(now)
            db.session.commit()

    set_node(expected_bundle_id="e" * 64, active_bundle_id="f" * 64)
    detect(PAST)
    detect(PAST + GRACE)
    set_node(active_bundle_id="e" * 64)
    detect(PAST + 2 * GRACE)
    run_jobs(app, backend.redis_url)
    assert receiver.events() == ["drift.opened", "drift.resolved"]
    opened, resolved = (r.json for r in receiver.received)
    assert opened["occurred_at"] == (PAST + GRACE).isoformat()
    assert (opened["data"]["node_name"], opened["data"]["reason"]) == ("edge-1", "bundle_mismatch")
    assert (resolved["data"]["id"], resolved["data"]["node_name"]) == (
        opened["data"]["id"],
        "edge-1",
    )
    assert (resolved["data"]["resolution"], resolved["data"]["why"]) == ("auto_resolved", "in_sync")


# --- bad input, foreign ids, roles ----------------------------------------------------------


BAD_BODIES = [
    ({"name": 5, "url": "http://127.0.0.1/x"}, "name"),
    ({"name": "x", "url": "ftp://example.com/hook"}, "url"),
    ({"name": "x", "url": "javascript:alert(1)"}, "url"),
    ({"name": "x", "url": "https://user:pw@example.com/hook"}, "url"),
    ({"name": "x", "url": "not a url"}, "url"),
    ({"name": "x", "url": "http:///nohost"}, "url"),
    ({"name": "x", "url": "http://example.com:99999/"}, "url"),
    ({"name": "x", "url": "http://127.0.0.1/x", "events": ["rollout.exploded"]}, "events.0"),
    ({"name": "x", "url": "http://127.0.0.1/x", "events": []}, "events"),
    ({"name": "x", "url": "http://127.0.0.1/x", "secret": "short"}, "secret"),
    ({"name": "x", "url": "http://127.0.0.1/x", "enabled": "yes"}, "enabled"),
    ({"name": "", "url": "http://127.0.0.1/x"}, "name"),
    ({"name": "   ", "url": "http://127.0.0.1/x"}, "name"),
    ({"url": "http://127.0.0.1/x"}, "name"),
    ({"name": "x", "url": "http://127.0.0.1/x", "colour": "red"}, "colour"),
]


def test_bad_endpoint_bodies_are_422_naming_the_field(client: Any, key: str) -> None:
    for body, field_name in BAD_BODIES:
        response = client.post(BASE, json=body, headers=bearer(key))
        assert response.status_code == 422, (body, response.get_json())
        assert field_name in response.get_json()["fields"], (body, response.get_json())
    assert client.get(BASE, headers=bearer(key)).get_json()["total"] == 0


def test_malformed_huge_or_non_json_bodies_are_4xx(client: Any, key: str) -> None:
    headers = {**bearer(key), "Content-Type": "application/json"}
    malformed = client.post(BASE, data=b'{"name": ', headers=headers)
    assert (malformed.status_code, malformed.get_json()["code"]) == (400, "malformed_json")
    not_object = client.post(BASE, json=["x"], headers=bearer(key))
    assert not_object.status_code == 400
    huge = client.post(
        BASE, json={"name": "x", "url": "http://127.0.0.1/" + "a" * 20_000}, headers=bearer(key)
    )
    assert huge.status_code == 413
    form = client.post(BASE, data={"name": "x"}, headers=bearer(key))
    assert form.status_code == 415


def test_bad_patches_duplicate_names_and_bad_queries_are_4xx(
    client: Any, key: str, receiver: Receiver
) -> None:
    first = add_endpoint(client, key, receiver.url, name="one")
    add_endpoint(client, key, receiver.url, name="two")
    url = f"{BASE}/{first['id']}"
    for body, field_name in (
        ({"url": "file:///etc/passwd"}, "url"),
        ({"events": "drift.opened"}, "events"),
        ({"enabled": None, "name": 3}, "name"),
        ({"secret": ""}, "secret"),
    ):
        response = client.patch(url, json=body, headers=bearer(key))
        assert response.status_code == 422, (body, response.get_json())
        assert field_name in response.get_json()["fields"]
    taken = client.patch(url, json={"name": "two"}, headers=bearer(key))
    assert (taken.status_code, taken.get_json()["code"]) == (409, "notification_endpoint_exists")
    again = client.post(BASE, json={"name": "one", "url": receiver.url}, headers=bearer(key))
    assert again.status_code == 409
    for query, parameter in (
        ("state=lost", "query.state"),
        ("event=rollout.exploded", "query.event"),
        ("limit=0", "query.limit"),
        ("cursor=garbage", "cursor"),
        ("colour=red", "query.colour"),
    ):
        response = client.get(f"{url}/deliveries?{query}", headers=bearer(key))
        assert response.status_code == 422, (query, response.get_json())
        assert parameter in response.get_json()["fields"]


def test_ids_of_another_project_are_404_and_malformed_ids_400(
    client: Any, app: Any, key: str, receiver: Receiver
) -> None:
    make_project(app, "other")
    foreign = client.post(
        "/api/v1/projects/other/notification-endpoints",
        json={"name": "theirs", "url": receiver.url},
        headers=bearer(key),
    ).get_json()["id"]
    url = f"{BASE}/{foreign}"
    for response in (
        client.get(url, headers=bearer(key)),
        client.patch(url, json={"enabled": False}, headers=bearer(key)),
        client.delete(url, headers=bearer(key)),
        client.get(f"{url}/deliveries", headers=bearer(key)),
        client.post(f"{url}/test", headers=bearer(key)),
        client.get(f"{BASE}/{uuid.uuid4()}", headers=bearer(key)),
    ):
        assert response.status_code == 404
        assert response.get_json()["code"] == "notification_endpoint_not_found"
    assert client.get(f"{BASE}/not-an-id", headers=bearer(key)).status_code == 400
    assert client.get(BASE, headers=bearer(key)).get_json()["total"] == 0
    bound = make_key(app, "ops@example.com", ["rollouts:read"], project="other")
    assert client.get(BASE, headers=bearer(bound)).status_code == 404


def test_readers_may_list_but_only_admins_manage(
    client: Any, app: Any, key: str, receiver: Receiver
) -> None:
    endpoint = add_endpoint(client, key, receiver.url)
    make_user(app, "reader@example.com", "reader")
    make_user(app, "operator@example.com", "operator")
    reader = make_key(app, "reader@example.com", ["rollouts:read"])
    operator = make_key(app, "operator@example.com", ["rollouts:read", "rollouts:write"])
    listed = client.get(BASE, headers=bearer(reader))
    assert listed.status_code == 200 and "secret" not in listed.get_json()["items"][0]
    assert (
        client.get(f"{BASE}/{endpoint['id']}/deliveries", headers=bearer(reader)).status_code == 200
    )
    url = f"{BASE}/{endpoint['id']}"
    for caller in (reader, operator):
        for response in (
            client.post(BASE, json={"name": "mine", "url": receiver.url}, headers=bearer(caller)),
            client.patch(url, json={"enabled": False}, headers=bearer(caller)),
            client.delete(url, headers=bearer(caller)),
            client.post(f"{url}/test", headers=bearer(caller)),
        ):
            assert response.status_code == 403
            assert response.get_json()["required"] == "projects:admin"
    assert [e.action for e in audit_rows(app)] == ["notification_endpoint.created"]


# --- what the review of the first version found ------------------------------------------------


def test_a_binary_error_body_is_stored_readably_and_retried(
    client: Any, app: Any, key: str, receiver: Receiver
) -> None:
    """NUL in a receiver's answer used to fail the outcome's UPDATE on PostgreSQL, leaving the
    delivery pending and re-sent forever."""
    receiver.statuses, receiver.answer = [500], b"bad\x00\x01body"
    endpoint = add_endpoint(client, key, receiver.url)
    delivery_id = ping(client, key, endpoint["id"])
    assert deliver(app, delivery_id, row(app, delivery_id).created_at) == "pending"
    stored = row(app, delivery_id)
    assert stored.last_error == "HTTP 500: bad\ufffd\ufffdbody"
    assert stored.next_attempt_at is not None


def test_a_sender_that_raises_still_records_a_failed_attempt(
    client: Any, app: Any, key: str, receiver: Receiver
) -> None:
    endpoint = add_endpoint(client, key, receiver.url)
    delivery_id = ping(client, key, endpoint["id"])

    def broken(url: str, body: bytes, headers: Any) -> Any:
        raise RuntimeError("no such host")

    at = row(app, delivery_id).created_at
    assert deliver(app, delivery_id, at, sender=broken) == "pending"
    stored = row(app, delivery_id)
    assert (stored.attempts, stored.last_error) == (1, "RuntimeError: no such host")
    assert stored.claimed_until is None


def test_a_url_the_http_client_cannot_send_to_is_refused_at_creation(client: Any, key: str) -> None:
    response = client.post(
        BASE, json={"name": "odd", "url": "http://a\u200d.com/"}, headers=bearer(key)
    )
    assert response.status_code == 422 and "url" in response.get_json()["fields"]


def test_drift_payloads_need_the_drift_read_scope(
    client: Any, app: Any, key: str, receiver: Receiver
) -> None:
    endpoint = add_endpoint(client, key, receiver.url)
    with app.app_context():
        found = db.session.get(notifications.NotificationEndpoint, uuid.UUID(endpoint["id"]))
        assert found is not None
        project_id = found.project_id
        notifications.notify(project_id, "drift.opened", {"node_name": "edge-1"})
        db.session.commit()
    make_user(app, "watcher@example.com", "reader")
    rollouts_only = make_key(app, "watcher@example.com", ["rollouts:read"])
    hidden = deliveries(client, rollouts_only, endpoint["id"])["items"]
    shown = deliveries(client, key, endpoint["id"])["items"]
    assert [(d["event"], d["payload"]) for d in hidden] == [("drift.opened", None)]
    assert shown[0]["payload"]["data"]["node_name"] == "edge-1"


def test_a_deliveries_cursor_out_of_range_is_422(client: Any, key: str, receiver: Receiver) -> None:
    endpoint = add_endpoint(client, key, receiver.url)
    # ["0001-01-01T00:00:00+01:00", <uuid>]: well formed, but before year 1 in UTC
    cursor = base64.urlsafe_b64encode(
        json.dumps(["0001-01-01T00:00:00+01:00", str(uuid.UUID(int=1))]).encode()
    ).decode()
    response = client.get(
        f"{BASE}/{endpoint['id']}/deliveries", query_string={"cursor": cursor}, headers=bearer(key)
    )
    assert response.status_code == 422
