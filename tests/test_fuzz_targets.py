"""Fuzz targets (hypothesis) for the two readers of hostile input: the agent's unpack and the
KDL validator.

1. `agent.bundle.unpack` fed generated tar streams (random members, names, types, sizes, link
   targets, pax records, manifests, byte damage, truncation). Property: a `BundleRejected` with
   a reason and nothing left behind, or a tree inside the target directory that is exactly what
   the manifest lists, byte for byte; and a genuine bundle under the default caps unpacks.
2. `validate_bundle` (and the upload decoding in front of it) fed the proxy-config fixtures
   mutated by bytes, lines and tokens. Property: a `ValidationResult` whose diagnostics point at
   bundle files and serialise to JSON, or the sources' own `Invalid`; never anything else.

Bounded by default so CI stays fast and reproducible: 200 examples per target, derandomized
(the same examples every run). Search longer, with a new seed on every run:

    SENTINEL_FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest tests/test_fuzz_targets.py -q
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zstandard
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from test_agent_bundle import snapshot

from agent.bundle import MANIFEST_NAME, BundleRejected, unpack
from sentinel_cp.bundles.kdl import ValidationResult, validate_bundle
from sentinel_cp.bundles.sources import files_from_uploads
from sentinel_cp.errors import Invalid

FIXTURES = Path(__file__).parent / "fixtures" / "proxy-configs"
PROJECT_ID = "3f1c2a52-8d0e-4a3b-9a43-52c1f0c3e7aa"
DEFAULT_EXAMPLES = 200
REQUESTED = os.environ.get("SENTINEL_FUZZ_EXAMPLES")
EXAMPLES = int(REQUESTED) if REQUESTED else DEFAULT_EXAMPLES
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    # CI replays the same examples every run; an explicit longer run explores new ones.
    derandomize=REQUESTED is None,
    database=None if REQUESTED is None else settings.default.database,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --- shared assertions ----------------------------------------------------------------------


def assert_tree_matches_manifest(destination: Path, manifest: Any) -> None:
    """Only directories and regular files, all inside `destination`, exactly the manifest."""
    root = destination.resolve()
    found: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(destination):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            assert not path.is_symlink(), path
            assert path.resolve().is_relative_to(root), path
            if name in filenames:
                assert path.is_file(), path
                found[str(path.relative_to(destination))] = path.read_bytes()
    manifest_raw = found.pop(MANIFEST_NAME)
    assert json.loads(manifest_raw)["files"] is not None
    assert set(found) == {entry.path for entry in manifest.files}
    for entry in manifest.files:
        content = found[entry.path]
        assert len(content) == entry.size
        assert hashlib.sha256(content).hexdigest() == entry.sha256


# --- target 1: the agent's unpack -----------------------------------------------------------

SAFE_NAMES = ["sentinel.kdl", "routes/api.kdl", "a/b/c.kdl", "x.kdl", "routes/../x.kdl"]
SEGMENTS = [
    "sentinel.kdl",
    "routes",
    "a.kdl",
    MANIFEST_NAME,
    "..",
    ".",
    "",
    "...",
    "x" * 120,
    "y" * 260,
    "ｓentinel.kdl",  # fullwidth s: normalises to "sentinel.kdl" under NFKC
    "a\\..\\..\\b",
    "\u202ekdl.txt",
    "%2e%2e",
    "sentinel.kdl\x00.txt",
    "CON",
]
NAMES = st.one_of(
    st.sampled_from(SAFE_NAMES),
    st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=6).map("/".join),
    st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=3).map(lambda s: "/" + "/".join(s)),
    st.text(max_size=30),
)
TYPES = st.sampled_from(
    [
        tarfile.REGTYPE,
        tarfile.REGTYPE,
        tarfile.REGTYPE,
        tarfile.AREGTYPE,
        tarfile.CONTTYPE,
        tarfile.DIRTYPE,
        tarfile.SYMTYPE,
        tarfile.LNKTYPE,
        tarfile.CHRTYPE,
        tarfile.BLKTYPE,
        tarfile.FIFOTYPE,
        tarfile.GNUTYPE_LONGNAME,
        tarfile.GNUTYPE_SPARSE,
        b"V",
        b"X",
        b"g",
        b"x",
    ]
)
PAX_KEYS = [
    "path",
    "linkpath",
    "size",
    "mtime",
    "uid",
    "comment",
    "hdrcharset",
    "GNU.sparse.map",
    "GNU.sparse.size",
    "GNU.sparse.realsize",
    "GNU.sparse.major",
    "GNU.sparse.minor",
    "GNU.sparse.name",
]
PAX_VALUES = st.one_of(
    st.sampled_from(["../evil.kdl", "/etc/passwd", "-1", "1", "0,1", "x", "BINARY", "1e9"]),
    st.integers(min_value=-(2**40), max_value=2**40).map(str),
    st.text(max_size=20),
)


@dataclass
class Member:
    name: str
    kind: bytes
    data: bytes
    linkname: str
    pax: dict[str, str]


MEMBERS = st.builds(
    Member,
    name=NAMES,
    kind=TYPES,
    data=st.one_of(st.binary(max_size=64), st.sampled_from([b"system { }\n", bytes(700)])),
    linkname=st.one_of(st.just(""), NAMES),
    pax=st.dictionaries(st.sampled_from(PAX_KEYS), PAX_VALUES, max_size=3),
)


def _manifest(members: list[Member], damage: str) -> bytes:
    """The manifest for the regular members (last one wins on a name), then damaged."""
    files = {
        m.name: m.data
        for m in members
        if m.kind in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
    }
    listed = [
        {"path": p, "sha256": hashlib.sha256(d).hexdigest(), "size": len(d)}
        for p, d in sorted(files.items())
    ]
    manifest: dict[str, Any] = {
        "schema_version": 1,
        "project_id": PROJECT_ID,
        "files": listed,
        "config_sha256": hashlib.sha256(files.get("sentinel.kdl", b"")).hexdigest(),
    }
    if damage == "drop" and listed:
        listed.pop()
    elif damage == "extra":
        listed.append({"path": "ghost.kdl", "sha256": "0" * 64, "size": 0})
    elif damage == "sha" and listed:
        listed[0]["sha256"] = "f" * 64
    elif damage == "size" and listed:
        listed[0]["size"] += 1
    elif damage == "project":
        manifest["project_id"] = "another"
    elif damage == "schema":
        manifest["schema_version"] = 2
    elif damage == "types":
        manifest["files"] = [{"path": 1, "sha256": None, "size": "3"}]
    elif damage == "not json":
        return b"{not json"
    return json.dumps(manifest).encode()


def _tar(members: list[Member], fmt: int, global_pax: dict[str, str]) -> bytes | None:
    """The members as a tar stream, or None when tarfile cannot even write them."""
    buffer = io.BytesIO()
    try:
        with tarfile.open(
            fileobj=buffer, mode="w", format=fmt, pax_headers=global_pax or None
        ) as tar:
            for member in members:
                info = tarfile.TarInfo(member.name)
                info.type = member.kind
                info.linkname = member.linkname
                info.mode = 0o644
                info.pax_headers = dict(member.pax) if fmt == tarfile.PAX_FORMAT else {}
                has_data = member.kind in (
                    tarfile.REGTYPE,
                    tarfile.AREGTYPE,
                    tarfile.CONTTYPE,
                    tarfile.GNUTYPE_LONGNAME,
                    b"V",
                    b"X",
                    b"g",
                    b"x",
                )
                info.size = len(member.data) if has_data else 0
                tar.addfile(info, io.BytesIO(member.data) if has_data else None)
    except (ValueError, UnicodeError, tarfile.TarError, OSError):
        return None
    return buffer.getvalue()


@st.composite
def tar_streams(draw: st.DrawFn) -> tuple[str, bytes]:
    """A zstd-compressed tar stream, in three flavours: a genuine-looking bundle (which must
    unpack), the same with hostile members or a damaged manifest, and byte-level chaos."""
    flavour = draw(st.sampled_from(["genuine", "hostile", "chaos"]))
    names = draw(st.lists(st.sampled_from(SAFE_NAMES[:4]), min_size=1, max_size=4, unique=True))
    members = [
        Member(name, tarfile.REGTYPE, draw(st.binary(max_size=40)), "", {}) for name in names
    ]
    damage = "none"
    if flavour != "genuine":
        members += draw(st.lists(MEMBERS, min_size=1, max_size=5))
        members = draw(st.permutations(members))
        damage = draw(
            st.sampled_from(
                ["none"] * 4
                + ["drop", "extra", "sha", "size", "project", "schema", "types", "not json"]
                + ["absent"]
            )
        )
    if damage != "absent":
        manifest = Member(MANIFEST_NAME, tarfile.REGTYPE, _manifest(members, damage), "", {})
        members.insert(draw(st.integers(min_value=0, max_value=len(members))), manifest)
    fmt = draw(st.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT]))
    global_pax: dict[str, str] = {}
    if flavour != "genuine" and fmt == tarfile.PAX_FORMAT:
        global_pax = draw(st.dictionaries(st.sampled_from(PAX_KEYS), PAX_VALUES, max_size=2))
    raw = _tar(members, fmt, global_pax)
    assume(raw is not None)
    assert raw is not None
    if flavour == "chaos":
        for _ in range(draw(st.integers(min_value=1, max_value=3))):  # header or data bytes
            position = draw(st.integers(min_value=0, max_value=len(raw) - 1))
            raw = raw[:position] + draw(st.binary(min_size=1, max_size=12)) + raw[position + 1 :]
        if draw(st.booleans()):
            raw = raw[: draw(st.integers(min_value=0, max_value=len(raw)))]
    data = zstandard.ZstdCompressor(level=1).compress(raw)
    if flavour == "chaos" and draw(st.integers(min_value=0, max_value=9)) == 0:
        cut = draw(st.integers(min_value=0, max_value=len(data)))
        data = data[:cut] + draw(st.binary(max_size=4))
    event(f"flavour: {flavour}")
    return flavour, data


@FUZZ
@given(
    stream=tar_streams(),
    max_total_bytes=st.sampled_from([64 * 1024 * 1024, 64 * 1024, 12 * 1024]),
    max_entries=st.sampled_from([1024, 3]),
    project_id=st.sampled_from([PROJECT_ID, None]),
)
def test_unpack_refuses_cleanly_or_extracts_exactly_the_manifest(
    stream: tuple[str, bytes], max_total_bytes: int, max_entries: int, project_id: str | None
) -> None:
    flavour, data = stream
    must_extract = flavour == "genuine" and max_entries == 1024 and max_total_bytes > 60_000
    with tempfile.TemporaryDirectory(prefix="fuzz-unpack-") as tmp:
        root = Path(tmp)
        (root / "live").mkdir()
        (root / "live" / "sentinel.kdl").write_text("system { }\n")
        (root / "state").mkdir()
        destination = root / "state" / "staged"
        before = snapshot(root)
        try:
            manifest = unpack(
                data,
                destination,
                max_total_bytes=max_total_bytes,
                max_entries=max_entries,
                project_id=project_id,
            )
        except BundleRejected as refusal:
            event(f"refused: {refusal.reason.split(' ')[0]}")
            assert not must_extract, f"a genuine bundle was refused: {refusal.reason}"
            assert isinstance(refusal.reason, str) and refusal.reason
            assert not destination.exists()
            assert snapshot(root) == before
            return
        event("extracted")
        assert_tree_matches_manifest(destination, manifest)
        after = {k: v for k, v in snapshot(root).items() if not k.startswith("state/staged")}
        assert after == before


# --- target 2: the KDL validator ------------------------------------------------------------


def _fixture_texts() -> list[bytes]:
    return [path.read_bytes() for path in sorted(FIXTURES.glob("*.kdl"))]


FIXTURE_TEXTS = _fixture_texts()
INCLUDES = [b'include "*"', b'include "../../etc/*"', b'include "**/**/**/**/**/**/*"']
TOKENS = [
    b'"',
    b"{",
    b"}",
    b";",
    b"=",
    b"#",
    b'#"',
    b'"#',
    b"##",
    b"/*",
    b"*/",
    b"//",
    b"/-",
    b"\\",
    b"(u8)",
    b"()",
    b"\r",
    b"\r\n",
    b"\x0c",
    b"\xc2\x85",  # NEL
    b"\xe2\x80\xa8",  # LINE SEPARATOR
    b"\x00",
    b"\xef\xbb\xbf",  # BOM
    b"\xff\xfe",
    b"\xed\xa0\x80",  # an encoded surrogate: not UTF-8
    b"#inf",
    b"#-inf",
    b"#nan",
    b"#true",
    b"true",
    b"null",
    b"1e999999",
    b"-0x" + b"f" * 40,
    b"9" * 4400,
    b"0b102",
    b'"""',
    b'#"""\n',
    b'"\\u{D800}"',
    b'"\\u{10FFFF}"',
    b'"\\u{110000}"',
    b"\xc2\xb2",  # superscript two: a digit to str.isdigit, not to int()
    *INCLUDES,
    b"schema-version",
    b"percentage",
]
NUMBERS = [
    b"0",
    b"-1",
    b"1e999999",
    b"-1e999999",
    b"#inf",
    b"#nan",
    b"18446744073709551616",
    b"9" * 4400,
    b"1." + b"5" * 5000,
    b"0x" + b"F" * 30,
    b'"1.' + b"0" * 5000 + b'"',
    b'"\xc2\xb2"',
]
STRINGS = [
    b'""',
    b'"0.0.0.0:\xc2\xb2"',
    b'"0.0.0.0:' + b"1" * 5000 + b'"',
    b'"127.0.0.1:99999999999999999999999"',
    b'"[::1]:80"',
    b'"\\u{0}"',
    b'"a\\\nb"',
    b'#"raw"#',
    b"#" * 300 + b'"x"' + b"#" * 300,
    b'"' + b"x" * 20000 + b'"',
    b'"\\u{202e}evil"',
    b'"\xef\xbc\x91.0"',  # fullwidth digit one
]
_NUMBER = re.compile(rb"(?<![\w.#\"-])-?\d[\d_.eE+-]*")
_STRING = re.compile(rb'"(?:[^"\\\n]|\\.)*"')


