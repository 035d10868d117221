"""The hostile-input corpus (tests/fixtures/hostile/) against every reader of it.

- Each `archives/*.tar.zst` is refused by the agent's `unpack` for its own reason, leaving
  nothing behind and nothing written outside the target; through the whole `BundleApplier`
  (signed, downloaded) it is reported `failed` and the proxy's live config stays as it was.
  The control plane's `read_archive` refuses them too.
- Each `archives/*.tar.gz` is refused by the `.tar.gz` submission path, directly and over
  `POST /api/v1/projects/<slug>/bundles` (a 4xx JSON error, never a 500, nothing created).
- Each `kdl/` document gets the validator's own verdict: the expected first error, in the
  expected file and line; over `POST …/bundles/validate` a 200 with that verdict or a 4xx.
- Decompression bombs are stopped by a size cap, asserted by the reason that names the cap and
  by the peak of traced memory.

The expected refusals live with the cases in `make_corpus.py`; the corpus checked in must be
exactly what that script generates.
"""

from __future__ import annotations

import importlib.util
import io
import json
import re
import sys
import tracemalloc
import zlib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from conftest import make_key, make_project, make_user
from hypothesis import given, settings
from hypothesis import strategies as st
from test_agent_bundle import FakeControlPlane, make_applier, snapshot

from agent.bundle import BundleRejected, unpack
from agent.tarsafety import pax_records_problem
from sentinel_cp.bundles import sources
from sentinel_cp.bundles.archive import read_archive
from sentinel_cp.bundles.kdl import ValidationResult, includes, source, validate_bundle
from sentinel_cp.errors import Invalid

HOSTILE = Path(__file__).parent / "fixtures" / "hostile"
ARCHIVES = HOSTILE / "archives"
DOCUMENTS = HOSTILE / "kdl"
PROJECT_ID = "3f1c2a52-8d0e-4a3b-9a43-52c1f0c3e7aa"
AGENT_CAP = 64 * 1024 * 1024
BOMB_PEAK_BYTES = 8 * 1024 * 1024  # what a bomb may make us hold, whatever it expands to
# Paths outside the target directory that the corpus aims at by name.
OUTSIDE_TARGETS = [Path("/tmp/evil.kdl"), Path("/tmp/out/evil.kdl")]


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_corpus", HOSTILE / "make_corpus.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_corpus"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


corpus = _load_generator()
ARCHIVE_FILES: dict[str, Any] = {
    name: case for case in corpus.ARCHIVES for name in corpus.archive_names(case)
}
ZST = sorted(name for name in ARCHIVE_FILES if name.endswith(".tar.zst"))
GZ = sorted(name for name in ARCHIVE_FILES if name.endswith(".tar.gz"))
KDL_CASES = {case.name: case for case in corpus.KDL}
BOMBS = [name for name in ARCHIVE_FILES if name.startswith("bomb_")]
# read_archive is the control plane's check of its own archives: it does not know which
# project a node belongs to, nor cap the manifest the way a small node must.
READ_ARCHIVE_ACCEPTS = {"manifest_other_project.tar.zst", "manifest_too_large.tar.zst"}


def _outside_state() -> dict[str, bool]:
    return {str(path): path.exists() for path in OUTSIDE_TARGETS}


# --- the corpus itself ----------------------------------------------------------------------


def _gunzip_prefix(data: bytes) -> bytes:
    """What a gzip stream decompresses to, up to where it breaks (truncated or garbage)."""
    out = io.BytesIO()
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    for start in range(0, len(data), 4096):
        try:
            out.write(inflater.decompress(data[start : start + 4096]))
        except zlib.error:
            break
    return out.getvalue()


def test_the_checked_in_corpus_is_what_make_corpus_writes(tmp_path: Path) -> None:
    written = corpus.generate(tmp_path)
    checked_in = {
        str(path.relative_to(HOSTILE))
        for directory in (ARCHIVES, DOCUMENTS)
        for path in directory.rglob("*")
        if path.is_file()
    }
    assert checked_in == {*written, "archives/README.md", "kdl/README.md"}
    assert sum(written.values()) < 1024 * 1024  # the corpus stays small
    for relative in sorted(checked_in):
        ours, theirs = (HOSTILE / relative).read_bytes(), (tmp_path / relative).read_bytes()
        if relative.endswith(".tar.gz") and ours != theirs:
            # another zlib may pick other deflate blocks for the same content
            assert _gunzip_prefix(ours) == _gunzip_prefix(theirs), relative
        else:
            assert ours == theirs, f"{relative} differs: rerun make_corpus.py"


