"""The rollout pages: the project's rollouts, a creation form with a live dry-run plan, and one
rollout's steps, nodes, gate verdicts and operator actions. All three follow the fleet live.

The pages call the same domain functions as the REST API (`engine.plan`, `engine.create`,
`engine.describe`, `engine.pause`, …) with the same actor, and hold no rule of their own:
which actions a rollout offers, and to whom, comes from `rollouts.catalog.offered_actions`;
who may override a freeze window from `catalog.require_freeze_override`. A button being shown
is a convenience, not the check: every handler reloads the operator from the session cookie
and requires the scope again on the server (as the API's route does), so a stale page or a
crafted event gets the same refusal as an API call without the scope.
"""

from __future__ import annotations

import html
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any, NamedTuple, TypeVar

from nicegui import ui
from starlette.requests import Request
from starlette.responses import RedirectResponse

from console import live
from console.context import call
from console.frame import explain, frame, no_projects, page_context
from console.session import Operator, acting_principal, current_operator, session_cookie
from sentinel_cp import accounts, nodes, projects
from sentinel_cp.bundles import catalog as bundles
from sentinel_cp.db import db
from sentinel_cp.errors import DomainError, Forbidden, Invalid, NotFound
from sentinel_cp.rollouts import catalog, engine

PAGE_SIZE = 20
PLAN_DEBOUNCE_S = 0.3
ACTIVE_POLL_S = 5.0  # gate verdicts refresh without an event while a step bakes
GRID_NAMES_UP_TO = 400  # bigger steps draw their nodes as unnamed cells (names in the tooltip)
PLAN_NAMES_SHOWN = 60
PROBLEMS_SHOWN = 20
REASON_MAX, COMMENT_MAX = 500, 1000  # as the API's schemas

ROLLOUT_COLOURS = {
    "pending": "grey-7",
    "running": "primary",
    "paused": "warning",
    "completed": "positive",
    "failed": "negative",
    "cancelled": "grey-6",
    "rolling_back": "orange-9",
    "rolled_back": "deep-orange-6",
}
STEP_COLOURS = {
    "pending": "grey-5",
    "running": "primary",
    "baking": "teal",
    "completed": "positive",
    "failed": "negative",
}
STEP_ICONS = {
    "pending": "schedule",
    "running": "sync",
    "baking": "local_fire_department",
    "completed": "check",
    "failed": "close",
}
# Delivery states in the order a node goes through them; the grid's legend uses this order.
NODE_COLOURS = {
    "pending": "bg-grey-4 text-grey-9",
    "assigned": "bg-blue-2 text-grey-10",
    "downloaded": "bg-blue-4 text-white",
    "staged": "bg-indigo-4 text-white",
    "activated": "bg-teal-6 text-white",
    "verified": "bg-green-7 text-white",
    "failed": "bg-red-7 text-white",
    "rolled_back": "bg-deep-orange-6 text-white",
    "skipped": "bg-amber-6 text-grey-10",
}
VERDICT_COLOURS = {"passing": "positive", "failing": "negative", "waiting": "warning"}
GATE_LABELS = {
    "heartbeat_healthy": "healthy heartbeat",
    "max_error_rate": "error rate ≤ {}%",
    "max_latency_ms": "p99 latency ≤ {} ms",
    "max_cpu_percent": "CPU ≤ {}%",
    "max_memory_percent": "memory ≤ {}%",
    "max_error_rate_vs_baseline": "error rate ≤ {}× baseline",
}


class ActionLook(NamedTuple):
    """How an action looks; whether it is offered is the domain's answer (`offered_actions`)."""

    label: str
    colour: str
    icon: str
    question: str
    text_label: str  # the dialog's text field: a reason (audited) or a comment
    outcome: str


AUDITED = "Reason (recorded in the audit log)"
ACTION_LOOK = {
    "approve": ActionLook(
        "Approve",
        "positive",
        "thumb_up",
        "Approve this rollout? It starts once it has every approval it needs.",
        "Comment (optional)",
        "Approved",
    ),
    "reject": ActionLook(
        "Reject",
        "negative",
        "thumb_down",
        "Reject this rollout? It will never start.",
        "Comment (required)",
        "Rejected",
    ),
    "resume": ActionLook(
        "Resume",
        "primary",
        "play_arrow",
        "Resume this rollout? The current step goes on where it stopped.",
        AUDITED,
        "Resumed",
    ),
    "promote": ActionLook(
        "Promote",
        "primary",
        "upgrade",
        "Promote? The standby set passed its gates; the rest of the targets get the bundle.",
        AUDITED,
        "Promoted",
    ),
    "pause": ActionLook(
        "Pause",
        "warning",
        "pause",
        "Pause this rollout? No further node is assigned until it is resumed.",
        AUDITED,
        "Paused",
    ),
    "cancel": ActionLook(
        "Cancel",
        "negative",
        "cancel",
        "Cancel this rollout for good? Nodes keep what they run now; assignments not yet "
        "delivered are withdrawn.",
        AUDITED,
        "Cancelled",
    ),
    "rollback": ActionLook(
        "Roll back",
        "negative",
        "undo",
        "Roll back? Every node this rollout moved goes back to its previous bundle, all at "
        "once, without bake.",
        AUDITED,
        "Rolling back",
    ),
}


# --- shared: formatting, errors, the acting operator, live refresh ---------------------------


def when(value: str | None) -> str:
    """An ISO timestamp as the console shows times (UTC, to the second)."""
    if not value:
        return "—"
    return datetime.fromisoformat(value).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def short(rollout_id: str) -> str:
    return rollout_id[:8]


def _principal(user_id: str) -> accounts.Principal:
    """The operator as the API sees a logged-in user (same scopes, same audit actor)."""
    user = db.session.get(accounts.User, uuid.UUID(user_id))
    if user is None or user.disabled:
        raise Forbidden("This account may no longer act", code="user_disabled")
    return accounts.principal_for_user(user)


async def acting_operator() -> Operator | None:
    """The operator behind this page's cookie as of now (role changes and logouts count)."""
    operator = await current_operator(ui.context.client.request)
    if operator is None:
        ui.notify("Your session has ended; please log in again.", type="warning")
        ui.navigate.to("/login?expired=1")
    return operator


async def _page_start(request: Request) -> tuple[Operator, Any] | None:
    operator = await current_operator(request)
    if operator is None:
        return None
    return operator, await page_context()


def _state_badge(state: str) -> ui.badge:
    label = state.replace("_", " ")
    return ui.badge(label, color=ROLLOUT_COLOURS.get(state, "grey")).classes("text-body2")


# --- reading (run in a worker thread inside the Flask app context) ---------------------------


def _versions(project_id: uuid.UUID, bundle_ids: set[str]) -> dict[str, str]:
    return {b: bundles.get_bundle(project_id, b).version for b in bundle_ids}


