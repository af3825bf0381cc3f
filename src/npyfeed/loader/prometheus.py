"""``loader.metrics`` as a Prometheus text endpoint (the ``prometheus`` extra: ``pip install 'npyfeed[prometheus]'``).

:func:`serve_prometheus` serves one account on ``http://ADDR:PORT/metrics`` from a daemon thread (the maintained
``prometheus_client``'s server, with a registry of its own: nothing is added to the process's default registry).
Every scrape reads a fresh :meth:`DataWait.snapshot`, so the numbers are those of the account at that moment
(tf.data's counts included), labelled with the account's ``rank`` and any ``labels`` given:

- counters ``npyfeed_data_batches_total``, ``_rows_total``, ``_bytes_total``, ``_wait_seconds_total``,
  ``_waited_batches_total``, ``_read_seconds_total``, ``_transform_seconds_total``, ``_queue_seconds_total``
  (``metrics.reset()`` shows as a counter reset, which Prometheus' ``rate()`` handles);
- the histogram ``npyfeed_data_batch_wait_seconds`` of the wait per batch (buckets every half decade from 1 µs to
  1000 s);
- gauges ``npyfeed_data_wait_fraction``, ``_rows_per_second``, ``_bytes_per_second``, ``_depth``, and
  ``npyfeed_data_wait_quantile_seconds{quantile="0.5"|"0.95"|"0.99"}``.

Nothing is served unless this is called: the endpoint is off by default.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from typing import Any

from npyfeed.errors import ConfigError
from npyfeed.loader.metrics import BUCKET_EDGES, DataWait

__all__ = ["PrometheusEndpoint", "serve_prometheus"]

_HALF_DECADE = 10  # histogram buckets per exported bucket (20 per decade in the account)
_COUNTERS = (
    ("batches", "batches", "batches handed to the consumer"),
    ("rows", "rows", "rows handed to the consumer"),
    ("bytes", "bytes", "bytes handed to the consumer, as read"),
    ("wait_seconds", "wait_s", "seconds the consumer waited for data"),
    ("waited_batches", "waited_batches", "batches the consumer waited more than 0.1 ms for"),
    ("read_seconds", "read_s", "seconds reads spent on storage, summed over read threads"),
    ("transform_seconds", "transform_s", "seconds spent in the transform, summed over read threads"),
    ("queue_seconds", "queue_s", "seconds finished reads waited for the consumer"),
)
_GAUGES = (
    ("wait_fraction", "wait_fraction", "share of the time the consumer waited for data"),
    ("rows_per_second", "rows_per_s", "rows the consumer received per second"),
    ("bytes_per_second", "bytes_per_s", "bytes the consumer received per second"),
    ("depth", "depth", "reads kept ahead of the consumer"),
)


def _prometheus() -> Any:
    try:
        import prometheus_client
        import prometheus_client.core
    except ImportError as e:
        raise ImportError(
            "serve_prometheus needs prometheus_client: pip install 'npyfeed[prometheus]'", name=e.name
        ) from e
    return prometheus_client


class _Collector:
    """Turns a snapshot of the account into metric families at every scrape."""

    def __init__(self, metrics: DataWait, labels: Mapping[str, str], prefix: str) -> None:
        self.metrics, self.prefix = metrics, prefix
        self.names = ["rank", *labels]
        self.extra = [str(v) for v in labels.values()]

    def collect(self) -> Iterator[Any]:
        core = _prometheus().core
        snapshot = self.metrics.snapshot()
        histogram = self.metrics.histogram()
        values = [str(snapshot["rank"]), *self.extra]
        p = self.prefix
        for name, key, doc in _COUNTERS:
            counter = core.CounterMetricFamily(p + name, doc, labels=self.names)
            counter.add_metric(values, snapshot[key])
            yield counter
        for name, key, doc in _GAUGES:
            gauge = core.GaugeMetricFamily(p + name, doc, labels=self.names)
            gauge.add_metric(values, snapshot[key])
            yield gauge
        quantiles = core.GaugeMetricFamily(
            p + "wait_quantile_seconds", "the consumer's wait per batch, percentiles", labels=[*self.names, "quantile"]
        )
        for q in ("0.5", "0.95", "0.99"):
            quantiles.add_metric([*values, q], snapshot[f"wait_p{q[2:].ljust(2, '0')}_s"])
        yield quantiles
        # Bucket k of the account holds waits below BUCKET_EDGES[k]: the cumulative count up to k is "le" that edge.
        counts = [histogram.get(b, 0) for b in range(len(BUCKET_EDGES) + 1)]
        cumulative = list(itertools.accumulate(counts))
        buckets = [(f"{BUCKET_EDGES[k]:.6g}", cumulative[k]) for k in range(0, len(BUCKET_EDGES), _HALF_DECADE)]
        buckets.append(("+Inf", cumulative[-1]))
        family = core.HistogramMetricFamily(
            p + "batch_wait_seconds", "the consumer's wait per batch", labels=self.names
        )
        family.add_metric(values, buckets, sum_value=snapshot["wait_s"])
        yield family


class PrometheusEndpoint:
    """A running endpoint: :attr:`url` to scrape, :meth:`close` to stop it (also a context manager)."""

    def __init__(self, server: Any, thread: Any, addr: str) -> None:
        self._server, self._thread = server, thread
        self.port: int = server.server_port
        self.url = f"http://{addr}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and free the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> PrometheusEndpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_prometheus(
    metrics: DataWait,
    *,
    port: int = 0,
    addr: str = "127.0.0.1",
    labels: Mapping[str, str] | None = None,
    prefix: str = "npyfeed_data_",
) -> PrometheusEndpoint:
    """Serve ``metrics`` (a ``loader.metrics``) as Prometheus text on ``http://addr:port/metrics``.

    Args:
        metrics: the account to serve.
        port: the TCP port (``0``: a free one, see :attr:`PrometheusEndpoint.port`).
        addr: the address to listen on (default: this machine only; ``"0.0.0.0"`` for a scraper elsewhere).
        labels: constant labels added to every sample (e.g. ``{"job_name": "resnet"}``), beside ``rank``.
        prefix: the metric names' prefix.
    """
    prometheus = _prometheus()
    labels = dict(labels or {})
    if "rank" in labels:
        raise ConfigError("labels: 'rank' is the account's own label (metrics.rank); use another name")
    registry = prometheus.CollectorRegistry(auto_describe=False)
    registry.register(_Collector(metrics, labels, prefix))
    server, thread = prometheus.start_http_server(port, addr=addr, registry=registry)
    return PrometheusEndpoint(server, thread, addr)
