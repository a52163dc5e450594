"""The streaming job loop behind ``ShardPool.run``: read, map, and commit at checkpoints.

Each epoch: records are read in chunks and mapped through the pool (so items of a key
reach their shard in order, and every chunk is finished before the next is read); once
``checkpoint_interval_s`` has passed (and at the end of the source) the epoch closes:

1. the sink writes the epoch's outputs under the next checkpoint id (replacing a write of
   that id left by a crash);
2. the pool stores every shard's state and the source's position as that checkpoint;
3. the source is acknowledged up to that position.

A crash before 2 leaves the previous checkpoint the newest: the next run restores the
shards and the source position from it, and rewrites the same sink part. A crash after 2
redelivers at most what was not acknowledged yet, which the restored position skips.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shardyard.errors import ConfigError
from shardyard.streams.base import Sink, Source

if TYPE_CHECKING:
    from shardyard.scheduler.pool import ShardPool

__all__ = ["RunReport", "run_job"]


@dataclass(frozen=True)
class RunReport:
    """What one ``ShardPool.run`` did.

    Attributes:
        records: records read and processed by this run.
        checkpoints: checkpoints this run committed.
        resumed_from: the checkpoint id it started from (0: none).
        seconds: how long it ran.
    """

    records: int
    checkpoints: int
    resumed_from: int
    seconds: float


def run_job(
    pool: ShardPool,
    source: Source,
    sink: Sink | None = None,
    key: Callable[[Any], Any] | None = None,
    checkpoint_interval_s: float = 5.0,
    max_records: int = 4096,
) -> RunReport:
    """Run ``source`` through ``pool`` into ``sink`` until the source ends (see module doc).

    Raises:
        ConfigError: the pool has no ``name`` and ``store`` (a job needs durable checkpoints),
            or its newest checkpoint was not written by a job.
    """
    cfg = pool.config
    if cfg.name is None or cfg.store is None:
        raise ConfigError("run() needs a pool with name= and store= (durable checkpoints)")
    start = time.monotonic()
    restored = pool.restored_from  # starts the pool
    meta: dict[str, Any] = {}
    if restored is not None and restored.meta:
        try:
            meta = json.loads(restored.meta)
        except ValueError:
            raise ConfigError(
                f"checkpoint {restored.checkpoint_id} of pool {cfg.name!r} was not written by "
                "run() (its meta is not a job's): use another name for this job"
            ) from None
    source.restore(meta.get("source"))
    records = checkpoints = in_epoch = 0
    outputs: list[Any] = []
    epoch_start = time.monotonic()
    ended = False
    while not ended:
        batch = source.read(max_records)
        idle = False
        if batch is None:
            ended = True
        elif batch:
            values = [r.value for r in batch]
            keys = [key(v) for v in values] if key is not None else None
            outputs += [o for o in pool.map(values, keys=keys) if o is not None]
            records += len(batch)
            in_epoch += len(batch)
        else:
            idle = True  # nothing ready, or a broker's unacknowledged window is full
        due = time.monotonic() - epoch_start >= checkpoint_interval_s
        # Close the epoch when it is due, at the end, or when the source has nothing more
        # for now: its records are acknowledged only then, which frees its window.
        if ended or (in_epoch and (due or idle)):
            _commit_epoch(pool, source, sink, outputs)
            checkpoints += 1
            outputs, in_epoch = [], 0
            epoch_start = time.monotonic()
        elif idle:
            time.sleep(0.01)
    return RunReport(
        records=records,
        checkpoints=checkpoints,
        resumed_from=restored.checkpoint_id if restored is not None else 0,
        seconds=time.monotonic() - start,
    )


def _commit_epoch(pool: ShardPool, source: Source, sink: Sink | None, outputs: list[Any]) -> None:
    assert pool.config.name is not None
    store = pool._store
    assert store is not None
    cid = store.next_id(pool.config.name)
    if sink is not None:
        sink.write(cid, outputs)
    position = source.position()
    committed = pool.checkpoint(meta=json.dumps({"source": position}).encode())
    assert committed == cid, (committed, cid)
    source.ack(position)
