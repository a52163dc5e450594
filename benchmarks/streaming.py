"""Streaming throughput and driver memory of ``ShardPool.run`` (RabbitMQ -> PostgreSQL).

Needs RabbitMQ and PostgreSQL (``--amqp``, ``--pg``; defaults: the local test servers) and
aio-pika (the baseline). Ray is embedded and local (``shardyard.connect()``, 2 CPUs). Each
contender drains its own fresh queue ``shardyard-bench-<uuid8>`` into its own table (both
deleted at the end), filled before it starts with the same messages: JSON
``{"key": "k<i % 1000>", "value": i % 13}``, ``message_id="m<i>"``, transient, published
without confirms as pre-marshalled pika frames (a ``basic_publish`` loop does ~7k/s here).
The publish time (until the broker holds them all) is printed, never part of a rate.

(a) 100k messages (``--quick``: 20k; ``--messages N``) through a keyed aggregation (per key:
    sum of ``value``, count) with a CPU-bound step per message: a FIXED 600 rounds of
    pure-Python integer arithmetic (not calibrated: its cost here is measured and reported
    as ``cpu_step_us``, ~75-85 us on the 2-CPU reference VM), into PostgreSQL. shardyard:
    a ``Totals`` shard, ``ShardPool(num_actors=2, num_shards=8)``, ``RabbitMQSource``
    (prefetch 2000), ``SqlUpsertSink``, checkpoints every 1 s into SQLite. Baseline, what an
    expert writes by hand in one process: an aio-pika consumer (prefetch 2000) doing the
    same step, adding per-key deltas in a dict and upserting them with psycopg 3
    (``executemany``, ``INSERT ... ON CONFLICT (key) DO UPDATE SET total = t.total +
    excluded.total, ...``) every 1000 messages or every second, acking (``multiple=True``)
    after each commit: at-least-once. A second baseline (a') is the same consumer with
    pika's blocking connection and synchronous psycopg, which is faster here. Timed: from
    the start of the drain (actors started,
    connections open, queue full) to the last acknowledgement of messages, which follows
    the last commit (shardyard's idle timeout at the end is not timed). Both final tables
    are checked against the expected aggregation; any mismatch makes ``ok`` false.
(b) the driver's RSS over a 1M-message backlog (``--quick``: 200k; ``--backlog N``),
    drained by the same job without the CPU step while a thread samples the RSS every
    50 ms: RSS at start, peak, peak growth, and the peak growth until half the backlog was
    acknowledged (growth proportional to what was read would double by the end); msgs/s;
    the backlog's bodies (N * body size) for reference. Target ``backlog_rss_bounded``: the
    backlog stays in the broker (prefetch-bounded), so the growth is tens of MiB (< 100).

Prints a table (case | shardyard | baseline | ratio) and, last, one JSON line with every number.

Run:
    python benchmarks/streaming.py [--quick] [--messages N] [--backlog N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import platform
import tempfile
import threading
import time
import timeit
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import aio_pika
import pika
import psutil
import psycopg
import ray
from pika import frame, spec

import shardyard
from shardyard import ClusterConfig, Shard, ShardPool
from shardyard.streams.base import Record
from shardyard.streams.rabbitmq import RabbitMQSource
from shardyard.streams.sql import SqlUpsertSink

ROUNDS = 600  # the CPU step: pure-Python integer arithmetic per message (fixed)
NUM_KEYS = 1000
PREFETCH = 2000
BATCH = 1000  # baseline: upsert every BATCH messages (or every second)
IDLE_TIMEOUT_S = 5.0  # shardyard's source ends after this long without a message (untimed)
COLUMNS = {"key": "text", "total": "int", "count": "int"}
MB = 1 << 20


def body(i: int) -> bytes:
    return json.dumps({"key": f"k{i % NUM_KEYS}", "value": i % 13}).encode()


def expected(n: int) -> dict[str, tuple[int, int]]:
    totals: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for i in range(n):
        totals[f"k{i % NUM_KEYS}"] += i % 13
        counts[f"k{i % NUM_KEYS}"] += 1
    return {k: (totals[k], counts[k]) for k in counts}


def cpu_step(seed: int, rounds: int = ROUNDS) -> int:
    acc = seed
    for i in range(rounds):
        acc = (acc * 31 + i) % 1_000_003
    return acc


class Totals(Shard):
    rounds = ROUNDS

    def setup(self, shard_id: int) -> None:
        self.totals: dict[str, tuple[int, int]] = {}

    def process_item(self, event: dict[str, Any]) -> dict[str, Any]:
        cpu_step(event["value"], self.rounds)
        total, count = self.totals.get(event["key"], (0, 0))
        self.totals[event["key"]] = (total + event["value"], count + 1)
        return {"key": event["key"], "total": total + event["value"], "count": count + 1}

    def snapshot(self) -> Any:
        return dict(self.totals)

    def restore(self, state: Any) -> None:
        self.totals = dict(state)


class CheapTotals(Totals):
    rounds = 0


class TimedSource(RabbitMQSource):
    """Counts the messages acknowledged (after each commit) and when the last ones were."""

    read_since_ack = acked = 0
    last_ack = 0.0

    def read(self, max_records: int) -> list[Record] | None:
        out = super().read(max_records)
        self.read_since_ack += len(out or ())
        return out

    def ack(self, position: Any) -> None:
        super().ack(position)
        if self.read_since_ack:  # not the empty epoch at the end
            self.acked, self.read_since_ack = self.acked + self.read_since_ack, 0
            self.last_ack = time.perf_counter()


def publish(amqp: str, queue: str, n: int) -> float:
    """Fill ``queue`` with ``n`` messages; seconds until the broker holds them all."""
    conn = pika.BlockingConnection(pika.URLParameters(amqp))
    try:
        ch = conn.channel()
        ch.queue_declare(queue)
        cn = ch.channel_number
        method = frame.Method(cn, spec.Basic.Publish(exchange="", routing_key=queue)).marshal()
        t0 = time.perf_counter()
        out: list[bytes] = []
        for i in range(n):
            b = body(i)
            props = spec.BasicProperties(message_id=f"m{i}")
            out += (method, frame.Header(cn, len(b), props).marshal(), frame.Body(cn, b).marshal())
            if len(out) >= 6000 or i == n - 1:  # pika has no public batched publish
                conn._impl._adapter_emit_data(b"".join(out))
                conn.process_data_events(0)  # returns once the write buffer is flushed
                out.clear()
        while ch.queue_declare(queue, passive=True).method.message_count < n:
            time.sleep(0.02)
        return time.perf_counter() - t0
    finally:
        conn.close()


@contextlib.contextmanager
def fresh(args: argparse.Namespace) -> Iterator[tuple[str, str]]:
    """Names for a new queue (``publish`` declares it) and table; both deleted afterwards."""
    queue, table = f"shardyard-bench-{uuid.uuid4().hex[:8]}", f"bench_{uuid.uuid4().hex[:8]}"
    try:
        yield queue, table
    finally:
        with contextlib.suppress(Exception):
            conn = pika.BlockingConnection(pika.URLParameters(args.amqp))
            conn.channel().queue_delete(queue)
            conn.close()
        with psycopg.connect(args.dsn, autocommit=True) as db:
            db.execute(f"DROP TABLE IF EXISTS {table}")


def mismatches(dsn: str, table: str, n: int) -> int:
    """Keys whose row differs from the expected aggregation (or is missing or extra)."""
    with psycopg.connect(dsn) as db:
        got = {k: (t, c) for k, t, c in db.execute(f'SELECT key, total, "count" FROM {table}')}
    want = expected(n)
    return sum(got.get(k) != want.get(k) for k in set(got) | set(want))


def run_shardyard(
    args: argparse.Namespace, handler: type[Shard], queue: str, table: str, tmp: str, n: int
) -> dict[str, Any]:
    """Drain ``queue`` with ``pool.run``; the driver's RSS is sampled throughout."""
    sink = SqlUpsertSink(args.pg, table, key_columns=["key"], columns=COLUMNS)
    source = TimedSource(args.amqp, queue, prefetch=PREFETCH, idle_timeout_s=IDLE_TIMEOUT_S)
    name = f"bench-{uuid.uuid4().hex[:8]}"
    proc, stop = psutil.Process(), threading.Event()
    try:
        with ShardPool(
            handler, num_actors=2, num_shards=8, name=name, store=f"sqlite:///{tmp}/{name}.db"
        ) as pool:
            pool.start()
            gc.collect()
            start = peak = half = proc.memory_info().rss

            def sample() -> None:
                nonlocal peak, half
                while not stop.wait(0.05):
                    peak = max(peak, proc.memory_info().rss)
                    half = peak if source.acked <= n // 2 else half

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            t0 = time.perf_counter()
            try:
                report = pool.run(source, sink, key=lambda e: e["key"], checkpoint_interval_s=1.0)
            finally:
                stop.set()
                sampler.join()
    finally:
        source.close()
        sink.close()
    done, secs = report.records, source.last_ack - t0
    out = {"messages": done, "seconds": secs, "msgs_per_s": done / secs}
    out |= {"checkpoints": report.checkpoints, "run_seconds": report.seconds}
    out |= {"rss_start_mib": start / MB, "rss_peak_mib": peak / MB}
    return out | {"rss_growth_mib": (peak - start) / MB, "rss_growth_half_mib": (half - start) / MB}


