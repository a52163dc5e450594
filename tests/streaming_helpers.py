"""What the streaming tests share: queues on the real RabbitMQ, publishing, and the
expected per-key aggregation against the table a job wrote."""

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
from typing import Any

from services import require

from shardyard.state import open_store
from shardyard.streams.sql import SqlUpsertSink

AMQP = "amqp://guest:guest@127.0.0.1:5672/%2F"
TOTALS_COLUMNS = {"key": "text", "total": "int", "count": "int"}


@contextlib.contextmanager
def rabbitmq_queue() -> Iterator[str]:
    """A new durable queue on the real RabbitMQ, deleted afterwards."""
    require("rabbitmq")
    import pika

    name = f"shardyard-test-{uuid.uuid4().hex[:8]}"
    conn = pika.BlockingConnection(pika.URLParameters(AMQP))
    conn.channel().queue_declare(name, durable=True)
    conn.close()
    try:
        yield name
    finally:
        conn = pika.BlockingConnection(pika.URLParameters(AMQP))
        conn.channel().queue_delete(name)
        conn.close()


def publish(queue: str, bodies: list[Any]) -> None:
    """Publish each body (JSON-encoded unless bytes) with message ids ``m0``, ``m1``, ..."""
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(AMQP))
    ch = conn.channel()
    for i, body in enumerate(bodies):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        ch.basic_publish("", queue, data, pika.BasicProperties(message_id=f"m{i}", delivery_mode=2))
    conn.close()


def depth(queue: str) -> int:
    """Messages in ``queue`` (ready, not counting those handed out unacknowledged)."""
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(AMQP))
    n = conn.channel().queue_declare(queue, passive=True).method.message_count
    conn.close()
    return int(n)


def close_connections(name: str) -> int:
    """Close, from the server side, every RabbitMQ connection called ``name``; how many."""
    listing = subprocess.run(
        ["rabbitmqctl", "list_connections", "pid", "client_properties", "-q"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    closed = 0
    for line in listing.splitlines():
        pid, _, props = line.partition("\t")
        if f'{{"connection_name","{name}"}}' in props:
            subprocess.run(
                ["rabbitmqctl", "close_connection", pid, "closed by a shardyard test"],
                capture_output=True,
                check=True,
            )
            closed += 1
    return closed


def expected_totals(events: list[dict[str, Any]]) -> dict[str, tuple[int, int]]:
    """``{key: (sum of values, count)}`` over ``events``: the serial answer."""
    totals: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for e in events:
        totals[str(e["key"])] += int(e["value"])
        counts[str(e["key"])] += 1
    return {k: (totals[k], counts[k]) for k in totals}


def take_table(url: str, table: str) -> dict[str, tuple[int, int]]:
    """The totals table a job wrote, as ``{key: (total, count)}``; the table is dropped."""
    sink = SqlUpsertSink(url, table, ["key"], TOTALS_COLUMNS)
    try:
        rows = {r["key"]: (r["total"], r["count"]) for r in sink.rows()}
        sink.table.drop(sink._engine)
    finally:
        sink.close()
    return rows


def new_table() -> str:
    return f"totals_{uuid.uuid4().hex[:8]}"


#: A job as a user writes it: per-key (total, count) from a queue or stream into a table.
#: Arguments: source kind (rabbitmq, redis), its URL, the queue or stream, the store URL,
#: the sink's URL and table. CRASH_AT_ACK=N makes it die after checkpoint N's commit,
#: before its acknowledgements.
JOB = textwrap.dedent(
    """
    import json, os, sys
    from shardyard import Shard, ShardPool
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

    kind, url, name, store, sink_url, table = sys.argv[1:7]
    if kind == "rabbitmq":
        from shardyard.streams.rabbitmq import RabbitMQSource
        source = RabbitMQSource(url, name, prefetch=2000, idle_timeout_s=3.0)
    else:
        from shardyard.streams.redis_streams import RedisStreamSource
        source = RedisStreamSource(url, name, max_pending=2000, idle_timeout_s=3.0)
    crash_at = int(os.environ.get("CRASH_AT_ACK", "0"))
    if crash_at:
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


def start_job(tmp_path: Path, *args: str, crash_at_ack: int = 0) -> subprocess.Popen[str]:
    """:data:`JOB` as its own driver process (its own embedded Ray, its own session)."""
    script = tmp_path / "job.py"
    script.write_text(JOB)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["CRASH_AT_ACK"] = str(crash_at_ack)
    command = [sys.executable, str(script), *args]
    if crash_at_ack:  # output to a file: a process that dies leaves Ray holding pipes
        with open(tmp_path / "crash.out", "w") as out:
            return subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
                start_new_session=True,
            )
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )


def kill_and_run_again(
    tmp_path: Path, kind: str, url: str, name: str, sink_url: str, table: str
) -> dict[str, Any]:
    """Start :data:`JOB`, SIGKILL its driver (and its Ray) once checkpoint 5 is committed,
    start it again and let it drain; the second run's report."""
    store = f"sqlite:///{tmp_path}/ckpt.db"
    args = (kind, url, name, store, sink_url, table)
    first = start_job(tmp_path, *args)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            db = tmp_path / "ckpt.db"
            last = open_store(store).latest("totals") if db.exists() else None
            if last is not None and last.checkpoint_id >= 5:
                break
            assert first.poll() is None, first.communicate()[1][-3000:]
            time.sleep(0.05)
        os.killpg(first.pid, signal.SIGKILL)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.communicate(timeout=60)
    again = start_job(tmp_path, *args)
    out, err = again.communicate(timeout=400)
    assert again.returncode == 0, err[-3000:]
    report: dict[str, Any] = json.loads(out.splitlines()[-1])
    assert report["resumed_from"] >= 5
    return report
