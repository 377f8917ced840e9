"""Errors that teach: usage errors found before anything starts (exit 2), runtime errors (exit 1), a
control socket that answers garbage with an error, `liveswap stop` that waits for the exit, serve()
arguments checked like the CLI's, and tracebacks that show the app's frames only. Real processes."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TypedDict

import httpx
import pytest
from conftest import APPS, Instance, MakeInstance

from liveswap import serve
from liveswap._os import alive, wait_exit
from liveswap.errors import AppLoadError, ConfigError
from liveswap.http.app import app_traceback, check_app, import_app, load_app

pytestmark = pytest.mark.timeout(90)


# ---- helpers --------------------------------------------------------------------------------------
@pytest.fixture
def held_port() -> Iterator[int]:
    """A port that a socket of ours listens on for the whole test: binding it again must fail."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield int(sock.getsockname()[1])


@pytest.fixture
def runtime(tmp_path: Path) -> Path:
    path = tmp_path / "run"
    path.mkdir(mode=0o700)
    return path


def run_liveswap(
    *args: str, runtime: Path, cwd: Path | None = None, timeout: float = 60.0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime), PYTHONUNBUFFERED="1", **(env or {}))
    full_env.pop("LISTEN_FDS", None)
    return subprocess.run(
        [sys.executable, "-m", "liveswap", *args],
        env=full_env,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
    )


def assert_usage_error(out: subprocess.CompletedProcess[str], *expected: str) -> None:
    text = out.stdout + out.stderr
    assert out.returncode == 2, text
    assert "liveswap: error:" in out.stderr and "hint:" in out.stderr, text
    assert "Traceback" not in text, text
    for piece in expected:
        assert piece in out.stderr, text


def module_name() -> str:
    return f"m_{uuid.uuid4().hex[:10]}"  # unique: tests import into this process


