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
- Bundles: `poll_bundle` returns `BundleOffer`, `NoUpdate` or `NotModified` (304);
  `download_bundle` streams into memory under a size cap and follows a storage redirect itself,
  without the node's credentials; `report_bundle_status` posts one state. Checking and applying
  what was downloaded is `agent.bundle` and `agent.apply`, not this module.

Time and randomness are injected (`sleep`, `random`, `clock`) so tests never sleep for real.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import json as json_module
import random as random_module
import re
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
# Downloads: the offer's size plus a margin, and never more than the absolute cap.
DOWNLOAD_MARGIN_BYTES = 64 * 1024
MAX_DOWNLOAD_BYTES = 32 * 1024 * 1024
MAX_REDIRECTS = 3
MIN_HEARTBEAT_GAP_S = 1.1  # the server refuses more than one heartbeat a second per node
MAX_STATUS_LOGS_BYTES = 32 * 1024
MAX_CACHED_URLS = 32
MAX_STATUS_REASON_CHARS = 500

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
    # "active"/"retired" as the signing-keys endpoint says; not stored with pinned keys.
    state: str | None = field(default=None, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SigningKey:
        state = data.get("state")
        return cls(
            kid=str(data["kid"]),
            alg=str(data["alg"]),
            public_key=str(data["public_key"]),
            state=str(state) if state is not None else None,
        )

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
    # When the answer arrived (time.monotonic()): the server took the heartbeat before then.
    answered_at: float = field(default_factory=time.monotonic)

    def next_heartbeat_s(self, interval_s: float) -> float:
        """When to come back: the usual interval, or sooner when the control plane asks (a
        shorter `poll_after_s` while this node takes part in a running rollout); never faster
        than the one heartbeat a second the server accepts."""
        return max(MIN_HEARTBEAT_GAP_S, min(interval_s, float(self.poll_after_s)))

    def after_apply_s(self, now: float) -> float:
        """When to come back after applying the bundle this heartbeat offered: at once, as
        soon as the one-a-second limit allows (counted from this answer). The next heartbeat
        carries the new `active_bundle_id` and is the fresh one the rollout's gates wait for
        (spec/node-protocol.md, node behaviour, step 5)."""
        return max(0.0, self.answered_at + MIN_HEARTBEAT_GAP_S - now)


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


BUNDLE_STATES: Final = frozenset(
    {"downloaded", "staged", "activated", "verified", "failed", "rolled_back"}
)
_BUNDLE_ID = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class BundleOffer:
    """A poll answer naming a bundle to apply (`bundle_id` == `checksum`)."""

    bundle_id: str
    version: str | None
    checksum: str
    size_bytes: int | None
    download_url: str | None
    signature: str
    signing_key_id: str
    rollout_id: str | None
    poll_after_s: int
    etag: str | None = None
    project_id: str | None = None  # only if the control plane volunteers it

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, etag: str | None) -> BundleOffer:
        bundle_id, checksum = str(data["bundle_id"]).lower(), str(data["checksum"]).lower()
        for value in (bundle_id, checksum):
            if not _BUNDLE_ID.fullmatch(value):
                raise ValueError(f"not a sha256 hex id: {value[:80]!r}")
        size = data.get("size_bytes")
        return cls(
            bundle_id=bundle_id,
            version=data.get("version"),
            checksum=checksum,
            size_bytes=int(size) if size is not None else None,
            download_url=data.get("download_url"),
            signature=str(data["signature"]),
            signing_key_id=str(data["signing_key_id"]),
            rollout_id=data.get("rollout_id"),
            poll_after_s=int(data.get("poll_after_s", 30)),
            etag=etag,
            project_id=data.get("project_id"),
        )


@dataclass(frozen=True)
class NoUpdate:
    """A poll answer: nothing to apply (assignment unset, revoked, or already active)."""

    poll_after_s: int
    etag: str | None = None


@dataclass(frozen=True)
class NotModified:
    """304: the assignment is what it was when `etag` was issued."""

    etag: str


PollResult = BundleOffer | NoUpdate | NotModified


@dataclass(frozen=True)
class BundleStatusAck:
    state: str


