"""The node protocol client (spec/node-protocol.md), on `httpx.AsyncClient`.

One `NodeClient` speaks for one node. Many clients may share one `httpx.AsyncClient` (the
simulator runs a thousand nodes over one connection pool). What the client decides on its own:

- Credentials: once it knows its node id and key it exchanges the key for a JWT
  (`POST /nodes/{id}/token`) and sends `Authorization: Bearer`; it refreshes the token before it
  expires, and on a 401 for the token it falls back to the node key for that request.
- Retries: 429 and 503 wait for `Retry-After`; network errors and other 5xx wait an exponential
  backoff with full jitter. Requests that are not safe to repeat (register, events) are retried
  only when the request cannot have reached the server (connect errors, 429, 503).
- Errors: every non-2xx answer becomes an `ApiError` carrying the status, the JSON `code`, the
  message and the field problems; a network failure that outlasts the retries is `Unreachable`.

Time and randomness are injected (`sleep`, `random`, `clock`) so tests never sleep for real.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import random as random_module
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import httpx

API_PREFIX = "/api/v1"
REGISTRATION_HEADER = "X-Sentinel-Registration-Token"
NODE_KEY_HEADER = "X-Sentinel-Node-Key"
USER_AGENT = "sentinel-agent/0.1"
# A token is renewed when less than this share of its lifetime remains (12 h → 72 min).
TOKEN_REFRESH_SHARE = 0.1
MAX_RETRY_AFTER_S = 3600.0
TOKEN_RETRY_AFTER_REFUSAL_S = 300.0

Sleep = Callable[[float], Awaitable[None]]


class _Unset:
    """Marks a heartbeat field as absent (absent leaves the stored value alone; None clears)."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset()


# --- errors ---------------------------------------------------------------------------------


class ControlPlaneError(Exception):
    """Anything that kept a request from succeeding."""


class Unreachable(ControlPlaneError):
    """The control plane could not be reached (connection refused, timeout, reset)."""


class ApiError(ControlPlaneError):
    """The control plane answered with an error (spec: `{"error", "code", "fields"}`)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        fields: dict[str, list[str]] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields or {}
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        """Worth trying again later: rate limits and server-side trouble, not refusals."""
        return self.status == 429 or self.status >= 500


class BadRequest(ApiError):
    """400 malformed, 413 too large or 422 invalid fields (`fields` names them)."""


class Unauthorized(ApiError):
    """401: missing, wrong, revoked or expired credential."""


class Forbidden(ApiError):
    """403: e.g. `node_mismatch`."""


class NotFound(ApiError):
    """404: unknown project or node."""


class Conflict(ApiError):
    """409: e.g. `name_taken` at registration."""


class RateLimited(ApiError):
    """429 (with `retry_after`)."""


class ServerError(ApiError):
    """5xx; 503 means a dependency is down (with `retry_after`)."""


_ERROR_CLASSES: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: BadRequest,
    422: BadRequest,
    429: RateLimited,
}


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """`Retry-After` as seconds: either delta-seconds or an HTTP date; None when absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def error_from_response(response: httpx.Response) -> ApiError:
    """Map a non-2xx response to the matching `ApiError` subclass."""
    status = response.status_code
    code, message, fields = f"http_{status}", response.reason_phrase or "error", None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        code = str(body.get("code") or code)
        message = str(body.get("error") or message)
        if isinstance(body.get("fields"), dict):
            fields = {str(k): [str(p) for p in v] for k, v in body["fields"].items()}
    cls = _ERROR_CLASSES.get(status, ServerError if status >= 500 else ApiError)
    return cls(
        status,
        code,
        message,
        fields=fields,
        retry_after=parse_retry_after(response.headers.get("Retry-After")),
    )


