"""Outbound notifications: per-project webhook endpoints told about rollouts and drift.

An admin registers endpoints (name, URL, secret, subscribed events). When something a
subscriber cares about happens — a rollout pauses, fails, completes or is rolled back, a drift
event opens or resolves — `notify` writes one `notification_deliveries` row per enabled,
subscribed endpoint in the *same* transaction as the change, and asks for a delivery job once
it commits. A change that rolls back therefore notifies nobody, and a notification is never
lost between the change and the queue: the row is the promise, the job only a fast path.

`deliver` makes one attempt: it claims the row (a guarded `UPDATE`: pending, due, not claimed
by a live attempt), commits the claim, POSTs the signed JSON with no transaction open, then
records the outcome guarded by the attempt number. Success is any 2xx; anything else schedules
the next attempt with exponential backoff and jitter (`retry_delay`) until `MAX_ATTEMPTS`,
then the delivery is `failed`. The cron `sweep` enqueues every due delivery again, so retries
survive a dead worker, and a claim older than `CLAIM_LEASE` (a worker died mid-attempt) can be
taken over. Two workers never send the same attempt; a delivered or failed row is never sent
again.

Every request carries `X-Sentinel-Event`, `X-Sentinel-Delivery` (the delivery id, stable
across retries: receivers deduplicate on it), `X-Sentinel-Timestamp` (Unix seconds of the
attempt) and `X-Sentinel-Signature: sha256=<hex>`, the HMAC-SHA256 of
`"<timestamp>.<raw body>"` under the endpoint's secret. The secret is stored encrypted (the
cipher that protects signing keys) because the server must sign with it; it is shown once,
when the endpoint is created.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import secrets
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import httpx
from cryptography.fernet import InvalidToken
from sqlalchemy import (
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    and_,
    delete,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from sentinel_cp import audit, jobqueue, signing
from sentinel_cp.audit import Actor
from sentinel_cp.bundles.models import Bundle
from sentinel_cp.db import JSONType, UTCDateTime, db, new_id, utcnow
from sentinel_cp.errors import Conflict, Invalid, NotFound
from sentinel_cp.pagination import Page, decode_cursor, decode_position, encode_cursor
from sentinel_cp.projects import Project

if TYPE_CHECKING:
    from sentinel_cp.rollouts.models import Rollout

EVENTS = (
    "rollout.paused",
    "rollout.failed",
    "rollout.completed",
    "rollout.rolled_back",
    "drift.opened",
    "drift.resolved",
)
PING = "ping"  # sent by `send_test` only, whatever the endpoint subscribes to
ROLLOUT_EVENTS = {
    "paused": "rollout.paused",
    "failed": "rollout.failed",
    "completed": "rollout.completed",
    "rolled_back": "rollout.rolled_back",
}
STATES = ("pending", "delivered", "failed")

MAX_NAME = 100
MAX_URL = 2048
MIN_SECRET_LENGTH = 16
MAX_SECRET_LENGTH = 255
MAX_ENDPOINTS_PER_PROJECT = 20
SECRET_PREFIX = "whsec_"

TIMEOUT_S = 5.0
CLAIM_LEASE = timedelta(seconds=30)  # longer than the timeout plus the bookkeeping around it
MAX_ATTEMPTS = 8
DRIFT_READ_SCOPE = "nodes:read"
BACKOFF_FIRST_S = 10
BACKOFF_FACTOR = 3
BACKOFF_CAP_S = 3600
JITTER = 0.1  # each delay is stretched or shrunk by up to 10 %
MAX_ERROR = 500
MAX_EXCERPT = 200
SWEEP_BATCH = 500
RETENTION = timedelta(days=30)
USER_AGENT = "sentinel-cp-notifications"
JOB = "deliver_notification"
log = logging.getLogger(__name__)


class NotificationEndpoint(db.Model):  # type: ignore[name-defined]
    __tablename__ = "notification_endpoints"
    __table_args__ = (
        UniqueConstraint("project_id", "name", name="uq_notification_endpoints_project_name"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    project_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), nullable=False
    )
    name: Mapped[str] = mapped_column(String(MAX_NAME), nullable=False)
    url: Mapped[str] = mapped_column(String(MAX_URL), nullable=False)
    secret_encrypted: Mapped[str] = mapped_column(Text, nullable=False)
    events: Mapped[list[str]] = mapped_column(JSONType, nullable=False)
    enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    created_by: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)

    def to_dict(self) -> dict[str, Any]:
        """Everything but the secret, which is only said to be set."""
        return {
            "id": str(self.id),
            "name": self.name,
            "url": self.url,
            "events": list(self.events),
            "enabled": self.enabled,
            "secret_set": bool(self.secret_encrypted),
            "created_by": self.created_by,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


class NotificationDelivery(db.Model):  # type: ignore[name-defined]
    __tablename__ = "notification_deliveries"
    __table_args__ = (
        Index("ix_notification_deliveries_endpoint_created", "endpoint_id", "created_at"),
        Index("ix_notification_deliveries_state_due", "state", "next_attempt_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    project_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), nullable=False
    )
    endpoint_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("notification_endpoints.id", ondelete="CASCADE"), nullable=False
    )
    event: Mapped[str] = mapped_column(String(32), nullable=False)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    state: Mapped[str] = mapped_column(String(16), nullable=False, default="pending")
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # While an attempt is in flight: until when its worker owns the row.
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(MAX_ERROR))
    # One entry per attempt: {number, at, status_code, error, duration_ms}.
    attempt_log: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, nullable=False)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)

    def to_dict(self, *, with_payload: bool = True) -> dict[str, Any]:
        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value else None

        return {
            "id": str(self.id),
            "endpoint_id": str(self.endpoint_id),
            "event": self.event,
            "state": self.state,
            "attempts": self.attempts,
            "next_attempt_at": iso(self.next_attempt_at),
            "last_status_code": self.last_status_code,
            "last_error": self.last_error,
            "delivered_at": iso(self.delivered_at),
            "created_at": iso(self.created_at),
            "payload": self.payload if with_payload else None,
            "attempt_log": list(self.attempt_log or []),
        }

    def payload_visible_to(self, scopes: Collection[str]) -> bool:
        """A drift event's payload (nodes, bundles, config hashes, comments) is for callers
        who may read drift (`nodes:read`); rollout events are readable with the list itself."""
        return not self.event.startswith("drift.") or DRIFT_READ_SCOPE in scopes


# --- signing --------------------------------------------------------------------------------


def encode_body(payload: Mapping[str, Any]) -> bytes:
    """The exact bytes sent (and signed): compact JSON with sorted keys, the same every retry."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """`sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`, the `X-Sentinel-Signature` value."""
    message = str(timestamp).encode() + b"." + body
    return "sha256=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_matches(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """What a receiver checks (constant time); here for the tests and the documentation."""
    if not timestamp.isdigit():
        return False
    return hmac.compare_digest(sign(secret, int(timestamp), body), signature)


def _encrypt(secret: str) -> str:
    return signing._cipher().encrypt(secret.encode()).decode()


def _decrypt(token: str) -> str | None:
    try:
        return signing._cipher().decrypt(token.encode()).decode()
    except InvalidToken:
        log.warning("a notification secret cannot be decrypted: SECRET_KEY_BASE changed?")
        return None


# --- endpoints ------------------------------------------------------------------------------


def normalize_url(url: str) -> str:
    """An absolute http(s) URL without credentials or fragment; Invalid naming `url` otherwise."""
    value = url.strip()
    problem: str | None = None
    try:
        parts = urlsplit(value)
        host = parts.hostname or ""
        _ = parts.port  # raises ValueError for a port out of range
    except ValueError:
        parts, host = None, ""
    if not value or len(value) > MAX_URL:
        problem = f"must be 1–{MAX_URL} characters"
    elif parts is None or parts.scheme not in ("http", "https") or not host:
        problem = "must be an absolute http:// or https:// URL"
    elif parts.username is not None or parts.password is not None:
        problem = "must not carry credentials (sign with the secret instead)"
    elif parts.fragment:
        problem = "must not carry a fragment"
    elif any(ord(char) < 33 or ord(char) == 127 for char in value):
        problem = "must not contain spaces or control characters"
    if problem is None:
        try:
            httpx.URL(value)  # what the sender will parse: refuse here what it would refuse
        except (httpx.InvalidURL, ValueError):
            problem = "is not a URL an HTTP client can send to (host name or characters)"
    if problem is not None:
        raise Invalid("Invalid URL", fields={"url": [problem]})
    return value


def _check_name(name: str) -> str:
    value = name.strip()
    if not value or len(value) > MAX_NAME:
        raise Invalid("Invalid name", fields={"name": [f"must be 1–{MAX_NAME} characters"]})
    return value


def _check_secret(secret: str) -> str:
    if not (MIN_SECRET_LENGTH <= len(secret) <= MAX_SECRET_LENGTH) or secret != secret.strip():
        raise Invalid(
            "Invalid secret",
            fields={
                "secret": [
                    f"must be {MIN_SECRET_LENGTH}–{MAX_SECRET_LENGTH} characters, "
                    "without surrounding spaces"
                ]
            },
        )
    return secret


def _check_events(events: Iterable[str]) -> list[str]:
    """The subscribed events, de-duplicated, in `EVENTS` order; at least one."""
    given = list(events)
    unknown = sorted({event for event in given if event not in EVENTS})
    if unknown:
        raise Invalid(
            "Unknown events",
            fields={
                "events": [
                    f"unknown event {name!r}; known: {', '.join(EVENTS)}" for name in unknown
                ]
            },
        )
    if not given:
        raise Invalid(
            "Subscribe to at least one event",
            fields={"events": ["must not be empty (disable the endpoint instead)"]},
        )
    return [event for event in EVENTS if event in given]


def generate_secret() -> str:
    """A fresh signing secret (`whsec_` and 256 random bits)."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def create_endpoint(
    actor: Actor,
    project: Project,
    *,
    name: str,
    url: str,
    secret: str | None = None,
    events: Sequence[str] | None = None,
    enabled: bool = True,
    now: datetime | None = None,
) -> tuple[NotificationEndpoint, str]:
    """Register an endpoint (audited); returns it with its secret, which is never shown again.

    Without `secret` one is generated; without `events` it subscribes to every event.
    """
    now = now or utcnow()
    name, url = _check_name(name), normalize_url(url)
    subscribed = _check_events(EVENTS if events is None else events)
    secret = generate_secret() if secret is None else _check_secret(secret)
    count = db.session.scalar(
        select(func.count())
        .select_from(NotificationEndpoint)
        .where(NotificationEndpoint.project_id == project.id)
    )
    if (count or 0) >= MAX_ENDPOINTS_PER_PROJECT:
        raise Conflict(
            f"A project has at most {MAX_ENDPOINTS_PER_PROJECT} notification endpoints",
            code="too_many_notification_endpoints",
        )
    _refuse_taken_name(project.id, name)
    endpoint = NotificationEndpoint(
        id=new_id(),
        project_id=project.id,
        name=name,
        url=url,
        events=subscribed,
        secret_encrypted=_encrypt(secret),
        enabled=enabled,
        created_by=actor.label[:255],
        created_at=now,
        updated_at=now,
    )
    _flush_unique(endpoint, name)
    audit.record(
        actor,
        "notification_endpoint.created",
        resource_type="notification_endpoint",
        resource_id=endpoint.id,
        project_id=project.id,
        changes={
            "name": name,
            "url": url,
            "events": subscribed,
            "enabled": enabled,
            "secret": "set",
        },
        now=now,
    )
    return endpoint, secret


