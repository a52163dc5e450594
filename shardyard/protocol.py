"""The typed messages the driver and the shard actors exchange.

A shard lives on an actor as a *generation*: each time the driver places it (at start,
after the actor died, after a failed call), the generation goes up and the shard's batch
sequence numbers start again at 0 from a known state (fresh ``setup``, or a snapshot). A
batch is addressed by ``(shard_id, gen, seq)``; an actor runs the batches of one generation
strictly in ``seq`` order and answers anything addressed to another generation with
:class:`Stale`, so a message from before a placement can never touch the state after it.

Each actor process draws a random *incarnation* id when it starts. Every answer carries
it: a restarted actor (same Ray handle, new process, nothing hosted) is recognised by its
new incarnation, whether it was busy or idle when it died.

NamedTuples on the wire: they pickle as compactly as plain tuples, and every field has a
name in the code.

Example:
    >>> b = WireBatch(shard_id=3, gen=1, seq=0, kind=WORK, items=[1, 2], pickled=False)
    >>> b.kind == WORK, len(b.items)
    (True, 2)
    >>> ItemFailure.capture(0, ValueError("bad")).exception()
    ValueError('bad')
"""

from __future__ import annotations

import io
import pickle
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import repeat
from operator import is_not
from typing import Any, NamedTuple

from ray import ObjectRef, cloudpickle
from ray.actor import ActorHandle

# Ray's handles, which only Ray's serialisation of a reply may pickle (it counts references).
_RAY_HANDLES = (ObjectRef, ActorHandle)

__all__ = [
    "BARRIER",
    "REPLAY",
    "USER_ERRORS",
    "WORK",
    "BarrierReply",
    "BatchReply",
    "CallReply",
    "HandoffReply",
    "HoldsRayRefs",
    "HostReply",
    "HostRequest",
    "ItemFailure",
    "PickledOutputs",
    "ReplyColumns",
    "Stale",
    "WireBatch",
    "WireCall",
    "all_none",
    "load_outputs",
]

# Batch kinds.
WORK = 0  # new items: their outputs are delivered
REPLAY = 1  # items applied before a crash, re-applied after a restore: outputs ignored
BARRIER = 2  # no items: snapshot the shard at this point of its batch order (Flink-style)


@dataclass(frozen=True, slots=True)
class ItemFailure:
    """One failed item of a batch (or a failed setup/restore/snapshot), across processes.

    Attributes:
        position: the item's offset in its batch (0 for whole-shard failures).
        cause: the pickled original exception, ``None`` when it does not pickle.
        traceback: the formatted traceback where it was raised.
    """

    position: int
    cause: bytes | None
    traceback: str

    @classmethod
    def capture(cls, position: int, exc: BaseException) -> ItemFailure:
        """Record ``exc`` (raised for the item at ``position``) with its traceback."""
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        try:
            # cloudpickle: an exception class the user defined in a notebook or script
            # (``__main__``, pickled by value) travels by value, and comes back to the
            # driver as the user's own class.
            blob = cloudpickle.dumps(exc)
            cause: bytes | None = blob
            try:
                pickle.loads(blob)
            except Exception:
                # Pickles but does not load (an __init__ whose arguments differ from
                # .args): send the class, args and attributes, rebuilt without __init__.
                cause = cloudpickle.dumps(_Rebuilt(type(exc), exc.args, dict(vars(exc))))
        except Exception:
            cause = None
        return cls(position, cause, tb)

    def exception(self) -> BaseException | None:
        """The original exception object, or ``None`` when it could not be transported."""
        if self.cause is None:
            return None
        try:
            exc = pickle.loads(self.cause)
            if isinstance(exc, _Rebuilt):
                exc = exc.build()
        except Exception:
            return None
        return exc if isinstance(exc, BaseException) else None