class DownloadRefused(ControlPlaneError):
    """The download broke a rule of ours (too large, odd redirect): retrying will not help."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def token_claims(token: str) -> dict[str, Any]:
    """The claims of a compact JWS, *unverified*: only for facts the server tells about us
    (our project's id), never to decide access. `{}` when it is not a readable JWT."""
    try:
        payload = token.split(".")[1]
        claims = json_module.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return {}
    return claims if isinstance(claims, dict) else {}


def _truncate_utf8_tail(text: str, limit: int) -> str:
    """The last `limit` bytes of `text` (logs end with what went wrong), marked as cut."""
    raw = text.encode()
    if len(raw) <= limit:
        return text
    marker = "…(truncated)\n"
    keep = raw[-(limit - len(marker.encode())) :]
    return marker + keep.decode(errors="ignore")


@dataclass
class _HeldToken:
    value: str
    refresh_at: float  # on the injected monotonic clock


# --- the client -----------------------------------------------------------------------------


class _NoCookies(httpx.Cookies):
    """Always empty: `extract_cookies` keeps nothing."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


_NO_COOKIES: Final = _NoCookies()


class NodeHttpClient(httpx.AsyncClient):
    """`httpx.AsyncClient` without a cookie jar. The node protocol sets no cookies, yet httpx
    builds urllib request and response adapters for every answer to look for them: ~10 % of
    the simulator's CPU in a rollout (`py-spy record --gil`; docs/scaling.md, session 11)."""

    @property
    def cookies(self) -> httpx.Cookies:
        return _NO_COOKIES

    @cookies.setter
    def cookies(self, _cookies: object) -> None:
        raise TypeError("a node's HTTP client keeps no cookies")


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
        project_id: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._own_http = http is None
        self.http = http or NodeHttpClient(timeout=timeout_s)
        self.node_id = node_id
        self.node_key = node_key
        self.use_token = use_token
        # The project's id (not its slug) is part of what a bundle signature covers; learned
        # from the node token's `prj` claim when not given.
        self.project_id = project_id
        self.backoff = backoff or Backoff()
        self.max_attempts = max(1, max_attempts)
        self.sleep = sleep
        self.random = random
        self.clock = clock
        # Clients sharing one pool share one limiter: httpx's pool gets slow (quadratic) when
        # many more requests wait on it than it has connections, so they wait here instead.
        self.limiter = limiter or contextlib.nullcontext()
        self._token: _HeldToken | None = None
        self._urls: dict[str, httpx.URL] = {}
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

    def _url(self, path: str) -> httpx.URL:
        """Parsed once per path (httpx parses a `str` URL on every request); the paths a node
        repeats are few (heartbeat, poll, a bundle's download and reports)."""
        url = self._urls.get(path)
        if url is None:
            if len(self._urls) >= MAX_CACHED_URLS:
                self._urls.clear()
            url = self._urls[path] = httpx.URL(f"{self.base_url}{API_PREFIX}{path}")
        return url

    async def _send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool = True,
        accept: tuple[int, ...] = (),
    ) -> httpx.Response:
        """One logical request with retries; returns a 2xx (or `accept`ed) response or raises."""
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
            if response.is_success or response.status_code in accept:
                return response
            error = error_from_response(response)
            delay = self._retry_delay(error, attempt, idempotent=idempotent)
            if delay is None:
                raise error
            await self.sleep(delay)
            attempt += 1

    def _retry_delay(self, error: ApiError, attempt: int, *, idempotent: bool) -> float | None:
        """How long to wait before trying again after `error`; None: give up now."""
        if not error.retryable or attempt + 1 >= self.max_attempts:
            return None
        if error.status in (429, 503) and error.retry_after is not None:
            return error.retry_after
        if idempotent:
            return self.backoff.delay(attempt, self.random)
        return None  # a 500 on a non-idempotent request may have been applied

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

    def _drop_refused_token(self) -> None:
        """The token was refused (expired, signing key retired, clock skew): the key decides."""
        self._token = None
        self._token_retry_at = self.clock() + TOKEN_RETRY_AFTER_REFUSAL_S

    async def _node_request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        idempotent: bool = True,
        headers: Mapping[str, str] | None = None,
        accept: tuple[int, ...] = (),
    ) -> httpx.Response:
        credential = await self._auth_headers()
        extra = dict(headers or {})
        try:
            return await self._send(
                method, path, json=json, headers={**extra, **credential}, idempotent=idempotent,
                accept=accept,
            )  # fmt: skip
        except Unauthorized:
            if "Authorization" not in credential:
                raise
            self._drop_refused_token()
            _, key = self._require_identity()
            return await self._send(
                method, path, json=json, headers={**extra, NODE_KEY_HEADER: key},
                idempotent=idempotent, accept=accept,
            )  # fmt: skip

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
        self.project_id = token_claims(issued.token).get("prj") or self.project_id
        lifetime = max(issued.expires_in, 0)
        self._token = _HeldToken(issued.token, self.clock() + lifetime * (1 - TOKEN_REFRESH_SHARE))
        return issued

    async def learn_project_id(self) -> str:
        """The project's id for signature checks: known, or read from a fresh node token."""
        if self.project_id is None:
            await self.refresh_token()
        if self.project_id is None:
            raise ControlPlaneError("the node token names no project (no `prj` claim)")
        return self.project_id

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

    # --- bundles -------------------------------------------------------------------------

    async def poll_bundle(self, *, etag: str | None = None) -> PollResult:
        """`GET /nodes/{id}/bundles/latest`; with `etag`, a 304 comes back as `NotModified`."""
        node_id, _ = self._require_identity()
        headers = {"If-None-Match": etag} if etag else {}
        response = await self._node_request(
            "GET", f"/nodes/{node_id}/bundles/latest", headers=headers, accept=(304,)
        )
        new_etag = response.headers.get("ETag")
        if response.status_code == 304:
            return NotModified(new_etag or etag or "")
        try:
            data = response.json()
            if data.get("no_update"):
                return NoUpdate(poll_after_s=int(data.get("poll_after_s", 30)), etag=new_etag)
            return BundleOffer.from_json(data, etag=new_etag)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ControlPlaneError(f"malformed poll answer: {exc}") from None

    def _download_target(self, bundle_id: str, url: str | None) -> httpx.URL:
        """The offer's `download_url` when it is on the control plane we were configured with
        (credentials go there), else the canonical path on that control plane."""
        node_id, _ = self._require_identity()
        ours = self._url(f"/nodes/{node_id}/bundles/{bundle_id}/download")
        if url:
            offered = httpx.URL(url)
            base = httpx.URL(self.base_url)
            if (offered.scheme, offered.host, offered.port) == (base.scheme, base.host, base.port):
                return offered
        return ours

    async def download_bundle(
        self,
        bundle_id: str,
        *,
        url: str | None = None,
        size_bytes: int | None = None,
        max_bytes: int = MAX_DOWNLOAD_BYTES,
    ) -> bytes:
        """`GET /nodes/{id}/bundles/{bundle_id}/download`, streamed into memory with a cap.

        The cap is `size_bytes` (from the offer) plus a margin, never above `max_bytes`. A 302
        (presigned storage URL) is followed here, by hand, *without* the node's credentials:
        the storage host must never see them. The bytes are not trusted by this method; the
        caller verifies hash and signature (`agent.bundle.verify_archive`).
        """
        if not _BUNDLE_ID.fullmatch(bundle_id):
            raise ValueError(f"not a bundle id: {bundle_id[:80]!r}")
        cap = (
            max_bytes if size_bytes is None else min(max_bytes, size_bytes + DOWNLOAD_MARGIN_BYTES)
        )
        target = self._download_target(bundle_id, url)
        attempt = 0
        while True:
            credential = await self._auth_headers()
            try:
                return await self._fetch_archive(target, credential, cap)
            except Unauthorized:
                if "Authorization" not in credential:
                    raise
                self._drop_refused_token()  # the next round sends the key
                continue
            except Unreachable:
                if attempt + 1 >= self.max_attempts:
                    raise
                delay = self.backoff.delay(attempt, self.random)
            except ApiError as exc:
                retry_after = self._retry_delay(exc, attempt, idempotent=True)
                if retry_after is None:
                    raise
                delay = retry_after
            await self.sleep(delay)
            attempt += 1

    async def _fetch_archive(
        self, url: httpx.URL, credential: Mapping[str, str], cap: int
    ) -> bytes:
        # Identity encoding: the cap then counts what goes over the wire and into memory (a
        # gzip-encoded body would be inflated by httpx before we could count it).
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **credential}
        for _hop in range(MAX_REDIRECTS + 1):
            try:
                async with (
                    self.limiter,
                    self.http.stream(
                        "GET", url, headers=headers, follow_redirects=False
                    ) as response,
                ):
                    if response.is_redirect:
                        location = response.headers["Location"]
                        url = response.url.join(location)
                        if url.scheme not in ("http", "https"):
                            raise DownloadRefused(f"redirect to a {url.scheme or 'relative'} URL")
                        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
                        continue
                    if not response.is_success:
                        await response.aread()
                        raise error_from_response(response)
                    declared = response.headers.get("Content-Length")
                    if declared and declared.isdigit() and int(declared) > cap:
                        raise DownloadRefused(f"download larger than {cap} bytes")
                    body = bytearray()
                    async for chunk in response.aiter_raw():
                        body += chunk
                        if len(body) > cap:
                            raise DownloadRefused(f"download larger than {cap} bytes")
                    return bytes(body)
            except httpx.TransportError as exc:
                raise Unreachable(f"GET {url.copy_with(query=None)}: {exc!r}") from exc
        raise DownloadRefused(f"more than {MAX_REDIRECTS} redirects")

    async def report_bundle_status(
        self, bundle_id: str, state: str, *, reason: str | None = None, logs: str | None = None
    ) -> BundleStatusAck:
        """`POST /nodes/{id}/bundles/{bundle_id}/{state}`. Safe to repeat (the server answers a
        repeat with 200); a backward transition raises `Conflict` (`invalid_transition`).
        Logs are cut to their last 32 KiB, the reason to 500 characters."""
        if state not in BUNDLE_STATES:
            raise ValueError(f"unknown bundle state {state!r}")
        node_id, _ = self._require_identity()
        body: dict[str, str] = {}
        if reason is not None:
            body["reason"] = reason[:MAX_STATUS_REASON_CHARS]
        if logs is not None:
            body["logs"] = _truncate_utf8_tail(logs, MAX_STATUS_LOGS_BYTES)
        response = await self._node_request(
            "POST", f"/nodes/{node_id}/bundles/{bundle_id}/{state}", json=body
        )
        try:
            return BundleStatusAck(state=str(response.json().get("state", state)))
        except (AttributeError, ValueError):
            return BundleStatusAck(state=state)
