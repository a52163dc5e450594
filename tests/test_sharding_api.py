"""Tests of the public surface of shardyard.sharding: __all__, docstring examples, purity."""

from __future__ import annotations

import ast
import doctest
import importlib
import inspect
import pkgutil

import pytest

import shardyard.sharding as sharding

MODULES = [sharding.__name__] + [
    f"{sharding.__name__}.{m.name}" for m in pkgutil.iter_modules(sharding.__path__)
]


@pytest.mark.parametrize("name", MODULES)
def test_every_module_has_an_honest_all(name: str) -> None:
    module = importlib.import_module(name)
    assert hasattr(module, "__all__"), f"{name} lacks __all__"
    for public in module.__all__:
        assert hasattr(module, public), f"{name}.__all__ names missing {public!r}"
        obj = getattr(module, public)
        if (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__ == name:
            assert obj.__doc__ and ">>>" in obj.__doc__, f"{name}.{public} lacks an example"


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


FORBIDDEN = ("ray", "shardyard.actors", "shardyard.scheduler", "shardyard.cluster")


@pytest.mark.parametrize("name", MODULES)
def test_sharding_imports_no_ray_and_no_sibling_layers(name: str) -> None:
    # Checked on the source: another test may have imported Ray into this process already.
    module = importlib.import_module(name)
    tree = ast.parse(inspect.getsource(module))
    imported: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.append(node.module)
    bad = [m for m in imported if m in FORBIDDEN or m.startswith(tuple(f + "." for f in FORBIDDEN))]
    assert bad == []