def _refuse_taken_name(
    project_id: uuid.UUID, name: str, *, other_than: uuid.UUID | None = None
) -> None:
    query = select(NotificationEndpoint.id).where(
        NotificationEndpoint.project_id == project_id, NotificationEndpoint.name == name
    )
    if other_than is not None:
        query = query.where(NotificationEndpoint.id != other_than)
    if db.session.scalar(query) is not None:
        raise _name_taken(name)


def _name_taken(name: str) -> Conflict:
    return Conflict(
        f"A notification endpoint named {name!r} exists", code="notification_endpoint_exists"
    )


def _flush_unique(endpoint: NotificationEndpoint, name: str) -> None:
    """Write now, so a concurrent request that took the name first is a 409, not a 500."""
    try:
        with db.session.begin_nested():
            db.session.add(endpoint)
            db.session.flush()
    except IntegrityError:
        raise _name_taken(name) from None


def list_endpoints(
    project_id: uuid.UUID, *, limit: int, cursor: str | None
) -> Page[NotificationEndpoint]:
    """By name; the cursor is the last name (names are unique per project)."""
    where = [NotificationEndpoint.project_id == project_id]
    total = (
        db.session.scalar(select(func.count()).select_from(NotificationEndpoint).where(*where)) or 0
    )
    if cursor is not None:
        (after,) = decode_cursor(cursor, (str,))
        where.append(NotificationEndpoint.name > after)
    rows = list(
        db.session.scalars(
            select(NotificationEndpoint)
            .where(*where)
            .order_by(NotificationEndpoint.name)
            .limit(limit + 1)
        )
    )
    next_cursor = encode_cursor(rows[limit - 1].name) if len(rows) > limit else None
    return Page(rows[:limit], next_cursor, total)


