"""A group's members: what one is, its name in logs, and checking it when it is added."""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["EXPECTED", "Failure", "Member", "callable_name", "check_signature", "is_coroutine_function", "unique_name"]

EXPECTED = (
    "an `async def` function (run as an asyncio task, stopped by cancellation) or a plain function "
    "taking a threading.Event as its first argument (run in its own thread; the event is set when the group stops)"
)


@dataclass(eq=False)
class Member:
    """One added function, with its arguments, and how it runs and is stopped."""

    name: str
    fn: Callable[..., object]
    args: tuple[object, ...]
    is_coroutine: bool
    stop: threading.Event = field(default_factory=threading.Event)
    # The task (coroutine members) or a future resolved by the thread (thread members); set by run().
    done: asyncio.Future[None] | None = None


@dataclass(frozen=True)
class Failure:
    """An error of main or a member: when (monotonic time, then order of recording) and whose."""

    at: float
    seq: int
    label: str
    exc: BaseException


def is_coroutine_function(fn: Callable[..., object]) -> bool:
    # iscoroutinefunction() sees through functools.partial but not instances with `async def __call__`.
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)


def callable_name(fn: object) -> str:
    """A short human name: ``refresher``, ``Cache.refresh``, ``Poller`` (for an instance)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    name = getattr(fn, "__qualname__", None)
    if not isinstance(name, str):
        name = type(fn).__qualname__
    # Functions defined inside other functions: "make_app.<locals>.refresher" says less than "refresher".
    return name.rpartition("<locals>.")[2]


def unique_name(base: str, taken: set[str]) -> str:
    """``base``, or the first of ``base#2``, ``base#3`` ... not ``taken``."""
    if base not in taken:
        return base
    n = 2
    while f"{base}#{n}" in taken:
        n += 1
    return f"{base}#{n}"


def check_signature(fn: Callable[..., object], args: tuple[object, ...], is_coroutine: bool) -> None:
    """Fail in add(), not minutes later in a thread, when fn cannot take the arguments it will get."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # some builtins have no signature: trust the caller
    label = callable_name(fn)
    try:
        if is_coroutine:
            sig.bind(*args)
        else:
            sig.bind(object(), *args)
    except TypeError as exc:
        extra = "".join(f", {a!r}" for a in args)
        if is_coroutine:
            raise TypeError(f"{label}{sig} cannot be called as {label}({extra[2:]}): {exc}") from None
        raise TypeError(
            f"{label}{sig} cannot be called as {label}(stop{extra}): {exc}. Group.add() expects {EXPECTED}, "
            f"e.g. `def {label}(stop: threading.Event) -> None: while not stop.wait(1.0): ...`"
        ) from None
