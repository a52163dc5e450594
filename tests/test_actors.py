"""The shard actor on its own: per-shard order by sequence number, responsive control calls."""

from __future__ import annotations

import time
from typing import Any

import pytest
import ray
from ray import cloudpickle

from shardyard.actors import Shard, remote_shard_actor
from shardyard.actors.shard_actor import SNAPSHOT_BARRIER, STALE

pytestmark = pytest.mark.usefixtures("ray_local")


class Log(Shard):
    def setup(self, shard_id: int) -> None:
        self.log: list[Any] = []

    def process(self, batch: Any) -> None:
        if batch and batch[0] == "sleep":
            time.sleep(float(batch[1]))
        self.log.extend(batch)
        return None

    def result(self) -> list[Any]:
        return self.log


@pytest.fixture
def actor() -> Any:
    handle = remote_shard_actor()
    a = handle.remote(Log, False, 0, [0, 1])
    yield a
    ray.kill(a, no_restart=True)


def test_batches_run_in_sequence_order_even_if_sent_out_of_order(actor: Any) -> None:
    later = actor.run.remote([(0, 1, ["b"])])  # seq 1 waits for seq 0
    earlier = actor.run.remote([(0, 0, ["a"])])
    ray.get([earlier, later])
    assert ray.get(actor.results.remote())[0] == ["a", "b"]


def test_resent_batch_is_answered_not_reapplied(actor: Any) -> None:
    ray.get(actor.run.remote([(1, 0, ["x"])]))
    reply = ray.get(actor.run.remote([(1, 0, ["x"])]))
    assert reply[0][1] == 0
    assert ray.get(actor.results.remote())[1] == ["x"]


def test_control_calls_answer_while_a_shard_is_busy(actor: Any) -> None:
    busy = actor.run.remote([(0, 0, ["sleep", 3.0])])
    start = time.monotonic()
    assert ray.get(actor.health.remote(), timeout=10) == "ok"
    stats = ray.get(actor.stats.remote(), timeout=10)
    answered = time.monotonic() - start
    ready, _ = ray.wait([busy], timeout=0)
    assert not ready, "the control call should have answered before the busy batch ended"
    assert stats["actor_index"] == 0 and set(stats["shards"]) == {0, 1}
    assert answered < 3.0
    ray.get(busy)


def test_snapshot_barrier_and_restore(actor: Any) -> None:
    ray.get(actor.run.remote([(0, 0, ["a", "b"])]))
    reply = ray.get(actor.run.remote([(0, 1, SNAPSHOT_BARRIER)]))
    state = cloudpickle.loads(reply[0][2][0])
    assert state["log"] == ["a", "b"]
    frozen = cloudpickle.dumps({"log": ["restored"]})
    ray.get(actor.host_shards.remote([0], {0: (frozen, 5)}))
    ray.get(actor.run.remote([(0, 5, ["c"])]))
    assert ray.get(actor.results.remote())[0] == ["restored", "c"]


def test_batches_waiting_on_a_replaced_shard_answer_stale(actor: Any) -> None:
    # As after a crash: a call for seq 3 reached a fresh instance before recovery placed the
    # shard anew; it must answer (stale) rather than wait forever.
    waiting = actor.run.remote([(0, 3, ["late"])])
    deadline = time.monotonic() + 30
    while ray.get(actor.stats.remote())["shards"][0]["waiting"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    ray.get(actor.host_shards.remote([0], {0: (None, 0)}))
    reply = ray.get(waiting, timeout=30)
    assert reply[0][:3] == (0, 3, STALE)
    assert ray.get(actor.results.remote())[0] == []
