"""Advice from a bench: the settings worth changing, judged from what :mod:`npyfeed.bench.run` measured.

Only what the numbers show: a thread count that read faster, a block shuffle when a global one was latency-bound
or slow, more requests in flight or more reads at once when the object store's slots were full or idle.
"""

from __future__ import annotations

from npyfeed.bench.run import BenchResult

__all__ = ["recommend"]


def recommend(result: BenchResult) -> list[str]:
    """Settings worth using, from what was measured."""
    advice = []
    if result.trials:
        best = max(result.trials, key=lambda t: t["rows_per_s"])
        if best["rows_per_s"] > 1.1 * result.rows_per_s:
            advice.append(f"num_threads={best['num_threads']} ({best['rows_per_s']:,.0f} rows/s)")
    req = result.requests
    slow = result.bytes_per_s < 0.25 * result.raw_bytes_per_s
    if result.shuffle == "global" and req is not None and (slow or req.rows_per_request < _FEW_ROWS_PER_REQUEST):
        advice.append(
            f'shuffle="block": a global shuffle over an object store took {req.rows_per_request:.1f} rows per '
            f"request ({req.requests_per_s:,.0f} requests/s at {req.latency_p50_ms:.1f} ms p50) and read at "
            f"{result.bytes_per_s / max(result.raw_bytes_per_s, 1):.0%} of one sequential GET; a block shuffle "
            "fetches whole MiB-sized blocks, once each"
        )
    elif result.shuffle == "global" and slow:
        advice.append(
            'shuffle="block": a global shuffle reads at '
            f"{result.bytes_per_s / result.raw_bytes_per_s:.0%} of the sequential speed of these files"
        )
    if req is not None and req.requests >= _JUDGED_REQUESTS and slow:
        if req.mean_in_flight >= _BUSY_SHARE * req.max_concurrency:
            advice.append(
                f"storage_options={{'max_concurrency': {2 * req.max_concurrency}}}: latency-bound, requests wait "
                f"for the {req.max_concurrency} slots ({req.mean_in_flight:.1f} in flight on average, "
                f"{req.latency_p50_ms:.1f} ms p50)"
            )
        elif req.mean_in_flight < _IDLE_SHARE * req.max_concurrency:
            advice.append(
                f"num_threads={2 * result.num_threads} or a larger prefetch: only {req.mean_in_flight:.1f} of "
                f"{req.max_concurrency} requests were in flight on average, more reads at once hide the "
                f"{req.latency_p50_ms:.1f} ms latency"
            )
    return advice or ["the defaults"]


# A global shuffle merging fewer rows than this per request is latency-bound on an object store.
_FEW_ROWS_PER_REQUEST = 4.0
# Mean requests in flight over the limit: above _BUSY_SHARE the slots are the bottleneck; below _IDLE_SHARE the
# loader does not ask for enough at once.
_BUSY_SHARE = 0.75
_IDLE_SHARE = 0.25
_JUDGED_REQUESTS = 64  # fewer requests say nothing about concurrency
