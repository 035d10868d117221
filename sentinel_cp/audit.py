"""The audit log: one row per mutation, written in the mutation's own transaction.

Rows are hash-chained per project (plus one "global" chain for users, API keys and sessions).
Each row stores its chain, a gap-free sequence number, the previous row's hash and its own
hash over a canonical JSON of everything it says. `record` only queues a row on the session;
how it is linked into its chain depends on the database:

- **SQLite** (one writer at a time anyway): just before the commit (`_link_pending`, a
  `before_commit` hook), one `UPDATE … RETURNING` per chain takes the next sequence numbers
  under the database's write lock.
- **PostgreSQL**: the row commits *unlinked* (no sequence number, no hashes) with the change it
  records, and is linked right after that commit by `link_chain`, in a transaction of its own
  that takes the chain head with `FOR UPDATE SKIP LOCKED`. Requests therefore never wait for
  each other on a project's chain head (node reports of a 1,000-node rollout used to queue on
  it, ~115 commits/s). Whoever holds the head links every unlinked row it finds and looks again
  after its commit, so a row whose own linker found the head taken is linked by the holder: the
  row committed before the holder released the head, and the holder's next look sees it. A
  process that dies between the two commits leaves its rows for the next link on that chain or
  for `link_all`, which the cron runs every few seconds. Who links: an operator's or the
  system's commit, its own request, one round (what committed meanwhile goes to the next);
  a commit whose every row a node recorded (status reports), the process's `Linker` thread,
  so a node's request answers right after its commit.

Until it is linked a row is not listed, exported or verified (`seq IS NULL`), and it is not yet
tamper-evident; that window is milliseconds, at most the cron interval. Chains are locked in a
fixed order, so two transactions writing to two chains cannot deadlock. `verify_chain`
recomputes every hash and reports the first row that was edited, or the row after a deleted
one.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import os
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Index,
    Integer,
    String,
    bindparam,
    event,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Mapped, Session, mapped_column

from sentinel_cp import events
from sentinel_cp.db import (
    JSONType,
    UTCDateTime,
    db,
    new_id,
    queue_for_commit,
    take_committed,
    utcnow,
)
from sentinel_cp.pagination import Page, decode_cursor, encode_cursor

log = logging.getLogger(__name__)

GLOBAL_CHAIN = "global"
GENESIS_HASH = "0" * 64
READ_SCOPE = "audit:read"  # list, export and verify (every role holds it)


@dataclass(frozen=True)
class Actor:
    """Who did it: a user, an API key (acting for its creator), a node, or the system."""

    type: str
    id: str | None
    label: str

    @classmethod
    def system(cls, component: str) -> Actor:
        return cls("system", None, component)


class AuditChainHead(db.Model):  # type: ignore[name-defined]
    __tablename__ = "audit_chain_heads"

    chain: Mapped[str] = mapped_column(String(40), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    last_hash: Mapped[str] = mapped_column(String(64), nullable=False, default=GENESIS_HASH)


class AuditLog(db.Model):  # type: ignore[name-defined]
    __tablename__ = "audit_logs"
    __table_args__ = (
        Index("uq_audit_logs_chain_seq", "chain", "seq", unique=True),
        Index("ix_audit_logs_project_created", "project_id", "created_at"),
        Index(
            "ix_audit_logs_unlinked",
            "chain",
            postgresql_where=text("seq IS NULL"),
            sqlite_where=text("seq IS NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    chain: Mapped[str] = mapped_column(String(40), nullable=False)
    seq: Mapped[int | None] = mapped_column(Integer)  # NULL until linked (PostgreSQL)
    # No foreign key: the log outlives the projects it talks about, and nulling the column
    # on delete would break the row's hash.
    project_id: Mapped[uuid.UUID | None] = mapped_column(nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    actor_type: Mapped[str] = mapped_column(String(16), nullable=False)
    actor_id: Mapped[str | None] = mapped_column(String(64))
    actor_label: Mapped[str] = mapped_column(String(255), nullable=False)
    action: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    resource_type: Mapped[str] = mapped_column(String(32), nullable=False)
    resource_id: Mapped[str | None] = mapped_column(String(64))
    changes: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType, nullable=False, default=dict)
    prev_hash: Mapped[str | None] = mapped_column(String(64))
    entry_hash: Mapped[str | None] = mapped_column(String(64))

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "seq": self.seq,
            "project_id": str(self.project_id) if self.project_id else None,
            "created_at": _timestamp(self.created_at),
            "actor": {"type": self.actor_type, "id": self.actor_id, "label": self.actor_label},
            "action": self.action,
            "resource": {"type": self.resource_type, "id": self.resource_id},
            "changes": self.changes,
            "metadata": self.meta,
            "prev_hash": self.prev_hash,
            "entry_hash": self.entry_hash,
        }


def _timestamp(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def chain_key(project_id: uuid.UUID | None) -> str:
    return str(project_id) if project_id else GLOBAL_CHAIN


def compute_hash(row: Any) -> str:
    """The SHA-256 over the canonical JSON of everything the row says, its link included
    (`row`: an `AuditLog`, or anything with its attributes)."""
    payload = {
        "id": str(row.id),
        "chain": row.chain,
        "seq": row.seq,
        "project_id": str(row.project_id) if row.project_id else None,
        "created_at": _timestamp(row.created_at),
        "actor_type": row.actor_type,
        "actor_id": row.actor_id,
        "actor_label": row.actor_label,
        "action": row.action,
        "resource_type": row.resource_type,
        "resource_id": row.resource_id,
        "changes": row.changes,
        "metadata": row.meta,
        "prev_hash": row.prev_hash,
    }
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _link(rows: list[Any], first_seq: int, prev_hash: str) -> str:
    """Number `rows` from `first_seq` and hash-link each to the one before, the first to
    `prev_hash` (sets `seq`, `prev_hash`, `entry_hash` on each); returns the last hash. The
    one place a chain grows, for both databases."""
    for seq, row in enumerate(rows, start=first_seq):
        row.seq, row.prev_hash = seq, prev_hash
        row.entry_hash = prev_hash = compute_hash(row)
    return prev_hash


def _advance_head(session: Session, chain: str, count: int) -> tuple[int, str]:
    """Lock the chain head and take `count` sequence numbers (SQLite); returns the first
    number and the hash it links to. The head is created on first use."""
    take = (
        update(AuditChainHead)
        .where(AuditChainHead.chain == chain)
        .values(seq=AuditChainHead.seq + count)
        .returning(AuditChainHead.seq, AuditChainHead.last_hash)
    )
    taken = session.execute(take).one_or_none()
    if taken is None:
        session.execute(
            sqlite_insert(AuditChainHead)
            .values(chain=chain, seq=0, last_hash=GENESIS_HASH)
            .on_conflict_do_nothing(index_elements=["chain"])
        )
        taken = session.execute(take).one()
    last_seq, last_hash = taken
    return last_seq - count + 1, last_hash


PENDING_KEY = "audit_pending"
_id_clock = (0, 0)  # (milliseconds, counter) of the last `_ordered_id`
_id_lock = threading.Lock()


def _ordered_id() -> uuid.UUID:
    """A UUIDv7 (RFC 9562: 48-bit Unix milliseconds, then a 12-bit counter), strictly
    increasing within this process, so rows one transaction records at the same `created_at`
    are linked in the order they were recorded (`link_chain` orders by created_at, id)."""
    global _id_clock
    with _id_lock:
        now_ms = time.time_ns() // 1_000_000
        last_ms, counter = _id_clock
        if now_ms > last_ms:
            now_ms, counter = now_ms, 0
        elif counter < 0xFFF:
            now_ms, counter = last_ms, counter + 1
        else:
            now_ms, counter = last_ms + 1, 0
        _id_clock = (now_ms, counter)
    value = (now_ms & (2**48 - 1)) << 80 | 0x7 << 76 | counter << 64
    value |= 0b10 << 62 | secrets.randbits(62)
    return uuid.UUID(int=value)


def record(
    actor: Actor,
    action: str,
    *,
    resource_type: str,
    resource_id: str | uuid.UUID | None = None,
    project_id: uuid.UUID | None = None,
    changes: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> AuditLog:
    """Queue one audit row in the caller's transaction; it is chained and written when the
    caller commits, and dropped with the (sub)transaction if that rolls back. The returned row
    has its id but no sequence number or hashes until then."""
    row = AuditLog(
        id=_ordered_id(),
        chain=chain_key(project_id),
        project_id=project_id,
        created_at=now or utcnow(),
        actor_type=actor.type,
        actor_id=actor.id,
        actor_label=actor.label[:255],
        action=action,
        resource_type=resource_type,
        resource_id=str(resource_id) if resource_id is not None else None,
        changes=_jsonable(changes or {}),
        meta=_jsonable(metadata or {}),
    )
    queue_for_commit(PENDING_KEY, row)
    events.publish_after_commit(project_id, "audit", row.id, action)
    return row


LINK_KEY = "audit_link_chains"
LATER_KEY = "audit_link_later"  # every row of this commit was recorded by a node
LINK_BATCH = 1000


@event.listens_for(Session, "before_commit")
def _link_pending(session: Session) -> None:
    """Add the rows queued by `record`: linked now on SQLite (chains in a fixed order),
    unlinked on PostgreSQL, their chains remembered for `_link_after_commit`."""
    pending = take_committed(session, PENDING_KEY)
    if not pending:
        return
    by_chain: dict[str, list[AuditLog]] = {}
    for row in pending:
        by_chain.setdefault(row.chain, []).append(row)
    if session.get_bind().dialect.name == "postgresql":
        session.add_all(pending)
        session.info.setdefault(LINK_KEY, set()).update(by_chain)
        session.info[LATER_KEY] = all(row.actor_type == "node" for row in pending)
        return
    for chain in sorted(by_chain):
        rows = by_chain[chain]
        last_hash = _link(rows, *_advance_head(session, chain, len(rows)))
        session.add_all(rows)
        session.execute(
            update(AuditChainHead).where(AuditChainHead.chain == chain).values(last_hash=last_hash)
        )


@event.listens_for(Session, "after_commit", insert=True)
def _link_after_commit(session: Session) -> None:
    """Link what this commit wrote (PostgreSQL), before its events go out. The change itself
    is committed: a failure here is logged and left to the next linker, never raised."""
    chains = session.info.pop(LINK_KEY, None)
    later = session.info.pop(LATER_KEY, False)
    if not chains:
        return
    bind = session.get_bind()
    if later:
        linker.link_soon(bind, chains)
        return
    for chain in sorted(chains):
        _link_or_log(bind, chain)  # the caller's commit stands whatever happens here


def _link_or_log(bind: Engine | Connection, chain: str) -> int:
    """`link_chain(…, hand_off=True)` for those who must not fail with it (after a commit, on
    the linker thread): a failure is logged and left to the cron's sweep."""
    try:
        return link_chain(bind, chain, hand_off=True)
    except Exception:
        log.exception("audit: linking chain %s failed; the cron sweep will link it", chain)
        return 0


