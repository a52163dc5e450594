"""The ``shardyard`` command.

Subcommands register themselves in :data:`COMMANDS` (name -> a function that adds its
parser); each parser sets ``func`` to the function that runs it and returns the exit code.

* ``shardyard demo``: analyse this interpreter's standard library on shard actors, compare
  with a serial run in the driver, print the speedup (see :mod:`shardyard.demo`).
* ``shardyard cluster up|status|env|down``: a Ray cluster of several nodes on this machine,
  with its own token (see :mod:`shardyard.cluster.local`).
* ``shardyard submit SCRIPT [ARGS...]``: run a script as a Ray Job, following its logs; its
  exit status becomes this command's (see :mod:`shardyard.cluster.jobs`).
* ``shardyard run JOB.py [ARGS...]``: run a streaming job script in this process, on an
  embedded local Ray or ``--address``; SIGINT or SIGTERM ends its jobs at their next
  checkpoint (see :mod:`shardyard.streams.job`), a second one aborts.
* ``shardyard bench [ARGS...]``: run the benchmark suites of a source checkout
  (``benchmarks/run.py``, with ARGS) and write their JSON and charts.

Example:
    >>> from shardyard.cli import build_parser
    >>> build_parser().parse_args(["demo", "--limit", "10"]).limit
    10
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["COMMANDS", "build_parser", "main"]


def _int_at_least(low: int, what: str) -> Callable[[str], int]:
    """An argparse type: an integer >= ``low``, with ``what`` in the error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


_positive = _int_at_least(1, "a positive integer")
_non_negative = _int_at_least(0, "an integer >= 0")


