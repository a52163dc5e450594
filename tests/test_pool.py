"""End-to-end behaviour of ShardPool on a real local Ray."""

from __future__ import annotations

import asyncio
import concurrent.futures
import operator
import threading
import time
from collections import Counter
from typing import Any

import numpy as np
import pydantic
import pytest
import ray

from shardyard import (
    ConfigError,
    InputError,
    PoolClosedError,
    SerializationError,
    Shard,
    ShardPool,
    TaskError,
    place,
)

pytestmark = pytest.mark.usefixtures("ray_local")


class Recorder(Shard):
    """Records the order in which its items arrive."""

    def setup(self, shard_id: int) -> None:
        self.seen: list[Any] = []

    def process(self, batch: Any) -> list[int]:
        self.seen.extend(batch)
        return [self.shard_id] * len(batch)

    def result(self) -> list[Any]:
        return self.seen


class WordCount(Shard):
    def setup(self, shard_id: int) -> None:
        self.counts: Counter[str] = Counter()

    def process_item(self, word: str) -> None:
        self.counts[word] += 1

    def result(self) -> Counter[str]:
        return self.counts


class AsyncDouble(Shard):
    async def process(self, batch: Any) -> list[int]:
        await asyncio.sleep(0)
        return [2 * x for x in batch]


def _words(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(500)]
    return [vocab[i] for i in rng.zipf(1.3, n) % 500]


def test_map_keeps_input_order_per_item_handler() -> None:
    with ShardPool(lambda x: x * 3, num_actors=2, max_batch_size=64) as pool:
        items = list(range(5000))
        assert pool.map(items) == [3 * x for x in items]


def test_map_numpy_in_numpy_out_with_batched_handler() -> None:
    arr = np.arange(100_000, dtype=np.int64)
    with ShardPool(lambda a: a * 2, batched=True, num_actors=2) as pool:
        out = pool.map(arr)
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, arr * 2)


def test_empty_inputs() -> None:
    with ShardPool(lambda a: a + 1, batched=True, num_actors=1) as pool:
        out = pool.map(np.arange(0))
        assert isinstance(out, np.ndarray) and out.size == 0
        assert pool.map([]) == []
        assert list(pool.map_unordered(iter([]))) == []


def test_keyed_map_keeps_order_and_affinity() -> None:
    keys = [f"user-{i % 37}" for i in range(3000)]
    with ShardPool(Recorder, num_actors=2, num_shards=8, max_batch_size=16) as pool:
        shard_of_item = pool.map(list(range(3000)), keys=keys)
        routed = pool.shard_of(keys)
        per_shard = pool.results()
    # Affinity: each key's items all reached one shard, the one the strategy names.
    assert shard_of_item == routed.tolist()
    by_key: dict[str, set[int]] = {}
    for k, s in zip(keys, shard_of_item, strict=True):
        by_key.setdefault(k, set()).add(s)
    assert all(len(s) == 1 for s in by_key.values())
    # Per-shard order: each shard saw its items in submission order.
    for sid, seen in per_shard.items():
        expected = [i for i, s in enumerate(shard_of_item) if s == sid]
        assert seen == expected


def test_stateful_word_count_equals_serial_reference() -> None:
    words = _words(20_000)
    with ShardPool(WordCount, num_actors=2, num_shards=12) as pool:
        pool.map(words, keys=words)
        total = pool.reduce(operator.add)
        partials = pool.results()
    assert total == Counter(words)
    # Every word lives in exactly one shard's partial.
    owners = Counter(w for part in partials.values() for w in part)
    assert set(owners.values()) == {1}


def test_submit_futures_are_concurrent_futures_and_awaitable() -> None:
    with ShardPool(lambda x: x + 1, num_actors=2) as pool:
        futs = [pool.submit(i, key=i) for i in range(2000)]
        _done, not_done = concurrent.futures.wait(futs, timeout=60)
        assert not not_done
        assert sorted(f.result() for f in concurrent.futures.as_completed(futs)) == list(
            range(1, 2001)
        )
        assert all(isinstance(f, concurrent.futures.Future) for f in futs)

        async def main() -> list[int]:
            more = [pool.submit(i, key=str(i)) for i in range(500)]
            return list(await asyncio.gather(*more))

        assert asyncio.run(main()) == list(range(1, 501))


