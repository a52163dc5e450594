"""Live scale-out and scale-in on a real local Ray, each checked against a serial answer.

Work keeps running in other threads while the pool grows and shrinks; every item must end
exactly once, every key's items must reach its shard in input order, and a SIGKILL of
either actor in the middle of a migration must not change that.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from ray.autoscaler._private.constants import AUTOSCALER_RESOURCE_REQUEST_CHANNEL
from ray.autoscaler.v2.utils import is_autoscaler_v2
from ray.experimental.internal_kv import _internal_kv_get

from shardyard import AutoscaleConfig, ConfigError, PoolClosedError, Shard, ShardPool
from shardyard.sharding import moved_shards, rebalance

pytestmark = pytest.mark.usefixtures("ray_local")

KEYS = 997


class Arrivals(Shard):
    """Records, per key, the sequence numbers of its items in the order they arrived."""

    def setup(self, shard_id: int) -> None:
        self.seen: dict[int, list[int]] = defaultdict(list)

    def process_item(self, item: tuple[int, int]) -> int:
        key, seq = item
        self.seen[key].append(seq)
        return seq

    def snapshot(self) -> Any:
        return {k: list(v) for k, v in self.seen.items()}

    def restore(self, state: Any) -> None:
        self.seen = defaultdict(list, state)

    def result(self) -> dict[int, list[int]]:
        return dict(self.seen)


def _items(n: int, start: int = 0) -> list[tuple[int, int]]:
    return [(i % KEYS, i) for i in range(start, start + n)]


def _check_arrivals(pool: ShardPool, items: list[tuple[int, int]]) -> None:
    """Every item applied exactly once, each key's items in input order."""
    expected: dict[int, list[int]] = defaultdict(list)
    for key, seq in items:
        expected[key].append(seq)
    seen: dict[int, list[int]] = {}
    for part in pool.results(timeout=120).values():
        for key, seqs in part.items():
            assert key not in seen, f"key {key} on two shards"
            seen[key] = seqs
    lost = sum(len(v) for v in expected.values()) - sum(len(v) for v in seen.values())
    assert seen == dict(expected), f"lost or doubled {lost} items, or reordered"


def _key(item: tuple[int, int]) -> int:
    return item[0]


def _in_thread(fn: Any) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    return t, box


def _join(t: threading.Thread, box: dict[str, Any]) -> Any:
    t.join(timeout=240)
    assert not t.is_alive(), "the work did not finish"
    if "error" in box:
        raise box["error"]
    return box["value"]


def test_a_keyed_count_scaled_1_4_2_during_a_map_is_exact_and_ordered() -> None:
    items = _items(200_000)
    with ShardPool(Arrivals, num_actors=1, num_shards=8) as pool:
        pool.start()
        t, box = _in_thread(lambda: pool.map(items, keys=_key))
        time.sleep(0.3)
        out = pool.scale(4)
        assert (out.num_actors_before, out.num_actors, pool.num_actors) == (1, 4, 4)
        assert out.moved_shards and out.max_pause_s >= 0 and out.seconds > 0
        time.sleep(0.2)
        back = pool.scale(2)
        assert pool.num_actors == 2 and len(back.retired_actors) == 2
        assert _join(t, box) == [seq for _, seq in items]
        _check_arrivals(pool, items)
        assert sorted({s.actor for s in pool.stats().shards}) == sorted(
            a.actor for a in pool.stats().actors
        )


def test_scaling_while_20k_submits_are_in_flight_resolves_each_once() -> None:
    with ShardPool(Arrivals, num_actors=1, num_shards=8) as pool:
        pool.start()
        resolved: Counter[int] = Counter()
        lock = threading.Lock()

        def done(f: Any) -> None:
            with lock:
                resolved[f.result()] += 1

        def submit_all() -> list[Any]:
            futures = []
            for item in _items(20_000):
                f = pool.submit(item, key=item[0])
                f.add_done_callback(done)
                futures.append(f)
            return futures

        t, box = _in_thread(submit_all)
        time.sleep(0.2)
        pool.scale(3)
        pool.scale(2)
        futures = _join(t, box)
        assert [f.result(timeout=120) for f in futures] == list(range(20_000))
        pool.wait()
        assert resolved == Counter(range(20_000))  # each future resolved exactly once
        _check_arrivals(pool, _items(20_000))


