"""Soak: a keyed, stateful stream while shard actors are SIGKILLed at random moments.

Items are ``(key, seq)`` pairs over ``--num-keys`` keys (5,000 by default), drawn at random,
with ``seq`` counting 0, 1, 2, ... per key in input order. They go through a
:class:`SoakShard` pool in *phases*: consecutive ``map`` / ``map_unordered`` calls (they
alternate) with short gaps between them, in which the pool drains and sits idle.

The shard keeps, per key, the number of arrivals, the highest seq seen and the set of seqs
seen (a Python int used as a bit set), plus per-shard counts of arrivals of a seq already
seen and of a seq lower than the highest seen. It returns one output per item, the code
``key * 2**32 + seq``, flagged (a high bit) when the item arrived out of order or a second
time, which pins such a fault on its phase and so on the kill before it. At the end the
shards' state is compared with the serial answer (key ``k`` had ``n_k`` items: seqs
``0 .. n_k - 1``, in that order):

* lost: seqs of ``0 .. n_k - 1`` missing from a key's final state;
* doubled: arrivals of a seq the key had already seen (its arrivals minus its distinct seqs);
* reordered: arrivals of a seq lower than the highest already seen for its key;
* errors: items whose output is an exception (``return_exceptions=True``); kills are
  recoverable here, so there must be none.

Every output is checked too, phase by phase: ``map`` output must equal the expected list
position by position, ``map_unordered`` output must hold every expected code exactly once
(missing / duplicated / unexpected / misplaced).

A killer thread SIGKILLs actor processes (the pid from ``pool.stats().actors[i].pid``, re-read
after every kill, since Ray restarts the actor as a new process). Its plan cycles through
four kinds of action, in shuffled order:

* ``busy``: one actor while it has items in flight;
* ``idle``: one actor in a gap between phases, after the pool drained (done by the driver);
  alternately the next phase waits until the actor's new process is up, or starts at once;
* ``both``: both actors, a few milliseconds apart, while busy;
* ``recovery``: one busy actor (recorded as ``busy``), then the same actor again (recorded
  as ``recovery``) as soon as its new process answers and the pool counts the death, i.e.
  while the pool is restoring its shards (at most ~1 s after the new pid shows).

The actions are spread over the first 85% of ``--seconds`` (or, with ``--seconds 0``, of
the ``--items`` stream, phase by phase). The stream continues past ``--items`` until every
planned kill was made, ``--seconds`` have passed, and two phases have started after the
last kill (so the pool had to recover from it). Then the same workload (same items, phases
and gaps) runs again on a fresh pool with the same settings and no kills, and the throughput
ratio (items per second of phase time, gaps excluded) is printed.

Every wait on the pool runs in a helper thread joined with a generous timeout
(``--hang-timeout``): a hang is reported as a failure with the counts so far, never a
stuck run. Nothing here waits on a sleep for correctness; sleeps only pace the killer and
the gaps.

Output: a summary (items, kills by kind, lost, doubled, reordered, errors, output checks,
throughput with / without kills) and, last, one JSON line with every number. Exit code 1 if
lost, doubled or reordered is non-zero, an output or error check failed, fewer kills than
planned were made, or anything hung.

Run:
    python benchmarks/soak.py [--items N] [--kills K] [--seconds S] [--seed X]
    (``--help`` lists the rest: ``--kinds busy,both`` plans only some kinds of kill,
    ``--hang-timeout``, ``--phase-items``, ``--batch-sleep``, ``--no-baseline``, ...)

The reusable parts (``SoakShard``, ``Killer``, ``run_pass``, ``run_soak``, the checks) are
imported by ``tests/test_soak.py``, which runs a short version.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import numpy as np

import shardyard
from shardyard import Shard, ShardPool

__all__ = [
    "CODE_STRIDE",
    "FLAG_REORDERED",
    "FLAG_REPEATED",
    "KINDS",
    "Hang",
    "KillRecord",
    "Killer",
    "OutputCheck",
    "PassResult",
    "SoakConfig",
    "SoakReport",
    "SoakShard",
    "Workload",
    "check_outputs",
    "check_state",
    "guarded",
    "kill_plan",
    "run_pass",
    "run_soak",
    "soak_handler",
]

CODE_STRIDE = 1 << 32  # output code of item (key, seq): key * CODE_STRIDE + seq
# Flags the shard sets on an item's output when the item arrived out of order (a seq lower
# than the highest seen for its key) or again (a seq already seen): they pin a fault on
# the phase, and so the kill, where it happened. Codes stay below 2**61 (keys < 2**29).
FLAG_REORDERED = 1 << 62
FLAG_REPEATED = 1 << 61
FLAGS = FLAG_REORDERED | FLAG_REPEATED
KINDS = ("busy", "idle", "both", "recovery")  # kinds of kill action
SIGNALS = {"busy": 1, "idle": 1, "both": 2, "recovery": 2}  # SIGKILLs per action
PLAN_WINDOW = 0.85  # kills are spread over this fraction of the run's window
STOPPED = "stopped before it was carried out"


# --- the handler ------------------------------------------------------------------------


class SoakShard(Shard):
    """Per key: arrivals, highest seq, bit set of seqs seen; outputs one code per item.

    The code is ``key * CODE_STRIDE + seq``, with ``FLAG_REORDERED`` / ``FLAG_REPEATED``
    set when the item arrived out of order or a second time.

    ``batch_sleep_s`` (a class attribute; see :func:`soak_handler`) paces every batch so
    that work is always in flight. The state is made of plain values, so the default
    ``snapshot``/``restore`` apply.
    """

    batch_sleep_s: float = 0.0

    def setup(self, shard_id: int) -> None:
        self.seen: dict[int, list[int]] = {}  # key -> [arrivals, highest seq, seq bit set]
        self.reordered = 0  # arrivals of a seq lower than the highest seen for the key
        self.repeated = 0  # arrivals of a seq already seen for the key

    def process(self, batch: Any) -> list[int]:
        if self.batch_sleep_s:
            time.sleep(self.batch_sleep_s)
        rows = batch.tolist() if isinstance(batch, np.ndarray) else batch
        seen = self.seen
        out = []
        for key, seq in rows:
            st = seen.get(key)
            if st is None:
                st = seen[key] = [0, -1, 0]
            bit = 1 << seq
            code = key * CODE_STRIDE + seq
            if st[2] & bit:
                self.repeated += 1
                code |= FLAG_REPEATED
            if seq < st[1]:
                self.reordered += 1
                code |= FLAG_REORDERED
            else:
                st[1] = seq
            st[0] += 1
            st[2] |= bit
            out.append(code)
        return out

    def result(self) -> dict[str, Any]:
        return {"seen": self.seen, "reordered": self.reordered, "repeated": self.repeated}


def soak_handler(batch_sleep_s: float) -> type[SoakShard]:
    """A :class:`SoakShard` subclass that sleeps ``batch_sleep_s`` per batch."""
    return type("SoakShardPaced", (SoakShard,), {"batch_sleep_s": float(batch_sleep_s)})


# --- the workload -----------------------------------------------------------------------


class Workload:
    """The deterministic stream: phases of ``(key, seq)`` items, and the gaps between them.

    The same seed gives the same phases and gaps, so a second pass replays the workload.
    ``next_seq[k]`` is, after the phases made so far, how many items key ``k`` had: the
    serial answer.
    """

    def __init__(self, num_keys: int, phase_items: int, seed: int) -> None:
        if not 0 < num_keys < 1 << 28:
            raise ValueError(f"num_keys must be in [1, 2**28), got {num_keys}")
        self.num_keys = num_keys
        self.phase_items = phase_items
        self._rng = np.random.default_rng([seed, 1])
        self._gap_rng = np.random.default_rng([seed, 2])
        self.next_seq = np.zeros(num_keys, dtype=np.int64)

    def phase(self) -> tuple[list[tuple[int, int]], list[int], np.ndarray]:
        """The next phase: ``(items, keys, expected output codes)``."""
        keys = self._rng.integers(0, self.num_keys, size=self.phase_items, dtype=np.int64)
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        sizes = np.diff(np.r_[starts, len(keys)])
        rank = np.arange(len(keys)) - np.repeat(starts, sizes)  # position within its key
        seqs = np.empty_like(keys)
        seqs[order] = self.next_seq[sorted_keys] + rank
        self.next_seq += np.bincount(keys, minlength=self.num_keys)
        key_list = keys.tolist()
        return list(zip(key_list, seqs.tolist(), strict=True)), key_list, keys * CODE_STRIDE + seqs

    def gap(self, low: float, high: float) -> float:
        """Seconds of the next gap between phases."""
        return float(self._gap_rng.uniform(low, high))


# --- checks -----------------------------------------------------------------------------


@dataclass
class OutputCheck:
    """Outputs against the expected codes (accumulated over phases).

    ``missing`` counts expected items without their output (those that failed included),
    ``duplicated`` outputs delivered more than once, ``unexpected`` outputs that are no
    expected code, ``misplaced`` ``map`` positions holding another item's output;
    ``flagged_reordered`` / ``flagged_repeated`` outputs the shard flagged (the item
    reached it out of order / a second time; a flag on a run the shard's state later rolled
    back still counts here, the state check does not count it).
    """

    missing: int = 0
    duplicated: int = 0
    unexpected: int = 0
    misplaced: int = 0
    errors: int = 0
    flagged_reordered: int = 0
    flagged_repeated: int = 0

    def add(self, other: OutputCheck) -> None:
        for name in vars(self):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @property
    def clean(self) -> bool:
        return not (
            self.missing
            or self.duplicated
            or self.unexpected
            or self.misplaced
            or self.flagged_reordered
            or self.flagged_repeated
        )


def check_outputs(expected: np.ndarray, got: Sequence[Any], ordered: bool) -> OutputCheck:
    """Check one phase's outputs; ``ordered``: ``got`` must equal ``expected`` in order."""
    errors = sum(isinstance(x, BaseException) for x in got)

    def code(x: Any) -> int:
        if isinstance(x, int | np.integer) and not isinstance(x, bool):
            return int(x)
        return -1 if isinstance(x, BaseException) else -2

    raw = np.fromiter((code(x) for x in got), dtype=np.int64, count=len(got))
    flags = np.where(raw >= 0, raw & FLAGS, 0)
    values = np.where(raw >= 0, raw & ~FLAGS, raw)
    codes = values[values >= 0]
    uniq, counts = np.unique(codes, return_counts=True)
    check = OutputCheck(
        missing=int((~np.isin(expected, uniq)).sum()),
        duplicated=int((counts - 1).sum()),
        unexpected=int((~np.isin(uniq, expected)).sum()) + int((values == -2).sum()),
        errors=errors,
        flagged_reordered=int(((flags & FLAG_REORDERED) != 0).sum()),
        flagged_repeated=int(((flags & FLAG_REPEATED) != 0).sum()),
    )
    if ordered:
        n = min(len(values), len(expected))
        wrong = (values[:n] != expected[:n]) & (values[:n] != -1)
        check.misplaced = int(wrong.sum()) + abs(len(values) - len(expected))
    return check


