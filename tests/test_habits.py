"""Habits of the ecosystem: -w/-b, --env-file, --max-requests (with jitter), `liveswap status` with
several instances and the name from pyproject.toml, --debug-allow-public, Prometheus metrics with
process_* and without the health checks. Real processes, real sockets."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import APPS, Instance, MakeInstance, wait_until
from loadclient import LoadClient

from liveswap.config import OPTIONS, load_settings
from liveswap.errors import ConfigError

pytestmark = pytest.mark.timeout(90)


def cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "liveswap", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=env,
    )


# ---- -w / -b ------------------------------------------------------------------------------------


def test_short_flags_are_unique_and_documented() -> None:
    shorts = [o.short for o in OPTIONS if o.short]
    assert sorted(shorts) == ["-b", "-w"]
    assert "-h" not in shorts  # taken by --help
    out = cli("run", "--help")
    assert re.search(r"-w, --workers INT", out.stdout), out.stdout
    assert re.search(r"-b, --bind TEXT", out.stdout), out.stdout
    table = (Path(__file__).parents[1] / "docs" / "configuration.md").read_text()
    assert "| `-w`, `--workers` |" in table and "| `-b`, `--bind` |" in table


def test_w_and_b_serve_like_workers_and_bind(liveswap: MakeInstance) -> None:
    # The fixture adds --bind 127.0.0.1:0 too: -b's address is a second one (port 0 twice: two ports).
    inst = liveswap(args=["-w", "2", "-b", "127.0.0.1:0"])
    status = inst.status()
    assert status["workers"] == 2 and len(inst.worker_pids()) == 2
    assert len(status["listening"]) == 2, status["listening"]
    for url in status["listening"]:
        assert httpx.get(url + "/", timeout=10).text == "version=1\n"


# ---- --env-file ---------------------------------------------------------------------------------


def test_env_file_reaches_workers_is_reread_at_reload_and_the_environment_wins(
    liveswap: MakeInstance, tmp_path: Path
) -> None:
    env_file = tmp_path / "app.env"
    env_file.write_text(
        "# settings\nexport GREETING='hello world'  # a comment\nCOUNT=1\nFROM_SHELL=file\nQUOTED=\"a=b # c\"\n"
    )
    inst = liveswap(app="env_echo:app", args=["--env-file", str(env_file)], env={"FROM_SHELL": "shell"})

    def get(name: str) -> str:
        return httpx.get(f"{inst.url}/{name}", timeout=10).text

    assert get("GREETING") == "hello world"
    assert get("COUNT") == "1"
    assert get("QUOTED") == "a=b # c"
    assert get("FROM_SHELL") == "shell"  # liveswap's own environment wins over the file

    env_file.write_text("COUNT=2\n")  # GREETING removed, COUNT changed
    assert inst.reload().returncode == 0
    assert get("COUNT") == "2" and get("GREETING") == "<unset>"

    env_file.unlink()  # a reload that cannot read the file fails and rolls back
    out = inst.reload()
    assert out.returncode == 1, out.stdout + out.stderr
    assert "--env-file" in out.stderr and "cannot read it" in out.stderr, out.stderr
    assert get("COUNT") == "2"  # the previous generation serves on, with its environment


def test_env_file_reaches_a_command_and_is_reread_at_reload(liveswap: MakeInstance, tmp_path: Path) -> None:
    env_file = tmp_path / "cmd.env"
    env_file.write_text("GREETING=one\n")
    command = [sys.executable, str(APPS / "env_port_server.py")]
    inst = liveswap(app="", args=["--proxy", "--env-file", str(env_file), "--", *command])
    assert httpx.get(f"{inst.url}/GREETING", timeout=10).text == "one"
    env_file.write_text("GREETING=two\n")
    assert inst.reload().returncode == 0
    assert httpx.get(f"{inst.url}/GREETING", timeout=10).text == "two"


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "does not exist"), ("OK=1\nthis line is wrong\n", "line 2: 'this line is wrong' is not KEY=VALUE")],
)
def test_env_file_mistakes_are_usage_errors(tmp_path: Path, content: str | None, message: str) -> None:
    env_file = tmp_path / ".env"
    if content is not None:
        env_file.write_text(content)
    out = cli("run", "env_echo:app", "--app-dir", str(APPS), "--env-file", str(env_file))
    assert out.returncode == 2, out.stderr
    assert "liveswap: error: --env-file" in out.stderr and message in out.stderr, out.stderr
    assert "hint:" in out.stderr and "Traceback" not in out.stderr


# ---- --max-requests -----------------------------------------------------------------------------


def test_max_requests_recycles_workers_under_load_without_a_failure(liveswap: MakeInstance) -> None:
    inst = liveswap(args=["-w", "2", "--max-requests", "40", "--max-requests-jitter", "10"])
    first = set(inst.worker_pids())
    lc = LoadClient(host=inst.host, port=inst.port, mode="keepalive", concurrency=4, timeout=15.0)
    lc.start()
    try:
        # Six recycles: each slot replaced at least twice over, with the load on all along.
        wait_until(lambda: inst.status()["recycled"] >= 6, 30, "six workers recycled")
    finally:
        res = lc.stop()
    assert res.failed == 0, res.summary()
    assert len(res.pids) >= 6, res.summary()  # each recycled worker served the load first
    assert len(first & set(inst.worker_pids())) < len(first), "no worker of the first two was replaced"
    asked = re.findall(r"served (\d+) requests \(--max-requests: (\d+) for this worker\)", inst.output())
    assert len(asked) >= 6, inst.output()
    for served, limit in asked:
        assert 40 <= int(limit) <= 50 and int(served) >= int(limit)
    # Jitter: not every worker drew the same limit (11 values each; 6+ draws all equal: < 1e-5).
    assert len({limit for _, limit in asked}) > 1, asked
    status = inst.status()
    assert status["state"] == "serving" and status["restarts"] == 0  # recycling is not crashing
    assert f"recycled (--max-requests): {status['recycled']}" in inst.cli("status", "--name", inst.name).stdout


def test_max_requests_counts_the_native_wsgi_path_too(liveswap: MakeInstance) -> None:
    inst = liveswap(app="wsgi_app:application", args=["--max-requests", "20"])
    first = inst.worker_pids()
    for _ in range(25):  # sequential: the worker asks once it has served 20, then drains after its replacement
        assert httpx.get(inst.url + "/", timeout=10).status_code == 200
    wait_until(lambda: inst.status()["recycled"] >= 1, 10, "the WSGI worker recycled")
    assert inst.worker_pids() != first


def test_max_requests_options_that_make_no_sense_are_refused() -> None:
    with pytest.raises(ConfigError, match="--max-requests-jitter without --max-requests"):
        load_settings("app:app", {"max_requests_jitter": "5"}, environ={})
    with pytest.raises(ConfigError, match="--max-requests is for Python apps"):
        load_settings("", {"max_requests": "100"}, environ={}, command=["gunicorn", "app:app"])
    with pytest.raises(ConfigError, match="out of range"):
        load_settings("app:app", {"max_requests": "-1"}, environ={})
    assert load_settings("app:app", {"max_requests": "100"}, environ={}).max_requests == 100


# ---- liveswap status with several instances, the name from pyproject.toml ------------------------


def _shared(tmp_path: Path, runtime: Path, app: str = "versioned:app") -> Instance:
    inst = Instance(tmp_path, app, [], "1", None)
    inst.env["XDG_RUNTIME_DIR"] = str(runtime)
    return inst


def test_status_lists_every_instance_and_the_project_name_picks_one(tmp_path: Path) -> None:
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    one, two = _shared(tmp_path, runtime), _shared(tmp_path, runtime, "env_echo:app")
    try:
        one.start()
        two.start()
        env = dict(one.env)
        env.pop("LIVESWAP_NAME", None)
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        out = cli("status", cwd=elsewhere, env=env)
        assert out.returncode == 0, out.stderr
        for inst in (one, two):
            line = next(x for x in out.stdout.splitlines() if x.startswith(inst.name))
            pid = str(inst.proc.pid) if inst.proc else "?"
            assert pid in line and inst.app in line and "1/1" in line and "serving" in line, out.stdout
        listed = json.loads(cli("status", "--json", cwd=elsewhere, env=env).stdout)["instances"]
        assert sorted(s["name"] for s in listed) == sorted([one.name, two.name])
        # A command that acts refuses to guess, and names the candidates.
        out = cli("reload", cwd=elsewhere, env=env)
        assert out.returncode == 1 and "several liveswap instances are running" in out.stderr, out.stderr
        assert one.name in out.stderr and two.name in out.stderr and "hint: choose one with --name" in out.stderr

        project = tmp_path / "project"
        project.mkdir()
        (project / "pyproject.toml").write_text(f'[tool.liveswap]\nname = "{two.name}"\n')
        out = cli("status", cwd=project, env=env)
        assert out.returncode == 0 and out.stdout.startswith(f"liveswap {two.name} "), out.stdout
        out = cli("reload", cwd=project, env=env)
        assert out.returncode == 0 and "generation 2 live" in out.stdout, out.stderr
        assert one.status()["generations"][0]["generation"] == 1  # the other one was left alone

        (project / "pyproject.toml").write_text('[tool.liveswap]\napp = "nothing_runs:app"\n')
        out = cli("status", cwd=project, env=env)
        assert out.returncode == 1, out.stdout
        assert "no liveswap instance named 'nothing_runs-app' is running (derived from app" in out.stderr
        assert f"running instances: {', '.join(sorted([one.name, two.name]))}" in out.stderr
    finally:
        one.kill_group()
        two.kill_group()


# ---- --debug-allow-public, Prometheus metrics -----------------------------------------------------


def _families(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """The exposition text through prometheus_client's parser (strict about the format)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def test_debug_allow_public_needs_a_token(tmp_path: Path) -> None:
    out = cli("run", "versioned:app", "--app-dir", str(APPS), "--debug-bind", "0.0.0.0:0", "--debug-allow-public")
    assert out.returncode == 2, out.stderr
    assert "--debug-allow-public needs --debug-token" in out.stderr and "hint:" in out.stderr


