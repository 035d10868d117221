"""The Nodes pages: the fleet table and one node's detail.

`/nodes` pages, filters and sorts in the database (`nodes.list_nodes_page`), so a page costs
the same at 10 nodes or 10,000. `/nodes/{id}` shows a node's state, labels, bundles, heartbeat
charts, events and bundle history. Both follow the project's live events, reloading at most
once a second however busy the fleet is, and only while a browser is connected.

Label edits and key revocation call the same domain functions as the REST API, as the user
behind the session cookie, whose role is checked again when they act (`acting_principal`):
hiding a button is a courtesy, not the control.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from nicegui import ui
from starlette.requests import Request
from starlette.responses import RedirectResponse

from console import live
from console.context import call
from console.frame import frame, no_projects, page_context
from console.session import Operator, acting_principal, current_operator, session_cookie
from sentinel_cp import nodes, projects
from sentinel_cp.db import utcnow
from sentinel_cp.errors import DomainError, Invalid, NotFound

WRITE = "nodes:write"
PAGE_SIZE = 50
PAGE_SIZES = (25, 50, 100)
PERIODIC_REFRESH_S = 30
HISTORY_SAMPLES = 240  # four hours of the once-a-minute heartbeat samples
CHART_WINDOW = timedelta(hours=4)  # charts span at least this much, ending now
RECENT = 20
STATUS_COLOURS = {"online": "positive", "offline": "negative", "unknown": "grey-7"}
DRIFT_CHOICES = {"": "Any drift", "drifted": "Drifted", "in_sync": "In sync"}
FULL_SCALE = {"cpu_percent", "memory_percent"}  # error rates are small: let their axis zoom
SPARSE_POINTS = 30
CHARTS = (
    ("error_rate", "Error rate", "%"),
    ("latency_p99_ms", "p99 latency", "ms"),
    ("cpu_percent", "CPU", "%"),
    ("memory_percent", "Memory", "%"),
)


# --- shared -----------------------------------------------------------------------------------


def parse_labels(text: str, *, separator: str = ",") -> dict[str, str]:
    """`env=prod, region=eu` (or one pair per line) as a dict; keys are checked by the domain."""
    labels: dict[str, str] = {}
    for raw in text.split(separator):
        pair = raw.strip()
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise Invalid("Invalid labels", fields={"labels": [f"{pair!r}: use key=value"]})
        if key.strip() in labels:
            raise Invalid("Invalid labels", fields={"labels": [f"{key.strip()!r} appears twice"]})
        labels[key.strip()] = value.strip()
    return labels


def _message(exc: DomainError) -> str:
    fields = getattr(exc, "fields", None) or {}
    problems = [problem for messages in fields.values() for problem in messages]
    return f"{exc.message}: {'; '.join(problems)}" if problems else exc.message


def _ago(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "never"
    seconds = max(0, int((now - moment).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else "—"


def _bundle_label(bundle_id: str | None, versions: dict[str, str]) -> str:
    if bundle_id is None:
        return "—"
    version = versions.get(bundle_id)
    return f"{version} ({bundle_id[:8]})" if version else bundle_id[:12]


async def _attempt(action: Awaitable[None], success: str) -> bool:
    """Run a mutation; a domain refusal becomes a notification instead of an error."""
    try:
        await action
    except DomainError as exc:
        ui.notify(_message(exc), type="negative", multi_line=True)
        return False
    ui.notify(success, type="positive")
    return True


# --- the fleet table --------------------------------------------------------------------------


@dataclass(frozen=True)
class TableQuery:
    """What the table shows: filters, order and page (plain values, built by the page)."""

    status: str = ""
    labels: str = ""
    version: str = ""
    bundle: str = ""
    drift: str = ""
    q: str = ""
    sort: str = "name"
    descending: bool = False
    page: int = 1
    per_page: int = PAGE_SIZE

    def filters(self) -> nodes.NodeFilter:
        return nodes.NodeFilter(
            status=self.status or None,
            labels=parse_labels(self.labels) or None,
            version=self.version or None,
            bundle=self.bundle or None,
            drifted={"drifted": True, "in_sync": False}.get(self.drift),
            q=self.q.strip() or None,
        )


def _table_row(node: nodes.Node, versions: dict[str, str], now: datetime) -> dict[str, Any]:
    return {
        "id": str(node.id),
        "name": node.name,
        "href": f"/nodes/{node.id}",
        "status": node.status,
        "colour": STATUS_COLOURS.get(node.status, "grey"),
        "version": node.version or "—",
        "labels": node.labels,
        "bundle": _bundle_label(node.active_bundle_id, versions),
        "drifted": node.drifted,
        "last_seen": _ago(node.last_seen_at, now),
        "last_seen_at": _when(node.last_seen_at),
    }


def load_table(slug: str, query: TableQuery) -> dict[str, Any]:
    """One page of the table with the project's counts and the filters' choices."""
    project = projects.get_project(slug)
    filters = query.filters()
    page = nodes.list_nodes_page(
        project.id,
        filters,
        sort=query.sort,
        descending=query.descending,
        offset=(query.page - 1) * query.per_page,
        limit=query.per_page,
    )
    last_page = max(1, math.ceil(page.total / query.per_page))
    if query.page > last_page:  # the filters shrank the table under the current page
        return load_table(slug, replace(query, page=last_page))
    stats = nodes.node_stats(project.id)
    bundle_ids = {b for b in stats["by_active_bundle"] if b != "none"}
    bundle_ids |= {n.active_bundle_id for n in page.items if n.active_bundle_id}
    versions = nodes.bundle_versions(project.id, sorted(bundle_ids))
    now = utcnow()
    return {
        "project_id": str(project.id),
        "query": query,
        "rows": [_table_row(node, versions, now) for node in page.items],
        "total": page.total,
        "stats": {
            **stats["by_status"],
            "total": stats["total"],
            "drifted": nodes.count_nodes(project.id, nodes.NodeFilter(drifted=True)),
        },
        "versions": nodes.node_versions(project.id),
        "bundles": {b: _bundle_label(b, versions) for b in sorted(bundle_ids)},
    }


COLUMNS: list[dict[str, Any]] = [
    {"name": "name", "label": "Name", "field": "name", "align": "left", "sortable": True},
    {"name": "status", "label": "Status", "field": "status", "align": "left", "sortable": True},
    {"name": "version", "label": "Version", "field": "version", "align": "left"},
    {"name": "labels", "label": "Labels", "field": "labels", "align": "left"},
    {"name": "bundle", "label": "Active bundle", "field": "bundle", "align": "left"},
    {"name": "drifted", "label": "Drift", "field": "drifted", "align": "center"},
    {
        "name": "last_seen",
        "label": "Last seen",
        "field": "last_seen",
        "align": "left",
        "sortable": True,
    },
]
STAT_CARDS = (
    ("total", "Nodes", "text-primary"),
    ("online", "Online", "text-positive"),
    ("offline", "Offline", "text-negative"),
    ("unknown", "Unknown", "text-grey-7"),
    ("drifted", "Drifted", "text-orange-9"),
)


class FleetTable:
    """The `/nodes` table of one browser tab: its query, its elements, its reloads."""

    def __init__(self, slug: str, data: dict[str, Any]) -> None:
        self.slug = slug
        self.query: TableQuery = data["query"]
        self.loads = 0  # a reply older than the latest request is dropped
        self.clearing = False  # one reload for "Clear", not one per filter
        self._build(data)

    def _build(self, data: dict[str, Any]) -> None:
        with ui.row().classes("w-full gap-3").mark("node-stats"):
            self.counters = {}
            for key, title, colour in STAT_CARDS:
                with ui.card().classes("min-w-[8rem] py-2"):
                    ui.label(title).classes("text-grey-7 text-caption")
                    self.counters[key] = (
                        ui.label("").classes(f"text-h5 {colour}").mark(f"stat-{key}")
                    )
        with ui.card().classes("w-full gap-2"):
            with ui.row().classes("w-full items-end gap-3").mark("node-filters"):
                self.search = (
                    ui.input("Search name, host or IP", on_change=self._filter_changed)
                    .props("dense outlined clearable debounce=400")
                    .classes("w-56")
                    .mark("filter-q")
                )
                self.status = (
                    ui.select(
                        {"": "Any status", **{s: s for s in nodes.STATUSES}},
                        value="",
                        label="Status",
                        on_change=self._filter_changed,
                    )
                    .props("dense outlined")
                    .classes("min-w-[9rem]")
                    .mark("filter-status")
                )
                self.labels = (
                    ui.input(
                        "Labels (key=value, …)",
                        on_change=self._filter_changed,
                    )
                    .props("dense outlined clearable debounce=400")
                    .classes("min-w-[12rem]")
                    .mark("filter-labels")
                )
                self.version = (
                    ui.select(
                        {"": "Any version"},
                        value="",
                        label="Version",
                        on_change=self._filter_changed,
                    )
                    .props("dense outlined")
                    .classes("min-w-[9rem]")
                    .mark("filter-version")
                )
                self.bundle = (
                    ui.select(
                        {"": "Any bundle"},
                        value="",
                        label="Active bundle",
                        on_change=self._filter_changed,
                    )
                    .props("dense outlined")
                    .classes("min-w-[11rem]")
                    .mark("filter-bundle")
                )
                self.drift = (
                    ui.select(
                        DRIFT_CHOICES, value="", label="Drift", on_change=self._filter_changed
                    )
                    .props("dense outlined")
                    .classes("min-w-[8rem]")
                    .mark("filter-drift")
                )
                ui.button("Clear", icon="filter_alt_off", on_click=self.clear_filters).props(
                    "flat dense color=grey-8"
                ).mark("clear-filters")
            self.summary = ui.label("").classes("text-grey-7").mark("nodes-matching")
            self.table = (
                ui.table(columns=COLUMNS, rows=[], row_key="id", pagination=self._pagination(0))
                .classes("w-full")
                .props(f"flat dense binary-state-sort :rows-per-page-options='{list(PAGE_SIZES)}'")
                .mark("nodes-table")
            )
        self.table.add_slot(
            "body-cell-name",
            '<q-td :props="props"><a :href="props.row.href" class="text-primary '
            'text-weight-medium" style="text-decoration: none">{{ props.value }}</a></q-td>',
        )
        self.table.add_slot(
            "body-cell-status",
            '<q-td :props="props"><q-badge :color="props.row.colour" :label="props.value" />'
            "</q-td>",
        )
        self.table.add_slot(
            "body-cell-labels",
            '<q-td :props="props"><q-chip v-for="(value, key) in props.value" :key="key" dense '
            'square size="sm" color="blue-grey-1">{{ key }}={{ value }}</q-chip></q-td>',
        )
        self.table.add_slot(
            "body-cell-drifted",
            '<q-td :props="props"><q-icon v-if="props.value" name="warning" color="warning" '
            'size="xs"><q-tooltip>Active bundle differs from the expected one</q-tooltip>'
            "</q-icon></q-td>",
        )
        self.table.add_slot(
            "body-cell-last_seen",
            '<q-td :props="props"><span :title="props.row.last_seen_at + \' UTC\'">'
            "{{ props.value }}</span></q-td>",
        )
        self.table.on("request", self._requested)
        self._show(data)

    def _pagination(self, total: int) -> dict[str, Any]:
        return {
            "page": self.query.page,
            "rowsPerPage": self.query.per_page,
            "sortBy": self.query.sort,
            "descending": self.query.descending,
            "rowsNumber": total,
        }

    def _show(self, data: dict[str, Any]) -> None:
        self.query = data["query"]
        for key, label in self.counters.items():
            label.set_text(f"{data['stats'][key]:,}")
        # A chosen value stays a choice even when no node has it any more.
        versions = {v: v for v in [*data["versions"], self.query.version] if v}
        bundles = {**({self.query.bundle: self.query.bundle[:12]} if self.query.bundle else {})}
        self.version.set_options({"": "Any version", **versions})
        self.bundle.set_options({"": "Any bundle", **bundles, **data["bundles"]})
        self.table.rows = data["rows"]
        self.table.pagination = self._pagination(data["total"])
        first = (self.query.page - 1) * self.query.per_page + 1
        shown = len(data["rows"])
        self.summary.set_text(
            f"{first:,}–{first + shown - 1:,} of {data['total']:,} matching nodes"
            if shown
            else "No node matches these filters"
        )
        self.table.update()

    async def reload(self, query: TableQuery | None = None) -> None:
        query = query or self.query
        self.loads += 1
        ticket = self.loads
        try:
            data = await call(load_table, self.slug, query)
        except Invalid as exc:
            self.labels.error = _message(exc)
            return
        if ticket != self.loads:
            return
        self.labels.error = None
        self._show(data)

    async def clear_filters(self) -> None:
        self.clearing = True
        try:
            self.search.value = self.labels.value = ""
            self.status.value = self.version.value = self.bundle.value = self.drift.value = ""
        finally:
            self.clearing = False
        await self._filter_changed()

    async def _filter_changed(self) -> None:
        if self.clearing:
            return
        await self.reload(
            replace(
                self.query,
                q=self.search.value or "",
                status=self.status.value or "",
                labels=self.labels.value or "",
                version=self.version.value or "",
                bundle=self.bundle.value or "",
                drift=self.drift.value or "",
                page=1,
            )
        )

    async def _requested(self, event: Any) -> None:
        wanted = (event.args or {}).get("pagination") or {}
        sort = str(wanted.get("sortBy") or "name")
        per_page = int(wanted.get("rowsPerPage") or PAGE_SIZE)
        await self.reload(
            replace(
                self.query,
                sort=sort if sort in nodes.NODE_SORTS else "name",
                descending=bool(wanted.get("descending")),
                page=max(1, int(wanted.get("page") or 1)),
                per_page=per_page if per_page in PAGE_SIZES else PAGE_SIZE,
            )
        )


@ui.page("/nodes")
async def nodes_page(request: Request):
    operator = await current_operator(request)
    if operator is None:
        return RedirectResponse("/login?next=/nodes")
    slug, slugs = await page_context()
    with frame(operator, "Nodes", slug, slugs):
        if slug is None:
            no_projects()
            return None
        data = await call(load_table, slug, TableQuery())
        table = FleetTable(slug, data)
        live.follow(
            live.for_project_changes(data["project_id"]),
            table.reload,
            periodic_s=PERIODIC_REFRESH_S,
        )
    return None


# --- one node ---------------------------------------------------------------------------------


def _node_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound("Node not found") from None


def load_node(slug: str, node_id: str) -> dict[str, Any]:
    """Everything the detail page shows, as plain values."""
    project = projects.get_project(slug)
    node = nodes.get_node(project.id, _node_id(node_id))
    samples = nodes.list_heartbeats(node, limit=HISTORY_SAMPLES, cursor=None).items
    recent = nodes.list_events(node, limit=RECENT, cursor=None).items
    history = nodes.bundle_history(node, limit=RECENT)
    ids = {node.active_bundle_id, node.assigned_bundle_id, node.expected_bundle_id}
    ids |= {status.bundle_id for status, _ in history}
    versions = nodes.bundle_versions(project.id, sorted(i for i in ids if i))
    now = utcnow()
    return {
        "project_id": str(project.id),
        "node": node.to_dict(),
        "last_seen": _ago(node.last_seen_at, now),
        "registered": _when(node.registered_at),
        "bundles": {
            kind: _bundle_label(getattr(node, f"{kind}_bundle_id"), versions)
            for kind in ("active", "assigned", "expected")
        },
        "window": [
            min([now - CHART_WINDOW, *(sample.created_at for sample in samples)]).isoformat(),
            now.isoformat(),
        ],
        "series": {
            key: [
                [sample.created_at.isoformat(), sample.metrics[key]]
                for sample in reversed(samples)
                if isinstance(sample.metrics.get(key), int | float)
            ]
            for key, _, _ in CHARTS
        },
        "events": [
            {
                "id": event.id,
                "when": _when(event.created_at),
                "severity": event.severity,
                "type": event.event_type,
                "message": event.message,
            }
            for event in recent
        ],
        "history": [
            {
                "id": status.id,
                "bundle": _bundle_label(status.bundle_id, {status.bundle_id: version or ""}),
                "state": status.state,
                "reason": status.reason or "",
                "assigned": _when(status.created_at),
            }
            for status, version in history
        ],
    }


def _save_labels(cookie: str | None, slug: str, node_id: str, labels: dict[str, str]) -> None:
    principal = acting_principal(cookie)
    principal.require(WRITE)
    project = projects.get_project(slug, visible_to=principal.project_id)
    nodes.set_labels(principal.actor, nodes.get_node(project.id, _node_id(node_id)), labels)


def _revoke_key(cookie: str | None, slug: str, node_id: str) -> None:
    principal = acting_principal(cookie)
    principal.require(WRITE)
    project = projects.get_project(slug, visible_to=principal.project_id)
    nodes.revoke_credentials(principal.actor, nodes.get_node(project.id, _node_id(node_id)))


async def save_labels(cookie: str | None, slug: str, node_id: str, labels: dict[str, str]) -> None:
    """Replace a node's labels as the cookie's user (`nodes:write`, audited by the domain)."""
    await call(_save_labels, cookie, slug, node_id, labels)


async def revoke_key(cookie: str | None, slug: str, node_id: str) -> None:
    """Revoke a node's key and tokens as the cookie's user (`nodes:write`, audited)."""
    await call(_revoke_key, cookie, slug, node_id)


def _chart_options(
    key: str, title: str, unit: str, points: list[list[Any]], window: list[str]
) -> dict[str, Any]:
    options: dict[str, Any] = {
        "animation": False,
        "title": {"text": f"{title} ({unit})", "textStyle": {"fontSize": 13}},
        "grid": {"left": 44, "right": 16, "top": 36, "bottom": 24},
        "tooltip": {"trigger": "axis"},
        "xAxis": {"type": "time", "min": window[0], "max": window[1]},
        "yAxis": {"type": "value", "min": 0, **({"max": 100} if key in FULL_SCALE else {})},
        "series": [
            {
                "type": "line",
                "name": title,
                "data": points,
                "showSymbol": len(points) < SPARSE_POINTS,  # a lone sample is a visible dot
                "symbolSize": 5,
            }
        ],
    }
    if not points:
        options["graphic"] = [
            {
                "type": "text",
                "left": "center",
                "top": "middle",
                "style": {"text": "No samples", "fill": "#9e9e9e", "fontSize": 13},
            }
        ]
    return options


def _fact(name: str, value: str, marker: str) -> None:
    with ui.column().classes("gap-0"):
        ui.label(name).classes("text-caption text-grey-7")
        ui.label(value).classes("text-body1").mark(marker)


class NodeDetail:
    """The `/nodes/{id}` page of one browser tab."""

    def __init__(self, operator: Operator, cookie: str | None, slug: str, data: dict[str, Any]):
        self.cookie = cookie
        self.slug = slug
        self.data = data
        self.node_id = data["node"]["id"]
        writer = operator.can(WRITE)
        with ui.row().classes("w-full items-center justify-between"):
            ui.link("← All nodes", "/nodes").classes("text-primary").mark("back-to-nodes")
            with ui.row().classes("gap-2"):
                if writer:
                    ui.button("Edit labels", icon="sell", on_click=self.edit_labels).props(
                        "outline"
                    ).mark("edit-labels")
                    self.revoke_button = (
                        ui.button("Revoke key", icon="key_off", on_click=self.confirm_revoke)
                        .props("outline color=negative")
                        .mark("revoke-key")
                    )
        self.body = ui.refreshable(self._body)
        self.body()
        with ui.grid(columns=2).classes("w-full gap-4").mark("heartbeat-charts"):
            self.charts = {}
            for key, title, unit in CHARTS:
                with ui.card().classes("w-full p-2"):
                    self.charts[key] = (
                        ui.echart(
                            _chart_options(key, title, unit, data["series"][key], data["window"])
                        )
                        .classes("w-full h-48")
                        .mark(f"chart-{key}")
                    )
        self.no_samples = (
            ui.label("No heartbeat samples yet: a node's metrics are sampled once a minute.")
            .classes("text-grey-7")
            .mark("no-samples")
        )
        self.history = ui.refreshable(self._history)
        self.history()
        self._show_charts()
        if writer:
            self._sync_revoke_button()

    def _body(self) -> None:
        node = self.data["node"]
        with ui.row().classes("w-full gap-4 items-stretch"):
            with ui.card().classes("grow").mark("node-summary"):
                with ui.row().classes("items-center gap-3"):
                    ui.badge(node["status"], color=STATUS_COLOURS.get(node["status"], "grey")).mark(
                        "node-status"
                    )
                    if node["credentials_revoked"]:
                        ui.badge("key revoked", color="negative").props("outline").mark(
                            "key-revoked"
                        )
                    if node["drifted"]:
                        ui.badge("drifted", color="warning").mark("node-drifted")
                with ui.row().classes("gap-8"):
                    _fact("Version", node["version"] or "—", "node-version")
                    _fact("Hostname", node["hostname"] or "—", "node-hostname")
                    _fact("IP", node["ip"] or "—", "node-ip")
                    _fact("Last seen", self.data["last_seen"], "node-last-seen")
                    _fact("Registered (UTC)", self.data["registered"], "node-registered")
            with ui.card().classes("grow").mark("node-bundles"):
                ui.label("Bundles").classes("text-subtitle1")
                with ui.row().classes("gap-8"):
                    _fact("Active", self.data["bundles"]["active"], "bundle-active")
                    _fact("Assigned", self.data["bundles"]["assigned"], "bundle-assigned")
                    _fact("Expected", self.data["bundles"]["expected"], "bundle-expected")
        with ui.card().classes("w-full").mark("node-labels"):
            ui.label("Labels").classes("text-subtitle1")
            with ui.row().classes("gap-1"):
                if not node["labels"]:
                    ui.label("No labels").classes("text-grey-7")
                for key, value in sorted(node["labels"].items()):
                    ui.chip(f"{key}={value}").props("dense square color=blue-grey-1").mark(
                        "node-label"
                    )

    def _history(self) -> None:
        with ui.row().classes("w-full gap-4 items-start no-wrap"):
            with ui.card().classes("w-1/2"):
                ui.label("Recent events").classes("text-subtitle1")
                ui.table(
                    columns=[
                        {"name": "when", "label": "When (UTC)", "field": "when", "align": "left"},
                        {
                            "name": "severity",
                            "label": "Severity",
                            "field": "severity",
                            "align": "left",
                        },
                        {"name": "type", "label": "Event", "field": "type", "align": "left"},
                        {
                            "name": "message",
                            "label": "Message",
                            "field": "message",
                            "align": "left",
                        },
                    ],
                    rows=self.data["events"],
                    row_key="id",
                ).classes("w-full").props('flat dense no-data-label="No events reported"').mark(
                    "node-events"
                )
            with ui.card().classes("w-1/2"):
                ui.label("Bundle history").classes("text-subtitle1")
                ui.table(
                    columns=[
                        {"name": "bundle", "label": "Bundle", "field": "bundle", "align": "left"},
                        {"name": "state", "label": "State", "field": "state", "align": "left"},
                        {"name": "reason", "label": "Reason", "field": "reason", "align": "left"},
                        {"name": "assigned", "label": "Assigned (UTC)", "field": "assigned"},
                    ],
                    rows=self.data["history"],
                    row_key="id",
                ).classes("w-full").props(
                    'flat dense no-data-label="No bundle assigned to this node yet"'
                ).mark("bundle-history")

    def _show_charts(self) -> None:
        for key, title, unit in CHARTS:
            chart = self.charts[key]
            chart.options.clear()
            chart.options.update(
                _chart_options(key, title, unit, self.data["series"][key], self.data["window"])
            )
            chart.update()
        self.no_samples.set_visibility(not any(self.data["series"].values()))

    def _sync_revoke_button(self) -> None:
        revoked = self.data["node"]["credentials_revoked"]
        self.revoke_button.set_enabled(not revoked)
        self.revoke_button.set_text("Key revoked" if revoked else "Revoke key")

    async def reload(self) -> None:
        try:
            self.data = await call(load_node, self.slug, self.node_id)
        except NotFound:
            ui.navigate.to("/nodes")
            return
        self.body.refresh()
        self.history.refresh()
        self._show_charts()
        if hasattr(self, "revoke_button"):
            self._sync_revoke_button()

    async def edit_labels(self) -> None:
        current = "\n".join(f"{k}={v}" for k, v in sorted(self.data["node"]["labels"].items()))
        with ui.context.client.layout, ui.dialog() as dialog, ui.card().classes("min-w-[24rem]"):
            ui.label(f"Labels of {self.data['node']['name']}").classes("text-h6")
            editor = (
                ui.textarea("One key=value per line", value=current)
                .props("outlined autogrow")
                .classes("w-full")
                .mark("labels-input")
            )
            with ui.row().classes("w-full justify-end"):
                ui.button("Cancel", on_click=lambda: dialog.submit(None)).props("flat")
                ui.button("Save", on_click=lambda: dialog.submit(editor.value or "")).mark(
                    "save-labels"
                )
        text = await dialog
        dialog.delete()
        if text is None:
            return
        try:
            labels = parse_labels(text, separator="\n")
        except Invalid as exc:
            ui.notify(_message(exc), type="negative")
            return
        await _attempt(save_labels(self.cookie, self.slug, self.node_id, labels), "Labels saved")
        await self.reload()

    async def confirm_revoke(self) -> None:
        name = self.data["node"]["name"]
        with ui.context.client.layout, ui.dialog() as dialog, ui.card().classes("max-w-md"):
            ui.label(f"Revoke the key of {name}?").classes("text-h6")
            ui.label(
                "Its key and every token stop working at once. The node keeps its name, labels "
                "and history, and must re-register with the project's registration token."
            )
            with ui.row().classes("w-full justify-end"):
                ui.button("Cancel", on_click=lambda: dialog.submit(False)).props("flat")
                ui.button("Revoke key", on_click=lambda: dialog.submit(True)).props(
                    "color=negative"
                ).mark("confirm-revoke")
        confirmed = await dialog
        dialog.delete()
        if not confirmed:
            return
        await _attempt(revoke_key(self.cookie, self.slug, self.node_id), f"Key of {name} revoked")
        await self.reload()


@ui.page("/nodes/{node_id}")
async def node_page(request: Request, node_id: str):
    operator = await current_operator(request)
    if operator is None:
        return RedirectResponse(f"/login?next=/nodes/{node_id}")
    slug, slugs = await page_context()
    data = None
    if slug is not None:
        try:
            data = await call(load_node, slug, node_id)
        except NotFound:
            data = None
    with frame(operator, data["node"]["name"] if data else "Node not found", slug, slugs):
        if data is None or slug is None:
            where = f"in project {slug}" if slug else "(there are no projects yet)"
            ui.label(f"There is no such node {where}.").mark("node-not-found")
            ui.link("← All nodes", "/nodes").classes("text-primary")
            return None
        detail = NodeDetail(operator, session_cookie(request), slug, data)
        live.follow(
            live.for_project_changes(data["project_id"]),
            detail.reload,
            periodic_s=PERIODIC_REFRESH_S,
        )
    return None