def _double(x: int) -> int:
    return 2 * x


def test_scaling_while_a_generator_streams_through_map_unordered() -> None:
    n = 60_000
    with ShardPool(_double, num_actors=1, num_shards=8, chunk_size=1000) as pool:
        pool.start()

        def slow_source() -> Any:
            for i in range(n):
                if i % 5000 == 0:
                    time.sleep(0.02)
                yield i

        t, box = _in_thread(lambda: sorted(pool.map_unordered(slow_source())))
        time.sleep(0.1)
        pool.scale(4)
        pool.scale(1)
        pool.scale(2)
        assert _join(t, box) == [2 * i for i in range(n)]


def test_the_moved_shards_are_the_planned_minimum() -> None:
    with ShardPool(Arrivals, num_actors=2, num_shards=12) as pool:
        for target in (5, 3, 4, 1):
            old = pool.placement
            active = [a.actor for a in pool.stats().actors]
            report = pool.scale(target)
            new = {s.shard_id: s.actor for s in pool.stats().shards}
            assert report.moved_shards == moved_shards(old, new)
            assert (report.placement_before, report.placement) == (old, new)
            # The planned table: rebalance over the actors that remain (the new ones take
            # the next indices), and no balanced placement keeps more shards in place.
            keep = [a for a in active if a not in report.retired_actors]
            assert new == rebalance(old, keep + report.started_actors)
            counts = Counter(new.values())
            assert max(counts.values()) - min(counts.values()) <= 1
            assert len(counts) == target
            q, r = divmod(12, target)
            held = sorted((Counter(old[s] for s in old if old[s] in keep) or {0: 0}).values())
            best_kept = sum(min(h, q + (i < r)) for i, h in enumerate(reversed(held)))
            assert len(report.moved_shards) == 12 - best_kept


def test_scale_to_zero_or_beyond_the_shards_is_refused() -> None:
    with ShardPool(_double, num_actors=1, num_shards=4) as pool:
        with pytest.raises(ConfigError, match="at least 1 actor"):
            pool.scale(0)
        with pytest.raises(ConfigError, match="num_shards >= 5"):
            pool.scale(5)
        assert pool.num_actors == 1
        assert pool.map([1, 2]) == [2, 4]


class SlowHandoff(Arrivals):
    """Arrivals whose snapshot() and restore() mark a file and wait while a gate file exists,
    so a test can SIGKILL the sending or the receiving actor in the middle of a migration."""

    marker_dir = ""

    def _pause(self, what: str) -> None:
        gate = Path(self.marker_dir, f"gate-{what}")
        if gate.exists():
            Path(self.marker_dir, f"{what}-{os.getpid()}").touch()
            deadline = time.monotonic() + 60
            while gate.exists() and time.monotonic() < deadline:
                time.sleep(0.01)

    def snapshot(self) -> Any:
        self._pause("snapshot")
        return super().snapshot()

    def restore(self, state: Any) -> None:
        self._pause("restore")
        super().restore(state)


def _wait_marker(marker_dir: Path, what: str) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = sorted(p.name for p in marker_dir.iterdir() if p.name.startswith(what))
        if found:
            return int(found[0].split("-")[1])
        time.sleep(0.01)
    raise AssertionError(f"no {what} started")


@pytest.mark.parametrize("side", ["snapshot", "restore"])
def test_a_sigkill_mid_migration_on_either_side_is_exact(tmp_path: Path, side: str) -> None:
    handler = type("SlowHandoffHere", (SlowHandoff,), {"marker_dir": str(tmp_path)})
    first, second = _items(30_000), _items(30_000, start=30_000)
    with ShardPool(handler, num_actors=1, num_shards=4, checkpoint_every=1000) as pool:
        pool.map(first, keys=_key)
        t, box = _in_thread(lambda: pool.map(second, keys=_key))
        (tmp_path / f"gate-{side}").touch()
        scaling, scaled = _in_thread(lambda: pool.scale(2))
        # "snapshot": the old actor is killed while it hands its shard off; "restore": the
        # new actor is killed while it loads the state it was handed.
        pid = _wait_marker(tmp_path, side)
        os.kill(pid, signal.SIGKILL)
        (tmp_path / f"gate-{side}").unlink()
        report = _join(scaling, scaled)
        assert report.num_actors == 2 and report.moved_shards == [2, 3]
        assert _join(t, box) == [seq for _, seq in second]
        _check_arrivals(pool, first + second)
        assert sum(a.restarts for a in pool.stats().actors) >= 1


