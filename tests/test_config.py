"""Options are declared once; the CLI, env, pyproject and docs all derive from that declaration."""

from __future__ import annotations

from pathlib import Path

import pytest

from liveswap.config import OPTIONS, Settings, docs_table, load_settings, parse_duration
from liveswap.errors import BindError, ConfigError
from liveswap.sockets import parse_bind

ROOT = Path(__file__).parent.parent


def test_docs_table_is_current() -> None:
    assert docs_table() in (ROOT / "docs" / "configuration.md").read_text(), "regenerate: python -m liveswap.config"


def test_precedence(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.liveswap]\napp = "a:b"\nworkers = 3\ndrain-timeout = "2s"\n')
    s = load_settings("", {}, environ={}, cwd=tmp_path)
    assert (s.app, s.workers, s.drain_timeout) == ("a:b", 3, 2.0)
    s = load_settings("", {}, environ={"LIVESWAP_WORKERS": "5"}, cwd=tmp_path)
    assert s.workers == 5
    s = load_settings("x:y", {"workers": "7"}, environ={"LIVESWAP_WORKERS": "5"}, cwd=tmp_path)
    assert (s.app, s.workers) == ("x:y", 7)


def test_bad_values_teach(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--workers") as info:
        load_settings("a:b", {"workers": "0"}, environ={}, cwd=tmp_path)
    assert info.value.hint
    with pytest.raises(ConfigError, match="LIVESWAP_BOOT_TIMEOUT"):
        load_settings("a:b", {}, environ={"LIVESWAP_BOOT_TIMEOUT": "soon"}, cwd=tmp_path)
    (tmp_path / "pyproject.toml").write_text("[tool.liveswap]\nworkrs = 2\n")
    with pytest.raises(ConfigError, match="unknown key"):
        load_settings("a:b", {}, environ={}, cwd=tmp_path)
    (tmp_path / "pyproject.toml").unlink()
    with pytest.raises(ConfigError, match="no APP"):
        load_settings("", {}, environ={}, cwd=tmp_path)


def test_durations_and_defaults() -> None:
    assert parse_duration("500ms") == 0.5 and parse_duration("2m") == 120 and parse_duration("3") == 3
    s = Settings.defaults("a:b")
    assert {o.name for o in OPTIONS} <= set(vars(s))
    assert s.bind == ["127.0.0.1:8000"] and s.instance_name() == "a-b"


@pytest.mark.parametrize(
    "text,kind",
    [("127.0.0.1:80", "tcp"), ("[::1]:80", "tcp"), (":80", "tcp"), ("unix:/tmp/x.sock", "unix"), ("fd://3", "fd")],
)
def test_parse_bind(text: str, kind: str) -> None:
    assert parse_bind(text).kind == kind


@pytest.mark.parametrize("text", ["localhost", "::1:80", "1.2.3.4:99999", "fd://x", "unix:", "[::1]"])
def test_parse_bind_errors(text: str) -> None:
    with pytest.raises(BindError) as info:
        parse_bind(text)
    assert info.value.hint


@pytest.mark.parametrize(
    "name,value,expected",
    [
        ("boot_timeout", "0", "more than 0"),
        ("boot_timeout", "0ms", "more than 0"),
        ("drain_timeout", "-1", "negative"),
        ("drain_timeout", "25h", "longer than 24 h"),
        ("idle_grace", "100000", "longer than 24 h"),
        ("keepalive_timeout", "1e3", "not a duration"),
        ("backoff_max", "0", "at least 0.1 s"),
        ("workers", "0", "from 1 to 1024"),
        ("workers", "5000", "from 1 to 1024"),
        ("workers", "2.5", "not a whole number"),
        ("max_connections", "-1", ">= 0"),
        ("max_header_bytes", "10", "from 1024 to 16777216"),
        ("max_header_bytes", str(10**12), "from 1024 to 16777216"),
        ("health_path", "healthz", "must start with '/'"),
        ("health_path", "/a b", "cannot go in a request line"),
        ("health_host", "a\r\nx-evil: 1", "cannot be a Host header"),
        ("name", "a/b", "not a valid instance name"),
        ("name", "x" * 65, "not a valid instance name"),
        ("app_dir", "/no/such/dir/xyz", "does not exist"),
        ("preload", "not-a-module", "not a module name"),
        ("log_level", "loud", "not one of"),
        ("bind", "localhost", "no port"),
    ],
)
def test_nonsense_values_are_refused(tmp_path: Path, name: str, value: str, expected: str) -> None:
    opt = next(o for o in OPTIONS if o.name == name)
    with pytest.raises(ConfigError, match=f"^{opt.env}: ") as info:
        load_settings("a:b", {}, environ={opt.env: value}, cwd=tmp_path)
    assert expected in str(info.value), str(info.value)
    assert info.value.hint


@pytest.mark.parametrize(
    "toml,expected",
    [
        ("boot-timeout = nan", "not a finite duration"),
        ("drain-timeout = inf", "not a finite duration"),
        ("workers = true", "not a whole number"),
        ("workers = 2.5", "not a whole number"),
        ("bind = []", "no address given"),
        ('bind = ["127.0.0.1:9000", "127.0.0.1:9000"]', "given twice"),
        ('preload = ["fastapi", "a"]', "your app's module"),
        ('preload = ["a.models"]', "your app's module"),
    ],
)
def test_nonsense_in_pyproject_is_refused(tmp_path: Path, toml: str, expected: str) -> None:
    (tmp_path / "pyproject.toml").write_text(f"[tool.liveswap]\n{toml}\n")
    with pytest.raises(ConfigError, match=expected) as info:
        load_settings("a:b", {}, environ={}, cwd=tmp_path)
    assert info.value.hint


def test_edge_values_that_make_sense_are_kept(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.liveswap]\nworkers = 4.0\nbind = ["127.0.0.1:0", "127.0.0.1:0"]\n')
    s = load_settings(
        "a:b",
        {
            "drain_timeout": "0",
            "max_connections": "0",
            "keepalive_timeout": "0",
            "header_timeout": "0",
            "idle_grace": "0",
            "log_level": "DEBUG",
            "interface": "ASGI",
            "boot_timeout": "1ms",
            "preload": ["ab", "fastapi"],
        },
        environ={},
        cwd=tmp_path,
    )
    assert (s.drain_timeout, s.max_connections, s.keepalive_timeout, s.header_timeout, s.idle_grace) == (0, 0, 0, 0, 0)
    assert (s.log_level, s.interface, s.boot_timeout, s.workers) == ("debug", "asgi", 0.001, 4)
    assert s.bind == ["127.0.0.1:0", "127.0.0.1:0"] and s.preload == ["ab", "fastapi"]
    assert parse_duration("24h") == 86400 and parse_duration(1.5) == 1.5


def test_derived_instance_names_stay_valid(tmp_path: Path) -> None:
    name = Settings.defaults("a" * 100 + ".b:app").instance_name()
    assert len(name) <= 64 and load_settings("x:y", {"name": name}, environ={}, cwd=tmp_path).name == name
    assert Settings.defaults("myapp.main:app").instance_name() == "myapp.main-app"
