"""The Bundles pages of the console, driven by NiceGUI's simulated user (and once by Chromium)."""

from __future__ import annotations

import asyncio
import gzip
import importlib
import io
import tarfile
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import pytest
from bundle_helpers import BROKEN, CONFIG
from nicegui import ui
from nicegui.elements.upload_files import SmallFileUpload
from nicegui.testing import User
from test_server import chromium  # noqa: F401 - the fixture: Debian's Chromium via chromedriver

from sentinel_cp.errors import Forbidden

if TYPE_CHECKING:
    from console_support import Console

pytest_plugins = ["console_support"]
T = TypeVar("T")

CHANGED = CONFIG.replace('target "127.0.0.1:9000"', 'target "127.0.0.1:9001"').replace(
    "routes {",
    'routes {\n    route "health" {\n        matches {\n            path-prefix "/health"\n'
    '        }\n        upstream "backend"\n    }',
    1,
)


# --- seeding through the domain ---------------------------------------------------------------


def submitted(console: Console, version: str, config: str = CONFIG) -> str:
    """A pending bundle, submitted as the API would (audited, compile job requested)."""
    from sentinel_cp import projects
    from sentinel_cp.audit import Actor
    from sentinel_cp.bundles import compiler

    def submit() -> str:
        project = projects.get_project(console.project)
        bundle, _ = compiler.submit(
            Actor.system("test"), project, {"sentinel.kdl": config}, version=version
        )
        return str(bundle.id)

    return console.run(submit)


def compiled(console: Console, version: str, config: str = CONFIG) -> str:
    """Submit and run the compile job's function in-process (no worker needed)."""
    from sentinel_cp.bundles import compiler

    bundle_id = submitted(console, version, config)
    console.run(compiler.compile_bundle, bundle_id)
    return bundle_id


def bundle_row(console: Console, bundle_id: str) -> dict[str, Any]:
    from sentinel_cp.bundles.models import Bundle
    from sentinel_cp.db import db

    def read() -> dict[str, Any]:
        bundle = db.session.get(Bundle, bundle_id)
        assert bundle is not None, bundle_id
        return bundle.to_dict()

    return console.run(read)


def element(user: User, marker: str, kind: type[T]) -> T:
    """The one element of type `kind` marked `marker` on the open page."""
    found = [e for e in user.find(marker=marker).elements if isinstance(e, kind)]
    assert len(found) == 1, f"expected one {kind.__name__} marked {marker!r}, found {len(found)}"
    return found[0]


def html_of(user: User, marker: str) -> list[str]:
    """The content of every `ui.html` marked `marker` on the open page."""
    return [e.content for e in user.find(marker=marker).elements if isinstance(e, ui.html)]


def page_module() -> Any:
    """`console.bundles` as the running console imported it (re-imported per test)."""
    return importlib.import_module("console.bundles")


# --- /bundles ---------------------------------------------------------------------------------


async def test_list_shows_version_status_risk_and_size(user: User, console: Console) -> None:
    good = compiled(console, "v1")
    bad = compiled(console, "v2", BROKEN)
    waiting = submitted(console, "v3", CHANGED)
    await console.open(user, "/bundles", ready="bundles-table")
    rows = {row["version"]: row for row in console.table_rows(user, "bundles-table")}
    assert [r["version"] for r in console.table_rows(user, "bundles-table")] == ["v3", "v2", "v1"]
    assert (rows["v1"]["id"], rows["v1"]["status"], rows["v1"]["risk"]) == (good, "compiled", "low")
    assert (rows["v2"]["id"], rows["v2"]["status"], rows["v2"]["errors"]) == (
        bad,
        "failed",
        "1 error",
    )
    assert (rows["v3"]["id"], rows["v3"]["status"], rows["v3"]["risk"]) == (waiting, "pending", "—")
    assert rows["v1"]["size"].endswith(("B", "KiB")) and rows["v1"]["created"] != "—"
    await user.should_see(marker="bundles-position", content="1–3 of 3")
    await user.should_see(marker="new-bundle")


