"""The deterministic bundle archive (`spec/bundles.md`, step 4) and its hostile-input reader.

A bundle's id is the sha256 of its archive, so the archive must be a pure function of the
project and the files: the same files in the same project give the same bytes in any process,
on any day, in any time zone. Hence:

- tar in POSIX.1-2001 (pax) format, written by this module (see `tar_bytes`) so that no
  library or interpreter upgrade can move a byte: entries sorted by path (the KDL files and
  `manifest.json`), regular files only, mtime 0, uid/gid 0, empty owner names, mode 0644.
  Bundle paths are ASCII (`[A-Za-z0-9._/-]+`), so an extended header is only written for a
  path longer than ustar's name field, and it carries nothing but that path.
- zstd level 19, single-threaded, with the content size and the frame checksum written and no
  dictionary id. The archive is built once, kept forever and downloaded by every node of every
  rollout, so the smallest output is worth the cost: about 40 ms for a typical bundle and
  under half a second at the 1 MiB source cap. 19 is the highest level below the "ultra"
  levels, so its window stays at most 8 MiB and small nodes decompress it cheaply. The bytes
  depend on the zstd library version (pinned through `zstandard`); an upgrade that changed
  them would only make a resubmission of old files produce a new id, never break a stored
  artifact.
- a canonical manifest (sorted keys, no insignificant whitespace, UTF-8) with no timestamps
  and no provenance.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import zstandard

from sentinel_cp.bundles.sources import ENTRY, StrictTarInfo, directories_of, path_problems
from sentinel_cp.errors import Invalid

MEDIA_TYPE = "application/zstd"
MANIFEST_PATH = "manifest.json"
SCHEMA_VERSION = 1
ZSTD_LEVEL = 19
FILE_MODE = 0o644
TAR_BLOCK = 512
TAR_RECORD = 20 * TAR_BLOCK
USTAR_MAGIC = b"ustar\x0000"
REGULAR_TYPEFLAG = b"0"
PAX_TYPEFLAG = b"x"
PAX_HEADER_NAME = b"././@PaxHeader"
DEFAULT_MAX_TOTAL_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_ENTRIES = 1024
# Level 19 never uses a window above 8 MiB; refusing larger windows bounds decoder memory.
MAX_WINDOW_SIZE = 8 * 1024 * 1024
_READ_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Archive:
    """An assembled bundle archive: its bytes, its content address and its manifest."""

    data: bytes
    bundle_id: str
    manifest: dict[str, Any] = field(hash=False)
    config_sha256: str
    size_bytes: int


def canonical_json(value: object) -> bytes:
    """The one byte form of a JSON value: sorted keys, no insignificant whitespace, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