def get_endpoint(project_id: uuid.UUID, endpoint_id: uuid.UUID) -> NotificationEndpoint:
    """One endpoint of the project; NotFound for an unknown id or another project's."""
    endpoint = db.session.scalar(
        select(NotificationEndpoint).where(
            NotificationEndpoint.project_id == project_id, NotificationEndpoint.id == endpoint_id
        )
    )
    if endpoint is None:
        raise NotFound("Notification endpoint not found", code="notification_endpoint_not_found")
    return endpoint


def update_endpoint(
    actor: Actor,
    endpoint: NotificationEndpoint,
    *,
    name: str | None = None,
    url: str | None = None,
    secret: str | None = None,
    events: Sequence[str] | None = None,
    enabled: bool | None = None,
    now: datetime | None = None,
) -> NotificationEndpoint:
    """Change what is given (None keeps the value); only real changes are audited.

    A new secret applies to the next attempt of every pending delivery too; it appears in the
    audit log as "changed", never in clear.
    """
    now = now or utcnow()
    wanted: dict[str, Any] = {}
    if name is not None:
        wanted["name"] = _check_name(name)
    if url is not None:
        wanted["url"] = normalize_url(url)
    if events is not None:
        wanted["events"] = _check_events(events)
    if enabled is not None:
        wanted["enabled"] = enabled
    changes: dict[str, Any] = {}
    for field_name, value in wanted.items():
        before = getattr(endpoint, field_name)
        if before != value:
            changes[field_name] = [before, value]
    if secret is not None and _decrypt(endpoint.secret_encrypted) != _check_secret(secret):
        changes["secret"] = "changed"
        endpoint.secret_encrypted = _encrypt(secret)
    if "name" in changes:
        _refuse_taken_name(endpoint.project_id, wanted["name"], other_than=endpoint.id)
    if not changes:
        return endpoint
    for field_name, pair in changes.items():
        if field_name != "secret":
            setattr(endpoint, field_name, pair[1])
    endpoint.updated_at = now
    _flush_unique(endpoint, endpoint.name)
    audit.record(
        actor,
        "notification_endpoint.updated",
        resource_type="notification_endpoint",
        resource_id=endpoint.id,
        project_id=endpoint.project_id,
        changes=changes,
        now=now,
    )
    return endpoint


