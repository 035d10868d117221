"""The node lifecycle over real HTTP against a production-mode server on PostgreSQL + Redis:
register → heartbeat → listed online → silent → offline (the staleness job) → back online."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import PASSWORD
from sqlalchemy import update
from test_server import start_server

pytestmark = pytest.mark.slow


def test_node_lifecycle_over_http_on_postgres_and_redis(
    tmp_path: Path, postgres_url: str, real_redis_url: str, monkeypatch: Any
) -> None:
    import psycopg

    # A database of this test's own, so the server's rows do not mix with the shared fixture's.
    database = f"sentinel_cp_nodes_http_{os.getpid()}"
    admin_url = postgres_url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}"')
        conn.execute(f'CREATE DATABASE "{database}"')
    database_url = postgres_url.rsplit("/", 1)[0] + f"/{database}"
    server = start_server(
        {
            "SECRET_KEY_BASE": "n"
            * 48,  # not production: its cookies are Secure, not sent over HTTP
            "HOST": "127.0.0.1",
            "DATABASE_URL": database_url,
            "REDIS_URL": real_redis_url,
        },
        tmp_path,
    )
    try:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            assert (
                http.post(
                    "/api/v1/session", json={"email": "admin@localhost", "password": PASSWORD}
                ).status_code
                == 200
            )
            token = http.post("/api/v1/projects/default/registration-token", json={}).json()[
                "token"
            ]

            refused = http.post("/api/v1/projects/default/nodes/register", json={"name": "n1"})
            assert refused.status_code == 401
            registered = http.post(
                "/api/v1/projects/default/nodes/register",
                json={"name": "n1", "labels": {"zone": "a"}},
                headers={"X-Sentinel-Registration-Token": token},
            )
            assert registered.status_code == 201
            node_id = registered.json()["node_id"]
            key = registered.json()["node_key"]
            duplicate = http.post(
                "/api/v1/projects/default/nodes/register",
                json={"name": "n1"},
                headers={"X-Sentinel-Registration-Token": token},
            )
            assert duplicate.status_code == 409

            beat = http.post(
                f"/api/v1/nodes/{node_id}/heartbeat",
                json={"health": {"status": "healthy"}},
                headers={"X-Sentinel-Node-Key": key},
            )
            assert beat.status_code in (200, 429)  # registration itself counted as "seen"
            listed = http.get("/api/v1/projects/default/nodes?status=online").json()
            assert [n["name"] for n in listed["items"]] == ["n1"]

            # Silence: the staleness job, run as a worker would, with the clock moved on.
            monkeypatch.setenv("DATABASE_URL", database_url)
            monkeypatch.setenv("REDIS_URL", real_redis_url)
            monkeypatch.setenv("SECRET_KEY_BASE", "n" * 48)
            monkeypatch.setenv("SENTINEL_DATA_DIR", str(tmp_path / "job"))
            from app import create_app
            from sentinel_cp import nodes
            from sentinel_cp.db import db, utcnow

            job_app = create_app()
            with job_app.app_context():  # the node falls silent: its last heartbeat ages
                db.session.execute(
                    update(nodes.Node).values(
                        last_seen_at=utcnow() - timedelta(seconds=180),
                        last_heartbeat_at=utcnow() - timedelta(seconds=180),
                    )
                )
                db.session.commit()
                assert nodes.mark_stale_nodes() == 1
                db.session.commit()
                db.engine.dispose()
            offline = http.get(f"/api/v1/projects/default/nodes/{node_id}").json()
            assert offline["status"] == "offline"

            mismatch = http.post(
                "/api/v1/nodes/00000000-0000-4000-8000-000000000000/heartbeat",
                json={},
                headers={"X-Sentinel-Node-Key": key},
            )
            assert mismatch.status_code == 403
            back = http.post(
                f"/api/v1/nodes/{node_id}/heartbeat", json={}, headers={"X-Sentinel-Node-Key": key}
            )
            assert back.status_code == 200
            assert http.get(f"/api/v1/projects/default/nodes/{node_id}").json()["status"] == (
                "online"
            )
            assert (
                http.delete(
                    f"/api/v1/projects/default/nodes/{node_id}",
                    headers={"Content-Type": "application/json"},
                ).status_code
                == 200
            )
            gone = http.post(
                f"/api/v1/nodes/{node_id}/heartbeat", json={}, headers={"X-Sentinel-Node-Key": key}
            )
            assert gone.status_code == 401
    finally:
        assert server.stop() == 0
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
