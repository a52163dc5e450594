"""A keyed word count on whatever cluster this process is pointed at, checked serially.

Run it as a plain driver (``python cluster/examples/wordcount_job.py``) after
``eval "$(shardyard cluster env)"``, or as a Ray Job (``shardyard submit
cluster/examples/wordcount_job.py``). It prints one JSON line and exits 1 if the
distributed count differs from the serial one.
"""

from __future__ import annotations

import json
import operator
import sys
import sysconfig
import time
from collections import Counter
from pathlib import Path

import shardyard
from shardyard import Shard, ShardPool


class WordCount(Shard):
    def setup(self, shard_id: int) -> None:
        self.counts: Counter[str] = Counter()

    def process(self, words: list[str]) -> list[None]:
        self.counts.update(words)
        return [None] * len(words)

    def result(self) -> Counter[str]:
        return self.counts


def main() -> int:
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:60]
    words = [w for f in files for w in f.read_text(errors="replace").split()]
    start = time.monotonic()
    info = shardyard.connect()
    with ShardPool(WordCount, num_shards=32) as pool:
        pool.map(words, keys=words)
        counts = pool.reduce(operator.add)
        nodes = sorted({a.node_ip or "?" for a in pool.stats().actors})
        actors = pool.num_actors
    report = {
        "cluster": info.address,
        "actors": actors,
        "node_ips": nodes,
        "words": len(words),
        "distinct": len(counts),
        "seconds": round(time.monotonic() - start, 2),
        "match": counts == Counter(words),
    }
    print(json.dumps(report), flush=True)
    return 0 if report["match"] else 1


if __name__ == "__main__":
    sys.exit(main())
