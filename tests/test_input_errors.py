"""Input that fails part-way: what was handed over finishes, and InputError accounts for it.

A bad key, a failing items or keys iterator, or a failing key function stops the reading. The
items handed over before the failure all run to the end, then ``InputError`` says where the
input failed (the absolute position), how many items were submitted, why, and (for ``map``)
what their outputs were. A keyed, stateful count shows nothing was lost or applied twice.
"""

from __future__ import annotations

import operator
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from shardyard import InputError, Shard, ShardPool, TaskError, UnsupportedKeyError

pytestmark = pytest.mark.usefixtures("ray_local")

N = 30_000
MOD = 977  # the key of item i is i % MOD
CHUNK = 4096  # several chunks before the failure, with backpressure in play


class KeyCount(Shard):
    """Counts the items of each key; outputs twice the item."""

    def setup(self, shard_id: int) -> None:
        self.counts: Counter[int] = Counter()

    def process_item(self, item: int) -> int:
        self.counts[item % MOD] += 1
        return 2 * item

    def result(self) -> Counter[int]:
        return self.counts


def _pool() -> ShardPool:
    return ShardPool(
        KeyCount,
        num_actors=2,
        num_shards=8,
        chunk_size=CHUNK,
        max_pending_items=2 * CHUNK,
        max_batch_size=256,
    )


def _serial_counts(n: int) -> Counter[int]:
    return Counter(i % MOD for i in range(n))


def _check_accounting(pool: ShardPool, err: InputError, position: int) -> None:
    assert err.position == position
    assert err.submitted == position  # everything before the failure, nothing after it
    assert err.__cause__ is err.cause
    # Every submitted item was applied exactly once: nothing lost, nothing half-done.
    assert pool.reduce(operator.add) == _serial_counts(err.submitted)
    assert f"position {position}" in str(err) and f"the {position} items" in str(err)


def _items_then_fail(n: int) -> Iterator[int]:
    yield from range(n)
    raise RuntimeError("the source broke")


def test_a_bad_key_midway_reports_its_absolute_position_and_the_work_done() -> None:
    keys: list[Any] = [i % MOD for i in range(N)]
    keys[20_000] = 2.5
    with _pool() as pool:
        with pytest.raises(InputError) as info:
            pool.map(range(N), keys=keys)
        err = info.value
        _check_accounting(pool, err, 20_000)
        assert isinstance(err.cause, UnsupportedKeyError)
        assert err.cause.position == 20_000 and "position 20000" in str(err.cause)
        # The chunk-relative position stays available as the key error's own cause.
        relative = err.cause.__cause__
        assert isinstance(relative, UnsupportedKeyError)
        assert relative.position == 20_000 % CHUNK
        assert len(err.partial) == err.submitted
        assert err.partial == [2 * i for i in range(err.submitted)]
        assert err.errors == []
        # The pool is still fine afterwards.
        assert pool.map([1, 2], keys=[1, 2]) == [2, 4]


def test_a_none_key_in_numpy_keys_is_reported_at_its_position() -> None:
    keys = np.arange(N, dtype=object) % MOD
    keys[12_345] = None
    with _pool() as pool:
        with pytest.raises(InputError) as info:
            pool.map(np.arange(N), keys=keys)
        err = info.value
        _check_accounting(pool, err, 12_345)
        assert list(err.partial) == [2 * i for i in range(12_345)]


def test_a_generator_that_raises_midway() -> None:
    with _pool() as pool:
        with pytest.raises(InputError) as info:
            pool.map(_items_then_fail(10_000), keys=lambda x: x % MOD)
        err = info.value
        _check_accounting(pool, err, 10_000)
        assert isinstance(err.cause, RuntimeError) and "source broke" in str(err)
        assert err.partial == [2 * i for i in range(10_000)]


def test_a_keys_iterator_that_raises_midway() -> None:
    def keys() -> Iterator[int]:
        for i in range(15_000):
            yield i % MOD
        raise OSError("the key store went away")

    with _pool() as pool:
        with pytest.raises(InputError) as info:
            pool.map(iter(range(N)), keys=keys())
        err = info.value
        _check_accounting(pool, err, 15_000)
        assert isinstance(err.cause, OSError)
        assert len(err.partial) == 15_000


def test_a_key_function_that_raises_on_one_item() -> None:
    def key(x: int) -> int:
        if x == 23_456:
            raise KeyError(x)
        return x % MOD

    with _pool() as pool:
        with pytest.raises(InputError) as info:
            pool.map(list(range(N)), keys=key)
        err = info.value
        _check_accounting(pool, err, 23_456)
        assert isinstance(err.cause, KeyError)
        assert err.partial == [2 * i for i in range(23_456)]


def _fail_on_seven(x: int) -> int:
    if x == 7:
        raise ValueError("seven")
    return x


