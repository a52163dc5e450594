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

import pickle
from collections.abc import Callable, Sequence
from typing import Any

from ray import cloudpickle

__all__ = ["combine_all", "private_copy"]


def private_copy(value: Any) -> Any:
    """A deep copy through pickle (the fastest general one), so ``combine`` may update it."""
    return pickle.loads(cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))


def combine_all(parts: Sequence[Any], combine: Callable[[Any, Any], Any]) -> Any:
    """``combine`` over ``parts`` in order (associative), never changing one of them.

    Returns ``None`` for no parts, a private copy of the only part for one.
    """
    if not parts:
        return None
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