@event.listens_for(Session, "after_transaction_end")
def _forget_links(session: Session, transaction: Any) -> None:
    if transaction.parent is None:
        session.info.pop(LINK_KEY, None)  # a commit that failed after `_link_pending`
        session.info.pop(LATER_KEY, None)


_TABLE = AuditLog.__table__
_HEADS = AuditChainHead.__table__
_TAKE_HEAD = (
    select(_HEADS.c.seq, _HEADS.c.last_hash)
    .where(_HEADS.c.chain == bindparam("chain"))
    .with_for_update(skip_locked=True)
)
_HEAD_EXISTS = select(_HEADS.c.chain).where(_HEADS.c.chain == bindparam("chain"))
_UNLINKED = (
    select(_TABLE)
    .where(_TABLE.c.chain == bindparam("chain"), _TABLE.c.seq.is_(None))
    .order_by(_TABLE.c.created_at, _TABLE.c.id)
    .limit(LINK_BATCH)
)
_ANY_UNLINKED = (
    select(_TABLE.c.id).where(_TABLE.c.chain == bindparam("chain"), _TABLE.c.seq.is_(None)).limit(1)
)
_SET_LINK = (
    update(_TABLE)
    .where(_TABLE.c.id == bindparam("row_id"))
    .values(
        seq=bindparam("new_seq"), prev_hash=bindparam("new_prev"), entry_hash=bindparam("new_hash")
    )
)
_SET_HEAD = (
    update(_HEADS)
    .where(_HEADS.c.chain == bindparam("head_chain"))
    .values(seq=bindparam("new_seq"), last_hash=bindparam("new_hash"))
)
# Chains a thread of this process is linking, each with "a commit came in meanwhile".
_linking: dict[str, bool] = {}
_linking_lock = threading.Lock()


