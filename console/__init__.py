"""The NiceGUI operator console: one module per page, one shared frame, live events from Redis.

`attach(root, flask_app)` mounts it on our FastAPI root with `ui.run_with`. The console calls
the same domain functions as the REST API (inside the Flask app context, off the event loop)
and authenticates with the same Flask-Login session cookie.
"""

from __future__ import annotations

import hashlib

from fastapi import FastAPI
from flask import Flask
from nicegui import app as nicegui_app
from nicegui import ui

from console import context, frame, live
from sentinel_cp.errors import Unavailable

CONSOLE_COOKIE = "sentinel_console"


def attach(root: FastAPI, flask_app: Flask) -> None:
    context.bind(flask_app)
    from console import (  # noqa: F401 - registers the pages
        audit,
        bundles,
        dashboard,
        drift,
        login,
        nodes,
        rollouts,
        settings,
    )

    nicegui_app.on_startup(live.start_listener)
    nicegui_app.on_shutdown(live.stop_listener)
    nicegui_app.add_exception_handler(Unavailable, frame.unavailable_page)
    storage_secret = hashlib.sha256(
        b"nicegui-storage:" + flask_app.config["SECRET_KEY"].encode()
    ).hexdigest()
    ui.run_with(
        root,
        title="Sentinel CP",
        storage_secret=storage_secret,
        session_middleware_kwargs={
            "session_cookie": CONSOLE_COOKIE,
            "https_only": bool(flask_app.config["SESSION_COOKIE_SECURE"]),
            "same_site": "lax",
        },
        show_welcome_message=False,
        reconnect_timeout=10.0,
    )
