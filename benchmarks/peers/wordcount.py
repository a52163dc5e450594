"""Word count and a keyed sum on shardyard against peer engines, results checked equal.

Workloads, built by this driver in a temporary folder and read by every engine:

- word count: every ``.py`` file of this interpreter's standard library
  (``Path(os.__file__).parent.rglob("*.py")`` less site-packages / dist-packages /
  __pycache__: ~1,790 files, ~2.77M words, ~456k distinct), read, split on whitespace,
  counted, collected in the driver as ``{word: count}``;
- a 50k-word sample (the first files, in path order, holding >= 50,000 words) for PyFlink's
  per-record DataStream path, too slow for the full data: its row is marked and its rate
  only extrapolated;
- keyed sum: 5M ``(key, value)`` int64 pairs, 100k distinct keys (uniform), values in
  [0, 1000), numpy arrays in the driver, summed per key and collected in the driver.

The baselines are computed here, in the parent, in the same run: a serial
``collections.Counter`` (best of the repeats) and ``np.bincount(keys, weights=values)``.
Every engine runs in its own subprocess (its own venv's python for Spark, Flink and Dask,
made by ``benchmarks/peers/setup.sh``; the project's python for shardyard, Ray and
multiprocessing), one subprocess per (engine, variant), with a timeout. Each prints
``RESULT {json}`` lines: engine, variant, start-up seconds (session / cluster / pool
start, imports excluded and reported apart), first and best job seconds (job: from the
input in the driver, paths or arrays, to the full result in the driver), items/s and a
sha256 of the sorted (word, count) pairs (or of the dense sums), compared with the parent's.

Engines (2 workers each): serial Counter; shardyard (``num_actors=2``; the README's ways:
files as items + map_unordered, a Shard reading files + reduce, words keyed by word into a
counting Shard + reduce); PySpark ``local[2]`` (RDD over paths, RDD over
``wholeTextFiles``, DataFrame with a JVM tokenizer; keyed: RDD reduceByKey, DataFrame
groupBy via Arrow); PyFlink parallelism 2 (DataStream keyBy + reduce on the sample; Table
API group-by on the full data, the files read by the Python client and sent as Arrow);
Dask ``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)`` (bag frequencies,
bag reduction of per-partition Counters; keyed: dataframe groupby-sum); hand-written Ray
tasks (a task per chunk of files, Counters merged in a tree of tasks; keyed: bincount per
chunk); ``ray.util.ActorPool`` over 2 actors; ``multiprocessing.Pool(2)``.

Prints the table (start-up and job apart, speed ratios against serial and against PySpark's
best variant), writes ``benchmarks/results/peers.json``, ``peers.txt`` and
``wordcount_engines.png``, and prints one JSON line last.

Run:
    bash benchmarks/peers/setup.sh       # once: the peers' venvs under .bench-venvs/
    python benchmarks/peers/wordcount.py [--quick] [--only shardyard,spark] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import (  # noqa: E402
    SAMPLE_WORDS,
    digest_counts,
    digest_sums,
    loadavg,
    read_words,
    stdlib_files,
)

ROOT = HERE.parent.parent
RESULTS = HERE.parent / "results"
VENVS = Path(os.environ.get("SHARDYARD_BENCH_VENVS", ROOT / ".bench-venvs"))
NUM_KEYS = 100_000
KEYED_ITEMS = 5_000_000


@dataclass(frozen=True)
class Job:
    """One subprocess: an engine's worker script, task and variant."""

    engine: str
    script: str
    task: str  # wordcount | sample | keyed
    variant: str
    venv: str | None = None  # None: this interpreter (the project's env)
    timeout_s: float = 600.0
    note: str = ""