def test_every_readme_lists_every_file() -> None:
    archives_readme = (ARCHIVES / "README.md").read_text()
    for name in ARCHIVE_FILES:
        assert f"`{name}`" in archives_readme
    kdl_readme = (DOCUMENTS / "README.md").read_text()
    for case in corpus.KDL:
        assert f"`{case.name}.kdl`" in kdl_readme or f"`{case.name}/`" in kdl_readme


# --- the agent ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ZST)
def test_the_agent_refuses_the_archive_and_writes_nothing(name: str, tmp_path: Path) -> None:
    """With the default caps; a bomb must also be stopped in bounded memory."""
    case = ARCHIVE_FILES[name]
    (tmp_path / "live").mkdir()
    (tmp_path / "live" / "sentinel.kdl").write_text("system { }\n")
    (tmp_path / "state").mkdir()
    destination = tmp_path / "state" / "staged"
    data = (ARCHIVES / name).read_bytes()
    before, outside = snapshot(tmp_path), _outside_state()

    tracemalloc.start()
    try:
        with pytest.raises(BundleRejected) as refused:
            unpack(data, destination, project_id=PROJECT_ID)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert re.search(case.agent, refused.value.reason), refused.value.reason
    assert not destination.exists()
    assert snapshot(tmp_path) == before
    assert _outside_state() == outside
    assert peak < BOMB_PEAK_BYTES, peak


def test_every_bomb_case_expects_a_cap_refusal() -> None:
    """The corpus table: each bomb's expected refusal names a cap (the byte budget, the
    extended-header cap or the sparse refusal). That the agent refuses each one so, within
    BOMB_PEAK_BYTES, is `test_the_agent_refuses_the_archive_and_writes_nothing`'s."""
    bombs = [ARCHIVE_FILES[n] for n in BOMBS if n.endswith(".tar.zst")]
    assert len(bombs) >= 6
    for case in bombs:
        assert re.search(
            r"expands beyond 67108864 bytes|extended header larger than 16384|^\^sparse",
            case.agent,
        ), case.agent


@pytest.mark.parametrize("name", ZST)
async def test_the_agent_reports_the_bundle_failed_and_keeps_the_live_config(
    name: str, tmp_path: Path
) -> None:
    """Through the whole applier (with a 4 MiB unpack cap, so that no bomb fills the disk)."""
    case = ARCHIVE_FILES[name]
    cap = 4 * 1024 * 1024
    cp = FakeControlPlane()
    cp.publish((ARCHIVES / name).read_bytes())  # signed with the pinned key: only unpack stops it
    applier, config_dir = make_applier(cp, tmp_path, max_unpacked_bytes=cap)
    before, outside = snapshot(tmp_path / "proxy"), _outside_state()

    result = await applier.apply_assigned(cp.assigned)

    expected = case.agent.replace(str(AGENT_CAP), str(cap))
    assert result.outcome == "failed", result
    assert result.reason is not None and re.search(expected, result.reason), result.reason
    assert cp.states() == ["failed"]
    assert snapshot(tmp_path / "proxy") == before
    assert (config_dir / "sentinel.kdl").read_text() == "system { }\n"
    assert list((tmp_path / "state" / "staging").iterdir()) == []
    assert _outside_state() == outside


@pytest.mark.parametrize("name", ZST)
def test_the_control_plane_archive_reader_refuses_it_too(name: str) -> None:
    data = (ARCHIVES / name).read_bytes()
    if name in READ_ARCHIVE_ACCEPTS:
        assert read_archive(data)  # documented gap: the node-only checks
        return
    with pytest.raises(Invalid) as refused:
        read_archive(data)
    assert refused.value.fields


# --- the .tar.gz submission path ------------------------------------------------------------


@pytest.mark.parametrize("name", GZ)
def test_the_targz_submission_path_refuses_it(name: str) -> None:
    case = ARCHIVE_FILES[name]
    with pytest.raises(Invalid) as refused:
        sources.files_from_targz((ARCHIVES / name).read_bytes())
    described = f"{refused.value.message} {refused.value.fields}"
    assert re.search(case.cp, described), described
    assert refused.value.fields


