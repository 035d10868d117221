"""The drift page: nodes that do not run what their last completed rollout left them on.

Open (active) and resolved drift events, filtered and paged in the database
(`drift.list_events`), with the counts of `drift.drift_stats`, links to the REST export of what
the filters select, and the operator's one action: resolving an event, or every active event,
with a comment (`drift.resolve`, `drift.resolve_all` — audited by the domain). Re-delivering
the expected bundle is the drift job's auto-remediation (a project setting), not a button.

Resolving needs `nodes:write`, as the API's route does; the button is hidden from readers,
and the handler checks the scope again as the user behind the session cookie.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from nicegui import ui
from starlette.requests import Request
from starlette.responses import RedirectResponse

from console import live
from console.audit import CursorPager, when
from console.context import call
from console.frame import explain, frame, no_projects, page_context
from console.session import Operator, acting_principal, current_operator, session_cookie
from sentinel_cp import drift, nodes, projects
from sentinel_cp.db import utcnow
from sentinel_cp.errors import DomainError, Invalid, NotFound

# Reading drift is a node read and resolving it a node write, as the REST routes declare. These
# belong beside `drift.resolve` (sentinel_cp/drift.py was being changed elsewhere when this page
# was written), like `catalog.WRITE_SCOPE` for rollouts.
READ_SCOPE, RESOLVE_SCOPE = drift.READ_SCOPE, drift.RESOLVE_SCOPE
PAGE_SIZE = 25
SEVERITY_COLOURS = {
    "low": "blue-grey-5",
    "medium": "amber-8",
    "high": "orange-9",
    "critical": "red",
}
STATUS_CHOICES = {"active": "Open", "resolved": "Resolved", "": "Open and resolved"}
REASONS = {
    "bundle_mismatch": "runs another bundle",
    "no_active_bundle": "runs no bundle",
    "expected_bundle_revoked": "expected bundle revoked",
    "config_mismatch": "running config differs",
}
RESOLUTIONS = {
    "auto_resolved": "back in sync",
    "operator": "resolved by an operator",
    "remediated": "remediated",
}


@dataclass(frozen=True)
class DriftQuery:
    status: str = "active"
    severity: str = ""
    kind: str = ""

    def filters(self) -> drift.DriftFilter:
        return drift.DriftFilter(
            status=self.status or None, severity=self.severity or None, kind=self.kind or None
        )

    def export_url(self, slug: str, fmt: str) -> str:
        params = {"format": fmt}
        for name in ("status", "severity", "kind"):
            if getattr(self, name):
                params[name] = getattr(self, name)
        return f"/api/v1/projects/{slug}/drift/export?{urlencode(params)}"


def _ago(moment: datetime, now: datetime) -> str:
    seconds = max(0, int((now - moment).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def _bundle(bundle_id: str | None, versions: dict[str, str]) -> str:
    if bundle_id is None:
        return "none"
    version = versions.get(bundle_id)
    return f"{version} ({bundle_id[:8]})" if version else bundle_id[:12]


def _row(event: drift.DriftEvent, versions: dict[str, str], now: datetime) -> dict[str, Any]:
    active = event.status == "active"
    if event.kind == "config":
        expected = f"config {(event.expected_config_hash or '—')[:12]}"
        actual = f"config {(event.actual_config_hash or '—')[:12]}"
    else:
        expected = _bundle(event.expected_bundle_id, versions)
        actual = _bundle(event.actual_bundle_id, versions)
    if active:
        state = "open"
    else:
        how = RESOLUTIONS.get(event.resolution or "", event.resolution or "")
        state = f"{how}, {when(event.resolved_at)}"
        if event.resolution == "operator" and event.resolved_by:
            state = f"{event.resolved_by}, {when(event.resolved_at)}"
    return {
        "id": str(event.id),
        "node": event.node_name,
        "href": f"/nodes/{event.node_id}",
        "problem": REASONS.get(event.reason, event.reason),
        "severity": event.severity,
        "colour": SEVERITY_COLOURS.get(event.severity, "grey"),
        "expected": expected,
        "actual": actual,
        "since": _ago(event.opened_at, now) if active else when(event.opened_at),
        "opened_at": when(event.opened_at),
        "active": active,
        "state": state,
        "comment": event.comment or "",
    }


def load_drift(cookie: str | None, slug: str, query: DriftQuery, cursor: str | None) -> dict:
    """One page of drift events with the project's counts, as plain values."""
    principal = acting_principal(cookie)
    principal.require(READ_SCOPE)
    project = projects.get_project(slug, visible_to=principal.project_id)
    page = drift.list_events(project.id, query.filters(), limit=PAGE_SIZE, cursor=cursor)
    ids = {e.expected_bundle_id for e in page.items} | {e.actual_bundle_id for e in page.items}
    versions = nodes.bundle_versions(project.id, sorted(i for i in ids if i))
    now = utcnow()
    return {
        "project_id": str(project.id),
        "auto_remediate": project.config.drift_auto_remediate,
        "stats": drift.drift_stats(project.id),
        "rows": [_row(event, versions, now) for event in page.items],
        "total": page.total,
        "next_cursor": page.next_cursor,
    }


