"""Statistics of a running pool, as pydantic models (printable, JSON-able).

Example:
    >>> s = ShardStats(shard_id=0, actor=0, items=10, batches=2, queue_depth=0, errors=0)
    >>> s.items
    10
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

__all__ = ["ActorStats", "PlacementChange", "PoolStats", "ScaleReport", "ShardStats"]


class ShardStats(BaseModel):
    """Counters of one logical shard.

    Attributes:
        shard_id: the shard.
        actor: index of the actor hosting it.
        items: items finished (output or error) as seen by the driver.
        batches: batches finished.
        queue_depth: items queued on the driver or in flight to the actor.
        errors: items that ended in an error.
        busy_s: seconds the actor spent in the handler for this shard.
        generation: how many times the shard was placed (1 + restores after crashes).
        replayed_batches: batches re-applied after restores.
        retained_batches: answered batches held for replay since the last snapshot (the
            memory a crash costs; bounded by ``checkpoint_every`` while snapshots succeed).
        snapshot_failures: failed ``snapshot()`` calls in a row.
        failed: why the shard cannot go on (``None`` while it is healthy).
        memo_hits: items its memo answered without running the function (kept outputs,
            or a call of the same key in progress; ``PoolConfig.memo_size``). Counted
            since the shard was last placed on its actor, as ``busy_s``.
        memo_misses: hashable items that ran the function (with a memo large enough,
            the distinct items).
        memo_uncached: items that could not be hashed, so bypassed the memo (the function
            ran).
    """

    model_config = ConfigDict(frozen=True)

    shard_id: int
    actor: int
    items: int
    batches: int
    queue_depth: int
    errors: int
    busy_s: float = 0.0
    generation: int = 0
    replayed_batches: int = 0
    retained_batches: int = 0
    snapshot_failures: int = 0
    failed: str | None = None
    memo_hits: int = 0
    memo_misses: int = 0
    memo_uncached: int = 0


class ActorStats(BaseModel):
    """Counters of one shard actor process.

    Attributes:
        actor: its index in the pool.
        pid: its process id (``None`` if it did not answer).
        node_id: the Ray node it runs on.
        node_ip: that node's address.
        shards: the shards it hosts.
        in_flight_calls: Ray calls awaiting its reply.
        outstanding: items queued for it or in flight.
        items: items its handler has processed (since its last restart).
        restarts: deaths recovered from (all causes).
        state: ``"running"``, ``"placing"`` (its shards are being restored), ``"restarted"``
            (a new process answered that the pool has not re-placed yet) or ``"failed"``
            (its restart budget is spent).
    """

    model_config = ConfigDict(frozen=True)

    actor: int
    pid: int | None
    node_id: str | None
    node_ip: str | None = None
    shards: list[int]
    in_flight_calls: int
    outstanding: int
    items: int
    restarts: int
    state: str = "running"


class PlacementChange(BaseModel):
    """One shard moved from one actor to another (a scale, or a failover).

    Attributes:
        time: when the new actor hosted it (seconds since the epoch).
        shard_id: the shard.
        from_actor: the actor it left.
        to_actor: the actor it went to.
        pause_s: how long its new items were held (from the start of the move until the
            new actor hosted it).
        state_bytes: the size of the state that went with it (0 for a stateless shard, or
            a failover, which restores from the last snapshot the driver holds).
        reason: ``"scale"`` (handed off by a live actor) or ``"failover"`` (its actor was
            unreachable for ``failover_after_s``: restored elsewhere from its snapshot).
    """

    model_config = ConfigDict(frozen=True)

    time: float
    shard_id: int
    from_actor: int
    to_actor: int
    pause_s: float
    state_bytes: int = 0
    reason: str = "scale"


class ScaleReport(BaseModel):
    """What one ``ShardPool.scale`` did.

    Attributes:
        num_actors_before: the pool's actors before.
        num_actors: the pool's actors after.
        moved_shards: the shards that moved (the fewest that balance the new actors).
        seconds: how long the scale took, starting new actors included.
        max_pause_s: the longest time any one moved shard's items were held.
        started_actors: indices of the actors started.
        retired_actors: indices of the actors stopped (their processes ended).
        placement_before: ``{shard_id: actor}`` before the scale.
        placement: ``{shard_id: actor}`` after it (``moved_shards`` is exactly where the
            two differ: ``sharding.moved_shards(placement_before, placement)``).
    """

    model_config = ConfigDict(frozen=True)

    num_actors_before: int
    num_actors: int
    moved_shards: list[int]
    seconds: float
    max_pause_s: float
    started_actors: list[int] = []
    retired_actors: list[int] = []
    placement_before: dict[int, int] = {}
    placement: dict[int, int] = {}


class PoolStats(BaseModel):
    """A pool's shards and actors at one moment.

    Attributes:
        shards: one entry per logical shard.
        actors: one entry per actor.
        keyless_queued: keyless items waiting for an actor to pull them.
        snapshot_failures: failed ``snapshot()`` calls in total.
        placement_history: every shard move, oldest first (when, which shard, from which
            actor to which, and how long it paused).
    """

    model_config = ConfigDict(frozen=True)

    shards: list[ShardStats]
    actors: list[ActorStats]
    keyless_queued: int = 0
    snapshot_failures: int = 0
    placement_history: list[PlacementChange] = []

    @property
    def num_actors(self) -> int:
        """The pool's actors (retired ones are not listed)."""
        return len(self.actors)

    @property
    def items(self) -> int:
        """Items finished across all shards."""
        return sum(s.items for s in self.shards)

    @property
    def memo_hits(self) -> int:
        """Items answered by the shards' memos (``PoolConfig.memo_size``), in total."""
        return sum(s.memo_hits for s in self.shards)

    @property
    def memo_misses(self) -> int:
        """Items the shards' memos did not hold, in total (the function ran)."""
        return sum(s.memo_misses for s in self.shards)

    @property
    def memo_uncached(self) -> int:
        """Unhashable items that bypassed the shards' memos, in total."""
        return sum(s.memo_uncached for s in self.shards)

    def __repr__(self) -> str:
        from shardyard.scheduler.display import summary

        return summary(self)

    def __str__(self) -> str:
        return f"{self!r}\n{self.load_table()}"

    def _repr_html_(self) -> str:
        from shardyard.scheduler.display import stats_html

        return stats_html(self)

    def to_pandas(self, of: str = "shards") -> Any:
        """A pandas DataFrame, one row per shard (``of="shards"``) or per actor (``"actors"``).

        Raises:
            ImportError: pandas is not installed (the ``notebook`` extra has it).
        """
        from shardyard.scheduler.display import stats_frame

        return stats_frame(self, of)

    def plot(self, metric: str = "items") -> Any:
        """A matplotlib Figure of ``metric`` (``"items"``, ``"busy_s"``, ``"errors"``) per
        shard and per actor, with the mean and the skew (max / mean): uneven load shows.

        In Jupyter, a cell ending in ``pool.stats().plot()`` shows the figure.
        """
        from shardyard.scheduler.display import plot_load

        return plot_load(self, metric)

    def load_table(self) -> str:
        """A small text table of items per actor and shard (for printing)."""
        lines = ["actor  shards  items    busy_s"]
        for a in self.actors:
            busy = sum(self.shards[s].busy_s for s in a.shards)
            items = sum(self.shards[s].items for s in a.shards)
            lines.append(f"{a.actor:>5}  {len(a.shards):>6}  {items:>7}  {busy:>7.2f}")
        return "\n".join(lines)
