"""shardyard's word count and keyed sum, written the ways the README shows (2 actors).

Variants (``--task wordcount``):

- ``files``: ``ShardPool(count_file)``, files as (keyless) items, the per-file Counters
  merged in the driver as ``map_unordered`` yields them.
- ``shard-files``: a ``Shard`` that reads the files it is given (keyed by file path) into its
  Counter; ``pool.map(paths, keys=paths)`` then ``pool.reduce(operator.add)``.
- ``shard-words``: the README's ``WordCount`` shard (``process_item``): the driver reads and
  splits the files, ``pool.map(words, keys=words)``, then ``pool.reduce(operator.add)``.
- ``shard-words-batch``: the same with ``process(batch)`` doing ``Counter.update(batch)``.

``--task keyed``: ``keys``/``values`` int64 arrays; items are ``key << 32 | value`` (one int64
array, so the handler sees both), ``keys=keys``; a ``Shard`` whose ``process(batch)`` does
``np.add.at`` into a dense per-shard array; ``pool.map`` then ``pool.reduce(operator.add)``.

Start-up (``shardyard.connect`` + ``ShardPool(...).start()``) is timed apart from the job. A
``Shard`` pool keeps its state, so every repeat gets a fresh pool (its start is not timed in
the job; the first start, with Ray's, is ``startup_s``).
"""

# ruff: noqa: E402  (imports after T_PROCESS: their time is reported as import_s)

from __future__ import annotations

import time

T_PROCESS = time.perf_counter()

import operator
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import ray
from common import (
    NUM_WORKERS,
    check_counts,
    count_file,
    digest_sums,
    emit,
    load_workload,
    parse_args,
    read_lines,
    read_words,
    row,
)

import shardyard
from shardyard import ClusterConfig, Shard, ShardPool

IMPORT_S = time.perf_counter() - T_PROCESS
LOW32 = (1 << 32) - 1


class FileWords(Shard):
    """Reads the files routed to it (keyed by path) into one Counter."""

    def setup(self, shard_id: int) -> None:
        self.counts: Counter[str] = Counter()

    def process_item(self, path: str) -> None:
        self.counts.update(read_words(path))

    def result(self) -> Counter[str]:
        return self.counts


class WordCount(Shard):
    """The README's example shard."""

    def setup(self, shard_id: int) -> None:
        self.counts: Counter[str] = Counter()

    def process_item(self, word: str) -> None:
        self.counts[word] += 1

    def result(self) -> Counter[str]:
        return self.counts


class WordCountBatch(Shard):
    """The same, a batch at a time."""

    def setup(self, shard_id: int) -> None:
        self.counts: Counter[str] = Counter()

    def process(self, batch: list[str]) -> None:
        self.counts.update(batch)

    def result(self) -> Counter[str]:
        return self.counts


class KeyedSum(Shard):
    """Per-key sums of ``key << 32 | value`` items, dense over the keys (grown as needed)."""

    def setup(self, shard_id: int) -> None:
        self.sums = np.zeros(0, dtype=np.int64)

    def process(self, batch: np.ndarray) -> None:
        batch = np.asarray(batch, dtype=np.int64)
        keys = batch >> 32
        if len(keys) and keys.max() >= len(self.sums):
            grown = np.zeros(int(keys.max()) + 1, dtype=np.int64)
            grown[: len(self.sums)] = self.sums
            self.sums = grown
        np.add.at(self.sums, keys, batch & LOW32)

    def result(self) -> np.ndarray:
        return self.sums


NOTES = {
    "files": "ShardPool(count_file).map_unordered(paths), driver merges",
    "shard-files": "Shard reads files keyed by path; reduce(operator.add)",
    "shard-files+update": "Shard reads files keyed by path; reduce(in-place update)",
    "shard-words": "driver splits; README WordCount (process_item); reduce(operator.add)",
    "shard-words-batch": "driver splits; Shard process(batch): Counter.update; reduce(add)",
}


def split_note(extra: dict[str, Any]) -> str:
    """``; map X s + reduce Y s`` of the best run, when measured apart."""
    if "map_s" not in extra:
        return ""
    i = min(range(len(extra["map_s"])), key=lambda k: extra["map_s"][k] + extra["reduce_s"][k])
    return f"; map {extra['map_s'][i]:.2f} s + reduce {extra['reduce_s'][i]:.2f} s"


def update_into(a: Counter[str], b: Counter[str]) -> Counter[str]:
    a.update(b)
    return a


