"""Build sharding strategies by name; register your own.

Built-in names: ``"hash"``, ``"jump"``, ``"ring"``, ``"rendezvous"``, ``"range"``, ``"bounded"``.
Options are validated by the strategy's pydantic options model, so a typo or a bad value raises
``pydantic.ValidationError`` naming the field.

Example:
    >>> from shardyard.sharding import affinity_strategies, available_strategies, strategy
    >>> strategy("ring", 8, vnodes=64).num_shards
    8
    >>> "jump" in available_strategies()
    True
    >>> "bounded" in affinity_strategies()  # a key's shard depends on the rest of its batch
    False
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shardyard.errors import UnknownStrategyError
from shardyard.sharding.base import ShardingStrategy
from shardyard.sharding.bounded import BoundedStrategy
from shardyard.sharding.jump import JumpStrategy
from shardyard.sharding.modulo import HashStrategy
from shardyard.sharding.ranges import RangeStrategy
from shardyard.sharding.rendezvous import RendezvousStrategy
from shardyard.sharding.ring import RingStrategy

__all__ = [
    "StrategyFactory",
    "affinity_strategies",
    "available_strategies",
    "register_strategy",
    "strategy",
    "unregister_strategy",
]

StrategyFactory = Callable[..., ShardingStrategy]
"""A callable ``factory(num_shards, **options) -> ShardingStrategy`` (a strategy class works)."""

# name -> factory(num_shards, **options); the built-ins first, user strategies added later.
_REGISTRY: dict[str, StrategyFactory] = {
    "hash": HashStrategy,
    "jump": JumpStrategy,
    "ring": RingStrategy,
    "rendezvous": RendezvousStrategy,
    "range": RangeStrategy,
    "bounded": BoundedStrategy,
}


def available_strategies() -> list[str]:
    """Return the registered strategy names, sorted.

    Example:
        >>> available_strategies()[:3]
        ['bounded', 'hash', 'jump']
    """
    return sorted(_REGISTRY)


def affinity_strategies() -> list[str]:
    """Return the registered names whose strategy keeps key affinity, sorted.

    A strategy keeps affinity when the same key always maps to the same shard, whatever else is
    in the batch: its factory's ``keeps_affinity`` class attribute is true. ``"bounded"`` does
    not (a key's shard depends on the other keys of its batch). A factory without the attribute
    (a user strategy) counts as keeping affinity.

    Example:
        >>> "ring" in affinity_strategies(), "bounded" in affinity_strategies()
        (True, False)
    """
    return sorted(
        name for name, factory in _REGISTRY.items() if getattr(factory, "keeps_affinity", True)
    )


def register_strategy(name: str, factory: StrategyFactory, *, replace: bool = False) -> None:
    """Register ``factory(num_shards, **options)`` under ``name``.

    Args:
        name: the name :func:`strategy` will accept.
        factory: a callable (usually a class) returning a :class:`ShardingStrategy`. Give it a
            class attribute ``keeps_affinity = False`` when a key's shard depends on the other
            keys of the batch (see :func:`affinity_strategies`).
        replace: allow replacing an existing name (the built-ins included).

    Raises:
        ValueError: the name is taken and ``replace`` is false.

    Example:
        >>> from shardyard.sharding.modulo import HashStrategy
        >>> class Mine(HashStrategy):
        ...     name = "mine"
        >>> register_strategy("mine", Mine)
        >>> type(strategy("mine", 4)).__name__
        'Mine'
        >>> unregister_strategy("mine")
    """
    if not isinstance(name, str) or not name:
        raise ValueError("a strategy name must be a non-empty string")
    if name in _REGISTRY and not replace:
        raise ValueError(f"strategy {name!r} is already registered; pass replace=True")
    _REGISTRY[name] = factory


def unregister_strategy(name: str) -> None:
    """Remove a registered strategy (mostly for tests).

    Raises:
        UnknownStrategyError: no strategy has that name.

    Example:
        >>> register_strategy("tmp", _REGISTRY["hash"])
        >>> unregister_strategy("tmp")
        >>> "tmp" in available_strategies()
        False
    """
    if name not in _REGISTRY:
        raise UnknownStrategyError("strategy", name, list(_REGISTRY))
    del _REGISTRY[name]


def strategy(name: str, num_shards: int, **options: Any) -> ShardingStrategy:
    """Build the strategy registered as ``name`` over ``num_shards`` shards.

    Args:
        name: a registered name (see :func:`available_strategies`).
        num_shards: number of logical shards (an integer >= 1).
        **options: the strategy's options (see :mod:`shardyard.config`).

    Returns:
        The strategy.

    Raises:
        UnknownStrategyError: ``name`` is not registered (a ``ValueError`` listing valid names).
        pydantic.ValidationError: an option is unknown or out of range (names the field).
        ValueError: ``num_shards`` is below 1.

    Example:
        >>> strategy("jump", 4).assign([1, 2, 3]).tolist()
        [3, 0, 1]
        >>> try:
        ...     strategy("nope", 4)
        ... except ValueError as e:
        ...     print(e)
        unknown strategy 'nope'; valid names are: bounded, hash, jump, range, rendezvous, ring
    """
    try:
        factory = _REGISTRY[name]
    except (KeyError, TypeError):
        raise UnknownStrategyError("strategy", str(name), list(_REGISTRY)) from None
    return factory(num_shards, **options)
