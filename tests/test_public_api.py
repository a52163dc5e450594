"""The public surface: every public module declares __all__, and __all__ is honest."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import shardyard

MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(shardyard.__path__, "shardyard.")
    if not m.name.rsplit(".", 1)[-1].startswith("_")
)


@pytest.mark.parametrize("name", ["shardyard", *MODULES])
def test_module_has_honest_all(name: str) -> None:
    module = importlib.import_module(name)
    assert hasattr(module, "__all__"), f"{name} lacks __all__"
    for exported in module.__all__:
        assert hasattr(module, exported), f"{name}.__all__ names missing {exported}"


def test_top_level_exports_the_engine() -> None:
    for name in ["ShardPool", "Shard", "TaskError", "connect", "PoolConfig", "ShardFuture"]:
        assert name in shardyard.__all__


@pytest.mark.parametrize(
    "name",
    [
        "shardyard",
        "shardyard.config",
        "shardyard.errors",
        "shardyard.actors.combine",
        "shardyard.actors.concurrency",
        "shardyard.actors.shard",
        "shardyard.actors.shard_actor",
        "shardyard.protocol",
        "shardyard.scheduler.futures",
        "shardyard.scheduler.partition",
        "shardyard.scheduler.segments",
        "shardyard.scheduler.stats",
    ],
)
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
