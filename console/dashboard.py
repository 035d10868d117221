"""The dashboard: the project's nodes by status, what happened lately, and what to do next.

Bundle and rollout panels arrive with those features. Everything here refreshes live (node and
audit events from Redis, coalesced).
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
from sentinel_cp import audit, nodes, projects

RECENT = 10


def _overview(slug: str) -> dict[str, Any]:
    project = projects.get_project(slug)
    page = audit.list_entries(project.id, audit.AuditFilter(), limit=RECENT, cursor=None)
    return {
        "project": project.to_dict(),
        "nodes": nodes.node_stats(project.id),
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
        with ui.row().classes("w-full gap-4").mark("node-stats"):
            counters = {}
            for status, colour in (
                ("online", "positive"),
                ("offline", "negative"),
                ("unknown", "grey-7"),
            ):
                with ui.card().classes("min-w-[9rem]"):
                    ui.label(f"Nodes {status}").classes("text-grey-7")
                    counters[status] = (
                        ui.label(str(data["nodes"]["by_status"][status]))
                        .classes(f"text-h4 text-{colour}")
                        .mark(f"nodes-{status}")
                    )
        # Shown until the first node registers; kept so the live refresh can hide it.
        next_steps = ui.card().classes("w-full").mark("next-steps")
        next_steps.set_visibility(data["nodes"]["total"] == 0)
        with next_steps:
            ui.label("Next steps").classes("text-h6")
            ui.markdown(
                f"This project, **{data['project']['name']}** (`{slug}`), has no nodes yet."
                "\n\n"
                "1. Create a node registration token: "
                f"`POST /api/v1/projects/{slug}/registration-token` (admins).\n"
                "2. Run `sentinel-agent` beside each proxy with that token, or try a "
                "simulated fleet: `sentinel-cp simulate --url … --project "
                f"{slug} --registration-token … --nodes 50`. Nodes heartbeat every "
                f"{settings['heartbeat_interval_s']} s and go offline after "
                f"{settings['staleness_timeout_s']} s of silence.\n"
                "3. Validate your proxy configuration: `sentinel-cp validate sentinel.kdl`. "
                "Bundles and rollouts are being built (see the README's status section).\n\n"
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
            for status, label in counters.items():
                label.set_text(str(fresh["nodes"]["by_status"][status]))
            next_steps.set_visibility(fresh["nodes"]["total"] == 0)
            total.set_text(f"{fresh['audit_total']} audited changes")

        coalesced = live.Coalescer(refresh)
        live.changes.subscribe(
            lambda event: coalesced() if event.get("project") == project_id else None
        )
    return None
