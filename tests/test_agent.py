"""The node side: protocol client, credentials file, proxy drivers, `sentinel-agent`, simulator.

Unit tests talk to an `httpx.MockTransport`; time and randomness are injected, so nothing
sleeps. The integration tests (marked slow) start real embedded servers as test_server.py does
and run the real agent process and the real simulator against them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import PASSWORD, ROOT, build_app, free_port
from test_agent_bundle import (
    GOOD_FILES,
    PINNED,
    FakeControlPlane,
    StreamedBody,
    build_archive,
    fake_jwt,
    make_applier,
    sign,
)
from test_agent_bundle import PROJECT_ID as BUNDLE_PROJECT_ID
from test_agent_bundle import proxy_config as bundle_proxy_config

from agent import credentials as credentials_file
from agent import simulator
from agent.apply import ApplyResult
from agent.cli import Agent, AgentOptions
from agent.client import (
    MIN_HEARTBEAT_GAP_S,
    Backoff,
    BadRequest,
    BundleOffer,
    BundleStatusAck,
    Conflict,
    ControlPlaneError,
    DownloadRefused,
    NodeClient,
    NodeEvent,
    NotModified,
    NoUpdate,
    RateLimited,
    ServerError,
    SigningKey,
    Unauthorized,
    Unreachable,
    parse_retry_after,
)
from agent.credentials import Credentials, InsecureCredentials
from agent.drivers import FileDriver, SimulatedDriver
from agent.proxy import (
    PrometheusProxy,
    SimulatedProxy,
    histogram_quantile,
    metrics_between,
    parse_exposition,
)

NODE_ID = "6a20800c-1922-48cf-a6d7-68dde91fb57d"
NODE_KEY = "nk_" + "k" * 43
BASE = "http://cp.test"


# --- fakes ----------------------------------------------------------------------------------


class Recorder:
    """Injected sleep: records each delay instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def sequence(*values: float) -> Callable[[], float]:
    """An injected random source returning the given values in turn."""
    it = iter(values)
    return lambda: next(it)


def heartbeat_ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(
        200,
        json={
            "status": "ok",
            "node_id": NODE_ID,
            "last_seen_at": "2026-01-01T00:00:00+00:00",
            "poll_after_s": 30,
            "assigned_bundle_id": None,
        },
    )


def token_ok(value: str, expires_in: int = 43200) -> httpx.Response:
    return httpx.Response(
        200,
        json={
            "token": value,
            "token_type": "Bearer",
            "expires_at": "2026-01-01T12:00:00+00:00",
            "expires_in": expires_in,
        },
    )


def make_client(
    handler: Callable[[httpx.Request], httpx.Response],
    *,
    sleep: Recorder | None = None,
    random: Callable[[], float] = lambda: 1.0,
    use_token: bool = False,
    clock: Callable[[], float] | None = None,
    max_attempts: int = 5,
    backoff: Backoff | None = None,
) -> NodeClient:
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return NodeClient(
        BASE,
        http=http,
        node_id=NODE_ID,
        node_key=NODE_KEY,
        use_token=use_token,
        sleep=sleep or Recorder(),
        random=random,
        clock=clock or FakeClock(),
        max_attempts=max_attempts,
        backoff=backoff or Backoff(base_s=0.5, cap_s=8.0),
    )


# --- backoff and retries --------------------------------------------------------------------


