"""The ledger: every batch of every shard from the moment it is numbered until it ends.

Pure bookkeeping, no Ray and no threads (the core calls it under its lock): given what
happened (a batch was sent, a reply came, an actor died, a call failed), it updates the
books and returns what to deliver. Model-tested with fake actors in
``tests/test_ledger_model.py``.

A shard's life is a sequence of generations (see :mod:`shardyard.protocol`). Within one,
batches are numbered ``0, 1, 2, ...`` and the actor applies them in that order. The ledger
keeps, per shard:

* ``inflight``: batches sent and not answered yet;
* ``outbox``: batches numbered but not sent yet (a replay after a restore, a resend, a
  snapshot barrier), sent before any new batch of the shard;
* ``log``: batches answered since the last committed snapshot (stateful shards only), to
  re-apply after a restore; bounded by ``checkpoint_every`` plus the barriers in flight;
* ``snapshot``: the state before the first batch of the log.

When an actor dies, each of its shards gets a new generation: restore the committed
snapshot, re-apply the log (``REPLAY``: outputs already delivered, ignored), resend what
was in flight and in the outbox (``WORK``: outputs delivered when they come). Every item
therefore ends exactly once: delivered from the one generation that answered it, or failed
with an error that names its shard and key.

Suspects: a batch in flight when its actor died is sent again *alone* (no other call in
flight on that actor). If the actor dies again while it is alone, it is split into up to
8 pieces, each sent alone; a single item that kills its actor alone is a poison item and
fails with :class:`~shardyard.errors.PoisonItemError` once that happened twice (once could
be a kill from outside). Deaths charged to a batch this way do not use up the actor's
restart budget (they are bounded by ``log8`` of the batch size, plus two).

Example:
    >>> import numpy as np
    >>> from shardyard.scheduler.segments import Segment
    >>> from shardyard.protocol import BatchReply
    >>> ledger = Ledger([0], stateful=False, checkpoint_every=None)
    >>> ledger.placed(0, ledger.books[0].gen)
    >>> b = ledger.new_batch(0, [Segment(None, np.arange(2), [10, 11], None)])
    >>> ledger.sent(b)
    >>> [d[2] for d in ledger.answer(BatchReply(0, b.gen, b.seq, [20, 22], []))]
    [[20, 22]]
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ray import cloudpickle

from shardyard.errors import (
    ActorLostError,
    PoisonItemError,
    SerializationError,
    ShardFailedError,
    ShardyardError,
    TaskError,
)
from shardyard.protocol import (
    BARRIER,
    REPLAY,
    USER_ERRORS,
    WORK,
    BarrierReply,
    BatchReply,
    ItemFailure,
    Stale,
    WireBatch,
)
from shardyard.scheduler.segments import Segment, concat_items, owned
from shardyard.scheduler.sinks import Failures

__all__ = ["Batch", "Delivery", "Ledger", "ShardBook"]

log = logging.getLogger(__name__)

# (shard id, segment, its outputs, its failures); shard id -1 for items never routed.
Delivery = tuple[int, Segment, Any, Failures]

SPLIT = 8  # pieces a suspect batch is cut into after it killed its actor alone
POISON_AFTER = 2  # deaths of a lone item, running alone, that make it a poison item
# A snapshot barrier also comes once the replay log holds checkpoint_every batches' worth of
# items at this many per batch (the default batch size before it was raised to 4,096).
LOG_ITEMS_PER_BATCH = 1024


@dataclass(slots=True, eq=False)
class Batch:
    """One numbered batch of a shard, kept until it ends (and, stateful, until a snapshot)."""

    shard_id: int
    kind: int  # WORK, REPLAY or BARRIER (shardyard.protocol)
    segments: list[Segment]  # in item order; empty for a barrier
    payload: Any  # the items as sent
    gen: int = 0
    seq: int = -1
    deaths: int = 0  # actor deaths it was in flight for
    alone: bool = False  # a suspect: send it with nothing else in flight on its actor
    alone_deaths: int = 0  # deaths while it ran alone (as this batch, not its parent)
    solo: bool = False  # send it in a call of its own (to find which batch a call failed on)
    pickled: bool = False  # ask for per-item pickled outputs (the driver failed to load them)

    @property
    def size(self) -> int:
        """Its items: the payload's length (the payload is its segments' items, joined)."""
        return 0 if self.payload is None else len(self.payload)

    def compact(self) -> None:
        """Make its items and segments own their memory (see ``Segment.compacted``)."""
        self.segments = [s.compacted() for s in self.segments]
        self.payload = self.segments[0].items if len(self.segments) == 1 else owned(self.payload)

    def wire(self) -> WireBatch:
        keyless = all(s.keys is None for s in self.segments)
        return WireBatch(
            self.shard_id, self.gen, self.seq, self.kind, self.payload, self.pickled, keyless
        )

    def split(self, pieces: int) -> list[Batch]:
        """This batch's items in up to ``pieces`` consecutive batches (same kind).

        The pieces keep the batch's ``gen`` and ``seq`` until they are renumbered, so a
        recovery plan sorted by ``seq`` keeps them at the batch's place in the shard's order.
        Each piece is made of slices of the batch's segments, so items keep their type
        (numpy stays numpy) and each segment its sink and wait epoch.
        """
        n = self.size
        bounds = np.linspace(0, n, min(pieces, n) + 1).astype(int).tolist()
        starts = np.cumsum([0] + [len(s) for s in self.segments]).tolist()
        out = []
        for lo, hi in itertools.pairwise(bounds):
            part: list[Segment] = []
            for seg, s0 in zip(self.segments, starts, strict=False):
                a, b = max(lo, s0), min(hi, s0 + len(seg))
                if a < b:
                    part.append(seg.select(np.arange(a - s0, b - s0)))
            out.append(
                Batch(
                    self.shard_id,
                    self.kind,
                    part,
                    concat_items(part),
                    self.gen,
                    self.seq,
                    alone=True,
                    deaths=self.deaths,
                    pickled=self.pickled,
                )
            )
        return out


@dataclass(slots=True)
class ShardBook:
    """The ledger's page for one shard."""

    actor: int  # index of the actor hosting it
    gen: int = 0  # current generation
    next_seq: int = 0  # seq of the next batch numbered in this generation
    placed: bool = False  # the actor confirmed it hosts this generation
    outbox: deque[Batch] = field(default_factory=deque)  # numbered, to send in order
    inflight: dict[int, Batch] = field(default_factory=dict)  # seq -> sent, unanswered
    log: dict[int, Batch] = field(default_factory=dict)  # seq -> answered since snapshot
    log_items: int = 0  # items of the batches in log
    # Committed: the state before the log's first batch. Bytes from a snapshot barrier, or,
    # after a migration, the ObjectRef of the state the old actor handed over (never
    # fetched by the driver).
    snapshot: Any = None
    pending: tuple[int, bytes] | None = None  # (barrier seq, state) awaiting earlier answers
    barrier_out: bool = False  # a barrier is in the outbox or in flight
    snapshot_failures: int = 0  # consecutive failed barriers
    failed: BaseException | None = None  # the shard cannot go on: every item fails with it
    dirty: bool = False  # items were applied to it since its snapshot was taken
    moving: bool = False  # a migration holds its new batches until it is handed off
    items: int = 0  # items ended (driver view)
    batches: int = 0
    errors: int = 0
    replayed: int = 0  # batches re-applied after restores


