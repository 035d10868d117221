"""The node side of bundles: verifying and unpacking archives, and the agent refusing bad ones.

Archives are built here with tarfile + zstandard per spec/bundles.md (a small builder of our own,
independent of the server's), signed with a test Ed25519 key. The control plane is a fake behind
`httpx.MockTransport` that records every status report, so each refusal is checked by the reason
the node reported and by the proxy's config directory being exactly as it was.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import tarfile
import tracemalloc
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
import pytest
import zstandard
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.apply import BundleApplier
from agent.bundle import (
    BundleRejected,
    UnknownSigningKey,
    signed_message,
    unpack,
    verify_archive,
)
from agent.client import NodeClient, SigningKey
from agent.drivers import FileDriver

NODE_ID = "6a20800c-1922-48cf-a6d7-68dde91fb57d"
NODE_KEY = "nk_" + "k" * 43
PROJECT_ID = "3f1c2a52-8d0e-4a3b-9a43-52c1f0c3e7aa"
BASE = "http://cp.test"
KID = "kid_test"
SIGNER = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER_SIGNER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
GOOD_FILES = {
    "sentinel.kdl": b'system {\n    worker-threads 2\n}\ninclude "routes/*.kdl"\n',
    "routes/api.kdl": b'routes {\n    route "api" { }\n}\n',
}


# --- a test-local archive builder -----------------------------------------------------------


def public_b64(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


PINNED = [SigningKey(KID, "Ed25519", public_b64(SIGNER))]


def entry(
    name: str, data: bytes = b"", *, kind: bytes = tarfile.REGTYPE, linkname: str = ""
) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = 0o644
    info.linkname = linkname
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, (data if kind == tarfile.REGTYPE else None)


def manifest_of(files: dict[str, bytes], *, project_id: str = PROJECT_ID) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "project_id": project_id,
        "files": [
            {"path": p, "sha256": hashlib.sha256(files[p]).hexdigest(), "size": len(files[p])}
            for p in sorted(files)
        ],
        "config_sha256": hashlib.sha256(files.get("sentinel.kdl", b"")).hexdigest(),
    }


def pack(members: Iterable[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in sorted(members, key=lambda m: m[0].name):
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return zstandard.ZstdCompressor(level=3).compress(buffer.getvalue())


def build_archive(
    files: dict[str, bytes] | None = None,
    *,
    project_id: str = PROJECT_ID,
    manifest: dict[str, Any] | None = None,
    extra: Iterable[tuple[tarfile.TarInfo, bytes | None]] = (),
) -> bytes:
    """Files + canonical manifest (+ extra raw members), sorted by path, zstd-compressed."""
    files = GOOD_FILES if files is None else files
    manifest = manifest if manifest is not None else manifest_of(files, project_id=project_id)
    raw_manifest = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    members = [entry(path, data) for path, data in files.items()]
    return pack([*members, entry("manifest.json", raw_manifest), *extra])


def zip_bomb(
    *, declared_files: int = 1, file_size: int, files: dict[str, bytes] | None = None
) -> bytes:
    """A tiny archive whose entries expand to `declared_files` × `file_size` zero bytes,
    compressed as a stream so the test never holds the expanded bytes either."""
    out = io.BytesIO()
    compressor = zstandard.ZstdCompressor(level=3)
    with (
        compressor.stream_writer(out, closefd=False) as stream,
        tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tar,
    ):
        for index in range(declared_files):
            info = tarfile.TarInfo(f"big{index:03d}.kdl")
            info.size = file_size
            tar.addfile(info, _Zeros(file_size))
        raw_manifest = json.dumps(manifest_of(files or GOOD_FILES)).encode()
        tar.addfile(entry("manifest.json", raw_manifest)[0], io.BytesIO(raw_manifest))
    return out.getvalue()


class _Zeros(io.RawIOBase):
    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def sign(data: bytes, *, project_id: str = PROJECT_ID, key: Ed25519PrivateKey = SIGNER) -> str:
    message = signed_message(project_id, hashlib.sha256(data).hexdigest())
    return base64.b64encode(key.sign(message)).decode()


def verify(data: bytes, **overrides: Any) -> None:
    checksum = hashlib.sha256(data).hexdigest()
    arguments: dict[str, Any] = {
        "bundle_id": checksum,
        "checksum": checksum,
        "signature_b64": sign(data),
        "kid": KID,
        "project_id": PROJECT_ID,
        "keys": PINNED,
    }
    verify_archive(data, **{**arguments, **overrides})


# --- a fake control plane -------------------------------------------------------------------


def fake_jwt(project_id: str) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'alg': 'EdDSA', 'kid': KID})}.{part({'sub': NODE_ID, 'prj': project_id})}.sig"


class FakeControlPlane:
    """Enough of the node API for the bundle flow; records what the node said."""

    def __init__(self, *, project_id: str = PROJECT_ID) -> None:
        self.project_id = project_id
        self.archive: bytes | None = None
        self.offer: dict[str, Any] | None = None
        self.etag = '"assignment-0"'
        self.assigned: str | None = None
        self.redirect_to: str | None = None
        self.public_keys: list[dict[str, Any]] = []
        self.reports: list[tuple[str, str, dict[str, Any]]] = []  # (bundle id, state, body)
        self.heartbeats: list[dict[str, Any]] = []
        self.requests: list[httpx.Request] = []
        self.on_report: Callable[[str, str], None] | None = None
        self.on_heartbeat: Callable[[dict[str, Any]], None] | None = None
        self.heartbeat_poll_after_s = 30

    def publish(
        self,
        archive: bytes,
        *,
        signature: str | None = None,
        kid: str = KID,
        served: bytes | None = None,
        size_bytes: int | None = None,
    ) -> str:
        """Assign `archive` (signed unless `signature` is given); `served` replaces the bytes
        the download returns (tampering in transit)."""
        bundle_id = hashlib.sha256(archive).hexdigest()
        self.archive = served if served is not None else archive
        self.assigned = bundle_id
        self.etag = f'"assignment-{len(self.requests)}"'
        self.offer = {
            "bundle_id": bundle_id,
            "version": "v42",
            "checksum": bundle_id,
            "size_bytes": len(archive) if size_bytes is None else size_bytes,
            "download_url": f"{BASE}/api/v1/nodes/{NODE_ID}/bundles/{bundle_id}/download",
            "signature": signature if signature is not None else sign(archive),
            "signing_key_id": kid,
            "rollout_id": "r-1",
            "poll_after_s": 30,
        }
        return bundle_id

    def states(self) -> list[str]:
        return [state for _, state, _ in self.reports]

    def reasons(self) -> list[str]:
        return [body.get("reason", "") for _, state, body in self.reports if state == "failed"]

    def paths(self) -> list[str]:
        return [r.url.path.rsplit("/", 1)[-1] for r in self.requests]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        node = f"/api/v1/nodes/{NODE_ID}"
        if request.url.host == "storage.test":
            assert self.archive is not None
            return archive_response(self.archive)
        if path == f"{node}/heartbeat":
            self.heartbeats.append(json.loads(request.content or b"{}"))
            if self.on_heartbeat is not None:
                self.on_heartbeat(self.heartbeats[-1])
            return httpx.Response(
                200,
                json={
                    "status": "ok",
                    "node_id": NODE_ID,
                    "last_seen_at": "2026-01-01T00:00:00+00:00",
                    "poll_after_s": self.heartbeat_poll_after_s,
                    "assigned_bundle_id": self.assigned,
                },
            )
        if path == f"{node}/token":
            return httpx.Response(
                200,
                json={"token": fake_jwt(self.project_id), "token_type": "Bearer",
                      "expires_at": "2026-01-01T12:00:00+00:00", "expires_in": 43200},
            )  # fmt: skip
        if path == f"{node}/bundles/latest":
            if request.headers.get("if-none-match") == self.etag:
                return httpx.Response(304)
            body = self.offer or {"no_update": True, "poll_after_s": 30}
            return httpx.Response(200, json=body, headers={"ETag": self.etag})
        if path.startswith(f"{node}/bundles/") and path.endswith("/download"):
            if self.redirect_to:
                return httpx.Response(302, headers={"Location": self.redirect_to})
            assert self.archive is not None
            return archive_response(self.archive)
        if path.startswith(f"{node}/bundles/"):
            bundle_id, state = path.split("/")[-2:]
            self.reports.append((bundle_id, state, json.loads(request.content or b"{}")))
            if self.on_report is not None:
                self.on_report(bundle_id, state)
            return httpx.Response(200, json={"status": "ok", "state": state})
        if path.endswith("/signing-keys"):
            return httpx.Response(200, json={"keys": self.public_keys})
        return httpx.Response(404, json={"error": "no route", "code": "not_found"})


class StreamedBody(httpx.AsyncByteStream):
    """A body that arrives in chunks, as from a real server (a `content=` body arrives read)."""

    def __init__(self, data: bytes, chunk: int = 16 * 1024) -> None:
        self.data, self.chunk = data, chunk

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.data), self.chunk):
            yield self.data[start : start + self.chunk]


def archive_response(data: bytes) -> httpx.Response:
    headers = {"Content-Type": "application/zstd", "Content-Length": str(len(data))}
    return httpx.Response(200, stream=StreamedBody(data), headers=headers)


async def _no_sleep(_seconds: float) -> None:
    return None


def node_client(cp: FakeControlPlane, *, base: str = BASE, use_token: bool = False) -> NodeClient:
    return NodeClient(
        base,
        http=httpx.AsyncClient(transport=httpx.MockTransport(cp)),
        node_id=NODE_ID,
        node_key=NODE_KEY,
        use_token=use_token,
        sleep=_no_sleep,
        random=lambda: 0.0,
    )


def proxy_config(tmp_path: Path) -> Path:
    """A proxy's plain config directory, as an operator left it before the first bundle."""
    config_dir = tmp_path / "proxy" / "config"
    config_dir.mkdir(parents=True)
    (config_dir / "sentinel.kdl").write_text("system { }\n")
    return config_dir


