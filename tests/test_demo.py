"""Tests of shardyard.demo: the analysis, its combine, the file discovery, a real parallel run."""

from __future__ import annotations

import io
import os
from collections import Counter
from pathlib import Path

import pytest

import shardyard.demo
from shardyard import ShardPool
from shardyard.demo import (
    PackageStats,
    SourceFile,
    Stats,
    StdlibShard,
    analyse_source,
    combine,
    discover_files,
    module_name,
    run_demo,
    serial_analysis,
    weighted_boundaries,
)

SOURCE = b"""\
import os


class Greeter(Base):
    def hello(self, name, *rest):
        return os.path.join(name, self.suffix)


async def main(loop):
    await loop.run()
"""


def test_analyse_source_counts_a_known_module_exactly() -> None:
    stats = analyse_source("pkg.sub.mod", SOURCE)
    assert list(stats.packages) == ["pkg"]
    pkg = stats.packages["pkg"]
    assert (pkg.files, pkg.lines, pkg.bytes, pkg.errors) == (1, 10, len(SOURCE), 0)
    assert (pkg.functions, pkg.classes) == (2, 1)
    assert pkg.nodes == Counter(
        {
            "Module": 1,
            "Import": 1,
            "alias": 1,
            "ClassDef": 1,
            "FunctionDef": 1,
            "AsyncFunctionDef": 1,
            "arguments": 2,
            "arg": 4,
            "Return": 1,
            "Expr": 1,
            "Await": 1,
            "Call": 2,
            "Attribute": 4,  # os.path, .join, self.suffix, loop.run
            "Name": 5,  # Base, os, name, self, loop
            "Load": 9,
        }
    )
    assert pkg.top_node() == "Name"  # Load (on every Name and Attribute) is left out
    # Names, def/class names, argument names and attribute names; not import aliases.
    assert dict(stats.identifiers) == {
        "Greeter": 1,
        "Base": 1,
        "hello": 1,
        "self": 2,
        "name": 2,
        "rest": 1,
        "os": 1,
        "path": 1,
        "join": 1,
        "suffix": 1,
        "main": 1,
        "loop": 2,
        "run": 1,
    }


def test_analyse_source_reads_a_path_like_the_bytes(tmp_path: Path) -> None:
    path = tmp_path / "mod.py"
    path.write_bytes(SOURCE)
    assert (
        analyse_source("pkg.mod", str(path)).to_dict()
        == analyse_source("pkg.mod", SOURCE).to_dict()
    )
    assert analyse_source("pkg.mod", path).to_dict() == analyse_source("pkg", SOURCE).to_dict()


@pytest.mark.parametrize(
    "source",
    [b"def (:\n", b"x = 1\x00\n", b"print 'python 2'\n", b"(" * 300 + b")" * 300],
    ids=["syntax", "nul-byte", "python2", "too-deep"],
)
def test_unparsable_source_counts_as_an_error_not_a_crash(source: bytes) -> None:
    pkg = analyse_source("bad", source).packages["bad"]
    assert (pkg.files, pkg.errors, pkg.functions, len(pkg.nodes)) == (1, 1, 0, 0)
    assert pkg.lines == 1 and pkg.bytes == len(source)


def test_undecodable_bytes_are_replaced_and_parsed() -> None:
    stats = analyse_source("latin", b"s = '\xe9t\xe9'\n")
    assert stats.packages["latin"].errors == 0
    assert stats.identifiers == Counter({"s": 1})


def test_unreadable_path_counts_as_an_error(tmp_path: Path) -> None:
    pkg = analyse_source("gone", str(tmp_path / "missing.py")).packages["gone"]
    assert (pkg.files, pkg.errors, pkg.lines, pkg.bytes) == (1, 1, 0, 0)


def _three_partials() -> list[Stats]:
    files = discover_files(limit=40)
    parts = [serial_analysis((f.module, f.path) for f in files[i::3]) for i in range(3)]
    parts.append(analyse_source("zzz_only_here", b"unique_identifier_xyz = 0"))
    return parts


def test_combine_is_associative_commutative_and_pure() -> None:
    a, b, c, d = _three_partials()
    before = [p.to_dict() for p in (a, b, c, d)]
    left = combine(combine(a, b), combine(c, d))
    right = combine(a, combine(b, combine(c, d)))
    swapped = combine(combine(d, c), combine(b, a))
    assert left.to_dict() == right.to_dict() == swapped.to_dict()
    assert [p.to_dict() for p in (a, b, c, d)] == before  # inputs untouched
    assert left.files == sum(p.files for p in (a, b, c, d))
    assert left.identifiers["unique_identifier_xyz"] == 1
    # combining with the empty analysis is the identity
    assert combine(Stats(), left).to_dict() == combine(left, Stats()).to_dict() == left.to_dict()


