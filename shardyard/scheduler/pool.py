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
import collections
import concurrent.futures
import contextlib
import functools
import itertools
import operator
import threading
import time
import types
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from typing import Any, cast

import numpy as np
import pydantic
import ray
from ray import cloudpickle
from ray.exceptions import ActorUnavailableError, RayActorError

from shardyard.actors.combine import combine_two
from shardyard.actors.shard import Shard
from shardyard.actors.shard_actor import remote_shard_actor
from shardyard.actors.shared import check_shared
from shardyard.cluster import connect, warm
from shardyard.config import PoolConfig
from shardyard.errors import (
    ConfigError,
    InputError,
    PoolClosedError,
    SerializationError,
    StartTimeoutError,
    UnknownStrategyError,
    UnsupportedKeyError,
)
from shardyard.notebook import current_cell, in_jupyter_kernel
from shardyard.protocol import ItemFailure, all_none
from shardyard.scheduler import lifecycle
from shardyard.scheduler.autoscale import Autoscaler
from shardyard.scheduler.core import Core, kill_quietly
from shardyard.scheduler.futures import ShardFuture
from shardyard.scheduler.interrupts import Interrupted, SigintGuard
from shardyard.scheduler.nodes import actor_demand, affinity, choose_nodes, fitting_nodes
from shardyard.scheduler.partition import Partitioner, Runs
from shardyard.scheduler.scaling import check_scale, plan_scale
from shardyard.scheduler.segments import Picked, Segment, take
from shardyard.scheduler.sinks import FutureSink, MapSink
from shardyard.scheduler.stats import (
    ActorStats,
    PlacementChange,
    PoolStats,
    ScaleReport,
    ShardStats,
)
from shardyard.sharding import place, strategy
from shardyard.state import Checkpoint, IncompleteCheckpointError, StateStore, open_store
from shardyard.streams.base import Sink, Source
from shardyard.streams.job import RunReport

__all__ = ["ShardPool"]

Keys = Iterable[Any] | Callable[[Any], Any] | None


CHUNK_ITEMS_PER_SHARD = 64  # a chunk's items per shard, when chunk_size is left at its default
CHUNK_ITEMS_PER_ACTOR = 8192  # and per actor: the default chunk_size of a 2-actor pool
PROBE_AHEAD_ITEMS = 4096  # a first chunk this long hands its first item (the probe) over first
ONE_SCATTER_BYTES = 1 << 25  # map outputs up to this size are put in place in one scatter


class _Unset:
    """The default of keyword arguments that fall back to the config when left out."""

    def __repr__(self) -> str:
        return "<from config>"


_UNSET: Any = _Unset()