JOBS: list[Job] = [
    # shardyard, the README's three ways (+ the batch form of the third), and the keyed sum.
    Job("shardyard", "shardyard_peer.py", "wordcount", "files"),
    Job("shardyard", "shardyard_peer.py", "wordcount", "shard-files"),
    Job("shardyard", "shardyard_peer.py", "wordcount", "shard-files+update"),
    Job("shardyard", "shardyard_peer.py", "wordcount", "shard-words"),
    Job("shardyard", "shardyard_peer.py", "wordcount", "shard-words-batch"),
    Job("shardyard", "shardyard_peer.py", "keyed", "map"),
    Job("shardyard", "shardyard_peer.py", "keyed", "map_unordered"),
    Job("shardyard", "shardyard_peer.py", "keyed", "map-batch16384"),
    # PySpark local[2].
    Job("pyspark", "spark_peer.py", "wordcount", "rdd-paths", venv="spark"),
    Job("pyspark", "spark_peer.py", "wordcount", "rdd-wholeTextFiles", venv="spark"),
    Job("pyspark", "spark_peer.py", "wordcount", "dataframe-binaryFile", venv="spark"),
    Job("pyspark", "spark_peer.py", "wordcount", "dataframe-text", venv="spark"),
    Job("pyspark", "spark_peer.py", "keyed", "rdd-reduceByKey", venv="spark"),
    Job("pyspark", "spark_peer.py", "keyed", "dataframe-arrow", venv="spark"),
    # PyFlink, parallelism 2.
    Job("pyflink", "flink_peer.py", "sample", "datastream-keyBy", venv="flink", timeout_s=900),
    Job("pyflink", "flink_peer.py", "wordcount", "table-sql", venv="flink", timeout_s=900),
    Job("pyflink", "flink_peer.py", "keyed", "table-sql", venv="flink", timeout_s=900),
    # Dask LocalCluster(n_workers=2, threads_per_worker=1, processes=True).
    Job("dask", "dask_peer.py", "wordcount", "bag-frequencies", venv="dask"),
    Job("dask", "dask_peer.py", "wordcount", "bag-counter-reduction", venv="dask"),
    Job("dask", "dask_peer.py", "keyed", "dataframe-groupby", venv="dask"),
    # Hand-written Ray (2 CPUs) and ray.util.ActorPool (2 actors).
    Job("ray tasks", "ray_peer.py", "wordcount", "tasks-tree"),
    Job("ray tasks", "ray_peer.py", "keyed", "tasks-bincount"),
    Job("ray ActorPool", "ray_peer.py", "wordcount", "actorpool"),
    Job("ray ActorPool", "ray_peer.py", "keyed", "actorpool-bincount"),
    # stdlib multiprocessing.Pool(2).
    Job("multiprocessing", "mp_peer.py", "wordcount", "imap_unordered"),
    Job("multiprocessing", "mp_peer.py", "keyed", "map-bincount"),
]
ENGINE_ALIASES = {
    "shardyard": "shardyard",
    "spark": "pyspark",
    "pyspark": "pyspark",
    "flink": "pyflink",
    "pyflink": "pyflink",
    "dask": "dask",
    "ray": "ray",
    "ray-tasks": "ray tasks",
    "actorpool": "ray ActorPool",
    "mp": "multiprocessing",
    "multiprocessing": "multiprocessing",
}


# --- the workload and the serial answers -------------------------------------------------------


def best_of(fn: Any, repeats: int) -> tuple[list[float], Any]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return times, out


def serial_count(paths: list[str]) -> Counter[str]:
    c: Counter[str] = Counter()
    for p in paths:
        c.update(read_words(p))
    return c


