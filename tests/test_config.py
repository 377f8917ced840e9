"""Options are declared once; the CLI, env, pyproject and docs all derive from that declaration."""

from __future__ import annotations

from pathlib import Path

import pytest

import liveswap
from liveswap.config import OPTIONS, Settings, docs_table, load_settings, parse_duration
from liveswap.errors import BindError, ConfigError
from liveswap.sockets import parse_bind

ROOT = Path(__file__).parent.parent


def test_docs_table_is_current() -> None:
    assert docs_table() in (ROOT / "docs" / "configuration.md").read_text(), "regenerate: python -m liveswap.config"


def test_public_api() -> None:
    assert sorted(liveswap.__all__) == sorted(
        ["AppLoadError", "BindError", "ConfigError", "ControlError", "Group", "LiveswapError", "NoInstanceError",
         "ReloadFailed", "__version__", "serve"])
    for name in liveswap.__all__:
        assert hasattr(liveswap, name)


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
    (tmp_path / "pyproject.toml").write_text('[tool.liveswap]\nworkrs = 2\n')
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


@pytest.mark.parametrize("text,kind", [("127.0.0.1:80", "tcp"), ("[::1]:80", "tcp"), (":80", "tcp"),
                                       ("unix:/tmp/x.sock", "unix"), ("fd://3", "fd")])
def test_parse_bind(text: str, kind: str) -> None:
    assert parse_bind(text).kind == kind


@pytest.mark.parametrize("text", ["localhost", "::1:80", "1.2.3.4:99999", "fd://x", "unix:", "[::1]"])
def test_parse_bind_errors(text: str) -> None:
    with pytest.raises(BindError) as info:
        parse_bind(text)
    assert info.value.hint
