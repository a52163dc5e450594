"""The scheduler core: an asyncio loop in a background thread that talks to the shard actors.

The core is the I/O shell around three pure parts, all guarded by one re-entrant lock:

* :class:`~shardyard.scheduler.ledger.Ledger`: sequence numbers, unanswered batches,
  snapshots, recovery plans; what to deliver;
* :class:`~shardyard.scheduler.dispatch.Dispatch`: queues, the pull queue, per-actor slots;
  what to send next;
* :class:`~shardyard.scheduler.completion.Completion`: unfinished items, for ``wait``.

The core keeps the thread, the inbox that user threads hand work through, the Ray calls,
and the coroutines that place shards (at start and after every death) and watch the actors.

Liveness does not depend on traffic. Every actor process has an incarnation id; the core
knows the one that hosts its shards. A death is seen by whichever comes first: a call
that fails because its actor died, a reply (a ``Stale("unhosted")`` one) from a new
incarnation, or the watchdog's health check, which runs every ``health_interval_s`` whether
or not work is flowing. Each death of a known incarnation is handled once: the ledger
re-plans the actor's shards (new generations), and one placing coroutine per actor
restores them on the restarted process, retrying through further deaths (during a restore
too) until the restart budget is spent, which ends the shards' items with
:class:`~shardyard.errors.ActorLostError`.

Threads: replies are handled on Ray's completion-callback thread as they land (no hop
through the loop); follow-up sends go through the loop (Ray calls are not made from Ray's
callback thread). A submit to an idle pool dispatches from the caller's thread when the
lock is free.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import numpy as np
import ray
from ray import cloudpickle
from ray.exceptions import (
    ActorDiedError,
    ActorUnavailableError,
    GetTimeoutError,
    ObjectLostError,
    RayActorError,
    RayError,
    RaySystemError,
    RayTaskError,
)

from shardyard.errors import (
    ActorLostError,
    PoolClosedError,
    SerializationError,
    ShardFailedError,
)
from shardyard.protocol import (
    REPLAY,
    USER_ERRORS,
    WORK,
    BatchReply,
    HostRequest,
    Stale,
    WireCall,
    load_outputs,
)
from shardyard.scheduler.completion import Completion
from shardyard.scheduler.dispatch import Dispatch
from shardyard.scheduler.futures import ShardFuture
from shardyard.scheduler.ledger import Batch, Delivery, Ledger
from shardyard.scheduler.partition import PULL, Partitioner
from shardyard.scheduler.segments import Segment, concat_items
from shardyard.scheduler.sinks import Failures, FutureSink

__all__ = ["Core", "kill_quietly"]

log = logging.getLogger(__name__)
T = TypeVar("T")
_ACTOR_GONE = (RayActorError, ActorDiedError, ActorUnavailableError)
HELP_SLICE_S = 0.05  # a thread helping with a call's reply looks at its own future this often
HOST_ATTEMPTS = 3  # tries of a shard's setup()/restore() before the shard fails


@dataclass(slots=True, eq=False)
class _Call:
    """One Ray call in flight."""

    actor: int
    batches: list[Batch]
    ref: Any  # the ObjectRef, kept alive until the outcome is handled
    incarnation: str | None  # the process it was sent to
    alone: bool
    sent_at: float = 0.0  # time.monotonic() when it was sent
    done: bool = False  # handled, or orphaned by the death of its actor
    help_box: list[_Call] | None = None  # [itself] while a waiting thread may take its reply

    def settle(self) -> None:
        """Mark it handled (or orphaned): nothing may take its reply any more."""
        self.done = True
        if self.help_box is not None:
            self.help_box.clear()


class Core:
    """The scheduler's loop thread, its inbox, and the Ray I/O of one pool.

    Args:
        actors: Ray actor handles of ``ShardActor`` (hosting nothing yet).
        placement: ``placement[shard_id]`` = actor index.
        partitioner: splits submitted items into shards.
        max_batch_size: items per shard batch.
        max_batch_wait_s: hold partly filled batches this long while an actor has room.
        max_inflight: Ray calls in flight per actor.
        max_retries: deaths of one actor recovered from (the restart budget).
        stateful: the handler is a ``Shard`` (keep snapshots and replay logs).
        checkpoint_every: batches between snapshot barriers of a stateful shard (None: off).
        submit_sink: the sink of ``submit`` futures.
        health_interval_s: seconds between the watchdog's health checks.
        restart_timeout_s: how long a dead actor may take to come back before its shards'
            items fail.
        max_snapshot_failures: consecutive failed snapshots before a shard fails.
        actor_resources: what each actor reserves (named in errors when it cannot restart).
        call_budget_s: seconds of work one call may carry, by the actor's measured cost
            per item (``None``: calls are bounded by ``max_batch_size`` only).
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
        health_interval_s: float = 1.0,
        restart_timeout_s: float = 60.0,
        failover_after_s: float | None = 10.0,
        max_snapshot_failures: int = 3,
        actor_resources: dict[str, float] | None = None,
        call_budget_s: float | None = None,
    ) -> None:
        self.partitioner = partitioner
        self._actor_resources = dict(actor_resources or {})
        self._handles = actors
        self._max_retries = max_retries
        self._submit_sink = submit_sink
        self._health_interval = health_interval_s
        self._restart_timeout = restart_timeout_s
        self._failover_after = failover_after_s
        self._checkpoint_every = checkpoint_every if stateful else None
        self._retiring: set[int] = set()  # actors a scale-in is emptying: no failover target
        self._lock = threading.RLock()  # guards everything below; see the module docstring
        # Ray Client (ray://) calls back from its data thread and needs it for ref.future().
        self._ray_client = ray.util.client.ray.is_connected()
        self.ledger = Ledger(
            placement.tolist(),
            stateful=stateful,
            checkpoint_every=checkpoint_every,
            max_snapshot_failures=max_snapshot_failures,
        )
        n = len(actors)
        self.dispatch = Dispatch(
            self.ledger,
            [np.flatnonzero(placement == a).tolist() for a in range(n)],
            max_batch=max_batch_size,
            max_inflight=max_inflight,
            max_wait=max_batch_wait_s,
            call_budget_s=call_budget_s,
        )
        self.completion = Completion()
        self._incarnation: list[str | None] = [None] * n  # the process hosting the shards
        self._placing = [False] * n  # a placing coroutine runs for the actor
        self._deaths = [0] * n  # deaths charged to the restart budget
        self._restarts = [0] * n  # deaths recovered from, all causes (a stat)
        self._calls: list[set[_Call]] = [set() for _ in range(n)]  # calls in flight
        self._timers = [False] * n  # a held-batch timer is set for the actor
        self._host_failures: dict[int, int] = {}  # shard -> failed setup/restore attempts
        self.history: list[dict[str, Any]] = []  # shard moves: when, which, from, to, pause
        # Work handed over by user threads, in order: a list of (shard id, segment) per map
        # chunk, or an (item, key, future) tuple per submit.
        self._inbox: deque[list[tuple[int, Segment]] | tuple[Any, Any, Any]] = deque()
        self._wakeup_scheduled = False  # a drain is already scheduled on the loop
        self._closing = False
        self._tasks: set[asyncio.Task[Any]] = set()  # placing and watchdog coroutines
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="shardyard-core", daemon=True)
        self._thread.start()

    # --- thread plumbing -----------------------------------------------------------------

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the core loop and wait for its result from any thread."""
        return self.run(coro).result(timeout)

    def run(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start ``coro`` on the core loop; its future, to wait on from any thread.

        Raises:
            PoolClosedError: the core is stopping (``coro`` is not run).
        """
        if self._closing or self._loop.is_closed():
            coro.close()
            raise PoolClosedError("this ShardPool is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def on_loop_thread(self) -> bool:
        """True when called from the core's own loop thread."""
        return threading.current_thread() is self._thread

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def start(self, timeout: float) -> None:
        """Place every actor's shards (``setup`` runs there) and start the watchdog.

        Raises:
            ShardFailedError: a shard's ``setup`` raised (with its traceback).
            TimeoutError: the actors did not all answer within ``timeout`` seconds.
        """

        async def place_all() -> None:
            await asyncio.gather(*(self._place(a) for a in range(len(self._handles))))

        for a in range(len(self._handles)):
            self._placing[a] = True
        self.call(place_all(), timeout)
        with self._lock:
            for book in self.ledger.books:
                if book.failed is not None:
                    raise book.failed
        self._loop.call_soon_threadsafe(self._spawn, self._watch())

    def stop(self) -> None:
        """Stop the loop thread; unfinished items fail with ``PoolClosedError``.

        Call ``wait_idle`` first to let them finish instead.
        """
        self._closing = True  # actors are about to be killed: no recovery from here on
        self.fail_all(PoolClosedError("the pool was closed before this item finished"))
        if not self._thread.is_alive():
            return

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(cancel_all(), self._loop).result(10)
        except Exception:  # a wedged loop must not keep close() from releasing the actors
            log.warning("shardyard: the core loop did not stop cleanly", exc_info=True)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            if not self._thread.is_alive():
                self._loop.close()

    def actor_loads(self) -> list[int]:
        """Unfinished items per actor (read racily from producer threads: a hint)."""
        return self.dispatch.loads()

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
        if self.completion.outstanding == 0 and self._lock.acquire(blocking=False):
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
            self.fail_all(err)
            raise err

    def fail_all(self, exc: BaseException) -> None:
        """End every unfinished item with ``exc``: in the inbox, queued, or in flight."""
        out: list[Delivery] = []
        with self._lock:
            while self._inbox:
                entry = self._inbox.popleft()
                if type(entry) is tuple:
                    out.append(self._unroutable(entry, exc))
                    continue
                for _, seg in entry:
                    self._receive(seg)
                    out.append((-1, seg, [None] * len(seg), [(i, exc) for i in range(len(seg))]))
            out += self.dispatch.fail_pull(exc)
            sids = list(range(len(self.ledger.books)))
            out += self.dispatch.fail_queued(sids, exc)
            for sid in sids:
                if self.ledger.books[sid].failed is None:
                    out += self.ledger.fail_shard(sid, exc)
        self._flush(out)

    def cancel(self, sink: Any) -> int:
        """Drop every item of ``sink`` not yet sent to an actor; return how many.

        Items already sent (or numbered for a resend) are left to finish: their effect on
        shard state stands, as for any completed item. The dropped ones end at ``sink``
        as cancelled (outputs ``None``), so waiting on the sink and on the pool ends.
        The work runs on the core's loop thread: a second Ctrl-C in the calling thread
        can stop the wait for it, never leave it half done.
        """
        try:
            done = self.run(self._cancel(sink))
        except PoolClosedError:
            return 0  # stopping: every unfinished item fails anyway
        return done.result()

    async def _cancel(self, sink: Any) -> int:
        out: list[Delivery] = []
        with self._lock:
            for entry in self._inbox:
                if not isinstance(entry, list):
                    continue  # a single submit
                mine = [seg for _, seg in entry if seg.sink is sink]
                if not mine:
                    continue
                entry[:] = [pair for pair in entry if pair[1].sink is not sink]
                for seg in mine:
                    self._receive(seg)
                    out.append((-1, seg, None, []))
            out += self.dispatch.cancel(sink)
        self._flush(out)
        return sum(len(seg) for _, seg, _, _ in out)

    def _wake(self) -> None:
        if not self._wakeup_scheduled:
            self._wakeup_scheduled = True
            self._loop.call_soon_threadsafe(self._drain)

    # --- core side: input -------------------------------------------------------------------

    def _drain(self) -> None:
        # Clear the flag first: a producer appending after this point schedules a new drain.
        self._wakeup_scheduled = False
        with self._lock:
            self._drain_locked()

    def _drain_locked(self) -> None:
        # One FIFO inbox for map chunks and single submits, so work of one key keeps the
        # order it was handed over in, whichever API carried it.
        touched: set[int] = set()
        out: list[Delivery] = []
        inbox = self._inbox
        run: list[tuple[Any, Any, Any]] = []  # consecutive submits, partitioned together
        while inbox:
            entry = inbox.popleft()
            if type(entry) is tuple:
                run.append(entry)
                continue
            if run:
                self._drain_submits(run, touched, out)
                run = []
            for sid, seg in entry:
                self._enqueue(sid, seg, touched, out)
        if run:
            self._drain_submits(run, touched, out)
        if out:
            self._flush_later(out)
        # The least busy first: keyless work goes to an idle actor before it fills a
        # second call slot of a busy one.
        slots = self.dispatch.actors
        for a in sorted(touched, key=lambda a: (slots[a].inflight, slots[a].outstanding)):
            self._kick(a)

    def _drain_submits(
        self, batch: list[tuple[Any, Any, Any]], touched: set[int], out: list[Delivery]
    ) -> None:
        try:
            self._route_submits(batch, touched, out)
        except Exception as exc:
            if len(batch) == 1:
                out.append(self._unroutable(batch[0], exc))
                return
            # A bad key among many: route them one by one, so only the bad one fails.
            for one in batch:
                try:
                    self._route_submits([one], touched, out)
                except Exception as one_exc:
                    out.append(self._unroutable(one, one_exc))

    def _route_submits(
        self, batch: list[tuple[Any, Any, Any]], touched: set[int], out: list[Delivery]
    ) -> None:
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
            self._enqueue(sid, seg, touched, out)

    def _unroutable(self, one: tuple[Any, Any, Any], exc: BaseException) -> Delivery:
        """A submitted item whose key cannot be routed ends with that error, alone."""
        item, key, fut = one
        seg = Segment(self._submit_sink, [fut], [item], [key])
        self._receive(seg)
        return (-1, seg, [None], [(0, exc)])

    def _receive(self, seg: Segment) -> None:
        """Count ``seg``'s items as received, in the current wait epoch."""
        seg.epoch = self.completion.received(len(seg))

    def _enqueue(self, sid: int, seg: Segment, touched: set[int], out: list[Delivery]) -> None:
        self._receive(seg)
        if sid == PULL:
            failed = self.dispatch.enqueue_pull(seg)
            if failed:
                out += failed
                return
            touched.update(range(len(self._handles)))
            return
        failed = self.dispatch.enqueue(sid, seg)
        if failed:
            out += failed
            return
        touched.add(self.ledger.books[sid].actor)

    # --- core side: sending -------------------------------------------------------------------

    def _kick_locked(self, a: int) -> None:
        with self._lock:
            self._timers[a] = False
            self._kick(a)

    def _kick_waiter(self, a: int) -> None:
        # As _kick_locked, but a hold timer still pending stays counted (no second one).
        with self._lock:
            self._kick(a)

    def _kick(self, a: int) -> None:
        """Send actor ``a`` what the dispatch policy says it may have now."""
        if self._incarnation[a] is None or self._closing:
            return  # being placed: its placing coroutine kicks it when done
        calls, hold = self.dispatch.next_calls(a, time.monotonic())
        for batches in calls:
            self._send(a, batches)
        if hold is not None and not self._timers[a]:
            self._timers[a] = True
            delay = max(0.0, hold - time.monotonic())
            self._loop.call_soon_threadsafe(self._loop.call_later, delay, self._kick_locked, a)

    def _send(self, a: int, batches: list[Batch]) -> None:
        alone = self.dispatch.actors[a].alone and len(batches) == 1 and batches[0].alone
        try:
            ref = self._handles[a].run.remote(WireCall.pack([b.wire() for b in batches]))
        except Exception as exc:
            self._flush_later(self._unsendable(a, batches, exc, alone))
            return
        call = _Call(a, batches, ref, self._incarnation[a], alone, time.monotonic())
        self._calls[a].add(call)
        if self._ray_client:
            # Under Ray Client, ref.future() waits for Client's data thread, which may be
            # waiting for this lock in a done-callback: register from the loop, unlocked.
            self._loop.call_soon_threadsafe(self._watch_call, call)
            return
        self._offer_help(call)
        # Handled on Ray's completion-callback thread (see the module docstring).
        ref.future().add_done_callback(partial(self._on_call_future, call))

    def _offer_help(self, call: _Call) -> None:
        """Let a thread that waits on a submit future of ``call`` take its reply itself.

        ``ShardFuture.result()`` then waits in ``ray.get`` on the call and handles the
        reply in its own thread, instead of waiting to be woken by Ray's callback thread:
        a thread hand-off less on the path a one-at-a-time caller waits on.
        """
        helper = None
        sink = self._submit_sink
        for b in call.batches:
            for seg in b.segments:
                if seg.sink is sink:
                    if helper is None:
                        # Through a box emptied once the call is handled: no future keeps
                        # the call (and its batches) alive after that.
                        call.help_box = [call]
                        helper = partial(self._help, call.help_box)
                    for fut in seg.ref:
                        if type(fut) is ShardFuture:
                            fut._help = helper

    def _help(self, box: list[_Call], fut: ShardFuture, timeout: float | None) -> None:
        """Wait for the call in ``box`` in this thread and handle its reply here, until
        ``fut`` is done (see ``_offer_help``).

        Only outside the core's loop thread and Ray's own threads (a done-callback runs
        there, and must not block on Ray). It waits in slices, so a future that another
        path resolves (its batch resent elsewhere after a failover) is seen within one.
        Any failure of the call is left to the callback path, which handles it as always.
        """
        if self.on_loop_thread() or isinstance(threading.current_thread(), threading._DummyThread):
            return  # the loop, or a thread Python did not start (Ray's callback thread)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not fut.done():
            try:
                call = box[0]
            except IndexError:  # handled meanwhile, on another thread
                return
            wait = HELP_SLICE_S if deadline is None else deadline - time.monotonic()
            if wait <= 0:
                return
            try:
                reply = ray.get(call.ref, timeout=min(wait, HELP_SLICE_S))
            except GetTimeoutError:
                continue
            except RayError:
                return
            self._on_call_done(call, reply, None)
            return

    def _watch_call(self, call: _Call) -> None:
        call.ref.future().add_done_callback(partial(self._on_call_future, call))

    def _unsendable(
        self, a: int, batches: list[Batch], exc: Exception, alone: bool
    ) -> list[Delivery]:
        """The call could not even be serialised: fail the items that do not pickle.

        The batches never left, so their numbers are still free: the rest is sent again as
        they are. If no single item is to blame, every item of the call fails with ``exc``.
        """
        out: list[Delivery] = []
        found = False
        for b in batches:
            if b.kind != WORK:
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
                out.append((b.shard_id, seg.select(bad_idx), [None] * len(bad_idx), errs))
                self.ledger.books[b.shard_id].items += len(bad_idx)
                self.ledger.books[b.shard_id].errors += len(bad_idx)
                good = np.flatnonzero(~bad)
                if len(good):
                    kept.append(seg.select(good))
            b.segments = kept
            b.payload = concat_items(kept) if kept else []
        if found:
            self._send(a, batches)  # never sent: the same numbers are still free
            return out
        # No single item to blame: send each batch in a call of its own, so the one that
        # does not serialise fails alone (an empty batch takes its number).
        self.dispatch.call_done(a, alone)
        for b in batches:
            if len(batches) > 1:
                out += self.ledger.retry(b, None)
            elif b.kind == WORK:
                out += self.ledger.retry(b, exc)
            elif self.ledger.books[b.shard_id].failed is None:
                err = ShardFailedError(b.shard_id, f"a replay batch could not be sent: {exc}")
                out += self.ledger.fail_shard(b.shard_id, err)
        self._loop.call_soon_threadsafe(self._kick_locked, a)
        return out

    # --- core side: replies -----------------------------------------------------------------

    def _on_call_future(self, call: _Call, done: concurrent.futures.Future[Any]) -> None:
        exc = done.exception()
        self._on_call_done(call, None if exc is not None else done.result(), exc)

    def _on_call_done(self, call: _Call, reply: Any, exc: BaseException | None) -> None:
        """Handle a call's outcome, once (an orphaned call is ignored)."""
        if call.done:
            return  # handled already (by the other of the callback and a helping thread)
        if exc is None:
            try:  # outputs the actor pickled itself, loaded here, outside the lock
                reply = reply._replace(replies=load_outputs(reply.replies))
            except USER_ERRORS as err:  # as if Ray could not load the reply: item by item
                if isinstance(err, KeyboardInterrupt) and _on_main_thread():
                    raise  # the user's Ctrl-C; Ray's done-callback handles this call still
                exc = RaySystemError(f"the call's outputs do not load on the driver: {err!r}")
        out: list[Delivery] = []
        a = call.actor
        with self._lock:
            if call.done:
                return
            call.settle()
            self._calls[a].discard(call)
            self.dispatch.call_done(a, call.alone)
            if exc is None and reply.incarnation == self._incarnation[a]:
                ran = 0  # items the actor ran and answered (not a Stale's, not a replay's)
                for r in reply.replies:
                    if type(r) is BatchReply:
                        ran += len(r.outputs)
                    try:
                        if type(r) is Stale and r.gen == self.ledger.books[r.shard_id].gen:
                            raise RuntimeError(f"the actor passed over batch {r}")
                        out += self.ledger.answer(r)
                    except Exception as err:  # never let one reply strand the others
                        log.exception("shardyard: bad reply for shard %d", r.shard_id)
                        b = self.ledger.books[r.shard_id].inflight.get(r.seq)
                        if b is not None:
                            out += self.ledger.rehost(r.shard_id, b, err)
                            self._place_later(a)
                self.dispatch.answered(a, ran, call.sent_at, time.monotonic(), reply.took_s)
            elif exc is None:
                # A new process answered (Stale "unhosted"): the one we knew has died.
                self._lost(a, call.incarnation, RuntimeError("the actor was restarted"), out)
            elif isinstance(exc, _ACTOR_GONE):
                self._lost(a, call.incarnation, exc, out)
            else:
                self._call_failed(call, exc, out)
            out += self._fail_queued_of_failed(a)
            slot = self.dispatch.actors[a]
            outboxed = self.ledger.outboxed
            more = bool(
                slot.ready
                or self.dispatch.pull_queued
                or (outboxed and any(s in outboxed for s in slot.shards))
            )
        self._flush(out)
        if more and not self._closing:
            # Only when there is something to send: waking the loop after every reply
            # costs the single-item round trip a thread hand-off.
            self._loop.call_soon_threadsafe(self._kick_locked, a)

    def _call_failed(self, call: _Call, exc: BaseException, out: list[Delivery]) -> None:
        """The call failed, not the handler (whose errors come as replies) nor the actor.

        Driver side (the reply did not unpickle here): ask the actor for the replies again,
        each output pickled on its own, so only the outputs that do not load fail. Actor
        side (the arguments did not unpickle there, so nothing ran): a call of one batch
        fails its items; a call of several is split, each batch sent in a call of its own,
        so only the culprit fails.
        """
        if call.incarnation != self._incarnation[call.actor]:
            return  # its actor was re-placed meanwhile: the batches were re-planned then
        driver_side = isinstance(exc, RaySystemError) and not isinstance(exc, RayTaskError)
        if driver_side:
            # Everything ran; the reply did not load here: ask for it again, item by item.
            self._loop.call_soon_threadsafe(self._spawn, self._fetch_replies(call))
            return
        self._isolate(call, exc, out)

    async def _fetch_replies(self, call: _Call) -> None:
        """Load a call's replies one output at a time, so only unloadable outputs fail.

        Falls back, for a batch whose reply the actor no longer keeps, to running it again
        from a rebuilt shard (outputs pickled one by one), or, when its shard cannot be
        rebuilt (``checkpoint_every=None``), to failing its items.
        """
        keys = [(b.shard_id, b.gen, b.seq) for b in call.batches]
        replies: list[Any] = [None] * len(keys)
        with contextlib.suppress(Exception):
            ref = self._handles[call.actor].replies.remote(keys)
            replies = await asyncio.wait_for(_await_ref(ref), 60)
        with self._lock:
            out, replace = self.ledger.reanswer(call.batches, replies)
        self._flush(out)
        if replace:
            self._place_later(call.actor)
        self._kick_locked(call.actor)

    def _isolate(self, call: _Call, exc: BaseException, out: list[Delivery]) -> None:
        """Nothing in the call ran (its arguments did not load in the actor)."""
        for b in call.batches:
            if len(call.batches) > 1:
                out += self.ledger.retry(b, None)  # nothing ran: find the culprit alone
            elif b.kind == WORK:
                # Each item ends in a TaskError naming its shard and key, with the cause.
                out += self.ledger.retry(b, _unwrap(exc))
            elif self.ledger.books[b.shard_id].failed is None:
                kind = "replay" if b.kind == REPLAY else "barrier"
                why = f"a {kind} batch could not run: {exc}"
                out += self.ledger.fail_shard(b.shard_id, ShardFailedError(b.shard_id, why))

    # --- deaths and placing -------------------------------------------------------------------

    def _lost(
        self, a: int, incarnation: str | None, cause: BaseException, out: list[Delivery]
    ) -> None:
        """The process ``incarnation`` of actor ``a`` is gone: re-plan its shards, once."""
        if incarnation is None or incarnation != self._incarnation[a] or self._closing:
            return  # an older process, or a death already handled
        self._incarnation[a] = None
        self._note_death(a, cause, out)
        self._place_later(a)

    def _note_death(self, a: int, cause: BaseException, out: list[Delivery]) -> None:
        slot = self.dispatch.actors[a]
        for call in self._calls[a]:
            call.settle()  # its outcome, if it ever comes, is void
        self._calls[a].clear()
        self.dispatch.actor_lost(a)
        delivered, charged = self.ledger.lose_actor(slot.shards)
        out += delivered
        self._restarts[a] += 1
        if not charged:
            self._deaths[a] += 1
        log.warning(
            "shardyard: shard actor %d died (%s); restoring its shards (%d of %d restarts used)",
            a,
            cause,
            self._deaths[a],
            self._max_retries,
        )
        if self._deaths[a] > self._max_retries:
            self._give_up(
                a,
                ActorLostError(
                    f"actor {a} died {self._deaths[a]} times (max_retries={self._max_retries}); "
                    f"its shards {_some(slot.shards)} cannot be recovered; last cause: {cause}"
                ),
                out,
            )

    def _give_up(self, a: int, err: BaseException, out: list[Delivery]) -> None:
        slot = self.dispatch.actors[a]
        slot.failed = True
        self._incarnation[a] = None
        for sid in slot.shards:
            if self.ledger.books[sid].failed is None:
                out += self.ledger.fail_shard(sid, err)
        out += self.dispatch.fail_queued(slot.shards)
        if all(s.failed for s in self.dispatch.actors):
            out += self.dispatch.fail_pull(err)
        handle = self._handles[a]
        self._loop.call_soon_threadsafe(kill_quietly, handle)

    def _place_later(self, a: int) -> None:
        if not self._placing[a] and not self._closing and not self.dispatch.actors[a].failed:
            self._placing[a] = True
            self._loop.call_soon_threadsafe(self._spawn, self._place(a))

    async def _place(self, a: int) -> None:
        """Host actor ``a``'s unplaced shard generations; loops through further deaths."""
        try:
            await self._place_loop(a)
        finally:
            with self._lock:
                self._placing[a] = False
                # A death reported after the loop's last look found _placing still set.
                again = self._needs_placing(a)
            if again:
                self._place_later(a)
            elif not self._closing:
                self._kick_locked(a)

    def _needs_placing(self, a: int) -> bool:
        slot = self.dispatch.actors[a]
        if self._closing or slot.failed:
            return False
        return self._incarnation[a] is None or any(
            not b.placed and b.failed is None
            for b in (self.ledger.books[sid] for sid in slot.shards)
        )

    async def _place_loop(self, a: int) -> None:
        handle = self._handles[a]
        slot = self.dispatch.actors[a]
        talked_to: str | None = None  # the process our last host request went to
        # Reset whenever the actor answers: how long it may stay unreachable before its
        # shards move to the other actors (failover), and before they fail (none left).
        deadline = time.monotonic() + self._restart_timeout
        failover_at = self._failover_deadline()
        while True:
            with self._lock:
                if self._closing or slot.failed:
                    return
                if not self._needs_placing(a):
                    return
            # Which process answers now? (Waits while Ray restarts it.)
            try:
                inc = await asyncio.wait_for(
                    _await_ref(handle.health.remote()),
                    max(0.01, min(deadline, failover_at) - time.monotonic()),
                )
            except (asyncio.TimeoutError, ActorUnavailableError) as exc:
                now = time.monotonic()
                if now >= failover_at:
                    # Ray's word decides: restarting or pending (no room) -> fail over; alive
                    # but slow to answer (busy restoring) -> keep waiting, up to the deadline.
                    alive = await asyncio.to_thread(_ray_says_alive, handle)
                    if not alive and self._failover(a, "Ray could not bring it back"):
                        return
                    failover_at = self._failover_deadline()  # alive, or no one to take over
                if now > deadline:
                    self._give_up_now(a, self._unreachable(a))
                    return
                if isinstance(exc, ActorUnavailableError):
                    await asyncio.sleep(0.05)  # coming back
                continue
            except _ACTOR_GONE as exc:
                if self._failover(a, f"it is gone for good ({exc})"):
                    return
                self._give_up_now(a, ActorLostError(f"actor {a} is gone for good: {exc}"))
                return
            deadline = time.monotonic() + self._restart_timeout
            failover_at = self._failover_deadline()
            out: list[Delivery] = []
            with self._lock:
                known = self._incarnation[a]
                if known is not None and inc != known:
                    self._lost(a, known, RuntimeError("the actor was restarted"), out)
                elif talked_to is not None and inc != talked_to:
                    # The process we were restoring died (a death during recovery).
                    self._note_death(a, RuntimeError("died while its shards were restored"), out)
                talked_to = inc
                reqs, states = self._host_requests(slot.shards)
            self._flush(out)
            if slot.failed:
                return
            try:
                reply = await asyncio.wait_for(
                    _await_ref(handle.host.remote(reqs, *states)), self._restart_timeout
                )
            except (asyncio.TimeoutError, *_ACTOR_GONE):
                continue  # the health check above tells whether it died
            except ObjectLostError as exc:
                self._states_lost(reqs, exc)
                continue
            if reply.incarnation != inc:
                continue  # hosted by a process that came up meanwhile: look again
            out = []
            with self._lock:
                self._incarnation[a] = inc
                retry = False
                for req in reqs:
                    failure = reply.failures.get(req.shard_id)
                    if failure is None:
                        self.ledger.placed(req.shard_id, req.gen)
                        self._host_failures.pop(req.shard_id, None)
                        continue
                    if self.ledger.books[req.shard_id].gen != req.gen:
                        continue
                    tries = self._host_failures.get(req.shard_id, 0) + 1
                    self._host_failures[req.shard_id] = tries
                    if tries < HOST_ATTEMPTS:
                        log.warning(
                            "shardyard: setup()/restore() of shard %d failed (attempt %d of %d)",
                            req.shard_id,
                            tries,
                            HOST_ATTEMPTS,
                        )
                        retry = True
                        continue
                    failed = ShardFailedError(
                        req.shard_id,
                        f"its setup() or restore() raised {failure.exception()!r} "
                        f"({HOST_ATTEMPTS} attempts)",
                        failure.traceback,
                    )
                    out += self.ledger.fail_shard(req.shard_id, failed)
                out += self.dispatch.fail_queued(slot.shards)
            self._flush(out)
            if retry:
                await asyncio.sleep(0.1)

    def _host_requests(self, shards: list[int]) -> tuple[list[HostRequest], list[Any]]:
        """Host requests for the unplaced generations of ``shards``, and the states to pass
        as the call's own arguments (``ObjectRef`` s of migrated states: Ray fetches those
        into the actor, so they never pass through the driver)."""
        reqs: list[HostRequest] = []
        states: list[Any] = []
        for sid in shards:
            book = self.ledger.books[sid]
            if book.placed or book.failed is not None:
                continue
            if isinstance(book.snapshot, ray.ObjectRef):
                reqs.append(HostRequest(sid, book.gen, None, len(states)))
                states.append(book.snapshot)
            else:
                reqs.append(HostRequest(sid, book.gen, book.snapshot))
        return reqs, states

    def _states_lost(self, reqs: list[HostRequest], exc: BaseException) -> None:
        """A migrated state could not be fetched (its node was lost): fail those shards."""
        out: list[Delivery] = []
        with self._lock:
            for req in reqs:
                book = self.ledger.books[req.shard_id]
                if req.state_arg < 0 or book.gen != req.gen or book.failed is not None:
                    continue
                err = ShardFailedError(
                    req.shard_id,
                    f"the state it was migrated with was lost before the receiving actor "
                    f"could load it ({type(exc).__name__}: {exc})",
                )
                out += self.ledger.fail_shard(req.shard_id, err)
                out += self.dispatch.fail_queued([req.shard_id])
        self._flush(out)

    def _failover_deadline(self) -> float:
        if self._failover_after is None:
            return float("inf")
        return time.monotonic() + self._failover_after

    def _failover(self, a: int, why: str) -> bool:
        """Actor ``a`` cannot be reached: restore its shards on the pool's other actors
        (each from its last snapshot, replaying the batches after it) and retire ``a``.

        The shards go, one by one, to the surviving actor hosting the fewest shards. A
        process of ``a`` that comes back later is killed; its late replies are void (their
        generations are over).

        Returns:
            False when no other actor is left to take them (nothing changes).
        """
        out: list[Delivery] = []
        with self._lock:
            slot = self.dispatch.actors[a]
            candidates = [
                b
                for b in self.dispatch.active()
                if b != a and not self.dispatch.actors[b].failed and b not in self._retiring
            ]
            # Those answering now first (others may be down too: they would take it over
            # only to lose it again).
            survivors = [b for b in candidates if self._incarnation[b] is not None] or candidates
            if not survivors or self._closing or slot.failed:
                return False
            inc = self._incarnation[a]
            if inc is not None:  # not yet handled as a death: void its calls, re-plan
                self._incarnation[a] = None
                for call in self._calls[a]:
                    call.settle()
                self._calls[a].clear()
                self.dispatch.actor_lost(a)
                delivered, _ = self.ledger.lose_actor(slot.shards)
                out += delivered
            counts = {b: len(self.dispatch.actors[b].shards) for b in survivors}
            moved = list(slot.shards)
            targets: set[int] = set()
            for sid in moved:
                dst = min(survivors, key=lambda b: (counts[b], b))
                counts[dst] += 1
                self._switch(sid, a, dst)
                targets.add(dst)
                self.history.append(
                    {
                        "time": time.time(),
                        "shard_id": sid,
                        "from_actor": a,
                        "to_actor": dst,
                        "pause_s": 0.0,
                        "state_bytes": 0,
                        "reason": "failover",
                    }
                )
            self.dispatch.retire(a)
            self.partitioner.set_placement(self.placement_array(), self.dispatch.active())
            for b in targets:
                self._place_later(b)
        log.warning(
            "shardyard: actor %d is unreachable (%s): its shards %s are restored on actors "
            "%s from their last snapshots, and it is retired",
            a,
            why,
            _some(moved),
            sorted(targets),
        )
        self._flush(out)
        self._loop.call_soon_threadsafe(kill_quietly, self._handles[a])
        return True

    def _unreachable(self, a: int) -> ActorLostError:
        need = ", ".join(f"{k}: {v:g}" for k, v in self._actor_resources.items()) or "CPU: 0"
        return ActorLostError(
            f"actor {a} did not come back within {self._restart_timeout:g} s "
            f"(restart_timeout_s): it needs {{{need}}}{_resources_hint()}"
        )

    def _give_up_now(self, a: int, err: BaseException) -> None:
        out: list[Delivery] = []
        with self._lock:
            self._give_up(a, err, out)
        self._flush(out)

    async def _watch(self) -> None:
        """Check every actor's incarnation every ``health_interval_s``, work or no work."""
        while not self._closing:
            await asyncio.sleep(self._health_interval)
            checks = []
            with self._lock:
                for a, inc in enumerate(self._incarnation):
                    if self._placing[a]:
                        continue
                    if inc is not None:
                        checks.append((a, inc, self._handles[a].health.remote()))
                    elif self._needs_placing(a):
                        self._place_later(a)  # a safety net: nothing may stay unplaced
            for a, inc, ref in checks:
                cause: BaseException
                try:
                    now = await asyncio.wait_for(_await_ref(ref), 5 * self._health_interval)
                except (asyncio.TimeoutError, ActorUnavailableError):
                    # Busy (a handler holding the GIL), or coming back: look again next
                    # round. Whether it died is Ray's call (its node health checks), never
                    # a slow answer's: a live actor is not failed over.
                    continue
                except _ACTOR_GONE as exc:
                    now, cause = None, exc
                else:
                    cause = RuntimeError("the actor was restarted (found by the health check)")
                if now == inc:
                    continue
                out: list[Delivery] = []
                with self._lock:
                    self._lost(a, inc, cause, out)
                self._flush(out)

    def _fail_queued_of_failed(self, a: int) -> list[Delivery]:
        slot = self.dispatch.actors[a]
        return self.dispatch.fail_queued(
            [s for s in slot.ready if self.ledger.books[s].failed is not None]
        )

    # --- scaling ----------------------------------------------------------------------------

    def placement(self) -> dict[int, int]:
        """``{shard_id: actor index}`` as it stands."""
        with self._lock:
            return {sid: b.actor for sid, b in enumerate(self.ledger.books)}

    def active(self) -> list[int]:
        """The indices of the actors in the pool (retired ones left out)."""
        with self._lock:
            return self.dispatch.active()

    def handle(self, a: int) -> Any:
        """The Ray handle of actor ``a``."""
        return self._handles[a]

    def all_handles(self) -> list[Any]:
        """Every actor this core ever had (retired ones too): to stop them all at close."""
        return list(self._handles)

    def backlog(self) -> int:
        """Items handed over and not finished (queued, pulled or in flight)."""
        return self.completion.outstanding

    async def add_actors(self, handles: list[Any]) -> list[int]:
        """Take started actors into the pool (hosting nothing yet); returns their indices.

        Waits until each has answered with its incarnation, so a shard moved to it is
        placed without waiting for a process to start.
        """
        with self._lock:
            new = []
            for h in handles:
                a = self.dispatch.add_actor()
                assert a == len(self._handles)
                self._handles.append(h)
                self._incarnation.append(None)
                self._placing.append(True)
                self._deaths.append(0)
                self._restarts.append(0)
                self._calls.append(set())
                self._timers.append(False)
                new.append(a)
        await asyncio.gather(*(self._place(a) for a in new))
        return new

    async def migrate(self, moves: dict[int, int]) -> list[dict[str, Any]]:
        """Move each shard ``sid`` of ``moves`` to actor ``moves[sid]``, all at once.

        Per shard: hold its new batches (they stay queued), let its numbered ones be
        answered, have the old actor hand its state off (``handoff``: a snapshot at that
        point, as an ``ObjectRef`` the driver never fetches), start the next generation on
        the new actor from it, and let the held batches go there in order. Shards that do
        not move are never held. Deaths on either side go through the usual recovery: a
        death before the handoff re-places the shard where it was and the move tries
        again; a death after it restores on the new actor from the handed-off state.

        Returns:
            One record per shard: ``shard_id``, ``from_actor``, ``to_actor``, ``pause_s``
            (from holding it until the new actor hosts it), ``state_bytes``, ``moved``.
        """
        with self._lock:
            for sid in moves:
                self.ledger.start_move(sid)
        records = await asyncio.gather(*(self._move(sid, dst) for sid, dst in moves.items()))
        # Once for the whole migration: keyless balancing may route to a moving shard meanwhile
        # (any shard is a valid target; only the load hint is stale).
        with self._lock:
            self.partitioner.set_placement(self.placement_array(), self.dispatch.active())
        return list(records)

    async def _move(self, sid: int, dst: int) -> dict[str, Any]:
        t0 = time.monotonic()
        book = self.ledger.books[sid]
        record: dict[str, Any] = {"shard_id": sid, "from_actor": book.actor, "to_actor": dst}
        failures = 0
        while True:
            with self._lock:
                src = book.actor
                record["from_actor"] = src
                if self._closing:
                    self.ledger.cancel_move(sid)
                    return {**record, "moved": False, "pause_s": time.monotonic() - t0}
                if book.failed is not None:
                    # Nothing to hand over: the failed shard follows the placement (its
                    # items keep failing at once with its error), and its held items end
                    # now (the old actor's placing loop, which would end them, may be done).
                    self._switch(sid, src, dst)
                    ended = self.dispatch.fail_queued([sid])
                else:
                    ended = None
                    inc = self._incarnation[src]
                    ready = self.ledger.quiet(sid) and inc is not None
                    gen = book.gen
            if ended is not None:
                self._flush(ended)
                return {**record, "moved": True, "pause_s": 0.0, "state_bytes": 0}
            if not ready:
                await asyncio.sleep(0.002)
                continue
            try:
                status_ref, state_ref = self._handles[src].handoff.remote(sid, gen)
                # No timeout: a handoff is never sent twice while one may still run (the
                # first would take the shard away from under the second). Ray fails the
                # call if the actor dies; a snapshot() that hangs holds only this move.
                status = await _await_ref(status_ref)
            except _ACTOR_GONE:
                await asyncio.sleep(0.05)  # the watchdog finds the death; then try again
                continue
            if status.incarnation != inc:
                # Another process answered: the one the handoff was sent to is gone (a no-op
                # if that death was handled already). Recover, then try again.
                lost: list[Delivery] = []
                with self._lock:
                    self._lost(src, inc, RuntimeError("the actor was restarted"), lost)
                self._flush(lost)
                continue
            if status.failure is not None:
                with self._lock:
                    if book.gen != gen or book.failed is not None:
                        continue  # re-planned meanwhile: look again
                failures += 1
                if failures < HOST_ATTEMPTS:
                    await asyncio.sleep(0.1)
                    continue
                err = ShardFailedError(
                    sid,
                    f"it could not migrate from actor {src} to actor {dst}: its snapshot() "
                    f"raised {status.failure.exception()!r} ({HOST_ATTEMPTS} attempts)",
                    status.failure.traceback,
                )
                with self._lock:
                    out = self.ledger.fail_shard(sid, err)
                    out += self.dispatch.fail_queued([sid])
                self._flush(out)
                continue  # the failed shard follows the placement (above)
            with self._lock:
                switched = self.ledger.handed_off(sid, gen, dst, state_ref)
                if switched:
                    self._switch(sid, src, dst)
            if not switched:
                continue  # the old actor died after the handoff: it is re-placed there
            record["state_bytes"] = status.state_bytes
            self._place_later(dst)
            if self._checkpoint_every is not None and book.snapshot is state_ref:
                self._spawn(self._keep_state(sid, state_ref))
            while True:
                with self._lock:
                    if book.placed or book.failed is not None or self._closing:
                        break
                await asyncio.sleep(0.002)
            pause = time.monotonic() - t0
            with self._lock:
                self.history.append(
                    {
                        "time": time.time(),
                        "shard_id": sid,
                        "from_actor": src,
                        "to_actor": dst,
                        "pause_s": pause,
                        "state_bytes": status.state_bytes,
                    }
                )
            return {**record, "moved": True, "pause_s": pause}

    async def _keep_state(self, sid: int, ref: Any) -> None:
        """Copy a handed-off state into the driver, where barrier snapshots live too.

        Until then the shard's committed snapshot is an object on the old actor's node
        (and, once fetched, the new one's): losing that node would lose it. Off the
        critical path: the new actor loads the state straight from the object store. Only
        with snapshots on (``checkpoint_every``), which go through the driver anyway; with
        them off, the handed-off state is dropped at the shard's first batch.
        """
        with contextlib.suppress(Exception):
            data = await ref
            with self._lock:
                book = self.ledger.books[sid]
                if book.snapshot is ref:
                    book.snapshot = data

    async def rescale(self, moves: dict[int, int], retire: list[int]) -> list[dict[str, Any]]:
        """:meth:`migrate` ``moves``, then :meth:`retire` the actors they emptied.

        Raises:
            PoolClosedError: the pool closed before the moves were done (nothing retired).
        """
        with self._lock:
            self._retiring.update(retire)
        try:
            records = await self.migrate(moves)
            if self._closing:
                raise PoolClosedError("the pool was closed during the scale")
            self.retire(retire)
        finally:
            with self._lock:
                self._retiring.difference_update(retire)
        return records

    def _switch(self, sid: int, src: int, dst: int) -> None:
        """Route ``sid`` to ``dst`` in the dispatcher (under the lock)."""
        book = self.ledger.books[sid]
        book.actor = dst
        book.moving = False
        self.dispatch.move_shard(sid, src, dst)

    def placement_array(self) -> np.ndarray:
        return np.array([b.actor for b in self.ledger.books], dtype=np.int64)

    def retire(self, actors: list[int]) -> None:
        """Stop actors whose shards all moved away; their processes end."""
        handles = []
        with self._lock:
            for a in actors:
                slot = self.dispatch.actors[a]
                if slot.retired:
                    continue
                if slot.shards:  # took shards over meanwhile (a failover): it stays
                    log.warning(
                        "shardyard: actor %d hosts shards %s again; it is not retired",
                        a,
                        slot.shards,
                    )
                    continue
                self.dispatch.retire(a)
                self._incarnation[a] = None
                for call in self._calls[a]:
                    call.settle()
                self._calls[a].clear()
                handles.append(self._handles[a])
            self.partitioner.set_placement(self.placement_array(), self.dispatch.active())
        for h in handles:
            kill_quietly(h)

    # --- delivery ---------------------------------------------------------------------------

    def _flush_later(self, out: list[Delivery]) -> None:
        """Deliver on the loop: callers hold the core lock, and delivering runs the user's
        done-callbacks, which must not run under it."""
        if not out:
            return
        if self._loop.is_running() and not self._closing:
            self._loop.call_soon_threadsafe(self._flush, out)
        else:
            self._flush(out)

    def _flush(self, out: list[Delivery]) -> None:
        """Hand each delivery to its sink, then count its items done."""
        if not out:
            return
        by_epoch: dict[int, int] = {}
        start, n = 0, len(out)
        while start < n:  # runs of one sink, handed over at once (one lock, one wake-up)
            sink = out[start][1].sink
            end = start
            while end < n and out[end][1].sink is sink:
                seg = out[end][1]
                by_epoch[seg.epoch] = by_epoch.get(seg.epoch, 0) + len(seg)
                end += 1
            try:  # a failing one is logged and counted all the same: wait() cannot hang
                sink.deliver_many(out[start:end] if start or end < n else out)
            except Exception:
                log.exception("shardyard: delivering results failed")
            start = end
        with self._lock:
            for sid, seg, _, _ in out:
                self.dispatch.finished(sid, len(seg))
            waiters = self.dispatch.take_probe_waiters()
        self.completion.finished(by_epoch)
        if waiters and not self._closing and self._loop.is_running():
            # They held a producer's items back while its one probe was out (see dispatch).
            for a in waiters:
                self._loop.call_soon_threadsafe(self._kick_waiter, a)

    # --- waiting and stats --------------------------------------------------------------------

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until every item handed to the core before this call has finished.

        Items received later (another thread still submitting) are not waited for.

        Returns:
            True when done, False when ``timeout`` passed first.
        """
        with self._lock:
            self._drain_locked()  # what is in the inbox was handed over before this call
            epoch = self.completion.close_epoch()
        return self.completion.wait(epoch, timeout)

    def quiesce(self, timeout: float | None = None) -> bool:
        """Wait until the items handed over before this call ended, every shard is placed,
        and nothing is in flight (a restore's replays are done): shard state is complete.

        Returns:
            False when ``timeout`` passed first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self.wait_idle(timeout):
            return False
        while True:
            with self._lock:
                busy = any(self._placing) or any(
                    b.failed is None and (b.inflight or b.outbox or not b.placed)
                    for b in self.ledger.books
                )
            if not busy:
                return True
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.005)

    def expected(self) -> tuple[list[int], dict[int, BaseException]]:
        """The generation of each shard, and the failed shards with their errors."""
        with self._lock:
            books = self.ledger.books
            failed = {sid: b.failed for sid, b in enumerate(books) if b.failed is not None}
            return [b.gen for b in books], failed

    def incarnation(self, a: int) -> str | None:
        """The process known to host actor ``a``'s shards (``None``: being placed)."""
        return self._incarnation[a]

    def confirm(self, a: int, incarnation: str, asked: str | None) -> bool:
        """True if ``incarnation``, which answered a call sent while ``asked`` was known to
        host actor ``a``'s shards, is that process and still known. If another process
        answered, ``asked`` has died (an idle death the watchdog has not seen yet): recover
        it (nothing happens if that death was handled already)."""
        out: list[Delivery] = []
        with self._lock:
            if incarnation == asked:
                return asked == self._incarnation[a]
            self._lost(a, asked, RuntimeError("the actor was restarted"), out)
        self._flush(out)
        return False

    def stats(self) -> dict[str, Any]:
        """Driver-side counters per shard and per actor."""
        with self._lock:
            books = self.ledger.books
            return {
                "pull_queued": self.dispatch.pull_queued,
                "snapshot_failures": self.ledger.snapshot_failures,
                "shards": [
                    {
                        "shard_id": sid,
                        "actor": b.actor,
                        "items": b.items,
                        "batches": b.batches,
                        "errors": b.errors,
                        "queued": self.dispatch.queued[sid],
                        "in_flight": self.ledger.unanswered(sid),
                        "generation": b.gen,
                        "replayed_batches": b.replayed,
                        "retained_batches": self.ledger.retained(sid),
                        "snapshot_failures": b.snapshot_failures,
                        "failed": None if b.failed is None else str(b.failed).split("\n")[0],
                    }
                    for sid, b in enumerate(books)
                ],
                "actors": [
                    {
                        "actor": s.index,
                        "shards": list(s.shards),
                        "in_flight_calls": s.inflight,
                        "outstanding": s.outstanding,
                        "restarts": self._restarts[s.index],
                        "incarnation": self._incarnation[s.index],
                        "state": "failed"
                        if s.failed
                        else ("placing" if self._incarnation[s.index] is None else "running"),
                    }
                    for s in self.dispatch.actors
                    if not s.retired
                ],
                "history": [dict(h) for h in self.history],
            }


def _some(ids: Any, shown: int = 12) -> str:
    """A list of shard ids for a message: the first few and how many in all."""
    ids = list(ids)
    if len(ids) <= shown:
        return str(ids)
    return f"[{', '.join(map(str, ids[:shown]))}, ... ({len(ids)} in all)]"


def _ray_says_alive(handle: Any) -> bool | None:
    """Whether Ray's GCS lists the actor as ``ALIVE`` (``None``: it cannot be asked, as
    under Ray Client). Blocking: call it in a thread. Checked for Ray 2.60."""
    try:
        from ray._private.state import state

        info = state.actor_table(handle._actor_id.hex())
    except Exception:
        return None
    return bool(info) and info.get("State") == "ALIVE"


async def _await_ref(ref: Any) -> Any:
    return await ref


def kill_quietly(handle: Any) -> None:
    """``ray.kill`` an actor for good; one that is gone already is fine."""
    with contextlib.suppress(Exception):
        ray.kill(handle, no_restart=True)


def _unwrap(exc: BaseException) -> BaseException:
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def _resources_hint() -> str:
    """What the cluster has free, for errors about actors that cannot be scheduled."""
    try:
        free = ray.available_resources()
        total = ray.cluster_resources()
    except Exception:
        return ""
    cpu = f"CPU {free.get('CPU', 0):g} free of {total.get('CPU', 0):g}"
    return f", and the cluster has {cpu} (a node was lost and no other has room?)"


def _pickle_error(x: Any) -> str | None:
    """Why ``x`` cannot be pickled, or ``None`` if it can."""
    try:
        cloudpickle.dumps(x)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
