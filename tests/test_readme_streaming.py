"""The README's streaming job, run as its text says (`shardyard run job.py -- QUEUE TABLE`)
against the real RabbitMQ and PostgreSQL."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from services import POSTGRES_URL, require
from streaming_helpers import (
    AMQP,
    depth,
    expected_totals,
    new_table,
    publish,
    rabbitmq_queue,
    take_table,
)

from shardyard.streams.sql import DeadLetterTable

ROOT = Path(__file__).resolve().parent.parent


def test_the_readme_streaming_job_runs(tmp_path: Path) -> None:
    require("postgresql")
    text = (ROOT / "README.md").read_text()
    block = re.search(r"### A streaming job\n.*?```python\n(.*?)```", text, re.S)
    assert block
    assert "shardyard run job.py -- events totals" in text
    (tmp_path / "job.py").write_text(block.group(1))
    assert AMQP in block.group(1) and POSTGRES_URL in block.group(1)
    events = [{"key": f"k{i % 17}", "value": i % 5} for i in range(2000)]
    table = new_table()
    with rabbitmq_queue() as queue:
        publish(queue, [*events, b'{"key": "k1", "value": "lots"}'])
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        done = subprocess.run(
            [sys.executable, "-m", "shardyard", "run", "job.py", "--", queue, table],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert depth(queue) == 0
    assert "records=2001" in done.stdout and "dead_letters=1" in done.stdout
    dead = DeadLetterTable(POSTGRES_URL, job=table)
    try:
        letters = [r for r in dead.rows() if r["job"] == table]
        with dead._engine.begin() as conn:
            conn.execute(dead.table.delete().where(dead.table.c.job == table))
    finally:
        dead.close()
    assert [(r["id"], r["stage"]) for r in letters] == [("m2000", "decode")]
    assert re.search(r"ValidationError.*value", letters[0]["error"], re.S)
    assert take_table(POSTGRES_URL, table) == expected_totals(events)
