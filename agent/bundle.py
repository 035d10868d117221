"""Checking and unpacking a downloaded bundle archive (spec/bundles.md, "Node-side unpacking").

Two steps, in this order, and nothing reads the archive before the first one passed:

- `verify_archive` proves the bytes are the bundle the control plane signed: sha256(bytes) ==
  `checksum` == `bundle_id`, then the Ed25519 signature over
  `"sentinel-bundle-v1\\n" + project_id + "\\n" + checksum` with a pinned key.
- `unpack` turns the zstd-compressed tar into a directory of files. Even a signed archive is
  treated as hostile input: decompression runs as a stream against a hard byte budget (a bomb is
  rejected after `max_total_bytes`, never allocated), the tar is read in stream mode with
  `StrictTarInfo` (no sparse members, no negative sizes, extended headers small, well-formed and
  never more than a few in a row), and only regular files with plain relative names that the
  manifest lists are written, each created fresh (`O_EXCL | O_NOFOLLOW`) inside a directory this
  function made. Any rejection removes that directory; nothing outside it is ever touched.

Every refusal is a `BundleRejected` whose `reason` is short and stable enough to report as the
`failed` status reason ("checksum mismatch", "bad signature", "unsafe path ../x", …).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import zstandard
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent import tarsafety
from agent.client import SigningKey

SIGNATURE_CONTEXT = "sentinel-bundle-v1"
MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA_VERSION = 1
DEFAULT_MAX_TOTAL_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_ENTRIES = 1024
# zstd allocates its window up front; the server compresses ≤ 1 MiB of source, so a frame asking
# for more than this is refused before any allocation (zstd's own default limit is 128 MiB).
MAX_WINDOW_BYTES = 32 * 1024 * 1024
MAX_PATH_LENGTH = 1024
MAX_MANIFEST_BYTES = 1024 * 1024
# A pax or GNU long-name header: the control plane writes one `path` record (≤ 300 bytes) and
# only for a long path. Bounds what tarfile reads into memory for a header it parses itself.
MAX_EXTENDED_HEADER_BYTES = 16 * 1024
_SAFE_PATH = re.compile(r"[A-Za-z0-9._/-]+")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_REGULAR_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
_CHUNK = 64 * 1024


class BundleRejected(Exception):
    """The archive is not acceptable; `reason` says why in a few words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnknownSigningKey(BundleRejected):
    """The signature names a key this node has not pinned (the caller may look it up)."""

    def __init__(self, kid: str) -> None:
        super().__init__(f"unknown signing key {kid}")
        self.kid = kid


@dataclass(frozen=True)
class ManifestFile:
    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    schema_version: int
    project_id: str
    files: tuple[ManifestFile, ...]
    config_sha256: str | None

    @classmethod
    def from_bytes(cls, raw: bytes) -> Manifest:
        """Parse and shape-check `manifest.json`; `BundleRejected("bad manifest: …")` if off."""
        try:
            data = json.loads(raw)
        except ValueError:
            raise BundleRejected("bad manifest: not JSON") from None
        if not isinstance(data, dict):
            raise BundleRejected("bad manifest: not an object")
        if data.get("schema_version") != MANIFEST_SCHEMA_VERSION:
            raise BundleRejected(f"bad manifest: schema_version {data.get('schema_version')!r}")
        project_id, files, config_sha = (
            data.get("project_id"),
            data.get("files"),
            data.get("config_sha256"),
        )
        if not isinstance(project_id, str) or not project_id:
            raise BundleRejected("bad manifest: project_id")
        if not isinstance(files, list):
            raise BundleRejected("bad manifest: files")
        if config_sha is not None and not _is_sha256(config_sha):
            raise BundleRejected("bad manifest: config_sha256")
        entries: list[ManifestFile] = []
        for item in files:
            if not isinstance(item, dict):
                raise BundleRejected("bad manifest: files")
            path, sha, size = item.get("path"), item.get("sha256"), item.get("size")
            if not isinstance(path, str) or not _is_sha256(sha):
                raise BundleRejected("bad manifest: files")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise BundleRejected(f"bad manifest: size of {path}")
            entries.append(ManifestFile(path, str(sha), size))
        return cls(MANIFEST_SCHEMA_VERSION, project_id, tuple(entries), config_sha)


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and _SHA256_HEX.fullmatch(value) is not None


