"""Tests of the ``shardyard`` command (in-process, on the shared local Ray)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
import ray

import shardyard
from shardyard.cli import COMMANDS, build_parser, main


@pytest.mark.usefixtures("ray_local")
def test_demo_json_prints_match_and_a_json_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--limit", "40", "--json", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "MATCH: parallel result equals the serial one" in out
    last = json.loads(out.strip().splitlines()[-1])
    assert last["files"] == 40 and last["match"] is True
    assert last["wall_s"] > 0 and last["serial_s"] > 0
    assert last["speedup"] == pytest.approx(last["serial_s"] / last["wall_s"], rel=0.01)
    assert ray.is_initialized()  # the caller's Ray is left running


@pytest.mark.usefixtures("ray_local")
def test_demo_without_baseline(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["demo", "--limit", "10", "--json", "--no-baseline", "--actors", "1"])
    assert code == 0
    out = capsys.readouterr().out
    assert "MATCH:" not in out and "skipped (--no-baseline)" in out
    last = json.loads(out.strip().splitlines()[-1])
    assert last["files"] == 10
    assert last["match"] is None and last["serial_s"] is None and last["speedup"] is None


def test_demo_stops_the_ray_it_started(capsys: pytest.CaptureFixture[str]) -> None:
    shardyard.disconnect()  # the next ray_local test reconnects
    assert main(["demo", "--limit", "5", "--actors", "1", "--no-progress"]) == 0
    assert "MATCH" in capsys.readouterr().out
    assert not ray.is_initialized()


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["nope"],
        ["demo", "--actors", "0"],
        ["demo", "--limit", "many"],
        ["demo", "--strategy", "no-such-strategy"],
        ["demo", "--unknown-flag"],
    ],
)
def test_bad_arguments_exit_with_argparse_error(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "usage: shardyard" in capsys.readouterr().err


def test_strategy_error_lists_valid_names(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["demo", "--strategy", "jmup"])
    assert "jump" in capsys.readouterr().err


def test_fewer_shards_than_actors_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--actors", "4", "--shards", "2"]) == 2
    assert "--shards (2) must be >= --actors (4)" in capsys.readouterr().err


def test_parser_defaults_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["demo"])
    assert (args.strategy, args.batch_size, args.baseline, args.json) == ("jump", 8, True, False)
    assert args.actors is None and args.shards is None and args.limit is None
    assert set(COMMANDS) == {"demo", "cluster", "submit", "run", "bench"}
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "demo" in capsys.readouterr().out


def test_cluster_subcommands_parse() -> None:
    args = build_parser().parse_args(
        ["cluster", "--dir", "/x", "up", "--workers", "0", "--worker-resources", '{"ingest": 4}']
    )
    assert (args.dir, args.action, args.workers) == ("/x", "up", 0)
    assert args.worker_resources == {"ingest": 4.0}
    sub = build_parser().parse_args(["submit", "job.py", "--", "--n", "3"])
    assert (sub.script, sub.args) == ("job.py", ["--n", "3"])


def test_cluster_bad_resources_and_no_cluster_are_clear(
    capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    with pytest.raises(SystemExit):
        main(["cluster", "up", "--worker-resources", "[1, 2]"])
    assert "expected a JSON object of numbers" in capsys.readouterr().err
    assert main(["cluster", "--dir", str(tmp_path), "status"]) == 1
    assert "no cluster is up from" in capsys.readouterr().err
    assert main(["cluster", "--dir", str(tmp_path), "down"]) == 1


def test_demo_against_an_address_that_does_not_answer_is_one_clear_line() -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "shardyard", "demo", "--address", "127.0.0.1:1", "--limit", "5"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("shardyard demo: nothing answers at 127.0.0.1:1")
    assert "Traceback" not in done.stderr


def test_bench_runs_the_checkouts_benchmark_script() -> None:
    from shardyard.cli import bench_script

    script = bench_script()
    assert script is not None and script.name == "run.py"
    out = subprocess.run(
        [sys.executable, "-m", "shardyard", "bench", "--", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "--only" in out.stdout and "--quick" in out.stdout
