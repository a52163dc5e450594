"""Segments: runs of one shard's items on their way to an actor, and their result routing.

A producer partitions its input into segments, one per shard it touches; the dispatcher
cuts and glues segments into batches of at most ``max_batch_size`` items per shard. A
segment remembers where its results go (its sink, and the positions or futures there),
so outputs flow back to the right place whatever batch carried them.

Example:
    >>> import numpy as np
    >>> seg = Segment(None, np.arange(5), np.arange(10, 15), None)
    >>> head, tail = seg.split(2)
    >>> head.items.tolist(), tail.items.tolist()
    ([10, 11], [12, 13, 14])
    >>> concat_items([head, tail]).tolist()
    [10, 11, 12, 13, 14]
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Picked", "Segment", "concat_items", "owned", "take", "take_items"]


def owned(values: Any) -> Any:
    """``values`` with memory of its own: a numpy view is copied (a ``Picked``'s indices
    too); anything else is returned as it is.

    Example:
        >>> base = np.arange(10)
        >>> owned(base[2:4]).base is None, owned(base) is base
        (True, True)
    """
    if isinstance(values, np.ndarray):
        return values if values.base is None else values.copy()
    if isinstance(values, Picked) and values.index.base is not None:
        return Picked(values.values, values.index.copy())
    return values


def take(values: Any, index: np.ndarray) -> Any:
    """``values[index]`` for arrays; a list of the picked elements for lists."""
    if values is None:
        return None
    if isinstance(values, np.ndarray):
        return values[index]
    if isinstance(values, Picked):
        return Picked(values.values, values.index[index])
    return [values[i] for i in index.tolist()]


class Picked:
    """``values[index]``, read only when asked: the keys of a segment of list input.

    The driver needs a keyed item's key only to name it in an error, so copying every key
    of every segment would be wasted work; a ``Picked`` holds the chunk's keys and the
    segment's indices instead.

    Example:
        >>> k = Picked(["a", "b", "c"], np.array([2, 0]))
        >>> len(k), k[0], k[1:][0]
        (2, 'c', 'a')
    """

    __slots__ = ("index", "values")

    def __init__(self, values: Any, index: np.ndarray) -> None:
        self.values = values
        self.index = index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, at: Any) -> Any:
        if isinstance(at, slice):
            return Picked(self.values, self.index[at])
        return self.values[int(self.index[at])]


@dataclass(slots=True)
class Segment:
    """Items of one shard from one producer, with where their results go.

    Attributes:
        sink: receives the outputs (``Sink`` from :mod:`shardyard.scheduler.sinks`).
        ref: positions in the sink's output (int64 array), or a list of futures.
        items: the items, a numpy array or a list.
        keys: the items' keys (array or list), or ``None`` for keyless work.
        epoch: set by the core on receipt, so ``wait`` can wait for what came before it.
        gathered: its arrays are slices of one array gathered for its producer's whole
            chunk (see :meth:`compacted`); not the user's own input.
    """

    sink: Any
    ref: Any
    items: Any
    keys: Any
    epoch: int = 0  # the core's wait epoch when it received these items
    gathered: bool = False  # views of an array gathered for a whole chunk (compacted())

    def __len__(self) -> int:
        return len(self.items)

    def split(self, n: int) -> tuple[Segment, Segment]:
        """The first ``n`` items and the rest, as two segments (numpy slices are views)."""
        keys, e, g = self.keys, self.epoch, self.gathered
        return (
            Segment(
                self.sink, self.ref[:n], self.items[:n], None if keys is None else keys[:n], e, g
            ),
            Segment(
                self.sink, self.ref[n:], self.items[n:], None if keys is None else keys[n:], e, g
            ),
        )

    def compacted(self) -> Segment:
        """This segment, its arrays owning their memory (see :func:`owned`).

        A keyed producer's segments are slices of one array gathered for its whole chunk
        (``gathered``, see ``ShardPool``); one that is kept longer than the round that sends
        it (queued behind others, or in a replay log) is compacted, so it does not keep the
        chunk alive. Any other segment is returned as it is (a view of the user's own input
        keeps nothing alive that the user does not hold).
        """
        if not self.gathered:
            return self
        return Segment(self.sink, owned(self.ref), owned(self.items), owned(self.keys), self.epoch)

    def select(self, index: np.ndarray) -> Segment:
        """The items at ``index`` (sorted positions within this segment), as a segment."""
        ref = self.ref[index] if isinstance(self.ref, np.ndarray) else take(self.ref, index)
        return Segment(self.sink, ref, take(self.items, index), take(self.keys, index), self.epoch)

    def key_at(self, offset: int) -> Any:
        """The key of the item at ``offset``, as a plain Python value (``None`` if keyless)."""
        if self.keys is None:
            return None
        key = self.keys[offset]
        return key.item() if isinstance(key, np.generic) else key


def concat_items(segments: Sequence[Segment]) -> Any:
    """One batch payload from consecutive segments of one shard.

    All-numpy segments of one dtype and row shape are concatenated into one array
    (zero-copy through Ray's object store); anything else becomes a list.
    """
    if len(segments) == 1:
        return segments[0].items
    parts = [s.items for s in segments]
    if (
        all(isinstance(p, np.ndarray) for p in parts)
        and len({(p.dtype, p.shape[1:]) for p in parts}) == 1
    ):
        return np.concatenate(parts)
    out: list[Any] = []
    for p in parts:
        out.extend(p.tolist() if isinstance(p, np.ndarray) else p)
    return out


def take_items(queue: deque[Segment], room: int) -> list[Segment]:
    """Up to ``room`` items from the front of ``queue``, splitting a segment if needed.

    Example:
        >>> q = deque([Segment(None, np.arange(3), np.arange(3), None)])
        >>> [len(s) for s in take_items(q, 2)], len(q[0])
        ([2], 1)
    """
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
