"""`sentinel-agent`: runs beside a real proxy and keeps the control plane informed.

    sentinel-agent --url URL --project SLUG --name NAME --registration-token T \\
                   --credentials PATH [--metrics-url URL] [--label k=v ...]

It registers once (or starts from the credentials file), pins the signing keys, then heartbeats
every `heartbeat_interval_s` with health and metrics read from the proxy. When the control plane
is away it keeps going: retries with exponential backoff and full jitter, and logs one line when
the state changes (lost, back), not one per retry. SIGTERM/SIGINT stop it cleanly (exit 0).
Bundle polling, download and activation arrive with bundles.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random as random_module
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx

from agent import credentials as credentials_file
from agent.client import (
    ApiError,
    Backoff,
    NodeClient,
    Unauthorized,
    Unreachable,
)
from agent.credentials import Credentials, CredentialsError
from agent.proxy import NoProxy, PrometheusProxy, ProxyDriver

log = logging.getLogger("sentinel_agent")
AGENT_VERSION = "0.1.0"
EXIT_OK, EXIT_CONFIG, EXIT_REFUSED = 0, 2, 3
T = TypeVar("T")


def parse_label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"label must be key=value, got {text!r}")
    return key, value


@dataclass
class AgentOptions:
    url: str
    project: str
    name: str
    credentials_path: Path
    registration_token: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    metrics_url: str | None = None
    heartbeat_interval_s: float | None = None  # None: what the control plane announced
    backoff: Backoff = field(default_factory=lambda: Backoff(base_s=1.0, cap_s=60.0))
    use_token: bool = True


class Agent:
    """Register-or-load, then the heartbeat loop. `stop` ends it between two steps."""

    def __init__(
        self,
        options: AgentOptions,
        client: NodeClient,
        proxy: ProxyDriver,
        *,
        random: Callable[[], float] = random_module.random,
    ) -> None:
        self.options = options
        self.client = client
        self.proxy = proxy
        self.random = random
        self.stopping = asyncio.Event()
        self.reachable: bool | None = None  # None until the first answer or failure
        self.heartbeats_sent = 0

    def stop(self) -> None:
        self.stopping.set()

    async def pause(self, seconds: float) -> None:
        """Sleep, but wake at once when asked to stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), timeout=max(seconds, 0.0))

    def _note_reachable(self, reachable: bool, detail: str = "") -> None:
        """One log line per change of state, not per retry."""
        if reachable == self.reachable:
            return
        if reachable:
            log.info("control plane reachable at %s", self.options.url)
        else:
            log.warning("control plane unreachable (%s); retrying with backoff", detail)
        self.reachable = reachable

    async def _register(self) -> Credentials:
        opts = self.options
        registration = await self.client.register(
            opts.project,
            name=opts.name,
            registration_token=opts.registration_token,
            labels=opts.labels,
            capabilities=["heartbeat_v1", "metrics_v1"],
            version=AGENT_VERSION,
            hostname=socket.gethostname(),
        )
        creds = Credentials(
            node_id=registration.node_id,
            node_key=registration.node_key,
            project=opts.project,
            url=opts.url,
            name=opts.name,
            signing_keys=registration.signing_keys,
            heartbeat_interval_s=registration.heartbeat_interval_s,
            poll_interval_s=registration.poll_interval_s,
        )
        credentials_file.save(opts.credentials_path, creds)
        log.info(
            "registered as %s (node %s); credentials in %s",
            opts.name,
            registration.node_id,
            opts.credentials_path,
        )
        return creds

    async def _until_done(self, step: Callable[[], Awaitable[T]], what: str) -> T | None:
        """Run `step` until it succeeds; transient failures back off. None when stopped."""
        attempt = 0
        while not self.stopping.is_set():
            try:
                result = await step()
            except Unreachable as exc:
                self._note_reachable(False, str(exc.__cause__ or exc))
            except ApiError as exc:
                if not exc.retryable:
                    raise
                self._note_reachable(False, f"{what}: {exc}")
            else:
                self._note_reachable(True)
                return result
            await self.pause(self.options.backoff.delay(attempt, self.random))
            attempt += 1
        return None

    async def ensure_identity(self) -> Credentials | None:
        path = self.options.credentials_path
        if path.exists():
            creds = credentials_file.load(path)
            self.client.node_id, self.client.node_key = creds.node_id, creds.node_key
            log.info("starting as node %s from %s", creds.node_id, path)
            return creds
        if not self.options.registration_token:
            log.info("no registration token given; trying open registration")
        return await self._until_done(self._register, "register")

    async def run(self) -> int:
        try:
            creds = await self.ensure_identity()
        except CredentialsError as exc:
            log.error("%s", exc)
            return EXIT_CONFIG
        except ApiError as exc:
            log.error("registration refused: %s", exc)
            return EXIT_REFUSED
        if creds is None:
            return EXIT_OK
        interval = self.options.heartbeat_interval_s
        if interval is None:
            interval = float(creds.heartbeat_interval_s or 30)
        while not self.stopping.is_set():
            try:
                await self._until_done(self._heartbeat_once, "heartbeat")
            except Unauthorized as exc:
                if not self.options.registration_token:
                    log.error("credentials refused (%s) and no registration token to renew", exc)
                    return EXIT_REFUSED
                log.warning("credentials refused (%s); registering again", exc)
                self.options.credentials_path.unlink(missing_ok=True)
                try:
                    creds = await self.ensure_identity()
                except ApiError as again:
                    log.error("registration refused: %s", again)
                    return EXIT_REFUSED
                continue
            except ApiError as exc:
                log.error("heartbeat refused: %s", exc)  # 4xx: a bug or bad input; keep trying
            await self.pause(interval)
        log.info("stopping")
        return EXIT_OK

    async def _heartbeat_once(self) -> None:
        reading = await self.proxy.read()
        await self.client.heartbeat(
            health=reading.health(), metrics=reading.metrics or None, version=AGENT_VERSION
        )
        self.heartbeats_sent += 1
        log.debug("heartbeat %d ok (%s)", self.heartbeats_sent, reading.status)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sentinel-agent", description="Sentinel node agent: registers and heartbeats"
    )
    parser.add_argument("--url", required=True, help="control plane base URL")
    parser.add_argument("--project", required=True, help="project slug")
    parser.add_argument("--name", required=True, help="node name (unique in the project)")
    parser.add_argument("--registration-token", help="project registration token")
    parser.add_argument("--credentials", required=True, type=Path, help="credentials file")
    parser.add_argument("--metrics-url", help="the proxy's Prometheus endpoint")
    parser.add_argument(
        "--label", action="append", default=[], type=parse_label, help="k=v (repeatable)"
    )
    parser.add_argument(
        "--heartbeat-interval",
        type=float,
        help="seconds between heartbeats (default: what the control plane announces)",
    )
    parser.add_argument(
        "--backoff-max", type=float, default=60.0, help="longest wait between retries (s)"
    )
    parser.add_argument("--no-token", action="store_true", help="send the node key, not a JWT")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


