"""Hand-written Ray baselines: tasks (a tree merge) and ``ray.util.ActorPool`` (2 actors).

Ray is started locally with 2 CPUs (``ray.init(num_cpus=2)``: start-up). Variants:

- ``tasks-tree`` (word count): the files in 16 chunks of about equal bytes, one task per
  chunk returning a Counter, the Counters merged pairwise by tasks in a tree; the root fetched.
- ``actorpool`` (word count): 2 actors (started and ready: start-up), ``ActorPool.map_unordered``
  over the 16 chunks, each chunk's Counter merged in the driver as it arrives.
- ``tasks-bincount`` (keyed): the arrays ``ray.put`` in 8 chunks (inside the job), one task per
  chunk doing ``np.bincount(keys, weights=values)``, the partial sums added in a tree of tasks.
- ``actorpool-bincount`` (keyed): the same chunks through ``ActorPool.map_unordered``, summed in
  the driver.
"""

# ruff: noqa: E402  (imports after T_PROCESS: their time is reported as import_s)

from __future__ import annotations

import time

T_PROCESS = time.perf_counter()

import itertools
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import ray
from common import (
    NUM_WORKERS,
    check_counts,
    chunks_by_size,
    count_files,
    digest_sums,
    emit,
    load_workload,
    merge_counters,
    parse_args,
    read_lines,
    row,
)
from ray.util import ActorPool

IMPORT_S = time.perf_counter() - T_PROCESS
NUM_CHUNKS = 16
KEYED_CHUNKS = 8


@ray.remote
def count_chunk(paths: list[str]) -> Counter[str]:
    return count_files(paths)


@ray.remote
def merge(a: Counter[str], b: Counter[str]) -> Counter[str]:
    return merge_counters(a, b)


@ray.remote
def bincount_chunk(keys: np.ndarray, values: np.ndarray, num_keys: int) -> np.ndarray:
    return np.rint(np.bincount(keys, weights=values, minlength=num_keys)).astype(np.int64)


@ray.remote
def add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a + b


@ray.remote
class Counting:
    def count(self, paths: list[str]) -> Counter[str]:
        return count_files(paths)

    def bincount(self, keys: np.ndarray, values: np.ndarray, num_keys: int) -> np.ndarray:
        return np.rint(np.bincount(keys, weights=values, minlength=num_keys)).astype(np.int64)

    def ready(self) -> bool:
        return True


def tree(refs: list[Any], fn: Any) -> Any:
    while len(refs) > 1:
        nxt = [fn.remote(refs[i], refs[i + 1]) for i in range(0, len(refs) - 1, 2)]
        if len(refs) % 2:
            nxt.append(refs[-1])
        refs = nxt
    return ray.get(refs[0])


def main() -> None:
    args = parse_args()
    exp = load_workload(args.workload)
    w = Path(args.workload)
    v = args.variant
    t0 = time.perf_counter()
    ray.init(num_cpus=NUM_WORKERS, include_dashboard=False, log_to_driver=False)
    init_s = time.perf_counter() - t0
    actors_s = 0.0
    pool = None
    if v.startswith("actorpool"):
        t = time.perf_counter()
        actors = [Counting.remote() for _ in range(NUM_WORKERS)]
        ray.get([a.ready.remote() for a in actors])
        actors_s = time.perf_counter() - t
        pool = ActorPool(actors)
    engine = "ray ActorPool" if pool is not None else "ray tasks"
    jobs: list[float] = []
    result: Any = None

    if args.task == "wordcount":
        paths = read_lines(w / "files.txt")
        chunks = chunks_by_size(paths, NUM_CHUNKS)
        for _ in range(args.repeats):
            t = time.perf_counter()
            if pool is None:
                result = tree([count_chunk.remote(c) for c in chunks], merge)
            else:
                total: Counter[str] = Counter()
                for c in pool.map_unordered(lambda a, ch: a.count.remote(ch), chunks):
                    total = merge_counters(total, c)
                result = total
            jobs.append(time.perf_counter() - t)
        expected = exp["wordcount"]["digest"]
        digest, diff = check_counts(w, result, expected)
        items = exp["wordcount"]["words"]
        note = (
            f"{len(chunks)} chunks of files by bytes; "
            + ("Counters merged in a tree of tasks" if pool is None else "merged in the driver")
            + (f"; {diff}" if diff else "")
        )
    else:
        keys = np.load(w / "keys.npy")
        values = np.load(w / "values.npy")
        num_keys = exp["keyed"]["num_keys"]
        bounds = np.linspace(0, len(keys), KEYED_CHUNKS + 1).astype(int)
        for _ in range(args.repeats):
            t = time.perf_counter()
            parts = [
                (ray.put(keys[lo:hi]), ray.put(values[lo:hi]))
                for lo, hi in itertools.pairwise(bounds)
            ]
            if pool is None:
                result = tree([bincount_chunk.remote(k, vv, num_keys) for k, vv in parts], add)
            else:
                result = np.zeros(num_keys, dtype=np.int64)
                for s in pool.map_unordered(
                    lambda a, kv: a.bincount.remote(kv[0], kv[1], num_keys), parts
                ):
                    result += s
            jobs.append(time.perf_counter() - t)
        digest, expected = digest_sums(result), exp["keyed"]["digest"]
        items = len(keys)
        note = f"{KEYED_CHUNKS} chunks ray.put, np.bincount per chunk; " + (
            "tree of add tasks" if pool is None else "summed in the driver"
        )
    emit(
        **row(
            engine,
            v,
            args.task,
            init_s + actors_s,
            jobs,
            items,
            digest,
            expected,
            note=note,
            version=f"ray {ray.__version__}",
            import_s=IMPORT_S,
            ray_init_s=init_s,
            actors_start_s=actors_s,
        )
    )
    ray.shutdown()


if __name__ == "__main__":
    main()
