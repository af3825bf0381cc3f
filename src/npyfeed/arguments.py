"""Checks of user arguments: one rule for Python and NumPy scalars, and no silent coercion.

An int argument takes ``int`` and any ``np.integer`` (never ``bool``, ``np.bool_`` or a float, even a whole
one); a flag takes ``True``/``False`` or ``np.bool_`` only (``drop_remainder="no"`` would otherwise be truthy).
Every failure is a :class:`~npyfeed.errors.ConfigError` naming the argument, the value found and what was
expected.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from npyfeed.errors import ConfigError

__all__ = ["flag", "integer", "optional_flag", "optional_positive_int", "positive_int", "shard_arg", "shuffle_mode"]

ShuffleMode = Literal["none", "global", "block"]


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def integer(name: str, value: Any, *, minimum: int = 0) -> int:
    """``value`` as a Python int if it is an int >= ``minimum``."""
    if not _is_int(value) or value < minimum:
        kind = "positive" if minimum == 1 else f">= {minimum}" if minimum else "non-negative"
        raise ConfigError(f"{name} must be a {kind} int, got {value!r} ({type(value).__name__})")
    return int(value)


def positive_int(name: str, value: Any) -> int:
    return integer(name, value, minimum=1)


def optional_positive_int(name: str, value: Any) -> int | None:
    return None if value is None else positive_int(name, value)


def flag(name: str, value: Any) -> bool:
    """``value`` if it is a bool (Python or NumPy): strings, ints and None are refused, never coerced."""
    if not isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return bool(value)


def optional_flag(name: str, value: Any) -> bool | None:
    if value is None:
        return None
    if not isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"{name} must be True, False or None, got {value!r} ({type(value).__name__})")
    return bool(value)


def shuffle_mode(shuffle: Any) -> ShuffleMode:
    if shuffle is None or isinstance(shuffle, (bool, np.bool_)):
        return "global" if shuffle else "none"
    if isinstance(shuffle, str) and shuffle in ("none", "global", "block"):
        return shuffle  # type: ignore[return-value]
    raise ConfigError(f"shuffle must be True, False, 'global' or 'block', got {shuffle!r}")


def shard_arg(shard: Any) -> Any:
    """An ``(index, count)`` tuple of NumPy ints as Python ints (anything else is :meth:`Shard.of`'s to check)."""
    if isinstance(shard, tuple) and len(shard) == 2 and all(_is_int(v) for v in shard):
        return (int(shard[0]), int(shard[1]))
    return shard