def delete_endpoint(
    actor: Actor, endpoint: NotificationEndpoint, *, now: datetime | None = None
) -> None:
    """Remove the endpoint and its deliveries (audited); a job in flight then finds nothing."""
    audit.record(
        actor,
        "notification_endpoint.deleted",
        resource_type="notification_endpoint",
        resource_id=endpoint.id,
        project_id=endpoint.project_id,
        changes={"name": endpoint.name, "url": endpoint.url, "events": list(endpoint.events)},
        now=now,
    )
    db.session.execute(
        delete(NotificationDelivery).where(NotificationDelivery.endpoint_id == endpoint.id)
    )
    db.session.delete(endpoint)


def send_test(
    actor: Actor, endpoint: NotificationEndpoint, *, now: datetime | None = None
) -> NotificationDelivery:
    """Queue a `ping` delivery to the endpoint (audited); 409 when the endpoint is disabled."""
    now = now or utcnow()
    if not endpoint.enabled:
        raise Conflict(
            "The endpoint is disabled; enable it to send a test",
            code="notification_endpoint_disabled",
        )
    project = db.session.get(Project, endpoint.project_id)
    assert project is not None
    payload = _payload(
        PING, project.slug, now, {"endpoint_id": str(endpoint.id), "name": endpoint.name}
    )
    delivery = _queue(endpoint, PING, payload, now)
    audit.record(
        actor,
        "notification_endpoint.tested",
        resource_type="notification_endpoint",
        resource_id=endpoint.id,
        project_id=endpoint.project_id,
        metadata={"delivery_id": str(delivery.id)},
        now=now,
    )
    return delivery


