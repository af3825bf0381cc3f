"""``npyfeed bench FILE...``: an epoch of the Loader measured against the raw read speed of the same files,
with advice (see :mod:`npyfeed.bench`)."""

from __future__ import annotations

import argparse
import json
import sys

from npyfeed.errors import NpyfeedError
from npyfeed.storage.urls import redact

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    from npyfeed.bench.advice import recommend
    from npyfeed.bench.run import run_bench

    source = args.files[0] if len(args.files) == 1 else tuple(args.files)
    try:
        result = run_bench(
            source,
            batch_size=args.batch_size,
            shuffle=args.shuffle,
            num_threads=args.threads,
            prefetch=args.prefetch,
            cold=args.cold,
            epochs=args.epochs,
            max_seconds=args.seconds,
            progress=not args.json and sys.stderr.isatty(),
            sweep=not args.no_sweep,
            storage_options=dict(args.storage_option) or None,
            autotune=False if args.no_autotune else None,
        )
    except NpyfeedError as e:
        print(f"npyfeed bench: {redact(e)}", file=sys.stderr)
        return 1
    except OSError as e:
        print(redact(f"npyfeed bench: {e.filename or ''}: {e.strerror or e}"), file=sys.stderr)
        return 1
    if args.json:
        advice = recommend(result)
        print(json.dumps({**result.as_dict(), "recommended": advice.loader, "advice": advice.lines()}, indent=2))
        return 0
    mb = 1e6
    print(f"files           {redact(', '.join(args.files))}")
    print(
        f"settings        batch_size={result.batch_size} shuffle={result.shuffle} threads={result.num_threads} "
        f"prefetch={'auto' if result.prefetch is None else result.prefetch} {'cold' if result.cold else 'warm'} "
        f"autotune={'on' if result.autotune else 'off'}"
    )
    if result.autotune:
        t = result.tuning
        print(
            f"autotune        depth {t['depth']} of {t['max_depth']} reads ahead, {t['concurrency']} of "
            f"{t['max_concurrency']} reads at once ({t['grown']} steps taken, {t['undone']} undone, {t['shrunk']} "
            "given back)"
        )
    print(f"rows            {result.rows:,} in {result.seconds:.2f} s")
    print(f"throughput      {result.rows_per_s:,.0f} rows/s, {result.bytes_per_s / mb:,.0f} MB/s")
    req = result.requests
    raw_how = "" if req is None else f", {req.raw_requests} ranged GET(s) from the start of each object"
    share = result.raw_share
    why = f", faster: {result.num_threads} read threads at once" if share > 1 else ""
    print(
        f"raw sequential  {result.raw_bytes_per_s / mb:,.0f} MB/s{raw_how}: one reader, the same "
        f"{result.rows * result.row_bytes / mb:,.0f} MB from the same cache state (npyfeed {share:.2f}x{why})"
    )
    if req is not None:
        print(
            f"requests        {req.requests:,} ({req.requests_per_s:,.0f}/s), {req.rows_per_request:,.1f} rows per "
            f"request, {req.retries:,} retries"
        )
        print(
            f"bytes           {req.bytes_asked / mb:,.1f} MB asked, {req.bytes_fetched / mb:,.1f} MB fetched "
            f"({req.bytes_fetched / max(req.bytes_asked, 1):.2f}x)"
        )
        print(f"latency         p50 {req.latency_p50_ms:,.1f} ms, p99 {req.latency_p99_ms:,.1f} ms")
        print(
            f"in flight       {req.mean_in_flight:.1f} mean, {req.max_in_flight} max "
            f"(max_concurrency {req.max_concurrency})"
        )
    print(
        f"peak memory     {(result.memory_peak - result.memory_baseline) / mb:,.1f} MB anonymous above the "
        f"{result.memory_baseline / mb:,.0f} MB baseline"
    )
    for trial in result.trials:
        how = "the run's own settings" if trial.get("own") else f"prefetch={trial.get('prefetch')}"
        print(f"  trial         threads={trial['num_threads']} {how}: {trial['rows_per_s']:,.0f} rows/s")
    gap = result.trial_gap()
    if gap is not None:
        print(f"  note          {gap}")
    advice = recommend(result)
    print(f"recommended     {'; '.join(advice.lines())}")
    if advice.loader:
        print(f"  as Loader(...) {', '.join(f'{k}={v!r}' for k, v in advice.loader.items())}")
    return 0


# -- convert ------------------------------------------------------------------------------------------------------
