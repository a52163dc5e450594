"""The dispatch policy: queues per shard, the keyless pull queue, and what each actor gets next.

Pure decisions over the :class:`~shardyard.scheduler.ledger.Ledger`; no Ray, no threads
(the core calls it under its lock and sends what it returns). Model-tested with fake actors
in ``tests/test_ledger_model.py``.

Per actor at most ``max_inflight`` calls are in flight. A call carries at most one batch
per shard of the actor: first what the ledger has numbered already (replays, resends,
barriers), else up to ``max_batch`` queued items; then a share of the keyless pull queue.
With ``call_budget_s`` set, new items in one call are also bounded by the time the actor is
expected to take, so the work in flight on an actor stays near ``max_inflight *
call_budget_s`` seconds whatever the handler costs: an interrupt or a cancel takes effect
quickly, and progress moves steadily. The expected cost per item is the larger of the
actor's recent average and what its oldest unanswered call has taken so far (a call that
is slow to come back lowers the next ones at once); while unknown, ``FIRST_CALL_ITEMS``.
The first item of a new producer (a ``map`` whose sink has nothing finished yet) goes
alone, a probe: a new workload may cost far more per item than the last one did. One probe
per producer for the whole pool, not one per actor: the other actors hold that producer's
items back until something of it has finished (``probe_waiters``; the core kicks them once
a delivery lands), so a pool of many actors does not pay a round of one-item calls per map.
A probe out for ``PROBE_WAIT_S`` (a slow or hung item) no longer holds anyone: from then on
each actor sends probes of its own, as without a shared probe.
Shards of an actor take turns: each call starts after the shard the last one stopped at.
A suspect batch (see the ledger) goes alone: only once nothing else is in flight on its
actor, and nothing follows it until it is answered.

Example:
    >>> import numpy as np
    >>> from shardyard.scheduler.ledger import Ledger
    >>> from shardyard.scheduler.segments import Segment
    >>> ledger = Ledger([0, 0], stateful=False, checkpoint_every=None)
    >>> d = Dispatch(ledger, [[0, 1]], max_batch=10, max_inflight=2)
    >>> for sid in (0, 1):
    ...     ledger.placed(sid, 0)
    >>> d.enqueue(1, Segment(None, np.arange(3), [1, 2, 3], None))
    []
    >>> calls, _ = d.next_calls(0, now=0.0)
    >>> [[(b.shard_id, b.seq, b.size) for b in call] for call in calls]
    [[(1, 0, 3)]]
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from shardyard.scheduler.ledger import Batch, Delivery, Ledger
from shardyard.scheduler.segments import Segment, take_items

__all__ = ["FIRST_CALL_ITEMS", "PROBE_WAIT_S", "SPREAD_COST_S", "ActorSlot", "Dispatch"]

FIRST_CALL_ITEMS = 16  # new items per call while an actor's cost per item is unknown
CALL_OVERHEAD_S = 1e-4  # a call this short in the actor measured its fixed cost, not its items
COST_PRIOR_ITEMS = 16  # a fall in the cost per item seen on this many items counts half
MIN_COST_S = 1e-9  # the cost per item never goes below this (a call that ran in no time)
PROBE_WAIT_S = 0.25  # a producer's items wait this long at most for its probe (then another)
SPREAD_COST_S = 1e-4  # items this slow share a call's room out over the shards


@dataclass(slots=True)
class ActorSlot:
    """The dispatcher's view of one actor."""

    index: int
    shards: list[int]
    ready: set[int] = field(default_factory=set)  # its shards with queued items
    inflight: int = 0  # calls in flight
    alone: bool = False  # a suspect batch is in flight: send nothing else
    outstanding: int = 0  # items queued for it or in flight (its load)
    pull_cursor: int = 0  # rotates keyless batches over its shards
    first_wait: float | None = None  # when its oldest held partial batch started waiting
    cost: float | None = None  # seconds per item its handler took lately (None: not yet seen)
    busy_until: float = 0.0  # when its last answered call ended (service-time estimate)
    sent: deque[tuple[float, int]] = field(default_factory=deque)  # (time, items) unanswered
    last_served: int = -1  # the shard the last call stopped at (shards take turns)
    failed: bool = False  # gave up on it (restart budget spent) or retired: nothing is sent
    retired: bool = False  # scaled in: its shards moved away and its process was stopped


def _unproven(sink: Any) -> bool:
    """True while nothing of ``sink``'s producer has finished: its items' cost is unknown."""
    return getattr(sink, "finished", 1) == 0


