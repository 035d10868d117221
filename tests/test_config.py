"""`load_settings(environ)`: defaults, normalisation, and one clear error per bad variable.

`load_settings` is pure apart from the generated secret it writes into SENTINEL_DATA_DIR, so
these tests need no app; every one points SENTINEL_DATA_DIR at its own tmp directory.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sentinel_cp import config
from sentinel_cp.config import ConfigError, load_settings

ROOT = Path(__file__).resolve().parent.parent
GOOD_SECRET = "s" * 48
REDIS = "redis://127.0.0.1:6379/0"


def env_for(tmp_path: Path, **values: str) -> dict[str, str]:
    return {"SENTINEL_DATA_DIR": str(tmp_path), **values}


def config_error(environ: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(environ)
    message = str(info.value)
    assert "\n" not in message, message
    return message


# --- defaults ---------------------------------------------------------------------------------


def test_defaults_use_sqlite_under_the_data_dir(tmp_path: Path) -> None:
    settings = load_settings(env_for(tmp_path))
    assert settings.database_url == f"sqlite:///{(tmp_path / 'sentinel.db').resolve()}"
    assert settings.data_dir == tmp_path
    assert settings.bundle_dir == tmp_path / "bundles"


def test_defaults_serve_port_4000_on_loopback_in_development(tmp_path: Path) -> None:
    settings = load_settings(env_for(tmp_path))
    assert settings.port == 4000
    assert settings.env == "development"
    assert not settings.is_production
    assert settings.host == "127.0.0.1"
    assert settings.public_host == "localhost"


def test_defaults_use_filesystem_storage(tmp_path: Path) -> None:
    settings = load_settings(env_for(tmp_path))
    assert settings.storage_backend == "filesystem"
    assert settings.s3_endpoint is None
    assert settings.s3_bucket == "sentinel-bundles"
    assert settings.s3_region == "us-east-1"


def test_defaults_use_the_embedded_redis(tmp_path: Path) -> None:
    settings = load_settings(env_for(tmp_path))
    assert settings.redis_url is None
    assert settings.embedded_redis


def test_defaults_for_first_start(tmp_path: Path) -> None:
    settings = load_settings(env_for(tmp_path))
    assert settings.admin_email == "admin@localhost"
    assert settings.admin_password is None
    assert settings.default_project == "default"
    assert settings.sentinel_binary is None


def test_empty_environment_uses_instance_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings({})
    assert settings.data_dir == Path("instance")
    assert settings.database_url == f"sqlite:///{(tmp_path / 'instance' / 'sentinel.db')}"
    assert (tmp_path / "instance" / "secret_key").read_text() == settings.secret_key


def test_empty_values_count_as_unset(tmp_path: Path) -> None:
    settings = load_settings(
        env_for(tmp_path, PORT="", REDIS_URL="", DATABASE_URL="", SENTINEL_ENV="", S3_ENDPOINT="")
    )
    assert settings.port == 4000
    assert settings.embedded_redis
    assert settings.database_url.startswith("sqlite:///")
    assert settings.env == "development"
    assert settings.storage_backend == "filesystem"


# --- accepted values --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "postgres://u:p@db.example.com:5432/cp",
        "postgresql://u:p@db.example.com:5432/cp",
        "postgresql+psycopg://u:p@db.example.com:5432/cp",
    ],
)
def test_postgres_urls_are_accepted_and_normalised(tmp_path: Path, url: str) -> None:
    settings = load_settings(env_for(tmp_path, DATABASE_URL=url))
    assert settings.database_url == "postgresql+psycopg://u:p@db.example.com:5432/cp"


def test_explicit_sqlite_url_is_kept(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/other.db"
    assert load_settings(env_for(tmp_path, DATABASE_URL=url)).database_url == url


@pytest.mark.parametrize("port", ["1", "8080", "65535"])
def test_valid_port_is_used(tmp_path: Path, port: str) -> None:
    assert load_settings(env_for(tmp_path, PORT=port)).port == int(port)


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "rediss://user:pw@cache:6380/1",
        "unix:///var/run/redis/redis.sock",
    ],
)
def test_redis_urls_with_supported_schemes_are_accepted(tmp_path: Path, url: str) -> None:
    settings = load_settings(env_for(tmp_path, REDIS_URL=url))
    assert settings.redis_url == url
    assert not settings.embedded_redis


def test_phx_host_is_accepted_for_public_host(tmp_path: Path) -> None:
    assert load_settings(env_for(tmp_path, PHX_HOST="cp.example.com")).public_host == (
        "cp.example.com"
    )


def test_public_host_wins_over_phx_host(tmp_path: Path) -> None:
    settings = load_settings(
        env_for(tmp_path, PHX_HOST="old.example.com", PUBLIC_HOST="new.example.com")
    )
    assert settings.public_host == "new.example.com"


def test_s3_endpoint_selects_s3_storage(tmp_path: Path) -> None:
    settings = load_settings(
        env_for(
            tmp_path,
            S3_ENDPOINT="http://127.0.0.1:9000",
            S3_BUCKET="b",
            S3_ACCESS_KEY_ID="ak",
            S3_SECRET_ACCESS_KEY="sk",
            S3_REGION="eu-west-1",
        )
    )
    assert settings.storage_backend == "s3"
    assert settings.s3_endpoint == "http://127.0.0.1:9000"
    assert (
        settings.s3_bucket,
        settings.s3_access_key_id,
        settings.s3_secret_access_key,
        settings.s3_region,
    ) == ("b", "ak", "sk", "eu-west-1")


def test_storage_backend_s3_selects_s3_without_an_endpoint(tmp_path: Path) -> None:
    settings = load_settings(env_for(tmp_path, STORAGE_BACKEND="S3"))
    assert settings.storage_backend == "s3"
    assert settings.s3_endpoint is None


def test_production_with_required_values_binds_all_interfaces(tmp_path: Path) -> None:
    settings = load_settings(
        env_for(tmp_path, SENTINEL_ENV="production", SECRET_KEY_BASE=GOOD_SECRET, REDIS_URL=REDIS)
    )
    assert settings.is_production
    assert settings.host == "0.0.0.0"  # noqa: S104
    assert settings.secret_key == GOOD_SECRET
    assert not (tmp_path / "secret_key").exists()


def test_admin_email_is_lowercased(tmp_path: Path) -> None:
    settings = load_settings(env_for(tmp_path, SENTINEL_ADMIN_EMAIL="Ops@Example.COM"))
    assert settings.admin_email == "ops@example.com"


# --- errors name the variable -----------------------------------------------------------------

BAD_VALUES = [
    ("PORT", {"PORT": "notanumber"}),
    ("PORT", {"PORT": "0"}),
    ("PORT", {"PORT": "65536"}),
    ("PORT", {"PORT": "-80"}),
    ("PORT", {"PORT": "80.5"}),
    ("SENTINEL_ENV", {"SENTINEL_ENV": "prod"}),
    ("SENTINEL_ENV", {"SENTINEL_ENV": "Production "}),
    ("REDIS_URL", {"REDIS_URL": "http://127.0.0.1:6379/0"}),
    ("REDIS_URL", {"REDIS_URL": "localhost:6379"}),
    ("REDIS_URL", {"REDIS_URL": "redis://"}),
    ("DATABASE_URL", {"DATABASE_URL": "mysql://u:p@db/cp"}),
    ("DATABASE_URL", {"DATABASE_URL": "not a url"}),
    ("DATABASE_URL", {"DATABASE_URL": "postgresql+asyncpg://u@db/cp"}),
    ("SECRET_KEY_BASE", {"SECRET_KEY_BASE": "short"}),
    ("SECRET_KEY_BASE", {"SECRET_KEY_BASE": "x" * 31}),
    ("S3_ENDPOINT", {"S3_ENDPOINT": "ftp://minio:9000"}),
    ("STORAGE_BACKEND", {"STORAGE_BACKEND": "gcs"}),
    ("SENTINEL_ADMIN_EMAIL", {"SENTINEL_ADMIN_EMAIL": "admin"}),
    ("SENTINEL_ADMIN_PASSWORD", {"SENTINEL_ADMIN_PASSWORD": "short"}),
    ("SENTINEL_DEFAULT_PROJECT", {"SENTINEL_DEFAULT_PROJECT": "Not A Slug"}),
    ("SENTINEL_BINARY", {"SENTINEL_BINARY": "/nonexistent/sentinel"}),
]


@pytest.mark.parametrize(
    ("name", "values"), BAD_VALUES, ids=[f"{n}={next(iter(v.values()))}" for n, v in BAD_VALUES]
)
def test_bad_value_raises_config_error_starting_with_the_variable(
    tmp_path: Path, name: str, values: dict[str, str]
) -> None:
    assert config_error(env_for(tmp_path, **values)).startswith(name)


def test_data_dir_that_is_a_file_names_sentinel_data_dir(tmp_path: Path) -> None:
    path = tmp_path / "a-file"
    path.write_text("")
    assert config_error({"SENTINEL_DATA_DIR": str(path)}).startswith("SENTINEL_DATA_DIR")


def test_production_without_secret_key_base_names_it(tmp_path: Path) -> None:
    message = config_error(env_for(tmp_path, SENTINEL_ENV="production", REDIS_URL=REDIS))
    assert message.startswith("SECRET_KEY_BASE")
    assert not (tmp_path / "secret_key").exists(), "production must not generate a secret"


def test_production_ignores_a_previously_generated_secret(tmp_path: Path) -> None:
    load_settings(env_for(tmp_path))
    assert (tmp_path / "secret_key").exists()
    message = config_error(env_for(tmp_path, SENTINEL_ENV="production", REDIS_URL=REDIS))
    assert message.startswith("SECRET_KEY_BASE")


def test_production_without_redis_url_names_it(tmp_path: Path) -> None:
    message = config_error(
        env_for(tmp_path, SENTINEL_ENV="production", SECRET_KEY_BASE=GOOD_SECRET)
    )
    assert message.startswith("REDIS_URL")


def test_config_error_does_not_echo_the_secret(tmp_path: Path) -> None:
    message = config_error(env_for(tmp_path, SECRET_KEY_BASE="hunter2-secret"))
    assert "hunter2" not in message


# --- generated secret -------------------------------------------------------------------------


def test_generated_secret_is_persisted_with_mode_0600(tmp_path: Path) -> None:
    settings = load_settings(env_for(tmp_path))
    path = tmp_path / "secret_key"
    assert path.read_text().strip() == settings.secret_key
    assert len(settings.secret_key) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_generated_secret_is_reused_on_the_next_start(tmp_path: Path) -> None:
    first = load_settings(env_for(tmp_path)).secret_key
    second = load_settings(env_for(tmp_path)).secret_key
    assert first == second


def test_generated_secrets_differ_between_data_dirs(tmp_path: Path) -> None:
    one = load_settings(env_for(tmp_path / "one")).secret_key
    two = load_settings(env_for(tmp_path / "two")).secret_key
    assert one != two


def test_generated_secret_creates_a_missing_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "nested" / "data"
    load_settings(env_for(data_dir))
    assert (data_dir / "secret_key").is_file()


def test_explicit_secret_key_base_is_not_written_to_disk(tmp_path: Path) -> None:
    assert load_settings(env_for(tmp_path, SECRET_KEY_BASE=GOOD_SECRET)).secret_key == GOOD_SECRET
    assert not (tmp_path / "secret_key").exists()


def test_empty_secret_file_is_never_used_as_the_key(tmp_path: Path) -> None:
    # A process killed between creating the file and writing the key leaves it empty.
    (tmp_path / "secret_key").write_text("")
    try:
        settings = load_settings(env_for(tmp_path))
    except ConfigError as exc:
        assert str(exc).startswith(("SECRET_KEY_BASE", "SENTINEL_DATA_DIR"))
        return
    assert len(settings.secret_key) >= 32


def test_concurrent_first_start_reuses_the_winners_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two processes (web and worker) start together: both see no file, the other one writes
    # it first. The loser must read the winner's key, not crash with FileExistsError.
    real_link = os.link
    target = str(tmp_path / "secret_key")

    def racing_link(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if str(dst) == target and not os.path.exists(target):
            with open(target, "w") as fh:  # the other process wins just before us
                fh.write("w" * 64)
            os.chmod(target, 0o600)
        real_link(src, dst, *args, **kwargs)

    monkeypatch.setattr(config.os, "link", racing_link)
    settings = load_settings(env_for(tmp_path))
    assert settings.secret_key == "w" * 64


# --- the real entry point ---------------------------------------------------------------------


def _run_app(tmp_path: Path, **values: str) -> subprocess.CompletedProcess[str]:
    environ = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        "SENTINEL_DATA_DIR": str(tmp_path / "data"),
        **values,
    }
    return subprocess.run(
        [sys.executable, "app.py"],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("name", "values"),
    [
        ("PORT", {"PORT": "notanumber"}),
        ("SENTINEL_ENV", {"SENTINEL_ENV": "staging"}),
        ("DATABASE_URL", {"DATABASE_URL": "mysql://u@db/cp"}),
        ("SECRET_KEY_BASE", {"SENTINEL_ENV": "production", "REDIS_URL": REDIS}),
    ],
    ids=["PORT", "SENTINEL_ENV", "DATABASE_URL", "production-secret"],
)
def test_app_py_with_bad_config_exits_with_one_line_naming_the_variable(
    tmp_path: Path, name: str, values: dict[str, str]
) -> None:
    result = _run_app(tmp_path, **values)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert name in lines[0]
    assert "Traceback" not in result.stderr
    assert "Traceback" not in result.stdout