def _strategy(text: str) -> str:
    from shardyard.sharding import strategy

    try:
        strategy(text, 1)
    except Exception as exc:  # the registry's error lists the valid names
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="analyse the standard library on shard actors and compare with a serial run",
        description=(
            "Parse every .py file of this interpreter's standard library (ast.parse + "
            "ast.walk) on shard actors keyed by module name, combine the per-shard "
            "statistics, and check them against the same analysis run serially here. "
            "With --address, workers read the files by path: they need the same Python "
            "install at the same path, or use --ship-source."
        ),
    )
    p.add_argument(
        "--address",
        default=None,
        help="Ray address ('auto', 'host:6379', 'ray://host:10001'); default: embedded local Ray",
    )
    p.add_argument(
        "--actors", type=_positive, default=None, help="shard actors (default: cluster CPUs)"
    )
    p.add_argument(
        "--shards", type=_positive, default=None, help="logical shards (default: 8 per actor)"
    )
    p.add_argument(
        "--strategy", type=_strategy, default="jump", help="sharding strategy (default: jump)"
    )
    p.add_argument(
        "--batch-size",
        type=_positive,
        default=8,
        help="files per batch; small batches balance big items better (default: 8)",
    )
    p.add_argument(
        "--limit", type=_positive, default=None, help="analyse only the first N files (sorted)"
    )
    p.add_argument(
        "--no-baseline",
        dest="baseline",
        action="store_false",
        help="skip the serial run (no speedup, no result check)",
    )
    p.add_argument(
        "--ship-source",
        action="store_true",
        help="send file contents instead of paths (workers without this Python install)",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument(
        "--json",
        action="store_true",
        help="print a final JSON line: files, wall_s, serial_s, speedup, match",
    )
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    import ray

    import shardyard
    from shardyard.demo import run_demo

    if args.actors is not None and args.shards is not None and args.shards < args.actors:
        print(
            f"shardyard demo: --shards ({args.shards}) must be >= --actors ({args.actors})",
            file=sys.stderr,
        )
        return 2
    # Stop Ray at the end only if this command started it (a caller's Ray stays up).
    owns_ray = not ray.is_initialized()
    try:
        if owns_ray:
            try:
                shardyard.connect(args.address)
            except shardyard.ClusterConnectionError as exc:
                print(f"shardyard demo: {exc}", file=sys.stderr)
                return 1
        report = run_demo(
            address=args.address,
            actors=args.actors,
            shards=args.shards,
            strategy=args.strategy,
            batch_size=args.batch_size,
            limit=args.limit,
            baseline=args.baseline,
            ship_source=args.ship_source,
            progress=args.progress,
        )
    finally:
        if owns_ray:
            shardyard.disconnect()
    if args.json:
        print(report.to_json(), flush=True)
    return 1 if report.match is False else 0


def _add_cluster(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "cluster",
        help="start, inspect and stop a Ray cluster of several nodes on this machine",
        description=(
            "A Ray head and worker nodes on this machine as separate `ray start` processes, "
            "guarded by a token generated for this cluster. `up` prints to stdout only lines "
            'a shell can eval: eval "$(shardyard cluster up --workers 2)".'
        ),
    )
    p.add_argument(
        "--dir",
        default=None,
        help="the cluster's folder: state, token, logs "
        "(default: $SHARDYARD_CLUSTER_DIR or ~/.shardyard/cluster)",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    up = actions.add_parser("up", help="start a head and N worker nodes")
    up.add_argument("--workers", type=_non_negative, default=2, help="worker nodes (default: 2)")
    up.add_argument(
        "--cpus-per-node", type=_positive, default=1, help="CPUs of each worker (default: 1)"
    )
    up.add_argument(
        "--head-cpus", type=_non_negative, default=None, help="CPUs of the head (default: same)"
    )
    up.add_argument("--port", type=_positive, default=None, help="GCS port (default: 6379 if free)")
    up.add_argument(
        "--client-port", type=_positive, default=None, help="Ray Client port (default: 10001)"
    )
    up.add_argument(
        "--dashboard-port", type=_positive, default=None, help="dashboard port (default: 8265)"
    )
    up.add_argument("--node-ip", default=None, help="the address nodes register with")
    up.add_argument(
        "--worker-resources",
        type=_resources,
        default=None,
        help="custom resources of each worker, as JSON: '{\"ingest\": 4}'",
    )
    up.add_argument("--timeout", type=float, default=90.0, help="seconds to start (default: 90)")
    actions.add_parser("status", help="nodes, CPUs and what runs")
    actions.add_parser("env", help="print the export lines again (for eval)")
    actions.add_parser("down", help="stop exactly the processes `up` started")
    p.set_defaults(func=_run_cluster)


def _resources(text: str) -> dict[str, float]:
    import json

    try:
        value = json.loads(text)
        if not isinstance(value, dict):
            raise ValueError
        return {str(k): float(v) for k, v in value.items()}
    except (ValueError, TypeError):
        raise argparse.ArgumentTypeError(
            f'expected a JSON object of numbers like {{"ingest": 4}}, got {text!r}'
        ) from None


def _run_cluster(args: argparse.Namespace) -> int:
    from shardyard.cluster.local import ClusterDownError, LocalCluster

    try:
        if args.action == "up":
            cluster = LocalCluster.up(
                workers=args.workers,
                cpus_per_node=args.cpus_per_node,
                head_cpus=args.head_cpus,
                folder=args.dir,
                port=args.port,
                client_port=args.client_port,
                dashboard_port=args.dashboard_port,
                node_ip=args.node_ip,
                worker_resources=args.worker_resources,
                timeout_s=args.timeout,
            )
            print(cluster.instructions(), file=sys.stderr, flush=True)
            print(cluster.exports(), flush=True)
            return 0
        cluster = LocalCluster.load(args.dir)
        if args.action == "env":
            print(cluster.exports(), flush=True)
        elif args.action == "status":
            print(cluster.status(), flush=True)
            return 0 if cluster.head_alive() else 1
        else:
            stopped = cluster.down()
            print(
                f"shardyard: stopped {len(stopped)} processes of the cluster at {cluster.address}",
                file=sys.stderr,
            )
        return 0
    except ClusterDownError as exc:
        print(f"shardyard cluster {args.action}: {exc}", file=sys.stderr)
        return 1


def _add_submit(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "submit",
        help="run a script as a Ray Job, follow its logs, exit with its status",
        description=(
            "Upload the working folder, run `python SCRIPT ARGS...` as a Ray Job, print its "
            "output as it comes, and exit with the script's exit status. The Jobs API "
            "address and the token come from --address / RAY_API_SERVER_ADDRESS and Ray's "
            'token settings (eval "$(shardyard cluster env)" sets all of them).'
        ),
    )
    p.add_argument("script", help="the Python script to run")
    p.add_argument("args", nargs=argparse.REMAINDER, help="its arguments")
    p.add_argument("--address", default=None, help="Jobs API URL, e.g. http://HEAD:8265")
    p.add_argument(
        "--working-dir", default=None, help="folder to upload (default: the script's folder)"
    )
    p.add_argument("--pip", action="append", default=None, help="a package for the job's env")
    p.add_argument("--no-wait", dest="wait", action="store_false", help="return once accepted")
    p.add_argument("--timeout", type=float, default=None, help="stop the job after this long")
    p.set_defaults(func=_run_submit)


def _run_submit(args: argparse.Namespace) -> int:
    from shardyard.cluster.jobs import submit_job
    from shardyard.errors import ClusterConnectionError

    script_args = list(args.args)  # argparse already dropped a leading "--"
    try:
        report = submit_job(
            args.script,
            script_args,
            address=args.address,
            working_dir=args.working_dir,
            pip=args.pip,
            wait=args.wait,
            timeout_s=args.timeout,
        )
    except (ClusterConnectionError, TimeoutError) as exc:
        print(f"shardyard submit: {exc}", file=sys.stderr)
        return 1
    print(
        f"shardyard submit: job {report.job_id} {report.status} (exit status "
        f"{report.exit_code}){': ' + report.message if report.message else ''}",
        file=sys.stderr,
    )
    return report.exit_code


def _add_run(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "run",
        help="run a streaming job script; SIGINT/SIGTERM stop it at its next checkpoint",
        description=(
            "Run JOB.py (as `python JOB.py ARGS...` would) connected to Ray: an embedded "
            "local Ray, or the cluster --address / RAY_ADDRESS names. The first SIGINT or "
            "SIGTERM makes its running jobs (pool.run) close their epoch with a checkpoint "
            "and return, so the script ends normally; started again with the same pool "
            "name and store, it resumes there. A second signal aborts (the next run resumes "
            "from the last committed checkpoint)."
        ),
    )
    p.add_argument("script", help="the job script")
    p.add_argument("args", nargs=argparse.REMAINDER, help="its arguments")
    p.add_argument("--address", default=None, help="a Ray cluster (default: embedded)")
    p.set_defaults(func=_run_job_script)


def _run_job_script(args: argparse.Namespace) -> int:
    import runpy
    import signal
    import traceback

    import shardyard
    from shardyard.streams.job import request_stop

    signals = [0]

    def on_signal(signum: int, frame: object) -> None:
        signals[0] += 1
        if signals[0] > 1:
            raise KeyboardInterrupt(f"signal {signum} again: aborting")
        if request_stop() == 0:
            raise KeyboardInterrupt(f"signal {signum} with no job running: exiting")
        print(
            f"shardyard run: signal {signum}: stopping at the next checkpoint "
            "(send it again to abort)",
            file=sys.stderr,
            flush=True,
        )

    try:
        shardyard.connect(args.address)
    except shardyard.ClusterConnectionError as exc:
        print(f"shardyard run: {exc}", file=sys.stderr)
        return 1
    # After connecting: Ray installs its own SIGTERM handler (which exits at once).
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    argv = sys.argv
    sys.argv = [args.script, *args.args]
    try:
        runpy.run_path(args.script, run_name="__main__")
        return 0
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt as exc:
        print(f"shardyard run: {exc or 'interrupted'}", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        return 1
    finally:
        sys.argv = argv
        for s, handler in previous.items():
            signal.signal(s, handler)
        shardyard.disconnect()


def _add_bench(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "bench",
        help="run the benchmark suites (benchmarks/run.py) and draw their charts",
        description=(
            "Run benchmarks/run.py of the source checkout shardyard is installed from (or "
            "of the current directory) with ARGS, e.g. `shardyard bench --quick --only "
            "batch,cpu`; `shardyard bench -- --help` lists the suites. It writes "
            "benchmarks/results/all.json and the PNG charts."
        ),
    )
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments of benchmarks/run.py")
    p.set_defaults(func=_run_bench)


def bench_script() -> Path | None:
    """``benchmarks/run.py`` of the checkout this package comes from, or of the current
    directory; ``None`` when neither has one (an installed wheel carries no benchmarks)."""
    import shardyard

    for root in (Path(shardyard.__file__).resolve().parent.parent, Path.cwd()):
        script = root / "benchmarks" / "run.py"
        if script.is_file():
            return script
    return None


def _run_bench(args: argparse.Namespace) -> int:
    import subprocess

    script = bench_script()
    if script is None:
        print(
            "shardyard bench: no benchmarks/run.py here: the benchmarks live in the source "
            'checkout (git clone, then `pip install -e ".[bench]"` and run it there)',
            file=sys.stderr,
        )
        return 2
    rest = args.args[1:] if args.args[:1] == ["--"] else args.args
    return subprocess.call([sys.executable, str(script), *rest])


COMMANDS: dict[str, Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = {
    "demo": _add_demo,
    "cluster": _add_cluster,
    "submit": _add_submit,
    "run": _add_run,
    "bench": _add_bench,
}


def build_parser() -> argparse.ArgumentParser:
    """The ``shardyard`` argument parser with every subcommand of :data:`COMMANDS`.

    Example:
        >>> build_parser().parse_args(["demo", "--no-baseline"]).baseline
        False
    """
    from shardyard import __version__

    parser = argparse.ArgumentParser(
        prog="shardyard", description="Akka-style keyed sharding on Ray."
    )
    parser.add_argument("--version", action="version", version=f"shardyard {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS.values():
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``shardyard`` command; return its exit code.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).

    Returns:
        0 on success, 1 when the demo's results do not match, 2 for bad arguments given
        after parsing (argparse itself exits with 2 on unparsable ones).

    Raises:
        SystemExit: argparse's exit for ``--help``, ``--version`` and bad arguments.

    Example:
        >>> main(["demo", "--limit", "20", "--json"])  # doctest: +SKIP
        0
    """
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
