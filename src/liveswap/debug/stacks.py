"""Every thread's stack and every asyncio task's await chain, like Go's /debug/pprof/goroutine?debug=2.

Read from the debug server's own thread while the main thread may be busy or blocked, so it only
reads: ``sys._current_frames()`` for threads; for tasks, the task's coroutine and what it awaits.

``Task.get_stack()`` on Python 3.11 returns just the task's outermost coroutine frame for a
suspended task (it follows ``f_back``, which is empty for a suspended coroutine), so the await chain
is followed here instead: ``cr_await`` from coroutine to coroutine down to the innermost one, which
is the line the task is actually waiting on. ``get_stack()`` is the fallback for unusual awaitables.

    text = format_text(collect(main_loop))
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
import traceback
from collections.abc import Coroutine, Generator
from types import FrameType
from typing import Any

__all__ = ["collect", "format_text", "task_stacks", "thread_stacks"]

_ALL_TASKS_ATTEMPTS = 20
_MAX_AWAIT_DEPTH = 256


def _frame_dict(frame: FrameType) -> dict[str, Any]:
    summary = traceback.FrameSummary(
        frame.f_code.co_filename, frame.f_lineno or 0, frame.f_code.co_qualname, lookup_line=True
    )
    return {
        "file": summary.filename,
        "line": summary.lineno,
        "function": summary.name,
        "module": str(frame.f_globals.get("__name__", "?")),
        "code": (summary.line or "").strip(),
    }


def _frames_root_first(frame: FrameType | None) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []
    while frame is not None:
        frames.append(_frame_dict(frame))
        frame = frame.f_back
    frames.reverse()
    return frames


def thread_stacks() -> list[dict[str, Any]]:
    """One dict per thread: name, ident, native_id, daemon, whether it is the main/current thread, frames."""
    me = threading.get_ident()
    main = threading.main_thread().ident
    by_ident = {t.ident: t for t in threading.enumerate()}
    result = []
    for ident, frame in sorted(sys._current_frames().items(), key=lambda item: (item[0] != main, item[0])):
        thread = by_ident.get(ident)
        result.append(
            {
                "name": thread.name if thread is not None else f"<unknown thread {ident}>",
                "ident": ident,
                "native_id": thread.native_id if thread is not None else None,
                "daemon": thread.daemon if thread is not None else None,
                "main": ident == main,
                "current": ident == me,
                "frames": _frames_root_first(frame),
            }
        )
    return result


def _all_tasks(loop: asyncio.AbstractEventLoop) -> set[asyncio.Task[Any]]:
    # The loop's thread may create or finish tasks while we iterate the weak set from ours.
    for attempt in range(_ALL_TASKS_ATTEMPTS):
        try:
            return asyncio.all_tasks(loop)
        except RuntimeError:
            if attempt == _ALL_TASKS_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _await_chain(task: asyncio.Task[Any]) -> list[FrameType]:
    """Frames from the task's coroutine down to the innermost awaited one (outermost first)."""
    frames: list[FrameType] = []
    awaitable: Any = task.get_coro()
    for _ in range(_MAX_AWAIT_DEPTH):
        if isinstance(awaitable, Coroutine):
            frame = getattr(awaitable, "cr_frame", None)
            following = getattr(awaitable, "cr_await", None)
        elif isinstance(awaitable, Generator):
            frame = getattr(awaitable, "gi_frame", None)
            following = getattr(awaitable, "gi_yieldfrom", None)
        else:
            break
        if frame is None:  # finished or not started
            break
        frames.append(frame)
        if following is None:
            break
        awaitable = following
    return frames or task.get_stack()


def _called_from(frame: FrameType) -> list[FrameType]:
    """For a running task: the frames ``frame`` has called so far, found in its thread's stack."""
    for leaf in sys._current_frames().values():
        above: list[FrameType] = []
        current: FrameType | None = leaf
        while current is not None:
            if current is frame:
                above.reverse()
                return above
            above.append(current)
            current = current.f_back
    return []


