"""Live scale-out under load: a CPU-bound keyed stream, scaled 1 -> 2 actors mid-stream.

A generator offers a keyed, CPU-bound stream (``WORK_MS`` of CPU per item, a per-key count
as state) as fast as the pool takes it: at least 2x what one actor can do, so one actor is
saturated. A ``for`` loop consumes ``map_unordered`` and stamps every output. After
``BEFORE_S`` seconds the pool is scaled to 2 actors; it runs ``AFTER_S`` seconds more.

Printed: the pause of each moved shard (p50, max), the lowest 250 ms window after the scale
call relative to the rate before it, the time from the call until a 250 ms window reaches
1.6x the rate before it, and the steady rate after the scale against a pool started with 2
actors (the baseline, measured in the same run). Bars: no 250 ms window below 50% of the
pre-scale rate; 1.6x within 3 s. A PNG of throughput over time (100 ms bins, scale events
marked) is written next to this file, in ``results/scaling.png``; the last line is JSON.

Run: ``python benchmarks/scaling.py`` (about a minute on 2 cores; the plot needs matplotlib,
in the ``dev`` and ``plot`` extras).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

import shardyard
from shardyard import Shard, ShardPool

WORK_MS = 1.0  # CPU per item
KEYS = 10_000
BEFORE_S = 4.0  # seconds at 1 actor before the scale (the first second is warm-up)
AFTER_S = 5.0  # seconds after the scale call
BIN_S = 0.1  # throughput sampling
WINDOW_S = 0.25  # windows for the dip and for reaching 1.6x
BATCH = 8  # items per shard batch: ~8 ms of CPU, so outputs come back in fine steps
PENDING = 4096  # items the producer may have unfinished (about 2-4 s of work)


def _spin(ms: float) -> None:
    end = time.process_time() + ms / 1000
    while time.process_time() < end:
        pass


class KeyedWork(Shard):
    """A per-key count, after ``WORK_MS`` of CPU per item."""

    def setup(self, shard_id: int) -> None:
        self.counts: Counter[int] = Counter()

    def process_item(self, key: int) -> int:
        _spin(WORK_MS)
        self.counts[key] += 1
        return key

    def snapshot(self) -> Any:
        return dict(self.counts)

    def restore(self, state: Any) -> None:
        self.counts = Counter(state)

    def result(self) -> Counter[int]:
        return self.counts


def _stream(stop: list[bool]) -> Iterator[int]:
    i = 0
    while not stop[0]:
        yield (i * 7919) % KEYS
        i += 1


def _run(num_actors: int, scale_to: int | None, seconds: float) -> dict[str, Any]:
    """Stream for ``seconds`` (scaling at ``BEFORE_S`` if asked); stamp each output."""
    stop = [False]
    stamps: list[float] = []
    report = None
    scale_at = scale_done = None
    with ShardPool(
        KeyedWork,
        num_actors=num_actors,
        num_shards=8,
        max_batch_size=BATCH,
        chunk_size=256,
        max_pending_items=PENDING,
    ) as pool:
        pool.start()
        t0 = time.monotonic()
        import threading

        def scaler() -> None:
            nonlocal report, scale_at, scale_done
            time.sleep(BEFORE_S)
            scale_at = time.monotonic() - t0
            assert scale_to is not None
            report = pool.scale(scale_to)
            scale_done = time.monotonic() - t0

        th = threading.Thread(target=scaler) if scale_to else None
        if th:
            th.start()
        stamp = stamps.append
        clock = time.monotonic
        for _ in pool.map_unordered(_stream(stop), keys=lambda k: k):
            now = clock() - t0
            stamp(now)
            if now > seconds:
                stop[0] = True
                break  # the rest is failed with PoolClosedError at close: not counted
        if th:
            th.join()
        history = pool.stats().placement_history
        pool.close(wait=False)
    return {
        "stamps": np.array(stamps),
        "report": report,
        "scale_at": scale_at,
        "scale_done": scale_done,
        "pauses": [h.pause_s for h in history],
    }


def _rate(stamps: np.ndarray, lo: float, hi: float) -> float:
    n = np.count_nonzero((stamps >= lo) & (stamps < hi))
    return n / (hi - lo)


def main() -> int:
    shardyard.connect()
    print(f"CPU-bound keyed stream: {WORK_MS} ms of CPU per item, {KEYS} keys, 8 shards")
    base = _run(2, None, 5.0)
    base_rate = _rate(base["stamps"], 1.0, 5.0)
    run = _run(1, 2, BEFORE_S + AFTER_S)
    s, at = run["stamps"], run["scale_at"]
    pre = _rate(s, 1.0, at)
    # Windows of WINDOW_S starting every 10 ms, from the scale call to the end.
    starts = np.arange(at, BEFORE_S + AFTER_S - WINDOW_S, 0.01)
    rates = np.array([_rate(s, t, t + WINDOW_S) for t in starts])
    lowest = float(rates.min()) / pre
    before = np.arange(1.0, at - WINDOW_S, 0.01)
    lowest_before = min(_rate(s, t, t + WINDOW_S) for t in before) / pre
    reach = next(
        (t + WINDOW_S - at for t, r in zip(starts, rates, strict=True) if r >= 1.6 * pre), None
    )
    post = _rate(s, BEFORE_S + AFTER_S - 2.0, BEFORE_S + AFTER_S)
    pauses = run["pauses"]
    report = run["report"]
    print(f"scale 1 -> 2 called at {at:.2f} s, returned after {run['scale_done'] - at:.2f} s")
    print(
        f"moved shards {report.moved_shards}; pause per moved shard p50 "
        f"{statistics.median(pauses) * 1000:.0f} ms, max {max(pauses) * 1000:.0f} ms"
    )
    print(
        f"rate before: {pre:,.0f} items/s (1 actor; its own lowest {WINDOW_S * 1000:.0f} ms "
        f"window: {lowest_before:.2f}x)"
    )
    print(
        f"lowest {WINDOW_S * 1000:.0f} ms window after the call: {lowest:.2f}x the rate before "
        f"(bar >= 0.50x) {'yes' if lowest >= 0.5 else 'NO'}"
    )
    reach_txt = "never" if reach is None else f"{reach:.2f} s"
    ok_reach = reach is not None and reach <= 3.0
    print(
        f"time to >= 1.6x the rate before: {reach_txt} (bar <= 3 s) {'yes' if ok_reach else 'NO'}"
    )
    print(
        f"steady rate after: {post:,.0f} items/s = {post / pre:.2f}x before; "
        f"{post / base_rate:.2f}x a pool started with 2 actors ({base_rate:,.0f} items/s)"
    )
    png = _plot(s, at, run["scale_done"], pre)
    print(f"plot: {png}")
    print(
        json.dumps(
            {
                "bench": "scaling",
                "rate_before": round(pre, 1),
                "rate_after": round(post, 1),
                "baseline_2_actors": round(base_rate, 1),
                "after_vs_before": round(post / pre, 3),
                "after_vs_baseline": round(post / base_rate, 3),
                "lowest_window_vs_before": round(lowest, 3),
                "lowest_window_before_vs_before": round(lowest_before, 3),
                "seconds_to_1_6x": None if reach is None else round(reach, 3),
                "pause_p50_s": round(statistics.median(pauses), 4),
                "pause_max_s": round(max(pauses), 4),
                "moved_shards": report.moved_shards,
                "scale_seconds": round(report.seconds, 3),
            }
        )
    )
    return 0 if lowest >= 0.5 and ok_reach else 1


def _plot(stamps: np.ndarray, at: float, done: float, pre: float) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    end = float(stamps.max())
    bins = np.arange(0.0, end + BIN_S, BIN_S)
    counts, _ = np.histogram(stamps, bins)
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot(bins[:-1], counts / BIN_S, drawstyle="steps-post", label="items/s (100 ms bins)")
    ax.axvline(at, color="tab:red", linestyle="--", label="scale(2) called")
    ax.axvline(done, color="tab:green", linestyle="--", label="scale(2) returned")
    ax.axhline(pre, color="grey", linestyle=":", label="rate before")
    ax.axhline(1.6 * pre, color="grey", linestyle="-.", label="1.6x before")
    ax.set_xlabel("seconds")
    ax.set_ylabel("items/s")
    ax.set_title("shardyard: live scale-out 1 -> 2 actors under a CPU-bound keyed stream")
    ax.legend(loc="lower right")
    out = Path(__file__).parent / "results" / "scaling.png"
    out.parent.mkdir(exist_ok=True)
    fig.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return str(out.relative_to(Path(__file__).parent.parent))


if __name__ == "__main__":
    sys.exit(main())
