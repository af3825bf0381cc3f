"""A MultiWorkerMirroredStrategy worker (TF_CONFIG on loopback): synchronous steps over
distribute_datasets_from_function(lambda ctx: Loader(..., shard=ctx).to_tf_dataset()); writes OUT/worker<i>.json."""

import json
import os
import sys

import tensorflow as tf

from npyfeed import Loader

path, out = sys.argv[1], sys.argv[2]
index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
strategy = tf.distribute.MultiWorkerMirroredStrategy()
source = (path + "/x.npy", path + "/y.npy")
auto = Loader(source, 16, shard="auto").shard


def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
    loader = Loader(source, context.get_per_replica_batch_size(32), shuffle=True, seed=7, shard=context)
    return loader.to_tf_dataset()


data = strategy.distribute_datasets_from_function(dataset_fn)
with strategy.scope():
    w = tf.Variable(tf.zeros([4, 1]), aggregation=tf.VariableAggregation.MEAN)


@tf.function
def step(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    def replica(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((tf.matmul(x, w)[:, 0] - tf.cast(y, tf.float32) / 1000) ** 2)
        grad = tf.distribute.get_replica_context().all_reduce("mean", tape.gradient(loss, w))
        w.assign_sub(0.1 * grad)
        return y

    return strategy.run(replica, args=(x, y))


ids, steps = [], 0
for x, y in data:
    for local in strategy.experimental_local_results(step(x, y)):
        ids += local.numpy().tolist()
    steps += 1
result = {"ids": ids, "steps": steps, "auto": [auto.index, auto.count, auto.source], "w": w.numpy().ravel().tolist()}
with open(f"{out}/worker{index}.json", "w") as f:
    json.dump(result, f)
