"""Console tests without a browser: NiceGUI's simulated `User` against the real app.

How to write a console test
---------------------------
A test module loads this file as a pytest plugin and takes its fixtures::

    from typing import TYPE_CHECKING

    from nicegui.testing import User

    if TYPE_CHECKING:  # only for the annotation: the plugin line below imports the module
        from console_support import Console

    pytest_plugins = ["console_support"]


    async def test_dashboard_counts_online_nodes(user: User, console: Console) -> None:
        console.add_nodes(3, status="online")
        await console.open(user, "/", ready="nodes-online")
        await user.should_see(marker="nodes-online", content="3")

(Import nothing else from this module at run time: a module imported before pytest loads it
as a plugin loses assertion rewriting, and pytest warns.)

The fixtures
- `console` builds the real application — `create_app()` plus `create_asgi()`, the very object
  `python app.py` serves (API dispatcher, our FastAPI root, `ui.run_with`) — on SQLite and the
  embedded Redis (migrated once per session, emptied before each test), with one project
  (`console.project` = "alpha", `console.project_id`) and one user per role
  (`console.emails[role]`, `console.user_ids[role]`), and runs the console's start-up (the
  live event listener included).
- `user` is NiceGUI's simulated `User` (no browser), logged in as the admin.
  `await console.login("operator")` gives another, independent `User` (own cookies, own page)
  for another role; `console.anonymous()` one that is not logged in.

Logging in is the real thing: the simulated client POSTs `/api/v1/session` through the same
ASGI dispatcher a browser talks to, and Flask-Login's cookie lands in the client's cookie jar,
so `console/session.py` authenticates a simulated user exactly as it does a browser. There is
no test-only hook in the application. `console.cookie(user)` is that cookie, for calling a
page's server-side handler directly (e.g. to prove it refuses a reader).

Driving and reading a page
- `await console.open(user, path, ready=marker)`: open and wait for the element marked
  `marker`. An async page sends its HTML first and finishes building once the (simulated)
  browser has connected, so read nothing before it is ready.
- `user.should_see(...)`, `user.find(...).click()` as in NiceGUI's docs; `await
  console.set_value(user, marker, value)` sets an input or select as a browser would (its
  `on_change` runs); `console.table_rows(user, marker)` is what a `ui.table` holds (cells
  are Vue slots, not elements, so `should_see` cannot look inside tables).

Data
- `console.run(fn, *args)` calls `fn` inside the Flask app context and commits: seed and
  inspect through the domain, and return plain values.
- `console.add_nodes(count, prefix=..., status=..., labels=..., version=..., **columns)` bulk
  inserts nodes (10,000 in well under a second; no audit rows, no events) and returns their
  ids; `console.add_bundle(version)` inserts a compiled bundle row and returns its id.
- `console.audit_entries()` / `console.audit_actions()`: the project's audit log, oldest first.

Waiting
- Never sleep. `should_see` retries briefly; `await console.eventually(condition, what=...)`
  polls anything slower with a deadline, on the event loop (the app keeps running meanwhile).
- `await console.listener_ready()` before publishing an event a page should hear: pub/sub
  drops messages sent before the console's listener subscribed.
- A test during which the app logs an ERROR fails, as with NiceGUI's own `user` fixture.

Why not NiceGUI's own plugin (`-p nicegui.testing.user_plugin`): its `user` fixture can only
start an app from a `main_file` (run with `runpy`) or a `root` function (`ui.run`); ours is
built by a factory, attached with `ui.run_with`, and needs a database and a login per test.
This module is that plugin for our app, made of NiceGUI's own parts (`nicegui_reset_globals`,
`User`, and the plugin's `pytest_configure`, which gives the session a private storage
directory). It is loaded only by the modules that name it, so the rest of the suite never
pays for it, and it adds no autouse fixture.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import redis
from conftest import PASSWORD, build_app, make_project, make_user
from nicegui import Client, ui
from nicegui.functions.download import download
from nicegui.functions.navigate import Navigate
from nicegui.functions.notify import notify
from nicegui.testing.general import nicegui_reset_globals
from nicegui.testing.general_fixtures import pytest_configure  # noqa: F401 - private storage
from nicegui.testing.user import User

T = TypeVar("T")
ROLES = ("admin", "operator", "reader")
PROJECT = "alpha"
BASE_URL = "http://console.test"
EVENTUALLY_TIMEOUT_S = 10.0


@dataclass
class Console:
    """The running application of one test, with helpers to seed it and to log in."""

    app: Any  # the Flask app
    asgi: Any  # app.PathDispatcher: what uvicorn serves
    project: str
    project_id: str
    emails: dict[str, str]
    user_ids: dict[str, str]
    users: list[User] = field(default_factory=list)

    # --- users ----------------------------------------------------------------------------

    def anonymous(self) -> User:
        """A new simulated browser with no cookies."""
        client = httpx.AsyncClient(transport=httpx.ASGITransport(self.asgi), base_url=BASE_URL)
        user = User(client)
        # The frame's session re-check asks the browser to fetch /api/v1/me; the simulated
        # browser has no JavaScript, so it answers for it (the server-side half still runs).
        user.javascript_rules[re.compile(r".*fetch\('/api/v1/me'", re.DOTALL)] = lambda _: 200
        self.users.append(user)
        return user

    async def login(self, role: str = "admin") -> User:
        """A new simulated browser logged in as the user with `role`, through the real login."""
        user = self.anonymous()
        response = await user.http_client.post(
            "/api/v1/session", json={"email": self.emails[role], "password": PASSWORD}
        )
        assert response.status_code == 200, response.text
        return user

    def cookie(self, user: User) -> str:
        """The Flask session cookie a simulated browser carries (for calling handlers)."""
        value = user.http_client.cookies.get(self.app.config["SESSION_COOKIE_NAME"])
        assert value, "this user is not logged in"
        return str(value)

    # --- data -----------------------------------------------------------------------------

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call `fn` inside the Flask app context and commit (return plain values)."""
        from sentinel_cp.db import db

        with self.app.app_context():
            result = fn(*args, **kwargs)
            db.session.commit()
            return result

    def add_nodes(
        self,
        count: int,
        *,
        prefix: str = "node",
        status: str = "online",
        labels: dict[str, str] | None = None,
        version: str | None = "1.0.0",
        **columns: Any,
    ) -> list[str]:
        """Insert `count` nodes in one statement (names `prefix-00001`, …); returns their ids.

        This is seeding, not registration: no audit rows, no events, no keys.
        """
        from sentinel_cp.db import db
        from sentinel_cp.nodes import Node

        now = datetime.now(UTC)
        width = max(5, len(str(count)))
        rows = [
            {
                "id": uuid.uuid4(),
                "project_id": uuid.UUID(self.project_id),
                "name": f"{prefix}-{i:0{width}d}",
                "key_hash": uuid.uuid4().hex + uuid.uuid4().hex,
                "key_version": 1,
                "labels": dict(labels or {}),
                "capabilities": [],
                "version": version,
                "meta": {},
                "status": status,
                "registered_at": now,
                "last_seen_at": now - timedelta(seconds=i % 3600),
                "health": {},
                "metrics": {},
                **columns,
            }
            for i in range(1, count + 1)
        ]
        with self.app.app_context():
            db.session.execute(Node.__table__.insert(), [_by_column(Node, row) for row in rows])
            db.session.commit()
        return [str(row["id"]) for row in rows]

    def add_bundle(self, version: str, *, status: str = "compiled") -> str:
        """Insert a bundle row (no archive behind it: enough to name what nodes run)."""
        from sentinel_cp.bundles.models import Bundle

        bundle_id = hashlib.sha256(f"{self.project_id}:{version}".encode()).hexdigest()

        def insert() -> None:
            from sentinel_cp.db import db

            db.session.add(
                Bundle(
                    id=bundle_id,
                    project_id=uuid.UUID(self.project_id),
                    version=version,
                    status=status,
                    size_bytes=0,
                    storage_key=f"test/{bundle_id}",
                    files={},
                    manifest={},
                    config_sha256=bundle_id,
                )
            )

        self.run(insert)
        return bundle_id

    def audit_entries(self) -> list[dict[str, Any]]:
        """The project's audit log, oldest first: action, actor (label), resource id, changes."""
        from sqlalchemy import select

        from sentinel_cp.audit import AuditLog
        from sentinel_cp.db import db

        with self.app.app_context():
            rows = db.session.scalars(
                select(AuditLog)
                .where(AuditLog.project_id == uuid.UUID(self.project_id))
                .order_by(AuditLog.seq)
            )
            return [
                {
                    "action": row.action,
                    "actor": row.actor_label,
                    "actor_type": row.actor_type,
                    "resource_id": row.resource_id,
                    "changes": row.changes,
                }
                for row in rows
            ]

    def audit_actions(self) -> list[str]:
        """Every audited action of the project, oldest first."""
        return [entry["action"] for entry in self.audit_entries()]

    # --- reading and driving a page ----------------------------------------------------------

    async def open(self, user: User, path: str, *, ready: str) -> Client:
        """Open `path` and wait until the element marked `ready` is there: an async page sends
        its HTML first and finishes building after the (simulated) browser connects."""
        client = await user.open(path)
        await self.eventually(lambda: _present(user, ready), what=f"the element marked {ready!r}")
        return client

    @staticmethod
    def table_rows(user: User, marker: str) -> list[dict[str, Any]]:
        """The rows the `ui.table` marked `marker` holds now (its cells are Vue slots, not
        elements, so `should_see` cannot look inside: read the rows)."""
        tables = [e for e in user.find(marker=marker).elements if isinstance(e, ui.table)]
        assert len(tables) == 1, f"expected one table marked {marker!r}, found {len(tables)}"
        return list(tables[0].rows)

    async def set_value(self, user: User, marker: str, value: Any) -> None:
        """Set the value of the input or select marked `marker` as a browser would (its
        `on_change` runs), once the page has built it (async pages finish after `open`)."""
        await self.eventually(lambda: _present(user, marker), what=f"the element marked {marker!r}")
        with user:
            for element in user.find(marker=marker).elements:
                element.value = value  # type: ignore[attr-defined]

    # --- waiting --------------------------------------------------------------------------

    async def listener_ready(self) -> None:
        """Wait until the console's Redis subscription is live."""
        live = importlib.import_module("console.live")
        await self.eventually(live.listener_ready.is_set, what="the console's event listener")

    async def eventually(
        self,
        condition: Callable[[], Any],
        *,
        what: str,
        timeout: float = EVENTUALLY_TIMEOUT_S,
    ) -> Any:
        """Poll `condition` on the event loop (so the app keeps running) until it is truthy."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = condition()
            if result:
                return result
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _present(user: User, marker: str) -> bool:
    try:
        user.find(marker=marker)
    except AssertionError:
        return False
    return True


def _by_column(model: Any, row: dict[str, Any]) -> dict[str, Any]:
    """Attribute names to column names (`meta` is the `metadata` column)."""
    columns = model.__mapper__.columns
    return {columns[key].name: value for key, value in row.items()}


# --- the database: migrated once per session, emptied per test -------------------------------

_migrated: set[str] = set()
_migrate_lock = threading.Lock()


@pytest.fixture(scope="session")
def console_database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite file for the session's console tests (migrated by the first of them)."""
    return f"sqlite:///{tmp_path_factory.mktemp('console-sqlite') / 'sentinel.db'}"