def build_workload(folder: Path, repeats: int, keyed_items: int) -> dict[str, Any]:
    """Write the inputs; compute the serial answers (timed) and their digests."""
    paths = stdlib_files()
    (folder / "files.txt").write_text("\n".join(paths) + "\n")
    # The same files as 00000.py ... for the JVM readers: Hadoop's and Flink's file sources
    # skip names starting with "_" or "." (every __init__.py: ~197 of the files).
    links = folder / "links"
    links.mkdir()
    for i, p in enumerate(paths):
        os.symlink(p, links / f"{i:05d}.py")
    times, counts = best_of(lambda: serial_count(paths), repeats)
    # For workers' diagnostics when their digest differs (never used for the verdict).
    (folder / "expected_counts.json").write_text(json.dumps(counts, ensure_ascii=False))
    words = sum(counts.values())
    wc = {
        "files": len(paths),
        "bytes": sum(os.path.getsize(p) for p in paths),
        "words": words,
        "distinct": len(counts),
        "digest": digest_counts(counts),
        "serial_s": times,
    }

    sample, n = [], 0
    for p in paths:
        if n >= SAMPLE_WORDS:
            break
        sample.append(p)
        n += len(read_words(p))
    (folder / "sample_files.txt").write_text("\n".join(sample) + "\n")
    times, scounts = best_of(lambda: serial_count(sample), repeats)
    sm = {
        "files": len(sample),
        "words": sum(scounts.values()),
        "distinct": len(scounts),
        "digest": digest_counts(scounts),
        "serial_s": times,
    }

    rng = np.random.default_rng(20240601)
    keys = rng.integers(0, NUM_KEYS, keyed_items, dtype=np.int64)
    values = rng.integers(0, 1000, keyed_items, dtype=np.int64)
    np.save(folder / "keys.npy", keys)
    np.save(folder / "values.npy", values)

    def numpy_sums() -> np.ndarray:
        return np.rint(np.bincount(keys, weights=values, minlength=NUM_KEYS)).astype(np.int64)

    times, sums = best_of(numpy_sums, max(repeats, 3))
    exact = np.zeros(NUM_KEYS, dtype=np.int64)
    np.add.at(exact, keys, values)  # the float64 weights are exact here; check it anyway
    assert np.array_equal(sums, exact)
    ky = {
        "items": keyed_items,
        "num_keys": NUM_KEYS,
        "distinct": int(np.count_nonzero(np.bincount(keys, minlength=NUM_KEYS))),
        "digest": digest_sums(sums),
        "serial_s": times,
    }
    expected = {"wordcount": wc, "sample": sm, "keyed": ky}
    (folder / "expected.json").write_text(json.dumps(expected))
    return expected


# --- running the workers -----------------------------------------------------------------------


def python_of(job: Job) -> Path | None:
    if job.venv is None:
        return Path(sys.executable)
    py = VENVS / job.venv / "bin" / "python"
    return py if py.exists() else None


def run_job(job: Job, workload: Path, repeats: int, log_dir: Path) -> list[dict[str, Any]]:
    """Run one worker subprocess; its RESULT lines, or one row saying why there are none."""
    base = {"engine": job.engine, "variant": job.variant, "task": job.task}
    py = python_of(job)
    if py is None:
        return [
            {
                **base,
                "equal": False,
                "not_run": True,
                "note": f"not run: no venv {VENVS / str(job.venv)} "
                "(run: bash benchmarks/peers/setup.sh)",
            }
        ]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(HERE), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]
    )
    env.pop("RAY_ADDRESS", None)  # the Ray peers start their own local Ray
    env["PYSPARK_PYTHON"] = str(py)
    env["PYSPARK_DRIVER_PYTHON"] = str(py)
    env["PYTHONHASHSEED"] = "0"
    if job.venv is not None:  # the venv's bin first (Flink starts "python" workers)
        env["PATH"] = f"{py.parent}{os.pathsep}{env.get('PATH', '')}"
        env.pop("VIRTUAL_ENV", None)
    cmd = [
        str(py),
        str(HERE / job.script),
        "--workload",
        str(workload),
        "--task",
        job.task,
        "--variant",
        job.variant,
        "--repeats",
        str(repeats),
    ]
    log = log_dir / f"{job.engine.replace(' ', '_')}-{job.task}-{job.variant}.log"
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd,
            env=env,
            cwd=str(workload),
            capture_output=True,
            text=True,
            timeout=job.timeout_s,
            check=False,
        )
        out, err, rc = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        rc = None
    wall = time.perf_counter() - t0
    log.write_text(f"$ {' '.join(cmd)}\n--- stdout\n{out}\n--- stderr\n{err}\n")
    rows = []
    for line in out.splitlines():
        if line.startswith("RESULT "):
            r = json.loads(line[len("RESULT ") :])
            r["process_s"] = wall
            rows.append(r)
    if rows:
        return rows
    tail = [x for x in err.strip().splitlines() if x.strip()][-3:]
    why = (
        f"timed out after {job.timeout_s:.0f} s"
        if rc is None
        else f"exit {rc}: " + " | ".join(t.strip()[:160] for t in tail)
    )
    return [{**base, "equal": False, "failed": True, "process_s": wall, "note": why}]