def test_items_that_failed_before_the_input_failed_are_in_partial() -> None:
    with ShardPool(_fail_on_seven, num_actors=2) as pool:
        with pytest.raises(InputError) as info:
            pool.map(_items_then_fail(100))
        err = info.value
        assert (err.position, err.submitted) == (100, 100)
        assert isinstance(err.partial[7], TaskError)
        assert [v for i, v in enumerate(err.partial) if i != 7] == [i for i in range(100) if i != 7]
        assert [p for p, _ in err.errors] == [7]
        assert "1 of them with errors" in str(err)


def test_map_unordered_yields_the_submitted_outputs_before_raising() -> None:
    with _pool() as pool:
        got: list[int] = []
        with pytest.raises(InputError) as info:
            for y in pool.map_unordered(_items_then_fail(10_000), keys=lambda x: x % MOD):
                got.append(y)
        err = info.value
        _check_accounting(pool, err, 10_000)
        assert err.partial is None
        assert sorted(got) == [2 * i for i in range(10_000)]


def test_imap_pieces_yields_the_submitted_pieces_before_raising() -> None:
    keys: list[Any] = [i % MOD for i in range(N)]
    keys[20_000] = None
    with _pool() as pool:
        seen = np.zeros(N, dtype=bool)
        with pytest.raises(InputError) as info:
            for positions, outputs in pool.imap_pieces(range(N), keys=keys):
                assert list(outputs) == [2 * int(p) for p in positions]
                seen[positions] = True
        _check_accounting(pool, info.value, 20_000)
        assert seen[:20_000].all() and not seen[20_000:].any()


def test_keys_that_run_out_or_outlast_the_items() -> None:
    with _pool() as pool:
        with pytest.raises(InputError, match="shorter") as info:
            pool.map(iter(range(10_000)), keys=iter(range(5_000)))
        _check_accounting(pool, info.value, 5_000)
    with ShardPool(abs, num_actors=1) as pool:
        with pytest.raises(InputError, match="longer") as info:
            pool.map(iter([-1, -2]), keys=iter([1, 2, 3]))
        assert (info.value.position, info.value.submitted) == (2, 2)
        assert info.value.partial == [1, 2]


def _double_batch(a: Any) -> Any:
    return a * 2


def test_numpy_in_gives_numpy_partial_outputs() -> None:
    keys = np.arange(N, dtype=object)
    keys[20_000] = 1.5
    with ShardPool(_double_batch, batched=True, num_actors=2, chunk_size=CHUNK) as pool:
        with pytest.raises(InputError) as info:
            pool.map(np.arange(N), keys=keys)
        partial = info.value.partial
        assert isinstance(partial, np.ndarray)
        assert partial.tolist() == [2 * i for i in range(20_000)]


@pytest.mark.parametrize("bad", [0, 1, 7, CHUNK - 1])
def test_a_bad_key_in_the_first_chunk_is_reported_at_its_position(bad: int) -> None:
    # The first chunk hands its first item (the probe) over ahead of the rest: positions and
    # accounting must not notice.
    keys: list[Any] = [i % MOD for i in range(N)]
    keys[bad] = 2.5
    with _pool() as pool:
        with pytest.raises(InputError) as info:
            pool.map(range(N), keys=keys)
        err = info.value
        _check_accounting(pool, err, bad)
        assert err.partial == [2 * i for i in range(bad)]
        assert pool.map(list(range(CHUNK + 3)), keys=list(range(CHUNK + 3))) == [
            2 * i for i in range(CHUNK + 3)
        ]


def test_a_two_dimensional_key_array_routes_a_first_chunk_and_a_one_item_tail() -> None:
    # A (n, 1) key array is flattened by the strategies; a chunk of one item (the first item
    # sent ahead as the probe, or a last chunk of one) must be routed the same way, not fail.
    items = np.arange(2 * CHUNK + 1)
    keys = (items % MOD).reshape(-1, 1)
    with _pool() as pool:
        out = pool.map(items, keys=keys)
        assert np.array_equal(np.asarray(out), 2 * items)
        assert pool.reduce(operator.add) == _serial_counts(len(items))


@pytest.mark.parametrize("n", [1, 5, 2 * CHUNK + 1])
def test_a_key_array_with_no_key_per_item_fails_clearly_instead_of_hanging(n: int) -> None:
    # (n, 0) keys pass the length check but hash to no key at all: no item may go unrouted
    # (the map would wait for items that were never sent).
    with _pool() as pool:
        with pytest.raises(InputError, match="one key per item") as info:
            pool.map(np.arange(n), keys=np.zeros((n, 0), dtype=np.int64))
        assert info.value.submitted == 0
        assert pool.map([1, 2], keys=[1, 2]) == [2, 4]  # the pool still works
