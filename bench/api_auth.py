"""Cost of operator authentication: `GET /api/v1/me` with an API key against `GET /health`.

Both go through the same Flask app in-process on the embedded backend (SQLite + the fakeredis
TCP server), so the ratio isolates what authentication adds: the key lookup, the scope check
and the Redis-backed rate limit.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any


def _rate(client: Any, path: str, headers: dict[str, str], count: int) -> float:
    for _ in range(min(50, count)):
        client.get(path, headers=headers)
    started = time.perf_counter()
    for _ in range(count):
        response = client.get(path, headers=headers)
        assert response.status_code == 200, response.data
    return count / (time.perf_counter() - started)


def run(*, quick: bool) -> dict[str, Any]:
    from flask_migrate import upgrade

    from app import create_app
    from sentinel_cp import accounts
    from sentinel_cp.audit import Actor
    from sentinel_cp.config import load_settings
    from sentinel_cp.db import db
    from sentinel_cp.server import EmbeddedRedis

    count = 300 if quick else 3000
    redis_server = EmbeddedRedis()
    redis_server.start()
    data_dir = Path(tempfile.mkdtemp(prefix="sentinel-bench-"))
    settings = load_settings({"SENTINEL_DATA_DIR": str(data_dir), "SENTINEL_ENV": "test"})
    app = create_app({"REDIS_URL": redis_server.url}, settings=settings)
    with app.app_context():
        upgrade()
        user = accounts.create_user(
            Actor.system("bench"),
            email="bench@example.com",
            password="bench-password-123",
            role="admin",
        )
        _, key = accounts.create_api_key(
            accounts.principal_for_user(user),
            name="bench",
            scopes=["audit:read"],
            project_id=None,
            expires_at=None,
        )
        db.session.commit()
    client = app.test_client()
    baseline = _rate(client, "/health", {}, count)
    value = _rate(client, "/api/v1/me", {"Authorization": f"Bearer {key}"}, count)
    redis_server.stop()
    return {
        "api_key_auth_requests_per_s": {
            "value": round(value, 1),
            "unit": "requests/s",
            "baseline": round(baseline, 1),
            "baseline_name": "GET /health, same app, same run",
            "ratio": round(value / baseline, 3),
            "requests": count,
        }
    }
