"""Logs that fit: --log-format text|json, --log-config, the access log (--access-log) and process
titles, on a real `liveswap run`: its supervisor, template and workers all log through the same setup."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import APPS, Instance, MakeInstance, wait_until

pytestmark = pytest.mark.timeout(60)

TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z liveswap\[\d+\] (supervisor|template|gen=\d+) [A-Z]+ ")


def log_lines(inst: Instance) -> list[str]:
    return [line for line in inst.output_since(0).splitlines() if line != "<<EOF>>"]


def test_json_lines_parse_one_by_one_with_their_fields(liveswap: MakeInstance) -> None:
    inst = liveswap(args=["--log-format", "json", "--access-log", "--health-path", "/healthz"])
    assert httpx.get(inst.url + "/hello?x=1", headers={"X-Forwarded-For": "203.0.113.9"}, timeout=10).status_code == 200
    inst.write_state("2")
    assert inst.reload().returncode == 0  # a second health check, and the reload's own lines
    assert httpx.get(inst.url + "/again", timeout=10).status_code == 200
    inst.wait_for(r'"path": "/again"')
    records = [json.loads(line) for line in log_lines(inst)]  # every line is one JSON object
    for rec in records:
        assert datetime.fromisoformat(rec["time"]).utcoffset() is not None, rec  # a time zone
        assert rec["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL") and isinstance(rec["pid"], int)
        assert rec["role"] in ("supervisor", "template", "worker") and isinstance(rec["message"], str)
        assert isinstance(rec["generation"], int) if rec["role"] == "worker" else rec["generation"] is None
    roles = {rec["role"] for rec in records}
    assert {"supervisor", "worker"} <= roles
    assert {rec["generation"] for rec in records if rec["role"] == "worker"} >= {1, 2}
    ok = [rec for rec in records if rec.get("event") == "reload_ok"]
    assert len(ok) == 1 and ok[0]["new_generation"] == 2 and ok[0]["duration_ms"] > 0
    access = [rec for rec in records if rec["logger"] == "liveswap.access"]
    assert [(a["method"], a["path"], a["query"], a["status"], a["generation"]) for a in access] == [
        ("GET", "/hello", "x=1", 200, 1),
        ("GET", "/again", "", 200, 2),
    ], access  # the two health checks (GET /healthz) are not there
    assert access[0]["client"] == "203.0.113.9:0"  # after --proxy-headers (on by default)
    assert re.fullmatch(r"127\.0\.0\.1:\d+", access[1]["client"])
    assert all(isinstance(a["duration_ms"], float) and 0 < a["duration_ms"] < 5000 for a in access)


def test_text_lines_keep_their_format_and_the_access_line(liveswap: MakeInstance) -> None:
    inst = liveswap(args=["--access-log"])  # the health check is GET /, like the request below
    assert httpx.get(inst.url + "/", timeout=10).status_code == 200
    line = inst.wait_for(r'"GET / HTTP/1\.1" 200').string
    assert TEXT_LINE.match(line) and " gen=1 INFO " in line, line
    assert re.search(r' 127\.0\.0\.1:\d+ - "GET / HTTP/1\.1" 200 \d+\.\d\dms$', line), line
    lines = log_lines(inst)
    assert all(TEXT_LINE.match(x) for x in lines), lines
    assert sum('"GET / HTTP/1.1"' in x for x in lines) == 1  # ours, not the health check


def test_no_access_log_by_default(liveswap: MakeInstance) -> None:
    inst = liveswap()
    assert httpx.get(inst.url + "/nolog", timeout=10).status_code == 200
    inst.reload()  # a line logged after the request was answered
    assert not any("/nolog" in x for x in log_lines(inst))


def _config(path: Path, out: Path) -> None:
    if path.suffix == ".json":
        path.write_text(
            json.dumps(
                {
                    "version": 1,
                    "formatters": {
                        "plain": {"format": "%(role)s|%(generation)s|%(tag)s|%(name)s|%(message)s"},
                        "ours": {"()": "liveswap._log.TextFormatter"},
                    },
                    "handlers": {
                        "file": {"class": "logging.FileHandler", "filename": str(out), "formatter": "plain"},
                        "console": {"class": "logging.StreamHandler", "formatter": "ours"},
                    },
                    "loggers": {"liveswap": {"handlers": ["file", "console"], "level": "INFO", "propagate": False}},
                }
            )
        )
    else:
        path.write_text(
            "[loggers]\nkeys=root,liveswap\n\n[handlers]\nkeys=file,console\n\n[formatters]\nkeys=plain,ours\n\n"
            "[logger_root]\nhandlers=\n\n"
            "[logger_liveswap]\nhandlers=file,console\nlevel=INFO\nqualname=liveswap\npropagate=0\n\n"
            f"[handler_file]\nclass=FileHandler\nformatter=plain\nargs=({str(out)!r},)\n\n"
            "[handler_console]\nclass=StreamHandler\nformatter=ours\nargs=()\n\n"
            "[formatter_plain]\nformat=%(role)s|%(generation)s|%(tag)s|%(name)s|%(message)s\n\n"
            "[formatter_ours]\nclass=liveswap._log.TextFormatter\n"
        )


@pytest.mark.parametrize("suffix", [".json", ".ini"])
def test_log_config_file_is_applied_in_every_process(liveswap: MakeInstance, tmp_path: Path, suffix: str) -> None:
    config, out = tmp_path / f"logging{suffix}", tmp_path / "liveswap.log"
    _config(config, out)
    inst = liveswap(app="scope_echo:app", args=["--log-config", str(config)])
    assert httpx.get(inst.url + "/log", timeout=10).status_code == 200  # the app logs on liveswap.app
    wait_until(lambda: "asked to log" in out.read_text(), 10, "the app's line in the log file")
    text = out.read_text()
    assert re.search(r"^supervisor\|None\|supervisor\|liveswap\.supervisor\|serving scope_echo:app on ", text, re.M)
    assert re.search(r"^worker\|1\|gen=1\|liveswap\.worker\|ready in ", text, re.M), text
    assert re.search(r"^worker\|1\|gen=1\|liveswap\.app\|asked to log$", text, re.M), text


def test_log_config_that_logging_refuses_is_a_usage_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"version": 1, "handlers": {"h": {"class": "no.such.Handler"}}}))
    missing = tmp_path / "missing.yaml"
    for path, message in ((bad, "--log-config " + str(bad)), (missing, "does not exist")):
        out = subprocess.run(
            [sys.executable, "-m", "liveswap", "run", "scope_echo:app", "--app-dir", str(APPS), "--log-config", path],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 2 and message in out.stderr and "hint:" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def test_process_titles_name_each_role(liveswap: MakeInstance) -> None:
    inst = liveswap(args=["--workers", "2"])
    assert inst.proc is not None
    assert _cmdline(inst.proc.pid) == f"liveswap: supervisor versioned:app ({inst.name})"
    assert {_cmdline(pid) for pid in inst.worker_pids()} == {"liveswap: worker gen 1 versioned:app"}
    inst.write_state("2")
    assert inst.reload().returncode == 0
    assert {_cmdline(pid) for pid in inst.worker_pids()} == {"liveswap: worker gen 2 versioned:app"}

    def titles() -> list[Any]:
        found = []
        for pid in _children(inst.proc.pid):  # type: ignore[union-attr]
            try:
                found.append(_cmdline(pid))
            except OSError:
                pass
        return found

    # The template and its spares (forked again after the reload took two) are the supervisor's too.
    wait_until(
        lambda: (
            titles().count("liveswap: template versioned:app") == 1
            and titles().count("liveswap: spare versioned:app") == 2
        ),
        10,
        "a template and two spares with their titles",
    )


def test_proxy_mode_access_line_has_the_duration_and_no_health_check(liveswap: MakeInstance) -> None:
    command = [sys.executable, str(APPS / "port_server.py")]
    args = ["--proxy", "--bind", "127.0.0.1:0", "--access-log", "--log-format", "json", "--", *command]
    inst = liveswap(app="", args=args)
    assert httpx.get(inst.url + "/slow?s=0.2", timeout=10).status_code == 200
    rec = json.loads(inst.wait_for(r'"logger": "liveswap.access"').string)
    assert (rec["method"], rec["path"], rec["query"], rec["status"]) == ("GET", "/slow", "s=0.2", 200)
    assert 200 <= rec["duration_ms"] < 5000 and rec["client"] == "127.0.0.1" and rec["role"] == "supervisor"
    assert sum('"logger": "liveswap.access"' in x for x in log_lines(inst)) == 1  # not the health check of GET /
