"""A named pool with a durable store resumes from its newest complete checkpoint."""

from __future__ import annotations

import json
import operator
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pydantic
import pytest
from services import store_url

import shardyard
from shardyard import ConfigError, Shard, ShardPool
from shardyard.state import IncompleteCheckpointError


class Tally(Shard):
    fail_snapshot_of = -1  # a shard whose snapshot() raises (set on a subclass)

    def setup(self, shard_id: int) -> None:
        self.counts: Counter[str] = Counter()

    def process_item(self, key: str) -> int:
        self.counts[key] += 1
        return self.counts[key]

    def snapshot(self) -> Any:
        if self.shard_id == self.fail_snapshot_of:
            raise OSError("disk full (on purpose)")
        return dict(self.counts)

    def restore(self, state: Any) -> None:
        self.counts = Counter(state)

    def result(self) -> Counter[str]:
        return self.counts


@pytest.mark.parametrize("kind", ["file", "sqlite", "postgresql", "mariadb"])
def test_a_new_pool_of_the_same_name_resumes_from_the_checkpoint(
    ray_local: shardyard.ClusterInfo, tmp_path: Path, kind: str
) -> None:
    url, name = store_url(kind, tmp_path), f"tally-{uuid.uuid4().hex[:8]}"
    words = [f"w{i % 37}" for i in range(2_000)]
    with ShardPool(Tally, num_actors=2, num_shards=8, name=name, store=url) as pool:
        assert pool.restored_from is None
        pool.map(words, keys=words)
        assert pool.checkpoint(meta=b"offset=2000") == 1
        pool.map(words[:100], keys=words[:100])  # after the checkpoint: not in it
    with ShardPool(Tally, num_actors=2, name=name, store=url) as again:
        assert again.restored_from is not None
        assert (again.restored_from.checkpoint_id, again.restored_from.meta) == (1, b"offset=2000")
        assert again.num_shards == 8  # taken from the checkpoint
        assert again.reduce(operator.add) == Counter(words)
        nxt = again.map(["w0"], keys=["w0"])
        assert nxt == [Counter(words)["w0"] + 1]  # the running count goes on from there
        assert again.checkpoint() == 2


def test_a_checkpoint_with_a_failed_snapshot_is_not_used(
    ray_local: shardyard.ClusterInfo, tmp_path: Path
) -> None:
    url, name = f"sqlite:///{tmp_path / 'c.db'}", "half"
    words = [f"w{i % 11}" for i in range(500)]
    with ShardPool(Tally, num_actors=2, num_shards=4, name=name, store=url) as pool:
        pool.map(words, keys=words)
        assert pool.checkpoint() == 1
    broken = type("BrokenTally", (Tally,), {"fail_snapshot_of": 2})
    with ShardPool(broken, num_actors=2, num_shards=4, name=name, store=url) as pool:
        pool.map(words, keys=words)
        with pytest.raises(IncompleteCheckpointError, match=r"shard 2: snapshot\(\) raised"):
            pool.checkpoint()
    with ShardPool(Tally, num_actors=2, name=name, store=url) as again:
        assert again.restored_from is not None and again.restored_from.checkpoint_id == 1
        assert again.reduce(operator.add) == Counter(words)  # not twice


def test_a_shard_count_other_than_the_checkpoints_is_refused(
    ray_local: shardyard.ClusterInfo, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    with ShardPool(Tally, num_actors=1, num_shards=4, name="n", store=url) as pool:
        pool.map(["a"], keys=["a"])
        pool.checkpoint()
    with pytest.raises(ConfigError, match="has 4 shards"):
        ShardPool(Tally, num_actors=1, num_shards=6, name="n", store=url).start()


def test_a_store_without_a_name_is_a_validation_error() -> None:
    with pytest.raises(pydantic.ValidationError, match="store needs name"):
        ShardPool(Tally, store="sqlite:///x.db")


_DRIVER = textwrap.dedent(
    """
    import json, sys, time
    from collections import Counter
    import shardyard
    from shardyard import Shard, ShardPool

    class Tally(Shard):
        def setup(self, shard_id):
            self.counts = Counter()
        def process_item(self, key):
            self.counts[key] += 1
            return self.counts[key]
        def snapshot(self):
            return dict(self.counts)
        def restore(self, state):
            self.counts = Counter(state)
        def result(self):
            return self.counts

    url, total = sys.argv[1], int(sys.argv[2])
    keys = [f"k{i % 211}" for i in range(total)]
    with ShardPool(Tally, num_actors=2, num_shards=8, name="job", store=url) as pool:
        start = int(pool.restored_from.meta) if pool.restored_from else 0
        print(json.dumps({"event": "start", "offset": start}), flush=True)
        for i in range(start, total, 1000):
            pool.map(keys[i:i + 1000], keys=keys[i:i + 1000])
            cid = pool.checkpoint(meta=str(min(i + 1000, total)).encode())
            print(json.dumps({"event": "checkpoint", "id": cid, "offset": i + 1000}), flush=True)
        total_counts = pool.reduce(lambda a, b: a + b)
    print(json.dumps({"event": "done", "exact": total_counts == Counter(keys)}), flush=True)
    """
)


def test_a_driver_killed_mid_run_resumes_exactly_from_its_last_checkpoint(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'job.db'}"
    script = tmp_path / "driver.py"
    script.write_text(_DRIVER)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    first = subprocess.Popen(
        [sys.executable, str(script), url, "12000"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    assert first.stdout is not None
    try:
        for line in first.stdout:
            event = json.loads(line)
            if event["event"] == "checkpoint" and event["id"] == 4:
                os.killpg(first.pid, signal.SIGKILL)  # the driver and the Ray it started
                break
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
    second = subprocess.run(
        [sys.executable, str(script), url, "12000"],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert second.returncode == 0, second.stderr[-3000:]
    events = [json.loads(ln) for ln in second.stdout.splitlines() if ln.startswith("{")]
    # From checkpoint 4 (or 5, had it been committed before the kill landed), not from 0.
    assert events[0]["event"] == "start" and events[0]["offset"] in (4000, 5000)
    assert events[-1] == {"event": "done", "exact": True}
