"""The ``shardyard`` command.

Subcommands register themselves in :data:`COMMANDS` (name -> a function that adds its
parser); each parser sets ``func`` to the function that runs it and returns the exit code.

* ``shardyard demo``: analyse this interpreter's standard library on shard actors, compare
  with a serial run in the driver, print the speedup (see :mod:`shardyard.demo`).

Example:
    >>> from shardyard.cli import build_parser
    >>> build_parser().parse_args(["demo", "--limit", "10"]).limit
    10
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

__all__ = ["COMMANDS", "build_parser", "main"]


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


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
            shardyard.connect(args.address)
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


COMMANDS: dict[str, Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = {
    "demo": _add_demo,
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
