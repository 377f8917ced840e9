"""liveswap.dev.watch: which files the app depends on, and which saves change them.

Real files, real inotify (and the watchfiles fallback, forced on). No sleeps: every wait is on the
watcher's output under a deadline. That something does NOT trigger is shown by writing it, then
writing a watched sentinel: inotify and watchfiles keep the order of events, so a wrong report would
come in the sentinel's batch or before it, and the first batch must be the sentinel alone.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from liveswap.dev.watch import Watcher, _glob, invalidate_bytecode, project_files

pytestmark = pytest.mark.timeout(30)

DEADLINE = 10.0
BACKENDS = ["inotify", "watchfiles"] if sys.platform.startswith("linux") else ["watchfiles"]


def write(path: Path, text: str) -> Path:
    """A plain save: truncate and write in place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return path


def atomic_write(path: Path, text: str) -> Path:
    """An editor's atomic save: a temp file in the same directory, renamed over the target."""
    tmp = path.with_name(f".{path.name}.swp")
    write(tmp, text)
    os.replace(tmp, path)
    return path


def project(root: Path) -> dict[str, Path]:
    """A small project with an app, a subpackage, an unimported module, a text file and a venv."""
    files = {
        "app": write(root / "app.py", "import pkg.sub.mod\nVERSION = 1\n"),
        "sentinel": write(root / "sentinel.py", "N = 0\n"),
        "pkg": write(root / "pkg" / "__init__.py", ""),
        "sub": write(root / "pkg" / "sub" / "__init__.py", ""),
        "mod": write(root / "pkg" / "sub" / "mod.py", "X = 1\n"),
        "unimported": write(root / "pkg" / "unused.py", "Y = 1\n"),
        "txt": write(root / "notes.txt", "hello\n"),
        "venv_lib": write(root / ".venv" / "lib" / "python3.11" / "site-packages" / "lib.py", "Z = 1\n"),
        "venv_html": write(root / ".venv" / "lib" / "python3.11" / "site-packages" / "t.html", "<p>\n"),
        "page": write(root / "templates" / "a" / "page.html", "<p>1</p>\n"),
    }
    write(root / ".venv" / "pyvenv.cfg", "home = /usr\n")
    return files


def modules(*paths: Path) -> dict[str, ModuleType]:
    """A stand-in for sys.modules: one module per path, plus real stdlib ones."""
    mods: dict[str, ModuleType] = {"os": os, "asyncio": asyncio}
    for i, p in enumerate(paths):
        mod = ModuleType(f"m{i}")
        mod.__file__ = str(p)
        mods[mod.__name__] = mod
    return mods


@asynccontextmanager
async def watching(
    root: Path, backend: str, files: set[Path], globs: Sequence[str] = (), ignore: Sequence[str] = ()
) -> AsyncIterator[Watcher]:
    async with Watcher(root, backend="inotify" if backend == "inotify" else "watchfiles") as watcher:
        watcher.set_files(files, globs, ignore)
        yield watcher


async def batch(watcher: Watcher) -> set[Path]:
    return await asyncio.wait_for(watcher.next_batch(), DEADLINE)


async def only_sentinel(watcher: Watcher, sentinel: Path) -> None:
    """Save the sentinel: the first batch must hold it alone (nothing written before it was reported)."""
    write(sentinel, f"N = {sentinel.read_text()!r}\n")
    assert await batch(watcher) == {sentinel}


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 25))


# ---- which files -----------------------------------------------------------------------------------
def test_project_files_keeps_the_projects_sources_only(tmp_path: Path) -> None:
    f = project(tmp_path)
    other_env = write(tmp_path / "env2" / "lib" / "thing.py", "")
    write(tmp_path / "env2" / "pyvenv.cfg", "")
    (tmp_path / "link.py").symlink_to(f["mod"])
    pyc = tmp_path / "pkg" / "__pycache__" / f"__init__.{sys.implementation.cache_tag}.pyc"
    outside = write(tmp_path.parent / f"{tmp_path.name}-outside.py", "")
    imported = [f["app"], f["pkg"], f["sub"], f["mod"], f["venv_lib"], other_env, tmp_path / "link.py", pyc, outside]
    expected = {f["app"], f["pkg"], f["sub"], f["mod"]}
    assert project_files(modules(*imported), tmp_path) == expected
    assert project_files([str(p) for p in imported] + ["app.py", os.__file__], tmp_path) == expected