def _progress_text(progress: dict[str, int]) -> str:
    text = f"{progress['verified']}/{progress['total']} verified"
    if progress["failed"]:
        text += f", {progress['failed']} failed"
    if progress["skipped"]:
        text += f", {progress['skipped']} skipped"
    return text


def _list_page(slug: str, state: str | None, cursor: str | None) -> dict[str, Any]:
    project = projects.get_project(slug)
    page = engine.list_rollouts(project.id, state=state, limit=PAGE_SIZE, cursor=cursor)
    described = [engine.describe(rollout) for rollout in page.items]
    versions = _versions(project.id, {d["bundle_id"] for d in described})
    rows = []
    for d in described:
        progress = d["progress"]
        rows.append(
            {
                "id": d["id"],
                "short": short(d["id"]),
                "state": d["state"],
                "colour": ROLLOUT_COLOURS.get(d["state"], "grey"),
                "state_label": d["state"].replace("_", " "),
                "approval": d["approval_state"].replace("_", " "),
                "bundle": f"{versions[d['bundle_id']]} ({d['bundle_id'][:8]})",
                "strategy": d["strategy"].replace("_", " "),
                "progress": _progress_text(progress),
                "ratio": progress["verified"] / progress["total"] if progress["total"] else 0,
                "created": when(d["created_at"]),
                "created_by": d["created_by"] or "",
                "kind": "rollback" if d["rollback_of"] else "",
            }
        )
    return {
        "project_id": str(project.id),
        "rows": rows,
        "total": page.total,
        "next_cursor": page.next_cursor,
    }


def _detail(slug: str, rollout_id: str, user_id: str) -> dict[str, Any]:
    project = projects.get_project(slug)
    try:
        ident = uuid.UUID(rollout_id)
    except ValueError:
        ident = uuid.UUID(int=0)
    rollout = engine.get_rollout(project.id, ident)
    principal = _principal(user_id)
    described = engine.describe(rollout)
    bundle = bundles.get_bundle(project.id, rollout.bundle_id)
    return {
        "project_id": str(project.id),
        "rollout": described,
        "bundle_version": bundle.version,
        "offered": list(catalog.offered_actions(rollout, principal.scopes, principal.user.id)),
    }


def _form_options(slug: str) -> dict[str, Any]:
    project = projects.get_project(slug)
    compiled = bundles.list_bundles(project.id, status="compiled", limit=100, cursor=None).items
    node_page = nodes.list_nodes(project.id, nodes.NodeFilter(), limit=2000, cursor=None)
    windows = [catalog.freeze_window_dict(row) for row in catalog.list_freeze_windows(project.id)]
    settings = project.to_dict()["settings"]
    return {
        "project_id": str(project.id),
        "bundles": {
            b.id: f"{b.version} · {b.id[:8]} · risk {b.risk_level or 'unknown'}" for b in compiled
        },
        "templates": {t.name: catalog.template_dict(t) for t in catalog.list_templates(project.id)},
        "groups": {
            g.name: f"{g.name} ({count} nodes)" for g, count in nodes.list_groups(project.id)
        },
        "nodes": {str(n.id): n.name for n in node_page.items},
        "active_freezes": [w for w in windows if w["active"]],
        "approvals_required": settings.get("approvals_required", 0),
        "standby_slot": settings.get("standby_slot"),
    }


def _plan(slug: str, request: dict[str, Any]) -> dict[str, Any]:
    project = projects.get_project(slug)
    result = engine.plan(project, request).to_dict()
    db.session.rollback()  # a dry run, exactly as the API's plan endpoint
    return result


# --- acting (the same domain calls as blueprints/rollouts.py, with the same actor) ----------


def _create(cookie: str | None, slug: str, request: dict[str, Any]) -> str:
    principal = acting_principal(cookie)
    principal.require(catalog.WRITE_SCOPE)
    if request.get("override_freeze"):
        catalog.require_freeze_override(principal.scopes)
    project = projects.get_project(slug)
    rollout = engine.create(principal.actor, project, request, user_id=principal.user.id)
    return str(rollout.id)


def _perform(
    cookie: str | None,
    slug: str,
    rollout_id: str,
    action: str,
    text: str,
    skip_unavailable: bool,
) -> str:
    # the session behind the page's cookie, re-checked in the action's own transaction
    principal = acting_principal(cookie)
    principal.require(catalog.WRITE_SCOPE)
    project = projects.get_project(slug)
    rollout = engine.get_rollout(project.id, uuid.UUID(rollout_id))
    actor, reason = principal.actor, (text.strip() or None)
    if action == "pause":
        done = engine.pause(actor, rollout.id, reason=reason)
    elif action == "resume":
        done = engine.resume(actor, rollout.id, reason=reason, skip_unavailable=skip_unavailable)
    elif action == "cancel":
        done = engine.cancel(actor, rollout.id, reason=reason)
    elif action == "promote":
        done = engine.promote(actor, rollout.id, reason=reason)
    elif action == "rollback":
        done = engine.rollback(actor, rollout.id, reason=reason)
    elif action == "approve":
        done = engine.approve(actor, rollout.id, user_id=principal.user.id, comment=reason)
    elif action == "reject":
        done = engine.reject(actor, rollout.id, user_id=principal.user.id, comment=text.strip())
    else:
        raise Invalid("Unknown action", fields={"action": [f"{action!r} is not an action"]})
    return str(done.state)


async def act_on_rollout(
    slug: str, rollout_id: str, action: str, text: str = "", *, skip_unavailable: bool = False
) -> bool:
    """What every action button ends in: re-check who is acting, call the engine, say what
    happened. Returns whether the action was taken."""
    limit = COMMENT_MAX if action in ("approve", "reject") else REASON_MAX
    if len(text) > limit:
        ui.notify(f"Please keep the text under {limit} characters.", type="negative")
        return False
    operator = await acting_operator()
    if operator is None:
        return False
    try:
        cookie = session_cookie(ui.context.client.request)
        await call(_perform, cookie, slug, rollout_id, action, text, skip_unavailable)
    except DomainError as exc:
        ui.notify(explain(exc), type="negative", multi_line=True)
        return False
    ui.notify(f"{ACTION_LOOK[action].outcome}: rollout {short(rollout_id)}", type="positive")
    return True


async def create_rollout(slug: str, request: dict[str, Any]) -> str | None:
    """What the form's Create button ends in; the new rollout's id, or None (and a notice)."""
    operator = await acting_operator()
    if operator is None:
        return None
    try:
        return await call(_create, session_cookie(ui.context.client.request), slug, request)
    except DomainError as exc:
        ui.notify(explain(exc), type="negative", multi_line=True)
        return None


