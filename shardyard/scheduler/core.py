"""The dispatcher: an asyncio core in a background thread, talking to the shard actors.

Producers (user threads) hand over per-shard segments, or single submitted items, through
lock-free inboxes and wake the core at most once per burst. The core keeps one queue per
shard and, per actor, a bounded number of Ray calls in flight; each call carries the ready
batch of every shard of that actor that has items (micro-batching: while an actor is busy,
items pile up and the next call carries them all). Replies are routed back to the sinks.

Threads: the dispatch state is guarded by one re-entrant lock, held by whichever thread
drives it. Bulk work (draining inboxes, timers, recovery) runs on the core's event loop.
Replies are handled on Ray's completion-callback thread as they land, so a result reaches
its waiter without a hop through the loop; only the follow-up sends go back to the loop
(Ray calls are not made from Ray's callback thread). A submit to an idle pool dispatches
from the caller's thread when the lock is free. Both short cuts remove thread hand-offs
from the single-item round trip; under load everything still batches through the loop.

Exactly-once: each shard's batches carry sequence numbers. A batch stays "unacked" until
its reply arrives; a reply for a batch no longer unacked is ignored. When an actor dies,
Ray restarts it; the core restores its shards (the last snapshot of a ``Shard``, taken as an
in-stream barrier every ``checkpoint_every`` batches, plus a replay of the batches since)
and resends the unacked batches in order.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import numpy as np
from ray import cloudpickle
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from shardyard.actors.handler import ItemFailure
from shardyard.actors.shard_actor import SNAPSHOT_BARRIER, STALE
from shardyard.errors import (
    ActorLostError,
    PoolClosedError,
    SerializationError,
    ShardyardError,
    TaskError,
)
from shardyard.scheduler.futures import ShardFuture
from shardyard.scheduler.partition import PULL, Partitioner
from shardyard.scheduler.segments import Segment, concat_items
from shardyard.scheduler.sinks import Failures, FutureSink

__all__ = ["Core"]

log = logging.getLogger(__name__)
T = TypeVar("T")
_ACTOR_GONE = (RayActorError, ActorDiedError, ActorUnavailableError)


@dataclass(slots=True)
class _Batch:
    shard_id: int
    seq: int
    segments: list[Segment]  # in item order; empty for a snapshot barrier
    payload: Any  # what was sent (kept for a resend after an actor death)

    @property
    def is_barrier(self) -> bool:
        return isinstance(self.payload, str) and self.payload == SNAPSHOT_BARRIER


_Delivery = tuple[Segment, Any, Failures]  # (segment, its outputs, its failures)


@dataclass(slots=True)
class _Call:
    """One Ray call in flight: its batches, and whether its outcome was handled."""

    actor: _ActorSlot
    batches: list[_Batch]
    ref: Any  # the ObjectRef, kept alive until the outcome is handled
    handled: bool = False


@dataclass(slots=True)
class _ShardState:
    actor: int
    queue: deque[Segment] = field(default_factory=deque)  # segments not yet batched
    queued: int = 0  # items in queue
    next_seq: int = 0  # seq of the next batch cut for this shard
    unacked: dict[int, _Batch] = field(default_factory=dict)  # seq -> batch awaiting reply
    replay: list[_Batch] = field(default_factory=list)  # acked since the last snapshot
    snapshot: tuple[Any, int] | None = None  # (state, next_seq) from the last barrier
    since_snapshot: int = 0
    barrier_pending: bool = False
    items: int = 0  # finished items (driver view)
    batches: int = 0
    errors: int = 0


@dataclass(slots=True)
class _ActorSlot:
    index: int
    handle: Any
    shards: list[int]
    ready: set[int] = field(default_factory=set)  # shards with queued items
    barriers: list[_Batch] = field(default_factory=list)  # snapshot barriers to send
    pull_cursor: int = 0  # rotates keyless batches over this actor's shards
    inflight: int = 0  # Ray calls in flight
    outstanding: int = 0  # items queued or in flight on this actor
    recovering: bool = False
    restarts: int = 0


class Core:
    """The scheduler's event loop thread and dispatch state (one per pool).

    Args:
        actors: Ray actor handles of ``ShardActor``.
        placement: ``placement[shard_id]`` = actor index.
        partitioner: splits submitted items into shards.
        max_batch_size: items per shard batch.
        max_batch_wait_s: hold partly filled batches this long while an actor has room.
        max_inflight: Ray calls in flight per actor.
        max_retries: actor deaths survived per actor.
        stateful: the handler is a ``Shard`` (keep snapshots and replay logs).
        checkpoint_every: batches between snapshot barriers of a stateful shard (None: off).
        submit_sink: the sink of ``submit`` futures.
    """

    def __init__(
        self,
        actors: list[Any],
        placement: np.ndarray,
        partitioner: Partitioner,
        *,
        max_batch_size: int,
        max_batch_wait_s: float,
        max_inflight: int,
        max_retries: int,
        stateful: bool,
        checkpoint_every: int | None,
        submit_sink: FutureSink,
    ) -> None:
        self.partitioner = partitioner
        self._max_batch = max_batch_size
        self._max_wait = max_batch_wait_s
        self._max_inflight = max_inflight
        self._max_retries = max_retries
        self._stateful = stateful
        self._checkpoint_every = checkpoint_every if stateful else None
        self._submit_sink = submit_sink
        self._actors = [
            _ActorSlot(i, h, np.flatnonzero(placement == i).tolist()) for i, h in enumerate(actors)
        ]
        self._shards = [_ShardState(int(a)) for a in placement.tolist()]
        # Work handed over by user threads, in order: a list of (shard id, segment) per map
        # chunk, or an (item, key, future) tuple per submit.
        self._inbox: deque[list[tuple[int, Segment]] | tuple[Any, Any, Any]] = deque()
        self._wakeup_scheduled = False  # a drain is already scheduled on the loop
        self._closing = False
        self._lock = threading.RLock()  # guards the dispatch state; see the module docstring
        self._pull_queue: deque[Segment] = deque()  # keyless segments, pulled by actors
        self._pull_queued = 0  # items in _pull_queue
        self._outstanding = 0  # items received by the core and not yet finished
        self._epoch = 0  # wait epoch: wait_idle() closes one and waits for it to empty
        self._open_by_epoch: dict[int, int] = {}  # epoch -> its unfinished items
        self._idle = threading.Condition()  # notified when an epoch's last item finishes
        self._idle_gen = 0  # bumped (under _lock and _idle) each time an epoch empties
        self._first_wait: dict[int, float] = {}  # actor -> when its oldest held item arrived
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="shardyard-core", daemon=True)
        self._thread.start()

    # --- thread plumbing -----------------------------------------------------------------

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the core loop and wait for its result from any thread."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def stop(self) -> None:
        """Stop the loop thread; unfinished items fail with ``PoolClosedError``.

        Call ``wait_idle`` first to let them finish instead.
        """
        self._closing = True  # actors are about to be killed: no recovery from here on
        self._fail_all(PoolClosedError("the pool was closed before this item finished"))
        if not self._thread.is_alive():
            return

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self.call(cancel_all(), timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            if not self._thread.is_alive():
                self._loop.close()

    def actor_loads(self) -> list[int]:
        """Unfinished items per actor (read racily from producer threads: a hint)."""
        return [a.outstanding for a in self._actors]

    # --- producer side (any thread) ---------------------------------------------------------

    def push_segments(self, groups: list[tuple[int, Segment]]) -> None:
        """Hand over per-shard segments of one chunk.

        Raises:
            PoolClosedError: the pool is closing (the chunk's items fail with it too).
        """
        self._inbox.append(groups)
        self._refuse_if_closing()
        self._wake()

    def push_submit(self, item: Any, key: Any, future: Any) -> None:
        """Hand over one submitted item; its future resolves with the output.

        Raises:
            PoolClosedError: the pool is closing (the future fails with it too).
        """
        self._inbox.append((item, key, future))
        self._refuse_if_closing()
        # Idle pool: dispatch from this thread, skipping the hop to the loop (latency).
        if self._outstanding == 0 and self._lock.acquire(blocking=False):
            try:
                self._drain_locked()
            finally:
                self._lock.release()
            return
        self._wake()

    def _refuse_if_closing(self) -> None:
        # Checked after appending: whatever stop() did not see in the inbox is failed here.
        if self._closing:
            err = PoolClosedError("this ShardPool is closed")
            self._fail_all(err)
            raise err

    def _fail_all(self, exc: BaseException) -> None:
        """Fail every item not finished yet: in the inbox, queued, pulled or in flight."""
        with self._lock:
            while self._inbox:
                entry = self._inbox.popleft()
                if type(entry) is tuple:
                    self._fail_submit(entry, exc)
                    continue
                for _, seg in entry:
                    self._count_in(seg)
                    errs: Failures = [(i, exc) for i in range(len(seg))]
                    self._flush_later([(seg, [None] * len(seg), errs)])
            deliveries: list[_Delivery] = []
            while self._pull_queue:
                seg = self._pull_queue.popleft()
                deliveries.append((seg, [None] * len(seg), [(i, exc) for i in range(len(seg))]))
            self._pull_queued = 0
            for sid, st in enumerate(self._shards):
                for b in sorted(st.unacked.values(), key=lambda b: b.seq):
                    self._fail_batch(b, exc, out=deliveries)
                while st.queue:
                    seg = st.queue.popleft()
                    st.queued -= len(seg)
                    errs = [(i, exc) for i in range(len(seg))]
                    self._deliver(seg, [None] * len(seg), errs, sid, out=deliveries)
        self._flush(deliveries)

    def _wake(self) -> None:
        if not self._wakeup_scheduled:
            self._wakeup_scheduled = True
            self._loop.call_soon_threadsafe(self._drain)

    # --- core side ----------------------------------------------------------------------------

    def _drain(self) -> None:
        # Clear the flag first: a producer appending after this point schedules a new drain.
        self._wakeup_scheduled = False
        with self._lock:
            self._drain_locked()

    def _drain_locked(self) -> None:
        # One FIFO inbox for map chunks and single submits, so work of one key keeps the
        # order it was handed over in, whichever API carried it.
        touched: set[int] = set()
        inbox = self._inbox
        run: list[tuple[Any, Any, Any]] = []  # consecutive submits, partitioned together
        while inbox:
            entry = inbox.popleft()
            if type(entry) is tuple:
                run.append(entry)
                continue
            if run:
                self._drain_submits(run, touched)
                run = []
            for sid, seg in entry:
                self._enqueue(sid, seg, touched)
        if run:
            self._drain_submits(run, touched)
        for a in touched:
            self._kick(self._actors[a])

    def _drain_submits(self, batch: list[tuple[Any, Any, Any]], touched: set[int]) -> None:
        try:
            self._route_submits(batch, touched)
        except Exception as exc:
            if len(batch) == 1:
                self._fail_submit(batch[0], exc)
                return
            # A bad key among many: route them one by one, so only the bad one fails.
            for one in batch:
                try:
                    self._route_submits([one], touched)
                except Exception as one_exc:
                    self._fail_submit(one, one_exc)

    def _route_submits(self, batch: list[tuple[Any, Any, Any]], touched: set[int]) -> None:
        items = [b[0] for b in batch]
        futures = [b[2] for b in batch]
        raw_keys = [b[1] for b in batch]
        keys: list[Any] | None = raw_keys
        if all(k is None for k in raw_keys):
            keys = None
        elif any(k is None for k in raw_keys):
            # Mixed keyed and keyless submits: route the keyless ones by their position.
            keys = [k if k is not None else i for i, k in enumerate(raw_keys)]
        groups = self.partitioner.split(len(items), keys)
        for sid, index in groups:
            if isinstance(index, slice):
                index = np.arange(index.start, index.stop)
            idx = index.tolist()
            seg = Segment(
                self._submit_sink,
                [futures[i] for i in idx],
                # Lists on this path: single submits are small, and a list ships faster
                # than an array; batch handlers get an array in the actor.
                [items[i] for i in idx],
                None if keys is None else [keys[i] for i in idx],
            )
            for f in seg.ref:
                if isinstance(f, ShardFuture):
                    f.shard_id = sid
            self._enqueue(sid, seg, touched)

    def _fail_submit(self, one: tuple[Any, Any, Any], exc: BaseException) -> None:
        """A submitted item whose key cannot be routed ends with that error, alone."""
        item, key, fut = one
        seg = Segment(self._submit_sink, [fut], [item], [key])
        self._count_in(seg)
        self._flush_later([(seg, [None], [(0, exc)])])

    def _count_in(self, seg: Segment) -> None:
        """Count ``seg``'s items as received, in the current wait epoch."""
        seg.epoch = self._epoch
        self._open_by_epoch[seg.epoch] = self._open_by_epoch.get(seg.epoch, 0) + len(seg)
        self._outstanding += len(seg)

    def _enqueue(self, sid: int, seg: Segment, touched: set[int]) -> None:
        self._count_in(seg)
        if sid == PULL:
            # Keyless work waits in one queue; actors pull from it as they have room.
            self._pull_queue.append(seg)
            self._pull_queued += len(seg)
            touched.update(range(len(self._actors)))
            return
        st = self._shards[sid]
        st.queue.append(seg)
        st.queued += len(seg)
        actor = self._actors[st.actor]
        actor.ready.add(sid)
        actor.outstanding += len(seg)
        touched.add(st.actor)

    def _kick_locked(self, actor: _ActorSlot) -> None:
        with self._lock:
            self._kick(actor)

    def _kick(self, actor: _ActorSlot) -> None:
        """Send calls to ``actor`` while it has room and shards with queued items."""
        if actor.barriers and not actor.recovering:
            barriers, actor.barriers = actor.barriers, []
            self._send(actor, barriers)
        while (
            (actor.ready or self._pull_queued)
            and actor.inflight < self._max_inflight
            and not actor.recovering
        ):
            if self._max_wait > 0 and self._should_hold(actor):
                return
            self._first_wait.pop(actor.index, None)
            batches = [self._cut(sid) for sid in sorted(actor.ready)]
            actor.ready = {sid for sid in actor.ready if self._shards[sid].queued}
            if self._pull_queued:
                batches += self._pull(actor)
            self._send(actor, batches)

    def _pull(self, actor: _ActorSlot) -> list[_Batch]:
        """Keyless batches for ``actor`` from the pull queue (guided self-scheduling).

        Each call takes a share of what is left, ``remaining / (actors * in-flight)``, at
        least one item and at most one full batch per shard of the actor: large pieces while
        the queue is long (few calls), small ones at the tail, so a slow or busy actor is
        not left holding the last big piece.
        """
        share = -(-self._pull_queued // (len(self._actors) * self._max_inflight))
        take = min(self._pull_queued, max(1, share), self._max_batch * len(actor.shards))
        batches: list[_Batch] = []
        while take > 0:
            sid = actor.shards[actor.pull_cursor % len(actor.shards)]
            actor.pull_cursor += 1
            room = min(take, self._max_batch)
            segments = _take_items(self._pull_queue, room)
            n = sum(len(s) for s in segments)
            self._pull_queued -= n
            actor.outstanding += n
            take -= n
            batches.append(self._new_batch(sid, segments))
        return batches

    def _should_hold(self, actor: _ActorSlot) -> bool:
        # Ray Serve's batch_wait_timeout_s: a partly filled batch waits a little for more.
        if self._pull_queued >= self._max_batch or any(
            self._shards[sid].queued >= self._max_batch for sid in actor.ready
        ):
            self._first_wait.pop(actor.index, None)
            return False
        now = time.monotonic()
        first = self._first_wait.setdefault(actor.index, now)
        remaining = first + self._max_wait - now
        if remaining <= 0:
            return False
        self._loop.call_soon_threadsafe(self._loop.call_later, remaining, self._kick_locked, actor)
        return True

    def _cut(self, sid: int) -> _Batch:
        """The next batch of shard ``sid``: up to ``max_batch_size`` items from its queue."""
        st = self._shards[sid]
        segments = _take_items(st.queue, self._max_batch)
        st.queued -= sum(len(s) for s in segments)
        return self._new_batch(sid, segments)

    def _new_batch(self, sid: int, segments: list[Segment]) -> _Batch:
        """Number ``segments`` as the next batch of shard ``sid`` and mark it unacked."""
        st = self._shards[sid]
        batch = _Batch(sid, st.next_seq, segments, concat_items(segments))
        st.next_seq += 1
        st.unacked[batch.seq] = batch
        return batch

    def _send(self, actor: _ActorSlot, batches: list[_Batch]) -> None:
        wire = [(b.shard_id, b.seq, b.payload) for b in batches]
        try:
            ref = actor.handle.run.remote(wire)
        except Exception as exc:
            if self._unserializable(actor, batches, exc):
                return
            raise
        actor.inflight += 1
        call = _Call(actor, batches, ref)
        # Handled on Ray's completion-callback thread (see the module docstring).
        ref.future().add_done_callback(partial(self._on_call_future, call))

    def _on_call_future(self, call: _Call, done: concurrent.futures.Future[Any]) -> None:
        exc = done.exception()
        self._on_call_done(call, None if exc is not None else done.result(), exc)

    def _on_call_done(self, call: _Call, replies: Any, exc: BaseException | None) -> None:
        """Handle a call's outcome, once."""
        deliveries: list[_Delivery] = []
        actor = call.actor
        skip: list[tuple[int, int]] = []
        with self._lock:
            if call.handled:
                return
            call.handled = True
            actor.inflight -= 1
            if exc is None:
                for (sid, seq, outputs, failures), b in zip(replies, call.batches, strict=True):
                    try:
                        self._on_reply(sid, seq, outputs, failures, out=deliveries)
                    except Exception as err:  # never let one reply strand the others
                        log.exception("shardyard: bad reply for shard %d", b.shard_id)
                        self._fail_batch(b, err, out=deliveries)
            elif not isinstance(exc, _ACTOR_GONE):
                # The call itself failed (not the user's handler, whose errors come as
                # replies), e.g. its arguments did not deserialise in the actor: fail its
                # items with the cause, and tell the actor those seqs are not coming.
                for b in call.batches:
                    if b.seq in self._shards[b.shard_id].unacked:
                        skip.append((b.shard_id, b.seq))
                    self._fail_batch(b, exc, out=deliveries)
            more = bool(actor.ready or actor.barriers or self._pull_queued)
        self._flush(deliveries)
        if isinstance(exc, _ACTOR_GONE):
            if not self._closing:
                self._loop.call_soon_threadsafe(self._start_recovery, actor, exc)
            return
        if skip and not self._closing:
            self._loop.call_soon_threadsafe(self._send_skip, actor, skip)
        if more:
            self._loop.call_soon_threadsafe(self._kick_locked, actor)

    def _send_skip(self, actor: _ActorSlot, seqs: list[tuple[int, int]]) -> None:
        actor.handle.skip.remote(seqs)

    def _on_reply(
        self,
        sid: int,
        seq: int,
        outputs: Any,
        failures: list[ItemFailure],
        out: list[_Delivery] | None = None,
    ) -> None:
        if isinstance(outputs, str) and outputs == STALE:
            return  # waited on a placement that recovery replaced; resent there
        st = self._shards[sid]
        batch = st.unacked.pop(seq, None)
        if batch is None:
            return  # a duplicate (resent batch answered twice), or a replayed one
        if batch.is_barrier:
            st.snapshot = (outputs[0], seq + 1)
            st.replay = [b for b in st.replay if b.seq > seq]
            st.barrier_pending = False
            return
        if self._checkpoint_every is not None:
            st.replay.append(batch)
            st.since_snapshot += 1
            if st.since_snapshot >= self._checkpoint_every and not st.barrier_pending:
                self._queue_barrier(sid)
        st.batches += 1
        by_offset = {f.position: f for f in failures} if failures else None
        off = 0
        for seg in batch.segments:
            n = len(seg)
            seg_failures: Failures = []
            if by_offset:
                for i in range(n):
                    f = by_offset.get(off + i)
                    if f is not None:
                        err = TaskError(sid, seg.key_at(i), f.exception(), f.traceback)
                        seg_failures.append((i, err))
            self._deliver(seg, outputs[off : off + n], seg_failures, sid, out)
            off += n

    def _deliver(
        self,
        seg: Segment,
        outputs: Any,
        failures: Failures,
        sid: int,
        out: list[_Delivery] | None = None,
    ) -> None:
        """Count a segment as finished and hand it to its sink (now, or via ``out``)."""
        st = self._shards[sid]
        st.items += len(seg)
        st.errors += len(failures)
        self._actors[st.actor].outstanding -= len(seg)
        if out is not None:
            out.append((seg, outputs, failures))
        else:
            self._flush_later([(seg, outputs, failures)])

    def _flush_later(self, deliveries: list[_Delivery]) -> None:
        """Deliver on the loop: callers hold the core lock, and delivering runs the user's
        done-callbacks, which must not run under it."""
        if self._loop.is_running() and not self._closing:
            self._loop.call_soon_threadsafe(self._flush, deliveries)
        else:
            self._flush(deliveries)

    def _flush(self, deliveries: list[_Delivery]) -> None:
        """Run sink deliveries (outside the lock when possible), then count them done."""
        done = 0
        try:
            for seg, outputs, failures in deliveries:
                seg.sink.deliver(seg, outputs, failures)
                done += 1
        finally:
            if deliveries:
                with self._lock:
                    closed_epoch = False
                    for seg, _, _ in deliveries:
                        self._outstanding -= len(seg)
                        left = self._open_by_epoch[seg.epoch] - len(seg)
                        if left:
                            self._open_by_epoch[seg.epoch] = left
                        else:
                            del self._open_by_epoch[seg.epoch]
                            closed_epoch = True
                    if closed_epoch:
                        with self._idle:
                            self._idle_gen += 1
                            self._idle.notify_all()

    def _fail_batch(
        self, batch: _Batch, exc: BaseException, out: list[_Delivery] | None = None
    ) -> None:
        st = self._shards[batch.shard_id]
        if st.unacked.pop(batch.seq, None) is None:
            return
        if batch.is_barrier:
            st.barrier_pending = False  # the next batch queues a new one
        for seg in batch.segments:
            errs: Failures = []
            for i in range(len(seg)):
                if isinstance(exc, ShardyardError):
                    errs.append((i, exc))
                else:
                    tb = ItemFailure.capture(i, exc).traceback
                    errs.append((i, TaskError(batch.shard_id, seg.key_at(i), exc, tb)))
            self._deliver(seg, [None] * len(seg), errs, batch.shard_id, out)

    def _queue_barrier(self, sid: int) -> None:
        st = self._shards[sid]
        st.barrier_pending = True
        st.since_snapshot = 0
        barrier = _Batch(sid, st.next_seq, [], SNAPSHOT_BARRIER)
        st.next_seq += 1
        st.unacked[barrier.seq] = barrier
        # Sent by the next kick (on the loop); while recovering, resent with the other
        # unacked batches instead.
        actor = self._actors[st.actor]
        if not actor.recovering:
            actor.barriers.append(barrier)

    # --- failures -------------------------------------------------------------------------

    def _unserializable(self, actor: _ActorSlot, batches: list[_Batch], exc: Exception) -> bool:
        """Fail the items that cannot be pickled; resend the rest. False if none is bad."""
        found = False
        for b in batches:
            if b.is_barrier:
                continue
            kept: list[Segment] = []
            for seg in b.segments:
                why = [_pickle_error(x) for x in seg.items]
                bad = np.array([w is not None for w in why], dtype=bool)
                if not bad.any():
                    kept.append(seg)
                    continue
                found = True
                bad_idx = np.flatnonzero(bad)
                errs: Failures = [
                    (
                        k,
                        SerializationError(
                            f"item with key {seg.key_at(int(i))!r} for shard {b.shard_id} "
                            f"cannot be pickled for Ray: {why[int(i)]}"
                        ),
                    )
                    for k, i in enumerate(bad_idx.tolist())
                ]
                self._deliver(seg.select(bad_idx), [None] * len(bad_idx), errs, b.shard_id)
                good = np.flatnonzero(~bad)
                if len(good):
                    kept.append(seg.select(good))
            b.segments = kept
            b.payload = concat_items(kept) if kept else []
        if not found:
            return False
        self._send(actor, batches)
        return True

    def _start_recovery(self, actor: _ActorSlot, exc: BaseException) -> None:
        if not self._closing:
            self._loop.create_task(self._recover(actor, exc))

    async def _recover(self, actor: _ActorSlot, exc: BaseException) -> None:
        with self._lock:
            if actor.recovering:
                return
            actor.recovering = True
            actor.restarts += 1
            actor.barriers.clear()  # unacked barriers are resent with the rest
        log.warning("shard actor %d died (%s); recovering its shards", actor.index, exc)
        try:
            if actor.restarts > self._max_retries:
                raise ActorLostError(
                    f"actor {actor.index} died {actor.restarts} times (max_retries="
                    f"{self._max_retries}); last cause: {exc}"
                )
            await self._wait_alive(actor)
            self._lock.acquire()
            try:
                states, skipped, resend = self._recovery_plan(actor, exc)
            finally:
                self._lock.release()
            await actor.handle.host_shards.remote(actor.shards, states, skipped)
        except Exception as err:
            lost = err if isinstance(err, ShardyardError) else ActorLostError(str(err))
            with self._lock:
                self._fail_actor(actor, lost)
            return
        with self._lock:
            actor.recovering = False
            for wave in resend:
                self._send(actor, wave)
            self._kick(actor)

    def _recovery_plan(
        self, actor: _ActorSlot, exc: BaseException
    ) -> tuple[dict[int, tuple[Any, int]], dict[int, list[int]], list[list[_Batch]]]:
        """Per shard: the state to restore, the seqs to pass over, the batches to resend.

        Replies arrive per call, not per shard, so a shard's acks can come out of order:
        the seqs between the restart point and ``next_seq`` that are neither replayed nor
        resent (acked without replay, or failed) are passed to the actor as skipped.
        """
        states: dict[int, tuple[Any, int]] = {}
        skipped: dict[int, list[int]] = {}
        resend: list[list[_Batch]] = []
        for sid in actor.shards:
            st = self._shards[sid]
            pending = sorted(st.unacked.values(), key=lambda b: b.seq)
            if self._stateful and self._checkpoint_every is not None:
                state, seq = st.snapshot if st.snapshot else (None, 0)
                chain = [b for b in st.replay if b.seq >= seq] + pending
            elif self._stateful:
                raise ActorLostError(
                    f"actor {actor.index} died and checkpoint_every is off: the state of "
                    f"shards {actor.shards} cannot be rebuilt; last cause: {exc}"
                )
            else:
                state, seq = None, pending[0].seq if pending else st.next_seq
                chain = pending
            chain.sort(key=lambda b: b.seq)
            states[sid] = (state, seq)
            skipped[sid] = sorted(set(range(seq, st.next_seq)) - {b.seq for b in chain})
            for i, b in enumerate(chain):
                if i == len(resend):
                    resend.append([])
                resend[i].append(b)
        return states, skipped, resend

    def _fail_actor(self, actor: _ActorSlot, lost: BaseException) -> None:
        """Fail every unfinished item of ``actor``'s shards with ``lost``."""
        for sid in actor.shards:
            st = self._shards[sid]
            for b in sorted(st.unacked.values(), key=lambda b: b.seq):
                self._fail_batch(b, lost)
            while st.queue:
                seg = st.queue.popleft()
                st.queued -= len(seg)
                self._deliver(seg, [None] * len(seg), [(i, lost) for i in range(len(seg))], sid)
        actor.ready.clear()
        actor.recovering = False

    async def _wait_alive(self, actor: _ActorSlot, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            try:
                await actor.handle.health.remote()
                return
            except ActorDiedError:
                raise
            except _ACTOR_GONE:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    # --- waiting ----------------------------------------------------------------------------

    def wait_idle(self) -> None:
        """Block until every item handed to the core before this call has finished.

        Items received later (another thread still submitting) are not waited for: the
        call closes the current epoch and waits for the epochs up to it to empty.
        """
        with self._lock:
            self._drain_locked()  # what is in the inbox was handed over before this call
            target = self._epoch
            self._epoch += 1
        while True:
            with self._lock:
                done = all(e > target for e in self._open_by_epoch)
                generation = self._idle_gen
            if done:
                return
            with self._idle:
                # The generation read under _lock closes the lost-wake-up window.
                self._idle.wait_for(partial(_changed, self, generation), timeout=1.0)

    def stats(self) -> dict[str, Any]:
        """Driver-side counters per shard and per actor."""
        with self._lock:
            return self._stats()

    def _stats(self) -> dict[str, Any]:
        return {
            "pull_queued": self._pull_queued,
            "shards": [
                {
                    "shard_id": sid,
                    "actor": st.actor,
                    "items": st.items,
                    "batches": st.batches,
                    "errors": st.errors,
                    "queued": st.queued,
                    "in_flight": sum(len(s) for b in st.unacked.values() for s in b.segments),
                }
                for sid, st in enumerate(self._shards)
            ],
            "actors": [
                {
                    "actor": a.index,
                    "shards": list(a.shards),
                    "in_flight_calls": a.inflight,
                    "outstanding": a.outstanding,
                    "restarts": a.restarts,
                }
                for a in self._actors
            ],
        }


def _take_items(queue: deque[Segment], room: int) -> list[Segment]:
    """Up to ``room`` items from the front of ``queue``, splitting a segment if needed."""
    segments: list[Segment] = []
    while queue and room > 0:
        seg = queue[0]
        if len(seg) <= room:
            queue.popleft()
        else:
            seg, queue[0] = seg.split(room)
        segments.append(seg)
        room -= len(seg)
    return segments


def _changed(core: Core, generation: int) -> bool:
    return core._idle_gen != generation


def _pickle_error(x: Any) -> str | None:
    """Why ``x`` cannot be pickled, or ``None`` if it can."""
    try:
        cloudpickle.dumps(x)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None
