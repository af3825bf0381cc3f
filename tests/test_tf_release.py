"""to_tf_dataset() pipelines release their Loader (descriptors, mappings, buffers) when dropped, and not before."""

from __future__ import annotations

import gc
import json
import statistics
import subprocess
import sys
import textwrap
import weakref
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import npyfeed  # noqa: E402

_CHILD = textwrap.dedent(
    """
    import gc, json, os, sys, weakref
    import numpy as np
    import tensorflow as tf
    import npyfeed

    def fds():
        return len(os.listdir("/proc/self/fd"))

    def rss_mib():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    samples, loaders = [], []
    for i in range(int(sys.argv[2])):
        loader = npyfeed.Loader(sys.argv[1], 64, shuffle=True, seed=i)
        loaders.append(weakref.ref(loader))
        it = iter(loader.to_tf_dataset())
        for _ in range(3):
            next(it)
        del it, loader
        gc.collect()
        samples.append((fds(), rss_mib()))
    print(json.dumps({"samples": samples, "alive": sum(ref() is not None for ref in loaders)}))
    """
)


def test_200_dropped_pipelines_leave_descriptors_and_memory_flat(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.arange(20_000 * 16, dtype=np.float32).reshape(-1, 16))
    env = {**__import__("os").environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), "200"], capture_output=True, text=True, timeout=540, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["alive"] == 0  # every Loader was released with its pipeline
    fds = [f for f, _ in result["samples"]]
    rss = [r for _, r in result["samples"]]
    # Before the fix each pipeline kept its Loader: +2 descriptors and about 1.5-5 MiB per pipeline, i.e. +200
    # descriptors and 150+ MiB between the two halves. The bounds leave room for TensorFlow's own caches only.
    assert max(fds[100:]) - max(fds[:100]) <= 4, fds
    assert statistics.median(rss[100:]) - statistics.median(rss[:100]) <= 64, rss


def test_the_pipeline_keeps_its_loader_while_anything_built_from_it_lives(tmp_path: Path) -> None:
    path = tmp_path / "ids.npy"
    np.save(path, np.arange(100, dtype=np.int64))
    loader = npyfeed.Loader(str(path), 10)
    ref = weakref.ref(loader)
    it = iter(loader.to_tf_dataset().map(lambda b: b * 2))  # an iterator of a derived dataset, nothing else
    del loader
    gc.collect()
    assert ref() is not None
    assert np.concatenate([b.numpy() for b in it]).tolist() == list(range(0, 200, 2))
    del it
    gc.collect()
    assert ref() is None