def snapshot(root: Path) -> dict[str, str]:
    """Every path under `root` with its kind and content (sha256, or link target): equal
    snapshots mean untouched."""
    seen: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            key = str(path.relative_to(root))
            if path.is_symlink():
                seen[key] = "link -> " + os.readlink(path)
            elif path.is_file():
                seen[key] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                seen[key] = "dir"
    return seen


def make_applier(
    cp: FakeControlPlane, tmp_path: Path, *, base: str = BASE, **options: Any
) -> tuple[BundleApplier, Path]:
    config_dir = proxy_config(tmp_path)
    applier = BundleApplier(
        node_client(cp, base=base),
        FileDriver(config_dir),
        keys=PINNED,
        staging_root=tmp_path / "state" / "staging",
        project="default",
        **options,
    )
    return applier, config_dir


# --- verify_archive -------------------------------------------------------------------------


def test_a_genuine_archive_passes_verification() -> None:
    verify(build_archive())


def test_verification_rejects_bytes_that_do_not_match_the_checksum() -> None:
    data = build_archive()
    checksum = hashlib.sha256(data).hexdigest()
    with pytest.raises(BundleRejected, match=r"^checksum mismatch$"):
        verify(data + b"\0", bundle_id=checksum, checksum=checksum)


def test_verification_rejects_a_checksum_that_is_not_the_bundle_id() -> None:
    with pytest.raises(BundleRejected, match=r"^bundle id mismatch$"):
        verify(build_archive(), bundle_id="0" * 64)


