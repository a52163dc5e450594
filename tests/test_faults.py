"""Faults as users meet them, on a real local Ray: each ends exact, or in a clear error.

Every test counts against a serial answer: lost, doubled or reordered items would show as
a count that differs, and a hang as the pytest timeout.
"""

from __future__ import annotations

import contextlib
import operator
import os
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shardyard import (
    ActorLostError,
    ConfigError,
    PoisonItemError,
    PoolClosedError,
    SerializationError,
    Shard,
    ShardFailedError,
    ShardPool,
    StartTimeoutError,
    TaskError,
)
from shardyard.protocol import WireCall

pytestmark = pytest.mark.usefixtures("ray_local")


class Count(Shard):
    """Counts items per key; answers each item with its key's running count."""

    def setup(self, shard_id: int) -> None:
        self.counts: Counter[int] = Counter()

    def process(self, batch: Any) -> list[int]:
        out = []
        for x in batch:
            self.counts[x % 1000] += 1
            out.append(self.counts[x % 1000])
        return out

    def result(self) -> Counter[int]:
        return self.counts


class SlowCount(Count):
    def process(self, batch: Any) -> list[int]:
        time.sleep(0.001 * len(batch))
        return super().process(batch)


def _pid(pool: ShardPool, actor: int, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        a = pool.stats().actors[actor]
        if a.pid is not None and a.state == "running":
            return a.pid
        time.sleep(0.05)
    raise AssertionError(f"actor {actor} did not come back")


def _new_pid(pool: ShardPool, actor: int, old: int) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pid = pool.stats().actors[actor].pid
        if pid is not None and pid != old:
            return pid
        time.sleep(0.02)
    raise AssertionError(f"actor {actor} was not restarted")


def _kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


def _kill_each_once_busy(pool: ShardPool, after_items: int) -> None:
    """SIGKILL actor 0, then actor 1, each once it has run ``after_items`` items (while a
    map runs), waiting for each one's new process."""
    for actor in (0, 1):
        deadline = time.monotonic() + 60
        while pool.stats().actors[actor].items < after_items:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        old = _pid(pool, actor)
        _kill(old)
        _new_pid(pool, actor, old)


def _map_killing_each_once_busy(pool: ShardPool, items: list[int], after_items: int) -> Any:
    """``pool.map(items, keys=items)`` in a thread while :func:`_kill_each_once_busy` kills
    each actor once; returns its outputs."""
    out: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: out.setdefault("r", pool.map(items, keys=items)))
    runner.start()
    _kill_each_once_busy(pool, after_items)
    runner.join(timeout=240)
    assert not runner.is_alive()
    return out["r"]


def _expected(items: list[int]) -> Counter[int]:
    return Counter(x % 1000 for x in items)


def test_an_idle_actor_that_died_is_noticed_and_restored() -> None:
    items = list(range(10_000))
    with ShardPool(Count, num_actors=2, num_shards=8, checkpoint_every=4) as pool:
        pool.map(items, keys=items)
        old = _pid(pool, 0)
        _kill(old)  # idle: no call in flight
        # Read at once: the pool must notice the restarted process, not read it empty.
        assert pool.reduce(operator.add) == _expected(items)
        _new_pid(pool, 0, old)
        more = list(range(10_000, 12_000))
        pool.map(more, keys=more)
        assert pool.reduce(operator.add) == _expected(items + more)
        assert pool.stats().actors[0].restarts == 1


def test_an_idle_death_is_found_by_the_watchdog_without_traffic() -> None:
    with ShardPool(Count, num_actors=1, num_shards=2, health_check_interval_s=0.2) as pool:
        pool.map(list(range(100)), keys=list(range(100)))
        old = _pid(pool, 0)
        _kill(old)
        deadline = time.monotonic() + 30
        while pool.stats().actors[0].restarts == 0:
            assert time.monotonic() < deadline, "the watchdog never noticed the death"
            time.sleep(0.05)
        assert pool.reduce(operator.add) == _expected(list(range(100)))


def test_four_kills_over_both_actors_busy_and_idle() -> None:
    items = list(range(30_000))
    with ShardPool(
        SlowCount, num_actors=2, num_shards=8, max_batch_size=50, checkpoint_every=4
    ) as pool:
        pool.start()
        _map_killing_each_once_busy(pool, items, after_items=2000)
        for actor in (0, 1):  # idle kills after the work is done
            _kill(_pid(pool, actor))
        assert pool.reduce(operator.add) == _expected(items)
        more = list(range(500))
        assert pool.map(more, keys=more) is not None  # the next map does not hang
        assert pool.reduce(operator.add) == _expected(items + more)
        assert [a.restarts for a in pool.stats().actors] == [2, 2]