class _Rebuilt(NamedTuple):
    """An exception as its class, ``args`` and attributes (for classes whose pickle does not
    load: ``BaseException`` pickles call ``cls(*args)``, which a custom ``__init__`` may
    refuse)."""

    cls: type[BaseException]
    args: tuple[Any, ...]
    attrs: dict[str, Any]

    def build(self) -> BaseException:
        exc = self.cls.__new__(self.cls)
        exc.args = self.args
        exc.__dict__.update(self.attrs)
        return exc


# What a handler may raise that the actor turns into the item's failure. SystemExit and
# KeyboardInterrupt too: escaping, they would end the actor's event loop thread and leave
# every later call unanswered. (asyncio.CancelledError is the loop's own and passes.)
USER_ERRORS: tuple[type[BaseException], ...] = (Exception, SystemExit, KeyboardInterrupt)


def all_none(values: list[Any]) -> bool:
    """Whether every output is ``None`` (by identity, in C: an output whose ``==`` returns an
    array, as numpy's does, is never compared).

    Example:
        >>> all_none([None, None]), all_none([None, 0]), all_none([])
        (True, False, True)
    """
    return not any(map(is_not, values, repeat(None)))


class WireBatch(NamedTuple):
    """One shard's batch on its way to the actor.

    ``pickled``: return each output pickled on its own (bytes), so an output the driver
    cannot unpickle fails alone instead of failing the whole reply. ``keyless``: no item
    has a key, so a stateless handler may run them concurrently (keyed items run one after
    another, in order, within their shard).
    """

    shard_id: int
    gen: int
    seq: int
    kind: int
    items: Any  # a list or numpy array; unused for a barrier
    pickled: bool
    keyless: bool = False


PACK_MIN_BATCHES = 8  # calls with fewer batches go as a plain list of WireBatch


class WireCall:
    """The batches of one call in columns: one array of all their items and one of their
    headers, instead of a ``WireBatch`` and an array each.

    A call to an actor hosting thousands of shards carries thousands of small batches; as
    a list, each is a tuple and an array for Ray to pickle, ship as a buffer of its own and
    rebuild (tens of microseconds each, on both sides). Packed, the call is three arrays.
    Only calls whose batches all carry 1-D numpy items of one dtype are packed
    (:meth:`pack` returns the list unchanged otherwise); the actor gets each batch's items
    back as a view of the joined array, as before as numpy.

    Example:
        >>> import numpy as np
        >>> wires = [WireBatch(s, 1, 0, WORK, np.arange(s + 1), False) for s in range(8)]
        >>> call = WireCall.pack(wires)
        >>> isinstance(call, WireCall)
        True
        >>> [(b.shard_id, b.items.tolist()) for b in call.unpack()][:3]
        [(0, [0]), (1, [0, 1]), (2, [0, 1, 2])]
    """

    __slots__ = ("heads", "items")

    def __init__(self, heads: Any, items: Any) -> None:
        self.heads = heads  # int64 (n, 7): shard_id, gen, seq, kind, pickled, keyless, end
        self.items = items  # every batch's items, joined in batch order

    @staticmethod
    def pack(wires: list[WireBatch]) -> list[WireBatch] | WireCall:
        """``wires`` as a :class:`WireCall` where they all carry 1-D numpy items of one
        dtype (and are at least ``PACK_MIN_BATCHES``); else ``wires`` itself."""
        if len(wires) < PACK_MIN_BATCHES:
            return wires
        import numpy as np  # the driver's side: numpy is loaded there

        first = wires[0].items
        if type(first) is not np.ndarray or first.ndim != 1 or first.dtype.hasobject:
            return wires  # (a subclass, e.g. a masked array, would lose what it adds)
        dtype = first.dtype
        for w in wires:
            items = w.items
            if type(items) is not np.ndarray or items.ndim != 1 or items.dtype != dtype:
                return wires
        heads = np.empty((len(wires), 7), dtype=np.int64)
        heads[:, :6] = [(*w[:4], w.pickled, w.keyless) for w in wires]
        np.cumsum([len(w.items) for w in wires], out=heads[:, 6])
        return WireCall(heads, np.concatenate([w.items for w in wires]))

    def unpack(self) -> list[WireBatch]:
        """The batches again, each with a view of its items."""
        items, start, out = self.items, 0, []
        for sid, gen, seq, kind, pickled, keyless, end in self.heads.tolist():
            part = items[start:end]
            out.append(WireBatch(sid, gen, seq, kind, part, bool(pickled), bool(keyless)))
            start = end
        return out

    def __len__(self) -> int:
        return len(self.heads)