def test_project_files_of_this_process() -> None:
    repo = Path(__file__).resolve().parent.parent
    found = project_files(sys.modules, repo)
    assert repo / "src" / "liveswap" / "dev" / "watch.py" in found
    assert Path(__file__).resolve() in found
    assert not [p for p in found if ".venv" in p.parts or "site-packages" in p.parts]


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("templates/**/*.html", "templates/a/b/page.html", True),
        ("templates/**/*.html", "templates/page.html", True),
        ("templates/**/*.html", "other/templates/page.html", False),
        ("templates/*.html", "templates/a/page.html", False),
        ("*.html", "deep/down/page.html", True),
        ("/.env", ".env", True),
        ("/.env", "sub/.env", False),
        (".env", "sub/.env", True),
        ("static/", "static/css/site.css", True),
        ("static/**", "static/css/site.css", True),
        ("conf/app?.toml", "conf/app1.toml", True),
        ("conf/app?.toml", "conf/app10.toml", False),
        ("a.b", "aXb", False),
    ],
)
def test_glob_rules(pattern: str, path: str, expected: bool) -> None:
    regex, _, _ = _glob(pattern)
    assert bool(regex.match(path)) is expected


# ---- which saves -----------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_save_of_a_watched_module_is_reported(tmp_path: Path, backend: str) -> None:
    f = project(tmp_path)

    async def scenario() -> None:
        async with watching(tmp_path, backend, {f["app"], f["mod"]}) as w:
            write(f["app"], "VERSION = 2\n")
            assert await batch(w) == {f["app"]}
            atomic_write(f["app"], "VERSION = 3\n")
            assert await batch(w) == {f["app"]}
            atomic_write(f["mod"], "X = 2\n")  # a module in a subpackage
            assert await batch(w) == {f["mod"]}

    run(scenario)


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_content_or_touch_is_not_reported(tmp_path: Path, backend: str) -> None:
    f = project(tmp_path)

    async def scenario() -> None:
        async with watching(tmp_path, backend, {f["app"], f["mod"], f["sentinel"]}) as w:
            write(f["app"], f["app"].read_text())
            atomic_write(f["mod"], f["mod"].read_text())
            os.utime(f["app"])
            await only_sentinel(w, f["sentinel"])

    run(scenario)


@pytest.mark.parametrize("backend", BACKENDS)
def test_unimported_py_txt_and_venv_files_are_not_reported(tmp_path: Path, backend: str) -> None:
    f = project(tmp_path)
    imported = project_files(modules(f["app"], f["mod"], f["sentinel"], f["venv_lib"]), tmp_path)

    async def scenario() -> None:
        async with watching(tmp_path, backend, imported, globs=["**/*.html"]) as w:
            write(f["unimported"], "Y = 2\n")
            write(f["txt"], "changed\n")
            write(f["venv_lib"], "Z = 2\n")
            write(f["venv_html"], "<p>2\n")
            write(tmp_path / "new_module.py", "")
            await only_sentinel(w, f["sentinel"])

    run(scenario)


@pytest.mark.parametrize("backend", BACKENDS)
def test_watch_glob_reports_matching_files_also_in_new_directories(tmp_path: Path, backend: str) -> None:
    f = project(tmp_path)
    env = write(tmp_path / ".env", "A=1\n")

    async def scenario() -> None:
        async with watching(tmp_path, backend, {f["app"]}, globs=["templates/**/*.html", "/.env"]) as w:
            write(f["page"], "<p>2</p>\n")
            assert await batch(w) == {f["page"]}
            atomic_write(env, "A=2\n")
            assert await batch(w) == {env}
            new = write(tmp_path / "templates" / "b" / "c" / "new.html", "<p>new</p>\n")
            assert await batch(w) == {new}

    run(scenario)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ignore_wins_over_watch(tmp_path: Path, backend: str) -> None:
    f = project(tmp_path)
    cached = write(tmp_path / "templates" / "cache" / "x.html", "1\n")
    ignored_module = write(tmp_path / "generated.py", "")

    async def scenario() -> None:
        files = {f["app"], f["sentinel"], ignored_module}
        globs, ignore = ["templates/**"], ["templates/cache/", "*.tmp", "generated.py"]
        async with watching(tmp_path, backend, files, globs, ignore) as w:
            write(cached, "2\n")
            write(tmp_path / "templates" / "a" / "draft.tmp", "x\n")
            write(ignored_module, "G = 1\n")
            await only_sentinel(w, f["sentinel"])
            write(f["page"], "<p>3</p>\n")  # the rest of templates/** is still watched
            assert await batch(w) == {f["page"]}

    run(scenario)