class ShardPool:
    """Shard actors plus a scheduler: keyed, ordered, batched work on Ray.

    Args:
        handler: a plain function (called per item, or per batch with ``batched=True``)
            or a :class:`~shardyard.Shard` subclass (one instance per shard, stateful).
        num_actors: actor processes (``None``: the cluster's CPUs; left out: the config's).
        num_shards: logical shards (``None``: 8 per actor; left out: the config's).
        strategy: key -> shard strategy name (``"jump"``, ``"ring"``, ...; ``None`` or left
            out: the config's).
        config: a :class:`~shardyard.config.PoolConfig`; the keyword arguments above
            override its fields (an explicit ``None`` too).
        batched: a plain function takes whole batches and returns one output per item. A
            batch is a list when the items came as a list or an iterator, an array when
            they came as a numpy array (``batch_format="list"`` or ``"numpy"`` fixes it).
        address: Ray address for :func:`shardyard.connect` (default: embedded local Ray).
        shared: large read-only values every shard reads, ``{name: value}``: put into Ray's
            object store once when the pool starts and read in the handler as
            ``shardyard.shared[name]`` (``self.shared[name]`` in a ``Shard``); numpy arrays
            are mapped zero-copy and read-only (see :mod:`shardyard.actors.shared`).
        **overrides: further ``PoolConfig`` fields (``max_batch_size=...``,
            ``checkpoint_every=None``, ``memo_size=...``), taken as given.

    Raises:
        pydantic.ValidationError: a configuration field is invalid (the error names it).
        shardyard.errors.SerializationError: the handler, or a ``shared`` value (named),
            cannot be pickled for Ray.
        TypeError: the handler is neither a callable nor a ``Shard`` subclass, or
            ``shared`` is not a dict with str names.
        shardyard.errors.UnknownStrategyError: no strategy has that name.
        shardyard.errors.ConfigError: a ``Shard`` subclass with a strategy that may send one
            key to two shards (``"bounded"``), or strategy options that do not fit an explicit
            ``num_shards`` (with a derived ``num_shards`` this is raised at start), or
            ``memo_size`` with a ``Shard`` subclass or ``batched=True``.

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
        num_actors: int | None = _UNSET,
        num_shards: int | None = _UNSET,
        strategy: str | None = None,
        config: PoolConfig | None = None,
        batched: bool = False,
        address: str | None = None,
        shared: Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> None:
        # An explicit None is a value (num_actors=None: one per CPU; checkpoint_every=None:
        # no snapshots), so only the parameters left out fall back to ``config``. ``strategy``
        # cannot be None, so there None means "the config's".
        explicit = dict(overrides)
        if num_actors is not _UNSET:
            explicit["num_actors"] = num_actors
        if num_shards is not _UNSET:
            explicit["num_shards"] = num_shards
        if strategy is not None:
            explicit["strategy"] = strategy
        base = config.model_dump() if config is not None else {}
        self.config = PoolConfig.model_validate({**base, **explicit})
        if isinstance(handler, Shard):
            raise TypeError("pass the Shard subclass itself, not an instance: ShardPool(MyShard)")
        if not callable(handler):
            raise TypeError(f"handler must be a function or a Shard subclass, got {handler!r}")
        self._stateful = isinstance(handler, type) and issubclass(handler, Shard)
        if self.config.memo_size and (self._stateful or batched):
            raise ConfigError(
                f"memo_size={self.config.memo_size} memoises a pure per-item function; "
                f"{'a Shard subclass' if self._stateful else 'batched=True'} cannot use it "
                "(leave memo_size at 0)"
            )
        # name -> value, validated now; put into the object store at start.
        self._shared: dict[str, Any] = {} if shared is None else check_shared(shared)
        # The store's copies, owned by this driver and held for the pool's life: a process
        # Ray restarts gets them again as its constructor arguments.
        self._shared_refs: list[ray.ObjectRef[Any]] = []
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
        self._closed = False  # no more work is taken
        self._released = False  # the actors were stopped (close is done)
        self._actors: list[Any] = []  # Ray actor handles, index = actor index
        self._placement: np.ndarray | None = None  # shard id -> actor index at start
        self._actor_cls: Any = None  # the remote ShardActor class (to start more actors)
        self._actor_node: dict[int, str] = {}  # actor index -> the node it was started on
        self._store: StateStore | None = None  # opened at start when config.store is set
        self._restored_from: Checkpoint | None = None
        # The checkpoint the last run() ended at (-1: no run yet; None: a run failed and
        # left the shards past its last checkpoint). See shardyard.streams.job.
        self._job_checkpoint: int | None = -1
        self._scale_lock = threading.Lock()  # one scale at a time
        self._scaling: concurrent.futures.Future[Any] | None = None  # the scale under way
        self._autoscaler: Autoscaler | None = None
        # Validate the strategy now, not at first use: its name and options, its fit to
        # num_shards when that is set (else at start), and key affinity for a Shard.
        self._probe_strategy = _check_strategy(self.config, self._stateful)
        # Released when closed, when collected unclosed, or when its notebook cell runs again.
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._close_reason = "it was closed"
        self._cell = current_cell()
        lifecycle.replace_cell_pools(self, self._cell)
        lifecycle.register(self)

    # --- lifecycle ------------------------------------------------------------------------

    def _build_strategy(self, num_shards: int) -> Any:
        cfg = self.config
        try:
            return strategy(cfg.strategy, num_shards, **cfg.strategy_options)
        except (UnknownStrategyError, pydantic.ValidationError):
            raise  # name or option errors say it all (and were checked at construction)
        except ValueError as exc:  # the options do not fit this number of shards
            how = (
                "num_shards"
                if cfg.num_shards is not None
                else "num_shards, which was not set, so the pool derived it at start"
            )
            raise ConfigError(
                f"strategy {cfg.strategy!r} cannot serve {num_shards} shards ({how}): {exc}; "
                "set num_shards to match the strategy options"
            ) from exc

    def _ensure_started(self, timeout: float | None = None) -> Core:
        core = self._core
        if core is not None and not self._closed:
            return core
        if self._closed:  # before the lock: close() may be failing items on this thread
            raise PoolClosedError(f"this ShardPool is closed: {self._close_reason}")
        with self._start_lock:  # one start, whichever thread gets here first
            if self._closed:
                raise PoolClosedError(f"this ShardPool is closed: {self._close_reason}")
            if self._core is None:
                limit = self.config.start_timeout_s if timeout is None else timeout
                self._core = self._start(limit)
            return self._core

    def _start(self, timeout: float) -> Core:
        deadline = time.monotonic() + timeout
        info = connect(self._address)
        cfg = self.config
        auto = cfg.autoscale
        if cfg.num_actors is not None:
            num_actors = cfg.num_actors
        elif auto is not None:
            num_actors = auto.min_actors
        else:
            num_actors = max(1, info.num_cpus)
        restored = self._open_store()
        # num_shards bounds how far the pool can scale out: leave room (8x) by default.
        num_shards = cfg.num_shards or (
            restored.num_shards
            if restored is not None
            else 8 * max(num_actors, auto.max_actors if auto else 0)
        )
        if restored is not None and num_shards != restored.num_shards:
            raise ConfigError(
                f"num_shards={num_shards}, but checkpoint {restored.checkpoint_id} of pool "
                f"{cfg.name!r} in {cfg.store} has {restored.num_shards} shards: a pool resumes "
                "with the shard count it was checkpointed with"
            )
        if num_shards < num_actors:
            num_shards = num_actors
        _check_fits(num_actors, cfg.num_cpus_per_actor)
        table = place(num_shards, list(range(num_actors)))
        placement = np.array([table[s] for s in range(num_shards)], dtype=np.int64)
        partitioner = Partitioner(
            self._build_strategy(num_shards),
            placement,
            cfg.max_batch_size,
            cfg.keyless,
            actor_loads=lambda: core.actor_loads() if core is not None else [0] * num_actors,
        )
        # Ray restarts a dead actor without limit; the core keeps the budget (max_retries),
        # since deaths caused by one poison item are charged to the item, not the actor.
        options: dict[str, Any] = {"max_restarts": -1, "max_task_retries": 0}
        if cfg.num_cpus_per_actor is not None:
            options["num_cpus"] = cfg.num_cpus_per_actor
        if cfg.resources_per_actor:
            options["resources"] = dict(cfg.resources_per_actor)
            # Pinned by custom resources: they alone decide how many actors a node holds
            # (Ray would otherwise hold a CPU per actor it places that way).
            options.setdefault("num_cpus", 0)
        self._actor_cls = remote_shard_actor(**options)
        self._shared_refs = self._put_shared()
        actors = self._new_actors(list(range(num_actors)))
        warm.consumed(num_actors)
        core: Core | None = None
        try:
            _wait_scheduled(
                actors, deadline, actor_demand(cfg.num_cpus_per_actor, cfg.resources_per_actor)
            )
            submit_sink = FutureSink(cfg.max_pending_items)
            core = Core(
                actors,
                placement,
                partitioner,
                max_batch_size=cfg.max_batch_size,
                max_batch_wait_s=cfg.max_batch_wait_s,
                max_inflight=cfg.max_inflight_per_actor,
                max_retries=cfg.max_retries,
                stateful=self._stateful,
                checkpoint_every=cfg.checkpoint_every,
                submit_sink=submit_sink,
                health_interval_s=cfg.health_check_interval_s,
                restart_timeout_s=cfg.restart_timeout_s,
                failover_after_s=cfg.failover_after_s,
                max_snapshot_failures=cfg.max_snapshot_failures,
                actor_resources={"CPU": cfg.num_cpus_per_actor} if cfg.num_cpus_per_actor else {},
                call_budget_s=(
                    None
                    if cfg.inflight_seconds_per_actor is None
                    else cfg.inflight_seconds_per_actor / cfg.max_inflight_per_actor
                ),
            )
            if restored is not None:
                self._load_checkpoint(core, restored)
            # Places every shard: a failing setup() surfaces here, with its traceback.
            try:
                core.start(max(0.1, deadline - time.monotonic()))
            except concurrent.futures.TimeoutError:
                raise StartTimeoutError(
                    f"the pool's {num_actors} actors did not finish setting up their shards "
                    f"within {timeout:g} s (start_timeout_s)"
                ) from None
        except BaseException:
            # Never leak the healthy actors of a failed start.
            if core is not None:
                core.stop()
            for actor in actors:
                kill_quietly(actor)
            self._shared_refs = []
            raise
        self._actors = actors
        self._placement = placement
        self._submit_sink = submit_sink
        if cfg.autoscale is not None:
            self._autoscaler = Autoscaler(self, cfg.autoscale, num_shards)
            self._autoscaler.start()
        # Not at interpreter exit: Ray ends a driver's actors with the driver.
        self._finalizer = weakref.finalize(
            self,
            lifecycle.release_when_done,
            core,
            self._store,
            self._autoscaler,
            self._shared_refs,  # for an actor Ray restarts before the release
        )
        self._finalizer.atexit = False
        return core

    def start(self, timeout: float | None = None) -> ShardPool:
        """Connect to Ray and start the actors now instead of at first use.

        Args:
            timeout: seconds to wait for every actor to be scheduled and every shard's
                ``setup`` to run (default: ``start_timeout_s``, which the lazy start on
                first use also keeps to).

        Raises:
            StartTimeoutError: the actors could not all start in time; the error names the
                resources each needs and what the cluster has. Nothing is left running.
            ShardFailedError: a shard's ``setup`` raised (with its traceback).
            ConfigError: the pool can never fit the cluster (a refused start, at once).
        """
        self._ensure_started(timeout)
        return self

    @property
    def num_shards(self) -> int:
        """The number of logical shards (starts the pool)."""
        self._ensure_started()
        assert self._placement is not None
        return len(self._placement)

    @property
    def num_actors(self) -> int:
        """The number of shard actors now (starts the pool); ``scale`` changes it."""
        return len(self._ensure_started().active())

    @property
    def placement(self) -> dict[int, int]:
        """``{shard_id: actor index}`` now (starts the pool); ``scale`` changes it."""
        return self._ensure_started().placement()

    def _live_handles(self) -> list[tuple[int, Any]]:
        """``(actor index, handle)`` of the pool's actors (not the retired ones)."""
        core = self._ensure_started()
        return [(a, core.handle(a)) for a in core.active()]

    # --- scaling ----------------------------------------------------------------------------

    def scale(self, num_actors: int, timeout: float | None = None) -> ScaleReport:
        """Grow or shrink the running pool to ``num_actors`` actors, state and all.

        Work keeps flowing meanwhile (maps, streams and submits from any thread). The
        fewest shards move that balance the new actors (``sharding.rebalance``); only those
        pause: each one's new items are held while its in-flight batches finish, then its
        old actor hands its state to the new one through Ray's object store (never through
        the driver), and the held items follow in order. Nothing is lost, doubled or
        reordered, also when either actor dies during the move. A scale-in stops the
        actors it empties. New actors are started (and, on a cluster, scheduled) before
        any shard moves: if they cannot start, nothing moves.

        Args:
            num_actors: the new size, from 1 to ``num_shards``.
            timeout: seconds to wait for the scale (default: no limit; new actors must
                start within ``start_timeout_s``).

        Returns:
            A :class:`~shardyard.scheduler.stats.ScaleReport`: the shards moved, the
            seconds it took, the longest pause of any one shard.

        Raises:
            ConfigError: ``num_actors`` is below 1 or above ``num_shards`` (says why).
            StartTimeoutError: the new actors could not start (nothing moved).
            PoolClosedError: the pool is closed.
            TimeoutError: ``timeout`` passed first (the scale goes on in the background).

        Example:
            >>> with ShardPool(lambda x: x, num_actors=1, num_shards=8) as pool:  # doctest: +SKIP
            ...     pool.scale(4).moved_shards
            [2, 3, 4, 5, 6, 7]
        """
        core = self._ensure_started()
        check_scale(num_actors, len(core.ledger.books))
        t0 = time.monotonic()
        deadline = None if timeout is None else t0 + timeout

        def left() -> float | None:
            return None if deadline is None else max(0.0, deadline - time.monotonic())

        with self._scale_lock:
            try:
                # A scale whose caller timed out goes on in the background: plan after it.
                # Its own failure was its caller's to see (as TimeoutError): not this one's.
                if self._scaling is not None:
                    concurrent.futures.wait([self._scaling], left())
                    if not self._scaling.done():
                        raise concurrent.futures.TimeoutError
                    self._scaling = None
                if self._closed:
                    raise PoolClosedError("this ShardPool is closed")
                active = core.active()
                failed = [a for a in active if core.dispatch.actors[a].failed]
                before = core.placement()
                plan = plan_scale(before, active, num_actors, len(core.dispatch.actors), failed)
                if plan.new_actors:
                    self._start_actors(core, plan.new_actors, left())
                self._scaling = core.run(core.rescale(plan.moves, plan.retire))
                moves = self._scaling.result(left())
                self._scaling = None
            except StartTimeoutError:
                raise  # the new actors did not start: nothing moved
            except concurrent.futures.TimeoutError:
                raise TimeoutError(
                    f"scale({num_actors}) did not finish within {timeout:g} s; it goes on in "
                    "the background, and the next scale() waits for it"
                ) from None
            except (concurrent.futures.CancelledError, RuntimeError) as exc:
                if self._closed:
                    raise PoolClosedError("the pool was closed during the scale") from exc
                raise
            finally:
                if self._scaling is not None and self._scaling.done():
                    self._scaling = None  # ended, also by an error: the next scale is free
        return ScaleReport(
            num_actors_before=len(active),
            num_actors=len(core.active()),
            moved_shards=sorted(m["shard_id"] for m in moves),
            seconds=time.monotonic() - t0,
            max_pause_s=max((m["pause_s"] for m in moves), default=0.0),
            started_actors=plan.new_actors,
            retired_actors=plan.retire,
            placement_before=before,
            placement=core.placement(),
        )

    async def ascale(self, num_actors: int, timeout: float | None = None) -> ScaleReport:
        """``scale`` for asyncio code (the event loop keeps running meanwhile)."""
        return await asyncio.to_thread(self.scale, num_actors, timeout)

    def _start_actors(self, core: Core, indices: list[int], timeout: float | None) -> None:
        limit = self.config.start_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + limit
        handles = self._new_actors(indices, core.active())
        try:
            _wait_scheduled(
                handles,
                deadline,
                actor_demand(self.config.num_cpus_per_actor, self.config.resources_per_actor),
            )
            added = core.call(core.add_actors(handles), max(0.1, deadline - time.monotonic()))
        except concurrent.futures.TimeoutError:
            for h in handles:
                kill_quietly(h)
            core.retire([i for i in indices if i < len(core.dispatch.actors)])
            raise StartTimeoutError(
                f"the {len(indices)} new actor(s) did not start within {limit:g} s; no shard moved"
            ) from None
        except BaseException:
            for h in handles:
                kill_quietly(h)
            raise
        assert added == indices, (added, indices)

    def _open_store(self) -> Checkpoint | None:
        """Open ``store`` (if set); the newest complete checkpoint under ``name``."""
        cfg = self.config
        if cfg.store is None or cfg.name is None:
            return None
        if self._store is None:
            self._store = open_store(cfg.store)
        self._restored_from = self._store.latest(cfg.name)
        return self._restored_from

    @property
    def restored_from(self) -> Checkpoint | None:
        """The checkpoint this pool started from (``name`` + ``store``), or ``None``.

        Starts the pool (and so reads the store) if it has not started yet.
        """
        self._ensure_started()
        return self._restored_from

    def _load_checkpoint(self, core: Core, checkpoint: Checkpoint) -> None:
        """Each shard's committed snapshot := its part of ``checkpoint`` (restored when the
        shard is placed). The parts were written by this pool's own ``checkpoint()``."""
        assert self._store is not None and self.config.name is not None
        for sid, book in enumerate(core.ledger.books):
            part = self._store.get_part(self.config.name, checkpoint.checkpoint_id, sid)
            book.snapshot = part or None

    def checkpoint(self, meta: bytes = b"", timeout: float | None = None) -> int:
        """Store every shard's state now, as one complete checkpoint under the pool's name.

        Waits for the items submitted before the call, then asks each actor for its shards'
        snapshots between batches, writes them to ``store`` and commits the checkpoint;
        a pool started later with the same ``name`` and ``store`` resumes from it. The two
        newest complete checkpoints are kept. Call it while no other thread submits (a
        streaming job does): items submitted meanwhile may or may not be in it.

        Args:
            meta: bytes kept with the checkpoint (``Checkpoint.meta``), e.g. source offsets.
            timeout: seconds to wait at most.

        Returns:
            The checkpoint's id.

        Raises:
            ConfigError: the pool has no ``name`` and ``store``.
            IncompleteCheckpointError: a shard's ``snapshot()`` raised: the checkpoint is
                not committed (the previous one stays the newest), and the message names
                the shard and the error.
            StateStoreError: the store cannot be written (names the server and cause).

        Example:
            >>> pool = ShardPool(Tally, name="words", store="sqlite:///c.db")  # doctest: +SKIP
            >>> pool.map(words, keys=words)                     # doctest: +SKIP
            >>> pool.checkpoint()                               # doctest: +SKIP
            1
        """
        cfg = self.config
        if cfg.store is None or cfg.name is None:
            raise ConfigError("checkpoint() needs a pool with name= and store= (a URL)")
        replies = self._collect(lambda a: a.snapshots.remote(), timeout)
        assert self._store is not None
        store, name = self._store, cfg.name
        cid = store.next_id(name)
        failures = []
        num_shards = self.num_shards
        for _, parts in replies:
            for sid, (_, data) in sorted(parts.items()):
                if isinstance(data, ItemFailure):
                    failures.append(f"shard {sid}: snapshot() raised {data.exception()!r}")
                    continue
                store.put_part(name, cid, sid, data)
        if failures:
            raise IncompleteCheckpointError(
                f"checkpoint {cid} of pool {name!r} is not committed: " + "; ".join(failures)
            )
        store.commit(name, cid, num_shards, meta)
        store.prune(name, keep=2)
        return cid

    def run(
        self,
        source: Source,
        sink: Sink | None = None,
        key: Callable[[Any], Any] | None = None,
        checkpoint_interval_s: float = 5.0,
        dead_letters: Sink | None = None,
        retries: int = 0,
        stop: threading.Event | None = None,
    ) -> RunReport:
        """Run a streaming job until ``source`` ends or ``stop`` is set: records through the
        pool (keyed by ``key(value)``), outputs that are not ``None`` to ``sink``,
        checkpoints every ``checkpoint_interval_s`` (see :mod:`shardyard.streams.job`).

        Needs ``name`` and ``store``: run again with the same ones after a crash, it
        resumes from the newest complete checkpoint, nothing lost or applied twice.

        Args:
            dead_letters: where records go that cannot be decoded or whose handler failed
                ``retries + 1`` times, with their errors (e.g. a
                :class:`~shardyard.streams.sql.DeadLetterTable`); without it they are
                logged. They never stop the stream.
            retries: how many more times a record whose handler raised is tried.
            stop: set it to end the job after its current epoch's checkpoint (default:
                the one ``shardyard.streams.request_stop()`` sets).

        Example:
            >>> from shardyard.streams import FileSink, FileSource     # doctest: +SKIP
            >>> pool.run(FileSource("in/*.txt"), FileSink("out"), key=len)  # doctest: +SKIP
            RunReport(records=..., checkpoints=..., resumed_from=0, seconds=..., ...)
        """
        from shardyard.streams.job import run_job

        return run_job(
            self,
            source,
            sink,
            key,
            checkpoint_interval_s,
            dead_letters=dead_letters,
            retries=retries,
            stop=stop,
        )

    async def arun(self, source: Source, sink: Sink | None = None, **kwargs: Any) -> RunReport:
        """:meth:`run` for asyncio code (in a thread; the event loop keeps running)."""
        return await asyncio.to_thread(self.run, source, sink, **kwargs)

    def _new_actors(self, indices: list[int], others: list[int] | None = None) -> list[Any]:
        """Start actors ``indices``: each on the node that hosts the fewest of this pool's
        ``others`` (see :mod:`shardyard.scheduler.nodes`), unless ``spread`` is off."""
        cfg = self.config
        demand = actor_demand(cfg.num_cpus_per_actor, cfg.resources_per_actor)
        candidates = fitting_nodes(demand, ray.nodes())
        if not cfg.spread or not candidates:
            return [self._spawn(self._actor_cls, i) for i in indices]
        taken: dict[str, int] = {}
        for a in others or []:
            if a in self._actor_node:
                taken[self._actor_node[a]] = taken.get(self._actor_node[a], 0) + 1
        handles = []
        for i, node in zip(indices, choose_nodes(len(indices), candidates, taken), strict=True):
            self._actor_node[i] = node
            cls = self._actor_cls.options(scheduling_strategy=affinity(node))
            handles.append(self._spawn(cls, i))
        return handles

    def _spawn(self, cls: Any, index: int) -> Any:
        """Create actor ``index`` of class ``cls`` (the remote ShardActor, with options).

        Every actor, at start, by ``scale``, the autoscaler or a failover, is created
        here; Ray re-runs this same constructor call when it restarts the process.
        """
        cfg = self.config
        return cls.remote(
            self._handler,
            self._batched,
            index,
            cfg.batch_format,
            # Top-level ObjectRefs: Ray resolves them before the constructor runs (nested
            # ones would arrive as references).
            *self._shared_refs,
            shared_names=tuple(self._shared),
            memo_size=cfg.memo_size,
            max_concurrency=cfg.max_concurrency,
        )

    def _put_shared(self) -> list[ray.ObjectRef[Any]]:
        """Put each ``shared`` value into the object store, once for the pool's life."""
        refs = []
        for name, value in self._shared.items():
            try:
                refs.append(ray.put(value))
            except Exception as exc:
                raise SerializationError(
                    f"shared[{name!r}] could not be put into Ray's object store ({exc})"
                ) from exc
        return refs

    @property
    def shared(self) -> Mapping[str, Any]:
        """The pool's ``shared`` values, read-only, on the driver (the handler reads them as
        ``shardyard.shared``)."""
        return types.MappingProxyType(self._shared)

    def shard_of(self, keys: Any) -> np.ndarray:
        """The shard id of each key, as the pool routes them."""
        self._ensure_started()
        return self._build_strategy(self.num_shards).assign(keys)

    def wait(self, timeout: float | None = None) -> None:
        """Block until every item submitted before this call has finished.

        Items other threads submit meanwhile are not waited for (``results``, ``reduce``
        and ``close`` wait the same way).

        Raises:
            TimeoutError: ``timeout`` seconds passed first (the items keep running).
        """
        if self._core is not None and not self._core.wait_idle(timeout):
            raise TimeoutError(f"items were still unfinished after {timeout:g} s")

    def close(self, wait: bool = True, timeout: float | None = None) -> None:
        """Finish (``wait=True``) or fail outstanding work, then stop the actors.

        Items still unfinished when the actors stop (all of them with ``wait=False``, those
        still running after ``timeout`` seconds, or those another thread submits meanwhile)
        fail with ``PoolClosedError`` before this returns; later submissions raise it. The
        actors are always released, also when waiting is interrupted (Ctrl-C) or fails;
        calling ``close`` again is harmless. Ray itself stays up (the embedded Ray is
        reused by later pools; ``shardyard.disconnect()`` stops it).
        """
        with self._start_lock:
            self._closed = True
            core = self._core
            if self._released:
                return
        if self._autoscaler is not None:
            self._autoscaler.stop()
        try:
            if core is not None and wait:
                core.wait_idle(timeout)
        finally:
            with self._start_lock:
                release = not self._released
                self._released = True
            # Not under the lock: stopping fails the unfinished items, whose done-callbacks
            # may call this pool again (and get PoolClosedError).
            if release:
                if self._finalizer is not None and self._finalizer.detach() is not None:
                    lifecycle.release(core, self._store, self._autoscaler)
                elif self._store is not None:
                    self._store.close()
                self._shared_refs = []  # the actors are stopping: free the store's copies

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called (or the pool was replaced or closed by
        :func:`shardyard.close_all`)."""
        return self._closed

    shutdown = close  # the concurrent.futures.Executor name

    def _state(self) -> str:
        if self._closed:
            return "closed"
        return "not started" if self._core is None else "running"

    def __repr__(self) -> str:
        # Never starts the pool nor calls the actors: a repr must be cheap and safe.
        name = _handler_name(self._handler)
        core = self._core
        if core is None or self._closed:
            return f"<ShardPool {name} ({self._state()})>"
        return (
            f"<ShardPool {name}: {len(core.active())} actors, {len(core.ledger.books)} shards, "
            f"{self._state()}>"
        )

    def _repr_html_(self) -> str:
        """Jupyter's display of a pool: its actors, nodes, shards, load and errors."""
        import html

        from shardyard.scheduler.display import stats_html

        if self._core is None or self._closed:
            return f"<p>{html.escape(repr(self))}</p>"
        try:
            stats = self.stats(timeout=2.0)
        except Exception as exc:  # display must not raise
            return f"<p>{html.escape(repr(self))}: stats unavailable ({html.escape(str(exc))})</p>"
        return stats_html(stats, title=f"{repr(self)[1:-1]}: ")

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
        """(items, keys) chunks of the input, never materialising an iterator whole.

        Sized inputs of different lengths raise ``ValueError`` before the first chunk. When
        reading the input fails part-way (the items or keys iterator raises, the key function
        raises, the keys run out or outlast the items), the valid items before the failure
        come as a last chunk, then ``_InputFailed`` is raised. Items are read with
        ``list.extend``, which keeps what it read before an exception: no per-item work.
        """
        size = self._chunk_size()
        key_fn = keys if callable(keys) else None
        n_items, n_keys = _length(items), None if key_fn else _length(keys)
        if n_items is not None and n_keys is not None and n_items != n_keys:
            raise ValueError(f"keys has {n_keys} entries for {n_items} items")
        failed: BaseException | None = None
        if isinstance(items, np.ndarray):
            try:
                key_arr = None if keys is None or key_fn else _sliceable(keys)  # type: ignore[arg-type]
            except Exception as exc:
                raise _InputFailed(exc) from exc
            if key_arr is not None and len(key_arr) != len(items):
                raise ValueError(f"keys has {len(key_arr)} entries for {len(items)} items")
            for lo in range(0, len(items), size):
                view = items[lo : lo + size]
                if key_fn is None:
                    yield view, None if key_arr is None else key_arr[lo : lo + size]
                    continue
                view_keys: list[Any] = []
                try:
                    view_keys.extend(map(key_fn, view.tolist()))
                except Exception as exc:
                    if view_keys:
                        yield view[: len(view_keys)], view_keys
                    raise _InputFailed(exc) from exc
                yield view, view_keys
            return
        try:
            item_it = iter(items)
            key_it = None if keys is None or key_fn else iter(keys)  # type: ignore[arg-type]
        except Exception as exc:
            raise _InputFailed(exc) from exc
        while True:
            chunk: list[Any] = []
            try:
                chunk.extend(itertools.islice(item_it, size))
            except Exception as exc:
                failed = exc  # the items read before it are in chunk
            except KeyboardInterrupt as stop:
                stop.read_not_sent = len(chunk)  # type: ignore[attr-defined]
                raise
            if not chunk and failed is None:  # the end of the items
                try:
                    extra = key_it is not None and next(key_it, _END) is not _END
                except Exception as exc:
                    failed = exc
                else:
                    if not extra:
                        return
                    failed = ValueError("keys is longer than items")
            chunk_keys: Any = None
            if chunk and (key_fn is not None or key_it is not None):
                # A key failure comes before the item failure (if any): it wins.
                chunk_keys = []
                try:
                    if key_fn is not None:
                        with _counting_unsent(len(chunk)):
                            chunk_keys.extend(map(key_fn, chunk))
                    else:
                        chunk_keys.extend(itertools.islice(key_it, len(chunk)))  # type: ignore[arg-type]
                        if len(chunk_keys) != len(chunk):
                            failed = ValueError("keys is shorter than items")
                except Exception as exc:
                    failed = exc
                if len(chunk_keys) != len(chunk):
                    del chunk[len(chunk_keys) :]
            if chunk:
                yield chunk, chunk_keys  # a list stays a list (see PoolConfig.batch_format)
            if failed is not None:
                raise _InputFailed(failed) from failed

    def _chunk_size(self) -> int:
        """Items read and partitioned at a time: ``chunk_size``, or when it was left at its
        default, enough for ``CHUNK_ITEMS_PER_SHARD`` items per shard and
        ``CHUNK_ITEMS_PER_ACTOR`` per actor (up to ``max_pending_items``).

        The driver's work per chunk and per batch is paid per shard touched, so a chunk
        spread thin over thousands of shards would cost more than its items; and each
        actor gets a call per chunk, whose cost (a process woken, Ray's send and reply at
        both ends) is paid per actor: with 32 actors on 2 cores, chunks of 16k items made
        calls of ~500 items and ran at ~0.25x the 2-actor rate, chunks of 262k at ~0.6x.
        """
        cfg = self.config
        if "chunk_size" in cfg.model_fields_set:
            return cfg.chunk_size
        want = max(CHUNK_ITEMS_PER_SHARD * self.num_shards, CHUNK_ITEMS_PER_ACTOR * self.num_actors)
        return max(cfg.chunk_size, min(want, cfg.max_pending_items))

    def _push(self, core: Core, sink: MapSink, base: int, chunk: Any, keys: Any) -> int:
        """Partition a chunk and hand it to the core; return its length.

        Raises:
            _InputFailed: the chunk's keys cannot be routed; the items before the first bad
                key were handed over, and an ``UnsupportedKeyError`` names its absolute
                position (``base`` + its position in the chunk).
        """
        n = len(chunk)
        if (
            keys is not None
            and n >= PROBE_AHEAD_ITEMS
            and sink.submitted == 0
            and len(core.active()) > 1
        ):
            # A producer's first item is its probe (see dispatch), which the other actors
            # wait for: handed over alone first, it runs while the rest is partitioned
            # (keyed work only: keyless items are not partitioned, there is nothing to
            # overlap).
            ahead = self._push(core, sink, base, chunk[:1], keys[:1])
            return ahead + self._push(core, sink, base + 1, chunk[1:], keys[1:])
        try:
            runs = core.partitioner.split_runs(n, keys)
            groups = core.partitioner.split(n, keys) if runs is None else []
        except Exception as exc:
            raise self._route_failure(core, sink, base, chunk, keys, exc) from exc
        if runs is not None:
            keyed = _run_segments(sink, base, chunk, keys, runs)
            sink.add(n)
            core.push_segments(keyed)
            return n
        # Keyless work (slices of the chunk), or one keyed item.
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

    def _route_failure(
        self, core: Core, sink: MapSink, base: int, chunk: Any, keys: Any, exc: Exception
    ) -> _InputFailed:
        """Routing a chunk failed with ``exc``: hand over the items before the bad key.

        Returns the ``_InputFailed`` to raise; its cause is an ``UnsupportedKeyError`` with
        the absolute position of the bad key (the chunk-relative one is its ``__cause__``).
        """
        if not isinstance(exc, UnsupportedKeyError):
            # No position: nothing more of this chunk is handed over (of a producer's first
            # chunk, its first item may have gone ahead alone: see PROBE_AHEAD_ITEMS).
            return _InputFailed(exc)
        rel = exc.position
        err = UnsupportedKeyError(exc.type_name, base + rel)
        err.__cause__ = exc
        if 0 < rel < len(chunk):
            # Raises a more precise _InputFailed itself if the prefix holds an earlier bad key.
            self._push(core, sink, base, chunk[:rel], keys[:rel])
        return _InputFailed(err)

    def _stream(
        self, items: Iterable[Any], keys: Keys, keep: bool, timeout: float | None = None
    ) -> Iterator[tuple[MapSink, list[tuple[np.ndarray, Any]], list[tuple[int, BaseException]]]]:
        """Feed chunks with backpressure; yield pieces of results as they arrive.

        Ctrl-C (in the main thread) is noticed between steps (see
        :mod:`~shardyard.scheduler.interrupts`): the items not yet sent are cancelled, the
        ones in flight are waited for, and :class:`Interrupted` is raised. A consumer that
        stops iterating (``map_unordered`` abandoned) cancels the unsent items too.

        Raises:
            _InputFailed: reading or routing the input failed part-way, raised only after
                every item handed over before it has finished (and, when streaming, been
                yielded); its ``sink`` tells what was submitted.
            Interrupted: Ctrl-C; nothing of this call is left queued.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        core = self._ensure_started()
        sink = MapSink(self.config.max_pending_items, keep=keep)
        chunks = self._chunks(items, keys)
        total = _length(items)
        base = 0
        read_not_sent = 0  # items read from the input when a Ctrl-C came, never sent
        exhausted = False
        failure: _InputFailed | None = None
        guard = SigintGuard()
        guard.enter()
        try:
            while True:
                while not exhausted and sink.has_capacity() and not guard.requested:
                    try:
                        # Reading runs the user's iterator and key function: Ctrl-C there
                        # raises at once (a slow input must not hold it off a whole chunk).
                        guard.exit()
                        try:
                            nxt = next(chunks, None)
                        finally:
                            guard.enter()
                        if nxt is None:
                            exhausted = True
                            break
                        base += self._push(core, sink, base, *nxt)
                    except _InputFailed as exc:
                        # Read no further, but let what was handed over finish (below).
                        failure, exhausted = exc, True
                        break
                    except KeyboardInterrupt as stop:
                        guard.requested = True  # in the input: handled as a deferred one
                        read_not_sent = getattr(stop, "read_not_sent", 0)
                        break
                if keep:
                    # Wake up now and then so a progress bar moves and Ctrl-C is seen.
                    done = sink.wait_all if exhausted else sink.wait_capacity
                    while not guard.requested and not done(timeout=0.1):
                        _check_deadline(deadline, timeout, sink)
                        if exhausted:
                            yield sink, [], []
                    if guard.requested:
                        _interrupt(core, sink, guard, total, read_not_sent=read_not_sent)
                    yield sink, [], []
                    if exhausted:
                        break
                    continue
                pieces, errors = sink.take(block=True, timeout=0.1)
                while not (pieces or errors or sink.all_done() or guard.requested):
                    pieces, errors = sink.take(block=True, timeout=0.1)
                if guard.requested:
                    _interrupt(core, sink, guard, total, pieces, read_not_sent=read_not_sent)
                guard.exit()  # the consumer's code runs with the usual Ctrl-C
                yield sink, pieces, errors
                guard.enter()
                # The consumer has gone through what it was given before asking for more.
                sink.release(sum(len(p[0]) for p in pieces) + len(errors))
                if exhausted and sink.all_done():
                    pieces, errors = sink.take(block=False)
                    if pieces or errors:
                        guard.exit()
                        yield sink, pieces, errors
                    break
        except (GeneratorExit, KeyboardInterrupt) as exc:
            # Abandoned by its consumer, or a Ctrl-C that was not deferred: send nothing more.
            if not isinstance(exc, Interrupted):
                core.cancel(sink)
            raise
        finally:
            guard.exit()
        if failure is not None:
            failure.sink = sink
            raise failure

    # --- map --------------------------------------------------------------------------------

    def map(
        self,
        items: Iterable[Any],
        keys: Keys = None,
        *,
        return_exceptions: bool = False,
        progress: bool | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Process every item; return the outputs in input order.

        Args:
            items: any iterable (a generator is read in chunks, never whole).
            keys: one key per item (iterable), a function ``item -> key``, or ``None``
                for keyless work spread by load.
            return_exceptions: put each failed item's :class:`~shardyard.TaskError` in
                its place instead of raising the first one.
            progress: show a progress bar (``tqdm.auto``: one widget in Jupyter, which
                needs the ``notebook`` extra); ``None``: the config's ``progress`` (by
                default, a bar in Jupyter kernels for calls longer than a second).
            timeout: seconds the whole call may take; ``TimeoutError`` after (the items
                already handed over keep running).

        Returns:
            A numpy array when ``items`` is one and the handler returns arrays, else a list.

        Raises:
            shardyard.TaskError: an item failed (the first in input order), after all
                other items finished.
            shardyard.InputError: reading or routing the input failed part-way (the items
                or keys iterator or the key function raised, a key has an unsupported type,
                the keys ran out); raised after every item before it finished, with their
                outputs in ``.partial`` and the failure's ``.position`` and ``.cause``.
            ValueError: sized items and keys differ in length (before any work).

        Example:
            >>> with ShardPool(str.upper, num_actors=2) as pool:    # doctest: +SKIP
            ...     pool.map(["a", "b"], keys=["a", "b"])
            ['A', 'B']
        """
        self._ensure_started()  # the bar starts once the cluster is up
        bar = _progress(self.config.progress if progress is None else progress, items)
        numpy_in = isinstance(items, np.ndarray)
        sink: MapSink | None = None
        try:
            for sink, _, _ in self._stream(items, keys, keep=True, timeout=timeout):
                if bar is not None:
                    bar.update(sink.finished - bar.n)
        except Interrupted as stop:
            raise KeyboardInterrupt(str(stop)) from None
        except _InputFailed as failed:
            done = failed.sink
            assert done is not None
            partial = (
                items[:0].copy()  # type: ignore[index]
                if numpy_in and done.submitted == 0
                else _assemble(done, numpy_in, return_exceptions=True)
            )
            raise failed.to_error(partial) from failed.cause
        finally:
            if bar is not None:
                bar.close()  # also on a timeout or a failure
        assert sink is not None
        if numpy_in and sink.submitted == 0:
            return items[:0].copy()  # type: ignore[index]  # numpy in, numpy out, also when empty
        return _assemble(sink, numpy_in, return_exceptions)

    def map_unordered(
        self,
        items: Iterable[Any],
        keys: Keys = None,
        *,
        return_exceptions: bool = False,
        progress: bool | None = None,
    ) -> Iterator[Any]:
        """Process every item; yield outputs as they complete (bounded memory).

        Args:
            items: any iterable, read lazily with backpressure.
            keys: as for :meth:`map`.
            return_exceptions: yield failed items' ``TaskError`` in line instead of raising
                the first one after all other outputs were yielded.
            progress: as for :meth:`map`.

        Raises:
            shardyard.TaskError: an item failed (the first), after all other outputs.
            shardyard.InputError: reading or routing the input failed part-way (see
                :meth:`map`); raised after the outputs of every item before it were yielded.

        Example:
            >>> with ShardPool(abs, num_actors=2) as pool:          # doctest: +SKIP
            ...     sorted(pool.map_unordered([-1, 2, -3]))
            [1, 2, 3]
        """
        return _Outputs.of(self._unordered_lists(items, keys, return_exceptions, progress))

    def _unordered_lists(
        self, items: Iterable[Any], keys: Keys, return_exceptions: bool, progress: bool | None
    ) -> Iterator[list[Any] | tuple[Any, ...]]:
        """``map_unordered``'s outputs, a list per arriving piece (see :class:`_Outputs`)."""
        self._ensure_started()
        bar = _progress(self.config.progress if progress is None else progress, items)
        first_error: BaseException | None = None
        try:
            for _, pieces, errors in self._stream(items, keys, keep=False):
                for _, outputs in pieces:
                    values = outputs.tolist() if isinstance(outputs, np.ndarray) else outputs
                    if bar is not None:
                        bar.update(len(values))
                    yield values
                for _, exc in errors:
                    if bar is not None:
                        bar.update(1)
                    if return_exceptions:
                        yield (exc,)
                    elif first_error is None:
                        first_error = exc
        except Interrupted as stop:
            raise _keyboard_interrupt(stop) from None
        except _InputFailed as failed:
            raise failed.to_error() from failed.cause
        finally:
            if bar is not None:
                bar.close()
        if first_error is not None:
            raise first_error

    def imap_pieces(
        self, items: Iterable[Any], keys: Keys = None
    ) -> Iterator[tuple[np.ndarray, Any]]:
        """Yield ``(positions, outputs)`` pieces as they complete: the cheapest stream.

        Errors are raised at the end, after every other piece was yielded: an
        :class:`~shardyard.InputError` when reading or routing the input failed part-way
        (see :meth:`map`), else the first item's ``TaskError``.
        """
        first_error: BaseException | None = None
        try:
            for _, pieces, errors in self._stream(items, keys, keep=False):
                yield from pieces
                if errors and first_error is None:
                    first_error = errors[0][1]
        except Interrupted as stop:
            raise _keyboard_interrupt(stop) from None
        except _InputFailed as failed:
            raise failed.to_error() from failed.cause
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

    def results(self, timeout: float | None = None) -> dict[int, Any]:
        """Wait for outstanding work; return ``{shard_id: partial result}`` of every shard.

        The partials are read once every shard's state is complete (restores and replays
        after a crash included), from the processes the pool knows host them.

        Raises:
            ShardyardError: a shard failed (its error, e.g. ``ShardFailedError``), so its
                partial result cannot be trusted.
            TimeoutError: ``timeout`` seconds passed first.

        Example:
            >>> pool.results()                                      # doctest: +SKIP
            {0: Counter({'a': 2}), 1: Counter({'b': 1})}
        """
        replies = self._collect(lambda a: a.results.remote(), timeout)
        merged: dict[int, Any] = {}
        for _, parts in replies:
            merged.update({sid: value for sid, (_, value) in parts.items()})
        return dict(sorted(merged.items()))

    def reduce(self, combine: Callable[[Any, Any], Any], timeout: float | None = None) -> Any:
        """Wait for outstanding work; combine all shards' partial results with ``combine``.

        Each actor combines its own shards' partials in its process (all actors at once),
        then the actors' values are combined pairwise in a tree across actors: a value
        moves from one actor to another through Ray's object store, and only the last one
        reaches the driver. Raises as :meth:`results` does.

        Args:
            combine: an associative and commutative function of two partials, e.g.
                ``operator.add`` (partials meet in no fixed shard order). It may update its
                first argument and return it (``a.update(b); return a``: the cheapest for
                dicts and Counters) or return a new value; it must not change its second
                argument. Partials are never changed: the first argument is always a
                private copy or a value made by ``combine``.
            timeout: seconds to wait at most (``TimeoutError`` after).

        Example:
            >>> import operator
            >>> pool.reduce(operator.add)                           # doctest: +SKIP
            Counter({'a': 2, 'b': 1})
            >>> def merge(a, b):                                    # doctest: +SKIP
            ...     a.update(b)  # in place: no copy of the growing total
            ...     return a
            >>> pool.reduce(merge)                                  # doctest: +SKIP
        """
        deadline = None if timeout is None else time.monotonic() + timeout

        def left() -> float | None:
            return None if deadline is None else max(0.0, deadline - time.monotonic())

        while True:
            rid = uuid.uuid4().hex
            try:
                ask = functools.partial(_ask_reduce, combine=combine, rid=rid)
                pairs = self._collect_from(ask, left())
                return _tree_combine([h for h, _ in pairs], rid, combine, left())
            except (RayActorError, ActorUnavailableError):
                # An actor died during the tree: its shards are restored and replayed by the
                # core; combine again from complete shard state.
                time.sleep(0.05)
            finally:
                for _, h in self._live_handles():  # what a failed attempt left behind
                    h.drop.remote(rid)

    def _collect(self, ask: Callable[[Any], Any], timeout: float | None) -> list[Any]:
        """Ask every actor once its shards are complete; retry if one was restarted."""
        return [reply for _, reply in self._collect_from(ask, timeout)]

    def _collect_from(
        self, ask: Callable[[Any], Any], timeout: float | None
    ) -> list[tuple[Any, Any]]:
        """:meth:`_collect`, each reply with the handle of the actor that gave it."""
        core = self._ensure_started()
        deadline = None if timeout is None else time.monotonic() + timeout

        def left() -> float | None:
            return None if deadline is None else max(0.0, deadline - time.monotonic())

        while True:
            if not core.quiesce(left()):
                raise TimeoutError(f"shard state was still incomplete after {timeout:g} s")
            gens, failed = core.expected()
            if failed:
                raise failed[min(failed)]
            try:
                live = [(a, h, core.incarnation(a)) for a, h in self._live_handles()]
                replies = ray.get([ask(h) for _, h, _ in live], timeout=left())
            except (RayActorError, ActorUnavailableError):
                time.sleep(0.05)  # died (or retired) meanwhile: look again
                continue
            fresh = all(
                core.confirm(a, r[0], asked) for (a, _, asked), r in zip(live, replies, strict=True)
            )
            hosted = {
                sid: (g if isinstance(g, int) else g[0]) for r in replies for sid, g in r[1].items()
            }
            if fresh and hosted == dict(enumerate(gens)):
                return [(h, r) for (_, h, _), r in zip(live, replies, strict=True)]

    def stats(self, timeout: float = 10.0) -> PoolStats:
        """Per-shard and per-actor counters, from the driver and the actors' control group.

        Actors answer from their control concurrency group, so this works while they are
        busy; an actor that does not answer within ``timeout`` (dead, or restarting)
        shows ``pid=None``. ``actors`` has one record per actor, with its ``pid`` and
        ``node_id``.
        """
        driver = self._ensure_started().stats()
        # Every actor in the core's record has a handle (retired ones included: a scale-in
        # may retire one between the two reads; it then answers nothing, pid=None).
        core = self._ensure_started()
        refs = [core.handle(a["actor"]).stats.remote() for a in driver["actors"]]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        done = set(ready)
        remote: list[dict[str, Any] | None] = []
        for ref in refs:
            try:
                remote.append(ray.get(ref, timeout=0) if ref in done else None)
            except Exception:
                remote.append(None)
        busy: dict[int, float] = {}
        memo: dict[int, dict[str, int]] = {}  # shard id -> its memo's counters
        for r in remote:
            for sid, s in (r or {}).get("shards", {}).items():
                busy[int(sid)] = s["busy_s"]
                if s.get("memo") is not None:
                    memo[int(sid)] = s["memo"]
        shards = [
            ShardStats(
                shard_id=s["shard_id"],
                actor=s["actor"],
                items=s["items"],
                batches=s["batches"],
                queue_depth=s["queued"] + s["in_flight"],
                errors=s["errors"],
                busy_s=busy.get(s["shard_id"], 0.0),
                generation=s["generation"],
                replayed_batches=s["replayed_batches"],
                retained_batches=s["retained_batches"],
                snapshot_failures=s["snapshot_failures"],
                failed=s["failed"],
                memo_hits=memo.get(s["shard_id"], {}).get("hits", 0),
                memo_misses=memo.get(s["shard_id"], {}).get("misses", 0),
                memo_uncached=memo.get(s["shard_id"], {}).get("uncached", 0),
            )
            for s in driver["shards"]
        ]
        actors = []
        for a, r in zip(driver["actors"], remote, strict=True):
            current = r is not None and r.get("incarnation") == a["incarnation"]
            processed = sum(s["items"] for s in r["shards"].values()) if r else 0
            actors.append(
                ActorStats(
                    actor=a["actor"],
                    pid=r["pid"] if r else None,
                    node_id=r["node_id"] if r else None,
                    node_ip=r["node_ip"] if r else None,
                    shards=a["shards"],
                    in_flight_calls=a["in_flight_calls"],
                    outstanding=a["outstanding"],
                    items=processed,
                    restarts=a["restarts"],
                    state=a["state"] if current or a["state"] != "running" else "restarted",
                )
            )
        return PoolStats(
            shards=shards,
            actors=actors,
            keyless_queued=driver["pull_queued"],
            placement_history=[PlacementChange(**h) for h in driver["history"]],
            snapshot_failures=driver["snapshot_failures"],
        )

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


