"""liveswap as a container's PID 1: in a new PID namespace (``unshare --pid --fork --mount-proc``, what
``docker run`` does), it reaps the orphans of the app's subprocesses, acts on the signals it handles,
and drains on SIGTERM (``docker stop``). Outside a container it never dies of SIGUSR1/SIGUSR2."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import _LISTENING, APPS, Instance, MakeInstance, wait_until

from liveswap.supervisor.pid1 import EarlyExits

pytestmark = pytest.mark.timeout(60)

UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc"]


def _unshare_works() -> str:
    """'' if we may create a PID namespace, else why not."""
    try:
        out = subprocess.run([*UNSHARE, "true"], capture_output=True, text=True, timeout=10)
    except FileNotFoundError:
        return "unshare (util-linux) is not installed"
    if out.returncode != 0:
        return f"unshare --pid --fork --mount-proc fails here (needs root or CAP_SYS_ADMIN): {out.stderr.strip()}"
    return ""


class NamespacedInstance(Instance):
    """``liveswap run`` as PID 1 of a new PID namespace; ``self.proc`` is unshare, ``self.pid`` liveswap."""

    pid = 0

    def start(self, wait: bool = True, timeout: float = 30.0, pass_fds: tuple[int, ...] = ()) -> Instance:
        cmd = [*UNSHARE, sys.executable, "-m", "liveswap", "run", self.app, "--app-dir", str(self.app_dir)]
        cmd += ["--name", self.name, "--bind", "127.0.0.1:0", *self.args]
        self.proc = subprocess.Popen(
            cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        self.pump = threading.Thread(target=self._pump, daemon=True)
        self.pump.start()
        m = self.wait_for(_LISTENING, timeout)
        self.host, self.port = m.group(1), int(m.group(2))
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        assert len(children) == 1, children
        self.pid = int(children[0])  # liveswap, as seen from outside the namespace
        return self


@pytest.fixture
def pid1(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[NamespacedInstance]:
    why = _unshare_works()
    if why:
        pytest.skip(why)
    inst = NamespacedInstance(tmp_path, "orphans:app", [], "1", None, app_dir=APPS)
    try:
        inst.start()
        yield inst
    finally:
        if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
            print(f"\n----- liveswap output ({inst.name}) -----\n{inst.output()}")
        inst.kill_group()


def _namespace(pid: int) -> dict[int, tuple[int, str]]:
    """Every process in ``pid``'s PID namespace: its pid inside it -> (pid outside, state letter)."""
    ns = os.readlink(f"/proc/{pid}/ns/pid")
    found: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/ns/pid") != ns:
                continue
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:  # gone meanwhile
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        inner = int(fields["NSpid"].split()[-1])
        found[inner] = (int(entry), fields["State"].split()[0])
    return found


def test_pid1_reaps_orphans_and_drains_on_sigterm(pid1: NamespacedInstance) -> None:
    assert _namespace(pid1.pid)[1][0] == pid1.pid  # liveswap is PID 1 in there
    orphans = []
    for _ in range(3):
        r = httpx.get(pid1.url + "/orphan", timeout=20)
        m = re.fullmatch(r"orphan=(\d+) ppid=(\d+)", r.text)
        assert r.status_code == 200 and m, r.text
        assert m.group(2) == "1", f"the orphan was adopted by pid {m.group(2)}, not by liveswap (PID 1)"
        orphans.append(int(m.group(1)))

    def reaped() -> bool:
        procs = _namespace(pid1.pid)
        return not any(state == "Z" for _, state in procs.values()) and not set(orphans) & set(procs)

    wait_until(reaped, 10, f"the orphans {orphans} to be reaped (namespace: {_namespace(pid1.pid)})")

    # A signal PID 1 has a handler for is delivered from outside the namespace; without one the kernel
    # would drop it. SIGUSR1 is logged and ignored; SIGTERM (docker stop) drains.
    os.kill(pid1.pid, signal.SIGUSR1)
    pid1.wait_for(r"SIGUSR1 ignored")
    result: dict[str, httpx.Response] = {}
    slow = threading.Thread(target=lambda: result.update(r=httpx.get(pid1.url + "/slow?s=1", timeout=20)))
    mark = pid1.mark()
    slow.start()
    pid1.wait_for(r"slow request started", start=mark)
    os.kill(pid1.pid, signal.SIGTERM)
    assert pid1.wait_exit(20) == 0
    slow.join(10)
    assert result["r"].status_code == 200 and result["r"].text == "slow done"
    assert "stopped" in pid1.output_since(mark)


def test_usr1_and_usr2_do_not_kill_the_supervisor(liveswap: MakeInstance) -> None:
    inst = liveswap()
    assert inst.proc is not None
    for sig in (signal.SIGUSR1, signal.SIGUSR2):
        mark = inst.mark()
        inst.proc.send_signal(sig)
        inst.wait_for(rf"{sig.name} ignored", start=mark)
    assert inst.proc.poll() is None
    assert httpx.get(inst.url + "/", timeout=10).status_code == 200
    assert inst.stop() == 0


def test_early_exits_forget_old_pids() -> None:
    """A worker that gets the pid of an orphan reaped long ago must not be taken for dead at birth."""
    exits = EarlyExits(ttl=0.05)
    exits.add(4242, 0)
    assert 4242 in exits  # a worker whose spawn reply is on its way: its exit is kept
    wait_until(lambda: 4242 not in exits, 5, "the early exit to expire")
    with pytest.raises(KeyError):
        exits.pop(4242)
    exits.add(4343, 3)
    assert len(exits) == 1  # the stale entry went when the new one came
    assert exits.pop(4343) == 3 and 4343 not in exits
