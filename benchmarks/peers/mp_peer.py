"""stdlib ``multiprocessing.Pool(2)`` (the platform's default start method, fork on Linux).

Start-up: ``Pool(2)`` plus one round trip to each process (so both are up). Variants:

- ``imap_unordered`` (word count): ``pool.imap_unordered(count_file, paths, chunksize=8)``,
  each file's Counter merged in the driver as it arrives.
- ``map-bincount`` (keyed): the arrays in 8 chunks, ``pool.map`` of ``np.bincount`` per chunk
  (the chunks pickled to the workers), the partial sums added in the driver.
"""

# ruff: noqa: E402  (imports after T_PROCESS: their time is reported as import_s)

from __future__ import annotations

import time

T_PROCESS = time.perf_counter()

import itertools
import multiprocessing
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from common import (
    NUM_WORKERS,
    check_counts,
    count_file,
    digest_sums,
    emit,
    load_workload,
    parse_args,
    read_lines,
    row,
)

IMPORT_S = time.perf_counter() - T_PROCESS
CHUNKSIZE = 8
KEYED_CHUNKS = 8


def bincount_chunk(args: tuple[np.ndarray, np.ndarray, int]) -> np.ndarray:
    keys, values, num_keys = args
    return np.rint(np.bincount(keys, weights=values, minlength=num_keys)).astype(np.int64)


def pid(_: Any) -> int:
    import os

    return os.getpid()


def main() -> None:
    args = parse_args()
    exp = load_workload(args.workload)
    w = Path(args.workload)
    ctx = multiprocessing.get_context()
    t0 = time.perf_counter()
    pool = ctx.Pool(NUM_WORKERS)
    pool.map(pid, range(NUM_WORKERS), chunksize=1)
    startup = time.perf_counter() - t0
    jobs: list[float] = []
    result: Any = None
    with pool:
        if args.task == "wordcount":
            paths = read_lines(w / "files.txt")
            for _ in range(args.repeats):
                t = time.perf_counter()
                total: Counter[str] = Counter()
                for c in pool.imap_unordered(count_file, paths, chunksize=CHUNKSIZE):
                    total.update(c)
                result = total
                jobs.append(time.perf_counter() - t)
            expected = exp["wordcount"]["digest"]
            digest, diff = check_counts(w, result, expected)
            items = exp["wordcount"]["words"]
            note = f"chunksize={CHUNKSIZE}, per-file Counters merged in the driver"
            note += f"; {diff}" if diff else ""
        else:
            keys = np.load(w / "keys.npy")
            values = np.load(w / "values.npy")
            num_keys = exp["keyed"]["num_keys"]
            bounds = np.linspace(0, len(keys), KEYED_CHUNKS + 1).astype(int)
            for _ in range(args.repeats):
                t = time.perf_counter()
                parts = [
                    (keys[lo:hi], values[lo:hi], num_keys) for lo, hi in itertools.pairwise(bounds)
                ]
                result = np.sum(pool.map(bincount_chunk, parts, chunksize=1), axis=0)
                jobs.append(time.perf_counter() - t)
            digest, expected = digest_sums(result), exp["keyed"]["digest"]
            items = len(keys)
            note = f"{KEYED_CHUNKS} chunks pickled, np.bincount each, summed in the driver"
    emit(
        **row(
            "multiprocessing",
            args.variant,
            args.task,
            startup,
            jobs,
            items,
            digest,
            expected,
            note=note + f"; {ctx.get_start_method()}",
            version=f"Python {sys.version.split()[0]}",
            import_s=IMPORT_S,
        )
    )


if __name__ == "__main__":
    main()
