"""Turning a bundle submission into `{path: text}`, within the limits of `spec/bundles.md`.

Four shapes come in: a JSON map of files, a single `config_source`, multipart `.kdl` uploads
and a `.tar.gz` upload. Each ends in the same checks: at most `max_files` files, at most
`max_total_bytes` of UTF-8 source, relative paths matching `[A-Za-z0-9._/-]+` without `..`,
`.` or empty segments, and `sentinel.kdl` present. A violation raises `Invalid` whose `fields`
name the offending path (the key is the path as submitted).

Decisions:

- `manifest.json` is reserved: the archive carries its own manifest under that name.
- Uploads and tar members are `.kdl` files only. Any other regular file in a tarball (a
  README, `.DS_Store`) is refused by name rather than silently dropped: what was uploaded and
  what was compiled must be the same set, and an operator who tars a directory with a stray
  file learns it at once. Directory entries are accepted and ignored; links, devices and FIFOs
  are refused. macOS AppleDouble files (`._x.kdl`, which `tar` on macOS adds unless
  `COPYFILE_DISABLE=1`) are refused as not UTF-8, with that hint.
- A leading `./` is dropped from upload and tar names (`tar czf x.tgz .` writes them).
- `tar czf x.tgz config` wraps everything in `config/`. When `sentinel.kdl` is not at the root,
  every file lies under one top-level directory and that directory holds `sentinel.kdl`, the
  directory is stripped, so `config/routes/a.kdl` becomes `routes/a.kdl` and the include globs
  (relative to `sentinel.kdl`) keep working. Nothing else is rewritten. The JSON map is taken
  literally: its author chose the paths.
- A tarball is read as a stream with a byte budget on the decompressed tar (the source limit
  plus room for headers), so a gzip or tar bomb stops one byte past the budget; members are
  never extracted to disk. Its headers go through `StrictTarInfo`: sparse members, negative
  sizes, extended headers over 64 KiB, malformed pax records and more than 8 extended headers
  in a row are refused before `tarfile` acts on them (it crashed, recursed or went quadratic).
- A path that is also a directory of another path (`a` beside `a/b.kdl`) is refused: no node
  could write both.
"""

from __future__ import annotations

import gzip
import io
import re
import tarfile
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent import tarsafety
from sentinel_cp.errors import Invalid

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

ENTRY = "sentinel.kdl"
RESERVED_PATHS = frozenset({"manifest.json"})
NOT_A_TARBALL = "not a gzip-compressed tar archive"
NOT_UTF8 = "not UTF-8 text (it holds a lone surrogate)"
# Room in the decompressed tar stream for each member's header blocks (ustar header, a PAX
# header and its record, padding), and for the end-of-archive blocks and record padding.
TAR_OVERHEAD_PER_ENTRY = 2048
TAR_OVERHEAD_FIXED = 20480
# A pax or GNU long-name header: tools write a few records (a path, times, a few xattrs), well
# under this. Bounds what tarfile reads into memory for a header it parses itself.
MAX_EXTENDED_HEADER_BYTES = 64 * 1024


@dataclass(frozen=True)
class SourceLimits:
    """Configurable bounds of one submission."""

    max_files: int = 256
    max_total_bytes: int = 1024 * 1024
    path_pattern: str = r"[A-Za-z0-9._/-]+"
    max_path_length: int = 255
    max_archive_entries: int = 1024


DEFAULT_LIMITS = SourceLimits()


def path_problems(path: str, limits: SourceLimits = DEFAULT_LIMITS) -> list[str]:
    """Why `path` is not an acceptable bundle path (empty when it is)."""
    if not path:
        return ["path must not be empty"]
    if len(path) > limits.max_path_length:
        return [f"path is longer than {limits.max_path_length} characters"]
    if path.startswith("/"):
        return ["path must be relative"]
    if re.fullmatch(limits.path_pattern, path) is None:
        return [f"path must match {limits.path_pattern}"]
    segments = path.split("/")
    if ".." in segments:
        return ["path must not contain '..'"]
    if "." in segments:
        return ["path must not contain '.' segments"]
    if "" in segments:
        return ["path must not contain empty segments"]
    return []