# --- /rollouts -------------------------------------------------------------------------------

LIST_COLUMNS = [
    {"name": "short", "label": "Rollout", "field": "short", "align": "left"},
    {"name": "state", "label": "State", "field": "state", "align": "left"},
    {"name": "bundle", "label": "Bundle", "field": "bundle", "align": "left"},
    {"name": "strategy", "label": "Strategy", "field": "strategy", "align": "left"},
    {"name": "progress", "label": "Progress", "field": "progress", "align": "left"},
    {"name": "created", "label": "Created (UTC)", "field": "created", "align": "left"},
    {"name": "created_by", "label": "By", "field": "created_by", "align": "left"},
]


@ui.page("/rollouts")
async def rollouts_page(request: Request):
    started = await _page_start(request)
    if started is None:
        return RedirectResponse("/login?next=/rollouts")
    operator, (slug, slugs) = started
    with frame(operator, "Rollouts", slug, slugs):
        if slug is None:
            no_projects()
            return None
        view: dict[str, Any] = {"state": None, "cursors": [None]}
        data = await call(_list_page, slug, None, None)
        with ui.row().classes("w-full items-center justify-between"):
            states = {None: "every state", **{s: s.replace("_", " ") for s in ROLLOUT_COLOURS}}
            state_filter = (
                ui.select(states, value=None, label="State")
                .props("dense outlined")
                .classes("min-w-[12rem]")
                .mark("state-filter")
            )
            if operator.can(catalog.WRITE_SCOPE):
                ui.button(
                    "New rollout", icon="add", on_click=lambda: ui.navigate.to("/rollouts/new")
                ).props("unelevated").mark("new-rollout")
        table = (
            ui.table(columns=LIST_COLUMNS, rows=data["rows"], row_key="id")
            .classes("w-full")
            .props("flat bordered")
            .mark("rollouts-table")
        )
        table.add_slot(
            "body-cell-short",
            '<q-td :props="props"><a :href="\'/rollouts/\' + props.row.id" '
            'class="text-primary text-weight-medium" style="font-family: monospace">'
            "{{ props.value }}</a>"
            '<q-badge v-if="props.row.kind" color="grey-6" class="q-ml-sm" '
            ':label="props.row.kind" /></q-td>',
        )
        table.add_slot(
            "body-cell-state",
            '<q-td :props="props">'
            '<q-badge :color="props.row.colour" :label="props.row.state_label" />'
            '<div v-if="props.row.approval != \'not required\'" class="text-caption '
            'text-grey-7">{{ props.row.approval }}</div></q-td>',
        )
        table.add_slot(
            "body-cell-progress",
            '<q-td :props="props" style="min-width: 10rem"><div>{{ props.value }}</div>'
            '<q-linear-progress :value="props.row.ratio" color="positive" track-color="grey-3" '
            'size="6px" rounded /></q-td>',
        )
        table.on("rowClick", lambda e: ui.navigate.to(f"/rollouts/{e.args[1]['id']}"))
        empty = ui.label("No rollouts yet.").classes("text-grey-7").mark("no-rollouts")
        with ui.row().classes("w-full items-center justify-end gap-2"):
            position = ui.label("").classes("text-grey-7").mark("rollouts-position")
            newer = ui.button("Newer", icon="chevron_left").props("flat dense").mark("newer")
            older = ui.button("Older").props("flat dense icon-right=chevron_right").mark("older")

        def show(fresh: dict[str, Any]) -> None:
            table.rows = fresh["rows"]
            table.update()
            page = len(view["cursors"]) - 1
            first = page * PAGE_SIZE + 1
            last = page * PAGE_SIZE + len(fresh["rows"])
            position.set_text(f"{first}–{last} of {fresh['total']}" if fresh["rows"] else "")
            empty.set_visibility(fresh["total"] == 0)
            newer.set_visibility(page > 0)
            older.set_visibility(fresh["next_cursor"] is not None)
            view["next_cursor"] = fresh["next_cursor"]

        async def reload() -> None:
            show(await call(_list_page, slug, view["state"], view["cursors"][-1]))

        async def go_older() -> None:
            if view.get("next_cursor"):
                view["cursors"].append(view["next_cursor"])
                await reload()

        async def go_newer() -> None:
            if len(view["cursors"]) > 1:
                view["cursors"].pop()
                await reload()

        async def filter_state(event: Any) -> None:
            view["state"], view["cursors"] = event.value, [None]
            await reload()

        older.on_click(go_older)
        newer.on_click(go_newer)
        state_filter.on_value_change(filter_state)
        show(data)
        live.follow(live.for_project(data["project_id"], "rollout", "node"), reload)
    return None


# --- /rollouts/new ---------------------------------------------------------------------------


