"""liveswap under systemd's protocols, with a fake service manager: a NOTIFY_SOCKET receiver that
records every message (and the fds of FDSTORE=1) in order, as systemd does.

- Type=notify-reload: READY=1 when serving; on SIGHUP, RELOADING=1 with MONOTONIC_USEC, then READY=1
  with STATUS= when the transaction ends (ok or rolled back), for Python apps and command mode;
  STOPPING=1 at a stop;
- WATCHDOG=1 while the live generation is healthy, when WATCHDOG_USEC is set;
- EXTEND_TIMEOUT_USEC while a slow first boot progresses;
- FDSTORE=1: the supervisor is SIGKILLed and started again with the stored fds (LISTEN_FDS, as
  systemd passes them back); a request sent while no supervisor runs waits in the socket's queue
  and is answered: no connection is refused;
- --pid-file and the hooks (--on-reload-start, --on-reload-done, --on-stop) with their environment.
"""

from __future__ import annotations

import array
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import APPS, MakeInstance, wait_until
from loadclient import Connection

pytestmark = pytest.mark.timeout(90)

_TO_FD3 = (
    "import os, sys; os.dup2(int(sys.argv[1]), 3); os.close(int(sys.argv[1])); os.execv(sys.argv[2], sys.argv[2:])"
)


