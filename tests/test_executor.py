"""``shardyard.executor.Executor`` keeps the ``concurrent.futures.Executor`` contract.

The calls run in shard actors (other processes): a call that must wait polls for a gate
file, and calls that must be shown to have run (or not) append to a file; no threading
primitive crosses the process boundary. Every test shuts its executor down (the
``executor`` fixture opens the gates first, so a failing test never hangs on them).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydantic
import pytest

from shardyard import ClusterInfo, PoolClosedError, TaskError
from shardyard.executor import Executor

pytestmark = pytest.mark.usefixtures("ray_local")

GUARD_S = 60.0  # hang guard for results; never a performance threshold


class BoomError(Exception):
    """Defined in the test module: it reaches the actors by value (cloudpickle)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message, code)
        self.code = code


# --- call bodies (they run in the actors) ------------------------------------------------


def gated(gate: str, value: Any, limit: float = 120.0) -> Any:
    """Return ``value`` once the file ``gate`` exists."""
    deadline = time.monotonic() + limit
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            raise RuntimeError("the gate never opened")
        time.sleep(0.01)
    return value


def record(log: str, i: int) -> int:
    """Append ``i`` to the file ``log`` (the proof that the call ran)."""
    with open(log, "a") as f:
        f.write(f"{i}\n")
    return i


def ran(log: Path) -> list[int]:
    return [int(x) for x in log.read_text().split()] if log.exists() else []


def boom(code: int) -> None:
    raise BoomError("boom", code)


def reciprocal(x: float) -> float:
    return 1 / x


def span(seconds: float) -> tuple[float, float, int]:
    """Sleep; return (start, end, pid) on the wall clock (the same for every process here)."""
    start = time.time()
    time.sleep(seconds)
    return start, time.time(), os.getpid()


def square(x: int) -> int:
    return x * x


# --- fixtures ------------------------------------------------------------------------------