async def run_baseline(amqp: str, queue: str, dsn: str, table: str, n: int) -> dict[str, Any]:
    upsert = (
        f'INSERT INTO {table} AS t (key, total, "count") VALUES (%s, %s, %s) ON CONFLICT (key) '
        'DO UPDATE SET total = t.total + excluded.total, "count" = t."count" + excluded."count"'
    )
    db = await psycopg.AsyncConnection.connect(dsn)
    await db.execute(f'CREATE TABLE {table} (key text PRIMARY KEY, total bigint, "count" bigint)')
    await db.commit()
    conn = await aio_pika.connect(amqp)
    ch = await conn.channel()
    await ch.set_qos(prefetch_count=PREFETCH)
    q = await ch.declare_queue(queue, passive=True)
    deltas: dict[str, tuple[int, int]] = {}
    last: Any = None  # the newest message not in a committed batch yet
    lock = asyncio.Lock()
    seen = pending = batches = 0

    async def flush() -> None:
        nonlocal deltas, last, batches
        async with lock:
            if last is None:
                return
            rows, msg = [(k, t, c) for k, (t, c) in deltas.items()], last
            deltas, last = {}, None
            async with db.cursor() as cur:
                await cur.executemany(upsert, rows)
            await db.commit()
            await msg.ack(multiple=True)
            batches += 1

    async def every_second() -> None:
        while True:
            await asyncio.sleep(1.0)
            await flush()

    timer = asyncio.create_task(every_second())
    t0 = time.perf_counter()
    try:
        async with q.iterator() as messages:
            async for msg in messages:
                event = json.loads(msg.body)
                cpu_step(event["value"])
                total, count = deltas.get(event["key"], (0, 0))
                deltas[event["key"]] = (total + event["value"], count + 1)
                last, seen, pending = msg, seen + 1, pending + 1
                if pending >= BATCH or seen == n:
                    pending = 0
                    await flush()
                if seen == n:
                    break
        seconds = time.perf_counter() - t0
    finally:
        timer.cancel()
        await conn.close()
        await db.close()
    return {"messages": seen, "seconds": seconds, "msgs_per_s": seen / seconds, "batches": batches}


