"""Global ``jax.Array`` batches for multi-process JAX: each process reads its shard, JAX sees one global batch.

With ``jax.distributed.initialize()`` and ``Loader(..., shard="auto", drop_remainder=True)``, process ``p`` reads
global batches ``p, p + n, ...``; :func:`global_batches` turns each local batch into a global array of
``n x batch_size`` rows laid out over ``sharding`` (``make_array_from_process_local_data``), without copying
other processes' rows. Every process must give the same number of equally shaped batches, hence
``drop_remainder=True`` (the Loader already gives every shard the same number of batches).

>>> mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))  # doctest: +SKIP
>>> sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))  # doctest: +SKIP
>>> for x, y in global_batches(loader, sharding):  # doctest: +SKIP
...     state = train_step(state, x, y)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from npyfeed.adapters.frameworks import require_jax

__all__ = ["global_batches"]


def global_batches(batches: Iterable[Any], sharding: Any) -> Iterator[Any]:
    """Each (nest of) NumPy batch in ``batches`` as global ``jax.Array`` leaves sharded by ``sharding``."""
    jax = require_jax()
    for batch in batches:
        yield jax.tree.map(lambda leaf: jax.make_array_from_process_local_data(sharding, leaf), batch)