def test_verification_rejects_a_signature_made_with_another_key() -> None:
    data = build_archive()
    with pytest.raises(BundleRejected, match=r"^bad signature$"):
        verify(data, signature_b64=sign(data, key=OTHER_SIGNER))


def test_verification_rejects_a_signature_made_for_another_project() -> None:
    data = build_archive()
    with pytest.raises(BundleRejected, match=r"^bad signature$"):
        verify(data, signature_b64=sign(data, project_id="another-project"))


def test_verification_rejects_a_signature_that_is_not_base64() -> None:
    with pytest.raises(BundleRejected, match=r"^bad signature$"):
        verify(build_archive(), signature_b64="not base64!")


def test_verification_names_an_unknown_signing_key() -> None:
    with pytest.raises(UnknownSigningKey, match=r"^unknown signing key kid_other$") as caught:
        verify(build_archive(), kid="kid_other")
    assert caught.value.kid == "kid_other"


def test_verification_never_reads_the_archive() -> None:
    """Garbage that is not even zstd fails on its signature, not on its format."""
    with pytest.raises(BundleRejected, match=r"^bad signature$"):
        verify(b"not an archive", signature_b64=base64.b64encode(bytes(64)).decode())


# --- unpack ---------------------------------------------------------------------------------


def test_unpack_writes_the_listed_files_and_returns_the_manifest(tmp_path: Path) -> None:
    destination = tmp_path / "staged"
    manifest = unpack(build_archive(), destination, project_id=PROJECT_ID)
    assert manifest.project_id == PROJECT_ID
    assert [f.path for f in manifest.files] == ["routes/api.kdl", "sentinel.kdl"]
    assert manifest.config_sha256 == hashlib.sha256(GOOD_FILES["sentinel.kdl"]).hexdigest()
    for path, content in GOOD_FILES.items():
        assert (destination / path).read_bytes() == content
    assert json.loads((destination / "manifest.json").read_bytes())["project_id"] == PROJECT_ID