def _prepare_database(flask_app: Any) -> None:
    from flask_migrate import upgrade

    from sentinel_cp.db import db

    url = flask_app.config["SQLALCHEMY_DATABASE_URI"]
    with flask_app.app_context():
        with _migrate_lock:
            if url not in _migrated:
                upgrade()
                _migrated.add(url)
        for table in reversed(db.metadata.sorted_tables):
            db.session.execute(table.delete())
        db.session.commit()


def _stale_page_modules() -> set[str]:
    """Modules whose `@ui.page`s are registered now (e.g. imported by another test).

    NiceGUI re-imports page modules after a simulation so the next one registers its pages
    afresh; a page module imported outside any simulation needs the same, before ours starts.
    """
    return {
        func.__module__ for func in Client.page_routes if not func.__module__.startswith("tests.")
    }


def _forget_modules(names: Iterable[str]) -> None:
    for name in names:
        parts = name.split(".")
        for i in range(len(parts)):
            sys.modules.pop(".".join(parts[: i + 1]), None)


@pytest.fixture
async def console(
    tmp_path: Path,
    embedded_redis_url: str,
    console_database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> AsyncIterator[Console]:
    """The real application on SQLite + the embedded Redis, started for the simulated user."""
    from app import create_asgi
    from sentinel_cp.db import db, dispose_hot_engines

    flask_app = build_app(tmp_path, console_database_url, embedded_redis_url)
    _prepare_database(flask_app)
    redis.Redis.from_url(embedded_redis_url).flushdb()
    emails = {role: f"{role}@example.com" for role in ROLES}
    user_ids = {role: make_user(flask_app, email, role=role) for role, email in emails.items()}
    project_id = make_project(flask_app, PROJECT)

    stale = _stale_page_modules()
    with nicegui_reset_globals():
        os.environ["NICEGUI_USER_SIMULATION"] = "true"
        try:
            _forget_modules(stale)
            importlib.import_module("console.live").listener_ready.clear()
            asgi = create_asgi(flask_app)
            root = asgi.console
            async with root.router.lifespan_context(root):
                harness = Console(flask_app, asgi, PROJECT, project_id, emails, user_ids)
                try:
                    yield harness
                finally:
                    for simulated in harness.users:
                        await simulated.http_client.aclose()
        finally:
            os.environ.pop("NICEGUI_USER_SIMULATION", None)
            ui.navigate = Navigate()
            ui.notify = notify
            ui.download = download
            with flask_app.app_context():
                db.engine.dispose()
                dispose_hot_engines()
    errors = [r for r in caplog.get_records("call") if r.levelname == "ERROR"]
    if errors:
        pytest.fail(
            "The console logged errors:\n" + "\n".join(r.getMessage() for r in errors),
            pytrace=False,
        )


@pytest.fixture
async def user(console: Console) -> User:
    """A simulated browser logged in as the admin (NiceGUI's `user`, on our app)."""
    return await console.login("admin")
