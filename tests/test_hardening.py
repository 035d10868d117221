"""Hostile inputs found in review: each once gave a 500, a bypass or a lasting bad state."""

from __future__ import annotations

import base64
import threading
from typing import Any

from conftest import PASSWORD, bearer, make_key, make_project, make_user


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def registered_node(client: Any, app: Any) -> tuple[str, str]:
    make_project(app, "default", open_registration=True)
    body = client.post("/api/v1/projects/default/nodes/register", json={"name": "n1"}).get_json()
    return body["node_id"], body["node_key"]


def test_nan_and_infinity_in_a_body_are_refused(client: Any, app: Any) -> None:
    node_id, key = registered_node(client, app)
    for constant in ("NaN", "Infinity", "-Infinity"):
        response = client.post(
            f"/api/v1/nodes/{node_id}/heartbeat",
            data='{"health": {"x": ' + constant + "}}",
            headers={"X-Sentinel-Node-Key": key, "Content-Type": "application/json"},
        )
        assert response.status_code == 400, constant
        assert response.get_json()["code"] == "malformed_json"


def test_a_deeply_nested_or_huge_jwt_is_401_not_500(client: Any, app: Any) -> None:
    node_id, _ = registered_node(client, app)
    nested = b64(b"[" * 5000 + b"]" * 5000)
    for token in (f"{nested}.e30.AA", "a" * 10_000 + ".b.c"):
        response = client.post(f"/api/v1/nodes/{node_id}/heartbeat", json={}, headers=bearer(token))
        assert response.status_code == 401


def test_null_metadata_keeps_the_column_an_object(client: Any, app: Any) -> None:
    make_user(app, "admin@example.com", "admin")
    key = make_key(app, "admin@example.com", ["nodes:read"])
    node_id, node_key = registered_node(client, app)
    response = client.post(
        f"/api/v1/nodes/{node_id}/heartbeat",
        json={"metadata": None},
        headers={"X-Sentinel-Node-Key": node_key},
    )
    assert response.status_code == 200
    node = client.get(f"/api/v1/projects/default/nodes/{node_id}", headers=bearer(key))
    assert node.get_json()["metadata"] == {}


def test_an_api_key_cursor_out_of_range_is_422(client: Any, app: Any) -> None:
    make_user(app, "admin@example.com", "admin")
    key = make_key(app, "admin@example.com", ["api_keys:admin"])
    cursor = b64(b'["0001-01-01T00:00:00+05:00", "00000000-0000-4000-8000-000000000000"]')
    response = client.get(f"/api/v1/api-keys?cursor={cursor}", headers=bearer(key))
    assert response.status_code == 422


def test_invented_http_methods_do_not_grow_the_metrics(client: Any) -> None:
    for method in ("FOO", "BAR", "BAZ"):
        client.open("/health", method=method)
    text = client.get("/metrics").get_data(as_text=True)
    assert 'method="FOO"' not in text and 'method="other"' in text


def test_parallel_wrong_passwords_cannot_pass_the_account_limit(client: Any, app: Any) -> None:
    make_user(app, "target@example.com", "reader")
    statuses: list[int] = []
    lock = threading.Lock()

    def attempt(i: int) -> None:
        local = app.test_client()
        response = local.post(
            "/api/v1/session",
            json={"email": "target@example.com", "password": f"wrong-{i}-xxxxxx"},
            environ_base={"REMOTE_ADDR": f"10.0.0.{i}"},
        )
        with lock:
            statuses.append(response.status_code)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses.count(401) <= 5
    assert statuses.count(429) >= 7
    correct = client.post(
        "/api/v1/session", json={"email": "target@example.com", "password": PASSWORD}
    )
    assert correct.status_code == 429  # the account stays locked for its window


def test_login_next_cannot_leave_the_site() -> None:
    from console.login import _safe_next

    for hostile in ("//evil.example", "/\\evil.example", "https://evil.example", "/\\\\x"):
        assert _safe_next(hostile) == "/"
    assert _safe_next("/nodes?status=online") == "/nodes?status=online"
