"""Where bundle archives live: the local filesystem (embedded default) or S3/MinIO.

This module holds the readiness check both backends share; the bundle pipeline adds
reads and writes on the same classes.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Protocol

from sentinel_cp.config import Settings
from sentinel_cp.errors import Unavailable


class Storage(Protocol):
    description: str

    def ping(self) -> None:
        """Raise Unavailable when the backend cannot be written."""


class FilesystemStorage:
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


class S3Storage:
    def __init__(self, settings: Settings) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = settings.s3_bucket
        self.description = f"s3:{settings.s3_bucket}"
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

    def ping(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as exc:
            raise Unavailable(f"S3 bucket {self.bucket} is unreachable: {exc}") from None


def from_settings(settings: Settings) -> Storage:
    if settings.storage_backend == "s3":
        return S3Storage(settings)
    return FilesystemStorage(settings.bundle_dir)
