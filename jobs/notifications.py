"""Notification jobs: one delivery attempt (enqueued per delivery with a deterministic id), the
cron sweep that re-enqueues due retries, and the retention prune.

The HTTP client is `app.extensions["sentinel_notification_sender"]` when a process (a test)
installs one, else `notifications.HttpSender()`.
"""

from __future__ import annotations

import uuid

from jobs.context import app_context
from sentinel_cp import notifications
from sentinel_cp.db import db

SENDER_EXTENSION = "sentinel_notification_sender"


def deliver_notification(delivery_id: str) -> str:
    """One attempt at one delivery; its state afterwards (`skipped`: nothing was due)."""
    with app_context() as app:
        sender = app.extensions.get(SENDER_EXTENSION) or notifications.HttpSender()
        return notifications.deliver(uuid.UUID(delivery_id), sender=sender)


def sweep_notifications() -> dict[str, int]:
    """Enqueue every due delivery again (retries, and jobs lost with a dead worker)."""
    with app_context():
        return notifications.sweep()


def prune_notifications() -> int:
    """Delete finished deliveries past their retention."""
    with app_context():
        deleted = notifications.prune()
        db.session.commit()
        return deleted