def test_async_api() -> None:
    async def main() -> tuple[list[int], list[int], int, dict[int, Any]]:
        async with ShardPool(AsyncDouble, num_actors=2) as pool:
            mapped = await pool.amap(list(range(300)), keys=list(range(300)))
            streamed = [y async for y in pool.amap_unordered(range(300))]
            one = await pool.asubmit(21, key="k")
            many = await asyncio.gather(*(pool.asubmit(i, key=i) for i in range(1000)))
            assert many == [2 * i for i in range(1000)]
            results = await pool.aresults()
        return mapped, streamed, one, results

    mapped, streamed, one, results = asyncio.run(main())
    assert mapped == [2 * x for x in range(300)]
    assert sorted(streamed) == [2 * x for x in range(300)]
    assert one == 42
    assert len(results) == 16


def test_blocking_api_inside_a_running_event_loop() -> None:
    # As in Jupyter: a loop is running in this thread and the user calls blocking methods.
    async def notebook_cell() -> tuple[list[int], int]:
        with ShardPool(lambda x: -x, num_actors=2) as pool:
            return pool.map(range(100)), pool.submit(5).result(timeout=60)

    out, one = asyncio.run(notebook_cell())
    assert out == [-x for x in range(100)]
    assert one == -5


def _fail_on_bad(x: int) -> int:
    if x % 100 == 13:
        raise ValueError(f"bad item {x}")
    return x


def test_handler_error_names_shard_and_key_and_others_finish() -> None:
    items = list(range(1000))
    keys = [f"k{i}" for i in items]
    with ShardPool(_fail_on_bad, num_actors=2, num_shards=8) as pool:
        with pytest.raises(TaskError) as info:
            pool.map(items, keys=keys)
        err = info.value
        assert err.key == "k13"
        assert err.shard_id == int(pool.shard_of(["k13"])[0])
        assert isinstance(err.cause, ValueError)
        assert "bad item 13" in str(err)
        assert "_fail_on_bad" in err.remote_traceback  # the original traceback
        out = pool.map(items, keys=keys, return_exceptions=True)
        failed = [i for i, v in enumerate(out) if isinstance(v, TaskError)]
        assert failed == [i for i in items if i % 100 == 13]
        assert all(out[i] == i for i in items if i % 100 != 13)
        fut = pool.submit(13, key="k13")
        with pytest.raises(TaskError):
            fut.result(timeout=60)
        assert pool.submit(14, key="k14").result(timeout=60) == 14
        stats = pool.stats()
        assert sum(s.errors for s in stats.shards) == 10 + 10 + 1


class OutOfStock(Exception):
    """An exception class of the user's (this module travels by value, as a notebook's
    ``__main__`` does)."""


def _sell(sku: str) -> str:
    if sku == "anvil":
        err = OutOfStock(f"no {sku} left")
        err.sku = sku  # type: ignore[attr-defined]
        raise err
    return sku


def test_a_users_own_exception_class_comes_back_as_itself() -> None:
    with ShardPool(_sell, num_actors=2) as pool, pytest.raises(TaskError) as info:
        pool.map(["rope", "anvil"], keys=["rope", "anvil"])
    err = info.value
    assert type(err.cause) is OutOfStock and err.cause.sku == "anvil"  # type: ignore[attr-defined]
    assert "OutOfStock: no anvil left" in str(err).splitlines()[0]


class NeedsTwo(Exception):
    """An exception whose __init__ does not take its .args back (plain pickle cannot load it)."""

    def __init__(self, what: str, code: int) -> None:
        super().__init__(f"{what} failed with {code}")
        self.code = code


def _raise_odd(x: int) -> int:
    if x == 3:
        raise SystemExit(3)
    if x == 5:
        raise KeyboardInterrupt("in the handler")
    if x == 7:
        raise NeedsTwo("seven", 77)
    return x


