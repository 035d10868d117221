"""The settings page: the project's settings and registration token, API keys, users, freeze
windows and rollout templates.

Every change calls the same domain function as the REST API, as the user behind the session
cookie, so it is checked and audited exactly as the API call would be: `projects.update_project`
and `rotate_registration_token` (`projects:admin`), `accounts.create_api_key` and
`revoke_api_key` (`api_keys:admin`), `create_user` and `update_user` (`require_user_admin`),
`catalog.add_freeze_window` and `delete_freeze_window` (`FREEZE_WINDOWS_SCOPE`) and
`catalog.add_template` (`rollouts:write`). The page shows each role what it may see and only the
controls it may use; the handlers check the scope again when they act, so a stale page or a
crafted event gets the API's refusal. Destructive changes ask for confirmation first; secrets
(a new registration token, a new API key) are shown once, in a dialog.
"""

from __future__ import annotations

import re
import uuid
import zoneinfo
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Any

from nicegui import ui
from starlette.requests import Request
from starlette.responses import RedirectResponse

from console import live
from console.audit import CursorPager, parse_moment, when
from console.context import call
from console.frame import explain, frame, no_projects, page_context
from console.nodes import parse_labels
from console.session import Operator, acting_principal, current_operator, session_cookie
from sentinel_cp import accounts, nodes, projects
from sentinel_cp.errors import DomainError, Invalid, NotFound
from sentinel_cp.rollouts import catalog, freeze

LIST_SIZE = 20
NAME_MAX = 100  # project, API key and freeze window names, as the API's schemas
EMAIL_PATTERN = re.compile(r"[^@\s]+@[^@\s]+")
SECONDS = (
    ("heartbeat_interval_s", "Heartbeat interval", "How often nodes report (s)"),
    ("poll_interval_s", "Poll interval", "How often nodes ask for work (s)"),
    ("staleness_timeout_s", "Offline after", "Silence before a node is offline (s)"),
    ("drift_grace_s", "Drift grace", "Mismatch time before drift opens (s)"),
    ("approvals_required", "Approvals required", "Before a rollout starts"),
    ("approvals_required_high_risk", "Approvals, high risk", "For high-risk bundles"),
)
SWITCHES = (
    ("open_registration", "Open registration", "Nodes may register without a token"),
    ("drift_auto_remediate", "Drift auto-remediation", "Re-deliver the expected bundle"),
)
STRATEGIES = {
    "rolling": "Rolling",
    "canary": "Canary",
    "blue_green": "Blue-green",
    "all_at_once": "All at once",
}
DAYS = {"mon": "Mon", "tue": "Tue", "wed": "Wed", "thu": "Thu", "fri": "Fri", "sat": "Sat"}
DAYS["sun"] = "Sun"
TIME_ZONES = sorted(zoneinfo.available_timezones())
ROLE_COLOURS = {"admin": "negative", "operator": "primary", "reader": "grey-7"}


# --- what may be changed (each checked again by the handler) ----------------------------------


def _project(principal: accounts.Principal, slug: str) -> projects.Project:
    return projects.get_project(slug, visible_to=principal.project_id)


def _text(value: str, field: str, *, limit: int = NAME_MAX) -> str:
    value = (value or "").strip()
    if not value or len(value) > limit:
        raise Invalid("Invalid input", fields={field: [f"1–{limit} characters"]})
    return value