def link_chain(bind: Engine | Connection, chain: str, *, hand_off: bool = False) -> int:
    """Link `chain`'s unlinked rows, oldest first, in transactions of their own; returns how
    many. Returns at once when another linker holds the chain head: it looks again after its
    commit and finds whatever committed meanwhile. Within one process a second caller only
    tells the thread already linking the chain to look again. Safe to run anywhere, any
    number of times.

    `hand_off` (a request that links its own commit): one round, then whatever committed
    meanwhile is left to the process's audit linker thread, so a request never keeps linking
    what others commit (during a rollout, hundreds of node reports a second)."""
    with _linking_lock:
        if chain in _linking:
            _linking[chain] = True
            return 0
        _linking[chain] = False
    linked = 0
    try:
        while True:
            done, more = _link_rows(bind, chain, once=hand_off)
            linked += done
            with _linking_lock:
                if hand_off or not (more or _linking[chain]):
                    flagged = _linking.pop(chain)
                    more = more or flagged
                    break
                _linking[chain] = False
    except BaseException:
        with _linking_lock:
            _linking.pop(chain, None)
        raise
    if more:
        linker.link_soon(bind, {chain})
    return linked


def _link_rows(bind: Engine | Connection, chain: str, *, once: bool = False) -> tuple[int, bool]:
    """Rounds of linking until no row is left (`once`: one round); returns how many rows it
    linked and whether any was left."""
    linked = 0
    params = {"chain": chain}
    with bind.connect() if isinstance(bind, Engine) else contextlib.nullcontext(bind) as conn:
        while True:
            with conn.begin():
                head = conn.execute(_TAKE_HEAD, params).first()
                if head is None:
                    if conn.scalar(_HEAD_EXISTS, params) is not None:
                        return linked, False  # held: its linker looks again after its commit
                    conn.execute(
                        pg_insert(AuditChainHead)
                        .values(chain=chain, seq=0, last_hash=GENESIS_HASH)
                        .on_conflict_do_nothing(index_elements=["chain"])
                    )
                    continue  # commit the new head, then take it
                rows = [
                    SimpleNamespace(**row._mapping, meta=row._mapping["metadata"])
                    for row in conn.execute(_UNLINKED, params)
                ]
                if not rows:
                    return linked, False
                last_hash = _link(rows, head.seq + 1, head.last_hash)
                conn.execute(
                    _SET_LINK,
                    [
                        {
                            "row_id": row.id,
                            "new_seq": row.seq,
                            "new_prev": row.prev_hash,
                            "new_hash": row.entry_hash,
                        }
                        for row in rows
                    ],
                )
                new_head = {"head_chain": chain, "new_seq": rows[-1].seq, "new_hash": last_hash}
                conn.execute(_SET_HEAD, new_head)
            linked += len(rows)
            # Look again without the lock: rows that committed while this one held it.
            with conn.begin():
                if conn.scalar(_ANY_UNLINKED, params) is None:
                    return linked, False
            if once:
                return linked, True