def test_backoff_ceiling_doubles_up_to_the_cap() -> None:
    backoff = Backoff(base_s=0.5, cap_s=4.0)
    assert [backoff.ceiling(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff.ceiling(10_000) == 4.0  # no overflow for a very long outage


def test_backoff_uses_full_jitter_between_zero_and_the_ceiling() -> None:
    backoff = Backoff(base_s=1.0, cap_s=60.0)
    assert backoff.delay(3, lambda: 0.0) == 0.0
    assert backoff.delay(3, lambda: 0.25) == 2.0
    assert backoff.delay(3, lambda: 0.999) == pytest.approx(7.992)


async def test_network_errors_are_retried_after_jittered_exponential_delays() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls <= 3:
            raise httpx.ConnectError("refused", request=request)
        return heartbeat_ok(request)

    sleep = Recorder()
    client = make_client(handler, sleep=sleep, random=sequence(0.5, 0.25, 1.0))
    ack = await client.heartbeat()
    assert ack.node_id == NODE_ID
    assert calls == 4
    assert sleep.delays == [0.5 * 0.5, 0.25 * 1.0, 1.0 * 2.0]


async def test_network_failure_outlasting_the_retries_raises_unreachable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    sleep = Recorder()
    client = make_client(handler, sleep=sleep, max_attempts=3)
    with pytest.raises(Unreachable):
        await client.heartbeat()
    assert len(sleep.delays) == 2


async def test_server_errors_are_retried_then_raised_with_status_and_code() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(500, json={"error": "boom", "code": "internal"})

    sleep = Recorder()
    client = make_client(handler, sleep=sleep, max_attempts=4)
    with pytest.raises(ServerError) as caught:
        await client.heartbeat()
    assert (caught.value.status, caught.value.code, caught.value.message) == (
        500,
        "internal",
        "boom",
    )
    assert calls == 4
    assert sleep.delays == [0.5, 1.0, 2.0]


async def test_429_waits_exactly_retry_after_instead_of_backing_off() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            return httpx.Response(
                429,
                headers={"Retry-After": "7"},
                json={"error": "too fast", "code": "heartbeat_too_fast"},
            )
        return heartbeat_ok(request)

    sleep = Recorder()
    client = make_client(handler, sleep=sleep, random=lambda: 0.0)
    await client.heartbeat()
    assert sleep.delays == [7.0]


async def test_503_retry_after_is_honoured_even_for_registration() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            return httpx.Response(
                503, headers={"Retry-After": "5"}, json={"error": "db", "code": "unavailable"}
            )
        return httpx.Response(
            201,
            json={
                "node_id": NODE_ID,
                "node_key": NODE_KEY,
                "poll_interval_s": 30,
                "heartbeat_interval_s": 30,
                "signing_keys": [],
            },
        )

    sleep = Recorder()
    client = make_client(handler, sleep=sleep)
    await client.register("default", name="n1", registration_token="rt_x")
    assert sleep.delays == [5.0]


async def test_429_that_persists_raises_rate_limited_with_retry_after() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            429, headers={"Retry-After": "2"}, json={"error": "slow down", "code": "rate_limited"}
        )

    client = make_client(handler, max_attempts=2)
    with pytest.raises(RateLimited) as caught:
        await client.heartbeat()
    assert caught.value.retry_after == 2.0
    assert caught.value.code == "rate_limited"


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("Thu, 01 Jan 2026 12:00:09 GMT", now=now) == 9.0
    assert parse_retry_after("Thu, 01 Jan 2026 11:00:00 GMT", now=now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


async def test_client_errors_are_not_retried_and_carry_the_field_problems() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(
            422,
            json={
                "error": "Invalid fields",
                "code": "invalid",
                "fields": {"metrics.error_rate": ["must be at most 100"]},
            },
        )

    sleep = Recorder()
    client = make_client(handler, sleep=sleep)
    with pytest.raises(BadRequest) as caught:
        await client.heartbeat(metrics={"error_rate": 300})
    assert caught.value.status == 422
    assert caught.value.fields == {"metrics.error_rate": ["must be at most 100"]}
    assert calls == 1
    assert sleep.delays == []


async def test_registration_is_not_repeated_after_a_read_timeout() -> None:
    """The server may have registered the node; a blind retry would get 409 name_taken."""
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        raise httpx.ReadTimeout("slow", request=request)

    client = make_client(handler)
    with pytest.raises(Unreachable):
        await client.register("default", name="n1")
    assert calls == 1


async def test_a_non_json_error_still_maps_to_status_and_a_code() -> None:
    client = make_client(lambda request: httpx.Response(404, text="<html>nope</html>"))
    with pytest.raises(Exception) as caught:
        await client.heartbeat()
    assert caught.value.status == 404  # type: ignore[attr-defined]
    assert caught.value.code == "http_404"  # type: ignore[attr-defined]


# --- protocol bodies ------------------------------------------------------------------------


async def test_register_sends_the_token_header_and_adopts_the_new_identity() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            201,
            json={
                "node_id": NODE_ID,
                "node_key": NODE_KEY,
                "poll_interval_s": 20,
                "heartbeat_interval_s": 15,
                "signing_keys": [{"kid": "k1", "alg": "Ed25519", "public_key": "AAAA"}],
            },
        )

    client = make_client(handler)
    client.node_id = client.node_key = None
    registration = await client.register(
        "alpha", name="edge-1", registration_token="rt_secret", labels={"zone": "a"}
    )
    request = seen[0]
    assert request.url.path == "/api/v1/projects/alpha/nodes/register"
    assert request.headers["X-Sentinel-Registration-Token"] == "rt_secret"
    assert json.loads(request.content) == {"name": "edge-1", "labels": {"zone": "a"}}
    assert registration.heartbeat_interval_s == 15
    assert registration.signing_keys == [SigningKey("k1", "Ed25519", "AAAA")]
    assert (client.node_id, client.node_key) == (NODE_ID, NODE_KEY)


async def test_heartbeat_omits_absent_fields_and_sends_a_cleared_bundle_as_null() -> None:
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        assert request.headers["X-Sentinel-Node-Key"] == NODE_KEY
        return heartbeat_ok(request)

    client = make_client(handler)
    await client.heartbeat()
    await client.heartbeat(health={"status": "healthy"}, active_bundle_id=None)
    assert bodies == [{}, {"health": {"status": "healthy"}, "active_bundle_id": None}]


async def test_events_go_single_or_as_one_batch() -> None:
    bodies: list[Any] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        bodies.append(body)
        return httpx.Response(201, json={"status": "ok", "count": len(body.get("events", [1]))})

    client = make_client(handler)
    assert await client.send_event(NodeEvent("reload", "config reloaded")) == 1
    batch = [NodeEvent("reload", "a"), NodeEvent("error", "b", severity="error")]
    assert await client.send_events(batch) == 2
    assert bodies[0] == {
        "event_type": "reload",
        "severity": "info",
        "message": "config reloaded",
        "metadata": {},
    }
    assert [e["message"] for e in bodies[1]["events"]] == ["a", "b"]


async def test_running_config_report_returns_the_hash() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == f"/api/v1/nodes/{NODE_ID}/config"
        return httpx.Response(200, json={"status": "ok", "config_hash": "ab" * 32})

    ack = await make_client(handler).report_running_config("system { }")
    assert ack.config_hash == "ab" * 32


# --- bundles: poll, download, status -------------------------------------------------------


def _offer_json(bundle_id: str = "ab" * 32) -> dict[str, Any]:
    return {
        "bundle_id": bundle_id,
        "version": "v42",
        "checksum": bundle_id,
        "size_bytes": 18231,
        "download_url": f"{BASE}/api/v1/nodes/{NODE_ID}/bundles/{bundle_id}/download",
        "signature": "c2ln",
        "signing_key_id": "kid_1",
        "rollout_id": "r-1",
        "poll_after_s": 15,
    }


async def test_poll_sends_the_etag_and_returns_not_modified_on_304() -> None:
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == f"/api/v1/nodes/{NODE_ID}/bundles/latest"
        seen.append(request.headers.get("if-none-match"))
        return httpx.Response(304)

    result = await make_client(handler).poll_bundle(etag='"e1"')
    assert result == NotModified('"e1"')
    assert seen == ['"e1"']


async def test_poll_returns_no_update_with_the_poll_interval() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert "if-none-match" not in request.headers
        return httpx.Response(
            200, json={"no_update": True, "poll_after_s": 45}, headers={"ETag": '"e2"'}
        )

    assert await make_client(handler).poll_bundle() == NoUpdate(poll_after_s=45, etag='"e2"')


async def test_poll_returns_an_offer_with_its_etag() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=_offer_json(), headers={"ETag": '"e3"'})

    offer = await make_client(handler).poll_bundle()
    assert isinstance(offer, BundleOffer)
    assert (offer.bundle_id, offer.checksum, offer.size_bytes) == ("ab" * 32, "ab" * 32, 18231)
    assert (offer.signing_key_id, offer.rollout_id, offer.version) == ("kid_1", "r-1", "v42")
    assert (offer.poll_after_s, offer.etag) == (15, '"e3"')