class _Outputs(itertools.chain[Any]):
    """The iterator :meth:`ShardPool.map_unordered` returns.

    Its items are stepped through in C (``itertools.chain`` over the lists of outputs as
    they arrive), so a ``for`` loop over millions of outputs pays no Python generator
    resume per item; the work per piece (waiting, reading more input, errors at the end)
    stays in the generator of lists. Like a generator, it can be closed early: the items
    not yet sent are cancelled (dropping it does the same).

    Example:
        >>> it = _Outputs.of(iter([[1, 2], (3,)]))
        >>> list(it)
        [1, 2, 3]
    """

    _lists: Iterator[Any]
    _current: list[Iterator[Any] | None]

    @classmethod
    def of(cls, lists: Iterator[Any]) -> _Outputs:
        current: list[Iterator[Any] | None] = [None]

        def steps() -> Iterator[Iterator[Any]]:
            for values in lists:
                current[0] = step = iter(values)
                yield step

        out = cast(_Outputs, cls.from_iterable(steps()))  # from_iterable builds a cls
        out._lists, out._current = lists, current
        return out

    def close(self) -> None:
        """Stop early, as ``generator.close()``: nothing more is read or sent, and the
        outputs not yet stepped through are dropped (``next`` raises ``StopIteration``)."""
        step = self._current[0]
        if step is not None:
            collections.deque(step, maxlen=0)  # the rest of the piece in hand
        close = getattr(self._lists, "close", None)
        if close is not None:
            close()


