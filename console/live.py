"""One Redis pub/sub subscription per console process, fanned out to the open pages.

Pages subscribe to `changes` and reload what they show from the database; events only say
"something changed". Bursts are coalesced by each subscriber (see `Coalescer`), so a busy
fleet cannot flood a browser.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from nicegui import Event, background_tasks

from sentinel_cp import broker
from sentinel_cp.events import CHANNEL

log = logging.getLogger(__name__)
changes: Event[dict[str, Any]] = Event()
listener_ready = asyncio.Event()
_task: asyncio.Task[None] | None = None


async def _listen() -> None:
    backoff = 0.5
    while True:
        try:
            client = aioredis.from_url(broker.current_url())
            async with client.pubsub() as pubsub:
                await pubsub.subscribe(CHANNEL)
                listener_ready.set()
                backoff = 0.5
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    try:
                        payload = json.loads(message["data"])
                    except (ValueError, TypeError):
                        continue
                    if isinstance(payload, dict):
                        changes.emit(payload)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Redis down: keep the console up and retry
            listener_ready.clear()
            log.warning("event listener lost Redis (%s); retrying", exc.__class__.__name__)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10)


def start_listener() -> None:
    global _task
    _task = background_tasks.create(_listen(), name="sentinel-events")


async def stop_listener() -> None:
    if _task is not None:
        _task.cancel()


class Coalescer:
    """Run `refresh` at most once per `interval_s`, however many events arrive."""

    def __init__(self, refresh: Callable[[], Awaitable[None]], interval_s: float = 0.5) -> None:
        self.refresh = refresh
        self.interval_s = interval_s
        self.pending = False

    def __call__(self, _event: dict[str, Any] | None = None) -> None:
        if self.pending:
            return
        self.pending = True
        background_tasks.create(self._run(), name="console-refresh")

    async def _run(self) -> None:
        await asyncio.sleep(self.interval_s)
        self.pending = False
        await self.refresh()
