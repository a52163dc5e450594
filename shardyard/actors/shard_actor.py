"""The async shard actor: one process hosting several logical shards.

``ShardActor`` is a plain class; the scheduler makes it remote at construction with
``ray.remote(**options)(ShardActor)`` (see :func:`remote_shard_actor`). It

* hosts nothing until the driver places shard *generations* on it (``host``), and draws a
  random incarnation id per process, so a restarted actor is recognised (see
  :mod:`shardyard.protocol`);
* runs the batches of each hosted generation strictly in sequence-number order, one at a
  time, while different shards interleave on the actor's event loop, or run in parallel
  on its threads once a sync handler is seen to block (see
  :mod:`shardyard.actors.concurrency`, ``max_concurrency``); what reads a shard's state
  between batches (results, snapshots, a handoff, a new generation) waits for the batch
  it has running, if any (``_between_batches``, the shard's lock);
* keeps per-shard counters (items, batches, errors, busy time, memo hits) for ``stats``;
* makes the pool's shared values this process's ``shardyard.shared`` (see
  :mod:`shardyard.actors.shared`), and gives each shard of a plain per-item function its
  own LRU memo when ``memo_size`` is set (see :mod:`shardyard.actors.memo`);
* answers control calls (stats, health) from a separate concurrency
  group, whose own thread and event loop keep them responsive while a shard is busy.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import json
import os
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import ray
from ray import cloudpickle

from shardyard.actors.combine import combine_all, combine_two
from shardyard.actors.concurrency import Runner
from shardyard.actors.handler import ensure_picklable, pickle_each, run_batch
from shardyard.actors.memo import memo_of, memoize
from shardyard.actors.shard import Shard
from shardyard.actors.shared import install as install_shared
from shardyard.protocol import (
    BARRIER,
    REPLAY,
    USER_ERRORS,
    BarrierReply,
    BatchReply,
    CallReply,
    HandoffReply,
    HostReply,
    HostRequest,
    ItemFailure,
    PickledOutputs,
    ReplyColumns,
    Stale,
    WireBatch,
    WireCall,
)

__all__ = ["CONTROL_GROUP", "ShardActor", "remote_shard_actor"]

CONTROL_GROUP = "control"
RECENT_REPLIES = 16  # replies kept per shard, to answer again (see ShardActor.replies)
# ... and at most this many of their items, beyond the last RECENT_MIN replies: the outputs
# kept do not grow with the batch size (16 batches of 1,024 items, the old default size).
RECENT_ITEMS = RECENT_REPLIES * 1024
RECENT_MIN = 4
_THREAD_LOAD_BYTES = 1 << 20  # states larger than this are unpickled off the work loop
_NO_STATE: Any = object()  # a fresh shard (setup only)


@dataclass
class _HostedShard:
    instance: Any  # the Shard instance, or the shared plain function
    gen: int  # the generation hosted (see shardyard.protocol)
    next_seq: int = 0  # sequence number of the next batch this shard may run
    waiters: dict[int, asyncio.Future[bool]] = field(default_factory=dict)  # seq -> its turn
    # seq -> (its reply, its items), the last few: asked for again when the driver could
    # not load one
    recent: OrderedDict[int, tuple[BatchReply | BarrierReply, int]] = field(
        default_factory=OrderedDict
    )
    recent_items: int = 0  # items of the replies in recent
    items: int = 0
    batches: int = 0
    errors: int = 0
    busy_s: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # held by its running batch


def _remember(hosted: _HostedShard, seq: int, reply: BatchReply | BarrierReply, n: int) -> None:
    """Keep ``reply`` (of ``n`` items) to answer again; drop the oldest beyond
    ``RECENT_REPLIES`` replies, or beyond ``RECENT_ITEMS`` items once ``RECENT_MIN`` are kept.

    Example:
        >>> h = _HostedShard(instance=None, gen=0)
        >>> for seq in range(6):
        ...     _remember(h, seq, BatchReply(0, 0, seq, [], []), RECENT_ITEMS // 2)
        >>> list(h.recent), h.recent_items == 4 * (RECENT_ITEMS // 2)
        ([2, 3, 4, 5], True)
    """
    _, before = hosted.recent.get(seq, (None, 0))
    hosted.recent[seq] = (reply, n)
    hosted.recent_items += n - before
    while len(hosted.recent) > RECENT_REPLIES or (
        hosted.recent_items > RECENT_ITEMS and len(hosted.recent) > RECENT_MIN
    ):
        _, (_, dropped) = hosted.recent.popitem(last=False)
        hosted.recent_items -= dropped


class ShardActor:
    """Hosts generations of logical shards and runs the user's handler on their batches.

    The actor hosts nothing until the driver places shards with :meth:`host`; a process
    that Ray restarts after a crash therefore answers every batch with ``Stale("unhosted")``
    and a new incarnation id until the driver has restored its shards.

    Args:
        handler: a ``Shard`` subclass (one instance per shard) or a plain function.
        batched: for a plain function, whether it takes whole batches.
        actor_index: this actor's index in its pool (for stats and errors).
        batch_format: what a batch handler or ``Shard.process`` receives (see
            :func:`~shardyard.actors.handler.run_batch`).
        *shared_values: the pool's shared values, passed as top-level ``ObjectRef`` s,
            which Ray resolves before this runs (numpy arrays arrive mapped read-only from
            the object store); they become this process's ``shardyard.shared``.
        shared_names: the name of each shared value, in order.
        memo_size: outputs kept per shard by an LRU memo around a plain per-item function
            (0: none; see :mod:`shardyard.actors.memo`).
        max_concurrency: handler calls in progress at once in this actor: threads for a
            blocking sync handler, suspended calls of an async one (see
            :mod:`shardyard.actors.concurrency`).
    """

    def __init__(
        self,
        handler: type[Shard] | Callable[[Any], Any],
        batched: bool,
        actor_index: int,
        batch_format: str = "input",
        *shared_values: Any,
        shared_names: tuple[str, ...] = (),
        memo_size: int = 0,
        max_concurrency: int = 64,
    ) -> None:
        self._handler = handler
        self._batched = batched
        self._batch_format = batch_format
        self._memo_size = memo_size
        # Kept for the process's life: the arrays map the object store's memory.
        install_shared(dict(zip(shared_names, shared_values, strict=True)))
        self._index = actor_index
        self._incarnation = uuid.uuid4().hex  # new for every process Ray starts
        self._shards: dict[int, _HostedShard] = {}  # shard id -> its instance and counters
        self._started = time.time()
        self._reduced: dict[str, Any] = {}  # reduce id -> this actor's combined value
        self._dropped: deque[str] = deque(maxlen=64)  # reduce ids abandoned (see drop)
        self._runner = Runner(max_concurrency)  # where handler calls run (loop, threads)
        # Nothing of a sync handler's calls awaits unless the runner sends them to threads:
        # ready batches of one call then run one after another in the call's own task.
        self._sync_handler = _is_sync(handler)
        self._readers = asyncio.Lock()  # one _between_batches at a time (no lock-order cycle)
        # Everything alive now (Ray's worker, the imports, the handler) lives as long as the
        # process: kept out of the garbage collector's full collections, which otherwise
        # rescan it while the shards allocate (as vLLM and sglang do after start-up).
        gc.freeze()

    # --- work -------------------------------------------------------------------------------

    async def run(self, batches: list[WireBatch] | WireCall) -> CallReply:
        """Run one batch per listed shard, each in its generation's sequence order."""
        t0 = time.perf_counter()
        if isinstance(batches, WireCall):
            batches = batches.unpack()
        if len(batches) == 1:
            reply = await self._run_one(batches[0])
            return CallReply(self._incarnation, [reply], time.perf_counter() - t0)
        results: list[Any] = [None] * len(batches)
        later: list[int] = []
        for i, b in enumerate(batches):
            if self._sync_handler and self._runner.on_loop() and self._ready(b):
                # Its turn, and a sync handler computing on the loop: it runs to the end
                # without waiting for anything, so here, in order, costs no task.
                results[i] = await self._run_one(b)
            else:
                later.append(i)
        if later:
            # A task per batch, never a coroutine stepped by hand: a handler's
            # asyncio.timeout (or aiohttp's, anyio's) cancels the task it started in, which
            # must be its own; and a batch waiting for its turn must not hold up the others.
            done = await asyncio.gather(*(self._run_one(batches[i]) for i in later))
            for i, reply in zip(later, done, strict=True):
                results[i] = reply
        return CallReply(self._incarnation, ReplyColumns.pack(results), time.perf_counter() - t0)

    def _ready(self, b: WireBatch) -> bool:
        """Whether ``b`` may run now without waiting: its shard is hosted in its
        generation, it is the shard's next batch, and no batch of the shard is running."""
        hosted = self._shards.get(b.shard_id)
        return (
            hosted is not None
            and hosted.gen == b.gen
            and hosted.next_seq == b.seq
            and not hosted.lock.locked()
        )

    async def _run_one(self, b: WireBatch) -> BatchReply | BarrierReply | Stale:
        hosted = self._shards.get(b.shard_id)
        if hosted is None:
            return Stale(b.shard_id, b.gen, b.seq, "unhosted")
        if hosted.gen != b.gen or b.seq < hosted.next_seq:
            return Stale(b.shard_id, b.gen, b.seq, "superseded")
        if b.seq > hosted.next_seq:
            waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            if b.seq in hosted.waiters:  # the driver never sends a seq twice in a generation
                return Stale(b.shard_id, b.gen, b.seq, "superseded")
            hosted.waiters[b.seq] = waiter
            if await waiter:  # superseded: the shard was placed anew meanwhile
                return Stale(b.shard_id, b.gen, b.seq, "superseded")
        # Held while the batch runs (on the loop or in a thread): what reads the shard's
        # state between batches waits for it (see _between_batches).
        async with hosted.lock:
            if self._shards.get(b.shard_id) is not hosted:  # placed anew meanwhile
                return Stale(b.shard_id, b.gen, b.seq, "superseded")
            return await self._run_turn(hosted, b)

    async def _run_turn(self, hosted: _HostedShard, b: WireBatch) -> BatchReply | BarrierReply:
        """Run ``b``, the batch whose turn it is, and hand the turn on to the next one."""
        reply: BatchReply | BarrierReply
        kept = None  # what replies() answers again, when not the reply itself
        if b.kind == BARRIER:
            try:
                reply = BarrierReply(b.shard_id, b.gen, b.seq, _freeze(hosted.instance), None)
            except USER_ERRORS as exc:
                reply = BarrierReply(b.shard_id, b.gen, b.seq, None, ItemFailure.capture(0, exc))
        elif len(b.items) == 0:
            reply = BatchReply(b.shard_id, b.gen, b.seq, [], [])
        else:
            start = time.perf_counter()
            outputs: Any
            outputs, failures = await run_batch(
                hosted.instance,
                self._batched,
                b.items,
                self._batch_format,
                self._runner,
                concurrent_items=b.keyless,
            )
            if b.kind == REPLAY:
                # Re-applied after a restore: the outputs were delivered the first time.
                outputs, failures = [], []
            elif b.pickled:
                outputs, failures = pickle_each(outputs, failures)
            else:
                wire, failures = ensure_picklable(outputs, failures)
                if type(wire) is PickledOutputs:
                    # Kept as objects: should the driver fail to load them, replies()
                    # pickles them one by one, and only the outputs that do not load fail.
                    kept = BatchReply(b.shard_id, b.gen, b.seq, outputs, failures)
                outputs = wire
            hosted.busy_s += time.perf_counter() - start
            hosted.items += len(b.items)
            hosted.batches += 1
            hosted.errors += len(failures)
            reply = BatchReply(b.shard_id, b.gen, b.seq, outputs, failures)
        if self._shards.get(b.shard_id) is hosted:
            n = 0 if b.items is None else len(b.items)  # a barrier carries none
            _remember(hosted, b.seq, reply if kept is None else kept, n)
            hosted.next_seq = b.seq + 1
            nxt = hosted.waiters.pop(b.seq + 1, None)
            if nxt is not None and not nxt.done():
                nxt.set_result(False)
        return reply

    @ray.method(concurrency_group=CONTROL_GROUP)
    def replies(self, keys: list[tuple[int, int, int]]) -> list[BatchReply | BarrierReply | None]:
        """The replies of batches ``[(shard_id, gen, seq), ...]`` again, each output pickled on
        its own (bytes), for a reply the driver could not load; ``None`` where it is gone."""
        out: list[BatchReply | BarrierReply | None] = []
        for sid, gen, seq in keys:
            hosted = self._shards.get(sid)
            kept = hosted.recent.get(seq) if hosted is not None and hosted.gen == gen else None
            reply = None if kept is None else kept[0]
            if isinstance(reply, BatchReply):
                blobs, failures = pickle_each(reply.outputs, reply.failures)
                reply = BatchReply(sid, gen, seq, blobs, failures)
            out.append(reply)
        return out

    # --- placement ----------------------------------------------------------------------------

    async def host(self, requests: list[HostRequest], *states: bytes | None) -> HostReply:
        """Place shard generations here: fresh (``setup``), or ``restore``d from a state.

        A request's state is in the request, or (``state_arg >= 0``) one of ``states``:
        the driver passes a migrated shard's state as an ``ObjectRef``, which Ray fetches
        into this process from the object store before the call runs.

        A replaced generation is dropped first, once its running batch is over (its waiting
        batches answer ``Stale``). A
        large state is unpickled in a thread, so the actor's other shards keep running; the
        shard's own batches come only after this returns (the driver waits for the reply).
        ``setup`` and ``restore`` run on the work loop.

        Returns:
            The incarnation, and the shards whose ``setup``/``restore`` raised (those are
            not hosted).
        """
        failures: dict[int, ItemFailure] = {}
        for req in requests:
            old = await self._unhost(req.shard_id)
            if old is not None:
                for waiter in old.waiters.values():
                    if not waiter.done():
                        waiter.set_result(True)
            try:
                raw = states[req.state_arg] if req.state_arg >= 0 else req.state
                state = _NO_STATE
                if raw is not None:
                    big = len(raw) > _THREAD_LOAD_BYTES
                    state = (
                        await asyncio.to_thread(cloudpickle.loads, raw)
                        if big
                        else (cloudpickle.loads(raw))
                    )
                instance = self._new_instance(req.shard_id, state)
            except USER_ERRORS as exc:
                failures[req.shard_id] = ItemFailure.capture(0, exc)
                continue
            self._shards[req.shard_id] = _HostedShard(instance, req.gen)
        return HostReply(self._incarnation, failures)

    @ray.method(num_returns=2)
    async def handoff(self, shard_id: int, gen: int) -> tuple[HandoffReply, bytes | None]:
        """Give up generation ``gen`` of ``shard_id`` for a migration: snapshot it, stop
        hosting it, and return the state as this call's second return value.

        The driver keeps that return as an ``ObjectRef`` and passes it to the receiving
        actor's ``host`` without fetching it: the state goes from here to there through
        Ray's object store. Runs on the work loop, between batches; the driver calls it only
        once every batch of the generation was answered. Should ``snapshot()`` raise, the
        shard stays hosted here and the reply carries the failure.
        """
        hosted = self._shards.get(shard_id)
        if hosted is None or hosted.gen != gen or hosted.waiters:
            why = RuntimeError(f"generation {gen} of shard {shard_id} is not hosted here (idle)")
            return HandoffReply(self._incarnation, ItemFailure.capture(0, why)), None
        try:
            # In a thread: the actor's other shards keep running while this one is frozen
            # (no batch of this one is sent until the move is over).
            async with hosted.lock:
                state = await asyncio.to_thread(_freeze, hosted.instance)
        except USER_ERRORS as exc:
            return HandoffReply(self._incarnation, ItemFailure.capture(0, exc)), None
        if self._shards.get(shard_id) is not hosted:  # placed anew meanwhile
            why = RuntimeError(f"shard {shard_id} was placed anew during its handoff")
            return HandoffReply(self._incarnation, ItemFailure.capture(0, why)), None
        del self._shards[shard_id]
        size = 0 if state is None else len(state)
        return HandoffReply(self._incarnation, None, size), state

    async def _unhost(self, sid: int) -> _HostedShard | None:
        """Stop hosting shard ``sid`` once its running batch (if any) is over; returns it."""
        while (old := self._shards.get(sid)) is not None:
            async with old.lock:
                if self._shards.get(sid) is old:
                    del self._shards[sid]
                    return old
        return None

    @contextlib.asynccontextmanager
    async def _between_batches(self) -> AsyncIterator[None]:
        """Hold the lock of every stateful shard hosted: the body (which must not await)
        reads their states between batches, none of them running on the loop or in a
        thread. Batches waiting meanwhile run after it, in their order."""
        async with self._readers:
            held: dict[int, asyncio.Lock] = {}  # id -> lock (a replaced shard's too)
            try:
                while todo := [
                    h.lock
                    for h in self._shards.values()
                    if isinstance(h.instance, Shard) and id(h.lock) not in held
                ]:
                    for lock in todo:
                        await lock.acquire()
                        held[id(lock)] = lock
                yield
            finally:
                for lock in held.values():
                    lock.release()

    def _new_instance(self, sid: int, state: Any) -> Any:
        if not (isinstance(self._handler, type) and issubclass(self._handler, Shard)):
            if self._memo_size > 0:  # each shard its own table and counters
                return memoize(self._handler, self._memo_size)
            return self._handler
        instance = self._handler()
        instance.shard_id = sid
        instance.setup(sid)
        if state is not _NO_STATE:
            instance.restore(state)
        return instance

    async def results(self) -> tuple[str, dict[int, tuple[int, Any]]]:
        """The incarnation, and ``{shard_id: (generation, partial result)}`` of every shard.

        Runs on the work loop, between batches (not in the control group), so a partial is
        never read while a batch is changing it.
        """
        async with self._between_batches():
            return self._incarnation, {
                sid: (h.gen, h.instance.result() if isinstance(h.instance, Shard) else None)
                for sid, h in self._shards.items()
            }

    async def snapshots(self) -> tuple[str, dict[int, tuple[int, bytes | ItemFailure]]]:
        """The incarnation, and ``{shard_id: (generation, snapshot)}`` of every shard.

        For a durable checkpoint (``ShardPool.checkpoint``). Runs on the work loop, between
        batches, as :meth:`results` does, so a snapshot never sees half a batch. A stateless
        shard's snapshot is ``b""``; a ``snapshot()`` that raises gives its failure instead.
        """
        out: dict[int, tuple[int, bytes | ItemFailure]] = {}
        async with self._between_batches():
            for sid, h in self._shards.items():
                try:
                    out[sid] = (h.gen, _freeze(h.instance) or b"")
                except USER_ERRORS as exc:
                    out[sid] = (h.gen, ItemFailure.capture(0, exc))
        return self._incarnation, out

    async def reduce_local(
        self, combine: Callable[[Any, Any], Any], rid: str | None = None
    ) -> tuple[str, dict[int, int], Any]:
        """Combine this actor's partials (see :mod:`~shardyard.actors.combine`).

        Runs on the work loop, between batches, as :meth:`results` does. With ``rid`` the
        value stays here under that id for :meth:`give` and :meth:`absorb` (a tree reduce
        across actors: it leaves this process only when another actor or the driver needs
        it), and the reply carries ``None`` in its place.

        Returns:
            The incarnation, ``{shard_id: generation}`` of the shards combined, and the value.
        """
        async with self._between_batches():
            gens = {sid: self._shards[sid].gen for sid in sorted(self._shards)}
            parts = [
                h.instance.result() if isinstance(h.instance, Shard) else None
                for h in (self._shards[sid] for sid in gens)
            ]
            acc = combine_all(parts, combine)
        if rid is None:
            return self._incarnation, gens, acc
        if rid not in self._dropped:  # abandoned while it waited for a batch: not kept
            self._reduced[rid] = acc
        return self._incarnation, gens, None

    async def give(self, rid: str, after: Any = None) -> Any:
        """Hand over (and forget) the value kept under ``rid``; ``after`` orders this call
        behind an :meth:`absorb` (Ray resolves it first)."""
        return self._reduced.pop(rid)

    async def absorb(
        self, rid: str, combine: Callable[[Any, Any], Any], other: Any, after: Any = None
    ) -> str:
        """Combine another actor's value (resolved by Ray from the object store) into the
        one kept under ``rid``; returns the incarnation. ``after``: as for :meth:`give`
        (an async actor runs calls in the order their arguments are ready, not as sent)."""
        mine = self._reduced.get(rid)
        if mine is None:  # dropped meanwhile (the driver gave up on this reduce)
            raise KeyError(f"reduce {rid} was abandoned")
        combined = combine_two(combine, mine, other)
        if rid in self._reduced:
            self._reduced[rid] = combined
        return self._incarnation

    async def drop(self, rid: str) -> None:
        """Forget the value kept under ``rid`` (a reduce that was abandoned). On the work
        loop, so it comes after the driver's earlier ``give``/``absorb`` calls."""
        self._dropped.append(rid)
        self._reduced.pop(rid, None)

    @ray.method(concurrency_group=CONTROL_GROUP)
    def stats(self) -> dict[str, Any]:
        """Counters of this actor and of each hosted shard."""
        ctx = ray.get_runtime_context()
        return {
            "actor_index": self._index,
            "incarnation": self._incarnation,
            "pid": os.getpid(),
            "node_id": ctx.get_node_id(),
            "node_ip": ray.util.get_node_ip_address(),
            "uptime_s": time.time() - self._started,
            "shards": {
                sid: {
                    "items": h.items,
                    "batches": h.batches,
                    "errors": h.errors,
                    "busy_s": h.busy_s,
                    "gen": h.gen,
                    "next_seq": h.next_seq,
                    "waiting": len(h.waiters),
                    "memo": _memo_counters(h.instance),
                }
                for sid, h in self._shards.items()
            },
        }

    @ray.method(concurrency_group=CONTROL_GROUP)
    def health(self) -> str:
        """This process's incarnation id (a restarted actor answers a new one)."""
        return self._incarnation


def _is_sync(handler: type[Shard] | Callable[[Any], Any]) -> bool:
    """Whether nothing of ``handler``'s calls is ever awaited: a ``Shard`` that works item
    by item with a plain ``def process_item``, or a plain function (not ``async def``, not
    an object with an ``async def __call__``). A ``Shard`` with its own ``process`` is not:
    a plain ``def process`` may return an awaitable, which ``run_batch`` awaits."""
    if isinstance(handler, type) and issubclass(handler, Shard):
        return handler.process is Shard.process and not inspect.iscoroutinefunction(
            handler.process_item
        )
    call = inspect.getattr_static(type(handler), "__call__", None)
    return not (inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(call))


def _memo_counters(instance: Any) -> dict[str, int] | None:
    """The hit and miss counters of a shard's memo (``None`` without one)."""
    memo = memo_of(instance)
    return None if memo is None else memo.counters()


def _freeze(instance: Any) -> bytes | None:
    """The shard's snapshot, serialised now.

    Serialising at the barrier (not when Ray ships the reply) matters: the next batch of the
    shard may run before the reply is sent, and would otherwise leak into a snapshot that
    the default ``snapshot()`` (a shallow copy) shares with the live state.
    """
    if not isinstance(instance, Shard):
        return None
    return cloudpickle.dumps(instance.snapshot())


# Remote classes made so far, by their options: Ray exports a remote class to the cluster
# once per job (its collision check disassembles the whole class: ~70 ms here), so a new
# pool with the options of an earlier one reuses its class instead of exporting another.
_REMOTE_CLASSES: dict[str, Any] = {}


def remote_shard_actor(**options: Any) -> Any:
    """Make :class:`ShardActor` remote with Ray actor ``options`` and a control group.

    The same options give the same remote class (made once per process).

    Example:
        >>> remote_shard_actor(num_cpus=1) is remote_shard_actor(num_cpus=1)
        True
    """
    options.setdefault("concurrency_groups", {CONTROL_GROUP: 2})
    key = json.dumps(options, sort_keys=True, default=repr)
    cls = _REMOTE_CLASSES.get(key)
    if cls is None:
        cls = _REMOTE_CLASSES.setdefault(key, ray.remote(**options)(ShardActor))
    return cls
