"""The public API is what ``npyfeed.__all__`` lists: sorted, every name there, and nothing heavy imported."""

from __future__ import annotations

import subprocess
import sys

import npyfeed


def test_all_is_sorted_and_every_name_exists() -> None:
    assert npyfeed.__all__ == sorted(npyfeed.__all__)
    missing = [name for name in npyfeed.__all__ if not hasattr(npyfeed, name)]
    assert missing == []


def test_the_error_tree_is_rooted_in_builtins() -> None:
    assert issubclass(npyfeed.NpyFormatError, ValueError)
    assert issubclass(npyfeed.FileChangedError, OSError)
    assert issubclass(npyfeed.ObjectChangedError, npyfeed.FileChangedError)
    assert issubclass(npyfeed.ObjectChangedError, npyfeed.NpyFormatError)
    assert issubclass(npyfeed.RemoteShuffleWarning, npyfeed.NpyfeedWarning)
    assert issubclass(npyfeed.RemoteShuffleWarning, UserWarning)
    for name in npyfeed.__all__:
        value = getattr(npyfeed, name)
        if not isinstance(value, type) or value in (npyfeed.NpyfeedError, npyfeed.NpyfeedWarning):
            continue
        if issubclass(value, Warning):  # warnings have their own root
            assert issubclass(value, npyfeed.NpyfeedWarning), name
        elif issubclass(value, Exception):
            assert issubclass(value, npyfeed.NpyfeedError), name


def test_import_npyfeed_imports_no_framework_and_no_cloud_client() -> None:
    heavy = ["tensorflow", "keras", "torch", "jax", "ray", "obstore", "boto3", "tqdm"]
    code = f"import sys, npyfeed; print([m for m in {heavy!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"