class FakeSystemd:
    """A NOTIFY_SOCKET (abstract) that keeps every message, and the fds stored with FDSTORE=1."""

    def __init__(self) -> None:
        self.name = f"@liveswap-test-notify-{os.getpid()}-{os.urandom(3).hex()}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + self.name[1:].encode())
        self.messages: list[dict[str, str]] = []
        self.stored: list[tuple[str, int]] = []  # (FDNAME, fd)
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                data, ancdata, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(16 * 4))
            except OSError:
                return
            fds = array.array("i")
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self.cond:
                if fields.get("FDSTORE") == "1":
                    self.stored += [(fields.get("FDNAME", "stored"), fd) for fd in fds]
                else:
                    for fd in fds:
                        os.close(fd)
                self.messages.append(fields)
                self.cond.notify_all()

    def wait_for(self, key: str, value: str | None = None, start: int = 0, timeout: float = 30.0) -> int:
        """The index of the first message from ``start`` on with ``key`` (= ``value``)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for i, m in enumerate(self.messages[start:], start):
                    if key in m and (value is None or m[key] == value):
                        return i
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {key}={value} from liveswap within {timeout} s: {self.messages}")
                self.cond.wait(left)

    def close(self) -> None:
        self.sock.close()
        for _, fd in self.stored:
            os.close(fd)


@pytest.fixture
def systemd() -> Iterator[FakeSystemd]:
    fake = FakeSystemd()
    yield fake
    fake.close()


def test_notify_reload_protocol(liveswap: MakeInstance, systemd: FakeSystemd, tmp_path: Path) -> None:
    inst = liveswap(env={"NOTIFY_SOCKET": systemd.name})
    ready = systemd.wait_for("READY", "1")
    assert systemd.messages[ready]["MAINPID"] == str(inst.proc.pid if inst.proc else 0)
    assert systemd.messages[ready]["STATUS"] == "serving versioned:app"
    # A reload that succeeds: RELOADING=1 with a CLOCK_MONOTONIC timestamp, then READY=1.
    inst.write_state("2")
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert inst.proc is not None
    inst.proc.send_signal(signal.SIGHUP)
    reloading = systemd.wait_for("RELOADING", "1", start=ready + 1)
    usec = int(systemd.messages[reloading]["MONOTONIC_USEC"])
    assert before <= usec <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    done = systemd.wait_for("READY", "1", start=reloading + 1)
    assert systemd.messages[done]["STATUS"] == "serving generation 2"
    # A reload that fails: RELOADING=1, then READY=1 saying it was rolled back.
    inst.write_state("3 fail-import")
    assert inst.reload().returncode == 1
    reloading = systemd.wait_for("RELOADING", "1", start=done + 1)
    failed = systemd.wait_for("READY", "1", start=reloading + 1)
    assert systemd.messages[failed]["STATUS"] == "reload failed; serving generation 2"
    assert inst.stop() == 0
    systemd.wait_for("STOPPING", "1", start=failed + 1)


def test_notify_reload_in_command_mode(liveswap: MakeInstance, systemd: FakeSystemd) -> None:
    command = [sys.executable, "-m", "uvicorn", "--fd", "{fd}", "--app-dir", str(APPS), "versioned:app"]
    inst = liveswap(
        app="",
        args=["--ready-after", "0.3s", "--bind", "127.0.0.1:0", "--", *command],
        env={"NOTIFY_SOCKET": systemd.name},
    )
    ready = systemd.wait_for("READY", "1")
    assert inst.reload().returncode == 0
    reloading = systemd.wait_for("RELOADING", "1", start=ready + 1)
    assert "MONOTONIC_USEC" in systemd.messages[reloading]
    done = systemd.wait_for("READY", "1", start=reloading + 1)
    assert systemd.messages[done]["STATUS"] == "serving generation 2"


def test_watchdog_pings_while_healthy(liveswap: MakeInstance, systemd: FakeSystemd) -> None:
    liveswap(env={"NOTIFY_SOCKET": systemd.name, "WATCHDOG_USEC": "400000"})
    ready = systemd.wait_for("READY", "1")
    first = systemd.wait_for("WATCHDOG", "1", start=ready)
    systemd.wait_for("WATCHDOG", "1", start=first + 1)  # and again


def test_watchdog_of_another_pid_is_ignored(liveswap: MakeInstance, systemd: FakeSystemd) -> None:
    inst = liveswap(env={"NOTIFY_SOCKET": systemd.name, "WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"})
    ready = systemd.wait_for("READY", "1")
    # Reloads (each one READY=1 more) until more than 3 watchdog periods have passed: a ping would be due.
    until, reloads = time.monotonic() + 0.7, 0
    while time.monotonic() < until:
        assert inst.reload().returncode == 0
        reloads += 1
    systemd.wait_for("READY", "1", start=ready + reloads)
    assert not any("WATCHDOG" in m for m in systemd.messages)


def test_slow_first_boot_extends_the_start_timeout(liveswap: MakeInstance, systemd: FakeSystemd) -> None:
    inst = liveswap(version="1 slow-import", env={"NOTIFY_SOCKET": systemd.name}, wait=False)
    extend = systemd.wait_for("EXTEND_TIMEOUT_USEC")
    assert int(systemd.messages[extend]["EXTEND_TIMEOUT_USEC"]) >= 1_000_000
    ready = systemd.wait_for("READY", "1", start=extend)
    assert ready > extend
    inst.wait_for("serving versioned:app")


def test_fdstore_restart_after_sigkill_refuses_no_connection(
    systemd: FakeSystemd, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    state = tmp_path / "state.txt"
    state.write_text("1\n")
    runtime = tmp_path / "rt"
    runtime.mkdir(mode=0o700)
    env = dict(
        os.environ,
        NOTIFY_SOCKET=systemd.name,
        FDSTORE="8",
        XDG_RUNTIME_DIR=str(runtime),
        LIVESWAP_TEST_STATE=str(state),
    )
    args = [sys.executable, "-m", "liveswap", "run", "versioned:app", "--app-dir", str(APPS), "--name", "fdstore"]
    first = subprocess.Popen([*args, "--bind", "127.0.0.1:0"], env=env, start_new_session=True, stderr=subprocess.PIPE)
    procs = [first]
    try:
        systemd.wait_for("READY", "1")
        systemd.wait_for("FDSTORE", "1")
        [(name, fd)] = systemd.stored
        assert name == "listen0"
        with socket.socket(fileno=os.dup(fd)) as stored:
            port = stored.getsockname()[1]
        os.killpg(first.pid, signal.SIGKILL)  # the supervisor and its whole group: nothing serves now
        first.wait(10)
        # A client connects while nothing runs: the stored socket still listens, so it is queued.
        conn = Connection("127.0.0.1", port, timeout=30)
        conn.send(conn.request("/", headers={"Connection": "close"}))
        # systemd starts the service again, passing the stored fds as LISTEN_FDS (with their names).
        state.write_text("2\n")
        # (at fd 3, as systemd does: a small exec wrapper moves it there; LISTEN_PID is left unset,
        # which sd_listen_fds allows)
        second = subprocess.Popen(
            [sys.executable, "-c", _TO_FD3, str(fd), *args],
            env={**env, "LISTEN_FDS": "1", "LISTEN_FDNAMES": name},
            pass_fds=(fd,),
            start_new_session=True,
            stderr=subprocess.PIPE,
        )
        procs.append(second)
        response = conn.read_response()
        assert (response.status, response.text) == (200, "version=2\n")
        conn.close()
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(30)
            if proc.stderr is not None:
                proc.stderr.close()


def test_pid_file_and_hooks(liveswap: MakeInstance, tmp_path: Path) -> None:
    pid_file = tmp_path / "liveswap.pid"
    log = tmp_path / "hooks.log"
    hook = f'echo "$LIVESWAP_EVENT $LIVESWAP_OUTCOME $LIVESWAP_GENERATION $LIVESWAP_ERROR" >> {log}'
    inst = liveswap(
        args=[
            "--pid-file",
            str(pid_file),
            "--on-reload-start",
            hook,
            "--on-reload-done",
            hook,
            "--on-stop",
            f"sleep 0.3; {hook}",
        ]
    )
    assert inst.proc is not None
    assert pid_file.read_text().strip() == str(inst.proc.pid)
    inst.write_state("2")
    assert inst.reload().returncode == 0
    inst.write_state("3 fail-import")
    assert inst.reload().returncode == 1
    wait_until(lambda: log.exists() and len(log.read_text().splitlines()) >= 4, 10, "the reload hooks")
    assert inst.stop() == 0
    lines = log.read_text().splitlines()
    assert lines[0] == "reload-start  2 " and lines[1] == "reload-done ok 2 "
    assert lines[2] == "reload-start  3 " and lines[3].startswith("reload-done failed 3 Error importing")
    assert lines[4] == "stop   ", lines  # the supervisor waited for --on-stop before exiting
    assert not pid_file.exists()
