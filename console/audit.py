"""The audit page: a chain's entries newest first, filtered and paged in the database, with the
chain's verification verdict on top and links to the REST export of what the filters select.

Two chains can be read: the current project's, and the global one (users, API keys, sessions,
project creation and deletion). The verdict comes from `audit.verify_chain`, the same walk as
`sentinel-cp audit verify` and `GET …/audit/verify`; it runs when the page opens, when the chain
changes, on "Verify now", and at most every `VERIFY_EVERY_S` while entries keep arriving.

This module also holds what the drift and settings pages share with it: paging a
keyset-paginated domain list (`CursorPager`).
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from nicegui import ui
from starlette.requests import Request
from starlette.responses import RedirectResponse

from console import live
from console.context import call
from console.frame import frame, no_projects, page_context
from console.session import acting_principal, current_operator, session_cookie
from sentinel_cp import audit, projects
from sentinel_cp.db import db
from sentinel_cp.errors import Invalid
from sentinel_cp.pagination import encode_cursor

PAGE_SIZE = 25
VERIFY_EVERY_S = 30.0  # live updates re-verify the chain at most this often (it is a full walk)
SUMMARY_MAX = 140
# What the API's audit query accepts, so the export links built from these filters work.
ACTION_PATTERN = re.compile(r"[a-z_]+(\.[a-z_]+)*(\.\*)?")
RESOURCE_TYPE_PATTERN = re.compile(r"[a-z_]+")
RESOURCE_ID_PATTERN = re.compile(r"[A-Za-z0-9_.:-]+")
log = logging.getLogger(__name__)
CHAINS = {"project": "This project", "global": "Global (users, API keys, sessions)"}


# --- shared with the drift and settings pages -------------------------------------------------


class CursorPager:
    """Newer/older buttons over a domain list paged by an opaque cursor (stable under inserts).

    The stack holds the cursor of every page opened so far; `cursor` is the current one, `None`
    being the newest page. The owner loads `cursor`, then reports what it got with `show`.
    """

    def __init__(self, marker: str, on_change: Callable[[], Awaitable[None]]) -> None:
        self.on_change = on_change
        self.cursors: list[str | None] = [None]
        self.next_cursor: str | None = None
        self.jumped = False  # opened at a cursor of our own: page positions are unknown
        with ui.row().classes("items-center gap-1 no-wrap"):
            self.summary = ui.label("").classes("text-grey-7").mark(f"{marker}-summary")
            self.newer = (
                ui.button(icon="chevron_left", on_click=self._newer)
                .props("flat dense round")
                .tooltip("Newer")
                .mark(f"{marker}-newer")
            )
            self.older = (
                ui.button(icon="chevron_right", on_click=self._older)
                .props("flat dense round")
                .tooltip("Older")
                .mark(f"{marker}-older")
            )

    @property
    def cursor(self) -> str | None:
        return self.cursors[-1]

    @property
    def index(self) -> int:
        """How many pages precede the current one."""
        return len(self.cursors) - 1

    def reset(self, cursor: str | None = None) -> None:
        """Back to the newest page, or (given a cursor) to the page that cursor opens."""
        self.cursors = [None] if cursor is None else [None, cursor]
        self.jumped = cursor is not None

    def show(self, summary: str, next_cursor: str | None) -> None:
        self.next_cursor = next_cursor
        self.summary.set_text(summary)
        self.newer.set_enabled(self.index > 0)
        self.older.set_enabled(next_cursor is not None)

    def range_text(self, shown: int, total: int, per_page: int, noun: str) -> str:
        """`26–50 of 120 entries` (positions counted from the newest page)."""
        if not shown:
            return f"No {noun}"
        first = self.index * per_page + 1
        return f"{first:,}–{first + shown - 1:,} of {total:,} {noun}"

    async def _older(self) -> None:
        if self.next_cursor is not None:
            self.cursors.append(self.next_cursor)
            await self.on_change()

    async def _newer(self) -> None:
        if self.index > 0:
            self.cursors.pop()
            await self.on_change()


def when(moment: datetime | None) -> str:
    """A timestamp as the console shows it (UTC, to the second)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if moment else "—"