def _handler_name(handler: Any) -> str:
    """A short name for a handler (never its repr, which can be huge)."""
    inner = getattr(handler, "func", None)  # functools.partial
    if inner is not None and callable(inner):
        return f"partial({_handler_name(inner)})"
    name = getattr(handler, "__qualname__", None)
    if not isinstance(name, str):
        name = type(handler).__qualname__ + " instance"
    return name if len(name) <= 60 else name[:57] + "..."


def _length(x: Any) -> int | None:
    """``len(x)`` for sized inputs, ``None`` for iterators and ``None`` itself."""
    return len(x) if x is not None and hasattr(x, "__len__") else None


def _apply2(fn: Callable[[Any, Any], Any], x: Any, y: Any) -> Any:
    return fn(x, y)


def _sliceable(keys: Iterable[Any]) -> Any:
    return keys if isinstance(keys, np.ndarray | list | tuple) else list(keys)


class _InputFailed(Exception):
    """Internal: reading or routing the input failed; the valid items before were handed over.

    ``map``, ``map_unordered`` and ``imap_pieces`` turn it into :class:`InputError` once every
    submitted item has finished; ``_stream`` fills in ``sink``.
    """

    def __init__(self, cause: BaseException) -> None:
        super().__init__(cause)
        self.cause = cause
        self.sink: MapSink | None = None

    def to_error(self, partial: Any = None) -> InputError:
        sink = self.sink
        assert sink is not None
        errors = sorted(sink.errors, key=lambda e: e[0])
        # One producer per sink, so what it submitted is exactly the input before the failure.
        return InputError(sink.submitted, sink.submitted, self.cause, partial, errors)