def _labels(text: str) -> dict[str, str] | None:
    """`env=prod, region=eu` → {"env": "prod", "region": "eu"}; None when a pair has no `=`."""
    pairs: dict[str, str] = {}
    for part in (p.strip() for p in text.replace("\n", ",").split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            return None
        pairs[key.strip()] = value.strip()
    return pairs


def _whole(value: float | None) -> int | float | None:
    """A number input's value: whole numbers as ints (the domain wants integer counts)."""
    if value is None:
        return None
    return int(value) if float(value).is_integer() else value


def _numbers(text: str) -> list[float] | str:
    """`5, 25, 100` → [5, 25, 100]; the text itself when it is not a list of numbers."""
    try:
        return [float(p) for p in text.replace(" ", "").split(",") if p]
    except ValueError:
        return text


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' if count != 1 else ''}"


SELECTOR_KINDS = {
    "all": "All nodes",
    "labels": "By labels",
    "node_ids": "Chosen nodes",
    "group": "A group",
}
STRATEGY_CHOICES = {
    "rolling": "rolling (batches)",
    "canary": "canary (growing percentages)",
    "blue_green": "blue-green (standby set, then promote)",
    "all_at_once": "all at once",
}
GATE_FIELDS = {
    "max_error_rate": ("Max error rate (%)", "gate-error-rate"),
    "max_latency_ms": ("Max p99 latency (ms)", "gate-latency"),
    "max_cpu_percent": ("Max CPU (%)", "gate-cpu"),
    "max_memory_percent": ("Max memory (%)", "gate-memory"),
    "max_error_rate_vs_baseline": ("Max error rate vs baseline (×)", "gate-baseline"),
}


FieldT = TypeVar("FieldT", ui.input, ui.number)


def _field(element: FieldT, marker: str) -> FieldT:
    """A form input wide enough for its label, its default shown as the placeholder."""
    return element.props("stack-label").classes("w-52").mark(marker)


class RolloutForm:
    """The creation form's fields, and the request they describe.

    Blank fields are left out of the request, so the domain applies its defaults (or the
    template's); the form parses what it shows and validates nothing the domain validates.
    """

    def __init__(
        self, options: dict[str, Any], *, may_override: bool, changed: Callable[[], None]
    ) -> None:
        self.options = options
        with ui.card().classes("w-full"):
            ui.label("What and where").classes("text-h6")
            with ui.row().classes("w-full gap-4 items-start"):
                templates = {None: "none", **{n: n for n in options["templates"]}}
                self.template = ui.select(templates, value=None, label="Template")
                self.template.classes("min-w-[12rem]").mark("template")
                first = next(iter(options["bundles"]))
                self.bundle = ui.select(options["bundles"], value=first, label="Bundle (compiled)")
                self.bundle.classes("min-w-[22rem]").mark("bundle")
            self.kind = ui.radio(SELECTOR_KINDS, value="all").props("inline")
            self.kind.mark("selector-kind")
            self.labels = ui.input("Labels", placeholder="env=prod, region=eu")
            self.labels.classes("w-full").mark("selector-labels")
            self.nodes = ui.select(
                options["nodes"], value=[], multiple=True, with_input=True, label="Nodes"
            )
            self.nodes.props("use-chips").classes("w-full").mark("selector-nodes")
            self.group = ui.select(options["groups"], value=None, label="Group")
            self.group.classes("min-w-[16rem]").mark("selector-group")
            self.labels.bind_visibility_from(self.kind, "value", value="labels")
            self.nodes.bind_visibility_from(self.kind, "value", value="node_ids")
            self.group.bind_visibility_from(self.kind, "value", value="group")
            with ui.row().classes("items-center gap-2"):
                ui.icon("dns", color="primary")
                self.count = ui.label("…").classes("text-subtitle1").mark("match-count")

        with ui.card().classes("w-full"):
            ui.label("How").classes("text-h6")
            with ui.row().classes("w-full gap-4 items-start"):
                self.strategy = ui.select(STRATEGY_CHOICES, value="rolling", label="Strategy")
                self.strategy.classes("min-w-[18rem]").mark("strategy")
                self.batch_size = _field(
                    ui.number("Batch size (nodes)", placeholder="1", min=1, precision=0),
                    "batch-size",
                )
                self.batch_percent = _field(
                    ui.number("Or batch (% of targets)", min=0, max=100), "batch-percent"
                )
                self.canary_steps = _field(
                    ui.input("Canary steps (cumulative %)", placeholder="5, 25, 50, 100"),
                    "canary-steps",
                )
                standby = str(options["standby_slot"] or "green")
                self.standby_slot = _field(
                    ui.input("Standby slot label", placeholder=standby), "standby-slot"
                )
                for field, strategy in (
                    (self.batch_size, "rolling"),
                    (self.batch_percent, "rolling"),
                    (self.canary_steps, "canary"),
                    (self.standby_slot, "blue_green"),
                ):
                    field.bind_visibility_from(self.strategy, "value", value=strategy)
            with ui.row().classes("w-full gap-4 items-start"):
                self.max_unavailable = _field(
                    ui.number("Max unavailable (nodes)", placeholder="0", min=0, precision=0),
                    "max-unavailable",
                )
                self.max_failures = _field(
                    ui.input("Failure budget (count or %)", placeholder="0, e.g. 2 or 10%"),
                    "max-failures",
                )
                self.bake_s = _field(
                    ui.number("Bake time (s)", placeholder="0 (canary: 60)", min=0, precision=0),
                    "bake",
                )
                self.deadline_s = _field(
                    ui.number("Step deadline (s)", placeholder="600", min=1, precision=0),
                    "deadline",
                )
                self.on_failure = ui.select(
                    {"pause": "pause", "rollback": "roll back automatically"},
                    value="pause",
                    label="On failure",
                )
                self.on_failure.classes("min-w-[12rem]").mark("on-failure")
            ui.label("Health gates: every node of a step, judged on heartbeats after it activated")
            with ui.row().classes("w-full gap-4 items-center"):
                self.healthy = ui.switch("Healthy heartbeat", value=True).mark("gate-healthy")
                self.gates = {
                    name: _field(ui.number(label, placeholder="not used", min=0), marker)
                    for name, (label, marker) in GATE_FIELDS.items()
                }
                self.gates["max_error_rate_vs_baseline"].bind_visibility_from(
                    self.strategy, "value", value="canary"
                )

        with ui.card().classes("w-full"):
            ui.label("When").classes("text-h6")
            with ui.row().classes("w-full gap-4 items-center"):
                self.start_at = ui.input("Start at (UTC, empty: now)")
                self.start_at.props("type=datetime-local stack-label").mark("start-at")
                self.start = ui.switch("Start when created", value=True).mark("start")
                self.skip_busy = ui.switch("Leave out nodes busy in another rollout")
                self.skip_busy.mark("skip-busy")
            self.override: ui.input | None = None
            if may_override:
                self.override = ui.input(
                    "Override freeze windows: reason (admins; empty: respect them)"
                )
                self.override.classes("w-full").mark("override-freeze")
            if options["approvals_required"]:
                ui.label(
                    f"This project requires {options['approvals_required']} approval(s) before a "
                    "rollout starts (high-risk bundles may need more)."
                ).classes("text-grey-8").mark("approvals-note")

        for element in self._fields():
            element.on_value_change(lambda _: changed())
        self.strategy.on_value_change(self._leave_template)
        self.template.on_value_change(lambda event: self.fill(event.value))

    def _fields(self) -> list[Any]:
        return [
            self.bundle,
            self.kind,
            self.labels,
            self.nodes,
            self.group,
            self.strategy,
            self.batch_size,
            self.batch_percent,
            self.canary_steps,
            self.standby_slot,
            self.max_unavailable,
            self.max_failures,
            self.bake_s,
            self.deadline_s,
            self.on_failure,
            self.healthy,
            *self.gates.values(),
            self.start_at,
            self.start,
            self.skip_busy,
        ]

    def _selector(self) -> dict[str, Any] | str:
        kind = self.kind.value
        if kind == "labels":
            pairs = _labels(self.labels.value or "")
            return {"labels": pairs} if pairs else "Labels: give key=value pairs, e.g. env=prod."
        if kind == "node_ids":
            return {"node_ids": list(self.nodes.value)} if self.nodes.value else "Choose nodes."
        if kind == "group":
            return {"group": self.group.value} if self.group.value else "Choose a group."
        return {"all": True}

    def _config(self) -> dict[str, Any]:
        strategy = self.strategy.value
        config: dict[str, Any] = {
            "strategy": strategy,
            "max_unavailable": _whole(self.max_unavailable.value),
            "bake_s": _whole(self.bake_s.value),
            "progress_deadline_s": _whole(self.deadline_s.value),
            "on_failure": self.on_failure.value,
        }
        failures = (self.max_failures.value or "").strip()
        if failures:
            config["max_failures"] = int(failures) if failures.isdigit() else failures
        if strategy == "rolling":
            config["batch_size"] = _whole(self.batch_size.value)
            config["batch_percent"] = self.batch_percent.value
        elif strategy == "canary" and (self.canary_steps.value or "").strip():
            config["canary_steps"] = _numbers(self.canary_steps.value)
        elif strategy == "blue_green" and (self.standby_slot.value or "").strip():
            config["standby_slot"] = self.standby_slot.value.strip()
        gates: dict[str, Any] = {"heartbeat_healthy": bool(self.healthy.value)}
        for name, field in self.gates.items():
            if field.visible and field.value is not None:
                gates[name] = field.value
        config["health_gates"] = gates
        return {key: value for key, value in config.items() if value is not None}

    def request(self) -> dict[str, Any] | str:
        """The request `engine.plan` and `engine.create` take (what the API's `_request`
        builds from its JSON body), or a sentence saying which field cannot be read."""
        selector = self._selector()
        if isinstance(selector, str):
            return selector
        scheduled_at = None
        if self.start_at.value:
            try:
                scheduled_at = datetime.fromisoformat(self.start_at.value).replace(tzinfo=UTC)
            except ValueError:
                return "Start at: not a date and time."
        override = (self.override.value or "").strip() if self.override else ""
        return {
            "bundle_id": self.bundle.value,
            "target_selector": selector,
            "template": self.template.value,
            "override_freeze": override or None,
            "config": self._config(),
            "scheduled_at": scheduled_at,
            "start": bool(self.start.value),
            "skip_busy_nodes": bool(self.skip_busy.value),
        }

    def fill(self, name: str | None) -> None:
        """Prefill every field from the template `name` (its stored, complete settings)."""
        template = self.options["templates"].get(name)
        if template is None:
            return
        config = template["config"]
        self.strategy.value = config.get("strategy", "rolling")
        self.batch_size.value = config.get("batch_size")
        self.batch_percent.value = config.get("batch_percent")
        self.canary_steps.value = ", ".join(f"{p:g}" for p in config.get("canary_steps", []))
        self.standby_slot.value = config.get("standby_slot") or ""
        self.max_unavailable.value = config.get("max_unavailable")
        failures = config.get("max_failures")
        self.max_failures.value = "" if failures is None else str(failures)
        self.bake_s.value = config.get("bake_s")
        self.deadline_s.value = config.get("progress_deadline_s")
        self.on_failure.value = config.get("on_failure", "pause")
        gates = config.get("health_gates") or {}
        self.healthy.value = bool(gates.get("heartbeat_healthy", True))
        for gate, field in self.gates.items():
            field.value = gates.get(gate)
        selector = template["target_selector"] or {}
        if "labels" in selector:
            self.kind.value = "labels"
            self.labels.value = ", ".join(f"{k}={v}" for k, v in selector["labels"].items())
        elif "node_ids" in selector:
            self.kind.value = "node_ids"
            self.nodes.value = [n for n in selector["node_ids"] if n in self.options["nodes"]]
        elif "group" in selector:
            self.kind.value = "group"
            self.group.value = selector["group"]
        else:
            self.kind.value = "all"

    def _leave_template(self, event: Any) -> None:
        # A template's settings belong to its strategy (the domain refuses, say, a batch size
        # with canary), so choosing another strategy leaves the template.
        picked = self.options["templates"].get(self.template.value)
        if picked is not None and picked["config"].get("strategy") != event.value:
            self.template.value = None


def _show_plan(preview: ui.column, result: dict[str, Any]) -> None:
    """The dry run's steps with their nodes, and the rollouts its targets conflict with."""
    preview.clear()
    with preview:
        if result["conflicts"]:
            with ui.row().classes("items-center gap-2 text-negative").mark("conflicts"):
                ui.icon("block")
                ui.label("Some targets are already part of")
                for other in result["conflicts"]:
                    ui.link(f"rollout {short(other)}", f"/rollouts/{other}")
                ui.label("— leave busy nodes out, or wait for it to finish.")
        if not result["steps"]:
            ui.label("No node would be part of this rollout.").classes("text-warning")
        for step in result["steps"]:
            names = [n["name"] or n["node_id"][:8] for n in step["nodes"]]
            shown = ", ".join(names[:PLAN_NAMES_SHOWN])
            if len(names) > PLAN_NAMES_SHOWN:
                shown += f", … and {len(names) - PLAN_NAMES_SHOWN} more"
            with ui.row().classes("w-full items-start gap-3 no-wrap"):
                ui.badge(f"Step {step['index'] + 1}", color="primary").classes("q-mt-xs")
                with ui.column().classes("gap-0"):
                    ui.label(f"{step['kind']} · {_plural(len(names), 'node')}").classes(
                        "text-weight-medium"
                    )
                    ui.label(shown).classes("text-grey-8").mark(f"plan-step-{step['index']}")


@ui.page("/rollouts/new")
async def new_rollout_page(request: Request, template: str | None = None):
    started = await _page_start(request)
    if started is None:
        return RedirectResponse("/login?next=/rollouts/new")
    operator, (slug, slugs) = started
    with frame(operator, "New rollout", slug, slugs):
        if slug is None:
            no_projects()
            return None
        options = await call(_form_options, slug)
        may_create = operator.can(catalog.WRITE_SCOPE)
        may_override = catalog.FREEZE_OVERRIDE_SCOPE in operator.scopes
        if not may_create:
            ui.label(
                "Your role can preview plans but not start rollouts (an operator or admin can)."
            ).classes("text-grey-8").mark("read-only-note")
        if not options["bundles"]:
            ui.label(
                "There is no compiled bundle to roll out yet: submit a configuration first "
                f"(POST /api/v1/projects/{slug}/bundles)."
            ).classes("text-warning").mark("no-bundles")
            return None
        for window in options["active_freezes"]:
            with ui.card().classes("w-full bg-amber-1").mark("freeze-active"):
                ui.label(
                    f"Freeze window “{window['name']}” is active until "
                    f"{when(window['active_until'])} UTC: a rollout created now pauses at once "
                    "and waits for the window to end"
                    + (", unless you override it below." if may_override else ".")
                )

        form = RolloutForm(options, may_override=may_override, changed=lambda: replan())
        with ui.card().classes("w-full"):
            with ui.row().classes("w-full items-center justify-between"):
                ui.label("Plan preview").classes("text-h6")
                plan_state = ui.label("").classes("text-grey-7").mark("plan-state")
            preview = ui.column().classes("w-full gap-2").mark("plan-preview")
        with ui.row().classes("w-full justify-end gap-2"):
            ui.button("Back to rollouts", on_click=lambda: ui.navigate.to("/rollouts")).props(
                "flat"
            )
            create = ui.button("Create rollout", icon="rocket_launch").props("unelevated")
            create.mark("create").set_visibility(may_create)

        async def refresh_plan() -> None:
            built = form.request()
            if isinstance(built, str):
                form.count.set_text(built)
                plan_state.set_text("")
                preview.clear()
                return
            try:
                result = await call(_plan, slug, built)
            except DomainError as exc:
                form.count.set_text(explain(exc))
                plan_state.set_text("cannot plan")
                preview.clear()
                return
            text = f"{_plural(result['total'], 'node')} match"
            if result["skipped_busy"]:
                text += f" ({len(result['skipped_busy'])} busy elsewhere left out)"
            elif result["conflicts"]:
                text += ", some of them busy in another rollout (see the plan)"
            form.count.set_text(text)
            plan_state.set_text(_plural(len(result["steps"]), "step"))
            _show_plan(preview, result)

        async def submit() -> None:
            built = form.request()
            if isinstance(built, str):
                ui.notify(built, type="negative")
                return
            create.props("loading")
            try:
                created = await create_rollout(slug, built)
            finally:
                create.props(remove="loading")
            if created is not None:
                ui.notify(f"Rollout {short(created)} created", type="positive")
                ui.navigate.to(f"/rollouts/{created}")

        replan = live.Coalescer(refresh_plan, interval_s=PLAN_DEBOUNCE_S)
        create.on_click(submit)
        if template in options["templates"]:
            form.template.value = template
        await refresh_plan()
        live.follow(live.for_project(options["project_id"], "rollout", "node"), refresh_plan)
    return None


# --- /rollouts/{id} --------------------------------------------------------------------------


def _node_grid(steps: list[dict[str, Any]]) -> str:
    """Every target node as a cell coloured by its delivery state, step by step."""
    parts = []
    for step in steps:
        nodes_ = step["nodes"]
        named = len(nodes_) <= GRID_NAMES_UP_TO
        parts.append(
            '<div style="margin: 6px 0 2px" class="text-caption text-grey-8">'
            f"Step {step['index'] + 1} · {html.escape(step['kind'])} · "
            f"{html.escape(step['state'])}</div>"
            '<div style="display: flex; flex-wrap: wrap; gap: 4px">'
        )
        for node in nodes_:
            name = html.escape(node["name"] or node["node_id"][:8])
            state = html.escape(node["state"])
            reason = f" — {html.escape(node['reason'])}" if node.get("reason") else ""
            colour = NODE_COLOURS.get(node["state"], "bg-grey-5 text-white")
            style = (
                "padding: 2px 8px; border-radius: 4px; font-size: 12px; font-family: monospace"
                if named
                else "width: 12px; height: 12px; border-radius: 2px"
            )
            parts.append(
                f'<span class="{colour}" style="{style}" data-state="{state}" '
                f'title="{name}: {state}{reason}">{name if named else ""}</span>'
            )
        parts.append("</div>")
    return "".join(parts)


def _gate_line(name: str, value: Any) -> str:
    label = GATE_LABELS.get(name, name + " {}")
    if name == "heartbeat_healthy":
        return label if value else "heartbeat health not checked"
    return label.format(f"{value:g}" if isinstance(value, int | float) else value)


def _check_text(check: dict[str, Any]) -> str:
    observed = check.get("observed")
    shown = f"{observed:g}" if isinstance(observed, int | float) else str(observed)
    text = f"{check['gate']}: {shown}"
    if check.get("threshold") is not None and not isinstance(check["threshold"], bool):
        text += f" (limit {check['threshold']:g})"
    if not check.get("passed"):
        text += f" ✗ {str(check.get('problem') or 'failed').replace('_', ' ')}"
    return text


def _why(rollout: dict[str, Any]) -> tuple[str, str] | None:
    """(headline, explanation) of what the rollout waits for or why it stopped."""
    state, reason = rollout["state"], rollout["reason"]
    message = (rollout["details"] or {}).get("message") or ""
    if state == "pending":
        if rollout["approval_state"] == "pending_approval":
            return (
                "Waiting for approval",
                f"{rollout['approvals_required']} approval(s) needed before it starts.",
            )
        if rollout["approval_state"] == "rejected":
            return ("Rejected", "This rollout was rejected and will not start.")
        if rollout["scheduled_at"]:
            return ("Scheduled", f"Starts at {when(rollout['scheduled_at'])} UTC.")
        return ("Not started", "Created without starting; resume it to start.")
    if not reason:
        return None
    headline = reason.replace("_", " ").capitalize()
    return (headline, message)


def _waiting_text(step: dict[str, Any]) -> str:
    states: dict[str, int] = {}
    for node in step["nodes"]:
        states[node["state"]] = states.get(node["state"], 0) + 1
    done = states.get("verified", 0)
    rest = ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in states.items() if s != "verified")
    return (
        f"Step {step['index'] + 1} is deploying: {done} of {len(step['nodes'])} node(s) "
        f"verified{'; ' + rest if rest else ''}. Gates are evaluated once every available "
        "node has verified."
    )


