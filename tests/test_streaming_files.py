"""A file -> file streaming job: killed mid-run and started again, byte-identical output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import shardyard
from shardyard import ConfigError, Shard, ShardPool
from shardyard.state import open_store
from shardyard.streams import FileSink, FileSource, Record

JOB = textwrap.dedent(
    """
    import json, sys, time
    from shardyard import Shard, ShardPool
    from shardyard.streams import FileSink, FileSource, Record

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
        lines = [f"k{(f * 4000 + i) % 53} {i % 97}" for i in range(4000)]
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
    assert json.loads(out.splitlines()[-1]) == {"records": 12_000, "resumed_from": 0}

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
    assert report["resumed_from"] >= 3 and report["records"] < 12_000
    expected = _concat(tmp_path / "out-clean")
    assert expected.count(b"\n") == 12_000
    assert _concat(tmp_path / "out-crash") == expected  # nothing lost, nothing twice


def test_a_source_resumes_from_its_position(tmp_path: Path) -> None:
    pattern = _inputs(tmp_path / "in")
    src = FileSource(pattern)
    first = src.read(4_005)
    assert first is not None and len(first) == 4_005
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


def test_a_bad_json_line_is_handed_on_with_its_error(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"a": 1}\n{oops\n[2]\n')
    src = FileSource(str(tmp_path / "*.jsonl"), codec="json")
    good, bad, last = src.read(10) or []
    assert (good.value, good.error, last.value) == ({"a": 1}, None, [2])
    assert bad.id is not None and bad.id.endswith("a.jsonl@9")
    assert bad.payload == b"{oops" and bad.error is not None
    assert bad.error.startswith("JSONDecodeError: Expecting property name")


def test_run_needs_a_named_durable_pool(ray_local: shardyard.ClusterInfo, tmp_path: Path) -> None:
    with ShardPool(len, num_actors=1) as pool, pytest.raises(ConfigError, match="name= and store="):
        pool.run(FileSource(str(tmp_path / "*.txt")))


class Flaky(Shard):
    """Sums per key; a line ending in ``fail`` always raises, one ending in ``flaky`` raises
    the first time it is tried."""

    def setup(self, shard_id: int) -> None:
        self.sums: dict[str, int] = {}
        self.tried: set[str] = set()

    def process_item(self, line: str) -> str:
        key, value, *how = line.split()
        if how == ["fail"]:
            raise RuntimeError(f"cannot take {line!r}")
        if how == ["flaky"] and line not in self.tried:
            self.tried.add(line)
            raise ConnectionError("a flaky dependency")
        self.sums[key] = self.sums.get(key, 0) + int(value)
        return f"{key} {self.sums[key]}"

    def snapshot(self) -> dict[str, int]:
        return dict(self.sums)

    def restore(self, state: dict[str, int]) -> None:
        self.sums = dict(state)


def test_a_handler_failing_past_its_retries_is_a_dead_letter(
    ray_local: shardyard.ClusterInfo, tmp_path: Path
) -> None:
    lines = [f"k{i % 7} {i}" for i in range(500)]
    lines[10] = "k3 5 fail"
    lines[20] = "k6 1 flaky"  # succeeds when tried again
    lines[30] = ""  # the key function raises on it
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    dead = FileSink(str(tmp_path / "dead"), codec="json")
    store = f"sqlite:///{tmp_path}/ckpt.db"
    with ShardPool(Flaky, num_actors=2, num_shards=4, name="flaky", store=store) as pool:
        report = pool.run(
            FileSource(str(tmp_path / "*.txt")),
            FileSink(str(tmp_path / "out")),
            key=lambda line: line.split()[0],
            dead_letters=dead,
            retries=1,
        )
    sums = {}  # the newest running sum per key
    for part in FileSink(str(tmp_path / "out")).parts():
        for line in part.read_text().splitlines():
            key, value = line.split()
            sums[key] = int(value)
    assert report.records == 500 and report.dead_letters == 2
    letters = [json.loads(x) for p in dead.parts() for x in p.read_text().splitlines()]
    letters.sort(key=lambda d: d["stage"])
    assert [(d["stage"], d["payload"]) for d in letters] == [("handler", "k3 5 fail"), ("key", "")]
    assert letters[1]["error"].startswith("IndexError")
    assert letters[0]["id"].endswith("in.txt@50") and "shard" in letters[0]["error"]
    assert "key 'k3'" in letters[0]["error"] and "RuntimeError: cannot take" in letters[0]["error"]
    expected: dict[str, int] = {}
    for i, line in enumerate(lines):
        if i not in (10, 30):
            key, value = line.split()[:2]
            expected[key] = expected.get(key, 0) + int(value)
    assert sums == expected  # the flaky line once, the failing one not at all


def test_a_stopped_job_goes_on_in_the_same_pool_and_a_failed_one_says_start_anew(
    ray_local: shardyard.ClusterInfo, tmp_path: Path
) -> None:
    lines = [f"k{i % 7} {i}" for i in range(3000)]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    store = f"sqlite:///{tmp_path}/ckpt.db"
    out = FileSink(str(tmp_path / "out"))
    stop = threading.Event()
    seen: list[str] = []

    class Stopping(FileSource):
        def read(self, max_records: int) -> list[Record] | None:
            got = super().read(min(max_records, 500))
            seen.extend(r.value for r in got or [])
            if len(seen) >= 1000:
                stop.set()  # the job ends after this epoch
            return got

    class FailingSink(FileSink):
        def write(self, checkpoint_id: int, outputs: list[Any]) -> None:
            raise OSError("disk full")

    key = lambda line: line.split()[0]  # noqa: E731
    pattern = str(tmp_path / "*.txt")
    with ShardPool(Flaky, num_actors=2, num_shards=4, name="again", store=store) as pool:
        first = pool.run(Stopping(pattern), out, key=key, stop=stop)
        assert first.stopped and 1000 <= first.records < 3000
        second = pool.run(Stopping(pattern), out, key=key, stop=threading.Event())
        assert not second.stopped and first.records + second.records == 3000  # none twice
    more = tmp_path / "more"
    more.mkdir()
    for f in range(2):  # a second input: one that fails in the sink, then for real
        (more / f"in-{f}.txt").write_text("k1 1\nk2 2\n")
    store = f"sqlite:///{tmp_path}/more.db"
    with ShardPool(Flaky, num_actors=2, num_shards=4, name="more", store=store) as pool:
        with pytest.raises(OSError, match="disk full"):
            pool.run(FileSource(str(more / "*.txt")), FailingSink(str(tmp_path / "x")), key=key)
        with pytest.raises(ConfigError, match=r"an earlier run\(\) on pool 'more' failed"):
            pool.run(FileSource(str(more / "*.txt")), out, key=key)
    with ShardPool(Flaky, num_actors=2, num_shards=4, name="more", store=store) as pool:
        third = pool.run(FileSource(str(more / "*.txt")), FileSink(str(tmp_path / "m")), key=key)
    assert third.records == 4 and third.resumed_from == 0  # the failed epoch left nothing
    sums: dict[str, int] = {}
    for part in out.parts():
        for line in part.read_text().splitlines():
            k, v = line.split()
            sums[k] = int(v)
    expected: dict[str, int] = {}
    for line in lines:
        k, v = line.split()
        expected[k] = expected.get(k, 0) + int(v)
    assert sums == expected  # each line once across the two runs