def sha256_hex(data: bytes) -> str:
    """Lowercase hex sha256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def _encoded_files(files: Mapping[str, str]) -> dict[str, bytes]:
    problems: dict[str, list[str]] = {}
    encoded: dict[str, bytes] = {}
    for path, text in files.items():
        found = path_problems(path)
        if path == MANIFEST_PATH:
            found = [f"{MANIFEST_PATH} is reserved for the bundle's own manifest"]
        elif not isinstance(text, str):
            found = ["file content must be a string"]
        if found:
            problems[path] = found
        else:
            encoded[path] = text.encode("utf-8")
    if problems:
        raise Invalid("Invalid bundle file", fields=problems)
    if ENTRY not in encoded:
        raise Invalid(
            f"The entry point {ENTRY} is missing",
            fields={ENTRY: ["missing: the bundle's entry point is required"]},
        )
    return encoded


def build_manifest(project_id: str, files: Mapping[str, bytes]) -> dict[str, Any]:
    """The manifest of `files` (already UTF-8 encoded) for `project_id`."""
    return {
        "schema_version": SCHEMA_VERSION,
        "project_id": project_id,
        "files": [
            {"path": path, "sha256": sha256_hex(files[path]), "size": len(files[path])}
            for path in sorted(files)
        ],
        "config_sha256": sha256_hex(files[ENTRY]),
    }


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\x00" % (width - 1, value)


def _padded(text: bytes, width: int) -> bytes:
    return text[:width].ljust(width, b"\x00")


def _tar_header(name: bytes, size: int, typeflag: bytes, mode: int) -> bytes:
    """One ustar header block: uid/gid 0, mtime 0, no owner names, no device numbers."""
    block = b"".join(
        [
            _padded(name, 100),
            _octal(mode, 8),
            _octal(0, 8),  # uid
            _octal(0, 8),  # gid
            _octal(size, 12),
            _octal(0, 12),  # mtime
            b" " * 8,  # checksum, counted as spaces
            typeflag,
            _padded(b"", 100),  # linkname
            USTAR_MAGIC,
            _padded(b"", 32),  # uname
            _padded(b"", 32),  # gname
            _padded(b"", 8),  # devmajor
            _padded(b"", 8),  # devminor
            _padded(b"", 155),  # prefix
        ]
    ).ljust(TAR_BLOCK, b"\x00")
    return block[:148] + b"%06o\x00 " % sum(block) + block[156:]


def _block_padded(data: bytes) -> bytes:
    return data + b"\x00" * (-len(data) % TAR_BLOCK)


def _pax_path_record(path: bytes) -> bytes:
    body = b" path=" + path + b"\n"
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length = len(str(length)) + len(body)
    return str(length).encode("ascii") + body


def _tar_member(path: str, content: bytes) -> bytes:
    name = path.encode("utf-8")
    out = b""
    if len(name) > 100:
        record = _pax_path_record(name)
        out += _tar_header(PAX_HEADER_NAME, len(record), PAX_TYPEFLAG, 0)
        out += _block_padded(record)
    out += _tar_header(name, len(content), REGULAR_TYPEFLAG, FILE_MODE)
    return out + _block_padded(content)


def tar_bytes(entries: Mapping[str, bytes]) -> bytes:
    """The deterministic tar stream of `entries` ({path: content}), sorted by path.

    Written here rather than by `tarfile`, whose header details (device fields, for one)
    have changed between Python releases: the bundle id must not depend on the interpreter.
    The layout is what a POSIX.1-2001 (pax) writer produces: ustar headers, and an extended
    header carrying `path` only for a path longer than the 100-byte name field; then two zero
    blocks and zero padding to a 10240-byte record, like tar itself.
    """
    stream = b"".join(_tar_member(path, entries[path]) for path in sorted(entries))
    stream += b"\x00" * (2 * TAR_BLOCK)
    return stream + b"\x00" * (-len(stream) % TAR_RECORD)


def _compressor() -> zstandard.ZstdCompressor:
    return zstandard.ZstdCompressor(
        level=ZSTD_LEVEL,
        write_checksum=True,
        write_content_size=True,
        write_dict_id=False,
        threads=0,
    )


def build_archive(project_id: str, files: Mapping[str, str]) -> Archive:
    """Assemble the deterministic archive of `files` ({path: text}) for `project_id`.

    The input order of `files` does not matter. Raises `Invalid` for an unsafe or reserved
    path, non-text content or a missing `sentinel.kdl` (callers normally checked the
    submission with `sources` already).
    """
    encoded = _encoded_files(files)
    manifest = build_manifest(project_id, encoded)
    entries = dict(encoded)
    entries[MANIFEST_PATH] = canonical_json(manifest)
    data = _compressor().compress(tar_bytes(entries))
    return Archive(
        data=data,
        bundle_id=sha256_hex(data),
        manifest=manifest,
        config_sha256=manifest["config_sha256"],
        size_bytes=len(data),
    )


def _refuse(message: str, where: str = "archive") -> Invalid:
    return Invalid(message, fields={where: [message]})


def _decompress(data: bytes, max_total_bytes: int) -> bytes:
    """The tar stream inside `data`, read in chunks and abandoned one byte past the cap."""
    try:
        declared = zstandard.get_frame_parameters(data).content_size
    except zstandard.ZstdError:
        raise _refuse("not a zstd archive") from None
    if declared != zstandard.CONTENTSIZE_UNKNOWN and declared > max_total_bytes:
        raise _refuse(f"archive declares {declared} bytes, more than {max_total_bytes}")
    decompressor = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW_SIZE)
    out = bytearray()
    try:
        with decompressor.stream_reader(io.BytesIO(data), read_across_frames=True) as reader:
            while True:
                chunk = reader.read(min(_READ_CHUNK, max_total_bytes + 1 - len(out)))
                if not chunk:
                    break
                out += chunk
                if len(out) > max_total_bytes:
                    raise _refuse(f"archive expands beyond {max_total_bytes} bytes")
    except zstandard.ZstdError as error:
        raise _refuse(f"corrupt zstd archive: {error}") from None
    return bytes(out)


def _member_problem(member: tarfile.TarInfo) -> str | None:
    if member.issym() or member.islnk():
        return "links are not accepted"
    if member.ischr() or member.isblk() or member.isfifo():
        return "devices and FIFOs are not accepted"
    if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
        return "only regular files are accepted"
    problems = path_problems(member.name)
    return problems[0] if problems else None


def _tar_files(tar_bytes: bytes, max_entries: int) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:", tarinfo=StrictTarInfo) as tar:
            while (member := tar.next()) is not None:
                if len(found) >= max_entries:
                    raise _refuse(f"archive has more than {max_entries} entries")
                problem = _member_problem(member)
                if problem is not None:
                    raise _refuse(f"{member.name}: {problem}", member.name)
                if member.name in found:
                    raise _refuse(f"{member.name} appears twice", member.name)
                handle = tar.extractfile(member)
                found[member.name] = handle.read() if handle is not None else b""
    except (tarfile.TarError, ValueError) as error:  # ValueError: see sources.files_from_targz
        raise _refuse(f"corrupt tar archive: {error}") from None
    return found


def _manifest_entries(raw: bytes | None) -> dict[str, dict[str, Any]]:
    if raw is None:
        raise _refuse(f"{MANIFEST_PATH} is missing", MANIFEST_PATH)
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _refuse(f"{MANIFEST_PATH} is not JSON", MANIFEST_PATH) from None
    if not isinstance(manifest, dict) or manifest.get("schema_version") != SCHEMA_VERSION:
        raise _refuse(f"{MANIFEST_PATH} has an unknown schema", MANIFEST_PATH)
    listed = manifest.get("files")
    if not isinstance(listed, list):
        raise _refuse(f"{MANIFEST_PATH} lists no files", MANIFEST_PATH)
    entries: dict[str, dict[str, Any]] = {}
    for item in listed:
        if not (
            isinstance(item, dict)
            and isinstance(item.get("path"), str)
            and isinstance(item.get("sha256"), str)
            and isinstance(item.get("size"), int)
        ):
            raise _refuse(f"{MANIFEST_PATH} has a malformed file entry", MANIFEST_PATH)
        entries[item["path"]] = item
    entries_config = entries.get(ENTRY)
    if entries_config is None or manifest.get("config_sha256") != entries_config["sha256"]:
        raise _refuse(f"{MANIFEST_PATH}: config_sha256 does not match {ENTRY}", MANIFEST_PATH)
    return entries


def read_archive(
    data: bytes,
    *,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    max_entries: int = DEFAULT_MAX_ENTRIES,
) -> dict[str, bytes]:
    """The files ({path: bytes}, without `manifest.json`) of an archive, checked much as a node
    does (extended tar headers are allowed up to the upload cap, 64 KiB, not the node's 16 KiB:
    archives we build carry none).

    Refuses (with `Invalid`) anything but regular files, absolute or `..` paths, links,
    devices, sparse members, malformed or chained extended headers, more than `max_entries`
    entries, a tar stream larger than `max_total_bytes` (decompression stops there), a path
    that is both a file and a directory, and any disagreement with `manifest.json`: a file
    missing, unlisted, or with another size or sha256.
    """
    found = _tar_files(_decompress(data, max_total_bytes), max_entries)
    clashes = sorted(set(found) & directories_of(found))
    if clashes:  # no node could write both `a` and `a/b.kdl`
        raise _refuse(f"{clashes[0]} is both a file and a directory", clashes[0])
    listed = _manifest_entries(found.pop(MANIFEST_PATH, None))
    for path, content in found.items():
        entry = listed.get(path)
        if entry is None:
            raise _refuse(f"{path} is not in the manifest", path)
        if entry["size"] != len(content) or entry["sha256"] != sha256_hex(content):
            raise _refuse(f"{path} does not match its manifest entry", path)
    for path in listed:
        if path not in found:
            raise _refuse(f"{path} is listed in the manifest but missing", path)
    return dict(sorted(found.items()))
