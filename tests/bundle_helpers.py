"""Shared builders for the bundle tests: configs, submission, running queued jobs for real."""

from __future__ import annotations

from typing import Any

import redis
from conftest import bearer, make_key, make_project, make_user
from rq import Queue, SimpleWorker

from sentinel_cp.db import db

CONFIG = """
system {
    worker-threads 2
}
listeners {
    listener "http" {
        address "0.0.0.0:8080"
        protocol "http"
    }
}
routes {
    route "api" {
        matches {
            path-prefix "/api"
        }
        upstream "backend"
    }
}
upstreams {
    upstream "backend" {
        target "127.0.0.1:9000"
    }
}
"""
BROKEN = CONFIG.replace('upstream "backend"\n    }\n}', 'upstream "nowhere"\n    }\n}', 1)


def route_config(routes: int, *, tag: str = "") -> str:
    """A valid config with `routes` routes to one upstream."""
    body = "\n".join(
        f'    route "r{i}{tag}" {{\n        matches {{\n            path-prefix "/r{i}{tag}"\n'
        f'        }}\n        upstream "backend"\n    }}'
        for i in range(routes)
    )
    return (
        CONFIG.split("routes {")[0]
        + "routes {\n"
        + body
        + "\n}\n"
        + ("upstreams" + CONFIG.split("upstreams", 1)[1])
    )


def operator_key(app: Any) -> str:
    make_user(app, "ops@example.com", "admin")
    return make_key(
        app,
        "ops@example.com",
        ["bundles:read", "bundles:write", "nodes:read", "nodes:write", "audit:read"],
    )


def setup_project(app: Any, slug: str = "default") -> str:
    return make_project(app, slug, open_registration=True)


def submit(client: Any, key: str, config: str, version: str, slug: str = "default") -> Any:
    return client.post(
        f"/api/v1/projects/{slug}/bundles",
        json={"version": version, "config_source": config},
        headers=bearer(key),
    )


def run_jobs(app: Any, redis_url: str) -> int:
    """Run every queued job with a real RQ worker (in this process, against the test Redis)."""
    from jobs import QUEUES, context

    context._app = app
    connection = redis.Redis.from_url(redis_url)
    queues = [Queue(name, connection=connection) for name in QUEUES]
    waiting = sum(q.count for q in queues)
    SimpleWorker(queues, connection=connection).work(burst=True)
    with app.app_context():
        db.session.remove()
    return waiting


def register_node(client: Any, name: str, slug: str = "default") -> tuple[str, str]:
    response = client.post(f"/api/v1/projects/{slug}/nodes/register", json={"name": name})
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    return body["node_id"], body["node_key"]
