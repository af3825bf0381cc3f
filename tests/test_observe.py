"""The data wait (loader.metrics): a slow transform shows up as waiting, a fast loader as almost none, through
``iter(loader)``, ``to_torch``, ``to_keras`` (and its Keras callback), ``to_tf_dataset`` (counted in the graph, also
under Keras' ``fit``) and JAX's global batches; bounded memory; JSON lines."""

from __future__ import annotations

import gc
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import npyfeed
from npyfeed.loader.metrics import FIELDS, DataWait

ROWS, BATCH = 16 * 4096, 4096  # 16 batches of 4 MiB: one batch per read task (see Loader.batches_per_read)
SLOW = 0.02  # seconds the slow transform sleeps per batch


@pytest.fixture(scope="module")
def path(float_rows: Callable[[str, int], str]) -> str:
    return float_rows("observe", ROWS)


def slow(batch: Any) -> Any:
    time.sleep(SLOW)
    return batch


def loaders(path: str, **more: Any) -> tuple[npyfeed.Loader, npyfeed.Loader]:
    """(a loader whose transform is slower than the consumer, one whose reads are far faster than it)."""
    kw: dict[str, Any] = {"batch_size": BATCH, "num_threads": 1, "io_threads": 1, "prefetch": 1, **more}
    return npyfeed.Loader(path, transform=slow, **kw), npyfeed.Loader(path, batch_size=BATCH, prefetch=4, **more)


def consume(batches: Any, pause: float, warm_up: DataWait | None = None) -> int:
    """Take every batch, spending ``pause`` seconds on each (a training step); ``warm_up.reset()`` after the first
    (which waits for the threads to start and the first read: not the steady state a fast loader is judged on)."""
    n = 0
    for _ in batches:
        time.sleep(pause)
        n += 1
        if n == 1 and warm_up is not None:
            warm_up.reset()
    return n


def check(
    metrics: DataWait | Snapshot, *, waiting: bool, batches: int = ROWS // BATCH, split: bool = True
) -> dict[str, Any]:
    """``split``: the account also knows where the read time went (not through tf.data, whose threads read)."""
    s = metrics.snapshot()
    assert set(s) == set(FIELDS)
    assert s["batches"] == batches and s["rows"] == batches * BATCH and s["bytes"] == batches * BATCH * 1024
    if waiting:  # each batch waits about SLOW for its transform, 15 of 16 in steady state
        assert s["wait_s"] >= 0.5 * batches * SLOW, s
        assert s["wait_p50_s"] >= 0.5 * SLOW and s["wait_fraction"] > 0.5, s
        assert not split or s["transform_s"] >= batches * SLOW * 0.9, s
    else:  # reads of 4 MiB far faster than the 20 ms step: after the first, batches are ready when asked for
        # (relative facts that hold on a loaded machine, where a few batches may still wait for a busy core, and
        # every wait includes the consumer's time off the core: through tf.data at load 10-12 on 2 cores, p50 was
        # 1.2-1.7 ms in some runs; a quarter of the slow case's per-batch transform keeps them far apart)
        assert s["wait_p50_s"] < SLOW / 4, s
        assert s["wait_fraction"] < 0.2, s
    assert s["rows_per_s"] > 0 and s["bytes_per_s"] == pytest.approx(s["rows_per_s"] * 1024)
    return s


