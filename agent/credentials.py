"""The node's credentials file: who this node is and how it proves it.

JSON with `node_id`, `node_key`, `project`, `url`, the signing keys pinned at registration and the
intervals the control plane announced. The key is a secret, so the file is written atomically
(a temporary file in the same directory, fsync, rename) with mode 0600 from the first byte, and
a file that group or others can read is refused rather than trusted.

Beside it lives the node's bundle state (`BundleState`: the active bundle id and the bundles that
failed here), written the same atomic way, so a restarted agent knows what its proxy runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.client import SigningKey

FORMAT_VERSION = 1


class CredentialsError(Exception):
    """The file is missing a field, is not ours to read, or is not credentials at all."""


class InsecureCredentials(CredentialsError):
    """Group or others may read (or write) the file: the key may have leaked; refuse it."""


@dataclass(frozen=True)
class Credentials:
    node_id: str
    node_key: str
    project: str
    url: str
    name: str | None = None
    signing_keys: list[SigningKey] = field(default_factory=list)
    heartbeat_interval_s: int | None = None
    poll_interval_s: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "version": FORMAT_VERSION,
            "node_id": self.node_id,
            "node_key": self.node_key,
            "project": self.project,
            "url": self.url,
            "name": self.name,
            "signing_keys": [k.to_json() for k in self.signing_keys],
            "heartbeat_interval_s": self.heartbeat_interval_s,
            "poll_interval_s": self.poll_interval_s,
        }

    @classmethod
    def from_json(cls, data: Any) -> Credentials:
        if not isinstance(data, dict):
            raise CredentialsError("credentials file must hold a JSON object")
        missing = [k for k in ("node_id", "node_key", "project", "url") if not data.get(k)]
        if missing:
            raise CredentialsError(f"credentials file lacks {', '.join(missing)}")
        try:
            keys = [SigningKey.from_json(k) for k in data.get("signing_keys") or []]
        except (KeyError, TypeError) as exc:
            raise CredentialsError(f"bad signing key in credentials file: {exc}") from None
        return cls(
            node_id=str(data["node_id"]),
            node_key=str(data["node_key"]),
            project=str(data["project"]),
            url=str(data["url"]),
            name=data.get("name"),
            signing_keys=keys,
            heartbeat_interval_s=data.get("heartbeat_interval_s"),
            poll_interval_s=data.get("poll_interval_s"),
        )


def _write_atomically(path: Path, payload: bytes) -> None:
    """Temporary file (mode 0600) in the same directory, fsync, rename, fsync the directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask may only remove bits, but be explicit
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def save(path: Path, credentials: Credentials) -> None:
    """Write atomically with mode 0600: readers see the old file or the new one, never half."""
    _write_atomically(path, (json.dumps(credentials.to_json(), indent=2) + "\n").encode())


def load(path: Path) -> Credentials:
    """Read the file; `InsecureCredentials` when group/others have any access to it.

    The mode is checked on the opened descriptor, so a swap between check and read is moot.
    """
    fd = os.open(Path(path), os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise CredentialsError(f"{path} is not a regular file")
        if info.st_mode & 0o077:
            raise InsecureCredentials(
                f"{path} has mode {stat.S_IMODE(info.st_mode):04o}; it holds a secret key and "
                f"must be readable by its owner only (chmod 600 {path})"
            )
        raw = handle.read()
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise CredentialsError(f"{path} is not JSON: {exc}") from None
    return Credentials.from_json(data)


# --- bundle state ---------------------------------------------------------------------------

STATE_FILE_NAME = "bundle-state.json"
MAX_REMEMBERED_FAILURES = 32


@dataclass(frozen=True)
class BundleState:
    """What the proxy runs (`active_bundle_id`) and which bundles failed here, with the reason
    (a content-addressed bundle that failed verification or activation would fail again, so it
    is not retried until the assignment changes or the operator clears this file)."""

    active_bundle_id: str | None = None
    failed: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        failed = list(self.failed.items())[-MAX_REMEMBERED_FAILURES:]
        return {"active_bundle_id": self.active_bundle_id, "failed": dict(failed)}


def save_state(path: Path, state: BundleState) -> None:
    """Atomic, like the credentials (no secret inside, but no reason to be readable either)."""
    _write_atomically(path, (json.dumps(state.to_json(), indent=2) + "\n").encode())


def load_state(path: Path) -> BundleState:
    """The saved state; an empty one when the file is missing or unreadable (the agent must
    start anyway, and the worst case is applying the assigned bundle once more)."""
    try:
        data = json.loads(Path(path).read_bytes())
    except (OSError, ValueError):
        return BundleState()
    if not isinstance(data, dict):
        return BundleState()
    active = data.get("active_bundle_id")
    failed = data.get("failed")
    return BundleState(
        active_bundle_id=active if isinstance(active, str) else None,
        failed={str(k): str(v) for k, v in failed.items()} if isinstance(failed, dict) else {},
    )