async def test_a_malformed_offer_is_a_control_plane_error_not_a_crash() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={**_offer_json(), "bundle_id": "../../etc"})

    with pytest.raises(ControlPlaneError, match="malformed poll answer"):
        await make_client(handler).poll_bundle()


@pytest.mark.parametrize("use_token", [False, True])
async def test_download_follows_a_redirect_without_sending_credentials_to_the_storage_host(
    use_token: bool,
) -> None:
    archive = b"zstd bytes"
    seen: list[tuple[str, dict[str, str]]] = []
    presigned = "https://storage.test/bundles/p/b.tar.zst?X-Amz-Signature=s3cr3t"

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/token"):
            return token_ok("jwt-1")
        seen.append((request.url.host, dict(request.headers)))
        if request.url.host == "cp.test":
            return httpx.Response(302, headers={"Location": presigned})
        return httpx.Response(200, stream=StreamedBody(archive))

    client = make_client(handler, use_token=use_token)
    data = await client.download_bundle("ab" * 32, url=_offer_json()["download_url"])
    assert data == archive
    assert [host for host, _ in seen] == ["cp.test", "storage.test"]
    (_, control_plane), (_, storage) = seen
    assert ("authorization" in control_plane) == use_token
    assert ("x-sentinel-node-key" in control_plane) != use_token
    assert "authorization" not in storage
    assert "x-sentinel-node-key" not in storage


async def test_download_goes_to_the_configured_control_plane_not_a_foreign_download_url() -> None:
    hosts: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        hosts.append(request.url.host)
        return httpx.Response(200, stream=StreamedBody(b"x"))

    await make_client(handler).download_bundle("ab" * 32, url="http://elsewhere.test/steal")
    assert hosts == ["cp.test"]


async def test_download_stops_at_the_size_cap_even_without_a_content_length() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=StreamedBody(bytes(300 * 1024), chunk=4096))

    with pytest.raises(DownloadRefused, match=r"larger than 66560 bytes"):
        await make_client(handler).download_bundle("ab" * 32, size_bytes=1024)


async def test_download_retries_a_server_error_then_succeeds() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            return httpx.Response(503, json={"error": "down", "code": "unavailable"})
        return httpx.Response(200, stream=StreamedBody(b"archive"))

    sleep = Recorder()
    assert await make_client(handler, sleep=sleep).download_bundle("ab" * 32) == b"archive"
    assert calls == 2 and len(sleep.delays) == 1


async def test_download_gives_up_after_too_many_redirects() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"Location": "https://storage.test/again"})

    with pytest.raises(DownloadRefused, match="more than 3 redirects"):
        await make_client(handler).download_bundle("ab" * 32)


async def test_status_report_posts_the_reason_and_the_tail_of_long_logs() -> None:
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == f"/api/v1/nodes/{NODE_ID}/bundles/{'ab' * 32}/failed"
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json={"status": "ok", "state": "failed"})

    logs = "x" * 40_000 + "the actual error\n"
    ack = await make_client(handler).report_bundle_status(
        "ab" * 32, "failed", reason="config test failed (exit 1)", logs=logs
    )
    assert ack == BundleStatusAck("failed")
    assert bodies[0]["reason"] == "config test failed (exit 1)"
    assert len(bodies[0]["logs"].encode()) <= 32 * 1024
    assert bodies[0]["logs"].endswith("the actual error\n")


async def test_a_backward_status_report_raises_conflict() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            409, json={"error": "verified → staged", "code": "invalid_transition"}
        )

    with pytest.raises(Conflict) as caught:
        await make_client(handler).report_bundle_status("ab" * 32, "staged")
    assert caught.value.code == "invalid_transition"
    with pytest.raises(ValueError, match="unknown bundle state"):
        await make_client(handler).report_bundle_status("ab" * 32, "deployed")


# --- bundles: the whole flow ----------------------------------------------------------------


async def test_applying_a_bundle_reports_downloaded_staged_activated_verified_in_order(
    tmp_path: Path,
) -> None:
    cp = FakeControlPlane()
    bundle_id = cp.publish(build_archive())
    applier, config_dir = make_applier(cp, tmp_path)

    result = await applier.apply_assigned(bundle_id)

    assert result == ApplyResult("applied", bundle_id)
    assert cp.states() == ["downloaded", "staged", "activated", "verified"]
    assert {b for b, _, _ in cp.reports} == {bundle_id}
    assert applier.active_bundle_id == bundle_id
    assert applier.project_id == BUNDLE_PROJECT_ID  # learned from the node token
    assert (config_dir / "sentinel.kdl").read_bytes() == GOOD_FILES["sentinel.kdl"]
    assert (config_dir / "routes" / "api.kdl").read_bytes() == GOOD_FILES["routes/api.kdl"]
    assert list((tmp_path / "state" / "staging").iterdir()) == []
    assert await applier.apply_assigned(bundle_id) == ApplyResult("up_to_date", bundle_id)


async def test_a_failed_health_check_after_activation_rolls_back_and_reports_failed(
    tmp_path: Path,
) -> None:
    cp = FakeControlPlane()
    bundle_id = cp.publish(build_archive())
    applier, _ = make_applier(cp, tmp_path)
    applier.driver = SimulatedDriver(failure_rate=1.0)

    result = await applier.apply_assigned(bundle_id)

    assert result == ApplyResult("failed", bundle_id, "simulated health check failure")
    assert cp.states() == ["downloaded", "staged", "activated", "failed"]
    assert cp.reasons() == ["simulated health check failure"]
    assert applier.driver.rollbacks == 1
    assert applier.active_bundle_id is None


async def test_an_unreachable_control_plane_defers_the_bundle_without_reporting(
    tmp_path: Path,
) -> None:
    cp = FakeControlPlane()
    bundle_id = cp.publish(build_archive())
    applier, config_dir = make_applier(cp, tmp_path)
    before = (config_dir / "sentinel.kdl").read_text()

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    applier.client.http = httpx.AsyncClient(transport=httpx.MockTransport(down))
    result = await applier.apply_assigned(bundle_id)
    assert result.outcome == "deferred"
    assert (config_dir / "sentinel.kdl").read_text() == before
    assert bundle_id not in applier.failed_bundles  # tried again on a later heartbeat


