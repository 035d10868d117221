"""One Redis pub/sub subscription per console process, fanned out to the open pages.

Pages subscribe to `changes` and reload what they show from the database; events only say
"something changed". Bursts are coalesced by each subscriber (see `Coalescer`), so a busy
fleet cannot flood a browser.

Pub/sub drops what is published while nobody listens, so an outage must be visible and must end
in a full reload: the listener checks Redis every `HEALTH_CHECK_S` (a stopped Redis fails at
once, a frozen or unreachable one within `PING_TIMEOUT_S`), `state.interrupted` says whether
events are being missed (the frame shows a banner), and `connection_changed` tells every page
when that changes — on `False` (subscribed again) each followed page reloads everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from nicegui import Event, background_tasks, ui

from sentinel_cp import broker
from sentinel_cp.errors import DomainError
from sentinel_cp.events import CHANNEL, is_audit_linked, is_node_audit_echo

log = logging.getLogger(__name__)
LIVE_INTERVAL_S = 1.0  # a page reloads at most once a second, whatever the event rate
HEALTH_CHECK_S = 1.0  # how often the listener makes sure Redis still answers
PING_TIMEOUT_S = 2.0  # an answer slower than this counts as an outage
RECONNECT_MIN_S = 0.25
RECONNECT_MAX_S = 2.0  # after an outage of any length, subscribed again within this
changes: Event[dict[str, Any]] = Event()
connection_changed: Event[bool] = Event()  # True: events are being missed; False: back
listener_ready = asyncio.Event()
_task: asyncio.Task[None] | None = None


@dataclass
class LiveState:
    """What this console process hears: `interrupted` while Redis events cannot reach it."""

    interrupted: bool = False


state = LiveState()


def _set_interrupted(interrupted: bool) -> None:
    if state.interrupted == interrupted:
        return
    state.interrupted = interrupted
    connection_changed.emit(interrupted)


def _deliver(message: dict[str, Any] | None) -> None:
    if message is None or message.get("type") != "message":
        return
    try:
        payload = json.loads(message["data"])
    except (ValueError, TypeError):
        return
    if isinstance(payload, dict):
        changes.emit(payload)


async def _subscribed_session(client: aioredis.Redis) -> None:
    """Subscribe, then deliver events until Redis fails a health check or the connection."""
    async with client.pubsub() as pubsub:
        await asyncio.wait_for(pubsub.subscribe(CHANNEL), PING_TIMEOUT_S)
        listener_ready.set()
        _set_interrupted(False)
        checked = time.monotonic()
        while True:
            _deliver(await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5))
            if time.monotonic() - checked >= HEALTH_CHECK_S:
                # A frozen Redis keeps the subscription's socket open and silent: ask it.
                await asyncio.wait_for(client.ping(), PING_TIMEOUT_S)
                checked = time.monotonic()


async def _listen() -> None:
    backoff = RECONNECT_MIN_S
    while True:
        # No transparent retries: a reconnect inside redis-py would resubscribe silently and
        # hide the events lost in between; every lost connection must end in a full reload.
        client = aioredis.from_url(
            broker.current_url(), socket_connect_timeout=PING_TIMEOUT_S, retry=None
        )
        try:
            await _subscribed_session(client)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Redis down or frozen: keep the console up, say so, retry
            if listener_ready.is_set():
                backoff = RECONNECT_MIN_S  # it was subscribed: a new outage starts
            if not state.interrupted:
                log.warning("event listener lost Redis (%s); retrying", exc.__class__.__name__)
            listener_ready.clear()
            _set_interrupted(True)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.aclose(), PING_TIMEOUT_S)
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, RECONNECT_MAX_S)


def start_listener() -> None:
    global _task
    listener_ready.clear()  # a restarted listener is not ready until it subscribed again
    state.interrupted = False
    _task = background_tasks.create(_listen(), name="sentinel-events")


async def stop_listener() -> None:
    if _task is not None:
        _task.cancel()


class Coalescer:
    """Run `refresh` at most once per `interval_s`, however many events arrive.

    Leading edge: the first event after a quiet interval refreshes at once (an operator sees a
    change in tens of milliseconds, not a second later); events arriving within `interval_s`
    of the last refresh are folded into one more refresh at the end of the interval.
    """

    def __init__(
        self,
        refresh: Callable[[], Awaitable[None]],
        interval_s: float = 0.5,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.refresh = refresh
        self.interval_s = interval_s
        self.clock = clock
        self.pending = False
        self.last_run = -math.inf
        self._running = asyncio.Lock()  # one refresh at a time: a slow one is never overtaken

    def __call__(self, _event: dict[str, Any] | None = None) -> None:
        if self.pending:
            return
        self.pending = True
        background_tasks.create(self._run(), name="console-refresh")

    async def _run(self) -> None:
        wait = self.last_run + self.interval_s - self.clock()
        if wait > 0:
            await asyncio.sleep(wait)
        self.pending = False
        async with self._running:
            self.last_run = self.clock()
            await self.refresh()


def for_project(project_id: str, *kinds: str) -> Callable[[dict[str, Any]], bool]:
    """An event filter: this project's events (of `kinds`, when given)."""
    return lambda event: (
        event.get("project") == project_id and (not kinds or event.get("kind") in kinds)
    )