class BatchReply(NamedTuple):
    """A batch that ran: one output per item (``None`` where it failed) and the failures."""

    shard_id: int
    gen: int
    seq: int
    outputs: Any
    failures: list[ItemFailure]


class PickledOutputs:
    """A batch's outputs as the actor pickled them: what an actor sends for outputs that
    are not plain scalars or a numeric array, which it must pickle anyway to learn that
    they pickle (an unpicklable output would fail the whole call). Sent as is, they are
    pickled once, not twice. Large buffers (numpy arrays) stay out of band, copied once
    when the batch ends: Ray moves them through the object store, and the driver loads
    them without another copy.

    Example:
        >>> p = PickledOutputs.of([{"a": 1}, None])
        >>> len(p), p.load()
        (2, [{'a': 1}, None])
    """

    __slots__ = ("blob", "buffers", "count")

    def __init__(self, blob: bytes, count: int, buffers: list[Any]) -> None:
        self.blob = blob
        self.count = count  # how many outputs (one per item of the batch)
        self.buffers = buffers  # the out-of-band buffers of pickle protocol 5

    @classmethod
    def of(cls, outputs: Any) -> PickledOutputs:
        """``outputs`` pickled as they are now (raises what pickling raises).

        The out-of-band buffers are copies: they would otherwise point into the outputs'
        arrays until Ray ships the reply, and a shard's next batch may change an array its
        state shares with an output meanwhile.

        Raises:
            HoldsRayRefs: an output holds a Ray ``ObjectRef`` or actor handle, which only
                Ray's own serialisation of the reply may pickle (it counts the references
                they hold; pickled anywhere else, their objects stay pinned for the
                process's life).
        """
        buffers: list[Any] = []
        with io.BytesIO() as file:
            _OutputPickler(file, protocol=5, buffer_callback=buffers.append).dump(outputs)
            blob = file.getvalue()
        return cls(blob, len(outputs), [_frozen(b) for b in buffers])

    def load(self) -> Any:
        """The outputs again (raises what unpickling raises)."""
        return cloudpickle.loads(self.blob, buffers=self.buffers)

    def __len__(self) -> int:
        return self.count

    def __reduce__(self) -> tuple[Any, ...]:
        return (PickledOutputs, (self.blob, self.count, self.buffers))


class HoldsRayRefs(Exception):
    """Outputs hold Ray object refs or actor handles: they go to Ray unpickled."""


class _OutputPickler(cloudpickle.Pickler):
    """cloudpickle's pickler that refuses Ray's handles (see :meth:`PickledOutputs.of`)."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, _RAY_HANDLES):
            raise HoldsRayRefs(type(obj).__name__)
        return super().reducer_override(obj)


def _frozen(buffer: pickle.PickleBuffer) -> pickle.PickleBuffer:
    """A copy of ``buffer``'s memory, still out of band (a non-contiguous one as it is)."""
    try:
        return pickle.PickleBuffer(bytearray(buffer.raw()))
    except (BufferError, ValueError):
        return buffer


def load_outputs(replies: Any) -> Any:
    """``replies`` (of a :class:`CallReply`) with every :class:`PickledOutputs` loaded: the
    same object when there is none (raises what unpickling raises).

    Example:
        >>> r = BatchReply(0, 1, 0, PickledOutputs.of([{"a": 1}]), [])
        >>> load_outputs([r])[0].outputs
        [{'a': 1}]
    """
    if type(replies) is not list:
        return replies  # ReplyColumns: plain list outputs only
    loaded = None
    for i, r in enumerate(replies):
        if type(r) is BatchReply and type(r.outputs) is PickledOutputs:
            if loaded is None:
                loaded = list(replies)
            loaded[i] = r._replace(outputs=r.outputs.load())
    return replies if loaded is None else loaded


