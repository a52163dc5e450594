"""Short soak: a keyed stateful stream survives SIGKILLs of busy, idle, both and recovering actors.

The workload, handler, killer and checks live in ``benchmarks/soak.py`` (the full soak);
this runs its short version: 200k ``(key, seq)`` items over 5,000 keys in 10 phases of
alternating ``map`` / ``map_unordered`` calls, with one kill action of each kind spread over
the stream (6 SIGKILLs). Every wait on the pool is guarded, so a hang fails the test with
the counts so far instead of stalling it.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
from ray import cloudpickle

pytestmark = pytest.mark.usefixtures("ray_local")

_SOAK_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "soak.py"
_SOAK_NAME = "shardyard_benchmarks_soak"


def _load_soak() -> ModuleType:
    """Import ``benchmarks/soak.py`` (not a package); Ray workers get its classes by value."""
    module = sys.modules.get(_SOAK_NAME)
    if module is None:
        spec = importlib.util.spec_from_file_location(_SOAK_NAME, _SOAK_PATH)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[_SOAK_NAME] = module  # dataclasses and cloudpickle look it up here
        spec.loader.exec_module(module)
    if _SOAK_NAME not in cloudpickle.list_registry_pickle_by_value():
        cloudpickle.register_pickle_by_value(module)
    return module


soak = _load_soak()


def test_checks_detect_lost_doubled_and_reordered_items() -> None:
    # The checks themselves, on a shard fed a bad stream: key 0 gets 0, 2, 1, 2 (seq 2
    # twice, seq 1 late), key 1 gets only seq 0 of its two items.
    shard = soak.soak_handler(0.0)()
    shard.setup(0)
    items = [(0, 0), (0, 2), (0, 1), (0, 2), (1, 0)]
    outputs = shard.process(items)
    state = soak.check_state({0: shard.result()}, soak.np.array([3, 2]))
    assert state["lost"] == 1 and state["doubled"] == 1 and state["reordered"] == 1
    assert state["repeated_events"] == 1 and state["unexpected"] == 0

    expected = soak.np.array([k * soak.CODE_STRIDE + s for k, s in [(0, 0), (0, 1), (0, 2)]])
    unordered = soak.check_outputs(expected, outputs[:4], ordered=False)
    assert (unordered.missing, unordered.duplicated, unordered.unexpected) == (0, 1, 0)
    assert (unordered.flagged_reordered, unordered.flagged_repeated) == (1, 1)
    ordered = soak.check_outputs(expected, [outputs[0], outputs[1], ValueError()], ordered=True)
    assert (ordered.missing, ordered.misplaced, ordered.errors) == (1, 1, 1)


def test_soak_keyed_state_survives_random_kills() -> None:
    cfg = soak.SoakConfig(
        items=200_000,
        kills=4,  # one action of each kind: busy, idle, both, recovery (6 SIGKILLs)
        seconds=0.0,  # spread the kills over the stream's phases, not over time
        seed=1,
        phase_items=20_000,
        max_batch_size=256,
        checkpoint_every=8,
        batch_sleep_s=0.002,
        gap_s=(0.1, 0.4),
        hang_timeout_s=60.0,  # a guard against a hang only; a healthy phase takes < 2 s
        baseline=False,
    )
    report = soak.run_soak(cfg, log=print)
    run = report.with_kills
    detail = "; ".join(report.failures()) + "\n" + json.dumps(report.summary())

    assert run.hung is None, detail
    assert run.problems == [], detail
    assert run.state is not None, detail
    assert (run.lost, run.doubled, run.reordered) == (0, 0, 0), detail
    assert run.state["unexpected"] == 0 and run.state["split_keys"] == 0, detail
    # Every item's output arrived exactly once (in place, for map), and none failed.
    assert run.outputs == soak.OutputCheck(), detail
    assert run.items >= cfg.items
    kinds = run.kills_by_kind
    assert all(kinds[kind] >= 1 for kind in soak.KINDS), detail
    assert len(run.kills) >= 4, detail
    assert report.ok, detail
