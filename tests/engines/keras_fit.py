"""model.fit with npyfeed.keras.LoaderCheckpoint; logs every trained batch's row ids to LOG (one JSON line each).

Run it, SIGKILL it mid-epoch, run it again: the second run resumes after the last checkpointed batch.
"""

import json
import os
import sys
import time

import keras

from npyfeed import Loader
from npyfeed.keras import LoaderCheckpoint

path, directory, log, delay = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
run = os.getpid()


class Logged(keras.Sequential):
    def train_step(self, data):  # type: ignore[no-untyped-def]
        _, y = data
        with open(log, "a") as f:
            f.write(json.dumps({"run": run, "ids": [int(i) for i in y.cpu().numpy().ravel()]}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        time.sleep(delay)
        return super().train_step(data)


loader = Loader((path + "/x.npy", path + "/y.npy"), 10, shuffle=True, seed=3)
model = Logged([keras.Input((4,)), keras.layers.Dense(1)])
model.compile(optimizer="sgd", loss="mse")
LoaderCheckpoint(loader, directory, save_freq=5).fit(model, epochs=2, verbose=0)
print("done")
