"""What a store's requests cost: counts, bytes, retries, requests in flight and a fixed-size latency histogram."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

__all__ = ["RequestStats"]

# Latency histogram: log-spaced bins from 10 us to 1,000 s, 40 per decade (each bin 6% wide), so percentiles
# cost a fixed 321 counters however many requests a long job makes.
_LAT_LOW, _LAT_PER_DECADE, _LAT_BINS = 1e-5, 40, 8 * 40 + 1


@dataclass
class RequestStats:
    """What a store's requests cost so far (``npyfeed bench`` reports it); fixed size however long it runs.

    Updated on the loop thread only; read from any thread (a snapshot may lag by a request).
    """

    requests: int = 0
    """Requests completed (answers received in full)."""
    started: int = 0
    """Requests sent, completed or not (a cancelled or failed one too)."""
    bytes: int = 0
    retries: int = 0
    seconds: float = 0.0
    """Sum of request latencies (request sent to last byte received): divided by a wall time, the mean number of
    requests in flight over it (Little's law)."""
    in_flight: int = 0
    max_in_flight: int = 0
    histogram: list[int] = field(default_factory=lambda: [0] * _LAT_BINS)
    """Requests per latency bin (bin ``i`` holds latencies up to ``10 us x 10 ** (i / 40)``)."""

    def began(self) -> None:
        self.started += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def ended(self) -> None:
        self.in_flight -= 1

    def record(self, nbytes: int, seconds: float) -> None:
        self.requests += 1
        self.bytes += nbytes
        self.seconds += seconds
        ratio = max(seconds, _LAT_LOW) / _LAT_LOW
        self.histogram[min(_LAT_BINS - 1, math.ceil(math.log10(ratio) * _LAT_PER_DECADE - 1e-9))] += 1

    def copy(self) -> RequestStats:
        return replace(self, histogram=list(self.histogram))

    def since(self, before: RequestStats) -> RequestStats:
        """What was recorded after ``before`` (a :meth:`copy` taken earlier); ``max_in_flight`` is since start."""
        return RequestStats(
            requests=self.requests - before.requests,
            started=self.started - before.started,
            bytes=self.bytes - before.bytes,
            retries=self.retries - before.retries,
            seconds=self.seconds - before.seconds,
            in_flight=self.in_flight,
            max_in_flight=self.max_in_flight,
            histogram=[a - b for a, b in zip(self.histogram, before.histogram, strict=True)],
        )

    def latency(self, quantile: float) -> float:
        """Seconds under which ``quantile`` of the requests finished (the upper edge of its bin; 0 if none)."""
        total = sum(self.histogram)
        if total == 0:
            return 0.0
        rank = quantile * total
        seen = 0
        for i, count in enumerate(self.histogram):
            seen += count
            if count and seen >= rank:
                return _LAT_LOW * 10 ** (i / _LAT_PER_DECADE)
        return _LAT_LOW * 10 ** ((_LAT_BINS - 1) / _LAT_PER_DECADE)  # pragma: no cover - rank <= total

    def snapshot(self) -> dict[str, float]:
        return {
            "requests": self.requests,
            "bytes": self.bytes,
            "retries": self.retries,
            "latency_p50_ms": self.latency(0.5) * 1e3,
            "latency_p99_ms": self.latency(0.99) * 1e3,
            "max_in_flight": self.max_in_flight,
        }