async def test_list_pages_in_the_database(user: User, console: Console) -> None:
    for i in range(30):
        console.add_bundle(f"seed-{i:02d}", status="compiled")
    await console.open(user, "/bundles", ready="bundles-table")
    assert len(console.table_rows(user, "bundles-table")) == 25
    await user.should_see(marker="bundles-position", content="1–25 of 30")
    user.find(marker="older").click()
    await user.should_see(marker="bundles-position", content="26–30 of 30")
    assert len(console.table_rows(user, "bundles-table")) == 5
    await console.set_value(user, "status-filter", "failed")
    await user.should_see(marker="no-bundles", content="No failed bundles.")


async def test_list_and_detail_show_a_compile_finishing_without_reload(
    user: User, console: Console
) -> None:
    from console import live
    from sentinel_cp.bundles import compiler

    bundle_id = submitted(console, "v1")
    subscribed = len(live.changes.callbacks)
    client = await console.open(user, "/bundles", ready="bundles-table")
    assert console.table_rows(user, "bundles-table")[0]["status"] == "pending"
    operator = await console.login("operator")
    await console.open(operator, f"/bundles/{bundle_id}", ready="compile-waiting")
    assert len(live.changes.callbacks) == subscribed + 2
    await console.listener_ready()
    console.run(compiler.compile_bundle, bundle_id)
    await console.eventually(
        lambda: console.table_rows(user, "bundles-table")[0]["status"] == "compiled",
        what="the list to show the compiled bundle",
    )
    assert console.table_rows(user, "bundles-table")[0]["risk"] == "low"
    await operator.should_see(marker="signature-verdict", content="Verified", retries=40)
    await operator.should_see(marker="bundle-status", content="compiled")
    # a browser that goes away stops costing refreshes
    client.handle_disconnect(next(iter(client._socket_to_document_id)))
    assert len(live.changes.callbacks) == subscribed + 1


# --- /bundles/{id} ----------------------------------------------------------------------------


async def test_detail_shows_risk_signature_output_files_manifest_and_sbom(
    user: User, console: Console
) -> None:
    compiled(console, "v1")
    bundle_id = compiled(console, "v2", CHANGED)
    await console.open(user, f"/bundles/{bundle_id}", ready="bundle-version")
    await user.should_see(marker="bundle-version", content="v2")
    await user.should_see(marker="bundle-status", content="compiled")
    stored = bundle_row(console, bundle_id)
    assert stored["risk_reasons"] and stored["risk_reasons"] != ["initial"]
    await user.should_see(marker="bundle-risk", content=f"{stored['risk_level']} risk")
    for reason in stored["risk_reasons"]:
        await user.should_see(marker="risk-reason", content=f"• {reason}")
    await user.should_see(marker="bundle-parent", content="v1")
    await user.should_see(marker="signature-verdict", content="Verified")
    # compile output: the node-side note about the upstream, at its line, with the excerpt
    await user.should_see(marker="diagnostic-location", content="sentinel.kdl:")
    assert any('target "127.0.0.1:9001"' in h for h in html_of(user, "diagnostic-excerpt"))
    assert [r["path"] for r in console.table_rows(user, "manifest-files")] == ["sentinel.kdl"]
    await user.should_see(marker="sbom-components", content="1 file")
    assert 'route "health"' in html_of(user, "file-view")[0]
    download = element(user, "download", ui.link)
    assert download.props["href"] == f"/api/v1/projects/alpha/bundles/{bundle_id}/download"
    await user.should_see(marker="revoke")


async def test_failed_bundle_shows_its_errors_at_their_line(user: User, console: Console) -> None:
    bundle_id = compiled(console, "v1", BROKEN)
    await console.open(user, f"/bundles/{bundle_id}", ready="bundle-version")
    await user.should_see(marker="bundle-status", content="failed")
    await user.should_see(marker="diagnostic-location", content="sentinel.kdl:12:5")
    await user.should_see(marker="diagnostic-message", content="upstream 'nowhere'")
    error_line = '<tr class="error"><td class="n">12</td><td class="t">    route "api" {</td>'
    assert any(error_line in excerpt for excerpt in html_of(user, "diagnostic-excerpt"))
    # the file view marks the same line
    assert '<tr class="error" title=' in html_of(user, "file-view")[0]
    await user.should_not_see(marker="revoke")
    await user.should_not_see(marker="download")


