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

A record that failed to decode, whose key function raised, or whose handler raised on
every try (``retries`` more after the first), becomes a dead letter: a dict ``{"id",
"stage", "error", "payload"}`` (stage ``"decode"``, ``"key"`` or ``"handler"``; a
handler's error names the shard, the key and the original traceback; the payload is the
message as text) written to ``dead_letters`` with the epoch's
checkpoint id, like the sink's outputs, and acknowledged with the rest. Without
``dead_letters`` they are logged and counted. Either way the stream goes on.

A job stops at the end of its source, or when ``stop`` is set (``request_stop()`` sets the
default one; ``shardyard run`` calls it on SIGINT/SIGTERM): it then closes its epoch with
a checkpoint and returns.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from shardyard.errors import ConfigError, TaskError
from shardyard.state.base import Checkpoint
from shardyard.streams.base import Record, Sink, Source

if TYPE_CHECKING:
    from shardyard.scheduler.pool import ShardPool

__all__ = ["RunReport", "request_stop", "run_job"]

_log = logging.getLogger("shardyard.streams")

#: The part id under which a checkpoint keeps the source's position as it was once the
#: checkpoint's acknowledgements were confirmed (a broker then brings none of them again).
ACKED_PART = -1

_running_lock = threading.Lock()
_running: set[threading.Event] = set()  # the default stop events of the running jobs


def request_stop() -> int:
    """Make every job of this process that is running with the default ``stop`` end after
    its current epoch's checkpoint (``shardyard run`` calls it on SIGINT and SIGTERM).

    Returns:
        How many running jobs it asked to stop (a job started later is not affected).
    """
    with _running_lock:
        for event in _running:
            event.set()
        return len(_running)


@dataclass(frozen=True)
class RunReport:
    """What one ``ShardPool.run`` did.

    Attributes:
        records: records read and processed by this run.
        checkpoints: checkpoints this run committed.
        resumed_from: the checkpoint id it started from (0: none).
        seconds: how long it ran (with a source's idle timeout at the end).
        dead_letters: records that went to the dead letters (undecodable, their key function
            raised, or their handler failed past the retries).
        stopped: it was stopped before its source ended.
        checkpoint_id: the last checkpoint it committed (0: none).
    """

    records: int
    checkpoints: int
    resumed_from: int
    seconds: float
    dead_letters: int = 0
    stopped: bool = False
    checkpoint_id: int = 0


def run_job(
    pool: ShardPool,
    source: Source,
    sink: Sink | None = None,
    key: Callable[[Any], Any] | None = None,
    checkpoint_interval_s: float = 5.0,
    max_records: int = 4096,
    dead_letters: Sink | None = None,
    retries: int = 0,
    stop: threading.Event | None = None,
) -> RunReport:
    """Run ``source`` through ``pool`` into ``sink`` until the source ends or ``stop`` is
    set (default: an event :func:`request_stop` sets; see the module doc).

    Raises:
        ConfigError: the pool has no ``name`` and ``store`` (a job needs durable checkpoints),
            its newest checkpoint was not written by a job, or an earlier run on this pool
            failed (its shards hold work past the last checkpoint: start a new pool).
    """
    cfg = pool.config
    if cfg.name is None or cfg.store is None:
        raise ConfigError("run() needs a pool with name= and store= (durable checkpoints)")
    if retries < 0:
        raise ConfigError(f"retries must be >= 0, not {retries}")
    start = time.monotonic()
    restored = _resume_point(pool)
    source.restore(_source_position(pool, restored))
    if stop is None:
        stop = threading.Event()
        with _running_lock:
            _running.add(stop)
    pool._job_checkpoint = None  # in flight: a failure leaves the shards past a checkpoint
    try:
        report = _loop(
            pool, source, sink, key, checkpoint_interval_s, max_records, dead_letters, retries, stop
        )
    finally:
        with _running_lock:
            _running.discard(stop)
    pool._job_checkpoint = report.checkpoint_id or _id(restored)
    return replace(report, resumed_from=_id(restored), seconds=time.monotonic() - start)


def _id(checkpoint: Checkpoint | None) -> int:
    return checkpoint.checkpoint_id if checkpoint is not None else 0


def _resume_point(pool: ShardPool) -> Checkpoint | None:
    """The checkpoint the pool's shards hold: the one it started from, or the one its last
    run ended at."""
    restored = pool.restored_from  # starts the pool
    assert pool.config.name is not None and pool._store is not None
    ended_at = _id(restored) if pool._job_checkpoint == -1 else pool._job_checkpoint
    if ended_at is None:
        raise ConfigError(
            f"an earlier run() on pool {pool.config.name!r} failed: its shards hold work past "
            "its last checkpoint. Close the pool and run a new one with the same name and "
            "store: it resumes from that checkpoint, nothing lost or applied twice"
        )
    latest = pool._store.latest(pool.config.name)
    if _id(latest) != ended_at:
        raise ConfigError(
            f"pool {pool.config.name!r} holds checkpoint {ended_at} but the store's newest is "
            f"{_id(latest)}: another process runs this job? Use one pool per name"
        )
    return latest


