"""The public API is what ``npyfeed.__all__`` lists: sorted, every name there, and nothing heavy imported."""

from __future__ import annotations

import subprocess
import sys

import pytest

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
    heavy = [
        "tensorflow",
        "keras",
        "torch",
        "jax",
        "ray",
        "obstore",
        "boto3",
        "tqdm",
        "prometheus_client",
        "matplotlib",
    ]
    code = f"import sys, npyfeed; print([m for m in {heavy!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"


def test_all_holds_only_what_a_user_calls() -> None:
    """Functions and classes a user calls or constructs, the exceptions and warnings they catch, the version."""
    called = {"Loader", "NpyArray", "NpyWriter", "Shard", "mix", "open", "read_header", "split"}
    returned = {"Columns", "Mix"}  # what open() and mix() return: users annotate with them and call their methods
    caught = {name for name in npyfeed.__all__ if name.endswith(("Error", "Warning"))}
    assert set(npyfeed.__all__) == called | returned | caught | {"__version__"}
    assert all(callable(getattr(npyfeed, name)) for name in called | returned | caught)


DOCUMENTED = {
    "convert": "convert",  # npyfeed.convert.convert(...), docs/writing.md
    "jax_arrays": "global_batches",  # docs/distributed.md
    "keras": "LoaderCheckpoint",  # docs/distributed.md
    "storage": "Storage",  # docs/storage.md
}


def test_documented_modules_resolve_after_import_npyfeed_alone() -> None:
    """``npyfeed.keras.LoaderCheckpoint`` & co. work after ``import npyfeed`` (lazy module attributes); before
    first use, nothing heavy is imported (a fresh interpreter each)."""
    code = (
        "import sys, npyfeed\n"
        "heavy = ('tensorflow', 'keras', 'torch', 'jax')\n"
        "assert not [m for m in heavy if m in sys.modules], sys.modules.keys()\n"
        f"for module, name in {DOCUMENTED!r}.items():\n"
        "    assert module in dir(npyfeed), module\n"
        "    print(module, getattr(getattr(npyfeed, module), name).__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [word for module, name in DOCUMENTED.items() for word in (module, name)]


def test_an_unknown_attribute_is_still_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'kerass'"):
        npyfeed.kerass  # noqa: B018


@pytest.mark.parametrize(
    ("method", "adapter"),
    [
        ("to_tf_dataset", "npyfeed.adapters.tf_data"),
        ("to_keras", "npyfeed.adapters.keras_dataset"),
        ("to_torch", "npyfeed.adapters.torch_dataset"),
    ],
)
def test_adapter_methods_show_their_parameters(method: str, adapter: str) -> None:
    """help() and IDEs see every option of Loader.to_*: the adapter's own keywords, typed and documented, no
    **kwargs (the adapter module is read as source: importing it would import its framework)."""
    import ast
    import importlib.util
    import inspect

    spec = importlib.util.find_spec(adapter)
    assert spec is not None and spec.origin is not None
    with open(spec.origin, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    function = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == method)
    wanted = [a.arg for a in function.args.kwonlyargs]
    signature = inspect.signature(getattr(npyfeed.Loader, method))
    params = list(signature.parameters.values())[1:]  # after self
    assert [p.name for p in params] == wanted
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY and p.annotation is not inspect.Parameter.empty for p in params)
    doc = inspect.getdoc(getattr(npyfeed.Loader, method)) or ""
    assert [name for name in wanted if f"{name}:" not in doc] == []