class Linker:
    """Links chains on a thread of its own: the commits whose every audit row a node recorded
    (status reports, heartbeats that change a node's state). A rollout's node reports commit
    hundreds of times a second into one chain; linked by each request after its commit, every
    report paid two more transactions (~8 statements) and one request at a time kept linking
    what the others committed meanwhile (reports of up to 1.9 s). Here one round links whatever
    accumulated, and the request answers right after its commit. Operators' and the system's
    changes are still linked by their own request, before their events go out (unless this
    thread is linking that chain at the moment: then it does), so an operator who changes
    something and opens the log sees it. A chain with more to link after a round waits for the
    next pass behind the other chains. A node's rows appear in the log as soon as this thread
    has linked them (milliseconds; `wait_idle` in tests), when it publishes one `audit` event
    per chain (`audit.linked`) for the pages that list them. Rows handed to a process that
    then exits are linked by the next linker of their chain or the cron's sweep."""

    def __init__(self) -> None:
        self._reset()
        # A forked child (an RQ work horse) has no such thread, and may have been forked while
        # it held the condition's lock.
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._pending: dict[str, Engine | Connection] = {}
        self._busy = False
        self._thread: threading.Thread | None = None
        self._cond = threading.Condition()

    def link_soon(self, bind: Engine | Connection, chains: set[str]) -> None:
        with self._cond:
            for chain in chains:
                self._pending[chain] = bind
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="audit-linker", daemon=True)
                self._thread.start()
            self._cond.notify()

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Until nothing is waiting to be linked and no pass is running (tests)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending and not self._busy, timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._busy = False
                self._cond.notify_all()
                self._cond.wait_for(lambda: bool(self._pending))
                pending, self._pending, self._busy = self._pending, {}, True
            # One round per chain and pass, so a busy chain does not starve the others.
            linked = [chain for chain in sorted(pending) if _link_or_log(pending[chain], chain)]
            events.send(
                [
                    events.event_payload(
                        None if c == GLOBAL_CHAIN else c, "audit", None, events.AUDIT_LINKED
                    )
                    for c in linked
                ]
            )