def _probe_wait(sink: Any, now: float) -> float | None:
    """Until when ``sink``'s items are held back for its probe (``None``: send one now).

    Only the first probe sets the clock: once ``PROBE_WAIT_S`` passed, its items are slow
    (or the probe hangs), a call's fixed cost no longer matters, and every actor may send
    probes of its own, as if there were no shared probe.
    """
    sent = getattr(sink, "probe_sent_at", None)
    if sent is None or now - sent >= PROBE_WAIT_S:
        return None
    return float(sent) + PROBE_WAIT_S


def _probe_sent(sink: Any, now: float) -> None:
    """A probe of ``sink``'s items went out (only once a batch carries it)."""
    if getattr(sink, "probe_sent_at", None) is None:
        sink.probe_sent_at = now


class Dispatch:
    """Shard queues, the keyless pull queue and per-actor slots.

    Args:
        ledger: numbers the batches and knows which shards can be sent to.
        actor_shards: ``actor_shards[a]`` = the shards actor ``a`` hosts.
        max_batch: items per shard batch.
        max_inflight: calls in flight per actor.
        max_wait: hold a partly filled batch this long while its actor has room.
        call_budget_s: seconds of work one call may carry, by the actor's measured cost
            per item (``None``: items are bounded by ``max_batch`` only).
    """

    def __init__(
        self,
        ledger: Ledger,
        actor_shards: list[list[int]],
        *,
        max_batch: int,
        max_inflight: int,
        max_wait: float = 0.0,
        call_budget_s: float | None = None,
    ) -> None:
        self.ledger = ledger
        self.actors = [ActorSlot(i, list(s)) for i, s in enumerate(actor_shards)]
        num_shards = len(ledger.books)
        self.queues: list[deque[Segment]] = [deque() for _ in range(num_shards)]
        self.queued = [0] * num_shards  # items in each shard's queue
        self.unfinished = [0] * num_shards  # items of each shard queued, in flight or undelivered
        self.pull: deque[Segment] = deque()  # keyless segments, taken by actors with room
        self.pull_queued = 0
        self._max_batch = max_batch
        self._max_inflight = max_inflight
        self._max_wait = max_wait
        self._call_budget = call_budget_s
        # Actors that held items back while their producer's probe was out: the core kicks
        # them after the next delivery (take_probe_waiters).
        self.probe_waiters: set[int] = set()

    # --- input ------------------------------------------------------------------------------

    def enqueue(self, sid: int, seg: Segment) -> list[Delivery]:
        """Queue ``seg`` for shard ``sid``; a failed shard ends its items at once."""
        slot = self.actors[self.ledger.books[sid].actor]
        slot.outstanding += len(seg)  # also when they end at once: finished() counts them off
        self.unfinished[sid] += len(seg)
        failed = self.ledger.books[sid].failed
        if failed is not None:
            return [(sid, seg, [None] * len(seg), [(i, failed) for i in range(len(seg))])]
        queue = self.queues[sid]
        # Behind others, it waits beyond this round: it must not keep its producer's whole
        # chunk alive meanwhile (a shard slow to drain would hold one chunk per segment).
        queue.append(seg.compacted() if queue else seg)
        self.queued[sid] += len(seg)
        slot.ready.add(sid)
        return []

    def enqueue_pull(self, seg: Segment) -> list[Delivery]:
        """Queue keyless ``seg`` for whichever actor has room first (none left: it fails)."""
        if self._nobody_pulls():
            err = next((b.failed for b in self.ledger.books if b.failed is not None), None)
            err = err or RuntimeError("no shard actor is left")
            return [(-1, seg, [None] * len(seg), [(i, err) for i in range(len(seg))])]
        self.pull.append(seg)
        self.pull_queued += len(seg)
        return []

    # --- output -----------------------------------------------------------------------------

    def next_calls(self, a: int, now: float) -> tuple[list[list[Batch]], float | None]:
        """The calls to send to actor ``a`` now, and when to look again for held batches.

        Every returned batch is marked sent in the ledger.
        """
        slot = self.actors[a]
        calls: list[list[Batch]] = []
        ledger = self.ledger
        probe_holds: list[float] = []  # held for a producer's probe until then
        while slot.inflight < self._max_inflight and not slot.alone and not slot.failed:
            numbered: list[int] = []  # sendable shards with numbered batches to send first
            if ledger.outboxed:
                numbered = [s for s in slot.shards if s in ledger.outboxed and ledger.sendable(s)]
                solo = next((s for s in numbered if ledger.books[s].outbox[0].solo), None)
                if solo is not None:
                    b = ledger.pop_outbox(solo)
                    ledger.sent(b)
                    slot.inflight += 1
                    slot.sent.append((now, b.size))
                    calls.append([b])
                    continue
                suspect = next((s for s in numbered if ledger.books[s].outbox[0].alone), None)
                if suspect is not None:
                    if slot.inflight == 0:
                        b = ledger.pop_outbox(suspect)
                        ledger.sent(b)
                        slot.alone = True
                        slot.inflight += 1
                        slot.sent.append((now, b.size))
                        calls.append([b])
                    break
            hold = self._hold_until(slot, numbered, now)
            if hold is not None:
                return calls, hold
            batches = [ledger.pop_outbox(s) for s in numbered]
            room = self._room(slot, now)
            turns = self._turns(slot)
            # Slow items (a blocking or async handler, whose shards may run at the same
            # time): the room is shared out over the shards with items, so a call reaches
            # every shard and keeps them all busy. Fast items: taken shard by shard, in full
            # batches (small batches over many shards would cost more than their items).
            slow = slot.cost is not None and slot.cost >= SPREAD_COST_S
            share = -(-room // max(1, len(turns))) if slow else room
            for sid in turns:
                if room <= 0:
                    break
                # A shard with numbered batches gets no new one in this call: it would
                # overtake them (and one batch per shard per call is enough).
                if (
                    self.queued[sid]
                    and sid not in ledger.outboxed
                    and sid not in numbered
                    and ledger.takes_new(sid)
                ):
                    head = self.queues[sid][0].sink
                    probe = _unproven(head)
                    if probe:
                        until = self._held_for_probe(a, head, now)
                        if until is not None:  # its producer's probe is out: wait for it
                            probe_holds.append(until)
                            continue
                        _probe_sent(head, now)  # a shard with queued items: a batch is cut
                    batch = self._cut(sid, 1 if probe else min(room, share))
                    room = 0 if probe else room - batch.size
                    slot.last_served = sid
                    batches.append(batch)
            slot.ready = {s for s in slot.ready if self.queued[s]}
            if self.pull_queued and room > 0:
                head = self.pull[0].sink
                probing = False
                if _unproven(head):
                    until = self._held_for_probe(a, head, now)
                    if until is not None:
                        probe_holds.append(until)
                        room = 0
                    else:
                        probing, room = True, 1
                # Pulled work goes to shards with nothing numbered and no batch in this call:
                # two batches of a shard in one call come back (if the call fails) as two
                # solo retries, and one sent before the other would hold the actor.
                taken = {b.shard_id for b in batches}
                free = [
                    s
                    for s in slot.shards
                    if s not in ledger.outboxed and s not in taken and ledger.takes_new(s)
                ]
                pulled = self._take_pulled(slot, free, room) if room > 0 else []
                if probing and pulled:  # marked only when a batch carries it
                    _probe_sent(head, now)
                batches += pulled
            if not batches:
                break
            for b in batches:
                ledger.sent(b)
            slot.inflight += 1
            slot.sent.append((now, sum(b.size for b in batches)))
            calls.append(batches)
        return calls, min(probe_holds, default=None)

    def _hold_until(self, slot: ActorSlot, numbered: list[int], now: float) -> float | None:
        # Ray Serve's batch_wait_timeout_s: a partly filled batch waits a little for more.
        if self._max_wait <= 0 or numbered:
            return None
        if self.pull_queued >= self._max_batch or any(
            self.queued[s] >= self._max_batch for s in slot.ready
        ):
            slot.first_wait = None
            return None
        if not slot.ready and not self.pull_queued:
            return None
        if slot.first_wait is None:
            slot.first_wait = now
        deadline = slot.first_wait + self._max_wait
        if deadline <= now:
            slot.first_wait = None
            return None
        return deadline

    def _room(self, slot: ActorSlot, now: float) -> int:
        """New items one call to ``slot`` may carry (its time budget over its cost)."""
        if self._call_budget is None:
            return 1 << 62
        cost = slot.cost
        if slot.sent:
            # Its oldest unanswered call, counted from when the actor could start it (its
            # send, or the last answer before): the handler is at least this slow.
            since, items = slot.sent[0]
            if items:
                cost = max(cost or 0.0, (now - max(since, slot.busy_until)) / items)
        if not cost:
            return FIRST_CALL_ITEMS
        return max(1, int(self._call_budget / cost))

    def _turns(self, slot: ActorSlot) -> list[int]:
        """``slot``'s shards with queued items, starting after the one served last."""
        ready = sorted(slot.ready)
        cut = bisect_right(ready, slot.last_served)
        return ready[cut:] + ready[:cut]

    def _cut(self, sid: int, room: int) -> Batch:
        segments = take_items(self.queues[sid], min(room, self._max_batch))
        self.queued[sid] -= sum(len(s) for s in segments)
        return self.ledger.new_batch(sid, segments)

    def _take_pulled(self, slot: ActorSlot, sendable: list[int], room: int) -> list[Batch]:
        """Keyless batches for ``slot`` (guided self-scheduling).

        Each call takes a share of what is left, ``remaining / (actors * in-flight)``, at
        least one item and at most one full batch per sendable shard: large pieces while
        the queue is long, small ones at the tail, so a slow actor is not left holding the
        last big piece.
        """
        if not sendable:
            return []
        live = sum(1 for s in self.actors if not s.failed) or 1
        share = -(-self.pull_queued // (live * self._max_inflight))
        take = min(self.pull_queued, max(1, share), self._max_batch * len(sendable), room)
        batches: list[Batch] = []
        used: set[int] = set()
        while take > 0:
            sid = sendable[slot.pull_cursor % len(sendable)]
            slot.pull_cursor += 1
            if sid in used:
                break
            used.add(sid)
            segments = take_items(self.pull, min(take, self._max_batch))
            n = sum(len(s) for s in segments)
            self.pull_queued -= n
            slot.outstanding += n
            self.unfinished[sid] += n
            take -= n
            batches.append(self.ledger.new_batch(sid, segments))
        return batches

    def _held_for_probe(self, a: int, sink: Any, now: float) -> float | None:
        """Until when actor ``a`` holds ``sink``'s items back for its probe (``None``: it
        may send one now); a held actor is kicked after the next delivery."""
        until = _probe_wait(sink, now)
        if until is not None:
            self.probe_waiters.add(a)
        return until

    def take_probe_waiters(self) -> list[int]:
        """The actors that held items back for a probe (emptied): kick them, something
        was delivered (a probe's producer is proven once any of its items finished)."""
        if not self.probe_waiters:
            return []
        waiters = sorted(self.probe_waiters)
        self.probe_waiters.clear()
        return waiters

    def call_done(self, a: int, alone: bool) -> None:
        """A call to actor ``a`` was answered (or failed)."""
        slot = self.actors[a]
        slot.inflight -= 1
        if slot.sent:
            slot.sent.popleft()
        if alone:
            slot.alone = False

    def answered(self, a: int, items: int, sent_at: float, now: float, took_s: float = 0.0) -> None:
        """A call of ``items`` items sent at ``sent_at`` was answered at ``now``; it took
        ``took_s`` seconds in the actor (0: not known).

        Its service time is the actor's own ``took_s``: a round trip would also count the
        call's transfer and its wait for a CPU on a busy node, which, for a small call
        (the probe), can be a thousand times its handler's work and would shrink the
        calls after it. Without it, the round trip counts from when the actor was free to
        start the call (the later of its send and the previous answer). The cost is a
        moving average of seconds per item:

        * A rise counts half at once, and for every actor: slower items must not fill an
          actor with minutes of work, and the items of a new ``map`` are probed on one
          actor only (the others size their first calls by what it measured).
        * A call shorter than ``CALL_OVERHEAD_S`` in the actor measured its fixed cost
          (receiving, replying), not its items: a one-item probe of ``x + 1`` takes ~30
          us, 100 times the item. It only bounds the cost from above: it never raises it.
        * A fall counts by the evidence, in proportion (the logarithm of the cost moves
          ``items / (items + COST_PRIOR_ITEMS)`` of the way): a call of thousands of items
          replaces the estimate, one fast item (one that failed at once, say) among slow
          ones moves it by a few percent.
        """
        slot = self.actors[a]
        start = max(sent_at, slot.busy_until)
        slot.busy_until = now
        if items <= 0:
            return
        per_item = max(MIN_COST_S, (took_s if took_s > 0 else max(0.0, now - start)) / items)
        cost = slot.cost
        if cost is None or per_item > cost:
            if cost is not None and 0 < took_s < CALL_OVERHEAD_S:
                return  # its fixed cost, not its items'
            risen = per_item if cost is None else 0.5 * cost + 0.5 * per_item
            for other in self.actors:
                if other.cost is None or other.cost < risen:
                    other.cost = risen
        else:
            weight = items / (items + COST_PRIOR_ITEMS)
            slot.cost = cost * (per_item / cost) ** weight

    def actor_lost(self, a: int) -> None:
        """Actor ``a``'s calls in flight will never be answered: free its slots."""
        slot = self.actors[a]
        slot.inflight = 0
        slot.sent.clear()
        slot.alone = False

    def finished(self, sid: int, n: int) -> None:
        """``n`` items of shard ``sid`` ended (their actor's load drops)."""
        if sid >= 0:
            self.actors[self.ledger.books[sid].actor].outstanding -= n
            self.unfinished[sid] -= n

    # --- scaling ------------------------------------------------------------------------------

    def add_actor(self) -> int:
        """A new actor slot, hosting nothing yet; returns its index."""
        self.actors.append(ActorSlot(len(self.actors), []))
        return len(self.actors) - 1

    def move_shard(self, sid: int, src: int, dst: int) -> None:
        """Shard ``sid`` now lives on ``dst``: its queue and its load go with it.

        Call it when the ledger switched the shard's actor (``Ledger.handed_off``).
        """
        old, new = self.actors[src], self.actors[dst]
        if sid in old.shards:
            old.shards.remove(sid)
        if sid not in new.shards:
            new.shards.append(sid)
            new.shards.sort()
        n = self.unfinished[sid]
        old.outstanding -= n
        new.outstanding += n
        if sid in old.ready:
            old.ready.discard(sid)
            new.ready.add(sid)

    def retire(self, a: int) -> None:
        """Actor ``a`` was scaled in (it hosts no shard any more): never send to it again."""
        slot = self.actors[a]
        assert not slot.shards, f"actor {a} still hosts shards {slot.shards}"
        slot.retired = True
        slot.failed = True
        slot.ready.clear()
        # Its calls still in flight (superseded batches only) are void: none is counted off.
        slot.inflight = 0
        slot.sent.clear()
        slot.alone = False

    def active(self) -> list[int]:
        """The actors that are part of the pool (not retired), failed ones included."""
        return [s.index for s in self.actors if not s.retired]

    # --- failures -----------------------------------------------------------------------------

    def fail_queued(self, sids: list[int], exc: BaseException | None = None) -> list[Delivery]:
        """End the queued items of ``sids`` (with ``exc``, else their shard's failure).

        Once every actor was given up or every shard failed, keyless items waiting to be
        pulled end too (with a shard's failure): no actor would ever take them.
        """
        out: list[Delivery] = []
        if self.pull and self._nobody_pulls():
            err = exc if exc is not None else self.ledger.books[0].failed
            out += self.fail_pull(err or RuntimeError("no shard actor is left"))
        for sid in sids:
            err = exc if exc is not None else self.ledger.books[sid].failed
            if err is None:
                continue
            while self.queues[sid]:
                seg = self.queues[sid].popleft()
                out.append((sid, seg, [None] * len(seg), [(i, err) for i in range(len(seg))]))
            self.queued[sid] = 0
            self.actors[self.ledger.books[sid].actor].ready.discard(sid)
        return out

    def cancel(self, sink: object) -> list[Delivery]:
        """Take every queued item of ``sink`` out of the queues (nothing numbered or sent).

        Returns them as deliveries for the caller to end; their outputs are ``None``,
        which tells a sink the items were cancelled before they ran.
        """
        out: list[Delivery] = []
        for sid, queue in enumerate(self.queues):
            if not self.queued[sid] or not any(seg.sink is sink for seg in queue):
                continue
            kept: deque[Segment] = deque()
            for seg in queue:
                if seg.sink is sink:
                    out.append((sid, seg, None, []))
                    self.queued[sid] -= len(seg)
                else:
                    kept.append(seg)
            self.queues[sid] = kept
            if not self.queued[sid]:
                self.actors[self.ledger.books[sid].actor].ready.discard(sid)
        if self.pull_queued and any(seg.sink is sink for seg in self.pull):
            kept = deque()
            for seg in self.pull:
                if seg.sink is sink:
                    out.append((-1, seg, None, []))
                    self.pull_queued -= len(seg)
                else:
                    kept.append(seg)
            self.pull = kept
        return out

    def _nobody_pulls(self) -> bool:
        """No shard will ever take keyless work again (every actor or every shard failed)."""
        return all(s.failed for s in self.actors) or all(
            b.failed is not None for b in self.ledger.books
        )

    def fail_pull(self, exc: BaseException) -> list[Delivery]:
        """End every keyless item still waiting to be pulled."""
        out: list[Delivery] = []
        while self.pull:
            seg = self.pull.popleft()
            out.append((-1, seg, [None] * len(seg), [(i, exc) for i in range(len(seg))]))
        self.pull_queued = 0
        return out

    def loads(self) -> list[int]:
        """Unfinished items per actor (for load-aware routing)."""
        return [s.outstanding for s in self.actors]
