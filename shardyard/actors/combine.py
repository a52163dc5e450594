"""Combining many partial results with a user's ``combine(a, b)``, in few steps and no copies.

``reduce(combine)`` calls ``combine`` on partials that are live shard state, and users write
it two ways: returning a new value (``operator.add`` on Counters or arrays) or updating its
first argument and returning it (``a.update(b); return a``). A left fold is quadratic for
the first kind (each step copies the growing accumulator); a balanced tree is ``log2(n)``
times the data for both. So :func:`combine_all` makes one private copy of the first partial,
combines the second into it, and looks at what came back: the same object means
``combine`` works in place, and the rest is folded into it (each partial read once);
a new object means a pairwise tree over the rest.

The contract for ``combine``: it may update its *first* argument and return it, or return a
new value; it must not change its second argument.

Example:
    >>> import operator
    >>> combine_all([[1], [2], [3], [4], [5]], operator.add)
    [1, 2, 3, 4, 5]
    >>> live = [{"a": 1}, {"b": 2}]
    >>> combine_all(live, lambda a, b: (a.update(b), a)[1]), live[0]
    ({'a': 1, 'b': 2}, {'a': 1})
"""

from __future__ import annotations

import operator
import pickle
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from ray import cloudpickle

__all__ = ["combine_all", "combine_two", "counters_added", "private_copy"]


def private_copy(value: Any) -> Any:
    """A deep copy through pickle (the fastest general one), so ``combine`` may update it."""
    return pickle.loads(cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))


def _positive_counts(counter: Counter[Any]) -> bool:
    counts = counter.values()
    return not counter or (set(map(type, counts)) == {int} and min(counts) > 0)


def counters_added(parts: Sequence[Any]) -> Counter[Any] | None:
    """``parts[0] + parts[1] + ...`` when they are ``Counter`` s of positive ``int`` counts
    and no key is in two of them, built by ``dict.update`` (in C); else ``None``.

    The common case of a keyed count: each shard counts its own keys, so the partials do
    not overlap, and ``Counter.__add__`` (a Python loop over every key) would give their
    union. Anything else (a shared key, a count that is not a positive int, a subclass)
    gives ``None``, and the caller combines as usual.

    Example:
        >>> counters_added([Counter(a=1), Counter(b=2)])
        Counter({'b': 2, 'a': 1})
        >>> counters_added([Counter(a=1), Counter(a=2)]) is None  # a shared key
        True
    """
    if len(parts) < 2 or any(type(p) is not Counter for p in parts):
        return None
    out: Counter[Any] = Counter()
    for part in parts:
        # A shared key ends it at once (partials of words counted per file share most
        # keys): checked before each part goes in, in C, stopping at the first one.
        if not out.keys().isdisjoint(part) or not _positive_counts(part):
            return None
        dict.update(out, part)
    return out


def combine_two(combine: Callable[[Any, Any], Any], a: Any, b: Any) -> Any:
    """``combine(a, b)``, through :func:`counters_added` where that gives the same.

    Example:
        >>> import operator
        >>> combine_two(operator.add, Counter(a=1), Counter(b=1)) == Counter(a=1, b=1)
        True
    """
    fast = _added(combine, [a, b])
    return combine(a, b) if fast is None else fast


def _added(combine: Callable[[Any, Any], Any], parts: Sequence[Any]) -> Counter[Any] | None:
    """:func:`counters_added` of ``parts`` when ``combine`` is ``operator.add``."""
    return counters_added(parts) if combine is operator.add else None


def combine_all(parts: Sequence[Any], combine: Callable[[Any, Any], Any]) -> Any:
    """``combine`` over ``parts`` in order (associative), never changing one of them.

    Returns ``None`` for no parts, a private copy of the only part for one.
    """
    if not parts:
        return None
    fast = _added(combine, parts)  # a new Counter: private already
    if fast is not None:
        return fast
    acc = private_copy(parts[0])
    if len(parts) == 1:
        return acc
    live = {id(p) for p in parts}

    def owned(value: Any) -> Any:
        # A combine may hand back one of its arguments (``b if not a else ...``): a live
        # partial then becomes the accumulator, so it is copied before anything updates it.
        return private_copy(value) if id(value) in live else value

    out = owned(combine(acc, parts[1]))
    rest = list(parts[2:])
    if out is acc:  # in place: fold the rest into the private accumulator
        for part in rest:
            out = owned(combine(out, part))
        return out
    # A new value each time: a balanced tree, whose combines only see fresh values and
    # partials (never changed: combine returns new values). Order is kept (associativity).
    level = [out, *rest]
    while len(level) > 1:
        nxt = [owned(combine(level[i], level[i + 1])) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return owned(level[0])
