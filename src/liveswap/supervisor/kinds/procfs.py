"""What ``/proc`` tells of a command's process group: which sockets its processes hold (has the old
generation let go of the public sockets?) and which they wait on with epoll (does the new one serve
the private health socket at all?)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["group", "holds", "polls"]


def group(pgid: int) -> list[int]:
    """The pids of process group ``pgid``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            if int(stat[stat.rindex(")") + 2 :].split()[2]) == pgid:
                pids.append(int(proc.name))
        except (OSError, ValueError, IndexError):
            continue
    return pids


def _socket_inode(pid: int, fd: str) -> int:
    link = os.readlink(f"/proc/{pid}/fd/{fd}")
    return int(link[8:-1]) if link.startswith("socket:[") else 0


def holds(pgid: int, inodes: set[int]) -> bool:
    """Does any process of group ``pgid`` hold one of the sockets ``inodes``?"""
    for pid in group(pgid):
        try:
            if any(_socket_inode(pid, fd) in inodes for fd in os.listdir(f"/proc/{pid}/fd")):
                return True
        except OSError:
            continue
    return False


def polls(pgid: int) -> set[int]:
    """The socket inodes that the processes of group ``pgid`` watch with epoll (Go's netpoller,
    libuv, asyncio all do; a server that select()s shows none)."""
    watched: set[int] = set()
    for pid in group(pgid):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:[eventpoll]":
                    continue
                for line in Path(f"/proc/{pid}/fdinfo/{fd}").read_text().splitlines():
                    if line.startswith("tfd:"):
                        watched.add(_socket_inode(pid, line.split()[1]))
        except (OSError, ValueError, IndexError):
            continue
    watched.discard(0)
    return watched
