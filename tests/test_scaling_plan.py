"""The pure parts of scaling: plans with the fewest moves, refusals, the autoscale rule."""

from __future__ import annotations

import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardyard import AutoscaleConfig, ConfigError, PoolConfig
from shardyard.scheduler.autoscale import ScaleDecider
from shardyard.scheduler.scaling import check_scale, plan_scale
from shardyard.sharding import moved_shards, place


@given(
    num_shards=st.integers(1, 64),
    start=st.integers(1, 8),
    target=st.integers(1, 16),
)
def test_a_plan_moves_the_fewest_shards_and_balances(
    num_shards: int, start: int, target: int
) -> None:
    start, target = min(start, num_shards), min(target, num_shards)
    old = place(num_shards, list(range(start)))
    plan = plan_scale(old, list(range(start)), target, next_index=start)
    new = plan.placement
    assert plan.moves == {s: new[s] for s in moved_shards(old, new)}
    counts = [sum(1 for a in new.values() if a == x) for x in set(new.values())]
    assert len(counts) == target and max(counts) - min(counts) <= 1
    # No balanced placement over the remaining actors keeps more shards in place.
    keep = [a for a in range(start) if a not in plan.retire]
    q, r = divmod(num_shards, target)
    held = sorted((sum(1 for a in old.values() if a == k) for k in keep), reverse=True)
    best_kept = sum(min(h, q + (i < r)) for i, h in enumerate(held))
    assert len(plan.moves) == num_shards - best_kept
    assert len(plan.new_actors) == max(0, target - start)
    assert len(plan.retire) == max(0, start - target)
    assert not set(plan.retire) & set(new.values())


def test_scale_in_retires_given_up_actors_first_then_the_newest() -> None:
    old = place(6, [0, 1, 2])
    assert plan_scale(old, [0, 1, 2], 2, 3).retire == [2]
    assert plan_scale(old, [0, 1, 2], 2, 3, failed=[0]).retire == [0]


def test_scale_refusals_say_why_and_what_to_do() -> None:
    with pytest.raises(ConfigError, match="at least 1 actor"):
        check_scale(0, 8)
    with pytest.raises(ConfigError, match=r"at most 8 actors.*num_shards >= 9"):
        check_scale(9, 8)
    with pytest.raises(ConfigError, match="takes an int"):
        check_scale(2.5, 8)
    assert check_scale(8, 8) == 8


def test_the_autoscale_rule_waits_its_delays() -> None:
    cfg = AutoscaleConfig(
        min_actors=2,
        max_actors=6,
        target_backlog_per_actor=10,
        upscale_delay_s=1.0,
        downscale_delay_s=3.0,
    )
    d = ScaleDecider(cfg, num_shards=4)  # num_shards caps max_actors
    assert d.wanted(1000) == 4 and d.wanted(0) == 2 and d.wanted(25) == 3
    assert d.decide(1000, current=2, now=0.0) is None
    assert d.decide(1000, current=2, now=0.5) is None
    assert d.decide(5, current=2, now=0.8) is None  # the wish ended: the delay starts over
    assert d.decide(1000, current=2, now=1.0) is None
    assert d.decide(1000, current=2, now=2.1) == 4
    assert d.decide(0, current=4, now=3.0) is None
    assert d.decide(0, current=4, now=6.1) == 2


def test_autoscale_config_errors_name_the_field() -> None:
    with pytest.raises(pydantic.ValidationError, match="min_actors"):
        AutoscaleConfig(min_actors=0)
    with pytest.raises(pydantic.ValidationError, match="max_actors"):
        AutoscaleConfig(min_actors=3, max_actors=2)
    with pytest.raises(pydantic.ValidationError, match="target_backlog_per_actor"):
        AutoscaleConfig(target_backlog_per_actor=0)
    with pytest.raises(pydantic.ValidationError, match=r"autoscale\.max_actors"):
        PoolConfig(num_shards=2, autoscale=AutoscaleConfig(max_actors=4))
    with pytest.raises(pydantic.ValidationError, match="num_actors"):
        PoolConfig(num_actors=9, autoscale={"min_actors": 1, "max_actors": 4})