def test_public_debug_port_serves_prometheus_metrics_without_health_checks(liveswap: MakeInstance) -> None:
    inst = liveswap(
        args=["-w", "2", "--debug-bind", "0.0.0.0:0", "--debug-allow-public", "--debug-token", "t0ken"],
    )
    port = inst.wait_for(r"debug server on http://0\.0\.0\.0:(\d+)/").group(1)
    url = f"http://127.0.0.1:{port}/metrics"
    assert httpx.get(url, timeout=10).status_code == 401  # public, so the token is required
    auth = {"Authorization": "Bearer t0ken"}
    n = 7
    for _ in range(n):
        assert httpx.get(inst.url + "/", timeout=10).status_code == 200

    def requests(m: dict[str, list[tuple[dict[str, str], float]]]) -> float:
        return sum(v for _, v in m.get("liveswap_http_requests_total", []))

    # Scraped before the reload: the hub keeps what exited workers counted at their last scrape.
    assert requests(_families(httpx.get(url, headers=auth, timeout=10).text)) == n
    inst.write_state("2")
    assert inst.reload().returncode == 0  # two more health checks: still not counted
    r = httpx.get(url, headers=auth, timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    m = _families(r.text)
    assert requests(m) == n
    assert m["liveswap_worker_recycles_total"] == [({}, 0.0)]
    # Prometheus naming: counters end in _total, units in the names.
    counters = [name for name in m if name.endswith("_total")]
    assert {"liveswap_reloads_total", "liveswap_worker_restarts_total", "process_cpu_seconds_total"} <= set(counters)
    workers = {str(pid) for pid in inst.worker_pids()}
    sup_pid = str(inst.status()["pid"])
    for name in (
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ):
        by_role = {(labels["role"], labels["pid"]): value for labels, value in m[name]}
        assert ("supervisor", sup_pid) in by_role, (name, by_role)
        assert workers <= {pid for role, pid in by_role if role == "worker"}, (name, by_role, workers)
        # (a worker forked a moment ago may not have used a clock tick of CPU yet)
        assert all(value > 0 or name == "process_cpu_seconds_total" for value in by_role.values()), (name, by_role)
    assert {labels["pid"]: v for labels, v in m["process_cpu_seconds_total"]}[sup_pid] > 0
    rss = {labels["pid"]: v for labels, v in m["process_resident_memory_bytes"]}
    assert all(5 << 20 < v < 2 << 30 for v in rss.values()), rss  # a Python process: MBs, not bytes or TBs
    with open(f"/proc/{sup_pid}/limits") as f:
        limit = next(line.split()[3] for line in f if line.startswith("Max open files"))
    assert {labels["pid"]: v for labels, v in m["process_max_fds"]}[sup_pid] == float(limit)
    os.kill(int(sup_pid), 0)  # (still there: the figures were of live processes)
