"""Steady heartbeats answered from memory and written in batches.

Nearly every heartbeat of a running fleet is the same: an online node, still running the bundle
it ran, reporting fresh health and metrics. Through the database each costs a credential read
and a committed write of its own. Each `web`/`api` process therefore remembers the nodes it has
answered — the snapshot read with the credential (`nodes.NodeContext`), updated with what every
heartbeat wrote — and answers a heartbeat that changes only soft state (`nodes.steady_heartbeat`)
at once; its write waits in memory, the latest per node, and a thread writes what is waiting
every `FLUSH_S` in one transaction (`nodes.write_heartbeats`).

A steady heartbeat of a node this process does not remember (a new credential, a snapshot no
longer trusted, the listener away) reads the node from the database — one statement — and its
write is queued all the same (`read_heartbeat`). What is written at once, as before: a node
coming online, a changed running bundle (which can verify a rollout step), the history sample
due once a minute, and everything after a failed flush until the database takes a write again.
A snapshot is trusted by the poll cache's rule
(`PollCache.trusted`): no event about its project, its node or the rollout whose bundle it
waits for since it was read (key revocation, node deletion, an assignment, the staleness sweep
— every change publishes one), 60–90 s at most (`MAX_AGE_S`; spread, so a fleet remembered at
once is not read again all at once), and a token's `exp`.

The flush also ticks rollouts: a node's first heartbeat since its `verified` report is the
fresh one the rollout's gates wait for (`_gate_evidence`), so once it is written the rollout is
ticked, if none of its deliveries is still on its way.

What this costs, on purpose (`docs/decisions.md`): a process killed without its shutdown flush
loses up to `FLUSH_S` of liveness it had acknowledged — the node's next heartbeat repeats it;
operator views and health gates see a heartbeat up to `FLUSH_S` late; and the 1/s limit per
node is enforced by each process for what it answers, and across processes by the write's
guard (a heartbeat less than a second after one another process wrote is dropped, not refused).
"""

from __future__ import annotations

import atexit
import logging
import random
import threading
import time
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection

from sentinel_cp import jobqueue, metrics, nodes
from sentinel_cp.bundles.distribution import rollout_settled
from sentinel_cp.bundles.pollcache import PollCache
from sentinel_cp.bundles.pollcache import for_app as poll_cache_for
from sentinel_cp.db import hot_connection, utcnow

log = logging.getLogger(__name__)
FLUSH_S = 0.5
MAX_AGE_S = 90.0  # a snapshot is read again after a random 2/3 to all of this
MAX_ENTRIES = 200_000
# A write that keeps failing (the database is away) is kept for the next flush, but not once
# it is older than this: the node has heartbeated since or is gone.
KEEP_FAILED = timedelta(seconds=30)


@dataclass(frozen=True, slots=True)
class Entry:
    credential: str  # sha256 of the normalised credential (`PollCache.credential_key`)
    context: nodes.NodeContext
    read_at_version: int
    good_until: float  # time.monotonic()


