"""`agent.transport.AiohttpTransport`: httpx's API over aiohttp's pool, against real sockets.

Every test runs a real server on 127.0.0.1 in the test's own event loop (aiohttp's web server,
or a raw asyncio server where the test needs to misbehave on the wire), so what is checked is
what crosses TCP: the bytes a server receives, the answer the client sees, and which httpx
error a broken exchange becomes (the node client decides on retries from that).
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from aiohttp import web

from agent.client import NodeClient, Unreachable
from agent.transport import AiohttpTransport

NODE_ID = "6a20800c-1922-48cf-a6d7-68dde91fb57d"
NODE_KEY = "nk_" + "k" * 43


class Seen:
    """What the server received."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.peers: set[tuple[str, int]] = set()


async def _serve(routes: list[web.RouteDef], seen: Seen) -> tuple[web.AppRunner, str]:
    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer:
            seen.peers.add(tuple(peer[:2]))
        seen.requests.append(
            {
                "method": request.method,
                "path": request.path_qs,
                "headers": [(k.lower(), v) for k, v in request.headers.items()],
                "body": await request.read(),
            }
        )
        return await handler(request)

    app = web.Application(middlewares=[record])
    app.add_routes(routes)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture
async def server() -> AsyncIterator[Callable[[list[web.RouteDef]], Awaitable[tuple[str, Seen]]]]:
    runners: list[web.AppRunner] = []

    async def start(routes: list[web.RouteDef]) -> tuple[str, Seen]:
        seen = Seen()
        runner, url = await _serve(routes, seen)
        runners.append(runner)
        return url, seen

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=AiohttpTransport(max_connections=2, timeout_s=2)) as c:
        yield c


async def test_the_request_arrives_as_httpx_built_it_and_the_answer_comes_back_whole(
    server: Any, http: httpx.AsyncClient
) -> None:
    async def echo(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response(
            {"got": body}, status=201, headers={"ETag": '"e1"', "X-Twice": "a"}
        )

    url, seen = await server([web.post("/api/v1/things", echo)])
    response = await http.post(
        f"{url}/api/v1/things?x=1&y=%C3%A9",
        json={"name": "n1", "labels": {"zone": "é"}},
        headers={"Authorization": "Bearer t", "User-Agent": "sentinel-agent/0.1"},
    )
    assert response.status_code == 201
    assert response.json() == {"got": {"name": "n1", "labels": {"zone": "é"}}}
    assert response.headers["etag"] == '"e1"'
    assert response.headers["x-twice"] == "a"
    [received] = seen.requests
    assert received["method"] == "POST"
    assert received["path"] == "/api/v1/things?x=1&y=%C3%A9"
    assert json.loads(received["body"]) == {"name": "n1", "labels": {"zone": "é"}}
    headers = dict(received["headers"])
    assert headers["authorization"] == "Bearer t"
    assert headers["user-agent"] == "sentinel-agent/0.1"
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(received["body"])
    # Nothing of aiohttp's own: only what httpx put on the request (plus Host).
    built = http.build_request(
        "POST", url, json={}, headers={"Authorization": "Bearer t", "User-Agent": "x"}
    )
    sent_by_httpx = {name.decode().lower() for name, _ in built.headers.raw}
    assert {name for name, _ in received["headers"]} <= sent_by_httpx | {"host"}


async def test_a_large_body_streams_in_chunks_and_the_wire_bytes_stay_compressed(
    server: Any, http: httpx.AsyncClient
) -> None:
    payload = bytes(range(256)) * 8192  # 2 MiB
    packed = gzip.compress(json.dumps({"n": 1}).encode())

    async def big(_request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(len(payload))})
        await response.prepare(_request)
        for start in range(0, len(payload), 100_000):
            await response.write(payload[start : start + 100_000])
        return response

    async def zipped(_request: web.Request) -> web.Response:
        return web.Response(
            body=packed, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}
        )

    url, _ = await server([web.get("/big", big), web.get("/zipped", zipped)])
    chunks: list[bytes] = []
    async with http.stream("GET", f"{url}/big") as response:
        assert response.headers["content-length"] == str(len(payload))
        async for chunk in response.aiter_raw():
            chunks.append(chunk)
    assert b"".join(chunks) == payload
    assert len(chunks) > 1  # streamed, not read whole before the first byte was handed out

    async with http.stream("GET", f"{url}/zipped") as response:
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
    assert raw == packed  # what crossed the wire, for a caller that caps it
    assert (await http.get(f"{url}/zipped")).json() == {"n": 1}  # httpx decodes as usual


