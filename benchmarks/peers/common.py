"""What every peer worker shares: the workload's files, the one tokenizer, digests, the JSON line.

Stdlib only (numpy is imported lazily by the keyed helpers), so that it imports in every
engine's venv and in the engines' own worker processes: the driver puts this folder on
``PYTHONPATH`` for each worker subprocess, so Spark's, Flink's, Dask's, Ray's and
multiprocessing's worker processes import it by name.

The workload folder (written by ``wordcount.py``) holds:

- ``files.txt``: one absolute path per line, the word-count input (sorted);
- ``sample_files.txt``: the first files of that list holding >= 50k words (PyFlink DataStream);
- ``keys.npy``, ``values.npy``: the keyed aggregation's int64 pairs;
- ``expected.json``: digests and sizes of the serial answers (so a worker may check itself).

A word is a maximal run of non-whitespace characters (Python's ``str.split()``) of a file's
bytes decoded as UTF-8 with invalid bytes replaced by U+FFFD (four stdlib test files are not
UTF-8). Engines that tokenize in the JVM use :data:`JAVA_WORD_REGEX`, the same definition.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

SKIP_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})
SAMPLE_WORDS = 50_000
NUM_WORKERS = 2

# Python's str.split() whitespace (the characters for which str.isspace() is true).
PY_WHITESPACE = "".join(c for c in map(chr, range(0x3001)) if c.isspace())
# A run of non-whitespace, as a Java regex (Spark SQL / Flink SQL tokenize with it).
JAVA_WORD_REGEX = "[^" + "".join(f"\\u{ord(c):04x}" for c in PY_WHITESPACE) + "]+"
# Whitespace runs, as a Java regex, for split(); empty tokens are dropped after.
JAVA_SPLIT_REGEX = "[" + "".join(f"\\u{ord(c):04x}" for c in PY_WHITESPACE) + "]+"


def stdlib_files(root: str | None = None) -> list[str]:
    """Every ``.py`` file of this interpreter's standard library, sorted.

    ``Path(os.__file__).parent.rglob("*.py")`` less ``site-packages``, ``dist-packages`` and
    ``__pycache__`` (the installed third-party packages are not the standard library).
    """
    base = Path(root or Path(os.__file__).parent)
    out = []
    for p in base.rglob("*.py"):
        if SKIP_DIRS.isdisjoint(p.relative_to(base).parts) and p.is_file():
            out.append(str(p))
    return sorted(out)


def read_words(path: str) -> list[str]:
    """The words of one file (see the module docstring)."""
    with open(path, "rb") as f:
        return f.read().decode("utf-8", "replace").split()


def count_file(path: str) -> Counter[str]:
    return Counter(read_words(path))


def count_files(paths: Iterable[str]) -> Counter[str]:
    c: Counter[str] = Counter()
    for p in paths:
        c.update(read_words(p))
    return c


def merge_counters(a: Counter[str], b: Counter[str]) -> Counter[str]:
    """``a`` updated with ``b`` (the larger one is updated in place)."""
    if len(a) < len(b):
        a, b = b, a
    a.update(b)
    return a


def chunks_by_size(paths: list[str], n: int) -> list[list[str]]:
    """``paths`` split into ``n`` lists of about equal total bytes (greedy, largest first)."""
    sizes = sorted(((os.path.getsize(p), p) for p in paths), reverse=True)
    bins: list[list[str]] = [[] for _ in range(n)]
    load = [0] * n
    for size, p in sizes:
        i = load.index(min(load))
        bins[i].append(p)
        load[i] += size
    return [b for b in bins if b]


def digest_counts(counts: Mapping[str, int] | Iterable[tuple[str, int]]) -> str:
    """sha256 of the JSON of the sorted (word, count) pairs (never Python's salted hash())."""
    items = counts.items() if isinstance(counts, Mapping) else counts
    pairs = sorted((str(w), int(c)) for w, c in items)
    return hashlib.sha256(
        json.dumps(pairs, ensure_ascii=False).encode("utf-8", "surrogatepass")
    ).hexdigest()


def digest_sums(sums: Any) -> str:
    """sha256 of a dense int64 array of per-key sums (key ``i`` at index ``i``)."""
    import numpy as np

    arr = np.ascontiguousarray(np.asarray(sums, dtype=np.int64))
    return hashlib.sha256(arr.tobytes()).hexdigest()


def dense_sums(pairs: Iterable[tuple[int, int]], num_keys: int) -> Any:
    """(key, sum) pairs as a dense int64 array of ``num_keys``."""
    import numpy as np

    out = np.zeros(num_keys, dtype=np.int64)
    for k, v in pairs:
        out[int(k)] += int(v)
    return out


def explain_diff(workload: str | Path, got: Mapping[str, int], limit: int = 4) -> str:
    """What differs between ``got`` and the serial word counts (for a note; not a verdict)."""
    want: dict[str, int] = json.loads((Path(workload) / "expected_counts.json").read_text())
    missing = [w for w in want if w not in got]
    extra = [w for w in got if w not in want]
    wrong = [w for w in want if w in got and int(got[w]) != want[w]]
    parts = [
        f"{len(got):,} distinct vs {len(want):,}; words {sum(map(int, got.values())):,}"
        f" vs {sum(want.values()):,}"
    ]
    for name, ws in (("missing", missing), ("extra", extra), ("count differs", wrong)):
        if ws:
            shown = ", ".join(repr(w) for w in sorted(ws)[:limit])
            parts.append(f"{len(ws):,} {name} (e.g. {shown})")
    return "; ".join(parts)


def check_counts(workload: str | Path, counts: Mapping[str, int], expected: str) -> tuple[str, str]:
    """The digest of ``counts`` and, when it is not ``expected``, what differs."""
    digest = digest_counts(counts)
    return digest, ("" if digest == expected else "DIFF: " + explain_diff(workload, counts))


def read_lines(path: str | Path) -> list[str]:
    return Path(path).read_text().splitlines()


def load_workload(workload: str | Path) -> dict[str, Any]:
    w = Path(workload)
    return json.loads((w / "expected.json").read_text())


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


class Timer:
    """``with Timer() as t: ...`` then ``t.s``."""

    def __enter__(self) -> Timer:
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.s = time.perf_counter() - self.t0


def emit(**fields: Any) -> None:
    """Print one result line (JSON) on stdout, flushed: the driver reads these."""
    fields.setdefault("loadavg", loadavg())
    fields.setdefault("python", sys.version.split()[0])
    print("RESULT " + json.dumps(fields), flush=True)


def row(
    engine: str,
    variant: str,
    task: str,
    startup_s: float | None,
    jobs_s: list[float],
    items: int,
    digest: str | None,
    expected: str | None,
    note: str = "",
    version: str = "",
    **extra: Any,
) -> dict[str, Any]:
    """The standard result fields of one (engine, variant) measurement."""
    job = min(jobs_s) if jobs_s else None
    return {
        "engine": engine,
        "variant": variant,
        "task": task,
        "startup_s": startup_s,
        "first_job_s": jobs_s[0] if jobs_s else None,
        "job_s": job,
        "jobs_s": jobs_s,
        "items": items,
        "items_per_s": (items / job) if job else None,
        "checksum": digest,
        "equal": (digest == expected) if digest is not None and expected is not None else False,
        "note": note,
        "version": version,
        **extra,
    }


def parse_args(argv: list[str] | None = None) -> Any:
    """The worker command line: ``--workload DIR --task wordcount|keyed --variant V``."""
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--workload", required=True)
    p.add_argument("--task", required=True, choices=["wordcount", "keyed", "sample"])
    p.add_argument("--variant", required=True)
    p.add_argument("--repeats", type=int, default=3)
    return p.parse_args(argv)
