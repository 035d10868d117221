"""Configuration read from the environment, validated once at start.

Every variable in DESIGN.md's table is read here and nowhere else. A bad value raises
`ConfigError` whose message is one line naming the variable; the CLI prints it and exits
non-zero, so an operator never sees a traceback for a typo in their environment.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

ENVIRONMENTS = ("development", "production", "test")


class ConfigError(Exception):
    """A configuration value is missing or invalid; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    """The resolved configuration of one process."""

    env: str
    data_dir: Path
    database_url: str
    secret_key: str
    public_host: str
    host: str
    port: int
    redis_url: str | None
    storage_backend: str
    s3_bucket: str
    s3_endpoint: str | None
    s3_access_key_id: str | None
    s3_secret_access_key: str | None
    s3_region: str
    sentinel_binary: str | None
    admin_email: str
    admin_password: str | None
    default_project: str
    poll_cache: bool = True
    heartbeat_buffer: bool = True
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def embedded_redis(self) -> bool:
        """True when no REDIS_URL is set and the server runs its own stand-in."""
        return self.redis_url is None

    @property
    def is_production(self) -> bool:
        return self.env == "production"

    @property
    def bundle_dir(self) -> Path:
        return self.data_dir / "bundles"


def _database_url(value: str | None, data_dir: Path) -> str:
    if not value:
        return f"sqlite:///{(data_dir / 'sentinel.db').resolve()}"
    if value.startswith("postgres://"):
        value = "postgresql://" + value[len("postgres://") :]
    if value.startswith("postgresql://"):
        value = "postgresql+psycopg://" + value[len("postgresql://") :]
    scheme = value.split(":", 1)[0]
    if scheme not in ("sqlite", "postgresql+psycopg"):
        raise ConfigError(
            f"DATABASE_URL: unsupported scheme {scheme!r} (use postgresql://… or sqlite:///…)"
        )
    return value


def _url(name: str, value: str | None, schemes: tuple[str, ...]) -> str | None:
    if not value:
        return None
    parts = urlsplit(value)
    # A socket URL (unix:///run/redis.sock) has a path and no host; the others need a host.
    located = parts.path if parts.scheme == "unix" else parts.netloc
    if parts.scheme not in schemes or not located:
        raise ConfigError(f"{name}: expected a URL starting with {' or '.join(schemes)}://")
    return value


def _port(value: str | None) -> int:
    if value is None or value == "":
        return 4000
    try:
        port = int(value)
    except ValueError:
        raise ConfigError(f"PORT: {value!r} is not a number") from None
    if not 1 <= port <= 65535:
        raise ConfigError(f"PORT: {port} is outside 1–65535")
    return port


def _secret_key(env: Mapping[str, str], data_dir: Path, production: bool) -> str:
    value = env.get("SECRET_KEY_BASE")
    if value:
        if len(value) < 32:
            raise ConfigError("SECRET_KEY_BASE: must be at least 32 characters")
        return value
    if production:
        raise ConfigError("SECRET_KEY_BASE: required when SENTINEL_ENV=production")
    return _generated_secret(data_dir / "secret_key")


