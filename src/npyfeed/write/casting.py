"""Casts that never change an integer silently: what :class:`NpyWriter` and ``convert`` apply to rows.

NumPy's ``same_kind`` rule allows int64 -> int8, and ``astype`` then wraps (300 -> 44, 2**40 -> 0). Here any
``casting`` other than ``"unsafe"`` also checks the values of a narrowing cast to an integer type: every value must
fit, or the cast is refused naming the first one that does not. The check is NumPy's own value-checking cast
(``casting="same_value"``, NumPy >= 2.4) where the installed NumPy has it, else a min/max comparison.

Float narrowing (float64 -> float32) keeps NumPy's ``same_kind`` rule: values are rounded to the nearest float32,
and those beyond its range become ``inf``. ``"unsafe"`` is NumPy's ``astype``, unchecked (wrapping included).

>>> import numpy as np
>>> cast(np.array([1, 2]), np.dtype("i1"), "same_kind", "x.npy").tolist()
[1, 2]
>>> cast(np.array([1, 300]), np.dtype("i1"), "same_kind", "x.npy")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
npyfeed.errors.ConfigError: x.npy: row 1 holds 300, which int8 cannot hold (-128..127); nothing was written...
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from npyfeed.errors import ConfigError

__all__ = ["CASTINGS", "Casting", "cast", "check_castable"]

Casting = Literal["no", "equiv", "safe", "same_kind", "unsafe"]
CASTINGS = ("no", "equiv", "safe", "same_kind", "unsafe")


def _has_same_value() -> bool:
    try:
        np.zeros(1, np.int64).astype(np.int8, casting="same_value")
    except (TypeError, ValueError):
        return False
    return True


_SAME_VALUE = _has_same_value()


def check_castable(
    have: np.dtype[Any], want: np.dtype[Any], casting: Casting, where: str, unsafe: str = "casting='unsafe'"
) -> None:
    """Refuse a cast NumPy's ``casting`` rule forbids (values are checked later, by :func:`cast`).

    ``unsafe`` spells the way out for the caller (``--casting unsafe`` on the command line).
    """
    if have != want and not np.can_cast(have, want, casting=casting):
        raise ConfigError(
            f"{where}: rows of dtype {have} cannot be cast to {want} under casting={casting!r} (NumPy's rule for "
            f"these two dtypes); {unsafe} casts anyway, as NumPy's astype does (wrapping integers, "
            "truncating floats)"
        )


def cast(array: np.ndarray, dtype: np.dtype[Any], casting: Casting, where: str, first_row: int = 0) -> np.ndarray:
    """``array`` as a C-order array of ``dtype``; unless ``casting="unsafe"``, refused if an integer would change.

    ``first_row`` numbers the rows in the message (the row of the output the first row of ``array`` would be).
    """
    check_castable(array.dtype, dtype, casting, where)
    if array.dtype == dtype or casting == "unsafe" or not _narrows_integers(array.dtype, dtype):
        return np.ascontiguousarray(array, dtype=dtype)
    if _SAME_VALUE and dtype.names is None and array.dtype.names is None:
        try:
            out: np.ndarray = np.ascontiguousarray(array).astype(dtype, casting="same_value")
        except ValueError:
            pass  # found below, with the row and the value
        else:
            return out
    _refuse_misfit(array, dtype, where, first_row)
    return np.ascontiguousarray(array, dtype=dtype)


def _narrows_integers(have: np.dtype[Any], want: np.dtype[Any]) -> bool:
    """Whether casting ``have`` to ``want`` can change an integer value (field by field for structured dtypes)."""
    if want.names is not None and have.names is not None:
        return any(
            _narrows_integers(have.fields[a][0], want.fields[b][0])  # type: ignore[index]
            for a, b in zip(have.names, want.names, strict=False)
        )
    if want.subdtype is not None or have.subdtype is not None:
        return _narrows_integers(have.base, want.base)
    return want.kind in "iu" and have.kind in "iu" and not np.can_cast(have, want, casting="safe")


def _refuse_misfit(array: np.ndarray, want: np.dtype[Any], where: str, first_row: int) -> None:
    """Raise naming the first value of ``array`` that ``want`` cannot hold (min/max comparison)."""
    for field, values, target in _integer_leaves(array, want, ""):
        info = np.iinfo(target)
        bad = (values < info.min) | (values > info.max)
        if bad.any():
            flat = int(np.argmax(bad.reshape(len(values), -1).any(axis=1))) if values.ndim else 0
            row_values = values[flat].reshape(-1)
            value = row_values[np.argmax((row_values < info.min) | (row_values > info.max))]
            raise ConfigError(
                f"{where}: row {first_row + flat}{field} holds {value}, which {target} cannot hold "
                f"({info.min}..{info.max}); nothing was written. Cast the rows yourself, or pass casting='unsafe' "
                "to store them as NumPy's astype does (wrapping)"
            )


def _integer_leaves(array: np.ndarray, want: np.dtype[Any], field: str) -> list[tuple[str, np.ndarray, np.dtype[Any]]]:
    have = array.dtype
    if want.names is not None and have.names is not None:
        leaves = []
        for a, b in zip(have.names, want.names, strict=False):
            leaves += _integer_leaves(array[a], want.fields[b][0], f"{field}[{b!r}]")  # type: ignore[index]
        return leaves
    if want.subdtype is not None:
        want = want.base
    if want.kind in "iu" and have.kind in "iu" and not np.can_cast(have, want, casting="safe"):
        return [(field, array, want)]
    return []