@pytest.mark.parametrize("backend", BACKENDS)
def test_set_files_replaces_the_set(tmp_path: Path, backend: str) -> None:
    f = project(tmp_path)

    async def scenario() -> None:
        async with watching(tmp_path, backend, {f["app"]}) as w:
            w.set_files({f["mod"], f["sentinel"]})
            write(f["app"], "VERSION = 9\n")
            await only_sentinel(w, f["sentinel"])
            write(f["mod"], "X = 9\n")
            assert await batch(w) == {f["mod"]}

    run(scenario)


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_saves_in_the_same_second_with_the_same_size_are_both_reported(tmp_path: Path, backend: str) -> None:
    f = project(tmp_path)

    async def scenario() -> None:
        async with watching(tmp_path, backend, {f["mod"]}) as w:
            write(f["mod"], "X = 2\n")
            assert await batch(w) == {f["mod"]}
            first = f["mod"].stat()
            write(f["mod"], "X = 3\n")
            os.utime(f["mod"], ns=(first.st_mtime_ns, first.st_mtime_ns + 1))  # the same second, surely
            assert await batch(w) == {f["mod"]}
            assert f["mod"].stat().st_size == first.st_size

    run(scenario)


def test_saves_while_the_consumer_is_busy_coalesce(tmp_path: Path) -> None:
    f = project(tmp_path)

    async def scenario() -> None:
        async with watching(tmp_path, "inotify", {f["app"], f["mod"]}) as w:
            write(f["app"], "VERSION = 2\n")
            assert await batch(w) == {f["app"]}
            # The consumer is busy (it does not await the watcher): saves pile up into one batch.
            for i in range(3):
                write(f["app"], f"VERSION = {i + 3}\n")
                atomic_write(f["mod"], f"X = {i + 3}\n")
            changes = w.changes()
            assert await asyncio.wait_for(anext(changes), DEADLINE) == {f["app"], f["mod"]}
            write(f["mod"], "X = 'last'\n")
            assert await asyncio.wait_for(anext(changes), DEADLINE) == {f["mod"]}

    run(scenario)


def test_a_deleted_and_recreated_package_is_watched_again(tmp_path: Path) -> None:
    f = project(tmp_path)

    async def scenario() -> None:
        async with watching(tmp_path, "inotify", {f["mod"], f["sentinel"]}) as w:
            shutil.rmtree(tmp_path / "pkg")
            await only_sentinel(w, f["sentinel"])  # the directory's IN_DELETE_SELF/IN_IGNORED are handled
            write(f["mod"], "X = 'back'\n")
            assert await batch(w) == {f["mod"]}
            write(f["mod"], "X = 'again'\n")
            assert await batch(w) == {f["mod"]}

    run(scenario)


def test_backends(tmp_path: Path) -> None:
    assert Watcher(tmp_path, backend="watchfiles").backend == "watchfiles"
    if sys.platform.startswith("linux"):
        assert Watcher(tmp_path).backend == "inotify"


# ---- bytecode --------------------------------------------------------------------------------------
def test_invalidate_bytecode_makes_a_same_second_same_size_save_visible(tmp_path: Path) -> None:
    mod = write(tmp_path / "samesec.py", "X = 1\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")}

    def child_sees() -> str:
        cmd = [sys.executable, "-c", "import samesec; print(samesec.X)"]
        return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout.strip()

    assert child_sees() == "1"  # and it wrote samesec's .pyc, stamped with the source's mtime and size
    stamp = mod.stat().st_mtime_ns
    # The second save within the same second and with the same size (its mtime is pinned to the same
    # second, as a fast editor or a formatter on save gets): CPython trusts the stale .pyc.
    write(mod, "X = 2\n")
    os.utime(mod, ns=(stamp, stamp + 1))
    assert child_sees() == "1"
    assert [p.name for p in invalidate_bytecode([mod])] == [f"samesec.{sys.implementation.cache_tag}.pyc"]
    assert child_sees() == "2"
    write(mod, "X = 3\n")  # and again: each batch of changes is invalidated before the next import
    os.utime(mod, ns=(stamp, stamp + 2))
    invalidate_bytecode([mod, tmp_path / "notes.txt"])
    assert child_sees() == "3"