def _source_position(pool: ShardPool, checkpoint: Checkpoint | None) -> Any:
    """Where the source resumes: the position kept once the checkpoint's acknowledgements
    were confirmed, or else the one committed with it."""
    if checkpoint is None:
        return None
    assert pool.config.name is not None and pool._store is not None
    try:
        data = pool._store.get_part(pool.config.name, checkpoint.checkpoint_id, ACKED_PART)
    except KeyError:
        data = checkpoint.meta
    try:
        return json.loads(data)["source"] if data else None
    except (ValueError, KeyError, TypeError):
        raise ConfigError(
            f"checkpoint {checkpoint.checkpoint_id} of pool {pool.config.name!r} was not "
            "written by run() (its meta is not a job's): use another name for this job"
        ) from None


def _loop(
    pool: ShardPool,
    source: Source,
    sink: Sink | None,
    key: Callable[[Any], Any] | None,
    checkpoint_interval_s: float,
    max_records: int,
    dead_letters: Sink | None,
    retries: int,
    stop: threading.Event,
) -> RunReport:
    records = checkpoints = in_epoch = dead_total = last_id = 0
    outputs: list[Any] = []
    dead: list[dict[str, Any]] = []
    epoch_start = time.monotonic()
    ended = stopped = False
    while not ended:
        stopped = stop.is_set()
        batch = None if stopped else source.read(max_records)
        idle = False
        if batch is None:
            ended = True
        elif batch:
            good = [r for r in batch if r.error is None]
            dead += [_dead_letter(r, "decode", r.error) for r in batch if r.error is not None]
            outs, failed = _map(pool, good, key, retries)
            outputs += outs
            dead += failed
            records += len(batch)
            in_epoch += len(batch)
        else:
            idle = True  # nothing ready, or a broker's unacknowledged window is full
        due = time.monotonic() - epoch_start >= checkpoint_interval_s
        # Close the epoch when it is due, at the end, or when the source has nothing more
        # for now: its records are acknowledged only then, which frees its window.
        if in_epoch and (ended or due or idle):
            last_id = _commit_epoch(pool, source, sink, outputs, dead_letters, dead)
            checkpoints += 1
            dead_total += len(dead)
            outputs, dead, in_epoch = [], [], 0
            epoch_start = time.monotonic()
        elif idle:
            time.sleep(0.01)
    return RunReport(
        records=records,
        checkpoints=checkpoints,
        resumed_from=0,
        seconds=0.0,
        dead_letters=dead_total,
        stopped=stopped,
        checkpoint_id=last_id,
    )


def _map(
    pool: ShardPool, records: list[Record], key: Callable[[Any], Any] | None, retries: int
) -> tuple[list[Any], list[dict[str, Any]]]:
    """The records' outputs (``None`` left out) and the dead letters of those whose key
    function raised or whose handler failed ``retries + 1`` times (a retry runs after the
    rest of its chunk)."""
    outputs: list[Any] = []
    dead: list[dict[str, Any]] = []
    todo = records
    keys: list[Any] | None = None
    if key is not None:
        todo, keys = [], []
        for r in records:
            try:
                k = key(r.value)
            except Exception as exc:
                dead.append(_dead_letter(r, "key", f"{type(exc).__name__}: {exc}"))
                continue
            todo.append(r)
            keys.append(k)
    for attempt in range(retries + 1):
        values = [r.value for r in todo]
        failed = []
        outs = pool.map(values, keys=keys, return_exceptions=True)
        for record, k, out in zip(todo, keys or [None] * len(todo), outs, strict=True):
            if isinstance(out, TaskError):
                failed.append((record, k, out))
            elif out is not None:
                outputs.append(out)
        if not failed:
            break
        if attempt == retries:
            dead += [_dead_letter(r, "handler", str(exc)) for r, _, exc in failed]
        todo = [r for r, _, _ in failed]
        keys = [k for _, k, _ in failed] if keys is not None else None
    return outputs, dead


def _dead_letter(record: Record, stage: str, error: str | None) -> dict[str, Any]:
    if record.payload is not None:
        payload = record.payload.decode("utf-8", "backslashreplace")
    else:
        payload = repr(record.value)
    return {"id": record.id, "stage": stage, "error": error, "payload": payload}


def _commit_epoch(
    pool: ShardPool,
    source: Source,
    sink: Sink | None,
    outputs: list[Any],
    dead_letters: Sink | None,
    dead: list[dict[str, Any]],
) -> int:
    assert pool.config.name is not None
    store = pool._store
    assert store is not None
    cid = store.next_id(pool.config.name)
    if sink is not None:
        sink.write(cid, outputs)
    for n, letter in enumerate(dead):
        if letter["id"] is None:
            letter["id"] = f"{cid}-{n}"
    if dead_letters is not None:
        dead_letters.write(cid, dead)
    else:
        for letter in dead:
            _log.error("dead letter %s (%s): %s", letter["id"], letter["stage"], letter["error"])
    position = source.position()
    committed = pool.checkpoint(meta=json.dumps({"source": position}).encode())
    assert committed == cid, (committed, cid)
    source.ack(position)
    # What may still come again now (a broker's confirmed acknowledgements took the rest
    # out): kept with the checkpoint, a restart then drops no newer twin of those messages.
    note = json.dumps({"source": source.position()}).encode()
    store.put_part(pool.config.name, cid, ACKED_PART, note)
    return cid