def _strategy_factory(name: Any) -> Any:
    """The registered factory of strategy ``name`` (raises ``UnknownStrategyError``)."""
    from shardyard.sharding import available_strategies, registry

    names = available_strategies()
    if not isinstance(name, str) or name not in names:
        raise UnknownStrategyError("strategy", str(name), names)
    return getattr(registry, "_REGISTRY", {}).get(name)


def _options_model(factory: Any) -> Any:
    """The pydantic model that validates a strategy factory's options, if it names one."""
    from shardyard.config import RangeOptions
    from shardyard.sharding import RangeStrategy

    model = getattr(factory, "options_model", None)
    if model is None and factory is RangeStrategy:
        model = RangeOptions  # validated in its constructor, not through the attribute
    return model


def _affinity_names() -> list[str]:
    """The strategy names that keep key affinity, for error messages."""
    try:
        from shardyard.sharding import affinity_strategies

        return list(affinity_strategies())
    except ImportError:  # an older shardyard.sharding: ask each factory
        from shardyard.sharding import available_strategies

        return [
            n
            for n in available_strategies()
            if getattr(_strategy_factory(n), "keeps_affinity", n != "bounded")
        ]


def _check_strategy(cfg: PoolConfig, stateful: bool) -> Any:
    """Validate the configured strategy at construction; return it when ``num_shards`` is set.

    With ``num_shards`` unset the shard count is derived at start (from the cluster), so only
    the name and the options model are checked here; whether the options fit the count (the
    boundaries of ``"range"``) is checked when the strategy is built at start.

    Raises:
        UnknownStrategyError: no strategy has that name.
        pydantic.ValidationError: an option is unknown or invalid.
        ConfigError: a stateful ``Shard`` with a strategy that does not keep key affinity,
            or options that do not fit the explicit ``num_shards``.
    """
    factory = _strategy_factory(cfg.strategy)
    probe: Any = None
    if cfg.num_shards is not None:
        try:
            probe = strategy(cfg.strategy, cfg.num_shards, **cfg.strategy_options)
        except (UnknownStrategyError, pydantic.ValidationError):
            raise
        except ValueError as exc:
            raise ConfigError(
                f"strategy {cfg.strategy!r} cannot serve num_shards={cfg.num_shards}: {exc}"
            ) from exc
    else:
        model = _options_model(factory)
        if model is not None:
            model(**cfg.strategy_options)
    if stateful and not getattr(probe if probe is not None else factory, "keeps_affinity", True):
        why = "it balances per batch" if cfg.strategy == "bounded" else "keeps_affinity is False"
        raise ConfigError(
            f"strategy {cfg.strategy!r} may send one key to different shards ({why}), which "
            f"breaks a Shard's keyed state; use one of: {', '.join(_affinity_names())}"
        )
    return probe


