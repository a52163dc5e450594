"""``shardyard run JOB.py``: a job that runs until stopped ends at a checkpoint on SIGTERM,
and the same command started again carries on from there, nothing lost or twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from streaming_helpers import AMQP, depth, expected_totals, publish, rabbitmq_queue

from shardyard.state import open_store

JOB = textwrap.dedent(
    """
    import json, os, sys
    from shardyard import Shard, ShardPool
    from shardyard.streams import FileSink
    from shardyard.streams.rabbitmq import RabbitMQSource

    class Totals(Shard):
        def setup(self, shard_id):
            self.totals = {}
        def process_item(self, event):
            total, count = self.totals.get(event["key"], (0, 0))
            self.totals[event["key"]] = (total + event["value"], count + 1)
            return [event["key"], total + event["value"], count + 1]
        def snapshot(self):
            return dict(self.totals)
        def restore(self, state):
            self.totals = dict(state)

    queue, store, out = sys.argv[1:4]
    idle = float(os.environ["IDLE"]) if os.environ.get("IDLE") else None  # None: forever
    source = RabbitMQSource(os.environ["AMQP"], queue, idle_timeout_s=idle)
    with ShardPool(Totals, num_actors=2, num_shards=4, name="totals", store=store) as pool:
        report = pool.run(source, FileSink(out, codec="json"), key=lambda e: e["key"],
                          checkpoint_interval_s=0.5)
    print(json.dumps({"records": report.records, "stopped": report.stopped}))
    """
)


@pytest.fixture
def queue() -> Iterator[str]:
    with rabbitmq_queue() as name:
        yield name


def _run(tmp_path: Path, queue: str, idle: str = "") -> subprocess.Popen[str]:
    (tmp_path / "job.py").write_text(JOB)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(AMQP=AMQP, IDLE=idle)
    args = [queue, f"sqlite:///{tmp_path}/ckpt.db", str(tmp_path / "out")]
    return subprocess.Popen(
        [sys.executable, "-m", "shardyard", "run", str(tmp_path / "job.py"), "--", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )


@pytest.mark.timeout(300)
def test_sigterm_stops_a_job_at_a_checkpoint_and_a_new_run_carries_on(
    queue: str, tmp_path: Path
) -> None:
    events = [{"key": f"k{i % 53}", "value": i % 7} for i in range(20_000)]
    publish(queue, events)
    first = _run(tmp_path, queue)  # no idle timeout: runs until stopped
    try:
        deadline = time.monotonic() + 120
        store = open_store(f"sqlite:///{tmp_path}/ckpt.db")
        while time.monotonic() < deadline:
            last = store.latest("totals") if (tmp_path / "ckpt.db").exists() else None
            if last is not None and last.checkpoint_id >= 2:
                break
            assert first.poll() is None, first.communicate()[1][-3000:]
            time.sleep(0.05)
        first.send_signal(signal.SIGTERM)
        out, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert first.returncode == 0, err[-3000:]
    assert "stopping at the next checkpoint" in err
    report = json.loads(out.splitlines()[-1])
    assert report["stopped"] is True

    again = _run(tmp_path, queue, idle="2")
    out, err = again.communicate(timeout=200)
    assert again.returncode == 0, err[-3000:]
    assert report["records"] + json.loads(out.splitlines()[-1])["records"] == 20_000

    latest: dict[str, tuple[int, int]] = {}  # the newest (total, count) per key
    for part in sorted((tmp_path / "out").glob("part-*")):
        for line in part.read_text().splitlines():
            key, total, count = json.loads(line)
            latest[key] = (total, count)
    assert latest == expected_totals(events)
    assert depth(queue) == 0
