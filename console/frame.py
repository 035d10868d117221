"""The shared frame of every console page: header, project switcher, navigation, logout.

It also re-checks the session every 30 seconds from the browser (a `fetch` of `/api/v1/me`
carries the current cookie), so a logout in another tab, an expired session or a disabled
user sends the page back to the login screen instead of leaving a live console open.

While the console cannot hear Redis events (`live.state.interrupted`) every page shows a
banner saying so; the page reloads what it shows once the subscription is back.
"""

from __future__ import annotations

import html
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from nicegui import app, ui
from starlette.requests import Request
from starlette.responses import HTMLResponse

from console import live
from console.context import call, flask_app
from console.session import Operator, operator_from_cookie
from sentinel_cp import projects
from sentinel_cp.errors import DomainError, Forbidden, Invalid, Unavailable

SESSION_CHECK_S = 30
NAVIGATION = (
    ("Dashboard", "/", "dashboard"),
    ("Nodes", "/nodes", "nodes"),
    ("Bundles", "/bundles", "bundles"),
    ("Rollouts", "/rollouts", "rollouts"),
    ("Drift", "/drift", "drift"),
    ("Audit log", "/audit", "audit"),
    ("Settings", "/settings", "settings"),
)
ROLE_COLOURS = {"admin": "negative", "operator": "primary", "reader": "grey-7"}
INTERRUPTED_TEXT = "Live updates interrupted — reconnecting…"


def _project_slugs() -> list[str]:
    page = projects.list_projects(visible_to=None, limit=500, cursor=None)
    return [p.slug for p in page.items]


async def check_session() -> None:
    """Server side: the cookie this page was opened with must still be valid (user enabled,
    session not revoked or expired). Browser side: the browser's current cookie must be too
    (a logout in another tab). Either failing ends the page and clears what it shows."""
    client = ui.context.client
    cookie = client.request.cookies.get(flask_app().config["SESSION_COOKIE_NAME"])
    try:
        ended = await operator_from_cookie(cookie) is None
    except Unavailable:
        return  # Redis (revocations) or the database is away: not a logout; check next round
    if not ended:
        try:
            status = await ui.run_javascript(
                "return (await fetch('/api/v1/me', {credentials: 'same-origin'})).status",
                timeout=10,
            )
        except TimeoutError:
            status = None  # a slow browser is not a logout; the server-side check stands
        ended = status == 401
    if ended:
        ui.navigate.to("/login?expired=1")
        client.content.clear()


async def logout() -> None:
    await ui.run_javascript(
        "await fetch('/api/v1/session', {method: 'DELETE', credentials: 'same-origin', "
        "headers: {'Content-Type': 'application/json'}}); return true",
        timeout=10,
    )
    ui.navigate.to("/login")


@contextmanager
def frame(operator: Operator, title: str, project: str | None, slugs: list[str]) -> Iterator[Any]:
    """Lay out header and navigation, then yield the content column."""
    ui.page_title(f"{title} · Sentinel CP")
    ui.colors(primary="#1f4e79")
    with ui.header().classes("items-center justify-between px-4 py-2 bg-primary"):
        with ui.row().classes("items-center gap-4"):
            ui.label("Sentinel CP").classes("text-h6 text-white").mark("brand")

            def switch(event: Any) -> None:
                app.storage.user["project"] = event.value
                ui.navigate.reload()

            ui.select(slugs, value=project, on_change=switch, label="Project").props(
                "dense dark standout"
            ).classes("min-w-[10rem]").mark("project-switcher")
        with ui.row().classes("items-center gap-3"):
            ui.label(operator.email).classes("text-white").mark("operator-email")
            ui.badge(operator.role, color=ROLE_COLOURS.get(operator.role, "grey")).mark(
                "operator-role"
            )
            ui.button("Log out", on_click=logout).props("flat color=white").mark("logout")
    with ui.left_drawer(value=True, bordered=True).classes("bg-grey-1 w-48"):
        for label, path, marker in NAVIGATION:
            ui.link(label, path).classes("block py-1 text-body1 no-underline").mark(f"nav-{marker}")
    ui.timer(SESSION_CHECK_S, check_session)
    with ui.column().classes("w-full max-w-6xl mx-auto p-4 gap-4") as content:
        interrupted_banner()
        ui.label(title).classes("text-h5")
        yield content


def interrupted_banner() -> ui.row:
    """Shown while live updates cannot arrive (Redis away); hidden again once they can."""
    with ui.row().classes(
        "w-full items-center gap-2 px-3 py-2 rounded bg-warning text-black"
    ) as banner:
        ui.icon("sync_problem")
        ui.label(INTERRUPTED_TEXT)
    banner.mark("live-interrupted")
    banner.set_visibility(live.state.interrupted)
    live.connection_changed.subscribe(banner.set_visibility)  # dropped with the page
    return banner


async def page_context() -> tuple[str | None, list[str]]:
    """The project this browser last chose (else the first one), and every project's slug."""
    slugs = await call(_project_slugs)
    chosen = app.storage.user.get("project")
    if chosen in slugs:
        return str(chosen), slugs
    return (slugs[0] if slugs else None), slugs


def unavailable_page(_request: Request, exc: Exception) -> HTMLResponse:
    """A page opened while a dependency is away (its session check needs Redis and the
    database): 503 + Retry-After and a page that tries again by itself, never a bare 500."""
    retry_after = exc.retry_after if isinstance(exc, Unavailable) else 5
    body = (
        "<!doctype html><html><head><title>Sentinel CP · temporarily unavailable</title>"
        f'<meta http-equiv="refresh" content="{retry_after}"></head><body>'
        "<h1>Sentinel CP is temporarily unavailable</h1>"
        f"<p>{html.escape(str(exc))}. This page tries again in {retry_after} seconds.</p>"
        "</body></html>"
    )
    return HTMLResponse(body, status_code=503, headers={"Retry-After": str(retry_after)})


def no_projects() -> None:
    """What a page shows when there is no project to show it for."""
    ui.label("There are no projects yet. An admin can create one with POST /api/v1/projects.").mark(
        "no-projects"
    )


def explain(exc: DomainError) -> str:
    """A domain error as one sentence for a notification (fields named, never a traceback)."""
    if isinstance(exc, Invalid) and exc.fields:
        problems = "; ".join(f"{name}: {', '.join(msgs)}" for name, msgs in exc.fields.items())
        return f"{exc.message} — {problems}"
    if isinstance(exc, Forbidden):
        return f"Not allowed: {exc.message}"
    return exc.message