def _progress(enabled: bool | None, items: Iterable[Any]) -> Any:
    """A ``tqdm.auto`` bar for a call, or ``None``.

    ``enabled=None`` (the default) shows one only in a Jupyter kernel, and only once the
    call has run for a second: short calls leave no trace in a saved notebook.
    """
    if enabled is False or (enabled is None and not in_jupyter_kernel()):
        return None
    from tqdm.auto import tqdm

    total = len(items) if hasattr(items, "__len__") else None  # type: ignore[arg-type]
    return tqdm(total=total, unit="item", delay=1.0 if enabled is None else 0.0)


def _run_segments(
    sink: MapSink, base: int, chunk: Any, keys: Any, runs: Runs
) -> list[tuple[int, Segment]]:
    """A keyed chunk's segments, one per shard, from its :meth:`Partitioner.runs`.

    The items (and numpy keys) are gathered in shard order once, and each shard's segment
    is a slice of that (a view, for numpy): per shard, no gather of its own (thousands of
    small ones cost more than their items with many shards; copying each run cost
    ~10% of a 4,096-shard map). A view keeps the whole gathered chunk alive, so whatever
    is kept beyond the round that sends it is copied then (see ``Segment.compacted``: a
    segment queued behind others, a batch kept in a replay log). List keys are read only
    to name an item in an error, so they stay where they are (``Picked``).
    """
    order, heads, starts, ends = runs
    positions = order + base
    if isinstance(chunk, np.ndarray):
        items: Any = chunk[order]
    else:
        items = (
            list(operator.itemgetter(*order.tolist())(chunk))
            if len(order) > 1
            else [chunk[int(order[0])]]
        )
    sorted_keys = keys[order] if isinstance(keys, np.ndarray) else None
    out: list[tuple[int, Segment]] = []
    for sid, a, b in zip(heads, starts, ends, strict=True):
        picked = sorted_keys[a:b] if sorted_keys is not None else Picked(keys, order[a:b])
        out.append((sid, Segment(sink, positions[a:b], items[a:b], picked, gathered=True)))
    return out


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
            if len(pieces) > 1 and out.nbytes <= ONE_SCATTER_BYTES:
                # One scatter: one per piece cost more than its items with thousands of
                # shards (large outputs go piece by piece, not copied twice).
                out[np.concatenate([p for p, _ in pieces])] = np.concatenate(arrays)
            else:
                for positions, outputs in pieces:
                    out[positions] = outputs
            return out
    # Scattered through an object array in one assignment (fromiter: a tuple output stays
    # one element): one per piece cost more than the items with thousands of small pieces.
    result = np.empty(n, dtype=object)
    where: list[Any] = []
    values: list[Any] = []
    for positions, outputs in pieces:
        piece = outputs.tolist() if isinstance(outputs, np.ndarray) else outputs
        if all_none(piece):  # the result starts as None: nothing to do
            continue
        where.append(positions)
        values.append(piece)
    if where:
        at = where[0] if len(where) == 1 else np.concatenate(where)
        result[at] = np.fromiter(itertools.chain.from_iterable(values), dtype=object, count=len(at))
    for pos, exc in sink.errors:
        result[pos] = exc
    return result.tolist()