# --- filters ----------------------------------------------------------------------------------


def parse_moment(text: str, field: str, *, end_of_day: bool = False) -> datetime | None:
    """`2026-05-01` or `2026-05-01 14:30` (UTC) as an aware datetime. A bare date used as an
    upper bound means the end of that day, so "to 2026-05-01" includes the 1st."""
    text = text.strip()
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise Invalid(
            "Invalid date", fields={field: ["use YYYY-MM-DD or YYYY-MM-DD HH:MM (UTC)"]}
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if end_of_day and len(text) == 10:
        moment += timedelta(days=1)
    return moment.astimezone(UTC)


@dataclass(frozen=True)
class AuditQuery:
    """What the page shows: which chain, and the filters as typed (plain values)."""

    chain: str = "project"
    action: str = ""
    actor: str = ""
    resource_type: str = ""
    resource_id: str = ""
    since: str = ""
    until: str = ""

    def filters(self) -> audit.AuditFilter:
        """The domain's filter; `Invalid` names each field that cannot be used."""
        problems: dict[str, list[str]] = {}
        action, kind, ident = (
            self.action.strip(),
            self.resource_type.strip(),
            self.resource_id.strip(),
        )
        if action and not ACTION_PATTERN.fullmatch(action):
            problems["action"] = ["an action such as rollout.paused, or a family: rollout.*"]
        if kind and not RESOURCE_TYPE_PATTERN.fullmatch(kind):
            problems["resource_type"] = ["lowercase letters and '_', e.g. rollout"]
        if ident and not kind:
            problems["resource_id"] = ["name the resource type too"]
        elif ident and not RESOURCE_ID_PATTERN.fullmatch(ident):
            problems["resource_id"] = ["letters, digits, '_', '.', ':' or '-'"]
        since = until = None
        for field, end_of_day in (("since", False), ("until", True)):
            try:
                moment = parse_moment(getattr(self, field), field, end_of_day=end_of_day)
            except Invalid as exc:
                problems.update(exc.fields)
                continue
            if field == "since":
                since = moment
            else:
                until = moment
        if since and until and until <= since:
            problems["until"] = ["must be after the start"]
        if problems:
            raise Invalid("Invalid filters", fields=problems)
        return audit.AuditFilter(
            actor=self.actor.strip() or None,
            action=action or None,
            resource=(f"{kind}:{ident}" if ident else kind) or None,
            since=since,
            until=until,
        )

    def export_url(self, slug: str, fmt: str) -> str:
        """The REST export of what these filters select (the session cookie authenticates it)."""
        filters = self.filters()
        params: dict[str, str] = {"format": fmt}
        for name in ("actor", "action", "resource"):
            value = getattr(filters, name)
            if value:
                params[name] = value
        for name in ("since", "until"):
            moment = getattr(filters, name)
            if moment is not None:
                params[name] = moment.isoformat()
        base = f"/api/v1/projects/{slug}/audit" if self.chain == "project" else "/api/v1/audit"
        return f"{base}/export?{urlencode(params)}"


# --- reading (in a worker thread, inside the Flask app context) -------------------------------


def _chain_of(cookie: str | None, slug: str, chain: str) -> tuple[uuid.UUID | None, str]:
    principal = acting_principal(cookie)
    principal.require(audit.READ_SCOPE)
    if chain == "global":
        return None, "global"
    project = projects.get_project(slug, visible_to=principal.project_id)
    return project.id, project.slug


def _changes_text(changes: dict[str, Any], meta: dict[str, Any]) -> str:
    parts = []
    for key, value in (changes or meta).items():
        if isinstance(value, list) and len(value) == 2 and changes:
            parts.append(f"{key}: {_compact(value[0])} → {_compact(value[1])}")
        else:
            parts.append(f"{key}: {_compact(value)}")
    text = "; ".join(parts)
    return text if len(text) <= SUMMARY_MAX else text[: SUMMARY_MAX - 1] + "…"


def _compact(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _resource(kind: str, ident: str | None, *, short: bool = False) -> str:
    if not ident:
        return kind
    if short and len(ident) > 16:  # a uuid or a content hash: its start tells them apart
        ident = ident[:8] + "…"
    return f"{kind}:{ident}"


def _row(row: audit.AuditLog) -> dict[str, Any]:
    details = {"changes": row.changes, "metadata": row.meta}
    return {
        "id": str(row.id),
        "seq": row.seq,
        "when": when(row.created_at),
        "actor": row.actor_label,
        "actor_type": row.actor_type,
        "action": row.action,
        "resource": _resource(row.resource_type, row.resource_id, short=True),
        "resource_full": _resource(row.resource_type, row.resource_id),
        "details": _changes_text(row.changes, row.meta),
        "full": json.dumps(details, ensure_ascii=False, indent=1, sort_keys=True),
    }


def load_entries(
    cookie: str | None, slug: str, query: AuditQuery, cursor: str | None
) -> dict[str, Any]:
    """One page of the chain's entries, newest first, as plain values."""
    project_id, name = _chain_of(cookie, slug, query.chain)
    page = audit.list_entries(project_id, query.filters(), limit=PAGE_SIZE, cursor=cursor)
    return {
        "chain_project": str(project_id) if project_id else None,
        "chain_name": name,
        "rows": [_row(row) for row in page.items],
        "total": page.total,
        "next_cursor": page.next_cursor,
    }


def verify_chain(cookie: str | None, slug: str, chain: str) -> dict[str, Any]:
    """The chain's verdict, with the first bad row's position when there is one."""
    project_id, name = _chain_of(cookie, slug, chain)
    verdict = audit.verify_chain(project_id).to_dict()
    bad_seq = None
    if verdict["first_bad_id"]:
        row = db.session.get(audit.AuditLog, uuid.UUID(verdict["first_bad_id"]))
        bad_seq = row.seq if row is not None else None
    return {**verdict, "first_bad_seq": bad_seq, "chain_name": name, "at": when(datetime.now(UTC))}


# --- the page ---------------------------------------------------------------------------------

NOWRAP = "white-space: nowrap"
COLUMNS = [
    {"name": "seq", "label": "#", "field": "seq", "align": "right"},
    {"name": "when", "label": "When (UTC)", "field": "when", "align": "left", "style": NOWRAP},
    {"name": "actor", "label": "Actor", "field": "actor", "align": "left"},
    {"name": "action", "label": "Action · resource", "field": "action", "align": "left"},
    {"name": "details", "label": "Changes", "field": "details", "align": "left"},
]
FILTER_FIELDS = (
    ("action", "Action (e.g. rollout.*)", "min-w-[12rem]"),
    ("actor", "Actor (email or id)", "min-w-[12rem]"),
    ("resource_type", "Resource type", "w-36"),
    ("resource_id", "Resource id", "min-w-[12rem]"),
)


def _date_input(label: str, on_change: Callable[..., Any], marker: str) -> ui.input:
    """A text input for `YYYY-MM-DD[ HH:MM]` with a calendar to pick the date from."""
    field = (
        ui.input(label, on_change=on_change)
        .props("dense outlined clearable debounce=600")
        .classes("w-44")
        .mark(marker)
    )

    def picked(event: Any) -> None:
        field.set_value(event.value)
        menu.close()

    with field.add_slot("append"):
        with ui.icon("event").classes("cursor-pointer") as icon, ui.menu() as menu:
            ui.date(on_change=picked).props("mask=YYYY-MM-DD minimal")
        icon.on("click", menu.open)
    return field


class AuditLogView:
    """The `/audit` page of one browser tab: its chain, filters, page and verdict."""

    def __init__(self, cookie: str | None, slug: str) -> None:
        self.cookie = cookie
        self.slug = slug
        self.query = AuditQuery()
        self.chain_project: str | None = None
        self.verified_at = 0.0
        self.verdict: dict[str, Any] | None = None
        self.verdict_card = ui.refreshable(self._verdict_card)
        self.verdict_card()
        with ui.card().classes("w-full gap-2"):
            with ui.row().classes("w-full items-center justify-between"):
                self.chain = (
                    ui.toggle(CHAINS, value="project", on_change=self._chain_changed)
                    .props("no-caps unelevated toggle-color=primary")
                    .mark("audit-chain")
                )
                with ui.row().classes("items-center gap-2"):
                    ui.label("Export:").classes("text-grey-7")
                    self.export_csv = (
                        ui.link("CSV", "#").classes("text-primary").mark("audit-export-csv")
                    )
                    self.export_json = (
                        ui.link("JSON lines", "#").classes("text-primary").mark("audit-export-json")
                    )
            with ui.row().classes("w-full items-start gap-3").mark("audit-filters"):
                self.inputs: dict[str, ui.input] = {}
                for field, label, width in FILTER_FIELDS:
                    self.inputs[field] = (
                        ui.input(label, on_change=self._filters_changed)
                        .props("dense outlined clearable debounce=500")
                        .classes(width)
                        .mark(f"audit-filter-{field}")
                    )
                self.inputs["since"] = _date_input(
                    "From (UTC)", self._filters_changed, "audit-filter-since"
                )
                self.inputs["until"] = _date_input(
                    "To (UTC)", self._filters_changed, "audit-filter-until"
                )
                ui.button("Clear filters", icon="filter_alt_off", on_click=self._clear).props(
                    "flat no-caps"
                ).classes("self-center").mark("audit-clear-filters")
            self.table = (
                ui.table(columns=COLUMNS, rows=[], row_key="id", pagination={"rowsPerPage": 0})
                .classes("w-full")
                .props("flat dense hide-pagination wrap-cells")
                .mark("audit-table")
            )
            self.table.add_slot(
                "body-cell-actor",
                '<q-td :props="props"><div>{{ props.value }}</div>'
                '<div class="text-caption text-grey-7">{{ props.row.actor_type }}</div></q-td>',
            )
            self.table.add_slot(
                "body-cell-action",
                '<q-td :props="props"><code class="text-primary">{{ props.value }}</code>'
                '<div class="text-caption text-grey-7" :title="props.row.resource_full">'
                "{{ props.row.resource }}</div></q-td>",
            )
            self.table.add_slot(
                "body-cell-details",
                '<q-td :props="props" style="min-width: 14rem">'
                '<span class="text-grey-9" style="white-space: pre-wrap; overflow-wrap: anywhere">'
                "{{ props.value }}</span><q-tooltip max-width='40rem' class='text-body2'>"
                '<pre style="margin:0; white-space: pre-wrap">{{ props.row.full }}</pre>'
                "</q-tooltip></q-td>",
            )
            with ui.row().classes("w-full justify-end"):
                self.pager = CursorPager("audit", self.reload)

    # -- the verdict --------------------------------------------------------------------------

    def _verdict_card(self) -> None:
        verdict = self.verdict
        if verdict is None:
            return
        scope = "global chain" if verdict["chain_name"] == "global" else "project chain"
        if verdict["valid"]:
            classes, icon, colour = "bg-green-1 border-green-6", "verified_user", "positive"
            title = f"Audit {scope} intact"
            detail = (
                f"{verdict['checked']:,} entries verified: every hash and link holds "
                f"(checked {verdict['at']} UTC)."
            )
        else:
            classes, icon, colour = "bg-red-1 border-red-6", "gpp_bad", "negative"
            title = f"Audit {scope} BROKEN"
            where = (
                f"first bad entry #{verdict['first_bad_seq']} (id {verdict['first_bad_id']})"
                if verdict["first_bad_id"]
                else "the chain's end"
            )
            detail = (
                f"At {where}: {verdict['reason']}. Entries from there on cannot be trusted "
                f"(checked {verdict['at']} UTC)."
            )
        with (
            ui.card()
            .classes(f"w-full border-l-8 {classes}")
            .props("flat bordered")
            .mark("audit-verdict"),
            ui.row().classes("w-full items-center no-wrap gap-4"),
        ):
            ui.icon(icon, color=colour, size="2.5rem")
            with ui.column().classes("gap-0 grow"):
                ui.label(title).classes(f"text-h6 text-{colour}").mark("audit-verdict-title")
                ui.label(detail).classes("text-body1").mark("audit-verdict-detail")
            if not verdict["valid"] and verdict["first_bad_seq"]:
                ui.button("Show it", icon="search", on_click=self._show_first_bad).props(
                    "outline color=negative"
                ).mark("audit-show-bad")
            ui.button("Verify now", icon="refresh", on_click=self.verify).props("outline").mark(
                "audit-verify"
            )

    async def verify(self) -> None:
        self.show_verdict(await call(verify_chain, self.cookie, self.slug, self.query.chain))

    def show_verdict(self, verdict: dict[str, Any]) -> None:
        self.verdict = verdict
        self.verified_at = time.monotonic()
        self.verdict_card.refresh()

    async def _show_first_bad(self) -> None:
        if not self.verdict or not self.verdict["first_bad_seq"]:
            return
        self._clear_filters()
        # The list is "entries before this cursor": open the page that starts with the bad row.
        self.pager.reset(encode_cursor(self.verdict["first_bad_seq"] + 1))
        await self.reload()

    # -- the list -----------------------------------------------------------------------------

    def _read_query(self) -> AuditQuery:
        values = {field: (element.value or "") for field, element in self.inputs.items()}
        return replace(self.query, chain=self.chain.value or "project", **values)

    def _clear_filters(self) -> None:
        for element in self.inputs.values():
            element.set_value("")
        self.query = AuditQuery(chain=self.query.chain)

    async def _clear(self) -> None:
        self._clear_filters()
        for element in self.inputs.values():
            element.error = None
        self.pager.reset()
        await self.reload()

    async def _filters_changed(self) -> None:
        query = self._read_query()
        try:
            query.filters()
        except Invalid as exc:
            for field, element in self.inputs.items():
                element.error = "; ".join(exc.fields[field]) if field in exc.fields else None
            return
        for element in self.inputs.values():
            element.error = None
        if query == self.query:
            return
        self.query = query
        self.pager.reset()
        await self.reload()

    async def _chain_changed(self) -> None:
        self.query = replace(self.query, chain=self.chain.value or "project")
        self.pager.reset()
        await self.reload()
        await self.verify()

    async def reload(self) -> None:
        data = await call(load_entries, self.cookie, self.slug, self.query, self.pager.cursor)
        if not data["rows"] and self.pager.index > 0:  # the page emptied under the filters
            self.pager.reset()
            data = await call(load_entries, self.cookie, self.slug, self.query, None)
        self.show(data)

    def show(self, data: dict[str, Any]) -> None:
        self.chain_project = data["chain_project"]
        rows = data["rows"]
        self.table.rows = rows
        self.table.update()
        summary = self.pager.range_text(len(rows), data["total"], PAGE_SIZE, "entries")
        if self.pager.jumped and rows:
            summary = f"#{rows[0]['seq']}–#{rows[-1]['seq']} of {data['total']:,} entries"
        self.pager.show(summary, data["next_cursor"])
        self.export_csv.props["href"] = self.query.export_url(self.slug, "csv")
        self.export_json.props["href"] = self.query.export_url(self.slug, "json")

    def hears(self, event: dict[str, Any]) -> bool:
        return event.get("kind") == "audit" and event.get("project") == self.chain_project

    async def live_refresh(self) -> None:
        await self.reload()
        if time.monotonic() - self.verified_at >= VERIFY_EVERY_S:
            await self.verify()


@ui.page("/audit")
async def audit_page(request: Request):
    operator = await current_operator(request)
    if operator is None:
        return RedirectResponse("/login?next=/audit")
    slug, slugs = await page_context()
    with frame(operator, "Audit log", slug, slugs):
        if slug is None:
            no_projects()
            return None
        cookie = session_cookie(request)
        verdict = await call(verify_chain, cookie, slug, "project")
        data = await call(load_entries, cookie, slug, AuditQuery(), None)
        view = AuditLogView(cookie, slug)
        view.show_verdict(verdict)
        view.show(data)
        live.follow(view.hears, view.live_refresh)
    return None
