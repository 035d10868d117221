"""The login page. The browser posts to `/api/v1/session` itself, so the console and the API
share one Flask-Login session cookie."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from nicegui import ui
from starlette.requests import Request
from starlette.responses import RedirectResponse

from console.session import current_operator


def _safe_next(value: str | None) -> str:
    """Only same-site paths: `//evil.example` or absolute URLs fall back to the dashboard."""
    # Browsers read "/\\host" as "//host": a backslash anywhere is refused too.
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    parts = urlsplit(value)
    return "/" if parts.scheme or parts.netloc else value


@ui.page("/login")
async def login_page(request: Request, next: str | None = None, expired: str | None = None):
    target = _safe_next(next)
    if await current_operator(request) is not None:
        return RedirectResponse(target)
    ui.page_title("Log in · Sentinel CP")
    ui.colors(primary="#1f4e79")

    async def submit() -> None:
        error.set_text("")
        button.props("loading")
        script = (
            "const r = await fetch('/api/v1/session', {method: 'POST', credentials: "
            "'same-origin', headers: {'Content-Type': 'application/json'}, body: JSON.stringify("
            f"{{email: {json.dumps(email.value or '')}, "
            f"password: {json.dumps(password.value or '')}}})}});"
            "let body = {}; try { body = await r.json(); } catch (e) {}"
            "return {status: r.status, error: body.error || ''};"
        )
        result = await ui.run_javascript(script, timeout=15)
        button.props(remove="loading")
        if result.get("status") == 200:
            ui.navigate.to(target)
            return
        error.set_text(result.get("error") or "Login failed")

    with ui.column().classes("absolute-center items-stretch w-80 gap-3"):
        ui.label("Sentinel CP").classes("text-h4 text-primary text-center")
        ui.label("Fleet control plane").classes("text-subtitle1 text-grey-7 text-center")
        if expired:
            ui.label("Your session has ended; please log in again.").classes(
                "text-warning text-center"
            ).mark("session-expired")
        email = ui.input("Email").props("outlined autofocus autocomplete=username").mark("email")
        password = (
            ui.input("Password", password=True)
            .props("outlined autocomplete=current-password")
            .mark("password")
        )
        password.on("keydown.enter", submit)
        button = ui.button("Log in", on_click=submit).props("unelevated").mark("login")
        error = ui.label("").classes("text-negative text-center").mark("login-error")