def _uuid(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise NotFound(f"{what} not found") from None


def _save_settings(
    cookie: str | None, slug: str, name: str | None, values: dict[str, Any]
) -> dict[str, Any]:
    principal = acting_principal(cookie)
    principal.require(projects.ADMIN_SCOPE)
    project = _project(principal, slug)
    name = None if name is None else _text(name, "name")
    projects.update_project(principal.actor, project, name=name, settings=values or None)
    return project.to_dict()


def _rotate_token(cookie: str | None, slug: str) -> str:
    principal = acting_principal(cookie)
    principal.require(projects.ADMIN_SCOPE)
    return projects.rotate_registration_token(principal.actor, _project(principal, slug))


def _create_key(
    cookie: str | None,
    name: str,
    scopes: list[str],
    project_slug: str | None,
    expires_at: datetime | None,
) -> dict[str, Any]:
    principal = acting_principal(cookie)
    principal.require(accounts.ACCESS_ADMIN_SCOPE)
    project_id = _project(principal, project_slug).id if project_slug else None
    key, raw = accounts.create_api_key(
        principal,
        name=_text(name, "name"),
        scopes=list(scopes),
        project_id=project_id,
        expires_at=expires_at,
    )
    return {**key.to_dict(project_slug), "key": raw}


def _revoke_key(cookie: str | None, key_id: str) -> str:
    principal = acting_principal(cookie)
    principal.require(accounts.ACCESS_ADMIN_SCOPE)
    return accounts.revoke_api_key(principal, _uuid(key_id, "API key")).name


def _create_user(cookie: str | None, email: str, password: str, role: str) -> dict[str, Any]:
    principal = acting_principal(cookie)
    accounts.require_user_admin(principal)
    email = (email or "").strip()
    if not EMAIL_PATTERN.fullmatch(email) or len(email) > 254:
        raise Invalid("Invalid email", fields={"email": ["an email address such as a@example.com"]})
    user = accounts.create_user(principal.actor, email=email, password=password, role=role)
    return user.to_dict()


def _update_user(
    cookie: str | None, user_id: str, role: str | None, disabled: bool | None
) -> dict[str, Any]:
    principal = acting_principal(cookie)
    accounts.require_user_admin(principal)
    user = accounts.update_user(
        principal.actor, _uuid(user_id, "User"), role=role, disabled=disabled
    )
    return user.to_dict()


def _add_window(cookie: str | None, slug: str, definition: dict[str, Any]) -> dict[str, Any]:
    principal = acting_principal(cookie)
    principal.require(catalog.FREEZE_WINDOWS_SCOPE)
    project = _project(principal, slug)
    return catalog.freeze_window_dict(
        catalog.add_freeze_window(principal.actor, project.id, definition)
    )


def _delete_window(cookie: str | None, slug: str, window_id: str) -> None:
    principal = acting_principal(cookie)
    principal.require(catalog.FREEZE_WINDOWS_SCOPE)
    project = _project(principal, slug)
    catalog.delete_freeze_window(principal.actor, project.id, _uuid(window_id, "Freeze window"))


def _add_template(
    cookie: str | None, slug: str, name: str, selector: dict[str, Any], config: dict[str, Any]
) -> dict[str, Any]:
    principal = acting_principal(cookie)
    principal.require(catalog.WRITE_SCOPE)
    project = _project(principal, slug)
    name = (name or "").strip()
    if not nodes.NAME_PATTERN.fullmatch(name):  # the API's rule for template names
        raise Invalid(
            "Invalid template name",
            fields={"name": ["1–100 letters, digits, '_', '.' or '-', starting alphanumeric"]},
        )
    if "labels" in selector:
        nodes.validate_labels(selector["labels"], "target_selector.labels")
    row = catalog.add_template(
        principal.actor, project.id, name=name, target_selector=selector, config=config
    )
    return catalog.template_dict(row)


async def save_settings(
    cookie: str | None, slug: str, name: str | None, values: dict[str, Any]
) -> dict[str, Any]:
    """Rename the project (unless `name` is None) and merge `values` into its settings
    (`projects:admin`; audited as `project.updated`)."""
    return await call(_save_settings, cookie, slug, name, values)


async def rotate_token(cookie: str | None, slug: str) -> str:
    """A new registration token, returned once (`projects:admin`)."""
    return await call(_rotate_token, cookie, slug)


async def create_api_key(
    cookie: str | None,
    name: str,
    scopes: list[str],
    project_slug: str | None,
    expires_at: datetime | None = None,
) -> dict[str, Any]:
    """A new key for the cookie's user; its raw value is under `key`, this once."""
    return await call(_create_key, cookie, name, scopes, project_slug, expires_at)


async def revoke_api_key(cookie: str | None, key_id: str) -> str:
    """Revoke a key (`api_keys:admin`); the key's name."""
    return await call(_revoke_key, cookie, key_id)


async def create_user(cookie: str | None, email: str, password: str, role: str) -> dict[str, Any]:
    return await call(_create_user, cookie, email, password, role)


async def update_user(
    cookie: str | None, user_id: str, *, role: str | None = None, disabled: bool | None = None
) -> dict[str, Any]:
    return await call(_update_user, cookie, user_id, role, disabled)


async def add_freeze_window(
    cookie: str | None, slug: str, definition: dict[str, Any]
) -> dict[str, Any]:
    return await call(_add_window, cookie, slug, definition)


async def delete_freeze_window(cookie: str | None, slug: str, window_id: str) -> None:
    await call(_delete_window, cookie, slug, window_id)


async def add_template(
    cookie: str | None, slug: str, name: str, selector: dict[str, Any], config: dict[str, Any]
) -> dict[str, Any]:
    return await call(_add_template, cookie, slug, name, selector, config)


# --- reading ----------------------------------------------------------------------------------


def _minutes_text(minutes: int) -> str:
    days, rest = divmod(minutes, 1440)
    hours, mins = divmod(rest, 60)
    parts = [
        f"{days} d" if days else "",
        f"{hours} h" if hours else "",
        f"{mins} min" if mins else "",
    ]
    return " ".join(p for p in parts if p) or "0 min"


def _window_row(window: dict[str, Any]) -> dict[str, Any]:
    if window["kind"] == "one_off":
        start = datetime.fromisoformat(window["starts_at"])
        end = datetime.fromisoformat(window["ends_at"])
        schedule = f"{when(start)[:16]} → {when(end)[:16]} UTC"
    else:
        days = ", ".join(DAYS[d] for d in window["days"])
        schedule = (
            f"{days} at {window['start_time']} for {_minutes_text(window['duration_minutes'])} "
            f"({window['time_zone']})"
        )
    active = ""
    if window["active"]:
        until = window["active_until"]
        active = f"until {when(datetime.fromisoformat(until))[:16]} UTC" if until else "now"
    return {
        "id": window["id"],
        "name": window["name"],
        "kind": "one-off" if window["kind"] == "one_off" else "weekly",
        "schedule": schedule,
        "reason": window.get("reason") or "",
        "active": active,
        "created_by": window["created_by"] or "",
    }


def _selector_text(selector: dict[str, Any] | None) -> str:
    if not selector or selector.get("all"):
        return "all nodes"
    if "labels" in selector:
        return ", ".join(f"{k}={v}" for k, v in sorted(selector["labels"].items()))
    if "group" in selector:
        return f"group {selector['group']}"
    if "node_ids" in selector:
        return f"{len(selector['node_ids'])} nodes"
    return str(selector)


def _config_text(config: dict[str, Any]) -> str:
    parts = []
    if "batch_percent" in config:
        parts.append(f"batches of {config['batch_percent']:g}%")
    elif "batch_size" in config:
        parts.append(f"batches of {config['batch_size']}")
    if "canary_steps" in config:
        parts.append("steps " + " → ".join(f"{s:g}%" for s in config["canary_steps"]))
    if config.get("bake_s"):
        parts.append(f"bake {config['bake_s']} s")
    parts.append(f"max failures {config.get('max_failures', 0)}")
    parts.append(f"on failure {config.get('on_failure', 'pause')}")
    return ", ".join(parts)


def _template_row(template: dict[str, Any]) -> dict[str, Any]:
    config = template["config"]
    return {
        "id": template["id"],
        "name": template["name"],
        "strategy": STRATEGIES.get(config.get("strategy", ""), config.get("strategy", "")),
        "settings": _config_text(config),
        "targets": _selector_text(template["target_selector"]),
        "created_by": template["created_by"] or "",
        "created": when(datetime.fromisoformat(template["created_at"])),
    }


def load_project(cookie: str | None, slug: str) -> dict[str, Any]:
    """The project's settings, and the freeze windows and templates, with what this user may
    change (every scope is checked again when they act)."""
    principal = acting_principal(cookie)
    project = _project(principal, slug)
    scopes = principal.scopes
    data: dict[str, Any] = {
        "project": project.to_dict(),
        "may": {
            "settings": projects.ADMIN_SCOPE in scopes,
            "access": accounts.ACCESS_ADMIN_SCOPE in scopes,
            "see_rollouts": catalog.READ_SCOPE in scopes,
            "freeze_windows": catalog.FREEZE_WINDOWS_SCOPE in scopes,
            "templates": catalog.WRITE_SCOPE in scopes,
            "scopes": sorted(scopes, key=accounts.SCOPES.index),
        },
        "windows": [],
        "templates": [],
    }
    if catalog.READ_SCOPE in scopes:
        data["windows"] = [
            _window_row(catalog.freeze_window_dict(row))
            for row in catalog.list_freeze_windows(project.id)
        ]
        data["templates"] = [
            _template_row(catalog.template_dict(row)) for row in catalog.list_templates(project.id)
        ]
    return data


def _key_state(key: accounts.ApiKey, now: datetime) -> str:
    if key.revoked_at is not None:
        return "revoked"
    if key.expires_at is not None and key.expires_at <= now:
        return "expired"
    return "active"


def load_keys(cookie: str | None, cursor: str | None) -> dict[str, Any]:
    principal = acting_principal(cookie)
    principal.require(accounts.ACCESS_ADMIN_SCOPE)
    page = accounts.list_api_keys(principal, limit=LIST_SIZE, cursor=cursor)
    slugs = {
        p.id: p.slug for p in projects.list_projects(visible_to=None, limit=500, cursor=None).items
    }
    now = datetime.now(UTC)
    return {
        "rows": [
            {
                "id": str(key.id),
                "name": key.name,
                "prefix": key.prefix + "…",
                "scopes": list(key.scopes),
                "project": slugs.get(key.project_id, "?") if key.project_id else "every project",
                "created_by": key.user.email,
                "created": when(key.created_at),
                "expires": when(key.expires_at) if key.expires_at else "never",
                "last_used": when(key.last_used_at) if key.last_used_at else "never",
                "state": _key_state(key, now),
            }
            for key in page.items
        ],
        "total": page.total,
        "next_cursor": page.next_cursor,
        "projects": sorted(slugs.values()),
    }


def load_users(cookie: str | None, cursor: str | None) -> dict[str, Any]:
    principal = acting_principal(cookie)
    accounts.require_user_admin(principal)
    page = accounts.list_users(limit=LIST_SIZE, cursor=cursor)
    return {
        "rows": [
            {
                "id": str(user.id),
                "email": user.email,
                "role": user.role,
                "colour": ROLE_COLOURS.get(user.role, "grey"),
                "disabled": user.disabled,
                "state": "disabled" if user.disabled else "active",
                "created": when(user.created_at),
                "last_login": when(user.last_login_at) if user.last_login_at else "never",
                "me": user.id == principal.user.id,
            }
            for user in page.items
        ],
        "total": page.total,
        "next_cursor": page.next_cursor,
    }


# --- the page ---------------------------------------------------------------------------------


def _section(title: str, caption: str, marker: str) -> ui.card:
    card = ui.card().classes("w-full gap-3").mark(marker)
    with card, ui.row().classes("w-full items-baseline gap-3"):
        ui.label(title).classes("text-h6")
        ui.label(caption).classes("text-grey-7 text-body2")
    return card


def _show_errors(exc: Invalid, inputs: dict[str, Any], general: ui.label) -> None:
    """Put each field's problem under its input; what names no input goes in `general`."""
    rest = []
    for element in inputs.values():
        element.error = None
    for field, problems in exc.fields.items():
        name = field.removeprefix("settings.").removeprefix("target_selector.")
        element = inputs.get(name) or inputs.get(field)
        if element is not None:
            element.error = "; ".join(problems)
        else:
            rest.append(f"{field}: {'; '.join(problems)}" if field != "settings" else problems[0])
    general.set_text(" ".join(rest) if rest else ("" if exc.fields else exc.message))
    general.set_visibility(bool(general.text))


def _clear_errors(inputs: dict[str, Any], general: ui.label) -> None:
    for element in inputs.values():
        element.error = None
    general.set_text("")
    general.set_visibility(False)


def _whole(value: Any) -> Any:
    """A number input's float as an int when it is whole (the domain wants integers)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _table(columns: list[dict[str, Any]], marker: str, empty: str) -> ui.table:
    table = (
        ui.table(columns=columns, rows=[], row_key="id", pagination={"rowsPerPage": 0})
        .classes("w-full")
        .props(f"flat dense hide-pagination wrap-cells no-data-label='{empty}'")
        .mark(marker)
    )
    return table


def _column(name: str, label: str, align: str = "left") -> dict[str, Any]:
    return {"name": name, "label": label, "field": name, "align": align}


def _action_slot(table: ui.table, buttons: list[tuple[str, str, str, str, str]]) -> None:
    """Buttons in an `actions` column: (event, label, icon, colour, v-if condition)."""
    html = "".join(
        f'<q-btn v-if="{condition}" flat dense no-caps no-wrap size="sm" color="{colour}" '
        f'icon="{icon}" label="{label}" @click="() => $parent.$emit(\'{event}\', props.row)" />'
        for event, label, icon, colour, condition in buttons
    )
    table.add_slot(
        "body-cell-actions",
        f'<q-td :props="props" class="text-right" style="white-space: nowrap">{html}</q-td>',
    )


def _row_id(event: Any) -> str:
    return str(event.args.get("id", "")) if isinstance(event.args, dict) else ""


class SettingsView:
    """The `/settings` page of one browser tab."""

    def __init__(self, operator: Operator, cookie: str | None, slug: str, data: dict[str, Any]):
        self.cookie = cookie
        self.slug = slug
        self.data = data
        self.may = data["may"]
        self.project_id = data["project"]["id"]
        self.dialogs = ui.element("div")  # dialogs live outside anything a refresh rebuilds
        self._project_section()
        self._token_section()
        if self.may["access"]:
            self._keys_section()
            self._users_section()
        else:
            with _section("API keys and users", "", "access-section"):
                ui.label(
                    "Only admins manage API keys and users. Your role: " + operator.role + "."
                ).classes("text-grey-7").mark("access-admins-only")
        if self.may["see_rollouts"]:
            self._windows_section()
            self._templates_section()
        self._show_project(data)

    # -- confirmation and secrets -------------------------------------------------------------

    async def _confirm(self, title: str, text: str, button: str, colour: str = "negative") -> bool:
        with self.dialogs, ui.dialog() as dialog, ui.card().classes("max-w-lg"):
            ui.label(title).classes("text-h6")
            ui.label(text).classes("text-body2")
            with ui.row().classes("w-full justify-end"):
                ui.button("Cancel", on_click=lambda: dialog.submit(False)).props("flat").mark(
                    "confirm-cancel"
                )
                ui.button(button, on_click=lambda: dialog.submit(True)).props(
                    f"color={colour}"
                ).mark("confirm-action")
        confirmed = bool(await dialog)
        dialog.delete()
        return confirmed

    async def _show_secret(self, title: str, secret: str, text: str) -> None:
        with (
            self.dialogs,
            ui.dialog().props("persistent") as dialog,
            ui.card().classes("min-w-[36rem]"),
        ):
            ui.label(title).classes("text-h6")
            with ui.row().classes("items-center gap-2 bg-amber-1 p-2 rounded w-full no-wrap"):
                ui.icon("warning", color="warning")
                ui.label(
                    "Copy it now: it is shown only this once and stored only as a hash."
                ).classes("text-body2")
            field = (
                ui.input(value=secret)
                .props("readonly outlined dense input-class=font-mono")
                .classes("w-full")
                .mark("new-secret")
            )

            def copy() -> None:
                ui.clipboard.write(secret)
                ui.notify("Copied")

            with field.add_slot("append"):
                ui.button(icon="content_copy", on_click=copy).props("flat dense round").tooltip(
                    "Copy"
                )
            ui.label(text).classes("text-grey-7 text-body2")
            with ui.row().classes("w-full justify-end"):
                ui.button("I have copied it", on_click=lambda: dialog.submit(True)).mark(
                    "secret-done"
                )
        await dialog
        dialog.delete()

    async def _attempt(self, action: Awaitable[Any], success: str | None) -> Any:
        try:
            result = await action
        except DomainError as exc:
            ui.notify(explain(exc), type="negative", multi_line=True)
            return None
        if success:
            ui.notify(success, type="positive")
        return result if result is not None else True

    # -- project settings ---------------------------------------------------------------------

    def _project_section(self) -> None:
        caption = f"Change them here or with PATCH /api/v1/projects/{self.slug}."
        if not self.may["settings"]:
            caption = "Only admins change them."
        with _section("Project settings", caption, "project-settings"):
            self.settings_facts = ui.refreshable(self._settings_facts)
            if not self.may["settings"]:
                self.settings_facts()
                return
            self.inputs: dict[str, Any] = {}
            self.loaded: dict[str, Any] = {}
            with ui.grid(columns=3).classes("w-full gap-x-6 gap-y-1"):
                self.inputs["name"] = (
                    ui.input("Project name")
                    .props(f"outlined dense maxlength={NAME_MAX}")
                    .mark("setting-name")
                )
                for key, label, hint in SECONDS:
                    self.inputs[key] = (
                        ui.number(label, min=0, step=1, format="%.0f")
                        .props(f"outlined dense hint='{hint}'")
                        .mark(f"setting-{key}")
                    )
                self.inputs["standby_slot"] = (
                    ui.select({"green": "green", "blue": "blue"}, label="Blue-green standby slot")
                    .props("outlined dense hint='Label slot=… marks the standby set'")
                    .mark("setting-standby_slot")
                )
                for key, label, hint in SWITCHES:
                    with ui.column().classes("gap-0"):
                        self.inputs[key] = ui.switch(label).mark(f"setting-{key}")
                        ui.label(hint).classes("text-caption text-grey-7 -mt-2 ml-12")
            self.settings_error = ui.label("").classes("text-negative").mark("settings-error")
            self.settings_error.set_visibility(False)
            with ui.row().classes("w-full items-center justify-end gap-3"):
                self.stale = (
                    ui.label(
                        "Someone changed these settings while you were editing; saving "
                        "applies only the fields you changed."
                    )
                    .classes("text-warning text-body2")
                    .mark("settings-stale")
                )
                self.stale.set_visibility(False)
                ui.button("Reset", on_click=self._reset_settings).props("flat").mark(
                    "settings-reset"
                )
                ui.button("Save settings", icon="save", on_click=self._save_settings).mark(
                    "settings-save"
                )

    def _settings_facts(self) -> None:
        project = self.data["project"]
        settings = project["settings"]
        with ui.grid(columns=4).classes("w-full gap-x-8 gap-y-3").mark("settings-facts"):
            facts = [("Project name", project["name"], "name")]
            facts += [(label, str(settings[key]), key) for key, label, _ in SECONDS]
            facts.append(("Blue-green standby slot", settings["standby_slot"], "standby_slot"))
            facts += [(label, "on" if settings[key] else "off", key) for key, label, _ in SWITCHES]
            for label, value, key in facts:
                with ui.column().classes("gap-0"):
                    ui.label(label).classes("text-caption text-grey-7")
                    ui.label(value).classes("text-body1").mark(f"fact-{key}")

    def _form_values(self) -> dict[str, Any]:
        return {key: _whole(element.value) for key, element in self.inputs.items()}

    def _fill_settings(self, project: dict[str, Any]) -> None:
        values = {"name": project["name"], **project["settings"]}
        self.loaded = {key: values[key] for key in self.inputs}
        for key, element in self.inputs.items():
            element.set_value(values[key])

    async def _reset_settings(self) -> None:
        self._fill_settings(self.data["project"])
        _clear_errors(self.inputs, self.settings_error)
        self.stale.set_visibility(False)

    async def _save_settings(self) -> None:
        # Only what this form changed is sent, so a concurrent change to another field stays.
        changed = {k: v for k, v in self._form_values().items() if v != self.loaded.get(k)}
        name = changed.pop("name", None)
        try:
            project = await save_settings(
                self.cookie, self.slug, None if name is None else str(name), changed
            )
        except Invalid as exc:
            _show_errors(exc, self.inputs, self.settings_error)
            ui.notify("The settings were not saved: see the marked fields", type="negative")
            return
        except DomainError as exc:
            ui.notify(explain(exc), type="negative", multi_line=True)
            return
        _clear_errors(self.inputs, self.settings_error)
        self.data["project"] = project
        self._fill_settings(project)
        self.stale.set_visibility(False)
        ui.notify("Settings saved", type="positive")
        self._show_token(project)

    # -- registration token -------------------------------------------------------------------

    def _token_section(self) -> None:
        with (
            _section(
                "Registration token",
                "Nodes present it once, when they register.",
                "registration-token",
            ),
            ui.row().classes("w-full items-center justify-between"),
        ):
            self.token_state = ui.label("").classes("text-body1").mark("token-state")
            if self.may["settings"]:
                ui.button("Rotate token…", icon="autorenew", on_click=self._rotate_token).props(
                    "outline color=negative"
                ).mark("rotate-token")

    def _show_token(self, project: dict[str, Any]) -> None:
        has = project["has_registration_token"]
        open_registration = project["settings"]["open_registration"]
        text = (
            "A token is set. It was shown once, when it was made; rotate it to get a new one."
            if has
            else "No token yet: nodes cannot register"
            + (" — except that open registration is on." if open_registration else ".")
        )
        self.token_state.set_text(text)

    async def _rotate_token(self) -> None:
        has = self.data["project"]["has_registration_token"]
        confirmed = await self._confirm(
            "Rotate the registration token?",
            (
                "The current token stops working at once: nodes not yet registered with it "
                "will need the new one. Registered nodes are not affected."
                if has
                else "A token is created; nodes register with it."
            ),
            "Rotate token",
        )
        if not confirmed:
            return
        token = await self._attempt(rotate_token(self.cookie, self.slug), None)
        if token:
            await self._show_secret(
                "New registration token",
                token,
                "Give it to sentinel-agent (--registration-token) on nodes that register next.",
            )
            await self.refresh()

    # -- API keys -----------------------------------------------------------------------------

    def _keys_section(self) -> None:
        with _section("API keys", "For automation: Authorization: Bearer sk_…", "api-keys"):
            self.keys_table = _table(
                [
                    _column("name", "Name"),
                    _column("prefix", "Key"),
                    _column("scopes", "Scopes"),
                    _column("project", "Project"),
                    _column("expires", "Expires (UTC)"),
                    _column("last_used", "Last used (UTC)"),
                    _column("state", "State"),
                    _column("actions", "", "right"),
                ],
                "api-keys-table",
                "No API keys yet",
            )
            self.keys_table.add_slot(
                "body-cell-name",
                '<q-td :props="props"><div class="text-weight-medium">{{ props.value }}</div>'
                '<div class="text-caption text-grey-7">by {{ props.row.created_by }}, '
                "{{ props.row.created }}</div></q-td>",
            )
            self.keys_table.add_slot(
                "body-cell-prefix",
                '<q-td :props="props"><code>{{ props.value }}</code></q-td>',
            )
            self.keys_table.add_slot(
                "body-cell-scopes",
                '<q-td :props="props"><q-chip v-for="scope in props.value" :key="scope" dense '
                'square size="sm" color="blue-grey-1">{{ scope }}</q-chip></q-td>',
            )
            self.keys_table.add_slot(
                "body-cell-state",
                "<q-td :props=\"props\"><q-badge :color=\"props.value === 'active' ? 'positive' "
                ': \'grey-6\'" :label="props.value" /></q-td>',
            )
            _action_slot(
                self.keys_table,
                [("revoke", "Revoke", "block", "negative", "props.row.state === 'active'")],
            )
            self.keys_table.on("revoke", self._revoke_key)
            with ui.row().classes("w-full items-center justify-between"):
                ui.button("New API key…", icon="add", on_click=self._new_key).props("outline").mark(
                    "new-api-key"
                )
                self.keys_pager = CursorPager("api-keys", self.reload_keys)

    async def reload_keys(self) -> None:
        self.show_keys(await call(load_keys, self.cookie, self.keys_pager.cursor))

    def show_keys(self, data: dict[str, Any]) -> None:
        self.project_slugs = data["projects"]
        self.keys_table.rows = data["rows"]
        self.keys_table.update()
        self.keys_pager.show(
            self.keys_pager.range_text(len(data["rows"]), data["total"], LIST_SIZE, "keys"),
            data["next_cursor"],
        )

    async def _new_key(self) -> None:
        with self.dialogs, ui.dialog() as dialog, ui.card().classes("min-w-[34rem]"):
            ui.label("New API key").classes("text-h6")
            name = (
                ui.input("Name")
                .props(f"outlined dense maxlength={NAME_MAX}")
                .classes("w-full")
                .mark("key-name")
            )
            ui.label("Scopes (never more than your own)").classes("text-caption text-grey-7")
            boxes = {}
            with ui.grid(columns=3).classes("w-full gap-0"):
                for scope in self.may["scopes"]:
                    boxes[scope] = ui.checkbox(scope).props("dense").mark(f"key-scope-{scope}")
            scope_error = ui.label("").classes("text-negative text-caption").mark("key-error")
            scope_error.set_visibility(False)
            project = (
                ui.select(
                    {"": "Every project", **{s: s for s in getattr(self, "project_slugs", [])}},
                    value=self.slug,
                    label="Project",
                )
                .props("outlined dense")
                .classes("w-full")
                .mark("key-project")
            )
            expires = (
                ui.input("Expires (UTC date, optional)", placeholder="YYYY-MM-DD")
                .props("outlined dense clearable")
                .classes("w-full")
                .mark("key-expires")
            )
            inputs = {"name": name, "expires_at": expires}

            async def create() -> None:
                _clear_errors(inputs, scope_error)
                try:
                    expires_at = parse_moment(expires.value or "", "expires_at")
                    created = await create_api_key(
                        self.cookie,
                        name.value or "",
                        [scope for scope, box in boxes.items() if box.value],
                        project.value or None,
                        expires_at,
                    )
                except Invalid as exc:
                    _show_errors(exc, inputs, scope_error)
                    return
                except DomainError as exc:
                    ui.notify(explain(exc), type="negative", multi_line=True)
                    return
                dialog.submit(created)

            with ui.row().classes("w-full justify-end"):
                ui.button("Cancel", on_click=lambda: dialog.submit(None)).props("flat")
                ui.button("Create key", on_click=create).mark("create-key")
        created = await dialog
        dialog.delete()
        if created:
            await self._show_secret(
                f"API key “{created['name']}”",
                created["key"],
                "Use it as Authorization: Bearer <key>. Scopes: " + ", ".join(created["scopes"]),
            )
            await self.reload_keys()

    async def _revoke_key(self, event: Any) -> None:
        key_id = _row_id(event)
        row = next((r for r in self.keys_table.rows if r["id"] == key_id), None)
        if row is None:
            return
        if not await self._confirm(
            f"Revoke the API key “{row['name']}”?",
            f"Requests with {row['prefix']} are refused from now on. This cannot be undone.",
            "Revoke key",
        ):
            return
        await self._attempt(revoke_api_key(self.cookie, key_id), f"Key “{row['name']}” revoked")
        await self.reload_keys()

    # -- users --------------------------------------------------------------------------------

    def _users_section(self) -> None:
        with _section("Users", "Roles: reader (view), operator (+ act), admin (+ manage)", "users"):
            self.users_table = _table(
                [
                    _column("email", "Email"),
                    _column("role", "Role"),
                    _column("state", "State"),
                    _column("created", "Created (UTC)"),
                    _column("last_login", "Last login (UTC)"),
                    _column("actions", "", "right"),
                ],
                "users-table",
                "No users",
            )
            self.users_table.add_slot(
                "body-cell-email",
                '<q-td :props="props">{{ props.value }}<q-badge v-if="props.row.me" outline '
                'color="primary" class="q-ml-sm" label="you" /></q-td>',
            )
            self.users_table.add_slot(
                "body-cell-role",
                '<q-td :props="props"><q-badge :color="props.row.colour" :label="props.value" />'
                "</q-td>",
            )
            self.users_table.add_slot(
                "body-cell-state",
                '<q-td :props="props"><span :class="props.row.disabled ? \'text-negative\' : '
                "''\">{{ props.value }}</span></q-td>",
            )
            _action_slot(
                self.users_table,
                [
                    ("role", "Role…", "manage_accounts", "primary", "true"),
                    ("disable", "Disable", "person_off", "negative", "!props.row.disabled"),
                    ("enable", "Enable", "person", "positive", "props.row.disabled"),
                ],
            )
            self.users_table.on("role", self._change_role)
            self.users_table.on("disable", self._disable_user)
            self.users_table.on("enable", self._enable_user)
            with ui.row().classes("w-full items-center justify-between"):
                ui.button("New user…", icon="person_add", on_click=self._new_user).props(
                    "outline"
                ).mark("new-user")
                self.users_pager = CursorPager("users", self.reload_users)

    async def reload_users(self) -> None:
        self.show_users(await call(load_users, self.cookie, self.users_pager.cursor))

    def show_users(self, data: dict[str, Any]) -> None:
        self.users_table.rows = data["rows"]
        self.users_table.update()
        self.users_pager.show(
            self.users_pager.range_text(len(data["rows"]), data["total"], LIST_SIZE, "users"),
            data["next_cursor"],
        )

    def _user_row(self, event: Any) -> dict[str, Any] | None:
        user_id = _row_id(event)
        return next((r for r in self.users_table.rows if r["id"] == user_id), None)

    async def _new_user(self) -> None:
        with self.dialogs, ui.dialog() as dialog, ui.card().classes("min-w-[28rem]"):
            ui.label("New user").classes("text-h6")
            email = ui.input("Email").props("outlined dense").classes("w-full").mark("user-email")
            password = (
                ui.input(
                    f"Password (at least {accounts.MIN_PASSWORD_LENGTH} characters)",
                    password=True,
                    password_toggle_button=True,
                )
                .props("outlined dense")
                .classes("w-full")
                .mark("user-password")
            )
            role = (
                ui.select({r: r for r in accounts.ROLES}, value="reader", label="Role")
                .props("outlined dense")
                .classes("w-full")
                .mark("user-role")
            )
            general = ui.label("").classes("text-negative text-caption")
            general.set_visibility(False)
            inputs = {"email": email, "password": password, "role": role}

            async def create() -> None:
                _clear_errors(inputs, general)
                try:
                    created = await create_user(
                        self.cookie, email.value or "", password.value or "", role.value
                    )
                except Invalid as exc:
                    _show_errors(exc, inputs, general)
                    return
                except DomainError as exc:
                    ui.notify(explain(exc), type="negative", multi_line=True)
                    return
                dialog.submit(created)

            with ui.row().classes("w-full justify-end"):
                ui.button("Cancel", on_click=lambda: dialog.submit(None)).props("flat")
                ui.button("Create user", on_click=create).mark("create-user")
        created = await dialog
        dialog.delete()
        if created:
            ui.notify(f"User {created['email']} created ({created['role']})", type="positive")
            await self.reload_users()

    async def _change_role(self, event: Any) -> None:
        row = self._user_row(event)
        if row is None:
            return
        with self.dialogs, ui.dialog() as dialog, ui.card().classes("min-w-[24rem]"):
            ui.label(f"Role of {row['email']}").classes("text-h6")
            role = (
                ui.select({r: r for r in accounts.ROLES}, value=row["role"], label="Role")
                .props("outlined dense")
                .classes("w-full")
                .mark("new-role")
            )
            with ui.row().classes("w-full justify-end"):
                ui.button("Cancel", on_click=lambda: dialog.submit(None)).props("flat")
                ui.button("Change role", on_click=lambda: dialog.submit(role.value)).mark(
                    "change-role"
                )
        chosen = await dialog
        dialog.delete()
        if not chosen or chosen == row["role"]:
            return
        await self._attempt(
            update_user(self.cookie, row["id"], role=chosen),
            f"{row['email']} is now {chosen}",
        )
        await self.reload_users()

    async def _disable_user(self, event: Any) -> None:
        row = self._user_row(event)
        if row is None:
            return
        if not await self._confirm(
            f"Disable {row['email']}?",
            "Every session of this user ends at once, and their API keys stop working. "
            "You can enable the user again later.",
            "Disable user",
        ):
            return
        await self._attempt(
            update_user(self.cookie, row["id"], disabled=True), f"{row['email']} disabled"
        )
        await self.reload_users()

    async def _enable_user(self, event: Any) -> None:
        row = self._user_row(event)
        if row is None:
            return
        await self._attempt(
            update_user(self.cookie, row["id"], disabled=False), f"{row['email']} enabled"
        )
        await self.reload_users()

    # -- freeze windows -----------------------------------------------------------------------

    def _windows_section(self) -> None:
        caption = "No rollout starts or advances inside one (admins may override)."
        with _section("Freeze windows", caption, "freeze-windows"):
            columns = [
                _column("name", "Name"),
                _column("schedule", "When"),
                _column("reason", "Reason"),
                _column("active", "Active"),
                _column("created_by", "Created by"),
            ]
            if self.may["freeze_windows"]:
                columns.append(_column("actions", "", "right"))
            self.windows_table = _table(columns, "freeze-windows-table", "No freeze windows")
            self.windows_table.add_slot(
                "body-cell-name",
                '<q-td :props="props">{{ props.value }}<div class="text-caption text-grey-7">'
                "{{ props.row.kind }}</div></q-td>",
            )
            self.windows_table.add_slot(
                "body-cell-active",
                '<q-td :props="props"><q-badge v-if="props.value" color="warning" '
                ":label=\"'frozen ' + props.value\" /></q-td>",
            )
            if self.may["freeze_windows"]:
                _action_slot(
                    self.windows_table, [("delete", "Delete", "delete", "negative", "true")]
                )
                self.windows_table.on("delete", self._delete_window)
                ui.button("New freeze window…", icon="ac_unit", on_click=self._new_window).props(
                    "outline"
                ).mark("new-freeze-window")

    async def _new_window(self) -> None:
        with self.dialogs, ui.dialog() as dialog, ui.card().classes("min-w-[34rem]"):
            ui.label("New freeze window").classes("text-h6")
            kind = (
                ui.toggle({"one_off": "One-off", "weekly": "Weekly"}, value="one_off")
                .props("no-caps")
                .mark("window-kind")
            )
            name = (
                ui.input("Name")
                .props(f"outlined dense maxlength={NAME_MAX}")
                .classes("w-full")
                .mark("window-name")
            )
            reason = (
                ui.input("Reason (optional)")
                .props(f"outlined dense maxlength={freeze.MAX_REASON_LENGTH}")
                .classes("w-full")
                .mark("window-reason")
            )
            with (
                ui.row()
                .classes("w-full gap-3 no-wrap")
                .bind_visibility_from(kind, "value", value="one_off")
            ):
                starts = (
                    ui.input("Starts (UTC)", placeholder="YYYY-MM-DD HH:MM")
                    .props("outlined dense")
                    .classes("grow")
                    .mark("window-starts")
                )
                ends = (
                    ui.input("Ends (UTC)", placeholder="YYYY-MM-DD HH:MM")
                    .props("outlined dense")
                    .classes("grow")
                    .mark("window-ends")
                )
            with (
                ui.column()
                .classes("w-full gap-2")
                .bind_visibility_from(kind, "value", value="weekly")
            ):
                days = (
                    ui.select(DAYS, multiple=True, value=[], label="Days")
                    .props("outlined dense use-chips")
                    .classes("w-full")
                    .mark("window-days")
                )
                with ui.row().classes("w-full gap-3 no-wrap"):
                    start_time = (
                        ui.input("Starts at (local)", placeholder="HH:MM")
                        .props("outlined dense")
                        .classes("w-36")
                        .mark("window-start-time")
                    )
                    duration = (
                        ui.number("Lasts (minutes)", min=1, step=15, format="%.0f")
                        .props("outlined dense")
                        .classes("w-40")
                        .mark("window-duration")
                    )
                    zone = (
                        ui.select(TIME_ZONES, value="UTC", label="Time zone", with_input=True)
                        .props("outlined dense")
                        .classes("grow")
                        .mark("window-zone")
                    )
            general = ui.label("").classes("text-negative text-caption")
            general.set_visibility(False)
            inputs = {
                "name": name,
                "reason": reason,
                "starts_at": starts,
                "ends_at": ends,
                "days": days,
                "start_time": start_time,
                "duration_minutes": duration,
                "time_zone": zone,
            }

            def definition() -> dict[str, Any]:
                data: dict[str, Any] = {
                    "kind": kind.value,
                    "name": (name.value or "").strip(),
                    "reason": (reason.value or "").strip(),
                }
                if kind.value == "one_off":
                    for field, element in (("starts_at", starts), ("ends_at", ends)):
                        moment = parse_moment(element.value or "", field)
                        data[field] = moment.isoformat() if moment else None
                else:
                    data["days"] = list(days.value or [])
                    data["start_time"] = (start_time.value or "").strip()
                    data["duration_minutes"] = _whole(duration.value)
                    data["time_zone"] = zone.value
                return data

            async def create() -> None:
                _clear_errors(inputs, general)
                try:
                    if len((name.value or "").strip()) > NAME_MAX:
                        raise Invalid("Invalid name", fields={"name": [f"1–{NAME_MAX} characters"]})
                    created = await add_freeze_window(self.cookie, self.slug, definition())
                except Invalid as exc:
                    _show_errors(exc, inputs, general)
                    return
                except DomainError as exc:
                    ui.notify(explain(exc), type="negative", multi_line=True)
                    return
                dialog.submit(created)

            with ui.row().classes("w-full justify-end"):
                ui.button("Cancel", on_click=lambda: dialog.submit(None)).props("flat")
                ui.button("Create window", on_click=create).mark("create-window")
        created = await dialog
        dialog.delete()
        if created:
            ui.notify(f"Freeze window “{created['name']}” added", type="positive")
            await self.refresh()

    async def _delete_window(self, event: Any) -> None:
        window_id = _row_id(event)
        row = next((r for r in self.windows_table.rows if r["id"] == window_id), None)
        if row is None:
            return
        if not await self._confirm(
            f"Delete the freeze window “{row['name']}”?",
            f"{row['schedule']}. Rollouts may start and advance in this time again.",
            "Delete window",
        ):
            return
        await self._attempt(
            delete_freeze_window(self.cookie, self.slug, window_id),
            f"Freeze window “{row['name']}” deleted",
        )
        await self.refresh()

    # -- rollout templates --------------------------------------------------------------------

    def _templates_section(self) -> None:
        with _section(
            "Rollout templates",
            "Named rollout settings: pick one on the new-rollout form.",
            "rollout-templates",
        ):
            self.templates_table = _table(
                [
                    _column("name", "Name"),
                    _column("strategy", "Strategy"),
                    _column("settings", "Settings"),
                    _column("targets", "Targets"),
                    _column("created_by", "Created by"),
                    _column("created", "Created (UTC)"),
                ],
                "templates-table",
                "No rollout templates",
            )
            self.templates_table.add_slot(
                "body-cell-name",
                '<q-td :props="props"><a :href="\'/rollouts/new?template=\' + '
                'encodeURIComponent(props.value)" class="text-primary text-weight-medium" '
                'style="text-decoration: none">{{ props.value }}</a></q-td>',
            )
            if self.may["templates"]:
                with ui.row().classes("w-full items-center justify-between"):
                    ui.button("New template…", icon="add", on_click=self._new_template).props(
                        "outline"
                    ).mark("new-template")
                    ui.label("Deleting a template is not supported yet.").classes(
                        "text-caption text-grey-7"
                    )

    async def _new_template(self) -> None:
        with self.dialogs, ui.dialog() as dialog, ui.card().classes("min-w-[34rem]"):
            ui.label("New rollout template").classes("text-h6")
            name = (
                ui.input("Name", placeholder="e.g. prod-canary")
                .props("outlined dense")
                .classes("w-full")
                .mark("template-name")
            )
            strategy = (
                ui.select(STRATEGIES, value="rolling", label="Strategy")
                .props("outlined dense")
                .classes("w-full")
                .mark("template-strategy")
            )
            with (
                ui.row()
                .classes("w-full gap-3 no-wrap")
                .bind_visibility_from(strategy, "value", value="rolling")
            ):
                batch_size = (
                    ui.number("Batch size (nodes)", value=1, min=1, format="%.0f")
                    .props("outlined dense")
                    .classes("grow")
                    .mark("template-batch_size")
                )
                batch_percent = (
                    ui.number("or batch %", min=0, max=100)
                    .props("outlined dense")
                    .classes("grow")
                    .mark("template-batch_percent")
                )
            canary = (
                ui.input("Canary steps (%)", value="10, 50, 100")
                .props("outlined dense")
                .classes("w-full")
                .bind_visibility_from(strategy, "value", value="canary")
                .mark("template-canary_steps")
            )
            with ui.row().classes("w-full gap-3 no-wrap"):
                bake = (
                    ui.number("Bake (s)", value=0, min=0, format="%.0f")
                    .props("outlined dense")
                    .classes("grow")
                    .mark("template-bake_s")
                )
                failures = (
                    ui.input("Max failures (n or n%)", value="0")
                    .props("outlined dense")
                    .classes("grow")
                    .mark("template-max_failures")
                )
                on_failure = (
                    ui.select({"pause": "pause", "rollback": "roll back"}, value="pause")
                    .props("outlined dense label='On failure'")
                    .classes("grow")
                    .mark("template-on_failure")
                )
            targets = (
                ui.input("Target labels (key=value, …; empty: all nodes)")
                .props("outlined dense")
                .classes("w-full")
                .mark("template-labels")
            )
            general = ui.label("").classes("text-negative text-caption")
            general.set_visibility(False)
            inputs = {
                "name": name,
                "strategy": strategy,
                "batch_size": batch_size,
                "batch_percent": batch_percent,
                "canary_steps": canary,
                "bake_s": bake,
                "max_failures": failures,
                "on_failure": on_failure,
                "labels": targets,
            }

            def request() -> tuple[dict[str, Any], dict[str, Any]]:
                config: dict[str, Any] = {
                    "strategy": strategy.value,
                    "bake_s": _whole(bake.value),
                    "on_failure": on_failure.value,
                    "max_failures": _failures(failures.value or "0"),
                }
                if strategy.value == "rolling":
                    if batch_percent.value not in (None, ""):
                        config["batch_percent"] = float(batch_percent.value)
                    else:
                        config["batch_size"] = _whole(batch_size.value)
                elif strategy.value == "canary":
                    config["canary_steps"] = _percentages(canary.value or "")
                labels = parse_labels(targets.value or "")
                return ({"labels": labels} if labels else {}), config

            async def create() -> None:
                _clear_errors(inputs, general)
                try:
                    selector, config = request()
                    created = await add_template(
                        self.cookie, self.slug, name.value or "", selector, config
                    )
                except Invalid as exc:
                    _show_errors(exc, inputs, general)
                    return
                except DomainError as exc:
                    ui.notify(explain(exc), type="negative", multi_line=True)
                    return
                dialog.submit(created)

            with ui.row().classes("w-full justify-end"):
                ui.button("Cancel", on_click=lambda: dialog.submit(None)).props("flat")
                ui.button("Create template", on_click=create).mark("create-template")
        created = await dialog
        dialog.delete()
        if created:
            ui.notify(f"Template “{created['name']}” saved", type="positive")
            await self.refresh()

    # -- loading ------------------------------------------------------------------------------

    def _show_project(self, data: dict[str, Any]) -> None:
        previous = self.data
        self.data = data
        project = data["project"]
        if self.may["settings"]:
            dirty = self.loaded and self._form_values() != self.loaded
            if not dirty:
                self._fill_settings(project)
            elif project != previous["project"]:
                self.stale.set_visibility(True)
        else:
            self.settings_facts.refresh()
        self._show_token(project)
        if self.may["see_rollouts"]:
            self.windows_table.rows = data["windows"]
            self.windows_table.update()
            self.templates_table.rows = data["templates"]
            self.templates_table.update()

    async def refresh(self) -> None:
        data = await call(load_project, self.cookie, self.slug)
        self._show_project(data)

    async def refresh_all(self) -> None:
        await self.refresh()
        if self.may["access"]:
            await self.reload_keys()
            await self.reload_users()

    def hears(self, event: dict[str, Any]) -> bool:
        return event.get("kind") == "audit" and event.get("project") in (self.project_id, None)


def _failures(text: str) -> int | str:
    text = text.strip()
    return int(text) if text.isdigit() else text


def _percentages(text: str) -> list[float] | str:
    try:
        return [float(part) for part in text.replace(";", ",").split(",") if part.strip()]
    except ValueError:
        return text  # the domain names the field and the problem


@ui.page("/settings")
async def settings_page(request: Request):
    operator = await current_operator(request)
    if operator is None:
        return RedirectResponse("/login?next=/settings")
    slug, slugs = await page_context()
    with frame(operator, "Settings", slug, slugs):
        if slug is None:
            no_projects()
            return None
        cookie = session_cookie(request)
        data = await call(load_project, cookie, slug)
        keys = users = None
        if data["may"]["access"]:
            keys = await call(load_keys, cookie, None)
            users = await call(load_users, cookie, None)
        view = SettingsView(operator, cookie, slug, data)
        if keys is not None and users is not None:
            view.show_keys(keys)
            view.show_users(users)
        live.follow(view.hears, view.refresh_all)
    return None
