"""The standard library's ``.py`` files, their module names, and size-balanced ranges.

Example:
    >>> module_name("json/decoder.py")
    'json.decoder'
"""

from __future__ import annotations

import os
import sysconfig
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = ["SourceFile", "discover_files", "module_name", "weighted_boundaries"]


# --- the standard library's files -------------------------------------------------------------


class SourceFile(NamedTuple):
    """One ``.py`` file of the standard library.

    Attributes:
        module: dotted module name (``json.decoder``; a package's ``__init__`` is ``json``).
        path: absolute path.
        size: size in bytes.
    """

    module: str
    path: str
    size: int


def module_name(relative: str | os.PathLike[str]) -> str:
    """The dotted module name of a ``.py`` file given relative to the library root.

    Example:
        >>> module_name("json/decoder.py"), module_name("json/__init__.py"), module_name("os.py")
        ('json.decoder', 'json', 'os')
    """
    parts = list(Path(relative).with_suffix("").parts)
    if len(parts) > 1 and parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def discover_files(root: str | None = None, limit: int | None = None) -> list[SourceFile]:
    """Every ``.py`` file under ``root`` (default: this interpreter's stdlib), sorted by path.

    ``site-packages``/``dist-packages`` and ``__pycache__`` directories are skipped, as are
    symlinks to directories (no cycles).

    Args:
        root: the library directory.
        limit: keep only the first ``limit`` files (sorted by relative path).

    Example:
        >>> files = discover_files(limit=3)
        >>> len(files), files == sorted(files, key=lambda f: f.path)
        (3, True)
    """
    base = Path(root or sysconfig.get_paths()["stdlib"]).resolve()
    skip = {"site-packages", "dist-packages", "__pycache__"}
    found: list[tuple[str, str, int]] = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = [d for d in dirnames if d not in skip]
        for name in filenames:
            if not name.endswith(".py"):
                continue
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, base)
            try:
                size = os.path.getsize(full)
            except OSError:
                size = 0  # unreadable: the analysis will count it as an error
            found.append((rel, full, size))
    found.sort()
    if limit is not None:
        found = found[:limit]
    return [SourceFile(module_name(rel), full, size) for rel, full, size in found]


def weighted_boundaries(
    files: Sequence[SourceFile], num_shards: int, weights: Sequence[float] | None = None
) -> list[str]:
    """``num_shards - 1`` module-name boundaries that cut ``files`` into even-weight ranges.

    For the ``"range"`` strategy: neighbouring modules share a shard, and each shard gets
    about the same weight (bytes by default; the demo passes line counts, which track the
    parsing cost better). Hashing spreads files by count, which leaves the actors a few
    percent apart when file sizes vary by three orders of magnitude.

    Args:
        files: the files (any order).
        num_shards: the number of shards.
        weights: one weight per file, in the order of ``files`` (default: their sizes).

    Returns:
        Sorted boundaries: a module ``m`` goes to shard ``#{b : b <= m}``.

    Example:
        >>> fs = [SourceFile(m, m, n) for m, n in [("a", 10), ("b", 10), ("c", 10), ("d", 10)]]
        >>> weighted_boundaries(fs, 2)
        ['c']
        >>> weighted_boundaries(fs, 2, weights=[30, 1, 1, 1])
        ['b']
    """
    if not files:
        return [""] * (num_shards - 1)
    w = [f.size for f in files] if weights is None else list(weights)
    if len(w) != len(files):
        raise ValueError(f"got {len(w)} weights for {len(files)} files")
    order = sorted(range(len(files)), key=lambda i: files[i].module)
    sizes = np.array([max(float(w[i]), 1e-9) for i in order])
    before = np.concatenate(([0.0], np.cumsum(sizes)[:-1]))  # weight before each file
    targets = sizes.sum() * np.arange(1, num_shards) / num_shards
    # The file whose start is nearest each target opens the next shard.
    hi = np.minimum(np.searchsorted(before, targets, side="left"), len(order) - 1)
    lo = np.maximum(hi - 1, 0)
    idx = np.where(np.abs(before[lo] - targets) < np.abs(before[hi] - targets), lo, hi)
    return [files[order[i]].module for i in idx.tolist()]