@pytest.mark.parametrize("name", [n for n in BOMBS if n.endswith(".tar.gz")])
def test_a_targz_bomb_is_stopped_by_a_cap_in_bounded_memory(name: str) -> None:
    data = (ARCHIVES / name).read_bytes()
    tracemalloc.start()
    try:
        with pytest.raises(Invalid) as refused:
            sources.files_from_targz(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    described = f"{refused.value.message} {refused.value.fields}"
    assert re.search(
        r"expands beyond the size limit|Source is larger than 1048576 bytes|"
        r"extended header larger than 65536 bytes|sparse entries are not accepted",
        described,
    ), described
    assert peak < BOMB_PEAK_BYTES


def _operator(app: Any) -> dict[str, str]:
    make_user(app, "admin@example.com", role="admin")
    make_project(app, "alpha")
    key = make_key(app, "admin@example.com", ["bundles:read", "bundles:write"])
    return {"Authorization": f"Bearer {key}"}


def test_every_targz_upload_is_a_4xx_json_error_and_creates_nothing(app: Any, client: Any) -> None:
    headers = _operator(app)
    for name in GZ:
        response = client.post(
            "/api/v1/projects/alpha/bundles",
            data={"version": "v1", "files": [(io.BytesIO((ARCHIVES / name).read_bytes()), name)]},
            headers=headers,
            content_type="multipart/form-data",
        )
        assert 400 <= response.status_code < 500, (name, response.status_code)
        body = response.get_json()
        assert isinstance(body, dict) and body.get("error") and body.get("code"), (name, body)
    listed = client.get("/api/v1/projects/alpha/bundles", headers=headers)
    assert listed.status_code == 200
    assert listed.get_json()["items"] == []


# --- KDL documents --------------------------------------------------------------------------


def _case_files(case: Any) -> dict[str, bytes]:
    return dict(case.files)


def _assert_verdict(case: Any, result: ValidationResult) -> None:
    assert isinstance(result, ValidationResult)
    json.dumps(result.as_dict())
    for diagnostic in (*result.errors, *result.warnings, *result.node_warnings):
        assert diagnostic.file in case.files, diagnostic
    if case.code is None:
        assert result.valid, [e.render() for e in result.errors]
        return
    assert not result.valid
    first = result.errors[0]
    assert (first.code, first.file) == (case.code, case.file), first.render()
    if case.line is not None:
        assert first.line == case.line, first.render()


@pytest.mark.parametrize("name", sorted(KDL_CASES))
def test_the_validator_gives_its_own_verdict_with_file_and_line(name: str) -> None:
    case = KDL_CASES[name]
    uploads = list(_case_files(case).items())
    if case.upload is not None:
        with pytest.raises(Invalid) as refused:
            sources.files_from_uploads(uploads)
        assert re.search(case.upload, json.dumps(refused.value.fields))
        return
    files = sources.files_from_uploads(uploads)
    _assert_verdict(case, validate_bundle(files))


def _validate_body(case: Any) -> bytes:
    """The JSON body for the case; bytes that are not UTF-8 are sent as they are."""
    files = _case_files(case)
    if case.upload is not None:
        raw = files["sentinel.kdl"].replace(b"\\", b"\\\\").replace(b'"', b'\\"')
        return b'{"config_source": "' + raw.replace(b"\n", b"\\n") + b'"}'
    texts = {path: data.decode("utf-8") for path, data in files.items()}
    if list(texts) == ["sentinel.kdl"]:
        return json.dumps({"config_source": texts["sentinel.kdl"]}).encode()
    return json.dumps({"files": texts}).encode()


def test_every_document_over_http_is_a_verdict_or_a_4xx_never_a_500(app: Any, client: Any) -> None:
    headers = _operator(app)
    for case in corpus.KDL:
        response = client.post(
            "/api/v1/projects/alpha/bundles/validate",
            data=_validate_body(case),
            headers=headers,
            content_type="application/json",
        )
        assert response.status_code < 500, (case.name, response.get_data()[:300])
        body = response.get_json()
        if case.upload is not None:  # not UTF-8, so not JSON: 400 or 422 by where it breaks
            assert 400 <= response.status_code < 500, (case.name, body)
            assert body["error"] and body["code"], (case.name, body)
            continue
        if any(b"\x00" in data for data in case.files.values()):  # the API refuses NUL in text
            assert response.status_code == 422 and "NUL" in body["error"], (case.name, body)
            continue
        assert response.status_code == 200, (case.name, body)
        if case.code is None:
            assert body["valid"] is True, (case.name, body["errors"])
            continue
        first = body["errors"][0]
        assert (first["code"], first["file"]) == (case.code, case.file), (case.name, first)
        if case.line is not None:
            assert first["line"] == case.line, (case.name, first)


def test_an_oversized_document_over_http_is_a_4xx(app: Any, client: Any) -> None:
    headers = _operator(app)
    text = (DOCUMENTS / "huge_string.kdl").read_text() * 20  # ~1.3 MB, over the 1 MiB cap
    response = client.post(
        "/api/v1/projects/alpha/bundles/validate",
        json={"config_source": text},
        headers=headers,
    )
    assert response.status_code in (413, 422), response.status_code
    assert response.get_json()["code"]


# --- regressions: each crash or hang found, at unit level -----------------------------------


def test_a_lone_surrogate_in_submitted_text_is_invalid_not_a_unicode_error() -> None:
    """`"\\ud800"` is a str Python holds but UTF-8 cannot encode; sources.encode() raised."""
    with pytest.raises(Invalid) as refused:
        sources.files_from_single('system { }\nn "\ud800"\n')
    assert refused.value.fields == {"sentinel.kdl": [sources.NOT_UTF8]}


def test_a_lone_surrogate_over_http_is_a_4xx(app: Any, client: Any) -> None:
    headers = _operator(app)
    response = client.post(
        "/api/v1/projects/alpha/bundles/validate",
        data=b'{"config_source": "system { }\\n\\ud800"}',
        headers=headers,
        content_type="application/json",
    )
    assert 400 <= response.status_code < 500
    assert response.get_json()["code"]


def test_a_path_that_is_both_a_file_and_a_directory_is_refused() -> None:
    """The external check wrote `a` then failed to mkdir `a/` (an OSError, a 500)."""
    with pytest.raises(Invalid) as refused:
        sources.files_from_mapping({"sentinel.kdl": "", "routes": "", "routes/a.kdl": ""})
    assert refused.value.fields == {"routes": ["is both a file and a directory"]}


def test_pax_records_that_tarfile_writes_pass_the_check() -> None:
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("r/" + "long-segment/" * 20 + "ü.kdl")
        info.mtime = 1_700_000_000.123456
        info.pax_headers = {"comment": "x" * 300, "SCHILY.xattr.user.k": "v"}
        tar.addfile(info, io.BytesIO(b""))
    raw = buffer.getvalue()
    size = int(raw[124:136].rstrip(b"\x00 "), 8)
    assert raw[156:157] == b"x"
    assert pax_records_problem(raw[512 : 512 + size]) is None


@pytest.mark.parametrize(
    "records",
    [
        b"12 path=a.kd\n",  # length one short
        b"9 path=a\n\n",  # trailing bytes that are no record
        b"x path=a\n",
        b"7 =a.kd\n",  # empty keyword
        b"21 GNU.sparse.size=1\n",
        b"11 size=-1\n",
        b"80 comment=" + b"9" * 66 + b"\n",
    ],
)
def test_malformed_pax_records_are_named(records: bytes) -> None:
    assert pax_records_problem(records) is not None


def _reference_match(pattern: list[str], parts: list[str]) -> bool:
    """The recursive definition the old matcher used (exponential, fine on small input)."""
    from fnmatch import fnmatchcase

    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_reference_match(pattern[1:], parts[i:]) for i in range(len(parts) + 1))
    return (
        bool(parts)
        and fnmatchcase(parts[0], pattern[0])
        and _reference_match(pattern[1:], parts[1:])
    )


