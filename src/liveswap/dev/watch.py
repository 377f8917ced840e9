"""File watching for ``liveswap dev``: which files the app really depends on, and when their content changes.

    files = project_files(sys.modules, Path.cwd())        # in the worker; or a list of paths it sent
    async with Watcher(Path.cwd()) as watcher:
        watcher.set_files(files, globs=["templates/**/*.html"], ignore=["*.tmp"])
        async for changed in watcher.changes():             # a set of paths whose content changed
            invalidate_bytecode(changed)
            ...                                             # reload; set_files() again once healthy

On Linux the directories of those files are watched with inotify(7) directly (a save is seen within a
millisecond; watchfiles' defaults wait 75-80 ms); elsewhere watchfiles, with a short step.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import hashlib
import importlib.util
import logging
import os
import re
import stat
import struct
import sys
import sysconfig
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Literal

__all__ = ["Backend", "Watcher", "invalidate_bytecode", "project_files"]

log = logging.getLogger("liveswap.dev")

# inotify(7) constants (linux/inotify.h); IN_NONBLOCK and IN_CLOEXEC are O_NONBLOCK and O_CLOEXEC.
IN_CLOSE_WRITE, IN_MOVED_TO, IN_CREATE = 0x8, 0x80, 0x100
IN_DELETE_SELF, IN_MOVE_SELF, IN_UNMOUNT, IN_Q_OVERFLOW, IN_IGNORED = 0x400, 0x800, 0x2000, 0x4000, 0x8000
IN_ONLYDIR, IN_ISDIR = 0x01000000, 0x40000000
# IN_CREATE only for new directories: a new file is read at its IN_CLOSE_WRITE, once it is complete.
_MASK = IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
_GONE = IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name

_ENV_NAMES = {".venv", "venv", "site-packages", "dist-packages"}
# Never walked for --watch globs: tools' caches and other people's code.
_PRUNE = _ENV_NAMES | {".git", ".hg", ".svn", "__pycache__", "node_modules", ".tox", ".nox", ".mypy_cache"}
Backend = Literal["auto", "inotify", "watchfiles"]
_Run = tuple[asyncio.Task[None], asyncio.Event]  # a watchfiles task and the event that stops it


def project_files(modules: Mapping[str, ModuleType | None] | Iterable[str], project_root: Path) -> set[Path]:
    """The project's own source files among ``modules``: a ``sys.modules`` snapshot, or module file paths.

    Kept: real ``.py`` files (symlinks resolved, relative paths taken from ``project_root``) under
    ``project_root``, but none in site-packages or dist-packages, a virtualenv (a directory with
    ``pyvenv.cfg``, ``.venv``, ``venv``), ``sys.prefix``/``sys.base_prefix`` or the stdlib.
    """
    root = Path(project_root).resolve()
    names = ("stdlib", "platstdlib", "purelib", "platlib")
    python = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *map(sysconfig.get_path, names)}
    python |= {os.path.realpath(d) for d in python if d}
    # The interpreter's directories ("dir/", to compare strings: fast), but not one the project is in.
    skip = tuple(os.path.join(d, "") for d in python if d and not root.is_relative_to(d))
    found: set[Path] = set()
    raws = [getattr(m, "__file__", None) for m in list(modules.values())] if isinstance(modules, Mapping) else modules
    for raw in (r for r in raws if isinstance(r, str)):  # not: a namespace package, a built-in module
        if raw.endswith(".pyc"):
            try:
                raw = importlib.util.source_from_cache(raw)
            except ValueError:  # a sourceless .pyc, not in __pycache__
                continue
        # Most modules are the interpreter's or the virtualenv's: dropped before the costly resolve().
        if not raw.endswith(".py") or os.path.join(root, raw).startswith(skip):
            continue
        path = (root / raw).resolve()
        if not path.is_relative_to(root) or path in found or not path.is_file() or str(path).startswith(skip):
            continue
        if not any(_is_env(root / d) for d in path.relative_to(root).parents if d != Path(".")):
            found.add(path)
    return found


def _is_env(d: Path) -> bool:
    return d.name in _ENV_NAMES or (d / "pyvenv.cfg").is_file()


def invalidate_bytecode(paths: Iterable[Path]) -> list[Path]:
    """Remove the cached bytecode of each ``.py`` in ``paths``, so that the next import reads the source.

    CPython trusts a ``.pyc`` whose recorded source mtime (whole seconds) and size match, so a second save
    in the same second with the same size is missed (https://github.com/python/cpython/issues/75953).
    Call it with each batch of changes before the workers that import them start; returns what it removed.
    """
    removed: list[Path] = []
    for path in (p for p in paths if p.suffix == ".py"):
        for opt in ("", 1, 2):
            cached = Path(importlib.util.cache_from_source(str(path), optimization=opt))
            with contextlib.suppress(FileNotFoundError):
                cached.unlink()
                removed.append(cached)
    return removed


def _glob(pattern: str) -> tuple[re.Pattern[str], str, bool]:
    """A gitignore-style glob (``*``, ``?``, ``**``): its regex over root-relative POSIX paths, its literal
    base directory, and whether it can match below the base's children. Without a "/" it matches a name
    at any depth; with one it is anchored at the root; a trailing "/" means everything below."""
    pattern = pattern.strip() + ("**" if pattern.strip().endswith("/") else "")
    if "/" not in pattern:
        pattern = "**/" + pattern
    parts = [p for p in pattern.split("/") if p not in ("", ".")]
    regex, base = "", list[str]()
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            regex += ".*" if last else "(?:.*/)?"
        else:
            regex += re.escape(part).replace(r"\*", "[^/]*").replace(r"\?", "[^/]") + ("" if last else "/")
        if len(base) == i and not last and not any(c in part for c in "*?"):
            base.append(part)
    rest = parts[len(base) :]  # below the base: one name, or more (a walk)
    return re.compile(regex + r"\Z"), "/".join(base), len(rest) > 1 or "**" in rest


def _scan(dirs: Iterable[Path]) -> set[Path]:
    found: set[Path] = set()
    for d in dirs:
        with contextlib.suppress(OSError), os.scandir(d) as entries:
            found.update(Path(e.path) for e in entries if e.is_file())
    return found


def _digest(path: Path) -> bytes | None:
    """A hash of the content; None if the file is gone (a later event says what came) or is not a regular
    file (reading a FIFO would block the loop: it is opened non-blocking, then checked)."""
    try:
        with open(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb") as f:
            regular = stat.S_ISREG(os.fstat(f.fileno()).st_mode)
            return hashlib.blake2b(f.read(), digest_size=16).digest() if regular else None
    except OSError:
        return None


class _Inotify:
    """inotify(7) through ctypes: one non-blocking fd, one watch per directory."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self._add, self._rm = libc.inotify_add_watch, libc.inotify_rm_watch
        self._add.argtypes, self._rm.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32], [ctypes.c_int] * 2
        self.fd: int = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1: " + os.strerror(ctypes.get_errno()))
        self.dirs: dict[int, Path] = {}

    def add(self, d: Path) -> bool:
        if (wd := self._add(self.fd, os.fsencode(d), _MASK)) >= 0:
            self.dirs[wd] = d
            return True
        if (code := ctypes.get_errno()) not in (errno.ENOENT, errno.ENOTDIR):  # gone: watched from its parent
            hint = "; hint: raise the sysctl fs.inotify.max_user_watches" if code == errno.ENOSPC else ""
            log.warning("cannot watch %s: %s%s", d, os.strerror(code), hint)
        return False

    def remove(self, wd: int) -> None:
        if self.dirs.pop(wd, None) is not None:
            self._rm(self.fd, wd)  # EINVAL when the kernel already dropped it (directory deleted): fine

    def read(self) -> Iterator[tuple[int, int, str]]:
        """Every event queued (wd, mask, name), until the non-blocking fd has none left."""
        with contextlib.suppress(BlockingIOError):
            while buf := os.read(self.fd, 65536):
                offset = 0
                while offset < len(buf):
                    wd, mask, _cookie, size = _EVENT.unpack_from(buf, offset)
                    start, offset = offset + _EVENT.size, offset + _EVENT.size + size
                    yield wd, mask, os.fsdecode(buf[start:offset].rstrip(b"\0"))


