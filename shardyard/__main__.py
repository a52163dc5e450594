"""``python -m shardyard``: the same as the ``shardyard`` command."""

from shardyard.cli import main

__all__ = ["main"]

raise SystemExit(main())