def _at(data: bytes, fraction: float) -> int:
    return min(len(data), int(fraction * (len(data) + 1)))


def _replace_nth(pattern: re.Pattern[bytes], data: bytes, index: int, value: bytes) -> bytes:
    found = list(pattern.finditer(data))
    if not found:
        return data
    match = found[index % len(found)]
    return data[: match.start()] + value + data[match.end() :]


MUTATIONS = st.one_of(
    st.tuples(st.just("insert"), st.floats(0, 1), st.sampled_from(TOKENS)),
    st.tuples(st.just("insert"), st.floats(0, 1), st.binary(min_size=1, max_size=6)),
    st.tuples(st.just("overwrite"), st.floats(0, 1), st.binary(min_size=1, max_size=4)),
    st.tuples(st.just("delete"), st.floats(0, 1), st.integers(min_value=1, max_value=40)),
    st.tuples(st.just("number"), st.integers(min_value=0), st.sampled_from(NUMBERS)),
    st.tuples(st.just("string"), st.integers(min_value=0), st.sampled_from(STRINGS)),
    st.tuples(st.just("drop line"), st.floats(0, 1), st.just(b"")),
    st.tuples(st.just("duplicate line"), st.floats(0, 1), st.integers(min_value=1, max_value=50)),
    st.tuples(st.just("splice line"), st.floats(0, 1), st.sampled_from(FIXTURE_TEXTS)),
    st.tuples(st.just("newlines"), st.just(0.0), st.sampled_from([b"\r\n", b"\r", b"\x0c"])),
    st.tuples(st.just("nest"), st.just(0.0), st.integers(min_value=1, max_value=80)),
)


