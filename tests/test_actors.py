"""The shard actor on its own: generations, per-shard order, incarnations, control calls."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import ray
from ray import cloudpickle

from shardyard.actors import Shard, remote_shard_actor
from shardyard.protocol import (
    BARRIER,
    WORK,
    BarrierReply,
    BatchReply,
    HostRequest,
    Stale,
    WireBatch,
    load_outputs,
)

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


class FailingSetup(Shard):
    def setup(self, shard_id: int) -> None:
        if shard_id == 1:
            raise ValueError("no setup for shard 1")


def _work(sid: int, gen: int, seq: int, items: Any) -> WireBatch:
    return WireBatch(sid, gen, seq, WORK, items, False)


@pytest.fixture
def actor() -> Any:
    a = remote_shard_actor().remote(Log, False, 0)
    ray.get(a.host.remote([HostRequest(0, 1, None), HostRequest(1, 1, None)]))
    yield a
    ray.kill(a, no_restart=True)


def _log(actor: Any, sid: int) -> list[Any]:
    return ray.get(actor.results.remote())[1][sid][1]


def test_an_actor_hosts_nothing_until_placed() -> None:
    a = remote_shard_actor().remote(Log, False, 0)
    try:
        reply = ray.get(a.run.remote([_work(0, 1, 0, ["x"])]))
        assert reply.replies == [Stale(0, 1, 0, "unhosted")]
        assert reply.incarnation == ray.get(a.health.remote())
    finally:
        ray.kill(a, no_restart=True)


def test_batches_run_in_sequence_order_even_if_sent_out_of_order(actor: Any) -> None:
    later = actor.run.remote([_work(0, 1, 1, ["b"])])  # seq 1 waits for seq 0
    earlier = actor.run.remote([_work(0, 1, 0, ["a"])])
    ray.get([earlier, later])
    assert _log(actor, 0) == ["a", "b"]


def test_crossed_calls_each_waiting_for_a_batch_of_the_other_both_finish(actor: Any) -> None:
    """Each call holds the turn the other waits for: run one batch after another, they
    would wait for each other forever; a batch not yet due must not hold up its call's
    ready ones."""
    first = actor.run.remote([_work(0, 1, 1, ["a1"]), _work(1, 1, 0, ["b0"])])
    second = actor.run.remote([_work(1, 1, 1, ["b1"]), _work(0, 1, 0, ["a0"])])
    replies = [r for call in ray.get([first, second], timeout=60) for r in call.replies]
    assert all(isinstance(r, BatchReply) for r in replies)
    assert [(r.shard_id, r.seq) for r in replies] == [(0, 1), (1, 0), (1, 1), (0, 0)]
    assert _log(actor, 0) == ["a0", "a1"]
    assert _log(actor, 1) == ["b0", "b1"]


class AwaitableProcess(Shard):
    """A plain ``def process`` that hands back a coroutine (as a decorated ``async def``
    does): the actor awaits it, and the shards of one call must wait side by side."""

    def process(self, batch: Any) -> Any:
        async def later() -> list[tuple[float, float]]:
            start = time.monotonic()
            await asyncio.sleep(0.2)
            return [(start, time.monotonic())] * len(batch)

        return later()


def test_a_sync_process_returning_an_awaitable_runs_its_shards_side_by_side() -> None:
    a = remote_shard_actor().remote(AwaitableProcess, False, 0)
    try:
        ray.get(a.host.remote([HostRequest(s, 1, None) for s in range(8)]))
        reply = ray.get(a.run.remote([_work(s, 1, 0, [s]) for s in range(8)]), timeout=60)
        spans = [r.outputs[0] for r in load_outputs(reply.replies)]
        assert len(spans) == 8
        # Run one after another, the last would start after the first ended.
        assert max(start for start, _ in spans) < min(end for _, end in spans)
    finally:
        ray.kill(a, no_restart=True)


def test_a_batch_of_another_generation_is_never_applied(actor: Any) -> None:
    ray.get(actor.run.remote([_work(1, 1, 0, ["x"])]))
    again = ray.get(actor.run.remote([_work(1, 1, 0, ["x"])])).replies[0]
    old = ray.get(actor.run.remote([_work(1, 0, 1, ["y"])])).replies[0]
    assert isinstance(again, Stale) and isinstance(old, Stale)
    assert _log(actor, 1) == ["x"]


def test_control_calls_answer_while_a_shard_is_busy(actor: Any) -> None:
    busy = actor.run.remote([_work(0, 1, 0, ["sleep", 3.0])])
    start = time.monotonic()
    incarnation = ray.get(actor.health.remote(), timeout=10)
    stats = ray.get(actor.stats.remote(), timeout=10)
    answered = time.monotonic() - start
    ready, _ = ray.wait([busy], timeout=0)
    assert not ready, "the control call should have answered before the busy batch ended"
    assert stats["actor_index"] == 0 and set(stats["shards"]) == {0, 1}
    assert stats["incarnation"] == incarnation
    assert answered < 3.0
    ray.get(busy)


def test_snapshot_barrier_and_restore(actor: Any) -> None:
    ray.get(actor.run.remote([_work(0, 1, 0, ["a", "b"])]))
    reply = ray.get(actor.run.remote([WireBatch(0, 1, 1, BARRIER, None, False)])).replies[0]
    assert isinstance(reply, BarrierReply) and reply.failure is None
    assert cloudpickle.loads(reply.state)["log"] == ["a", "b"]
    frozen = cloudpickle.dumps({"log": ["restored"]})
    ray.get(actor.host.remote([HostRequest(0, 2, frozen)]))
    ray.get(actor.run.remote([_work(0, 2, 0, ["c"])]))
    assert _log(actor, 0) == ["restored", "c"]


def test_batches_waiting_on_a_replaced_generation_answer_stale(actor: Any) -> None:
    waiting = actor.run.remote([_work(0, 1, 3, ["late"])])
    deadline = time.monotonic() + 30
    while ray.get(actor.stats.remote())["shards"][0]["waiting"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    ray.get(actor.host.remote([HostRequest(0, 2, None)]))
    reply = ray.get(waiting, timeout=30).replies[0]
    assert reply == Stale(0, 1, 3, "superseded")
    assert _log(actor, 0) == []


def test_a_failing_setup_is_reported_per_shard() -> None:
    a = remote_shard_actor().remote(FailingSetup, False, 0)
    try:
        reply = ray.get(a.host.remote([HostRequest(0, 1, None), HostRequest(1, 1, None)]))
        assert set(reply.failures) == {1}
        assert "no setup for shard 1" in reply.failures[1].traceback
        ok = ray.get(a.run.remote([_work(0, 1, 0, [1])])).replies[0]
        assert isinstance(ok, BatchReply)
    finally:
        ray.kill(a, no_restart=True)