@ui.page("/rollouts/{rollout_id}")
async def rollout_page(request: Request, rollout_id: str):
    started = await _page_start(request)
    if started is None:
        return RedirectResponse(f"/login?next=/rollouts/{rollout_id}")
    operator, (slug, slugs) = started
    with frame(operator, f"Rollout {short(rollout_id)}", slug, slugs):
        if slug is None:
            no_projects()
            return None
        try:
            data = await call(_detail, slug, rollout_id, operator.id)
        except NotFound:
            ui.label(f"There is no rollout {rollout_id} in project {slug}.").classes(
                "text-negative"
            ).mark("rollout-missing")
            ui.link("All rollouts", "/rollouts")
            return None
        except DomainError as exc:
            ui.label(explain(exc)).classes("text-negative").mark("rollout-missing")
            return None

        async def reload() -> None:
            nonlocal data
            try:
                data = await call(_detail, slug, rollout_id, operator.id)
            except DomainError:
                return  # deleted with its project: the next navigation says so
            body.refresh()
            poll.active = _is_active(data)

        async def act(action: str, text: str, skip_unavailable: bool) -> bool:
            done = await act_on_rollout(
                slug, rollout_id, action, text, skip_unavailable=skip_unavailable
            )
            if done:
                await reload()
            return done

        ask = _action_dialog(lambda: data["rollout"], act)

        @ui.refreshable
        def body() -> None:
            rollout = data["rollout"]
            _summary_card(rollout, data["bundle_version"], data["offered"], ask)
            _why_card(rollout)
            with ui.row().classes("w-full gap-4 items-stretch no-wrap"):
                _steps_card(rollout["steps"])
                _nodes_card(rollout["steps"])
            _gates_card(rollout)
            _settings(rollout["config"])

        body()
        coalesced = live.follow(live.for_project(data["project_id"], "rollout", "node"), reload)
        poll = ui.timer(ACTIVE_POLL_S, coalesced, active=_is_active(data))
    return None


