"""The async shard actor: one process hosting several logical shards.

``ShardActor`` is a plain class; the scheduler makes it remote at construction with
``ray.remote(**options)(ShardActor)`` (see :func:`remote_shard_actor`). It

* runs the batches of each hosted shard strictly in sequence-number order, one at a time,
  while different shards interleave on the actor's event loop;
* keeps per-shard counters (items, batches, errors, busy time) for ``stats``;
* answers control calls (stats, health, results, snapshot) from a separate concurrency
  group, whose own thread and event loop keep them responsive while a shard is busy.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray
from ray import cloudpickle

from shardyard.actors.handler import ItemFailure, Outputs, ensure_picklable, run_batch
from shardyard.actors.shard import Shard

__all__ = ["CONTROL_GROUP", "SNAPSHOT_BARRIER", "STALE", "ShardActor", "remote_shard_actor"]

CONTROL_GROUP = "control"
# A batch payload that asks for the shard's snapshot at its place in the batch order (a
# barrier, as in Flink's checkpoints), so the state matches exactly the batches before it.
SNAPSHOT_BARRIER = "__shardyard_snapshot_barrier__"
# The outputs of a reply for a batch that was waiting its turn when its shard was placed
# anew (recovery): the driver ignores it and resends the batch to the new placement.
STALE = "__shardyard_stale__"

BatchReply = tuple[int, int, Outputs | str, list[ItemFailure]]  # outputs, or STALE


@dataclass
class _HostedShard:
    instance: Any  # the Shard instance, or the shared plain function
    next_seq: int = 0  # sequence number of the next batch this shard may run
    # seq -> the batches waiting for their turn (more than one only for resent copies)
    waiters: dict[int, list[asyncio.Future[bool]]] = field(default_factory=dict)
    last_reply: BatchReply | None = None  # answered again if the driver resends a batch
    skipped: set[int] = field(default_factory=set)  # seqs the driver gave up on: not coming
    items: int = 0
    batches: int = 0
    errors: int = 0
    busy_s: float = 0.0


class ShardActor:
    """Hosts logical shards and runs the user's handler on their batches.

    Args:
        handler: a ``Shard`` subclass (one instance per shard) or a plain function.
        batched: for a plain function, whether it takes whole batches.
        actor_index: this actor's index in its pool (for stats and errors).
        shard_ids: the shards placed on this actor.
        states: optional ``{shard_id: (state, next_seq)}`` to restore instead of a fresh setup.
    """

    def __init__(
        self,
        handler: type[Shard] | Callable[[Any], Any],
        batched: bool,
        actor_index: int,
        shard_ids: list[int],
        states: dict[int, tuple[Any, int]] | None = None,
    ) -> None:
        self._handler = handler
        self._batched = batched
        self._index = actor_index
        self._shards: dict[int, _HostedShard] = {}  # shard id -> its instance and counters
        self._started = time.time()
        self._host(shard_ids, states or {})

    # --- work -------------------------------------------------------------------------------

    async def run(self, batches: list[tuple[int, int, Any]]) -> list[BatchReply]:
        """Run one batch per listed shard: ``[(shard_id, seq, items), ...]``.

        Returns:
            ``[(shard_id, seq, outputs, failures), ...]`` in the order given.
        """
        if len(batches) == 1:
            return [await self._run_one(*batches[0])]
        return list(await asyncio.gather(*(self._run_one(*b) for b in batches)))

    async def _run_one(self, shard_id: int, seq: int, batch: Any) -> BatchReply:
        hosted = self._shards.get(shard_id)
        if hosted is None:
            raise LookupError(f"shard {shard_id} is not hosted on actor {self._index}")
        if seq < hosted.next_seq:
            # A resend of a batch already applied: answer it again, never apply it twice.
            if hosted.last_reply is not None and hosted.last_reply[1] == seq:
                return hosted.last_reply
            # Applied earlier and answered by that earlier run: this copy is stale.
            return (shard_id, seq, STALE, [])
        if seq > hosted.next_seq:
            waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            hosted.waiters.setdefault(seq, []).append(waiter)
            if await waiter:  # superseded: the shard was placed anew meanwhile
                return (shard_id, seq, STALE, [])
        reply: BatchReply
        if isinstance(batch, str) and batch == SNAPSHOT_BARRIER:
            reply = (shard_id, seq, [_freeze(hosted.instance)], [])
        elif len(batch) == 0:
            reply = (shard_id, seq, [], [])  # every item was dropped before sending
        else:
            start = time.perf_counter()
            outputs, failures = await run_batch(hosted.instance, self._batched, batch)
            outputs, failures = ensure_picklable(outputs, failures)
            hosted.busy_s += time.perf_counter() - start
            hosted.items += len(batch)
            hosted.batches += 1
            hosted.errors += len(failures)
            reply = (shard_id, seq, outputs, failures)
        hosted.last_reply = reply
        self._advance(hosted, seq + 1)
        return reply

    @staticmethod
    def _advance(hosted: _HostedShard, next_seq: int) -> None:
        """Move the shard on to ``next_seq`` (past skipped seqs) and wake that batch."""
        while next_seq in hosted.skipped:
            hosted.skipped.discard(next_seq)
            next_seq += 1
        hosted.next_seq = next_seq
        # The first copy of the batch runs; resent copies of it answer stale.
        for i, waiter in enumerate(hosted.waiters.pop(next_seq, ())):
            if not waiter.done():
                waiter.set_result(i > 0)

    async def skip(self, seqs: list[tuple[int, int]]) -> None:
        """Give up on batches ``[(shard_id, seq), ...]`` that will never arrive.

        The driver calls this when a call failed before its batches ran (its arguments did
        not deserialise here, say), so later batches of those shards do not wait forever.
        Seqs already passed are ignored. Runs on the work loop, like ``run``.
        """
        for sid, seq in seqs:
            hosted = self._shards.get(sid)
            if hosted is None or seq < hosted.next_seq:
                continue
            hosted.skipped.add(seq)
            if seq == hosted.next_seq:
                self._advance(hosted, seq)

    # --- placement ----------------------------------------------------------------------------

    async def host_shards(
        self,
        shard_ids: list[int],
        states: dict[int, tuple[Any, int]],
        skipped: dict[int, list[int]] | None = None,
    ) -> None:
        """Place shards here: fresh (``setup``), then ``restore`` where ``states`` has a state.

        Runs on the work loop (not the control group), so a shard is never replaced while
        one of its batches is part-way through.

        Args:
            shard_ids: the shards to host (replacing any hosted instance of them).
            states: ``{shard_id: (frozen state or None, next_seq)}``, as made by a snapshot
                barrier or ``snapshot()``; the shard accepts batches from
                ``next_seq`` on.
            skipped: ``{shard_id: seqs}`` that will never arrive (failed or already
                answered), passed over when the shard reaches them.
        """
        self._host(shard_ids, states)
        for sid, seqs in (skipped or {}).items():
            hosted = self._shards[sid]
            hosted.skipped.update(s for s in seqs if s >= hosted.next_seq)
            self._advance(hosted, hosted.next_seq)

    def _host(self, shard_ids: list[int], states: dict[int, tuple[Any, int]]) -> None:
        for sid in shard_ids:
            old = self._shards.get(sid)
            if old is not None:
                # Batches still waiting for their turn on the old placement answer "stale"
                # instead of hanging; the driver resends them.
                for waiting in old.waiters.values():
                    for waiter in waiting:
                        if not waiter.done():
                            waiter.set_result(True)
            instance: Any = self._handler
            state, next_seq = states.get(sid, (None, 0))
            if isinstance(self._handler, type) and issubclass(self._handler, Shard):
                instance = self._handler()
                instance.shard_id = sid
                instance.setup(sid)
                if state is not None:
                    instance.restore(cloudpickle.loads(state))
            self._shards[sid] = _HostedShard(instance, next_seq=next_seq)

    @ray.method(concurrency_group=CONTROL_GROUP)
    def snapshot(self, shard_ids: list[int] | None = None) -> dict[int, tuple[Any, int]]:
        """``{shard_id: (frozen state, next_seq)}`` of the given (default: all) shards."""
        ids = list(self._shards) if shard_ids is None else shard_ids
        out: dict[int, tuple[Any, int]] = {}
        for sid in ids:
            hosted = self._shards[sid]
            if isinstance(hosted.instance, Shard):
                out[sid] = (_freeze(hosted.instance), hosted.next_seq)
        return out

    # --- results and health (control) ----------------------------------------------------------

    @ray.method(concurrency_group=CONTROL_GROUP)
    def results(self) -> dict[int, Any]:
        """``{shard_id: partial result}`` of every hosted shard."""
        return {
            sid: h.instance.result() if isinstance(h.instance, Shard) else None
            for sid, h in self._shards.items()
        }

    @ray.method(concurrency_group=CONTROL_GROUP)
    def reduce_local(self, combine: Callable[[Any, Any], Any]) -> Any:
        """Combine this actor's partials in place, so only one value leaves the process."""
        acc: Any = None
        first = True
        for sid in sorted(self._shards):
            h = self._shards[sid]
            part = h.instance.result() if isinstance(h.instance, Shard) else None
            if first:
                # A private copy: combine may update its first argument in place, and the
                # first partial is live shard state.
                acc = cloudpickle.loads(cloudpickle.dumps(part))
                first = False
            else:
                acc = combine(acc, part)
        return acc

    @ray.method(concurrency_group=CONTROL_GROUP)
    def stats(self) -> dict[str, Any]:
        """Counters of this actor and of each hosted shard."""
        ctx = ray.get_runtime_context()
        return {
            "actor_index": self._index,
            "pid": os.getpid(),
            "node_id": ctx.get_node_id(),
            "uptime_s": time.time() - self._started,
            "shards": {
                sid: {
                    "items": h.items,
                    "batches": h.batches,
                    "errors": h.errors,
                    "busy_s": h.busy_s,
                    "next_seq": h.next_seq,
                    "waiting": sum(len(w) for w in h.waiters.values()),
                }
                for sid, h in self._shards.items()
            },
        }

    @ray.method(concurrency_group=CONTROL_GROUP)
    def health(self) -> str:
        """``"ok"`` while the actor's control loop answers."""
        return "ok"


def _freeze(instance: Any) -> bytes | None:
    """The shard's snapshot, serialised now.

    Serialising at the barrier (not when Ray ships the reply) matters: the next batch of the
    shard may run before the reply is sent, and would otherwise leak into a snapshot that
    the default ``snapshot()`` (a shallow copy) shares with the live state.
    """
    if not isinstance(instance, Shard):
        return None
    return cloudpickle.dumps(instance.snapshot())


def remote_shard_actor(**options: Any) -> Any:
    """Make :class:`ShardActor` remote with Ray actor ``options`` and a control group."""
    options.setdefault("concurrency_groups", {CONTROL_GROUP: 2})
    return ray.remote(**options)(ShardActor)