class HeartbeatBuffer:
    """Per-process node snapshots and the heartbeat writes waiting for the next flush."""

    def __init__(self, cache: PollCache, app: Any, *, clock: Any = time.monotonic) -> None:
        self.cache = cache
        self.app = app
        self.clock = clock
        self.entries: dict[str, Entry] = {}  # node id -> its snapshot
        self.pending: dict[uuid.UUID, dict[str, Any]] = {}  # node id -> values to write
        self.ticks: set[uuid.UUID] = set()  # rollouts to tick once the pending writes are in
        # False from a failed write until a write works again (a flush, or a heartbeat written
        # through the database): while the database is away heartbeats take the database path
        # (503 and Retry-After), and none is acknowledged from memory.
        self.writing = True
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # --- the request side ---------------------------------------------------------------------

    def knows(self, key: tuple[str, str]) -> bool:
        """Whether this credential of this node is remembered (trusted or not)."""
        entry = self.entries.get(key[0])
        return entry is not None and entry.credential == key[1]

    def heartbeat(
        self, key: tuple[str, str], report: dict[str, Any], now: datetime
    ) -> dict[str, Any] | None:
        """The answer to a steady heartbeat from a remembered node, its write queued; None
        sends the heartbeat down the database path (and forgets the node until it returns)."""
        node_id, credential = key
        with self._lock:
            entry = self.entries.get(node_id)
            if entry is None or entry.credential != credential or not self.writing:
                return None
            if not self._trusted(entry):  # (never past a token's expiry: see `remember`)
                del self.entries[node_id]
                return None
            ctx = entry.context
            values = nodes.steady_heartbeat(ctx.node, report, now)  # 429 when too soon
            if values is None:
                del self.entries[node_id]
                return None
            ctx = replace(ctx, node=nodes.after_heartbeat(ctx.node, values))
            self.entries[node_id] = replace(entry, context=ctx)
            self._queue(ctx.node.id, values)
        metrics.HEARTBEATS_BUFFERED.inc()
        return nodes.heartbeat_answer(ctx, now)

    def read_heartbeat(
        self,
        key: tuple[str, str],
        ctx: nodes.NodeContext,
        report: dict[str, Any],
        now: datetime,
        read_at_version: int,
    ) -> dict[str, Any] | None:
        """The answer to a steady heartbeat of a node just read from the database (not
        remembered, or not trusted any more): its write is queued like one answered from
        memory, and the node remembered; None when it is not steady (`record_heartbeat`)."""
        if not self.writing:
            return None
        with self._lock:
            waiting = self.pending.get(ctx.node.id)
            if waiting is not None:  # the database does not know of this one yet
                ctx = replace(ctx, node=nodes.after_heartbeat(ctx.node, waiting))
            values = nodes.steady_heartbeat(ctx.node, report, now)  # 429 when too soon
            if values is None:
                return None
            self._queue(ctx.node.id, values)
            rollout = self._gate_evidence(ctx.node)
            if rollout is not None:
                self.ticks.add(rollout)
        self.remember(key, ctx, values, read_at_version)
        metrics.HEARTBEATS_BUFFERED.inc()
        return nodes.heartbeat_answer(ctx, now)

    def _queue(self, node_id: uuid.UUID, values: dict[str, Any]) -> None:
        waiting = self.pending.get(node_id)
        self.pending[node_id] = values if waiting is None else {**waiting, **values}

    def remember(
        self,
        key: tuple[str, str],
        ctx: nodes.NodeContext,
        values: dict[str, Any],
        read_at_version: int,
    ) -> None:
        """Keep the snapshot of a node whose heartbeat was just queued or written (`values`),
        read at `read_at_version` (taken before the credential read)."""
        valid_for_s = ctx.good_for_s(MAX_AGE_S * random.uniform(2 / 3, 1))
        if not self.cache.subscribed.is_set() or valid_for_s <= 0:
            return
        node_id, credential = key
        snapshot = replace(ctx, node=nodes.after_heartbeat(ctx.node, values), connection=None)
        with self._lock:
            if len(self.entries) >= MAX_ENTRIES and node_id not in self.entries:
                self._make_room()
            self.entries.pop(node_id, None)  # re-inserted last: the dict's order is age
            self.entries[node_id] = Entry(
                credential, snapshot, read_at_version, self.clock() + valid_for_s
            )

    def written(
        self,
        key: tuple[str, str],
        ctx: nodes.NodeContext,
        report: dict[str, Any],
        now: datetime,
        read_at_version: int,
    ) -> None:
        """`record_heartbeat` just wrote this heartbeat: the database takes writes again (after
        a failed flush, memory answers only once it has), and the node is remembered."""
        self.writing = True
        self.remember(key, ctx, nodes.heartbeat_values(ctx.node, report, now), read_at_version)
        rollout = self._gate_evidence(ctx.node)
        if rollout is not None:
            with self._lock:
                self.ticks.add(rollout)  # written already; the next flush ticks it

    def _gate_evidence(self, node: nodes.NodeIdentity) -> uuid.UUID | None:
        """The rollout to tick once this heartbeat is written, when it is the node's first
        since its `verified` report and the node runs the bundle its running rollout assigned:
        the fresh heartbeat that rollout's gates wait for (only heartbeats after activation
        count). Without the tick the step would wait for the sweep's (every 2 s). A heartbeat
        read by the database path is the one that comes after the report: the report's event
        made every process forget the node."""
        if not self.cache.take_verified(str(node.id)):
            return None
        if (
            node.assigned_rollout_id is None
            or node.assigned_rollout_state not in nodes.ACTIVE_ROLLOUT_STATES
            or node.active_bundle_id != node.assigned_bundle_id
        ):
            return None
        return node.assigned_rollout_id

    def _trusted(self, entry: Entry) -> bool:
        node = entry.context.node
        return self.cache.trusted(
            str(node.project_id),
            entry.read_at_version,
            entry.good_until,
            str(node.id),
            node.waits_on,
        )

    def _make_room(self) -> None:
        """Drop snapshots no longer trusted; if that is not enough, the older half."""
        for node_id in [n for n, e in self.entries.items() if not self._trusted(e)]:
            del self.entries[node_id]
        if len(self.entries) >= MAX_ENTRIES:
            for node_id in list(self.entries)[: len(self.entries) // 2]:
                del self.entries[node_id]

    # --- the writer side ----------------------------------------------------------------------

    def flush(self) -> int:
        """Write what is waiting in one transaction; returns how many nodes were written.
        A failed write stays queued (unless a newer heartbeat of the node replaced it, or it
        is older than `KEEP_FAILED`) and the error is logged. Then the rollouts that waited
        for these heartbeats (`_gate_evidence`) are ticked, those whose step is settled."""
        with self._flush_lock:
            with self._lock:
                batch, self.pending = self.pending, {}
                ticks, self.ticks = self.ticks, set()
            if not batch and not ticks:
                return 0
            try:
                with self.app.app_context():
                    connection = hot_connection()
                    try:
                        if batch:
                            nodes.write_heartbeats(connection, batch)
                        settled = _settled(ticks, connection)
                    finally:
                        connection.close()
            except Exception:
                log.exception("%d buffered heartbeat(s) not written; retrying", len(batch))
                metrics.HEARTBEAT_FLUSH_FAILURES.inc()
                self.writing = False
                self._requeue(batch)
                with self._lock:
                    self.ticks |= ticks
                return 0
            self.writing = True
            for rollout in settled:
                jobqueue.tick_rollout_now(rollout)
            return len(batch)

    def _requeue(self, batch: dict[uuid.UUID, dict[str, Any]]) -> None:
        oldest = utcnow() - KEEP_FAILED
        with self._lock:
            for node_id, values in batch.items():
                if values["last_heartbeat_at"] < oldest:
                    continue
                newer = self.pending.get(node_id)
                self.pending[node_id] = values if newer is None else {**values, **newer}

    def start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="heartbeats", daemon=True)
            self._thread.start()
        atexit.register(self.stop)

    def stop(self) -> None:
        """Stop the thread and write what is still waiting (a graceful worker exit)."""
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.flush()

    def _run(self) -> None:
        while not self.stopping.wait(FLUSH_S):
            self.flush()