def mutate(data: bytes, mutation: tuple[str, Any, Any]) -> bytes:
    """Apply one mutation; positions are fractions of the current length."""
    kind, where, what = mutation
    if kind == "insert":
        at = _at(data, where)
        return data[:at] + what + data[at:]
    if kind == "overwrite":
        at = _at(data, where)
        return data[:at] + what + data[at + len(what) :]
    if kind == "delete":
        at = _at(data, where)
        return data[:at] + data[at + what :]
    if kind == "number":
        return _replace_nth(_NUMBER, data, where, what)
    if kind == "string":
        return _replace_nth(_STRING, data, where, what)
    lines = data.split(b"\n")
    index = min(len(lines) - 1, int(where * len(lines)))
    if kind == "drop line":
        del lines[index]
    elif kind == "duplicate line":
        lines[index:index] = [lines[index]] * what
    elif kind == "splice line":
        donor = what.split(b"\n")
        lines.insert(index, donor[index % len(donor)])
    elif kind == "newlines":
        return data.replace(b"\n", what)
    elif kind == "nest":
        return b"x {\n" * what + data + b"\n}" * what
    return b"\n".join(lines)


@st.composite
def mutated_documents(draw: st.DrawFn) -> bytes:
    data = draw(st.sampled_from(FIXTURE_TEXTS))
    for mutation in draw(st.lists(MUTATIONS, min_size=1, max_size=6)):
        data = mutate(data, mutation)
    return data