async def test_revoke_asks_for_a_reason_and_is_audited(user: User, console: Console) -> None:
    bundle_id = compiled(console, "v1")
    await console.open(user, f"/bundles/{bundle_id}", ready="bundle-version")
    user.find(marker="revoke").click()
    await user.should_see(marker="revoke-reason")
    await console.set_value(user, "revoke-reason", "leaks the admin route")
    user.find(marker="confirm-revoke").click()
    await user.should_see(marker="bundle-status", content="revoked")
    await user.should_see(marker="revoke-note", content="leaks the admin route")
    await user.should_not_see(marker="revoke")
    row = bundle_row(console, bundle_id)
    assert (row["status"], row["revoke_reason"]) == ("revoked", "leaks the admin route")
    revoked = [e for e in console.audit_entries() if e["action"] == "bundle.revoked"]
    assert [(e["actor"], e["resource_id"]) for e in revoked] == [("admin@example.com", bundle_id)]


async def test_a_refused_revoke_is_a_notification(user: User, console: Console) -> None:
    from sqlalchemy import update

    from sentinel_cp.bundles.models import Bundle
    from sentinel_cp.db import db

    bundle_id = compiled(console, "v1")
    await console.open(user, f"/bundles/{bundle_id}", ready="bundle-version")
    # Someone else revokes it meanwhile (quietly: no event reaches this page).
    console.run(
        lambda: db.session.execute(
            update(Bundle).where(Bundle.id == bundle_id).values(status="revoked")
        )
    )
    user.find(marker="revoke").click()
    await user.should_see(marker="confirm-revoke")
    user.find(marker="confirm-revoke").click()
    await user.should_see("only compiled bundles can be revoked")
    assert "bundle.revoked" not in console.audit_actions()


# --- /bundles/new -----------------------------------------------------------------------------


async def test_validate_shows_a_broken_config_inline_at_its_line(console: Console) -> None:
    operator = await console.login("operator")
    await console.open(operator, "/bundles/new", ready="source")
    await console.set_value(operator, "source", BROKEN)
    operator.find(marker="validate").click()
    await operator.should_see(marker="verdict", content="Invalid: 1 error", retries=20)
    await operator.should_see(marker="diagnostic-location", content="sentinel.kdl:12:5")
    await operator.should_see(marker="diagnostic-message", content="doesn't exist")
    excerpts = html_of(operator, "diagnostic-excerpt")
    error_line = '<tr class="error"><td class="n">12</td><td class="t">    route "api" {</td>'
    assert any(error_line in e for e in excerpts)
    assert any('<tr class="caret"><td class="n"></td><td class="t">    ^' in e for e in excerpts)
    # a dry run creates nothing
    assert table_rows_count(console) == 0
    assert "bundle.submitted" not in console.audit_actions()
    # editing after the check says so
    await console.set_value(operator, "source", CONFIG)
    await operator.should_see(marker="stale")
    operator.find(marker="validate").click()
    await operator.should_see(marker="verdict", content="Valid", retries=20)


def table_rows_count(console: Console) -> int:
    from sqlalchemy import func, select

    from sentinel_cp.bundles.models import Bundle
    from sentinel_cp.db import db

    return int(
        console.run(lambda: db.session.scalar(select(func.count()).select_from(Bundle)) or 0)
    )


async def test_submit_creates_an_audited_bundle_and_opens_it(console: Console) -> None:
    operator = await console.login("operator")
    await console.open(operator, "/bundles/new", ready="source")
    await console.set_value(operator, "version", "v7")
    await console.set_value(operator, "source", CONFIG)
    operator.find(marker="submit").click()
    await operator.should_see(marker="bundle-version", content="v7", retries=20)
    await operator.should_see(marker="bundle-status", content="pending")
    submitted_rows = [e for e in console.audit_entries() if e["action"] == "bundle.submitted"]
    assert [e["actor"] for e in submitted_rows] == ["operator@example.com"]
    row = bundle_row(console, submitted_rows[0]["resource_id"])
    assert (row["version"], row["status"], row["files"]) == ("v7", "pending", ["sentinel.kdl"])