def check_state(parts: dict[int, Any], expected_counts: np.ndarray) -> dict[str, int]:
    """Compare the shards' final state (``pool.results()``) with the serial answer.

    Args:
        parts: ``{shard_id: SoakShard.result()}``.
        expected_counts: ``expected_counts[k]`` = items of key ``k`` (its seqs are
            ``0 .. n_k - 1``).

    Returns:
        ``lost``, ``doubled``, ``reordered``, plus ``repeated_events`` (the shards' own
        count of repeated seqs, equal to ``doubled`` when the state is consistent),
        ``unexpected`` (seqs or keys that were never sent) and ``split_keys`` (keys found
        on more than one shard).
    """
    seen: dict[int, list[int]] = {}
    reordered = repeated = split = 0
    for part in parts.values():
        if not part:
            continue
        reordered += int(part["reordered"])
        repeated += int(part["repeated"])
        for key, st in part["seen"].items():
            if key in seen:
                split += 1
            seen[key] = st
    lost = doubled = unexpected = 0
    for key, n in enumerate(expected_counts.tolist()):
        st = seen.pop(key, None)
        if st is None:
            lost += n
            continue
        arrivals, _, bits = st
        distinct = bits.bit_count()
        in_range = (bits & ((1 << n) - 1)).bit_count()
        lost += n - in_range
        unexpected += distinct - in_range
        doubled += arrivals - distinct
    unexpected += sum(st[0] for st in seen.values())  # keys never sent
    return {
        "lost": lost,
        "doubled": doubled,
        "reordered": reordered,
        "repeated_events": repeated,
        "unexpected": unexpected,
        "split_keys": split,
    }


