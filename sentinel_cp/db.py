"""The database handle shared by every context, and the column types they use.

One `MetaData` with a constraint naming convention so that a migration that names a
constraint behaves the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from datetime import UTC, datetime
from typing import Any

from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import JSON, DateTime, MetaData, TypeDecorator, create_engine, event
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.orm import DeclarativeBase, Session, SessionTransaction

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


# Objects stay readable after commit: views serialize what they just wrote without reloading.
db = SQLAlchemy(model_class=Base, session_options={"expire_on_commit": False})


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps stored as UTC and always returned timezone-aware, on both databases."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


@event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """SQLite enforces foreign keys (so cascades match PostgreSQL), uses WAL so readers do not
    block the writer, and waits for a busy lock instead of failing at once."""
    if isinstance(dbapi_connection, sqlite3.Connection):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()


_hot_engines: dict[str, Engine] = {}
_hot_lock = threading.Lock()


def hot_connection() -> Connection:
    """An autocommit connection for the node hot paths (heartbeat, poll).

    A steady-state heartbeat is one read and one single-statement write; in autocommit they
    cost two round trips instead of four (no BEGIN, no COMMIT). On PostgreSQL these
    connections also run with `synchronous_commit=off`: what they write is soft state
    (last seen, health, metrics) that the next heartbeat repeats, so a crash may lose the last
    fraction of a second of it but never corrupts anything, and the commit does not wait for
    the WAL flush. Everything audited stays on the regular, durable connections.
    """
    main = db.engine
    key = main.url.render_as_string(hide_password=False)
    engine = _hot_engines.get(key)
    if engine is None:
        with _hot_lock:
            engine = _hot_engines.get(key)
            if engine is None:
                engine = _hot_engine(main)
                _hot_engines[key] = engine
    return engine.connect()


def _hot_engine(main: Engine) -> Engine:
    if main.dialect.name != "postgresql":
        return main.execution_options(isolation_level="AUTOCOMMIT")
    return create_engine(
        main.url,
        isolation_level="AUTOCOMMIT",
        pool_size=8,
        max_overflow=16,
        pool_timeout=5,
        connect_args={"connect_timeout": 5, "options": "-c synchronous_commit=off"},
    )


def dispose_hot_engines() -> None:
    """Close the hot-path pools (tests, and before a fork)."""
    with _hot_lock:
        for engine in _hot_engines.values():
            engine.dispose()
        _hot_engines.clear()


JSONType = JSON().with_variant(JSONB(), "postgresql")


# --- work that waits for the commit ------------------------------------------------------------
#
# Audit rows (chained just before the commit), events and job requests (sent just after it) are
# queued on the session, each entry with the transaction or savepoint it was queued in. A
# savepoint that rolls back takes its entries with it; a released savepoint's entries wait for
# the outer commit; a root transaction that ends without committing drops everything. One queue
# and one rule, so an audit row never survives without its event, nor the other way round.

_ON_COMMIT = "sentinel_on_commit"


def queue_for_commit(kind: str, item: Any) -> None:
    """Queue `item` under `kind` in the current transaction (begun if none is), for
    `take_committed(session, kind)` at commit."""
    session = db.session()
    transaction = session.get_nested_transaction() or session.get_transaction()
    if transaction is None:
        session.connection()  # begin: the entry needs a transaction to end with
        transaction = session.get_transaction()
    session.info.setdefault(_ON_COMMIT, []).append((transaction, kind, item))


def queued(session: Session, kind: str) -> list[Any]:
    """What is queued under `kind` and not yet taken (oldest first)."""
    return [item for _, k, item in session.info.get(_ON_COMMIT, ()) if k == kind]


def take_committed(session: Session, kind: str) -> list[Any]:
    """Remove and return what is queued under `kind` (a commit hook's share of the queue).
    Nothing while a savepoint is what commits: SQLAlchemy fires the commit hooks for a released
    savepoint too, and what it queued waits for the outer commit."""
    entries = session.info.get(_ON_COMMIT)
    if not entries or session.get_nested_transaction() is not None:
        return []
    session.info[_ON_COMMIT] = [entry for entry in entries if entry[1] != kind]
    return [item for _, k, item in entries if k == kind]


@event.listens_for(Session, "after_soft_rollback")
def _drop_rolled_back(session: Session, previous_transaction: SessionTransaction) -> None:
    """A rolled-back savepoint (or root) takes what was queued inside it."""
    entries = session.info.get(_ON_COMMIT)
    if not entries:
        return

    def inside(transaction: SessionTransaction | None) -> bool:
        while transaction is not None:
            if transaction is previous_transaction:
                return True
            transaction = transaction.parent
        return False

    session.info[_ON_COMMIT] = [entry for entry in entries if not inside(entry[0])]


@event.listens_for(Session, "after_transaction_end")
def _forget_queued(session: Session, transaction: SessionTransaction) -> None:
    """A root transaction has ended (its commit hooks ran, or it rolled back or closed)."""
    if transaction.parent is None:
        session.info.pop(_ON_COMMIT, None)


def new_id() -> uuid.UUID:
    return uuid.uuid4()


def utcnow() -> datetime:
    """The default clock; contexts take a `now` argument so tests can pass their own."""
    return datetime.now(UTC)
