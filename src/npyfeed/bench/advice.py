"""Advice from a bench: the settings worth changing, judged from what :mod:`npyfeed.bench.run` measured.

Only what the numbers show: a thread count that read faster than the run's own in trials timed the same way, a
block shuffle when a global one was latency-bound or slow, more requests in flight or more reads at once when the
object store's slots were full or idle. The result is Loader keyword arguments a program can pass
(:attr:`Recommendation.loader`), each with its reason; a setting equal to the one the bench ran with is never
"recommended" as a change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from npyfeed.bench.run import BenchResult

__all__ = ["Recommendation", "recommend"]


@dataclass
class Recommendation:
    """``Loader(**loader)`` settings worth changing (``storage_options`` entries among them), with the reasons."""

    loader: dict[str, Any] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The advice as prose: one line per setting, or that the settings it ran with are the best measured."""
        return self.reasons or ["keep the settings it ran with (nothing measured did better)"]

    def as_dict(self) -> dict[str, Any]:
        return {"loader": self.loader, "reasons": self.lines()}


def recommend(result: BenchResult) -> Recommendation:
    """Settings worth changing from those the bench ran with, from what was measured."""
    rec = Recommendation()
    advice = rec.reasons

    def change(key: str, value: Any, why: str) -> None:
        if key not in rec.loader and getattr(result, key, None) != value:
            rec.loader[key] = value
            advice.append(f"{key}={value!r}: {why}")

    same = [t for t in result.trials if t["num_threads"] == result.num_threads]
    if result.trials and same:  # trials against the trial at the run's own thread count: timed the same way
        best = max(result.trials, key=lambda t: t["rows_per_s"])
        if best["rows_per_s"] > 1.1 * same[0]["rows_per_s"]:
            change(
                "num_threads",
                best["num_threads"],
                f"{best['rows_per_s']:,.0f} rows/s in its trial against {same[0]['rows_per_s']:,.0f} with "
                f"num_threads={result.num_threads}",
            )
    req = result.requests
    slow = result.bytes_per_s < 0.25 * result.raw_bytes_per_s
    if result.shuffle == "global" and req is not None and (slow or req.rows_per_request < _FEW_ROWS_PER_REQUEST):
        change(
            "shuffle",
            "block",
            f"a global shuffle over an object store took {req.rows_per_request:.1f} rows per "
            f"request ({req.requests_per_s:,.0f} requests/s at {req.latency_p50_ms:.1f} ms p50) and read at "
            f"{result.bytes_per_s / max(result.raw_bytes_per_s, 1):.0%} of one sequential GET; a block shuffle "
            "fetches whole MiB-sized blocks, once each",
        )
    elif result.shuffle == "global" and slow:
        change(
            "shuffle",
            "block",
            f"a global shuffle read at {result.bytes_per_s / result.raw_bytes_per_s:.0%} of the sequential speed "
            "of these files",
        )
    if req is not None and req.requests >= _JUDGED_REQUESTS and slow:
        if req.mean_in_flight >= _BUSY_SHARE * req.max_concurrency:
            change(
                "storage_options",
                {"max_concurrency": 2 * req.max_concurrency},
                f"latency-bound, requests wait for the {req.max_concurrency} slots ({req.mean_in_flight:.1f} in "
                f"flight on average, {req.latency_p50_ms:.1f} ms p50)",
            )
        elif req.mean_in_flight < _IDLE_SHARE * req.max_concurrency:
            change(
                "num_threads",
                2 * result.num_threads,
                f"only {req.mean_in_flight:.1f} of {req.max_concurrency} requests were in flight on average; more "
                f"reads at once hide the {req.latency_p50_ms:.1f} ms latency",
            )
    return rec


# A global shuffle merging fewer rows than this per request is latency-bound on an object store.
_FEW_ROWS_PER_REQUEST = 4.0
# Mean requests in flight over the limit: above _BUSY_SHARE the slots are the bottleneck; below _IDLE_SHARE the
# loader does not ask for enough at once.
_BUSY_SHARE = 0.75
_IDLE_SHARE = 0.25
_JUDGED_REQUESTS = 64  # fewer requests say nothing about concurrency
