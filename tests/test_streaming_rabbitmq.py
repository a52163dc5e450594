"""RabbitMQ -> keyed aggregation -> PostgreSQL, with the driver SIGKILLed mid-run."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from services import MARIADB_URL, POSTGRES_URL, require

from shardyard.state import open_store
from shardyard.streams.rabbitmq import RabbitMQSource, SourceError
from shardyard.streams.sql import SqlUpsertSink

AMQP = "amqp://guest:guest@127.0.0.1:5672/%2F"

JOB = textwrap.dedent(
    """
    import json, os, sys
    from shardyard import Shard, ShardPool
    from shardyard.streams.rabbitmq import RabbitMQSource
    from shardyard.streams.sql import SqlUpsertSink

    class Totals(Shard):
        def setup(self, shard_id):
            self.totals = {}
        def process_item(self, event):
            total, count = self.totals.get(event["key"], (0, 0))
            self.totals[event["key"]] = (total + event["value"], count + 1)
            total, count = self.totals[event["key"]]
            return {"key": event["key"], "total": total, "count": count}
        def snapshot(self):
            return dict(self.totals)
        def restore(self, state):
            self.totals = dict(state)

    amqp, queue, store, sink_url, table = sys.argv[1:6]
    source = RabbitMQSource(amqp, queue, prefetch=2000, idle_timeout_s=3.0)
    crash_at = int(os.environ.get("CRASH_AT_ACK", "0"))
    if crash_at:  # die after a checkpoint's commit, before its acknowledgements
        acks, real_ack = [0], source.ack
        def ack(position):
            acks[0] += 1
            if acks[0] == crash_at:
                os._exit(9)
            real_ack(position)
        source.ack = ack
    sink = SqlUpsertSink(sink_url, table, key_columns=["key"],
                         columns={"key": "text", "total": "int", "count": "int"})
    with ShardPool(Totals, num_actors=2, num_shards=8, name="totals", store=store) as pool:
        report = pool.run(source, sink, key=lambda e: e["key"], checkpoint_interval_s=1.0)
    source.close()
    print(json.dumps({"records": report.records, "resumed_from": report.resumed_from,
                      "duplicates_dropped": source.duplicates_dropped}))
    """
)


@pytest.fixture
def queue() -> Iterator[str]:
    require("rabbitmq")
    import pika

    name = f"shardyard-test-{uuid.uuid4().hex[:8]}"
    conn = pika.BlockingConnection(pika.URLParameters(AMQP))
    conn.channel().queue_declare(name)
    conn.close()
    yield name
    conn = pika.BlockingConnection(pika.URLParameters(AMQP))
    conn.channel().queue_delete(name)
    conn.close()


def _publish(queue: str, events: list[dict[str, object]]) -> None:
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(AMQP))
    ch = conn.channel()
    for i, e in enumerate(events):
        ch.basic_publish(
            "",
            queue,
            json.dumps(e).encode(),
            pika.BasicProperties(message_id=f"m{i}", delivery_mode=2),
        )
    conn.close()


def _depth(queue: str) -> int:
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(AMQP))
    n = conn.channel().queue_declare(queue, passive=True).method.message_count
    conn.close()
    return int(n)


def _job(tmp_path: Path, *args: str, crash_at_ack: int = 0) -> subprocess.Popen[str]:
    script = tmp_path / "job.py"
    script.write_text(JOB)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["CRASH_AT_ACK"] = str(crash_at_ack)
    if crash_at_ack:  # output to files: a process that dies leaves Ray holding pipes
        with open(tmp_path / "crash.out", "w") as out:
            return subprocess.Popen(
                [sys.executable, str(script), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
                start_new_session=True,
            )
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )


@pytest.mark.timeout(600)
def test_100k_events_into_postgres_survive_a_driver_kill(queue: str, tmp_path: Path) -> None:
    require("postgresql")
    events = [{"key": f"k{i % 997}", "value": i % 13} for i in range(100_000)]
    _publish(queue, events)
    table = f"totals_{uuid.uuid4().hex[:8]}"
    store = f"sqlite:///{tmp_path}/ckpt.db"
    args = (AMQP, queue, store, POSTGRES_URL, table)
    first = _job(tmp_path, *args)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            last = open_store(store).latest("totals") if (tmp_path / "ckpt.db").exists() else None
            if last is not None and last.checkpoint_id >= 5:
                break
            assert first.poll() is None, first.communicate()[1][-3000:]
            time.sleep(0.05)
        os.killpg(first.pid, signal.SIGKILL)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.communicate(timeout=60)
    again = _job(tmp_path, *args)
    out, err = again.communicate(timeout=400)
    assert again.returncode == 0, err[-3000:]
    report = json.loads(out.splitlines()[-1])
    assert report["resumed_from"] >= 5
    totals: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for e in events:
        totals[str(e["key"])] += int(e["value"])  # type: ignore[call-overload]
        counts[str(e["key"])] += 1
    sink = SqlUpsertSink(
        POSTGRES_URL, table, ["key"], {"key": "text", "total": "int", "count": "int"}
    )
    try:
        rows = {r["key"]: (r["total"], r["count"]) for r in sink.rows()}
        with sink._engine.begin() as conn:
            conn.execute(sink._sa.text(f'DROP TABLE "{table}"'))
    finally:
        sink.close()
    assert rows == {k: (totals[k], counts[k]) for k in totals}  # exact: none lost or doubled
    assert _depth(queue) == 0
    print(f"resumed from checkpoint {report['resumed_from']}; {report['records']} records after")


def test_a_wrong_password_and_a_missing_queue_name_the_server(queue: str) -> None:
    with pytest.raises(SourceError, match=r"RabbitMQ at 127\.0\.0\.1:5672 .* refused the login"):
        RabbitMQSource("amqp://guest:wrong@127.0.0.1:5672/%2F", queue)
    with pytest.raises(SourceError, match=r"queue 'no-such-queue' on RabbitMQ at 127\.0\.0\.1"):
        RabbitMQSource(AMQP, "no-such-queue")


def _expected(events: list[dict[str, object]]) -> dict[str, tuple[int, int]]:
    totals: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for e in events:
        totals[str(e["key"])] += int(e["value"])  # type: ignore[call-overload]
        counts[str(e["key"])] += 1
    return {k: (totals[k], counts[k]) for k in totals}


def _table_rows(url: str, table: str) -> dict[str, tuple[int, int]]:
    sink = SqlUpsertSink(url, table, ["key"], {"key": "text", "total": "int", "count": "int"})
    try:
        rows = {r["key"]: (r["total"], r["count"]) for r in sink.rows()}
        with sink._engine.begin() as conn:
            conn.execute(sink._sa.text(f"DROP TABLE {table}"))
    finally:
        sink.close()
    return rows


@pytest.mark.timeout(600)
def test_a_crash_between_commit_and_ack_applies_nothing_twice_in_mariadb(
    queue: str, tmp_path: Path
) -> None:
    require("mariadb")
    events = [{"key": f"k{i % 301}", "value": i % 7} for i in range(20_000)]
    _publish(queue, events)
    table = f"totals_{uuid.uuid4().hex[:8]}"
    args = (AMQP, queue, f"sqlite:///{tmp_path}/ckpt.db", MARIADB_URL, table)
    crashed = _job(tmp_path, *args, crash_at_ack=3)
    try:
        # wait(), not communicate(): the Ray it started may hold the pipes a while longer.
        code = crashed.wait(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(crashed.pid, signal.SIGKILL)  # whatever of its Ray is left
    assert code == 9, (tmp_path / "crash.out").read_text()[-3000:]  # after commit 3, before acks
    again = _job(tmp_path, *args)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-3000:]
    report = json.loads(out.splitlines()[-1])
    assert report["resumed_from"] == 3
    assert report["duplicates_dropped"] > 0  # checkpoint 3's messages came again: dropped
    assert _table_rows(MARIADB_URL, table) == _expected(events)
    assert _depth(queue) == 0