linker = Linker()


def link_all(bind: Engine) -> int:
    """Link every chain's unlinked rows (the cron's sweep; nothing to do on SQLite)."""
    with bind.connect() as conn:
        chains = conn.scalars(select(AuditLog.chain).where(AuditLog.seq.is_(None)).distinct()).all()
    return sum(link_chain(bind, chain) for chain in sorted(chains))


def _jsonable(value: dict[str, Any]) -> dict[str, Any]:
    """Round-trip through JSON so the hash sees exactly what the database will return."""
    result: dict[str, Any] = json.loads(json.dumps(value, default=str))
    return result


@dataclass(frozen=True)
class ChainVerdict:
    valid: bool
    checked: int
    first_bad_id: str | None
    reason: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            "checked": self.checked,
            "first_bad_id": self.first_bad_id,
            "reason": self.reason,
        }


def verify_chain(project_id: uuid.UUID | None) -> ChainVerdict:
    """Walk one chain in order and report the first row that does not hold."""
    chain = chain_key(project_id)
    expected_prev = GENESIS_HASH
    expected_seq = 1
    checked = 0
    rows = db.session.execute(
        select(AuditLog)
        .where(AuditLog.chain == chain, AuditLog.seq.is_not(None))
        .order_by(AuditLog.seq)
        .execution_options(yield_per=500)
    ).scalars()
    for row in rows:
        checked += 1
        if row.seq != expected_seq:
            return ChainVerdict(
                False, checked, str(row.id), f"row {expected_seq} of the chain is missing"
            )
        if row.prev_hash != expected_prev:
            return ChainVerdict(
                False, checked, str(row.id), "link to the previous row does not match"
            )
        if compute_hash(row) != row.entry_hash:
            return ChainVerdict(False, checked, str(row.id), "row content does not match its hash")
        expected_prev = row.entry_hash
        expected_seq += 1
    head = db.session.get(AuditChainHead, chain)
    if head is not None and (head.seq != expected_seq - 1 or head.last_hash != expected_prev):
        return ChainVerdict(
            False,
            checked,
            None,
            f"chain head expects {head.seq} rows, found {expected_seq - 1}: the latest rows "
            "were deleted",
        )
    return ChainVerdict(True, checked, None, None)


