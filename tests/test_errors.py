"""One exception and warning tree: every error npyfeed raises on purpose is an NpyfeedError rooted in a built-in,
and every warning it gives is an NpyfeedWarning, so ``filterwarnings("ignore", category=NpyfeedWarning)`` (or one
category) silences exactly npyfeed's warnings."""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import pytest

import npyfeed
from npyfeed import errors

SRC = Path(npyfeed.__file__).parent


def warning_categories() -> list[tuple[str, str]]:
    """``(module, category)`` of every ``warnings.warn(...)`` call in npyfeed's source."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.Call) and ast.unparse(node.func) == "warnings.warn"):
                continue
            category = (
                node.args[1] if len(node.args) > 1 else next(k.value for k in node.keywords if k.arg == "category")
            )
            found.append((str(path.relative_to(SRC)), ast.unparse(category)))
    return found


def test_every_warning_npyfeed_gives_is_an_npyfeed_warning() -> None:
    found = warning_categories()
    assert len(found) >= 5, found  # the scan sees the calls (remote shuffle, unversioned, batch order, cache x2)
    for module, name in found:
        category = getattr(errors, name, None)
        assert isinstance(category, type) and issubclass(category, errors.NpyfeedWarning), (module, name)
        assert name in errors.__all__ and getattr(npyfeed, name) is category, (module, name)


@pytest.mark.parametrize(
    ("category", "builtin"),
    [
        (npyfeed.RemoteShuffleWarning, UserWarning),
        (npyfeed.UnversionedObjectWarning, UserWarning),
        (npyfeed.BatchOrderWarning, UserWarning),
        (npyfeed.CacheWarning, RuntimeWarning),
    ],
)
def test_each_warning_keeps_its_builtin_category_and_one_filter_silences_all(
    category: type[Warning], builtin: type[Warning]
) -> None:
    assert issubclass(category, npyfeed.NpyfeedWarning) and issubclass(category, builtin)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", category=npyfeed.NpyfeedWarning)
        warnings.warn("npyfeed says", category, stacklevel=1)
    assert caught == []


def test_interpreter_exiting_stays_with_the_tf_adapter_but_in_the_tree() -> None:
    from npyfeed.adapters.tf_calls import InterpreterExiting

    assert issubclass(InterpreterExiting, npyfeed.NpyfeedError) and issubclass(InterpreterExiting, RuntimeError)
    assert "InterpreterExiting" not in npyfeed.__all__