def test_unpack_ignores_directory_entries_and_creates_directories_from_file_paths(
    tmp_path: Path,
) -> None:
    data = build_archive(extra=[entry("routes", kind=tarfile.DIRTYPE)])
    unpack(data, tmp_path / "staged")
    assert (tmp_path / "staged" / "routes" / "api.kdl").read_bytes() == GOOD_FILES["routes/api.kdl"]


def test_unpack_refuses_an_existing_destination(tmp_path: Path) -> None:
    (tmp_path / "staged").mkdir()
    (tmp_path / "staged" / "keep").write_text("mine")
    with pytest.raises(FileExistsError):
        unpack(build_archive(), tmp_path / "staged")
    assert (tmp_path / "staged" / "keep").read_text() == "mine"


def _with_bad_sha() -> bytes:
    manifest = manifest_of(GOOD_FILES)
    manifest["files"][0]["sha256"] = "0" * 64
    return build_archive(manifest=manifest)


def _with_bad_size() -> bytes:
    manifest = manifest_of(GOOD_FILES)
    manifest["files"][0]["size"] += 1
    return build_archive(manifest=manifest)


def _with_missing_file() -> bytes:
    return build_archive(
        {"sentinel.kdl": GOOD_FILES["sentinel.kdl"]}, manifest=manifest_of(GOOD_FILES)
    )


def _with_bad_config_sha() -> bytes:
    manifest = manifest_of(GOOD_FILES)
    manifest["config_sha256"] = "1" * 64
    return build_archive(manifest=manifest)


REJECTED_ARCHIVES: dict[str, tuple[Callable[[], bytes], str]] = {
    "absolute path": (
        lambda: build_archive(extra=[entry("/etc/evil.kdl", b"x")]),
        "unsafe path /etc/evil.kdl",
    ),
    "parent traversal": (
        lambda: build_archive(extra=[entry("../evil.kdl", b"x")]),
        "unsafe path ../evil.kdl",
    ),
    "inner traversal": (
        lambda: build_archive(extra=[entry("routes/../../evil.kdl", b"x")]),
        "unsafe path routes/../../evil.kdl",
    ),
    "symlink": (
        lambda: build_archive(extra=[entry("link.kdl", kind=tarfile.SYMTYPE, linkname="/etc")]),
        "link entry link.kdl",
    ),
    "hard link": (
        lambda: build_archive(
            extra=[entry("hard.kdl", kind=tarfile.LNKTYPE, linkname="sentinel.kdl")]
        ),
        "link entry hard.kdl",
    ),
    "character device": (
        lambda: build_archive(extra=[entry("tty.kdl", kind=tarfile.CHRTYPE)]),
        "device entry tty.kdl",
    ),
    "fifo": (
        lambda: build_archive(extra=[entry("pipe.kdl", kind=tarfile.FIFOTYPE)]),
        "fifo entry pipe.kdl",
    ),
    "name not in manifest": (
        lambda: build_archive(extra=[entry("extra.kdl", b"x")]),
        "entry not in manifest extra.kdl",
    ),
    "sha256 differs": (_with_bad_sha, "sha256 mismatch routes/api.kdl"),
    "size differs": (_with_bad_size, "size mismatch routes/api.kdl"),
    "listed file missing": (_with_missing_file, "missing file routes/api.kdl"),
    "duplicate entry": (
        lambda: build_archive(extra=[entry("sentinel.kdl", b"again")]),
        "duplicate entry sentinel.kdl",
    ),
    "no manifest": (lambda: pack([entry("sentinel.kdl", b"x")]), "no manifest"),
    "manifest of another project": (
        lambda: build_archive(project_id="another-project"),
        "manifest names another project",
    ),
    "config_sha256 differs": (_with_bad_config_sha, "config_sha256 mismatch"),
    "not zstd": (lambda: b"plain bytes", "corrupt archive"),
}


