"""The Bundles pages: the project's bundles, a submission form with an inline dry run, one
bundle's detail (risk, signature, compile output, files, manifest, SBOM, revocation) and a
side-by-side diff of any two bundles.

Every page calls the same domain functions as `blueprints/bundles.py` — `compiler.submit`,
`compiler.dry_run`, `catalog.list_bundles`, `catalog.diff`, `distribution.verify`,
`distribution.revoke` — with the same scopes: `bundles:read` to look and to validate,
`bundles:write` to submit and revoke. A hidden button is a courtesy; the check is that every
handler reloads the user behind the session cookie (`acting_principal`) and requires the scope
again in the same transaction as the domain call, so a stale page or a crafted event gets the
API's refusal. The list and the detail follow the project's bundle events live (a compile
finishing shows without a reload), at most once a second, and only while a browser is
connected.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

from nicegui import ui
from starlette.requests import Request
from starlette.responses import RedirectResponse

from console import live
from console.context import call, flask_app
from console.frame import explain, frame, no_projects, page_context
from console.session import Operator, acting_principal, current_operator, session_cookie
from sentinel_cp import projects
from sentinel_cp.bundles import catalog, compiler, distribution, sbom, sources
from sentinel_cp.bundles.models import STATUSES, Bundle
from sentinel_cp.errors import DomainError, Invalid, NotFound, Unauthorized

READ, WRITE = "bundles:read", "bundles:write"  # the API's scopes for the same actions
PAGE_SIZE = 25
CHOICES = 200  # bundles offered by the diff page's pickers (newest first)
REASON_MAX = 500  # as the API's BundleRevokeIn
UPLOAD_MAX_BYTES = 4 * 1024 * 1024  # as the API's multipart envelope; sources applies the rest
DIAGNOSTICS_SHOWN = 100
FILE_LINES_SHOWN = 5000
DIFF_ROWS_SHOWN = 2000
NAMES_SHOWN = 30
EXCERPT_CONTEXT = 2

STATUS_COLOURS = {
    "pending": "grey-7",
    "compiling": "info",
    "compiled": "positive",
    "failed": "negative",
    "revoked": "deep-orange-7",
}
RISK_COLOURS = {"low": "positive", "medium": "warning", "high": "negative"}
SEVERITY_COLOURS = {"error": "negative", "warning": "warning", "node-side": "info"}
SUMMARY_KINDS = ("listeners", "routes", "upstreams", "filters", "agents", "namespaces")
SUMMARY_FLAGS = {
    "tls_changed": "TLS",
    "waf_changed": "WAF",
    "auth_filters_changed": "auth filters",
    "rate_limits_changed": "rate limits",
    "limits_changed": "limits",
    "settings_changed": "system settings",
}
CSS = """
.sb-code { border-collapse: collapse; width: 100%; font-family: ui-monospace, SFMono-Regular,
  Menlo, Consolas, monospace; font-size: 12.5px; line-height: 1.5; }
