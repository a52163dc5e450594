"""Dask on ``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)`` (own venv).

Start-up: the cluster and its ``Client`` (both worker processes up). Variants:

- ``bag-frequencies`` (word count): ``db.from_sequence(paths, npartitions=16)
  .map(read_words).flatten().frequencies().compute()`` into a dict.
- ``bag-counter-reduction``: ``db.from_sequence(paths, npartitions=16)
  .reduction(count_files, merge_all)``: a Counter per partition, merged in a tree.
- ``dataframe-groupby`` (keyed): ``dd.from_pandas(DataFrame(k, v), npartitions=8)
  .groupby("k").v.sum().compute()``.
"""

# ruff: noqa: E402  (imports after T_PROCESS: their time is reported as import_s)

from __future__ import annotations

import time

T_PROCESS = time.perf_counter()

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import dask
import dask.bag as db
import dask.dataframe as dd
import numpy as np
import pandas as pd
from common import (
    NUM_WORKERS,
    check_counts,
    count_files,
    digest_sums,
    emit,
    load_workload,
    merge_counters,
    parse_args,
    read_lines,
    read_words,
    row,
)
from dask.distributed import Client, LocalCluster

IMPORT_S = time.perf_counter() - T_PROCESS
PARTITIONS = 16
KEYED_PARTITIONS = 8


def merge_all(parts: Iterable[Counter[str]]) -> Counter[str]:
    total: Counter[str] = Counter()
    for c in parts:
        total = merge_counters(total, c)
    return total


def main() -> None:
    args = parse_args()
    exp = load_workload(args.workload)
    w = Path(args.workload)
    v = args.variant
    t0 = time.perf_counter()
    cluster = LocalCluster(
        n_workers=NUM_WORKERS,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
    )
    client = Client(cluster)
    client.wait_for_workers(NUM_WORKERS)
    startup = time.perf_counter() - t0
    jobs: list[float] = []
    result: Any = None

    if args.task == "wordcount":
        paths = read_lines(w / "files.txt")
        for _ in range(args.repeats):
            t = time.perf_counter()
            bag = db.from_sequence(paths, npartitions=PARTITIONS)
            if v == "bag-frequencies":
                result = dict(bag.map(read_words).flatten().frequencies().compute())
            elif v == "bag-counter-reduction":
                result = bag.reduction(count_files, merge_all).compute()
            else:
                raise SystemExit(f"unknown variant {v}")
            jobs.append(time.perf_counter() - t)
        expected = exp["wordcount"]["digest"]
        digest, diff = check_counts(w, result, expected)
        items = exp["wordcount"]["words"]
        note = f"{PARTITIONS} partitions of paths" + (f"; {diff}" if diff else "")
    else:
        keys = np.load(w / "keys.npy")
        values = np.load(w / "values.npy")
        num_keys = exp["keyed"]["num_keys"]
        for _ in range(args.repeats):
            t = time.perf_counter()
            ddf = dd.from_pandas(
                pd.DataFrame({"k": keys, "v": values}), npartitions=KEYED_PARTITIONS
            )
            s = ddf.groupby("k")["v"].sum().compute()
            result = np.zeros(num_keys, dtype=np.int64)
            result[s.index.to_numpy()] = s.to_numpy()
            jobs.append(time.perf_counter() - t)
        digest, expected, items = digest_sums(result), exp["keyed"]["digest"], len(keys)
        diff = ""
        note = f"from_pandas, {KEYED_PARTITIONS} partitions, groupby sum"
    emit(
        **row(
            "dask",
            v,
            args.task,
            startup,
            jobs,
            items,
            digest,
            expected,
            note=note,
            version=f"dask {dask.__version__}",
            import_s=IMPORT_S,
        )
    )
    client.close()
    cluster.close()


if __name__ == "__main__":
    main()
