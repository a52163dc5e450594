"""A file -> file streaming job: killed mid-run and started again, byte-identical output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import shardyard
from shardyard import ConfigError, ShardPool
from shardyard.state import open_store
from shardyard.streams import FileSink, FileSource

JOB = textwrap.dedent(
    """
    import json, sys, time
    from shardyard import Shard, ShardPool
    from shardyard.streams import FileSink, FileSource

    class RunningSum(Shard):
        def setup(self, shard_id):
            self.sums = {}
        def process_item(self, line):
            key, value = line.split()
            self.sums[key] = self.sums.get(key, 0) + int(value)
            time.sleep(0.0003)
            return f"{key} {self.sums[key]}"
        def snapshot(self):
            return dict(self.sums)
        def restore(self, state):
            self.sums = dict(state)

    inputs, out, store = sys.argv[1], sys.argv[2], sys.argv[3]
    with ShardPool(RunningSum, num_actors=2, num_shards=8, name="sums", store=store) as pool:
        report = pool.run(FileSource(inputs), FileSink(out), key=lambda line: line.split()[0],
                          checkpoint_interval_s=0.2)
    print(json.dumps({"records": report.records, "resumed_from": report.resumed_from}))
    """
)


def _inputs(folder: Path) -> str:
    folder.mkdir()
    for f in range(3):
        lines = [f"k{(f * 8000 + i) % 53} {i % 97}" for i in range(8000)]
        (folder / f"in-{f}.txt").write_text("\n".join(lines) + "\n")
    return str(folder / "*.txt")


def _job(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    script = tmp_path / "job.py"
    script.write_text(JOB)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # killpg takes the driver and the Ray it started
    )


def _concat(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in FileSink(str(folder)).parts())


def test_a_killed_file_job_resumes_with_byte_identical_output(tmp_path: Path) -> None:
    pattern = _inputs(tmp_path / "in")
    clean = _job(tmp_path, pattern, str(tmp_path / "out-clean"), f"sqlite:///{tmp_path}/a.db")
    out, err = clean.communicate(timeout=240)
    assert clean.returncode == 0, err[-3000:]
    assert json.loads(out.splitlines()[-1]) == {"records": 24_000, "resumed_from": 0}

    store_url = f"sqlite:///{tmp_path}/b.db"
    crashed = _job(tmp_path, pattern, str(tmp_path / "out-crash"), store_url)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # let it commit a few checkpoints, then kill it
            last = open_store(store_url).latest("sums") if (tmp_path / "b.db").exists() else None
            if last is not None and last.checkpoint_id >= 3:
                break
            assert crashed.poll() is None, "the job ended before it could be killed"
            time.sleep(0.05)
        os.killpg(crashed.pid, signal.SIGKILL)
    finally:
        if crashed.poll() is None:
            os.killpg(crashed.pid, signal.SIGKILL)
        crashed.communicate(timeout=60)
    again = _job(tmp_path, pattern, str(tmp_path / "out-crash"), store_url)
    out, err = again.communicate(timeout=240)
    assert again.returncode == 0, err[-3000:]
    report = json.loads(out.splitlines()[-1])
    assert report["resumed_from"] >= 3 and report["records"] < 24_000
    expected = _concat(tmp_path / "out-clean")
    assert expected.count(b"\n") == 24_000
    assert _concat(tmp_path / "out-crash") == expected  # nothing lost, nothing twice


def test_a_source_resumes_from_its_position(tmp_path: Path) -> None:
    pattern = _inputs(tmp_path / "in")
    src = FileSource(pattern)
    first = src.read(8_005)
    assert first is not None and len(first) == 8_005
    again = FileSource(pattern)
    again.restore(src.position())
    rest = []
    while (chunk := again.read(5000)) is not None:
        rest += chunk
    everything = FileSource(pattern)
    whole = []
    while (chunk := everything.read(7000)) is not None:
        whole += chunk
    assert [r.value for r in first + rest] == [r.value for r in whole]


def test_a_json_source_names_the_bad_line(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"a": 1}\n{oops\n')
    src = FileSource(str(tmp_path / "*.jsonl"), codec="json")
    with pytest.raises(ValueError, match=r"not JSON at .*a\.jsonl@9"):
        src.read(10)


def test_run_needs_a_named_durable_pool(ray_local: shardyard.ClusterInfo, tmp_path: Path) -> None:
    with ShardPool(len, num_actors=1) as pool, pytest.raises(ConfigError, match="name= and store="):
        pool.run(FileSource(str(tmp_path / "*.txt")))