.sb-code td { padding: 0 10px; vertical-align: top; }
.sb-code td.n { color: #8a9099; text-align: right; user-select: none; width: 1%;
  white-space: nowrap; border-right: 1px solid #e3e6ea; }
.sb-code td.t { white-space: pre-wrap; word-break: break-all; }
.sb-code tr.error td { background: #fde8e8; }
.sb-code tr.error td.n { color: #c62828; font-weight: 600; }
.sb-code tr.warning td { background: #fff5d9; }
.sb-code tr.node-side td { background: #e8f1fb; }
.sb-code tr.caret td { line-height: 0.8; }
.sb-code tr.caret td.t { color: #c62828; font-weight: 700; }
.sb-code tr.hunk td { background: #eef3f9; color: #5a7391; }
.sb-code td.del { background: #fde8e8; }
.sb-code td.add { background: #e4f5e8; }
.sb-code td.n.del { background: #f9d3d3; }
.sb-code td.n.add { background: #cdebd5; }
.sb-code td.empty { background: #f4f5f7; }
.sb-code td.mid { border-left: 1px solid #d5d9de; }
.sb-diff { table-layout: fixed; }
.sb-diff col.nc { width: 3.5em; }
.sb-diff col.tc { width: calc(50% - 3.5em); }
.sb-scroll { max-height: 34rem; overflow: auto; border: 1px solid #e3e6ea; border-radius: 4px; }
"""


# --- shared: formatting, errors, live refresh -----------------------------------------------


def refuse(exc: DomainError) -> None:
    """Show a domain refusal; an ended session also goes back to the login page."""
    ui.notify(explain(exc), type="negative", multi_line=True)
    if isinstance(exc, Unauthorized):
        ui.navigate.to("/login?expired=1")


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else "—"


def human_size(size: int | None) -> str:
    """Bytes as the console shows sizes: `812 B`, `3.4 KiB`, `1.2 MiB`."""
    if size is None:
        return "—"
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KiB"
    return f"{size / (1024 * 1024):.1f} MiB"


def plural(count: int, noun: str) -> str:
    """`1 error`, `2 errors`."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _label(bundle: Bundle) -> str:
    return f"{bundle.version} · {bundle.status} · {bundle.id[:8]}"


def _login_redirect(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target, safe='')}")


def _fact(name: str, value: str, marker: str, *, mono: bool = False) -> None:
    with ui.column().classes("gap-0"):
        ui.label(name).classes("text-caption text-grey-7")
        label = ui.label(value).classes("text-body1").mark(marker)
        if mono:
            label.classes("font-mono text-body2")


def _status_badge(status: str) -> ui.badge:
    return ui.badge(status, color=STATUS_COLOURS.get(status, "grey")).classes("text-body2")


def _risk_badge(level: str | None) -> ui.badge:
    text = f"{level} risk" if level else "risk not assessed"
    return ui.badge(text, color=RISK_COLOURS.get(level or "", "grey-5")).classes("text-body2")


# --- code views (pure: text in, escaped HTML out) --------------------------------------------


def _escape(text: str) -> str:
    return html.escape(text, quote=False)


def _code_row(number: int | str, text: str, kind: str = "", title: str = "") -> str:
    attrs = f' class="{kind}"' if kind else ""
    if title:
        attrs += f' title="{html.escape(title)}"'
    return f'<tr{attrs}><td class="n">{number}</td><td class="t">{_escape(text) or " "}</td></tr>'


def excerpt(text: str, line: int, context: int = EXCERPT_CONTEXT) -> list[tuple[int, str]]:
    """The numbered lines around `line` (1-based) of `text`; empty when `line` is outside."""
    lines = text.splitlines()
    if not 1 <= line <= len(lines):
        return []
    first, last = max(1, line - context), min(len(lines), line + context)
    return [(number, lines[number - 1]) for number in range(first, last + 1)]


def excerpt_html(text: str, line: int, column: int | None, severity: str) -> str:
    """The lines around a diagnostic, its line highlighted and a caret under its column."""
    rows = []
    for number, content in excerpt(text, line):
        if number == line:
            rows.append(_code_row(number, content, severity))
            if column and column >= 1:
                rows.append(_code_row("", " " * (column - 1) + "^", "caret"))
        else:
            rows.append(_code_row(number, content))
    return f'<table class="sb-code">{"".join(rows)}</table>' if rows else ""


def file_html(text: str, marks: dict[int, tuple[str, str]]) -> str:
    """A whole file with line numbers; `marks` maps a line to (severity, message)."""
    lines = text.splitlines() or [""]
    rows = [
        _code_row(number, content, *marks.get(number, ("", "")))
        for number, content in enumerate(lines[:FILE_LINES_SHOWN], 1)
    ]
    if len(lines) > FILE_LINES_SHOWN:
        rows.append(_code_row("…", f"{len(lines) - FILE_LINES_SHOWN} more lines (download)"))
    return f'<table class="sb-code">{"".join(rows)}</table>'


def _marks(diagnostics: Iterable[dict[str, Any]], path: str) -> dict[int, tuple[str, str]]:
    """Line → (severity, message) for `path`; an error outranks a warning on the same line."""
    marks: dict[int, tuple[str, str]] = {}
    for diagnostic in diagnostics:
        line = diagnostic.get("line")
        if diagnostic.get("file") != path or not isinstance(line, int):
            continue
        severity = str(diagnostic.get("severity") or "error")
        if line not in marks or severity == "error":
            marks[line] = (severity, str(diagnostic.get("message") or ""))
    return marks


@dataclass(frozen=True)
class DiffRow:
    """One row of a side-by-side diff: a hunk header, an unchanged line, or a change where
    either side may be missing (a pure addition or removal)."""

    kind: str  # "hunk", "same" or "change"
    old_number: int | None = None
    old: str | None = None
    new_number: int | None = None
    new: str | None = None


_HUNK = re.compile(r"^@@ -(\d+)(?:,\d+)? \+(\d+)(?:,\d+)? @@(.*)$")


def side_by_side(diff_text: str) -> list[DiffRow]:
    """A unified diff of one file (`catalog.diff`'s entries) as two-column rows.

    A run of removed lines and the run of added lines right after it are paired line by line,
    so an edited line shows its old and new text on one row. The `---`/`+++` headers precede
    the first hunk only; inside hunks every line is read by its first character, so a removed
    line that itself begins with `--` is not taken for a header.
    """
    rows: list[DiffRow] = []
    removed: list[tuple[int, str]] = []
    added: list[tuple[int, str]] = []
    old_number = new_number = 0
    in_hunk = False

    def flush() -> None:
        for i in range(max(len(removed), len(added))):
            old = removed[i] if i < len(removed) else (None, None)
            new = added[i] if i < len(added) else (None, None)
            rows.append(DiffRow("change", old[0], old[1], new[0], new[1]))
        removed.clear()
        added.clear()

    for line in diff_text.splitlines():
        header = _HUNK.match(line)
        if header:
            flush()
            in_hunk = True
            old_number, new_number = int(header.group(1)), int(header.group(2))
            rows.append(DiffRow("hunk", old=line))
            continue
        if not in_hunk or line.startswith("\\"):
            continue  # file headers, and "\ No newline at end of file"
        sign, text = line[:1], line[1:]
        if sign == "-":
            if added:
                flush()
            removed.append((old_number, text))
            old_number += 1
        elif sign == "+":
            added.append((new_number, text))
            new_number += 1
        else:
            flush()
            rows.append(DiffRow("same", old_number, text, new_number, text))
            old_number += 1
            new_number += 1
    flush()
    return rows


def _diff_cells(number: int | None, text: str | None, kind: str, *, mid: bool = False) -> str:
    """The number and text cells of one side (`kind`: "", "del" or "add"; "empty" when the
    side has no line)."""
    if text is None:
        kind = "empty"
    number_class = " ".join(c for c in ("n", kind, "mid" if mid else "") if c)
    text_class = " ".join(c for c in ("t", kind) if c)
    shown = "" if text is None else (_escape(text) or " ")
    return (
        f'<td class="{number_class}">{"" if number is None else number}</td>'
        f'<td class="{text_class}">{shown}</td>'
    )


def side_by_side_html(rows: list[DiffRow]) -> str:
    """The rows as one four-column table: old number, old text, new number, new text."""
    out = []
    for row in rows[:DIFF_ROWS_SHOWN]:
        if row.kind == "hunk":
            header = _escape(row.old or "")
            out.append(f'<tr class="hunk"><td class="n">⋯</td><td colspan="3">{header}</td></tr>')
        elif row.kind == "same":
            out.append(
                "<tr>"
                + _diff_cells(row.old_number, row.old, "")
                + _diff_cells(row.new_number, row.new, "", mid=True)
                + "</tr>"
            )
        else:
            out.append(
                "<tr>"
                + _diff_cells(row.old_number, row.old, "del")
                + _diff_cells(row.new_number, row.new, "add", mid=True)
                + "</tr>"
            )
    if len(rows) > DIFF_ROWS_SHOWN:
        more = len(rows) - DIFF_ROWS_SHOWN
        out.append(
            f'<tr class="hunk"><td class="n">…</td><td colspan="3">{more} more rows: '
            "compare the files themselves for the rest</td></tr>"
        )
    columns = '<col class="nc"><col class="tc"><col class="nc"><col class="tc">'
    return f'<table class="sb-code sb-diff"><colgroup>{columns}</colgroup>{"".join(out)}</table>'


def _counts(rows: list[DiffRow]) -> tuple[int, int]:
    removed = sum(1 for r in rows if r.kind == "change" and r.old is not None)
    added = sum(1 for r in rows if r.kind == "change" and r.new is not None)
    return added, removed


# --- reading (run in a worker thread inside the Flask app context) ---------------------------


def _row(bundle: Bundle) -> dict[str, Any]:
    return {
        "id": bundle.id,
        "short": bundle.id[:12],
        "version": bundle.version,
        "status": bundle.status,
        "status_colour": STATUS_COLOURS.get(bundle.status, "grey"),
        "risk": bundle.risk_level or "—",
        "risk_colour": RISK_COLOURS.get(bundle.risk_level or "", "grey-5"),
        "size": human_size(bundle.size_bytes),
        "files": len(bundle.manifest.get("files", [])),
        "warnings": plural(len(bundle.warnings), "warning") if bundle.warnings else "",
        "errors": plural(len(bundle.errors), "error") if bundle.errors else "",
        "created": _when(bundle.created_at),
        "created_by": bundle.created_by or "",
    }


def load_list(slug: str, status: str | None, cursor: str | None) -> dict[str, Any]:
    """One page of the project's bundles, newest first (the API's list, same cursor)."""
    project = projects.get_project(slug)
    page = catalog.list_bundles(project.id, status=status, limit=PAGE_SIZE, cursor=cursor)
    return {
        "project_id": str(project.id),
        "rows": [_row(bundle) for bundle in page.items],
        "total": page.total,
        "next_cursor": page.next_cursor,
    }


def load_detail(slug: str, bundle_id: str) -> dict[str, Any]:
    """Everything `/bundles/{id}` shows, as plain values (the signature check included)."""
    project = projects.get_project(slug)
    bundle = catalog.get_bundle(project.id, bundle_id)
    verification = None
    if bundle.status in ("compiled", "revoked"):
        verification = distribution.verify(bundle, catalog.read_artifact(bundle))
    parent = None
    if bundle.parent_bundle_id:
        try:
            parent = _label(catalog.get_bundle(project.id, bundle.parent_bundle_id))
        except NotFound:
            parent = bundle.parent_bundle_id[:12]
    bom = sbom.cyclonedx(
        {
            "id": bundle.id,
            "version": bundle.version,
            "project": slug,
            "manifest": bundle.manifest,
            "created_at": bundle.created_at.isoformat(),
        }
    )
    return {
        "project_id": str(project.id),
        "bundle": bundle.to_dict(),
        "created": _when(bundle.created_at),
        "compiled": _when(bundle.compiled_at),
        "revoked": _when(bundle.revoked_at),
        "manifest": bundle.manifest,
        "files": dict(bundle.files),
        "output": bundle.output or {},
        "verification": verification,
        "parent": parent,
        "sbom": {
            "format": f"{bom['bomFormat']} {bom['specVersion']}",
            "serial": bom["serialNumber"],
            "components": len(bom.get("components", [])),
        },
    }


def load_choices(slug: str, wanted: Iterable[str]) -> dict[str, Any]:
    """The bundles the diff page offers (newest first, plus any `wanted` older one) and, for
    each, its parent — the natural "from" of a "to"."""
    project = projects.get_project(slug)
    bundles = list(catalog.list_bundles(project.id, status=None, limit=CHOICES, cursor=None).items)
    known = {b.id for b in bundles}
    for bundle_id in wanted:
        if bundle_id and bundle_id not in known:
            try:
                bundles.append(catalog.get_bundle(project.id, bundle_id))
            except NotFound:
                continue
    return {
        "options": {b.id: _label(b) for b in bundles},
        "parents": {b.id: b.parent_bundle_id for b in bundles},
        "order": [b.id for b in bundles],
    }


def load_diff(slug: str, old_id: str, new_id: str) -> dict[str, Any]:
    """`catalog.diff` of going from `old_id` to `new_id`, with each file as side-by-side rows."""
    project = projects.get_project(slug)
    old = catalog.get_bundle(project.id, old_id)
    new = catalog.get_bundle(project.id, new_id)
    result = catalog.diff(new, old)
    files = []
    for entry in result["files"]:
        rows = side_by_side(entry["diff"])
        added, removed = _counts(rows)
        files.append(
            {
                "path": entry["path"],
                "status": entry["status"],
                "added": added,
                "removed": removed,
                "html": side_by_side_html(rows),
            }
        )
    return {
        "old": {"id": old.id, "version": old.version},
        "new": {"id": new.id, "version": new.version},
        "summary": result["summary"],
        "risk_level": result["risk_level"],
        "risk_reasons": result["risk_reasons"],
        "files": files,
    }


# --- acting (the same domain calls as blueprints/bundles.py, with the same scopes) -----------


def files_from_upload(uploads: list[tuple[str, bytes]], current: dict[str, str]) -> dict[str, str]:
    """What the form holds after an upload, read by the functions the API's multipart upload
    uses: one `.tar.gz` replaces every file; `.kdl` files join the form's non-empty files
    (replacing those of the same name), and the whole set is checked as one upload."""
    if len(uploads) == 1 and uploads[0][0].endswith((".tar.gz", ".tgz")):
        return sources.files_from_targz(uploads[0][1])
    names = {name for name, _ in uploads}
    kept = [
        (path, text.encode("utf-8"))
        for path, text in current.items()
        if text.strip() and path not in names
    ]
    return sources.files_from_uploads(kept + uploads)


def _validate(cookie: str | None, slug: str, files: dict[str, str]) -> dict[str, Any]:
    principal = acting_principal(cookie)
    principal.require(READ)
    projects.get_project(slug, visible_to=principal.project_id)
    checked = sources.files_from_mapping(files)
    binary = flask_app().config["SENTINEL_SETTINGS"].sentinel_binary
    return compiler.dry_run(checked, binary=binary)


def _submit(
    cookie: str | None, slug: str, version: str, files: dict[str, str], source_type: str
) -> tuple[str, bool]:
    principal = acting_principal(cookie)
    principal.require(WRITE)
    project = projects.get_project(slug, visible_to=principal.project_id)
    checked = sources.files_from_mapping(files)
    bundle, existing = compiler.submit(
        principal.actor, project, checked, version=version, source_type=source_type
    )
    return bundle.id, existing


def _revoke(cookie: str | None, slug: str, bundle_id: str, reason: str | None) -> None:
    principal = acting_principal(cookie)
    principal.require(WRITE)
    project = projects.get_project(slug, visible_to=principal.project_id)
    distribution.revoke(principal.actor, catalog.get_bundle(project.id, bundle_id), reason=reason)


async def validate_files(cookie: str | None, slug: str, files: dict[str, str]) -> dict[str, Any]:
    """The API's dry run (`POST …/bundles/validate`) as the cookie's user (`bundles:read`)."""
    return await call(_validate, cookie, slug, files)


async def submit_bundle(
    cookie: str | None, slug: str, version: str, files: dict[str, str], source_type: str = "api"
) -> tuple[str, bool]:
    """Submit as the cookie's user (`bundles:write`, audited by the domain); returns the
    bundle's id and whether identical content already existed."""
    return await call(_submit, cookie, slug, version, files, source_type)


async def revoke_bundle(cookie: str | None, slug: str, bundle_id: str, reason: str | None) -> None:
    """Revoke as the cookie's user (`bundles:write`, audited by the domain)."""
    if reason is not None and len(reason) > REASON_MAX:
        raise Invalid("Reason too long", fields={"reason": [f"at most {REASON_MAX} characters"]})
    await call(_revoke, cookie, slug, bundle_id, reason)


# --- diagnostics (validation and compile output) ---------------------------------------------


def _location(diagnostic: dict[str, Any]) -> str:
    parts = [str(diagnostic[key]) for key in ("file", "line", "column") if diagnostic.get(key)]
    return ":".join(parts) if parts else "bundle"


def show_diagnostics(
    diagnostics: list[dict[str, Any]],
    files: dict[str, str],
    on_pick: Callable[[str], Any] | None = None,
) -> None:
    """Each error or warning with its file:line:column, message, fix and the lines around it
    (the offending line highlighted, a caret under the column)."""
    for diagnostic in diagnostics[:DIAGNOSTICS_SHOWN]:
        severity = str(diagnostic.get("severity") or "error")
        path, line = diagnostic.get("file"), diagnostic.get("line")
        with ui.column().classes("w-full gap-1 py-2").mark(f"diagnostic-{severity}"):
            with ui.row().classes("items-center gap-2 no-wrap"):
                ui.badge(severity, color=SEVERITY_COLOURS.get(severity, "grey")).props("outline")
                location = ui.label(_location(diagnostic)).classes("font-mono text-weight-medium")
                location.mark("diagnostic-location")
                if on_pick is not None and path in files:
                    location.classes("cursor-pointer text-primary")
                    location.tooltip("Open this file in the editor")
                    location.on("click", lambda _, p=path: on_pick(str(p)))
                ui.label(str(diagnostic.get("code") or "")).classes("text-caption text-grey-7")
            ui.label(str(diagnostic.get("message") or "")).classes("whitespace-pre-wrap").mark(
                "diagnostic-message"
            )
            if diagnostic.get("suggestion"):
                ui.label(f"fix: {diagnostic['suggestion']}").classes("text-grey-8 italic")
            if isinstance(path, str) and path in files and isinstance(line, int):
                snippet = excerpt_html(files[path], line, diagnostic.get("column"), severity)
                if snippet:
                    ui.html(snippet, sanitize=False).classes("w-full").mark("diagnostic-excerpt")
    if len(diagnostics) > DIAGNOSTICS_SHOWN:
        ui.label(f"… and {len(diagnostics) - DIAGNOSTICS_SHOWN} more").classes("text-grey-7")


def _report(text: str | None, title: str = "Validator report") -> None:
    if text:
        with ui.expansion(title, icon="description").classes("w-full").mark("report"):
            ui.label(text).classes("font-mono text-body2 whitespace-pre-wrap")


# --- /bundles --------------------------------------------------------------------------------

LIST_COLUMNS = [
    {"name": "version", "label": "Version", "field": "version", "align": "left"},
    {"name": "status", "label": "Status", "field": "status", "align": "left"},
    {"name": "risk", "label": "Risk", "field": "risk", "align": "left"},
    {"name": "size", "label": "Size", "field": "size", "align": "right"},
    {"name": "files", "label": "Files", "field": "files", "align": "right"},
    {"name": "created", "label": "Created (UTC)", "field": "created", "align": "left"},
    {"name": "created_by", "label": "By", "field": "created_by", "align": "left"},
    {"name": "short", "label": "Id", "field": "short", "align": "left"},
]


@ui.page("/bundles")
async def bundles_page(request: Request):
    operator = await current_operator(request)
    if operator is None:
        return _login_redirect(request)
    slug, slugs = await page_context()
    with frame(operator, "Bundles", slug, slugs):
        if slug is None:
            no_projects()
            return None
        view: dict[str, Any] = {"status": None, "cursors": [None], "next_cursor": None}
        data = await call(load_list, slug, None, None)
        with ui.row().classes("w-full items-center justify-between"):
            status_filter = (
                ui.select({None: "every status", **{s: s for s in STATUSES}}, label="Status")
                .props("dense outlined")
                .classes("min-w-[12rem]")
                .mark("status-filter")
            )
            with ui.row().classes("gap-2"):
                ui.button(
                    "Compare",
                    icon="compare_arrows",
                    on_click=lambda: ui.navigate.to("/bundles/diff"),
                ).props("outline").mark("compare")
                if operator.can(WRITE):
                    ui.button(
                        "New bundle", icon="add", on_click=lambda: ui.navigate.to("/bundles/new")
                    ).props("unelevated").mark("new-bundle")
        table = (
            ui.table(columns=LIST_COLUMNS, rows=data["rows"], row_key="id")
            .classes("w-full")
            .props("flat bordered")
            .mark("bundles-table")
        )
        table.add_slot(
            "body-cell-version",
            '<q-td :props="props"><a :href="\'/bundles/\' + props.row.id" '
            'class="text-primary text-weight-medium">{{ props.value }}</a></q-td>',
        )
        table.add_slot(
            "body-cell-status",
            '<q-td :props="props"><q-badge :color="props.row.status_colour" :label="props.value" />'
            '<span v-if="props.row.errors" class="text-caption text-negative q-ml-sm">'
            "{{ props.row.errors }}</span>"
            '<span v-if="props.row.warnings" class="text-caption text-grey-7 q-ml-sm">'
            "{{ props.row.warnings }}</span></q-td>",
        )
        table.add_slot(
            "body-cell-risk",
            '<q-td :props="props"><q-badge v-if="props.value != \'—\'" '
            ':color="props.row.risk_colour" :label="props.value" />'
            '<span v-else class="text-grey-6">—</span></q-td>',
        )
        table.add_slot(
            "body-cell-short",
            '<q-td :props="props"><span class="font-mono text-grey-8">{{ props.value }}</span>'
            "</q-td>",
        )
        table.on("rowClick", lambda e: ui.navigate.to(f"/bundles/{e.args[1]['id']}"))
        empty = ui.label("").classes("text-grey-7").mark("no-bundles")
        with ui.row().classes("w-full items-center justify-end gap-2"):
            position = ui.label("").classes("text-grey-7").mark("bundles-position")
            newer = ui.button("Newer", icon="chevron_left").props("flat dense").mark("newer")
            older = ui.button("Older").props("flat dense icon-right=chevron_right").mark("older")

        def show(fresh: dict[str, Any]) -> None:
            table.rows = fresh["rows"]
            table.update()
            page = len(view["cursors"]) - 1
            first = page * PAGE_SIZE + 1
            last = page * PAGE_SIZE + len(fresh["rows"])
            position.set_text(f"{first}–{last} of {fresh['total']}" if fresh["rows"] else "")
            if view["status"]:
                empty.set_text(f"No {view['status']} bundles.")
            else:
                empty.set_text(
                    "No bundles yet"
                    + (
                        ": submit a configuration with “New bundle”."
                        if operator.can(WRITE)
                        else "."
                    )
                )
            empty.set_visibility(not fresh["rows"])
            newer.set_visibility(page > 0)
            older.set_visibility(fresh["next_cursor"] is not None)
            view["next_cursor"] = fresh["next_cursor"]

        async def reload() -> None:
            show(await call(load_list, slug, view["status"], view["cursors"][-1]))

        async def go_older() -> None:
            if view["next_cursor"]:
                view["cursors"].append(view["next_cursor"])
                await reload()

        async def go_newer() -> None:
            if len(view["cursors"]) > 1:
                view["cursors"].pop()
                await reload()

        async def filter_status(event: Any) -> None:
            view["status"], view["cursors"] = event.value, [None]
            await reload()

        older.on_click(go_older)
        newer.on_click(go_newer)
        status_filter.on_value_change(filter_status)
        show(data)
        live.follow(live.for_project(data["project_id"], "bundle"), reload)
    return None


# --- /bundles/new ----------------------------------------------------------------------------


class SubmissionForm:
    """The `/bundles/new` form of one browser tab: the files being written, the last dry run."""

    def __init__(self, cookie: str | None, slug: str) -> None:
        self.cookie = cookie
        self.slug = slug
        self.files: dict[str, str] = {sources.ENTRY: ""}
        self.current = sources.ENTRY
        self.source_type = "api"
        with ui.card().classes("w-full"):
            with ui.row().classes("w-full items-start gap-4 no-wrap"):
                with ui.column().classes("gap-2 min-w-[14rem]"):
                    self.version = (
                        ui.input("Version", placeholder="v42")
                        .props("outlined dense maxlength=64")
                        .classes("w-full")
                        .mark("version")
                    )
                    ui.label(
                        "A label unique in the project: letters, digits and . _ : + @ -"
                    ).classes("text-caption text-grey-7")
                self.upload = (
                    ui.upload(
                        label="Upload .kdl files or one .tar.gz",
                        multiple=True,
                        auto_upload=True,
                        max_total_size=UPLOAD_MAX_BYTES,
                        on_multi_upload=self.uploaded,
                        on_rejected=lambda: ui.notify(
                            f"Uploads are limited to {human_size(UPLOAD_MAX_BYTES)}",
                            type="negative",
                        ),
                    )
                    .props('accept=".kdl,.tar.gz,.tgz" flat bordered')
                    .classes("grow")
                    .mark("upload")
                )
            with ui.row().classes("w-full items-center gap-2"):
                self.picker = (
                    ui.select(
                        [sources.ENTRY], value=sources.ENTRY, label="File", on_change=self.pick
                    )
                    .props("outlined dense")
                    .classes("min-w-[16rem]")
                    .mark("file-picker")
                )
                self.new_name = (
                    ui.input("Another file", placeholder="routes/api.kdl")
                    .props("outlined dense")
                    .classes("min-w-[14rem]")
                    .mark("new-file-name")
                )
                ui.button("Add file", icon="note_add", on_click=self.add_file).props("flat").mark(
                    "add-file"
                )
                self.remove_button = (
                    ui.button("Remove file", icon="delete", on_click=self.remove_file)
                    .props("flat color=negative")
                    .mark("remove-file")
                )
            self.editor = (
                ui.textarea(
                    label=f"{sources.ENTRY} (KDL v2; other files join through include)",
                    on_change=self.edited,
                )
                .props(
                    'outlined spellcheck=false input-style="font-family: ui-monospace, Menlo, '
                    'Consolas, monospace; font-size: 13px; min-height: 22rem"'
                )
                .classes("w-full")
                .mark("source")
            )
            with ui.row().classes("w-full items-center justify-between"):
                self.stale = ui.label("The files changed since this check: validate again.")
                self.stale.classes("text-caption text-warning").mark("stale")
                self.stale.set_visibility(False)
                with ui.row().classes("gap-2"):
                    self.validate_button = (
                        ui.button("Validate", icon="fact_check", on_click=self.validate)
                        .props("outline")
                        .mark("validate")
                    )
                    self.submit_button = (
                        ui.button("Submit", icon="cloud_upload", on_click=self.submit)
                        .props("unelevated")
                        .mark("submit")
                    )
        self.results = ui.column().classes("w-full gap-2").mark("validation")
        self._sync_picker()

    # -- the files being written

    def _sync_picker(self) -> None:
        self.picker.set_options(sorted(self.files, key=lambda p: (p != sources.ENTRY, p)))
        self.picker.value = self.current
        self.editor.props(f'label="{self.current}"')
        self.editor.value = self.files.get(self.current, "")
        self.remove_button.set_visibility(self.current != sources.ENTRY)

    def show_file(self, path: str) -> None:
        if path in self.files:
            self.current = path
            self._sync_picker()

    def pick(self, event: Any) -> None:
        if event.value and event.value != self.current:
            self.show_file(str(event.value))

    def edited(self, event: Any) -> None:
        text = event.value or ""
        if text == self.files.get(self.current):
            return  # switching files, not editing
        self.files[self.current] = text
        if self.results.default_slot.children:
            self.stale.set_visibility(True)

    def add_file(self) -> None:
        path = (self.new_name.value or "").strip()
        if not path:
            ui.notify("Name the new file first, e.g. routes/api.kdl", type="warning")
            return
        problems = sources.path_problems(path)
        if problems:
            ui.notify(f"{path}: {'; '.join(problems)}", type="negative")
            return
        self.files.setdefault(path, "")
        self.new_name.value = ""
        self.show_file(path)

    def remove_file(self) -> None:
        if self.current != sources.ENTRY:
            self.files.pop(self.current, None)
            self.current = sources.ENTRY
            self._sync_picker()

    async def uploaded(self, event: Any) -> None:
        self.upload.reset()
        if sum(file.size() for file in event.files) > UPLOAD_MAX_BYTES:
            # the browser enforces this too; a crafted request is refused before it is read
            ui.notify(f"Uploads are limited to {human_size(UPLOAD_MAX_BYTES)}", type="negative")
            return
        uploads = [(file.name, await file.read()) for file in event.files]
        try:
            files = files_from_upload(uploads, self.files)
        except DomainError as exc:
            refuse(exc)
            return
        self.files, self.source_type = files, "upload"
        self.current = sources.ENTRY if sources.ENTRY in files else sorted(files)[0]
        self._sync_picker()
        ui.notify(
            f"Loaded {plural(len(files), 'file')}: {', '.join(sorted(files))}", type="positive"
        )

    # -- dry run and submission

    async def validate(self) -> None:
        files = dict(self.files)
        self.validate_button.props("loading")
        try:
            result = await validate_files(self.cookie, self.slug, files)
        except DomainError as exc:
            refuse(exc)
            return
        finally:
            self.validate_button.props(remove="loading")
        self.show_result(result, files)

    def show_result(self, result: dict[str, Any], files: dict[str, str]) -> None:
        errors = list(result.get("errors") or [])
        warnings = list(result.get("warnings") or []) + list(result.get("node_warnings") or [])
        self.stale.set_visibility(False)
        self.results.clear()
        with self.results, ui.card().classes("w-full"):
            valid = bool(result.get("valid"))
            with ui.row().classes("items-center gap-2"):
                ui.icon("check_circle" if valid else "error", size="md").classes(
                    "text-positive" if valid else "text-negative"
                )
                verdict = "Valid" if valid else f"Invalid: {plural(len(errors), 'error')}"
                if warnings:
                    verdict += f", {plural(len(warnings), 'warning')}"
                ui.label(verdict).classes("text-h6").mark("verdict")
                if result.get("stage") and not valid:
                    ui.label(f"(stopped at {result['stage']})").classes("text-grey-7")
            show_diagnostics(errors + warnings, files, on_pick=self.show_file)
            _report(result.get("report"))
            external = result.get("external")
            if external and external.get("output"):
                _report(external["output"], "External check output")

    async def submit(self) -> None:
        version = (self.version.value or "").strip()
        self.submit_button.props("loading")
        try:
            bundle_id, existing = await submit_bundle(
                self.cookie, self.slug, version, dict(self.files), self.source_type
            )
        except DomainError as exc:
            refuse(exc)
            return
        finally:
            self.submit_button.props(remove="loading")
        if existing:
            ui.notify("Identical content exists already: showing that bundle", type="info")
        else:
            ui.notify(f"Bundle {version} submitted; compiling", type="positive")
        ui.navigate.to(f"/bundles/{bundle_id}")


@ui.page("/bundles/new")
async def new_bundle_page(request: Request):
    operator = await current_operator(request)
    if operator is None:
        return _login_redirect(request)
    slug, slugs = await page_context()
    ui.add_css(CSS)
    with frame(operator, "New bundle", slug, slugs):
        ui.link("← All bundles", "/bundles").classes("text-primary").mark("back-to-bundles")
        if slug is None:
            no_projects()
            return None
        if not operator.can(WRITE):
            ui.label(
                f"Your role ({operator.role}) can read bundles but not submit them; "
                "an operator or an admin can."
            ).classes("text-grey-8").mark("read-only-note")
            return None
        SubmissionForm(session_cookie(request), slug)
    return None


# --- /bundles/diff ---------------------------------------------------------------------------


def _default_pair(
    choices: dict[str, Any], old: str | None, new: str | None
) -> tuple[str | None, str | None]:
    """Without both ends: the newest bundle (or the one asked for) against its parent, else
    against the bundle before it."""
    order: list[str] = choices["order"]
    if new not in choices["options"]:
        new = order[0] if order else None
    if old not in choices["options"]:
        parent = choices["parents"].get(new)
        if parent in choices["options"]:
            old = parent
        else:
            others = [b for b in order if b != new]
            if new in order:
                later = order[order.index(new) + 1 :]
                others = later or others
            old = others[0] if others else None
    return old, new


def show_summary(summary: dict[str, Any]) -> None:
    """The semantic summary: entities added, removed and changed, and the focused flags."""
    changed = False
    with ui.column().classes("w-full gap-2").mark("semantic-summary"):
        for kind in SUMMARY_KINDS:
            table = summary.get(kind) or {}
            if not any(table.get(state) for state in ("added", "removed", "changed")):
                continue
            changed = True
            with ui.row().classes("items-center gap-1").mark(f"summary-{kind}"):
                ui.label(kind.capitalize()).classes("w-28 text-weight-medium")
                for state, colour, sign in (
                    ("added", "positive", "+"),
                    ("removed", "negative", "−"),
                    ("changed", "orange-9", "~"),
                ):
                    names = list(table.get(state) or [])
                    for name in names[:NAMES_SHOWN]:
                        ui.chip(f"{sign} {name}", color=colour).props(
                            "dense outline square"
                        ).tooltip(state).mark(f"summary-{kind}-{state}")
                    if len(names) > NAMES_SHOWN:
                        ui.label(f"and {len(names) - NAMES_SHOWN} more {state}").classes(
                            "text-caption text-grey-7"
                        )
        flags = [label for key, label in SUMMARY_FLAGS.items() if summary.get(key)]
        if flags:
            changed = True
            with ui.row().classes("items-center gap-1").mark("summary-flags"):
                ui.label("Also").classes("w-28 text-weight-medium")
                for label in flags:
                    ui.badge(f"{label} changed", color="orange-9").props("outline")
        if not changed:
            ui.label("No semantic change: only formatting, comments or order differ.").classes(
                "text-grey-7"
            ).mark("no-semantic-change")


def show_file_diffs(files: list[dict[str, Any]]) -> None:
    if not files:
        ui.label("The files are identical.").classes("text-grey-7").mark("no-file-changes")
    status_colours = {"added": "positive", "removed": "negative", "changed": "orange-9"}
    for entry in files:
        with ui.card().classes("w-full p-0 gap-0").mark("file-diff"):
            with ui.row().classes("w-full items-center gap-3 px-4 py-2 bg-grey-1"):
                ui.label(entry["path"]).classes("font-mono text-weight-medium").mark("diff-path")
                ui.badge(entry["status"], color=status_colours.get(entry["status"], "grey"))
                ui.label(f"+{entry['added']}").classes("text-positive text-weight-medium")
                ui.label(f"−{entry['removed']}").classes("text-negative text-weight-medium")
            ui.html(entry["html"], sanitize=False).classes("w-full sb-scroll").mark("side-by-side")


@ui.page("/bundles/diff")
async def diff_page(request: Request, a: str | None = None, b: str | None = None):
    operator = await current_operator(request)
    if operator is None:
        return _login_redirect(request)
    slug, slugs = await page_context()
    ui.add_css(CSS)
    with frame(operator, "Compare bundles", slug, slugs):
        ui.link("← All bundles", "/bundles").classes("text-primary").mark("back-to-bundles")
        if slug is None:
            no_projects()
            return None
        choices = await call(load_choices, slug, [x for x in (a, b) if x])
        if len(choices["options"]) < 2:
            ui.label("Comparing needs two bundles; this project has fewer.").classes(
                "text-grey-7"
            ).mark("too-few-bundles")
            return None
        old, new = _default_pair(choices, a, b)

        def go(old_id: str | None, new_id: str | None) -> None:
            ui.navigate.to("/bundles/diff?" + urlencode({"a": old_id or "", "b": new_id or ""}))

        with ui.card().classes("w-full"):
            with ui.row().classes("w-full items-center gap-3 no-wrap"):
                old_select = (
                    ui.select(choices["options"], value=old, label="From (old)", with_input=True)
                    .props("outlined dense")
                    .classes("grow")
                    .mark("diff-a")
                )
                ui.button(icon="swap_horiz", on_click=lambda: go(new, old)).props(
                    "flat round"
                ).tooltip("Swap").mark("swap")
                new_select = (
                    ui.select(choices["options"], value=new, label="To (new)", with_input=True)
                    .props("outlined dense")
                    .classes("grow")
                    .mark("diff-b")
                )
            old_select.on_value_change(lambda e: go(e.value, new_select.value))
            new_select.on_value_change(lambda e: go(old_select.value, e.value))
        if old == new:
            ui.label("Pick two different bundles.").classes("text-grey-7").mark("same-bundle")
            return None
        assert old is not None and new is not None
        try:
            data = await call(load_diff, slug, old, new)
        except DomainError as exc:
            ui.label(explain(exc)).classes("text-negative").mark("diff-error")
            return None
        with ui.card().classes("w-full"):
            with ui.row().classes("items-center gap-3"):
                ui.label(f"From {data['old']['version']} to {data['new']['version']}").classes(
                    "text-h6"
                )
                _risk_badge(data["risk_level"]).mark("diff-risk")
            with ui.column().classes("gap-0"):
                for reason in data["risk_reasons"]:
                    ui.label(f"• {reason}").classes("text-body2").mark("diff-risk-reason")
            ui.separator()
            show_summary(data["summary"])
        show_file_diffs(data["files"])
    return None


# --- /bundles/{id} ---------------------------------------------------------------------------


def _check(ok: bool | None, text: str, marker: str) -> None:
    with ui.row().classes("items-center gap-2 no-wrap").mark(marker):
        if ok is None:
            ui.icon("remove", color="grey-6")
        else:
            ui.icon("check_circle" if ok else "cancel", color="positive" if ok else "negative")
        ui.label(text)


class BundleDetail:
    """The `/bundles/{id}` page of one browser tab."""

    def __init__(self, operator: Operator, cookie: str | None, slug: str, data: dict[str, Any]):
        self.operator = operator
        self.cookie = cookie
        self.slug = slug
        self.data = data
        self.bundle_id: str = data["bundle"]["id"]
        files = data["files"]
        self.file = sources.ENTRY if sources.ENTRY in files else next(iter(sorted(files)), "")
        self.body = ui.refreshable(self._body)
        self.body()

    # -- layout

    def _body(self) -> None:
        bundle = self.data["bundle"]
        api = f"/api/v1/projects/{self.slug}/bundles/{self.bundle_id}"
        with ui.row().classes("w-full items-center justify-between"):
            ui.link("← All bundles", "/bundles").classes("text-primary").mark("back-to-bundles")
            with ui.row().classes("gap-2 items-center"):
                query = {"b": self.bundle_id}
                if bundle["parent_bundle_id"]:
                    query["a"] = bundle["parent_bundle_id"]
                ui.button(
                    "Compare",
                    icon="compare_arrows",
                    on_click=lambda: ui.navigate.to("/bundles/diff?" + urlencode(query)),
                ).props("outline").mark("compare")
                verification = self.data["verification"]
                if verification and verification["artifact_present"]:
                    with ui.link(target=f"{api}/download").mark("download"):
                        ui.button("Download", icon="download").props("outline")
                if self.operator.can(WRITE) and bundle["status"] == "compiled":
                    ui.button("Revoke", icon="block", on_click=self.confirm_revoke).props(
                        "outline color=negative"
                    ).mark("revoke")
        if bundle["status"] == "revoked":
            with ui.card().classes("w-full bg-orange-1").mark("revoked-banner"):
                ui.label(
                    f"Revoked at {self.data['revoked']} UTC"
                    + (f": {bundle['revoke_reason']}" if bundle["revoke_reason"] else ".")
                ).classes("text-body1").mark("revoke-note")
                ui.label(
                    "No node is offered it any more; nodes still running it show as drifted. "
                    "The artifact is kept."
                ).classes("text-grey-8")
        with ui.row().classes("w-full gap-4 items-stretch no-wrap"):
            self._summary_card(bundle)
            self._signature_card()
        self._output_card(bundle)
        self._files_card()
        with ui.row().classes("w-full gap-4 items-stretch no-wrap"):
            self._manifest_card()
            self._sbom_card(api)

    def _summary_card(self, bundle: dict[str, Any]) -> None:
        with ui.card().classes("grow basis-0").mark("bundle-summary"):
            with ui.row().classes("items-center gap-2"):
                ui.label(bundle["version"]).classes("text-h6").mark("bundle-version")
                _status_badge(bundle["status"]).mark("bundle-status")
                if bundle["status"] in ("pending", "compiling"):
                    ui.spinner(size="sm").mark("compiling")
                _risk_badge(bundle["risk_level"]).mark("bundle-risk")
            with ui.column().classes("gap-0"):
                for reason in bundle["risk_reasons"]:
                    ui.label(f"• {reason}").classes("text-body2").mark("risk-reason")
                if bundle["status"] in ("pending", "compiling"):
                    ui.label("Risk is assessed when the compile finishes.").classes(
                        "text-grey-7 text-body2"
                    )
            with ui.row().classes("gap-x-8 gap-y-2 pt-2"):
                _fact("Size", human_size(bundle["size_bytes"]), "bundle-size")
                _fact("Created (UTC)", self.data["created"], "bundle-created")
                _fact("By", bundle["created_by"] or "—", "bundle-created-by")
                _fact("Source", bundle["source_type"], "bundle-source")
                if bundle["compiled_at"]:
                    _fact("Compiled (UTC)", self.data["compiled"], "bundle-compiled")
                previous = self.data["parent"]
                if previous is None:
                    first = bundle["status"] in ("compiled", "revoked")
                    previous = "— (the project's first)" if first else "—"
                _fact("Previous compiled", previous, "bundle-parent")
            _fact("Id (sha256 of the archive)", bundle["id"], "bundle-id", mono=True)

    def _signature_card(self) -> None:
        verification = self.data["verification"]
        with ui.card().classes("min-w-[18rem]").mark("signature"):
            ui.label("Signature").classes("text-subtitle1")
            if verification is None:
                ui.label("Signed when the compile succeeds.").classes("text-grey-7")
                return
            ok = verification["verified"]
            with ui.row().classes("items-center gap-2"):
                ui.icon("verified" if ok else "gpp_bad", size="md").classes(
                    "text-positive" if ok else "text-negative"
                )
                ui.label("Verified" if ok else "Not verified").classes("text-h6").mark(
                    "signature-verdict"
                )
            _check(verification["signature_valid"], "Ed25519 signature valid", "signature-valid")
            _check(verification["checksum_valid"], "archive matches its sha256", "checksum-valid")
            _check(verification["artifact_present"], "artifact stored", "artifact-present")
            key = verification["key_id"] or "—"
            state = f" ({verification['key_state']})" if verification["key_state"] else ""
            ui.label(f"Key {key}{state}").classes("text-caption text-grey-7 font-mono")

    def _output_card(self, bundle: dict[str, Any]) -> None:
        output = self.data["output"]
        diagnostics = list(bundle["errors"]) + list(bundle["warnings"])
        with ui.card().classes("w-full").mark("compile-output"):
            with ui.row().classes("items-center gap-3"):
                ui.label("Compile output").classes("text-subtitle1")
                if bundle["errors"]:
                    ui.badge(plural(len(bundle["errors"]), "error"), color="negative")
                if bundle["warnings"]:
                    ui.badge(plural(len(bundle["warnings"]), "warning"), color="warning")
                if output.get("duration_ms") is not None:
                    ui.label(
                        f"{output['duration_ms']} ms, attempt {output.get('attempt', 1)}"
                    ).classes("text-caption text-grey-7")
            if bundle["status"] in ("pending", "compiling"):
                ui.label(f"The bundle is {bundle['status']}; this page updates by itself.").classes(
                    "text-grey-7"
                ).mark("compile-waiting")
                if output.get("last_error"):
                    ui.label(f"Last attempt: {output['last_error']}").classes("text-warning")
                return
            if not diagnostics:
                ui.label("No errors, no warnings.").classes("text-grey-7").mark("output-clean")
            show_diagnostics(diagnostics, self.data["files"], on_pick=self.show_file)
            _report(output.get("report"))
            external = output.get("external")
            if external and external.get("output"):
                _report(external["output"], "External check output")

    def _files_card(self) -> None:
        files = self.data["files"]
        bundle = self.data["bundle"]
        with ui.card().classes("w-full").mark("files"):
            with ui.row().classes("w-full items-center gap-3"):
                ui.label("Files").classes("text-subtitle1")
                self.file_select = (
                    ui.select(
                        sorted(files, key=lambda p: (p != sources.ENTRY, p)),
                        value=self.file or None,
                        on_change=lambda e: self.show_file(str(e.value)),
                    )
                    .props("outlined dense")
                    .classes("min-w-[18rem]")
                    .mark("file-select")
                )
                ui.label(plural(len(files), "file")).classes("text-grey-7")
            marks = _marks(list(bundle["errors"]) + list(bundle["warnings"]), self.file)
            self.file_view = (
                ui.html(file_html(files.get(self.file, ""), marks), sanitize=False)
                .classes("w-full sb-scroll")
                .mark("file-view")
            )

    def _manifest_card(self) -> None:
        manifest = self.data["manifest"]
        with ui.card().classes("grow basis-0").mark("manifest"):
            ui.label("Manifest").classes("text-subtitle1")
            with ui.row().classes("gap-8"):
                _fact("Schema", str(manifest.get("schema_version", "—")), "manifest-schema")
                _fact(
                    "config_sha256 (drift)",
                    str(manifest.get("config_sha256", "—"))[:16] + "…",
                    "manifest-config",
                    mono=True,
                )
            ui.table(
                columns=[
                    {"name": "path", "label": "Path", "field": "path", "align": "left"},
                    {"name": "size", "label": "Size", "field": "size", "align": "right"},
                    {"name": "sha256", "label": "sha256", "field": "sha256", "align": "left"},
                ],
                rows=[
                    {
                        "path": entry["path"],
                        "size": human_size(entry.get("size")),
                        "sha256": str(entry.get("sha256", ""))[:16] + "…",
                    }
                    for entry in manifest.get("files", [])
                ],
                row_key="path",
            ).classes("w-full").props("flat dense").mark("manifest-files")
            with ui.expansion("manifest.json", icon="data_object").classes("w-full"):
                ui.label(json.dumps(manifest, indent=2, sort_keys=True)).classes(
                    "font-mono text-body2 whitespace-pre-wrap break-all"
                )

    def _sbom_card(self, api: str) -> None:
        bom = self.data["sbom"]
        with ui.card().classes("min-w-[18rem]").mark("sbom"):
            ui.label("SBOM").classes("text-subtitle1")
            _fact("Format", bom["format"], "sbom-format")
            _fact("Components", plural(bom["components"], "file"), "sbom-components")
            _fact("Serial", bom["serial"], "sbom-serial", mono=True)
            ui.link("CycloneDX JSON", f"{api}/sbom", new_tab=True).classes("text-primary")

    # -- behaviour

    def show_file(self, path: str) -> None:
        if path not in self.data["files"]:
            return
        self.file = path
        bundle = self.data["bundle"]
        marks = _marks(list(bundle["errors"]) + list(bundle["warnings"]), path)
        self.file_view.set_content(file_html(self.data["files"][path], marks))
        if self.file_select.value != path:
            self.file_select.value = path

    async def reload(self) -> None:
        try:
            self.data = await call(load_detail, self.slug, self.bundle_id)
        except NotFound:
            return  # bundles are never deleted; a project switch elsewhere is not ours to follow
        self.body.refresh()

    async def confirm_revoke(self) -> None:
        version = self.data["bundle"]["version"]
        with (
            ui.context.client.layout,
            ui.dialog() as dialog,
            ui.card().classes("w-[32rem] max-w-full"),
        ):
            ui.label(f"Revoke bundle {version}?").classes("text-h6")
            ui.label(
                "No node is offered it from now on, running rollouts of it fail at their next "
                "tick, and nodes still running it show as drifted. This cannot be undone; the "
                "artifact is kept for forensics."
            )
            reason = (
                ui.textarea("Reason (recorded in the audit log)")
                .props(f"outlined autogrow maxlength={REASON_MAX} counter")
                .classes("w-full")
                .mark("revoke-reason")
            )
            with ui.row().classes("w-full justify-end"):
                ui.button("Cancel", on_click=lambda: dialog.submit(None)).props("flat")
                ui.button("Revoke", on_click=lambda: dialog.submit(reason.value or "")).props(
                    "color=negative"
                ).mark("confirm-revoke")
        text = await dialog
        dialog.delete()
        if text is None:
            return
        try:
            await revoke_bundle(self.cookie, self.slug, self.bundle_id, text.strip() or None)
        except DomainError as exc:
            refuse(exc)
            return
        ui.notify(f"Bundle {version} revoked", type="positive")
        await self.reload()


@ui.page("/bundles/{bundle_id}")
async def bundle_page(request: Request, bundle_id: str):
    operator = await current_operator(request)
    if operator is None:
        return _login_redirect(request)
    slug, slugs = await page_context()
    data = None
    if slug is not None:
        try:
            data = await call(load_detail, slug, bundle_id)
        except NotFound:
            data = None
    ui.add_css(CSS)
    title = f"Bundle {data['bundle']['version']}" if data else "Bundle not found"
    with frame(operator, title, slug, slugs):
        if data is None:
            ui.label(f"There is no such bundle in project {slug}.").mark("bundle-not-found")
            ui.link("← All bundles", "/bundles").classes("text-primary")
            return None
        assert slug is not None  # data was loaded from it
        detail = BundleDetail(operator, session_cookie(request), slug, data)
        live.follow(
            lambda e: (
                e.get("project") == data["project_id"]
                and e.get("kind") == "bundle"
                and e.get("id") == detail.bundle_id
            ),
            detail.reload,
        )
    return None
