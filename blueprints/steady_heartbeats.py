"""Steady heartbeats answered before Flask: a WSGI layer in front of the application.

With a fleet heartbeating, most requests an `api` process serves are steady heartbeats of
nodes it remembers, which the heartbeat buffer answers from memory (`HeartbeatBuffer.heartbeat`)
— and yet each paid for Flask's request machinery around that answer: the request and
application contexts, routing, the session and login hooks, the response object. Measured on an
idle fleet of 1,000 nodes heartbeating every second, that machinery was most of what `api`
spent, and it left little of the two cores for a rollout (`docs/scaling.md`, session 10).

This layer answers exactly the requests the route's own shortcut (`node_api.buffered_heartbeat`)
would answer from memory, with the same body and headers and the same counters, and hands every
other request to Flask untouched (its body re-readable): anything it does not recognise, a
credential the buffer does not know, a body that is not a valid heartbeat, one that comes too
soon (the route answers the 429), one that must be written now. So every refusal and every
error still comes from the route, which is where the node protocol's rules live.
"""

from __future__ import annotations

import io
import re
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any, cast

from flask import Flask
from werkzeug.datastructures import EnvironHeaders

from blueprints import node_api, node_auth
from blueprints.api import parse_json_data
from blueprints.schemas import HeartbeatIn
from sentinel_cp import heartbeat_buffer, metrics
from sentinel_cp.bundles.pollcache import PollCache

ENDPOINT = "node_api.heartbeat"
_PATH = re.compile(r"/api/v1/nodes/([^/]+)/heartbeat")

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class SteadyHeartbeats:
    """`app.wsgi_app = SteadyHeartbeats(app, app.wsgi_app)`."""

    def __init__(
        self,
        app: Flask,
        wsgi_app: WSGIApp,
        *,
        headers: Iterable[tuple[str, str]],
        request_id_pattern: re.Pattern[str],
        max_body: int,
    ) -> None:
        self.app = app
        self.wsgi_app = wsgi_app
        # What `app._install_request_hooks` adds to every API answer, besides the request id.
        self.headers = [
            ("Content-Type", "application/json"),
            *headers,
            ("Cache-Control", "no-store"),
            ("Vary", "Cookie"),  # Flask-Login's hook reads the session of every request
        ]
        self.request_id_pattern = request_id_pattern
        self.max_body = max_body

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") == "POST" and not environ.get("QUERY_STRING"):
            matched = _PATH.fullmatch(environ.get("PATH_INFO", ""))
            if matched is not None:
                started = time.perf_counter()
                body = self._answer(environ, matched.group(1))
                if body is not None:
                    return self._respond(environ, start_response, body, started)
        return self.wsgi_app(environ, start_response)

    def _answer(self, environ: dict[str, Any], node_id: str) -> bytes | None:
        """The JSON answer from memory, or None (then the route answers; the body was put
        back where it reads it)."""
        buffer = heartbeat_buffer.for_app(self.app)
        if buffer is None:
            return None
        header, value = node_auth.credential_in(EnvironHeaders(environ))
        key = PollCache.credential_key(node_id, header, value) if value else None
        if key is None or not buffer.knows(key):
            return None
        if environ.get("HTTP_TRANSFER_ENCODING"):
            return None  # a chunked body: the route reads it to its end
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return None
        if not 0 <= length <= self.max_body:
            return None
        data = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(data)  # the route reads it again if need be
        mimetype = environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower()
        try:
            body = cast(HeartbeatIn, parse_json_data(data, mimetype, HeartbeatIn))
            answer = node_api.steady_answer(buffer, key, body)
        except Exception:  # the route answers it, with the right status
            return None
        if answer is None:
            return None
        return f"{self.app.json.dumps(answer, separators=(',', ':'))}\n".encode()

    def _respond(
        self,
        environ: dict[str, Any],
        start_response: StartResponse,
        body: bytes,
        started: float,
    ) -> Iterable[bytes]:
        supplied = environ.get("HTTP_X_REQUEST_ID", "")
        request_id = supplied if self.request_id_pattern.fullmatch(supplied) else uuid.uuid4().hex
        start_response(
            "200 OK",
            [
                *self.headers,
                ("Content-Length", str(len(body))),
                ("X-Request-ID", request_id),
            ],
        )
        metrics.HTTP_REQUESTS.labels("POST", ENDPOINT, "200").inc()
        metrics.HTTP_LATENCY.labels(ENDPOINT).observe(time.perf_counter() - started)
        return [body]
