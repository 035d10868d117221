"""Shared fixtures.

Every test that takes `app` (or `client`) runs twice: on the embedded backend (SQLite + the
fakeredis TCP server, exactly what `make run` uses) and on the production backend (PostgreSQL +
real Redis). When PostgreSQL or Redis is not reachable the production run skips with a reason;
under `CI=true` that skip is a failure instead, because CI must prove the real thing.

The schema is created by running the migrations once per backend, and every test starts from
empty tables and an empty Redis database.
"""

from __future__ import annotations

import gc
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from sentinel_cp.config import load_settings

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI") == "true"
POSTGRES_ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_TEST_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
PASSWORD = "correct-horse-battery"


_frozen_before: list[str] = []


def pytest_runtest_setup(item: pytest.Item) -> None:
    """At the first test of each module, what earlier modules left alive is moved out of the
    garbage collector's sight (`gc.freeze`). The suite keeps ~2 million objects alive by its
    end (apps, engines, re-imported console modules); NiceGUI's test harness runs two full
    collections and a `gc.get_objects()` scan per console test, which made a console test
    three times slower late in the suite than alone. Only the collector's work changes:
    frozen objects are still freed by reference counting."""
    module = getattr(item.module, "__name__", "")
    if _frozen_before[-1:] == [module]:
        return
    _frozen_before.append(module)
    gc.collect()
    gc.freeze()


def require_service(available: bool, reason: str) -> None:
    """Skip when a real service is missing — except under CI=true, where it is a failure."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: tests needing it must run, not skip)")
    pytest.skip(reason)


def postgres_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=2):
            return True
    except Exception:
        return False


def redis_available(url: str = REDIS_TEST_URL) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=2).ping())
    except redis.RedisError:
        return False


POLL_INTERVAL_S = 0.2  # how often a deadline wait looks again


def wait_for(
    condition: Callable[[], Any],
    *,
    timeout: float,
    what: str,
    interval: float = POLL_INTERVAL_S,
    tolerate_errors: bool = True,
) -> Any:
    """Poll `condition` until it returns something truthy, or fail after `timeout` seconds.

    The one way tests wait on another process: a condition with a deadline, looked at every
    `interval` (waiting on an Event that is never set, so nothing here is a bare sleep).
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    pause = threading.Event()
    while time.monotonic() < deadline:
        try:
            result = condition()
            if result:
                return result
        except Exception as exc:
            if not tolerate_errors:
                raise
            last_error = exc  # e.g. the server is not listening yet
        pause.wait(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what} (last error: {last_error})"
    )


def drain_events(cache: Any, project_id: str) -> None:
    """Wait until a poll cache's listener has received every event published so far: publish
    one more about `project_id` and wait for it (Redis delivers in the order it took them)."""
    from sentinel_cp import events

    since = cache.invalidated_at.get(project_id, 0)
    events.publish_now(events.event_payload(project_id, "test", "drain", "drain"))
    wait_for(
        lambda: cache.invalidated_at.get(project_id, 0) > since,
        timeout=10,
        what="the poll cache to receive the events published so far",
    )


class Statements:
    """Counts the SQL statements executed on any engine inside `with Statements() as s:`."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, *_args: Any) -> None:
        self.count += 1

    def __enter__(self) -> Statements:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        event.listen(Engine, "before_cursor_execute", self)
        return self

    def __exit__(self, *_exc: object) -> None:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        event.remove(Engine, "before_cursor_execute", self)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Backend:
    name: str
    database_url: str
    redis_url: str


@pytest.fixture(scope="session")
def embedded_redis_url() -> Iterator[str]:
    from sentinel_cp.server import EmbeddedRedis

    server = EmbeddedRedis()
    server.start()
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A database of our own for this test session, dropped at the end (we created it)."""
    require_service(postgres_available(), f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}")
    import psycopg

    name = f"sentinel_cp_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def real_redis_url() -> str:
    require_service(redis_available(), f"Redis not reachable at {REDIS_TEST_URL}")
    return REDIS_TEST_URL