def assert_clean_result(result: ValidationResult, files: dict[str, str]) -> None:
    """A verdict whose every diagnostic names a bundle file and travels as JSON."""
    assert isinstance(result, ValidationResult)
    assert result.valid == (not result.errors)
    for diagnostic in (*result.errors, *result.warnings, *result.node_warnings):
        assert isinstance(diagnostic.message, str) and diagnostic.message
        assert diagnostic.file in files or diagnostic.file == "sentinel.kdl", diagnostic
        assert diagnostic.line >= 0 and diagnostic.column >= 0
    json.dumps(result.as_dict())


@FUZZ
@given(data=mutated_documents())
def test_validator_gives_a_verdict_for_mutated_fixtures(data: bytes) -> None:
    text = data.decode("utf-8", "surrogateescape")  # lone surrogates are text too
    files = {"sentinel.kdl": text}
    assert_clean_result(validate_bundle(files), files)


@FUZZ
@given(data=mutated_documents(), split=st.floats(0, 1), pattern=st.sampled_from(INCLUDES))
def test_uploaded_mutated_fixtures_are_refused_or_validated(
    data: bytes, split: float, pattern: bytes
) -> None:
    """What an upload goes through: UTF-8 decoding and limits, then validation, in two files."""
    lines = data.split(b"\n")
    cut = int(split * len(lines))
    entry = b'include "routes/*.kdl"\n' + pattern + b"\n" + b"\n".join(lines[:cut])
    uploads = [("sentinel.kdl", entry), ("routes/rest.kdl", b"\n".join(lines[cut:]))]
    try:
        files = files_from_uploads(uploads)
    except Invalid as refusal:
        assert refusal.fields
        return
    assert_clean_result(validate_bundle(files), files)


def test_the_fuzz_budget_is_bounded_unless_asked() -> None:
    """CI runs a fixed, small number of examples; SENTINEL_FUZZ_EXAMPLES asks for more."""
    if REQUESTED is None:
        assert EXAMPLES == DEFAULT_EXAMPLES and FUZZ.derandomize
    else:
        pytest.skip(f"long run requested: {EXAMPLES} examples per target")
