"""Bundle storage: one behavioural suite run against both backends, then each backend's own rules.

The filesystem backend runs in tmp_path; the S3 backend runs against moto in server mode over
real HTTP (tests/s3server.py), each test in a bucket of its own that the backend creates on
first use, exactly as it does against a fresh MinIO in development.
"""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from conftest import free_port, require_service, settings_for
from s3server import ACCESS_KEY_ID, SECRET_ACCESS_KEY, moto_installed, start_moto_server

from sentinel_cp import storage
from sentinel_cp.errors import Invalid, NotFound, Unavailable
from sentinel_cp.storage import FilesystemStorage, S3Storage, Storage, bundle_key

ARCHIVE = b"\x28\xb5\x2f\xfd" + bytes(range(256)) * 5  # zstd magic, then 1280 bytes
KEY = bundle_key("0b5c6c1e-project", "ab" * 32)

UNSAFE_KEYS = [
    "",
    "/etc/passwd",
    "../outside",
    "bundles/../../outside",
    "bundles/..",
    "bundles//double-slash",
    "./bundles/x",
    "bundles/",
    "bundles/with space",
    "bundles\\backslash",
    "bundles/nul\x00byte",
    "bundles/ümlaut",
    "bundles/.~tmp-not-a-key",
]


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    require_service(moto_installed(), "moto not installed (pip install 'moto[s3]')")
    endpoint_url, stop = start_moto_server()
    yield endpoint_url
    stop()


def s3_settings(data_dir: Path, endpoint_url: str, **extra: str) -> Any:
    return settings_for(
        data_dir,
        "sqlite://",
        S3_ENDPOINT=endpoint_url,
        S3_ACCESS_KEY_ID=ACCESS_KEY_ID,
        S3_SECRET_ACCESS_KEY=SECRET_ACCESS_KEY,
        **extra,
    )


def fresh_bucket() -> str:
    return f"test-{uuid.uuid4().hex[:16]}"


@pytest.fixture
def s3_store(tmp_path: Path, moto_endpoint: str) -> S3Storage:
    store = storage.from_settings(s3_settings(tmp_path, moto_endpoint, S3_BUCKET=fresh_bucket()))
    assert isinstance(store, S3Storage)
    return store


@pytest.fixture
def fs_store(tmp_path: Path) -> FilesystemStorage:
    store = storage.from_settings(settings_for(tmp_path, "sqlite://"))
    assert isinstance(store, FilesystemStorage)
    return store


@pytest.fixture(params=["filesystem", pytest.param("s3", marks=pytest.mark.s3)])
def store(request: pytest.FixtureRequest) -> Storage:
    fixture = "fs_store" if request.param == "filesystem" else "s3_store"
    return request.getfixturevalue(fixture)


def forbid_writes(store: Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any write to the backend fail loudly, to prove a put did not write."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the backend was written to")

    if isinstance(store, S3Storage):
        monkeypatch.setattr(store.client, "put_object", refuse)
    else:
        monkeypatch.setattr(storage.tempfile, "mkstemp", refuse)
        monkeypatch.setattr(storage.os, "replace", refuse)


# --- both backends ----------------------------------------------------------------------------


def test_bundle_key_places_the_archive_under_its_project() -> None:
    assert bundle_key("p1", "abc") == "bundles/p1/abc.tar.zst"


def test_ping_succeeds_on_a_usable_store(store: Storage) -> None:
    store.ping()


def test_put_writes_a_new_object_and_returns_true(store: Storage) -> None:
    assert store.put(KEY, ARCHIVE) is True


def test_get_returns_the_stored_bytes(store: Storage) -> None:
    store.put(KEY, ARCHIVE)
    assert store.get(KEY) == ARCHIVE


