"""Fixtures that run liveswap as a real subprocess on a real port, and clean up by process group."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

HERE = Path(__file__).parent
APPS = HERE / "apps"
sys.path.insert(0, str(HERE))

_LISTENING = re.compile(r"serving .+? on .*?https?://(\[[^\]]+\]|[^:/\s]+):(\d+)")


class Instance:
    """One ``liveswap run`` process under test."""

    def __init__(
        self,
        tmp: Path,
        app: str,
        args: list[str],
        version: str,
        env: dict[str, str] | None,
        command: str = "run",
        app_dir: Path = APPS,
    ) -> None:
        self.tmp = tmp
        self.app = app
        self.args = args
        self.command = command
        self.app_dir = app_dir
        self.name = f"t{os.getpid()}-{os.urandom(3).hex()}"
        self.state_file = tmp / "state.txt"
        self.write_state(version)
        self.runtime = Path(tempfile.mkdtemp(prefix="lsrun-"))
        os.chmod(self.runtime, 0o700)
        self.env = dict(
            os.environ,
            XDG_RUNTIME_DIR=str(self.runtime),
            LIVESWAP_TEST_STATE=str(self.state_file),
            PYTHONUNBUFFERED="1",
            **(env or {}),
        )
        self.env.pop("LISTEN_FDS", None)
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.proc: subprocess.Popen[str] | None = None
        self.host = "127.0.0.1"
        self.port = 0

    def write_state(self, text: str) -> None:
        tmp = self.state_file.with_suffix(".new")
        tmp.write_text(text + "\n")
        os.replace(tmp, self.state_file)

    def start(self, wait: bool = True, timeout: float = 30.0, pass_fds: tuple[int, ...] = ()) -> Instance:
        cmd = [
            sys.executable,
            "-m",
            "liveswap",
            self.command,
            self.app,
            "--app-dir",
            str(self.app_dir),
            "--name",
            self.name,
            *self.args,
        ]
        if not any(a.startswith("--bind") for a in self.args):
            cmd += ["--bind", "127.0.0.1:0"]
        self.proc = subprocess.Popen(
            cmd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            pass_fds=pass_fds,
        )
        self.pump = threading.Thread(target=self._pump, daemon=True)
        self.pump.start()
        if wait:
            m = self.wait_for(_LISTENING, timeout)
            self.host, self.port = m.group(1).strip("[]"), int(m.group(2))
        return self

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        with self.proc.stdout:  # closed here when the last writer is gone, even after the test ended
            for line in self.proc.stdout:
                with self.cond:
                    self.lines.append(line.rstrip("\n"))
                    self.cond.notify_all()
        with self.cond:
            self.lines.append("<<EOF>>")
            self.cond.notify_all()

    def wait_for(self, pattern: str | re.Pattern[str], timeout: float = 30.0, start: int = 0) -> re.Match[str]:
        """Wait for a log line matching ``pattern`` (from line ``start`` on); fail at the deadline."""
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        seen = start
        with self.cond:
            while True:
                for line in self.lines[seen:]:
                    m = rx.search(line)
                    if m:
                        return m
                seen = len(self.lines)
                if "<<EOF>>" in self.lines[-1:]:
                    raise AssertionError(f"liveswap exited before logging {rx.pattern!r}:\n{self.output()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no log line {rx.pattern!r} within {timeout} s:\n{self.output()}")
                self.cond.wait(left)

    def mark(self) -> int:
        with self.cond:
            return len(self.lines)

    def output_since(self, mark: int) -> str:
        with self.cond:
            return "\n".join(self.lines[mark:])

    def output(self) -> str:
        with self.cond:
            return "\n".join(self.lines[-200:])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "liveswap", *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def reload(self) -> subprocess.CompletedProcess[str]:
        return self.cli("reload", "--name", self.name)

    def status(self) -> dict[str, Any]:
        out = self.cli("status", "--name", self.name, "--json")
        assert out.returncode == 0, out.stderr
        result: dict[str, Any] = json.loads(out.stdout)
        return result

    def worker_pids(self, state: str = "live") -> list[int]:
        return [w["pid"] for g in self.status()["generations"] if g["state"] == state for w in g["workers"]]

    def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill_group(self) -> None:
        """End the instance: a graceful stop first (in command mode, liveswap ends each command's
        process group; a SIGKILLed supervisor cannot, and a server's own workers that do not watch
        their parent, such as granian's, would outlive it), SIGKILL if that takes too long."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.end_leftovers()
        if self.proc is not None:
            # A process the command left (a server's own worker finishing its requests) may hold the
            # output pipe a while: the reader closes it when the last writer is gone.
            self.pump.join(3)
        shutil.rmtree(self.runtime, ignore_errors=True)

    def end_leftovers(self) -> None:
        """After liveswap has exited: end what it could not (nothing, for Python workers)."""

    def stop(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


class MakeInstance(Protocol):
    """The ``liveswap`` fixture: starts a ``liveswap run`` instance (cleaned up after the test)."""

    def __call__(
        self,
        app: str = ...,
        args: list[str] | None = None,
        version: str = ...,
        env: dict[str, str] | None = None,
        wait: bool = True,
        pass_fds: tuple[int, ...] = (),
    ) -> Instance: ...


@pytest.fixture
def liveswap(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[MakeInstance]:
    """``liveswap(app="versioned:app", args=[...], version="1")`` starts an instance; all are cleaned up."""
    started: list[Instance] = []

    def make(
        app: str = "versioned:app",
        args: list[str] | None = None,
        version: str = "1",
        env: dict[str, str] | None = None,
        wait: bool = True,
        pass_fds: tuple[int, ...] = (),
    ) -> Instance:
        inst = Instance(tmp_path, app, list(args or []), version, env)
        started.append(inst)
        return inst.start(wait=wait, pass_fds=pass_fds)

    yield make
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for inst in started:
        if failed:
            print(f"\n----- liveswap output ({inst.name}) -----\n{inst.output()}")
        inst.kill_group()


class MakeDevInstance(Protocol):
    def __call__(
        self,
        project: Path,
        app: str = "main:app",
        args: list[str] | None = None,
        wait: bool = True,
        env: dict[str, str] | None = None,
    ) -> Instance: ...


@pytest.fixture
def liveswap_dev(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[MakeDevInstance]:
    """``liveswap_dev(project, app="main:app")`` starts ``liveswap dev`` on a project directory."""
    started: list[Instance] = []

    def make(
        project: Path,
        app: str = "main:app",
        args: list[str] | None = None,
        wait: bool = True,
        env: dict[str, str] | None = None,
    ) -> Instance:
        inst = Instance(tmp_path, app, list(args or []), "1", env, command="dev", app_dir=project)
        started.append(inst)
        return inst.start(wait=wait)

    yield make
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for inst in started:
        if failed:
            print(f"\n----- liveswap dev output ({inst.name}) -----\n{inst.output()}")
        inst.kill_group()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    rep = yield
    setattr(item, "rep_" + rep.when, rep)
    return rep


def pid_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return any(line.startswith("State:") and "Z" in line.split()[1] for line in f)
    except FileNotFoundError:
        return True


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.02) -> None:
    """Poll ``predicate`` until true; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
