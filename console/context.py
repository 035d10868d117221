"""The Flask app the console borrows for database work, and how it calls the domain.

Domain calls run in a worker thread (`run.io_bound`) inside the Flask app context and return
plain values, so the event loop never blocks on the database and no ORM object outlives its
session.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask
from nicegui import run

from sentinel_cp.db import db

T = TypeVar("T")
_flask_app: Flask | None = None


def bind(flask_app: Flask) -> None:
    global _flask_app
    _flask_app = flask_app


def flask_app() -> Flask:
    if _flask_app is None:
        raise RuntimeError("console.attach() was not called")
    return _flask_app


def _in_app_context(fn: Callable[..., T], *args: Any) -> T:
    with flask_app().app_context():
        try:
            result = fn(*args)
            db.session.commit()
            return result
        except BaseException:
            db.session.rollback()
            raise


async def call(fn: Callable[..., T], *args: Any) -> T:
    """Run a domain function off the event loop, in one transaction."""
    return await run.io_bound(_in_app_context, fn, *args)