class Watcher:
    """Reports the watched files whose content changed, in batches, the first change at once.

    ``set_files`` says what to watch (again whenever the app's imports change); ``changes()`` (or
    ``next_batch()``) gives sets of changed paths; changes seen while the consumer is busy coalesce into
    its next batch. ``backend``: ``"auto"`` (inotify on Linux, else watchfiles), or either one.
    """

    def __init__(self, root: Path, *, backend: Backend = "auto", step_ms: int = 5) -> None:
        self.root = Path(root).resolve()
        self.step_ms = step_ms
        self._ino: _Inotify | None = None
        if backend == "inotify" or (backend == "auto" and sys.platform.startswith("linux")):
            try:
                self._ino = _Inotify()
            except (OSError, AttributeError) as e:
                if backend == "inotify":
                    raise
                log.warning("inotify unavailable (%s); watching with watchfiles", e)
        self.backend = "inotify" if self._ino else "watchfiles"
        self._files: frozenset[Path] = frozenset()
        self._globs: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
        self._watch_re: list[re.Pattern[str]] = []
        self._ignore_re: list[re.Pattern[str]] = []
        self._bases: list[tuple[Path, bool]] = []  # where the globs can match, and whether below its children
        self._glob_dirs: set[Path] = set()
        self._targets: set[Path] = set()  # what the watchfiles fallback watches
        self._known: dict[Path, bytes | None] = {}  # the content digest of each watched file: the baseline
        self._pending: set[Path] = set()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runs: list[_Run] = []
        self._error: BaseException | None = None

    # ---- what is watched --------------------------------------------------------------------------
    def set_files(self, files: Iterable[Path], globs: Sequence[str] = (), ignore: Sequence[str] = ()) -> None:
        """Watch ``files`` (the app's project files) and files matching ``globs``, minus ``ignore``.

        Globs are gitignore-style, relative to ``root``: ``templates/**/*.html``, ``/.env`` (the root's),
        ``*.toml`` (any depth); ``ignore`` wins. Files already watched keep their baseline; new ones are hashed.
        """
        new_globs = (tuple(globs), tuple(ignore)) != self._globs
        if new_globs:
            self._globs = (tuple(globs), tuple(ignore))
            compiled = [_glob(g) for g in globs]
            self._watch_re = [regex for regex, _, _ in compiled]
            self._bases = [(self.root / base, recursive) for _, base, recursive in compiled]
            self._ignore_re = [_glob(g)[0] for g in ignore]
        self._files = frozenset(f for f in (Path(p).resolve() for p in files) if not self._match(self._ignore_re, f))
        glob_files = self._walk_globs() if new_globs else set()  # set_files follows every reload: walk less
        known = {f: digest for f, digest in self._known.items() if self._wanted(f)}
        self._known = known | {f: _digest(f) for f in self._files | glob_files if f not in known}
        # Baselines first, then the watches, then a second look: a save in between is not missed.
        self._process(_scan(self._sync()))

    def _match(self, regexes: list[re.Pattern[str]], path: Path) -> bool:
        """Whether a glob matches ``path`` or one of its directories (gitignore's rule)."""
        if not regexes or not path.is_relative_to(self.root):
            return False
        parts = path.relative_to(self.root).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        return any(r.match(c) for r in regexes for c in prefixes + [p + "/" for p in prefixes[:-1]])

    def _wanted(self, path: Path) -> bool:
        return path in self._files or (self._match(self._watch_re, path) and not self._match(self._ignore_re, path))

    def _walk_globs(self) -> set[Path]:
        """The directories the globs need (into self._glob_dirs), and the files they match now."""
        self._glob_dirs, matched = {base for base, _ in self._bases}, set[Path]()  # even before they exist
        for base, recursive in self._bases:
            for current, subdirs, names in os.walk(base):
                here = Path(current)
                keep = (s for s in subdirs if recursive and s not in _PRUNE and not _is_env(here / s))
                subdirs[:] = [s for s in keep if not self._match(self._ignore_re, here / s)]
                self._glob_dirs.add(here)
                matched.update(p for p in (here / n for n in names) if self._wanted(p))
        return matched

    def _sync(self) -> set[Path]:
        """Watch the directories wanted now (a missing one: its nearest existing ancestor, to see it come
        back); return those newly watched, whose files must be checked (a save may precede the watch)."""
        targets = set()
        for d in {f.parent for f in self._files} | self._glob_dirs:
            while not d.is_dir() and d != d.parent:
                d = d.parent
            targets.add(d)
        if self._ino is None:
            if targets != self._targets and self._loop is not None:
                self._start_watchfiles(targets, targets - self._targets)
            self._targets = targets
            return set()  # the new watchfiles task checks the new directories once it watches them
        current = {d: wd for wd, d in self._ino.dirs.items()}
        for d in current.keys() - targets:
            self._ino.remove(current[d])
        return {d for d in targets - current.keys() if self._ino.add(d)}

    # ---- events -----------------------------------------------------------------------------------
    def _process(self, paths: set[Path], resync: bool = False, rescan: bool = False) -> None:
        if resync:
            self._walk_globs()
            paths |= _scan(self._sync())
        if rescan:
            paths |= self._known.keys() | _scan(self._ino.dirs.values() if self._ino else self._targets)
        changed = set()
        for path in paths:
            if self._wanted(path) and (digest := _digest(path)) is not None and self._known.get(path) != digest:
                self._known[path] = digest
                changed.add(path)
        if changed:
            self._pending |= changed
            self._wake.set()

    def _on_inotify(self, ino: _Inotify) -> None:
        paths: set[Path] = set()
        resync = rescan = False
        for wd, mask, name in ino.read():
            d = ino.dirs.get(wd)
            if mask & IN_Q_OVERFLOW:
                log.warning("inotify queue overflowed; checking every watched file")
                rescan = True
            elif d is None:
                continue  # a watch already removed
            elif mask & _GONE:  # the directory was deleted, moved or unmounted: watch what is there now
                ino.remove(wd)
                resync = True
            elif mask & IN_ISDIR:
                resync = resync or name not in _PRUNE
            elif mask & (IN_CLOSE_WRITE | IN_MOVED_TO):
                paths.add(d / name)
        self._process(paths, resync, rescan)

    def _start_watchfiles(self, dirs: set[Path], fresh: set[Path]) -> None:
        if not dirs:
            return _stop(list(self._runs))
        stop = asyncio.Event()
        run = (asyncio.create_task(self._watchfiles(dirs, fresh, list(self._runs), stop)), stop)
        self._runs.append(run)
        run[0].add_done_callback(lambda task: self._run_done(run))

    async def _watchfiles(self, dirs: set[Path], fresh: set[Path], old: list[_Run], stop: asyncio.Event) -> None:
        from watchfiles import Change, awatch  # only off Linux, or when asked: the supervisor stays small

        # This step of the task runs awatch up to its first wait, so its watcher exists when the callback
        # runs: only then is the previous one stopped, and are new directories checked for earlier saves.
        asyncio.get_running_loop().call_soon(self._handover, old, fresh)
        changes = awatch(*dirs, watch_filter=None, step=self.step_ms, debounce=50, stop_event=stop, recursive=False)
        try:
            async for batch in changes:
                paths, resync = set(), False
                for change, name in batch:
                    if change == Change.deleted:  # a watched directory gone
                        resync = resync or Path(name) in self._targets
                    elif change == Change.added and Path(name).is_dir():
                        resync = resync or Path(name).name not in _PRUNE
                    else:
                        paths.add(Path(name))
                self._process(paths, resync)
        finally:
            stop.set()

    def _handover(self, old: list[_Run], fresh: set[Path]) -> None:
        _stop(old)
        self._process(_scan(fresh))

    def _run_done(self, run: _Run) -> None:
        self._runs.remove(run)
        if not run[0].cancelled() and (error := run[0].exception()) is not None:
            self._error = error
            self._wake.set()

    # ---- the consumer's side ----------------------------------------------------------------------
    async def __aenter__(self) -> Watcher:
        """Start delivering events to this loop (none is lost since ``set_files``)."""
        self._loop = asyncio.get_running_loop()
        if self._ino is not None:
            self._loop.add_reader(self._ino.fd, self._on_inotify, self._ino)
        else:
            self._start_watchfiles(self._targets, self._targets)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop watching: close the inotify descriptor, or stop the watchfiles thread."""
        if self._ino is not None and self._ino.fd >= 0:
            if self._loop is not None:
                self._loop.remove_reader(self._ino.fd)
            os.close(self._ino.fd)
            self._ino.fd = -1
        if runs := list(self._runs):
            _stop(runs)
            await asyncio.wait({task for task, _ in runs})

    async def next_batch(self) -> set[Path]:
        """Wait for changed files; return all of them seen so far (at least one)."""
        if self._loop is None:
            raise RuntimeError("use the Watcher as `async with Watcher(root) as watcher:` first")
        while not self._pending:
            if self._error is not None:
                raise self._error
            self._wake.clear()
            await self._wake.wait()
        batch, self._pending = self._pending, set()
        return batch

    async def changes(self) -> AsyncIterator[set[Path]]:
        """``async for changed in watcher.changes():`` each batch of changed files, as ``next_batch``."""
        while True:
            yield await self.next_batch()


def _stop(runs: list[_Run]) -> None:
    for task, stop in runs:
        stop.set()
        task.cancel()
