"""Every knob of shardyard as a frozen pydantic v2 model.

Models forbid unknown fields and validate ranges, so a typo or a bad value fails at once
with a ``pydantic.ValidationError`` naming the field. Each model can be loaded from YAML
(:meth:`_ConfigBase.from_yaml`) or from environment variables (:meth:`_ConfigBase.from_env`).

Example:
    >>> from shardyard.config import PoolConfig
    >>> PoolConfig(num_actors=2).max_batch_size
    4096
    >>> import pydantic
    >>> try:
    ...     PoolConfig(num_actors=0)
    ... except pydantic.ValidationError as e:
    ...     print(e.errors()[0]["loc"])
    ('num_actors',)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from typing_extensions import Self

__all__ = [
    "AutoscaleConfig",
    "BoundedOptions",
    "ClusterConfig",
    "HashOptions",
    "JumpOptions",
    "PoolConfig",
    "RangeOptions",
    "RendezvousOptions",
    "RingOptions",
]


class _ConfigBase(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> Self:
        """Load the model from a YAML mapping file.

        Args:
            path: a YAML file whose top level is a mapping of field names to values.

        Returns:
            The validated model.

        Raises:
            pydantic.ValidationError: a field is unknown or its value is invalid.
        """
        import yaml

        data = yaml.safe_load(Path(path).read_text()) or {}
        return cls.model_validate(data)

    @classmethod
    def from_env(cls, prefix: str = "SHARDYARD_", **overrides: Any) -> Self:
        """Load the model from ``{prefix}{FIELD}`` environment variables.

        Values are parsed as JSON where they parse (``4``, ``0.5``, ``{"a": 1}``) and taken
        as strings otherwise; explicit ``overrides`` win over the environment.

        Example:
            >>> import os
            >>> os.environ["SHARDYARD_MAX_BATCH_SIZE"] = "64"
            >>> PoolConfig.from_env().max_batch_size
            64
            >>> del os.environ["SHARDYARD_MAX_BATCH_SIZE"]
        """
        data: dict[str, Any] = {}
        for name in cls.model_fields:
            raw = os.environ.get(f"{prefix}{name.upper()}")
            if raw is None:
                continue
            try:
                data[name] = json.loads(raw)
            except json.JSONDecodeError:
                data[name] = raw
        data.update(overrides)
        return cls.model_validate(data)


# --- sharding strategy options (validated when a strategy is built by name) ---------------


class HashOptions(_ConfigBase):
    """Options of the ``"hash"`` strategy (stable hash modulo the number of shards)."""


class JumpOptions(_ConfigBase):
    """Options of the ``"jump"`` strategy (Lamping & Veach jump consistent hash)."""


class RingOptions(_ConfigBase):
    """Options of the ``"ring"`` strategy (consistent-hash ring with virtual nodes)."""

    vnodes: int = Field(default=256, ge=1, le=1 << 16, description="virtual nodes per shard")


class RendezvousOptions(_ConfigBase):
    """Options of the ``"rendezvous"`` strategy (highest random weight)."""


class RangeOptions(_ConfigBase):
    """Options of the ``"range"`` strategy: ``num_shards - 1`` sorted boundaries, or none.

    Without boundaries the strategy splits the 64-bit stable-hash space evenly until
    ``fit(sample)`` places boundaries at the sample's quantiles.
    """

    boundaries: list[Any] | None = None


class BoundedOptions(_ConfigBase):
    """Options of the ``"bounded"`` strategy (consistent hashing with bounded loads)."""

    eps: float = Field(default=0.05, gt=0.0, le=10.0, description="capacity slack (1+eps)")
    vnodes: int = Field(default=256, ge=1, le=1 << 16, description="virtual nodes per shard")


# --- the pool and the cluster ---------------------------------------------------------------


class AutoscaleConfig(_ConfigBase):
    """When a pool grows and shrinks by itself (in the manner of Ray Serve's autoscaling).

    Every ``interval_s`` the pool computes the actors its backlog asks for,
    ``ceil(backlog / target_backlog_per_actor)`` bounded by ``min_actors`` and
    ``max_actors`` (and by ``num_shards``), where the backlog is the items handed to the
    pool and not finished. When that has stayed above the current size for
    ``upscale_delay_s`` the pool scales out to it; below, for ``downscale_delay_s``, it
    scales in. On a cluster it asks Ray's autoscaler for the CPUs of the actors it wants
    (``ray.autoscaler.sdk.request_resources``), so nodes are added where one runs.

    Attributes:
        min_actors: the fewest actors (and the size it starts at, unless ``num_actors`` is
            given).
        max_actors: the most actors.
        target_backlog_per_actor: unfinished items per actor the pool aims for.
        upscale_delay_s: how long the backlog must ask for more actors before it grows.
        downscale_delay_s: how long it must ask for fewer before it shrinks.
        interval_s: how often the backlog is read.

    Example:
        >>> AutoscaleConfig(min_actors=1, max_actors=4).target_backlog_per_actor
        2048
    """

    min_actors: int = Field(default=1, ge=1, le=4096)
    max_actors: int = Field(default=4, ge=1, le=4096)
    target_backlog_per_actor: int = Field(default=2048, ge=1)
    upscale_delay_s: float = Field(default=1.0, ge=0.0, le=3600.0)
    downscale_delay_s: float = Field(default=10.0, ge=0.0, le=86400.0)
    interval_s: float = Field(default=0.1, gt=0.0, le=60.0)

    @model_validator(mode="after")
    def _min_below_max(self) -> Self:
        if self.min_actors > self.max_actors:
            raise ValueError(
                f"min_actors ({self.min_actors}) must be <= max_actors ({self.max_actors})"
            )
        return self


class PoolConfig(_ConfigBase):
    """Configuration of a :class:`shardyard.ShardPool`.

    Attributes:
        num_actors: shard actor processes; ``None`` means one per CPU of the cluster.
        num_shards: logical shards, fixed for the pool's life: the most actors it can be
            scaled out to (as Flink's max parallelism). ``None`` means 8 per actor (per
            ``autoscale.max_actors`` when that is larger), which leaves room to scale out 8x.
        strategy: key -> shard strategy name (see :func:`shardyard.sharding.strategy`).
        strategy_options: options of that strategy, validated by its options model.
        keyless: how keyless items reach actors: ``"pull"`` (a shared queue that each actor
            takes from when it has room, in shrinking pieces: dynamic load balancing), or a
            balancer that pushes them on arrival (``"round_robin"``, ``"least_loaded"``,
            ``"power_of_two"`` on live load).
        max_batch_size: at most this many items of one shard go in one batch (and so in
            one call of a batch handler). Each Ray call costs about the same whatever it
            carries, mostly in Ray's own threads at both ends, so small batches cost CPU:
            a keyless stream of ``x + 1`` ran ~1.5x faster with 4,096 than with 1,024.
        batch_format: what a batch handler (``batched=True``) or ``Shard.process`` receives:
            ``"input"`` follows the input (a list, a generator or single ``submit`` items
            give a list; a numpy array gives arrays), ``"list"`` always a list, ``"numpy"``
            always an array (``np.asarray`` of the items). Per-item handlers always get
            plain Python items.
        max_batch_wait_s: how long a partly filled batch may wait for more items while its
            actor has capacity (the semantics of Ray Serve's ``batch_wait_timeout_s``);
            0 sends at once, and batches then grow by themselves while actors are busy.
        max_inflight_per_actor: Ray calls in flight per actor (backpressure).
        max_concurrency: handler calls one actor runs at once. A sync handler runs on the
            actor's event loop until it is seen to block (sleep, I/O: its calls wait far
            longer than they compute), then on a pool of this many threads: different
            shards' batches in parallel, and the items of one batch of a stateless per-item
            function too. An ``async def`` per-item function has up to this many items
            awaiting at once. A ``Shard``'s items always run one at a time, in order, per
            shard (a blocking one's, in one thread or another). 1: every call on the
            actor's event loop, one at a time (for handlers whose objects must stay in the
            thread that made them, as ``sqlite3`` connections).
        inflight_seconds_per_actor: about how many seconds of work may be in flight on one
            actor: each call carries at most ``inflight_seconds_per_actor /
            max_inflight_per_actor`` seconds of items, by the handler's measured recent cost
            per item (64 items while unknown). Bounds how long an interrupt or a scale waits
            for work already sent, and keeps progress moving with slow handlers. ``None``:
            only ``max_batch_size`` bounds a call.
        max_pending_items: items a single producer may have submitted but not yet
            finished before it blocks (bounds the driver's memory on long inputs).
        chunk_size: items a producer reads from its input and partitions at a time. Left at
            its default, a pool of many shards or actors reads more: 64 items per shard and
            8,192 per actor (up to ``max_pending_items``), so every shard a chunk touches gets
            a batch, and every actor a call, worth its cost.
        max_retries: how many deaths of one actor are recovered from (Ray restarts it;
            its shards are restored and the unfinished batches resent).
        checkpoint_every: batches between snapshots of a stateful shard, taken in-stream;
            recovery replays at most this many batches. A snapshot also comes once the
            batches since the last one hold ``checkpoint_every * 1024`` items
            (``ledger.LOG_ITEMS_PER_BATCH``), so the replay log the driver keeps does not
            grow with ``max_batch_size``. ``None`` turns snapshots off: a stateful shard's
            in-flight items then fail with ``ActorLostError`` on a crash.
        max_snapshot_failures: consecutive failed ``snapshot()`` calls of one shard tolerated
            (each is a warning and a stat) before the shard fails with
            ``ShardFailedError`` (its replay log would otherwise grow without bound).
        health_check_interval_s: how often every actor is checked for a restart, with or
            without work flowing (an idle actor that died is noticed within about this).
        restart_timeout_s: how long a dead actor may take to come back (Ray restarts it,
            on another node if its own is gone) before its shards' items fail with
            ``ActorLostError``.
        start_timeout_s: how long starting the pool (placing its actors, running every
            shard's ``setup``) may take, also when it starts lazily on first use.
        num_cpus_per_actor: Ray CPU reservation per actor (``None``: Ray's default for
            actors, which reserves no CPU while running).
        spread: give each actor a node: the one hosting the fewest of the pool's actors
            among the alive nodes its resources fit (Ray's node affinity, soft: after its
            node is lost, Ray restarts it elsewhere). ``False`` leaves it to Ray's default
            scheduler, which tends to pack actors onto few nodes.
        resources_per_actor: custom Ray resources each actor reserves, to pin a pool to
            the nodes that offer them (``ray start --resources '{"ingest": 4}'``), e.g.
            ``{"ingest": 1}``.
        name: the pool's name: the key of its checkpoints in ``store``.
        store: where ``checkpoint()`` keeps the shards' state, by URL: ``memory``,
            ``file:///dir``, ``sqlite:///path.db``, ``postgresql+psycopg://...``,
            ``mysql+pymysql://...`` (see :mod:`shardyard.state`). A pool with a ``name``
            and a ``store`` starts from the newest complete checkpoint stored under its name.
        failover_after_s: how long a dead actor may stay down (its node lost and no room to
            restart it elsewhere: Ray lists it as restarting or pending) before its shards
            are restored on the pool's other actors from their last snapshot and replayed;
            the actor is then retired. At least 1 s (a restart on a live node takes about
            that). A live actor that is merely slow to answer is never failed over. ``None``:
            wait ``restart_timeout_s`` and fail its shards.
        autoscale: grow and shrink the pool with its backlog (``None``: a fixed size,
            changed only by ``ShardPool.scale``).
        progress: show a progress bar (``tqdm.auto``: a widget in Jupyter) for ``map`` and
            ``map_unordered`` calls; ``None`` shows one in a Jupyter kernel for calls that
            last more than a second, and none in scripts. A call's ``progress=`` overrides it.
        memo_size: outputs each shard keeps in an LRU memo of a pure per-item function,
            keyed by the item: a repeated item is answered without calling the function
            again (0: off). Items that cannot be hashed, and calls that raise, are never
            kept. Not for a ``Shard`` subclass nor ``batched=True`` (``ConfigError``).
            ``pool.stats()`` counts the hits and misses.
    """

    num_actors: int | None = Field(default=None, ge=1, le=4096)
    num_shards: int | None = Field(default=None, ge=1, le=1 << 20)
    strategy: str = "jump"
    strategy_options: dict[str, Any] = Field(default_factory=dict)
    keyless: Literal["pull", "round_robin", "least_loaded", "power_of_two"] = "pull"
    max_batch_size: int = Field(default=4096, ge=1, le=1 << 24)
    batch_format: Literal["input", "list", "numpy"] = "input"
    max_batch_wait_s: float = Field(default=0.0, ge=0.0, le=60.0)
    max_inflight_per_actor: int = Field(default=2, ge=1, le=1024)
    max_concurrency: int = Field(default=64, ge=1, le=1024)
    inflight_seconds_per_actor: float | None = Field(default=1.0, gt=0.0)
    max_pending_items: int = Field(default=1 << 18, ge=1)
    chunk_size: int = Field(default=16384, ge=1, le=1 << 24)
    max_retries: int = Field(default=3, ge=0, le=100)
    checkpoint_every: int | None = Field(default=64, ge=1)
    max_snapshot_failures: int = Field(default=3, ge=1, le=1000)
    health_check_interval_s: float = Field(default=1.0, gt=0.0, le=3600.0)
    restart_timeout_s: float = Field(default=60.0, gt=0.0)
    start_timeout_s: float = Field(default=120.0, gt=0.0)
    num_cpus_per_actor: float | None = Field(default=None, ge=0.0)
    spread: bool = True
    resources_per_actor: dict[str, float] = Field(default_factory=dict)
    failover_after_s: float | None = Field(default=10.0, ge=1.0)
    name: str | None = Field(default=None, min_length=1, max_length=200)
    store: str | None = None
    progress: bool | None = None
    memo_size: int = Field(default=0, ge=0, le=1 << 30)

    @field_validator("resources_per_actor")
    @classmethod
    def _resources_are_amounts(cls, value: dict[str, float]) -> dict[str, float]:
        for name, amount in value.items():
            if amount < 0:
                raise ValueError(f"resources_per_actor[{name!r}] must be >= 0, got {amount}")
            if name in ("CPU", "GPU", "memory"):
                raise ValueError(
                    f"resources_per_actor cannot name {name!r}: use num_cpus_per_actor for CPUs"
                )
        return value

    autoscale: AutoscaleConfig | None = None

    @model_validator(mode="after")
    def _shards_cover_actors(self) -> Self:
        if self.store is not None and self.name is None:
            raise ValueError(
                "store needs name: checkpoints are kept under the pool's name (name='...')"
            )
        auto = self.autoscale
        if auto is not None and self.num_shards is not None and self.num_shards < auto.max_actors:
            raise ValueError(
                f"num_shards ({self.num_shards}) must be >= autoscale.max_actors "
                f"({auto.max_actors}): an actor without a shard would sit idle"
            )
        if (
            auto is not None
            and self.num_actors is not None
            and not (auto.min_actors <= self.num_actors <= auto.max_actors)
        ):
            raise ValueError(
                f"num_actors ({self.num_actors}) must be within autoscale's min_actors "
                f"({auto.min_actors}) and max_actors ({auto.max_actors})"
            )
        if (
            self.num_actors is not None
            and self.num_shards is not None
            and self.num_shards < self.num_actors
        ):
            raise ValueError(
                f"num_shards ({self.num_shards}) must be >= num_actors ({self.num_actors}): "
                "an actor without a shard would sit idle"
            )
        return self


class ClusterConfig(_ConfigBase):
    """How :func:`shardyard.connect` reaches Ray.

    Attributes:
        address: ``None`` starts (or reuses) an embedded local Ray unless ``RAY_ADDRESS``
            is set; ``"auto"`` joins the cluster started on this machine with ``ray start``;
            ``"ray://host:10001"`` uses Ray Client; ``"host:6379"`` joins a GCS address.
        num_cpus: CPUs of the embedded local Ray (``None``: all of the machine's).
        include_dashboard: start Ray's dashboard with the embedded local Ray.
        namespace: Ray namespace for shardyard's actors.
        log_to_driver: forward actor stdout/stderr to the driver.
        connect_timeout_s: how long each check of a cluster address may take (is anything
            listening, does it accept this process's token) before a clear error.
        freeze_gc: once connected, ``gc.freeze()`` the objects alive then (Ray's, the
            imports'), so the collector's full collections skip them (see
            :mod:`shardyard.cluster.heap`); ``False`` leaves the collector alone.
    """

    address: str | None = None
    num_cpus: int | None = Field(default=None, ge=1)
    include_dashboard: bool = False
    namespace: str | None = None
    log_to_driver: bool = True
    connect_timeout_s: float = Field(default=5.0, gt=0.0, le=600.0)
    freeze_gc: bool = True
