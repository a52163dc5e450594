"""RabbitMQ -> keyed aggregation -> PostgreSQL, with the driver SIGKILLed mid-run."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic
import pytest
from services import MARIADB_URL, POSTGRES_URL, require
from streaming_helpers import (
    AMQP,
    TOTALS_COLUMNS,
    close_connections,
    depth,
    expected_totals,
    kill_and_run_again,
    new_table,
    publish,
    rabbitmq_queue,
    start_job,
    take_table,
)

import shardyard
from shardyard import Shard, ShardPool
from shardyard.state import open_store
from shardyard.streams.rabbitmq import RabbitMQSource, SourceError
from shardyard.streams.sql import DeadLetterTable, SqlUpsertSink


@pytest.fixture
def queue() -> Iterator[str]:
    with rabbitmq_queue() as name:
        yield name


@pytest.mark.timeout(600)
@pytest.mark.parametrize("database", ["postgresql", "mariadb"])
def test_100k_events_survive_a_driver_kill(database: str, queue: str, tmp_path: Path) -> None:
    require(database)
    sink_url = POSTGRES_URL if database == "postgresql" else MARIADB_URL
    events = [{"key": f"k{i % 997}", "value": i % 13} for i in range(100_000)]
    publish(queue, events)
    table = new_table()
    report = kill_and_run_again(tmp_path, "rabbitmq", AMQP, queue, sink_url, table)
    assert take_table(sink_url, table) == expected_totals(events)  # none lost or doubled
    assert depth(queue) == 0
    print(f"resumed from checkpoint {report['resumed_from']}; {report['records']} records after")


def test_a_wrong_password_and_a_missing_queue_name_the_server(queue: str) -> None:
    with pytest.raises(SourceError, match=r"RabbitMQ at 127\.0\.0\.1:5672 .* refused the login"):
        RabbitMQSource("amqp://guest:wrong@127.0.0.1:5672/%2F", queue)
    with pytest.raises(SourceError, match=r"queue 'no-such-queue' on RabbitMQ at 127\.0\.0\.1"):
        RabbitMQSource(AMQP, "no-such-queue")


@pytest.mark.timeout(600)
def test_a_crash_between_commit_and_ack_applies_nothing_twice_in_mariadb(
    queue: str, tmp_path: Path
) -> None:
    require("mariadb")
    events = [{"key": f"k{i % 301}", "value": i % 7} for i in range(20_000)]
    publish(queue, events)
    table = new_table()
    args = ("rabbitmq", AMQP, queue, f"sqlite:///{tmp_path}/ckpt.db", MARIADB_URL, table)
    crashed = start_job(tmp_path, *args, crash_at_ack=3)
    try:
        # wait(), not communicate(): the Ray it started may hold the pipes a while longer.
        code = crashed.wait(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(crashed.pid, signal.SIGKILL)  # whatever of its Ray is left
    assert code == 9, (tmp_path / "crash.out").read_text()[-3000:]  # after commit 3, before acks
    again = start_job(tmp_path, *args)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-3000:]
    report = json.loads(out.splitlines()[-1])
    assert report["resumed_from"] == 3
    assert report["duplicates_dropped"] > 0  # checkpoint 3's messages came again: dropped
    assert take_table(MARIADB_URL, table) == expected_totals(events)
    assert depth(queue) == 0


class Event(pydantic.BaseModel):
    key: str
    value: int


class ModelTotals(Shard):
    """Per-key (total, count) over validated events; a negative value makes it raise."""

    def setup(self, shard_id: int) -> None:
        self.totals: dict[str, tuple[int, int]] = {}

    def process_item(self, event: Any) -> dict[str, Any]:
        if isinstance(event, dict):
            event = Event(**event)
        if event.value < 0:
            raise ValueError(f"negative value {event.value}")
        total, count = self.totals.get(event.key, (0, 0))
        self.totals[event.key] = (total + event.value, count + 1)
        return {"key": event.key, "total": total + event.value, "count": count + 1}

    def snapshot(self) -> dict[str, tuple[int, int]]:
        return dict(self.totals)

    def restore(self, state: dict[str, tuple[int, int]]) -> None:
        self.totals = dict(state)


def _run_in_thread(
    pool: ShardPool, *args: Any, **kwargs: Any
) -> tuple[threading.Thread, list[Any]]:
    result: list[Any] = []

    def target() -> None:
        try:
            result.append(pool.run(*args, **kwargs))
        except BaseException as exc:  # handed to the test thread
            result.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, result


@pytest.mark.timeout(300)
def test_malformed_messages_go_to_the_dead_letter_table(
    ray_local: shardyard.ClusterInfo, queue: str, tmp_path: Path
) -> None:
    require("postgresql")
    events: list[Any] = [{"key": f"k{i % 31}", "value": i % 5} for i in range(3000)]
    bad = {
        100: b"{not json",
        101: b"{not json",  # the same again: its own dead letter
        1200: json.dumps({"key": "k1", "value": "many"}).encode(),  # fails validation
        2500: json.dumps({"key": "k2", "value": -5}).encode(),  # the handler raises
    }
    messages = [bad.get(i, e) for i, e in enumerate(events)]
    publish(queue, messages)
    table, dead_table = new_table(), f"dead_{new_table()}"
    sink = SqlUpsertSink(POSTGRES_URL, table, ["key"], TOTALS_COLUMNS)
    dead = DeadLetterTable(POSTGRES_URL, job="model-totals", table=dead_table)
    source = RabbitMQSource(AMQP, queue, codec=Event, idle_timeout_s=2.0)
    store = f"sqlite:///{tmp_path}/ckpt.db"
    try:
        with ShardPool(ModelTotals, num_actors=2, num_shards=4, name="mt", store=store) as pool:
            report = pool.run(source, sink, key=lambda e: e.key, dead_letters=dead, retries=1)
        letters = {r["id"]: r for r in dead.rows()}
    finally:
        source.close()
        dead.table.drop(dead._engine)
        dead.close()
        sink.close()
    assert report.records == 3000 and report.dead_letters == 4
    good = [e for i, e in enumerate(events) if i not in bad]
    assert take_table(POSTGRES_URL, table) == expected_totals(good)  # each applied once
    assert sorted(letters) == ["m100", "m101", "m1200", "m2500"]
    assert letters["m100"]["stage"] == "decode" and "Invalid JSON" in letters["m100"]["error"]
    assert letters["m100"]["payload"] == "{not json"
    assert letters["m1200"]["stage"] == "decode"
    assert "ValidationError" in letters["m1200"]["error"] and "value" in letters["m1200"]["error"]
    handler = letters["m2500"]
    assert handler["stage"] == "handler" and handler["job"] == "model-totals"
    assert "key 'k2'" in handler["error"] and "ValueError: negative value -5" in handler["error"]
    assert "Traceback" in handler["error"] and json.loads(handler["payload"])["value"] == -5
    assert depth(queue) == 0


@dataclass
class RunningJob:
    pool: ShardPool
    source: RabbitMQSource
    store: str
    thread: threading.Thread

    def wait_for_checkpoint(self, at_least: int) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            last = open_store(self.store).latest(self.pool.config.name or "")
            if last is not None and last.checkpoint_id >= at_least:
                return
            assert self.thread.is_alive(), "the job ended too early"
            time.sleep(0.02)
        raise AssertionError(f"no checkpoint {at_least} within 120 s")


@contextlib.contextmanager
def _job_in_thread(
    queue: str, tmp_path: Path, events: list[dict[str, Any]], prefetch: int, num_shards: int = 4
) -> Iterator[RunningJob]:
    """``events`` published, a per-key totals job into PostgreSQL running in a thread while
    the body injects faults; afterwards the table must equal the serial answer exactly and
    the queue must be empty."""
    require("postgresql")
    publish(queue, events)
    table = new_table()
    sink = SqlUpsertSink(POSTGRES_URL, table, ["key"], TOTALS_COLUMNS)
    source = RabbitMQSource(AMQP, queue, codec=Event, prefetch=prefetch, idle_timeout_s=3.0)
    store = f"sqlite:///{tmp_path}/ckpt.db"
    try:
        with ShardPool(
            ModelTotals, num_actors=2, num_shards=num_shards, name="totals", store=store
        ) as pool:
            thread, result = _run_in_thread(
                pool, source, sink, key=lambda e: e.key, checkpoint_interval_s=0.5
            )
            yield RunningJob(pool, source, store, thread)
            thread.join(timeout=300)
            assert not thread.is_alive()
    finally:
        source.close()
        sink.close()
    report = result[0]
    assert not isinstance(report, BaseException), report
    assert report.records == len(events)
    assert take_table(POSTGRES_URL, table) == expected_totals(events)  # none lost or doubled
    assert depth(queue) == 0


@pytest.mark.timeout(300)
def test_the_broker_closing_the_connection_loses_nothing(
    ray_local: shardyard.ClusterInfo, queue: str, tmp_path: Path
) -> None:
    events = [{"key": f"k{i % 97}", "value": i % 11} for i in range(25_000)]
    with _job_in_thread(queue, tmp_path, events, prefetch=300) as job:
        closed = 0
        for at in (1, 3, 5):
            job.wait_for_checkpoint(at)
            time.sleep(random.uniform(0, 0.5))  # anywhere: reading, mapping, acking
            closed += close_connections(f"shardyard:{queue}")
    assert closed == 3 and job.source.reconnects == 3
    print(f"{job.source.duplicates_dropped} redeliveries dropped")


@pytest.mark.timeout(300)
def test_a_rabbitmq_restart_mid_run_loses_nothing(
    ray_local: shardyard.ClusterInfo, queue: str, tmp_path: Path
) -> None:
    """The RabbitMQ application stops and starts again (``rabbitmqctl stop_app`` /
    ``start_app``: every connection drops and the listener is gone for a while; the durable
    queue and its persistent messages come back)."""
    events = [{"key": f"k{i % 97}", "value": i % 11} for i in range(20_000)]
    with _job_in_thread(queue, tmp_path, events, prefetch=500) as job:
        job.wait_for_checkpoint(2)
        try:
            subprocess.run(["rabbitmqctl", "stop_app"], capture_output=True, check=True)
            time.sleep(3)  # down for a while: the source keeps trying
        finally:
            subprocess.run(["rabbitmqctl", "start_app"], capture_output=True, check=True)
    assert job.source.reconnects >= 1


@pytest.mark.timeout(400)
def test_100k_events_survive_actor_kills(
    ray_local: shardyard.ClusterInfo, queue: str, tmp_path: Path
) -> None:
    events = [{"key": f"k{i % 997}", "value": i % 13} for i in range(100_000)]
    with _job_in_thread(queue, tmp_path, events, prefetch=2000, num_shards=8) as job:
        for actor, at in ((0, 2), (1, 4)):  # both actors, one after the other
            job.wait_for_checkpoint(at)
            os.kill(_actor_pid(job.pool, actor), signal.SIGKILL)
        job.thread.join(timeout=300)
        assert [a.restarts for a in job.pool.stats().actors] == [1, 1]


def _actor_pid(pool: ShardPool, actor: int) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        a = pool.stats().actors[actor]
        if a.pid is not None and a.state == "running":
            return a.pid
        time.sleep(0.05)
    raise AssertionError(f"actor {actor} is not running")


def test_messages_without_an_id_are_never_dropped_when_they_come_again(queue: str) -> None:
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(AMQP))
    for _ in range(3):  # identical bodies, no message_id: nothing tells them apart
        conn.channel().basic_publish("", queue, b'{"key": "a", "value": 1}')
    conn.close()
    source = RabbitMQSource(AMQP, queue, idle_timeout_s=1.0)
    try:
        got = source.read(1) or []  # one applied; the others handed out, not read
        assert close_connections(f"shardyard:{queue}") == 1
        while (chunk := source.read(100)) is not None:
            got += chunk
            if not chunk and got:
                source.ack(source.position())
        source.ack(source.position())
    finally:
        source.close()
    # At least once: every message, and the one read before the connection went, again.
    assert 3 < len(got) <= 3 + source.redelivered_without_id
    assert source.duplicates_dropped == 0 and depth(queue) == 0