# --- emitting -------------------------------------------------------------------------------


def _subscribed(project_id: uuid.UUID, event: str) -> list[NotificationEndpoint]:
    endpoints = db.session.scalars(
        select(NotificationEndpoint)
        .where(NotificationEndpoint.project_id == project_id, NotificationEndpoint.enabled)
        .order_by(NotificationEndpoint.name)
    )
    return [endpoint for endpoint in endpoints if event in endpoint.events]


def _payload(event: str, slug: str, now: datetime, data: Mapping[str, Any]) -> dict[str, Any]:
    body = {"event": event, "project": slug, "occurred_at": now.isoformat(), "data": dict(data)}
    # Round-trip through JSON: ids and times become strings, as every receiver will see them.
    result: dict[str, Any] = json.loads(json.dumps(body, default=str))
    return result


def _queue(
    endpoint: NotificationEndpoint, event: str, payload: dict[str, Any], now: datetime
) -> NotificationDelivery:
    delivery = NotificationDelivery(
        id=new_id(),
        project_id=endpoint.project_id,
        endpoint_id=endpoint.id,
        event=event,
        payload=payload,
        state="pending",
        attempts=0,
        next_attempt_at=now,
        attempt_log=[],
        created_at=now,
    )
    db.session.add(delivery)
    jobqueue.enqueue_after_commit(JOB, str(delivery.id), job_id=job_id(delivery.id))
    return delivery


def job_id(delivery_id: uuid.UUID) -> str:
    """The RQ job id of a delivery: one job per delivery, however often it is requested."""
    return f"notify-{delivery_id}"


def notify(
    project_id: uuid.UUID,
    event: str,
    data: Mapping[str, Any],
    now: datetime | None = None,
) -> list[NotificationDelivery]:
    """Queue `event` for every enabled endpoint of the project subscribed to it, in the
    caller's transaction (the caller commits; the delivery jobs are enqueued after that)."""
    return _notify(_subscribed(project_id, event), project_id, event, data, now or utcnow())


def _notify(
    endpoints: list[NotificationEndpoint],
    project_id: uuid.UUID,
    event: str,
    data: Mapping[str, Any],
    now: datetime,
) -> list[NotificationDelivery]:
    project = db.session.get(Project, project_id) if endpoints else None
    if project is None:
        return []
    payload = _payload(event, project.slug, now, data)
    return [_queue(endpoint, event, payload, now) for endpoint in endpoints]


def rollout_changed(rollout: Rollout, now: datetime) -> None:
    """Notify about a rollout that entered `paused`, `failed`, `completed` or `rolled_back`
    (any other state notifies nobody)."""
    event = ROLLOUT_EVENTS.get(rollout.state)
    endpoints = _subscribed(rollout.project_id, event) if event is not None else []
    if event is None or not endpoints:
        return
    bundle = db.session.get(Bundle, rollout.bundle_id)
    _notify(
        endpoints,
        rollout.project_id,
        event,
        {
            "rollout_id": rollout.id,
            "state": rollout.state,
            "reason": rollout.reason,
            "details": rollout.details,
            "strategy": rollout.strategy,
            "bundle_id": rollout.bundle_id,
            "bundle_version": bundle.version if bundle is not None else None,
            "rollback_of": rollout.rollback_of,
            "created_by": rollout.created_by,
        },
        now,
    )


# --- delivering -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SendResult:
    """What one POST got back: a status code, or the error that prevented one."""

    status_code: int | None
    error: str | None
    duration_ms: int

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class Sender(Protocol):
    """POSTs one body; never raises for network trouble (it is a failed attempt)."""

    def __call__(self, url: str, body: bytes, headers: Mapping[str, str]) -> SendResult: ...