class BusyItemCount(Shard):
    """Counts items per ``x % 1000`` one item at a time, computing ~20 us each (on the
    loop: it never sleeps); item 777 raises, before counting."""

    def setup(self, shard_id: int) -> None:
        self.counts: Counter[int] = Counter()

    def process_item(self, x: Any) -> int:
        end = time.perf_counter() + 2e-5
        while time.perf_counter() < end:
            pass
        if x == 777:
            raise ValueError("item 777 is bad")
        self.counts[int(x) % 1000] += 1
        return 2 * int(x)

    def result(self) -> Counter[int]:
        return self.counts


def test_calls_of_many_small_batches_survive_busy_kills_exactly(monkeypatch: Any) -> None:
    """128 shards on 2 actors: a call carries dozens of small numpy batches, packed in
    columns both ways (WireCall, ReplyColumns). Killing each actor while busy loses and
    doubles nothing, and the failing item fails alone, its neighbours applied once."""
    packed: list[int] = []
    pack = WireCall.pack

    def counting_pack(wires: list[Any]) -> Any:
        out = pack(wires)
        if isinstance(out, WireCall):
            packed.append(len(out))
        return out

    monkeypatch.setattr(WireCall, "pack", staticmethod(counting_pack))
    items = np.arange(100_000, dtype=np.int64)
    with ShardPool(BusyItemCount, num_actors=2, num_shards=128, checkpoint_every=4) as pool:
        pool.start()
        out: dict[str, Any] = {}

        def run() -> None:
            out["r"] = pool.map(items, keys=items, return_exceptions=True)

        runner = threading.Thread(target=run)
        runner.start()
        _kill_each_once_busy(pool, after_items=15_000)
        runner.join(timeout=240)
        assert not runner.is_alive()
        result = out["r"]
        bad = [i for i, o in enumerate(result) if isinstance(o, BaseException)]
        assert bad == [777]
        assert isinstance(result[777], TaskError) and "item 777 is bad" in str(result[777])
        assert all(result[i] == 2 * i for i in range(len(items)) if i != 777)
        good = [int(x) for x in items if x != 777]
        assert pool.reduce(operator.add) == _expected(good)
        assert [a.restarts for a in pool.stats().actors] == [1, 1]
    assert packed and max(packed) >= 8  # the packed path was the one under test


class SlowRestore(Count):
    """Counts; its restore() marks a file and sleeps, so a test can kill it mid-restore."""

    marker_dir = ""

    def restore(self, state: Any) -> None:
        Path(self.marker_dir, f"restoring-{os.getpid()}").touch()
        time.sleep(1.0)
        super().restore(state)


def _wait_restoring(marker_dir: Path, old: set[str]) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        new = {p.name for p in marker_dir.iterdir()} - old
        if new:
            return int(sorted(new)[0].split("-")[1])
        time.sleep(0.01)
    raise AssertionError("no restore started")


def test_a_second_death_during_recovery_is_recovered(tmp_path: Path) -> None:
    handler = type("SlowRestoreHere", (SlowRestore,), {"marker_dir": str(tmp_path)})
    items = list(range(5_000))
    with ShardPool(handler, num_actors=1, num_shards=2, checkpoint_every=2, max_retries=3) as pool:
        pool.map(items, keys=items)
        pool.results()  # the snapshots are committed: a restore is needed after a crash
        _kill(_pid(pool, 0))
        pid = _wait_restoring(tmp_path, set())
        _kill(pid)  # killed while restoring
        seen = {p.name for p in tmp_path.iterdir()}
        _wait_restoring(tmp_path, seen)  # the third process restores again
        more = list(range(5_000, 6_000))
        pool.map(more, keys=more)
        assert pool.reduce(operator.add) == _expected(items + more)
        assert pool.stats().actors[0].restarts == 2


class BadRestore(Count):
    def restore(self, state: Any) -> None:
        raise RuntimeError("restore is broken")


