"""Redis Streams -> keyed aggregation -> PostgreSQL: a driver kill, a dropped connection,
and clear errors, on the real Redis."""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from services import POSTGRES_URL, require
from streaming_helpers import (
    TOTALS_COLUMNS,
    expected_totals,
    kill_and_run_again,
    new_table,
    take_table,
)

import shardyard
from shardyard import Shard, ShardPool, SourceError
from shardyard.streams.redis_streams import RedisStreamSource
from shardyard.streams.sql import SqlUpsertSink

REDIS = "redis://127.0.0.1:6379/0"


@pytest.fixture
def stream() -> Iterator[str]:
    require("redis")
    import redis

    name = f"shardyard-test-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(REDIS)
    try:
        yield name
    finally:
        client.delete(name)
        client.close()


def _add(stream: str, events: list[Any]) -> None:
    import redis

    client = redis.Redis.from_url(REDIS)
    for start in range(0, len(events), 5000):
        pipe = client.pipeline(transaction=False)
        for e in events[start : start + 5000]:
            pipe.xadd(stream, {"data": e if isinstance(e, bytes) else json.dumps(e)})
        pipe.execute()
    client.close()


def _left(stream: str) -> tuple[int, int]:
    """(entries pending in the group, entries not yet delivered to it)."""
    import redis

    client = redis.Redis.from_url(REDIS)
    (group,) = client.xinfo_groups(stream)
    client.close()
    return int(group["pending"]), int(group["lag"])


@pytest.mark.timeout(600)
def test_100k_events_survive_a_driver_kill(stream: str, tmp_path: Path) -> None:
    require("postgresql")
    events = [{"key": f"k{i % 997}", "value": i % 13} for i in range(100_000)]
    _add(stream, events)
    table = new_table()
    report = kill_and_run_again(tmp_path, "redis", REDIS, stream, POSTGRES_URL, table)
    assert take_table(POSTGRES_URL, table) == expected_totals(events)  # none lost or doubled
    assert _left(stream) == (0, 0)  # everything acknowledged
    print(f"resumed from checkpoint {report['resumed_from']}; {report['records']} records after")


class Totals(Shard):
    def setup(self, shard_id: int) -> None:
        self.totals: dict[str, tuple[int, int]] = {}

    def process_item(self, event: dict[str, Any]) -> dict[str, Any]:
        total, count = self.totals.get(event["key"], (0, 0))
        self.totals[event["key"]] = (total + event["value"], count + 1)
        return {"key": event["key"], "total": total + event["value"], "count": count + 1}

    def snapshot(self) -> dict[str, tuple[int, int]]:
        return dict(self.totals)

    def restore(self, state: dict[str, tuple[int, int]]) -> None:
        self.totals = dict(state)


def _kill_clients(name: str) -> int:
    import redis

    client = redis.Redis.from_url(REDIS)
    ids = [c["id"] for c in client.client_list() if c.get("name") == name]
    for cid in ids:
        client.client_kill_filter(_id=cid)
    client.close()
    return len(ids)


@pytest.mark.timeout(300)
def test_a_dropped_connection_loses_nothing(
    ray_local: shardyard.ClusterInfo, stream: str, tmp_path: Path
) -> None:
    require("postgresql")
    events = [{"key": f"k{i % 97}", "value": i % 11} for i in range(30_000)]
    _add(stream, events)
    table = new_table()
    sink = SqlUpsertSink(POSTGRES_URL, table, ["key"], TOTALS_COLUMNS)
    source = RedisStreamSource(REDIS, stream, max_pending=500, idle_timeout_s=3.0)
    store = f"sqlite:///{tmp_path}/ckpt.db"
    result: list[Any] = []
    try:
        with ShardPool(Totals, num_actors=2, num_shards=4, name="drop", store=store) as pool:
            job = threading.Thread(
                target=lambda: result.append(
                    pool.run(source, sink, key=lambda e: e["key"], checkpoint_interval_s=0.3)
                ),
                daemon=True,
            )
            job.start()
            deadline = time.monotonic() + 200
            killed = 0
            # Often, so some kills land while a command is in flight: at least 20, and on
            # until one did (how many it takes depends on the machine's timing).
            while (
                job.is_alive()
                and time.monotonic() < deadline
                and (killed < 20 or (source.reconnects == 0 and killed < 400))
            ):
                killed += _kill_clients(f"shardyard:{stream}")
                time.sleep(random.uniform(0.05, 0.3))
            job.join(timeout=200)
        assert not job.is_alive() and result, "the job failed"
    finally:
        source.close()
        sink.close()
    assert result[0].records == 30_000
    assert take_table(POSTGRES_URL, table) == expected_totals(events)  # none lost or doubled
    assert _left(stream) == (0, 0)
    # The faults happened: killed while idle, redis-py connects again by itself; killed with
    # a command in flight, the source does (and reads its pending entries again). How many
    # kills land before the job ends depends on the machine's speed: at least a few.
    assert killed >= 5 and source.reconnects >= 1
    print(f"{killed} connections killed, {source.reconnects} in flight")


def test_a_wrong_password_and_a_missing_stream_name_the_server(stream: str) -> None:
    import redis

    _add(stream, [{"key": "a", "value": 1}])
    user = f"shardyard-test-{uuid.uuid4().hex[:8]}"
    admin = redis.Redis.from_url(REDIS)
    admin.acl_setuser(user, enabled=True, passwords=["+right"], keys=["*"], commands=["+@all"])
    try:
        with pytest.raises(SourceError, match=r"Redis at 127\.0\.0\.1:6379 .* refused the login"):
            RedisStreamSource(f"redis://{user}:wrong@127.0.0.1:6379/0", stream)
        RedisStreamSource(f"redis://{user}:right@127.0.0.1:6379/0", stream).close()
    finally:
        admin.acl_deluser(user)
        admin.close()
    with pytest.raises(SourceError, match=r"stream 'no-such-stream' on Redis at 127\.0\.0\.1"):
        RedisStreamSource(REDIS, "no-such-stream")
    with pytest.raises(SourceError, match=r"cannot connect to Redis at 127\.0\.0\.1:1 "):
        RedisStreamSource("redis://127.0.0.1:1/0", stream, reconnect_timeout_s=1)


def test_an_entry_deleted_before_it_was_processed_is_a_dead_letter(stream: str) -> None:
    import redis

    _add(stream, [{"key": "a", "value": i} for i in range(3)])
    first = RedisStreamSource(REDIS, stream, idle_timeout_s=0.5)
    first.restore(None)
    while not (got := first.read(10)):  # handed to the consumer, then the driver dies
        pass
    first.close()
    client = redis.Redis.from_url(REDIS)
    client.xdel(stream, got[1].id)
    client.close()
    again = RedisStreamSource(REDIS, stream, idle_timeout_s=0.5)
    again.restore(None)
    records = []
    while (chunk := again.read(10)) is not None:
        records += chunk
        if not chunk:  # as the job does: checkpoint when the source is idle
            again.ack(again.position())
    again.close()
    assert [r.id for r in records] == [r.id for r in got]
    assert records[1].error == "the entry was deleted from the stream before it was processed"
    assert [r.value for r in records if r.error is None] == [got[0].value, got[2].value]