@dataclass(frozen=True)
class AuditFilter:
    actor: str | None = None
    action: str | None = None
    resource: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def _filtered(project_id: uuid.UUID | None, filters: AuditFilter) -> Any:
    query = select(AuditLog).where(
        AuditLog.chain == chain_key(project_id), AuditLog.seq.is_not(None)
    )
    if filters.actor:
        query = query.where(
            (AuditLog.actor_id == filters.actor) | (AuditLog.actor_label == filters.actor)
        )
    if filters.action:
        if filters.action.endswith(".*"):
            query = query.where(AuditLog.action.startswith(filters.action[:-1], autoescape=True))
        else:
            query = query.where(AuditLog.action == filters.action)
    if filters.resource:
        kind, _, ident = filters.resource.partition(":")
        query = query.where(AuditLog.resource_type == kind)
        if ident:
            query = query.where(AuditLog.resource_id == ident)
    if filters.since:
        query = query.where(AuditLog.created_at >= filters.since)
    if filters.until:
        query = query.where(AuditLog.created_at < filters.until)
    return query


def list_entries(
    project_id: uuid.UUID | None, filters: AuditFilter, *, limit: int, cursor: str | None
) -> Page[AuditLog]:
    """Newest first; the cursor is the sequence number, stable under inserts."""
    query = _filtered(project_id, filters)
    total = db.session.scalar(select(db.func.count()).select_from(query.subquery())) or 0
    if cursor is not None:
        (before_seq,) = decode_cursor(cursor, (int,))
        query = query.where(AuditLog.seq < before_seq)
    rows = list(db.session.execute(query.order_by(AuditLog.seq.desc()).limit(limit + 1)).scalars())
    next_cursor = encode_cursor(rows[limit - 1].seq) if len(rows) > limit else None
    return Page(items=rows[:limit], next_cursor=next_cursor, total=total)


EXPORT_LIMIT = 100_000
CSV_COLUMNS = [
    "seq",
    "id",
    "created_at",
    "actor_type",
    "actor_id",
    "actor_label",
    "action",
    "resource_type",
    "resource_id",
    "changes",
    "metadata",
    "prev_hash",
    "entry_hash",
]


def export_entries(project_id: uuid.UUID | None, filters: AuditFilter, fmt: str) -> Iterator[str]:
    """Stream the chain oldest first as CSV or JSON lines.

    Hashes are included, so an export can be re-checked elsewhere.
    """
    query = _filtered(project_id, filters).order_by(AuditLog.seq).limit(EXPORT_LIMIT)
    rows = db.session.execute(query.execution_options(yield_per=500)).scalars()
    if fmt == "json":
        for row in rows:
            yield json.dumps(row.to_dict(), ensure_ascii=False) + "\n"
        return
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow(
            [
                row.seq,
                row.id,
                _timestamp(row.created_at),
                row.actor_type,
                row.actor_id or "",
                row.actor_label,
                row.action,
                row.resource_type,
                row.resource_id or "",
                json.dumps(row.changes, sort_keys=True),
                json.dumps(row.meta, sort_keys=True),
                row.prev_hash,
                row.entry_hash,
            ]
        )
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    if buffer.getvalue():
        yield buffer.getvalue()
