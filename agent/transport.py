"""An `httpx` transport over `aiohttp`'s connection pool, for many nodes in one process.

`NodeClient` speaks `httpx`; a single real node is happy with httpx's own transport. The
simulator is not: it runs thousands of nodes over one pool, and httpx's pool (httpcore on
`anyio`, h11 in pure Python) costs milliseconds of CPU per request once the pool holds a few
connections — the simulator became the bottleneck of the benchmarks it drives. aiohttp parses
HTTP in C (llhttp) and hands out pooled connections without scanning the pool, so this
transport keeps httpx's API (requests, responses, streaming, `MockTransport` in tests) and
swaps only the part that moves bytes.

What it maps: request method, URL, headers and body go out unchanged (no redirects followed,
no cookies, no automatic decompression: `auto_decompress=False`, so `aiter_raw` sees the wire
bytes and httpx decodes `Content-Encoding` itself as it would with its own transport); the
response streams through `httpx.AsyncByteStream`. aiohttp's errors become the httpx errors the
client already tells apart — a request that cannot have reached the server (`ConnectError`,
`ConnectTimeout`) from one that may have (`ReadTimeout`, `ReadError`): `NodeClient` repeats a
non-idempotent request only in the first case.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import httpx

CHUNK_BYTES = 64 * 1024


class _AiohttpStream(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_chunked(CHUNK_BYTES):
                yield chunk
        except TimeoutError as exc:
            raise httpx.ReadTimeout(repr(exc), request=self._request) from exc
        except aiohttp.ClientError as exc:
            raise httpx.ReadError(repr(exc), request=self._request) from exc

    async def aclose(self) -> None:
        self._response.release()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """`httpx.AsyncClient(transport=AiohttpTransport(max_connections=16, timeout_s=10))`."""

    def __init__(self, *, max_connections: int = 16, timeout_s: float = 10.0) -> None:
        self.max_connections = max_connections
        # `connect` would also count the wait for a free pooled connection (httpx's pool=None
        # waited for one without limit); only the socket's own connect and reads are timed.
        self.timeout = aiohttp.ClientTimeout(
            total=None, connect=None, sock_connect=timeout_s, sock_read=timeout_s
        )
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # Made on first use, inside the running event loop (aiohttp binds to it).
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self.max_connections, ttl_dns_cache=300, enable_cleanup_closed=True
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self.timeout,
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in request.headers.raw
            if name.lower() not in (b"host", b"content-length", b"transfer-encoding")
        ]
        try:
            response = await self._client().request(
                request.method,
                str(request.url),
                headers=headers,
                data=body or None,
                allow_redirects=False,
            )
        except aiohttp.ConnectionTimeoutError as exc:
            raise httpx.ConnectTimeout(repr(exc), request=request) from exc
        except TimeoutError as exc:  # the answer did not come in time: it may have been sent
            raise httpx.ReadTimeout(repr(exc), request=request) from exc
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError(repr(exc), request=request) from exc
        except (aiohttp.ClientError, asyncio.IncompleteReadError) as exc:
            raise httpx.ReadError(repr(exc), request=request) from exc
        return httpx.Response(
            status_code=response.status,
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.raw_headers],
            stream=_AiohttpStream(response, request),
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