def test_a_restore_that_raises_fails_the_shard_clearly() -> None:
    items = list(range(2_000))
    with ShardPool(BadRestore, num_actors=1, num_shards=2, checkpoint_every=1) as pool:
        pool.map(items, keys=items)
        pool.results()  # the snapshots are committed: a restore is needed after a crash
        _kill(_pid(pool, 0))
        out = pool.map(items, keys=items, return_exceptions=True)
        errors = [o for o in out if isinstance(o, ShardFailedError)]
        assert errors and len(errors) + sum(isinstance(o, int) for o in out) == len(items)
        assert "restore is broken" in str(errors[0])
        with pytest.raises(ShardFailedError, match="restore is broken"):
            pool.results()


def test_restart_budget_spent_ends_items_with_actor_lost() -> None:
    with ShardPool(Count, num_actors=1, num_shards=1, max_retries=1) as pool:
        pool.map([1, 2], keys=[1, 2])
        old = _pid(pool, 0)
        _kill(old)  # recovered: the one restart max_retries allows
        _new_pid(pool, 0, old)
        _kill(_pid(pool, 0))  # one death too many: given up, never restarted
        deadline = time.monotonic() + 120  # a guard against a hang, generous on a busy CI
        while pool.stats().actors[0].state != "failed":
            pool.submit(1, key=1).exception(timeout=30)  # traffic also finds the death
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with pytest.raises(ActorLostError, match="max_retries=1"):
            pool.submit(3, key=3).result(timeout=30)


def test_checkpointing_off_is_honoured_and_a_crash_is_an_error_not_a_loss() -> None:
    items = list(range(3_000))
    with ShardPool(Count, num_actors=1, num_shards=2, checkpoint_every=None) as pool:
        assert pool.config.checkpoint_every is None
        pool.map(items, keys=items)
        _kill(_pid(pool, 0))
        with pytest.raises(ActorLostError, match="checkpoint_every is None"):
            pool.results()
        out = pool.map(items[:10], keys=items[:10], return_exceptions=True)
        assert all(isinstance(o, ActorLostError) for o in out)


class BadSnapshot(Count):
    def snapshot(self) -> Any:
        raise ValueError("state does not pickle")


def test_a_failing_snapshot_warns_then_fails_and_never_grows_the_log() -> None:
    items = list(range(4_000))
    with ShardPool(
        BadSnapshot,
        num_actors=1,
        num_shards=1,
        max_batch_size=10,
        checkpoint_every=5,
        max_snapshot_failures=3,
    ) as pool:
        out = pool.map(items, keys=items, return_exceptions=True)
        st = pool.stats()
        assert st.snapshot_failures == 3
        assert (
            st.shards[0].failed is not None and "snapshot() failed 3 times" in st.shards[0].failed
        )
        assert st.shards[0].retained_batches == 0  # dropped with the shard, not kept forever
        failed = [o for o in out if isinstance(o, ShardFailedError)]
        assert failed and "state does not pickle" in str(failed[0])
        assert len(failed) + sum(isinstance(o, int) for o in out) == len(items)


class Words(Shard):
    """The README's example: only process_item is overridden."""

    def setup(self, shard_id: int) -> None:
        self.counts: Counter[str] = Counter()

    def process_item(self, word: str) -> None:
        if word == "bad":
            raise ValueError("bad word")
        self.counts[word] += 1

    def result(self) -> Counter[str]:
        return self.counts


def test_a_failing_item_does_not_double_apply_its_neighbours() -> None:
    words = ["a"] * 50 + ["bad"] + ["a"] * 50
    with ShardPool(Words, num_actors=1, num_shards=1) as pool:
        out = pool.map(words, keys=words, return_exceptions=True)
        assert sum(isinstance(o, TaskError) for o in out) == 1
        assert pool.reduce(operator.add) == Counter({"a": 100})


def test_a_strategy_without_key_affinity_is_refused_for_a_shard() -> None:
    with pytest.raises(ConfigError, match="jump"):
        ShardPool(Count, strategy="bounded")


def _poison(x: int) -> int:
    if x == 137:
        os._exit(1)
    return x * 2


def test_a_poison_item_fails_alone() -> None:
    items = list(range(200))
    with ShardPool(_poison, num_actors=2, num_shards=4, max_retries=1) as pool:
        out = pool.map(items, keys=items, return_exceptions=True)
    bad = [i for i, o in enumerate(out) if isinstance(o, BaseException)]
    assert bad == [137]
    assert isinstance(out[137], PoisonItemError) and out[137].key == 137
    assert all(out[i] == 2 * i for i in items if i != 137)


