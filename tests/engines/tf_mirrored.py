"""model.fit under MirroredStrategy over 2 logical CPU devices, fed by loader.to_tf_dataset(); prints JSON."""

import json
import sys

import tensorflow as tf

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
)
import keras  # noqa: E402

from npyfeed import Loader  # noqa: E402

path = sys.argv[1]
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
loader = Loader((path + "/x.npy", path + "/y.npy"), 32, shuffle=True, seed=7)  # a global batch: 16 per device
with strategy.scope():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")


class Count(keras.callbacks.Callback):
    steps = 0

    def on_train_batch_end(self, batch: int, logs: object = None) -> None:
        Count.steps += 1


history = model.fit(loader.to_tf_dataset(), epochs=2, callbacks=[Count()], verbose=0)
print(
    json.dumps(
        {
            "steps": Count.steps,
            "batches": len(loader),
            "replicas": strategy.num_replicas_in_sync,
            "loss": history.history["loss"],
        }
    )
)