def run_pika_baseline(amqp: str, queue: str, dsn: str, table: str, n: int) -> dict[str, Any]:
    """The same consumer as :func:`run_baseline`, with pika's blocking connection (a
    ``basic_consume`` callback) and synchronous psycopg: faster than aio-pika here."""
    upsert = (
        f'INSERT INTO {table} AS t (key, total, "count") VALUES (%s, %s, %s) ON CONFLICT (key) '
        'DO UPDATE SET total = t.total + excluded.total, "count" = t."count" + excluded."count"'
    )
    db = psycopg.connect(dsn)
    db.execute(f'CREATE TABLE {table} (key text PRIMARY KEY, total bigint, "count" bigint)')
    db.commit()
    conn = pika.BlockingConnection(pika.URLParameters(amqp))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=PREFETCH)
    st: dict[str, Any] = {"deltas": {}, "tag": None, "seen": 0, "pending": 0, "batches": 0}
    st["flushed"] = time.monotonic()

    def flush() -> None:
        if st["tag"] is None:
            return
        with db.cursor() as cur:
            cur.executemany(upsert, [(k, t, c) for k, (t, c) in st["deltas"].items()])
        db.commit()
        ch.basic_ack(st["tag"], multiple=True)
        st.update(deltas={}, tag=None, pending=0, flushed=time.monotonic())
        st["batches"] += 1

    def on_message(_ch: Any, method: Any, _props: Any, data: bytes) -> None:
        event = json.loads(data)
        cpu_step(event["value"])
        total, count = st["deltas"].get(event["key"], (0, 0))
        st["deltas"][event["key"]] = (total + event["value"], count + 1)
        st["tag"], st["seen"], st["pending"] = (
            method.delivery_tag,
            st["seen"] + 1,
            st["pending"] + 1,
        )
        if st["pending"] >= BATCH or st["seen"] == n:
            flush()

    ch.basic_consume(queue, on_message)
    t0 = time.perf_counter()
    try:
        while st["seen"] < n:
            conn.process_data_events(time_limit=0.05)
            if time.monotonic() - st["flushed"] >= 1.0:
                flush()
        seconds = time.perf_counter() - t0
    finally:
        conn.close()
        db.close()
    seen = st["seen"]
    return {
        "messages": seen,
        "seconds": seconds,
        "msgs_per_s": seen / seconds,
        "batches": st["batches"],
    }