class HttpSender:
    """The default `Sender`: httpx, a short timeout, redirects not followed, and at most a
    short excerpt of the response read (for `last_error`)."""

    def __init__(
        self,
        *,
        timeout_s: float = TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timeout_s = timeout_s
        self.transport = transport
        self.clock = clock

    def __call__(self, url: str, body: bytes, headers: Mapping[str, str]) -> SendResult:
        started = self.clock()

        def elapsed() -> int:
            return int((self.clock() - started) * 1000)

        try:
            with (
                httpx.Client(
                    timeout=self.timeout_s, follow_redirects=False, transport=self.transport
                ) as client,
                client.stream("POST", url, content=body, headers=dict(headers)) as response,
            ):
                excerpt = _excerpt(response)
                status = response.status_code
        except httpx.TimeoutException:
            return SendResult(None, f"timed out after {self.timeout_s:g} s", elapsed())
        except httpx.HTTPError as exc:
            return SendResult(
                None, _printable(f"{exc.__class__.__name__}: {exc}")[:MAX_ERROR], elapsed()
            )
        if 200 <= status < 300:
            return SendResult(status, None, elapsed())
        error = f"HTTP {status}"
        if 300 <= status < 400:
            error += " (redirects are not followed)"
        if excerpt:
            error += f": {excerpt}"
        return SendResult(status, error[:MAX_ERROR], elapsed())


def _excerpt(response: httpx.Response) -> str:
    read = b""
    for chunk in response.iter_bytes():
        read += chunk
        if len(read) >= MAX_EXCERPT:
            break
    return _printable(read[:MAX_EXCERPT].decode("utf-8", "replace")).strip()


def _printable(text: str) -> str:
    """Control characters (NUL above all: PostgreSQL refuses it in text and JSONB) shown as
    U+FFFD, so a receiver's binary answer can always be stored."""
    return "".join(c if c >= " " or c in "\t\n" else "\ufffd" for c in text)


def retry_delay(attempt: int, rand: Callable[[], float] = random.random) -> timedelta:
    """Wait after failed attempt `attempt` (1-based): 10 s, 30 s, 90 s, … capped at 1 h, each
    stretched or shrunk by up to `JITTER` so a receiver's outage does not end in a stampede."""
    base = min(BACKOFF_FIRST_S * BACKOFF_FACTOR ** (attempt - 1), BACKOFF_CAP_S)
    return timedelta(seconds=base * (1 - JITTER + 2 * JITTER * rand()))


def _claim(delivery_id: uuid.UUID, now: datetime) -> int | None:
    """Take the next attempt of a due delivery; its number, or None when there is none to take."""
    D = NotificationDelivery
    return db.session.execute(
        update(D)
        .where(
            D.id == delivery_id,
            D.state == "pending",
            D.attempts < MAX_ATTEMPTS,
            D.next_attempt_at <= now,
            or_(D.claimed_until.is_(None), D.claimed_until <= now),
        )
        .values(attempts=D.attempts + 1, claimed_until=now + CLAIM_LEASE)
        .returning(D.attempts)
        .execution_options(synchronize_session=False)
    ).scalar()


def deliver(
    delivery_id: uuid.UUID,
    *,
    now: datetime | None = None,
    sender: Sender | None = None,
    rand: Callable[[], float] = random.random,
) -> str:
    """Make one attempt at a due delivery; returns its state afterwards, or `skipped` when
    there was nothing to do (delivered, failed, not due, in flight elsewhere, deleted).

    Commits twice: the claim before the POST (no transaction is open while the receiver
    answers), the outcome after it.
    """
    now = now or utcnow()
    attempt = _claim(delivery_id, now)
    if attempt is None:
        db.session.rollback()
        return "skipped"
    delivery = db.session.get(NotificationDelivery, delivery_id, populate_existing=True)
    assert delivery is not None
    endpoint = db.session.get(NotificationEndpoint, delivery.endpoint_id)
    assert endpoint is not None
    url, enabled = endpoint.url, endpoint.enabled
    secret = _decrypt(endpoint.secret_encrypted)
    body = encode_body(delivery.payload)
    event = delivery.event
    db.session.commit()
    if not enabled:
        result, final = SendResult(None, "endpoint disabled: not sent", 0), True
    elif secret is None:
        result, final = SendResult(None, "the secret cannot be decrypted: not sent", 0), False
    else:
        timestamp = int(now.timestamp())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-Sentinel-Event": event,
            "X-Sentinel-Delivery": str(delivery_id),
            "X-Sentinel-Timestamp": str(timestamp),
            "X-Sentinel-Signature": sign(secret, timestamp, body),
        }
        try:
            result, final = (sender or HttpSender())(url, body, headers), False
        except Exception as exc:  # an attempt always ends with a recorded outcome
            result, final = (
                SendResult(None, f"{exc.__class__.__name__}: {exc}"[:MAX_ERROR], 0),
                False,
            )
    state = _record(delivery_id, attempt, result, now, final=final, rand=rand)
    db.session.commit()
    return state


