"""The deterministic bundle archive, its hostile-input reader and the bundle SBOM."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tracemalloc
from pathlib import Path

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from sentinel_cp.bundles.archive import (
    MANIFEST_PATH,
    MEDIA_TYPE,
    build_archive,
    canonical_json,
    read_archive,
)
from sentinel_cp.bundles.sbom import cyclonedx
from sentinel_cp.errors import Invalid

REPO = Path(__file__).resolve().parent.parent
PROJECT = "0b9f3c52-4a51-4d8e-9f43-6a2b8c1d7e10"
FILES = {
    "sentinel.kdl": 'include "routes/*.kdl"\nsystem { worker-threads 2 }\n',
    "routes/api.kdl": 'routes { route "api" { upstream "api" } }  // café ☕\n',
    "routes/web.kdl": "// web\n",
}
PINNED_TAR_SHA256 = "d15af1f1207f0a8fddfcdee2f716ba695610e8a6451b6914f4557259a17a4790"
PINNED_BUNDLE_ID = "b25ab8f105f215e603fe37af380854319231ced69ffc5b00ab306ad2ecf0b6e2"

SEGMENT = st.text("abcXYZ019._-", min_size=1, max_size=8).filter(lambda s: s not in (".", ".."))
PATHS = st.lists(SEGMENT, min_size=1, max_size=3).map(lambda parts: "/".join(parts) + ".kdl")
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=200)
FILE_SETS = st.builds(
    lambda extra, entry: {**extra, "sentinel.kdl": entry},
    st.dictionaries(PATHS, TEXT, max_size=6),
    TEXT,
)


def _tar_zst(entries: list[tuple[tarfile.TarInfo, bytes]], *, level: int = 3) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, content in entries:
            tar.addfile(info, io.BytesIO(content) if info.isreg() else None)
    return zstandard.ZstdCompressor(level=level).compress(buffer.getvalue())


def _entry(name: str, content: bytes = b"", kind: bytes = tarfile.REGTYPE) -> tuple:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(content) if kind == tarfile.REGTYPE else 0
    if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        info.linkname = "sentinel.kdl"
    return info, content


def _valid_entries(files: dict[str, str] = FILES) -> list[tuple[tarfile.TarInfo, bytes]]:
    """The entries of a genuine archive, to be tampered with."""
    archive = build_archive(PROJECT, files)
    tar_bytes = zstandard.ZstdDecompressor().decompress(archive.data)
    entries = []
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        for member in tar.getmembers():
            handle = tar.extractfile(member)
            entries.append((member, handle.read() if handle else b""))
    return entries


def _zeros_frame(size: int, *, content_size: bool) -> bytes:
    compressor = zstandard.ZstdCompressor(level=1, write_content_size=content_size)
    if content_size:
        return compressor.compress(bytes(size))
    out = io.BytesIO()
    with compressor.stream_writer(out, closefd=False) as writer:
        chunk = bytes(1024 * 1024)
        for _ in range(size // len(chunk)):
            writer.write(chunk)
    return out.getvalue()


# ---------------------------------------------------------------------------- determinism


@settings(max_examples=40, deadline=None)
@given(FILE_SETS)
def test_same_files_build_byte_identical_archives(files: dict[str, str]) -> None:
    first, second = build_archive(PROJECT, files), build_archive(PROJECT, dict(files))
    assert first.data == second.data
    assert first.bundle_id == second.bundle_id


@settings(max_examples=25, deadline=None)
@given(FILE_SETS)
def test_archive_round_trips_through_read_archive(files: dict[str, str]) -> None:
    archive = build_archive(PROJECT, files)
    assert read_archive(archive.data) == {p: t.encode("utf-8") for p, t in sorted(files.items())}


def test_separate_processes_at_different_times_build_the_same_archive() -> None:
    script = (
        "import json, sys\n"
        "from sentinel_cp.bundles.archive import build_archive\n"
        "a = build_archive(sys.argv[1], json.loads(sys.argv[2]))\n"
        "print(a.bundle_id, a.data.hex())\n"
    )
    outputs = []
    for tz, seed in (("UTC", "1"), ("Pacific/Kiritimati", "2"), ("America/St_Johns", "3")):
        env = {**os.environ, "TZ": tz, "PYTHONHASHSEED": seed, "PYTHONPATH": str(REPO)}
        files = dict(reversed(list(FILES.items()))) if seed == "2" else FILES
        result = subprocess.run(
            [sys.executable, "-c", script, PROJECT, json.dumps(files)],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        outputs.append(result.stdout.split())
    here = build_archive(PROJECT, FILES)
    assert all(out == [here.bundle_id, here.data.hex()] for out in outputs)


def test_archive_bytes_are_pinned_for_a_known_input() -> None:
    # A change here changes every bundle id: only ever on purpose (format or zstd upgrade).
    archive = build_archive(PROJECT, FILES)
    tar = zstandard.ZstdDecompressor().decompress(archive.data)
    assert hashlib.sha256(tar).hexdigest() == PINNED_TAR_SHA256
    assert archive.bundle_id == PINNED_BUNDLE_ID


def test_bundle_id_is_the_sha256_of_the_archive_bytes() -> None:
    archive = build_archive(PROJECT, FILES)
    assert archive.bundle_id == hashlib.sha256(archive.data).hexdigest()
    assert archive.size_bytes == len(archive.data)


def test_input_order_of_files_does_not_change_the_archive() -> None:
    shuffled = {p: FILES[p] for p in ["routes/web.kdl", "sentinel.kdl", "routes/api.kdl"]}
    assert build_archive(PROJECT, shuffled).data == build_archive(PROJECT, FILES).data


def test_another_project_gives_another_bundle_id() -> None:
    assert build_archive("p-1", FILES).bundle_id != build_archive("p-2", FILES).bundle_id


def test_another_file_content_gives_another_bundle_id() -> None:
    changed = {**FILES, "routes/web.kdl": "// web!\n"}
    assert build_archive(PROJECT, changed).bundle_id != build_archive(PROJECT, FILES).bundle_id


# ---------------------------------------------------------------------------- layout


def test_tar_entries_are_sorted_regular_files_with_fixed_metadata() -> None:
    members = [info for info, _ in _valid_entries()]
    assert [m.name for m in members] == sorted([*FILES, MANIFEST_PATH])
    for member in members:
        assert member.type == tarfile.REGTYPE
        assert (member.mtime, member.mode, member.uid, member.gid) == (0, 0o644, 0, 0)
        assert (member.uname, member.gname) == ("", "")
        assert member.pax_headers == {}


def test_manifest_is_canonical_json_without_timestamps() -> None:
    archive = build_archive(PROJECT, FILES)
    raw = dict((info.name, content) for info, content in _valid_entries())[MANIFEST_PATH]
    assert raw == canonical_json(archive.manifest)
    manifest = json.loads(raw)
    assert set(manifest) == {"schema_version", "project_id", "files", "config_sha256"}
    assert manifest["schema_version"] == 1
    assert manifest["project_id"] == PROJECT
    assert [f["path"] for f in manifest["files"]] == sorted(FILES)
    api = FILES["routes/api.kdl"].encode()
    assert manifest["files"][0] == {
        "path": "routes/api.kdl",
        "sha256": hashlib.sha256(api).hexdigest(),
        "size": len(api),
    }


def test_config_sha256_is_the_hash_of_sentinel_kdl() -> None:
    archive = build_archive(PROJECT, FILES)
    expected = hashlib.sha256(FILES["sentinel.kdl"].encode()).hexdigest()
    assert archive.config_sha256 == expected == archive.manifest["config_sha256"]


def test_zstd_frame_records_content_size_and_checksum() -> None:
    params = zstandard.get_frame_parameters(build_archive(PROJECT, FILES).data)
    assert params.content_size > 0
    assert params.has_checksum
    assert params.dict_id == 0
    assert MEDIA_TYPE == "application/zstd"


def test_long_paths_are_archived_with_a_pax_path_header_and_read_back() -> None:
    long_path = "/".join(["segment"] * 20) + "/deep.kdl"
    archive = build_archive(PROJECT, {**FILES, long_path: "x"})
    assert read_archive(archive.data)[long_path] == b"x"
    tar = zstandard.ZstdDecompressor().decompress(archive.data)
    with tarfile.open(fileobj=io.BytesIO(tar)) as reader:
        member = reader.getmember(long_path)
    assert member.pax_headers == {"path": long_path}


@pytest.mark.parametrize(
    ("files", "field"),
    [
        ({"routes/a.kdl": ""}, "sentinel.kdl"),
        ({**FILES, "manifest.json": "{}"}, "manifest.json"),
        ({**FILES, "../x.kdl": ""}, "../x.kdl"),
        ({**FILES, "/abs.kdl": ""}, "/abs.kdl"),
    ],
)
def test_build_archive_refuses_unsafe_or_incomplete_file_sets(files: dict, field: str) -> None:
    with pytest.raises(Invalid) as caught:
        build_archive(PROJECT, files)
    assert field in caught.value.fields


# ---------------------------------------------------------------------------- hostile archives


def _refusal(data: bytes, **limits: int) -> Invalid:
    with pytest.raises(Invalid) as caught:
        read_archive(data, **limits)
    return caught.value


def test_read_archive_refuses_content_that_differs_from_the_manifest() -> None:
    entries = [
        (info, b"// tampered\n") if info.name == "routes/web.kdl" else (info, content)
        for info, content in _valid_entries()
    ]
    for info, content in entries:
        info.size = len(content)
    assert "routes/web.kdl" in _refusal(_tar_zst(entries)).fields


def test_read_archive_refuses_an_entry_missing_from_the_manifest() -> None:
    entries = [*_valid_entries(), _entry("routes/extra.kdl", b"// extra\n")]
    assert "routes/extra.kdl" in _refusal(_tar_zst(entries)).fields


def test_read_archive_refuses_a_manifest_file_missing_from_the_archive() -> None:
    entries = [(i, c) for i, c in _valid_entries() if i.name != "routes/web.kdl"]
    assert "routes/web.kdl" in _refusal(_tar_zst(entries)).fields


def test_read_archive_refuses_an_archive_without_manifest() -> None:
    entries = [(i, c) for i, c in _valid_entries() if i.name != MANIFEST_PATH]
    assert MANIFEST_PATH in _refusal(_tar_zst(entries)).fields


@pytest.mark.parametrize("name", ["../x.kdl", "routes/../../x.kdl", "/etc/x.kdl"])
def test_read_archive_refuses_escaping_paths(name: str) -> None:
    entries = [*_valid_entries(), _entry(name, b"x")]
    assert name in _refusal(_tar_zst(entries)).fields


@pytest.mark.parametrize(
    "kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE]
)
def test_read_archive_refuses_links_devices_and_fifos(kind: bytes) -> None:
    entries = [_entry("evil.kdl", kind=kind), *_valid_entries()]
    refusal = _refusal(_tar_zst(entries))
    assert "evil.kdl" in refusal.fields


def test_read_archive_refuses_directory_entries() -> None:
    entries = [_entry("routes", kind=tarfile.DIRTYPE), *_valid_entries()]
    assert "routes" in _refusal(_tar_zst(entries)).fields


def test_read_archive_refuses_more_entries_than_allowed() -> None:
    refusal = _refusal(build_archive(PROJECT, FILES).data, max_entries=3)
    assert "more than 3 entries" in refusal.message


def test_read_archive_stops_a_zstd_bomb_at_the_cap_without_allocating_it() -> None:
    bomb = _zeros_frame(64 * 1024 * 1024, content_size=False)
    tracemalloc.start()
    try:
        refusal = _refusal(bomb, max_total_bytes=1024 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "expands beyond" in refusal.message
    assert peak < 8 * 1024 * 1024


def test_read_archive_stops_a_zstd_bomb_at_the_default_64_mib_cap() -> None:
    bomb = _zeros_frame(65 * 1024 * 1024, content_size=False)
    assert "expands beyond 67108864 bytes" in _refusal(bomb).message


def test_read_archive_refuses_a_frame_that_declares_more_than_the_cap() -> None:
    bomb = _zeros_frame(2 * 1024 * 1024, content_size=True)
    assert "declares" in _refusal(bomb, max_total_bytes=1024 * 1024).message


@pytest.mark.parametrize("data", [b"", b"not zstd at all", b"\x28\xb5\x2f\xfd garbage"])
def test_read_archive_refuses_data_that_is_not_zstd(data: bytes) -> None:
    assert "archive" in _refusal(data).fields


def test_read_archive_refuses_trailing_garbage_after_the_frame() -> None:
    assert "archive" in _refusal(build_archive(PROJECT, FILES).data + b"junk").fields


def test_read_archive_refuses_zstd_that_is_not_a_tar() -> None:
    data = zstandard.ZstdCompressor().compress(b"just some text, not a tar archive" * 20)
    assert "archive" in _refusal(data).fields


# ---------------------------------------------------------------------------- SBOM


def _sbom_input() -> dict:
    archive = build_archive(PROJECT, FILES)
    return {
        "id": archive.bundle_id,
        "version": "v42",
        "project": "shop",
        "manifest": archive.manifest,
        "created_at": "2025-01-02T03:04:05+00:00",
    }


def test_sbom_describes_the_bundle_with_its_id_as_sha256() -> None:
    bundle = _sbom_input()
    bom = cyclonedx(bundle)
    assert (bom["bomFormat"], bom["specVersion"]) == ("CycloneDX", "1.5")
    component = bom["metadata"]["component"]
    assert component["version"] == "v42"
    assert component["hashes"] == [{"alg": "SHA-256", "content": bundle["id"]}]
    assert bom["metadata"]["timestamp"] == bundle["created_at"]


def test_sbom_lists_one_component_per_file_with_its_hash() -> None:
    bundle = _sbom_input()
    bom = cyclonedx(bundle)
    by_name = {c["name"]: c for c in bom["components"]}
    assert sorted(by_name) == sorted(FILES)
    digest = hashlib.sha256(FILES["sentinel.kdl"].encode()).hexdigest()
    assert by_name["sentinel.kdl"]["hashes"] == [{"alg": "SHA-256", "content": digest}]


def test_sbom_serial_number_is_derived_from_the_bundle_id() -> None:
    bundle = _sbom_input()
    first, again = cyclonedx(bundle), cyclonedx(dict(bundle))
    other = cyclonedx({**bundle, "id": "0" * 64})
    assert first == again
    assert first["serialNumber"].startswith("urn:uuid:")
    assert first["serialNumber"] != other["serialNumber"]
    json.dumps(first)
