"""The dashboard: the project's nodes by status and by active bundle, the rollouts under way,
what needs attention (paused or failed rollouts, failed compiles, drift), and what happened
lately. Everything here refreshes live (events from Redis, coalesced to one reload a second).
"""

from __future__ import annotations

from typing import Any

from nicegui import ui
from starlette.requests import Request
from starlette.responses import RedirectResponse

from console import live
from console.context import call
from console.frame import frame, no_projects, page_context
from console.session import current_operator
from sentinel_cp import audit, drift, nodes, projects
from sentinel_cp.bundles import catalog
from sentinel_cp.rollouts import engine

RECENT = 10
ACTIVE_ROLLOUT_STATES = ("running", "rolling_back", "paused", "pending")
SHOWN_ROLLOUTS = 5
STATE_COLOURS = {
    "running": "primary",
    "rolling_back": "warning",
    "paused": "warning",
    "pending": "grey-7",
    "failed": "negative",
}


def _label(bundle_id: str | None, versions: dict[str, str]) -> str:
    if bundle_id is None or bundle_id == "none":
        return "none"
    return versions.get(bundle_id, bundle_id[:12])


def _rollouts(project_id: Any) -> list[dict[str, Any]]:
    """Rollouts under way, then the latest failed one (if any), with their progress."""
    shown: list[dict[str, Any]] = []
    for state in (*ACTIVE_ROLLOUT_STATES, "failed"):
        limit = 1 if state == "failed" else SHOWN_ROLLOUTS
        page = engine.list_rollouts(project_id, state=state, limit=limit, cursor=None)
        for rollout in page.items:
            if len(shown) >= SHOWN_ROLLOUTS:
                return shown
            body = engine.describe(rollout)
            progress = body["progress"]
            shown.append(
                {
                    "id": body["id"],
                    "state": body["state"],
                    "strategy": body["strategy"],
                    "bundle_id": body["bundle_id"],
                    "verified": progress["verified"],
                    "failed": progress["failed"],
                    "total": progress["total"],
                    "reason": body["details"] or body["reason"] or "",
                }
            )
    return shown


