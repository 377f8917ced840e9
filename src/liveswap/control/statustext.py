"""``liveswap status`` as text: a supervisor's status reply, formatted for a terminal."""

from __future__ import annotations

import time
from typing import Any

__all__ = ["format_status"]


def _ago(ts: float) -> str:
    secs = max(0.0, time.time() - ts)
    return f"{secs:.0f} s ago" if secs < 120 else f"{secs / 60:.0f} min ago"


def format_status(s: dict[str, Any]) -> str:
    lines = [
        f"liveswap {s['name']}  pid {s['pid']}  app {s['app']}  up {s['uptime']:.0f} s",
        f"state: {s['state']}",
        f"listening: {', '.join(s['listening'])}",
        f"reloads: {s['reloads_ok']} ok, {s['reloads_failed']} failed; worker restarts: {s['restarts']} "
        f"({s.get('hung', 0)} of them hung)"
        + (f"; recycled (--max-requests): {s['recycled']}" if s.get("recycled") else ""),
        "",
        f"{'GEN':>4}  {'STATE':<9} {'PID':>8}  {'SLOT':>4}  {'WORKER':<9} {'UPTIME':>9}  {'RESTARTS':>8}",
    ]
    for g in s["generations"]:
        if not g["workers"]:
            lines.append(f"{g['generation']:>4}  {g['state']:<9} {'-':>8}")
        for w in g["workers"]:
            lines.append(
                f"{g['generation']:>4}  {g['state']:<9} {w['pid']:>8}  {w['slot']:>4}  {w['state']:<9} "
                f"{w['uptime']:>8.1f}s  {w['restarts']:>8}"
            )
    last = s.get("last_reload")
    if last:
        outcome = "ok" if last["ok"] else f"FAILED: {last.get('error')}"
        lines += [
            "",
            f"last reload: {_ago(last['time'])}, generation {last['generation']}, {outcome}, "
            f"{last['duration_ms']} ms ({last['reason']})",
        ]
    return "\n".join(lines)
