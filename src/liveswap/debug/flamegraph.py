"""Exporters for collapsed stacks: text, a self-contained SVG flame graph, and speedscope JSON.

Collapsed stacks map ``"root;child;leaf"`` to a sample count (see ``profile.py``). ``locations``
optionally maps a frame label to ``(file, line)`` for tooltips and for speedscope's frame table.

The SVG needs no script: hover a frame for its tooltip (function, file:line, samples, percent).
For zooming and searching, download the speedscope file and drop it on https://www.speedscope.app.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from html import escape
from typing import Any

__all__ = ["SPEEDSCOPE_SCHEMA", "collapsed_text", "to_flamegraph_svg", "to_speedscope"]

SPEEDSCOPE_SCHEMA = "https://www.speedscope.app/file-format-schema.json"

_WIDTH = 1200.0
_PAD = 10.0
_FRAME_H = 17.0
_TOP = 48.0  # title and subtitle
_BOTTOM = 24.0  # footer line
_FONT = 12.0
_CHAR_W = _FONT * 0.6  # monospace advance width, close enough for every common monospace font
_MIN_W = 0.3  # frames narrower than this (in px) are not drawn


class _Node:
    __slots__ = ("children", "count", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.count = 0
        self.children: dict[str, _Node] = {}


def collapsed_text(collapsed: Mapping[str, int]) -> str:
    """The collapsed stacks as text, one ``stack count`` per line (input for flamegraph.pl, speedscope)."""
    return "".join(f"{stack} {count}\n" for stack, count in sorted(collapsed.items()))


def _tree(collapsed: Mapping[str, int]) -> tuple[_Node, int]:
    root = _Node("all")
    depth = 0
    for stack, count in collapsed.items():
        if count <= 0:
            continue
        node = root
        node.count += count
        parts = stack.split(";")
        depth = max(depth, len(parts))
        for part in parts:
            child = node.children.get(part)
            if child is None:
                child = node.children[part] = _Node(part)
            child.count += count
            node = child
    return root, depth


def _color(name: str, depth: int) -> str:
    if depth == 0:
        return "rgb(200,200,200)"
    h = zlib.crc32(name.encode("utf-8", "replace"))
    if depth == 1:  # thread names: cool colours, so the roots read as a separate layer
        return f"rgb({110 + h % 40},{150 + (h >> 8) % 50},{200 + (h >> 16) % 55})"
    # flamegraph.pl's "hot" palette, deterministic per function name
    return f"rgb({205 + h % 50},{(h >> 8) % 230},{(h >> 16) % 55})"


def _fit(text: str, width: float) -> str:
    room = int((width - 6) / _CHAR_W)
    if room < 3:
        return ""
    return text if len(text) <= room else text[: room - 2] + ".."


def to_flamegraph_svg(
    collapsed: Mapping[str, int],
    title: str = "Flame graph",
    *,
    locations: Mapping[str, tuple[str, int]] | None = None,
    subtitle: str = "",
) -> str:
    """A self-contained SVG flame graph: root at the bottom, width proportional to samples."""
    root, depth = _tree(collapsed)
    total = root.count
    height = _TOP + (depth + 1) * _FRAME_H + _BOTTOM
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{_WIDTH:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {_WIDTH:.0f} {height:.0f}" font-family="monospace" font-size="{_FONT:.0f}">',
        f"<title>{escape(title)}</title>",
        '<rect x="0" y="0" width="100%" height="100%" fill="rgb(250,250,240)"/>',
        f'<text x="{_WIDTH / 2:.0f}" y="22" text-anchor="middle" font-size="16">{escape(title)}</text>',
    ]
    sub = subtitle or f"{total} samples; hover a frame for its file, line and share"
    out.append(f'<text x="{_WIDTH / 2:.0f}" y="40" text-anchor="middle" fill="rgb(90,90,90)">{escape(sub)}</text>')
    if total == 0:
        out.append(f'<text x="{_PAD:.0f}" y="{_TOP + 14:.0f}">no samples were taken</text>')
        out.append("</svg>")
        return "\n".join(out) + "\n"

    scale = (_WIDTH - 2 * _PAD) / total
    hidden = 0
    where = locations or {}
    # Iterative walk (deep recursion in the profiled program must not blow our stack).
    todo: list[tuple[_Node, int, float]] = [(root, 0, _PAD)]
    while todo:
        node, level, x = todo.pop()
        width = node.count * scale
        if width < _MIN_W:
            hidden += 1
            continue
        y = height - _BOTTOM - (level + 1) * _FRAME_H
        share = 100.0 * node.count / total
        tip = node.name
        if node.name in where:
            file, line = where[node.name]
            tip += f"\n{file}:{line}"
        tip += f"\n{node.count} samples ({share:.2f}%)"
        label = _fit(node.name, width)
        out.append(
            f"<g><title>{escape(tip)}</title>"
            f'<rect x="{x:.2f}" y="{y:.1f}" width="{width:.2f}" height="{_FRAME_H - 1:.0f}" '
            f'fill="{_color(node.name, level)}" rx="2"/>'
            + (f'<text x="{x + 3:.2f}" y="{y + 12:.1f}">{escape(label)}</text>' if label else "")
            + "</g>"
        )
        child_x = x
        for name in sorted(node.children):  # alphabetical, as flamegraph.pl: equal stacks merge
            child = node.children[name]
            todo.append((child, level + 1, child_x))
            child_x += child.count * scale
    footer = f"{total} thread samples, {len(collapsed)} distinct stacks"
    if hidden:
        footer += f"; {hidden} frames (with their callees) too narrow to draw"
    out.append(f'<text x="{_PAD:.0f}" y="{height - 8:.0f}" fill="rgb(90,90,90)">{escape(footer)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def to_speedscope(
    collapsed: Mapping[str, int],
    name: str = "profile",
    *,
    locations: Mapping[str, tuple[str, int]] | None = None,
    interval: float | None = None,
) -> dict[str, Any]:
    """speedscope's file format: shared frames and one ``sampled`` profile per thread (first frame).

    With ``interval`` (seconds per sample) weights are milliseconds; without, they are sample counts.
    """
    where = locations or {}
    frames: list[dict[str, Any]] = []
    index: dict[str, int] = {}
    per_thread: dict[str, tuple[list[list[int]], list[float]]] = {}
    unit = "milliseconds" if interval else "none"
    weight = interval * 1000.0 if interval else 1.0
    for stack, count in sorted(collapsed.items()):
        thread, *names = stack.split(";")
        ids: list[int] = []
        for frame in names:
            if frame not in index:
                index[frame] = len(frames)
                entry: dict[str, Any] = {"name": frame}
                if frame in where:
                    entry["file"], entry["line"] = where[frame]
                frames.append(entry)
            ids.append(index[frame])
        samples, weights = per_thread.setdefault(thread, ([], []))
        samples.append(ids)  # root first, as speedscope expects
        weights.append(count * weight)
    profiles = [
        {
            "type": "sampled",
            "name": thread,
            "unit": unit,
            "startValue": 0,
            "endValue": sum(weights),
            "samples": samples,
            "weights": weights,
        }
        for thread, (samples, weights) in sorted(per_thread.items())
    ]
    return {
        "$schema": SPEEDSCOPE_SCHEMA,
        "shared": {"frames": frames},
        "profiles": profiles,
        "name": name,
        "activeProfileIndex": 0,
        "exporter": "liveswap",
    }