def _ask_reduce(actor: Any, combine: Callable[[Any, Any], Any], rid: str) -> Any:
    return actor.reduce_local.remote(combine, rid)


def _tree_combine(
    holders: list[Any], rid: str, combine: Callable[[Any, Any], Any], timeout: float | None
) -> Any:
    """Combine the values ``holders`` keep under ``rid`` pairwise, actor to actor.

    Each round, every second actor gives its value (a return in the object store) to its
    left neighbour, which absorbs it (Ray fetches it into that process), until two are
    left: ``log2(actors) - 1`` rounds; the driver combines those two. Every call is sent at
    once; each ``give`` and ``absorb`` names its actor's previous ``absorb`` as ``after``,
    which Ray resolves first (an async actor runs calls as their arguments become ready).
    """
    acks: dict[int, Any] = {}  # holder position -> its last absorb's reply
    live = list(range(len(holders)))
    while len(live) > 2:
        nxt = []
        for i in range(0, len(live) - 1, 2):
            recv, send = live[i], live[i + 1]
            value = holders[send].give.remote(rid, acks.get(send))
            acks[recv] = holders[recv].absorb.remote(rid, combine, value, acks.get(recv))
            nxt.append(recv)
        if len(live) % 2:
            nxt.append(live[-1])
        live = nxt
    # The last two values come to the driver, which combines them: it must load the
    # result anyway, and two halves cost no more to load than the whole, so this saves
    # moving one half between actors.
    values = ray.get([holders[h].give.remote(rid, acks.get(h)) for h in live], timeout=timeout)
    return values[0] if len(values) == 1 else combine_two(combine, values[0], values[1])