SEGMENT = st.sampled_from(["a", "b", "ab", "x.kdl", "a.kdl"])
GLOB_SEGMENT = st.sampled_from(["a", "b", "*", "**", "a*", "*.kdl", "?", "x.kdl"])


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    pattern=st.lists(GLOB_SEGMENT, min_size=1, max_size=6),
    paths=st.lists(st.lists(SEGMENT, min_size=1, max_size=5), min_size=1, max_size=5),
)
def test_glob_matching_agrees_with_the_recursive_definition(
    pattern: list[str], paths: list[list[str]]
) -> None:
    joined = ["/".join(p) for p in paths]
    expected = sorted(p for p in joined if _reference_match(pattern, p.split("/")))
    assert includes.match_glob("/".join(pattern), joined) == expected


def test_glob_matching_work_is_capped() -> None:
    deep = ["/".join(["d"] * 40) + f"/x{i}.kdl" for i in range(50)]
    with pytest.raises(includes.GlobTooComplex):
        includes.match_glob(
            "/".join(["*", "**"] * 20) + "/nomatch", deep, includes.GlobBudget(1000)
        )


def test_positions_fall_back_to_the_first_line_when_the_deadline_has_passed() -> None:
    """tree-sitter's error recovery took seconds on 20,000 unclosed `{` (hours on a MiB)."""
    line, column, hint = source.locate_syntax_error("a " + "{" * 20000 + "\n", deadline=0.0)
    assert (line, column) == (1, 1) and "too complex" in hint
    parsed = source.parse_document("system {\n  x 1\n}\n", "s.kdl", deadline=0.0)
    assert parsed.nodes[0].children[0].source == source.SourceRef("s.kdl", 1, 1)


def test_a_brace_flood_is_a_syntax_error_within_the_position_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(includes, "POSITION_BUDGET_SECONDS", 0.05)
    result = validate_bundle({"sentinel.kdl": "a " + "{" * 20000 + "\n"})
    assert [(e.code, e.line) for e in result.errors] == [("kdl-syntax", 1)]