def test_systemexit_and_keyboardinterrupt_in_a_handler_fail_their_item_alone() -> None:
    # Escaping, they would end the actor's event loop thread: every later call would hang.
    with ShardPool(_raise_odd, num_actors=1) as pool:
        out = pool.map(range(10), return_exceptions=True)
        assert [v for i, v in enumerate(out) if i not in (3, 5, 7)] == [0, 1, 2, 4, 6, 8, 9]
        assert type(out[3].cause) is SystemExit and out[3].cause.code == 3
        assert type(out[5].cause) is KeyboardInterrupt
        assert pool.map(range(3)) == [0, 1, 2]  # the actor still answers


def test_an_exception_with_its_own_init_signature_keeps_its_type() -> None:
    with ShardPool(_raise_odd, num_actors=1) as pool, pytest.raises(TaskError) as info:
        pool.map([7])
    cause = info.value.cause
    assert type(cause) is NeedsTwo and cause.code == 77  # type: ignore[attr-defined]
    assert str(cause) == "seven failed with 77"


def _batched_fail(batch: Any) -> Any:
    if (batch == 7).any():
        raise RuntimeError("seven")
    return batch + 1


def test_batched_handler_failure_is_pinned_to_its_item() -> None:
    with ShardPool(_batched_fail, batched=True, num_actors=2) as pool:
        out = pool.map(np.arange(50), return_exceptions=True)
    assert isinstance(out[7], TaskError)
    assert [v for i, v in enumerate(out) if i != 7] == [i + 1 for i in range(50) if i != 7]


def test_bad_config_is_a_validation_error_naming_the_field() -> None:
    with pytest.raises(pydantic.ValidationError) as info:
        ShardPool(abs, num_actors=0)
    assert info.value.errors()[0]["loc"] == ("num_actors",)
    with pytest.raises(pydantic.ValidationError) as info:
        ShardPool(abs, max_batch_sise=3)
    assert info.value.errors()[0]["loc"] == ("max_batch_sise",)
    with pytest.raises(pydantic.ValidationError):
        ShardPool(abs, num_actors=4, num_shards=2)
    with pytest.raises(ValueError, match="valid names"):
        ShardPool(abs, strategy="nope")


def test_unpicklable_handler_fails_at_construction() -> None:
    lock = threading.Lock()
    with pytest.raises(SerializationError, match="cannot be pickled"):
        ShardPool(lambda x: (lock, x))


def test_unpicklable_item_fails_alone_without_hanging() -> None:
    items: list[Any] = [1, 2, threading.Lock(), 4]
    with ShardPool(lambda x: x, num_actors=1, num_shards=1) as pool:
        out = pool.map(items, return_exceptions=True)
        assert out[0] == 1 and out[1] == 2 and out[3] == 4
        assert isinstance(out[2], SerializationError)
        fut = pool.submit(threading.Lock())
        with pytest.raises(SerializationError):
            fut.result(timeout=60)


def test_closed_pool_refuses_work() -> None:
    pool = ShardPool(abs, num_actors=1)
    pool.close()
    with pytest.raises(PoolClosedError):
        pool.map([1])


def test_long_generator_runs_in_bounded_memory() -> None:
    n = 2_000_000
    pulled = 0
    max_ahead = 0
    consumed = 0

    def gen() -> Any:
        nonlocal pulled, max_ahead
        for i in range(n):
            pulled += 1
            max_ahead = max(max_ahead, pulled - consumed)
            yield i

    with ShardPool(
        lambda a: a & 1,  # an array operation: the batches are asked for as numpy arrays
        batched=True,
        batch_format="numpy",
        num_actors=2,
        max_pending_items=50_000,
        chunk_size=10_000,
    ) as pool:
        odd = 0
        for y in pool.map_unordered(gen(), keys=None):
            consumed += 1
            odd += y
    assert consumed == n
    assert odd == n // 2
    # The producer never ran more than the pending bound (+ one chunk) ahead of the consumer.
    assert max_ahead <= 50_000 + 2 * 10_000


