"""Where bundle archives live: the local filesystem (embedded default) or S3/MinIO.

Both backends offer the same small object-store interface (`Storage`), addressed by relative
keys such as `bundles/{project_id}/{bundle_id}.tar.zst`. Bundles are immutable and
content-addressed, so a second `put` of the same bytes is a no-op that says so (returns
False) instead of rewriting or re-uploading the archive.

Failures of the store itself (disk not writable, S3 unreachable, a missing bucket in
production) raise `Unavailable` with a sentence an operator can act on; a missing object raises
`NotFound`; a key that could escape the store raises `Invalid`.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

from sentinel_cp.config import Settings
from sentinel_cp.errors import Invalid, NotFound, Unavailable

if TYPE_CHECKING:
    from botocore.exceptions import BotoCoreError, ClientError

KEY_PATTERN = re.compile(r"[A-Za-z0-9._/-]+")
MAX_PRESIGN_SECONDS = 300
DEFAULT_CHUNK_SIZE = 65536
SHA256_METADATA = "sha256"


def bundle_key(project_id: str, bundle_id: str) -> str:
    """The storage key of a bundle archive (spec/bundles.md, Pipeline step 6)."""
    return f"bundles/{project_id}/{bundle_id}.tar.zst"


def validate_key(key: str) -> str:
    """Return `key` if it is a safe relative key; raise Invalid otherwise.

    The same rule holds for both backends so that a key accepted in development (filesystem)
    is never refused in production (S3), and so the filesystem backend can never be steered
    outside its root.
    """
    reason = _key_problem(key)
    if reason is not None:
        raise Invalid(f"storage key {key!r} is not allowed: {reason}", fields={"key": [reason]})
    return key


def _key_problem(key: str) -> str | None:
    if not key:
        return "it is empty"
    if not KEY_PATTERN.fullmatch(key):
        return "use only letters, digits, '.', '_', '-' and '/'"
    if key.startswith("/"):
        return "it must be relative (no leading '/')"
    segments = key.split("/")
    if ".." in segments:
        return "it must not contain '..'"
    if any(segment in ("", ".") for segment in segments):
        return "it must not contain empty or '.' path segments"
    return None


class Storage(Protocol):
    """An object store for immutable bundle archives."""

    description: str

    def ping(self) -> None:
        """Raise Unavailable when the backend cannot be written."""

    def put(self, key: str, data: bytes) -> bool:
        """Store `data`; False (and nothing written) when identical content is already there."""

    def get(self, key: str) -> bytes:
        """The object's bytes; NotFound when it is missing."""

    def stream(self, key: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[Iterator[bytes], int]:
        """The object as (chunks, total size) for serving without loading it; NotFound."""

    def exists(self, key: str) -> bool:
        """True when an object is stored under `key`."""

    def delete(self, key: str) -> None:
        """Remove the object; a missing object is not an error (deletes are repeatable)."""

    def presigned_url(self, key: str, expires_s: int = MAX_PRESIGN_SECONDS) -> str | None:
        """A short-lived direct download URL, or None when the backend has none."""


class _Chunks(Iterator[bytes]):
    """Chunks of an open object, closed when exhausted or when the consumer calls close().

    A plain generator would only release its file or HTTP body once it had started running;
    WSGI servers call close() on response iterables, so an abandoned download never leaks.
    """

    def __init__(
        self,
        read: Callable[[int], bytes],
        close: Callable[[], None],
        chunk_size: int,
    ) -> None:
        self._read = read
        self._close = close
        self._chunk_size = chunk_size
        self._closed = False

    def __iter__(self) -> _Chunks:
        return self

    def __next__(self) -> bytes:
        if self._closed:
            raise StopIteration
        try:
            chunk = self._read(self._chunk_size)
        except BaseException:
            self.close()
            raise
        if not chunk:
            self.close()
            raise StopIteration
        return chunk

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._close()


def _chunk_size(chunk_size: int) -> int:
    if chunk_size < 1:
        raise Invalid(f"chunk size must be positive, not {chunk_size}")
    return chunk_size


# --- filesystem -------------------------------------------------------------------------------


class FilesystemStorage:
    """Objects as files under `root`, written atomically (temp file, fsync, rename).

    Temporary files carry a '~' in their name, which no key may contain, so a crash mid-write
    can leave litter on disk but never something `get` or `exists` would take for an object.
    """

    TEMP_MARKER = ".~tmp-"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.description = f"filesystem:{root}"

    def ping(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=self.root, prefix=".ready-")
            os.close(fd)
            os.unlink(name)
        except OSError as exc:
            raise Unavailable(f"bundle directory is not writable: {exc.strerror}") from None

    def put(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        digest = hashlib.sha256(data).hexdigest()
        try:
            if path.is_file() and self._sha256_of(path) == digest:
                return False
            path.parent.mkdir(parents=True, exist_ok=True)
            self._write_atomically(path, data)
        except OSError as exc:
            raise Unavailable(
                f"bundle directory is not writable: cannot store {key} ({exc.strerror or exc})"
            ) from None
        return True

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise self._missing(key) from None
        except OSError as exc:
            raise Unavailable(f"bundle directory is not readable: {exc.strerror}") from None

    def stream(self, key: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[Iterator[bytes], int]:
        path = self._path(key)
        size = _chunk_size(chunk_size)
        try:
            fh = path.open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise self._missing(key) from None
        except OSError as exc:
            raise Unavailable(f"bundle directory is not readable: {exc.strerror}") from None
        try:
            total = os.fstat(fh.fileno()).st_size
        except OSError as exc:
            fh.close()
            raise Unavailable(f"bundle directory is not readable: {exc.strerror}") from None

        def read(n: int) -> bytes:
            try:
                return fh.read(n)
            except OSError as exc:
                raise Unavailable(f"bundle directory is not readable: {exc.strerror}") from None

        return _Chunks(read, fh.close, size), total

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
        except IsADirectoryError:
            return
        except OSError as exc:
            raise Unavailable(
                f"bundle directory is not writable: cannot delete {key} ({exc.strerror})"
            ) from None

    def presigned_url(self, key: str, expires_s: int = MAX_PRESIGN_SECONDS) -> str | None:
        """None: files are served by the control plane itself, there is no direct URL."""
        validate_key(key)
        return None

    def _path(self, key: str) -> Path:
        """The file for `key`, refusing anything (a symlink included) that leads outside root."""
        path = self.root / validate_key(key)
        root = self.root.resolve()
        if not path.resolve().is_relative_to(root):
            raise Invalid(
                f"storage key {key!r} is not allowed: it leads outside the bundle directory",
                fields={"key": ["it leads outside the bundle directory"]},
            )
        return path

    @staticmethod
    def _sha256_of(path: Path) -> str:
        with path.open("rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()

    def _write_atomically(self, path: Path, data: bytes) -> None:
        """Readers see the old object or the whole new one, never a partial file."""
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}{self.TEMP_MARKER}")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fchmod(fh.fileno(), 0o644)
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_directory(path.parent)

    @staticmethod
    def _missing(key: str) -> NotFound:
        return NotFound(f"no stored object {key}")


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable; skipped where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- S3 ---------------------------------------------------------------------------------------


class S3Storage:
    """Objects in one S3 (or MinIO) bucket, path-style, each tagged with its sha256.

    The bucket is checked once per process on first use. Outside production a missing bucket
    is created, so `make run` against a fresh MinIO just works; in production it is an
    operator's decision (policy, lifecycle, region) and its absence is reported instead.
    """

    def __init__(self, settings: Settings) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = settings.s3_bucket
        self.description = f"s3:{settings.s3_bucket}"
        self.region = settings.s3_region
        self.create_missing_bucket = not settings.is_production
        self.client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint,
            region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key_id,
            aws_secret_access_key=settings.s3_secret_access_key,
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                connect_timeout=2,
                read_timeout=5,
                retries={"max_attempts": 1},
            ),
        )
        self.endpoint = str(self.client.meta.endpoint_url)
        self._bucket_ready = False

    def ping(self) -> None:
        """Check (every time, not cached) that the bucket is reachable, creating it in dev."""
        self._ensure_bucket()

    def put(self, key: str, data: bytes) -> bool:
        validate_key(key)
        self._ready()
        digest = hashlib.sha256(data).hexdigest()
        head = self._head(key)
        if head is not None and head.get("Metadata", {}).get(SHA256_METADATA) == digest:
            return False
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentType="application/octet-stream",
                Metadata={SHA256_METADATA: digest},
            )
        except Exception as exc:
            self._raise(exc, key)
        return True

    def get(self, key: str) -> bytes:
        validate_key(key)
        self._ready()
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
            with response["Body"] as body:
                return bytes(body.read())
        except Exception as exc:
            self._raise(exc, key)

    def stream(self, key: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[Iterator[bytes], int]:
        validate_key(key)
        size = _chunk_size(chunk_size)
        self._ready()
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            self._raise(exc, key)
        body = response["Body"]

        def read(n: int) -> bytes:
            try:
                return bytes(body.read(n))
            except Exception as exc:
                self._raise(exc, key)

        return _Chunks(read, body.close, size), int(response["ContentLength"])

    def exists(self, key: str) -> bool:
        validate_key(key)
        self._ready()
        return self._head(key) is not None

    def delete(self, key: str) -> None:
        validate_key(key)
        self._ready()
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if _is_missing_object(exc):
                return
            self._raise(exc, key)

    def presigned_url(self, key: str, expires_s: int = MAX_PRESIGN_SECONDS) -> str | None:
        """A GET URL nodes can fetch directly; never valid for more than five minutes."""
        validate_key(key)
        if expires_s < 1:
            raise Invalid(f"presigned URL lifetime must be positive, not {expires_s}s")
        return str(
            self.client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": key},
                ExpiresIn=min(expires_s, MAX_PRESIGN_SECONDS),
            )
        )

    # The bucket ----------------------------------------------------------------------------

    def _ready(self) -> None:
        if not self._bucket_ready:
            self._ensure_bucket()

    def _ensure_bucket(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            if not _is_missing_object(exc):
                self._raise(exc)
            if not self.create_missing_bucket:
                raise self._missing_bucket() from None
            self._create_bucket()
        self._bucket_ready = True

    def _create_bucket(self) -> None:
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if self.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            self.client.create_bucket(**kwargs)
        except Exception as exc:
            # Another process creating it at the same moment is success, not failure.
            if _error_code(exc) != "BucketAlreadyOwnedByYou":
                self._raise(exc)

    def _missing_bucket(self) -> Unavailable:
        self._bucket_ready = False
        if self.create_missing_bucket:
            return Unavailable(
                f"S3 bucket {self.bucket} does not exist at {self.endpoint} any more; "
                "it is created again on the next attempt"
            )
        return Unavailable(
            f"S3 bucket {self.bucket} does not exist at {self.endpoint}; create it "
            "(it is created automatically only outside production)"
        )

    # Errors --------------------------------------------------------------------------------

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            return dict(self.client.head_object(Bucket=self.bucket, Key=key))
        except Exception as exc:
            if _is_missing_object(exc):
                return None
            self._raise(exc, key)

    def _raise(self, exc: Exception, key: str | None = None) -> NoReturn:
        """Translate a boto3 failure into a domain error; re-raise anything unrecognised."""
        from botocore.exceptions import BotoCoreError, ClientError

        if isinstance(exc, ClientError):
            raise self._client_error(exc, key) from None
        if isinstance(exc, BotoCoreError):
            raise self._connection_error(exc) from None
        raise exc

    def _client_error(self, exc: ClientError, key: str | None) -> Exception:
        code = _error_code(exc)
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code == "NoSuchBucket":
            return self._missing_bucket()
        if key is not None and _is_missing_object(exc):
            return NotFound(f"no stored object {key}")
        if status >= 500:
            return Unavailable(
                f"S3 bucket {self.bucket} is unavailable: {self.endpoint} answered "
                f"{status} {code}; retry later"
            )
        if status == 403 or code in ("InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return Unavailable(
                f"S3 refused access to bucket {self.bucket} ({code}); check "
                "S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY"
            )
        message = exc.response.get("Error", {}).get("Message") or code
        return Unavailable(f"S3 bucket {self.bucket} rejected the request: {message}")

    def _connection_error(self, exc: BotoCoreError) -> Unavailable:
        from botocore.exceptions import (
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
            ReadTimeoutError,
        )

        if isinstance(exc, NoCredentialsError):
            return Unavailable(
                f"S3 bucket {self.bucket} cannot be used: no credentials "
                "(set S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY)"
            )
        if isinstance(exc, ConnectTimeoutError | ReadTimeoutError):
            reason = "timed out"
        elif isinstance(exc, EndpointConnectionError):
            reason = "could not connect"
        else:
            reason = str(exc)
        return Unavailable(
            f"S3 bucket {self.bucket} is unreachable at {self.endpoint} ({reason}); retry later"
        )


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return ""
    return str(response.get("Error", {}).get("Code") or "")


def _is_missing_object(exc: Exception) -> bool:
    """A 404 without a bucket error: HEAD answers carry no body, so only the status says it."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return False
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return _error_code(exc) in ("NoSuchKey", "404", "NotFound") or (
        status == 404 and _error_code(exc) != "NoSuchBucket"
    )


def from_settings(settings: Settings) -> Storage:
    """The configured backend: S3 when STORAGE_BACKEND/S3_ENDPOINT say so, else the data dir."""
    if settings.storage_backend == "s3":
        return S3Storage(settings)
    return FilesystemStorage(settings.bundle_dir)


def current() -> Storage:
    """The storage backend of the running application (configured by `create_app`)."""
    from flask import current_app

    backend: Storage = current_app.extensions["sentinel_storage"]
    return backend
