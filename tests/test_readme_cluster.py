"""The cluster commands of the README and of cluster/README.md, run as a new user would."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(400)


def _bash_block_after(doc: Path, heading: str) -> str:
    text = doc.read_text()
    section = text[text.index(heading) :]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match, f"no bash block after {heading!r} in {doc}"
    return match.group(1)


@pytest.mark.parametrize(
    ("doc", "heading"),
    [
        ("README.md", "## Running on a cluster"),
        ("cluster/README.md", "## On this machine: `shardyard cluster up`"),
    ],
)
def test_every_cluster_command_of_the_docs_runs(doc: str, heading: str, tmp_path: Path) -> None:
    block = _bash_block_after(ROOT / doc, heading)
    assert "shardyard cluster up" in block and "shardyard cluster down" in block
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        HOME=str(tmp_path),  # a new user: no ~/.ray/auth_token, no ~/.shardyard
        SHARDYARD_CLUSTER_DIR=str(tmp_path / "cluster"),
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
    )
    script = "set -euxo pipefail\n" + block
    try:
        done = subprocess.run(
            ["bash", "-c", script],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=360,
        )
    finally:  # whatever happened, stop what the block started
        subprocess.run(
            [sys.executable, "-m", "shardyard", "cluster", "down"],
            env=env,
            capture_output=True,
            timeout=120,
        )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count('"match": true') == 2, done.stdout  # the driver and the job
    assert "SUCCEEDED (exit status 0)" in done.stderr


def test_the_readme_python_examples_run(tmp_path: Path) -> None:
    text = (ROOT / "README.md").read_text()
    using = re.search(r"## Using it\n\n```python\n(.*?)```", text, re.S)
    durable = re.search(r"## Durable state and streaming jobs\n.*?```python\n(.*?)```", text, re.S)
    assert using and durable
    script = using.group(1) + "\n" + durable.group(1) + "\n" + durable.group(1)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert "None" in lines  # the first pool of that name starts fresh
    assert any(line.startswith("Checkpoint(pool='words', checkpoint_id=1") for line in lines)
