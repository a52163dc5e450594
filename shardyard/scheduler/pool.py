"""``ShardPool``: the user's entry point to sharded work on Ray.

One pool = shard actors (processes) hosting logical shards, and a driver-side core (an
asyncio loop in a background thread) that partitions, batches and dispatches items. The
blocking methods work from scripts and from inside a running event loop (Jupyter); the
``a``-prefixed twins are for asyncio code. Both go through the same core.

Example:
    >>> from shardyard import ShardPool
    >>> with ShardPool(lambda x: x * 2, num_actors=2) as pool:   # doctest: +SKIP
    ...     pool.map(range(5))
    [0, 2, 4, 6, 8]
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

import numpy as np
import ray
from ray import cloudpickle

from shardyard.actors.handler import as_batch
from shardyard.actors.shard import Shard
from shardyard.actors.shard_actor import remote_shard_actor
from shardyard.cluster import connect
from shardyard.config import PoolConfig
from shardyard.errors import PoolClosedError, SerializationError
from shardyard.scheduler.core import Core
from shardyard.scheduler.futures import ShardFuture
from shardyard.scheduler.partition import Partitioner
from shardyard.scheduler.segments import Segment, take
from shardyard.scheduler.sinks import FutureSink, MapSink
from shardyard.scheduler.stats import ActorStats, PoolStats, ShardStats
from shardyard.sharding import place, strategy

__all__ = ["ShardPool"]

Keys = Iterable[Any] | Callable[[Any], Any] | None


class ShardPool:
    """Shard actors plus a scheduler: keyed, ordered, batched work on Ray.

    Args:
        handler: a plain function (called per item, or per batch with ``batched=True``)
            or a :class:`~shardyard.Shard` subclass (one instance per shard, stateful).
        num_actors: actor processes (default: the cluster's CPUs).
        num_shards: logical shards (default: 8 per actor).
        strategy: key -> shard strategy name (``"jump"``, ``"ring"``, ...).
        config: a :class:`~shardyard.config.PoolConfig`; the keyword arguments above
            override its fields.
        batched: a plain function takes whole batches (numpy arrays for numeric input) and
            returns one output per item.
        address: Ray address for :func:`shardyard.connect` (default: embedded local Ray).
        **overrides: further ``PoolConfig`` fields (``max_batch_size=...``, ...).

    Raises:
        pydantic.ValidationError: a configuration field is invalid (the error names it).
        shardyard.errors.SerializationError: the handler cannot be pickled for Ray.
        TypeError: the handler is neither a callable nor a ``Shard`` subclass.

    Example:
        >>> import numpy as np
        >>> with ShardPool(lambda a: a + 1, batched=True, num_actors=2) as pool:  # doctest: +SKIP
        ...     pool.map(np.arange(4))
        array([1, 2, 3, 4])
    """

    def __init__(
        self,
        handler: type[Shard] | Callable[..., Any],
        *,
        num_actors: int | None = None,
        num_shards: int | None = None,
        strategy: str | None = None,
        config: PoolConfig | None = None,
        batched: bool = False,
        address: str | None = None,
        **overrides: Any,
    ) -> None:
        explicit = {
            k: v
            for k, v in {
                "num_actors": num_actors,
                "num_shards": num_shards,
                "strategy": strategy,
                **overrides,
            }.items()
            if v is not None
        }
        base = config.model_dump() if config is not None else {}
        self.config = PoolConfig.model_validate({**base, **explicit})
        if isinstance(handler, Shard):
            raise TypeError("pass the Shard subclass itself, not an instance: ShardPool(MyShard)")
        if not callable(handler):
            raise TypeError(f"handler must be a function or a Shard subclass, got {handler!r}")
        self._stateful = isinstance(handler, type) and issubclass(handler, Shard)
        try:
            cloudpickle.dumps(handler)
        except Exception as exc:
            raise SerializationError(
                f"the handler {handler!r} cannot be pickled for Ray ({exc}); define it at "
                "module level or avoid capturing locks, sockets or open files"
            ) from exc
        self._handler = handler
        self._batched = batched
        self._address = address
        self._core: Core | None = None  # created on first use (lazy connect)
        self._start_lock = threading.Lock()  # guards starting and closing
        self._closed = False
        self._actors: list[Any] = []  # Ray actor handles, index = actor index
        self._placement: np.ndarray | None = None  # shard id -> actor index
        # Validate the strategy name and options now, not at first use.
        self._probe_strategy = self._build_strategy(self.config.num_shards or 1)

    # --- lifecycle ------------------------------------------------------------------------

    def _build_strategy(self, num_shards: int) -> Any:
        return strategy(self.config.strategy, num_shards, **self.config.strategy_options)

    def _ensure_started(self) -> Core:
        core = self._core
        if core is not None and not self._closed:
            return core
        with self._start_lock:  # one start, whichever thread gets here first
            if self._closed:
                raise PoolClosedError("this ShardPool is closed")
            if self._core is None:
                self._core = self._start()
            return self._core

    def _start(self) -> Core:
        info = connect(self._address)
        cfg = self.config
        num_actors = cfg.num_actors or max(1, info.num_cpus)
        num_shards = cfg.num_shards or 8 * num_actors
        if num_shards < num_actors:
            num_shards = num_actors
        table = place(num_shards, list(range(num_actors)))
        placement = np.array([table[s] for s in range(num_shards)], dtype=np.int64)
        options: dict[str, Any] = {"max_restarts": cfg.max_retries, "max_task_retries": 0}
        if cfg.num_cpus_per_actor is not None:
            options["num_cpus"] = cfg.num_cpus_per_actor
        if cfg.spread:
            options["scheduling_strategy"] = "SPREAD"
        actor_cls = remote_shard_actor(**options)
        self._actors = [
            actor_cls.remote(
                self._handler, self._batched, i, np.flatnonzero(placement == i).tolist()
            )
            for i in range(num_actors)
        ]
        # Surface a failing setup() or constructor now, with its traceback.
        ray.get([a.health.remote() for a in self._actors])
        self._placement = placement
        submit_sink = FutureSink(cfg.max_pending_items)
        core = Core(
            self._actors,
            placement,
            Partitioner(
                self._build_strategy(num_shards),
                placement,
                cfg.max_batch_size,
                cfg.keyless,
                actor_loads=lambda: core.actor_loads(),
            ),
            max_batch_size=cfg.max_batch_size,
            max_batch_wait_s=cfg.max_batch_wait_s,
            max_inflight=cfg.max_inflight_per_actor,
            max_retries=cfg.max_retries,
            stateful=self._stateful,
            checkpoint_every=cfg.checkpoint_every,
            submit_sink=submit_sink,
        )
        self._submit_sink = submit_sink
        return core

    def start(self) -> ShardPool:
        """Connect to Ray and start the actors now instead of at first use."""
        self._ensure_started()
        return self

    @property
    def num_shards(self) -> int:
        """The number of logical shards (starts the pool)."""
        self._ensure_started()
        assert self._placement is not None
        return len(self._placement)

    @property
    def num_actors(self) -> int:
        """The number of shard actors (starts the pool)."""
        self._ensure_started()
        return len(self._actors)

    def shard_of(self, keys: Any) -> np.ndarray:
        """The shard id of each key, as the pool routes them."""
        self._ensure_started()
        return self._build_strategy(self.num_shards).assign(keys)

    def wait(self) -> None:
        """Block until every item submitted before this call has finished.

        Items other threads submit meanwhile are not waited for (``results``, ``reduce``
        and ``close`` wait the same way).
        """
        if self._core is not None:
            self._core.wait_idle()

    def close(self, wait: bool = True) -> None:
        """Finish (``wait=True``) or fail outstanding work, then stop the actors.

        Items still unfinished when the actors stop (all of them with ``wait=False``, or
        those another thread submits meanwhile) fail with ``PoolClosedError``; later
        submissions raise it. Ray itself stays up (the embedded Ray is reused by later pools;
        ``shardyard.disconnect()`` stops it).
        """
        with self._start_lock:
            if self._closed:
                return
            self._closed = True
            core = self._core
        if core is not None:
            if wait:
                core.wait_idle()
            core.stop()
            for a in self._actors:
                ray.kill(a, no_restart=True)

    shutdown = close  # the concurrent.futures.Executor name

    def __enter__(self) -> ShardPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(wait=exc[0] is None)

    async def __aenter__(self) -> ShardPool:
        await asyncio.to_thread(self._ensure_started)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.close, exc[0] is None)

    # --- feeding --------------------------------------------------------------------------

    def _chunks(self, items: Iterable[Any], keys: Keys) -> Iterator[tuple[Any, Any]]:
        """(items, keys) chunks of the input, never materialising an iterator whole."""
        size = self.config.chunk_size
        key_fn = keys if callable(keys) else None
        n_items, n_keys = _length(items), None if key_fn else _length(keys)
        if n_items is not None and n_keys is not None and n_items != n_keys:
            raise ValueError(f"keys has {n_keys} entries for {n_items} items")
        if isinstance(items, np.ndarray):
            key_arr = None if keys is None or key_fn else _sliceable(keys)  # type: ignore[arg-type]
            if key_arr is not None and len(key_arr) != len(items):
                raise ValueError(f"keys has {len(key_arr)} entries for {len(items)} items")
            for lo in range(0, len(items), size):
                view = items[lo : lo + size]
                if key_fn is not None:
                    yield view, [key_fn(x) for x in view.tolist()]
                else:
                    yield view, None if key_arr is None else key_arr[lo : lo + size]
            return
        item_it = iter(items)
        key_it = None if keys is None or key_fn else iter(keys)  # type: ignore[arg-type]
        while True:
            chunk: list[Any] = list(itertools.islice(item_it, size))
            if not chunk:
                if key_it is not None and next(key_it, _END) is not _END:
                    raise ValueError("keys is longer than items")
                return
            if key_fn is not None:
                chunk_keys: Any = [key_fn(x) for x in chunk]
            elif key_it is not None:
                chunk_keys = list(itertools.islice(key_it, len(chunk)))
                if len(chunk_keys) != len(chunk):
                    raise ValueError("keys is shorter than items")
            else:
                chunk_keys = None
            yield as_batch(chunk), chunk_keys

    def _push(self, core: Core, sink: MapSink, base: int, chunk: Any, keys: Any) -> int:
        n = len(chunk)
        groups = core.partitioner.split(n, keys)
        segments: list[tuple[int, Segment]] = []
        for sid, index in groups:
            if isinstance(index, slice):
                positions = np.arange(base + index.start, base + index.stop, dtype=np.int64)
                seg = Segment(sink, positions, chunk[index], None if keys is None else keys[index])
            else:
                seg = Segment(sink, index + base, take(chunk, index), take(keys, index))
            segments.append((sid, seg))
        sink.add(n)
        core.push_segments(segments)
        return n

    def _stream(
        self, items: Iterable[Any], keys: Keys, keep: bool
    ) -> Iterator[tuple[MapSink, list[tuple[np.ndarray, Any]], list[tuple[int, BaseException]]]]:
        """Feed chunks with backpressure; yield pieces of results as they arrive."""
        core = self._ensure_started()
        sink = MapSink(self.config.max_pending_items, keep=keep)
        chunks = self._chunks(items, keys)
        base = 0
        exhausted = False
        while True:
            while not exhausted and sink.has_capacity():
                nxt = next(chunks, None)
                if nxt is None:
                    exhausted = True
                    break
                base += self._push(core, sink, base, *nxt)
            if keep:
                if exhausted:
                    # Wake up now and then so a progress bar moves while the tail finishes.
                    while not sink.wait_all(timeout=0.1):
                        yield sink, [], []
                    yield sink, [], []
                    return
                sink.wait_capacity()
                yield sink, [], []
                continue
            pieces, errors = sink.take(block=True)
            yield sink, pieces, errors
            # The consumer has gone through what it was given before asking for more.
            sink.release(sum(len(p[0]) for p in pieces) + len(errors))
            if exhausted and sink.all_done():
                pieces, errors = sink.take(block=False)
                if pieces or errors:
                    yield sink, pieces, errors
                return

    # --- map --------------------------------------------------------------------------------

    def map(
        self,
        items: Iterable[Any],
        keys: Keys = None,
        *,
        return_exceptions: bool = False,
        progress: bool = False,
    ) -> Any:
        """Process every item; return the outputs in input order.

        Args:
            items: any iterable (a generator is read in chunks, never whole).
            keys: one key per item (iterable), a function ``item -> key``, or ``None``
                for keyless work spread by load.
            return_exceptions: put each failed item's :class:`~shardyard.TaskError` in
                its place instead of raising the first one.
            progress: show a tqdm progress bar (notebook-aware).

        Returns:
            A numpy array when ``items`` is one and the handler returns arrays, else a list.

        Raises:
            shardyard.TaskError: an item failed (the first in input order), after all
                other items finished.

        Example:
            >>> with ShardPool(str.upper, num_actors=2) as pool:    # doctest: +SKIP
            ...     pool.map(["a", "b"], keys=["a", "b"])
            ['A', 'B']
        """
        bar = _progress(progress, items)
        sink: MapSink | None = None
        for sink, _, _ in self._stream(items, keys, keep=True):
            if bar is not None:
                bar.update(sink.finished - bar.n)
        assert sink is not None
        if bar is not None:
            bar.close()
        if isinstance(items, np.ndarray) and sink.submitted == 0:
            return items[:0].copy()  # numpy in, numpy out, also when empty
        return _assemble(sink, isinstance(items, np.ndarray), return_exceptions)

    def map_unordered(
        self,
        items: Iterable[Any],
        keys: Keys = None,
        *,
        return_exceptions: bool = False,
        progress: bool = False,
    ) -> Iterator[Any]:
        """Process every item; yield outputs as they complete (bounded memory).

        Args:
            items: any iterable, read lazily with backpressure.
            keys: as for :meth:`map`.
            return_exceptions: yield failed items' ``TaskError`` in line instead of raising
                the first one after all other outputs were yielded.
            progress: show a tqdm progress bar.

        Example:
            >>> with ShardPool(abs, num_actors=2) as pool:          # doctest: +SKIP
            ...     sorted(pool.map_unordered([-1, 2, -3]))
            [1, 2, 3]
        """
        bar = _progress(progress, items)
        first_error: BaseException | None = None
        for _, pieces, errors in self._stream(items, keys, keep=False):
            for _, outputs in pieces:
                values = outputs.tolist() if isinstance(outputs, np.ndarray) else outputs
                if bar is not None:
                    bar.update(len(values))
                yield from values
            for _, exc in errors:
                if bar is not None:
                    bar.update(1)
                if return_exceptions:
                    yield exc
                elif first_error is None:
                    first_error = exc
        if bar is not None:
            bar.close()
        if first_error is not None:
            raise first_error

    def imap_pieces(
        self, items: Iterable[Any], keys: Keys = None
    ) -> Iterator[tuple[np.ndarray, Any]]:
        """Yield ``(positions, outputs)`` pieces as they complete: the cheapest stream.

        Errors are raised at the end, after every other piece was yielded.
        """
        first_error: BaseException | None = None
        for _, pieces, errors in self._stream(items, keys, keep=False):
            yield from pieces
            if errors and first_error is None:
                first_error = errors[0][1]
        if first_error is not None:
            raise first_error

    # --- submit -----------------------------------------------------------------------------

    def submit(self, item: Any, key: Any = None) -> ShardFuture:
        """Submit one item; return a future (``concurrent.futures.Future``, awaitable).

        Items submitted one by one are micro-batched by the core: while an actor is busy,
        they queue and the next call carries them together.

        Args:
            item: the item.
            key: its key (``None``: keyless, spread by load).

        Returns:
            A :class:`~shardyard.scheduler.futures.ShardFuture`.

        Example:
            >>> with ShardPool(lambda x: x + 1, num_actors=1) as pool:  # doctest: +SKIP
            ...     pool.submit(41, key="k").result()
            42
        """
        core = self._core if self._core is not None and not self._closed else self._ensure_started()
        fut = ShardFuture(key=key, condition=self._submit_sink.condition)
        self._submit_sink.add_one()
        core.push_submit(item, key, fut)
        return fut

    # --- results ----------------------------------------------------------------------------

    def results(self) -> dict[int, Any]:
        """Wait for outstanding work; return ``{shard_id: partial result}`` of every shard.

        Example:
            >>> pool.results()                                      # doctest: +SKIP
            {0: Counter({'a': 2}), 1: Counter({'b': 1})}
        """
        self._ensure_started()
        self.wait()
        merged: dict[int, Any] = {}
        for part in ray.get([a.results.remote() for a in self._actors]):
            merged.update(part)
        return dict(sorted(merged.items()))

    def reduce(self, combine: Callable[[Any, Any], Any]) -> Any:
        """Wait for outstanding work; combine all shards' partial results with ``combine``.

        Each actor first combines its own shards' partials in its process (in parallel
        across actors), so one value per actor crosses the network; those are then combined
        pairwise in Ray tasks, the last pair on the driver.

        Args:
            combine: an associative function of two partials, e.g. ``operator.add``.

        Example:
            >>> import operator
            >>> pool.reduce(operator.add)                           # doctest: +SKIP
            Counter({'a': 2, 'b': 1})
        """
        self._ensure_started()
        self.wait()
        refs = [a.reduce_local.remote(combine) for a in self._actors]
        remote_combine: Any = ray.remote(num_cpus=0)(_apply2)
        while len(refs) > 2:
            pairs = [refs[i : i + 2] for i in range(0, len(refs), 2)]
            refs = [remote_combine.remote(combine, *p) if len(p) == 2 else p[0] for p in pairs]
        values = ray.get(refs)
        return values[0] if len(values) == 1 else combine(values[0], values[1])

    def stats(self, timeout: float = 10.0) -> PoolStats:
        """Per-shard and per-actor counters, from the driver and the actors' control group.

        Actors answer from their control concurrency group, so this works while they are
        busy; an actor that does not answer within ``timeout`` shows ``pid=None``.
        """
        driver = self._ensure_started().stats()
        remote: list[dict[str, Any] | None] = []
        for a in self._actors:
            try:
                remote.append(ray.get(a.stats.remote(), timeout=timeout))
            except Exception:
                remote.append(None)
        busy: dict[int, float] = {}
        for r in remote:
            for sid, s in (r or {}).get("shards", {}).items():
                busy[int(sid)] = s["busy_s"]
        shards = [
            ShardStats(
                shard_id=s["shard_id"],
                actor=s["actor"],
                items=s["items"],
                batches=s["batches"],
                queue_depth=s["queued"] + s["in_flight"],
                errors=s["errors"],
                busy_s=busy.get(s["shard_id"], 0.0),
            )
            for s in driver["shards"]
        ]
        actors = []
        for a, r in zip(driver["actors"], remote, strict=True):
            processed = sum(s["items"] for s in r["shards"].values()) if r else 0
            actors.append(
                ActorStats(
                    actor=a["actor"],
                    pid=r["pid"] if r else None,
                    node_id=r["node_id"] if r else None,
                    shards=a["shards"],
                    in_flight_calls=a["in_flight_calls"],
                    outstanding=a["outstanding"],
                    items=processed,
                    restarts=a["restarts"],
                )
            )
        return PoolStats(shards=shards, actors=actors, keyless_queued=driver["pull_queued"])

    # --- asyncio twins ------------------------------------------------------------------------

    async def amap(self, items: Iterable[Any], keys: Keys = None, **kwargs: Any) -> Any:
        """``await`` twin of :meth:`map` (the event loop stays free meanwhile)."""
        return await asyncio.to_thread(self.map, items, keys, **kwargs)

    async def amap_unordered(
        self, items: Iterable[Any], keys: Keys = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        """``async for`` twin of :meth:`map_unordered`; results arrive in pieces.

        Example:
            >>> async for y in pool.amap_unordered(range(3)):       # doctest: +SKIP
            ...     print(y)
        """
        pieces = self.imap_pieces(items, keys)
        done = object()
        while True:
            piece = await asyncio.to_thread(next, pieces, done)
            if piece is done:
                return
            values = piece[1]  # type: ignore[index]
            for value in values.tolist() if isinstance(values, np.ndarray) else values:
                yield value

    def asubmit(self, item: Any, key: Any = None) -> asyncio.Future[Any]:
        """Submit one item from asyncio code; return an ``asyncio.Future`` of the running loop.

        The futures are resolved a batch at a time on their loop, so ``asyncio.gather`` over
        thousands of them stays cheap (``gather`` over ``submit``'s futures must wrap each in a
        task). Never blocks the loop: ``max_pending_items`` does not apply here.

        Example:
            >>> async def main(pool):                               # doctest: +SKIP
            ...     return await asyncio.gather(*(pool.asubmit(i, key=i) for i in range(3)))
        """
        core = self._core if self._core is not None and not self._closed else self._ensure_started()
        fut = asyncio.get_running_loop().create_future()
        self._submit_sink.add_one(block=False)
        core.push_submit(item, key, fut)
        return fut

    async def aresults(self) -> dict[int, Any]:
        """``await`` twin of :meth:`results`."""
        return await asyncio.to_thread(self.results)

    async def areduce(self, combine: Callable[[Any, Any], Any]) -> Any:
        """``await`` twin of :meth:`reduce`."""
        return await asyncio.to_thread(self.reduce, combine)


_END = object()  # end-of-iterator marker


def _length(x: Any) -> int | None:
    """``len(x)`` for sized inputs, ``None`` for iterators and ``None`` itself."""
    return len(x) if x is not None and hasattr(x, "__len__") else None


def _apply2(fn: Callable[[Any, Any], Any], x: Any, y: Any) -> Any:
    return fn(x, y)


def _sliceable(keys: Iterable[Any]) -> Any:
    return keys if isinstance(keys, np.ndarray | list | tuple) else list(keys)


def _progress(enabled: bool, items: Iterable[Any]) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    total = len(items) if hasattr(items, "__len__") else None  # type: ignore[arg-type]
    return tqdm(total=total, unit="item")


def _assemble(sink: MapSink, numpy_in: bool, return_exceptions: bool) -> Any:
    """Outputs in input order from the sink's pieces."""
    n = sink.submitted
    if sink.errors and not return_exceptions:
        raise min(sink.errors, key=lambda e: e[0])[1]
    pieces = list(sink.pieces)
    arrays = [o for _, o in pieces if isinstance(o, np.ndarray)]
    if numpy_in and not sink.errors and pieces and len(arrays) == len(pieces):
        first = arrays[0]
        if all(a.dtype == first.dtype and a.shape[1:] == first.shape[1:] for a in arrays):
            out = np.empty((n, *first.shape[1:]), dtype=first.dtype)
            for positions, outputs in pieces:
                out[positions] = outputs
            return out
    result: list[Any] = [None] * n
    for positions, outputs in pieces:
        values = outputs.tolist() if isinstance(outputs, np.ndarray) else outputs
        for i, v in zip(positions.tolist(), values, strict=True):
            result[i] = v
    for pos, exc in sink.errors:
        result[pos] = exc
    return result
