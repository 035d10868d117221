"""/health, /ready and /metrics on both backends."""

from __future__ import annotations

import logging
from typing import Any

import pytest


def test_health_answers_ok(client: Any) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_ready_checks_database_redis_and_storage(client: Any) -> None:
    response = client.get("/ready")
    assert response.status_code == 200
    assert response.get_json()["checks"] == {"database": "ok", "redis": "ok", "storage": "ok"}


def test_ready_names_redis_when_it_is_down(backend: Any, tmp_path: Any) -> None:
    from conftest import build_app, free_port

    app = build_app(tmp_path, backend.database_url, f"redis://127.0.0.1:{free_port()}/0")
    response = app.test_client().get("/ready")
    assert response.status_code == 503
    body = response.get_json()
    assert body["code"] == "not_ready"
    assert "redis" in body["error"]
    assert body["checks"]["database"] == "ok"
    assert response.headers["Retry-After"]


def test_ready_names_the_database_when_it_is_down(embedded_redis_url: str, tmp_path: Any) -> None:
    from conftest import build_app, free_port

    url = f"postgresql://nobody@127.0.0.1:{free_port()}/nothing"
    app = build_app(tmp_path, url, embedded_redis_url)
    body = app.test_client().get("/ready").get_json()
    assert body["checks"]["redis"] == "ok"
    assert body["checks"]["database"].startswith("database unreachable")


def test_metrics_are_prometheus_text(client: Any) -> None:
    client.get("/health")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    assert b'sentinel_http_requests_total{endpoint="health.health",method="GET",status="200"}' in (
        response.data
    )


def test_every_response_carries_a_request_id(client: Any) -> None:
    assert len(client.get("/health").headers["X-Request-ID"]) == 32
    echoed = client.get("/health", headers={"X-Request-ID": "trace-123"})
    assert echoed.headers["X-Request-ID"] == "trace-123"
    hostile = client.get("/health", headers={"X-Request-ID": "bad id; rm -rf /"})
    assert hostile.headers["X-Request-ID"] != "bad id; rm -rf /"


def test_probe_successes_are_counted_not_logged_but_other_requests_are(
    client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sentinel_cp.access")
    assert client.get("/health").status_code == 200
    assert client.get("/api/v1/me").status_code == 401
    logged = [r.getMessage() for r in caplog.records if r.name == "sentinel_cp.access"]
    assert logged == ["GET /api/v1/me 401"]