# --- verification ---------------------------------------------------------------------------


def signed_message(project_id: str, checksum: str) -> bytes:
    """What the control plane signs (spec/node-protocol.md, Signature)."""
    return f"{SIGNATURE_CONTEXT}\n{project_id}\n{checksum}".encode()


def verify_archive(
    data: bytes,
    *,
    bundle_id: str,
    checksum: str,
    signature_b64: str,
    kid: str,
    project_id: str,
    keys: Iterable[SigningKey],
) -> None:
    """Raise `BundleRejected` unless `data` is the bundle the project's key `kid` signed.

    The hash is checked first (cheap, and it names the tampering precisely), then the signature
    with the pinned key named `kid`; the caller decides whether an unknown kid may be looked up.
    """
    actual = hashlib.sha256(data).hexdigest()
    if actual != checksum.lower():
        raise BundleRejected("checksum mismatch")
    if checksum.lower() != bundle_id.lower():
        raise BundleRejected("bundle id mismatch")
    key = next((k for k in keys if k.kid == kid), None)
    if key is None:
        raise UnknownSigningKey(kid)
    if key.alg != "Ed25519":
        raise BundleRejected(f"unsupported signing algorithm {key.alg}")
    try:
        public = Ed25519PublicKey.from_public_bytes(base64.b64decode(key.public_key, validate=True))
    except (binascii.Error, ValueError):
        raise BundleRejected(f"bad public key {kid}") from None
    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError):
        raise BundleRejected("bad signature") from None
    try:
        public.verify(signature, signed_message(project_id, actual))
    except InvalidSignature:
        raise BundleRejected("bad signature") from None


# --- unpacking ------------------------------------------------------------------------------


class _Budget(io.RawIOBase):
    """A read-only stream that refuses to yield more than `limit` bytes in total."""

    def __init__(self, inner: IO[bytes], limit: int) -> None:
        self.inner = inner
        self.limit = limit
        self.consumed = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        # Ask for one byte past the budget so that reaching it exactly is still fine.
        wanted = min(len(view), self.limit - self.consumed + 1)
        chunk = self.inner.read(wanted)
        self.consumed += len(chunk)
        if self.consumed > self.limit:
            raise BundleRejected(f"archive expands beyond {self.limit} bytes")
        view[: len(chunk)] = chunk
        return len(chunk)


class StrictTarInfo(tarsafety.StrictTarInfo):
    """`agent.tarsafety.StrictTarInfo` with the node's cap and its refusal type."""

    max_extended_header_bytes = MAX_EXTENDED_HEADER_BYTES

    @staticmethod
    def refused(problem: str) -> Exception:
        return BundleRejected(problem)


def check_entry_name(name: str) -> str:
    """The entry's path if it is a plain relative path, else `BundleRejected("unsafe path …")`."""
    parts = name.split("/")
    if (
        not name
        or len(name) > MAX_PATH_LENGTH
        or name.startswith("/")
        or _SAFE_PATH.fullmatch(name) is None
        or any(part in ("", ".", "..") for part in parts)
    ):
        raise BundleRejected(f"unsafe path {ascii(name[:200])[1:-1]}")
    return name


def _describe_type(member: tarfile.TarInfo) -> str:
    if member.issym() or member.islnk():
        return "link"
    if member.ischr() or member.isblk():
        return "device"
    if member.isfifo():
        return "fifo"
    return f"type {member.type.decode('latin-1')!r}"  # "type 'Z'", not "type b'Z'"