async def run_agent(args: argparse.Namespace) -> int:
    options = AgentOptions(
        url=args.url,
        project=args.project,
        name=args.name,
        credentials_path=args.credentials,
        registration_token=args.registration_token,
        labels=dict(args.label),
        metrics_url=args.metrics_url,
        heartbeat_interval_s=max(args.heartbeat_interval, 1.0) if args.heartbeat_interval else None,
        backoff=Backoff(base_s=min(1.0, args.backoff_max), cap_s=args.backoff_max),
        use_token=not args.no_token,
    )
    async with httpx.AsyncClient(timeout=10.0) as http:
        client = NodeClient(
            options.url, http=http, use_token=options.use_token, backoff=options.backoff,
            max_attempts=3,
        )  # fmt: skip
        proxy: ProxyDriver = (
            PrometheusProxy(options.metrics_url, http=http) if options.metrics_url else NoProxy()
        )
        agent = Agent(options, client, proxy)
        client.sleep = agent.pause  # a stop request also cuts the client's own retry waits
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, agent.stop)
        return await agent.run()


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr
    )
    log.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if args.credentials.exists():
        try:
            credentials_file.load(args.credentials)
        except CredentialsError as exc:
            print(f"sentinel-agent: {exc}", file=sys.stderr)
            raise SystemExit(EXIT_CONFIG) from None
    raise SystemExit(asyncio.run(run_agent(args)))


if __name__ == "__main__":
    main()