def settings_for(data_dir: Path, database_url: str, **extra: str) -> Any:
    return load_settings(
        {
            "SENTINEL_ENV": "test",
            "SENTINEL_DATA_DIR": str(data_dir),
            "SECRET_KEY_BASE": "test-secret-" + "x" * 40,
            "DATABASE_URL": database_url,
            **extra,
        }
    )


def build_app(data_dir: Path, database_url: str, redis_url: str, **overrides: Any) -> Any:
    from app import create_app

    settings = settings_for(data_dir, database_url)
    config = {
        "TESTING": True,
        "REDIS_URL": redis_url,
        "SQLALCHEMY_DATABASE_URI": settings.database_url,
        # Argon2 stays Argon2, just cheaper: the suite logs in hundreds of times.
        "ARGON2_TIME_COST": 1,
        "ARGON2_MEMORY_COST": 1024,
        # One listener thread per app would pile up over thousands of in-process apps; the
        # cache is tested where it is turned on (test_poll_cache.py, and every real server).
        "POLL_CACHE": False,
        **overrides,
    }
    return create_app(config, settings=settings)


_migrated: set[str] = set()
_migrate_lock = threading.Lock()


@pytest.fixture(scope="session", params=["embedded", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Backend:
    if request.param == "embedded":
        path = tmp_path_factory.mktemp("sqlite") / "sentinel.db"
        return Backend(
            "embedded", f"sqlite:///{path}", request.getfixturevalue("embedded_redis_url")
        )
    return Backend(
        "postgres",
        request.getfixturevalue("postgres_url"),
        request.getfixturevalue("real_redis_url"),
    )


def _truncate_all(app: Any) -> None:
    from sentinel_cp.db import db

    with app.app_context():
        db.session.rollback()
        for table in reversed(db.metadata.sorted_tables):
            db.session.execute(table.delete())
        db.session.commit()


@pytest.fixture
def app(backend: Backend, tmp_path: Path) -> Iterator[Any]:
    from flask_migrate import upgrade

    flask_app = build_app(tmp_path, backend.database_url, backend.redis_url)
    with _migrate_lock:
        if backend.database_url not in _migrated:
            with flask_app.app_context():
                upgrade()
            _migrated.add(backend.database_url)
    _truncate_all(flask_app)
    redis.Redis.from_url(backend.redis_url).flushdb()
    yield flask_app
    _truncate_all(flask_app)
    with flask_app.app_context():
        from sentinel_cp.db import db, dispose_hot_engines

        db.engine.dispose()
        dispose_hot_engines()


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


# --- builders -------------------------------------------------------------------------------


def make_user(
    app: Any, email: str = "admin@example.com", role: str = "admin", password: str = PASSWORD
) -> str:
    from sentinel_cp import accounts
    from sentinel_cp.audit import Actor
    from sentinel_cp.db import db

    with app.app_context():
        user = accounts.create_user(Actor.system("test"), email=email, password=password, role=role)
        db.session.commit()
        return str(user.id)


def make_project(app: Any, slug: str = "alpha", **settings: Any) -> str:
    from sentinel_cp import projects
    from sentinel_cp.audit import Actor
    from sentinel_cp.db import db

    with app.app_context():
        project = projects.create_project(
            Actor.system("test"), slug=slug, name=slug.title(), settings=settings or None
        )
        db.session.commit()
        return str(project.id)


def make_key(
    app: Any,
    user_email: str,
    scopes: list[str],
    *,
    project: str | None = None,
    expires_at: datetime | None = None,
) -> str:
    """Create an API key for an existing user through the domain; returns the raw key."""
    from sqlalchemy import select

    from sentinel_cp import accounts, projects
    from sentinel_cp.db import db

    with app.app_context():
        user = db.session.scalar(select(accounts.User).where(accounts.User.email == user_email))
        principal = accounts.principal_for_user(user)
        project_id = projects.get_project(project).id if project else None
        _, raw = accounts.create_api_key(
            principal, name="test key", scopes=scopes, project_id=project_id, expires_at=expires_at
        )
        db.session.commit()
        return raw


def login(client: Any, email: str, password: str = PASSWORD) -> Any:
    return client.post("/api/v1/session", json={"email": email, "password": password})


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
