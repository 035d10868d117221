"""Repeated polls answered from memory: a 304 for an unchanged ETag, without the database.

A poll is what every node sends every poll interval, and in a steady fleet nearly every answer
is 304. `spec/node-protocol.md` asks that a poll cost at most one indexed read and encourages
serving 304s from a cache; this is that cache, one per process.

What it remembers: per node, the credential last answered (sha256 of the node key, or of the
bearer token) and the ETag it was answered with, which project that node belongs to, and until
when the credential is good (a token's `exp`; `MAX_AGE_S` at most). A poll whose
`If-None-Match` holds that ETag gets 304 at once; anything else takes the normal path (which
authenticates, answers and remembers).

What makes it forget — the events channel is its invalidation bus. Every audited change
publishes an event naming its project after it commits (assignments, status reports, key
revocation, node deletion, bundle revocation and collection, signing keys, project settings,
rollout state), and so does a heartbeat that changes a node's running bundle. A listener thread
subscribed to the channel marks what the event is about invalidated at a version number; an
entry is good only if it was read after the last invalidation of its project, of its node and
of the rollout its answer depends on (the version is taken before the database read, and an
event is received only after its commit, so a read that raced a change is never trusted). What
an event is about (`scope`): a `node` event names one node, and only that node's entries forget
(a status report, an assignment or one taken back, a node coming online, revoked or deleted); a
`rollout` event forgets the entries remembered with that rollout (`NodeIdentity.waits_on`: the
nodes it assigned a bundle they do not run yet, whose `poll_after_s` follows its state); the
`audit` event of a `node.*` or `rollout.*` action says nothing more — every such change
publishes its own event in the same commit and the same pipelined publish — so it is passed
over; every other event (project settings, signing keys, bundles, anything unknown) makes the
whole project forget. Until session 8 every event did that, so during a rollout each status
report made every process re-read every node of the project; until session 9 so did every
rollout transition. The listener also notes nodes whose `verified` report arrived
(`take_verified`) for the heartbeat buffer, which ticks their rollout after their next
heartbeat. While the listener is not subscribed — not yet, or Redis went away or stopped
answering its pings, when events may be missed — nothing is answered from memory and
everything is forgotten. An event its publisher failed to send (logged as "event(s) not
published") is the one thing this cannot see: `MAX_AGE_S` bounds how long such an answer
stays.

Bounded: one entry per node, at most `MAX_ENTRIES` (then expired entries go, and if need be
the older half), so memory stays O(fleet) whatever a node sends.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from sentinel_cp.events import (
    CHANNEL,
    is_audit_linked,
    is_node_audit_echo,
    is_rollout_audit_echo,
)

log = logging.getLogger(__name__)
MAX_ENTRIES = 200_000
MAX_AGE_S = 60.0  # an entry is re-read from the database at least this often
HEALTH_CHECK_S = 1.0  # the listener makes sure Redis still answers this often
PONG_TIMEOUT_S = 2.0  # a Redis slower than this to answer a ping counts as gone
RECONNECT_S = 1.0


@dataclass(frozen=True, slots=True)
class Entry:
    credential: str  # sha256 of the normalised credential that was answered
    etag: str
    project: str
    read_at_version: int
    good_until: float  # time.monotonic()
    rollout: str | None = None  # the rollout whose state the answer depends on (`waits_on`)


@dataclass(frozen=True, slots=True)
class Known:
    """Who a credential was found to be (`NodeWho`), for status reports."""

    credential: str
    who: Any
    project: str
    read_at_version: int
    good_until: float


class PollCache:
    """Per-process memory of poll answers, kept true by a pub/sub listener thread."""

    def __init__(self, redis_url: str, *, clock: Any = time.monotonic) -> None:
        self.redis_url = redis_url
        self.clock = clock
        self.entries: dict[str, Entry] = {}  # one per node: the credential it last answered
        self.version = 0
        self.invalidated_at: dict[str, int] = {}  # project id -> version of its last event
        self.node_invalidated_at: dict[str, int] = {}  # node id -> version of its last event
        self.rollout_invalidated_at: dict[str, int] = {}  # rollout id -> its last event's
        # Who each node's last good credential is, for status reports: forgotten like an
        # entry, except that the node's own progress through a bundle (`is_progress`) does
        # not touch it — so a node's four reports read its credential once, not four times.
        self.known: dict[str, Known] = {}
        self.who_invalidated_at: dict[str, int] = {}  # node id -> its last other event's
        self.floor = 0  # entries read before this version are never trusted
        # Nodes whose `verified` report was published, until a heartbeat of theirs takes the
        # note (`take_verified`): that heartbeat is the evidence a rollout's gates wait for.
        self.verified: set[str] = set()
        self.subscribed = threading.Event()
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # --- the request side ---------------------------------------------------------------------

    @staticmethod
    def credential_key(node_id: str, header: str, value: str) -> tuple[str, str] | None:
        """(node, credential digest), both normalised the way the server reads them — so the
        many spellings of one node id or one bearer header are one entry; None for a node id
        the server would refuse anyway."""
        try:
            node = str(uuid.UUID(node_id))
        except ValueError:
            return None
        if header == "Authorization":
            scheme, _, token = value.partition(" ")
            credential = f"bearer {token.strip()}" if scheme.lower() == "bearer" else value
        else:
            credential = f"key {value}"
        return node, hashlib.sha256(credential.encode()).hexdigest()

    def etag_for(self, key: tuple[str, str]) -> str | None:
        """The ETag this credential was last answered with, while still known to be current."""
        if not self.subscribed.is_set():
            return None
        node, credential = key
        entry = self.entries.get(node)
        if entry is None or entry.credential != credential:
            return None
        if not self.trusted(
            entry.project, entry.read_at_version, entry.good_until, node, entry.rollout
        ):
            self.entries.pop(node, None)
            return None
        return entry.etag

    def trusted(
        self,
        project: str,
        read_at_version: int,
        good_until: float,
        node: str,
        rollout: str | None = None,
    ) -> bool:
        """Whether what was read about `node` of `project` at `read_at_version` is still
        current: no event about the project or the node since — nor about `rollout`, the
        rollout whose state the answer depends on, if any — the listener subscribed all along,
        not past `good_until`. (The heartbeat buffer remembers node snapshots by the same
        rule.)"""
        return (
            self.subscribed.is_set()
            and read_at_version >= self.floor
            and read_at_version >= self.invalidated_at.get(project, 0)
            and read_at_version >= self.node_invalidated_at.get(node, 0)
            and (rollout is None or read_at_version >= self.rollout_invalidated_at.get(rollout, 0))
            and self.clock() < good_until
        )

    def remember(
        self,
        key: tuple[str, str],
        etag: str,
        project: str,
        read_at_version: int,
        valid_for_s: float = MAX_AGE_S,
        rollout: str | None = None,
    ) -> None:
        """Keep what a poll read at `read_at_version` (taken before its database read);
        `rollout`: the rollout whose state the answer depends on (`NodeIdentity.waits_on`)."""
        node, credential = key
        self._keep(
            self.entries,
            node,
            valid_for_s,
            lambda good_until: Entry(
                credential, etag, project, read_at_version, good_until, rollout
            ),
        )

    def who_for(self, key: tuple[str, str]) -> Any | None:
        """Who this credential is (as remembered by `remember_who`), while still known to be
        good: no event about its project, nor one about its node other than the node's own
        progress through a bundle, since it was read; the listener subscribed all along."""
        if not self.subscribed.is_set():
            return None
        node, credential = key
        known = self.known.get(node)
        if known is None or known.credential != credential:
            return None
        if not (
            known.read_at_version >= self.floor
            and known.read_at_version >= self.invalidated_at.get(known.project, 0)
            and known.read_at_version >= self.who_invalidated_at.get(node, 0)
            and self.clock() < known.good_until
        ):
            self.known.pop(node, None)
            return None
        return known.who

    def remember_who(
        self,
        key: tuple[str, str],
        who: Any,
        project: str,
        read_at_version: int,
        valid_for_s: float = MAX_AGE_S,
    ) -> None:
        """Keep who a credential is, read at `read_at_version` (taken before the read)."""
        node, credential = key
        self._keep(
            self.known,
            node,
            valid_for_s,
            lambda good_until: Known(credential, who, project, read_at_version, good_until),
        )

    def _keep(
        self,
        remembered: dict[str, Any],
        node: str,
        valid_for_s: float,
        make: Callable[[float], Any],
    ) -> None:
        """Store `make(good_until)` as what is remembered about `node` (nothing while not
        subscribed), bounded by `MAX_ENTRIES`."""
        if not self.subscribed.is_set() or valid_for_s <= 0:
            return
        if len(remembered) >= MAX_ENTRIES and node not in remembered:
            self._make_room(remembered)
        good_until = self.clock() + min(valid_for_s, MAX_AGE_S)
        remembered.pop(node, None)  # re-inserted last: the dict's order is age
        remembered[node] = make(good_until)

    def _make_room(self, remembered: dict[str, Any]) -> None:
        """Drop expired entries; if that is not enough, the older half."""
        now = self.clock()
        for node in [n for n, e in list(remembered.items()) if e.good_until <= now]:
            remembered.pop(node, None)
        if len(remembered) >= MAX_ENTRIES:
            for node in list(remembered)[: len(remembered) // 2]:
                remembered.pop(node, None)

    # --- the listener side --------------------------------------------------------------------

    def invalidate(
        self,
        project: str | None,
        node: str | None = None,
        rollout: str | None = None,
        *,
        progress: bool = False,
    ) -> None:
        """An event about `node` or `rollout` (neither: the whole project) of `project` (None:
        about anything) arrived; `progress`: a node event that is only the node's progress
        through a bundle (`is_progress`), which leaves who its credential is alone."""
        with self._lock:
            self.version += 1
            if project is None:
                self.floor = self.version
            elif node is not None:
                self._note(self.node_invalidated_at, node)
                if not progress:
                    self._note(self.who_invalidated_at, node)
            elif rollout is not None:
                self._note(self.rollout_invalidated_at, rollout)
            else:
                self.invalidated_at[project] = self.version

    def _note(self, versions: dict[str, int], ident: str) -> None:
        if len(versions) >= MAX_ENTRIES:
            # bounded like the entries: forgetting every node's (rollout's) version is safe
            # only if everything read before now is forgotten with them
            versions.clear()
            self.floor = self.version
        versions[ident] = self.version

    def take_verified(self, node: str) -> bool:
        """Whether `node` reported a bundle verified since this was last asked about it."""
        with self._lock:
            if node not in self.verified:
                return False
            self.verified.discard(node)
            return True

    def forget_everything(self) -> None:
        with self._lock:
            self.version += 1
            self.floor = self.version
            self.invalidated_at.clear()
            self.node_invalidated_at.clear()
            self.rollout_invalidated_at.clear()
            self.who_invalidated_at.clear()
            self.entries.clear()
            self.known.clear()

    def handle(self, message: dict[str, Any] | None) -> None:
        if message is None or message.get("type") != "message":
            return
        try:
            payload = json.loads(message["data"])
        except (ValueError, TypeError):
            payload = None
        scope = event_scope(payload)
        if scope is not None:
            self.invalidate(*scope, progress=is_progress(payload))
        verified = verified_node(payload)
        if verified is not None:
            with self._lock:
                if len(self.verified) >= MAX_ENTRIES:
                    self.verified.clear()  # a lost note only leaves a tick to the sweep
                self.verified.add(verified)

    def start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._listen, name="poll-cache", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _listen(self) -> None:
        while not self.stopping.is_set():
            client = redis.Redis.from_url(
                self.redis_url,
                socket_timeout=HEALTH_CHECK_S * 2,
                socket_connect_timeout=2,
                # never reconnect and resubscribe behind our back: a lost connection must be
                # seen here, since events published meanwhile are lost with it
                retry=Retry(NoBackoff(), 0),
            )
            try:
                self._session(client)
            except (redis.RedisError, OSError) as exc:
                log.warning("poll cache off until Redis is back: %s", exc.__class__.__name__)
            finally:
                self.subscribed.clear()
                self.forget_everything()
                client.close()
            self.stopping.wait(RECONNECT_S)

    def _session(self, client: redis.Redis) -> None:
        pubsub = client.pubsub()
        try:
            pubsub.subscribe(CHANNEL)
            confirmed = pubsub.get_message(timeout=HEALTH_CHECK_S * 2)
            if confirmed is None or confirmed.get("type") != "subscribe":
                raise redis.ConnectionError("no subscription confirmation")
            self.forget_everything()  # whatever happened before this moment is unknown
            self.subscribed.set()
            pinged_at: float | None = None
            checked = time.monotonic()
            while not self.stopping.is_set():
                message = pubsub.get_message(timeout=HEALTH_CHECK_S)
                if message is not None and message.get("type") == "pong":
                    pinged_at = None
                self.handle(message)
                now = time.monotonic()
                if pinged_at is not None and now - pinged_at > PONG_TIMEOUT_S:
                    # Frozen or cut off: events published meanwhile may never arrive.
                    raise redis.TimeoutError("no answer to a ping")
                if pinged_at is None and now - checked >= HEALTH_CHECK_S:
                    pubsub.ping()
                    pinged_at = checked = now
        finally:
            pubsub.close()


def event_scope(payload: Any) -> tuple[str | None, str | None, str | None] | None:
    """What an event makes forget, as (project, node, rollout): one node's entries, or those
    whose answer depends on one rollout's state, or (project, None, None) the whole project,
    (None, None, None) everything; None for nothing (the audit echo of a node or rollout
    change, whose own event came in the same commit; the audit linker's `audit.linked`)."""
    if isinstance(payload, dict) and is_audit_linked(payload):
        return None  # the global chain's too, which names no project
    if not isinstance(payload, dict) or not isinstance(payload.get("project"), str):
        return None, None, None
    project, kind, ident = payload["project"], payload.get("kind"), payload.get("id")
    if kind == "node" and isinstance(ident, str):
        return project, ident, None
    if kind == "rollout" and isinstance(ident, str):
        # A rollout's state decides only the `poll_after_s` of the nodes it assigned a bundle
        # they do not run yet; what it assigns, or takes back, publishes `node` events.
        return project, None, ident
    if is_node_audit_echo(payload) or is_rollout_audit_echo(payload):
        return None
    return project, None, None


# A node's own progress through a bundle: assigned or taken back, and its status reports.
# Nothing about its credential changes with them; every other node event (registered,
# online/offline, labels, key revoked, deleted, and any state added later) may.
PROGRESS_STATES = frozenset({"assigned", "unassigned"})


def is_progress(payload: Any) -> bool:
    """Whether a `node` event is only the node's progress through a bundle."""
    if not isinstance(payload, dict) or payload.get("kind") != "node":
        return False
    state = payload.get("state")
    return isinstance(state, str) and (state in PROGRESS_STATES or state.startswith("bundle_"))


def verified_node(payload: Any) -> str | None:
    """The node a `bundle_verified` report event is about (`distribution.report_status`)."""
    if not isinstance(payload, dict) or payload.get("kind") != "node":
        return None
    ident = payload.get("id")
    return ident if payload.get("state") == "bundle_verified" and isinstance(ident, str) else None


_create_lock = threading.Lock()
EXTENSION = "sentinel_poll_cache"


def for_app(app: Any) -> PollCache | None:
    """The application's cache, its listener started on first use (so in each forked worker,
    never in a parent that forks); None when `POLL_CACHE` is off or there is no Redis."""
    cache: PollCache | None = app.extensions.get(EXTENSION)
    if cache is not None or not app.config.get("POLL_CACHE") or not app.config.get("REDIS_URL"):
        return cache
    with _create_lock:
        cache = app.extensions.get(EXTENSION)
        if cache is None:
            cache = PollCache(app.config["REDIS_URL"])
            cache.start()
            app.extensions[EXTENSION] = cache
    return cache
