"""Keras checkpoint glue (public module): :class:`LoaderCheckpoint`, see :mod:`npyfeed.adapters.keras_checkpoint`.

Importing this module imports Keras.
"""

from npyfeed.adapters.keras_checkpoint import LoaderCheckpoint

__all__ = ["LoaderCheckpoint"]