# --- backoff --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter: attempt n waits uniform(0, min(cap, base·2ⁿ)).

    Full jitter spreads a fleet that lost the control plane at the same moment, so it does not
    come back as one wave (AWS Architecture Blog, "Exponential Backoff And Jitter").
    """

    base_s: float = 0.5
    cap_s: float = 60.0

    def ceiling(self, attempt: int) -> float:
        return min(self.cap_s, self.base_s * (2 ** min(attempt, 62)))

    def delay(self, attempt: int, random: Callable[[], float]) -> float:
        return random() * self.ceiling(attempt)


# --- typed results --------------------------------------------------------------------------


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: str
    public_key: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SigningKey:
        return cls(kid=str(data["kid"]), alg=str(data["alg"]), public_key=str(data["public_key"]))

    def to_json(self) -> dict[str, str]:
        return {"kid": self.kid, "alg": self.alg, "public_key": self.public_key}


@dataclass(frozen=True)
class Registration:
    node_id: str
    node_key: str
    poll_interval_s: int
    heartbeat_interval_s: int
    signing_keys: list[SigningKey]


@dataclass(frozen=True)
class HeartbeatAck:
    node_id: str
    last_seen_at: datetime | None
    poll_after_s: int
    assigned_bundle_id: str | None


@dataclass(frozen=True)
class NodeToken:
    token: str
    expires_at: datetime | None
    expires_in: int


@dataclass(frozen=True)
class ConfigAck:
    config_hash: str


@dataclass(frozen=True)
class NodeEvent:
    event_type: str
    message: str
    severity: str = "info"
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "event_type": self.event_type,
            "severity": self.severity,
            "message": self.message,
            "metadata": self.metadata,
        }


@dataclass
class _HeldToken:
    value: str
    refresh_at: float  # on the injected monotonic clock


# --- the client -----------------------------------------------------------------------------


class NodeClient:
    """The protocol, for one node.

    `http` may be shared between clients; the caller owns it then (this client closes only an
    `httpx.AsyncClient` it created). `node_id`/`node_key` come from `register()` or from a
    credentials file. `use_token=False` sends the node key on every request (cheaper for the
    server only by an Ed25519 verification; the spec recommends the token).
    """

    def __init__(
        self,
        base_url: str,
        *,
        http: httpx.AsyncClient | None = None,
        node_id: str | None = None,
        node_key: str | None = None,
        use_token: bool = True,
        backoff: Backoff | None = None,
        max_attempts: int = 5,
        timeout_s: float = 10.0,
        sleep: Sleep = asyncio.sleep,
        random: Callable[[], float] = random_module.random,
        clock: Callable[[], float] = time.monotonic,
        limiter: asyncio.Semaphore | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._own_http = http is None
        self.http = http or httpx.AsyncClient(timeout=timeout_s)
        self.node_id = node_id
        self.node_key = node_key
        self.use_token = use_token
        self.backoff = backoff or Backoff()
        self.max_attempts = max(1, max_attempts)
        self.sleep = sleep
        self.random = random
        self.clock = clock
        # Clients sharing one pool share one limiter: httpx's pool gets slow (quadratic) when
        # many more requests wait on it than it has connections, so they wait here instead.
        self.limiter = limiter or contextlib.nullcontext()
        self._token: _HeldToken | None = None
        # After the server refused a token, the key is used alone until then (no ping-pong).
        self._token_retry_at = float("-inf")

    async def __aenter__(self) -> NodeClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._own_http:
            await self.http.aclose()

    # --- transport ------------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return f"{self.base_url}{API_PREFIX}{path}"

    async def _send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool = True,
    ) -> httpx.Response:
        """One logical request with retries; returns a 2xx response or raises."""
        all_headers = {"User-Agent": USER_AGENT, **(headers or {})}
        attempt = 0
        while True:
            try:
                async with self.limiter:
                    response = await self.http.request(
                        method, self._url(path), json=json, headers=all_headers
                    )
            except httpx.TransportError as exc:
                never_sent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                if attempt + 1 >= self.max_attempts or not (idempotent or never_sent):
                    raise Unreachable(f"{method} {path}: {exc!r}") from exc
                await self.sleep(self.backoff.delay(attempt, self.random))
                attempt += 1
                continue
            if response.is_success:
                return response
            error = error_from_response(response)
            if not error.retryable or attempt + 1 >= self.max_attempts:
                raise error
            if error.status in (429, 503) and error.retry_after is not None:
                delay = error.retry_after
            elif idempotent:
                delay = self.backoff.delay(attempt, self.random)
            else:
                raise error  # a 500 on a non-idempotent request may have been applied
            await self.sleep(delay)
            attempt += 1

    def _require_identity(self) -> tuple[str, str]:
        if self.node_id is None or self.node_key is None:
            raise RuntimeError("this client has no node identity yet: register or load one")
        return self.node_id, self.node_key

    async def _auth_headers(self) -> dict[str, str]:
        """Bearer when a token is held (refreshed first when due), else the node key."""
        _, key = self._require_identity()
        if self.use_token and self.clock() >= self._token_retry_at:
            if self._token is None or self.clock() >= self._token.refresh_at:
                # Renewal is best effort: a still-valid token or the key works meanwhile.
                with contextlib.suppress(Unreachable, ServerError, RateLimited):
                    await self.refresh_token()
            if self._token is not None:
                return {"Authorization": f"Bearer {self._token.value}"}
        return {NODE_KEY_HEADER: key}

    async def _node_request(
        self, method: str, path: str, *, json: Any = None, idempotent: bool = True
    ) -> httpx.Response:
        headers = await self._auth_headers()
        try:
            return await self._send(method, path, json=json, headers=headers, idempotent=idempotent)
        except Unauthorized:
            if "Authorization" not in headers:
                raise
            # The token was refused (expired, signing key retired, clock skew): the key decides.
            self._token = None
            self._token_retry_at = self.clock() + TOKEN_RETRY_AFTER_REFUSAL_S
            _, key = self._require_identity()
            return await self._send(
                method, path, json=json, headers={NODE_KEY_HEADER: key}, idempotent=idempotent
            )

    # --- protocol -------------------------------------------------------------------------

    async def register(
        self,
        project: str,
        *,
        name: str,
        registration_token: str | None = None,
        labels: Mapping[str, str] | None = None,
        capabilities: list[str] | None = None,
        version: str | None = None,
        hostname: str | None = None,
        ip: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Registration:
        """`POST /projects/{slug}/nodes/register`; the client takes on the new identity."""
        body: dict[str, Any] = {"name": name, "labels": dict(labels or {})}
        for key, value in (
            ("capabilities", capabilities),
            ("version", version),
            ("hostname", hostname),
            ("ip", ip),
            ("metadata", dict(metadata) if metadata is not None else None),
        ):
            if value is not None:
                body[key] = value
        headers = {REGISTRATION_HEADER: registration_token} if registration_token else {}
        response = await self._send(
            "POST", f"/projects/{project}/nodes/register", json=body, headers=headers,
            idempotent=False,
        )  # fmt: skip
        data = response.json()
        registration = Registration(
            node_id=str(data["node_id"]),
            node_key=str(data["node_key"]),
            poll_interval_s=int(data["poll_interval_s"]),
            heartbeat_interval_s=int(data["heartbeat_interval_s"]),
            signing_keys=[SigningKey.from_json(k) for k in data.get("signing_keys", [])],
        )
        self.node_id, self.node_key, self._token = registration.node_id, registration.node_key, None
        return registration

    async def refresh_token(self) -> NodeToken:
        """`POST /nodes/{id}/token` with the held token (if still valid) or the node key."""
        node_id, key = self._require_identity()
        token = self._token
        headers = {"Authorization": f"Bearer {token.value}"} if token else {NODE_KEY_HEADER: key}
        try:
            response = await self._send("POST", f"/nodes/{node_id}/token", headers=headers)
        except Unauthorized:
            if token is None:
                raise
            self._token = None
            response = await self._send(
                "POST", f"/nodes/{node_id}/token", headers={NODE_KEY_HEADER: key}
            )
        data = response.json()
        issued = NodeToken(
            token=str(data["token"]),
            expires_at=_parse_time(data.get("expires_at")),
            expires_in=int(data["expires_in"]),
        )
        lifetime = max(issued.expires_in, 0)
        self._token = _HeldToken(issued.token, self.clock() + lifetime * (1 - TOKEN_REFRESH_SHARE))
        return issued

    async def heartbeat(
        self,
        *,
        health: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Any] | None = None,
        active_bundle_id: str | _Unset | None = UNSET,
        staged_bundle_id: str | _Unset | None = UNSET,
        version: str | None = None,
        ip: str | None = None,
        hostname: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> HeartbeatAck:
        """`POST /nodes/{id}/heartbeat`. Fields left out (None/UNSET) keep their stored
        values; a bundle id passed as None tells the server there is none."""
        node_id, _ = self._require_identity()
        body: dict[str, Any] = {}
        for key, value in (
            ("health", dict(health) if health is not None else None),
            ("metrics", dict(metrics) if metrics is not None else None),
            ("version", version),
            ("ip", ip),
            ("hostname", hostname),
            ("metadata", dict(metadata) if metadata is not None else None),
        ):
            if value is not None:
                body[key] = value
        if not isinstance(active_bundle_id, _Unset):
            body["active_bundle_id"] = active_bundle_id
        if not isinstance(staged_bundle_id, _Unset):
            body["staged_bundle_id"] = staged_bundle_id
        response = await self._node_request("POST", f"/nodes/{node_id}/heartbeat", json=body)
        data = response.json()
        return HeartbeatAck(
            node_id=str(data["node_id"]),
            last_seen_at=_parse_time(data.get("last_seen_at")),
            poll_after_s=int(data.get("poll_after_s", 30)),
            assigned_bundle_id=data.get("assigned_bundle_id"),
        )

    async def send_event(self, event: NodeEvent) -> int:
        """`POST /nodes/{id}/events` with one event; returns the count stored (1)."""
        node_id, _ = self._require_identity()
        response = await self._node_request(
            "POST", f"/nodes/{node_id}/events", json=event.to_json(), idempotent=False
        )
        return int(response.json()["count"])

    async def send_events(self, events: list[NodeEvent]) -> int:
        """A batch (≤ 100, all or nothing); returns the count stored."""
        node_id, _ = self._require_identity()
        response = await self._node_request(
            "POST",
            f"/nodes/{node_id}/events",
            json={"events": [e.to_json() for e in events]},
            idempotent=False,
        )
        return int(response.json()["count"])

    async def report_running_config(self, config_kdl: str) -> ConfigAck:
        """`POST /nodes/{id}/config`: what the proxy runs, for drift detection."""
        node_id, _ = self._require_identity()
        response = await self._node_request(
            "POST", f"/nodes/{node_id}/config", json={"config_kdl": config_kdl}
        )
        return ConfigAck(config_hash=str(response.json()["config_hash"]))

    async def signing_keys(self, project: str) -> list[SigningKey]:
        """`GET /projects/{slug}/signing-keys` (public; for re-pinning over TLS)."""
        response = await self._send("GET", f"/projects/{project}/signing-keys")
        return [SigningKey.from_json(k) for k in response.json()["keys"]]

    # --- bundles (slots) ------------------------------------------------------------------

    async def poll_bundle(self, *, etag: str | None = None) -> Any:
        """`GET /nodes/{id}/bundles/latest` with `If-None-Match`. Arrives with bundles."""
        raise NotImplementedError("arrives with bundles")

    async def download_bundle(self, bundle_id: str, destination: Any) -> Any:
        """`GET /nodes/{id}/bundles/{bundle_id}/download`, streamed, hash checked.
        Arrives with bundles."""
        raise NotImplementedError("arrives with bundles")

    async def report_bundle_status(
        self, bundle_id: str, state: str, *, reason: str | None = None, logs: str | None = None
    ) -> Any:
        """`POST /nodes/{id}/bundles/{bundle_id}/{state}`. Arrives with bundles."""
        raise NotImplementedError("arrives with bundles")