async def test_form_refusals_are_notifications(user: User, console: Console) -> None:
    compiled(console, "v1")
    await console.open(user, "/bundles/new", ready="source")
    upload = element(user, "upload", ui.upload)
    with user:
        await upload.handle_uploads([SmallFileUpload("notes.txt", "text/plain", b"x")])
    await user.should_see("notes.txt is not a .kdl file")
    picker = element(user, "file-picker", ui.select)
    assert list(picker.options) == ["sentinel.kdl"]
    await console.set_value(user, "version", "v1")
    await console.set_value(user, "source", CHANGED)
    user.find(marker="submit").click()
    await user.should_see("Version v1 already exists")
    assert table_rows_count(console) == 1


async def test_an_uploaded_tarball_fills_the_form_and_submits(user: User, console: Console) -> None:
    main = CONFIG.replace("upstreams {", 'include "extra/*.kdl"\nupstreams {', 1)
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        for path, text in {"sentinel.kdl": main, "extra/more.kdl": "// more\n"}.items():
            info = tarfile.TarInfo(path)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    await console.open(user, "/bundles/new", ready="source")
    upload = element(user, "upload", ui.upload)
    with user:
        await upload.handle_uploads(
            [SmallFileUpload("config.tar.gz", "application/gzip", gzip.compress(data.getvalue()))]
        )
    picker = element(user, "file-picker", ui.select)
    await console.eventually(lambda: len(picker.options) == 2, what="the uploaded files")
    assert list(picker.options) == ["sentinel.kdl", "extra/more.kdl"]
    await console.set_value(user, "version", "v9")
    user.find(marker="submit").click()
    await user.should_see(marker="bundle-version", content="v9", retries=20)
    rows = [e for e in console.audit_entries() if e["action"] == "bundle.submitted"]
    row = bundle_row(console, rows[0]["resource_id"])
    assert (row["source_type"], row["files"]) == ("upload", ["extra/more.kdl", "sentinel.kdl"])


# --- what a reader cannot do ------------------------------------------------------------------


async def test_a_reader_sees_no_new_or_revoke_controls(console: Console) -> None:
    bundle_id = compiled(console, "v1")
    reader = await console.login("reader")
    await console.open(reader, "/bundles", ready="bundles-table")
    assert [r["version"] for r in console.table_rows(reader, "bundles-table")] == ["v1"]
    await reader.should_not_see(marker="new-bundle")
    await console.open(reader, f"/bundles/{bundle_id}", ready="bundle-version")
    await reader.should_see(marker="bundle-status", content="compiled")
    await reader.should_not_see(marker="revoke")
    await console.open(reader, "/bundles/new", ready="read-only-note")
    await reader.should_see(marker="read-only-note")
    await reader.should_not_see(marker="submit")


async def test_the_handlers_refuse_a_reader(console: Console) -> None:
    bundle_id = compiled(console, "v1")
    reader = await console.login("reader")
    cookie = console.cookie(reader)
    pages = page_module()
    with pytest.raises(Forbidden):
        await pages.submit_bundle(cookie, "alpha", "v2", {"sentinel.kdl": CHANGED})
    with pytest.raises(Forbidden):
        await pages.revoke_bundle(cookie, "alpha", bundle_id, "crafted event")
    assert bundle_row(console, bundle_id)["status"] == "compiled"
    assert table_rows_count(console) == 1
    assert "bundle.revoked" not in console.audit_actions()
    # reading stays allowed, exactly as the API's scopes say
    verdict = await pages.validate_files(cookie, "alpha", {"sentinel.kdl": CONFIG})
    assert verdict["valid"] is True


# --- /bundles/diff ----------------------------------------------------------------------------