def test_map_unordered_closed_early_reads_no_further_and_the_pool_goes_on() -> None:
    """``map_unordered`` returns an iterator stepped in C; like a generator it can be closed:
    an endless input is read no further, and the pool serves the next call exactly."""
    read = 0

    def endless() -> Any:
        nonlocal read
        while True:
            read += 1
            yield read

    with ShardPool(lambda x: x * 2, num_actors=2, max_pending_items=2_000, chunk_size=500) as pool:
        it = pool.map_unordered(endless())
        assert iter(it) is it
        got = [next(it) for _ in range(1_200)]
        it.close()
        assert len(set(got)) == 1_200 and all(y % 2 == 0 for y in got)
        after = read
        # Read ahead of the consumer: the pending bound and a chunk, no more.
        assert after <= len(got) + 2_000 + 500
        assert pool.map(range(1_000)) == [2 * x for x in range(1_000)]
        assert read == after  # nothing more was read after close()
        with pytest.raises(StopIteration):
            next(it)


def test_stats_report_shards_and_actors() -> None:
    with ShardPool(WordCount, num_actors=2, num_shards=6) as pool:
        words = _words(3000, seed=1)
        pool.map(words, keys=words)
        stats = pool.stats()
    assert stats.items == 3000
    assert len(stats.shards) == 6 and len(stats.actors) == 2
    assert {a.pid for a in stats.actors} != {None}
    assert sum(a.items for a in stats.actors) == 3000
    assert all(s.queue_depth == 0 for s in stats.shards)


def _inplace_update(a: Counter[str], b: Counter[str]) -> Counter[str]:
    a.update(b)
    return a


def test_reduce_with_an_in_place_combine_leaves_shard_state_alone() -> None:
    words = list("abcd") * 10
    with ShardPool(WordCount, num_actors=1, num_shards=4) as pool:
        pool.map(words, keys=words)
        first = pool.reduce(_inplace_update)
        second = pool.reduce(_inplace_update)
        partials = pool.results()
    assert first == second == Counter(words)
    assert sum(partials.values(), Counter()) == Counter(words)


SLOW_ACTOR_SHARDS = {s for s, a in place(8, [0, 1]).items() if a == 0}


class UnevenActors(Shard):
    """Items take 20x longer on actor 0's shards than on actor 1's."""

    def process_item(self, item: int) -> int:
        time.sleep(0.02 if self.shard_id in SLOW_ACTOR_SHARDS else 0.001)
        return item


def test_keyless_work_is_pulled_by_the_actor_with_room() -> None:
    with ShardPool(UnevenActors, num_actors=2, num_shards=8, max_batch_size=4) as pool:
        assert pool.map(range(300)) == list(range(300))
        stats = pool.stats()
    fast = sum(s.items for s in stats.shards if s.shard_id not in SLOW_ACTOR_SHARDS)
    # Pushed evenly, each actor would get 150; pulled, the fast actor takes most of it.
    assert fast > 225, fast


def test_keys_of_the_wrong_length_are_refused_before_any_work() -> None:
    with ShardPool(abs, num_actors=1) as pool:
        for items, keys in [
            (np.arange(10), [1, 2, 3]),
            (np.arange(3), np.arange(10)),
            ([1, 2, 3], [1]),
            ([1, 2, 3], [1, 2, 3, 4]),
        ]:
            with pytest.raises(ValueError, match="keys"):
                pool.map(items, keys=keys)
        # Iterators reveal their lengths only as they are read: the items paired with a key
        # are processed, and InputError accounts for them (see tests/test_input_errors.py).
        with pytest.raises(InputError, match="shorter") as info:
            pool.map(iter([-1, -2, -3]), keys=iter([1]))
        assert (info.value.submitted, info.value.partial) == (1, [1])
        with pytest.raises(InputError, match="longer"):
            pool.map(iter([1, 2]), keys=iter([1, 2, 3]))
        assert pool.map([-1, -2], keys=["a", "b"]) == [1, 2]  # the pool is still fine


def test_submit_then_map_keep_per_key_order() -> None:
    with ShardPool(Recorder, num_actors=1, num_shards=2) as pool:
        pool.submit("first", key="k")
        pool.map(["second"], keys=["k"])
        pool.submit("third", key="k")
        seen = pool.results()[int(pool.shard_of(["k"])[0])]
    assert seen == ["first", "second", "third"]