async def test_redirects_are_handed_back_not_followed(server: Any, http: httpx.AsyncClient) -> None:
    async def moved(_request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": "/elsewhere"})

    url, seen = await server([web.get("/from", moved)])
    response = await http.get(f"{url}/from")
    assert response.status_code == 302
    assert response.headers["location"] == "/elsewhere"
    assert [r["path"] for r in seen.requests] == ["/from"]


async def test_many_requests_share_the_pool_of_keep_alive_connections(
    server: Any, http: httpx.AsyncClient
) -> None:
    async def ok(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    url, seen = await server([web.get("/ok", ok)])
    answers = await asyncio.gather(*(http.get(f"{url}/ok") for _ in range(60)))
    assert [a.status_code for a in answers] == [200] * 60
    assert len(seen.requests) == 60
    assert 1 <= len(seen.peers) <= 2  # max_connections=2, connections reused


async def _raw_server(
    handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> tuple[asyncio.Server, str]:
    raw = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = raw.sockets[0].getsockname()[1]
    return raw, f"http://127.0.0.1:{port}"


async def test_a_refused_connection_is_a_connect_error_and_the_node_client_retries_it() -> None:
    raw, url = await _raw_server(lambda _r, w: _close(w))
    raw.close()
    await raw.wait_closed()  # the port is now closed: connecting is refused
    async with httpx.AsyncClient(transport=AiohttpTransport(timeout_s=2)) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(f"{url}/x")
        delays: list[float] = []

        async def sleep(seconds: float) -> None:
            delays.append(seconds)

        client = NodeClient(url, http=http, sleep=sleep, max_attempts=3, use_token=False)
        with pytest.raises(Unreachable):
            await client.register("default", name="n1")
    # never sent, so even registration (not idempotent) was tried again
    assert len(delays) == 2


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()


async def test_no_answer_in_time_is_a_read_timeout_and_registration_is_not_repeated() -> None:
    received = 0
    release = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal received
        await reader.readuntil(b"\r\n\r\n")
        received += 1
        await release.wait()  # never answers while the client waits
        writer.close()

    raw, url = await _raw_server(silent)
    try:
        async with httpx.AsyncClient(transport=AiohttpTransport(timeout_s=0.3)) as http:
            with pytest.raises(httpx.ReadTimeout):
                await http.get(f"{url}/x")
            client = NodeClient(url, http=http, max_attempts=3, use_token=False)
            with pytest.raises(Unreachable):
                await client.register("default", name="n1")
    finally:
        release.set()
        raw.close()
        await raw.wait_closed()
    assert received == 2  # one plain GET, one registration: the registration was not repeated


async def test_a_connection_cut_mid_body_is_a_read_error() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
        await writer.drain()
        writer.close()

    raw, url = await _raw_server(cut)
    try:
        async with httpx.AsyncClient(transport=AiohttpTransport(timeout_s=2)) as http:
            with pytest.raises(httpx.ReadError):
                async with http.stream("GET", f"{url}/x") as response:
                    async for _chunk in response.aiter_raw():
                        pass
    finally:
        raw.close()
        await raw.wait_closed()


async def test_the_node_client_speaks_the_protocol_through_it(server: Any) -> None:
    async def heartbeat(request: web.Request) -> web.Response:
        assert request.headers["X-Sentinel-Node-Key"] == NODE_KEY
        body = await request.json()
        return web.json_response(
            {
                "status": "ok",
                "node_id": NODE_ID,
                "last_seen_at": "2026-11-28T10:00:00+00:00",
                "poll_after_s": 7,
                "assigned_bundle_id": None,
                "echo": body,
            }
        )

    url, seen = await server([web.post(f"/api/v1/nodes/{NODE_ID}/heartbeat", heartbeat)])
    async with httpx.AsyncClient(transport=AiohttpTransport()) as http:
        client = NodeClient(url, http=http, node_id=NODE_ID, node_key=NODE_KEY, use_token=False)
        ack = await client.heartbeat(version="1.0")
    assert ack.poll_after_s == 7
    assert json.loads(seen.requests[0]["body"]) == {"version": "1.0"}