async def test_diff_shows_the_summary_and_the_changed_lines_side_by_side(
    user: User, console: Console
) -> None:
    old = compiled(console, "v1")
    compiled(console, "v2", BROKEN)
    new = compiled(console, "v3", CHANGED)
    # without a choice: the newest bundle against its parent (the failed v2 is nobody's parent)
    await console.open(user, "/bundles/diff", ready="diff-b")
    assert element(user, "diff-a", ui.select).value == old
    assert element(user, "diff-b", ui.select).value == new
    await user.should_see("From v1 to v3")
    await user.should_see(marker="summary-routes-added", content="+ health")
    await user.should_see(marker="summary-upstreams-changed", content="~ backend")
    stored = bundle_row(console, new)  # v1 is v3's parent: the comparison the compile made
    await user.should_see(marker="diff-risk", content=f"{stored['risk_level']} risk")
    await user.should_see(marker="diff-risk-reason", content=stored["risk_reasons"][0])
    await user.should_see(marker="diff-path", content="sentinel.kdl")
    table = html_of(user, "side-by-side")[0]
    edited = (
        '<td class="n del">21</td><td class="t del">        target "127.0.0.1:9000"</td>'
        '<td class="n add mid">27</td><td class="t add">        target "127.0.0.1:9001"</td>'
    )
    assert edited in table
    added = '<td class="n empty"></td><td class="t empty"></td>'
    added += '<td class="n add mid">12</td><td class="t add">    route "health" {</td>'
    assert added in table


def test_code_views_escape_what_the_files_say() -> None:
    from console.bundles import excerpt_html, file_html, side_by_side, side_by_side_html

    text = 'route "<script>alert(1)</script>" & more\n'
    shown = '<td class="t">route "&lt;script&gt;alert(1)&lt;/script&gt;" &amp; more</td>'
    assert shown in file_html(text, {})
    assert "<script>" not in file_html(text, {1: ("error", '"><script>')})
    assert "<script>" not in excerpt_html(text, 1, 1, "error")
    diff = side_by_side_html(side_by_side(f"@@ -1,1 +1,1 @@\n-x\n+{text}"))
    assert "<script>" not in diff and "&lt;script&gt;" in diff


def test_side_by_side_pairs_edits_and_reads_dashes_inside_hunks_as_removals() -> None:
    from console.bundles import DiffRow, side_by_side

    diff = (
        "--- a/x.kdl\n+++ b/x.kdl\n@@ -1,3 +1,3 @@\n a\n--- not a header\n+b\n c\n"
        "\\ No newline at end of file\n"
    )
    assert side_by_side(diff) == [
        DiffRow("hunk", old="@@ -1,3 +1,3 @@"),
        DiffRow("same", 1, "a", 1, "a"),
        DiffRow("change", 2, "-- not a header", 2, "b"),
        DiffRow("same", 3, "c", 3, "c"),
    ]


# --- one real browser -------------------------------------------------------------------------


@pytest.mark.browser
async def test_diff_page_in_chromium(console: Console, request: pytest.FixtureRequest) -> None:
    import uvicorn
    from conftest import PASSWORD, free_port
    from test_server import ARTIFACTS, wait_for_websocket

    browser = request.getfixturevalue("chromium")
    old = compiled(console, "v1")
    new = compiled(console, "v2", CHANGED)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            console.asgi, host="127.0.0.1", port=port, lifespan="off", log_level="warning"
        )
    )
    serving = asyncio.create_task(server.serve())
    await console.eventually(lambda: server.started, what="uvicorn")
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base) as api:
            response = await api.post(
                "/api/v1/session", json={"email": console.emails["admin"], "password": PASSWORD}
            )
            assert response.status_code == 200
            cookie = api.cookies[console.app.config["SESSION_COOKIE_NAME"]]

        def drive() -> str:
            from selenium.webdriver.common.by import By
            from selenium.webdriver.support import expected_conditions as ec
            from selenium.webdriver.support.ui import WebDriverWait

            browser.get(f"{base}/health")
            browser.add_cookie(
                {"name": console.app.config["SESSION_COOKIE_NAME"], "value": cookie, "path": "/"}
            )
            browser.set_window_size(1400, 1300)
            browser.get(f"{base}/bundles/diff?a={old}&b={new}")
            wait = WebDriverWait(browser, 20)
            wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "table.sb-diff")))
            wait_for_websocket(browser)
            ARTIFACTS.mkdir(exist_ok=True)
            browser.save_screenshot(str(ARTIFACTS / "console-bundles.png"))
            return str(browser.find_element(By.TAG_NAME, "body").text)

        text = await asyncio.to_thread(drive)
    finally:
        server.should_exit = True
        await serving
    assert "From v1 to v2" in text
    assert 'target "127.0.0.1:9000"' in text and 'target "127.0.0.1:9001"' in text
    assert "+ health" in text