def add_arrays(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if len(a) < len(b):
        a, b = b, a
    out = a.copy()
    out[: len(b)] += b
    return out


def main() -> None:
    args = parse_args()
    exp = load_workload(args.workload)
    w = Path(args.workload)
    t0 = time.perf_counter()
    info = shardyard.connect(config=ClusterConfig(num_cpus=NUM_WORKERS))
    connect_s = time.perf_counter() - t0

    def fresh(handler: Any, **kw: Any) -> tuple[ShardPool, float]:
        t = time.perf_counter()
        pool = ShardPool(handler, num_actors=NUM_WORKERS, **kw).start()
        return pool, time.perf_counter() - t

    jobs: list[float] = []
    pool_starts: list[float] = []
    result: Any = None
    extra: dict[str, Any] = {}

    if args.task == "wordcount":
        paths = read_lines(w / "files.txt")
        expected, items = exp["wordcount"]["digest"], exp["wordcount"]["words"]
        v = args.variant

        if v == "files":
            pool, s = fresh(count_file)
            pool_starts.append(s)
            try:
                for _ in range(args.repeats):
                    t = time.perf_counter()
                    total: Counter[str] = Counter()
                    for c in pool.map_unordered(paths):
                        total.update(c)
                    jobs.append(time.perf_counter() - t)
                    result = total
            finally:
                pool.close()
        elif v in ("shard-files", "shard-files+update", "shard-words", "shard-words-batch"):
            handler = {
                "shard-files": FileWords,
                "shard-files+update": FileWords,
                "shard-words": WordCount,
                "shard-words-batch": WordCountBatch,
            }[v]
            map_s: list[float] = []
            for _ in range(args.repeats):
                pool, s = fresh(handler)
                pool_starts.append(s)
                try:
                    t = time.perf_counter()
                    if v.startswith("shard-files"):
                        pool.map(paths, keys=paths)
                    else:
                        words = [x for p in paths for x in read_words(p)]
                        pool.map(words, keys=words)
                    t_map = time.perf_counter()
                    # The README's reduce(operator.add); "+update": an in-place combine (the
                    # first argument is a private copy, so updating it is allowed).
                    result = pool.reduce(update_into if v.endswith("+update") else operator.add)
                    jobs.append(time.perf_counter() - t)
                    map_s.append(t_map - t)
                finally:
                    pool.close()
            extra["map_s"] = map_s
            extra["reduce_s"] = [j - m for j, m in zip(jobs, map_s, strict=True)]
        else:
            raise SystemExit(f"unknown variant {v}")
        digest, diff = check_counts(w, result, expected)
        emit(
            **row(
                "shardyard",
                v,
                args.task,
                connect_s + pool_starts[0],
                jobs,
                items,
                digest,
                expected,
                note=NOTES[v] + split_note(extra) + (f"; {diff}" if diff else ""),
                version=f"shardyard {shardyard.__version__}, ray {ray.__version__}",
                import_s=IMPORT_S,
                connect_s=connect_s,
                pool_start_s=pool_starts,
                distinct=len(result),
                **extra,
            )
        )
    elif args.task == "keyed":
        keys = np.load(w / "keys.npy")
        values = np.load(w / "values.npy")
        expected, n = exp["keyed"]["digest"], len(keys)
        num_keys = exp["keyed"]["num_keys"]
        # The packing (key << 32 | value) is part of the job, as building a DataFrame is.
        consume: dict[str, Callable[[ShardPool], Any]] = {
            "map": lambda p: p.map((keys << 32) | values, keys=keys),
            "map_unordered": lambda p: sum(
                1 for _ in p.map_unordered((keys << 32) | values, keys=keys)
            ),
            "map-batch16384": lambda p: p.map((keys << 32) | values, keys=keys),
        }
        options = {"map-batch16384": {"max_batch_size": 16384}}.get(args.variant, {})
        map_s = []
        for _ in range(args.repeats):
            pool, s = fresh(KeyedSum, **options)
            pool_starts.append(s)
            try:
                t = time.perf_counter()
                consume[args.variant](pool)
                t_map = time.perf_counter()
                sums = pool.reduce(add_arrays)
                jobs.append(time.perf_counter() - t)
                map_s.append(t_map - t)
            finally:
                pool.close()
        dense = np.zeros(num_keys, dtype=np.int64)
        dense[: len(sums)] = sums
        extra = {"map_s": map_s, "reduce_s": [j - m for j, m in zip(jobs, map_s, strict=True)]}
        emit(
            **row(
                "shardyard",
                args.variant,
                args.task,
                connect_s + pool_starts[0],
                jobs,
                n,
                digest_sums(dense),
                expected,
                note="items key<<32|value, keys=keys; Shard np.add.at; reduce"
                + (f"; max_batch_size={options['max_batch_size']}" if options else "")
                + split_note(extra),
                version=f"shardyard {shardyard.__version__}, ray {ray.__version__}",
                import_s=IMPORT_S,
                connect_s=connect_s,
                pool_start_s=pool_starts,
                **extra,
            )
        )
    shardyard.disconnect()
    del info


if __name__ == "__main__":
    main()
