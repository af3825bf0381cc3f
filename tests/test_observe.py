"""The data wait (loader.metrics): a slow transform shows up as waiting, a fast loader as almost none, through
``iter(loader)``, ``to_torch``, ``to_keras`` (and its Keras callback); bounded memory; JSON lines."""

from __future__ import annotations

import io
import json
import os
import time
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
def path(tmp_path_factory: pytest.TempPathFactory) -> str:
    p = str(tmp_path_factory.mktemp("observe") / "x.npy")
    np.save(p, np.arange(ROWS * 256, dtype=np.float32).reshape(ROWS, 256))
    return p


def slow(batch: Any) -> Any:
    time.sleep(SLOW)
    return batch


def loaders(path: str) -> tuple[npyfeed.Loader, npyfeed.Loader]:
    """(a loader whose transform is slower than the consumer, one whose reads are far faster than it)."""
    kw: dict[str, Any] = {"batch_size": BATCH, "num_threads": 1, "io_threads": 1, "prefetch": 1}
    return npyfeed.Loader(path, transform=slow, **kw), npyfeed.Loader(path, batch_size=BATCH, prefetch=4)


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


def check(metrics: DataWait, *, waiting: bool, batches: int = ROWS // BATCH) -> dict[str, Any]:
    s = metrics.snapshot()
    assert set(s) == set(FIELDS)
    assert s["batches"] == batches and s["rows"] == batches * BATCH and s["bytes"] == batches * BATCH * 1024
    if waiting:  # each batch waits about SLOW for its transform, 15 of 16 in steady state
        assert s["wait_s"] >= 0.5 * batches * SLOW, s
        assert s["wait_p50_s"] >= 0.5 * SLOW and s["wait_fraction"] > 0.5, s
        assert s["transform_s"] >= batches * SLOW * 0.9, s
    else:  # reads of 4 MiB far faster than the 20 ms step: after the first, batches are ready when asked for
        assert s["wait_p50_s"] < 1e-3 and s["wait_p95_s"] < 5e-3, s
        assert s["wait_fraction"] < 0.05, s
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