_DRIVER_PID = os.getpid()  # travels by value with the handler: the driver's pid


class _LoadsOnlyInActors:
    def __reduce__(self) -> Any:
        return (_load_in_actor_only, (_DRIVER_PID,))


def _load_in_actor_only(driver_pid: int) -> str:
    if os.getpid() == driver_pid:
        raise RuntimeError("this output cannot be loaded on the driver")
    return "x"


def _make_output(x: str) -> Any:
    return _LoadsOnlyInActors() if x == "bad" else x.upper()


def test_an_output_the_driver_cannot_unpickle_fails_only_its_item() -> None:
    words = [f"w{i}" for i in range(300)] + ["bad"] + [f"v{i}" for i in range(300)]
    with ShardPool(_make_output, num_actors=2, num_shards=4) as pool:
        out = pool.map(words, keys=words, return_exceptions=True)
    bad = [i for i, o in enumerate(out) if isinstance(o, BaseException)]
    assert bad == [300]
    assert isinstance(out[300], SerializationError) and "driver cannot unpickle" in str(out[300])
    assert all(out[i] == w.upper() for i, w in enumerate(words) if i != 300)


def _hang(x: int) -> int:
    if x == 3:
        time.sleep(3600)
    return x


def test_close_with_a_timeout_ends_every_future_and_the_actors() -> None:
    pool = ShardPool(_hang, num_actors=1, num_shards=1)
    futures = [pool.submit(0, key=0)]
    assert futures[0].result(timeout=60) == 0
    futures += [pool.submit(i, key=i) for i in range(1, 6)]
    pid = _pid(pool, 0)
    start = time.monotonic()
    pool.close(timeout=1.0)
    assert time.monotonic() - start < 30
    assert all(f.done() for f in futures)
    assert isinstance(futures[3].exception(), PoolClosedError)
    pool.close(wait=False)  # harmless again
    deadline = time.monotonic() + 30
    while _alive(pid):
        assert time.monotonic() < deadline, "the actor process outlived close()"
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_blocking_calls_take_a_timeout() -> None:
    with ShardPool(_hang, num_actors=1, num_shards=1) as pool:
        pool.submit(3, key=3)
        with pytest.raises(TimeoutError):
            pool.wait(timeout=0.5)
        with pytest.raises(TimeoutError):
            pool.results(timeout=0.5)
        pool.close(timeout=0.5)


class FailingSetup(Shard):
    def setup(self, shard_id: int) -> None:
        if shard_id == 1:
            raise ValueError("setup of shard 1 is broken")


def test_a_failing_setup_fails_start_and_leaks_no_actor() -> None:
    pool = ShardPool(FailingSetup, num_actors=2, num_shards=4)
    with pytest.raises(ShardFailedError, match="setup of shard 1 is broken"):
        pool.start(timeout=60)
    assert not pool._actors  # nothing kept; the started actors were killed
    pool.close()


def test_a_pool_that_can_never_fit_is_refused_at_once() -> None:
    with pytest.raises(ConfigError, match="num_cpus_per_actor=3"):
        ShardPool(abs, num_actors=1, num_cpus_per_actor=3).start(timeout=60)
    with pytest.raises(ConfigError, match="num_actors=1000"):
        ShardPool(abs, num_actors=1000).start(timeout=60)


def test_start_times_out_naming_the_resources() -> None:
    pool = ShardPool(abs, num_actors=2, num_cpus_per_actor=2)  # 4 CPUs on a 2-CPU Ray
    start = time.monotonic()
    with pytest.raises(StartTimeoutError, match=r"CPU: 2"):
        pool.start(timeout=3)
    assert time.monotonic() - start < 60
    pool.close()
    with ShardPool(abs, num_actors=2) as ok:  # the CPUs were given back
        assert ok.map([-1, -2]) == [1, 2]


def test_map_takes_a_timeout() -> None:
    with ShardPool(_hang, num_actors=1, num_shards=1) as pool:
        with pytest.raises(TimeoutError, match=r"did not finish within 0\.5 s"):
            pool.map([1, 2, 3, 4], keys=[1, 2, 3, 4], timeout=0.5)
        pool.close(timeout=0.5)


class CountWithBadOutput(Count):
    def process(self, batch: Any) -> list[Any]:
        out: list[Any] = super().process(batch)
        return [_LoadsOnlyInActors() if x == 7 else o for x, o in zip(batch, out, strict=True)]