class Gates:
    """Gate files under ``tmp_path``; all opened when the test ends."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._paths: list[Path] = []

    def new(self) -> str:
        path = self._root / f"gate-{len(self._paths)}"
        self._paths.append(path)
        return str(path)

    def open(self, gate: str | None = None) -> None:
        for p in self._paths if gate is None else [Path(gate)]:
            p.touch()


@pytest.fixture
def gates(tmp_path: Path) -> Gates:
    return Gates(tmp_path)


@pytest.fixture
def executor(gates: Gates) -> Iterator[Callable[..., Executor]]:
    """Make executors; each is shut down (gates opened first) when the test ends."""
    made: list[Executor] = []

    def make(**kwargs: Any) -> Executor:
        ex = Executor(**kwargs)
        made.append(ex)
        return ex

    yield make
    gates.open()
    for ex in made:
        ex.shutdown(wait=True, cancel_futures=True)


# --- submit, results, exceptions ---------------------------------------------------------


def test_submit_returns_stdlib_futures_with_results(
    executor: Callable[..., Executor],
) -> None:
    ex = executor(max_workers=2)
    fut = ex.submit(pow, 2, 10)
    assert isinstance(fut, concurrent.futures.Future)
    assert fut.result(timeout=GUARD_S) == 1024
    assert ex.submit(int, "ff", base=16).result(timeout=GUARD_S) == 255
    assert fut.done() and not fut.cancelled() and fut.exception() is None


def test_exceptions_keep_their_type(executor: Callable[..., Executor]) -> None:
    ex = executor(max_workers=2)
    with pytest.raises(ValueError, match="invalid literal") as builtin:
        ex.submit(int, "not a number").result(timeout=GUARD_S)
    # The pool's TaskError (shard, the actor's traceback) is chained as the cause.
    cause = builtin.value.__cause__
    assert isinstance(cause, TaskError)
    assert "invalid literal" in cause.remote_traceback
    assert cause.__cause__ is None  # no loop between the two

    fut = ex.submit(boom, 7)
    with pytest.raises(BoomError, match="boom") as own:
        fut.result(timeout=GUARD_S)
    assert type(own.value) is BoomError and own.value.code == 7
    exc = fut.exception()
    assert isinstance(exc, BoomError) and exc.code == 7
    assert isinstance(exc.__cause__, TaskError) and "boom" in exc.__cause__.remote_traceback


def test_map_raises_the_failed_calls_exception_when_iterated_to_it(
    executor: Callable[..., Executor],
) -> None:
    ex = executor(max_workers=2)
    for chunksize in (1, 2):
        it = ex.map(reciprocal, [1, 2, 0, 4], chunksize=chunksize, timeout=GUARD_S)
        assert next(it) == 1.0
        assert next(it) == 0.5
        with pytest.raises(ZeroDivisionError):
            next(it)


def test_lambdas_and_closures_run(executor: Callable[..., Executor]) -> None:
    factor = 3
    seen = {"offset": 10}

    def scaled(x: int) -> int:  # a closure over a local and a dict
        return x * factor + seen["offset"]

    with pytest.raises((pickle.PicklingError, AttributeError)):
        pickle.dumps(scaled)  # what ProcessPoolExecutor would need, and cannot do
    ex = executor(max_workers=2)
    assert ex.submit(lambda x: x + 1, 41).result(timeout=GUARD_S) == 42
    assert ex.submit(scaled, 2).result(timeout=GUARD_S) == 16
    assert list(ex.map(scaled, range(5), chunksize=2, timeout=GUARD_S)) == [
        scaled(x) for x in range(5)
    ]
    assert list(ex.map(lambda a, b: a - b, [5, 6], [1, 2], timeout=GUARD_S)) == [4, 4]


# --- wait, as_completed, asyncio ---------------------------------------------------------


def test_wait_first_completed_all_completed_first_exception(
    executor: Callable[..., Executor], gates: Gates
) -> None:
    ex = executor(max_workers=2)
    gate = gates.new()
    held = ex.submit(gated, gate, "held")
    quick = ex.submit(square, 5)
    done, pending = concurrent.futures.wait(
        [held, quick], timeout=GUARD_S, return_when=concurrent.futures.FIRST_COMPLETED
    )
    assert done == {quick} and pending == {held}

    failing = ex.submit(boom, 1)
    done, pending = concurrent.futures.wait(
        [held, failing], timeout=GUARD_S, return_when=concurrent.futures.FIRST_EXCEPTION
    )
    assert done == {failing} and pending == {held}
    assert isinstance(failing.exception(), BoomError)

    gates.open(gate)
    done, pending = concurrent.futures.wait(
        [held, quick, failing], timeout=GUARD_S, return_when=concurrent.futures.ALL_COMPLETED
    )
    assert not pending and held.result() == "held"


def test_as_completed_yields_all_and_times_out(
    executor: Callable[..., Executor], gates: Gates
) -> None:
    ex = executor(max_workers=2)
    futures = [ex.submit(square, i) for i in range(20)]
    got = sorted(f.result() for f in concurrent.futures.as_completed(futures, timeout=GUARD_S))
    assert got == [i * i for i in range(20)]

    gate = gates.new()
    held = ex.submit(gated, gate, 1)
    with pytest.raises(TimeoutError):
        for _ in concurrent.futures.as_completed([held], timeout=0.3):
            pass
    with pytest.raises(TimeoutError):
        held.result(timeout=0.1)
    gates.open(gate)
    assert held.result(timeout=GUARD_S) == 1


def test_run_in_executor_and_wrap_future(executor: Callable[..., Executor]) -> None:
    ex = executor(max_workers=2)

    async def main() -> tuple[list[int], int]:
        loop = asyncio.get_running_loop()
        many = await asyncio.wait_for(
            asyncio.gather(*(loop.run_in_executor(ex, square, i) for i in range(10))),
            GUARD_S,
        )
        one = await asyncio.wait_for(asyncio.wrap_future(ex.submit(pow, 3, 3)), GUARD_S)
        return list(many), one

    assert asyncio.run(main()) == ([i * i for i in range(10)], 27)


# --- cancel and shutdown -----------------------------------------------------------------


def test_queued_calls_can_be_cancelled_and_never_run(
    executor: Callable[..., Executor], gates: Gates, tmp_path: Path
) -> None:
    log = tmp_path / "runs.log"
    ex = executor(max_workers=1)
    gate = gates.new()
    running = ex.submit(gated, gate, "first")
    queued = [ex.submit(record, str(log), i) for i in range(20)]
    cancelled = [f for f in queued if f.cancel()]
    # One worker busy with the first call: nothing else was handed over yet.
    assert len(cancelled) == len(queued)
    assert not running.cancel() and running.running()
    assert all(f.cancelled() and f.done() for f in cancelled)
    with pytest.raises(concurrent.futures.CancelledError):
        cancelled[0].result(timeout=GUARD_S)
    # wait() sees the cancels at once, although the worker is still busy.
    done, pending = concurrent.futures.wait(cancelled, timeout=GUARD_S)
    assert done == set(cancelled) and not pending

    later = [ex.submit(record, str(log), i) for i in range(100, 105)]
    gates.open(gate)
    assert running.result(timeout=GUARD_S) == "first"
    assert [f.result(timeout=GUARD_S) for f in later] == list(range(100, 105))
    ex.shutdown(wait=True)
    assert sorted(ran(log)) == list(range(100, 105))  # no cancelled call ran


def test_shutdown_waits_for_every_call_then_releases_the_pool(
    executor: Callable[..., Executor],
) -> None:
    ex = executor(max_workers=2)
    futures = [ex.submit(span, 0.05) for _ in range(8)]
    ex.shutdown(wait=True)
    assert all(f.done() and not f.cancelled() for f in futures)
    assert all(f.result()[1] >= f.result()[0] for f in futures)
    with pytest.raises(PoolClosedError):
        ex.pool.submit((square, (1,), {}))  # the actors were released
    ex.shutdown()  # again: harmless


def test_shutdown_cancel_futures_cancels_what_was_not_handed_over(
    executor: Callable[..., Executor], gates: Gates, tmp_path: Path
) -> None:
    log = tmp_path / "runs.log"
    ex = executor(max_workers=1)
    gate = gates.new()
    running = ex.submit(gated, gate, "first")
    queued = [ex.submit(record, str(log), i) for i in range(10)]
    ex.shutdown(wait=False, cancel_futures=True)  # returns at once: the first call holds
    assert all(f.cancelled() for f in queued)
    assert not running.done()
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        ex.submit(square, 2)
    gates.open(gate)
    assert running.result(timeout=GUARD_S) == "first"
    ex.shutdown(wait=True, cancel_futures=True)
    assert ran(log) == []


def test_submit_and_map_after_shutdown_raise(executor: Callable[..., Executor]) -> None:
    with executor(max_workers=1) as ex:
        assert ex.submit(square, 3).result(timeout=GUARD_S) == 9
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        ex.submit(square, 3)
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        ex.map(square, [1, 2])
    never_used = executor(max_workers=1)
    never_used.shutdown()  # no pool was ever started
    with pytest.raises(RuntimeError):
        never_used.submit(square, 3)


def test_shutdown_without_wait_releases_the_pool_after_the_last_call(
    executor: Callable[..., Executor], gates: Gates
) -> None:
    ex = executor(max_workers=1)
    gate = gates.new()
    held = ex.submit(gated, gate, "held")
    queued = ex.submit(square, 6)
    ex.shutdown(wait=False)  # returns at once; queued calls still run
    assert not held.done() and not queued.cancelled()
    gates.open(gate)
    assert held.result(timeout=GUARD_S) == "held"
    assert queued.result(timeout=GUARD_S) == 36
    deadline = time.monotonic() + GUARD_S
    while True:  # the last call's end releases the actors, in a thread of its own
        try:
            ex.pool.submit((square, (1,), {})).result(timeout=GUARD_S)
        except PoolClosedError:
            break
        assert time.monotonic() < deadline, "the pool was never released"
        time.sleep(0.05)


def test_cancelling_the_asyncio_future_cancels_a_queued_call(
    executor: Callable[..., Executor], gates: Gates, tmp_path: Path
) -> None:
    log = tmp_path / "runs.log"
    ex = executor(max_workers=1)
    gate = gates.new()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        held = loop.run_in_executor(ex, gated, gate, "held")
        queued = loop.run_in_executor(ex, record, str(log), 1)
        await asyncio.sleep(0)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        gates.open(gate)
        assert await asyncio.wait_for(held, GUARD_S) == "held"

    asyncio.run(main())
    ex.shutdown(wait=True)
    assert ran(log) == []


def test_calls_fail_with_the_pools_error_when_it_is_closed_under_them(
    executor: Callable[..., Executor], gates: Gates, tmp_path: Path
) -> None:
    log = tmp_path / "runs.log"
    ex = executor(max_workers=1)
    held = ex.submit(gated, gates.new(), "held")
    queued = [ex.submit(record, str(log), i) for i in range(3000)]
    ex.pool.close(wait=False)  # from outside: every call ends, none hangs or recurses
    with pytest.raises(PoolClosedError):
        held.result(timeout=GUARD_S)
    _, pending = concurrent.futures.wait(queued, timeout=GUARD_S)
    assert not pending
    assert all(isinstance(f.exception(), PoolClosedError) for f in queued)
    assert ran(log) == []


def test_shutdown_wait_from_a_done_callback_raises_and_wait_false_works(
    executor: Callable[..., Executor], gates: Gates
) -> None:
    # The callback runs on the thread that delivers every result of the executor: waiting
    # there for the other calls would wait for itself (the stdlib raises, as here).
    outcome: dict[str, BaseException | None] = {}
    called = {name: threading.Event() for name in ("wait", "nowait")}

    def stop(ex: Executor, wait: bool, name: str) -> Callable[[Any], None]:
        def callback(_: Any) -> None:
            try:
                ex.shutdown(wait=wait)
                outcome[name] = None
            except BaseException as exc:
                outcome[name] = exc
            called[name].set()

        return callback

    for name, wait in (("wait", True), ("nowait", False)):
        ex = executor(max_workers=1)
        first_gate, other_gate = gates.new(), gates.new()
        first = ex.submit(gated, first_gate, "first")
        first.add_done_callback(stop(ex, wait, name))
        other = ex.submit(gated, other_gate, "other")
        gates.open(first_gate)
        assert called[name].wait(GUARD_S), "the done-callback never returned"
        if wait:
            assert isinstance(outcome[name], RuntimeError)
            assert "cannot join current thread" in str(outcome[name])
        else:
            assert outcome[name] is None
        with pytest.raises(RuntimeError, match="after shutdown"):
            ex.submit(square, 1)  # shut down either way
        gates.open(other_gate)
        assert other.result(timeout=GUARD_S) == "other"  # the calls left still run


_EXIT_SCRIPT = """
import os, sys, time
import shardyard
from shardyard.executor import Executor

