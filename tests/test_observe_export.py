"""The data wait leaving the process: a Prometheus endpoint scraped over HTTP on 127.0.0.1 and parsed, and the
``npyfeed plot-wait`` picture drawn from JSON lines of running totals."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

import npyfeed
from npyfeed.cli import main
from npyfeed.cli.plot_wait import step_waits
from npyfeed.errors import ConfigError
from npyfeed.loader.prometheus import serve_prometheus

BATCHES, BATCH, SLOW = 8, 4096, 0.02  # batches of 4 MiB: one per read task (Loader.batches_per_read)


@pytest.fixture(scope="module")
def path(tmp_path_factory: pytest.TempPathFactory) -> str:
    p = str(tmp_path_factory.mktemp("export") / "x.npy")
    np.save(p, np.ones((BATCHES * BATCH, 256), dtype=np.float32))
    return p


def slow(batch: Any) -> Any:
    time.sleep(SLOW)
    return batch


def slow_loader(path: str, **kw: Any) -> npyfeed.Loader:
    """Every batch waits about SLOW for its transform: one read at a time, one ahead."""
    return npyfeed.Loader(path, batch_size=BATCH, transform=slow, num_threads=1, io_threads=1, prefetch=1, **kw)


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the endpoint's text: (name, sorted labels) -> value."""
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_prometheus_endpoint(path: str) -> None:
    loader = slow_loader(path, shard=(0, 1))
    with serve_prometheus(loader.metrics, labels={"job_name": "test"}) as endpoint:
        assert endpoint.url == f"http://127.0.0.1:{endpoint.port}/metrics" and endpoint.port > 0
        before = scrape(endpoint.url)
        for _ in loader:
            pass
        after = scrape(endpoint.url)
    labels = (("job_name", "test"), ("rank", "0"))
    assert before[("npyfeed_data_batches_total", labels)] == 0
    assert after[("npyfeed_data_batches_total", labels)] == BATCHES
    assert after[("npyfeed_data_rows_total", labels)] == BATCHES * BATCH
    assert after[("npyfeed_data_bytes_total", labels)] == BATCHES * BATCH * 1024
    assert after[("npyfeed_data_transform_seconds_total", labels)] >= 0.9 * BATCHES * SLOW
    assert after[("npyfeed_data_wait_fraction", labels)] > 0.5
    p50 = after[("npyfeed_data_wait_quantile_seconds", tuple(sorted((*labels, ("quantile", "0.5")))))]
    assert p50 >= 0.5 * SLOW
    # The histogram: cumulative buckets up to +Inf, which holds every batch; most waited over a millisecond.
    buckets = sorted(
        (float(dict(key)["le"]), value)
        for (name, key), value in after.items()
        if name == "npyfeed_data_batch_wait_seconds_bucket"
    )
    assert buckets[-1] == (float("inf"), BATCHES)
    assert [count for _, count in buckets] == sorted(count for _, count in buckets)
    assert max(count for le, count in buckets if le <= 1e-3) <= BATCHES // 2
    assert min(count for le, count in buckets if le >= 1.0) == BATCHES
    assert after[("npyfeed_data_batch_wait_seconds_count", labels)] == BATCHES
    assert after[("npyfeed_data_batch_wait_seconds_sum", labels)] == pytest.approx(
        after[("npyfeed_data_wait_seconds_total", labels)]
    )
    with pytest.raises(urllib.error.URLError):  # closed: the port no longer answers
        urllib.request.urlopen(endpoint.url, timeout=5)


def test_prometheus_refuses_a_rank_label(path: str) -> None:
    with pytest.raises(ConfigError, match="'rank' is the account's own label"):
        serve_prometheus(npyfeed.Loader(path, batch_size=BATCH).metrics, labels={"rank": "3"})


def test_plot_wait(path: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    loader = slow_loader(path)
    lines = tmp_path / "wait.jsonl"
    with lines.open("w") as f:
        for epoch in range(2):
            loader.metrics.reset()
            for step, _ in enumerate(loader, 1):
                loader.metrics.write_json_line(f, epoch=epoch, step=step)
    points = step_waits([json.loads(line) for line in lines.read_text().splitlines()])
    assert [(e, s) for e, s, _, _ in points] == [(e, s) for e in (0, 1) for s in range(1, BATCHES + 1)]
    assert np.median([wait for _, _, wait, _ in points]) >= 0.5 * SLOW  # each step waited for its transform
    assert all(step >= wait >= 0 for _, _, wait, step in points)
    png = tmp_path / "wait.png"
    assert main(["plot-wait", str(lines), "-o", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"{BATCHES * 2} intervals over 2 epochs" in capsys.readouterr().out


def test_plot_wait_needs_running_totals(path: str, tmp_path: Path) -> None:
    lines = tmp_path / "epochs.jsonl"
    loader = npyfeed.Loader(path, batch_size=BATCH)
    for _ in loader:
        pass
    with lines.open("w") as f:
        loader.metrics.write_json_line(f, epoch=0)  # a whole account, no 'step'
    with pytest.raises(ConfigError, match="no running totals"):
        main(["plot-wait", str(lines), "-o", str(tmp_path / "x.png")])