def test_a_replayed_batch_with_an_unloadable_output_does_not_fail_its_shard() -> None:
    items = list(range(1_000))
    with ShardPool(CountWithBadOutput, num_actors=1, num_shards=1, checkpoint_every=50) as pool:
        out = pool.map(items, keys=items, return_exceptions=True)
        assert [i for i, o in enumerate(out) if isinstance(o, BaseException)] == [7]
        _kill(_pid(pool, 0))  # the batch holding item 7 is replayed after the restore
        more = list(range(1_000, 1_500))
        pool.map(more, keys=more)
        assert pool.reduce(operator.add) == _expected(items + more)


def test_keyless_work_after_every_actor_was_given_up_fails_clearly() -> None:
    with ShardPool(_slow_double_keyless, num_actors=1, max_retries=0) as pool:
        assert pool.map([1, 2]) == [2, 4]
        _kill(_pid(pool, 0))
        deadline = time.monotonic() + 60
        while pool.stats().actors[0].state != "failed":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with pytest.raises(ActorLostError):
            pool.submit(5).result(timeout=30)
        out = pool.map([1, 2, 3], return_exceptions=True)
        assert all(isinstance(o, ActorLostError) for o in out)
        pool.close(timeout=30)


def _slow_double_keyless(x: int) -> int:
    return x * 2


class NumpyShard(Shard):
    def setup(self, shard_id: int) -> None:
        self.n = 0

    def process(self, batch: Any) -> Any:
        if 300 in batch.tolist():
            os._exit(1)
        self.n += len(batch)
        return batch * 2  # needs an array: a list would be repeated

    def result(self) -> int:
        return self.n


def test_a_poison_item_in_a_numpy_batch_fails_alone_and_waits_still_work() -> None:
    items = list(range(800))
    with ShardPool(
        NumpyShard,
        num_actors=1,
        num_shards=1,
        chunk_size=5,
        max_batch_size=200,
        batch_format="numpy",
    ) as pool:
        stop = threading.Event()

        def waiter() -> None:  # many short waits: each opens a wait epoch
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    pool.wait(timeout=0.0005)

        t = threading.Thread(target=waiter)
        t.start()
        try:
            out = pool.map(items, keys=items, return_exceptions=True)
        finally:
            stop.set()
            t.join()
        assert [i for i, o in enumerate(out) if isinstance(o, BaseException)] == [300]
        assert isinstance(out[300], PoisonItemError)
        assert all(out[i] == 2 * i for i in items if i != 300)
        pool.wait(timeout=30)  # the wait accounting survived the split
        assert pool.reduce(operator.add, timeout=30) == 799


async def _async_double(batch: Any) -> Any:
    return batch * 2


def test_an_async_batched_function_gets_arrays_from_submit() -> None:
    with ShardPool(_async_double, batched=True, num_actors=1, batch_format="numpy") as pool:
        assert pool.submit(21, key=1).result(timeout=60) == 42


def _shard_of_each(pool: ShardPool, keys: list[str]) -> dict[int, list[str]]:
    by_shard: dict[int, list[str]] = {}
    for k, s in zip(keys, pool.shard_of(keys).tolist(), strict=True):
        by_shard.setdefault(s, []).append(k)
    return by_shard


class StrCount(Shard):
    def setup(self, shard_id: int) -> None:
        self.counts: Counter[str] = Counter()

    def process_item(self, word: str) -> Any:
        self.counts[word] += 1
        return _LoadsOnlyInActors() if word.startswith("bad") else word

    def result(self) -> Counter[str]:
        return self.counts


@pytest.mark.parametrize("checkpoint_every", [4, None])
def test_an_unloadable_output_fails_only_its_item_next_to_a_replay(
    checkpoint_every: int | None,
) -> None:
    words = [f"w{i}" for i in range(400)]
    with ShardPool(StrCount, num_actors=1, num_shards=2, checkpoint_every=checkpoint_every) as pool:
        pool.map(words, keys=words)
        if checkpoint_every is not None:
            _kill(_pid(pool, 0))  # the next calls carry replays of both shards
        bad = next(f"bad{i}" for i in range(100) if pool.shard_of([f"bad{i}"])[0] == 1)
        more = [f"v{i}" for i in range(200)] + [bad] + [f"u{i}" for i in range(200)]
        out = pool.map(more, keys=more, return_exceptions=True)
        errors = [(w, o) for w, o in zip(more, out, strict=True) if isinstance(o, BaseException)]
        assert [w for w, _ in errors] == [bad]
        assert isinstance(errors[0][1], SerializationError)
        assert pool.reduce(operator.add) == Counter(words + more)


