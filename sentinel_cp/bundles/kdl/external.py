"""Optional external check: the real proxy binary's `test -c FILE` on the bundle's files."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sentinel_cp.bundles.kdl.includes import normalize_path

DEFAULT_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class ExternalVerdict:
    """What the binary said: `valid` is None when it could not give a verdict."""

    valid: bool | None
    exit_code: int | None
    output: str
    error: str | None = None


def run_external_check(
    files: Mapping[str, str],
    entry: str,
    binary: str,
    *,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
) -> ExternalVerdict:
    """Write the files to a temporary directory and run `<binary> test -c <entry>` there."""
    with tempfile.TemporaryDirectory(prefix="sentinel-validate-") as tmp:
        root = Path(tmp)
        for name, text in files.items():
            relative = normalize_path(name)
            if not relative or relative.startswith("..") or Path(relative).is_absolute():
                continue
            target = root / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
        try:
            completed = subprocess.run(  # noqa: S603 - the operator-configured SENTINEL_BINARY
                [binary, "test", "-c", str(root / normalize_path(entry))],
                cwd=root,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            output = _text(exc.stdout) + _text(exc.stderr)
            return ExternalVerdict(None, None, output, f"timed out after {timeout:g} s")
        except OSError as exc:
            return ExternalVerdict(None, None, "", f"could not run {binary}: {exc}")
    output = completed.stdout + completed.stderr
    return ExternalVerdict(completed.returncode == 0, completed.returncode, output)


def _text(value: str | bytes | None) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value