def _strip_dot_slash(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name


def _strip_wrapping_directory(files: dict[str, str]) -> dict[str, str]:
    if ENTRY in files or not files:
        return files
    tops = {path.split("/", 1)[0] for path in files}
    if len(tops) != 1 or any("/" not in path for path in files):
        return files
    top = tops.pop()
    if f"{top}/{ENTRY}" not in files:
        return files
    return {path[len(top) + 1 :]: text for path, text in files.items()}


def _entry_first(paths: Iterable[str]) -> list[str]:
    """Paths in the order limits are counted: the entry point, then by path."""
    return sorted(paths, key=lambda path: (path != ENTRY, path))


def _utf8_size(text: str) -> int | None:
    """Bytes of `text` in UTF-8; None for a str holding a lone surrogate (which JSON `\\ud800`
    escapes or a careless caller can produce), which has no UTF-8 form."""
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return None


def directories_of(paths: Iterable[str]) -> set[str]:
    """Every directory the paths imply: `a/b/c.kdl` gives `a` and `a/b`.

    A path that is also one of them (`a/b` as a file beside `a/b/c.kdl`) can be neither
    unpacked on a node nor written for the external check, so it is refused up front.
    """
    out: set[str] = set()
    for path in paths:
        parts = path.split("/")[:-1]
        out.update("/".join(parts[: index + 1]) for index in range(len(parts)))
    return out


def _checked(files: dict[str, str], limits: SourceLimits) -> dict[str, str]:
    """Apply the limits shared by every input shape; collect every per-path problem."""
    problems: dict[str, list[str]] = {}
    for path in sorted(files):
        found = path_problems(path, limits)
        if not found and path in RESERVED_PATHS:
            found = [f"{path} is reserved for the bundle's own manifest"]
        if found:
            problems[path] = found
    if problems:
        raise Invalid("Invalid file path", fields=problems)
    if len(files) > limits.max_files:
        first_excess = _entry_first(files)[limits.max_files]
        raise Invalid(
            f"Too many files: {len(files)}, at most {limits.max_files} are accepted",
            fields={first_excess: [f"exceeds the limit of {limits.max_files} files"]},
        )
    clashes = sorted(set(files) & directories_of(files))
    if clashes:
        raise Invalid(
            f"{clashes[0]} is both a file and a directory",
            fields={path: ["is both a file and a directory"] for path in clashes},
        )
    sizes = {path: _utf8_size(text) for path, text in files.items()}
    not_text = {path: [NOT_UTF8] for path in sorted(files) if sizes[path] is None}
    if not_text:
        raise Invalid("File content is not UTF-8 text", fields=not_text)
    total = 0
    for path in _entry_first(files):
        total += sizes[path] or 0
        if total > limits.max_total_bytes:
            raise Invalid(
                f"Source is larger than {limits.max_total_bytes} bytes in total",
                fields={path: [f"total source exceeds {limits.max_total_bytes} bytes"]},
            )
    if ENTRY not in files:
        raise Invalid(
            f"The entry point {ENTRY} is missing",
            fields={ENTRY: ["missing: the bundle's entry point is required"]},
        )
    return files


def files_from_mapping(
    files: Mapping[str, object], limits: SourceLimits = DEFAULT_LIMITS
) -> dict[str, str]:
    """The JSON multi-file form `{"files": {path: text}}`, taken literally."""
    if not isinstance(files, Mapping) or not files:
        raise Invalid("No files submitted", fields={"files": ["must be a non-empty object"]})
    problems: dict[str, list[str]] = {}
    out: dict[str, str] = {}
    for path, text in files.items():
        if not isinstance(path, str):
            raise Invalid("File names must be strings", fields={"files": ["non-string key"]})
        if not isinstance(text, str):
            problems[path] = ["file content must be a string"]
        else:
            out[path] = text
    if problems:
        raise Invalid("File content must be text", fields=problems)
    return _checked(out, limits)


def files_from_single(config_source: str, limits: SourceLimits = DEFAULT_LIMITS) -> dict[str, str]:
    """The single-file form `{"config_source": text}` (the peer API's shape)."""
    if not isinstance(config_source, str):
        raise Invalid(
            "config_source must be a string", fields={"config_source": ["must be a string"]}
        )
    return _checked({ENTRY: config_source}, limits)


def _decode(path: str, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        problem = "not UTF-8 text"
        if path.rsplit("/", 1)[-1].startswith("._"):
            problem += " (a macOS resource-fork file; create the archive with COPYFILE_DISABLE=1)"
        raise Invalid(f"{path} is not UTF-8 text", fields={path: [problem]}) from None


def files_from_uploads(
    uploads: list[tuple[str, bytes]], limits: SourceLimits = DEFAULT_LIMITS
) -> dict[str, str]:
    """Multipart `.kdl` uploads as (filename, bytes); a filename may carry a relative path."""
    if not uploads:
        raise Invalid("No files submitted", fields={"files": ["upload at least sentinel.kdl"]})
    if len(uploads) > limits.max_files:
        name = _strip_dot_slash(uploads[limits.max_files][0])
        raise Invalid(
            f"Too many files: {len(uploads)}, at most {limits.max_files} are accepted",
            fields={name: [f"exceeds the limit of {limits.max_files} files"]},
        )
    out: dict[str, str] = {}
    received = 0
    for filename, data in uploads:
        path = _strip_dot_slash(filename)
        problems = path_problems(path, limits)
        if problems:
            raise Invalid("Invalid file path", fields={filename or "files": problems})
        if not path.endswith(".kdl"):
            raise Invalid(f"{path} is not a .kdl file", fields={path: ["only .kdl files"]})
        if path in out:
            raise Invalid(f"{path} is uploaded twice", fields={path: ["duplicate file"]})
        received += len(data)
        if received > limits.max_total_bytes:
            raise Invalid(
                f"Source is larger than {limits.max_total_bytes} bytes in total",
                fields={path: [f"total source exceeds {limits.max_total_bytes} bytes"]},
            )
        out[path] = _decode(path, data)
    return _checked(_strip_wrapping_directory(out), limits)


class _BudgetedReader(io.RawIOBase):
    """A raw stream over `source` that refuses to go past `budget` bytes.

    At most `budget + 1` bytes are ever decompressed: the extra byte proves the overflow.
    """

    def __init__(self, source: gzip.GzipFile, budget: int) -> None:
        self._source = source
        self._left = budget

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        view = memoryview(buffer).cast("B")
        chunk = self._source.read(min(len(view), self._left + 1))
        if len(chunk) > self._left:
            raise Invalid(
                "The archive expands beyond the size limit",
                fields={"archive": ["decompressed archive exceeds the source size limit"]},
            )
        self._left -= len(chunk)
        view[: len(chunk)] = chunk
        return len(chunk)


def _archive_refused(problem: str) -> Invalid:
    return Invalid(f"The archive is refused: {problem}", fields={"archive": [problem]})


class StrictTarInfo(tarsafety.StrictTarInfo):
    """`agent.tarsafety.StrictTarInfo` with the upload's cap, refusing with a 422 `Invalid`.

    Shared by the `.tar.gz` submission path and `archive.read_archive`.
    """

    max_extended_header_bytes = MAX_EXTENDED_HEADER_BYTES
    refused = staticmethod(_archive_refused)


def _member_kind_problem(member: tarfile.TarInfo) -> str | None:
    if member.issym() or member.islnk():
        return "links are not accepted"
    if member.ischr() or member.isblk():
        return "device files are not accepted"
    if member.isfifo():
        return "FIFOs are not accepted"
    if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE) and not member.isdir():
        return "only regular files and directories are accepted"
    return None


def files_from_targz(data: bytes, limits: SourceLimits = DEFAULT_LIMITS) -> dict[str, str]:
    """A `.tar.gz` upload of `.kdl` files (see the module docstring for what is refused)."""
    budget = (
        limits.max_total_bytes
        + limits.max_archive_entries * TAR_OVERHEAD_PER_ENTRY
        + TAR_OVERHEAD_FIXED
    )
    gz = gzip.GzipFile(fileobj=io.BytesIO(data), mode="rb")
    stream = io.BufferedReader(_BudgetedReader(gz, budget))
    try:
        return _read_tar(stream, limits)
    except (tarfile.TarError, gzip.BadGzipFile, zlib.error, EOFError, OSError, ValueError):
        # ValueError: tarfile meets some malformed headers with a bare int(); StrictTarInfo
        # refuses every such form known, this keeps any other one a 422 rather than a 500.
        raise Invalid(NOT_A_TARBALL, fields={"archive": [NOT_A_TARBALL]}) from None


def _read_tar(stream: io.BufferedIOBase, limits: SourceLimits) -> dict[str, str]:
    out: dict[str, str] = {}
    entries = 0
    total = 0
    with tarfile.open(fileobj=stream, mode="r|", tarinfo=StrictTarInfo) as tar:
        for member in tar:
            entries += 1
            name = member.name
            if entries > limits.max_archive_entries:
                raise Invalid(
                    f"The archive has more than {limits.max_archive_entries} entries",
                    fields={name: [f"exceeds the limit of {limits.max_archive_entries} entries"]},
                )
            kind_problem = _member_kind_problem(member)
            if kind_problem is not None:
                raise Invalid(f"{name}: {kind_problem}", fields={name: [kind_problem]})
            path = _strip_dot_slash(name)
            if member.isdir():
                path = path.rstrip("/")
                if path in ("", "."):
                    continue
            problems = path_problems(path, limits)
            if problems:
                raise Invalid("Invalid path in archive", fields={name: problems})
            if member.isdir():
                continue
            if not path.endswith(".kdl"):
                raise Invalid(
                    f"{path} is not a .kdl file", fields={path: ["only .kdl files are accepted"]}
                )
            if path in out:
                raise Invalid(f"{path} appears twice", fields={path: ["duplicate entry"]})
            if len(out) >= limits.max_files:
                raise Invalid(
                    f"Too many files: at most {limits.max_files} are accepted",
                    fields={path: [f"exceeds the limit of {limits.max_files} files"]},
                )
            total += member.size
            if total > limits.max_total_bytes:
                raise Invalid(
                    f"Source is larger than {limits.max_total_bytes} bytes in total",
                    fields={path: [f"total source exceeds {limits.max_total_bytes} bytes"]},
                )
            handle = tar.extractfile(member)
            content = handle.read() if handle is not None else b""
            out[path] = _decode(path, content)
    if not out:
        raise Invalid("The archive holds no .kdl files", fields={ENTRY: ["missing"]})
    return _checked(_strip_wrapping_directory(out), limits)
