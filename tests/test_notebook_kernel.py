"""Notebook use, in a real Jupyter kernel: the behaviours a notebook user meets first.

One kernel (with its own embedded Ray) runs the cells, as JupyterLab sends them (with a
``cellId``) or as nbclient does (without one): re-running a pool cell, interrupting a long
map, the progress widget, start-up that cannot fit, a notebook-defined exception, and an
``address=`` naming another cluster.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from kernel_helpers import Kernel

pytestmark = pytest.mark.timeout(600)

SETUP = """
import gc, os, time
import psutil, ray
import shardyard
from shardyard import Shard, ShardPool
shardyard.connect()

def alive(pids):
    out = []
    for pid in pids:
        try:
            out.append(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
        except psutil.NoSuchProcess:
            out.append(False)
    return out

def settle(pids_lists, want, timeout=20.0):
    # ray.kill ends a process soon, not at once: look until it matches or time is up.
    deadline = time.monotonic() + timeout
    while True:
        now = [alive(p) for p in pids_lists]
        if now == want or time.monotonic() > deadline:
            return now
        time.sleep(0.2)

class Count(Shard):
    def setup(self, shard_id):
        self.seen = {}
    def process_item(self, item):
        time.sleep(0.01)
        self.seen[item] = self.seen.get(item, 0) + 1
        return item
    def result(self):
        return self.seen

print("ready")
"""


@pytest.fixture(scope="module")
def kernel() -> Iterator[Kernel]:
    k = Kernel()
    try:
        setup = k.run(SETUP, timeout=180)
        assert setup.error is None, setup.error
        assert "ready" in setup.stdout
        yield k
    finally:
        try:
            k.run("shardyard.close_all(); shardyard.disconnect()", timeout=60)
        finally:
            k.close()


POOL_CELL = """
pool = ShardPool(abs, num_actors=2)
pool.start()
made.append([a.pid for a in pool.stats().actors])
pool
"""


@pytest.mark.parametrize("front_end", ["jupyterlab", "nbclient"])
def test_rerunning_a_pool_cell_leaves_only_the_last_pools_actors(
    kernel: Kernel, front_end: str
) -> None:
    assert kernel.run("made = []").error is None
    cell_id = "pool-cell" if front_end == "jupyterlab" else None
    for _ in range(3):
        out = kernel.run(POOL_CELL, cell_id=cell_id)
        assert out.error is None, out.error
        # Displayed: IPython's output cache (Out, _) now holds the pool.
        assert out.result is not None and "text/html" in out.result
        assert "actors" in out.result["text/html"]
    check = kernel.run(
        "print(settle(made, [[False, False], [False, False], [True, True]]))\n"
        "print(sum(1 for p in Out.values() if isinstance(p, ShardPool)))"
    )
    assert check.error is None, check.error
    lines = check.stdout.split("\n")
    assert lines[0] == "[[False, False], [False, False], [True, True]]"
    assert int(lines[1]) >= 3  # the old pools are still referenced by Out, yet released
    assert kernel.run("pool.close()").error is None


def test_a_pool_nobody_references_releases_its_actors(kernel: Kernel) -> None:
    out = kernel.run(
        "pids = sorted(set(ShardPool(lambda x: os.getpid(), num_actors=2).map(range(64))))\n"
        "gc.collect()\n"
        "print(settle([pids], [[False] * len(pids)]), len(pids))"
    )
    assert out.error is None, out.error
    assert out.stdout.strip() in ("[[False, False]] 2", "[[False]] 1")


def test_close_all_releases_every_pool(kernel: Kernel) -> None:
    out = kernel.run(
        "keep = [ShardPool(abs, num_actors=1).start() for _ in range(2)]\n"
        "pids = [keep[0].stats().actors[0].pid, keep[1].stats().actors[0].pid]\n"
        "print(shardyard.close_all(), settle([pids], [[False, False]]))"
    )
    assert out.error is None, out.error
    assert out.stdout.strip() == "2 [[False, False]]"


def _interrupt_after(kernel: Kernel, code: str, seconds: float) -> tuple[float, object]:
    msg_id = kernel.send(code)
    time.sleep(seconds)
    kernel.interrupt()
    t0 = time.monotonic()
    out = kernel.collect(msg_id, timeout=10)  # the guard against a hang
    return time.monotonic() - t0, out


def test_an_interrupted_keyed_map_cancels_its_queue_and_the_next_map_is_exact(
    kernel: Kernel,
) -> None:
    assert kernel.run("cpool = ShardPool(Count, num_actors=2)\ncpool.start();").error is None
    took, out = _interrupt_after(kernel, "cpool.map(range(20_000), keys=range(20_000))", 3.0)
    error = out.error  # type: ignore[attr-defined]
    assert error is not None and error["ename"] == "KeyboardInterrupt"
    assert "items not yet sent were cancelled" in error["evalue"]
    trace = "\n".join(error["traceback"])
    # Short: the user's cell and the one public call, not the scheduler's internals.
    for internal in ("core.py", "sinks.py", "dispatch.py", "interrupts.py", "_stream"):
        assert internal not in trace
    after = kernel.run(
        "st = cpool.stats()\n"
        "print(sum(s.queue_depth for s in st.shards), st.keyless_queued)\n"
        "second = list(range(10**6, 10**6 + 300))\n"
        "print(cpool.map(second, keys=second) == second)\n"
        "seen = {}\n"
        "for part in cpool.results().values():\n"
        "    for k, v in part.items():\n"
        "        seen[k] = seen.get(k, 0) + v\n"
        "first = [k for k in seen if k < 20_000]\n"
        "print(sorted(set(seen.values())), all(seen.get(k) == 1 for k in second))\n"
        "print(0 < len(first) < 20_000)\n"
        "cpool.close()"
    )
    assert after.error is None, after.error
    queued, exact, counts, partial = after.stdout.strip().split("\n")
    assert queued == "0 0"  # nothing of the interrupted call is queued or in flight
    assert exact == "True"
    assert counts == "[1] True"  # no interrupted item applied twice; the next map whole
    assert partial == "True"  # it was interrupted part-way, not run to the end
    assert took < 10


def test_an_interrupted_for_loop_over_map_unordered_leaves_nothing_queued(
    kernel: Kernel,
) -> None:
    assert (
        kernel.run(
            # One item at a time per actor: 20,000 items take long enough to interrupt.
            "upool = ShardPool(lambda x: time.sleep(0.01) or x, num_actors=2, max_concurrency=1)"
            "\nupool.start();"
        ).error
        is None
    )
    took, out = _interrupt_after(
        kernel, "total = 0\nfor y in upool.map_unordered(range(20_000)):\n    total += 1", 3.0
    )
    assert out.error is not None and out.error["ename"] == "KeyboardInterrupt"  # type: ignore[attr-defined]
    after = kernel.run(
        "deadline = time.monotonic() + 10\n"
        "while upool.stats().items < total and time.monotonic() < deadline:\n"
        "    time.sleep(0.1)\n"
        "st = upool.stats()\n"
        "print(st.keyless_queued, sum(s.queue_depth for s in st.shards), st.items < 20_000)\n"
        "print(upool.map(range(500)) == list(range(500)))\n"
        "upool.close()"
    )
    assert after.error is None, after.error
    assert after.stdout.strip().split("\n") == ["0 0 True", "True"]
    assert took < 10


def test_the_progress_bar_is_one_widget(kernel: Kernel) -> None:
    assert (
        kernel.run(
            # One item at a time per actor: 1,000 items last more than a second.
            "wpool = ShardPool(lambda x: time.sleep(0.005) or x, num_actors=2, max_concurrency=1)"
            "\nwpool.start();"
        ).error
        is None
    )
    asked = kernel.run("out = wpool.map(range(600), progress=True)\nprint(out == list(range(600)))")
    assert asked.error is None, asked.error
    assert asked.stdout.strip() == "True"
    assert asked.widgets() == 1
    assert "IProgress" not in asked.stderr and "TqdmWarning" not in asked.stderr
    # By default a call that lasts more than a second gets a bar in a notebook ...
    slow = kernel.run("out = wpool.map(range(1000))")
    assert slow.error is None, slow.error
    assert slow.widgets() == 1
    # ... a short one none, and progress=False none at all.
    quick = kernel.run("out = wpool.map(range(10))\nout = wpool.map(range(1000), progress=False)")
    assert quick.error is None, quick.error
    assert quick.widgets() == 0
    assert kernel.run("wpool.close()").error is None


def test_start_up_that_cannot_fit_fails_with_a_message(kernel: Kernel) -> None:
    out = kernel.run(
        "try:\n"
        "    ShardPool(abs, num_actors=4, num_cpus_per_actor=1, start_timeout_s=3).start()\n"
        "except shardyard.StartTimeoutError as e:\n"
        "    print('timeout:', e)\n"
        "try:\n"
        "    ShardPool(abs, num_actors=1, num_cpus_per_actor=1000).start()\n"
        "except shardyard.ConfigError as e:\n"
        "    print('refused:', e)\n"
        "try:\n"
        "    ShardPool(abs, num_actors=1, resources_per_actor={'tpu': 1}).start()\n"
        "except shardyard.ConfigError as e:\n"
        "    print('refused:', e)\n"
        "deadline = time.monotonic() + 10\n"
        "while ray.available_resources().get('CPU') != ray.cluster_resources().get('CPU'):\n"
        "    if time.monotonic() > deadline: break\n"
        "    time.sleep(0.2)\n"
        "free = ray.available_resources().get('CPU') == ray.cluster_resources()['CPU']\n"
        "print('cpus free:', free)"
    )
    assert out.error is None, out.error
    lines = out.stdout.strip().split("\n")
    assert (
        lines[0].startswith("timeout:")
        and "needs {CPU: 1}" in lines[0]
        and "Missing: CPU (0 of 2 free)" in lines[0]
    )
    assert "Nothing was left running" in lines[0]
    assert lines[1].startswith("refused:") and "num_cpus_per_actor=1000" in lines[1]
    assert lines[2].startswith("refused:") and "tpu" in lines[2]
    assert lines[3] == "cpus free: True"


def test_a_notebook_defined_exception_keeps_its_type(kernel: Kernel) -> None:
    out = kernel.run(
        "class MyError(Exception):\n"
        "    pass\n"
        "def bad(x):\n"
        "    raise MyError(f'no good: {x}')\n"
        "try:\n"
        "    ShardPool(bad, num_actors=1).map([7])\n"
        "except shardyard.TaskError as e:\n"
        "    print(type(e.cause).__name__, isinstance(e.cause, MyError), str(e.cause))\n"
        "    print('no good: 7' in str(e).split(chr(10))[0])"
    )
    assert out.error is None, out.error
    assert out.stdout.strip().split("\n") == ["MyError True no good: 7", "True"]


def test_an_address_naming_another_cluster_is_an_error(kernel: Kernel) -> None:
    out = kernel.run(
        "try:\n"
        "    ShardPool(abs, num_actors=1, address='127.0.0.1:1').map([1])\n"
        "except shardyard.ClusterConnectionError as e:\n"
        "    print(e.reason)"
    )
    assert out.error is None, out.error
    assert out.stdout.strip() == "mismatch"
