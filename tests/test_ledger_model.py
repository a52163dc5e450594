"""Model-based test of the ledger and the dispatch policy, with fake actors and no Ray.

A hypothesis ``RuleBasedStateMachine`` drives a :class:`~shardyard.scheduler.ledger.Ledger`
and a :class:`~shardyard.scheduler.dispatch.Dispatch` the way ``scheduler/core.py`` does:
the ``core_*`` methods below mirror ``Core._kick``, ``_send``, ``_on_call_done``,
``_call_failed`` (``_isolate``; ``_fetch_replies`` through ``Ledger.reanswer``),
``_lost``, ``_note_death``, ``_place_later``, ``_place_loop``, ``_needs_placing``,
``_watch`` and ``_flush``. Keep them in step with the core. The fake actors behave like
``actors/shard_actor.py``:

* an actor hosts nothing until a ``HostRequest`` places a generation of a shard on it
  (fresh, or restored from a snapshot); it answers ``Stale`` for unhosted shards and other
  generations, and runs the batches of the hosted generation strictly in ``seq`` order (a
  batch that arrives early waits for its turn; a call's reply exists once all its batches
  ran); a barrier returns the frozen state; a replay returns no outputs; it keeps its last
  few replies per shard, for ``replies`` (asked again when a reply did not load);
* messages are taken in the order they were sent; batches of different shards then run
  in any order (a slow batch of one shard holds its call's reply back);
* a kill loses the hosted state, the mailbox and the unfinished calls (they fail as "actor
  gone") and starts a new incarnation; replies already sent still arrive.

The shard is an append-log: its state is the list of the items applied to it, so the state
after any history is checkable. Each item is its own submission position ``p``. Handler
model: an ``OK`` item appends ``p`` and outputs ``(p, len(state))`` (stateful) or
``("f", p)`` (stateless); a ``FAIL`` item raises *before* it touches the state (so it never
appears in it, and fails again, harmlessly, when re-applied); a ``POISON`` item kills its
actor's process every time it runs.

The rules interleave keyed and keyless submits, kicks, actor steps, replies delivered out of
order, twice, or late (after their generation ended), failed calls (actor side: the
arguments did not load, nothing ran; driver side: the reply did not load, everything ran),
failed snapshots, and kills at any moment (idle, busy, while placing, twice in a row).
Invariants are checked after every step and, at teardown, after draining to quiescence
(no new faults; poison still kills): every item ends exactly once, with the right output
or an allowed error; the state of every shard that did not fail is exactly its successful
items, each once, the keyed ones in submission order, each at the place its output named;
each batch number is sent once per generation (again only after a call that never ran);
the outbox stays in number order; every batch in flight belongs to a live call; the replay
log stays bounded; dispatch slots and load counters stay consistent and end at zero.

Machines: stateful with ``checkpoint_every=2`` (everything), stateless (with keyless
work), stateful with ``checkpoint_every=None`` (a death of a dirty shard fails its items
with ``ActorLostError``), and poison-only ones (no other fault: exactly the poison items
fail, with ``PoisonItemError``, every other item ends with its output).

Known gaps of the core, left out while ``AVOID_CORE_GAPS`` is set (run a machine with it
off to see them): a call carrying only a replay or a barrier that fails on the actor fails
its shard, and the shard's later batches, already at the actor, then wait forever for that
number, holding their calls (and other shards' replies in them); and ``replies`` pickles
the outputs of a batch that asked for pickled outputs a second time.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from ray import cloudpickle

from shardyard.errors import (
    ActorLostError,
    PoisonItemError,
    SerializationError,
    ShardFailedError,
    TaskError,
)
from shardyard.protocol import (
    BARRIER,
    REPLAY,
    WORK,
    BarrierReply,
    BatchReply,
    CallReply,
    HostReply,
    HostRequest,
    ItemFailure,
    Stale,
    WireBatch,
)
from shardyard.scheduler.dispatch import Dispatch
from shardyard.scheduler.ledger import Batch, Delivery, Ledger
from shardyard.scheduler.segments import Segment

OK, FAIL, POISON = 0, 1, 2  # item kinds (what the handler does with them)
GONE, ACTOR_SIDE, DRIVER_SIDE = "gone", "actor-side", "driver-side"  # call failures
PICK = st.integers(min_value=0, max_value=1 << 16)  # an index, taken modulo a length
MAX_SNAPSHOT_FAILURES = 3
RECENT_REPLIES = 4  # replies a fake actor keeps (the real one 16): small, so some are gone


@pytest.fixture(autouse=True, scope="module")
def _quiet_ledger() -> Iterator[None]:
    # Thousands of failed snapshots, each logged as a warning: keep a failure's report short.
    logger = logging.getLogger("shardyard.scheduler.ledger")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


class CallBrokeError(Exception):
    """A call that failed without its actor dying (the core's ``RayTaskError``)."""


@dataclass(eq=False)
class Call:
    """The core's ``_Call``: one ``run`` call in flight."""

    actor: int
    batches: list[Batch]
    incarnation: str | None
    alone: bool
    done: bool = False


@dataclass(eq=False)
class RunMsg:
    """A ``run`` call as its actor sees it: the wire batches and their replies so far."""

    call: Call
    wires: list[WireBatch]
    replies: list[Any] = field(default_factory=list)
    left: int = 0


@dataclass(eq=False)
class HostMsg:
    """A ``host`` call; ``outcome`` is its reply, ``GONE``, or ``None`` while unanswered."""

    reqs: list[HostRequest]
    known: str  # the incarnation the health check saw before the requests were sent
    outcome: HostReply | str | None = None


@dataclass(eq=False)
class Fetch:
    """``Core._fetch_replies`` in progress: ``replies`` once the actor answered."""

    call: Call
    keys: list[tuple[int, int, int]]
    replies: list[Any] | None = None


@dataclass(eq=False)
class Outcome:
    """What the core eventually learns about a call: a reply, or how it failed."""

    call: Call
    reply: CallReply | None
    exc: str | None
    pickled: bool = False  # a batch of the call asked for per-item pickled outputs


@dataclass
class Hosted:
    """One hosted generation of a shard on a fake actor."""

    gen: int
    state: list[int]
    next_seq: int = 0
    waiters: dict[int, tuple[RunMsg, int]] = field(default_factory=dict)  # seq -> batch
    recent: dict[int, Any] = field(default_factory=dict)  # seq -> reply, the last few


@dataclass
class FakeActor:
    """One fake actor process (and its restarts)."""

    index: int
    incarnations: int = 0
    hosted: dict[int, Hosted] = field(default_factory=dict)
    mailbox: deque[RunMsg | HostMsg] = field(default_factory=deque)
    running: list[RunMsg] = field(default_factory=list)  # accepted, some batches waiting

    @property
    def incarnation(self) -> str:
        return f"{self.index}.{self.incarnations}"

    def ready(self) -> list[int]:
        """Shards with a batch whose turn it is."""
        return sorted(s for s, h in self.hosted.items() if h.next_seq in h.waiters)


class LedgerModel(RuleBasedStateMachine):
    """Ledger + dispatch + a model of the core, against fake actors.

    Subclasses pick the configuration with the class attributes below.
    """

    STATEFUL: ClassVar[bool] = True
    CKPT: ClassVar[int | None] = 2
    KILLS: ClassVar[bool] = True  # random kills (innocent items may then be blamed as poison)
    POISON: ClassVar[bool] = True  # poison items among the submitted ones
    CALL_FAULTS: ClassVar[bool] = True  # calls failing without a death
    # Leave out the faults that core.py is known to mishandle (see the module docstring).
    AVOID_CORE_GAPS: ClassVar[bool] = True
    SNAP_FAULTS: ClassVar[bool] = True  # failing snapshot barriers
    PULL: ClassVar[bool] = True  # keyless (pull queue) submits
    MAX_POISON: ClassVar[int] = 2  # poison items per run

    def __init__(self) -> None:
        super().__init__()
        self.started = False

    # --- setup ---------------------------------------------------------------------------

    @initialize(
        n_actors=st.integers(2, 3),
        n_shards=st.integers(4, 6),
        max_batch=st.integers(1, 4),
        max_inflight=st.integers(1, 3),
        shift=st.integers(0, 2),
    )
    def start(self, n_actors: int, n_shards: int, max_batch: int, max_inflight: int, shift: int):
        placement = [(sid + shift) % n_actors for sid in range(n_shards)]
        self.n_shards = n_shards
        self.max_inflight = max_inflight
        self.ledger = Ledger(
            placement,
            stateful=self.STATEFUL,
            checkpoint_every=self.CKPT,
            max_snapshot_failures=MAX_SNAPSHOT_FAILURES,
        )
        self.dispatch = Dispatch(
            self.ledger,
            [[s for s in range(n_shards) if placement[s] == a] for a in range(n_actors)],
            max_batch=max_batch,
            max_inflight=max_inflight,
        )
        self.actors = [FakeActor(a) for a in range(n_actors)]
        # The core's view (core.py): known incarnations, placing loops, calls in flight.
        self.known: list[str | None] = [None] * n_actors
        self.placing = [True] * n_actors  # Core.start places every actor's shards
        self.place_msg: list[HostMsg | None] = [None] * n_actors
        self.talked_to: list[str | None] = [None] * n_actors  # Core._place_loop's
        self.fetches: list[Fetch] = []  # Core._fetch_replies in progress
        self.unrun: set[tuple[int, int, int]] = set()  # sent, but the call never ran
        self.calls: list[set[Call]] = [set() for _ in range(n_actors)]
        # The network: call outcomes not yet handled, and handled replies (for duplicates).
        self.transit: list[Outcome] = []
        self.handled: deque[tuple[Call, CallReply]] = deque(maxlen=32)
        # Items: kind, shard (-1: keyless), key; how each ended.
        self.kinds: list[int] = []
        self.shard_of: list[int] = []
        self.key_of: list[Any] = []
        self.results: dict[int, tuple[bool, Any]] = {}
        self.ordinal: dict[int, int] = {}  # successful stateful item -> its 1-based place
        self.items_of: list[list[int]] = [[] for _ in range(n_shards)]  # keyless: as sent
        self.keyless: set[int] = set()
        self.sent_keys: set[tuple[int, int, int]] = set()  # (shard, gen, seq) ever sent
        self.snapshot_faults = [0] * n_shards  # barriers of the shard still to fail
        self.snapshot_broken = [False] * n_shards  # a snapshot of the shard ever failed
        self.poisons = 0
        self.sends = 0
        self.kills = 0
        self.draining = False
        self.started = True

    # --- the sink --------------------------------------------------------------------------

    def deliver(self, seg: Segment, outputs: Any, failures: list[tuple[int, BaseException]]):
        """The recording sink: every item must end here exactly once, rightly."""
        errs = dict(failures)
        assert len(errs) == len(failures), "two failures for one item"
        assert len(outputs) == len(seg)
        for i in range(len(seg)):
            p = int(seg.ref[i])
            assert int(seg.items[i]) == p, "a segment's items and positions came apart"
            assert p not in self.results, f"item {p} ended twice"
            if i in errs:
                self.results[p] = (False, errs[i])
                self._check_error(p, errs[i])
            else:
                self.results[p] = (True, outputs[i])
                self._check_output(p, outputs[i])

    def _check_output(self, p: int, out: Any) -> None:
        assert self.kinds[p] == OK, f"item {p} of kind {self.kinds[p]} succeeded"
        if not self.STATEFUL:
            assert out == ("f", p)
            return
        assert type(out) is tuple and len(out) == 2 and out[0] == p, out
        self.ordinal[p] = out[1]

    def _check_error(self, p: int, exc: BaseException) -> None:
        kind, key = self.kinds[p], self.key_of[p]
        if isinstance(exc, TaskError):
            assert exc.key == key, (exc.key, key)
            assert self.shard_of[p] < 0 or exc.shard_id == self.shard_of[p]
        if type(exc) is TaskError and isinstance(exc.cause, ValueError):
            assert kind == FAIL and str(exc.cause) == f"bad item {p}", exc  # the handler's
            return
        if isinstance(exc, PoisonItemError):
            assert kind == POISON or self.KILLS, f"innocent item {p} blamed as poison"
            return
        strict = not (self.KILLS or self.CALL_FAULTS or self.SNAP_FAULTS)
        assert not strict, f"item {p} (kind {kind}) failed with {exc!r}"
        if type(exc) is TaskError:  # its call failed on the actor (twice, if not alone)
            assert isinstance(exc.cause, CallBrokeError) and self.CALL_FAULTS, exc
        elif isinstance(exc, SerializationError):  # ran, reply lost, cannot run again
            assert self.CALL_FAULTS and self.STATEFUL and self.CKPT is None, exc
        elif isinstance(exc, ActorLostError):
            assert self.STATEFUL and self.CKPT is None, exc
        else:
            assert isinstance(exc, ShardFailedError), exc
            if "snapshot()" in exc.reason:
                assert self.snapshot_broken[exc.shard_id]
            else:
                assert "could not run" in exc.reason and not self.AVOID_CORE_GAPS, exc

    # --- the core, mirrored -----------------------------------------------------------------

    def flush(self, out: list[Delivery]) -> None:
        """``Core._flush``: hand each delivery to its sink, then count it finished."""
        for _, seg, outputs, failures in out:
            seg.sink.deliver(seg, outputs, failures)
        for sid, seg, _, _ in out:
            self.dispatch.finished(sid, len(seg))

    def core_kick(self, a: int) -> None:
        """``Core._kick``."""
        if self.known[a] is None:
            return  # being placed: its placing loop kicks it when done
        calls, hold = self.dispatch.next_calls(a, 0.0)
        assert hold is None
        for batches in calls:
            self.core_send(a, batches)

    def core_send(self, a: int, batches: list[Batch]) -> None:
        """``Core._send``: the call goes to whatever process the actor runs now."""
        slot = self.dispatch.actors[a]
        assert 1 <= slot.inflight <= self.max_inflight
        alone = slot.alone and len(batches) == 1 and batches[0].alone
        wires = [b.wire() for b in batches]
        assert len({w.shard_id for w in wires}) == len(wires), "two batches of a shard"
        for w in wires:
            book = self.ledger.books[w.shard_id]
            assert book.actor == a and book.placed and book.failed is None
            assert w.gen == book.gen and book.inflight.get(w.seq) is not None
            k = (w.shard_id, w.gen, w.seq)
            assert k not in self.sent_keys or k in self.unrun, f"batch {k} sent twice"
            self.sent_keys.add(k)
            self.unrun.discard(k)
            if w.kind != BARRIER:  # (an empty WORK batch stands in for a failed one)
                for p in w.items.tolist() if isinstance(w.items, np.ndarray) else w.items:
                    if self.shard_of[p] < 0:
                        self.shard_of[p] = w.shard_id  # a keyless item: it stays on this shard
                        self.items_of[w.shard_id].append(p)
                    assert self.shard_of[p] == w.shard_id, (p, w.shard_id)
        self.sends += 1
        call = Call(a, batches, self.known[a], alone)
        self.calls[a].add(call)
        self.actors[a].mailbox.append(RunMsg(call, wires))

    def core_call_done(self, o: Outcome) -> None:
        """``Core._on_call_done``."""
        call, a = o.call, o.call.actor
        if call.done:
            return  # orphaned by its actor's death: its outcome is void
        call.done = True
        self.calls[a].discard(call)
        self.dispatch.call_done(a, call.alone)
        out: list[Delivery] = []
        if o.exc is None:
            assert o.reply is not None
            self.handled.append((call, o.reply))
            self.core_replies(a, call, o.reply, out)
        elif o.exc == GONE:
            self.core_lost(a, call.incarnation, out)
        else:
            self.core_call_failed(call, o.exc, out)
        out += self.fail_queued_of_failed(a)
        self.flush(out)

    def core_replies(self, a: int, call: Call, reply: CallReply, out: list[Delivery]) -> None:
        """The reply branch of ``Core._on_call_done`` (also run again for duplicates)."""
        if reply.incarnation != self.known[a]:
            # A new process answered (Stale "unhosted"): the one we knew has died.
            self.core_lost(a, call.incarnation, out)
            return
        for r in reply.replies:
            book = self.ledger.books[r.shard_id]
            # The core rehosts such a batch; a correct ledger never lets it happen (a failed
            # shard keeps its generation: a duplicate of its old Stale reply is harmless).
            assert type(r) is not Stale or r.gen != book.gen or book.failed, f"passed over: {r}"
            out += self.ledger.answer(r)

    def fail_queued_of_failed(self, a: int) -> list[Delivery]:
        """``Core._fail_queued_of_failed``."""
        slot = self.dispatch.actors[a]
        failed = [s for s in slot.ready if self.ledger.books[s].failed is not None]
        return self.dispatch.fail_queued(failed)

    def core_call_failed(self, call: Call, exc: str, out: list[Delivery]) -> None:
        """``Core._call_failed``."""
        if call.incarnation != self.known[call.actor]:
            return  # its actor was re-placed meanwhile: the batches were re-planned then
        if exc == DRIVER_SIDE:
            # Everything ran; the reply did not load: ask the actor for it again.
            self.fetches.append(Fetch(call, [(b.shard_id, b.gen, b.seq) for b in call.batches]))
            return
        for b in call.batches:  # Core._isolate: nothing in the call ran
            if len(call.batches) > 1:
                out += self.ledger.retry(b, None)  # each in a call of its own
            elif b.kind == WORK:
                out += self.ledger.retry(b, CallBrokeError(f"call of batch {b.seq} failed"))
            elif self.ledger.books[b.shard_id].failed is None:
                err = ShardFailedError(b.shard_id, "a replay or barrier batch could not run")
                out += self.ledger.fail_shard(b.shard_id, err)

    def core_fetch_done(self, f: Fetch) -> None:
        """The end of ``Core._fetch_replies``: the replies again, each output pickled."""
        assert f.replies is not None
        out, replace = self.ledger.reanswer(f.call.batches, f.replies)
        self.flush(out)
        if replace:
            self.core_place_later(f.call.actor)
        self.core_kick(f.call.actor)

    def core_lost(self, a: int, incarnation: str | None, out: list[Delivery]) -> None:
        """``Core._lost``: handle each death of a known incarnation once."""
        if incarnation is None or incarnation != self.known[a]:
            return
        self.known[a] = None
        self.core_note_death(a, out)
        self.core_place_later(a)

    def core_note_death(self, a: int, out: list[Delivery]) -> None:
        """``Core._note_death`` (the restart budget is not modelled: it is unlimited)."""
        slot = self.dispatch.actors[a]
        for call in self.calls[a]:
            call.done = True
        self.calls[a].clear()
        self.dispatch.actor_lost(a)
        books = self.ledger.books
        dirty = [s for s in slot.shards if books[s].dirty and books[s].failed is None]
        delivered, _charged = self.ledger.lose_actor(slot.shards)
        out += delivered
        if self.STATEFUL and self.CKPT is None:
            # No snapshot to restore from: a dirty shard fails, loudly, with ActorLostError.
            for s in dirty:
                assert isinstance(books[s].failed, ActorLostError), s
        for s in slot.shards:
            if books[s].failed is None:
                assert not books[s].placed and not books[s].inflight

    def core_place_later(self, a: int) -> None:
        """``Core._place_later``: one placing loop per actor."""
        if not self.placing[a]:
            self.placing[a] = True
            self.talked_to[a] = None  # a new Core._place_loop

    def needs_placing(self, a: int) -> bool:
        """``Core._needs_placing``."""
        slot = self.dispatch.actors[a]
        return self.known[a] is None or any(
            not (b := self.ledger.books[sid]).placed and b.failed is None for sid in slot.shards
        )

    def core_place_step(self, a: int) -> None:
        """One turn of ``Core._place_loop``: health check and host requests, or the reply."""
        slot = self.dispatch.actors[a]
        msg = self.place_msg[a]
        out: list[Delivery] = []
        if msg is None:
            if not self.needs_placing(a):
                self.placing[a] = False  # Core._place's finally
                self.core_kick(a)
                return
            inc = self.actors[a].incarnation  # which process answers now?
            known = self.known[a]
            if known is not None and inc != known:
                self.core_lost(a, known, out)
            elif self.talked_to[a] is not None and inc != self.talked_to[a]:
                self.core_note_death(a, out)  # the process we were restoring died
            self.talked_to[a] = inc
            reqs = [
                HostRequest(sid, book.gen, book.snapshot)
                for sid in slot.shards
                if not (book := self.ledger.books[sid]).placed and book.failed is None
            ]
            self.flush(out)
            msg = HostMsg(reqs, inc)
            self.place_msg[a] = msg
            self.actors[a].mailbox.append(msg)
            return
        if msg.outcome is None:
            return  # not answered yet
        self.place_msg[a] = None
        if msg.outcome == GONE:
            return  # the health check of the next turn tells whether it died
        reply = msg.outcome
        assert isinstance(reply, HostReply) and not reply.failures
        if reply.incarnation != msg.known:
            return  # hosted by a process that came up meanwhile: look again
        self.known[a] = msg.known
        for req in msg.reqs:
            self.ledger.placed(req.shard_id, req.gen)
        out += self.dispatch.fail_queued(slot.shards)
        self.flush(out)

    # --- the fake actors -----------------------------------------------------------------------

    def actor_accept(self, a: int) -> None:
        """The actor takes its next message, in the order they were sent."""
        actor = self.actors[a]
        msg = actor.mailbox.popleft()
        if isinstance(msg, HostMsg):
            for req in msg.reqs:  # ShardActor.host: a plain method, nothing interleaves
                old = actor.hosted.pop(req.shard_id, None)
                if old is not None:
                    for seq, (m, i) in old.waiters.items():
                        self.resolve(a, m, i, Stale(req.shard_id, old.gen, seq, "superseded"))
                state = [] if req.state is None else cloudpickle.loads(req.state)
                actor.hosted[req.shard_id] = Hosted(req.gen, list(state))
            msg.outcome = HostReply(actor.incarnation, {})
            return
        msg.replies = [None] * len(msg.wires)
        msg.left = len(msg.wires)
        actor.running.append(msg)
        for i, w in enumerate(msg.wires):  # ShardActor._run_one, up to its wait
            h = actor.hosted.get(w.shard_id)
            if h is None:
                self.resolve(a, msg, i, Stale(w.shard_id, w.gen, w.seq, "unhosted"))
            elif h.gen != w.gen or w.seq < h.next_seq or w.seq in h.waiters:
                self.resolve(a, msg, i, Stale(w.shard_id, w.gen, w.seq, "superseded"))
            else:
                h.waiters[w.seq] = (msg, i)

    def actor_run(self, a: int, sid: int) -> None:
        """The actor runs the batch of ``sid`` whose turn it is."""
        actor = self.actors[a]
        h = actor.hosted[sid]
        msg, i = h.waiters.pop(h.next_seq)
        w = msg.wires[i]
        assert w.seq == h.next_seq and w.gen == h.gen
        reply: BatchReply | BarrierReply
        if w.kind == BARRIER:
            assert self.STATEFUL and self.CKPT is not None
            if self.snapshot_faults[sid] > 0:
                self.snapshot_faults[sid] -= 1
                self.snapshot_broken[sid] = True
                failure = ItemFailure.capture(0, RuntimeError("snapshot() broke"))
                reply = BarrierReply(sid, w.gen, w.seq, None, failure)
            else:
                reply = BarrierReply(sid, w.gen, w.seq, cloudpickle.dumps(list(h.state)), None)
        else:
            items = w.items.tolist() if isinstance(w.items, np.ndarray) else list(w.items)
            if any(self.kinds[p] == POISON for p in items):
                self.kill(a)  # the handler takes its process down, every time
                return
            outputs: list[Any] = []
            failures: list[ItemFailure] = []
            for pos, p in enumerate(items):
                if self.kinds[p] == FAIL:  # raises before touching the state
                    outputs.append(None)
                    failures.append(ItemFailure.capture(pos, ValueError(f"bad item {p}")))
                    continue
                h.state.append(p)
                value = (p, len(h.state)) if self.STATEFUL else ("f", p)
                outputs.append(cloudpickle.dumps(value) if w.pickled else value)
            if w.kind == REPLAY:  # the outputs were delivered the first time
                outputs, failures = [], []
            reply = BatchReply(sid, w.gen, w.seq, outputs, failures)
        h.next_seq = w.seq + 1
        h.recent[w.seq] = reply
        if len(h.recent) > RECENT_REPLIES:
            del h.recent[min(h.recent)]
        self.resolve(a, msg, i, reply)

    def resolve(self, a: int, msg: RunMsg, i: int, reply: Any) -> None:
        assert msg.replies[i] is None
        msg.replies[i] = reply
        msg.left -= 1
        if msg.left == 0:  # every batch of the call ran: its reply is on its way
            actor = self.actors[a]
            actor.running.remove(msg)
            reply = CallReply(actor.incarnation, msg.replies)
            pickled = any(w.pickled for w in msg.wires)
            self.transit.append(Outcome(msg.call, reply, None, pickled))

    def actor_replies(self, f: Fetch) -> None:
        actor = self.actors[f.call.actor]
        out: list[Any] = []
        for sid, gen, seq in f.keys:
            h = actor.hosted.get(sid)
            r = h.recent.get(seq) if h is not None and h.gen == gen else None
            if isinstance(r, BatchReply):
                failed = {x.position for x in r.failures}
                blobs = [
                    None if pos in failed else cloudpickle.dumps(v)
                    for pos, v in enumerate(r.outputs)
                ]
                r = BatchReply(sid, gen, seq, blobs, r.failures)
            out.append(r)
        f.replies = out

    def kill(self, a: int) -> None:
        """The actor's process dies; Ray starts a new one, which hosts nothing."""
        actor = self.actors[a]
        self.kills += 1
        for msg in actor.mailbox:
            if isinstance(msg, HostMsg):
                msg.outcome = GONE
            else:
                self.transit.append(Outcome(msg.call, None, GONE))
        for msg in actor.running:
            self.transit.append(Outcome(msg.call, None, GONE))
        for f in self.fetches:
            if f.call.actor == a and f.replies is None:
                f.replies = [None] * len(f.keys)  # the call fails: Core suppresses it
        actor.mailbox.clear()
        actor.running.clear()
        actor.hosted.clear()
        actor.incarnations += 1

    # --- rules ----------------------------------------------------------------------------

    def _kind(self, k: int) -> int:
        if k == 0:
            return FAIL
        if k == 1 and self.POISON and self.poisons < self.MAX_POISON:
            self.poisons += 1
            return POISON
        return OK

    def _new_items(self, kinds: list[int], shard: int, keyed: bool) -> list[int]:
        p0 = len(self.kinds)
        pos = list(range(p0, p0 + len(kinds)))
        for k in kinds:
            self.kinds.append(self._kind(k))
            self.shard_of.append(shard)
        if shard < 0:
            self.keyless.update(pos)
        else:
            self.items_of[shard].extend(pos)
        self.key_of.extend(f"k{p}" if keyed else None for p in pos)
        return pos

    @precondition(lambda self: self.started)
    @rule(
        shard=PICK,
        kinds=st.lists(st.integers(0, 24), min_size=1, max_size=4),
        as_array=st.booleans(),
        keyed=st.booleans(),
    )
    def submit(self, shard: int, kinds: list[int], as_array: bool, keyed: bool) -> None:
        sid = shard % self.n_shards
        pos = self._new_items(kinds, sid, keyed)
        items: Any = np.array(pos, dtype=np.int64) if as_array else pos
        keys = [f"k{p}" for p in pos] if keyed else None
        seg = Segment(self, np.array(pos, dtype=np.int64), items, keys)
        self.flush(self.dispatch.enqueue(sid, seg))

    @precondition(lambda self: self.started and self.PULL)
    @rule(kinds=st.lists(st.integers(0, 24), min_size=1, max_size=6))
    def submit_keyless(self, kinds: list[int]) -> None:
        pos = self._new_items(kinds, -1, False)
        seg = Segment(self, np.array(pos, dtype=np.int64), pos, None)
        self.flush(self.dispatch.enqueue_pull(seg))

    @precondition(lambda self: self.started)
    @rule(a=PICK)
    def kick(self, a: int) -> None:
        self.core_kick(a % len(self.actors))

    @precondition(lambda self: self.started and any(x.mailbox for x in self.actors))
    @rule(a=PICK)
    def accept(self, a: int) -> None:
        busy = [x.index for x in self.actors if x.mailbox]
        self.actor_accept(busy[a % len(busy)])

    @precondition(lambda self: self.started and any(x.ready() for x in self.actors))
    @rule(a=PICK, s=PICK)
    def run(self, a: int, s: int) -> None:
        busy = [x for x in self.actors if x.ready()]
        actor = busy[a % len(busy)]
        ready = actor.ready()
        self.actor_run(actor.index, ready[s % len(ready)])

    @precondition(lambda self: self.started and self.transit)
    @rule(i=PICK)
    def deliver_outcome(self, i: int) -> None:
        """The core learns a call's outcome; any call's, in any order."""
        self.core_call_done(self.transit.pop(i % len(self.transit)))

    @precondition(lambda self: self.started and self.handled)
    @rule(i=PICK)
    def deliver_again(self, i: int) -> None:
        """A reply handled before comes again (a duplicate, possibly of an old generation)."""
        call, reply = self.handled[i % len(self.handled)]
        out: list[Delivery] = []
        self.core_replies(call.actor, call, reply, out)
        out += self.fail_queued_of_failed(call.actor)
        self.flush(out)

    @precondition(lambda self: self.started and any(self.placing))
    @rule(a=PICK)
    def place(self, a: int) -> None:
        busy = [i for i, p in enumerate(self.placing) if p]
        self.core_place_step(busy[a % len(busy)])

    @precondition(lambda self: self.started and self.KILLS)
    @rule(a=PICK)
    def kill_actor(self, a: int) -> None:
        self.kill(a % len(self.actors))

    @precondition(lambda self: self.started)
    @rule(a=PICK)
    def watchdog(self, a: int) -> None:
        """``Core._watch``: a health check sees the actor's current incarnation."""
        a %= len(self.actors)
        known = self.known[a]
        if self.placing[a]:
            return
        if known is None:
            if self.needs_placing(a):
                self.core_place_later(a)  # a safety net: nothing may stay unplaced
        elif self.actors[a].incarnation != known:
            out: list[Delivery] = []
            self.core_lost(a, known, out)
            self.flush(out)

    @precondition(
        lambda self: (
            self.started
            and self.CALL_FAULTS
            and any(isinstance(m, RunMsg) for x in self.actors for m in x.mailbox)
        )
    )
    @rule(i=PICK)
    def fail_call_actor_side(self, i: int) -> None:
        """A call's arguments do not load on the actor: it fails without running."""
        msgs = [(x, m) for x in self.actors for m in x.mailbox if isinstance(m, RunMsg)]
        if self.AVOID_CORE_GAPS:
            # Only a call with new items can fail so (a lone replay or barrier carries none).
            msgs = [(x, m) for x, m in msgs if len(m.wires) > 1 or m.wires[0].kind == WORK]
            if not msgs:
                return
        actor, msg = msgs[i % len(msgs)]
        actor.mailbox.remove(msg)
        self.unrun.update((w.shard_id, w.gen, w.seq) for w in msg.wires)
        self.transit.append(Outcome(msg.call, None, ACTOR_SIDE))

    @precondition(
        lambda self: self.started and self.CALL_FAULTS and any(o.reply for o in self.transit)
    )
    @rule(i=PICK)
    def fail_call_driver_side(self, i: int) -> None:
        """A call ran, but its reply does not load on the driver."""
        replied = [o for o in self.transit if o.reply is not None]
        if self.AVOID_CORE_GAPS:
            # Per-item pickled outputs always load (and the actor would pickle them twice).
            replied = [o for o in replied if not o.pickled]
            if not replied:
                return
        o = replied[i % len(replied)]
        o.reply, o.exc = None, DRIVER_SIDE

    @precondition(lambda self: self.started and any(f.replies is None for f in self.fetches))
    @rule(i=PICK)
    def answer_fetch(self, i: int) -> None:
        """``ShardActor.replies``: the replies it still keeps, each output pickled."""
        waiting = [f for f in self.fetches if f.replies is None]
        self.actor_replies(waiting[i % len(waiting)])

    @precondition(lambda self: self.started and any(f.replies is not None for f in self.fetches))
    @rule(i=PICK)
    def fetch_done(self, i: int) -> None:
        done = [f for f in self.fetches if f.replies is not None]
        f = done[i % len(done)]
        self.fetches.remove(f)
        self.core_fetch_done(f)

    @precondition(lambda self: self.started and self.SNAP_FAULTS and not self.draining)
    @rule(s=PICK)
    def break_snapshot(self, s: int) -> None:
        """The next snapshot barrier of a shard fails."""
        self.snapshot_faults[s % self.n_shards] += 1

    # --- invariants -----------------------------------------------------------------------

    @invariant()
    def consistent(self) -> None:
        if self.started:
            self.check()

    def log_bound(self) -> int:
        ckpt = self.CKPT or 0
        return ckpt + MAX_SNAPSHOT_FAILURES * ckpt + self.max_inflight

    def check(self, states: bool = True) -> None:
        ledger, dispatch = self.ledger, self.dispatch
        live = [{id(b) for c in self.calls[a] for b in c.batches} for a in range(len(self.actors))]
        for f in self.fetches:  # answered, but only through Core._fetch_replies
            live[f.call.actor].update(id(b) for b in f.call.batches)
        for sid, book in enumerate(ledger.books):
            assert (sid in ledger.outboxed) == bool(book.outbox), sid
            assert dispatch.queued[sid] == sum(len(s) for s in dispatch.queues[sid])
            if book.failed is not None:
                assert not (book.inflight or book.outbox or book.log)
                # Its queued items end when its actor's placing loop gets a reply.
                assert not dispatch.queued[sid] or self.placing[book.actor]
                continue
            if not book.placed:
                assert self.placing[book.actor], f"shard {sid} unplaced, nobody placing it"
            for seq, b in book.inflight.items():
                assert b.seq == seq and b.gen == book.gen and seq < book.next_seq
                assert id(b) in live[book.actor], f"batch {sid}/{seq} in flight in no call"
            # The outbox goes out in order: a batch sent before an earlier one would hold
            # its call (and, at max_inflight, the actor) until the earlier one comes.
            out_seqs = [b.seq for b in book.outbox]
            assert out_seqs == sorted(out_seqs), (sid, out_seqs)
            assert all(b.gen == book.gen and b.seq < book.next_seq for b in book.outbox)
            every = [*book.inflight, *book.log, *out_seqs]
            assert len(set(every)) == len(every), (sid, every)
            assert all(b.kind == REPLAY for b in book.log.values())
            assert len(book.log) <= self.log_bound(), (sid, len(book.log), self.log_bound())
            assert not self.STATEFUL or self.CKPT is not None or not book.log
        assert dispatch.pull_queued == sum(len(s) for s in dispatch.pull)
        for a, slot in enumerate(dispatch.actors):
            assert slot.inflight == len(self.calls[a]) <= self.max_inflight
            assert slot.outstanding >= 0, (a, slot.outstanding)
            assert slot.alone == any(c.alone for c in self.calls[a])
            assert not slot.alone or slot.inflight == 1
        if states:
            self.check_states(final=False)

    def check_states(self, final: bool) -> None:
        """Each live shard's state is its successful items, each once, keyed ones in order.

        An output's ordinal is the item's place in the state it was applied to; every later
        generation must rebuild the same history, so it stays the item's place for good.
        """
        for sid, book in enumerate(self.ledger.books):
            done = [p for p in self.items_of[sid] if self.results.get(p, (False, None))[0]]
            if self.STATEFUL:
                ords = [self.ordinal[p] for p in done if p not in self.keyless]
                assert ords == sorted(set(ords)), f"shard {sid}: outputs out of order"
            if book.failed is not None or not self.STATEFUL:
                continue
            h = self.actors[book.actor].hosted.get(sid)
            if h is None or h.gen != book.gen:
                assert not final, f"shard {sid} not hosted at the end"
                continue
            state = h.state
            assert len(set(state)) == len(state), f"shard {sid}: an item applied twice"
            keyed = [p for p in state if p not in self.keyless]
            assert keyed == sorted(keyed), f"shard {sid}: keyed items out of order"
            for p in state:
                assert self.shard_of[p] == sid and self.kinds[p] == OK
                assert self.results.get(p, (True, None))[0], f"{p} failed yet is in the state"
            for p in done:
                n = self.ordinal[p]
                if n <= len(state):
                    assert state[n - 1] == p, f"shard {sid}: item {p} not at {n}"
            if final:
                assert sorted(state) == sorted(done), (
                    f"shard {sid}: state {state} != delivered {done}"
                )
                assert sorted(self.ordinal[p] for p in done) == list(range(1, len(done) + 1))

    # --- teardown: drain to quiescence, then the final checks ------------------------------------

    def teardown(self) -> None:
        if not self.started:
            return
        self.draining = True
        for _ in range(100_000):
            if self.transit:
                self.core_call_done(self.transit.pop(0))
            elif self.fetches:
                f = self.fetches.pop(0)
                if f.replies is None:
                    self.actor_replies(f)
                self.core_fetch_done(f)
            elif any(x.mailbox for x in self.actors):
                self.actor_accept(next(x.index for x in self.actors if x.mailbox))
            elif any(x.ready() for x in self.actors):
                actor = next(x for x in self.actors if x.ready())
                self.actor_run(actor.index, actor.ready()[0])
            elif any(self.placing):
                a = self.placing.index(True)
                self.core_place_step(a)
            else:
                before = self.sends
                for a in range(len(self.actors)):
                    self.core_kick(a)
                    self.watchdog(a)  # an idle death is found by the health check
                if self.sends == before and not any(self.placing):
                    break
            self.check(states=False)  # (the states are checked once, at the end)
        else:
            raise AssertionError("no quiescence")
        self.check_states(final=True)
        missing = [p for p in range(len(self.kinds)) if p not in self.results]
        assert not missing, f"items never ended: {missing}"
        for sid, book in enumerate(self.ledger.books):
            assert book.failed is not None or (book.placed and not book.inflight)
            assert not book.outbox and not self.dispatch.queued[sid]
        assert not self.dispatch.pull
        for slot in self.dispatch.actors:
            assert slot.inflight == 0 and slot.outstanding == 0 and not slot.alone
        for p, kind in enumerate(self.kinds):
            ok, value = self.results[p]
            if kind == POISON:
                assert not ok
                if not (self.KILLS or self.CALL_FAULTS or self.SNAP_FAULTS):
                    assert isinstance(value, PoisonItemError), value
            elif kind == FAIL:
                assert not ok


class StatelessModel(LedgerModel):
    """A plain function: no snapshots, batches in flight at a death just run again."""

    STATEFUL = False
    CKPT = None
    SNAP_FAULTS = False


class NoCheckpointModel(LedgerModel):
    """A ``Shard`` with ``checkpoint_every=None``: a dirty shard dies with its actor."""

    CKPT = None
    SNAP_FAULTS = False


class PoisonModel(LedgerModel):
    """Only poison kills its actor: exactly the poison items fail, with PoisonItemError."""

    KILLS = False
    CALL_FAULTS = False
    SNAP_FAULTS = False
    MAX_POISON = 3


class StatelessPoisonModel(PoisonModel):
    STATEFUL = False
    CKPT = None


_SETTINGS = settings(
    max_examples=250,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

TestStatefulLedger = LedgerModel.TestCase
TestStatefulLedger.settings = _SETTINGS
TestStatelessLedger = StatelessModel.TestCase
TestStatelessLedger.settings = _SETTINGS
TestNoCheckpointLedger = NoCheckpointModel.TestCase
TestNoCheckpointLedger.settings = _SETTINGS
TestPoisonLedger = PoisonModel.TestCase
TestPoisonLedger.settings = _SETTINGS
TestStatelessPoisonLedger = StatelessPoisonModel.TestCase
TestStatelessPoisonLedger.settings = _SETTINGS