def _settled(rollouts: set[uuid.UUID], connection: Connection) -> list[uuid.UUID]:
    """The rollouts whose current step has no delivery on its way: only such a step can start
    baking or finish (until then the last `verified` report ticks it). A failed check counts as
    settled: a tick too many is cheaper than a step left to the sweep."""
    try:
        return [rollout for rollout in sorted(rollouts) if rollout_settled(rollout, connection)]
    except Exception as exc:
        log.warning("rollout check failed (%s); ticking anyway", exc.__class__.__name__)
        return sorted(rollouts)


_create_lock = threading.Lock()
EXTENSION = "sentinel_heartbeat_buffer"


def for_app(app: Any) -> HeartbeatBuffer | None:
    """The application's buffer, its thread started on first use (in each forked worker);
    None when `HEARTBEAT_BUFFER` or the poll cache (whose listener keeps it true) is off."""
    buffer: HeartbeatBuffer | None = app.extensions.get(EXTENSION)
    if buffer is not None or not app.config.get("HEARTBEAT_BUFFER"):
        return buffer
    cache = poll_cache_for(app)
    if cache is None:
        return None
    with _create_lock:
        buffer = app.extensions.get(EXTENSION)
        if buffer is None:
            buffer = HeartbeatBuffer(cache, getattr(app, "_get_current_object", lambda: app)())
            buffer.start()
            app.extensions[EXTENSION] = buffer
    return buffer
