"""Global ``jax.Array`` batches (public module): :func:`global_batches`, see :mod:`npyfeed.adapters.jax_arrays`."""

from npyfeed.adapters.jax_arrays import global_batches

__all__ = ["global_batches"]