def _generated_secret(path: Path) -> str:
    """The development secret in `path`, created once (0600, written atomically).

    Several processes may start at once: each writes its own temporary file and links it into
    place; whoever loses the race reads the winner's key. A short or empty file (from a crash
    before this was atomic, or an edit) is replaced rather than trusted.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            if path.exists():
                key = path.read_text().strip()
                if len(key) >= 32:
                    return key
                path.unlink(missing_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".secret_key-")
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(48))
            os.chmod(tmp, 0o600)
            try:
                os.link(tmp, path)  # fails if another process got there first
            except FileExistsError:
                pass
            finally:
                os.unlink(tmp)
    except OSError as exc:
        raise ConfigError(
            f"SENTINEL_DATA_DIR: cannot keep a secret key there ({exc.strerror})"
        ) from None
    raise ConfigError(f"SENTINEL_DATA_DIR: {path} keeps holding an unusable secret key")


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the configuration; raise ConfigError naming the first bad variable."""
    env = dict(os.environ if environ is None else environ)
    mode = env.get("SENTINEL_ENV", "development") or "development"
    if mode not in ENVIRONMENTS:
        raise ConfigError(f"SENTINEL_ENV: {mode!r} is not one of {', '.join(ENVIRONMENTS)}")
    production = mode == "production"

    data_dir = Path(env.get("SENTINEL_DATA_DIR") or "instance")
    if data_dir.exists() and not data_dir.is_dir():
        raise ConfigError(f"SENTINEL_DATA_DIR: {data_dir} exists and is not a directory")

    redis_url = _url("REDIS_URL", env.get("REDIS_URL"), ("redis", "rediss", "unix"))
    if production and redis_url is None:
        raise ConfigError(
            "REDIS_URL: required when SENTINEL_ENV=production (the embedded stand-in is for "
            "development only)"
        )

    s3_endpoint = _url("S3_ENDPOINT", env.get("S3_ENDPOINT"), ("http", "https"))
    backend = (env.get("STORAGE_BACKEND") or ("s3" if s3_endpoint else "filesystem")).lower()
    if backend not in ("filesystem", "s3"):
        raise ConfigError(f"STORAGE_BACKEND: {backend!r} is not filesystem or s3")

    sentinel_binary = env.get("SENTINEL_BINARY") or None
    if sentinel_binary and not os.access(sentinel_binary, os.X_OK):
        raise ConfigError(f"SENTINEL_BINARY: {sentinel_binary} is not an executable file")

    admin_email = env.get("SENTINEL_ADMIN_EMAIL") or "admin@localhost"
    if "@" not in admin_email or len(admin_email) > 254:
        raise ConfigError("SENTINEL_ADMIN_EMAIL: not an email address")
    admin_password = env.get("SENTINEL_ADMIN_PASSWORD") or None
    if admin_password is not None and len(admin_password) < 12:
        raise ConfigError("SENTINEL_ADMIN_PASSWORD: must be at least 12 characters")

    default_project = env.get("SENTINEL_DEFAULT_PROJECT") or "default"
    from sentinel_cp.projects import SLUG_PATTERN

    if not SLUG_PATTERN.fullmatch(default_project):
        raise ConfigError(
            "SENTINEL_DEFAULT_PROJECT: use lowercase letters, digits and dashes (2–50 characters)"
        )

    poll_cache = _switch(env, "SENTINEL_POLL_CACHE")
    heartbeat_buffer = _switch(env, "SENTINEL_HEARTBEAT_BUFFER")

    public_host = env.get("PUBLIC_HOST") or env.get("PHX_HOST") or "localhost"
    port = _port(env.get("PORT"))
    host = env.get("HOST") or ("0.0.0.0" if production else "127.0.0.1")  # noqa: S104
    database_url = _database_url(env.get("DATABASE_URL"), data_dir)
    secret_key = _secret_key(env, data_dir, production)

    return Settings(
        env=mode,
        data_dir=data_dir,
        database_url=database_url,
        secret_key=secret_key,
        public_host=public_host,
        host=host,
        port=port,
        redis_url=redis_url,
        storage_backend=backend,
        s3_bucket=env.get("S3_BUCKET") or "sentinel-bundles",
        s3_endpoint=s3_endpoint,
        s3_access_key_id=env.get("S3_ACCESS_KEY_ID") or None,
        s3_secret_access_key=env.get("S3_SECRET_ACCESS_KEY") or None,
        s3_region=env.get("S3_REGION") or "us-east-1",
        sentinel_binary=sentinel_binary,
        admin_email=admin_email.lower(),
        admin_password=admin_password,
        default_project=default_project,
        poll_cache=poll_cache,
        heartbeat_buffer=heartbeat_buffer,
    )


def _switch(env: Mapping[str, str], name: str) -> bool:
    value = (env.get(name) or "on").lower()
    if value not in ("on", "off"):
        raise ConfigError(f"{name}: {value!r} is not on or off")
    return value == "on"