def case_stream(args: argparse.Namespace, tmp: str) -> dict[str, Any]:
    n = args.messages
    out: dict[str, Any] = {
        "cpu_step_us": timeit.timeit(lambda: cpu_step(7), number=2000) * 1e6 / 2000
    }
    for name in ("shardyard", "baseline", "pika_baseline"):
        with fresh(args) as (queue, table):
            publish_s = publish(args.amqp, queue, n)
            if name == "shardyard":
                res = run_shardyard(args, Totals, queue, table, tmp, n)
            elif name == "baseline":
                res = asyncio.run(run_baseline(args.amqp, queue, args.dsn, table, n))
            else:
                res = run_pika_baseline(args.amqp, queue, args.dsn, table, n)
            out[name] = {**res, "publish_s": publish_s}
            out[name]["mismatched_keys"] = mismatches(args.dsn, table, n)
    out["ratio"] = out["shardyard"]["msgs_per_s"] / out["baseline"]["msgs_per_s"]
    out["ratio_pika"] = out["shardyard"]["msgs_per_s"] / out["pika_baseline"]["msgs_per_s"]
    return out


def case_backlog(args: argparse.Namespace, tmp: str) -> dict[str, Any]:
    n = args.backlog
    with fresh(args) as (queue, table):
        out = {"publish_s": publish(args.amqp, queue, n)}
        out.update(run_shardyard(args, CheapTotals, queue, table, tmp, n))
        out["mismatched_keys"] = mismatches(args.dsn, table, n)
    out["bodies_mib"] = sum(len(body(i)) for i in range(n)) / MB
    out["rss_bounded"] = out["rss_growth_mib"] < 100
    return out


def print_table(a: dict[str, Any], b: dict[str, Any]) -> None:
    s, base, pk = a["shardyard"], a["baseline"], a["pika_baseline"]
    rate = [f"{x['msgs_per_s'] / 1e3:.2f}k/s" for x in (s, base, b, pk)]
    drain = [f"{x['seconds']:.2f} ({x['publish_s']:.2f})" for x in (s, base, b, pk)]
    growth = f"{b['rss_growth_mib']:.1f} MiB (half-way {b['rss_growth_half_mib']:.1f})"
    rss = f"start {b['rss_start_mib']:.0f} MiB, peak {b['rss_peak_mib']:.0f} MiB"
    ratios = f"{a['ratio']:.2f}x", f"{b['rss_growth_mib'] / b['bodies_mib']:.2f}x"
    rows = [
        (f"(a) {s['messages']} msgs, {a['cpu_step_us']:.0f} us CPU each", *rate[:2], ratios[0]),
        ("(a) drain s (publish s, untimed)", *drain[:2], ""),
        ("(a) mismatched keys", str(s["mismatched_keys"]), str(base["mismatched_keys"]), ""),
        ("(a') vs a pika consumer: msgs/s", rate[0], rate[3], f"{a['ratio_pika']:.2f}x"),
        ("(a') drain s; mismatched keys", drain[0], f"{drain[3]}; {pk['mismatched_keys']}", ""),
        (f"(b) {b['messages']} backlog: driver RSS growth", growth, "", ""),
        ("(b) RSS / backlog's bodies", rss, f"bodies {b['bodies_mib']:.1f} MiB", ratios[1]),
        ("(b) msgs/s, no CPU step; drain s (publish s)", f"{rate[2]}; {drain[2]}", "", ""),
        ("(b) mismatched keys", str(b["mismatched_keys"]), "", ""),
    ]
    header = ("case", "shardyard", "baseline (aio-pika; a': pika)", "ratio")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    print(line + "\n" + "-" * len(line))
    for r in rows:
        print(" | ".join(x.ljust(w) for x, w in zip(r, widths, strict=True)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20k messages, 200k backlog")
    parser.add_argument("--messages", type=int, help="case (a) messages (100k; quick: 20k)")
    parser.add_argument("--backlog", type=int, help="case (b) backlog (1M; quick: 200k)")
    parser.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    parser.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    args = parser.parse_args(argv)
    args.messages = args.messages or (20_000 if args.quick else 100_000)
    args.backlog = args.backlog or (200_000 if args.quick else 1_000_000)
    args.dsn = args.pg.replace("+psycopg", "")  # psycopg's own URL

    info = shardyard.connect(config=ClusterConfig(num_cpus=2))
    t_start = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            a = case_stream(args, tmp)
            b = case_backlog(args, tmp)
    finally:
        ray.shutdown()
    counts = tuple(a[k]["mismatched_keys"] for k in ("shardyard", "baseline", "pika_baseline"))
    print_table(a, b)
    meta = {"benchmark": "streaming", "quick": args.quick, "python": platform.python_version()}
    meta |= {"ray": ray.__version__, "shardyard": shardyard.__version__}
    meta |= {"aio_pika": aio_pika.__version__, "cpus": info.num_cpus}
    meta |= {"wall_s": time.perf_counter() - t_start, "stream": a, "backlog": b}
    meta |= {"targets": {"backlog_rss_bounded": b["rss_bounded"]}}
    print(json.dumps(meta | {"ok": counts == (0, 0, 0) and b["mismatched_keys"] == 0}))


if __name__ == "__main__":
    main()
