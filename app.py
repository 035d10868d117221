"""Sentinel CP entry points.

- `create_app()`: the Flask application (node and operator APIs, `/health`, `/ready`,
  `/metrics`). `gunicorn 'app:create_app()'` serves it alone (the `api` process).
- `create_asgi()`: the one-port ASGI application: API paths go straight to Flask (through
  a2wsgi), everything else to the NiceGUI console attached to our own FastAPI app.
- `python app.py`: the `web` process; with no environment it is the whole embedded system.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from flask import Flask, Response, g, request
from flask_login import LoginManager
from flask_migrate import Migrate

from blueprints import register_blueprints
from blueprints.errors import error_response, register_error_handlers
from sentinel_cp import accounts, broker, jobqueue, metrics, signing, storage
from sentinel_cp.config import Settings, load_settings
from sentinel_cp.db import db
from sentinel_cp.logs import configure_logging, request_id

ROOT = Path(__file__).resolve().parent
API_PREFIXES = ("/api/", "/health", "/ready", "/metrics")
MAX_BODY_BYTES = 1024 * 1024
# Metric labels from a closed set: a client inventing methods must not grow the registry.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
# Security headers (docs/security.md). The API serves JSON and one static page (/api/docs,
# inline style only). The console is NiceGUI: Vue compiles its templates in the browser and the
# page carries inline scripts, so its policy needs 'unsafe-inline'/'unsafe-eval' for scripts;
# it still loads nothing from another origin, connects nowhere else and cannot be framed.
API_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'none'"
)
CONSOLE_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; font-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'self'; "
    "form-action 'self'"
)
HSTS = "max-age=31536000; includeSubDomains"


def security_headers(csp: str, *, production: bool) -> tuple[tuple[str, str], ...]:
    """Headers every response carries; HSTS only in production (development is plain HTTP)."""
    headers = (
        ("X-Content-Type-Options", "nosniff"),
        ("X-Frame-Options", "DENY"),
        ("Referrer-Policy", "same-origin"),
        ("Content-Security-Policy", csp),
    )
    return (*headers, ("Strict-Transport-Security", HSTS)) if production else headers


migrate = Migrate(render_as_batch=True, directory=str(ROOT / "migrations"))
login_manager = LoginManager()
access_log = logging.getLogger("sentinel_cp.access")
# Successful answers to what every node and load balancer calls all the time are counted in
# /metrics, not logged one line each (a 10,000-node fleet would write ~700 lines/s); their
# errors are logged like everything else.
QUIET_ENDPOINTS = frozenset(
    {"node_api.heartbeat", "node_bundles.poll", "health.health", "health.ready"}
)


def _engine_options(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 30, "check_same_thread": False}}
    return {
        # No pre-ping: it costs a round trip per request. A connection broken by a database
        # restart fails one request (503) and SQLAlchemy then invalidates the whole pool.
        "pool_pre_ping": False,
        "pool_size": 10,
        "max_overflow": 20,
        "pool_timeout": 5,
        "connect_args": {"connect_timeout": 5},
    }


def create_app(
    overrides: Mapping[str, Any] | None = None, *, settings: Settings | None = None
) -> Flask:
    """Build the Flask application.

    `overrides` replace Flask config keys (tests, the embedded server).
    """
    settings = settings or load_settings()
    configure_logging()
    app = Flask(__name__, instance_path=str(settings.data_dir.resolve()))
    app.config.update(
        SENTINEL_SETTINGS=settings,
        SECRET_KEY=settings.secret_key,
        SQLALCHEMY_DATABASE_URI=settings.database_url,
        SESSION_COOKIE_NAME="sentinel_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.is_production,
        PERMANENT_SESSION_LIFETIME=timedelta(hours=12),
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        PUBLIC_HOST=settings.public_host,
        REDIS_URL=settings.redis_url,
        POLL_CACHE=settings.poll_cache,
        HEARTBEAT_BUFFER=settings.heartbeat_buffer,
        ARGON2_TIME_COST=3,
        ARGON2_MEMORY_COST=65536,
        JSON_SORT_KEYS=False,
    )
    app.config.update(overrides or {})
    app.config.setdefault(
        "SQLALCHEMY_ENGINE_OPTIONS", _engine_options(app.config["SQLALCHEMY_DATABASE_URI"])
    )

    db.init_app(app)
    migrate.init_app(app, db)
    login_manager.init_app(app)
    broker.configure(app.config["REDIS_URL"])
    signing.configure(app.config["SECRET_KEY"])
    accounts.configure_password_hashing(
        time_cost=app.config["ARGON2_TIME_COST"], memory_cost=app.config["ARGON2_MEMORY_COST"]
    )
    app.extensions["sentinel_storage"] = storage.from_settings(settings)
    from jobs.queue import enqueue

    jobqueue.configure(enqueue)
    _import_models()
    register_error_handlers(app)
    _install_dependency_handlers(app)
    register_blueprints(app)
    _install_request_hooks(app)
    _install_steady_heartbeats(app)
    return app


def _install_steady_heartbeats(app: Flask) -> None:
    """Steady heartbeats answered from memory before Flask (`blueprints.steady_heartbeats`),
    with the headers `_install_request_hooks` gives every API answer."""
    from blueprints import node_api
    from blueprints.steady_heartbeats import SteadyHeartbeats

    app.wsgi_app = SteadyHeartbeats(  # type: ignore[method-assign]
        app,
        app.wsgi_app,
        headers=security_headers(API_CSP, production=app.config["SENTINEL_SETTINGS"].is_production),
        request_id_pattern=REQUEST_ID_PATTERN,
        max_body=node_api.SMALL_BODY,
    )


def _import_models() -> None:
    """Every model module, so metadata (and Alembic autogenerate) sees all tables."""
    from sentinel_cp import accounts, audit, gitops, nodes, projects, signing  # noqa: F401
    from sentinel_cp import drift as drift_models  # noqa: F401
    from sentinel_cp import notifications as notification_models  # noqa: F401
    from sentinel_cp.bundles import models  # noqa: F401
    from sentinel_cp.rollouts import models as rollout_models  # noqa: F401


def _install_dependency_handlers(app: Flask) -> None:
    """A Redis call no domain function wrapped (they raise `Unavailable`) that could not reach
    Redis is a dependency being down: 503 + Retry-After JSON, like the database's
    OperationalError. Other Redis errors (a wrong type, a failing script) are bugs, not outages:
    they stay 500s rather than invite clients to retry forever."""
    import redis

    @app.errorhandler(redis.ConnectionError)
    @app.errorhandler(redis.TimeoutError)
    def redis_unavailable(exc: redis.RedisError) -> Response:
        logging.getLogger("sentinel_cp.http").warning(
            "Redis unavailable: %s", exc.__class__.__name__
        )
        response = error_response(503, "Redis unavailable; try again shortly", "unavailable")
        response.headers["Retry-After"] = "5"
        return response


@login_manager.user_loader
def _load_user(session_id: str) -> accounts.User | None:
    return accounts.load_session_user(session_id)


@login_manager.unauthorized_handler
def _unauthorized() -> Response:
    return error_response(401, "Authentication required", "unauthenticated")


def _install_request_hooks(app: Flask) -> None:
    api_headers = security_headers(
        API_CSP, production=app.config["SENTINEL_SETTINGS"].is_production
    )

    @app.before_request
    def start_request() -> None:
        supplied = request.headers.get("X-Request-ID", "")
        g.request_id = supplied if REQUEST_ID_PATTERN.fullmatch(supplied) else uuid.uuid4().hex
        g.request_token = request_id.set(g.request_id)
        g.started = time.perf_counter()

    @app.after_request
    def finish_request(response: Response) -> Response:
        response.headers["X-Request-ID"] = g.get("request_id", "")
        for name, value in api_headers:
            response.headers.setdefault(name, value)
        if request.path.startswith("/api/v1/"):
            response.headers.setdefault("Cache-Control", "no-store")
        limits = g.get("rate_limit")
        if limits is not None:
            limit, remaining, reset = limits
            response.headers["X-RateLimit-Limit"] = str(limit)
            response.headers["X-RateLimit-Remaining"] = str(max(remaining, 0))
            response.headers["X-RateLimit-Reset"] = str(reset)
        endpoint = request.endpoint or "unmatched"
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        method = request.method if request.method in KNOWN_METHODS else "other"
        metrics.HTTP_REQUESTS.labels(method, endpoint, str(response.status_code)).inc()
        metrics.HTTP_LATENCY.labels(endpoint).observe(elapsed)
        if response.status_code < 400 and endpoint in QUIET_ENDPOINTS:
            return response
        access_log.info(
            "%s %s %s",
            request.method,
            request.path,
            response.status_code,
            extra={
                "fields": {
                    "method": request.method,
                    "path": request.path,
                    "status": response.status_code,
                    "duration_ms": round(elapsed * 1000, 2),
                    "remote": request.remote_addr,
                }
            },
        )
        return response

    @app.teardown_request
    def end_request(_exc: BaseException | None) -> None:
        token = g.pop("request_token", None)
        if token is not None:
            request_id.reset(token)


class PathDispatcher:
    """One ASGI callable for the whole port: API paths to Flask, the rest to the console.

    Flask keeps its full paths (`/api/v1/…`), so `gunicorn 'app:create_app()'` and this
    entry answer the same URLs. Lifespan events go to the FastAPI app (NiceGUI's start-up).
    """

    def __init__(self, api: Any, console: Any, *, production: bool = False) -> None:
        self.api = api
        self.console = console
        self.console_headers = tuple(
            (name.lower().encode(), value.encode())
            for name, value in security_headers(CONSOLE_CSP, production=production)
        )

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith(API_PREFIXES):
            await self.api(scope, receive, send)
        elif scope["type"] == "http":
            await self.console(scope, receive, _with_headers(send, self.console_headers))
        else:
            await self.console(scope, receive, send)


def _with_headers(send: Any, headers: tuple[tuple[bytes, bytes], ...]) -> Any:
    """Add the console's security headers to every HTTP response it starts."""

    async def wrapped(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            present = {name.lower() for name, _ in message.get("headers", [])}
            extra = [(k, v) for k, v in headers if k not in present]
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return wrapped


def create_asgi(flask_app: Flask | None = None) -> PathDispatcher:
    """The one-port application: Flask API + NiceGUI console on our own FastAPI root."""
    from a2wsgi import WSGIMiddleware
    from fastapi import FastAPI

    import console

    flask_app = flask_app or create_app()
    root = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    console.attach(root, flask_app)
    production = flask_app.config["SENTINEL_SETTINGS"].is_production
    return PathDispatcher(WSGIMiddleware(flask_app, workers=16), root, production=production)


if __name__ in {"__main__", "__mp_main__"}:
    from sentinel_cp.server import main

    main()