# --- hang guard -------------------------------------------------------------------------


class Hang(Exception):
    """A guarded wait did not finish within its timeout."""


def guarded(fn: Callable[[], Any], timeout: float, what: str) -> Any:
    """Run ``fn`` in a daemon thread; its result, or :class:`Hang` after ``timeout`` s.

    A hung call keeps its (daemon) thread; the caller turns the hang into a failure.
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, name=f"soak-guard: {what}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise Hang(f"{what}: no return within {timeout:.0f} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


# --- the killer -------------------------------------------------------------------------


@dataclass
class KillRecord:
    """One SIGKILL: when (s since the run started), which actor and pid, what kind."""

    t: float
    actor: int
    pid: int
    kind: str
    action: int  # index of the action in the plan
    phase: int  # phase running (or just finished, in a gap) at the kill
    note: str = ""


def kill_plan(kills: int, rng: np.random.Generator, kinds: Sequence[str] = KINDS) -> list[str]:
    """Kill actions in cycles of every kind of ``kinds`` (shuffled), >= ``kills`` SIGKILLs.

    Every kind appears at least once (when ``kills`` > 0).
    """
    unknown = set(kinds) - set(KINDS)
    if unknown or not kinds:
        raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {list(kinds)}")
    plan: list[str] = []
    signals = 0
    while signals < kills:
        for kind in rng.permutation(list(kinds)).tolist():
            if signals >= kills and set(plan) >= set(kinds):
                break
            plan.append(kind)
            signals += SIGNALS[kind]
    return plan


class Killer:
    """SIGKILLs a pool's actors by plan: a thread for in-flight kills, the driver for idle ones.

    Args:
        pool: the started pool.
        plan: kinds of action, in order (see :func:`kill_plan`).
        due: for each action, the progress (0..1 of the run's window) from which it is due.
        progress: the run's progress now (0..1 and beyond).
        busy: set by the driver while a phase runs.
        phase: the driver's current phase index (a one-element list).
        seed: seeds the killer's random choices (actor, delays).
        jitter_s: random delay (0..``jitter_s``) after an action falls due.
        timeout_s: how long to wait for a pid or a busy actor before giving up on an action.
        log: called with a line per kill.
    """

    def __init__(
        self,
        pool: ShardPool,
        plan: list[str],
        due: list[float],
        progress: Callable[[], float],
        busy: threading.Event,
        phase: list[int],
        seed: int,
        jitter_s: float = 0.3,
        timeout_s: float = 120.0,
        log: Callable[[str], None] = lambda line: None,
    ) -> None:
        self.pool = pool
        self.plan = plan
        self.due = due
        self.progress = progress
        self.busy = busy
        self.phase = phase
        self.jitter_s = jitter_s
        self.timeout_s = timeout_s
        self.log = log
        self.records: list[KillRecord] = []
        self.failures: list[str] = []  # actions that could not be carried out
        self.done_actions: set[int] = set()
        self.last_kill_phase = -1
        self.stop = threading.Event()
        self._t0 = time.monotonic()
        self._lock = threading.Lock()
        self._rng = np.random.default_rng([seed, 3])  # the killer thread's
        self._idle_rng = np.random.default_rng([seed, 4])  # the driver's (idle kills)
        self._num_actors = pool.num_actors
        self._thread = threading.Thread(target=self._run, name="soak-killer", daemon=True)

    # -- lifecycle --

    def start(self) -> Killer:
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def join(self, timeout: float) -> None:
        self.stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.failures.append(f"the killer thread did not stop within {timeout:.0f} s")

    def finished(self) -> bool:
        """Every action was carried out or given up."""
        with self._lock:
            return len(self.done_actions) == len(self.plan)

    def idle_due(self) -> int | None:
        """The first idle action that is due and not yet done, if any."""
        with self._lock:
            for i, kind in enumerate(self.plan):
                if kind == "idle" and i not in self.done_actions and self.progress() >= self.due[i]:
                    return i
        return None

    # -- helpers --

    def _stats(self) -> Any:
        return self.pool.stats(timeout=1.0)

    def _kill(self, actor: int, pid: int, kind: str, action: int, note: str = "") -> bool:
        if pid <= 1 or pid == os.getpid():
            raise RuntimeError(f"refusing to kill pid {pid}")
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return False  # gone already (a restart in progress): the caller re-reads
        rec = KillRecord(
            round(time.monotonic() - self._t0, 3), actor, pid, kind, action, self.phase[0], note
        )
        with self._lock:
            self.records.append(rec)
            self.last_kill_phase = self.phase[0]
        self.log(
            f"  kill t={rec.t:8.3f}s phase {rec.phase:>4} actor {actor} pid {pid:>7} "
            f"{kind}{' (' + note + ')' if note else ''}"
        )
        return True

    def _finish(self, action: int, failure: str | None = None) -> None:
        with self._lock:
            self.done_actions.add(action)
            if failure:
                self.failures.append(f"action {action} ({self.plan[action]}): {failure}")

    def _wait(self, seconds: float) -> bool:
        """Sleep (pacing only); False when asked to stop."""
        return not self.stop.wait(seconds)

    # -- the thread: busy, both, recovery --

    def _run(self) -> None:
        for i, kind in enumerate(self.plan):
            if kind == "idle":
                continue
            while self.progress() < self.due[i]:
                if not self._wait(0.02):
                    return
            if not self._wait(float(self._rng.uniform(0, self.jitter_s))):
                return
            try:
                failure = getattr(self, f"_do_{kind}")(i)
            except Exception as exc:  # the pool closed, stats failed, ...
                failure = f"{type(exc).__name__}: {exc}"
            self._finish(i, failure)

    def _busy_target(self, prefer: int | None) -> tuple[int, int] | None:
        """(actor, pid) of an actor with items in flight while a phase runs, or None."""
        if not self.busy.is_set():
            return None
        st = self._stats()
        busy = [(a.actor, a.pid) for a in st.actors if a.pid is not None and a.outstanding > 0]
        if not busy:
            return None
        for actor, pid in busy:
            if actor == prefer:
                return actor, pid
        return busy[int(self._rng.integers(len(busy)))]

    def _kill_busy(self, action: int, kind: str, note: str = "") -> tuple[int, int] | None:
        prefer = int(self._rng.integers(self._num_actors))
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            target = self._busy_target(prefer)
            if target is not None and self._kill(*target, kind, action, note):
                return target
            if not self._wait(0.01):
                return None
        return None

    def _do_busy(self, action: int) -> str | None:
        if self._kill_busy(action, "busy") is None:
            return STOPPED if self.stop.is_set() else "no busy actor to kill"
        return None

    def _do_both(self, action: int) -> str | None:
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self.busy.is_set():
                st = self._stats()
                pids = [(a.actor, a.pid) for a in st.actors if a.pid is not None]
                if len(pids) == len(st.actors) and any(a.outstanding > 0 for a in st.actors):
                    order = self._rng.permutation(len(pids)).tolist()
                    for n, k in enumerate(order):
                        if n:
                            time.sleep(float(self._rng.uniform(0.0, 0.05)))  # pacing only
                        actor, pid = pids[k]
                        self._kill(actor, pid, "both", action, f"{n + 1} of {len(pids)}")
                    return None
            if not self._wait(0.01):
                return STOPPED
        return "both actors never busy with known pids"

    def _do_recovery(self, action: int) -> str | None:
        """Kill a busy actor, then its restarted process while the pool recovers it.

        The second kill comes as soon as the new pid shows and the pool has counted the
        death (it is restoring the actor's shards), or 1 s after the new pid showed if the
        pool has not noticed by then; plus a random 0-0.1 s.
        """
        before = self._stats()
        target = self._kill_busy(action, "busy", "first kill of a recovery pair")
        if target is None:
            return STOPPED if self.stop.is_set() else "no busy actor to kill"
        actor, old_pid = target
        restarts_before = before.actors[actor].restarts
        killed_at = time.monotonic()
        deadline = killed_at + self.timeout_s
        seen_at: float | None = None
        while time.monotonic() < deadline:
            st = self._stats().actors[actor]
            now = time.monotonic()
            if st.pid is not None and st.pid != old_pid:
                seen_at = seen_at or now
                noticed = st.restarts > restarts_before
                if noticed or now - seen_at >= 1.0:
                    if not self._wait(float(self._rng.uniform(0.0, 0.1))):
                        return STOPPED
                    note = (
                        f"new pid seen {seen_at - killed_at:.2f} s after the first kill, "
                        f"killed {time.monotonic() - seen_at:.2f} s after that; pool "
                        f"{'recovering' if noticed else 'had not noticed the death yet'}"
                    )
                    if self._kill(actor, st.pid, "recovery", action, note):
                        return None
                    return "the restarted process was gone before the second kill"
            if not self._wait(0.02):
                return STOPPED
        return f"actor {actor} never came back after pid {old_pid} was killed"

    # -- the driver, in a gap: idle --

    def kill_idle(self, action: int) -> None:
        """Kill one actor of the drained pool (called by the driver between phases)."""
        try:
            failure = guarded(partial(self._do_idle, action), self.timeout_s + 30, "idle kill")
        except Exception as exc:  # Hang included
            failure = f"{type(exc).__name__}: {exc}"
        self._finish(action, failure)

    def _do_idle(self, action: int) -> str | None:
        """Kill one actor of the drained pool.

        Idle actions alternate (the first, third, ... and the second, fourth, ...): the
        driver waits until the restarted process shows its pid, so the actor comes back
        while the pool is idle and the next call finds it up; or the next phase starts at
        once, so new work meets the restart.
        """
        ordinal = sum(kind == "idle" for kind in self.plan[:action])
        wait_restart = ordinal % 2 == 0
        deadline = time.monotonic() + self.timeout_s
        settle = time.monotonic() + 2.0  # a snapshot barrier may still be in flight
        while time.monotonic() < deadline and not self.stop.is_set():
            st = self._stats()
            if all(a.pid is not None for a in st.actors):
                drained = all(a.outstanding == 0 and a.in_flight_calls == 0 for a in st.actors)
                if drained or time.monotonic() > settle:
                    note = "drained" if drained else "calls still in flight (a snapshot barrier?)"
                    note += (
                        "; the next phase waits for the new process"
                        if wait_restart
                        else "; the next phase starts during the restart"
                    )
                    actor = int(self._idle_rng.integers(self._num_actors))
                    pid = st.actors[actor].pid
                    if pid is not None and self._kill(actor, pid, "idle", action, note):
                        return self._await_restart(actor, pid, deadline) if wait_restart else None
            time.sleep(0.02)  # pacing only
        return STOPPED if self.stop.is_set() else "no idle actor with a known pid"

    def _await_restart(self, actor: int, old_pid: int, deadline: float) -> str | None:
        """Wait until ``actor`` answers from a new process (None), or give up (a failure)."""
        while time.monotonic() < deadline and not self.stop.is_set():
            pid = self._stats().actors[actor].pid
            if pid is not None and pid != old_pid:
                return None
            time.sleep(0.02)  # pacing only
        return STOPPED if self.stop.is_set() else f"actor {actor} never came back"


# --- one pass over the workload ---------------------------------------------------------


@dataclass
class SoakConfig:
    """Workload, pool and kill settings (see the module docstring)."""

    items: int = 2_000_000
    kills: int = 24
    seconds: float = 150.0
    seed: int = 0
    num_keys: int = 5_000
    phase_items: int = 50_000
    num_actors: int = 2
    max_batch_size: int = 256
    checkpoint_every: int = 8
    max_retries: int = 100  # PoolConfig allows at most 100 recovered deaths per actor
    batch_sleep_s: float = 0.002
    gap_s: tuple[float, float] = (0.2, 0.8)
    kill_jitter_s: float = 0.3
    hang_timeout_s: float = 300.0
    baseline: bool = True
    kinds: tuple[str, ...] = KINDS  # kinds of kill action to plan


@dataclass
class PassResult:
    """What one pass over the workload produced."""

    kills_enabled: bool
    phases: int = 0
    items: int = 0
    wall_s: float = 0.0
    busy_s: float = 0.0  # phase time, gaps excluded
    outputs: OutputCheck = field(default_factory=OutputCheck)
    state: dict[str, int] | None = None  # check_state(); None when it could not be read
    hung: str | None = None
    problems: list[str] = field(default_factory=list)  # incomplete plan, killer errors, ...
    kills: list[KillRecord] = field(default_factory=list)
    plan: list[str] = field(default_factory=list)
    restarts: list[int] | None = None
    flagged_phases: list[dict[str, int]] = field(default_factory=list)  # see OutputCheck

    @property
    def throughput(self) -> float:
        return self.items / self.busy_s if self.busy_s > 0 else 0.0

    @property
    def kills_by_kind(self) -> dict[str, int]:
        counts = Counter(k.kind for k in self.kills)
        return {kind: counts.get(kind, 0) for kind in KINDS}

    @property
    def lost(self) -> int | None:
        return None if self.state is None else self.state["lost"]

    @property
    def doubled(self) -> int | None:
        return None if self.state is None else self.state["doubled"]

    @property
    def reordered(self) -> int | None:
        return None if self.state is None else self.state["reordered"]

    @property
    def ok(self) -> bool:
        s = self.state
        return (
            self.hung is None
            and not self.problems
            and s is not None
            and not (s["lost"] or s["doubled"] or s["reordered"] or s["unexpected"])
            and not s["split_keys"]
            and self.outputs.clean
            and self.outputs.errors == 0
        )


def _run_phase(
    pool: ShardPool, items: list[Any], keys: list[int], ordered: bool, got: list[Any]
) -> None:
    if ordered:
        got.extend(pool.map(items, keys=keys, return_exceptions=True))
    else:
        for out in pool.map_unordered(items, keys=keys, return_exceptions=True):
            got.append(out)


def run_pass(
    cfg: SoakConfig,
    kills: bool,
    num_phases: int | None = None,
    log: Callable[[str], None] = lambda line: None,
) -> PassResult:
    """One pass over the workload on a fresh pool, with or without the killer.

    Args:
        cfg: the settings.
        kills: run the killer.
        num_phases: run exactly this many phases (a replay); ``None``: run until the
            workload, the kill plan and the time window are all done (see module docstring).
        log: called with progress lines.
    """
    res = PassResult(kills_enabled=kills)
    workload = Workload(cfg.num_keys, cfg.phase_items, cfg.seed)
    planned = max(1, math.ceil(cfg.items / cfg.phase_items))
    timeout = cfg.hang_timeout_s
    pool = ShardPool(
        soak_handler(cfg.batch_sleep_s),
        num_actors=cfg.num_actors,
        max_retries=cfg.max_retries,
        checkpoint_every=cfg.checkpoint_every,
        max_batch_size=cfg.max_batch_size,
    )
    busy = threading.Event()
    phase = [0]
    killer: Killer | None = None
    try:
        guarded(pool.start, timeout, "pool start")
        t0 = time.monotonic()

        def progress() -> float:
            if cfg.seconds > 0:
                return (time.monotonic() - t0) / cfg.seconds
            return phase[0] / planned

        if kills:
            rng = np.random.default_rng([cfg.seed, 5])
            res.plan = kill_plan(cfg.kills, rng, cfg.kinds)
            n = len(res.plan)
            due = [PLAN_WINDOW * (i + float(rng.uniform(0.15, 0.85))) / n for i in range(n)]
            killer = Killer(
                pool,
                res.plan,
                due,
                progress,
                busy,
                phase,
                cfg.seed,
                jitter_s=cfg.kill_jitter_s,
                timeout_s=timeout,
                log=log,
            ).start()
        max_phases = 4 * planned + 1000  # a plan that can never finish must not loop forever
        while True:
            k = res.phases
            if num_phases is not None:
                if k >= num_phases:
                    break
            else:
                enough_items = k >= planned
                enough_time = cfg.seconds <= 0 or time.monotonic() - t0 >= cfg.seconds
                plan_done = killer is None or (
                    killer.finished() and k >= killer.last_kill_phase + 2
                )
                if enough_items and enough_time and plan_done:
                    break
                if k >= max_phases:
                    res.problems.append(f"the kill plan was not finished after {k} phases")
                    break
            items, keys, codes = workload.phase()
            ordered = k % 2 == 0
            got: list[Any] = []
            phase[0] = k
            busy.set()
            start = time.perf_counter()
            try:
                guarded(
                    partial(_run_phase, pool, items, keys, ordered, got),
                    timeout,
                    f"phase {k} ({'map' if ordered else 'map_unordered'}, {len(items)} items)",
                )
            except Hang as hang:
                res.hung = str(hang)
                res.outputs.add(check_outputs(codes, list(got), ordered=False))
                res.items += len(items)
                res.phases += 1
                log(f"HANG: {hang}; outputs received in that phase: {len(got)}")
                break
            finally:
                busy.clear()
                res.busy_s += time.perf_counter() - start
            check = check_outputs(codes, got, ordered)
            res.outputs.add(check)
            if check.flagged_reordered or check.flagged_repeated:
                flagged = {
                    "phase": k,
                    "reordered": check.flagged_reordered,
                    "repeated": check.flagged_repeated,
                }
                res.flagged_phases.append(flagged)
                log(f"  flagged outputs: {flagged}")
            res.items += len(items)
            res.phases += 1
            if res.phases % 10 == 0:
                log(
                    f"  {'kill' if kills else 'base'} pass: {res.phases} phases, "
                    f"{res.items:,} items, {time.monotonic() - t0:.1f} s"
                )
            gap_end = time.monotonic() + workload.gap(*cfg.gap_s)
            idle = killer.idle_due() if killer is not None else None
            if killer is not None and idle is not None:
                killer.kill_idle(idle)
            time.sleep(max(0.0, gap_end - time.monotonic()))  # the pool drains: pacing only
        res.wall_s = time.monotonic() - t0
    except Hang as hang:
        res.hung = str(hang)
    finally:
        busy.clear()
        if killer is not None:
            killer.join(30.0)
            res.kills = list(killer.records)
            res.problems.extend(killer.failures)
            if not killer.finished() and res.hung is None and not res.problems:
                res.problems.append("the kill plan was not finished")
    if res.hung is None:
        try:
            parts = guarded(pool.results, timeout, "pool.results()")
            res.state = check_state(parts, workload.next_seq)
        except Hang as hang:
            res.hung = str(hang)
        except Exception as exc:
            res.problems.append(f"pool.results() failed: {type(exc).__name__}: {exc}")
    try:
        stats = guarded(partial(pool.stats, timeout=5.0), 30.0, "pool.stats()")
        res.restarts = [a.restarts for a in stats.actors]
    except Exception as exc:
        res.problems.append(f"pool.stats() failed: {type(exc).__name__}: {exc}")
    try:
        # After a hang, fail what is left instead of waiting for it.
        guarded(partial(pool.close, wait=res.hung is None), 30.0, "pool.close()")
    except Exception as exc:
        res.problems.append(f"pool.close() failed: {type(exc).__name__}: {exc}")
    return res


# --- the whole soak ---------------------------------------------------------------------


@dataclass
class SoakReport:
    """The pass with kills, and (optionally) the replay without kills."""

    config: SoakConfig
    with_kills: PassResult
    without_kills: PassResult | None

    @property
    def ratio(self) -> float | None:
        base = self.without_kills
        if base is None or base.throughput == 0 or self.with_kills.hung:
            return None
        return self.with_kills.throughput / base.throughput

    @property
    def ok(self) -> bool:
        return self.with_kills.ok and (self.without_kills is None or self.without_kills.ok)

    def failures(self) -> list[str]:
        out: list[str] = []
        for name, p in (("with kills", self.with_kills), ("without kills", self.without_kills)):
            if p is None:
                continue
            if p.hung:
                out.append(f"{name}: hung: {p.hung}")
            out.extend(f"{name}: {problem}" for problem in p.problems)
            s = p.state
            if s is None and not p.hung:
                out.append(f"{name}: the shards' state could not be read")
            if s is not None:
                for key in ("lost", "doubled", "reordered", "unexpected", "split_keys"):
                    if s[key]:
                        out.append(f"{name}: {key} = {s[key]}")
            o = p.outputs
            for key in (
                "missing",
                "duplicated",
                "unexpected",
                "misplaced",
                "errors",
                "flagged_reordered",
                "flagged_repeated",
            ):
                if getattr(o, key):
                    out.append(f"{name}: outputs {key} = {getattr(o, key)}")
        return out

    def summary(self) -> dict[str, Any]:
        """Every number, for the JSON line."""

        def pass_dict(p: PassResult | None) -> dict[str, Any] | None:
            if p is None:
                return None
            return {
                "phases": p.phases,
                "items": p.items,
                "wall_s": round(p.wall_s, 3),
                "busy_s": round(p.busy_s, 3),
                "items_per_s": round(p.throughput, 1),
                "lost": p.lost,
                "doubled": p.doubled,
                "reordered": p.reordered,
                "errors": p.outputs.errors,
                "state": p.state,
                "outputs": asdict(p.outputs),
                "hung": p.hung,
                "problems": p.problems,
                "restarts": p.restarts,
                "flagged_phases": p.flagged_phases,
                "ok": p.ok,
            }

        k = self.with_kills
        return {
            "config": {
                **asdict(self.config),
                "gap_s": list(self.config.gap_s),
                "kinds": list(self.config.kinds),
            },
            "items": k.items,
            "kills": len(k.kills),
            "kills_by_kind": k.kills_by_kind,
            "planned_actions": k.plan,
            "lost": k.lost,
            "doubled": k.doubled,
            "reordered": k.reordered,
            "errors": k.outputs.errors,
            "outputs": asdict(k.outputs),
            "hung": k.hung,
            "throughput_with_kills": round(k.throughput, 1),
            "throughput_without_kills": (
                round(self.without_kills.throughput, 1) if self.without_kills else None
            ),
            "throughput_ratio": None if self.ratio is None else round(self.ratio, 4),
            "with_kills": pass_dict(k),
            "without_kills": pass_dict(self.without_kills),
            "kill_log": [asdict(r) for r in k.kills],
            "failures": self.failures(),
            "ok": self.ok,
        }


def run_soak(cfg: SoakConfig, log: Callable[[str], None] = lambda line: None) -> SoakReport:
    """The pass with kills, then (``cfg.baseline``) the same phases without kills."""
    with_kills = run_pass(cfg, kills=cfg.kills > 0, log=log)
    without = None
    if cfg.baseline and with_kills.phases > 0:
        log(f"replaying the same {with_kills.phases} phases without kills")
        without = run_pass(cfg, kills=False, num_phases=with_kills.phases, log=log)
    return SoakReport(cfg, with_kills, without)


def _fmt(n: int | None) -> str:
    return "n/a" if n is None else f"{n:,}"


def print_report(report: SoakReport) -> None:
    cfg = report.config
    k, b = report.with_kills, report.without_kills
    print(
        f"soak: {cfg.num_actors} actors, {cfg.num_keys:,} keys, phases of {cfg.phase_items:,} "
        f"items (map / map_unordered alternating), batches <= {cfg.max_batch_size}, "
        f"checkpoint_every {cfg.checkpoint_every}, max_retries {cfg.max_retries}, "
        f"{cfg.batch_sleep_s * 1e3:.1f} ms sleep per batch, seed {cfg.seed}"
    )
    by_kind = ", ".join(f"{kind} {n}" for kind, n in k.kills_by_kind.items())
    print(f"items:      {k.items:,} in {k.phases} phases, {k.wall_s:.1f} s")
    print(f"kills:      {len(k.kills)} ({by_kind}); pool restarts per actor: {k.restarts}")
    state_note = "" if k.state is not None else "  (shard state unreadable: the pool hung)"
    print(
        f"lost:       {_fmt(k.lost)}   doubled: {_fmt(k.doubled)}   "
        f"reordered: {_fmt(k.reordered)}   errors: {k.outputs.errors:,}{state_note}"
    )
    o = k.outputs
    print(
        f"outputs:    missing {o.missing:,}, duplicated {o.duplicated:,}, "
        f"unexpected {o.unexpected:,}, misplaced {o.misplaced:,}; flagged by the shard: "
        f"reordered {o.flagged_reordered:,}, repeated {o.flagged_repeated:,}"
    )
    if k.flagged_phases:
        print(f"flagged in: {k.flagged_phases}")
    if k.hung:
        print(f"HUNG:       {k.hung}")
    base = f"{b.throughput:,.0f} items/s" if b is not None else "not run"
    ratio = "n/a" if report.ratio is None else f"{report.ratio:.2f}x"
    print(
        f"throughput: with kills {k.throughput:,.0f} items/s, without kills {base} "
        f"(phase time, gaps excluded): ratio {ratio}"
    )
    if b is not None and not b.ok:
        print(f"baseline:   NOT clean: {b.state} {asdict(b.outputs)} hung={b.hung}")
    failures = report.failures()
    print("RESULT:     " + ("OK" if report.ok else "FAIL: " + "; ".join(failures)))
    print(json.dumps(report.summary()), flush=True)


def main(argv: list[str] | None = None) -> int:
    defaults = SoakConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=defaults.items, help="minimum items streamed")
    p.add_argument("--kills", type=int, default=defaults.kills, help="minimum SIGKILLs")
    p.add_argument(
        "--seconds", type=float, default=defaults.seconds, help="window the kills spread over"
    )
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--num-keys", type=int, default=defaults.num_keys)
    p.add_argument("--phase-items", type=int, default=defaults.phase_items)
    p.add_argument("--max-batch-size", type=int, default=defaults.max_batch_size)
    p.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every)
    p.add_argument("--batch-sleep", type=float, default=defaults.batch_sleep_s)
    p.add_argument("--hang-timeout", type=float, default=defaults.hang_timeout_s)
    p.add_argument("--no-baseline", action="store_true", help="skip the run without kills")
    p.add_argument(
        "--kinds",
        default=",".join(KINDS),
        help="kinds of kill action to plan, comma-separated (default: all of them)",
    )
    args = p.parse_args(argv)
    cfg = SoakConfig(
        items=args.items,
        kills=args.kills,
        seconds=args.seconds,
        seed=args.seed,
        num_keys=args.num_keys,
        phase_items=args.phase_items,
        max_batch_size=args.max_batch_size,
        checkpoint_every=args.checkpoint_every,
        batch_sleep_s=args.batch_sleep,
        hang_timeout_s=args.hang_timeout,
        baseline=not args.no_baseline,
        kinds=tuple(k.strip() for k in args.kinds.split(",") if k.strip()),
    )
    report = run_soak(cfg, log=lambda line: print(line, file=sys.stderr, flush=True))
    print_report(report)
    return 0 if report.ok else 1


if __name__ == "__main__":
    code = main()
    try:
        guarded(shardyard.disconnect, 60.0, "shardyard.disconnect()")
    except Exception as exc:
        print(f"shardyard.disconnect() failed: {exc}", file=sys.stderr)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    # A hung pool leaves daemon threads behind: exit without waiting on them.
    os._exit(code)
