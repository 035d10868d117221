"""`sentinel-agent`: runs beside a real proxy and keeps the control plane informed.

    sentinel-agent --url URL --project SLUG --name NAME --registration-token T \\
                   --credentials PATH [--metrics-url URL] [--label k=v ...] \\
                   [--config-dir DIR [--pid-file PATH | --reload-command CMD] \\
                    [--test-command CMD] [--health-url URL] [--state-dir DIR]]

It registers once (or starts from the credentials file), pins the signing keys, then heartbeats
every `heartbeat_interval_s` with health and metrics read from the proxy. When the control plane
is away it keeps going: retries with exponential backoff and full jitter, and logs one line when
the state changes (lost, back), not one per retry. SIGTERM/SIGINT stop it cleanly (exit 0).

With `--config-dir` it also applies bundles (`agent.apply`, with the `FileDriver`): when a
heartbeat's `assigned_bundle_id` differs from the active bundle it polls, downloads, verifies,
stages, activates and verifies, and its heartbeats carry `active_bundle_id`. The active bundle
survives restarts in `bundle-state.json` in the state directory (default: the credentials
file's). Without `--config-dir` the agent reports health only and never touches the config.
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
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from agent import credentials as credentials_file
from agent.apply import ApplyResult, BundleApplier
from agent.client import (
    UNSET,
    ApiError,
    Backoff,
    HeartbeatAck,
    NodeClient,
    NodeHttpClient,
    SigningKey,
    Unauthorized,
    Unreachable,
)
from agent.credentials import BundleState, Credentials, CredentialsError
from agent.drivers import Driver, FileDriver
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
    state_dir: Path | None = None  # None: the credentials file's directory
    allow_key_refresh: bool | None = None  # None: only when the control plane URL is https

    @property
    def state_path(self) -> Path:
        directory = self.state_dir or self.credentials_path.parent
        return directory / credentials_file.STATE_FILE_NAME

    @property
    def staging_root(self) -> Path:
        return (self.state_dir or self.credentials_path.parent) / "staging"


class Agent:
    """Register-or-load, then the heartbeat loop. `stop` ends it between two steps.

    With a `driver` the loop also applies assigned bundles (see the module docstring).
    """

    def __init__(
        self,
        options: AgentOptions,
        client: NodeClient,
        proxy: ProxyDriver,
        *,
        driver: Driver | None = None,
        random: Callable[[], float] = random_module.random,
    ) -> None:
        self.options = options
        self.client = client
        self.proxy = proxy
        self.driver = driver
        self.random = random
        self.stopping = asyncio.Event()
        self.reachable: bool | None = None  # None until the first answer or failure
        self.heartbeats_sent = 0
        self.credentials: Credentials | None = None
        self.applier: BundleApplier | None = None
        self.last_apply: ApplyResult | None = None
        self._deferrals = 0  # consecutive applies the control plane could not serve
        self._ignored_assignment: str | None = None

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
        creds: Credentials | None
        if path.exists():
            creds = credentials_file.load(path)
            self.client.node_id, self.client.node_key = creds.node_id, creds.node_key
            log.info("starting as node %s from %s", creds.node_id, path)
        else:
            if not self.options.registration_token:
                log.info("no registration token given; trying open registration")
            creds = await self._until_done(self._register, "register")
        if creds is not None:
            self._adopt_credentials(creds)
        return creds

    def _adopt_credentials(self, creds: Credentials) -> None:
        """Build the bundle applier for this identity (keeps the saved bundle state)."""
        self.credentials = creds
        if self.driver is None:
            return
        previous = self.applier
        state = credentials_file.load_state(self.options.state_path)
        self.applier = BundleApplier(
            self.client,
            self.driver,
            keys=creds.signing_keys,
            staging_root=self.options.staging_root,
            project=creds.project,
            project_id=previous.project_id if previous else None,
            active_bundle_id=state.active_bundle_id,
            failed_bundles=state.failed,
            allow_key_refresh=self.options.allow_key_refresh,
            on_keys_changed=self._save_keys,
        )
        if state.active_bundle_id:
            log.info("active bundle %s (from %s)", state.active_bundle_id, self.options.state_path)

    def _save_keys(self, keys: list[SigningKey]) -> None:
        if self.credentials is None:
            return
        self.credentials = replace(self.credentials, signing_keys=keys)
        try:
            credentials_file.save(self.options.credentials_path, self.credentials)
        except OSError as exc:  # the keys still work for this run
            log.error("could not save refreshed signing keys: %s", exc)

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
            wait = interval
            try:
                ack = await self._until_done(self._heartbeat_once, "heartbeat")
                if ack is not None and not self.stopping.is_set():
                    wait = await self._apply_assigned(ack, interval)
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
            await self.pause(wait)
        log.info("stopping")
        return EXIT_OK

    async def _heartbeat_once(self) -> HeartbeatAck:
        reading = await self.proxy.read()
        ack = await self.client.heartbeat(
            health=reading.health(),
            metrics=reading.metrics or None,
            version=AGENT_VERSION,
            active_bundle_id=self.applier.active_bundle_id if self.applier else UNSET,
        )
        self.heartbeats_sent += 1
        log.debug("heartbeat %d ok (%s)", self.heartbeats_sent, reading.status)
        return ack

    async def _apply_assigned(self, ack: HeartbeatAck, interval: float) -> float:
        """Apply the assigned bundle if it is new; returns how long to wait before the next
        heartbeat (longer, with backoff, while the control plane cannot serve the bundle)."""
        assigned = ack.assigned_bundle_id
        if self.applier is None:
            if assigned and assigned != self._ignored_assignment:
                log.warning(
                    "bundle %s is assigned, but without --config-dir it is not applied", assigned
                )
                self._ignored_assignment = assigned
            return interval
        before = self._bundle_state()
        result = await self.applier.apply_assigned(assigned)
        self.last_apply = result
        if self._bundle_state() != before:
            try:
                credentials_file.save_state(self.options.state_path, self._bundle_state())
            except OSError as exc:  # keep serving; a restart would apply the bundle once more
                log.error("could not save %s: %s", self.options.state_path, exc)
        if result.outcome == "applied":
            self._deferrals = 0
            return ack.after_apply_s(time.monotonic())
        if result.outcome != "deferred":
            self._deferrals = 0
            return ack.next_heartbeat_s(interval)
        if self._deferrals == 0:
            log.warning("bundle %s deferred: %s", result.bundle_id, result.reason)
        self._deferrals += 1
        return max(interval, self.options.backoff.delay(self._deferrals, self.random))

    def _bundle_state(self) -> BundleState:
        assert self.applier is not None
        return BundleState(self.applier.active_bundle_id, dict(self.applier.failed_bundles))


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
    bundles = parser.add_argument_group("bundles (applied only with --config-dir)")
    bundles.add_argument(
        "--config-dir",
        type=Path,
        help="the proxy's live config directory; the agent manages it as a link to releases",
    )
    reload = bundles.add_mutually_exclusive_group()
    reload.add_argument("--pid-file", type=Path, help="reload the proxy by SIGHUP to this pid")
    reload.add_argument("--reload-command", help="reload the proxy by running this command")
    bundles.add_argument(
        "--test-command",
        help="check a staged config first, e.g. 'sentinel test -c {config}' ({dir}: its directory)",
    )
    bundles.add_argument("--health-url", help="must answer 2xx after a reload, else roll back")
    bundles.add_argument(
        "--health-timeout", type=float, default=10.0, help="seconds to wait for health (10)"
    )
    bundles.add_argument(
        "--state-dir", type=Path, help="bundle state and staging (default: the credentials dir)"
    )
    bundles.add_argument(
        "--allow-key-refresh",
        action="store_true",
        help="look up unknown signing keys even over plain http (development only)",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def driver_from_args(args: argparse.Namespace) -> FileDriver | None:
    """The file driver the bundle options describe; None without `--config-dir`."""
    if args.config_dir is None:
        return None
    return FileDriver(
        args.config_dir,
        pid_file=args.pid_file,
        reload_command=args.reload_command,
        test_command=args.test_command,
        health_url=args.health_url,
        health_timeout_s=args.health_timeout,
    )


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
        state_dir=args.state_dir,
        allow_key_refresh=True if args.allow_key_refresh else None,
    )
    driver = driver_from_args(args)
    async with NodeHttpClient(timeout=10.0) as http:
        client = NodeClient(
            options.url, http=http, use_token=options.use_token, backoff=options.backoff,
            max_attempts=3,
        )  # fmt: skip
        proxy: ProxyDriver = (
            PrometheusProxy(options.metrics_url, http=http) if options.metrics_url else NoProxy()
        )
        agent = Agent(options, client, proxy, driver=driver)
        client.sleep = agent.pause  # a stop request also cuts the client's own retry waits
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, agent.stop)
        return await agent.run()


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config_dir is None:
        given = [
            flag
            for flag, value in (
                ("--pid-file", args.pid_file),
                ("--reload-command", args.reload_command),
                ("--test-command", args.test_command),
                ("--health-url", args.health_url),
            )
            if value is not None
        ]
        if given:
            parser.error(f"{', '.join(given)} need --config-dir")
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