def test_put_of_identical_content_returns_false_without_writing(
    store: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.put(KEY, ARCHIVE)
    forbid_writes(store, monkeypatch)
    assert store.put(KEY, ARCHIVE) is False
    assert store.get(KEY) == ARCHIVE


def test_put_of_different_content_under_the_same_key_replaces_it(store: Storage) -> None:
    store.put(KEY, ARCHIVE)
    assert store.put(KEY, b"other bytes") is True
    assert store.get(KEY) == b"other bytes"


def test_stream_yields_the_object_in_chunks_with_its_total_size(store: Storage) -> None:
    store.put(KEY, ARCHIVE)
    chunks, size = store.stream(KEY, chunk_size=500)
    parts = list(chunks)
    assert size == len(ARCHIVE)
    assert b"".join(parts) == ARCHIVE
    assert all(0 < len(part) <= 500 for part in parts)


def test_stream_of_an_empty_object_yields_nothing(store: Storage) -> None:
    store.put(KEY, b"")
    chunks, size = store.stream(KEY)
    assert (list(chunks), size) == ([], 0)


def test_exists_is_true_only_after_put(store: Storage) -> None:
    assert store.exists(KEY) is False
    store.put(KEY, ARCHIVE)
    assert store.exists(KEY) is True


def test_delete_removes_the_object(store: Storage) -> None:
    store.put(KEY, ARCHIVE)
    store.delete(KEY)
    assert store.exists(KEY) is False


def test_delete_of_a_missing_object_is_not_an_error(store: Storage) -> None:
    store.delete(KEY)
    assert store.exists(KEY) is False


def test_get_of_a_missing_object_raises_not_found(store: Storage) -> None:
    with pytest.raises(NotFound, match=KEY):
        store.get(KEY)


def test_stream_of_a_missing_object_raises_not_found(store: Storage) -> None:
    with pytest.raises(NotFound, match=KEY):
        store.stream(KEY)


def test_a_key_prefix_of_an_object_is_not_an_object(store: Storage) -> None:
    store.put(KEY, ARCHIVE)
    assert store.exists("bundles") is False
    with pytest.raises(NotFound):
        store.get("bundles")


@pytest.mark.parametrize("key", UNSAFE_KEYS)
def test_unsafe_key_is_refused_by_every_operation(store: Storage, key: str) -> None:
    operations = [
        lambda: store.put(key, ARCHIVE),
        lambda: store.get(key),
        lambda: store.stream(key),
        lambda: store.exists(key),
        lambda: store.delete(key),
        lambda: store.presigned_url(key),
    ]
    for operation in operations:
        with pytest.raises(Invalid) as caught:
            operation()
        assert caught.value.fields["key"]


# --- filesystem -------------------------------------------------------------------------------


def test_filesystem_has_no_presigned_url(fs_store: FilesystemStorage) -> None:
    fs_store.put(KEY, ARCHIVE)
    assert fs_store.presigned_url(KEY) is None


def test_filesystem_stores_objects_under_the_bundle_dir(fs_store: FilesystemStorage) -> None:
    fs_store.put(KEY, ARCHIVE)
    assert (fs_store.root / KEY).read_bytes() == ARCHIVE


def test_filesystem_objects_are_readable_by_everyone_and_writable_by_the_owner(
    fs_store: FilesystemStorage,
) -> None:
    fs_store.put(KEY, ARCHIVE)
    assert stat.S_IMODE((fs_store.root / KEY).stat().st_mode) == 0o644


def test_filesystem_failed_write_leaves_no_object_and_no_temp_file(
    fs_store: FilesystemStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(storage.os, "fsync", disk_full)
    with pytest.raises(Unavailable, match="No space left on device"):
        fs_store.put(KEY, ARCHIVE)
    assert fs_store.exists(KEY) is False
    assert [p for p in fs_store.root.rglob("*") if p.is_file()] == []


def test_filesystem_failed_overwrite_keeps_the_previous_object(
    fs_store: FilesystemStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs_store.put(KEY, ARCHIVE)

    def rename_fails(src: str, dst: str) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(storage.os, "replace", rename_fails)
    with pytest.raises(Unavailable):
        fs_store.put(KEY, b"new content")
    assert fs_store.get(KEY) == ARCHIVE


def test_filesystem_leftover_of_a_crash_is_never_visible_as_an_object(
    fs_store: FilesystemStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A process killed between writing and renaming runs neither the rename nor the cleanup.
    def killed(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(storage.os, "replace", killed)
    monkeypatch.setattr(storage.os, "unlink", lambda path: None)
    with pytest.raises(KeyboardInterrupt):
        fs_store.put(KEY, ARCHIVE)
    monkeypatch.undo()

    leftovers = [p for p in fs_store.root.rglob("*") if p.is_file()]
    assert len(leftovers) == 1
    assert leftovers[0].read_bytes() == ARCHIVE
    assert fs_store.exists(KEY) is False
    with pytest.raises(Invalid):
        fs_store.exists(leftovers[0].relative_to(fs_store.root).as_posix())


def test_filesystem_refuses_a_symlink_leading_outside_its_root(
    fs_store: FilesystemStorage, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    fs_store.root.mkdir(parents=True)
    os.symlink(outside, fs_store.root / "bundles")
    with pytest.raises(Invalid, match="outside"):
        fs_store.put(KEY, ARCHIVE)
    assert list(outside.iterdir()) == []


def test_filesystem_stream_releases_the_file_when_closed_early(
    fs_store: FilesystemStorage,
) -> None:
    fs_store.put(KEY, ARCHIVE)
    chunks, _ = fs_store.stream(KEY, chunk_size=10)
    next(chunks)
    chunks.close()  # type: ignore[attr-defined]
    assert list(chunks) == []


# --- S3 ---------------------------------------------------------------------------------------


@pytest.mark.s3
def test_s3_presigned_url_serves_the_same_bytes_over_http(s3_store: S3Storage) -> None:
    s3_store.put(KEY, ARCHIVE)
    url = s3_store.presigned_url(KEY)
    assert url is not None
    response = httpx.get(url)
    assert response.status_code == 200
    assert response.content == ARCHIVE


@pytest.mark.s3
def test_s3_presigned_url_is_valid_for_at_most_five_minutes(s3_store: S3Storage) -> None:
    url = s3_store.presigned_url(KEY, expires_s=3600)
    assert url is not None
    assert parse_qs(urlsplit(url).query)["X-Amz-Expires"] == ["300"]


@pytest.mark.s3
def test_s3_creates_its_bucket_on_first_use_outside_production(s3_store: S3Storage) -> None:
    s3_store.put(KEY, ARCHIVE)
    s3_store.client.head_bucket(Bucket=s3_store.bucket)


@pytest.mark.s3
def test_s3_records_the_sha256_in_object_metadata(s3_store: S3Storage) -> None:
    import hashlib

    s3_store.put(KEY, ARCHIVE)
    head = s3_store.client.head_object(Bucket=s3_store.bucket, Key=KEY)
    assert head["Metadata"] == {"sha256": hashlib.sha256(ARCHIVE).hexdigest()}


@pytest.mark.s3
def test_s3_uploads_again_when_the_stored_object_has_no_sha256(s3_store: S3Storage) -> None:
    s3_store.ping()
    s3_store.client.put_object(Bucket=s3_store.bucket, Key=KEY, Body=ARCHIVE)
    assert s3_store.put(KEY, ARCHIVE) is True


@pytest.mark.s3
def test_s3_unreachable_endpoint_raises_unavailable_naming_the_bucket(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    store = S3Storage(s3_settings(tmp_path, closed))
    for operation in (store.ping, lambda: store.put(KEY, ARCHIVE), lambda: store.get(KEY)):
        with pytest.raises(Unavailable) as caught:
            operation()
        assert caught.value.message == (
            f"S3 bucket sentinel-bundles is unreachable at {closed} (could not connect); "
            "retry later"
        )
        assert caught.value.__cause__ is None


@pytest.mark.s3
def test_s3_in_production_reports_a_missing_bucket_as_unavailable(
    tmp_path: Path, moto_endpoint: str
) -> None:
    bucket = fresh_bucket()
    store = S3Storage(
        s3_settings(
            tmp_path,
            moto_endpoint,
            S3_BUCKET=bucket,
            SENTINEL_ENV="production",
            REDIS_URL="redis://127.0.0.1:6379/0",
        )
    )
    with pytest.raises(Unavailable, match=f"S3 bucket {bucket} does not exist"):
        store.put(KEY, ARCHIVE)
    assert [b["Name"] for b in store.client.list_buckets()["Buckets"]].count(bucket) == 0


@pytest.mark.s3
def test_s3_server_error_raises_unavailable(
    s3_store: S3Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    from botocore.exceptions import ClientError

    s3_store.put(KEY, ARCHIVE)

    def slow_down(**kwargs: object) -> None:
        raise ClientError(
            {
                "Error": {"Code": "SlowDown", "Message": "Please reduce your request rate."},
                "ResponseMetadata": {"HTTPStatusCode": 503},
            },
            "GetObject",
        )

    monkeypatch.setattr(s3_store.client, "get_object", slow_down)
    with pytest.raises(Unavailable, match=f"S3 bucket {s3_store.bucket} is unavailable"):
        s3_store.get(KEY)


@pytest.mark.s3
def test_s3_recreates_a_bucket_removed_while_running_outside_production(
    s3_store: S3Storage,
) -> None:
    s3_store.put(KEY, ARCHIVE)
    s3_store.delete(KEY)
    s3_store.client.delete_bucket(Bucket=s3_store.bucket)
    with pytest.raises(Unavailable, match="does not exist"):
        s3_store.get(KEY)
    assert s3_store.put(KEY, ARCHIVE) is True