def _check_fits(num_actors: int, cpus_per_actor: float | None) -> None:
    """Refuse at once a pool that no node of this cluster can ever host."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    largest = max((n.get("Resources", {}).get("CPU", 0.0) for n in nodes), default=0.0)
    total = sum(n.get("Resources", {}).get("CPU", 0.0) for n in nodes)
    if cpus_per_actor and cpus_per_actor > largest:
        raise ConfigError(
            f"num_cpus_per_actor={cpus_per_actor:g}, but the largest node of this cluster "
            f"has {largest:g} CPUs: no actor could ever be placed (lower num_cpus_per_actor, "
            "or add a bigger node)"
        )
    if not cpus_per_actor and num_actors > max(64, 16 * total):
        raise ConfigError(
            f"num_actors={num_actors} would start {num_actors} processes on a cluster of "
            f"{total:g} CPUs; reserve CPUs per actor (num_cpus_per_actor) to let Ray queue "
            "them, or use fewer actors"
        )


def _wait_scheduled(actors: list[Any], deadline: float, demand: dict[str, float]) -> None:
    """Wait until every actor process answers; name the missing resources on timeout.

    ``demand`` is what one actor reserves (``nodes.actor_demand``).
    """
    refs = [a.health.remote() for a in actors]
    ready, pending = ray.wait(
        refs, num_returns=len(refs), timeout=max(0.0, deadline - time.monotonic())
    )
    ray.get(ready)  # an actor whose constructor raised surfaces here
    if not pending:
        return
    free, total = ray.available_resources(), ray.cluster_resources()
    wants = demand or {"CPU": 1.0}  # an actor reserving nothing still needs a CPU to start
    need = ", ".join(f"{name}: {amount:g}" for name, amount in sorted(wants.items()))
    short = [
        f"{name} ({free.get(name, 0.0):g} of {total.get(name, 0.0):g} free)"
        for name, amount in sorted(wants.items())
        if free.get(name, 0.0) < amount or not demand
    ]
    raise StartTimeoutError(
        f"{len(pending)} of {len(actors)} shard actors could not be started in time: each "
        f"needs {{{need}}}{' to schedule' if not demand else ''}. Missing: "
        f"{', '.join(short) or 'nothing by count (a node may be starting)'}. Nothing was left "
        "running. Lower num_actors, num_cpus_per_actor or resources_per_actor, add nodes, "
        "or pass a longer start(timeout=...)"
    )


def _interrupt(
    core: Core,
    sink: MapSink,
    guard: SigintGuard,
    total: int | None,
    taken: list[tuple[np.ndarray, Any]] | None = None,
    wait_s: float = 5.0,
    read_not_sent: int = 0,
) -> None:
    """Ctrl-C: cancel the call's unsent items, wait for those in flight, raise ``Interrupted``.

    The work in flight on an actor is bounded (``inflight_seconds_per_actor``), so the wait
    is short; a second Ctrl-C ends it at once (safe here: the cancel itself runs on the
    core's thread). For a stream, the outputs that arrived but were not yielded yet
    (``taken`` and what finishes meanwhile) go with the exception as ``partial``.
    """
    guard.armed = True
    dropped = core.cancel(sink)
    sink.wait_all(timeout=wait_s)
    running = sink.submitted - sink.finished
    ran = sink.finished - sink.cancelled
    # Items read from the input but not yet handed over when Ctrl-C came (a partly read
    # chunk): not run, and counted here, as the unread are.
    if total is not None and total > sink.submitted:
        unread = f", and {total - sink.submitted} not yet read were skipped"
    elif read_not_sent:
        unread = f", and {read_not_sent} read from the input but not yet sent were dropped"
    else:
        unread = ""
    tail = (
        f"; {running} sent items were still running after {wait_s:g} s and will finish"
        if running
        else ""
    )
    stop = Interrupted(
        f"interrupted: {dropped} items not yet sent were cancelled{unread}; {ran} items had "
        f"finished (those that update a Shard's state keep their effect){tail}. The pool is "
        "ready."
    )
    if not sink.keep:
        pieces = list(taken or []) + sink.take(block=False)[0]
        stop.partial = [v for _, out in pieces for v in _values(out)]
    raise stop


@contextlib.contextmanager
def _counting_unsent(n: int) -> Iterator[None]:
    """A Ctrl-C inside carries how many items were read but will not be sent (``n``)."""
    try:
        yield
    except KeyboardInterrupt as stop:
        stop.read_not_sent = n  # type: ignore[attr-defined]
        raise


def _keyboard_interrupt(stop: Interrupted) -> KeyboardInterrupt:
    """The short ``KeyboardInterrupt`` a stream raises, with its unyielded ``partial`` outputs."""
    exc = KeyboardInterrupt(str(stop))
    exc.partial = getattr(stop, "partial", [])  # type: ignore[attr-defined]
    return exc


def _values(outputs: Any) -> list[Any]:
    return outputs.tolist() if isinstance(outputs, np.ndarray) else list(outputs)


def _check_deadline(deadline: float | None, timeout: float | None, sink: MapSink) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise TimeoutError(
            f"map did not finish within {timeout:g} s: {sink.finished} of the "
            f"{sink.submitted} items handed over so far have finished (the rest keep running)"
        )