def write(folder: Path, name: str, source: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


# ---- 1, 2: usage errors are found before anything is bound (exit 2), runtime errors exit 1 ----------
@pytest.mark.parametrize(
    "spec,expected",
    [
        ("nocolon", ['Import string "nocolon" must be in format "<module>:<attribute>".', "use nocolon:app"]),
        ("no_such_module_xyz:app", ['Could not import module "no_such_module_xyz".', "--app-dir"]),
        ("no_such_pkg_xyz.sub:app", ['Could not import module "no_such_pkg_xyz.sub".', "--app-dir"]),
        ("main.py:app", ['"main.py" is a file name', "use main:app"]),
        ("main:create_app()", ['"create_app()" is not an attribute name', "main:create_app --factory"]),
    ],
)
def test_bad_app_is_a_usage_error_before_any_socket(
    spec: str, expected: list[str], held_port: int, tmp_path: Path, runtime: Path
) -> None:
    unix = tmp_path / "app.sock"
    # Both binds would fail or leave a trace: the held port cannot be bound (exit 1 if tried), the
    # unix socket file would appear. Neither happens, and no control socket (directory) either.
    out = run_liveswap(
        "run",
        spec,
        "--app-dir",
        str(tmp_path),
        "--bind",
        f"unix:{unix}",
        "--bind",
        f"127.0.0.1:{held_port}",
        runtime=runtime,
        cwd=tmp_path,
    )
    assert_usage_error(out, *expected)
    assert "cannot bind" not in out.stderr
    assert not unix.exists()
    assert not (runtime / "liveswap").exists()


def test_missing_module_hint_says_where_it_looked(tmp_path: Path, runtime: Path) -> None:
    (tmp_path / "src").mkdir()
    write(tmp_path, "src/svc.py", "app = None\n")
    out = run_liveswap("run", "svc:app", "--app-dir", str(tmp_path), runtime=runtime, cwd=tmp_path)
    assert_usage_error(out, 'Could not import module "svc".', f"in {tmp_path} (--app-dir)", "pass --app-dir")


def test_check_imports_no_user_code(tmp_path: Path) -> None:
    """Only the top-level module is looked for: its package __init__ is not run in the supervisor."""
    pkg = module_name()
    write(tmp_path, f"{pkg}/__init__.py", "raise RuntimeError('imported in the supervisor')\n")
    check_app(f"{pkg}.missing:app", str(tmp_path))  # found, not imported
    assert pkg not in sys.modules
    assert str(tmp_path) not in sys.path  # the path is restored
    with pytest.raises(AppLoadError) as info:
        check_app(f"{pkg}_nope:app", str(tmp_path))
    assert info.value.hint and str(tmp_path) in info.value.hint and "--app-dir" in info.value.hint


def test_supervisor_never_imports_the_app(tmp_path: Path, runtime: Path) -> None:
    """A package whose __init__ records who imports it: only the worker does (and then fails)."""
    marker = tmp_path / "imported-by.txt"
    write(
        tmp_path,
        "recorder/__init__.py",
        f"""\
        import os
        with open({str(marker)!r}, "a") as f:
            f.write(f"{{os.getpid()}}\\n")
        """,
    )
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "liveswap",
            "run",
            "recorder.missing:app",
            "--app-dir",
            str(tmp_path),
            "--bind",
            "127.0.0.1:0",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert proc.returncode == 3, output  # the worker's boot failed: the submodule is missing
    assert 'the package "recorder"' in output and 'has no module "missing"' in output, output
    importers = marker.read_text().split()
    assert importers and str(proc.pid) not in importers, (importers, proc.pid)


@pytest.mark.parametrize(
    "args,env,expected",
    [
        (["--boot-timeout", "0"], {}, ["--boot-timeout: '0'", "needs time"]),
        (["--max-connections", "-1"], {}, ["--max-connections: '-1'", "0 means no limit"]),
        (["--drain-timeout", "soon"], {}, ["--drain-timeout: 'soon' is not a duration", "500ms"]),
        ([], {"LIVESWAP_WORKERS": "0"}, ["LIVESWAP_WORKERS: '0'"]),
        (["--bind", "localhost"], {}, ["--bind: 'localhost': no port", "HOST:PORT"]),
        (["--app-dir", "/nonexistent-dir-xyz"], {}, ["--app-dir: '/nonexistent-dir-xyz' does not exist"]),
        (["--name", "../escape"], {}, ["--name: '../escape' is not a valid instance name"]),
    ],
)
def test_bad_option_values_are_usage_errors(
    args: list[str], env: dict[str, str], expected: list[str], held_port: int, runtime: Path
) -> None:
    bind = [] if "--bind" in args else ["--bind", f"127.0.0.1:{held_port}"]
    out = run_liveswap("run", "versioned:app", "--app-dir", str(APPS), *bind, *args, runtime=runtime, env=env)
    assert_usage_error(out, *expected)
    assert not (runtime / "liveswap").exists()


def test_unknown_flag_is_a_usage_error(runtime: Path) -> None:
    out = run_liveswap("run", "versioned:app", "--wrokers", "2", runtime=runtime)
    assert out.returncode == 2 and "No such option" in out.stderr and "--wrokers" in out.stderr, out.stderr
    out = run_liveswap("stop", "--timeout", "0", runtime=runtime)
    assert out.returncode == 2 and "must be more than 0" in out.stderr, out.stderr


def test_runtime_errors_exit_1(held_port: int, runtime: Path) -> None:
    out = run_liveswap(
        "run", "versioned:app", "--app-dir", str(APPS), "--bind", f"127.0.0.1:{held_port}", runtime=runtime
    )
    assert out.returncode == 1, out.stderr
    assert f"liveswap: error: cannot bind 127.0.0.1:{held_port}" in out.stderr and "hint:" in out.stderr
    assert "Traceback" not in out.stderr
    for command in ("stop", "reload", "status"):
        out = run_liveswap(command, runtime=runtime)
        assert out.returncode == 1 and "no liveswap instance is running" in out.stderr and "hint:" in out.stderr


# ---- 4: the control socket answers anything with an error, and keeps working --------------------------
def control_request(inst: Instance, payload: bytes) -> dict[str, object]:
    path = inst.runtime / "liveswap" / f"{inst.name}.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(payload)
        line = s.makefile("rb").readline()
    assert line.endswith(b"\n"), line
    reply: dict[str, object] = json.loads(line)
    return reply


def test_control_socket_survives_hostile_requests(liveswap: MakeInstance) -> None:
    inst = liveswap()
    depth = 30_000  # 60,000 brackets on one line: under the 64 KiB limit
    hostile = [
        (b"[" * depth + b"]" * depth + b"\n", "malformed request: nested too deeply"),
        (b"[" * 2 * depth + b"\n", "malformed request"),  # unterminated too
        (b'{"a":' * 10_000 + b"1" + b"}" * 10_000 + b"\n", "malformed request: nested too deeply"),
        (b'{"cmd": "status", "x": ' + b"[" * depth + b"]" * depth + b"}\n", "malformed request: nested too deeply"),
        (b'{"cmd": ' + b"[" * 500 + b"]" * 500 + b"}\n", "unknown command (an array)"),
        (b'{"cmd": "' + b"x" * 50_000 + b'"}\n', "unknown command 'xxxx"),
        (b"[1, 2]\n", "malformed request: expected a JSON object, got an array"),
        (b'"reload"\n', "malformed request: expected a JSON object, got a string"),
        (b"42\n", "malformed request: expected a JSON object, got a number"),
        (b"null\n", "malformed request: expected a JSON object, got null"),
        (b"1" * 10_000 + b"\n", "malformed request: not JSON"),
        (b"\xff\xfe\n", "malformed request: not JSON"),
    ]
    for payload, expected in hostile:
        reply = control_request(inst, payload)
        assert reply["ok"] is False and expected in str(reply["error"]), (payload[:40], reply)
        assert len(json.dumps(reply)) < 1000, reply  # never an echo of the request
    # The instance still works, and its log (flushed up to the status answer) shows no traceback.
    mark = inst.mark()
    status = inst.status()
    assert status["state"] == "serving" and status["reloads_ok"] == 0
    assert httpx.get(inst.url + "/", timeout=10).status_code == 200
    inst.write_state("2")
    assert inst.reload().returncode == 0
    inst.wait_for(r"reload ok: generation 2 live", start=mark)
    log = inst.output()
    assert "Traceback" not in log and "RecursionError" not in log and "Unhandled exception" not in log, log


# ---- 5: serve() takes the CLI's duration strings, and checks every argument -----------------------------
class ServeOptions(TypedDict, total=False):
    """The serve() keyword arguments the next test gets wrong."""

    shutdown_timeout: float | str
    header_timeout: float | str
    keepalive_timeout: float | str
    idle_grace: float | str
    max_connections: int
    max_header_bytes: int
    interface: str


@pytest.mark.parametrize(
    "kwargs,expected",
    [
        ({"shutdown_timeout": "soon"}, "serve(shutdown_timeout='soon'): 'soon' is not a duration"),
        ({"header_timeout": "-1s"}, "serve(header_timeout='-1s'): '-1s' is negative"),
        ({"keepalive_timeout": float("nan")}, "serve(keepalive_timeout=nan): nan is not a finite duration"),
        ({"idle_grace": "2d"}, "serve(idle_grace='2d'): '2d' is not a duration"),
        ({"max_connections": -1}, "serve(max_connections=-1): -1 is out of range"),
        ({"max_header_bytes": 10}, "serve(max_header_bytes=10): 10 is out of range"),
        ({"interface": "rsgi"}, "serve(interface='rsgi'): 'rsgi' is not one of: auto, asgi, wsgi"),
    ],
)
def test_serve_refuses_bad_arguments_before_binding(kwargs: ServeOptions, expected: str, held_port: int) -> None:
    async def app(scope: object, receive: object, send: object) -> None:
        pass

    # Binding the held port would raise BindError: the ConfigError comes first.
    with pytest.raises(ConfigError) as info:
        serve(app, f"127.0.0.1:{held_port}", debug=None, log_level=None, **kwargs)
    assert str(info.value).startswith(expected), str(info.value)
    assert info.value.hint


SERVE_SCRIPT = """\
import asyncio
import liveswap

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/slow":
        print("slow started", flush=True)
        await asyncio.sleep(60)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})

liveswap.serve(app, "127.0.0.1:0", debug=None, header_timeout="500ms", keepalive_timeout="2s",
               idle_grace="100ms", shutdown_timeout="1s")
print("serve returned", flush=True)
"""


def test_serve_takes_duration_strings(tmp_path: Path) -> None:
    script = write(tmp_path, "served.py", SERVE_SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        url = ""
        for line in proc.stdout:
            lines.append(line)
            if m := re.search(r"serving asgi app on (http://\S+)", line):
                url = m.group(1)
                break
        assert url, "".join(lines)
        assert httpx.get(url + "/", timeout=10).text == "ok"
        # header_timeout="500ms": a client that never finishes its headers is answered 408 well
        # before the 10 s default.
        host, port = url.removeprefix("http://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as slow:
            slow.sendall(b"GET / HTTP/1.1\r\n")
            started = time.monotonic()
            data = b""
            while chunk := slow.recv(4096):
                data += chunk
            assert b"408" in data and time.monotonic() - started < 5, data
        # shutdown_timeout="1s": a request that would take 60 s is cut after 1 s of draining.
        result: list[BaseException | httpx.Response] = []
        t = threading.Thread(target=lambda: result.append(_get_or_error(url + "/slow")))
        t.start()
        for line in proc.stdout:
            lines.append(line)
            if "slow started" in line:
                break
        stopped_at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=30)
        lines.append(rest)
        assert proc.returncode == 0, "".join(lines)
        assert time.monotonic() - stopped_at < 10, "".join(lines)  # the default shutdown timeout is 30 s
        assert "requests cut at the shutdown timeout" in rest and "serve returned" in rest, "".join(lines)
        t.join(10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _get_or_error(url: str) -> BaseException | httpx.Response:
    try:
        return httpx.get(url, timeout=30)
    except httpx.HTTPError as exc:
        return exc


# ---- 6: `liveswap stop` returns when the instance has exited --------------------------------------------
def _slow_request(inst: Instance, seconds: float, into: list[BaseException | httpx.Response]) -> threading.Thread:
    t = threading.Thread(target=lambda: into.append(_get_or_error(f"{inst.url}/slow?s={seconds}")))
    t.start()
    inst.wait_for(r"slow request started")
    return t


def test_stop_waits_for_the_drain_and_the_exit(liveswap: MakeInstance) -> None:
    inst = liveswap()
    assert inst.proc is not None
    result: list[BaseException | httpx.Response] = []
    t = _slow_request(inst, 2.0, result)
    started = time.monotonic()
    out = inst.cli("stop", "--name", inst.name)
    took = time.monotonic() - started
    # Exited already, not just stopping: poll() reaps it without waiting.
    assert inst.proc.poll() == 0, (out.stdout, out.stderr)
    assert out.returncode == 0, out.stderr
    m = re.search(rf"stopped liveswap pid {inst.proc.pid} in (\d+\.\d\d) s", out.stdout)
    assert m, out.stdout
    assert took >= 1.0 and float(m.group(1)) >= 1.0, (took, out.stdout)  # the slow request had ~2 s to go
    t.join(10)
    (r,) = result
    assert isinstance(r, httpx.Response) and r.status_code == 200 and r.text.startswith("slow"), r


def test_stop_no_wait_returns_at_once(liveswap: MakeInstance) -> None:
    inst = liveswap()
    assert inst.proc is not None
    result: list[BaseException | httpx.Response] = []
    t = _slow_request(inst, 3.0, result)
    out = inst.cli("stop", "--name", inst.name, "--no-wait")
    assert out.returncode == 0 and f"stopping liveswap pid {inst.proc.pid}" in out.stdout, out.stderr
    assert inst.proc.poll() is None  # still draining the slow request
    assert inst.wait_exit(30) == 0
    t.join(10)
    (r,) = result
    assert isinstance(r, httpx.Response) and r.status_code == 200, r


def test_stop_gives_up_at_its_timeout(liveswap: MakeInstance) -> None:
    inst = liveswap(args=["--drain-timeout", "60"])
    assert inst.proc is not None
    result: list[BaseException | httpx.Response] = []
    t = _slow_request(inst, 30.0, result)
    out = inst.cli("stop", "--name", inst.name, "--timeout", "500ms")
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"liveswap: error: liveswap pid {inst.proc.pid} has not exited 0.5 s after the stop request" in out.stderr
    assert "hint:" in out.stderr and f"kill -INT {inst.proc.pid}" in out.stderr, out.stderr
    assert inst.proc.poll() is None
    inst.proc.send_signal(signal.SIGINT)  # stopping already: SIGINT stops at once
    assert inst.wait_exit(30) == 0
    t.join(30)


def test_exit_is_seen_for_a_process_that_is_not_our_child_to_reap(tmp_path: Path) -> None:
    """A zombie has exited (the instance's parent may be slow to reap it): both ways of waiting say so."""
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        assert alive(child.pid) and not wait_exit(child.pid, tmp_path / "x.sock", time.monotonic() + 0.1)
        assert child.stdin is not None
        child.stdin.close()  # it exits; not reaped until child.wait()
        assert wait_exit(child.pid, tmp_path / "x.sock", time.monotonic() + 30)
        with open(f"/proc/{child.pid}/stat") as f:
            assert f.read().rpartition(")")[2].split()[0] == "Z"  # a zombie indeed
        assert not alive(child.pid)
    finally:
        child.kill()
        child.wait(10)
    assert not alive(child.pid)
    # No pid to watch (another pid namespace): the control socket going away is the sign.
    control = tmp_path / "inst.sock"
    control.touch()
    assert not wait_exit(0, control, time.monotonic() + 0.05)
    control.unlink()
    assert wait_exit(0, control, time.monotonic() + 0.05)


# ---- 7: tracebacks show the app's frames only -------------------------------------------------------------
def _load_error(tmp_path: Path, source: str, monkeypatch: pytest.MonkeyPatch, factory: bool = False) -> AppLoadError:
    monkeypatch.setattr(sys, "path", list(sys.path))  # import_app puts the app dir first; undone after the test
    name = module_name()
    write(tmp_path, f"{name}.py", source)
    with pytest.raises(AppLoadError) as info:
        load_app(f"{name}:app", app_dir=str(tmp_path), factory=factory)
    return info.value


def assert_app_frames_only(text: str) -> None:
    assert "importlib" not in text and "<frozen" not in text, text
    assert os.sep + "liveswap" + os.sep not in text, text  # no frame of liveswap itself


def test_traceback_of_a_name_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    err = _load_error(
        tmp_path,
        """\
        def make():
            return FastAPi()

        app = make()
        """,
        monkeypatch,
    )
    assert str(err).endswith("NameError: name 'FastAPi' is not defined")
    text = err.hint or ""
    assert_app_frames_only(text)
    assert re.search(r'File ".*\.py", line 4, in <module>\n    app = make\(\)', text), text
    assert re.search(r'File ".*\.py", line 2, in make\n    return FastAPi\(\)\n\s+\^+', text), text
    assert text.splitlines()[-1] == "NameError: name 'FastAPi' is not defined"


def test_traceback_of_a_syntax_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    err = _load_error(
        tmp_path,
        """\
        x = 1
        app = (x +
        """,
        monkeypatch,
    )
    text = err.hint or ""
    assert_app_frames_only(text)
    lines = text.splitlines()
    assert re.match(r'  File ".*\.py", line 2$', lines[0]), text
    assert lines[1].strip() == "app = (x +" and lines[2].strip() == "^", text
    assert lines[-1].startswith("SyntaxError: "), text


def test_traceback_keeps_the_last_frames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    err = _load_error(
        tmp_path,
        """\
        def a(n):
            return b(n) if n else 1 / 0
        def b(n):
            return a(n - 1)
        app = a(10)
        """,
        monkeypatch,
    )
    text = err.hint or ""
    assert_app_frames_only(text)
    assert text.count('  File "') <= 8 and "earlier frame(s)" in text, text
    assert text.endswith("ZeroDivisionError: division by zero")


def test_traceback_of_a_factory_and_its_cause(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    err = _load_error(
        tmp_path,
        """\
        import os
        def app():
            try:
                return os.environ["NO_SUCH_VARIABLE_XYZ"]
            except KeyError as exc:
                raise RuntimeError("no database configured") from exc
        """,
        monkeypatch,
        factory=True,
    )
    text = err.hint or ""
    assert_app_frames_only(text)
    assert "in app\n" in text and "RuntimeError: no database configured" in text, text
    assert text.endswith("(caused by KeyError: 'NO_SUCH_VARIABLE_XYZ')"), text


def test_app_traceback_for_other_callers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a lifespan failure report gets: app frames, not the caller's."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    name = module_name()
    write(
        tmp_path,
        f"{name}.py",
        """\
        def startup():
            raise ConnectionRefusedError("database at 127.0.0.1:5432 refused")
        """,
    )
    module = import_app(f"{name}:startup", str(tmp_path))
    try:
        module()
    except ConnectionRefusedError as exc:
        text = app_traceback(exc, limit=1)
    lines = text.splitlines()  # limit=1: the frame that raised; the test's own frame is left out
    assert len(lines) == 4 and lines[0] == "  ... 1 earlier frame(s)" and "in startup" in lines[1], text
    assert lines[-1] == "ConnectionRefusedError: database at 127.0.0.1:5432 refused", text


def test_run_reports_a_name_error_with_app_frames_only(tmp_path: Path, runtime: Path) -> None:
    write(
        tmp_path,
        "brokenapp.py",
        """\
        def make():
            return FastAPi()

        app = make()
        """,
    )
    out = run_liveswap("run", "brokenapp:app", "--app-dir", str(tmp_path), "--bind", "127.0.0.1:0", runtime=runtime)
    text = out.stdout + out.stderr
    assert out.returncode == 3, text
    assert "Error importing \"brokenapp\": NameError: name 'FastAPi' is not defined" in text, text
    assert re.search(r'File ".*brokenapp\.py", line 2, in make\n\s+return FastAPi\(\)', text), text
    assert "importlib._bootstrap" not in text and "internal error" not in text, text
