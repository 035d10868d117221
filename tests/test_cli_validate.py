"""`sentinel-cp validate`: the proxy's verdict from the command line, no server needed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "proxy-configs"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sentinel_cp.cli", "validate", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_valid_config_exits_0_with_the_proxys_success_line(tmp_path: Path) -> None:
    config = tmp_path / "sentinel.kdl"
    config.write_text((FIXTURES / "valid_basic.kdl").read_text())
    result = run(str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "test is successful" in result.stdout


def test_an_invalid_config_exits_1_naming_the_problem() -> None:
    result = run(str(FIXTURES / "invalid_acme_cloudflare.kdl"))
    assert result.returncode == 1
    expected = (FIXTURES / "invalid_acme_cloudflare.expected.txt").read_text()
    wanted = [
        line.split(":", 1)[1].strip()
        for line in expected.splitlines()
        if line.startswith("error_contains:")
    ]
    assert wanted
    for substring in wanted:
        assert substring in result.stdout


def test_json_output_carries_errors_with_positions(tmp_path: Path) -> None:
    config = tmp_path / "sentinel.kdl"
    config.write_text('system {\n  worker-threads "two"\n}\n')
    result = run(str(config), "--json")
    body = json.loads(result.stdout)
    assert result.returncode == (0 if body["valid"] else 1)
    findings = body["errors"] + body["warnings"]
    assert findings and all({"file", "line", "column"} <= set(f) for f in findings)


def test_includes_are_resolved_from_the_files_given(tmp_path: Path) -> None:
    (tmp_path / "sentinel.kdl").write_text('include "routes.kdl"\n')
    (tmp_path / "routes.kdl").write_text("")
    result = run(str(tmp_path / "sentinel.kdl"), str(tmp_path / "routes.kdl"), "--json")
    assert "routes.kdl" in json.loads(result.stdout)["files"]


def test_setup_on_a_fresh_data_dir_creates_the_admin_without_redis(tmp_path: Path) -> None:
    # `make setup` runs before anything serves: no Redis (embedded or real) is configured.
    env = {
        k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "S3_ENDPOINT"}
    }
    env.update(SENTINEL_DATA_DIR=str(tmp_path / "data"), SENTINEL_ADMIN_PASSWORD="correct-horse-9")
    done = subprocess.run(
        [sys.executable, "-m", "sentinel_cp.cli", "setup"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "data").is_dir()
    assert "Traceback" not in done.stderr
