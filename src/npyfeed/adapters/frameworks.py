"""The frameworks the adapters feed, imported on first use: one helper each, with an ImportError saying what to
install. ``import npyfeed`` never imports one; an adapter module calls its helper when it is imported or used.

>>> require_tensorflow().__name__  # doctest: +SKIP
'tensorflow'
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["require_jax", "require_keras", "require_tensorflow", "require_torch"]


def _require(module: str, adapter: str, install: str, extra: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as e:  # pragma: no cover - exercised only without the framework
        raise ImportError(
            f"npyfeed's {adapter} needs {install} (pip install '.[{extra}]' in a checkout of npyfeed)"
        ) from e


def require_tensorflow() -> ModuleType:
    """The ``tensorflow`` module (the tf.data adapters)."""
    return _require("tensorflow", "tf.data adapter", "TensorFlow: the npyfeed[tf] extra", "tf")


def require_keras() -> ModuleType:
    """The ``keras`` module, Keras 3 (the PyDataset and the checkpoint callback)."""
    return _require("keras", "Keras adapter", "Keras 3: the npyfeed[tf] extra", "tf")


def require_torch() -> ModuleType:
    """The ``torch`` module (the IterableDataset)."""
    return _require("torch", "PyTorch adapter", "PyTorch: the npyfeed[torch] extra", "torch")


def require_jax() -> ModuleType:
    """The ``jax`` module (global arrays)."""
    return _require("jax", "JAX helper", "JAX: the npyfeed[jax] extra", "jax")
