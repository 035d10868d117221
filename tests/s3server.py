"""An S3-protocol server for tests: moto in server mode, over real HTTP on 127.0.0.1.

Tests that need S3 talk to it exactly as production talks to MinIO or AWS (boto3 over a
socket, presigned URLs fetched with a plain HTTP client), so signing, addressing and error
translation are exercised for real. The port is chosen by the OS, so parallel sessions never
collide, and `start_moto_server()` returns only once the socket is listening: no waiting.

    from s3server import moto_installed, running_moto_server

    with running_moto_server() as endpoint_url:
        ...  # S3_ENDPOINT=endpoint_url, any S3_ACCESS_KEY_ID / S3_SECRET_ACCESS_KEY

Every server in one process shares moto's in-memory state; use a fresh bucket name per test
when a test needs an empty or missing bucket.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

ACCESS_KEY_ID = "moto-test-key"
SECRET_ACCESS_KEY = "moto-test-secret"


def moto_installed() -> bool:
    """True when moto's server mode can be imported (it is a dev dependency: moto[s3])."""
    try:
        import moto.server  # noqa: F401
    except ImportError:
        return False
    return True


def start_moto_server() -> tuple[str, Callable[[], None]]:
    """Start moto on a free port of 127.0.0.1; return (endpoint URL, stop)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return f"http://{host}:{port}", server.stop


@contextmanager
def running_moto_server() -> Iterator[str]:
    """A moto server for the duration of the block; yields its endpoint URL."""
    endpoint_url, stop = start_moto_server()
    try:
        yield endpoint_url
    finally:
        stop()