def test_combine_keeps_zero_counts() -> None:
    a = Stats({"p": PackageStats(files=1, nodes=Counter({"Name": 0}))}, Counter({"x": 0}))
    merged = combine(a, Stats())
    assert merged.to_dict() == a.to_dict()
    assert "x" in merged.identifiers and "Name" in merged.packages["p"].nodes


def test_digest_ignores_insertion_order() -> None:
    a, b, _, _ = _three_partials()
    assert combine(a, b).digest() == combine(b, a).digest()
    assert combine(a, b).digest() != a.digest()


@pytest.mark.parametrize(
    ("relative", "expected"),
    [
        ("json/decoder.py", "json.decoder"),
        ("json/__init__.py", "json"),
        ("os.py", "os"),
        ("test/test_os.py", "test.test_os"),
        ("__future__.py", "__future__"),
    ],
)
def test_module_name(relative: str, expected: str) -> None:
    assert module_name(relative) == expected


def test_discover_files_skips_site_packages_and_sorts(tmp_path: Path) -> None:
    for rel in [
        "b.py",
        "a/__init__.py",
        "a/z.py",
        "a/notes.txt",
        "site-packages/x.py",
        "a/__pycache__/z.py",
    ]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x = 1\n")
    files = discover_files(str(tmp_path))
    assert [f.module for f in files] == ["a", "a.z", "b"]
    assert all(f.size == 6 and os.path.isabs(f.path) for f in files)
    assert [f.module for f in discover_files(str(tmp_path), limit=2)] == ["a", "a.z"]


def test_discover_files_finds_the_stdlib() -> None:
    files = discover_files()
    modules = {f.module for f in files}
    assert {"json.decoder", "os", "test.test_os"} <= modules
    assert not any("site-packages" in f.path for f in files)
    assert len(files) == len(modules) > 500


def test_weighted_boundaries_split_bytes_evenly() -> None:
    files = [SourceFile(f"m{i:02d}", "", size) for i, size in enumerate([90] + [10] * 9)]
    bounds = weighted_boundaries(files, 2)
    assert bounds == ["m01"]  # m00 alone holds half of the 180 bytes
    assert weighted_boundaries(files, 4) == sorted(weighted_boundaries(files, 4))
    assert len(weighted_boundaries(files[:1], 8)) == 7


def test_shard_snapshot_is_a_copy() -> None:
    shard = StdlibShard()
    shard.setup(0)
    shard.process([("m", b"x = 1")])
    snap = shard.snapshot()
    shard.process([("m", b"x = 2")])
    assert snap["stats"].identifiers["x"] == 1
    fresh = StdlibShard()
    fresh.setup(0)
    fresh.restore(snap)
    assert fresh.result().identifiers["x"] == 1


@pytest.mark.usefixtures("ray_local")
def test_parallel_run_equals_the_serial_reference() -> None:
    files = discover_files(limit=60)
    items = [(f.module, f.path) for f in files]
    with ShardPool(StdlibShard, num_actors=2, num_shards=8, max_batch_size=4) as pool:
        outputs = pool.map(items, keys=[f.module for f in files])
        parallel = pool.reduce(combine)
        load = pool.stats()
    assert outputs == [None] * 60
    assert load.items == 60
    # Keyed by module name, the files spread over several shards.
    assert sum(1 for s in load.shards if s.items) > 1
    assert parallel.to_dict() == serial_analysis(items).to_dict()
    assert parallel.files == 60


@pytest.mark.usefixtures("ray_local")
@pytest.mark.parametrize(
    "options",
    [{}, {"ship_source": True, "strategy": "range", "shards": 4, "actors": 2}],
    ids=["paths-jump", "source-range"],
)
def test_run_demo_reports_a_match(options: dict[str, object]) -> None:
    out = io.StringIO()
    report = run_demo(limit=30, progress=False, out=out, **options)  # type: ignore[arg-type]
    text = out.getvalue()
    assert report.match is True and report.files == 30
    assert report.serial_s is not None and report.speedup is not None
    assert "MATCH: parallel result equals the serial one" in text
    assert "top identifiers" in text and "packages by lines" in text and "load per actor" in text


def test_public_names() -> None:
    assert sorted(shardyard.demo.__all__) == sorted(
        name for name in dir(shardyard.demo) if name in shardyard.demo.__all__
    )
    for name in shardyard.demo.__all__:
        assert getattr(shardyard.demo, name).__doc__, name