def test_a_bad_key_fails_only_its_own_submit() -> None:
    with ShardPool(abs, num_actors=1) as pool:
        futs = [pool.submit(-i, key=i) for i in range(50)]
        bad = pool.submit(-7, key=2.5)
        futs += [pool.submit(-i, key=str(i)) for i in range(50)]
        with pytest.raises(TypeError, match="float"):
            bad.result(timeout=60)
        assert [f.result(timeout=60) for f in futs] == list(range(50)) * 2


async def _async_inc(x: int) -> int:
    return x + 1


def test_plain_async_function_handler() -> None:
    with ShardPool(_async_inc, num_actors=1) as pool:
        assert pool.map(range(5)) == [1, 2, 3, 4, 5]


def test_close_fails_work_still_pending_and_refuses_more() -> None:
    pool = ShardPool(lambda x: (time.sleep(0.05), x)[1], num_actors=1, max_batch_size=1)
    futs = [pool.submit(i) for i in range(40)]
    pool.close(wait=False)
    outcomes = [
        type(f.exception(timeout=60)).__name__ if f.exception(timeout=60) else "ok" for f in futs
    ]
    assert set(outcomes) <= {"ok", "PoolClosedError"} and "PoolClosedError" in outcomes
    with pytest.raises(PoolClosedError):
        pool.submit(1)


def _unpicklable_output(x: str) -> Any:
    return threading.Lock() if x == "bad" else x


def test_an_unpicklable_output_fails_only_its_item() -> None:
    with ShardPool(_unpicklable_output, num_actors=1, num_shards=1) as pool:
        out = pool.map(["a", "bad", "b"], keys=["a", "bad", "b"], return_exceptions=True)
        assert out[0] == "a" and out[2] == "b"
        assert isinstance(out[1], TaskError) and "cannot be pickled" in str(out[1])
        assert pool.submit("c", key="c").result(timeout=60) == "c"


class _FailsToUnpickle:
    def __reduce__(self) -> Any:
        return (_raise_on_load, ())


def _raise_on_load() -> None:
    raise RuntimeError("cannot load me here")


def test_a_call_that_fails_before_running_does_not_stall_its_shard() -> None:
    with ShardPool(lambda x: x, num_actors=1, num_shards=1) as pool:
        with pytest.raises(TaskError):
            pool.submit(_FailsToUnpickle(), key="k").result(timeout=60)
        assert pool.submit("next", key="k").result(timeout=60) == "next"


@pytest.mark.parametrize("fmt", ["input", "list", "numpy"])
def test_a_batch_is_the_type_its_input_came_in_unless_asked(fmt: str) -> None:
    def kinds(batch: Any) -> Any:
        return [type(batch).__name__] * len(batch)

    def expect(given: str) -> str:
        return {"input": given, "list": "list", "numpy": "ndarray"}[fmt]

    with ShardPool(kinds, batched=True, num_actors=1, batch_format=fmt) as pool:
        assert pool.submit(3).result(timeout=60) == expect("list")
        assert pool.map([1, 2]) == [expect("list")] * 2
        assert pool.map(iter([1, 2]), keys=[1, 2]) == [expect("list")] * 2
        assert pool.map(["a", "b"]) == [expect("list")] * 2
        assert list(pool.map(np.arange(3))) == [expect("ndarray")] * 3


def test_batched_handler_gets_arrays_from_submit_when_asked() -> None:
    def double(a: Any) -> Any:
        assert isinstance(a, np.ndarray), type(a)
        return a * 2

    with ShardPool(double, batched=True, num_actors=1, batch_format="numpy") as pool:
        assert pool.submit(3).result(timeout=60) == 6
        assert pool.map([1, 2]) == [2, 4]


