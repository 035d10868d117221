"""How a staged bundle becomes the proxy's running config (spec/node-protocol.md, steps 4–5).

A `Driver` has three steps, all `async` and all raising `ActivationFailed(reason)`:

- `activate(staged_dir)`: make the unpacked bundle the live config and reload the proxy;
- `verify()`: prove the proxy is healthy on it;
- `rollback()`: put the last known good config back (safe to call at any time; a no-op when
  nothing is pending).

`FileDriver` does this for a proxy on this machine. `SimulatedDriver` pretends, for the fleet
simulator.

## How `FileDriver` swaps the config atomically

`config_dir` is a **symbolic link** to one release directory under `releases_dir` (default: a
sibling `<config_dir>.releases`). Activation copies the staged files into a new release
directory, creates a new link beside `config_dir` and `os.replace`s it onto `config_dir`:
rename(2) replaces the link in one step, so anything that resolves `config_dir` (the proxy on
reload, the config test, an operator's `cat`) sees the whole old release or the whole new one,
never a mix and never nothing. Rolling back is the same rename pointing at the previous release,
which is kept until the new one is verified.

A `config_dir` that is still a plain directory (the proxy's original config) is adopted on the
first activation: its files are copied into a release, and a link to that release is exchanged
with the directory in one `renameat2(RENAME_EXCHANGE)` (Linux ≥ 3.15). Where that call is
missing, the directory is renamed aside and the link renamed in: two renames, with an instant in
which `config_dir` does not exist (logged).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import random as random_module
import secrets
import shlex
import shutil
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

import httpx

log = logging.getLogger("sentinel_agent")
Sleep = Callable[[float], Awaitable[None]]
MAX_OUTPUT_CHARS = 32 * 1024


class ActivationFailed(Exception):
    """A step did not work; `reason` is the short why, `logs` any output worth reporting."""

    def __init__(self, reason: str, *, logs: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.logs = logs


class Driver(Protocol):
    async def activate(self, staged_dir: Path) -> None: ...

    async def verify(self) -> None: ...

    async def rollback(self) -> None: ...


# --- the file driver ------------------------------------------------------------------------


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False when unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(second))


def _fsync_directory(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _tail(text: str) -> str:
    return text if len(text) <= MAX_OUTPUT_CHARS else text[-MAX_OUTPUT_CHARS:]


class FileDriver:
    """Activate bundles for a proxy that reads its config from `config_dir` on this machine.

    - `test_command` (optional) runs first, against the staged directory; `{dir}` in it becomes
      that directory and `{config}` its `sentinel.kdl` (also exported as
      `SENTINEL_CONFIG_DIR`). A non-zero exit fails the activation with its output as logs.
    - Reload: SIGHUP to the pid in `pid_file`, or `reload_command`; neither means the proxy
      watches its files itself.
    - `health_url` (optional) must answer 2xx within `health_timeout_s` after the reload,
      polled until that deadline. When it does not, the previous config is restored and
      reloaded, and `ActivationFailed` says why.
    - `keep_last_good`: after a successful verify, keep the previous release on disk (the next
      activation does not need it: whatever is live then is its last good).
    """

    def __init__(
        self,
        config_dir: Path,
        *,
        pid_file: Path | None = None,
        reload_command: str | None = None,
        test_command: str | None = None,
        health_url: str | None = None,
        health_timeout_s: float = 10.0,
        keep_last_good: bool = True,
        releases_dir: Path | None = None,
        command_timeout_s: float = 60.0,
        http: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if pid_file is not None and reload_command is not None:
            raise ValueError("give a pid file or a reload command, not both")
        self.config_dir = Path(config_dir).absolute()
        self.releases_dir = (
            Path(releases_dir).absolute()
            if releases_dir is not None
            else self.config_dir.with_name(self.config_dir.name + ".releases")
        )
        self.pid_file = pid_file
        self.reload_command = reload_command
        self.test_command = test_command
        self.health_url = health_url
        self.health_timeout_s = health_timeout_s
        self.keep_last_good = keep_last_good
        self.command_timeout_s = command_timeout_s
        self.http = http
        self.clock = clock
        self.sleep = sleep
        self._pending = False  # a new release is live but not verified yet
        self._last_good: Path | None = None  # what to restore while pending (None: nothing)
        self._candidate: Path | None = None

    # --- steps ----------------------------------------------------------------------------

    async def activate(self, staged_dir: Path) -> None:
        if self._pending:
            await self.rollback()  # an unfinished activation is never built upon
        if self.test_command:
            code, output = await self._run(self.test_command, staged_dir)
            if code != 0:
                raise ActivationFailed(f"config test failed (exit {code})", logs=output)
        try:
            self.releases_dir.mkdir(parents=True, exist_ok=True)
            previous = await asyncio.to_thread(self._live_release)
            release = await asyncio.to_thread(self._new_release, staged_dir, "bundle-")
            self._point_to(release)
        except OSError as exc:
            raise ActivationFailed(f"cannot install config: {exc}") from None
        self._pending, self._last_good, self._candidate = True, previous, release
        log.info("config %s now points to %s", self.config_dir, release.name)
        try:
            await self._reload()
        except ActivationFailed as exc:
            note = await self._restore()
            raise ActivationFailed(f"{exc.reason}; {note}", logs=exc.logs) from None

    async def verify(self) -> None:
        if not self._pending:
            return
        if self.health_url:
            healthy, detail = await self.wait_healthy()
            if not healthy:
                note = await self._restore()
                raise ActivationFailed(f"health check failed: {detail}; {note}")
        self._pending = False
        keep = {self._candidate}
        if self.keep_last_good and self._last_good is not None:
            keep.add(self._last_good)
        await asyncio.to_thread(self._prune, keep)

    async def rollback(self) -> None:
        if self._pending:
            note = await self._restore()
            log.warning("rollback: %s", note)

    # --- the link -------------------------------------------------------------------------

    def current_release(self) -> Path | None:
        """The release directory `config_dir` points to (None when it is not a link)."""
        if not self.config_dir.is_symlink():
            return None
        return (self.config_dir.parent / os.readlink(self.config_dir)).resolve()

    def _live_release(self) -> Path | None:
        """What is live now, as a release (adopting a plain directory first)."""
        if self.config_dir.is_symlink():
            return self.current_release()
        if self.config_dir.is_dir():
            return self._adopt_plain_directory()
        if self.config_dir.exists():
            raise OSError(errno.ENOTDIR, "not a directory or link", str(self.config_dir))
        return None

    def _new_release(self, source: Path, prefix: str) -> Path:
        release = Path(tempfile.mkdtemp(prefix=prefix, dir=self.releases_dir))
        try:
            shutil.copytree(source, release, symlinks=True, dirs_exist_ok=True)
            release.chmod(0o755)  # mkdtemp makes 0700; the proxy may run as another user
        except BaseException:
            shutil.rmtree(release, ignore_errors=True)
            raise
        return release

    def _adopt_plain_directory(self) -> Path:
        release = self._new_release(self.config_dir, "initial-")
        link = self._temporary_link(release)
        if _exchange(link, self.config_dir):
            shutil.rmtree(link)  # the old directory now lives under the link's name
        else:
            log.warning(
                "renameat2 unavailable: %s is briefly absent while adopted", self.config_dir
            )
            aside = self.config_dir.with_name(f".{self.config_dir.name}.{secrets.token_hex(4)}")
            os.rename(self.config_dir, aside)
            os.replace(link, self.config_dir)
            shutil.rmtree(aside)
        _fsync_directory(self.config_dir.parent)
        log.info("adopted %s as release %s", self.config_dir, release.name)
        return release

    def _temporary_link(self, target: Path) -> Path:
        link = self.config_dir.with_name(f".{self.config_dir.name}.{secrets.token_hex(6)}.next")
        os.symlink(os.path.relpath(target, self.config_dir.parent), link)
        return link

    def _point_to(self, release: Path | None) -> None:
        """Atomically make `config_dir` point at `release` (None: remove the link)."""
        if release is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.config_dir)
        else:
            link = self._temporary_link(release)
            try:
                os.replace(link, self.config_dir)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(link)
                raise
        _fsync_directory(self.config_dir.parent)

    def _prune(self, keep: set[Path | None]) -> None:
        keep_resolved = {p.resolve() for p in keep if p is not None}
        for entry in self.releases_dir.iterdir():
            if entry.resolve() not in keep_resolved and entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)

    async def _restore(self) -> str:
        """Point back to the last good release, reload, check health; returns what happened."""
        failed, previous = self._candidate, self._last_good
        self._pending = False
        try:
            self._point_to(previous)
        except OSError as exc:
            return f"could not restore the previous config: {exc}"
        if failed is not None:
            await asyncio.to_thread(shutil.rmtree, failed, True)
        note = "restored previous config" if previous else "removed the config (none before)"
        try:
            await self._reload()
        except ActivationFailed as exc:
            return f"{note}, but its reload failed: {exc.reason}"
        if self.health_url and previous is not None:
            healthy, detail = await self.wait_healthy()
            if not healthy:
                return f"{note}, but it is unhealthy too: {detail}"
        return note

    # --- the proxy ------------------------------------------------------------------------

    async def _run(self, command: str, config_dir: Path) -> tuple[int, str]:
        argv = [
            part.replace("{dir}", str(config_dir)).replace(
                "{config}", str(config_dir / "sentinel.kdl")
            )
            for part in shlex.split(command)
        ]
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, "SENTINEL_CONFIG_DIR": str(config_dir)},
            )
        except OSError as exc:
            return 127, f"cannot run {argv[0]!r}: {exc}"
        try:
            output, _ = await asyncio.wait_for(process.communicate(), self.command_timeout_s)
        except TimeoutError:
            process.kill()
            await process.wait()
            return -1, f"{argv[0]} timed out after {self.command_timeout_s:g} s"
        return process.returncode or 0, _tail(output.decode(errors="replace"))

    async def _reload(self) -> None:
        if self.reload_command:
            code, output = await self._run(self.reload_command, self.config_dir)
            if code != 0:
                raise ActivationFailed(f"reload command failed (exit {code})", logs=output)
        elif self.pid_file is not None:
            try:
                pid = int(Path(self.pid_file).read_text().strip())
                os.kill(pid, signal.SIGHUP)
            except FileNotFoundError:
                raise ActivationFailed(f"reload failed: no pid file {self.pid_file}") from None
            except ValueError:
                raise ActivationFailed(f"reload failed: no pid in {self.pid_file}") from None
            except ProcessLookupError:
                raise ActivationFailed(f"reload failed: no process {pid}") from None
            except PermissionError:
                raise ActivationFailed(f"reload failed: may not signal {pid}") from None

    async def wait_healthy(self) -> tuple[bool, str]:
        """Poll the health URL until a 2xx or the deadline; returns (healthy, last answer).
        The poll interval grows from 50 ms to 500 ms; the deadline is `health_timeout_s`."""
        assert self.health_url is not None
        deadline = self.clock() + self.health_timeout_s
        delay, detail = 0.05, "no answer"
        http = self.http or httpx.AsyncClient(trust_env=False)
        try:
            while True:
                remaining = deadline - self.clock()
                try:
                    response = await http.get(
                        self.health_url, timeout=max(min(remaining, 2.0), 0.1)
                    )
                except httpx.HTTPError as exc:
                    detail = f"{self.health_url} unreachable ({type(exc).__name__})"
                else:
                    if response.is_success:
                        return True, f"HTTP {response.status_code}"
                    detail = f"HTTP {response.status_code} from {self.health_url}"
                remaining = deadline - self.clock()
                if remaining <= 0:
                    return False, detail
                await self.sleep(min(delay, remaining))
                delay = min(delay * 2, 0.5)
        finally:
            if self.http is None:
                await http.aclose()


# --- the simulated driver -------------------------------------------------------------------


class SimulatedDriver:
    """A pretend proxy: activation takes `apply_time_s`, and a share `failure_rate` of the
    activations fails its health check (so the flow reports `activated`, then rolls back)."""

    def __init__(
        self,
        apply_time_s: float = 0.0,
        failure_rate: float = 0.0,
        random: random_module.Random | None = None,
        *,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.apply_time_s = apply_time_s
        self.failure_rate = failure_rate
        self.random = random or random_module.Random()
        self.sleep = sleep
        self.activations = 0
        self.rollbacks = 0
        self._pending = False
        self._will_fail = False

    async def activate(self, staged_dir: Path) -> None:
        if self.apply_time_s > 0:
            await self.sleep(self.apply_time_s)
        self.activations += 1
        self._pending = True
        self._will_fail = self.random.random() < self.failure_rate

    async def verify(self) -> None:
        if self._pending and self._will_fail:
            raise ActivationFailed("simulated health check failure")
        self._pending = False

    async def rollback(self) -> None:
        if self._pending:
            self.rollbacks += 1
            self._pending = False
