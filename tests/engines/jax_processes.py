"""A jax.distributed process (CPU, loopback): global arrays from each process's shard, a jitted step."""

import json
import sys

import jax

port, process, out, path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from npyfeed import Loader  # noqa: E402
from npyfeed.jax_arrays import global_batches  # noqa: E402

loader = Loader((path + "/x.npy", path + "/y.npy"), 16, shuffle=True, seed=7, shard="auto", drop_remainder=True)
mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))


@jax.jit
def step(w: jax.Array, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    grad = jax.grad(lambda w: jnp.mean((x @ w - y / 1000.0) ** 2))(w)
    return w - 0.1 * grad, jnp.sum(y)  # a global sum: rows of both processes


w = jnp.zeros(4)
ids: list[int] = []
sums, shapes = [], set()


def local_batches():  # what this process reads: its shard of each epoch
    for x, y in loader:
        ids.extend(y.tolist())
        yield x, y.astype(np.float32)


for x, y in global_batches(local_batches(), sharding):
    w, total = step(w, x, y)
    sums.append(int(total))
    shapes.add(x.shape)
result = {
    "ids": ids,
    "steps": len(sums),
    "sums": sums,
    "shapes": sorted(shapes),
    "w": np.asarray(w).tolist(),
    "shard": [loader.shard.index, loader.shard.count, loader.shard.source],
}
with open(f"{out}/process{process}.json", "w") as f:
    json.dump(result, f)
jax.distributed.shutdown()
