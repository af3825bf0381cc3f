"""Keras glue (public module): :class:`LoaderCheckpoint` (see :mod:`npyfeed.adapters.keras_checkpoint`) and
:class:`DataWaitLogger`, the data wait in the training logs (see :mod:`npyfeed.adapters.keras_wait`).

Importing this module imports Keras.
"""

from npyfeed.adapters.keras_checkpoint import LoaderCheckpoint
from npyfeed.adapters.keras_wait import DataWaitLogger

__all__ = ["DataWaitLogger", "LoaderCheckpoint"]