def _action_dialog(
    current: Callable[[], dict[str, Any]],
    act: Callable[[str, str, bool], Awaitable[bool]],
) -> Callable[[str], None]:
    """One confirmation dialog for every action; returns `ask(action)`, which opens it."""
    pending: dict[str, str | None] = {"action": None}
    with ui.dialog() as dialog, ui.card().classes("w-[32rem]").mark("action-dialog"):
        question = ui.label("").classes("text-body1").mark("action-question")
        text = ui.input("").classes("w-full").mark("action-text")
        skip = ui.checkbox("Go on without the nodes that are offline").mark("action-skip")
        with ui.row().classes("w-full justify-end gap-2"):
            ui.button("Keep as is", on_click=dialog.close).props("flat").mark("action-dismiss")
            confirm = ui.button("Confirm").props("unelevated").mark("action-confirm")

    def ask(action: str) -> None:
        look, rollout = ACTION_LOOK[action], current()
        pending["action"] = action
        question.set_text(look.question)
        text.set_label(look.text_label)
        text.value = ""
        skip.value = rollout["reason"] == "max_unavailable_exceeded"
        skip.set_visibility(action == "resume" and rollout["state"] == "paused")
        confirm.set_text(look.label)
        confirm.props(f"color={look.colour}")
        dialog.open()

    async def confirmed() -> None:
        action = pending["action"]
        if action is not None and await act(action, text.value or "", bool(skip.value)):
            pending["action"] = None
            dialog.close()

    confirm.on_click(confirmed)
    return ask


