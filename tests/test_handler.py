"""Tests of shardyard.actors.handler.run_batch: per-item handlers run every item exactly once.

Pure Python, no Ray: ``run_batch`` is what a shard actor calls on each batch.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import numpy as np
import pytest

from shardyard import Shard
from shardyard.actors.handler import ItemFailure, run_batch

BATCH = ["a"] * 50 + ["bad"] + ["a"] * 50


def _run(handler: Any, batch: Any, batched: bool = False) -> tuple[list[Any], list[ItemFailure]]:
    out, failures = asyncio.run(run_batch(handler, batched, batch))
    return list(out), failures


class WordCount(Shard):
    """Overrides only process_item: run_batch isolates failures per item."""

    def setup(self, shard_id: int) -> None:
        self.counts: Counter[str] = Counter()

    def process_item(self, word: str) -> int:
        if word == "bad":
            raise ValueError("bad word")
        self.counts[word] += 1
        return self.counts[word]


def test_shard_process_item_applies_each_item_exactly_once() -> None:
    shard = WordCount()
    shard.setup(0)
    out, failures = _run(shard, BATCH)
    assert [f.position for f in failures] == [50]
    assert shard.counts == Counter({"a": 100})
    assert out == [*range(1, 51), None, *range(51, 101)]
    exc = failures[0].exception()
    assert isinstance(exc, ValueError) and str(exc) == "bad word"
    assert "bad word" in failures[0].traceback


def test_plain_per_item_function_sees_each_item_exactly_once() -> None:
    seen: list[Any] = []

    def handle(x: str) -> str:
        seen.append(x)
        if x == "bad":
            raise KeyError(x)
        return x.upper()

    out, failures = _run(handle, BATCH)
    assert seen == BATCH
    assert [f.position for f in failures] == [50]
    assert out == ["A"] * 50 + [None] + ["A"] * 50


@pytest.mark.parametrize("batch", [list(range(10)), np.arange(10)], ids=["list", "array"])
def test_outputs_hold_none_exactly_where_items_failed(batch: Any) -> None:
    calls: list[int] = []

    def handle(x: int) -> int:
        calls.append(x)
        if x % 3 == 0:
            raise ZeroDivisionError(x)
        return x * 10

    out, failures = _run(handle, batch)
    assert calls == list(range(10))
    assert [f.position for f in failures] == [0, 3, 6, 9]
    assert out == [None, 10, 20, None, 40, 50, None, 70, 80, None]
    assert all(isinstance(f.exception(), ZeroDivisionError) for f in failures)


def test_per_item_without_failures() -> None:
    seen: list[int] = []

    def handle(x: int) -> int:
        seen.append(x)
        return x + 1

    out, failures = _run(handle, np.arange(5))
    assert (out, failures, seen) == ([1, 2, 3, 4, 5], [], [0, 1, 2, 3, 4])
    assert all(type(v) is int for v in out)  # numpy batches reach per-item code as Python ints


def test_async_per_item_function_sees_each_item_exactly_once() -> None:
    seen: list[Any] = []

    async def handle(x: str) -> str:
        await asyncio.sleep(0)
        seen.append(x)
        if x == "bad":
            raise RuntimeError(x)
        return x * 2

    out, failures = _run(handle, BATCH)
    assert seen == BATCH
    assert [f.position for f in failures] == [50]
    assert out == ["aa"] * 50 + [None] + ["aa"] * 50


def test_every_item_failing_gives_one_failure_per_item() -> None:
    seen: list[int] = []

    def handle(x: int) -> None:
        seen.append(x)
        raise ValueError(x)

    out, failures = _run(handle, [1, 2, 3])
    assert seen == [1, 2, 3]
    assert out == [None, None, None]
    assert [f.position for f in failures] == [0, 1, 2]
    assert [str(f.exception()) for f in failures] == ["1", "2", "3"]


def test_outputs_that_are_not_plain_scalars_go_pickled_once_with_arrays_out_of_band() -> None:
    from shardyard.actors.handler import ensure_picklable
    from shardyard.protocol import PickledOutputs

    big = np.arange(1 << 20, dtype=np.float64)  # 8 MB
    outputs = [{"a": 1}, big, None]
    wire, failures = ensure_picklable(outputs, [])
    assert type(wire) is PickledOutputs and failures == [] and len(wire) == 3
    assert len(wire.blob) < 4096  # the array travels as a buffer of its own, not in the blob
    loaded = wire.load()
    assert loaded[0] == {"a": 1} and loaded[2] is None
    assert np.array_equal(loaded[1], big)
    # Plain scalars and numeric arrays go as they are (Ray ships them without our pickling).
    assert ensure_picklable([1, "a", 2.0], [])[0] == [1, "a", 2.0]
    assert ensure_picklable(np.arange(3), [])[0] is not None