def _short_repr(obj: object, limit: int = 200) -> str:
    try:
        text = repr(obj)
    except Exception as exc:  # a user object's __repr__ may fail; a dump must not
        text = f"<{type(obj).__name__}: repr failed: {exc!r}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _coro_name(task: asyncio.Task[Any]) -> str:
    coro = task.get_coro()
    name = getattr(coro, "__qualname__", None) or type(coro).__name__
    module = getattr(getattr(coro, "cr_code", None), "co_filename", None)
    return f"{name}" if module is None else f"{name} ({os.path.basename(module)})"


def task_stacks(loop: asyncio.AbstractEventLoop) -> list[dict[str, Any]]:
    """One dict per pending task of ``loop``: name, coroutine, state, frames (outermost first), awaiting."""
    result = []
    for task in sorted(_all_tasks(loop), key=lambda t: t.get_name()):
        try:
            chain = _await_chain(task)
            running = bool(getattr(task.get_coro(), "cr_running", False))
            if running and chain:
                # The task holds its loop's thread right now (maybe blocked in synchronous code):
                # show what it is executing, not just the line of its innermost await.
                chain += _called_from(chain[-1])
            waiter = getattr(task, "_fut_waiter", None)  # what the task sleeps on (asyncio's own attribute)
            result.append(
                {
                    "name": task.get_name(),
                    "coroutine": _coro_name(task),
                    "state": "running" if running else "done" if task.done() else "suspended",
                    "awaiting": None if waiter is None else _short_repr(waiter),
                    "frames": [_frame_dict(f) for f in chain],
                }
            )
        except Exception as exc:  # the task changed under us (it runs on another thread): report, go on
            result.append(
                {
                    "name": task.get_name(),
                    "coroutine": "?",
                    "state": "unreadable",
                    "awaiting": None,
                    "frames": [],
                    "error": _short_repr(exc),
                }
            )
    return result


def collect(loop: asyncio.AbstractEventLoop | None) -> dict[str, Any]:
    """Threads and (if ``loop`` is given and not closed) its tasks, as a JSON-able dict."""
    tasks: list[dict[str, Any]] | None = None
    note = None
    if loop is None:
        note = "no event loop was given to the debug server, so no tasks are listed"
    elif loop.is_closed():
        note = "the main event loop is closed"
    else:
        tasks = task_stacks(loop)
    return {
        "pid": os.getpid(),
        "time": time.time(),
        "threads": thread_stacks(),
        "tasks": tasks,
        "tasks_note": note,
    }


def _format_frames(frames: list[dict[str, Any]], out: list[str]) -> None:
    for f in frames:
        out.append(f'  File "{f["file"]}", line {f["line"]}, in {f["function"]}')
        if f["code"]:
            out.append(f"    {f['code']}")


def format_text(dump: dict[str, Any]) -> str:
    """The dump as text, frames in traceback order (outermost first, innermost last)."""
    threads = dump["threads"]
    out = [f"pid {dump['pid']}: {len(threads)} threads", ""]
    for t in threads:
        flags = [f"ident {t['ident']}", f"native id {t['native_id']}", "daemon" if t["daemon"] else "non-daemon"]
        if t["main"]:
            flags.append("main thread")
        if t["current"]:
            flags.append("this is the debug server answering you")
        out.append(f"Thread {t['name']!r} ({', '.join(flags)})")
        _format_frames(t["frames"], out)
        out.append("")
    tasks = dump["tasks"]
    if tasks is None:
        out.append(f"asyncio tasks: {dump['tasks_note']}")
    else:
        out.append(f"{len(tasks)} asyncio tasks on the main event loop")
        out.append("")
        for task in tasks:
            out.append(f"Task {task['name']!r} coroutine={task['coroutine']} ({task['state']})")
            _format_frames(task["frames"], out)
            if task["awaiting"]:
                out.append(f"  awaiting {task['awaiting']}")
            if task.get("error"):
                out.append(f"  (could not read this task: {task['error']})")
            out.append("")
    return "\n".join(out) + "\n"
