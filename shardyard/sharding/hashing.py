"""Stable 64-bit key hashing: one key, one hash, in every process and on every machine.

Python's built-in hash function is salted per process (``PYTHONHASHSEED``), so it can never decide
where a key lives. This module hashes instead:

- integers with the splitmix64 finaliser applied to ``key + 0x9E3779B97F4A7C15`` in wrapping
  ``uint64`` arithmetic (vectorised in numpy). Every integer is first reduced modulo ``2**64``, so
  ``-1`` and ``2**64 - 1`` are the same key, exactly as ``int64 -> uint64`` two's complement does.
- ``bool`` as the integer it equals (``True`` hashes like ``1``), matching Python's own rule that
  ``True == 1`` are one dict key.
- ``str`` as ``xxhash.xxh3_64_intdigest(key.encode("utf-8"))`` and ``bytes`` as the xxh3 of the
  bytes themselves; ``"1"``, ``b"1"`` and ``1`` are three different keys (``"a"`` and ``b"a"`` are
  the same key, because the str is hashed through its UTF-8 bytes).

A list may mix integers, str and bytes; each key is hashed by its own kind. Anything else
(float, None, dict, list, float arrays, ...) raises :class:`~shardyard.errors.UnsupportedKeyError`,
a ``TypeError`` naming the type and the position of the first bad key.

Example:
    >>> from shardyard.sharding.hashing import stable_hash, stable_hash_one
    >>> h = stable_hash([1, 2, "user-7"])
    >>> h.dtype.name, len(h)
    ('uint64', 3)
    >>> int(h[2]) == stable_hash_one("user-7")
    True
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt
import xxhash

from shardyard.errors import UnsupportedKeyError

__all__ = ["mix64", "stable_hash", "stable_hash_one"]

_MASK = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15
_C1 = 0xBF58476D1CE4E5B9
_C2 = 0x94D049BB133111EB
_U_GAMMA = np.uint64(_GAMMA)
_U_C1 = np.uint64(_C1)
_U_C2 = np.uint64(_C2)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)

_xxh = xxhash.xxh3_64_intdigest
_INT_TYPES = (int, np.integer, np.bool_)  # bool is a subclass of int
_STR_BYTES = (str, bytes)


def mix64(values: npt.NDArray[np.uint64], *, copy: bool = True) -> npt.NDArray[np.uint64]:
    """Apply the splitmix64 step (add the golden gamma, then finalise) to a ``uint64`` array.

    The map is a bijection of the 64-bit space, so distinct inputs give distinct outputs.

    Args:
        values: a ``uint64`` array (any shape).
        copy: when ``False`` the array is mixed in place and returned.

    Returns:
        The mixed ``uint64`` array.

    Example:
        >>> import numpy as np
        >>> mix64(np.array([0, 1], dtype=np.uint64)).dtype.name
        'uint64'
    """
    z = values.copy() if copy else values
    # uint64 array arithmetic wraps silently in numpy; the wraparound is the point.
    z += _U_GAMMA
    z ^= z >> _S30
    z *= _U_C1
    z ^= z >> _S27
    z *= _U_C2
    z ^= z >> _S31
    return z


def stable_hash_one(key: Any) -> int:
    """Hash one key in pure Python (the fast path for per-item ``submit``).

    Args:
        key: an integer (``bool`` counts as its integer value), ``str`` or ``bytes``.

    Returns:
        The 64-bit hash as a Python int; always equal to ``int(stable_hash([key])[0])``.

    Raises:
        UnsupportedKeyError: the key is of another type (a ``TypeError``; position 0).

    Example:
        >>> stable_hash_one(42) == int(stable_hash([42])[0])
        True
        >>> stable_hash_one("a") == stable_hash_one(b"a")
        True
    """
    t = type(key)
    if t is int:
        z = (key + _GAMMA) & _MASK
    elif t is str:
        return _xxh(key.encode("utf-8"))
    elif t is bytes:
        return _xxh(key)
    elif isinstance(key, _INT_TYPES):
        z = (int(key) + _GAMMA) & _MASK
    elif isinstance(key, str):
        return _xxh(str.encode(key))  # the base class's UTF-8, as the list path
    elif isinstance(key, bytes):
        return _xxh(key)
    else:
        raise UnsupportedKeyError(t.__name__, 0)
    z = ((z ^ (z >> 30)) * _C1) & _MASK
    z = ((z ^ (z >> 27)) * _C2) & _MASK
    return z ^ (z >> 31)


def _hash_int_array(arr: np.ndarray) -> npt.NDArray[np.uint64]:
    if arr.dtype == np.uint64:
        u = arr.copy()
    elif arr.dtype.kind == "u" or arr.dtype.kind == "b":
        u = arr.astype(np.uint64)
    else:
        # Sign-extend to int64 and reinterpret: the two's complement is the value mod 2**64.
        u = arr.astype(np.int64).view(np.uint64)
    return mix64(u, copy=False)


def _hash_strs(items: list[Any]) -> npt.NDArray[np.uint64]:
    # Both loops in C (map of builtins into fromiter): ~25% less per key than a list
    # comprehension. str.encode is UTF-8, as stable_hash_one's.
    return np.fromiter(map(_xxh, map(str.encode, items)), dtype=np.uint64, count=len(items))


def _hash_bytes(items: list[Any]) -> npt.NDArray[np.uint64]:
    h = _xxh
    return np.array([h(b) for b in items], dtype=np.uint64)


def _int_list_to_uint64(items: list[Any]) -> npt.NDArray[np.uint64]:
    try:
        arr = np.array(items)
    except OverflowError:
        arr = np.array([], dtype=object)
    if arr.dtype.kind in "iub" and arr.shape == (len(items),):
        return _hash_int_array(arr)
    # Integers beyond the int64/uint64 range (or a mix of negative and huge values).
    return mix64(np.array([int(k) & _MASK for k in items], dtype=np.uint64), copy=False)


def _classify(t: type) -> str | None:
    if issubclass(t, _INT_TYPES):
        return "int"
    if issubclass(t, str):
        return "str"
    if issubclass(t, bytes):
        return "bytes"
    return None


def _hash_list(items: list[Any]) -> npt.NDArray[np.uint64]:
    if not items:
        return np.empty(0, dtype=np.uint64)
    if type(items[0]) is str:
        # Text keys, the usual case: no per-key type check first (it cost a fifth of the
        # hashing). A key that is not a str stops str.encode with a TypeError, and the
        # general path below sorts the list out (mixed kinds, or the bad key's position).
        try:
            return _hash_strs(items)
        except (TypeError, UnicodeEncodeError):
            pass  # a lone surrogate: the general path raises as before (a bad key first)
    kinds = {_classify(t) for t in set(map(type, items))}
    if None in kinds:
        for pos, k in enumerate(items):
            if _classify(type(k)) is None:
                raise UnsupportedKeyError(type(k).__name__, pos)
    if kinds == {"int"}:
        return _int_list_to_uint64(items)
    if kinds == {"str"}:
        return _hash_strs(items)
    if kinds == {"bytes"}:
        return _hash_bytes(items)
    one = stable_hash_one  # mixed kinds: rare, so the scalar path per key is fine
    return np.array([one(k) for k in items], dtype=np.uint64)


def stable_hash(keys: Any) -> npt.NDArray[np.uint64]:
    """Hash keys to ``uint64`` values that are identical in every process, run and machine.

    Args:
        keys: a numpy integer/bool array (any int or uint dtype), a numpy ``str``/``bytes``
            array (dtype ``U``/``S``/``StringDType``), an object array, a list or tuple (or
            other iterable) of integers, str and bytes (mixed kinds allowed), or one int, str
            or bytes. Arrays of more than one dimension are flattened.

    Returns:
        A 1-D ``uint64`` array with one hash per key (one element for a single key).

    Raises:
        UnsupportedKeyError: a key is not an integer, str or bytes (a ``TypeError`` naming the
            type and the position of the first bad key), or the array's dtype is unsupported.

    Example:
        >>> import numpy as np
        >>> a = stable_hash(np.arange(3))
        >>> bool((a == stable_hash([0, 1, 2])).all())
        True
        >>> bool(stable_hash(["x", b"x"])[0] == stable_hash(["x", b"x"])[1])
        True
        >>> try:
        ...     stable_hash([1, 2.5])
        ... except TypeError as e:
        ...     print(e)
        key at position 1 has unsupported type 'float'; keys must be integers, str or bytes
    """
    if isinstance(keys, np.ndarray):
        arr = keys.ravel()
        kind = arr.dtype.kind
        if kind in "iub":
            return _hash_int_array(arr)
        if arr.size == 0:
            return np.empty(0, dtype=np.uint64)
        if kind == "U" or kind == "T":
            return _hash_strs(arr.tolist())
        if kind == "S":
            return _hash_bytes(arr.tolist())
        if kind == "O":
            return _hash_list(arr.tolist())
        raise UnsupportedKeyError(str(arr.dtype), 0)
    if isinstance(keys, list):
        return _hash_list(keys)
    if isinstance(keys, (*_INT_TYPES, *_STR_BYTES)):
        return np.array([stable_hash_one(keys)], dtype=np.uint64)
    if isinstance(keys, np.generic):  # a numpy float/complex/datetime scalar
        raise UnsupportedKeyError(type(keys).__name__, 0)
    if isinstance(keys, Iterable) and not isinstance(keys, (dict, set, frozenset)):
        return _hash_list(list(keys))
    raise UnsupportedKeyError(type(keys).__name__, 0)
