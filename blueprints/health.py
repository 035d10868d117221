"""`/health` (process alive), `/ready` (database, Redis, storage), `/metrics` (Prometheus)."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from blueprints.api import route
from blueprints.schemas import HealthOut, ReadyOut
from sentinel_cp import broker, metrics, nodes, scheduling
from sentinel_cp.db import db
from sentinel_cp.errors import Unavailable

bp = Blueprint("health", __name__)


@route(bp, "/health", summary="The process is alive", auth_mode="public", response=HealthOut)
def health() -> dict[str, str]:
    return {"status": "ok"}


def _check_database() -> None:
    try:
        db.session.execute(text("SELECT 1"))
        db.session.rollback()
    except Exception as exc:  # any driver error means "not ready"
        db.session.rollback()
        raise Unavailable(f"database unreachable: {exc.__class__.__name__}") from None


@route(
    bp,
    "/ready",
    summary="Database, Redis and storage are reachable (503 names what is not)",
    auth_mode="public",
    response=ReadyOut,
    responses={503: "not_ready"},
)
def ready() -> Response:
    checks: dict[str, str] = {}
    failing: list[str] = []
    for name, check in (
        ("database", _check_database),
        ("redis", broker.ping),
        ("storage", current_app.extensions["sentinel_storage"].ping),
    ):
        try:
            check()
            checks[name] = "ok"
            metrics.READY.labels(name).set(1)
        except Unavailable as exc:
            checks[name] = exc.message
            failing.append(name)
            metrics.READY.labels(name).set(0)
    if failing:
        response = jsonify(
            {
                "error": f"Not ready: {', '.join(failing)} unavailable",
                "code": "not_ready",
                "status": "unavailable",
                "checks": checks,
                "jobs_last_run_at": scheduling.last_beat(),
            }
        )
        response.status_code = 503
        response.headers["Retry-After"] = "5"
        return response
    return jsonify(
        {"status": "ready", "checks": checks, "jobs_last_run_at": scheduling.last_beat()}
    )


@route(bp, "/metrics", summary="Prometheus metrics", auth_mode="public", produces="text/plain")
def prometheus() -> Response:
    try:
        for status, count in nodes.count_by_status().items():
            metrics.NODES.labels(status).set(count)
    except SQLAlchemyError:
        pass  # the database is down: serve the process metrics anyway (/ready says why)
    finally:
        db.session.rollback()
    return Response(generate_latest(metrics.REGISTRY), mimetype=CONTENT_TYPE_LATEST)