def _summary_card(
    rollout: dict[str, Any], version: str, offered: list[str], ask: Callable[[str], None]
) -> None:
    progress = rollout["progress"]
    with ui.card().classes("w-full"):
        with ui.row().classes("w-full items-center justify-between"):
            with ui.row().classes("items-center gap-3"):
                _state_badge(rollout["state"]).mark("rollout-state")
                if rollout["approval_state"] != "not_required":
                    approval = rollout["approval_state"].replace("_", " ")
                    ui.badge(approval, color="grey-7").mark("approval-state")
                ui.label(f"{version} · {rollout['strategy'].replace('_', ' ')}").classes(
                    "text-h6"
                ).mark("rollout-summary")
            with ui.row().classes("gap-2").mark("rollout-actions"):
                for action in catalog.OPERATOR_ACTIONS:
                    if action not in offered:
                        continue
                    look = ACTION_LOOK[action]
                    label = (
                        "Start now"
                        if action == "resume" and rollout["state"] == "pending"
                        else look.label
                    )
                    ui.button(
                        label, icon=look.icon, color=look.colour, on_click=partial(ask, action)
                    ).props("unelevated dense").classes("px-3").mark(f"action-{action}")
        with ui.row().classes("w-full gap-x-6 gap-y-1 text-grey-8"):
            ui.label(f"Bundle {rollout['bundle_id'][:12]}").style("font-family: monospace")
            ui.label(f"Targets {_selector_text(rollout['target_selector'])}")
            ui.label(f"Created {when(rollout['created_at'])} by {rollout['created_by']}")
            if rollout["started_at"]:
                ui.label(f"Started {when(rollout['started_at'])}")
            if rollout["finished_at"]:
                ui.label(f"Finished {when(rollout['finished_at'])}")
        with ui.row().classes("w-full items-center gap-3"):
            ratio = progress["verified"] / progress["total"] if progress["total"] else 0
            ui.linear_progress(ratio, show_value=False, size="10px", color="positive").props(
                "rounded track-color=grey-3"
            ).classes("flex-1")
            ui.label(_progress_text(progress)).mark("rollout-progress")
        links = []
        if rollout["rollback_of"]:
            links.append(("Rollback of", rollout["rollback_of"]))
        if (rollout["details"] or {}).get("rollback_rollout_id"):
            links.append(("Rolled back by", rollout["details"]["rollback_rollout_id"]))
        for label, other in links:
            with ui.row().classes("items-center gap-2"):
                ui.label(label)
                ui.link(f"rollout {short(other)}", f"/rollouts/{other}").mark("linked-rollout")


def _why_card(rollout: dict[str, Any]) -> None:
    """What the rollout waits for, or why it stopped: its reason, message and the details."""
    why = _why(rollout)
    if why is None:
        return
    tone = {"paused": "bg-amber-1", "failed": "bg-red-1", "pending": "bg-blue-grey-1"}
    details = rollout["details"] or {}
    extra = {
        k: v
        for k, v in details.items()
        if k not in ("message", "rollback_rollout_id", "step_index")
    }
    if "step_index" in details:
        extra = {"step": details["step_index"] + 1, **extra}
    with ui.card().classes(f"w-full {tone.get(rollout['state'], 'bg-grey-1')}").mark("rollout-why"):
        ui.label(why[0]).classes("text-subtitle1 text-weight-medium").mark("rollout-why-headline")
        if why[1]:
            ui.label(why[1]).classes("text-body2").mark("rollout-why-message")
        if extra:
            ui.label(
                " · ".join(f"{k.replace('_', ' ')}: {_plain(v)}" for k, v in extra.items())
            ).classes("text-caption text-grey-8").mark("rollout-details")


def _steps_card(steps: list[dict[str, Any]]) -> None:
    with ui.card().classes("w-1/3 min-w-[16rem]"):
        ui.label("Steps").classes("text-h6")
        with ui.timeline(side="right", layout="dense").classes("w-full").mark("steps"):
            for step in steps:
                with (
                    ui.timeline_entry(
                        title=f"Step {step['index'] + 1} · {step['kind']}",
                        subtitle=step["state"],
                        color=STEP_COLOURS.get(step["state"], "grey"),
                        icon=STEP_ICONS.get(step["state"]),
                    ).mark(f"step-{step['index']}"),
                    ui.column().classes("gap-0"),
                ):
                    for line in _step_lines(step):
                        ui.label(line).classes("text-body2 text-grey-9")