def test_autoscale_grows_to_max_under_backlog_and_shrinks_to_min_when_idle() -> None:
    auto = AutoscaleConfig(
        min_actors=1,
        max_actors=3,
        target_backlog_per_actor=500,
        upscale_delay_s=0.2,
        downscale_delay_s=0.5,
        interval_s=0.05,
    )
    # One call at a time per actor: the sleeps would overlap in threads, and the backlog
    # that makes the pool grow would be gone before the upscale delay.
    with ShardPool(_slow_double, autoscale=auto, chunk_size=500, max_concurrency=1) as pool:
        assert pool.num_actors == 1 and pool.num_shards == 24  # 8 per max actor
        sizes: list[int] = []
        requested: list[int] = []
        t, box = _in_thread(lambda: pool.map(range(20_000)))
        deadline = time.monotonic() + 120
        while "value" not in box and "error" not in box and time.monotonic() < deadline:
            sizes.append(pool.num_actors)
            requested.append(_requested_cpus())
            time.sleep(0.05)
        assert _join(t, box) == [2 * i for i in range(20_000)]
        assert max(sizes) == 3, sizes
        if not is_autoscaler_v2():  # the request reached Ray (v1 keeps it in the GCS KV)
            assert max(requested) == 3, requested
        deadline = time.monotonic() + 60
        while pool.num_actors != 1:
            assert time.monotonic() < deadline, "the idle pool did not shrink"
            time.sleep(0.05)
        assert pool.stats().placement_history
    if not is_autoscaler_v2():
        assert _requested_cpus() == 0  # withdrawn when the pool closed


def _requested_cpus() -> int:
    """CPUs asked of Ray's autoscaler (``request_resources``), as the v1 autoscaler reads it."""
    raw = _internal_kv_get(AUTOSCALER_RESOURCE_REQUEST_CHANNEL)
    return int(sum(b.get("CPU", 0) for b in json.loads(raw))) if raw else 0


def _slow_double(x: int) -> int:
    time.sleep(0.0005)
    return 2 * x


class BigState(Shard):
    """A shard holding ``MB`` megabytes of state (shard 1 only)."""

    MB = 200

    def setup(self, shard_id: int) -> None:
        size = self.MB * 2**20 // 8 if shard_id == 1 else 1
        self.data = np.ones(size, dtype=np.float64)
        self.items = 0

    def process_item(self, item: int) -> int:
        self.items += 1
        return self.items

    def snapshot(self) -> Any:
        return (self.data, self.items)

    def restore(self, state: Any) -> None:
        self.data, self.items = state

    def result(self) -> tuple[int, int]:
        return (self.data.nbytes, self.items)


def test_a_200mb_shard_migrates_without_passing_through_the_driver() -> None:
    with ShardPool(BigState, num_actors=1, num_shards=2, checkpoint_every=None) as pool:
        key = next(k for k in range(100) if pool.shard_of([k])[0] == 1)
        pool.map(range(100), keys=[key] * 100)  # all to shard 1, the big one
        driver = psutil.Process()
        before = driver.memory_info().rss
        report = pool.scale(2)  # moves shard 1 (the lowest-numbered shards stay)
        grown = driver.memory_info().rss - before
        print(f"driver RSS grew by {grown / 2**20:.1f} MB while moving a 200 MB shard")
        assert report.moved_shards == [1]
        (moved,) = pool.stats().placement_history
        assert (moved.shard_id, moved.from_actor, moved.to_actor) == (1, 0, 1)
        assert moved.state_bytes > 200 * 2**20
        assert grown < 50 * 2**20
        assert pool.placement == {0: 0, 1: 1}
        pool.map(range(5), keys=[key] * 5)
        assert pool.results()[1] == (200 * 2**20, 105)


def test_retired_actors_processes_end() -> None:
    with ShardPool(_double, num_actors=3, num_shards=6) as pool:
        pids = {a.actor: a.pid for a in pool.stats().actors}
        report = pool.scale(1)
        gone = [pids[a] for a in report.retired_actors]
        assert len(gone) == 2
        deadline = time.monotonic() + 30
        while any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in gone):
            assert time.monotonic() < deadline, "a retired actor's process is still running"
            time.sleep(0.1)
        assert [a.actor for a in pool.stats().actors] == [0]
        assert pool.map(range(10)) == [2 * i for i in range(10)]