def test_wait_does_not_wait_for_work_submitted_after_it() -> None:
    with ShardPool(lambda x: (time.sleep(0.001), x)[1], num_actors=2) as pool:
        stop = threading.Event()
        produced: list[Any] = []

        def produce() -> None:
            for i in range(100_000):  # bounded: stops when told, or after this many
                if stop.wait(0.001):  # a steady trickle of work
                    return
                produced.append(pool.submit(i, key=i))

        producer = threading.Thread(target=produce)
        producer.start()
        while len(produced) < 100:
            time.sleep(0.01)
        mine = pool.submit(-1, key="mine")
        pool.wait()  # returns once what came before it finished, despite the producer
        still_producing = producer.is_alive()
        stop.set()
        producer.join(60)
        assert mine.done() and mine.result() == -1
        assert still_producing
        assert [f.result(timeout=120) for f in produced] == list(range(len(produced)))


class WhichShard(Shard):
    def process_item(self, item: Any) -> int:
        return self.shard_id


def test_range_strategy_with_num_shards_derived_at_start() -> None:
    # 2 actors -> 16 shards by default, known only at start: 15 boundaries fit.
    bounds = [100 * i for i in range(1, 16)]
    keys = list(range(0, 1600, 7))
    with ShardPool(
        WhichShard, strategy="range", num_actors=2, strategy_options={"boundaries": bounds}
    ) as pool:
        assert pool.map(keys, keys=keys) == np.searchsorted(bounds, keys, side="right").tolist()
        assert pool.num_shards == 16


def test_range_boundaries_that_do_not_fit_the_derived_num_shards() -> None:
    pool = ShardPool(abs, strategy="range", num_actors=2, strategy_options={"boundaries": [1, 2]})
    try:
        with pytest.raises(ConfigError, match=r"range needs num_shards - 1 = 15 boundaries, got 2"):
            pool.map([1], keys=[1])
    finally:
        pool.close()


def test_outputs_of_any_type_arrive_equal_dicts_arrays_and_objects() -> None:
    # Non-scalar outputs travel pickled by the actor (once) with arrays out of band.
    def make(i: int) -> Any:
        return {"i": i, "arr": np.full(50_000, i), "set": {i, -i}}

    with ShardPool(make, num_actors=2, num_shards=8) as pool:
        out = pool.map(list(range(40)), keys=[str(i) for i in range(40)])
        assert [o["i"] for o in out] == list(range(40))
        assert all(np.array_equal(o["arr"], np.full(50_000, i)) for i, o in enumerate(out))
        assert [o["set"] for o in out] == [{i, -i} for i in range(40)]
        got = sorted(o["i"] for o in pool.map_unordered(range(40)))
        assert got == list(range(40))


class _SharesItsArray(Shard):
    """Returns its live state array with each output, and changes it in place after."""

    def setup(self, shard_id: int) -> None:
        self.n = 0
        self.arr = np.zeros(100_000, dtype=np.int64)

    def process_item(self, item: int) -> Any:
        self.n += 1
        self.arr[:] = self.n
        return {"n": self.n, "arr": self.arr}


def test_an_output_is_what_it_was_when_its_item_ended_even_if_it_shares_state() -> None:
    # Outputs are pickled when their batch ends, arrays included (copied out of band): a
    # later batch of the shard, in the same call, does not change what an earlier one gave.
    with ShardPool(_SharesItsArray, num_actors=1, num_shards=1, max_batch_size=1) as pool:
        out = pool.map(list(range(60)), keys=["a"] * 60, timeout=120)
        assert [o["n"] for o in out] == list(range(1, 61))
        assert [int(o["arr"][0]) for o in out] == list(range(1, 61))
        assert all(int(o["arr"].min()) == int(o["arr"].max()) for o in out)


def _with_ref(x: int) -> Any:
    return {"x": x, "ref": ray.put(x * 10)}


def test_outputs_holding_object_refs_go_to_ray_unpickled_and_resolve() -> None:
    # Only Ray's serialisation of the reply may pickle an ObjectRef (it counts the reference;
    # pickled by shardyard, the object stayed pinned in the actor for the process's life).
    from shardyard.actors.handler import ensure_picklable

    outputs = [{"ref": ray.put(1)}]
    assert ensure_picklable(outputs, [])[0] is outputs
    with ShardPool(_with_ref, num_actors=2, num_shards=4) as pool:
        out = pool.map(list(range(20)))
        assert [ray.get(o["ref"], timeout=60) for o in out] == [x * 10 for x in range(20)]