def mark(out, i):
    time.sleep(0.2)
    with open(os.path.join(out, str(i)), "w") as f:
        f.write("x")
    return i

if __name__ == "__main__":
    shardyard.connect()
    ex = Executor(max_workers=2)
    futures = [ex.submit(mark, sys.argv[1], i) for i in range(10)]
    ex.shutdown(wait=False)
    print("shutdown returned", sum(f.done() for f in futures), flush=True)
"""


def test_calls_left_by_shutdown_without_wait_run_before_the_interpreter_exits(
    tmp_path: Path,
) -> None:
    # As concurrent.futures does: the queued calls are waited for at exit (before Ray's
    # atexit handler stops the actors).
    script = tmp_path / "exit_script.py"
    script.write_text(textwrap.dedent(_EXIT_SCRIPT))
    out = tmp_path / "marks"
    out.mkdir()
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, str(script), str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=4 * GUARD_S,  # hang guard (starts a Ray of its own)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "shutdown returned" in proc.stdout
    assert sorted(int(p.name) for p in out.iterdir()) == list(range(10))


def test_calls_of_a_new_kind_are_not_all_handed_over_after_tiny_calls_grew_the_window(
    executor: Callable[..., Executor], gates: Gates
) -> None:
    ex = executor(max_workers=2)
    assert list(ex.map(square, range(3000), timeout=GUARD_S))[-1] == 2999**2  # grows it
    gate = gates.new()
    held = [ex.submit(gated, gate, i) for i in range(40)]
    # A kind not yet seen finishing fast goes about one call per worker at a time, as in
    # ProcessPoolExecutor: the others stay queued (not running, cancellable).
    assert sum(f.running() for f in held) <= 2
    cancelled = [f for f in held if f.cancel()]
    assert len(cancelled) >= 38
    ex.shutdown(wait=False, cancel_futures=True)
    gates.open(gate)
    left = [f for f in held if not f.cancelled()]
    assert [f.result(timeout=GUARD_S) for f in left] == [held.index(f) for f in left]


def test_a_known_fast_kinds_window_shrinks_while_its_oldest_call_is_held(
    executor: Callable[..., Executor], gates: Gates, tmp_path: Path
) -> None:
    ex = executor(max_workers=2)
    opened = str(tmp_path / "opened")
    Path(opened).touch()
    assert list(ex.map(gated, [opened] * 2000, range(2000), timeout=GUARD_S))[-1] == 1999
    gate = gates.new()
    first = ex.submit(gated, gate, -1)  # the same kind, now slow
    deadline = time.monotonic() + GUARD_S
    while not first.running():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.2)  # the oldest call in the pool is older than the window's target now
    held = [ex.submit(gated, gate, i) for i in range(40)]
    assert sum(f.running() for f in held) <= 2
    assert sum(f.cancel() for f in held) >= 38
    gates.open(gate)
    assert first.result(timeout=GUARD_S) == -1


def test_short_calls_are_not_batched_behind_a_long_one_while_a_worker_is_free(
    executor: Callable[..., Executor], gates: Gates, tmp_path: Path
) -> None:
    ex = executor(max_workers=2)
    assert list(ex.map(square, range(3000), timeout=GUARD_S))[-1] == 2999**2  # grows it
    opened = str(tmp_path / "opened")
    Path(opened).touch()
    gate = gates.new()
    long = ex.submit(gated, gate, "long")
    short = [ex.submit(gated, opened, i) for i in range(20)]
    # All of them end on the other worker while the long call is held.
    _, pending = concurrent.futures.wait(short, timeout=GUARD_S)
    assert not pending and [f.result() for f in short] == list(range(20))
    assert not long.done()
    gates.open(gate)
    assert long.result(timeout=GUARD_S) == "long"


# --- map ---------------------------------------------------------------------------------


def test_map_with_chunksize_equals_builtin_map(executor: Callable[..., Executor]) -> None:
    ex = executor(max_workers=2)
    for chunksize in (1, 7, 100, 5000):
        got = list(ex.map(square, range(1000), chunksize=chunksize, timeout=GUARD_S))
        assert got == list(map(square, range(1000)))
    # Several iterables, the shortest ending it (as zip and the builtin map do).
    assert list(ex.map(pow, [2, 3, 4], [5, 2], chunksize=2, timeout=GUARD_S)) == [32, 9]
    assert list(ex.map(square, [], chunksize=3)) == []
    with pytest.raises(ValueError, match="chunksize"):
        ex.map(square, [1], chunksize=0)


def test_map_timeout_raises_timeout_error(executor: Callable[..., Executor], gates: Gates) -> None:
    ex = executor(max_workers=2)
    gate = gates.new()
    it = ex.map(gated, [gate, gate], [1, 2], timeout=0.3)
    with pytest.raises(TimeoutError):
        next(it)
    gates.open(gate)
    assert list(ex.map(gated, [gate] * 4, range(4), timeout=GUARD_S)) == [0, 1, 2, 3]


# --- workers -----------------------------------------------------------------------------


def test_max_workers_bounds_the_calls_running_at_once(
    executor: Callable[..., Executor],
) -> None:
    ex = executor(max_workers=2)
    spans = [f.result(timeout=GUARD_S) for f in [ex.submit(span, 0.1) for _ in range(10)]]
    # Ends sort before starts at the same instant: touching spans do not overlap.
    events = sorted([(s, 1) for s, _, _ in spans] + [(e, -1) for _, e, _ in spans])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert 1 <= peak <= 2
    assert len({pid for _, _, pid in spans}) <= 2


def test_max_workers_none_means_the_clusters_cpus(
    executor: Callable[..., Executor], ray_local: ClusterInfo
) -> None:
    ex = executor()
    assert ex.submit(square, 4).result(timeout=GUARD_S) == 16
    assert ex.pool.num_actors == ray_local.num_cpus


def test_options_pass_through_and_are_checked_at_construction() -> None:
    ex = Executor(max_workers=1, max_retries=0, max_batch_size=8)
    assert ex.pool.config.max_retries == 0 and ex.pool.config.max_batch_size == 8
    ex.shutdown()  # never started: nothing to release
    with pytest.raises(pydantic.ValidationError, match="no_such_option"):
        Executor(max_workers=1, no_such_option=1)
    with pytest.raises(ValueError, match="max_workers"):
        Executor(max_workers=0)
    with pytest.raises(TypeError, match="max_workers"):
        Executor(num_actors=2)