def _event_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise NotFound("Drift event not found", code="drift_event_not_found") from None


def _checked_comment(comment: str) -> str:
    if len(comment) > drift.MAX_COMMENT:
        raise Invalid(
            "Comment too long", fields={"comment": [f"at most {drift.MAX_COMMENT} characters"]}
        )
    return comment


def _resolve(cookie: str | None, slug: str, event_id: str, comment: str) -> str:
    principal = acting_principal(cookie)
    principal.require(RESOLVE_SCOPE)
    project = projects.get_project(slug, visible_to=principal.project_id)
    event = drift.get_event(project.id, _event_id(event_id))
    return drift.resolve(principal.actor, event, comment=_checked_comment(comment)).node_name


def _resolve_all(cookie: str | None, slug: str, comment: str) -> int:
    principal = acting_principal(cookie)
    principal.require(RESOLVE_SCOPE)
    project = projects.get_project(slug, visible_to=principal.project_id)
    return len(drift.resolve_all(principal.actor, project.id, comment=_checked_comment(comment)))


async def resolve_event(cookie: str | None, slug: str, event_id: str, comment: str) -> str:
    """Resolve one active event as the cookie's user (`nodes:write`); the node's name."""
    return await call(_resolve, cookie, slug, event_id, comment)


async def resolve_all(cookie: str | None, slug: str, comment: str) -> int:
    """Resolve every active event as the cookie's user (`nodes:write`); how many."""
    return await call(_resolve_all, cookie, slug, comment)


COLUMNS = [
    {"name": "node", "label": "Node", "field": "node", "align": "left"},
    {"name": "severity", "label": "Severity", "field": "severity", "align": "left"},
    {"name": "problem", "label": "Problem", "field": "problem", "align": "left"},
    {"name": "expected", "label": "Expected", "field": "expected", "align": "left"},
    {"name": "actual", "label": "Actual", "field": "actual", "align": "left"},
    {"name": "since", "label": "Open for / opened (UTC)", "field": "since", "align": "left"},
    {"name": "state", "label": "Resolved", "field": "state", "align": "left"},
]
_ACTION_COLUMN = {"name": "actions", "label": "", "field": "id", "align": "right"}
STAT_CARDS = (
    ("active", "Open", "text-warning"),
    ("drifted_nodes", "Drifted nodes", "text-warning"),
    ("critical", "Critical", "text-red"),
    ("high", "High", "text-orange-9"),
    ("medium", "Medium", "text-amber-8"),
    ("low", "Low", "text-blue-grey-6"),
    ("resolved", "Resolved", "text-grey-7"),
)


