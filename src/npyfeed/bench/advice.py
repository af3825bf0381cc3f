"""Advice from a bench: the settings worth changing, judged from what :mod:`npyfeed.bench.run` measured.

Only what the numbers show: fixed settings (``num_threads``, ``prefetch``) that read at least 10% faster than the
run's own in trials timed the same way, and again in a rematch of the two (when the run autotuned, only then are
fixed settings worth recommending over the tuner), a block shuffle when a global one was latency-bound or slow, and
for object stores: a ``gap_bytes`` near what one request's latency costs in bytes of the link (merging a smaller gap
is cheaper than another request; a larger one costs more than it saves), more requests in flight when the store's
slots were full, more reads at once when they were idle (or more ``io_threads`` when the tuner reached them). The
result is Loader keyword arguments a program can pass (:attr:`Recommendation.loader`), each with its reason; a
setting equal to the one the bench ran with is never "recommended" as a change. What the tuner chose is a note, not
a change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from npyfeed.bench.run import BenchResult

__all__ = ["Recommendation", "recommend"]


@dataclass
class Recommendation:
    """``Loader(**loader)`` settings worth changing (``storage_options`` entries among them), with the reasons."""

    loader: dict[str, Any] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """What the run did that is no change to make (what autotuning chose)."""

    def lines(self) -> list[str]:
        """The advice as prose: one line per setting, or that the settings it ran with are the best measured;
        then the notes."""
        return (self.reasons or ["keep the settings it ran with (nothing measured did better)"]) + self.notes

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

    def option(key: str, value: Any, why: str) -> None:
        options = rec.loader.setdefault("storage_options", {})
        options[key] = value
        advice.append(f"storage_options[{key!r}]={value!r}: {why}")

    own = result.own_trial()
    tuned = result.autotune and bool(result.tuning)
    if result.trials and own is not None:  # trials against the trial at the run's own settings: timed alike
        best = max(result.trials, key=lambda t: t["rows_per_s"])
        # It must win its trial and, when there was one, its rematch (a short trial on a busy machine is noisy).
        rematch = best.get("rematch_rows_per_s", math.inf) > _BEATS * own.get("rematch_rows_per_s", 0.0)
        if best is not own and best["rows_per_s"] > _BEATS * own["rows_per_s"] and rematch:
            against = "autotuned" if own.get("autotune") else f"num_threads={result.num_threads}"
            why = f"{best['rows_per_s']:,.0f} rows/s in its trial against {own['rows_per_s']:,.0f} {against}"
            if own.get("autotune") and best.get("prefetch") is not None:
                # Both, so tuning is off: the fixed pair is what beat the tuner (even a num_threads it started at)
                rec.loader.update(num_threads=best["num_threads"], prefetch=best["prefetch"])
                advice.append(f"num_threads={best['num_threads']}, prefetch={best['prefetch']}: {why}")
            else:
                change("num_threads", best["num_threads"], why)
                if best.get("prefetch") is not None:
                    change("prefetch", best["prefetch"], why)
    if tuned:
        t = result.tuning
        rec.notes.append(
            f"autotune is on: it chose depth {t['depth']} of {t['max_depth']} (reads of {result.batch_size}-row "
            f"batches ahead) and {t['concurrency']} of {t['max_concurrency']} reads at once; fixed settings are "
            "recommended only when one beat it in the trials"
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
    judged = req is not None and req.requests >= _JUDGED_REQUESTS
    if judged and result.shuffle == "global" and "shuffle" not in rec.loader:
        _gap_advice(result, req, option)
    tuning_reads = tuned and result.tuning["tunes_concurrency"]
    if req is not None and judged and slow:
        idle = f"only {req.mean_in_flight:.1f} of {req.max_concurrency} requests were in flight on average"
        if req.mean_in_flight >= _BUSY_SHARE * req.max_concurrency:
            option(
                "max_concurrency",
                2 * req.max_concurrency,
                f"latency-bound, requests wait for the {req.max_concurrency} slots ({req.mean_in_flight:.1f} in "
                f"flight on average, {req.latency_p50_ms:.1f} ms p50)",
            )
        elif req.mean_in_flight < _IDLE_SHARE * req.max_concurrency and not tuning_reads:
            change(
                "num_threads",
                2 * result.num_threads,
                f"{idle}; more reads at once hide the {req.latency_p50_ms:.1f} ms latency",
            )
        elif req.mean_in_flight < _IDLE_SHARE * req.max_concurrency:
            t = result.tuning
            if t["concurrency"] >= t["max_concurrency"] and result.io_threads:
                change(
                    "io_threads",
                    min(_MAX_IO_THREADS, 2 * result.io_threads),
                    f"{idle}, and autotune reached its limit of {t['max_concurrency']} reads at once (io_threads)",
                )
    return rec


def _gap_advice(result: BenchResult, req: Any, option: Any) -> None:
    """``gap_bytes`` near one request's latency times the link's sequential speed (the bytes a request's latency
    could have carried), as a power of two, when the run's is at least 4x away from it."""
    link = result.raw_bytes_per_s
    if link <= 0 or req.latency_p50_ms <= 0:
        return
    carried = req.latency_p50_ms / 1e3 * link
    best = 1 << max(0, round(math.log2(max(carried, 1))))
    best = max(_MIN_GAP, min(_MAX_GAP, best))
    if best >= 4 * max(req.gap_bytes, 1) or 4 * best <= req.gap_bytes:
        option(
            "gap_bytes",
            best,
            f"a request took {req.latency_p50_ms:.1f} ms (p50) and the link reads {link / 1e6:,.0f} MB/s: fetching "
            f"a gap of up to {best:,} B between rows costs about what another request costs (gap_bytes was "
            f"{req.gap_bytes:,}; {req.rows_per_request:.1f} rows per request, "
            f"{req.bytes_fetched / max(req.bytes_asked, 1):.2f}x the bytes asked)",
        )


# A global shuffle merging fewer rows than this per request is latency-bound on an object store.
_FEW_ROWS_PER_REQUEST = 4.0
# Mean requests in flight over the limit: above _BUSY_SHARE the slots are the bottleneck; below _IDLE_SHARE the
# loader does not ask for enough at once.
_BUSY_SHARE = 0.75
_IDLE_SHARE = 0.25
_BEATS = 1.1  # a fixed setting beats the run's own when it reads this much faster
_JUDGED_REQUESTS = 64  # fewer requests say nothing about concurrency
_MAX_IO_THREADS = 64
_MIN_GAP, _MAX_GAP = 4 << 10, 16 << 20  # gap_bytes advised: a page at least, at most two default requests