@pytest.mark.parametrize("case", list(REJECTED_ARCHIVES))
def test_unpack_rejects_and_leaves_nothing_behind(case: str, tmp_path: Path) -> None:
    make, reason = REJECTED_ARCHIVES[case]
    data = make()
    (tmp_path / "state").mkdir()
    destination = tmp_path / "state" / "staged"
    before = snapshot(tmp_path)
    with pytest.raises(BundleRejected) as caught:
        unpack(data, destination, project_id=PROJECT_ID)
    assert caught.value.reason.startswith(reason), caught.value.reason
    assert not destination.exists()
    assert snapshot(tmp_path) == before


def test_unpack_refuses_more_entries_than_allowed(tmp_path: Path) -> None:
    files = {f"f{i:02d}.kdl": b"x" for i in range(10)} | GOOD_FILES
    with pytest.raises(BundleRejected, match=r"^more than 5 entries$"):
        unpack(build_archive(files), tmp_path / "staged", max_entries=5)
    assert not (tmp_path / "staged").exists()


def test_a_bomb_entry_is_refused_on_its_header_without_allocating_it(tmp_path: Path) -> None:
    bomb = zip_bomb(file_size=256 * 1024 * 1024)
    assert len(bomb) < 64 * 1024
    tracemalloc.start()
    try:
        with pytest.raises(BundleRejected, match=r"^archive expands beyond 67108864 bytes$"):
            unpack(bomb, tmp_path / "staged")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024
    assert not (tmp_path / "staged").exists()