def test_reduce_while_another_thread_maps() -> None:
    items = list(range(50_000))
    with ShardPool(Count, num_actors=2, num_shards=8, max_batch_size=100) as pool:
        runner = threading.Thread(target=lambda: pool.map(items, keys=items))
        runner.start()
        for _ in range(10):
            pool.reduce(operator.add, timeout=60)  # never reads state a batch is changing
        runner.join(timeout=120)
        assert pool.reduce(operator.add) == _expected(items)


def _slow_double(x: int) -> int:
    time.sleep(1.0)
    return 2 * x


def test_a_thread_waiting_in_result_sees_its_item_retried_after_a_kill() -> None:
    # result() waits for the reply of its item's call in its own thread: when that call's
    # actor dies, the item is resent, and the wait must end with the retried output.
    with ShardPool(_slow_double, num_actors=1, num_shards=2) as pool:
        assert pool.submit(1).result(timeout=60) == 2
        pid = _pid(pool, 0)
        fut = pool.submit(21)
        killer = threading.Timer(0.3, os.kill, (pid, signal.SIGKILL))
        killer.start()
        try:
            assert fut.result(timeout=120) == 42
        finally:
            killer.cancel()
        assert pool.stats().actors[0].restarts >= 1


def test_threads_each_waiting_in_result_get_their_own_outputs() -> None:
    # Each waiting thread may take its call's reply itself; every future still resolves
    # once, with its own output, and a timeout still ends the wait.
    with ShardPool(_slow_double, num_actors=2, num_shards=4) as pool:
        outs: list[int] = []
        threads = [
            threading.Thread(target=lambda i=i: outs.append(pool.submit(i).result(timeout=60)))
            for i in range(3, 9)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert sorted(outs) == [6, 8, 10, 12, 14, 16]
        with pytest.raises(TimeoutError):
            pool.submit(7).result(timeout=0.2)


class _ExitsOnLoad:
    """Loads nowhere: its reconstructor raises SystemExit (not an Exception)."""

    def __reduce__(self) -> Any:
        return (sys.exit, ("an output whose loading exits",))


def _dict_or_exits(x: int) -> Any:
    return _ExitsOnLoad() if x == 3 else {"x": x}


def test_an_output_whose_loading_raises_system_exit_fails_alone() -> None:
    # The driver loads the actor's pickled outputs itself: a reconstructor's SystemExit must
    # fail that item, not escape the reply's handling (which left the batch unanswered).
    with ShardPool(_dict_or_exits, num_actors=2, num_shards=4) as pool:
        out = pool.map(list(range(10)), return_exceptions=True, timeout=120)
        assert [i for i, o in enumerate(out) if isinstance(o, BaseException)] == [3]
        assert isinstance(out[3], SerializationError) and "SystemExit" in str(out[3])
        assert [o["x"] for i, o in enumerate(out) if i != 3] == [0, 1, 2, 4, 5, 6, 7, 8, 9]


class QuickCount(Count):
    def process(self, batch: Any) -> list[int]:
        time.sleep(2e-5 * len(batch))
        return super().process(batch)


def test_large_batches_snapshotted_by_their_items_survive_busy_and_idle_kills_exactly() -> None:
    """Batches of thousands of items, so snapshots come by the replay log's items (every
    ``checkpoint_every * 1024`` items) before its batch count: both actors killed busy,
    then both idle, and the counts are exactly the serial ones."""
    items = list(range(120_000))
    with ShardPool(QuickCount, num_actors=2, num_shards=4, checkpoint_every=8) as pool:
        pool.start()
        assert len(_map_killing_each_once_busy(pool, items, after_items=20_000)) == len(items)
        shards = pool.stats().shards
        # Batches averaged over 1,024 items: the log's items, not its 8 batches, set when
        # the snapshots came.
        assert sum(s.items for s in shards) / sum(s.batches for s in shards) > 1024
        for actor in (0, 1):
            _kill(_pid(pool, actor))
        assert pool.reduce(operator.add) == _expected(items)
        assert [a.restarts for a in pool.stats().actors] == [2, 2]