def _overview(slug: str) -> dict[str, Any]:
    project = projects.get_project(slug)
    page = audit.list_entries(project.id, audit.AuditFilter(), limit=RECENT, cursor=None)
    stats = nodes.node_stats(project.id)
    rollouts = _rollouts(project.id)
    versions = nodes.bundle_versions(
        project.id, [*stats["by_active_bundle"], *(r["bundle_id"] for r in rollouts)]
    )
    for rollout in rollouts:
        rollout["version"] = _label(rollout["bundle_id"], versions)
    by_bundle = sorted(
        (
            {"version": _label(bundle, versions), "nodes": count}
            for bundle, count in stats["by_active_bundle"].items()
        ),
        key=lambda row: -int(row["nodes"]),
    )
    failed_bundles = catalog.list_bundles(project.id, status="failed", limit=3, cursor=None)
    open_drift = drift.list_events(
        project.id, drift.DriftFilter(status="active"), limit=5, cursor=None
    )
    return {
        "project": project.to_dict(),
        "nodes": stats,
        "by_bundle": by_bundle,
        "rollouts": rollouts,
        "failed_bundles": [
            {"id": b.id, "version": b.version, "errors": len(b.errors or [])}
            for b in failed_bundles.items
        ],
        "drift_total": open_drift.total,
        "drift": [
            {
                "node": event.node_name,
                "severity": event.severity,
                "reason": event.reason,
                "since": event.opened_at.strftime("%Y-%m-%d %H:%M:%S"),
            }
            for event in open_drift.items
        ],
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
            no_projects()
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
            with ui.card().classes("min-w-[9rem]"):
                ui.label("Open drift").classes("text-grey-7")
                drift_total = (
                    ui.link(str(data["drift_total"]), "/drift")
                    .classes("text-h4 no-underline")
                    .mark("drift-total")
                )
        # Shown until the first node registers; kept so the live refresh can hide it.
        next_steps = ui.card().classes("w-full").mark("next-steps")
        next_steps.set_visibility(data["nodes"]["total"] == 0)
        with next_steps:
            ui.label("Next steps").classes("text-h6")
            ui.markdown(
                f"This project, **{data['project']['name']}** (`{slug}`), has no nodes yet."
                "\n\n"
                "1. Create a node registration token under [Settings](/settings) (admins).\n"
                "2. Run `sentinel-agent` beside each proxy with that token, or try a "
                "simulated fleet: `sentinel-cp simulate --url … --project "
                f"{slug} --registration-token … --nodes 50` (or `sentinel-cp demo` for a "
                "ready-made one). Nodes heartbeat every "
                f"{settings['heartbeat_interval_s']} s and go offline after "
                f"{settings['staleness_timeout_s']} s of silence.\n"
                "3. Submit a bundle under [Bundles](/bundles/new), then roll it out from "
                "[Rollouts](/rollouts/new).\n\n"
                "The API reference is at [/api/docs](/api/docs); automation uses API keys."
            )
        with ui.row().classes("w-full gap-4 items-stretch"):
            with ui.card().classes("flex-1 min-w-[18rem]"):
                ui.label("Rollouts").classes("text-h6")
                rollouts_box = ui.column().classes("w-full gap-2").mark("rollouts")
            with ui.card().classes("flex-1 min-w-[18rem]"):
                ui.label("Nodes by active bundle").classes("text-h6")
                bundles_table = (
                    ui.table(
                        columns=[
                            {"name": "version", "label": "Bundle", "field": "version",
                             "align": "left"},
                            {"name": "nodes", "label": "Nodes", "field": "nodes"},
                        ],
                        rows=data["by_bundle"],
                        row_key="version",
                    )
                    .classes("w-full")
                    .props("flat dense hide-bottom")
                    .mark("nodes-by-bundle")
                )  # fmt: skip
        with ui.card().classes("w-full"):
            ui.label("Needs attention").classes("text-h6")
            attention_box = ui.column().classes("w-full gap-1").mark("attention")

        def render_rollouts(rows: list[dict[str, Any]]) -> None:
            rollouts_box.clear()
            with rollouts_box:
                if not rows:
                    ui.label("No rollout under way.").classes("text-grey-7")
                for row in rows:
                    share = row["verified"] / row["total"] if row["total"] else 0.0
                    with ui.row().classes("w-full items-center gap-2 no-wrap"):
                        ui.badge(row["state"], color=STATE_COLOURS.get(row["state"], "grey"))
                        ui.link(
                            f"{row['version']} · {row['strategy']}", f"/rollouts/{row['id']}"
                        ).mark(f"rollout-{row['id']}")
                        ui.linear_progress(value=share, show_value=False).classes("flex-1")
                        ui.label(f"{row['verified']}/{row['total']}").classes("text-grey-8")

        def render_attention(fresh: dict[str, Any]) -> None:
            attention_box.clear()
            items = 0
            with attention_box:
                for row in fresh["rollouts"]:
                    if row["state"] in ("paused", "failed"):
                        items += 1
                        with ui.row().classes("items-center gap-2"):
                            ui.icon(
                                "pause_circle" if row["state"] == "paused" else "error",
                                color="warning" if row["state"] == "paused" else "negative",
                            )
                            ui.link(
                                f"Rollout of {row['version']} {row['state']}",
                                f"/rollouts/{row['id']}",
                            )
                            ui.label(row["reason"]).classes("text-grey-8")
                for bundle in fresh["failed_bundles"]:
                    items += 1
                    with ui.row().classes("items-center gap-2"):
                        ui.icon("error", color="negative")
                        ui.link(
                            f"Bundle {bundle['version']} failed to compile",
                            f"/bundles/{bundle['id']}",
                        )
                        ui.label(f"{bundle['errors']} error(s)").classes("text-grey-8")
                for event in fresh["drift"]:
                    items += 1
                    with ui.row().classes("items-center gap-2"):
                        ui.icon("sync_problem", color="warning")
                        ui.link(f"{event['node']} drifted ({event['severity']})", "/drift")
                        ui.label(f"{event['reason']} since {event['since']}").classes("text-grey-8")
                if not items:
                    ui.label("Nothing needs attention.").classes("text-grey-7")  # fmt: skip

        render_rollouts(data["rollouts"])
        render_attention(data)
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
            bundles_table.rows = fresh["by_bundle"]
            bundles_table.update()
            for status, label in counters.items():
                label.set_text(str(fresh["nodes"]["by_status"][status]))
            drift_total.set_text(str(fresh["drift_total"]))
            next_steps.set_visibility(fresh["nodes"]["total"] == 0)
            total.set_text(f"{fresh['audit_total']} audited changes")
            render_rollouts(fresh["rollouts"])
            render_attention(fresh)

        live.follow(live.for_project_changes(project_id), refresh)
    return None