def test_many_small_entries_that_expand_past_the_budget_are_cut_off_mid_stream(
    tmp_path: Path,
) -> None:
    bomb = zip_bomb(declared_files=16, file_size=512 * 1024)  # 8 MiB in entries of 512 KiB
    tracemalloc.start()
    try:
        with pytest.raises(BundleRejected, match=r"^archive expands beyond 2097152 bytes$"):
            unpack(bomb, tmp_path / "staged", max_total_bytes=2 * 1024 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * 1024 * 1024
    assert not (tmp_path / "staged").exists()


# --- the agent refusing bad bundles ---------------------------------------------------------


def _tampered(cp: FakeControlPlane) -> None:
    data = build_archive()
    cp.publish(data, served=data[:-1] + bytes([data[-1] ^ 1]))


def _wrong_signature(cp: FakeControlPlane) -> None:
    data = build_archive()
    cp.publish(data, signature=sign(data, key=OTHER_SIGNER))


def _unknown_key(cp: FakeControlPlane) -> None:
    cp.publish(build_archive(), kid="kid_unpinned")


def _traversal(cp: FakeControlPlane) -> None:
    cp.publish(build_archive(extra=[entry("../../evil.kdl", b"pwned")]))


def _symlink(cp: FakeControlPlane) -> None:
    cp.publish(build_archive(extra=[entry("etc.kdl", kind=tarfile.SYMTYPE, linkname="/etc")]))


def _bomb(cp: FakeControlPlane) -> None:
    cp.publish(zip_bomb(declared_files=8, file_size=1024 * 1024))


BAD_BUNDLES: dict[str, tuple[Callable[[FakeControlPlane], None], str]] = {
    "tampered archive": (_tampered, "checksum mismatch"),
    "wrong signature": (_wrong_signature, "bad signature"),
    "unknown key": (_unknown_key, "unknown signing key kid_unpinned"),
    "path traversal": (_traversal, "unsafe path ../../evil.kdl"),
    "symlink entry": (_symlink, "link entry etc.kdl"),
    "decompression bomb": (_bomb, "archive expands beyond 2097152 bytes"),
}


@pytest.mark.parametrize("case", list(BAD_BUNDLES))
async def test_the_agent_refuses_a_bad_bundle_reports_why_and_keeps_the_config(
    case: str, tmp_path: Path
) -> None:
    setup, reason = BAD_BUNDLES[case]
    cp = FakeControlPlane()
    setup(cp)
    applier, _ = make_applier(cp, tmp_path, max_unpacked_bytes=2 * 1024 * 1024)
    before = snapshot(tmp_path / "proxy")

    result = await applier.apply_assigned(cp.assigned)

    assert (result.outcome, result.reason) == ("failed", reason)
    assert cp.states() == ["failed"]
    assert cp.reasons() == [reason]
    assert snapshot(tmp_path / "proxy") == before
    assert applier.active_bundle_id is None
    assert not (tmp_path / "evil.kdl").exists() and not (tmp_path / "proxy" / "evil.kdl").exists()
    assert list((tmp_path / "state" / "staging").glob("*")) == []
    assert "signing-keys" not in cp.paths()  # http control plane: no key look-up


async def test_a_bundle_that_failed_is_not_downloaded_again(tmp_path: Path) -> None:
    cp = FakeControlPlane()
    _wrong_signature(cp)
    applier, _ = make_applier(cp, tmp_path)
    assert (await applier.apply_assigned(cp.assigned)).outcome == "failed"
    downloads = cp.paths().count("download")
    again = await applier.apply_assigned(cp.assigned)
    assert (again.outcome, again.reason) == ("skipped", "bad signature")
    assert cp.paths().count("download") == downloads
    assert cp.states() == ["failed"]


async def test_an_unknown_key_is_looked_up_over_https_and_the_bundle_applied(
    tmp_path: Path,
) -> None:
    cp = FakeControlPlane()
    rotated = Ed25519PrivateKey.from_private_bytes(bytes(range(2, 34)))
    data = build_archive()
    cp.publish(data, signature=sign(data, key=rotated), kid="kid_rotated")
    cp.public_keys = [
        {"kid": "kid_rotated", "alg": "Ed25519", "public_key": public_b64(rotated),
         "state": "active", "created_at": "2026-01-01T00:00:00+00:00"},
        {"kid": KID, "alg": "Ed25519", "public_key": public_b64(SIGNER),
         "state": "retired", "created_at": "2025-01-01T00:00:00+00:00"},
    ]  # fmt: skip
    saved: list[list[SigningKey]] = []
    applier, _ = make_applier(cp, tmp_path, base="https://cp.test", on_keys_changed=saved.append)

    result = await applier.apply_assigned(cp.assigned)

    assert result.outcome == "applied", result
    assert cp.states() == ["downloaded", "staged", "activated", "verified"]
    assert [k.kid for k in applier.keys] == ["kid_rotated"]  # the retired one is dropped
    assert [[k.kid for k in keys] for keys in saved] == [["kid_rotated"]]


async def test_an_unknown_key_is_still_refused_when_the_lookup_does_not_know_it(
    tmp_path: Path,
) -> None:
    cp = FakeControlPlane()
    _unknown_key(cp)
    applier, _ = make_applier(cp, tmp_path, allow_key_refresh=True)
    result = await applier.apply_assigned(cp.assigned)
    assert "signing-keys" in cp.paths()
    assert (result.outcome, result.reason) == ("failed", "unknown signing key kid_unpinned")
    assert cp.reasons() == ["unknown signing key kid_unpinned"]


async def test_a_download_larger_than_the_offer_is_refused(tmp_path: Path) -> None:
    cp = FakeControlPlane()
    data = build_archive()
    cp.publish(data, served=data + bytes(200 * 1024), size_bytes=len(data))
    applier, _ = make_applier(cp, tmp_path)
    result = await applier.apply_assigned(cp.assigned)
    assert result.outcome == "failed"
    assert cp.reasons() == [f"download larger than {len(data) + 64 * 1024} bytes"]