async def test_a_304_poll_reuses_the_offer_it_answered_before(tmp_path: Path) -> None:
    cp = FakeControlPlane()
    bundle_id = cp.publish(build_archive())
    applier, _ = make_applier(cp, tmp_path)
    real_download = applier.client.download_bundle
    attempts = 0

    async def flaky_download(*args: Any, **kwargs: Any) -> bytes:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise Unreachable("storage hiccup")
        return await real_download(*args, **kwargs)

    applier.client.download_bundle = flaky_download  # type: ignore[method-assign]
    assert (await applier.apply_assigned(bundle_id)).outcome == "deferred"
    assert (await applier.apply_assigned(bundle_id)).outcome == "applied"
    polls = [r for r in cp.requests if r.url.path.endswith("/latest")]
    assert [p.headers.get("if-none-match") for p in polls] == [None, cp.etag]


# --- bundles: the agent loop ----------------------------------------------------------------


def _bundle_agent(
    cp: FakeControlPlane, tmp_path: Path, *, with_driver: bool = True
) -> tuple[Agent, Path]:
    path = tmp_path / "agent" / "node.json"
    credentials_file.save(
        path, Credentials(**{**sample_credentials().__dict__, "signing_keys": PINNED})
    )
    config_dir = bundle_proxy_config(tmp_path)
    client = NodeClient(
        BASE,
        http=httpx.AsyncClient(transport=httpx.MockTransport(cp)),
        use_token=False,
        sleep=Recorder(),
        random=lambda: 0.0,
    )
    options = AgentOptions(
        url=BASE, project="default", name="edge-1", credentials_path=path,
        heartbeat_interval_s=0.0,
    )  # fmt: skip
    from agent.proxy import NoProxy

    driver = FileDriver(config_dir) if with_driver else None
    return Agent(options, client, NoProxy(), driver=driver, random=lambda: 0.0), config_dir


async def test_the_agent_applies_the_assigned_bundle_and_its_next_heartbeat_carries_it(
    tmp_path: Path,
) -> None:
    cp = FakeControlPlane()
    bundle_id = cp.publish(build_archive())
    agent, config_dir = _bundle_agent(cp, tmp_path)
    cp.on_heartbeat = lambda body: body.get("active_bundle_id") == bundle_id and agent.stop()

    assert await asyncio.wait_for(agent.run(), timeout=10) == 0

    assert [h["active_bundle_id"] for h in cp.heartbeats] == [None, bundle_id]
    assert cp.states() == ["downloaded", "staged", "activated", "verified"]
    assert (config_dir / "sentinel.kdl").read_bytes() == GOOD_FILES["sentinel.kdl"]
    state = credentials_file.load_state(agent.options.state_path)
    assert state.active_bundle_id == bundle_id


@pytest.mark.parametrize(("poll_after_s", "expected"), [(30, 20.0), (5, 5.0), (0, 1.1)])
async def test_the_agent_comes_back_as_soon_as_the_control_plane_asks(
    tmp_path: Path, poll_after_s: int, expected: float
) -> None:
    """A node in a running rollout is told a shorter `poll_after_s`; never below the 1/s the
    server accepts, never later than the agent's own interval."""
    cp = FakeControlPlane()
    cp.heartbeat_poll_after_s = poll_after_s
    agent, _ = _bundle_agent(cp, tmp_path)
    agent.options.heartbeat_interval_s = 20.0
    assert await _two_waits(agent) == [expected, expected]


async def _two_waits(agent: Agent) -> list[float]:
    """How long the agent waited after each of its first two heartbeats (then it stops)."""
    waits: list[float] = []

    async def pause(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 2:
            agent.stop()

    agent.pause = pause  # type: ignore[method-assign]
    assert await asyncio.wait_for(agent.run(), timeout=10) == 0
    return waits


async def test_after_applying_a_bundle_the_agent_heartbeats_again_as_soon_as_it_may(
    tmp_path: Path,
) -> None:
    """Step 5 of the node behaviour: the heartbeat carrying the new `active_bundle_id` is the
    fresh one the rollout's gates wait for, so it goes as soon as the server's one-a-second
    limit allows (counted from the answer that offered the bundle), not an interval later."""
    cp = FakeControlPlane()
    cp.heartbeat_poll_after_s = 30
    bundle_id = cp.publish(build_archive())
    agent, _ = _bundle_agent(cp, tmp_path)
    agent.options.heartbeat_interval_s = 20.0
    after_apply, steady = await _two_waits(agent)

    assert [h["active_bundle_id"] for h in cp.heartbeats] == [None, bundle_id]
    assert cp.states() == ["downloaded", "staged", "activated", "verified"]
    assert 0.0 <= after_apply <= MIN_HEARTBEAT_GAP_S
    assert steady == 20.0


async def test_a_restarted_agent_resumes_from_its_saved_bundle_without_applying_again(
    tmp_path: Path,
) -> None:
    cp = FakeControlPlane()
    bundle_id = cp.publish(build_archive())
    first, _ = _bundle_agent(cp, tmp_path)
    cp.on_heartbeat = lambda body: body.get("active_bundle_id") == bundle_id and first.stop()
    await asyncio.wait_for(first.run(), timeout=10)
    cp.reports.clear()
    cp.heartbeats.clear()

    again = Agent(first.options, first.client, first.proxy, driver=FileDriver(tmp_path / "x"))
    cp.on_heartbeat = lambda body: len(cp.heartbeats) >= 2 and again.stop()
    await asyncio.wait_for(again.run(), timeout=10)
    assert [h["active_bundle_id"] for h in cp.heartbeats] == [bundle_id, bundle_id]
    assert cp.reports == []


async def test_an_agent_without_a_config_dir_leaves_bundles_alone(tmp_path: Path) -> None:
    cp = FakeControlPlane()
    cp.publish(build_archive())
    agent, _ = _bundle_agent(cp, tmp_path, with_driver=False)
    cp.on_heartbeat = lambda body: len(cp.heartbeats) >= 2 and agent.stop()
    await asyncio.wait_for(agent.run(), timeout=10)
    assert all("active_bundle_id" not in h for h in cp.heartbeats)
    assert cp.paths().count("latest") == 0 and cp.reports == []


def test_bundle_options_without_a_config_dir_are_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from agent.cli import main

    with pytest.raises(SystemExit) as caught:
        main(["--url", BASE, "--project", "p", "--name", "n", "--credentials", "/nonexistent",
              "--pid-file", "/run/sentinel.pid"])  # fmt: skip
    assert caught.value.code == 2
    assert "--pid-file need --config-dir" in capsys.readouterr().err


def test_the_file_driver_is_built_from_the_bundle_options(tmp_path: Path) -> None:
    from agent.cli import build_parser, driver_from_args

    args = build_parser().parse_args(
        [
            *("--url", BASE, "--project", "p", "--name", "n", "--credentials", "c.json"),
            *("--config-dir", str(tmp_path / "etc"), "--pid-file", "/run/s.pid"),
            *("--test-command", "sentinel test -c {config}", "--health-url", "http://h/health"),
            *("--health-timeout", "3", "--state-dir", str(tmp_path / "state")),
        ]
    )
    driver = driver_from_args(args)
    assert isinstance(driver, FileDriver)
    assert (driver.config_dir, driver.pid_file) == (tmp_path / "etc", Path("/run/s.pid"))
    assert (driver.test_command, driver.health_url) == (
        "sentinel test -c {config}",
        "http://h/health",
    )
    assert driver.health_timeout_s == 3.0
    with pytest.raises(SystemExit):
        build_parser().parse_args(
            ["--url", BASE, "--project", "p", "--name", "n", "--credentials", "c",
             "--pid-file", "a", "--reload-command", "b"]
        )  # fmt: skip


# --- tokens ---------------------------------------------------------------------------------


async def test_the_key_is_exchanged_for_a_token_which_is_then_sent_as_bearer() -> None:
    seen: list[tuple[str, dict[str, str]]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, dict(request.headers)))
        if request.url.path.endswith("/token"):
            return token_ok("jwt-1")
        return heartbeat_ok(request)

    client = make_client(handler, use_token=True)
    await client.heartbeat()
    await client.heartbeat()
    paths = [path.rsplit("/", 1)[1] for path, _ in seen]
    assert paths == ["token", "heartbeat", "heartbeat"]
    assert seen[0][1]["x-sentinel-node-key"] == NODE_KEY
    for _, headers in seen[1:]:
        assert headers["authorization"] == "Bearer jwt-1"
        assert "x-sentinel-node-key" not in headers