def _nodes_card(steps: list[dict[str, Any]]) -> None:
    counts: dict[str, int] = {}
    for step in steps:
        for node in step["nodes"]:
            counts[node["state"]] = counts.get(node["state"], 0) + 1
    with ui.card().classes("flex-1"):
        with ui.row().classes("w-full items-center justify-between"):
            ui.label("Nodes").classes("text-h6")
            with ui.row().classes("gap-1").mark("node-legend"):
                for state, colour in NODE_COLOURS.items():
                    if counts.get(state):
                        ui.html(
                            f'<span class="{colour}" style="padding: 1px 6px; '
                            f'border-radius: 4px; font-size: 12px">'
                            f"{state.replace('_', ' ')} {counts[state]}</span>"
                        )
        ui.html(_node_grid(steps)).classes("w-full").mark("node-grid")
        problems = _node_problems(steps)
        if problems:
            with ui.column().classes("gap-0 q-mt-sm").mark("node-problems"):
                for line in problems[:PROBLEMS_SHOWN]:
                    ui.label(line).classes("text-body2 text-negative")
                if len(problems) > PROBLEMS_SHOWN:
                    more = len(problems) - PROBLEMS_SHOWN
                    ui.label(f"… and {more} more").classes("text-grey-7")


def _settings(config: dict[str, Any]) -> None:
    rows = [
        {"name": k.replace("_", " "), "value": _plain(v)}
        for k, v in config.items()
        if k != "health_gates"
    ]
    gates = config.get("health_gates") or {}
    rows.append(
        {"name": "health gates", "value": "; ".join(_gate_line(k, v) for k, v in gates.items())}
    )
    with ui.expansion("Settings", icon="tune").classes("w-full").mark("settings"):
        ui.table(
            columns=[
                {"name": "name", "label": "Setting", "field": "name", "align": "left"},
                {"name": "value", "label": "Value", "field": "value", "align": "left"},
            ],
            rows=rows,
            row_key="name",
        ).props("flat dense").classes("w-full")


def _step_lines(step: dict[str, Any]) -> list[str]:
    count = len(step["nodes"])
    lines = [f"{count} node{'s' if count != 1 else ''}"]
    for key, label in (
        ("started_at", "started"),
        ("baking_since", "baking since"),
        ("finished_at", "finished"),
    ):
        if step[key]:
            lines.append(f"{label} {when(step[key])}")
    if step["reason"]:
        lines.append(f"reason: {step['reason'].replace('_', ' ')}")
    return lines


def _node_problems(steps: list[dict[str, Any]]) -> list[str]:
    """Why nodes failed or were left out, as their reports and the engine said."""
    return [
        f"{node['name'] or node['node_id'][:8]} {node['state'].replace('_', ' ')}: {node['reason']}"
        for step in steps
        for node in step["nodes"]
        if node["reason"] and node["state"] in ("failed", "rolled_back", "skipped")
    ]


def _is_active(data: dict[str, Any]) -> bool:
    return data["rollout"]["state"] in ("running", "paused", "rolling_back")


def _selector_text(selector: dict[str, Any]) -> str:
    if selector.get("all"):
        return "all nodes"
    if "labels" in selector:
        return "labels " + ", ".join(f"{k}={v}" for k, v in selector["labels"].items())
    if "node_ids" in selector:
        return f"{len(selector['node_ids'])} chosen node(s)"
    if "group" in selector:
        group = selector["group"]
        if isinstance(group, dict):
            return "group " + ", ".join(f"{k}={v}" for k, v in group.get("labels", {}).items())
        return f"group {group}"
    return str(selector)


def _plain(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(_plain(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={_plain(v)}" for k, v in value.items())
    if value is None:
        return "—"
    return str(value)


def _gates_card(rollout: dict[str, Any]) -> None:
    """The gate verdict of the active step (else the latest one stored), with its inputs."""
    steps = rollout["steps"]
    active = next((s for s in steps if s["state"] in ("running", "baking")), None)
    judged = active if active and active["gates"] else None
    if judged is None:
        judged = next((s for s in reversed(steps) if s["gates"]), None)
    with ui.card().classes("w-full").mark("gates"):
        ui.label("Health gates").classes("text-h6")
        gates = (rollout["config"] or {}).get("health_gates") or {}
        ui.label("Required on every node: " + "; ".join(_gate_line(k, v) for k, v in gates.items()))
        if active is not None and active["state"] == "running" and not active["gates"]:
            ui.label(_waiting_text(active)).classes("text-grey-8").mark("gates-waiting")
        if judged is None:
            if active is None:
                ui.label("No step has been judged yet.").classes("text-grey-7")
            return
        verdict = judged["gates"]
        with ui.row().classes("items-center gap-3"):
            ui.badge(verdict["state"], color=VERDICT_COLOURS.get(verdict["state"], "grey")).mark(
                "verdict-state"
            )
            ui.label(
                f"Step {judged['index'] + 1}, evaluated {when(verdict['evaluated_at'])} UTC; "
                f"heartbeats older than {verdict['data_timeout_s']} s do not count."
            ).classes("text-grey-8")
        if verdict.get("problem"):
            ui.label(verdict["problem"].replace("_", " ")).classes("text-negative")
        baseline = verdict.get("baseline")
        if baseline and baseline.get("applicable"):
            rate = baseline.get("error_rate")
            rate_text = "no data" if rate is None else f"{rate:g}%"
            allowed = baseline.get("allowed_error_rate")
            ui.label(
                f"Baseline: {baseline['sampled_node_count']} of {baseline['node_count']} "
                f"untouched node(s) sampled, error rate {rate_text}; "
                f"canary may reach {'—' if allowed is None else f'{allowed:g}%'}."
            ).classes("text-grey-8").mark("verdict-baseline")
        rows = []
        for node in verdict["nodes"]:
            age = node.get("heartbeat_age_s")
            rows.append(
                {
                    "name": node["name"],
                    "result": node["result"],
                    "data": node["data"].replace("_", " "),
                    "age": "—" if age is None else f"{age:.0f} s",
                    "checks": "; ".join(_check_text(c) for c in node["checks"]) or "—",
                }
            )
        for node in verdict.get("excluded") or []:
            rows.append(
                {
                    "name": node["name"],
                    "result": "excluded",
                    "data": node["state"].replace("_", " "),
                    "age": "—",
                    "checks": "not judged (left the step)",
                }
            )
        table = (
            ui.table(
                columns=[
                    {"name": "name", "label": "Node", "field": "name", "align": "left"},
                    {"name": "result", "label": "Result", "field": "result", "align": "left"},
                    {"name": "data", "label": "Data", "field": "data", "align": "left"},
                    {"name": "age", "label": "Heartbeat age", "field": "age", "align": "left"},
                    {"name": "checks", "label": "Checks", "field": "checks", "align": "left"},
                ],
                rows=rows,
                row_key="name",
                pagination=25 if len(rows) > 25 else None,
            )
            .props("flat dense")
            .classes("w-full")
            .mark("verdict-nodes")
        )
        table.add_slot(
            "body-cell-result",
            '<q-td :props="props"><q-badge :color="{passed: \'positive\', failed: '
            "'negative', waiting: 'warning'}[props.value] || 'grey-6'\" "
            ':label="props.value" /></q-td>',
        )
