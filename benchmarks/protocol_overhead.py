"""Where liveswap's per-request cost goes: uvicorn alone, uvicorn with liveswap's worker protocol,
uvicorn's protocol with an empty Python override of the per-request method that protocol overrides
(the floor for any such mixin), and ``liveswap run``; one worker each, interleaved.

    .venv/bin/python benchmarks/protocol_overhead.py           # 4 rounds x 4 variants x 4 s, ~2 min
    .venv/bin/python benchmarks/protocol_overhead.py --quick

The measure is requests per CPU-second of the server's processes (wrk -t2 -c64, keep-alive GET),
reported as a ratio to plain uvicorn. Writes results/protocol-overhead-<YYYYmmdd-HHMMSS>.json.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import HERE, per_cpu_rounds  # noqa: E402

VARIANTS: dict[str, tuple[str, list[str]]] = {
    "uvicorn": ("uvicorn", []),
    "uvicorn + liveswap protocol": ("uvicorn", ["--http", "guarded_variants:Guarded"]),
    "uvicorn + empty overrides": ("uvicorn", ["--http", "guarded_variants:PassThrough"]),
    "liveswap run": ("liveswap", []),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int, default=None, help="runs per variant [4]")
    p.add_argument("--duration", type=float, default=None, help="seconds per run [4]")
    args = p.parse_args()
    rounds = args.rounds or (2 if args.quick else 4)
    duration = args.duration or (2.0 if args.quick else 4.0)
    # uvicorn imports the --http class before --app-dir applies: put the variants on the path.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE / "apps"), os.environ.get("PYTHONPATH")]))
    per_cpu_rounds("protocol-overhead", VARIANTS, "uvicorn", rounds, duration, ratio_key="ratio_to_uvicorn")
    return 0


if __name__ == "__main__":
    sys.exit(main())