def _record(
    delivery_id: uuid.UUID,
    attempt: int,
    result: SendResult,
    now: datetime,
    *,
    final: bool,
    rand: Callable[[], float],
) -> str:
    """Store the attempt's outcome unless another worker took the delivery over meanwhile."""
    D = NotificationDelivery
    delivery = db.session.get(D, delivery_id, populate_existing=True)
    if delivery is None:
        return "skipped"  # the endpoint was deleted while the request was in flight
    entries = list(delivery.attempt_log or [])
    for lost in range(len(entries) + 1, attempt):
        entries.append(
            {
                "number": lost,
                "at": None,
                "status_code": None,
                "error": "no outcome recorded: the worker stopped during the attempt",
                "duration_ms": None,
            }
        )
    entries.append(
        {
            "number": attempt,
            "at": now.isoformat(),
            "status_code": result.status_code,
            "error": result.error,
            "duration_ms": result.duration_ms,
        }
    )
    values: dict[str, Any] = {
        "attempt_log": entries,
        "claimed_until": None,
        "last_status_code": result.status_code,
        "last_error": result.error,
    }
    if result.ok:
        values.update(state="delivered", delivered_at=now, next_attempt_at=None)
    elif final or attempt >= MAX_ATTEMPTS:
        values.update(state="failed", next_attempt_at=None)
    else:
        values.update(next_attempt_at=now + retry_delay(attempt, rand))
    changed = db.session.execute(
        update(D)
        .where(D.id == delivery_id, D.state == "pending", D.attempts == attempt)
        .values(**values)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    if changed != 1:
        log.warning(
            "delivery %s: attempt %d outlived its claim; outcome dropped", delivery_id, attempt
        )
        return "skipped"
    return str(values.get("state", "pending"))


def sweep(now: datetime | None = None) -> dict[str, int]:
    """Cron: enqueue every due delivery not claimed by a live attempt (retries, lost jobs)."""
    now = now or utcnow()
    D = NotificationDelivery
    due = db.session.scalars(
        select(D.id)
        .where(
            D.state == "pending",
            D.next_attempt_at <= now,
            or_(D.claimed_until.is_(None), D.claimed_until <= now),
        )
        .order_by(D.next_attempt_at)
        .limit(SWEEP_BATCH)
    ).all()
    db.session.rollback()
    for delivery_id in due:
        jobqueue.enqueue_now(JOB, str(delivery_id), job_id=job_id(delivery_id))
    return {"enqueued": len(due)}


def prune(now: datetime | None = None) -> int:
    """Delete delivered and failed deliveries older than `RETENTION` (the caller commits)."""
    now = now or utcnow()
    D = NotificationDelivery
    deleted = db.session.execute(
        delete(D)
        .where(D.state.in_(("delivered", "failed")), D.created_at < now - RETENTION)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    return int(deleted or 0)


# --- reading deliveries ---------------------------------------------------------------------


def list_deliveries(
    endpoint: NotificationEndpoint,
    *,
    state: str | None = None,
    event: str | None = None,
    limit: int,
    cursor: str | None,
) -> Page[NotificationDelivery]:
    """Newest first; the cursor is (created_at, id), stable under inserts."""
    D = NotificationDelivery
    where = [D.project_id == endpoint.project_id, D.endpoint_id == endpoint.id]
    if state is not None:
        where.append(D.state == state)
    if event is not None:
        where.append(D.event == event)
    total = db.session.scalar(select(func.count()).select_from(D).where(*where)) or 0
    if cursor is not None:
        at, after = decode_position(cursor)
        where.append(or_(D.created_at < at, and_(D.created_at == at, D.id < after)))
    rows = list(
        db.session.scalars(
            select(D).where(*where).order_by(D.created_at.desc(), D.id.desc()).limit(limit + 1)
        )
    )
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = encode_cursor(last.created_at.isoformat(), str(last.id))
    return Page(rows[:limit], next_cursor, total)
