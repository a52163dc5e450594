"""What a shard actor process imports: the actor side only, never the driver's layers.

Ray loads ``ShardActor`` in each actor process by reference (module
``shardyard.actors.shard_actor``), so whatever that import pulls in costs memory in every
actor. The driver's layers (the scheduler, the pydantic config models, the sharding
strategies with xxhash) must stay out, and numpy too unless a batch is an array. pydantic
itself is not checked in an actor: Ray's serialisation context loads it in any actor that
receives arguments (``ray.util.serialization_addons``).
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np

import shardyard
from shardyard import ShardPool

DRIVER_ONLY = ("xxhash", "shardyard.config", "shardyard.scheduler", "shardyard.sharding")


def _loaded(names: tuple[str, ...], modules: Any) -> list[str]:
    return sorted(m for m in modules if m in names or m.startswith(tuple(n + "." for n in names)))


def _modules_here(x: Any) -> list[str]:
    import sys

    return sorted(sys.modules)


def _array_modules_here(batch: Any) -> list[Any]:
    import sys

    return [(type(batch).__name__, "numpy" in sys.modules)] * len(batch)


def test_importing_the_shard_actor_loads_no_driver_layer() -> None:
    # A fresh interpreter: this one has imported everything already.
    code = "import sys; import shardyard.actors.shard_actor; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    modules = out.stdout.split()
    assert "shardyard.actors.shard_actor" in modules
    assert _loaded((*DRIVER_ONLY, "numpy", "pydantic"), modules) == []


def test_importing_shardyard_loads_nothing_until_a_name_is_used() -> None:
    code = (
        "import sys, shardyard; before = 'shardyard.scheduler' in sys.modules; "
        "shardyard.ShardPool; print(before, 'shardyard.scheduler' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]


def test_every_public_name_resolves_and_is_listed() -> None:
    for name in shardyard.__all__:
        assert getattr(shardyard, name) is not None
    assert set(shardyard.__all__) <= set(dir(shardyard))


def test_a_running_actor_holds_no_driver_layer_and_no_numpy(ray_local: Any) -> None:
    with ShardPool(_modules_here, num_actors=1) as pool:
        modules = pool.map([1, 2, 3])[0]
    assert "shardyard.actors.shard_actor" in modules
    assert _loaded((*DRIVER_ONLY, "numpy"), modules) == []


def test_an_actor_loads_numpy_when_a_batch_is_an_array(ray_local: Any) -> None:
    with ShardPool(_array_modules_here, num_actors=1, batched=True) as pool:
        out = pool.map(np.arange(3))
    assert [tuple(o) for o in out] == [("ndarray", True)] * 3


def _frozen_here(x: Any) -> int:
    import gc

    return gc.get_freeze_count()


def test_start_up_objects_are_frozen_out_of_full_collections(ray_local: Any) -> None:
    # The driver after connect() and each actor after it starts: what lives as long as the
    # process is moved out of the collector's full collections (shardyard.cluster.heap).
    import gc

    assert gc.get_freeze_count() > 0
    with ShardPool(_frozen_here, num_actors=1) as pool:
        assert pool.map([0])[0] > 1000


def test_freeze_gc_false_leaves_the_collector_alone() -> None:
    code = (
        "import gc, shardyard;"
        "shardyard.connect(config=shardyard.ClusterConfig(num_cpus=1, freeze_gc=False));"
        "print(gc.get_freeze_count());"
        "shardyard.disconnect()"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "0"