# --- the table ---------------------------------------------------------------------------------


def fmt_s(x: float | None) -> str:
    return "" if x is None else (f"{x:.3f}" if x < 10 else f"{x:.1f}")


def fmt_rate(x: float | None) -> str:
    if not x:
        return ""
    if x >= 1e6:
        return f"{x / 1e6:.2f}M/s"
    if x >= 1e3:
        return f"{x / 1e3:.1f}k/s"
    return f"{x:.0f}/s"


def ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return ""
    r = a / b
    return f"{r:.2f}x" if r >= 0.1 else f"{r:.2g}x"


def reference_rows(rows: list[dict[str, Any]], engine: str) -> dict[str, dict[str, Any]]:
    """Per task, the fastest equal row of ``engine`` (the "vs PySpark" reference)."""
    best: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["engine"] == engine and r.get("equal") and r.get("job_s"):
            cur = best.get(r["task"])
            if cur is None or r["job_s"] < cur["job_s"]:
                best[r["task"]] = r
    return best


def table(rows: list[dict[str, Any]], expected: dict[str, Any]) -> str:
    spark = reference_rows(rows, "pyspark")
    header = (
        "task",
        "engine",
        "variant",
        "startup s",
        "1st job s",
        "job s",
        "items/s",
        "vs serial",
        "vs PySpark",
        "equal",
        "note",
    )
    cells = []
    for task in ("wordcount", "sample", "keyed"):
        serial_s = min(expected[task]["serial_s"])
        for r in rows:
            if r["task"] != task:
                continue
            job = r.get("job_s")
            vs_serial = ratio(serial_s, job)
            if task == "sample":  # against serial on the same sample; no PySpark run of it
                vs_spark = ""
            else:
                ref = spark.get(task)
                vs_spark = ratio(ref["job_s"], job) if ref else ""
            eq = "yes" if r.get("equal") else ("-" if r.get("not_run") else "NO")
            cells.append(
                (
                    task,
                    r["engine"],
                    r["variant"],
                    fmt_s(r.get("startup_s")),
                    fmt_s(r.get("first_job_s")),
                    fmt_s(job),
                    fmt_rate(r.get("items_per_s")),
                    vs_serial,
                    vs_spark,
                    eq,
                    r.get("note", ""),
                )
            )
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    widths[-1] = len(header[-1])  # the note is last: no padding
    lines = [" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("-" * len(lines[0]))
    for c in cells:
        lines.append(" | ".join(x.ljust(w) for x, w in zip(c, widths, strict=True)).rstrip())
    return "\n".join(lines)


def serial_rows(expected: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for task, variant, items in (
        ("wordcount", "collections.Counter", expected["wordcount"]["words"]),
        ("sample", "collections.Counter", expected["sample"]["words"]),
        ("keyed", "np.bincount", expected["keyed"]["items"]),
    ):
        times = expected[task]["serial_s"]
        out.append(
            {
                "engine": "serial",
                "variant": variant,
                "task": task,
                "startup_s": 0.0,
                "first_job_s": times[0],
                "job_s": min(times),
                "jobs_s": times,
                "items": items,
                "items_per_s": items / min(times),
                "checksum": expected[task]["digest"],
                "equal": True,
                "note": "baseline, in the driver",
                "loadavg": loadavg(),
            }
        )
    return out


# --- the chart ---------------------------------------------------------------------------------


def secs(x: float) -> str:
    return f"{x:,.0f} s" if x >= 100 else f"{x:.3g} s"


def chart(rows: list[dict[str, Any]], expected: dict[str, Any], path: Path) -> Path | None:
    """Per engine and variant: job seconds and start-up seconds as two bars (log scale)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    ky = expected["keyed"]
    panels = [
        ("wordcount", f"word count, {expected['wordcount']['words'] / 1e6:.2f}M words"),
        ("keyed", f"keyed sum, {ky['items'] / 1e6:g}M pairs, {ky['num_keys'] // 1000}k keys"),
    ]
    sample = [r for r in rows if r["task"] == "sample" and r["engine"] != "serial"]
    n_rows = max(len([r for r in rows if r["task"] == t]) for t, _ in panels) + len(sample)
    fig, axes = plt.subplots(
        1,
        2,
        figsize=(16, 1.2 + 0.55 * n_rows),
        gridspec_kw={"width_ratios": [1.3, 1]},
        layout="constrained",
    )
    for ax, (task, title) in zip(axes, panels, strict=True):
        rs = [r for r in rows if r["task"] == task]
        if task == "wordcount":
            rs = rs + sample  # extrapolated to the full data, hatched
        y = np.arange(len(rs))[::-1].astype(float)
        labels, values = [], []
        for yi, r in zip(y, rs, strict=True):
            extrapolated = r["task"] == "sample"
            label = f"{r['engine']}: {r['variant']}"
            if extrapolated:
                label += "\n(50k-word sample, extrapolated)"
            if not r.get("job_s"):
                labels.append(label + " (not run)" if r.get("not_run") else label + " (failed)")
                continue
            labels.append(label)
            job = expected["wordcount"]["words"] / r["items_per_s"] if extrapolated else r["job_s"]
            ok = r.get("equal")
            color = {"shardyard": "tab:green", "serial": "tab:grey"}.get(r["engine"], "tab:blue")
            if not ok:
                color = "tab:red"
            ax.barh(
                yi + 0.2,
                job,
                height=0.38,
                color=color,
                hatch="//" if extrapolated else None,
                edgecolor="white" if extrapolated else None,
            )
            text = f"job {secs(job)}" + ("" if ok else " (NOT EQUAL)")
            ax.text(job * 1.08, yi + 0.2, text, va="center", fontsize=7)
            values.append(job)
            st = r.get("startup_s") or 0.0
            if st > 0:
                ax.barh(yi - 0.2, st, height=0.38, color=color, alpha=0.35)
                ax.text(st * 1.08, yi - 0.2, f"start-up {secs(st)}", va="center", fontsize=7)
                values.append(st)
        ax.set_yticks(y, labels, fontsize=8)
        ax.set_xscale("log")
        if values:
            ax.set_xlim(min(values) / 3, max(values) * 6)
        ax.set_xlabel("seconds, log scale (upper bar: job end to end; lower, pale: start-up)")
        ax.set_title(title)
        ax.grid(axis="x", which="both", alpha=0.3)
    wc = expected["wordcount"]
    fig.suptitle(
        f"{wc['files']} stdlib files, {wc['words'] / 1e6:.2f}M words, {wc['distinct']:,} "
        f"distinct; 2 workers per engine, {os.cpu_count()} cores. Green: shardyard, grey: "
        "serial, blue: peers, red: result not equal to serial"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def java_version() -> str:
    try:
        out = subprocess.run(
            ["java", "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "no java"
    first = (out.stderr or out.stdout).strip().splitlines()
    return first[0] if first else "java ?"


# --- main --------------------------------------------------------------------------------------


def select(only: str | None) -> list[Job]:
    if not only:
        return JOBS
    wanted = set()
    for name in only.split(","):
        name = name.strip().lower()
        if name in ENGINE_ALIASES:
            wanted.add(ENGINE_ALIASES[name])
        else:
            raise SystemExit(f"unknown engine {name!r}; choose from {sorted(ENGINE_ALIASES)}")
    if "ray" in wanted:
        wanted |= {"ray tasks", "ray ActorPool"}
    return [j for j in JOBS if j.engine in wanted]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 repeat, 1M keyed pairs")
    parser.add_argument("--only", help="comma-separated engines, e.g. shardyard,spark")
    parser.add_argument("--repeats", type=int, help="job repeats per worker (3; quick 1)")
    parser.add_argument("--out", default=str(RESULTS), help="results folder")
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    keyed_items = 1_000_000 if args.quick else KEYED_ITEMS
    jobs = select(args.only)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    t_start = time.perf_counter()
    load_before = loadavg()
    workload = Path(tempfile.mkdtemp(prefix="shardyard-peers-"))
    log_dir = Path(tempfile.gettempdir()) / "shardyard-peers-logs"  # each worker's output
    shutil.rmtree(log_dir, ignore_errors=True)
    log_dir.mkdir()
    try:
        print(f"load average before: {load_before}", file=sys.stderr)
        expected = build_workload(workload, max(repeats, 3), keyed_items)
        wc = expected["wordcount"]
        print(
            f"workload: {wc['files']} files, {wc['bytes'] / 1e6:.1f} MB, {wc['words']:,} words, "
            f"{wc['distinct']:,} distinct; serial {min(wc['serial_s']):.3f} s; "
            f"sample {expected['sample']['files']} files {expected['sample']['words']:,} words; "
            f"keyed {keyed_items:,} pairs",
            file=sys.stderr,
        )
        rows = serial_rows(expected)
        for job in jobs:
            t0 = time.perf_counter()
            got = run_job(job, workload, repeats, log_dir)
            for r in got:
                print(
                    f"  {r['engine']:16} {r['task']:9} {r['variant']:28} "
                    f"start {fmt_s(r.get('startup_s')):>7} job {fmt_s(r.get('job_s')):>7} "
                    f"equal {r.get('equal')} ({time.perf_counter() - t0:.0f} s) "
                    f"{r.get('note', '')}",
                    file=sys.stderr,
                    flush=True,
                )
            rows.extend(got)
    finally:
        shutil.rmtree(workload, ignore_errors=True)
    wall = time.perf_counter() - t_start
    load_after = loadavg()

    text = table(rows, expected)
    wc = expected["wordcount"]
    head = (
        f"peers: word count of {wc['files']} stdlib files ({wc['words']:,} words, "
        f"{wc['distinct']:,} distinct) and a keyed sum of {keyed_items:,} pairs "
        f"({NUM_KEYS:,} keys); 2 workers per engine; {os.cpu_count()} cores; "
        f"Python {platform.python_version()}; load average before {load_before}, after "
        f"{load_after}; repeats {repeats} (job s = best, 1st job s = the first after start-up)\n"
        "vs serial / vs PySpark: speed ratio (their job s / this job s; > 1 = faster); "
        "the PySpark reference is its fastest equal variant of the task; start-up is not in "
        "job s; sample rows are compared with serial on the same sample"
    )
    versions = sorted({r["version"] for r in rows if r.get("version")})
    head += "\nversions: " + "; ".join(versions) + f"; {java_version()}"
    print(head)
    print(text)
    png = chart(rows, expected, out_dir / "wordcount_engines.png")
    summary = {
        "benchmark": "peers",
        "quick": args.quick,
        "repeats": repeats,
        "python": platform.python_version(),
        "cores": os.cpu_count(),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "workload": expected,
        "rows": rows,
        "pyspark_reference": {
            t: f"{r['variant']}" for t, r in reference_rows(rows, "pyspark").items()
        },
        "versions": versions,
        "all_equal": all(r.get("equal") for r in rows if not r.get("not_run")),
        "not_equal": [
            f"{r['engine']}/{r['task']}/{r['variant']}" for r in rows if not r.get("equal")
        ],
        "chart": str(png) if png else None,
        "wall_s": wall,
    }
    (out_dir / "peers.json").write_text(json.dumps(summary, indent=1))
    (out_dir / "peers.txt").write_text(head + "\n" + text + "\n")
    print(
        f"wrote {out_dir / 'peers.json'}, {out_dir / 'peers.txt'}, {png}; worker logs in {log_dir}",
        file=sys.stderr,
    )
    print(
        json.dumps(
            {
                k: summary[k]
                for k in (
                    "benchmark",
                    "quick",
                    "all_equal",
                    "not_equal",
                    "chart",
                    "wall_s",
                    "loadavg_before",
                    "loadavg_after",
                )
            }
            | {
                "job_s": {
                    f"{r['engine']}/{r['task']}/{r['variant']}": r.get("job_s") for r in rows
                },
                "startup_s": {
                    f"{r['engine']}/{r['task']}/{r['variant']}": r.get("startup_s") for r in rows
                },
            }
        )
    )
    return summary


if __name__ == "__main__":
    main()