def test_numpy_iteration(path: str) -> None:
    slow_loader, fast_loader = loaders(path)
    consume(slow_loader, 0.0)
    check(slow_loader.metrics, waiting=True)
    consume(fast_loader, 0.02, fast_loader.metrics)
    check(fast_loader.metrics, waiting=False, batches=ROWS // BATCH - 1)


def test_across_epochs_until_reset(path: str) -> None:
    _, loader = loaders(path)
    consume(loader, 0.0)
    consume(loader, 0.0)
    assert loader.metrics.snapshot()["batches"] == 2 * ROWS // BATCH  # not replaced by the second epoch
    loader.metrics.reset()
    assert loader.metrics.snapshot()["batches"] == 0
    consume(loader, 0.0)
    assert loader.metrics.snapshot()["batches"] == ROWS // BATCH


def test_torch(path: str) -> None:
    torch = pytest.importorskip("torch")
    slow_loader, fast_loader = loaders(path)
    for loader, waiting, pause in ((slow_loader, True, 0.0), (fast_loader, False, 0.02)):
        data = torch.utils.data.DataLoader(loader.to_torch(), batch_size=None)
        warm_up = None if waiting else loader.metrics
        assert consume(data, pause, warm_up) == ROWS // BATCH
        check(loader.metrics, waiting=waiting, batches=ROWS // BATCH - (not waiting))


def test_keras_dataset_and_callback(path: str, tmp_path: Path) -> None:
    pytest.importorskip("keras")
    import keras

    from npyfeed.keras import DataWaitLogger

    slow_loader, fast_loader = loaders(path)
    for loader, waiting, pause in ((slow_loader, True, 0.0), (fast_loader, False, 0.02)):
        dataset = loader.to_keras()
        dataset.on_epoch_begin()
        warm_up = None if waiting else loader.metrics
        assert consume((dataset[i] for i in range(len(dataset))), pause, warm_up) == ROWS // BATCH
        dataset.on_epoch_end()
        check(loader.metrics, waiting=waiting, batches=ROWS // BATCH - (not waiting))

    # Through fit: the callback puts each epoch's numbers into History and the JSON-lines file.
    slow_loader, _ = loaders(path)
    xy = npyfeed.Loader(
        (path, path), batch_size=BATCH, transform=lambda b: (slow(b)[0], b[1][:, :1]), num_threads=1, prefetch=1
    )
    model = keras.Sequential([keras.Input((256,)), keras.layers.Dense(1)])
    model.compile(loss="mse")
    lines = tmp_path / "wait.jsonl"
    logger = DataWaitLogger(xy.metrics, json_lines=lines, every_steps=8)
    history = model.fit(xy.to_keras(), epochs=2, callbacks=[logger], shuffle=False, verbose=0)
    assert len(history.history["data_wait_p50_s"]) == 2
    assert all(w >= 0.5 * SLOW for w in history.history["data_wait_p50_s"]), history.history
    assert history.history["data_batches"] == [ROWS // BATCH] * 2  # each epoch its own account
    records = [json.loads(line) for line in lines.read_text().splitlines()]
    assert [(r["epoch"], r.get("step")) for r in records] == [(0, 8), (0, 16), (0, None), (1, 8), (1, 16), (1, None)]


def test_histogram_is_bounded_and_percentiles_hold() -> None:
    m = DataWait()
    rng = np.random.default_rng(0)
    waits = rng.lognormal(mean=np.log(1e-3), sigma=1.0, size=20000)
    size = len(m._histogram)
    for w in waits:
        m.record_batch(float(w), rows=1, nbytes=8)
    assert len(m._histogram) == size  # memory does not grow with steps
    s = m.snapshot()
    for q, key in ((50, "wait_p50_s"), (95, "wait_p95_s"), (99, "wait_p99_s")):
        assert s[key] == pytest.approx(np.percentile(waits, q), rel=0.07), key
    assert s["wait_max_s"] == pytest.approx(waits.max())


def test_json_line() -> None:
    m = DataWait()
    m.record_batch(0.0, rows=4, nbytes=32)
    out = io.StringIO()
    m.write_json_line(out, epoch=3)
    m.write_json_line(out, epoch=4)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["epoch"] for line in lines] == [3, 4] and lines[0]["rows"] == 4


def test_keras_callback_logs_nothing_when_no_batch_was_counted(path: str) -> None:
    pytest.importorskip("keras")
    from npyfeed.errors import NpyfeedWarning
    from npyfeed.keras import DataWaitLogger

    logger = DataWaitLogger(DataWait())
    logs: dict[str, Any] = {"loss": 1.0}
    with pytest.warns(NpyfeedWarning, match="handed no batches"):
        logger.on_epoch_end(0, logs)
    assert logs == {"loss": 1.0}  # no zeros that would read as "never waited"


def test_tf_data(path: str) -> None:
    pytest.importorskip("tensorflow")
    slow_loader, fast_loader = loaders(path)
    for loader, waiting, pause in ((slow_loader, True, 0.0), (fast_loader, False, 0.02)):
        # One read at a time, one batch ahead: the slow transform's 20 ms is each batch's wait. The fast one reads
        # four batches ahead (tf.data's autotuned prefetch starts at one element).
        kw = {"num_parallel_calls": 1, "prefetch": 1} if waiting else {"prefetch": 4}
        dataset = loader.to_tf_dataset(data_wait=True, **kw)
        warm_up = None if waiting else loader.metrics
        assert consume(dataset, pause, warm_up) == ROWS // BATCH
        check(loader.metrics, waiting=waiting, batches=ROWS // BATCH - (not waiting), split=False)
        assert consume(dataset, pause) == ROWS // BATCH  # the next epoch adds to the account
        assert loader.metrics.snapshot()["batches"] == 2 * ROWS // BATCH - (not waiting)

    # A dataset dropped before the snapshot: what it counted is still there, then the account lets it go.
    slow_loader, _ = loaders(path)
    assert consume(slow_loader.to_tf_dataset(data_wait=True, num_parallel_calls=1, prefetch=1), 0.0) == ROWS // BATCH
    gc.collect()
    check(slow_loader.metrics, waiting=True, split=False)
    assert slow_loader.metrics.snapshot()["batches"] == ROWS // BATCH

    # Off by default: the dataset counts nothing.
    _, loader = loaders(path)
    assert consume(loader.to_tf_dataset(), 0.0) == ROWS // BATCH
    assert loader.metrics.snapshot()["batches"] == 0


def test_keras_fit_on_tf_dataset(path: str, tmp_path: Path) -> None:
    pytest.importorskip("tensorflow")
    import keras

    from npyfeed.keras import DataWaitLogger

    if keras.backend.backend() != "tensorflow":
        pytest.skip(f"Keras runs on {keras.backend.backend()}, not TensorFlow")
    # A transform far slower than a step of this tiny model, even on a loaded machine (where a step may take
    # several ms): every batch waits for most of it.
    slower = 0.1

    def transform(batch: Any) -> Any:
        time.sleep(slower)
        return batch[0], batch[1][:, :1]

    xy = npyfeed.Loader((path, path), batch_size=BATCH, transform=transform, num_threads=1, prefetch=1)
    model = keras.Sequential([keras.Input((256,)), keras.layers.Dense(1)])
    model.compile(loss="mse")
    lines = tmp_path / "wait.jsonl"
    logger = DataWaitLogger(xy.metrics, json_lines=lines)
    dataset = xy.to_tf_dataset(num_parallel_calls=1, prefetch=1, data_wait=True)
    history = model.fit(dataset, epochs=2, callbacks=[logger], shuffle=False, verbose=0)
    assert history.history["data_batches"] == [ROWS // BATCH] * 2, history.history
    assert all(w >= 0.25 * slower for w in history.history["data_wait_p50_s"]), history.history
    assert all(f > 0.25 for f in history.history["data_wait_fraction"]), history.history
    assert [json.loads(line)["epoch"] for line in lines.read_text().splitlines()] == [0, 1]


# JAX runs in a child process: a JAX backend in the test process would warn on every later fork (test_docs.py).
JAX_CHILD = """
import json, sys
import jax, numpy as np
sys.path[:0] = sys.argv[2:]
from test_observe import consume, loaders
from npyfeed.jax_arrays import global_batches
mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
slow_loader, fast_loader = loaders(sys.argv[1])
consume(global_batches(slow_loader, sharding), 0.0)
consume(global_batches(fast_loader, sharding), 0.02, fast_loader.metrics)
print(json.dumps([slow_loader.metrics.snapshot(), fast_loader.metrics.snapshot()]))
"""


def test_jax_global_batches(path: str) -> None:
    pytest.importorskip("jax")
    here = str(Path(__file__).parent)
    cmd = [sys.executable, "-c", JAX_CHILD, path, here, str(Path(here).parent / "src")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stderr[-4000:]
    slow_wait, fast_wait = (Snapshot(s) for s in json.loads(done.stdout.splitlines()[-1]))
    check(slow_wait, waiting=True)
    check(fast_wait, waiting=False, batches=ROWS // BATCH - 1)


class Snapshot:
    """A snapshot taken elsewhere, checked like an account here."""

    def __init__(self, snapshot: dict[str, Any]) -> None:
        self._snapshot = snapshot

    def snapshot(self) -> dict[str, Any]:
        return self._snapshot


def test_snapshot_names_its_shard(path: str) -> None:
    loader = npyfeed.Loader(path, batch_size=BATCH, shard=(1, 2))
    consume(loader, 0.0)
    s = loader.metrics.snapshot()
    assert (s["rank"], s["ranks"], s["batches"]) == (1, 2, ROWS // BATCH // 2)


def _rank_epochs(rank: int, ranks: int, path: str, directory: str) -> None:
    """A rank of a distributed run: two epochs of its shard, an account per epoch. Rank 1's transform is slower
    than its consumer; rank 0's reads are far faster than its 20 ms steps."""
    from npyfeed.loader.wait_ranks import rank_file

    slow_loader, fast_loader = loaders(path, shard=(rank, ranks))
    loader = slow_loader if rank == 1 else fast_loader
    for epoch in range(2):
        consume(loader, 0.0 if rank == 1 else 0.02)
        with rank_file(directory, loader.metrics.rank).open("a") as f:
            loader.metrics.write_json_line(f, epoch=epoch)
        loader.metrics.reset()


def test_ranks_merge(path: str, tmp_path: Path) -> None:
    from children import run_ranks
    from npyfeed.loader.wait_ranks import merge_ranks

    run_ranks(_rank_epochs, 2, path, str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wait-rank00000.jsonl", "wait-rank00001.jsonl"]
    merged = merge_ranks(tmp_path)
    per_rank, overall = merged["ranks"], merged["overall"]
    batches = ROWS // BATCH // 2  # per epoch and rank
    assert sorted(per_rank) == [0, 1]
    assert [per_rank[r]["accounts"] for r in (0, 1)] == [2, 2]
    assert [per_rank[r]["batches"] for r in (0, 1)] == [2 * batches] * 2
    assert overall["batches"] == 4 * batches and overall["rows"] == 4 * batches * BATCH
    assert merged["slowest_rank"] == 1  # its every batch waits for a 20 ms transform
    assert per_rank[1]["wait_p50_s"] >= 0.5 * SLOW > per_rank[0]["wait_p50_s"]
    # Overall, half the batches waited about SLOW: the p99 is rank 1's, the p50 between the two.
    assert overall["wait_p99_s"] >= 0.5 * SLOW
    assert per_rank[0]["wait_p50_s"] <= overall["wait_p50_s"] <= per_rank[1]["wait_p99_s"]
    assert overall["wait_s"] == pytest.approx(per_rank[0]["wait_s"] + per_rank[1]["wait_s"])
    assert overall["rows_per_s"] == pytest.approx(per_rank[0]["rows_per_s"] + per_rank[1]["rows_per_s"])


def test_ranks_merge_skips_running_totals_and_refuses_foreign_lines(tmp_path: Path) -> None:
    from npyfeed.errors import ConfigError
    from npyfeed.loader.wait_ranks import merge_ranks, rank_file

    m = DataWait(rank=3, ranks=4)
    m.record_batch(0.01, rows=4, nbytes=32)
    with rank_file(tmp_path, 3).open("a") as f:
        f.write(json.dumps({"epoch": 0, "step": 1, **m.snapshot()}) + "\n")  # every_steps: a running total
        m.write_json_line(f, epoch=0)
    merged = merge_ranks(tmp_path)
    assert list(merged["ranks"]) == [3] and merged["overall"]["batches"] == 1
    assert merged["overall"]["wait_p50_s"] == pytest.approx(0.01, rel=0.07)
    (tmp_path / "other.jsonl").write_text('{"loss": 1.0}\n')
    with pytest.raises(ConfigError, match=r"other.jsonl, line 1: no 'rank' and 'wait_histogram'"):
        merge_ranks(tmp_path)
