"""Turning a bundle submission (JSON map, single file, uploads, tar.gz) into checked files."""

from __future__ import annotations

import gzip
import io
import tarfile
import tracemalloc
from collections.abc import Callable

import pytest

from sentinel_cp.bundles.sources import (
    NOT_A_TARBALL,
    SourceLimits,
    files_from_mapping,
    files_from_single,
    files_from_targz,
    files_from_uploads,
)
from sentinel_cp.errors import Invalid

ENTRY_TEXT = 'include "routes/*.kdl"\n'
ROUTE_TEXT = 'routes { route "api" { upstream "api" } }  // café\n'
SMALL = SourceLimits(max_files=3, max_total_bytes=100, max_archive_entries=8)


def _refused(call: Callable[..., object], *args: object) -> Invalid:
    with pytest.raises(Invalid) as caught:
        call(*args)
    return caught.value


def _targz(
    entries: list[tuple[str, bytes | None, bytes]], *, fmt: int = tarfile.PAX_FORMAT
) -> bytes:
    """(name, content or None for a non-file, tar type) entries as a .tar.gz."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=fmt) as tar:
        for name, content, kind in entries:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.linkname = "sentinel.kdl"
            if content is not None:
                info.size = len(content)
            tar.addfile(info, io.BytesIO(content) if content is not None else None)
    return buffer.getvalue()


def _file(name: str, content: bytes = b"// x\n") -> tuple[str, bytes, bytes]:
    return name, content, tarfile.REGTYPE


def _dir(name: str) -> tuple[str, None, bytes]:
    return name, None, tarfile.DIRTYPE


# ---------------------------------------------------------------------------- JSON forms


def test_mapping_with_several_files_is_accepted_as_given() -> None:
    files = {"sentinel.kdl": ENTRY_TEXT, "routes/api.kdl": ROUTE_TEXT}
    assert files_from_mapping(files) == files


def test_single_config_source_becomes_sentinel_kdl() -> None:
    assert files_from_single("system { }\n") == {"sentinel.kdl": "system { }\n"}


def test_single_config_source_over_the_size_limit_is_refused() -> None:
    assert "sentinel.kdl" in _refused(files_from_single, "x" * 101, SMALL).fields


def test_mapping_value_that_is_not_a_string_is_refused_naming_the_path() -> None:
    refusal = _refused(files_from_mapping, {"sentinel.kdl": ENTRY_TEXT, "routes/a.kdl": 42})
    assert refusal.fields == {"routes/a.kdl": ["file content must be a string"]}


def test_mapping_without_sentinel_kdl_is_refused() -> None:
    assert "sentinel.kdl" in _refused(files_from_mapping, {"main.kdl": ENTRY_TEXT}).fields


def test_empty_mapping_is_refused() -> None:
    assert "files" in _refused(files_from_mapping, {}).fields


@pytest.mark.parametrize(
    "path",
    [
        "/etc/sentinel.kdl",
        "../outside.kdl",
        "routes/../../x.kdl",
        "routes//a.kdl",
        "routes/",
        "./routes/a.kdl",
        "routes/a b.kdl",
        "routes\\a.kdl",
        "routes/ä.kdl",
        "",
        "a" * 300 + ".kdl",
        "manifest.json",
    ],
)
def test_mapping_with_a_bad_path_is_refused_naming_it(path: str) -> None:
    refusal = _refused(files_from_mapping, {"sentinel.kdl": ENTRY_TEXT, path: ROUTE_TEXT})
    assert path in refusal.fields


def test_mapping_with_every_bad_path_names_each_of_them() -> None:
    files = {"sentinel.kdl": "", "/a.kdl": "", "../b.kdl": ""}
    assert set(_refused(files_from_mapping, files).fields) == {"/a.kdl", "../b.kdl"}


def test_mapping_with_too_many_files_is_refused_naming_the_first_excess_path() -> None:
    files = {"c.kdl": "", "b.kdl": "", "a.kdl": "", "sentinel.kdl": ""}
    assert set(_refused(files_from_mapping, files, SMALL).fields) == {"c.kdl"}


def test_default_limit_allows_256_files_and_refuses_257() -> None:
    files = {f"routes/r{i:03}.kdl": "" for i in range(255)} | {"sentinel.kdl": ""}
    assert len(files_from_mapping(files)) == 256
    refusal = _refused(files_from_mapping, {**files, "routes/zz.kdl": ""})
    assert "routes/zz.kdl" in refusal.fields


def test_mapping_over_the_byte_limit_is_refused_naming_the_file_that_crossed_it() -> None:
    files = {"b.kdl": "x" * 30, "a.kdl": "x" * 30, "sentinel.kdl": "é" * 30}
    refusal = _refused(files_from_mapping, files, SMALL)
    assert set(refusal.fields) == {"b.kdl"}


def test_byte_limit_counts_utf8_bytes_not_characters() -> None:
    assert files_from_mapping({"sentinel.kdl": "é" * 50}, SMALL)
    assert "sentinel.kdl" in _refused(files_from_mapping, {"sentinel.kdl": "é" * 51}, SMALL).fields


def test_default_limit_is_one_mebibyte_of_source() -> None:
    assert files_from_mapping({"sentinel.kdl": "x" * (1024 * 1024)})
    assert _refused(files_from_mapping, {"sentinel.kdl": "x" * (1024 * 1024 + 1)}).fields


# ---------------------------------------------------------------------------- multipart uploads


def test_uploads_of_kdl_files_with_relative_paths_are_accepted() -> None:
    uploads = [("sentinel.kdl", ENTRY_TEXT.encode()), ("routes/api.kdl", ROUTE_TEXT.encode())]
    assert files_from_uploads(uploads) == {"sentinel.kdl": ENTRY_TEXT, "routes/api.kdl": ROUTE_TEXT}


def test_uploads_of_a_wrapping_directory_are_unwrapped() -> None:
    uploads = [("config/sentinel.kdl", b"// e\n"), ("config/routes/api.kdl", b"// r\n")]
    assert files_from_uploads(uploads) == {"sentinel.kdl": "// e\n", "routes/api.kdl": "// r\n"}


def test_upload_that_is_not_kdl_is_refused_naming_it() -> None:
    uploads = [("sentinel.kdl", b""), ("notes.txt", b"hello")]
    assert "notes.txt" in _refused(files_from_uploads, uploads).fields


def test_upload_that_is_not_utf8_is_refused_naming_it() -> None:
    uploads = [("sentinel.kdl", b""), ("routes/bad.kdl", b"\xff\xfe\x00")]
    assert _refused(files_from_uploads, uploads).fields == {"routes/bad.kdl": ["not UTF-8 text"]}


def test_upload_with_an_escaping_path_is_refused_naming_it() -> None:
    uploads = [("sentinel.kdl", b""), ("../evil.kdl", b"")]
    assert "../evil.kdl" in _refused(files_from_uploads, uploads).fields


def test_upload_of_the_same_path_twice_is_refused() -> None:
    uploads = [("sentinel.kdl", b""), ("sentinel.kdl", b"")]
    assert "sentinel.kdl" in _refused(files_from_uploads, uploads).fields


def test_uploads_over_the_file_limit_are_refused_naming_the_first_excess() -> None:
    uploads = [("sentinel.kdl", b""), ("a.kdl", b""), ("b.kdl", b""), ("c.kdl", b"")]
    assert "c.kdl" in _refused(files_from_uploads, uploads, SMALL).fields


def test_uploads_over_the_byte_limit_are_refused_naming_the_file_that_crossed_it() -> None:
    uploads = [("sentinel.kdl", b"x" * 60), ("big.kdl", b"x" * 60)]
    assert "big.kdl" in _refused(files_from_uploads, uploads, SMALL).fields


def test_uploads_without_sentinel_kdl_are_refused() -> None:
    assert "sentinel.kdl" in _refused(files_from_uploads, [("main.kdl", b"")]).fields


# ---------------------------------------------------------------------------- tar.gz


def test_targz_of_kdl_files_is_accepted() -> None:
    data = _targz([_file("sentinel.kdl", ENTRY_TEXT.encode()), _file("routes/api.kdl")])
    assert files_from_targz(data) == {"sentinel.kdl": ENTRY_TEXT, "routes/api.kdl": "// x\n"}


def test_targz_made_from_dot_has_its_leading_dot_slash_dropped() -> None:
    data = _targz([_dir("."), _dir("./routes"), _file("./sentinel.kdl"), _file("./routes/a.kdl")])
    assert sorted(files_from_targz(data)) == ["routes/a.kdl", "sentinel.kdl"]


def test_targz_of_a_config_directory_has_the_directory_stripped() -> None:
    data = _targz(
        [_dir("config"), _file("config/sentinel.kdl"), _file("config/routes/a.kdl")],
        fmt=tarfile.GNU_FORMAT,
    )
    assert sorted(files_from_targz(data)) == ["routes/a.kdl", "sentinel.kdl"]


def test_targz_with_two_top_level_directories_is_not_unwrapped() -> None:
    data = _targz([_file("a/sentinel.kdl"), _file("b/x.kdl")])
    assert "sentinel.kdl" in _refused(files_from_targz, data).fields


def test_targz_with_sentinel_kdl_at_the_root_keeps_its_directories() -> None:
    data = _targz([_file("sentinel.kdl"), _file("config/sentinel.kdl")])
    assert sorted(files_from_targz(data)) == ["config/sentinel.kdl", "sentinel.kdl"]


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        (("link.kdl", None, tarfile.SYMTYPE), "links"),
        (("hard.kdl", None, tarfile.LNKTYPE), "links"),
        (("dev.kdl", None, tarfile.CHRTYPE), "device"),
        (("blk.kdl", None, tarfile.BLKTYPE), "device"),
        (("pipe.kdl", None, tarfile.FIFOTYPE), "FIFO"),
    ],
)
def test_targz_with_links_devices_or_fifos_is_refused_naming_the_entry(
    entry: tuple[str, None, bytes], problem: str
) -> None:
    refusal = _refused(files_from_targz, _targz([_file("sentinel.kdl"), entry]))
    assert problem in refusal.fields[entry[0]][0]


@pytest.mark.parametrize("name", ["/etc/sentinel.kdl", "../x.kdl", "a/../../x.kdl", "a//b.kdl"])
def test_targz_with_an_escaping_path_is_refused_naming_it(name: str) -> None:
    refusal = _refused(files_from_targz, _targz([_file("sentinel.kdl"), _file(name)]))
    assert name in refusal.fields


def test_targz_with_an_absolute_directory_is_refused_naming_it() -> None:
    refusal = _refused(files_from_targz, _targz([_dir("/etc"), _file("sentinel.kdl")]))
    assert "/etc" in refusal.fields


def test_targz_with_a_file_that_is_not_kdl_is_refused_naming_it() -> None:
    data = _targz([_file("sentinel.kdl"), _file("README.md", b"# hi\n")])
    assert _refused(files_from_targz, data).fields == {
        "README.md": ["only .kdl files are accepted"]
    }


def test_targz_with_a_macos_resource_fork_is_refused_with_a_hint() -> None:
    data = _targz([_file("sentinel.kdl"), _file("._sentinel.kdl", b"\x00\x05\x16\x07\xff")])
    problem = _refused(files_from_targz, data).fields["._sentinel.kdl"][0]
    assert "COPYFILE_DISABLE=1" in problem


def test_targz_with_the_same_file_twice_is_refused() -> None:
    data = _targz([_file("sentinel.kdl"), _file("./sentinel.kdl")])
    assert "sentinel.kdl" in _refused(files_from_targz, data).fields


def test_targz_with_too_many_files_is_refused_naming_the_first_excess() -> None:
    names = ["sentinel.kdl", "a.kdl", "b.kdl", "c.kdl"]
    refusal = _refused(files_from_targz, _targz([_file(n) for n in names]), SMALL)
    assert "c.kdl" in refusal.fields


def test_targz_with_too_many_entries_is_refused_naming_the_first_excess() -> None:
    entries = [_file("sentinel.kdl"), *[_dir(f"d{i}") for i in range(9)]]
    refusal = _refused(files_from_targz, _targz(entries), SMALL)
    assert "d7" in refusal.fields


def test_targz_over_the_byte_limit_is_refused_before_reading_the_member() -> None:
    data = _targz([_file("sentinel.kdl", b"x" * 60), _file("big.kdl", b"y" * 60)])
    assert "big.kdl" in _refused(files_from_targz, data, SMALL).fields


def test_gzip_bomb_member_is_refused_without_decompressing_it() -> None:
    bomb = _targz([_file("sentinel.kdl"), _file("bomb.kdl", bytes(16 * 1024 * 1024))])
    tracemalloc.start()
    try:
        refusal = _refused(files_from_targz, bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "bomb.kdl" in refusal.fields
    assert peak < 4 * 1024 * 1024


def test_tar_header_bomb_stops_at_the_decompression_budget() -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        header = tarfile.TarInfo("././@LongLink")
        header.type = tarfile.GNUTYPE_LONGNAME
        header.size = 16 * 1024 * 1024
        tar.addfile(header, io.BytesIO(bytes(header.size)))
    bomb = gzip.compress(buffer.getvalue())
    tracemalloc.start()
    try:
        refusal = _refused(files_from_targz, bomb, SMALL)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "archive" in refusal.fields
    assert peak < 4 * 1024 * 1024


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"plain text, not an archive",
        gzip.compress(b"gzip of something that is not a tar archive" * 50),
        gzip.compress(b"\x00" * 512)[:-12],
    ],
)
def test_corrupt_targz_is_refused_as_not_a_gzip_compressed_tar(data: bytes) -> None:
    refusal = _refused(files_from_targz, data)
    assert refusal.message == NOT_A_TARBALL
    assert refusal.fields == {"archive": [NOT_A_TARBALL]}


def test_uncompressed_tar_is_refused_as_not_a_gzip_compressed_tar() -> None:
    raw = gzip.decompress(_targz([_file("sentinel.kdl")]))
    assert _refused(files_from_targz, raw).message == NOT_A_TARBALL


def test_targz_without_any_file_is_refused() -> None:
    assert "sentinel.kdl" in _refused(files_from_targz, _targz([_dir("config")])).fields
