"""The dashboard: what this project has, what happened lately, and what to do next.

Fleet, bundle and rollout panels arrive with those features; until then the page says how to
get there and shows the project's live audit trail.
"""

from __future__ import annotations

from typing import Any

from nicegui import ui
from starlette.requests import Request
from starlette.responses import RedirectResponse

from console import live
from console.context import call
from console.frame import frame, page_context
from console.session import current_operator
from sentinel_cp import audit, projects

RECENT = 10


def _overview(slug: str) -> dict[str, Any]:
    project = projects.get_project(slug)
    page = audit.list_entries(project.id, audit.AuditFilter(), limit=RECENT, cursor=None)
    return {
        "project": project.to_dict(),
        "audit_total": page.total,
        "recent": [
            {
                "id": str(row.id),
                "when": row.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                "actor": row.actor_label,
                "action": row.action,
                "resource": f"{row.resource_type}:{row.resource_id or ''}",
            }
            for row in page.items
        ],
    }


@ui.page("/")
async def dashboard_page(request: Request):
    operator = await current_operator(request)
    if operator is None:
        return RedirectResponse("/login?next=/")
    slug, slugs = await page_context()
    with frame(operator, "Dashboard", slug, slugs):
        if slug is None:
            ui.label(
                "There are no projects yet. An admin can create one with POST /api/v1/projects."
            ).mark("no-projects")
            return None
        data = await call(_overview, slug)
        settings = data["project"]["settings"]
        with ui.card().classes("w-full").mark("next-steps"):
            ui.label("Next steps").classes("text-h6")
            ui.markdown(
                f"This project, **{data['project']['name']}** (`{slug}`), has no nodes yet.\n\n"
                "1. Create a node registration token: "
                f"`POST /api/v1/projects/{slug}/registration-token` (admins).\n"
                "2. Node registration, bundles and rollouts are being built (see the README's "
                "status section); nodes will heartbeat every "
                f"{settings['heartbeat_interval_s']} s and go offline after "
                f"{settings['staleness_timeout_s']} s of silence.\n"
                "3. Meanwhile: add operators (`POST /api/v1/users`) and tune this project's "
                f"settings (`PATCH /api/v1/projects/{slug}`).\n\n"
                "The API reference is at [/api/docs](/api/docs); automation uses API keys "
                "(`POST /api/v1/api-keys`)."
            )
        with ui.card().classes("w-full"):
            with ui.row().classes("items-center justify-between w-full"):
                ui.label("Recent activity").classes("text-h6")
                total = (
                    ui.label(f"{data['audit_total']} audited changes")
                    .classes("text-grey-7")
                    .mark("audit-total")
                )
            columns = [
                {"name": "when", "label": "When (UTC)", "field": "when", "align": "left"},
                {"name": "actor", "label": "Actor", "field": "actor", "align": "left"},
                {"name": "action", "label": "Action", "field": "action", "align": "left"},
                {"name": "resource", "label": "Resource", "field": "resource", "align": "left"},
            ]
            table = (
                ui.table(columns=columns, rows=data["recent"], row_key="id")
                .classes("w-full")
                .props("flat dense")
                .mark("recent-audit")
            )

        project_id = data["project"]["id"]

        async def refresh() -> None:
            fresh = await call(_overview, slug)
            table.rows = fresh["recent"]
            table.update()
            total.set_text(f"{fresh['audit_total']} audited changes")

        coalesced = live.Coalescer(refresh)
        live.changes.subscribe(
            lambda event: coalesced() if event.get("project") == project_id else None
        )
    return None
