"""What the access log costs: `liveswap run` without it, with it (text and JSON lines), against
uvicorn without and with its own access log (which has no duration); one worker each, interleaved.

    .venv/bin/python benchmarks/access_log_bench.py           # 3 rounds x 5 variants x 3 s, ~1.5 min
    .venv/bin/python benchmarks/access_log_bench.py --quick

The measure is requests per CPU-second of the server's processes (wrk -t2 -c64, keep-alive GET; the
log lines go to a file), as a ratio to uvicorn --no-access-log. Writes
results/access-log-<YYYYmmdd-HHMMSS>.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import Server, per_cpu_rounds  # noqa: E402

BASE = "uvicorn --no-access-log"
VARIANTS: dict[str, tuple[str, list[str]]] = {
    BASE: ("uvicorn", []),
    "uvicorn --access-log": ("uvicorn", ["--access-log", "--log-level", "info"]),  # (its lines are INFO)
    "liveswap run": ("liveswap", []),
    "liveswap run --access-log": ("liveswap", ["--access-log"]),
    "liveswap run --access-log --log-format json": ("liveswap", ["--access-log", "--log-format", "json"]),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int, default=None, help="runs per variant [3]")
    p.add_argument("--duration", type=float, default=None, help="seconds per run [3]")
    args = p.parse_args()
    rounds = args.rounds or (2 if args.quick else 3)
    duration = args.duration or (2.0 if args.quick else 3.0)

    def log_lines(srv: Server) -> dict[str, Any]:
        with open(srv.log_path, "rb") as f:
            return {"log_lines": sum(1 for _ in f)}

    per_cpu_rounds("access-log", VARIANTS, BASE, rounds, duration, extra=log_lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
