"""The one rule for user arguments, applied where they enter (Loader, adapters, Shard, set_state, mix, writer, CLI).

- An int takes ``int`` and any ``np.integer``; never ``bool``/``np.bool_``, a float (even a whole one) or a string.
  Counts and sizes are bounded: at most ``2**63 - 1`` (they become int64 in NumPy and TensorFlow), so
  ``epoch=10**5000`` is refused here, not by an ``OverflowError`` or ``ValueError`` deep inside an epoch.
- A flag takes ``True``/``False``/``np.bool_`` only: ``drop_remainder="no"`` would otherwise be truthy.
- A size (bytes) is an int or a string of the size grammar (:func:`size`): ``"4MB"`` is 4,000,000 bytes and
  ``"4MiB"`` 4,194,304, the same on the command line and in Python.
- An argument that cannot apply to what it was given with is refused (:func:`inapplicable`), never ignored.

Every failure is a :class:`~npyfeed.errors.ConfigError` naming the argument, the value found and what was expected.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any, Literal, TypeVar

import numpy as np

from npyfeed.errors import ConfigError

__all__ = [
    "MAX_INT",
    "ShuffleMode",
    "choice",
    "flag",
    "function",
    "inapplicable",
    "integer",
    "is_int",
    "number",
    "optional_flag",
    "optional_positive_int",
    "positive_int",
    "seed",
    "show",
    "shuffle_mode",
    "size",
]

ShuffleMode = Literal["none", "global", "block"]
T = TypeVar("T")

MAX_INT = 2**63 - 1
"""The largest count, size, epoch or position: the largest int64, the type NumPy and TF compute them in."""


def is_int(value: Any) -> bool:
    """Whether ``value`` is an int by the rule: ``int`` or ``np.integer``, never a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def show(value: Any) -> str:
    """``value`` for a message: its repr and type, at most ~100 characters (``10**5000`` has no repr at all)."""
    if is_int(value) and abs(int(value)).bit_length() > 256:
        digits = math.floor(abs(int(value)).bit_length() * math.log10(2)) + 1
        return f"an int of about {digits} digits"
    text = repr(value)
    if len(text) > 100:
        text = text[:97] + "..."
    return f"{text} ({type(value).__name__})"