def for_project_changes(project_id: str) -> Callable[[dict[str, Any]], bool]:
    """This project's events, less the audit echo of a node change (`is_node_audit_echo`: a
    refresh after the change's `node` event reads all the echo could say). Following both cost
    a second refresh per change, a whole `LIVE_INTERVAL_S` later (the coalescer's trailing
    edge) — and the next change to arrive waited for that one: ~0.85 s instead of ~0.07 s.
    Less `audit.linked` too: the audit linker's news for pages listing the log.
    """
    return lambda event: (
        event.get("project") == project_id
        and not is_node_audit_echo(event)
        and not is_audit_linked(event)
    )


def follow(
    matches: Callable[[dict[str, Any]], bool],
    refresh: Callable[[], Awaitable[None]],
    *,
    periodic_s: float | None = None,
) -> Coalescer:
    """Call `refresh` after the events `matches` accepts, at most once per `LIVE_INTERVAL_S`
    (and every `periodic_s` anyway, for what publishes no event), only while this page's
    browser is connected.

    A disconnect unsubscribes (no work for a page nobody sees), a reconnect subscribes again
    and refreshes once (events were missed: pub/sub does not keep them), and the page's end
    unsubscribes for good. For the same reason the page refreshes once when the listener is
    subscribed to Redis again after an outage (`connection_changed`). A refresh that meets a
    domain error (the session ended, the thing was deleted) is skipped; the frame's session
    check ends the page.
    """
    client = ui.context.client

    async def guarded() -> None:
        if client.is_deleted:
            return
        try:
            await refresh()
        except DomainError as exc:
            log.info("live refresh of %s skipped: %s", client.page.path, exc.message)

    coalesced = Coalescer(guarded, LIVE_INTERVAL_S)

    def on_change(event: dict[str, Any]) -> None:
        if matches(event):
            coalesced()

    subscribed = False

    def subscribe() -> None:
        nonlocal subscribed
        if not subscribed:
            changes.subscribe(on_change, unsubscribe_on_delete=False)
            subscribed = True

    def unsubscribe() -> None:
        nonlocal subscribed
        changes.unsubscribe(on_change)
        subscribed = False

    def reconnected() -> None:
        if not subscribed:
            subscribe()
            coalesced()

    def periodic() -> None:
        if subscribed:
            coalesced()

    def listener_changed(interrupted: bool) -> None:
        if not interrupted and subscribed:
            coalesced()  # what changed during the outage published nothing we heard

    subscribe()
    connection_changed.subscribe(listener_changed)  # dropped with the page
    if periodic_s is not None:
        ui.timer(periodic_s, periodic, immediate=False)
    client.on_connect(reconnected)
    client.on_disconnect(unsubscribe)
    client.on_delete(unsubscribe)
    return coalesced
