"""The wait stage of ``to_tf_dataset(data_wait=True)`` (npyfeed.adapters.tf_wait): its maps run inline in the
consumer's ``GetNext`` (the cheap path), and each element's own wait is counted: the slow batches of a source wait,
its fast ones do not, with the inline maps and with the ``Dataset.map`` fallback alike."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")

import npyfeed  # noqa: E402
from npyfeed.adapters import tf_wait  # noqa: E402
from npyfeed.loader.metrics import bucket  # noqa: E402

ROWS, BATCH = 16 * 1024, 1024  # 16 batches of 1 MiB
SLOW = 0.2  # seconds every 4th batch's transform sleeps: its wait, whatever the load (a sleep only gets longer)


@pytest.fixture(scope="module")
def path(float_rows: Callable[[str, int], str]) -> str:
    return float_rows("tf_wait", ROWS)


def graph(ds: Any) -> Any:
    g = tf.compat.v1.GraphDef()
    ignore = 1  # ExternalStatePolicy.IGNORE: the numpy_function reads are external state
    g.ParseFromString(
        tf.raw_ops.DatasetToGraphV2(input_dataset=ds._variant_tensor, external_state_policy=ignore).numpy()
    )
    return g


def test_the_stage_runs_inline(path: str) -> None:
    # Both maps on the single-threaded executor, the asks from a range (no scan): no function call hands its ops
    # to the inter-op pool. Fails if TensorFlow drops the private argument (the stage then falls back to
    # Dataset.map, 4x the CPU per element: benchmarks/RESULTS.md), so that an upgrade is looked at.
    assert tf_wait.inline_maps()
    loader = npyfeed.Loader(path, batch_size=BATCH)
    off_nodes = graph(loader.to_tf_dataset()).node
    off = [n for n in off_nodes if n.op == "MapDataset"]
    nodes = graph(loader.to_tf_dataset(data_wait=True)).node
    on = [n for n in nodes if n.op == "MapDataset"]
    inline = [n for n in on if not n.attr["use_inter_op_parallelism"].b]
    assert len(on) == len(off) + 2 and len(inline) == 2, on  # the stamp on asking and the count on arrival
    assert [n.op for n in nodes if n.op == "ScanDataset"] == [n.op for n in off_nodes if n.op == "ScanDataset"]


def every_fourth_slow() -> Any:
    calls = [0]

    def transform(batch: Any) -> Any:
        calls[0] += 1
        if calls[0] % 4 == 1:  # every 4th call (one read at a time: in order; the first probes the spec)
            time.sleep(SLOW)
        return batch

    return transform


@pytest.mark.parametrize("inline", [True, False], ids=["inline", "Dataset.map"])
def test_each_element_its_own_wait(path: str, inline: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not inline:
        monkeypatch.setattr(tf_wait, "inline_maps", lambda: False)
    loader = npyfeed.Loader(path, batch_size=BATCH, transform=every_fourth_slow(), num_threads=1, prefetch=1)
    dataset = loader.to_tf_dataset(data_wait=True, num_parallel_calls=1, prefetch=1)
    assert sum(1 for _ in dataset) == ROWS // BATCH  # no pause: the consumer asks as soon as it has a batch
    s = loader.metrics.snapshot()
    histogram = loader.metrics.histogram()
    slow = sum(c for b, c in histogram.items() if b >= bucket(SLOW / 2))
    assert s["batches"] == 16 and s["rows"] == ROWS, s
    assert slow >= 4, histogram  # the four slow batches each waited about SLOW (less what was read ahead)
    assert s["wait_s"] >= 4 * SLOW / 2 and s["wait_max_s"] >= SLOW / 2, s
    # The twelve others are 1 MiB reads, an order of magnitude faster than SLOW / 2 even on a loaded machine: the
    # median batch is one of them.
    assert s["wait_p50_s"] < SLOW / 2, s
    assert slow <= 8, histogram


def test_slow_source_waits_fast_one_does_not(path: str) -> None:
    # The same consumer (a 20 ms step) over a source slower than it and one far faster, in one test: the slow one's
    # typical wait is its transform's, the fast one's a small fraction of it.
    step = 0.02

    def slow(batch: Any) -> Any:
        time.sleep(4 * step)  # a wait of ~3 steps: a consumer slowed by load still waits
        return batch

    waits = {}
    for name, kw in (("slow", {"transform": slow, "num_threads": 1}), ("fast", {})):
        loader = npyfeed.Loader(path, batch_size=BATCH, prefetch=4, **kw)
        # One read at a time: the slow transform's 40 ms is not spread over parallel reads.
        for n, _ in enumerate(loader.to_tf_dataset(data_wait=True, num_parallel_calls=1, prefetch=4), 1):
            time.sleep(step)
            if n == 4:  # past the pipeline's start (threads, the first reads, the slow one's head start)
                loader.metrics.reset()
        waits[name] = loader.metrics.snapshot()
    slow_s, fast_s = waits["slow"], waits["fast"]
    assert slow_s["batches"] == fast_s["batches"] == ROWS // BATCH - 4
    assert slow_s["wait_p50_s"] >= step / 2 and slow_s["wait_fraction"] > 0.2, slow_s
    assert fast_s["wait_p50_s"] < slow_s["wait_p50_s"] / 4, (fast_s, slow_s)
    assert fast_s["wait_s"] < slow_s["wait_s"] / 4, (fast_s, slow_s)