def _fail(name: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(f"{name} must be {expected}, got {show(value)}")


def integer(name: str, value: Any, *, minimum: int = 0, maximum: int = MAX_INT) -> int:
    """``value`` as a Python int if it is an int in ``[minimum, maximum]``."""
    if not is_int(value) or not minimum <= value <= maximum:
        if maximum != MAX_INT:
            expected = f"an int in [{minimum}, {maximum}]"
        else:
            kind = {0: "a non-negative int", 1: "a positive int"}.get(minimum, f"an int >= {minimum}")
            expected = f"{kind} (at most 2**63 - 1)" if is_int(value) and value > maximum else kind
        raise _fail(name, expected, value)
    return int(value)


def positive_int(name: str, value: Any) -> int:
    """A count: an int in ``[1, 2**63 - 1]``."""
    return integer(name, value, minimum=1)


def optional_positive_int(name: str, value: Any) -> int | None:
    return None if value is None else positive_int(name, value)


def seed(name: str, value: Any) -> int | None:
    """A seed: ``None`` or an int that fits 64 bits, signed or unsigned (orders use it modulo ``2**64``)."""
    if value is None:
        return None
    if not is_int(value) or not -(2**63) <= value < 2**64:
        raise _fail(name, "an int in [-2**63, 2**64) or None", value)
    return int(value)


def flag(name: str, value: Any) -> bool:
    """``value`` if it is a bool (Python or NumPy): strings, ints and None are refused, never coerced."""
    if not isinstance(value, (bool, np.bool_)):
        raise _fail(name, "True or False", value)
    return bool(value)


def optional_flag(name: str, value: Any) -> bool | None:
    if value is None:
        return None
    if not isinstance(value, (bool, np.bool_)):
        raise _fail(name, "True, False or None", value)
    return bool(value)


def number(name: str, value: Any, *, minimum: float = 0.0, maximum: float = math.inf, exclusive: bool = False) -> float:
    """A finite real number (Python or NumPy, not a bool) in ``[minimum, maximum]``, or in ``(minimum, maximum)``
    if ``exclusive``: a timeout, a weight, a fraction."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    if ok and is_int(value) and abs(int(value)).bit_length() > 1023:
        ok = False  # beyond any float
    if ok and math.isfinite(value):
        inside = minimum < value < maximum if exclusive else minimum <= value <= maximum
        if inside:
            return float(value)
    low, high = ("(", ")") if exclusive else ("[", "]")
    raise _fail(name, f"a finite number in {low}{minimum:g}, {maximum:g}{high}", value)


def choice(name: str, value: Any, options: Sequence[T]) -> T:
    """``value`` if it is one of ``options`` (compared with ``==``, bools never standing for ints)."""
    for option in options:
        same_kind = isinstance(value, type(option)) and isinstance(value, bool) == isinstance(option, bool)
        if same_kind and value == option:
            return option
    raise _fail(name, "one of " + ", ".join(repr(o) for o in options), value)


def shuffle_mode(value: Any) -> ShuffleMode:
    """``shuffle``: ``False``/``None`` (file order), ``True`` (global), ``"global"``, ``"block"`` or ``"none"``."""
    if value is None or isinstance(value, (bool, np.bool_)):
        return "global" if value else "none"
    if isinstance(value, str) and value in ("none", "global", "block"):
        return value  # type: ignore[return-value]
    raise _fail("shuffle", "True, False, 'global' or 'block'", value)


def function(name: str, value: Callable[..., Any] | None) -> Callable[..., Any] | None:
    """``None`` or a callable."""
    if value is not None and not callable(value):
        raise _fail(name, "callable or None", value)
    return value


def inapplicable(name: str, value: Any, why: str, *, shown: str | None = None) -> ConfigError:
    """The error for an argument that cannot apply to what it was given with: refused, never ignored.

    ``shown`` replaces the value in the message (e.g. only the keys of options that may hold credentials)."""
    return ConfigError(f"{name}={shown or repr(value)[:100]} cannot apply: {why}")


# -- sizes ------------------------------------------------------------------------------------------------------
# The size grammar, the same for the command line, storage_options and every *_bytes argument:
#   a number (digits, optionally with a fraction) and an optional unit, case-insensitive, spaces allowed between;
#   B or none: bytes; K/KB, M/MB, G/GB, T/TB, P/PB: powers of 1000; KiB, MiB, GiB, TiB, PiB (or Ki, Mi, ...): of 1024.
# So "4MB" and "4M" are 4,000,000 bytes and "4MiB" is 4,194,304, as most tools read them (SI and IEC prefixes).
# The result must be a whole number of bytes: "1.5KiB" is 1536, "0.3B" is refused.
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:([kmgtp])(i)?)?(b)?\s*", re.IGNORECASE)
_POWERS = {"k": 1, "m": 2, "g": 3, "t": 4, "p": 5}
SIZE_EXAMPLES = "an int of bytes or a string such as '4MB' (4 * 10**6 bytes) or '4MiB' (4 * 2**20)"


def size(name: str, value: Any, *, minimum: int = 1, maximum: int = MAX_INT) -> int:
    """Bytes from an int or a string of the size grammar (see above), in ``[minimum, maximum]``."""
    if is_int(value):
        result = int(value)
    elif isinstance(value, str) and (match := _SIZE.fullmatch(value)):
        number, prefix, binary, _ = match.groups()
        exact = Fraction(number)
        if prefix:
            exact *= (1024 if binary else 1000) ** _POWERS[prefix.lower()]
        if exact.denominator != 1:
            raise _fail(name, f"a whole number of bytes ({SIZE_EXAMPLES})", value)
        result = int(exact)
    else:
        raise _fail(name, SIZE_EXAMPLES, value)
    if not minimum <= result <= maximum:
        bound = f"at least {minimum}" if result < minimum else f"at most {maximum}"
        raise _fail(name, f"a size of {bound} bytes", value)
    return result