class BarrierReply(NamedTuple):
    """A snapshot barrier that ran: the frozen state, or why ``snapshot()`` failed."""

    shard_id: int
    gen: int
    seq: int
    state: bytes | None
    failure: ItemFailure | None


class Stale(NamedTuple):
    """A batch the actor did not run: it is addressed to a generation the actor does not host.

    ``reason`` is ``"unhosted"`` when the actor hosts no generation of the shard at all (a
    restarted process), ``"superseded"`` when another generation replaced it.
    """

    shard_id: int
    gen: int
    seq: int
    reason: str


class ReplyColumns:
    """The replies of one call in columns, for a call of many batches that all ran
    without failures and gave list outputs (per-item handlers): one list of every output
    and one of headers, instead of a ``BatchReply`` and a list each. Iterating gives the
    ``BatchReply`` s back.

    Example:
        >>> replies = [BatchReply(s, 1, 0, [s] * s, []) for s in range(8)]
        >>> packed = ReplyColumns.pack(replies)
        >>> isinstance(packed, ReplyColumns), list(packed) == replies
        (True, True)
    """

    __slots__ = ("heads", "outputs")

    def __init__(self, heads: list[int], outputs: list[Any]) -> None:
        self.heads = heads  # shard_id, gen, seq, end of its outputs: four per reply
        self.outputs = outputs  # every reply's outputs, joined in reply order

    @staticmethod
    def pack(replies: list[Any]) -> list[Any] | ReplyColumns:
        """``replies`` as :class:`ReplyColumns` where every one is a ``BatchReply`` with a
        list of outputs and no failures (and they are at least ``PACK_MIN_BATCHES``);
        else ``replies`` itself."""
        if len(replies) < PACK_MIN_BATCHES:
            return replies
        heads: list[int] = []
        outputs: list[Any] = []
        for r in replies:
            if type(r) is not BatchReply or r.failures or type(r.outputs) is not list:
                return replies
            outputs += r.outputs
            heads += (r.shard_id, r.gen, r.seq, len(outputs))
        return ReplyColumns(heads, outputs)

    def __iter__(self) -> Iterator[BatchReply]:
        heads, outputs, start = self.heads, self.outputs, 0
        for i in range(0, len(heads), 4):
            end = heads[i + 3]
            yield BatchReply(heads[i], heads[i + 1], heads[i + 2], outputs[start:end], [])
            start = end

    def __len__(self) -> int:
        return len(self.heads) // 4


class CallReply(NamedTuple):
    """The answer to one ``run`` call: the actor's incarnation, one reply per batch, and the
    seconds the call took in the actor (from its start to its reply: no queueing, no
    transfer), by which the driver sizes the next calls."""

    incarnation: str
    replies: list[BatchReply | BarrierReply | Stale] | ReplyColumns
    took_s: float = 0.0


class HostRequest(NamedTuple):
    """Place generation ``gen`` of a shard on the actor, from ``state`` (``None``: fresh).

    With ``state_arg >= 0`` the state is not in the request: it is the ``host`` call's
    extra argument of that number, an ``ObjectRef`` that Ray resolves in the actor (a
    migrated shard's state goes from actor to actor through the object store, never
    through the driver).
    """

    shard_id: int
    gen: int
    state: bytes | None
    state_arg: int = -1


class HandoffReply(NamedTuple):
    """The answer to a ``handoff`` call (the state itself is the call's second return).

    ``failure`` is set when ``snapshot()`` raised or the generation was not hosted (the
    shard then stays where it was); ``state_bytes`` is the size of the state handed over.
    """

    incarnation: str
    failure: ItemFailure | None
    state_bytes: int = 0


class HostReply(NamedTuple):
    """The answer to a ``host`` call: the incarnation, and the shards whose setup failed."""

    incarnation: str
    failures: dict[int, ItemFailure]
