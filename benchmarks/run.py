"""Run the benchmark suites in one command; collect their JSON lines; draw the charts.

Suites, each in its own subprocess (so no two share a Ray or a Spark), in this order:

- ``engine``: ``benchmarks/engine.py`` (``--quick`` passed on);
- ``executor``: ``benchmarks/executor.py`` (quick: ``--items 4000 --repeats 2``);
- ``streaming``: ``benchmarks/streaming.py``, only when RabbitMQ (127.0.0.1:5672) and
  PostgreSQL (127.0.0.1:5432) answer and its extra (``bench``: aio-pika, psycopg) imports;
  skipped with the reason otherwise;
- ``peers``: ``benchmarks/peers/wordcount.py`` (word count and a keyed sum against PySpark,
  PyFlink, Dask, Ray tasks, ``ray.util.ActorPool``, multiprocessing; needs
  ``bash benchmarks/peers/setup.sh`` once, or its peers rows say "not run"). It writes
  ``results/peers.json``, ``peers.txt`` and ``wordcount_engines.png``;
- ``batch``: throughput of ``ShardPool(..., max_batch_size=B)`` for B in 1, 8, 64, 512, 4096:
  ``pool.map`` of tiny items (``x + 1`` per item), keyless and keyed (``keys=items``); items
  per size chosen from a probe so each timing takes ~1.5 s; best of 3 (quick: 2);
- ``latency``: open-loop arrivals (Poisson, seeded) of ``submit(x)`` at 10%..90% of the
  measured peak, an item being ~200 us of pure-Python CPU (calibrated here), against
  ``multiprocessing.Pool(2).apply_async`` (spawn) driven the same way; latency is from each
  item's scheduled arrival to its completion callback (so a lagging submitter counts);
  p50 / p99 per load level;
- ``user_paths``, ``moonshots``, ``concurrency``, ``caching``, ``shards``: their own files
  (the plain user paths and word count, the moonshot bars, I/O-bound concurrency,
  ``shared=`` and the memo, cost against shard and actor counts);
- ``cpu``: CPU-bound speedup: items of ~1 ms of pure-Python integer arithmetic (calibrated),
  serial in the driver vs ``ShardPool(burn, num_actors=2).map`` vs
  ``multiprocessing.Pool(2).map`` (spawn, default chunksize); pools started before timing;
  best of 2, contenders alternating.

The last three are measured by this file itself (``--measure NAME``, in a subprocess).
Writes ``benchmarks/results/all.json`` (every suite's final JSON line, exit status, wall
time, skip reason, and every bar of the speed issue with its measured value and pass/fail,
also printed as a table) and the charts ``throughput_vs_batch.png``, ``latency_vs_load.png``,
``cpu_speedup.png`` (plus the peers' ``wordcount_engines.png``); prints a summary and one
JSON line last.

With ``--only``, ``all.json`` keeps the other suites' results of the last run (marked
``earlier_run``), so the bars table covers every suite.

Run:
    python benchmarks/run.py [--quick] [--only peers,batch] [--out DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
NUM_WORKERS = 2
BATCH_SIZES = [1, 8, 64, 512, 4096]
SUITES = [
    "engine",
    "executor",
    "streaming",
    "peers",
    "batch",
    "latency",
    "cpu",
    "user_paths",
    "moonshots",
    "concurrency",
    "caching",
    "shards",
]
MEASURED = {"batch", "latency", "cpu"}


# --- workloads (module level: pickled into actors and spawned processes) ----------------------


def inc(x: int) -> int:
    return x + 1


def burn(n: int) -> int:
    """Pure-Python integer arithmetic, ``n`` loop iterations, holding the GIL throughout."""
    acc = 0
    for i in range(n):
        acc = (acc + i * i) % 1_000_003
    return acc


def calibrate(target_s: float) -> int:
    """Loop count of :func:`burn` taking ``target_s`` here (median of 5)."""

    def timed(n: int) -> float:
        t = time.perf_counter()
        burn(n)
        return time.perf_counter() - t

    probe = 200_000
    burn(probe)
    t = statistics.median(timed(probe) for _ in range(3))
    n = max(1, int(probe * target_s / t))
    t = statistics.median(timed(n) for _ in range(5))
    return max(1, int(n * target_s / t))


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def fmt_rate(x: float) -> str:
    return f"{x / 1e6:.2f}M/s" if x >= 1e6 else f"{x / 1e3:.1f}k/s"


def print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    print(line)
    print("-" * len(line))
    for r in rows:
        print(" | ".join(x.ljust(w) for x, w in zip(r, widths, strict=True)).rstrip())


def connect() -> Any:
    import shardyard
    from shardyard import ClusterConfig

    return shardyard.connect(config=ClusterConfig(num_cpus=NUM_WORKERS))


# --- batch: throughput vs max_batch_size ------------------------------------------------------


def measure_batch(quick: bool) -> dict[str, Any]:
    from shardyard import ShardPool

    connect()
    repeats = 2 if quick else 3
    target_s = 0.5 if quick else 1.5
    cap = 50_000 if quick else 400_000
    out: dict[str, Any] = {"sizes": BATCH_SIZES, "series": {}, "repeats": repeats}
    rows = []
    for label, keyed in (("keyless", False), ("keyed", True)):
        series = []
        for b in BATCH_SIZES:
            t0 = time.perf_counter()
            pool = ShardPool(inc, num_actors=NUM_WORKERS, max_batch_size=b).start()
            start_s = time.perf_counter() - t0
            try:
                probe = list(range(2000))
                t = time.perf_counter()
                pool.map(probe, keys=probe if keyed else None)  # warm-up and probe
                probe_rate = len(probe) / (time.perf_counter() - t)
                n = int(min(cap, max(2000, probe_rate * target_s)))
                items = list(range(n))
                expected = [x + 1 for x in items]
                best = float("inf")
                for _ in range(repeats):
                    t = time.perf_counter()
                    got = pool.map(items, keys=items if keyed else None)
                    best = min(best, time.perf_counter() - t)
                    assert got == expected
            finally:
                pool.close()
            rate = n / best
            series.append(
                {"max_batch_size": b, "items": n, "items_per_s": rate, "start_s": start_s}
            )
            rows.append((label, str(b), f"{n:,}", fmt_rate(rate), f"{start_s:.2f}"))
        out["series"][label] = series
    print_table(("series", "max_batch_size", "items", "items/s (best)", "pool start s"), rows)
    return out


# --- latency vs offered load ------------------------------------------------------------------


class Recorder:
    """Completion times by item index, written from whatever thread completes the item."""

    def __init__(self, n: int) -> None:
        self.done = np.full(n, np.nan)
        self.remaining = n
        self._lock = threading.Lock()
        self.all_done = threading.Event()
        if n == 0:
            self.all_done.set()

    def mark(self, i: int) -> None:
        self.done[i] = time.perf_counter()
        with self._lock:
            self.remaining -= 1
            if self.remaining == 0:
                self.all_done.set()


def open_loop(
    submit: Callable[[int, Callable[[], None]], None], rate: float, duration: float, seed: int
) -> dict[str, float]:
    """Poisson arrivals at ``rate`` for ``duration`` s; latency from scheduled arrival to done."""
    rng = np.random.default_rng(seed)
    n = max(1, int(rate * duration))
    gaps = rng.exponential(1.0 / rate, n)
    rec = Recorder(n)
    t0 = time.perf_counter() + 0.05
    sched = t0 + np.cumsum(gaps)
    i = 0
    lag = 0.0
    while i < n:
        now = time.perf_counter()
        while i < n and sched[i] <= now:
            submit(i, lambda i=i: rec.mark(i))
            i += 1
        if i < n:
            wait = sched[i] - time.perf_counter()
            if wait > 0:
                time.sleep(min(wait, 0.002))
    lag = time.perf_counter() - sched[-1]  # how far behind the schedule the last submit was
    if not rec.all_done.wait(300):
        raise TimeoutError("open-loop items did not complete in 300 s")
    lat = (rec.done - sched) * 1e3
    p50, p99 = np.percentile(lat, [50, 99])
    span = float(np.nanmax(rec.done) - t0)
    return {
        "offered_per_s": rate,
        "items": n,
        "achieved_per_s": n / span,
        "p50_ms": float(p50),
        "p99_ms": float(p99),
        "submit_lag_s": lag,
    }


def measure_latency(quick: bool) -> dict[str, Any]:
    import multiprocessing

    from shardyard import ShardPool

    connect()
    loops = calibrate(200e-6)
    levels = [0.1, 0.3, 0.5, 0.7, 0.9] if quick else [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    duration = 1.0 if quick else 3.0
    peak_items = 5_000 if quick else 20_000
    out: dict[str, Any] = {"loops_per_item": loops, "levels": levels, "duration_s": duration}

    def peak(submit_all: Callable[[list[int]], None]) -> float:
        items = [loops] * peak_items
        submit_all(items[:500])  # warm-up
        best = float("inf")
        for _ in range(2):
            t = time.perf_counter()
            submit_all(items)
            best = min(best, time.perf_counter() - t)
        return peak_items / best

    results: dict[str, Any] = {}
    # shardyard: submit futures, a done-callback per item.
    pool = ShardPool(burn, num_actors=NUM_WORKERS).start()
    try:

        def sy_all(items: list[int]) -> None:
            futures = [pool.submit(x) for x in items]
            for f in futures:
                f.result()

        def sy_one(i: int, done: Callable[[], None]) -> None:
            pool.submit(loops).add_done_callback(lambda _f: done())

        p = peak(sy_all)
        results["shardyard"] = {
            "peak_per_s": p,
            "levels": [open_loop(sy_one, f * p, duration, seed=k) for k, f in enumerate(levels)],
        }
    finally:
        pool.close()
    # baseline: multiprocessing.Pool(2).apply_async with a callback (spawn: Ray's threads).
    with multiprocessing.get_context("spawn").Pool(NUM_WORKERS) as mp:

        def mp_all(items: list[int]) -> None:
            for r in [mp.apply_async(burn, (x,)) for x in items]:
                r.get()

        def mp_one(i: int, done: Callable[[], None]) -> None:
            mp.apply_async(burn, (loops,), callback=lambda _r: done())

        p = peak(mp_all)
        results["multiprocessing.Pool(2)"] = {
            "peak_per_s": p,
            "levels": [open_loop(mp_one, f * p, duration, seed=k) for k, f in enumerate(levels)],
        }
    out["results"] = results
    rows = []
    for name, r in results.items():
        for f, lv in zip(levels, r["levels"], strict=True):
            rows.append(
                (
                    name,
                    f"{fmt_rate(r['peak_per_s'])}",
                    f"{f:.0%}",
                    fmt_rate(lv["offered_per_s"]),
                    fmt_rate(lv["achieved_per_s"]),
                    f"{lv['p50_ms']:.2f}",
                    f"{lv['p99_ms']:.2f}",
                )
            )
    print(f"item: {loops} loops of burn(), ~200 us; {duration:g} s per level; Poisson arrivals")
    print_table(("engine", "peak", "load", "offered", "achieved", "p50 ms", "p99 ms"), rows)
    return out


# --- cpu: CPU-bound speedup -------------------------------------------------------------------


def measure_cpu(quick: bool) -> dict[str, Any]:
    import multiprocessing

    from shardyard import ShardPool

    connect()
    loops = calibrate(1e-3)
    n = 300 if quick else 2000
    items = [loops] * n
    t = time.perf_counter()
    expected = [burn(x) for x in items]
    serial_s = time.perf_counter() - t

    t = time.perf_counter()
    pool = ShardPool(burn, num_actors=NUM_WORKERS).start()
    sy_start = time.perf_counter() - t
    t = time.perf_counter()
    mp = multiprocessing.get_context("spawn").Pool(NUM_WORKERS)
    mp.map(inc, range(NUM_WORKERS), chunksize=1)
    mp_start = time.perf_counter() - t
    try:
        contenders: dict[str, Callable[[], list[int]]] = {
            "serial": lambda: [burn(x) for x in items],
            "shardyard num_actors=2": lambda: pool.map(items),
            "multiprocessing.Pool(2)": lambda: mp.map(burn, items),
        }
        pool.map(items[:4])
        mp.map(burn, items[:4])
        best = dict.fromkeys(contenders, float("inf"))
        best["serial"] = serial_s
        for _ in range(2):
            for name, fn in contenders.items():
                if name == "serial" and quick:
                    continue
                t = time.perf_counter()
                got = fn()
                best[name] = min(best[name], time.perf_counter() - t)
                assert got == expected, name
    finally:
        pool.close()
        mp.terminate()
    serial = best["serial"]
    out = {
        "items": n,
        "loops_per_item": loops,
        "item_ms": 1e3 * serial / n,
        "seconds": best,
        "speedup": {k: serial / v for k, v in best.items()},
        "start_s": {"shardyard num_actors=2": sy_start, "multiprocessing.Pool(2)": mp_start},
    }
    rows = [
        (
            k,
            f"{v:.3f}",
            f"{serial / v:.2f}x",
            f"{out['start_s'].get(k, 0.0):.2f}",
        )
        for k, v in best.items()
    ]
    print(f"{n} items of ~{out['item_ms']:.2f} ms pure Python; best of 2, contenders alternating")
    print_table(("contender", "seconds", "speedup vs serial", "start-up s (apart)"), rows)
    return out


MEASURES: dict[str, Callable[[bool], dict[str, Any]]] = {
    "batch": measure_batch,
    "latency": measure_latency,
    "cpu": measure_cpu,
}


# --- charts -----------------------------------------------------------------------------------


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def chart_batch(data: dict[str, Any], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    for label, series in data["series"].items():
        ax.plot(
            [s["max_batch_size"] for s in series],
            [s["items_per_s"] for s in series],
            marker="o",
            label=f"ShardPool(inc, {label})",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("max_batch_size")
    ax.set_ylabel("items/s (pool.map of tiny items, best run)")
    ax.set_title(f"throughput vs batch size ({NUM_WORKERS} actors)")
    ax.grid(which="both", alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def chart_latency(data: dict[str, Any], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.5), layout="constrained")
    levels = [100 * f for f in data["levels"]]
    for (name, r), color in zip(data["results"].items(), ["tab:green", "tab:blue"], strict=False):
        peak = fmt_rate(r["peak_per_s"])
        ax.plot(
            levels,
            [lv["p50_ms"] for lv in r["levels"]],
            "o-",
            color=color,
            label=f"{name} p50 (peak {peak})",
        )
        ax.plot(
            levels, [lv["p99_ms"] for lv in r["levels"]], "s--", color=color, label=f"{name} p99"
        )
    ax.set_yscale("log")
    ax.set_xlabel("offered load, % of each engine's measured peak (open loop, Poisson)")
    ax.set_ylabel("latency ms (scheduled arrival -> done)")
    ax.set_title(f"latency vs offered load (~200 us CPU items, {NUM_WORKERS} workers)")
    ax.grid(which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def chart_cpu(data: dict[str, Any], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2), layout="constrained")
    names = list(data["speedup"])
    vals = [data["speedup"][k] for k in names]
    bars = ax.bar(names, vals, color=["tab:grey", "tab:green", "tab:blue"][: len(names)])
    for b, v in zip(bars, vals, strict=True):
        ax.text(b.get_x() + b.get_width() / 2, v + 0.03, f"{v:.2f}x", ha="center")
    ax.axhline(NUM_WORKERS, color="black", linestyle="--", linewidth=1, label="ideal")
    ax.set_ylabel("speedup vs serial")
    ax.set_title(f"CPU-bound: {data['items']} items of ~{data['item_ms']:.1f} ms pure Python")
    ax.legend()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


CHARTS: dict[str, tuple[str, Callable[[dict[str, Any], Path], Path]]] = {
    "batch": ("throughput_vs_batch.png", chart_batch),
    "latency": ("latency_vs_load.png", chart_latency),
    "cpu": ("cpu_speedup.png", chart_cpu),
}


# --- running the suites -----------------------------------------------------------------------


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def streaming_skip_reason() -> str | None:
    missing = [m for m in ("aio_pika", "pika", "psycopg") if importlib.util.find_spec(m) is None]
    if missing:
        return f"its extra is not installed ({', '.join(missing)}): pip install -e '.[bench]'"
    down = [
        f"{n} 127.0.0.1:{p}"
        for n, p in (("RabbitMQ", 5672), ("PostgreSQL", 5432))
        if not port_open("127.0.0.1", p)
    ]
    if down:
        return "services not up: " + ", ".join(down)
    return None


def command(name: str, quick: bool, out: Path) -> list[str]:
    py = sys.executable
    if name == "engine":
        return [py, str(HERE / "engine.py"), *(["--quick"] if quick else [])]
    if name == "executor":
        return [
            py,
            str(HERE / "executor.py"),
            *(["--items", "4000", "--repeats", "2"] if quick else []),
        ]
    if name == "streaming":
        return [py, str(HERE / "streaming.py"), *(["--quick"] if quick else [])]
    if name == "peers":
        return [
            py,
            str(HERE / "peers" / "wordcount.py"),
            "--out",
            str(out),
            *(["--quick"] if quick else []),
        ]
    if name == "user_paths":
        return [py, str(HERE / "user_paths.py"), "--out", str(out), "--label", "current"]
    if name == "moonshots":
        return [py, str(HERE / "moonshots.py"), "--out", str(out)]
    if name == "concurrency":
        return [py, str(HERE / "concurrency.py"), *(["--repeats", "1"] if quick else [])]
    if name == "caching":
        return [
            py,
            str(HERE / "caching.py"),
            "--out",
            str(out),
            *(["--repeats", "1", "--table-mb", "50"] if quick else []),
        ]
    if name == "shards":
        return [py, str(HERE / "shards.py"), *(["--quick"] if quick else [])]
    return [py, str(Path(__file__).resolve()), "--measure", name, *(["--quick"] if quick else [])]


def last_json(text: str) -> dict[str, Any] | None:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                return value
    return None


def run_suite(name: str, quick: bool, out: Path, timeout_s: float) -> dict[str, Any]:
    """Run one suite in a subprocess, echoing its output; its last JSON line and status."""
    if name == "streaming":
        reason = streaming_skip_reason()
        if reason:
            print(f"[streaming] skipped: {reason}", flush=True)
            return {"skipped": reason}
    cmd = command(name, quick, out)
    print(f"\n=== {name}: {' '.join(cmd)}  (load average {loadavg()})", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=str(HERE.parent))
    lines: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            print(line, end="", flush=True)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        rc: int | None = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = None
    reader.join(5)
    wall = time.perf_counter() - t0
    result = last_json("".join(lines))
    status = {
        "cmd": cmd,
        "rc": rc,
        "ok": rc == 0 and result is not None,
        "wall_s": wall,
        "loadavg_after": loadavg(),
        "result": result,
    }
    if rc is None:
        status["error"] = f"timed out after {timeout_s:.0f} s"
    elif rc != 0:
        status["error"] = f"exit status {rc}"
    print(
        f"=== {name}: {'ok' if status['ok'] else status.get('error', 'no JSON line')} "
        f"in {wall:.0f} s",
        flush=True,
    )
    return status


def bars_of(name: str, result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's bars a suite's JSON line measured: ``{bar, value, target, ok}`` each."""
    if "bars" in result:  # user_paths, moonshots: their own
        return list(result["bars"])
    r = result.get("results", {})
    if name == "concurrency":
        return [
            {
                "bar": f"400 x 10 ms, {case}, x serial",
                "value": x,
                "target": ">= 25 x",
                "ok": x >= 25,
            }
            for case, x in r.get("io_speedup", {}).items()
        ]
    if name == "shards":
        return [
            {
                "bar": "keyed map, 4,096 busy shards / 16 shards",
                "value": r["shards_ratio"],
                "target": ">= 0.8 x",
                "ok": r["shards_ratio"] >= 0.8,
            },
            {
                "bar": "keyed map, 32 actors / 2 actors, 2 cores",
                "value": r["actors_ratio"],
                "target": ">= 0.7 x",
                "ok": r["actors_ratio"] >= 0.7,
            },
        ]
    if name == "cpu":
        sp = result.get("speedup", {})
        ratio = sp["shardyard num_actors=2"] / sp["multiprocessing.Pool(2)"]
        return [
            {
                "bar": "CPU-bound, shardyard / multiprocessing.Pool(2)",
                "value": ratio,
                "target": ">= 0.95 x",
                "ok": ratio >= 0.95,
            }
        ]
    return []


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    parser.add_argument("--only", help=f"comma-separated suites: {','.join(SUITES)}")
    parser.add_argument("--out", default=str(RESULTS), help="results folder")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per suite")
    parser.add_argument("--measure", choices=sorted(MEASURES), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.measure:  # the child process of one measured suite
        data = MEASURES[args.measure](args.quick)
        print(
            json.dumps(
                {"benchmark": args.measure, "quick": args.quick, "loadavg": loadavg(), **data}
            )
        )
        return

    selected = SUITES
    if args.only:
        selected = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = sorted(set(selected) - set(SUITES))
        if unknown:
            parser.error(f"unknown suites {unknown}; choose from {','.join(SUITES)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    load_before = loadavg()
    suites: dict[str, Any] = {}
    charts: dict[str, str] = {}
    if args.only and (out / "all.json").exists():
        # A partial run updates the suites it ran and keeps the others' last results.
        earlier = json.loads((out / "all.json").read_text())
        suites.update(
            {n: {**st, "earlier_run": True} for n, st in earlier.get("suites", {}).items()}
        )
        charts.update(earlier.get("charts", {}))
    for name in selected:
        status = run_suite(name, args.quick, out, args.timeout)
        suites[name] = status
        result = status.get("result")
        if name in CHARTS and result:
            filename, draw = CHARTS[name]
            charts[name] = str(draw(result, out / filename))
        if name == "peers" and result and result.get("chart"):
            charts["wordcount_engines"] = result["chart"]
    wall = time.perf_counter() - t0

    summary = {
        "benchmark": "all",
        "quick": args.quick,
        "python": platform.python_version(),
        "cores": os.cpu_count(),
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
        "wall_s": wall,
        "suites": suites,
        "charts": charts,
    }
    (out / "all.json").write_text(json.dumps(summary, indent=1))

    print("\n=== summary")
    print_table(
        ("suite", "status", "wall s"),
        [
            (
                n,
                "skipped: " + s["skipped"]
                if "skipped" in s
                else ("ok" if s["ok"] else s.get("error", "no JSON line")),
                "" if "skipped" in s else f"{s['wall_s']:.0f}",
            )
            for n, s in suites.items()
        ],
    )
    bars = [
        {"suite": n, **b}
        for n, st in suites.items()
        if st.get("result")
        for b in bars_of(n, st["result"])
    ]
    summary["bars"] = bars
    (out / "all.json").write_text(json.dumps(summary, indent=1))
    if bars:
        print("\n=== the issue's bars, as measured in this run")
        print_table(
            ("suite", "bar", "measured", "target", "ok"),
            [
                (
                    b["suite"],
                    b["bar"],
                    f"{b['value']:,.3f}",
                    b["target"],
                    "yes" if b["ok"] else "NO",
                )
                for b in bars
            ],
        )
    for name, path in charts.items():
        print(f"chart {name}: {path}")
    print(
        f"wrote {out / 'all.json'}; total {wall:.0f} s; load average before {load_before}, "
        f"after {summary['loadavg_after']}"
    )
    print(
        json.dumps(
            {
                "benchmark": "all",
                "quick": args.quick,
                "wall_s": wall,
                "ok": {n: s.get("ok", False) for n, s in suites.items() if "skipped" not in s},
                "skipped": {n: s["skipped"] for n, s in suites.items() if "skipped" in s},
                "charts": charts,
                "all_json": str(out / "all.json"),
            }
        )
    )


if __name__ == "__main__":
    main()
