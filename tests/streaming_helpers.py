"""What the streaming tests share: queues on the real RabbitMQ, publishing, and the
expected per-key aggregation against the table a job wrote."""

from __future__ import annotations

import contextlib
import json
import subprocess
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

from services import require

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