class DriftView:
    """The `/drift` page of one browser tab: its filters, page, counts and actions."""

    def __init__(self, operator: Operator, cookie: str | None, slug: str) -> None:
        self.cookie = cookie
        self.slug = slug
        self.query = DriftQuery()
        self.project_id = ""
        self.active = 0
        self.writer = operator.can(RESOLVE_SCOPE)
        self.dialogs = ui.element("div")  # outside anything a reload rebuilds
        with ui.row().classes("w-full gap-3").mark("drift-stats"):
            self.counters = {}
            for key, title, colour in STAT_CARDS:
                with ui.card().classes("min-w-[7.5rem] py-2"):
                    ui.label(title).classes("text-grey-7 text-caption")
                    self.counters[key] = (
                        ui.label("").classes(f"text-h5 {colour}").mark(f"drift-stat-{key}")
                    )
        with ui.card().classes("w-full gap-2"):
            with ui.row().classes("w-full items-end justify-between"):
                with ui.row().classes("items-end gap-3").mark("drift-filters"):
                    self.status = (
                        ui.select(
                            STATUS_CHOICES, value="active", label="Status", on_change=self._filter
                        )
                        .props("dense outlined")
                        .classes("min-w-[11rem]")
                        .mark("drift-filter-status")
                    )
                    self.severity = (
                        ui.select(
                            {"": "Any severity", **{s: s for s in drift.SEVERITIES}},
                            value="",
                            label="Severity",
                            on_change=self._filter,
                        )
                        .props("dense outlined")
                        .classes("min-w-[9rem]")
                        .mark("drift-filter-severity")
                    )
                    self.kind = (
                        ui.select(
                            {"": "Bundle and config", "bundle": "Bundle", "config": "Config"},
                            value="",
                            label="Kind",
                            on_change=self._filter,
                        )
                        .props("dense outlined")
                        .classes("min-w-[10rem]")
                        .mark("drift-filter-kind")
                    )
                with ui.row().classes("items-center gap-3"):
                    ui.label("Export:").classes("text-grey-7")
                    self.export_csv = (
                        ui.link("CSV", "#").classes("text-primary").mark("drift-export-csv")
                    )
                    self.export_json = (
                        ui.link("JSON", "#").classes("text-primary").mark("drift-export-json")
                    )
                    if self.writer:
                        self.resolve_all_button = (
                            ui.button("Resolve all…", icon="done_all", on_click=self.confirm_all)
                            .props("outline")
                            .mark("drift-resolve-all")
                        )
            self.remediation = (
                ui.label("").classes("text-grey-7 text-caption").mark("drift-remediation")
            )
            self.table = (
                ui.table(
                    columns=COLUMNS + ([_ACTION_COLUMN] if self.writer else []),
                    rows=[],
                    row_key="id",
                    pagination={"rowsPerPage": 0},
                )
                .classes("w-full")
                .props("flat dense hide-pagination")
                .mark("drift-table")
            )
            self.table.props("no-data-label='No drift event matches these filters'")
            self.table.add_slot(
                "body-cell-node",
                '<q-td :props="props"><a :href="props.row.href" class="text-primary '
                'text-weight-medium" style="text-decoration: none">{{ props.value }}</a></q-td>',
            )
            self.table.add_slot(
                "body-cell-severity",
                '<q-td :props="props"><q-badge :color="props.row.colour" :label="props.value" />'
                "</q-td>",
            )
            self.table.add_slot(
                "body-cell-since",
                "<q-td :props=\"props\"><span :title=\"'opened ' + props.row.opened_at + ' UTC'\">"
                "{{ props.value }}</span></q-td>",
            )
            self.table.add_slot(
                "body-cell-state",
                '<q-td :props="props"><span v-if="props.row.active" class="text-warning '
                'text-weight-medium">open</span><span v-else>{{ props.value }}</span>'
                '<div v-if="props.row.comment" class="text-caption text-grey-7">'
                "“{{ props.row.comment }}”</div></q-td>",
            )
            if self.writer:
                self.table.add_slot(
                    "body-cell-actions",
                    '<q-td :props="props"><q-btn v-if="props.row.active" flat dense no-caps '
                    'no-wrap color="primary" icon="task_alt" label="Resolve" '
                    "@click=\"() => $parent.$emit('resolve', props.row)\" /></q-td>",
                )
                self.table.on("resolve", self.confirm_one)
            with ui.row().classes("w-full justify-end"):
                self.pager = CursorPager("drift", self.reload)

    async def _filter(self) -> None:
        query = replace(
            self.query,
            status=self.status.value or "",
            severity=self.severity.value or "",
            kind=self.kind.value or "",
        )
        if query != self.query:
            self.query = query
            self.pager.reset()
            await self.reload()

    async def reload(self) -> None:
        data = await call(load_drift, self.cookie, self.slug, self.query, self.pager.cursor)
        if not data["rows"] and self.pager.index > 0:
            self.pager.reset()
            data = await call(load_drift, self.cookie, self.slug, self.query, None)
        self.show(data)

    def show(self, data: dict[str, Any]) -> None:
        self.project_id = data["project_id"]
        stats = data["stats"]
        self.active = stats["active"]
        counts = {**stats["by_severity"], **stats}
        for key, label in self.counters.items():
            label.set_text(f"{counts[key]:,}")
        self.table.rows = data["rows"]
        self.table.update()
        self.pager.show(
            self.pager.range_text(len(data["rows"]), data["total"], PAGE_SIZE, "events"),
            data["next_cursor"],
        )
        self.export_csv.props["href"] = self.query.export_url(self.slug, "csv")
        self.export_json.props["href"] = self.query.export_url(self.slug, "json")
        self.remediation.set_text(
            "Auto-remediation is on: the drift job re-delivers the expected bundle to a drifted "
            "node."
            if data["auto_remediate"]
            else "Auto-remediation is off (project settings): resolving records that you have "
            "dealt with a drift; a node still drifting after the grace period opens a new event."
        )
        if self.writer:
            self.resolve_all_button.set_enabled(stats["active"] > 0)

    def hears(self, event: dict[str, Any]) -> bool:
        """Drift events, and the project's settings (whether auto-remediation is on)."""
        kind, state = event.get("kind"), event.get("state")
        return event.get("project") == self.project_id and (
            kind == "drift" or (kind == "audit" and state == "project.updated")
        )

    async def _ask_comment(self, title: str, text: str, button: str) -> str | None:
        with self.dialogs, ui.dialog() as dialog, ui.card().classes("min-w-[28rem]"):
            ui.label(title).classes("text-h6")
            ui.label(text).classes("text-body2")
            comment = (
                ui.textarea("Comment (required, recorded in the audit log)")
                .props(f"outlined autogrow maxlength={drift.MAX_COMMENT}")
                .classes("w-full")
                .mark("drift-comment")
            )
            with ui.row().classes("w-full justify-end"):
                ui.button("Cancel", on_click=lambda: dialog.submit(None)).props("flat")
                ui.button(button, on_click=lambda: dialog.submit(comment.value or "")).mark(
                    "drift-confirm"
                )
        answer = await dialog
        dialog.delete()
        return answer

    async def confirm_one(self, event: Any) -> None:
        row = event.args if isinstance(event.args, dict) else {}
        event_id = str(row.get("id", ""))
        shown = next((r for r in self.table.rows if r["id"] == event_id), None)
        if shown is None:
            return
        comment = await self._ask_comment(
            f"Resolve the drift of {shown['node']}?",
            f"It expected {shown['expected']} and runs {shown['actual']}. Resolving does not "
            "change the node.",
            "Resolve",
        )
        if comment is None:
            return
        try:
            name = await resolve_event(self.cookie, self.slug, event_id, comment)
        except DomainError as exc:
            ui.notify(explain(exc), type="negative", multi_line=True)
        else:
            ui.notify(f"Drift of {name} resolved", type="positive")
        await self.reload()

    async def confirm_all(self) -> None:
        comment = await self._ask_comment(
            f"Resolve all {self.active:,} open drift events?",
            "Every open event of this project is marked resolved with your comment. Nodes "
            "are not changed.",
            "Resolve all",
        )
        if comment is None:
            return
        try:
            resolved = await resolve_all(self.cookie, self.slug, comment)
        except DomainError as exc:
            ui.notify(explain(exc), type="negative", multi_line=True)
        else:
            ui.notify(f"{resolved:,} drift events resolved", type="positive")
        await self.reload()


@ui.page("/drift")
async def drift_page(request: Request):
    operator = await current_operator(request)
    if operator is None:
        return RedirectResponse("/login?next=/drift")
    slug, slugs = await page_context()
    with frame(operator, "Drift", slug, slugs):
        if slug is None:
            no_projects()
            return None
        cookie = session_cookie(request)
        data = await call(load_drift, cookie, slug, DriftQuery(), None)
        view = DriftView(operator, cookie, slug)
        view.show(data)
        live.follow(view.hears, view.reload)
    return None
