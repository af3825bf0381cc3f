"""Exit scenarios for a live ``to_tf_dataset()`` iterator, each run in a fresh process many times.

    python tf_exit.py DATA_DIR SCENARIO:RUNS [SCENARIO:RUNS ...]

Imports TensorFlow once, then for every scenario forks ``RUNS`` children. A child runs the scenario, keeps its
iterator alive in a module global (as a script does) and leaves through the normal interpreter exit (an uncaught
exception, ``KeyboardInterrupt`` or falling off the end), so every run goes through Python's finalization. The
parent reaps each child with a deadline, kills one that hangs, and prints one JSON line per run. Last, the parent
itself runs ``exit_live`` and exits with its iterator alive: an exit without any fork involved.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
import tensorflow as tf

import npyfeed

HANG_S = 60.0  # a child still running this long after it was forked is hung
KEEP: list[object] = []  # what the scenario keeps alive until the interpreter exits
# A script's loader, dataset and iterator as module globals: finalization clears them in this order.
LOADER: object = None
DS: object = None
IT: object = None


def loader(data: str, shuffle: object = True, **kwargs: object) -> npyfeed.Loader:
    source = (f"{data}/x.npy", f"{data}/ids.npy")
    return npyfeed.Loader(source, batch_size=32, shuffle=shuffle, seed=1, **kwargs)  # type: ignore[arg-type]


def report(**fields: object) -> None:
    print(json.dumps({"t": time.monotonic(), **fields}), flush=True)


def slow(batch: object) -> object:
    time.sleep(0.01)
    return batch


def scenario(name: str, data: str) -> None:
    """Run ``name``; return (or raise) with the iterator still referenced from ``KEEP``."""
    global LOADER, DS, IT
    if name.startswith("exit_live"):  # the script ends in the middle of an epoch, with its objects as globals
        shuffle = {"exit_live": True, "exit_live_seq": False, "exit_live_block": "block"}[name]
        LOADER = loader(data, shuffle)
        DS = LOADER.to_tf_dataset()
        IT = iter(DS)
        for _ in range(5):
            next(IT)
        report(event="end")
    elif name == "exit_transform":  # a slow transform: reads are in flight at exit
        it = iter(loader(data, transform=slow).to_tf_dataset())
        KEEP.append(it)
        next(it)
        report(event="end")
    elif name == "exit_graph":  # consumed inside a tf.function, as model.fit does
        ds = loader(data).to_tf_dataset()
        it = iter(ds)
        KEEP.append(it)

        @tf.function
        def step(iterator: object) -> object:
            return tf.reduce_sum(next(iterator)[1])  # type: ignore[call-overload]

        for _ in range(3):
            step(it)
        report(event="end")
    elif name == "exit_raise":  # an uncaught exception ends the script (its traceback holds the iterator)
        it = iter(loader(data).to_tf_dataset())
        next(it)
        report(event="end")
        raise RuntimeError("the training script failed")
    elif name == "sigint":  # Ctrl-C while iterating
        ds = loader(data).to_tf_dataset()
        caught = threading.Event()

        def press_ctrl_c() -> None:
            # A KeyboardInterrupt raised while TensorFlow runs a __del__ (its eager Executor's) is printed as
            # "Exception ignored" and lost, as for any Ctrl-C that lands in a finalizer: then the user presses
            # again. Press every 0.5 s until one is caught; the exit deadline counts from the caught one.
            time.sleep(0.05)
            for _ in range(20):
                os.kill(os.getpid(), signal.SIGINT)
                if caught.wait(0.5):
                    return

        try:
            for epoch in range(1000):
                KEEP.append(None)
                for batch in ds:
                    KEEP[-1] = batch
                    if epoch == 0 and len(KEEP) == 1:  # Ctrl-C arrives somewhere in the next few batches
                        threading.Thread(target=press_ctrl_c, daemon=True).start()
                        KEEP.append(None)
        except KeyboardInterrupt:
            caught.set()
            report(event="end")
            raise
        report(event="no KeyboardInterrupt")
    elif name == "transform_error":  # a transform failing on batch 5 of epoch 1: the consumer gets every batch before

        def fail(batch: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
            if batch[1][0] == FAIL_AT[0]:
                raise ValueError("bad row")
            return batch

        lo = loader(data, transform=fail)
        FAIL_AT[0] = int(lo.read_batch(1, 5)[1][0])
        ds = lo.to_tf_dataset(start_epoch=1)
        got = []
        it = iter(ds)
        KEEP.append(it)
        try:
            for batch in it:
                got.append(int(batch[1][0]))
        except tf.errors.OpError as err:
            report(event="end", batches=len(got), error=str(err).splitlines()[0], type=type(err).__name__)
            return
        report(event="no error", batches=len(got))
    else:
        raise SystemExit(f"unknown scenario {name}")


FAIL_AT = [-1]


def main() -> None:
    data = sys.argv[1]
    for arg in sys.argv[2:]:
        name, runs = arg.split(":")
        for run in range(int(runs)):
            read, write = os.pipe()
            started = time.monotonic()
            pid = os.fork()
            if pid == 0:
                os.close(read)
                os.dup2(write, 1)
                os.dup2(write, 2)
                scenario(name, data)
                return  # falls off the end of the script: a normal interpreter exit
            os.close(write)
            out = b""
            deadline = started + HANG_S
            status = None
            while status is None:
                done, status_word = os.waitpid(pid, os.WNOHANG)
                if done:
                    status = status_word
                    break
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    status = os.waitpid(pid, 0)[1]
                    break
                time.sleep(0.02)
            reaped = time.monotonic()
            with os.fdopen(read, "rb") as pipe:
                out = pipe.read()
            events = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
            end = next((e for e in events if e.get("event")), None)
            print(
                json.dumps(
                    {
                        "scenario": name,
                        "run": run,
                        "status": status,
                        "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                        "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                        "run_s": reaped - started,
                        "exit_s": reaped - end["t"] if end else None,
                        "end": end,
                        "tail": out.decode(errors="replace")[-600:] if not end or end["event"] != "end" else "",
                    }
                ),
                flush=True,
            )
    scenario("exit_live", data)  # and this process exits with live iterators too


if __name__ == "__main__":
    main()
