"""Tar header hardening shared by the node (`agent.bundle`) and the control plane
(`sentinel_cp.bundles.sources`, which imports it: the agent never imports the control plane).

`StrictTarInfo` refuses, before tarfile acts on them, the header forms a bundle never holds and
tarfile handles badly on hostile input: sparse members (they expand holes the stream never
carried), negative sizes, huge or malformed extended headers, and chains of them (which tarfile
follows by recursion). A subclass says how large an extended header may be and which exception
a refusal raises (`refused(problem)`); the problems are the same short phrases on both sides.
"""

from __future__ import annotations

import re
import tarfile
from typing import ClassVar

# Extended headers in front of one member (tarfile reads a chain of them recursively).
MAX_CHAINED_HEADERS = 8
# tarfile's pax regexes (Python < 3.11.10, CVE-2024-6232) are quadratic in long digit runs.
MAX_PAX_DIGIT_RUN = 64
EXTENDED_TYPES = (
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
)
_DIGIT_RUN = re.compile(rb"[0-9]{%d}" % (MAX_PAX_DIGIT_RUN + 1))
SPARSE = "sparse entries are not accepted"


class TarRefused(Exception):
    """The default refusal; subclasses of `StrictTarInfo` raise their own type."""


def pax_records_problem(records: bytes) -> str | None:
    """Why the records of a pax header are not acceptable (None when they are), in one pass.

    Each record must be `"<length> <keyword>=<value>\\n"` with a true length. GNU sparse
    records are refused (tarfile parses their maps with bare `int()`), as is a `size` that is
    not a plain decimal.
    """
    position = 0
    while position < len(records):
        space = records.find(b" ", position, position + 21)
        digits = records[position:space] if space > position else b""
        if not (digits.isdigit() and digits.isascii()):
            return "malformed pax header"
        end = position + int(digits)
        equals = records.find(b"=", space + 1, end)
        if end > len(records) or equals <= space + 1 or records[end - 1 : end] != b"\n":
            return "malformed pax header"
        keyword, value = records[space + 1 : equals], records[equals + 1 : end - 1]
        if keyword.startswith(b"GNU.sparse."):
            return SPARSE
        if keyword == b"size" and not (value.isdigit() and value.isascii()):
            return "malformed pax header"
        position = end
    if _DIGIT_RUN.search(records) is not None:
        return "malformed pax header"
    return None


class _CheckedRead:
    """Stands in for the archive stream for exactly one read: the pax header's records, which
    are checked before tarfile's own parser sees them. Puts the real stream back at once."""

    def __init__(self, archive: tarfile.TarFile, size: int, tarinfo: StrictTarInfo) -> None:
        self.archive = archive
        self.inner = archive.fileobj
        self.size = size
        self.tarinfo = tarinfo

    def read(self, length: int) -> bytes:
        self.archive.fileobj = self.inner
        assert self.inner is not None
        data: bytes = self.inner.read(length)
        problem = pax_records_problem(data[: self.size])
        if problem is not None:
            raise self.tarinfo.refused(problem)
        return data


class StrictTarInfo(tarfile.TarInfo):
    """Pass as `tarfile.open(..., tarinfo=...)`, usually through a subclass that sets
    `max_extended_header_bytes` and `refused`."""

    max_extended_header_bytes: ClassVar[int] = 16 * 1024

    @staticmethod
    def refused(problem: str) -> Exception:
        return TarRefused(problem)

    def _proc_member(self, archive: tarfile.TarFile) -> tarfile.TarInfo:
        if self.size < 0:
            raise self.refused("negative entry size")
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise self.refused(SPARSE)
        if self.type not in EXTENDED_TYPES:
            return super()._proc_member(archive)  # type: ignore[misc]
        limit = self.max_extended_header_bytes
        if self.size > limit:
            raise self.refused(f"extended header larger than {limit} bytes")
        depth = getattr(archive, "_sentinel_header_depth", 0)
        if depth >= MAX_CHAINED_HEADERS:
            raise self.refused(f"more than {MAX_CHAINED_HEADERS} extended headers in a row")
        archive._sentinel_header_depth = depth + 1  # type: ignore[attr-defined]
        try:
            return super()._proc_member(archive)  # type: ignore[misc]
        finally:
            archive._sentinel_header_depth = depth  # type: ignore[attr-defined]

    def _proc_pax(self, archive: tarfile.TarFile) -> tarfile.TarInfo:
        archive.fileobj = _CheckedRead(archive, self.size, self)  # type: ignore[assignment]
        try:
            return super()._proc_pax(archive)  # type: ignore[misc]
        finally:
            if isinstance(archive.fileobj, _CheckedRead):
                archive.fileobj = archive.fileobj.inner
