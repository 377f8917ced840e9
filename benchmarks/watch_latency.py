"""How long after a save the watcher reports it: liveswap's inotify watcher, its watchfiles fallback,
and watchfiles' awatch with its defaults and with a short step.

    .venv/bin/python benchmarks/watch_latency.py                  # 100 saves per watcher, ~1 min
    .venv/bin/python benchmarks/watch_latency.py --writes 20 --gap 0.05

Each watcher watches one module in a fresh temp directory. One save = open, truncate, write, close
(``X = 000042``: every save has the same size). The latency is from the end of the save (close()
returned: the content is complete, the editor is done) to the moment the consumer coroutine holds the
batch, in one asyncio loop (plain asyncio, as the supervisor runs). The time the save itself takes is
recorded apart (on ext4, close() after a truncating rewrite starts the writeback: ~2 ms). Saves are
``--gap`` x uniform(0.5, 1.5) apart, so each save's events are over before the next and saves do not
fall in step with a polling watcher's cycle; warm-up saves run until the watcher has reported one.
Prints a table and writes results/watch-<YYYYmmdd-HHMMSS>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import random
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import watchfiles

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import median, percentile, write_results  # noqa: E402

from liveswap.dev.watch import Watcher  # noqa: E402

Source = Callable[[Path], contextlib.AbstractAsyncContextManager[AsyncIterator[set[Path]]]]


@contextlib.asynccontextmanager
async def liveswap_watcher(path: Path, backend: str) -> AsyncIterator[AsyncIterator[set[Path]]]:
    async with Watcher(path.parent, backend="inotify" if backend == "inotify" else "watchfiles") as watcher:
        watcher.set_files({path})
        yield watcher.changes()


@contextlib.asynccontextmanager
async def awatch_source(path: Path, step: int = 50, debounce: int = 1600) -> AsyncIterator[AsyncIterator[set[Path]]]:
    stop = asyncio.Event()

    async def batches() -> AsyncIterator[set[Path]]:
        async for changes in watchfiles.awatch(path.parent, step=step, debounce=debounce, stop_event=stop):
            yield {Path(p) for _, p in changes}

    try:
        yield batches()
    finally:
        stop.set()


WATCHERS: dict[str, Source] = {
    "liveswap inotify": lambda p: liveswap_watcher(p, "inotify"),
    "liveswap fallback (watchfiles, step 5 ms)": lambda p: liveswap_watcher(p, "watchfiles"),
    "watchfiles.awatch defaults (step 50, debounce 1600)": lambda p: awatch_source(p),  # awatch's own defaults
    "watchfiles.awatch step=5, debounce=50": lambda p: awatch_source(p, step=5, debounce=50),
}


def save(path: Path, n: int) -> None:
    with open(path, "w") as f:
        f.write(f"X = {n:06d}\n")


async def measure(source: Source, writes: int, gap: float, rng: random.Random) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory(prefix="watch-bench-") as tmp:
        path = Path(tmp).resolve() / "mod.py"
        save(path, 0)
        async with source(path) as changes:
            received: asyncio.Queue[tuple[int, set[Path]]] = asyncio.Queue()

            async def consume() -> None:
                async for batch in changes:
                    received.put_nowait((time.perf_counter_ns(), batch))

            consumer = asyncio.create_task(consume())
            try:
                n = 1
                for n in range(1, 50):  # warm-up: until the watcher reports a save (it may start late)
                    save(path, n)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(received.get(), 1.0)
                        break
                else:
                    raise RuntimeError("the watcher never reported a save")
                out: dict[str, list[float]] = {"latency_ms": [], "from_save_start_ms": [], "save_ms": []}
                for i in range(writes):
                    await asyncio.sleep(gap * rng.uniform(0.5, 1.5))  # the previous save's events are over
                    while not received.empty():
                        received.get_nowait()
                    start = time.perf_counter_ns()
                    save(path, n + 1 + i)
                    saved = time.perf_counter_ns()
                    while True:
                        at, batch = await asyncio.wait_for(received.get(), 10.0)
                        if path in batch:
                            break
                    out["latency_ms"].append((at - saved) / 1e6)
                    out["from_save_start_ms"].append((at - start) / 1e6)
                    out["save_ms"].append((saved - start) / 1e6)
                return out
            finally:
                consumer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await consumer


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--writes", type=int, default=100, help="measured saves per watcher [100]")
    p.add_argument("--gap", type=float, default=0.1, help="mean seconds between saves [0.1]")
    p.add_argument("--seed", type=int, default=1, help="for the gaps [1]")
    args = p.parse_args()
    rng = random.Random(args.seed)
    out: dict[str, Any] = {
        "benchmark": "watch-latency",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "argv": sys.argv[1:],
        "writes": args.writes,
        "gap_s": args.gap,
        "seed": args.seed,
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "watchfiles": version("watchfiles"),
            "liveswap": version("liveswap"),
        },
        "results": {},
    }
    head = ("median", "p90", "min", "max", "from start", "save")
    print(f"{'save -> event, ms':<52}" + "".join(f"{h:>11}" for h in head))
    for name, source in WATCHERS.items():
        runs = asyncio.run(measure(source, args.writes, args.gap, rng))
        lat = runs["latency_ms"]
        row = {"median_ms": median(lat), "p90_ms": percentile(lat, 90), "min_ms": min(lat), "max_ms": max(lat)}
        row |= {
            "from_save_start_median_ms": median(runs["from_save_start_ms"]),
            "save_median_ms": median(runs["save_ms"]),
        }
        out["results"][name] = {**row, **runs}
        print(f"{name:<52}" + "".join(f"{v:>11.2f}" for v in row.values()))
    print("wrote", write_results("watch", out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