def test_shards_that_do_not_move_keep_being_served(tmp_path: Path) -> None:
    handler = type("SlowHandoffHere", (SlowHandoff,), {"marker_dir": str(tmp_path)})
    with ShardPool(handler, num_actors=1, num_shards=4, checkpoint_every=None) as pool:
        pool.start()
        moving = {2, 3}  # what scale(2) moves from 4 shards on one actor
        staying_keys = [k for k in range(KEYS) if pool.shard_of([k])[0] not in moving][:20]
        (tmp_path / "gate-snapshot").touch()  # the moved shards' snapshots wait for the gate
        scaling, scaled = _in_thread(lambda: pool.scale(2))
        _wait_marker(tmp_path, "snapshot")
        # While the moved shards are held mid-handoff, the others answer submits.
        stalls = []
        for i in range(50):
            t0 = time.monotonic()
            assert pool.submit((staying_keys[i % 20], i), key=staying_keys[i % 20]).result(60) == i
            stalls.append(time.monotonic() - t0)
        assert scaling.is_alive()  # all of that while the migration was held
        (tmp_path / "gate-snapshot").unlink()
        report = _join(scaling, scaled)
        assert set(report.moved_shards) == moving
        print(
            f"longest stall of a shard that did not move: {max(stalls) * 1000:.1f} ms; "
            f"longest pause of a moved shard: {report.max_pause_s * 1000:.0f} ms"
        )


def test_stats_show_the_placement_history() -> None:
    with ShardPool(_double, num_actors=1, num_shards=4) as pool:
        t0 = time.time()
        pool.scale(2)
        pool.scale(1)
        history = pool.stats().placement_history
        moves = [(h.shard_id, h.from_actor, h.to_actor) for h in history]
        assert sorted(moves[:2]) == [(2, 0, 1), (3, 0, 1)]  # scale(2)
        assert sorted(moves[2:]) == [(2, 1, 0), (3, 1, 0)]  # scale(1)
        assert all(t0 <= h.time <= time.time() and h.pause_s >= 0 for h in history)
        assert pool.stats().num_actors == 1


def test_a_timed_out_scale_goes_on_and_the_next_scale_waits_for_it(tmp_path: Path) -> None:
    handler = type("SlowHandoffHere", (SlowHandoff,), {"marker_dir": str(tmp_path)})
    items = _items(4_000)
    # A handoff slower than restart_timeout_s is waited for, not sent twice.
    with ShardPool(handler, num_actors=1, num_shards=4, restart_timeout_s=0.5) as pool:
        pool.map(items, keys=_key)
        (tmp_path / "gate-snapshot").touch()
        with pytest.raises(TimeoutError, match="goes on in the background"):
            pool.scale(2, timeout=5)  # the handoffs wait for the gate
        later, done = _in_thread(lambda: pool.scale(1))
        time.sleep(1.0)  # longer than restart_timeout_s
        assert later.is_alive(), done  # waits for the first scale
        (tmp_path / "gate-snapshot").unlink()
        report = _join(later, done)
        assert report.num_actors_before == 2 and pool.num_actors == 1
        assert pool.placement == dict.fromkeys(range(4), 0)
        more = _items(1_000, start=4_000)
        assert pool.map(more, keys=_key) == [seq for _, seq in more]
        assert not [s for s in pool.stats().shards if s.failed]
        _check_arrivals(pool, items + more)


def test_close_during_a_scale_ends_it_with_pool_closed(tmp_path: Path) -> None:
    handler = type("SlowHandoffHere", (SlowHandoff,), {"marker_dir": str(tmp_path)})
    pool = ShardPool(handler, num_actors=1, num_shards=4)
    pool.map(_items(1_000), keys=_key)
    (tmp_path / "gate-snapshot").touch()
    scaling, scaled = _in_thread(lambda: pool.scale(2))
    _wait_marker(tmp_path, "snapshot")
    pool.close(wait=False)
    (tmp_path / "gate-snapshot").unlink()
    with pytest.raises(PoolClosedError):
        _join(scaling, scaled)
    with pytest.raises(PoolClosedError):
        pool.scale(1)
