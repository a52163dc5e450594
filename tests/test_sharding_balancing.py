"""Tests of shardyard.sharding.balancing: keyless target choice from live loads."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardyard.errors import UnknownStrategyError
from shardyard.sharding import (
    Balancer,
    LeastLoaded,
    PowerOfTwoChoices,
    RoundRobin,
    available_balancers,
    balancer,
)


def _greedy(loads: list[float], count: int) -> list[int]:
    lv, out = list(loads), []
    for _ in range(count):
        i = min(range(len(lv)), key=lambda j: (lv[j], j))
        out.append(i)
        lv[i] += 1
    return out


def test_registry_names_and_unknown_name() -> None:
    assert available_balancers() == ["least_loaded", "power_of_two", "round_robin"]
    for name in available_balancers():
        assert isinstance(balancer(name), Balancer)
    with pytest.raises(UnknownStrategyError) as info:
        balancer("random")
    assert info.value.kind == "balancer" and "round_robin" in str(info.value)


def test_round_robin_cycles_across_calls() -> None:
    rr = RoundRobin()
    assert rr.choose(np.zeros(3), 4).tolist() == [0, 1, 2, 0]
    assert rr.choose(np.zeros(3), 2).tolist() == [1, 2]


@settings(max_examples=200, deadline=None)
@given(
    loads=st.lists(st.integers(0, 50), min_size=1, max_size=12),
    count=st.integers(0, 80),
    scale=st.sampled_from([1.0, 0.5, 2.0]),
)
def test_least_loaded_water_filling_equals_the_greedy_loop(
    loads: list[int], count: int, scale: float
) -> None:
    lv = [x * scale for x in loads]
    assert LeastLoaded().choose(np.array(lv), count).tolist() == _greedy(lv, count)


def test_least_loaded_large_batch_evens_out_the_loads() -> None:
    loads = np.random.default_rng(0).integers(0, 1000, 500)
    picks = LeastLoaded().choose(loads, 200_000)
    got = np.bincount(picks, minlength=500)
    final = loads + got
    level = final[got > 0]
    # Water-filling: every target that got work ends at the water level (within one), and
    # every target left alone was already at or above it.
    assert level.max() - level.min() <= 1
    assert (final[got == 0] >= level.min()).all()


def test_power_of_two_is_reproducible_and_prefers_the_lighter_target() -> None:
    loads = np.array([0, 1000, 1000, 1000])
    a = PowerOfTwoChoices(seed=42).choose(loads, 50)
    b = PowerOfTwoChoices(seed=42).choose(loads, 50)
    assert (a == b).all()
    # Every pair containing target 0 picks it: about half of all picks (3/4 * ... = 1/2).
    assert (a == 0).mean() > 0.3
    assert PowerOfTwoChoices(seed=1).choose([5], 3).tolist() == [0, 0, 0]


def test_power_of_two_keeps_loads_close_to_even() -> None:
    picks = PowerOfTwoChoices(seed=3).choose(np.zeros(100), 100_000)
    counts = np.bincount(picks, minlength=100)
    assert counts.max() / counts.mean() < 1.05


@pytest.mark.parametrize("name", ["round_robin", "least_loaded", "power_of_two"])
def test_invalid_inputs(name: str) -> None:
    b = balancer(name)
    with pytest.raises(ValueError, match="target"):
        b.choose(np.array([]), 1)
    with pytest.raises(ValueError, match="count"):
        b.choose(np.zeros(2), -1)
    assert b.choose(np.zeros(2), 0).shape == (0,)


def test_unknown_option_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        balancer("power_of_two", sed=1)


def test_choose_one_agrees_with_choose() -> None:
    from shardyard.sharding.balancing import LeastLoaded, PowerOfTwoChoices, RoundRobin

    rr_a, rr_b = RoundRobin(), RoundRobin()
    assert [rr_a.choose_one([0, 0, 0]) for _ in range(5)] == rr_b.choose([0, 0, 0], 5).tolist()
    assert LeastLoaded().choose_one([3, 1, 1]) == LeastLoaded().choose([3, 1, 1]).tolist()[0]
    p2c = PowerOfTwoChoices(seed=3)
    assert {p2c.choose_one([0, 100]) for _ in range(50)} == {0}