async def test_the_token_is_renewed_with_itself_before_it_expires() -> None:
    issued = iter(["jwt-1", "jwt-2"])
    seen: list[tuple[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        credential = request.headers.get("authorization") or request.headers["x-sentinel-node-key"]
        seen.append((request.url.path.rsplit("/", 1)[1], credential))
        if request.url.path.endswith("/token"):
            return token_ok(next(issued), expires_in=1000)
        return heartbeat_ok(request)

    clock = FakeClock(0.0)
    client = make_client(handler, use_token=True, clock=clock)
    await client.heartbeat()
    clock.now = 899.0  # 10 % of the lifetime left: still fine
    await client.heartbeat()
    clock.now = 901.0
    await client.heartbeat()
    assert seen == [
        ("token", NODE_KEY),
        ("heartbeat", "Bearer jwt-1"),
        ("heartbeat", "Bearer jwt-1"),
        ("token", "Bearer jwt-1"),
        ("heartbeat", "Bearer jwt-2"),
    ]


async def test_a_refused_token_falls_back_to_the_node_key() -> None:
    seen: list[tuple[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bearer = request.headers.get("authorization")
        seen.append((request.url.path.rsplit("/", 1)[1], bearer or "key"))
        if request.url.path.endswith("/token"):
            return token_ok("jwt-retired")
        if bearer:
            return httpx.Response(401, json={"error": "retired key", "code": "invalid_token"})
        return heartbeat_ok(request)

    client = make_client(handler, use_token=True)
    await client.heartbeat()
    await client.heartbeat()  # the key alone for a while: no token/401 ping-pong
    assert seen == [
        ("token", "key"),
        ("heartbeat", "Bearer jwt-retired"),
        ("heartbeat", "key"),
        ("heartbeat", "key"),
    ]


async def test_a_refused_node_key_is_raised_as_unauthorized() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": "Invalid node key", "code": "invalid_node_key"})

    client = make_client(handler, use_token=True)
    with pytest.raises(Unauthorized) as caught:
        await client.heartbeat()
    assert caught.value.code == "invalid_node_key"


async def test_an_unreachable_token_endpoint_does_not_block_the_heartbeat() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/token"):
            return httpx.Response(503, json={"error": "down", "code": "unavailable"})
        assert request.headers["x-sentinel-node-key"] == NODE_KEY
        return heartbeat_ok(request)

    client = make_client(handler, use_token=True, max_attempts=1)
    assert (await client.heartbeat()).node_id == NODE_ID


# --- credentials file -----------------------------------------------------------------------


def sample_credentials() -> Credentials:
    return Credentials(
        node_id=NODE_ID,
        node_key=NODE_KEY,
        project="default",
        url="http://127.0.0.1:4000",
        name="edge-1",
        signing_keys=[SigningKey("k1", "Ed25519", "AAAA")],
        heartbeat_interval_s=30,
    )


def test_credentials_are_written_with_mode_0600_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "node.json"
    old = os.umask(0)
    try:
        credentials_file.save(path, sample_credentials())
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert credentials_file.load(path) == sample_credentials()
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


def test_credentials_readable_by_group_or_others_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "node.json"
    credentials_file.save(path, sample_credentials())
    for mode in (0o640, 0o604, 0o660):
        path.chmod(mode)
        with pytest.raises(InsecureCredentials, match="chmod 600"):
            credentials_file.load(path)


def test_a_failed_save_leaves_the_previous_file_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "node.json"
    credentials_file.save(path, sample_credentials())
    before = path.read_bytes()

    def broken_replace(*_args: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(credentials_file.os, "replace", broken_replace)
    changed = Credentials(**{**sample_credentials().__dict__, "node_key": "nk_other"})
    with pytest.raises(OSError, match="disk full"):
        credentials_file.save(path, changed)
    assert path.read_bytes() == before
    assert list(tmp_path.iterdir()) == [path]


def test_a_save_replaces_the_file_in_one_rename(tmp_path: Path) -> None:
    """Atomic replacement: the new content arrives under a new inode, never written in place."""
    path = tmp_path / "node.json"
    credentials_file.save(path, sample_credentials())
    inode = path.stat().st_ino
    with path.open("rb") as old_reader:
        credentials_file.save(
            path, Credentials(**{**sample_credentials().__dict__, "node_key": "nk_new"})
        )
        assert json.loads(old_reader.read())["node_key"] == NODE_KEY
    assert path.stat().st_ino != inode
    assert credentials_file.load(path).node_key == "nk_new"


def test_agent_refuses_to_start_from_a_world_readable_credentials_file(tmp_path: Path) -> None:
    path = tmp_path / "node.json"
    credentials_file.save(path, sample_credentials())
    path.chmod(0o644)
    result = subprocess.run(
        [
            *(sys.executable, "-m", "agent.cli", "--url", "http://127.0.0.1:9"),
            *("--project", "p", "--name", "n", "--credentials", str(path)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "chmod 600" in result.stderr


# --- proxy drivers --------------------------------------------------------------------------

EXPOSITION = """\
# TYPE sentinel_requests_total counter
sentinel_requests_total{{route="a",status="200"}} {ok}
sentinel_requests_total{{route="a",status="503"}} {err}
# TYPE sentinel_request_duration_seconds histogram
sentinel_request_duration_seconds_bucket{{le="0.01"}} {b1}
sentinel_request_duration_seconds_bucket{{le="0.1"}} {b2}
sentinel_request_duration_seconds_bucket{{le="1"}} {b3}
sentinel_request_duration_seconds_bucket{{le="+Inf"}} {b3}
sentinel_request_duration_seconds_sum 1
sentinel_request_duration_seconds_count {b3}
process_cpu_seconds_total {cpu}
"""


def test_two_scrapes_give_rates_error_percentage_and_p99() -> None:
    first = parse_exposition(
        EXPOSITION.format(ok=1000, err=0, b1=900, b2=1000, b3=1000, cpu=10), at=100.0
    )
    second = parse_exposition(
        # 1000 more requests in 10 s, 50 of them 503; 990 under 100 ms, the rest under 1 s
        EXPOSITION.format(ok=1950, err=50, b1=1700, b2=1990, b3=2000, cpu=12),
        at=110.0,
    )
    metrics = metrics_between(first, second)
    assert metrics["requests_per_second"] == 100.0
    assert metrics["error_rate"] == 5.0
    assert metrics["cpu_percent"] == 20.0
    assert metrics["latency_p99_ms"] == pytest.approx(100.0)
    assert metrics_between(None, first) == {}  # rates need two scrapes


def test_histogram_quantile_interpolates_inside_the_bucket() -> None:
    buckets = {0.1: 50.0, 0.2: 100.0, float("inf"): 100.0}
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.75, buckets) == pytest.approx(0.15)
    assert histogram_quantile(0.99, {}) is None


async def test_prometheus_driver_reports_degraded_above_the_error_threshold() -> None:
    pages = iter(
        [
            EXPOSITION.format(ok=100, err=0, b1=100, b2=100, b3=100, cpu=1),
            EXPOSITION.format(ok=180, err=20, b1=200, b2=200, b3=200, cpu=1),
        ]
    )
    http = httpx.AsyncClient(
        transport=httpx.MockTransport(lambda r: httpx.Response(200, text=next(pages)))
    )
    clock = FakeClock(0.0)
    proxy = PrometheusProxy("http://proxy:9090/metrics", http=http, clock=clock)
    assert (await proxy.read()).status == "healthy"
    clock.now = 10.0
    reading = await proxy.read()
    assert reading.status == "degraded"
    assert reading.metrics["error_rate"] == 20.0
    assert reading.metrics["requests_per_second"] == 10.0


async def test_prometheus_driver_reports_an_unreachable_proxy_as_unhealthy() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    http = httpx.AsyncClient(transport=httpx.MockTransport(refuse))
    reading = await PrometheusProxy("http://proxy:9090/metrics", http=http).read()
    assert reading.status == "unhealthy"
    assert reading.health() == {"status": "unhealthy"}
    http500 = httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(500)))
    assert (await PrometheusProxy("http://p/metrics", http=http500).read()).status == "unhealthy"


async def test_simulated_proxy_spikes_errors_at_the_failure_rate() -> None:
    import random

    always = SimulatedProxy(failure_rate=1.0, random=random.Random(1))
    never = SimulatedProxy(failure_rate=0.0, random=random.Random(1))
    down = SimulatedProxy(unhealthy=True, random=random.Random(1))
    spike = await always.read()
    assert spike.status == "degraded" and spike.metrics["error_rate"] >= 10
    calm = await never.read()
    assert calm.status == "healthy" and calm.metrics["error_rate"] < 1
    assert (await down.read()).status == "unhealthy"


# --- simulator pieces -----------------------------------------------------------------------


def test_simulator_labels_rotate_per_key() -> None:
    choices = simulator.parse_label_choices(["zone=a,zone=b", "env=prod"])
    assert choices == {"zone": ["a", "b"], "env": ["prod"]}
    assert [simulator.labels_for(i, choices)["zone"] for i in range(4)] == ["a", "b", "a", "b"]
    with pytest.raises(ValueError, match="key=value"):
        simulator.parse_label_choices(["zone"])


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert simulator.percentile(values, 0.5) == 50.0
    assert simulator.percentile(values, 0.99) == 99.0
    assert simulator.percentile([], 0.5) is None


def test_simulate_command_parses_every_knob() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    simulator.add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            *("simulate", "--url", "http://x", "--project", "p", "--registration-token", "rt"),
            *("--nodes", "7", "--heartbeat-interval", "2", "--duration", "9"),
            *("--unhealthy-share", "0.1", "--silent-share", "0.2", "--failure-rate", "0.3"),
            *("--labels", "zone=a,zone=b"),
            *("--apply-time", "1.5", "--apply-failure-rate", "0.25"),
        ]
    )
    config = simulator.config_from_args(args)
    assert (config.nodes, config.heartbeat_interval_s, config.duration_s) == (7, 2.0, 9.0)
    assert (config.unhealthy_share, config.silent_share, config.failure_rate) == (0.1, 0.2, 0.3)
    assert config.labels == {"zone": ["a", "b"]}
    assert (config.apply_time_s, config.apply_failure_rate) == (1.5, 0.25)
    with pytest.raises(ValueError, match="between 0 and 1"):
        simulator.SimulationConfig(url="u", project="p", nodes=1, silent_share=1.5)
    with pytest.raises(ValueError, match="between 0 and 1"):
        simulator.SimulationConfig(url="u", project="p", nodes=1, apply_failure_rate=2.0)


class FleetControlPlane:
    """A fake control plane for many simulated nodes: all are assigned one signed bundle."""

    def __init__(self, nodes: int) -> None:
        self.nodes = nodes
        self.archive = build_archive()
        self.bundle_id = hashlib.sha256(self.archive).hexdigest()
        self.final: dict[str, str] = {}  # node id → verified / failed
        self.heartbeats: dict[str, list[Any]] = {}  # node id → active ids sent
        self.simulation: simulator.Simulation | None = None

    def settled(self) -> bool:
        """Every node finished the bundle, and each that applied it said so in a heartbeat."""
        return len(self.final) == self.nodes and all(
            self.bundle_id in self.heartbeats[node]
            for node, state in self.final.items()
            if state == "verified"
        )

    def __call__(self, request: httpx.Request) -> httpx.Response:
        parts = request.url.path.split("/")
        if request.url.path.endswith("/nodes/register"):
            node_id = str(uuid.uuid4())
            return httpx.Response(
                201,
                json={"node_id": node_id, "node_key": "nk_" + "s" * 43, "poll_interval_s": 1,
                      "heartbeat_interval_s": 1, "signing_keys": [k.to_json() for k in PINNED]},
            )  # fmt: skip
        node_id = parts[4]
        if parts[-1] == "token":
            return token_ok(fake_jwt(BUNDLE_PROJECT_ID))
        if parts[-1] == "heartbeat":
            sent = json.loads(request.content)["active_bundle_id"]
            self.heartbeats.setdefault(node_id, []).append(sent)
            if self.settled() and self.simulation is not None:
                self.simulation.stop()
            return httpx.Response(
                200,
                json={"status": "ok", "node_id": node_id, "poll_after_s": 1,
                      "assigned_bundle_id": self.bundle_id},
            )  # fmt: skip
        if parts[-1] == "latest":
            return httpx.Response(
                200,
                json={"bundle_id": self.bundle_id, "checksum": self.bundle_id,
                      "size_bytes": len(self.archive), "signature": sign(self.archive),
                      "signing_key_id": PINNED[0].kid, "version": "v1", "poll_after_s": 1},
                headers={"ETag": '"e"'},
            )  # fmt: skip
        if parts[-1] == "download":
            return httpx.Response(200, stream=StreamedBody(self.archive))
        state = parts[-1]
        if state in ("verified", "failed"):
            self.final[node_id] = state
        return httpx.Response(200, json={"status": "ok", "state": state})


async def test_simulated_nodes_apply_the_assigned_bundle_and_heartbeat_it() -> None:
    fleet = FleetControlPlane(nodes=6)
    config = simulator.SimulationConfig(
        url=BASE, project="default", nodes=6, heartbeat_interval_s=1.0, stagger_s=0.0,
        apply_failure_rate=0.5, use_token=False, seed=3, progress=False,
    )  # fmt: skip
    run = simulator.Simulation(config)
    fleet.simulation = run
    http = httpx.AsyncClient(transport=httpx.MockTransport(fleet))
    summary = await asyncio.wait_for(run.run(http=http), timeout=20)

    outcomes = Counter(fleet.final.values())
    assert summary["bundles_applied"] == outcomes["verified"]
    assert summary["bundles_failed"] == outcomes["failed"]
    assert summary["bundles_applied"] + summary["bundles_failed"] == 6
    assert set(summary["bundle_failures"]) <= {"simulated health check failure"}
    for node, state in fleet.final.items():
        expected = fleet.bundle_id if state == "verified" else None
        assert fleet.heartbeats[node][0] is None
        assert fleet.heartbeats[node][-1] == expected
    assert "bundles applied" in run.progress_line(1.0, 0)


# --- agent loop (unit) ----------------------------------------------------------------------


async def test_agent_logs_one_line_per_state_change_not_per_retry(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "node.json"
    credentials_file.save(path, sample_credentials())
    beats = 0
    agent: Agent

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal beats
        beats += 1
        if beats <= 6:
            raise httpx.ConnectError("refused", request=request)
        if beats == 9:
            agent.stop()
        return heartbeat_ok(request)

    client = make_client(handler, max_attempts=2)
    options = AgentOptions(
        url=BASE, project="default", name="edge-1", credentials_path=path,
        heartbeat_interval_s=0.0,
    )  # fmt: skip
    from agent.proxy import NoProxy

    agent = Agent(options, client, NoProxy(), random=lambda: 0.0)
    caplog.set_level(logging.INFO, logger="sentinel_agent")
    assert await asyncio.wait_for(agent.run(), timeout=10) == 0
    lines = [r.getMessage() for r in caplog.records]
    assert sum("unreachable" in line for line in lines) == 1
    assert sum("reachable at" in line for line in lines) == 1
    assert agent.heartbeats_sent == 3


# --- integration: real servers --------------------------------------------------------------


def _import_server_helpers() -> tuple[Any, Any, Any]:
    import test_server

    return test_server, test_server.start_server, test_server.wait_for


@contextlib.contextmanager
def operator_client(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=10) as client:
        login = client.post(
            "/api/v1/session", json={"email": "admin@localhost", "password": PASSWORD}
        )
        assert login.status_code == 200, login.text
        yield client


def rotate_registration_token(client: httpx.Client) -> str:
    response = client.post("/api/v1/projects/default/registration-token", json={})
    assert response.status_code == 201, response.text
    return str(response.json()["token"])


@pytest.fixture
def server_tmp() -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix="sentinel-agent-"))
    yield tmp
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.slow
def test_agent_registers_heartbeats_and_survives_the_control_plane_going_away(
    server_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    test_server, start_server, wait_for = _import_server_helpers()
    port = free_port()
    monkeypatch.setattr(test_server, "free_port", lambda: port)  # the second server reuses it
    server = start_server({}, server_tmp)
    agent_log = server_tmp / "agent.log"
    creds_path = server_tmp / "agent" / "node.json"
    process = None
    stack = contextlib.ExitStack()
    try:
        with operator_client(server.url) as operator:
            token = rotate_registration_token(operator)
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "agent.cli", "--url", server.url, "--project", "default"),
                *("--name", "edge-agent-1", "--registration-token", token),
                *("--credentials", str(creds_path), "--label", "zone=a", "--label", "tier=edge"),
                *("--heartbeat-interval", "1", "--backoff-max", "1"),
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=agent_log.open("w"),
        )
        wait_for(creds_path.exists, timeout=30, what="the credentials file")
        assert stat.S_IMODE(creds_path.stat().st_mode) == 0o600
        saved = credentials_file.load(creds_path)
        assert saved.project == "default" and saved.url == server.url
        assert saved.signing_keys and saved.signing_keys[0].alg == "Ed25519"

        operators = [stack.enter_context(operator_client(server.url))]

        def node() -> dict[str, Any]:
            response = operators[-1].get(f"/api/v1/projects/default/nodes/{saved.node_id}")
            assert response.status_code == 200, response.text
            return dict(response.json())

        first = wait_for(
            lambda: (n := node())["health"].get("status") == "healthy" and n,
            timeout=30,
            what="a heartbeat with health",
        )
        assert first["labels"] == {"zone": "a", "tier": "edge"}
        assert first["status"] == "online"
        wait_for(
            lambda: node()["last_seen_at"] > first["last_seen_at"],
            timeout=30,
            what="a later heartbeat",
        )

        assert server.stop() == 0
        wait_for(
            lambda: "control plane unreachable" in agent_log.read_text(),
            timeout=30,
            what="the agent to notice the control plane is gone",
        )
        assert process.poll() is None, agent_log.read_text()

        server = start_server({}, server_tmp)  # same data directory, same port
        restarted_at = datetime.now(UTC)
        # The embedded Redis stand-in starts empty, which ends every session (their ids carry
        # its generation): the old cookie is refused and the operator logs in again.
        stale = operators[-1].get(f"/api/v1/projects/default/nodes/{saved.node_id}")
        assert stale.status_code == 401, stale.text
        operators.append(stack.enter_context(operator_client(server.url)))
        wait_for(
            lambda: datetime.fromisoformat(node()["last_seen_at"]) > restarted_at,
            timeout=60,
            what="heartbeats to resume on the new server",
        )
        log_text = agent_log.read_text()
        assert log_text.count("control plane unreachable") == 1, log_text
        assert log_text.count("registered as") == 1  # it came back with its saved identity
        assert process.poll() is None

        process.terminate()
        assert process.wait(timeout=30) == 0
        assert "stopping" in agent_log.read_text()
    finally:
        stack.close()
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        server.stop()


@pytest.mark.slow
def test_simulated_fleet_heartbeats_and_its_silent_nodes_go_offline(
    server_tmp: Path, embedded_redis_url: str
) -> None:
    _, start_server, _ = _import_server_helpers()
    server = start_server({}, server_tmp)
    try:
        with operator_client(server.url) as operator:
            token = rotate_registration_token(operator)
        config = simulator.SimulationConfig(
            url=server.url,
            project="default",
            registration_token=token,
            nodes=20,
            heartbeat_interval_s=1.0,
            duration_s=8.0,
            labels={"zone": ["a", "b"]},
            silent_share=0.25,
            silent_after_s=2.0,
            unhealthy_share=0.1,
            failure_rate=0.2,
            stagger_s=1.0,
            name_prefix="simtest",
            seed=7,
        )
        run = simulator.Simulation(config, out=open(os.devnull, "w"))  # noqa: SIM115
        summary = asyncio.run(run.run())
        assert summary["registered"] == 20, summary
        assert summary["heartbeats_failed"] == 0, summary
        assert summary["errors"] == {}
        assert summary["went_silent"] == 5
        assert summary["heartbeats_ok"] >= 15 * 3  # the 15 that stay talk every second

        with operator_client(server.url) as operator:
            listed = operator.get("/api/v1/projects/default/nodes", params={"limit": 100}).json()
        nodes = {n["name"]: n for n in listed["items"]}
        assert len(nodes) == 20
        silent = {run.node_name(i) for i in run.silent}
        zones = [nodes[run.node_name(i)]["labels"]["zone"] for i in range(4)]
        assert zones == ["a", "b", "a", "b"]
        unhealthy = {run.node_name(i) for i in run.unhealthy}
        assert {n for n, v in nodes.items() if v["health"].get("status") == "unhealthy"} == (
            unhealthy
        )

        # The staleness job, at a moment when every silent node is past the timeout and
        # every talking node is not (default timeout: 120 s).
        def seen(name: str) -> datetime:
            return datetime.fromisoformat(nodes[name]["last_seen_at"])

        last_silent = max(seen(n) for n in silent)
        first_talking = min(seen(n) for n in nodes if n not in silent)
        assert last_silent < first_talking
        now = last_silent + (first_talking - last_silent) / 2 + timedelta(seconds=120)
        app = build_app(
            server_tmp / "job",
            f"sqlite:///{server.data_dir / 'sentinel.db'}",
            embedded_redis_url,
        )
        from sentinel_cp import nodes as node_domain
        from sentinel_cp.db import db

        with app.app_context():
            flipped = node_domain.mark_stale_nodes(now=now)
            db.session.commit()
            db.engine.dispose()
        assert flipped == 5

        with operator_client(server.url) as operator:
            offline = operator.get(
                "/api/v1/projects/default/nodes", params={"status": "offline", "limit": 100}
            ).json()
            online = operator.get(
                "/api/v1/projects/default/nodes", params={"status": "online", "limit": 100}
            ).json()
        assert {n["name"] for n in offline["items"]} == silent
        assert online["total"] == 15
    finally:
        server.stop()