def _write_member(source: IO[bytes], target: Path, size: int) -> str:
    """Copy exactly `size` bytes into a new file (never an existing one); returns the sha256."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    digest = hashlib.sha256()
    with os.fdopen(fd, "wb") as handle:
        remaining = size
        while remaining:
            chunk = source.read(min(_CHUNK, remaining))
            if not chunk:
                raise BundleRejected(f"truncated entry {target.name}")
            digest.update(chunk)
            handle.write(chunk)
            remaining -= len(chunk)
    return digest.hexdigest()


def unpack(
    data: bytes,
    destination: Path,
    *,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    max_entries: int = DEFAULT_MAX_ENTRIES,
    project_id: str | None = None,
) -> Manifest:
    """Unpack a verified archive into `destination`, which must not exist yet.

    Returns the manifest. On any rejection (`BundleRejected`) or I/O error the destination is
    removed again. `project_id`, when given, must be the manifest's.
    """
    destination = Path(destination)
    destination.mkdir(mode=0o755)  # fails if it exists: we only ever fill a fresh directory
    try:
        return _unpack_into(data, destination, max_total_bytes, max_entries, project_id)
    except BaseException:
        shutil.rmtree(destination, ignore_errors=True)
        raise


def _unpack_into(
    data: bytes, destination: Path, max_total_bytes: int, max_entries: int, project_id: str | None
) -> Manifest:
    decompressor = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW_BYTES)
    written: dict[str, tuple[str, int]] = {}  # path → (sha256, size)
    manifest_raw: bytes | None = None
    entries = 0
    try:
        with decompressor.stream_reader(io.BytesIO(data)) as raw:
            counter = _Budget(raw, max_total_bytes)
            budget = io.BufferedReader(counter, buffer_size=_CHUNK)
            with tarfile.open(fileobj=budget, mode="r|", tarinfo=StrictTarInfo) as archive:
                for member in archive:
                    entries += 1
                    if entries > max_entries:
                        raise BundleRejected(f"more than {max_entries} entries")
                    name = check_entry_name(member.name)
                    if member.isdir():
                        continue  # directories come from the file paths; nothing to create
                    if member.type not in _REGULAR_TYPES:
                        raise BundleRejected(f"{_describe_type(member)} entry {name}")
                    if member.size > max_total_bytes - counter.consumed:
                        # Refused on the header's word, before a byte of it is written.
                        raise BundleRejected(f"archive expands beyond {max_total_bytes} bytes")
                    if name in written or (name == MANIFEST_NAME and manifest_raw is not None):
                        raise BundleRejected(f"duplicate entry {name}")
                    source = archive.extractfile(member)
                    if source is None:  # pragma: no cover - regular members always have data
                        raise BundleRejected(f"unreadable entry {name}")
                    if name == MANIFEST_NAME:
                        if member.size > MAX_MANIFEST_BYTES:
                            raise BundleRejected("manifest too large")
                        manifest_raw = source.read(member.size)
                        _write_member(io.BytesIO(manifest_raw), destination / name, member.size)
                        continue
                    sha = _write_member(source, destination / name, member.size)
                    written[name] = (sha, member.size)
    except BundleRejected:
        raise
    except (tarfile.TarError, zstandard.ZstdError, EOFError) as exc:
        raise BundleRejected(f"corrupt archive: {_first_line(exc)}") from None
    except ValueError as exc:
        # tarfile meets some malformed headers with a bare int() or a negative read length;
        # StrictTarInfo refuses every such form known, this keeps any other one a refusal
        # (reported, not retried) rather than an exception that stops the agent's loop.
        raise BundleRejected(f"corrupt archive: {_first_line(exc)}") from None
    except OSError as exc:
        raise BundleRejected(f"cannot unpack: {_first_line(exc)}") from None
    if manifest_raw is None:
        raise BundleRejected("no manifest")
    manifest = Manifest.from_bytes(manifest_raw)
    _check_against_manifest(manifest, written, project_id)
    return manifest


def _check_against_manifest(
    manifest: Manifest, written: dict[str, tuple[str, int]], project_id: str | None
) -> None:
    if project_id is not None and manifest.project_id != project_id:
        raise BundleRejected("manifest names another project")
    listed = {f.path: f for f in manifest.files}
    for name in sorted(written):
        if name not in listed:
            raise BundleRejected(f"entry not in manifest {name}")
    for path, expected in sorted(listed.items()):
        if path not in written:
            raise BundleRejected(f"missing file {path}")
        sha, size = written[path]
        if size != expected.size:
            raise BundleRejected(f"size mismatch {path}")
        if sha != expected.sha256:
            raise BundleRejected(f"sha256 mismatch {path}")
    entry_point = listed.get("sentinel.kdl")
    if entry_point is not None and manifest.config_sha256 not in (None, entry_point.sha256):
        raise BundleRejected("config_sha256 mismatch")


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]
