"""Running the user's code on one shard's batch, and capturing what went wrong.

Three kinds of handler reach an actor:

* a plain function called per item (``ShardPool(fn)``): each item runs exactly once, and a
  failing item fails alone (the items before and after it keep their outputs);
* a plain function over a whole batch (``ShardPool(fn, batched=True)``): it must return one
  output per item; when it raises, the batch is re-run item by item (the function is
  stateless, so that is safe) to pin the failure on the items that cause it;
* a :class:`~shardyard.actors.shard.Shard` instance, whose ``process`` runs the batch; when
  it overrides only ``process_item``, items run exactly once each, as for a per-item function
  (never re-run: that would apply them to the shard's state twice).

Errors travel as :class:`ItemFailure` records: position in the batch, the pickled original
exception (when it pickles) and the formatted traceback.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias, TypeGuard

from ray import cloudpickle

from shardyard.actors.concurrency import Runner
from shardyard.actors.shard import Shard
from shardyard.protocol import USER_ERRORS, HoldsRayRefs, ItemFailure, PickledOutputs

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "BATCH_FORMATS",
    "ItemFailure",
    "ensure_picklable",
    "format_batch",
    "pickle_each",
    "run_batch",
]

# What a batch handler (``batched=True``) or ``Shard.process`` receives:
# "input": the type the items came in (a list for a list or a generator, an array for an
# array); "list": always a list; "numpy": always an array (``np.asarray`` of a list).
BATCH_FORMATS = ("input", "list", "numpy")


Outputs: TypeAlias = "list[Any] | np.ndarray"
BatchResult: TypeAlias = "tuple[Outputs, list[ItemFailure]]"


def _is_array(value: Any) -> TypeGuard[np.ndarray]:
    # numpy is imported here only when a batch needs it: an actor whose items are plain
    # Python values never loads it (tens of MB per process). Without numpy loaded, nothing
    # can be an array.
    np_ = sys.modules.get("numpy")
    return np_ is not None and isinstance(value, np_.ndarray)


def format_batch(batch: Any, batch_format: str) -> Any:
    """``batch`` as a batch handler asked for it (``batch_format``, see ``BATCH_FORMATS``).

    Example:
        >>> import numpy as np
        >>> format_batch([1, 2], "input"), format_batch(np.arange(2), "list")
        ([1, 2], [0, 1])
        >>> format_batch([1, 2], "numpy").dtype.kind
        'i'
    """
    if batch_format == "list":
        return batch.tolist() if _is_array(batch) else batch
    if batch_format == "numpy" and not _is_array(batch):
        import numpy as np  # the handler asked for arrays: numpy is needed now

        return np.asarray(batch)
    return batch


def _as_items(batch: Any) -> list[Any]:
    # Per-item Python code is faster on Python scalars than on numpy scalars.
    return batch.tolist() if _is_array(batch) else list(batch)


def _check_length(out: Any, n: int, who: str) -> Outputs:
    if out is None:
        return [None] * n
    if _is_array(out):
        if out.ndim == 0 or len(out) != n:
            raise ValueError(f"{who} returned an array of shape {out.shape} for {n} items")
        return out
    if not isinstance(out, Sequence) or isinstance(out, str | bytes):
        raise TypeError(f"{who} must return one output per item (a sequence), got {type(out)}")
    if len(out) != n:
        raise ValueError(f"{who} returned {len(out)} outputs for {n} items")
    return list(out)


def _batched(fn: Callable[[Any], Any], batch: Any) -> BatchResult:
    n = len(batch)
    try:
        return _check_length(fn(batch), n, "batched handler"), []
    except USER_ERRORS:
        if n == 1:
            raise
    # Stateless, so re-running item by item is safe and names the failing items.
    out: list[Any] = []
    failures: list[ItemFailure] = []
    for pos in range(n):
        try:
            one = _check_length(fn(batch[pos : pos + 1]), 1, "batched handler")
            out.append(one[0])
        except USER_ERRORS as exc:
            out.append(None)
            failures.append(ItemFailure.capture(pos, exc))
    return out, failures


# Outputs of these exact types always pickle: a list of them needs no trial pickling.
_ALWAYS_PICKLE = frozenset({int, float, str, bytes, bool, type(None)})


def ensure_picklable(
    outputs: Outputs, failures: list[ItemFailure]
) -> tuple[Outputs | PickledOutputs, list[ItemFailure]]:
    """Turn outputs that cannot be pickled into failures of their items.

    An unpicklable output would otherwise fail the whole Ray call when Ray serialises the
    reply, taking the other shards' batches of that call with it (although they ran).
    Numeric arrays and lists of plain scalars always pickle, and go as they are; other
    lists and object arrays are pickled here, to know, and go pickled
    (:class:`~shardyard.protocol.PickledOutputs`: pickled once, not again by Ray); item by
    item only when the whole fails.

    Example:
        >>> ensure_picklable([1, "a", None], [])
        ([1, 'a', None], [])
        >>> out, _ = ensure_picklable([{"a": 1}], [])
        >>> out.load()
        [{'a': 1}]
        >>> import threading
        >>> out, failures = ensure_picklable([1, threading.Lock()], [])
        >>> out[0], out[1] is None, [f.position for f in failures]
        (1, True, [1])
    """
    if _is_array(outputs) and outputs.dtype != object:
        return outputs, failures
    if isinstance(outputs, list) and set(map(type, outputs)) <= _ALWAYS_PICKLE:
        return outputs, failures  # plain scalars (or nothing, from a process_item): in C
    try:
        return PickledOutputs.of(outputs), failures
    except HoldsRayRefs:
        return outputs, failures  # Ray pickles them (and counts their references) itself
    except Exception:
        pass
    blobs, all_failures = pickle_each(outputs, failures)
    fixed = [v if blob is not None else None for v, blob in zip(outputs, blobs, strict=True)]
    return fixed, all_failures


def pickle_each(
    outputs: Outputs, failures: list[ItemFailure]
) -> tuple[list[Any], list[ItemFailure]]:
    """Each output pickled on its own (``None`` for failed items), so they load one by one.

    An output that does not pickle becomes a failure of its item.

    Example:
        >>> blobs, failures = pickle_each([1, lambda: 0], [])
        >>> len(blobs), failures
        (2, [])
    """
    failed = {f.position for f in failures}
    out: list[Any] = []
    extra: list[ItemFailure] = []
    for pos, value in enumerate(outputs.tolist() if _is_array(outputs) else outputs):
        if pos in failed:
            out.append(None)
            continue
        try:
            out.append(cloudpickle.dumps(value))
        except USER_ERRORS as exc:
            out.append(None)
            err = TypeError(f"the handler's output cannot be pickled: {exc}")
            extra.append(ItemFailure.capture(pos, err))
    return out, sorted([*failures, *extra], key=lambda f: f.position)


async def run_batch(
    handler: Callable[[Any], Any] | Shard,
    batched: bool,
    batch: Any,
    batch_format: str = "input",
    runner: Runner | None = None,
    concurrent_items: bool = False,
) -> BatchResult:
    """Run ``handler`` on ``batch``; never raises for the user's errors.

    Args:
        handler: a per-item function, a batch function, or a ``Shard`` instance.
        batched: whether a plain function takes the whole batch.
        batch: the shard's items (numpy array or list).
        batch_format: what a batch handler or ``Shard.process`` receives: ``"input"`` (as
            the items came: a list stays a list), ``"list"`` or ``"numpy"``.
        runner: the actor's :class:`~shardyard.actors.concurrency.Runner`, which runs
            blocking handlers in threads and the items of a stateless per-item function
            concurrently; ``None``: a runner of ``max_concurrency=1``, which runs every
            call here, one after another.
        concurrent_items: the items are keyless, so a stateless per-item function may run
            them at the same time; keyed items run one after another (their order per key
            is kept, as a ``Shard``'s always is).

    Returns:
        ``(outputs, failures)``: one output per item (``None`` where it failed) and the
        failures.
    """
    if runner is None:
        runner = Runner(max_concurrency=1)  # every call here, one after another
    return await _run_batch_with(runner, handler, batched, batch, batch_format, concurrent_items)


async def _run_batch_with(
    runner: Runner,
    handler: Callable[[Any], Any] | Shard,
    batched: bool,
    batch: Any,
    batch_format: str,
    concurrent_items: bool,
) -> BatchResult:
    """:func:`run_batch` through ``runner``: the same calls, each where the runner says.

    A ``Shard``'s items never overlap (its state); a stateless per-item function's keyless
    items may (``concurrent_items``), its keyed ones keep their order.
    """
    n = len(batch)
    try:
        if isinstance(handler, Shard):
            if type(handler).process is Shard.process:
                item_fn = handler.process_item
                if inspect.iscoroutinefunction(item_fn):
                    return await runner.per_item_async(item_fn, _as_items(batch), False)
                return await runner.per_item(item_fn, _as_items(batch), False)
            name = f"{type(handler).__name__}.process"
            if inspect.iscoroutinefunction(handler.process):
                out = await runner.bounded(handler.process(format_batch(batch, batch_format)))
            else:
                process = handler.process
                out = await runner.call(lambda: process(format_batch(batch, batch_format)))
                if inspect.isawaitable(out):
                    out = await runner.bounded(out)
            return _check_length(out, n, name), []
        if inspect.iscoroutinefunction(handler):
            if batched:
                out = await runner.bounded(handler(format_batch(batch, batch_format)))
                return _check_length(out, n, "batched handler"), []
            return await runner.per_item_async(handler, _as_items(batch), concurrent_items)
        if batched:
            fn = handler
            return await runner.call(lambda: _batched(fn, format_batch(batch, batch_format)))
        return await runner.per_item(handler, _as_items(batch), concurrent_items)
    except USER_ERRORS as exc:
        return _whole_batch_failed(n, exc)


def _whole_batch_failed(n: int, exc: BaseException) -> BatchResult:
    # A whole-batch failure: every item of the batch carries the same cause.
    failure = ItemFailure.capture(0, exc)
    return [None] * n, [ItemFailure(p, failure.cause, failure.traceback) for p in range(n)]