class Ledger:
    """Sequence numbers, unanswered batches, snapshots and recovery plans of every shard.

    Args:
        placement: ``placement[shard_id]`` = index of the actor hosting the shard.
        stateful: the handler is a ``Shard`` (its state must survive a crash).
        checkpoint_every: answered batches between snapshot barriers of a stateful shard
            (or ``checkpoint_every * LOG_ITEMS_PER_BATCH`` answered items, if fewer
            batches hold that many); ``None``: no snapshots, so a crash loses the shard
            (its items fail).
        max_snapshot_failures: consecutive failed ``snapshot()`` calls tolerated before
            the shard fails (as Flink's tolerable checkpoint failures).
    """

    def __init__(
        self,
        placement: Sequence[int],
        *,
        stateful: bool,
        checkpoint_every: int | None,
        max_snapshot_failures: int = 3,
    ) -> None:
        self.books = [ShardBook(actor=int(a)) for a in placement]
        self._stateful = stateful
        self._checkpoint_every = checkpoint_every if stateful else None
        self._max_snapshot_failures = max_snapshot_failures
        self.outboxed: set[int] = set()  # shards with batches in their outbox
        self.snapshot_failures = 0  # failed barriers in total (a stat)

    # --- numbering and sending ---------------------------------------------------------

    def new_batch(self, sid: int, segments: list[Segment]) -> Batch:
        """Number ``segments`` as the next WORK batch of shard ``sid`` (not sent yet)."""
        book = self.books[sid]
        b = Batch(sid, WORK, segments, concat_items(segments), book.gen, book.next_seq)
        book.next_seq += 1
        return b

    def pop_outbox(self, sid: int) -> Batch:
        """The next numbered batch of ``sid`` to send (the caller checked there is one)."""
        book = self.books[sid]
        b = book.outbox.popleft()
        if not book.outbox:
            self.outboxed.discard(sid)
        return b

    def sent(self, b: Batch) -> None:
        """``b`` left for its actor: it is in flight until answered or its actor is lost."""
        book = self.books[b.shard_id]
        book.inflight[b.seq] = b
        if b.kind == WORK and not book.dirty:
            book.dirty = True
            if self._checkpoint_every is None:
                book.snapshot = None  # a handed-over state is outdated from here on

    def sendable(self, sid: int) -> bool:
        book = self.books[sid]
        return book.placed and book.failed is None

    def takes_new(self, sid: int) -> bool:
        """Whether a new batch of ``sid`` may be cut now: it is sendable, and its log is not
        full while its snapshot barrier is out.

        A slow batch of another shard can hold the barrier's call, and so its reply, while
        this shard's later batches keep coming back: the log would grow with them, without
        bound. From ``2 * checkpoint_every`` answered batches on (or their worth of items,
        see ``_log_full``), new work waits for the barrier (the batches it waits for were
        all sent before it).
        """
        book = self.books[sid]
        if not book.placed or book.failed is not None or book.moving:
            return False
        waiting = book.barrier_out or book.pending is not None
        return self._checkpoint_every is None or not waiting or not self._log_full(book, 2)

    def _log_full(self, book: ShardBook, times: int) -> bool:
        """Whether ``book``'s log holds ``times`` x ``checkpoint_every`` batches, or at least
        ``times`` batches with as many items as ``times`` x ``checkpoint_every`` batches of
        ``LOG_ITEMS_PER_BATCH``: the replay log's memory does not grow with the batch size,
        and one large batch alone never holds new work back for a barrier."""
        ce = self._checkpoint_every
        assert ce is not None
        n = len(book.log)
        return n >= times * ce or (
            n >= times and book.log_items >= times * ce * LOG_ITEMS_PER_BATCH
        )

    # --- answers -------------------------------------------------------------------------

    def answer(self, r: BatchReply | BarrierReply | Stale) -> list[Delivery]:
        """Take one reply of the current generation; a reply of another one is ignored.

        A :class:`Stale` reply leaves its batch in flight: the actor no longer hosts this
        generation (the core sees the new incarnation and calls :meth:`lose_actor`).
        """
        book = self.books[r.shard_id]
        if r.gen != book.gen or type(r) is Stale:
            return []
        b = book.inflight.pop(r.seq, None)
        if b is None:
            return []  # answered already
        out: list[Delivery] = []
        if type(r) is BarrierReply:
            self._barrier_answered(book, r, out)
        else:
            assert type(r) is BatchReply
            if b.kind == WORK:
                self._deliver_reply(b, r.outputs, r.failures, out)
            else:
                book.replayed += 1
            if self._checkpoint_every is not None:
                b.kind = REPLAY  # answered: from now on it is only ever re-applied
                b.compact()  # kept until a snapshot: not a view of a whole chunk
                book.log[b.seq] = b
                book.log_items += b.size
                # A moving shard takes no barrier: its handoff is the next snapshot.
                if self._log_full(book, 1) and not book.barrier_out and not book.moving:
                    self._queue_barrier(r.shard_id)
        self._promote(book)
        return out

    def _deliver_reply(
        self, b: Batch, outputs: Any, failures: list[ItemFailure], out: list[Delivery]
    ) -> None:
        book = self.books[b.shard_id]
        by_pos = {f.position: f for f in failures} if failures else {}
        if b.pickled:
            outputs, by_pos = _unpickle_outputs(b, outputs, by_pos)
        book.batches += 1
        off = 0
        for seg in b.segments:
            n = len(seg)
            errs: Failures = []
            if by_pos:
                for i in range(n):
                    f = by_pos.get(off + i)
                    if f is None:
                        continue
                    exc: BaseException
                    if isinstance(f, BaseException):
                        exc = f
                    else:
                        exc = TaskError(b.shard_id, seg.key_at(i), f.exception(), f.traceback)
                    errs.append((i, exc))
            self._end(b.shard_id, seg, outputs[off : off + n], errs, out)
            off += n

    def _end(
        self, sid: int, seg: Segment, outputs: Any, errs: Failures, out: list[Delivery]
    ) -> None:
        book = self.books[sid]
        book.items += len(seg)
        book.errors += len(errs)
        out.append((sid, seg, outputs, errs))

    def _fail_batch(self, b: Batch, exc: BaseException, out: list[Delivery]) -> None:
        """End every item of WORK batch ``b`` with ``exc`` (a replay or barrier: nothing)."""
        if b.kind != WORK:
            return
        for seg in b.segments:
            errs: Failures = []
            for i in range(len(seg)):
                if isinstance(exc, ShardyardError):
                    errs.append((i, exc))
                else:
                    tb = ItemFailure.capture(i, exc).traceback
                    errs.append((i, TaskError(b.shard_id, seg.key_at(i), exc, tb)))
            self._end(b.shard_id, seg, [None] * len(seg), errs, out)

    # --- snapshots -----------------------------------------------------------------------

    def _queue_barrier(self, sid: int) -> None:
        book = self.books[sid]
        b = Batch(sid, BARRIER, [], None, book.gen, book.next_seq)
        book.next_seq += 1
        book.barrier_out = True
        book.outbox.append(b)
        self.outboxed.add(sid)

    def _barrier_answered(self, book: ShardBook, r: BarrierReply, out: list[Delivery]) -> None:
        book.barrier_out = False
        if r.failure is None:
            assert r.state is not None
            book.snapshot_failures = 0
            book.pending = (r.seq, r.state)
            return
        book.snapshot_failures += 1
        self.snapshot_failures += 1
        cause = r.failure.exception()
        log.warning(
            "shardyard: snapshot() of shard %d failed (%d in a row): %s",
            r.shard_id,
            book.snapshot_failures,
            cause,
        )
        if book.snapshot_failures >= self._max_snapshot_failures:
            err = ShardFailedError(
                r.shard_id,
                f"snapshot() failed {book.snapshot_failures} times in a row, so the shard "
                f"could not be recovered after a crash (its replay log would grow without "
                f"bound); fix snapshot() or pass checkpoint_every=None. Last cause: {cause!r}",
                r.failure.traceback,
            )
            out.extend(self.fail_shard(r.shard_id, err))

    def _promote(self, book: ShardBook) -> None:
        """Commit the pending snapshot once every batch before its barrier is answered."""
        if book.pending is None:
            return
        seq, state = book.pending
        if any(s < seq for s in book.inflight):
            return
        book.snapshot = state
        book.pending = None
        book.log = {s: b for s, b in book.log.items() if s > seq}
        book.log_items = sum(b.size for b in book.log.values())

    # --- losses and new generations --------------------------------------------------------

    def lose_actor(self, shards: Sequence[int]) -> tuple[list[Delivery], bool]:
        """The actor hosting ``shards`` died (or lost its shards): re-plan them.

        Returns:
            The deliveries (poison items, shards that cannot be rebuilt) and whether the
            death is charged to a suspect batch that was alone in flight (it then does not
            count against the actor's restart budget).
        """
        out: list[Delivery] = []
        charged = False
        for sid in shards:
            book = self.books[sid]
            if book.failed is not None:
                continue
            chain: list[Batch] = []
            for b in sorted(book.inflight.values(), key=_seq):
                if b.kind != WORK:
                    chain.append(b)
                    continue
                if not b.segments:
                    continue  # an empty stand-in for a failed batch: a new generation needs none
                b.deaths += 1
                if not b.alone:
                    b.alone = True  # a suspect: next time it goes alone
                    chain.append(b)
                    continue
                charged = True
                b.alone_deaths += 1
                if b.size > 1:
                    chain.extend(b.split(SPLIT))
                elif b.alone_deaths < POISON_AFTER:
                    chain.append(b)  # once may be a kill from outside: run it alone again
                else:
                    seg = b.segments[0]
                    err = PoisonItemError(sid, seg.key_at(0), b.deaths)
                    self._end(sid, seg, [None], [(0, err)], out)
            book.inflight = {}
            self._new_generation(sid, chain, out)
        return out, charged

    def rehost(self, sid: int, b: Batch, exc: BaseException | None) -> list[Delivery]:
        """A call carrying ``b`` failed without its actor dying: place ``sid`` anew.

        ``exc`` fails ``b``'s items; ``None`` keeps them and asks for per-item pickled
        outputs (the driver could not load the reply). Either way the new generation starts
        from the committed snapshot, so ``b``'s effects (if it ran) are dropped with it or
        applied again exactly once.
        """
        book = self.books[sid]
        out: list[Delivery] = []
        if book.failed is not None or b.gen != book.gen or book.inflight.get(b.seq) is not b:
            return out
        if exc is not None:
            del book.inflight[b.seq]
            self._fail_batch(b, exc, out)
        else:
            b.pickled = True
        chain = sorted(book.inflight.values(), key=_seq)
        book.inflight = {}
        self._new_generation(sid, chain, out)
        return out

    def retry(self, b: Batch, exc: BaseException | None) -> list[Delivery]:
        """A call carrying ``b`` failed before anything in it ran (its arguments did not
        load in the actor): send ``b`` again under the same number, in a call of its own.

        With ``exc``, ``b``'s items end with it instead, and an empty batch is sent under
        its number (the actor waits for that number before the shard's later batches).
        """
        book = self.books[b.shard_id]
        out: list[Delivery] = []
        if book.failed is not None or b.gen != book.gen or book.inflight.get(b.seq) is not b:
            return out
        del book.inflight[b.seq]
        if exc is not None:
            self._fail_batch(b, exc, out)
            b.segments, b.payload = [], []
        b.solo = True
        # In number order (two batches of the shard may fail and come back in any order):
        # the outbox goes out front to back, and the actor waits for each number in turn.
        i = 0
        while i < len(book.outbox) and book.outbox[i].seq < b.seq:
            i += 1
        book.outbox.insert(i, b)
        self.outboxed.add(b.shard_id)
        return out

    def outputs_lost(self, b: Batch, exc: BaseException) -> list[Delivery]:
        """``b`` ran, but its reply could not be loaded and it cannot be run again (no
        snapshot to rebuild its shard from): its items end with ``exc``; the shard goes on."""
        book = self.books[b.shard_id]
        out: list[Delivery] = []
        if book.failed is not None or b.gen != book.gen or book.inflight.get(b.seq) is not b:
            return out
        del book.inflight[b.seq]
        self._fail_batch(b, exc, out)
        return out

    def reanswer(
        self, batches: Sequence[Batch], replies: Sequence[BatchReply | BarrierReply | None]
    ) -> tuple[list[Delivery], bool]:
        """Take the replies of a call again, each output pickled on its own (the driver could
        not load the call's reply); ``None`` where the actor no longer had one.

        Returns:
            The deliveries, and whether shards were re-planned (to place anew): a batch
            whose reply is gone runs again from a rebuilt shard, or, when the shard cannot
            be rebuilt (``checkpoint_every=None``), its items fail.
        """
        out: list[Delivery] = []
        replan = False
        for b, r in zip(batches, replies, strict=True):
            book = self.books[b.shard_id]
            if book.gen != b.gen or book.inflight.get(b.seq) is not b:
                continue  # re-planned meanwhile (its actor died)
            if r is not None:
                b.pickled = True
                out += self.answer(r)
            elif self.can_rebuild:
                out += self.rehost(b.shard_id, b, None)
                replan = True
            else:
                err = SerializationError(
                    f"a batch of shard {b.shard_id} ran, but its outputs could not be loaded "
                    "on the driver, and with checkpoint_every=None it cannot be run again "
                    "to load them one by one"
                )
                out += self.outputs_lost(b, err)
        return out, replan

    @property
    def can_rebuild(self) -> bool:
        """Whether a shard can be placed anew without losing state (stateless, or snapshots)."""
        return not self._stateful or self._checkpoint_every is not None

    def _new_generation(self, sid: int, chain: list[Batch], out: list[Delivery]) -> None:
        """Renumber what must run again in a new generation, after a restore."""
        book = self.books[sid]
        if self._stateful and self._checkpoint_every is None and book.dirty:
            err = ActorLostError(
                f"shard {sid} lost its state when its actor died: checkpoint_every is None, "
                "so there is no snapshot to restore it from; its unfinished and later items "
                "fail (set checkpoint_every to recover such crashes)"
            )
            for b in chain:  # (not through inflight: the pieces of a split share a seq)
                self._fail_batch(b, err, out)
            out.extend(self.fail_shard(sid, err))
            return
        # What the actor had applied since the snapshot (log), what it had in flight and
        # what was never sent run again in their old order (a batch retried after a failed
        # call waits in the outbox with a lower number than later ones in flight; the
        # pieces of a split keep their batch's number). Barriers are dropped.
        redo = sorted([*book.log.values(), *chain, *book.outbox], key=_seq)
        book.gen += 1
        book.next_seq = 0
        book.placed = False
        book.log = {}
        book.log_items = 0
        book.pending = None
        book.barrier_out = False
        book.outbox = deque()
        for b in redo:
            if b.kind == BARRIER:
                continue
            b.gen = book.gen
            b.seq = book.next_seq
            book.next_seq += 1
            book.outbox.append(b)
        if book.outbox:
            self.outboxed.add(sid)
        else:
            self.outboxed.discard(sid)

    # --- migration ----------------------------------------------------------------------------

    def start_move(self, sid: int) -> None:
        """Hold ``sid``'s new batches (they stay queued) so its in-flight ones can drain."""
        self.books[sid].moving = True

    def cancel_move(self, sid: int) -> None:
        """The migration of ``sid`` was called off: its new batches flow again."""
        self.books[sid].moving = False

    def quiet(self, sid: int) -> bool:
        """Whether ``sid`` may be handed off now: placed, healthy, and every numbered batch
        answered (nothing in flight, nothing in its outbox), so the hosting actor's state of
        the shard holds every answered batch and no other."""
        book = self.books[sid]
        return book.placed and book.failed is None and not book.inflight and not book.outbox

    def handed_off(self, sid: int, gen: int, actor: int, state: Any) -> bool:
        """The actor hosting generation ``gen`` of ``sid`` gave it up with ``state``: the
        next generation starts from ``state`` on ``actor``.

        ``state`` (an ``ObjectRef``, or ``None`` for a stateless shard) becomes the
        committed snapshot, so a death of the receiving actor, also before it confirmed the
        placement, restores from it; the replay log before it is dropped.

        Returns:
            False if the shard was re-planned or failed meanwhile (nothing changes).
        """
        book = self.books[sid]
        if book.gen != gen or book.failed is not None or not self.quiet(sid):
            return False
        book.actor = actor
        book.gen += 1
        book.next_seq = 0
        book.placed = False
        book.moving = False
        book.snapshot = state if self._stateful else None
        book.log = {}
        book.log_items = 0
        book.pending = None
        book.barrier_out = False
        book.snapshot_failures = 0  # the handoff was a snapshot that succeeded
        book.dirty = False
        return True

    def placed(self, sid: int, gen: int) -> None:
        """The actor confirmed it hosts generation ``gen`` of ``sid``."""
        book = self.books[sid]
        if gen == book.gen:
            book.placed = True

    def host_state(self, sid: int) -> bytes | None:
        """The state a new generation of ``sid`` starts from (``None``: a fresh setup)."""
        return self.books[sid].snapshot

    # --- failures ----------------------------------------------------------------------------

    def fail_shard(self, sid: int, exc: BaseException) -> list[Delivery]:
        """The shard cannot go on: end its unfinished items with ``exc``, and later ones too."""
        book = self.books[sid]
        out: list[Delivery] = []
        for b in sorted(book.inflight.values(), key=_seq):
            self._fail_batch(b, exc, out)
        for b in book.outbox:
            self._fail_batch(b, exc, out)
        book.inflight = {}
        book.outbox = deque()
        book.log = {}
        book.log_items = 0
        book.pending = None
        book.snapshot = None
        book.failed = exc
        self.outboxed.discard(sid)
        return out

    def fail_batch_items(self, b: Batch, exc: BaseException) -> list[Delivery]:
        """End ``b``'s items with ``exc`` and forget it (a batch that never left)."""
        book = self.books[b.shard_id]
        book.inflight.pop(b.seq, None)
        out: list[Delivery] = []
        self._fail_batch(b, exc, out)
        return out

    def unanswered(self, sid: int) -> int:
        """Items of ``sid`` numbered and not ended (in flight or in the outbox, WORK only)."""
        book = self.books[sid]
        batches = [*book.inflight.values(), *book.outbox]
        return sum(b.size for b in batches if b.kind == WORK)

    def retained(self, sid: int) -> int:
        """Batches held for replay (the bounded memory a crash costs)."""
        return len(self.books[sid].log)


def _seq(b: Batch) -> int:
    return b.seq


def _unpickle_outputs(
    b: Batch, blobs: Sequence[Any], by_pos: dict[int, Any]
) -> tuple[list[Any], dict[int, Any]]:
    """Load per-item pickled outputs; an output that does not load fails alone."""
    outputs: list[Any] = []
    failures: dict[int, Any] = dict(by_pos)
    keys = [seg.key_at(i) for seg in b.segments for i in range(len(seg))]
    for pos, blob in enumerate(blobs):
        if pos in failures or blob is None:
            outputs.append(None)
            continue
        try:
            outputs.append(cloudpickle.loads(blob))
        except USER_ERRORS as exc:  # under the core's lock: nothing may escape mid-answer
            outputs.append(None)
            failures[pos] = SerializationError(
                f"the output of the item with key {keys[pos]!r} on shard {b.shard_id} was "
                f"computed, but the driver cannot unpickle it: {type(exc).__name__}: {exc}"
            )
    return outputs, failures
