"""Measure a Loader on real files: rows/s and MB/s against the raw sequential read speed of the same files.

What ``npyfeed bench`` runs. The raw read is plain ``readv`` into one buffer (what the storage and page cache give
a single reader); ``cold`` drops the files from the page cache first (``POSIX_FADV_DONTNEED``, no root needed).
Peak memory is the process's anonymous memory (``RssAnon``: heap and buffers, not page cache) sampled on a thread
(the baselines: :mod:`npyfeed.bench.baselines`).

For objects in a store (``s3://``, ``gs://``, ``https://``) the raw read is one large ranged GET per object,
streamed and dropped (the link's sequential limit), and the result also holds what the Loader's requests cost
(:class:`RequestReport`, from the clients' :class:`~npyfeed.storage.client.RequestStats`): requests/s, bytes
asked vs fetched, rows per request, latency percentiles and requests in flight, which
:func:`npyfeed.bench.advice.recommend` turns into advice (block shuffle, more requests in flight).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

from npyfeed.bench.baselines import anon_memory, drop_from_cache, peak_anon_memory, raw_object_speed, raw_read_speed
from npyfeed.errors import RemoteShuffleWarning
from npyfeed.loader.budget import storages
from npyfeed.loader.geometry import is_remote
from npyfeed.loader.loader import Loader, ShuffleMode
from npyfeed.sources.base import row_nbytes
from npyfeed.sources.columns import Columns, StorageOptions
from npyfeed.storage.client import RequestStats
from npyfeed.system import cpu_count

__all__ = ["BenchResult", "RequestReport", "drop_from_cache", "raw_read_speed", "run_bench"]


@dataclass
class RequestReport:
    """What the Loader's requests to object stores cost during the timed run (all stores together)."""

    requests: int
    retries: int
    bytes_asked: int
    """Bytes of the rows delivered from remote columns."""
    bytes_fetched: int
    """Bytes the store sent: the rows, the gaps merged between them, blocks fetched ahead."""
    row_reads: int
    """Rows delivered times remote columns: what the requests served."""
    seconds: float
    """From the Loader's start until its last request (read-ahead included) ended."""
    latency_p50_ms: float
    latency_p99_ms: float
    mean_in_flight: float
    """Sum of request latencies over the wall time (Little's law)."""
    max_in_flight: int
    max_concurrency: int
    """The per-store limit (``storage_options["max_concurrency"]``)."""
    gap_bytes: int
    """Rows closer than this share a request (``storage_options["gap_bytes"]``, the smallest of the objects')."""
    raw_requests: int
    """GETs of the raw sequential reference (one per object read)."""

    @property
    def requests_per_s(self) -> float:
        return self.requests / max(self.seconds, 1e-9)

    @property
    def rows_per_request(self) -> float:
        return self.row_reads / max(self.requests, 1)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "requests_per_s": self.requests_per_s, "rows_per_request": self.rows_per_request}


@dataclass
class BenchResult:
    """One measured configuration."""

    shuffle: str
    batch_size: int
    num_threads: int
    prefetch: int | None
    cold: bool
    rows: int
    seconds: float
    row_bytes: int
    raw_bytes_per_s: float
    memory_baseline: int
    memory_peak: int
    trials: list[dict[str, Any]] = field(default_factory=list)
    """Short runs timed alike: the run's own settings first (``own``), then fixed ``num_threads`` x ``prefetch``."""
    requests: RequestReport | None = None
    """Object-store requests of the timed run (None when every file is local)."""
    autotune: bool = False
    """Whether the timed run tuned its depth or reads at once (:attr:`npyfeed.Loader.tuning`)."""
    tuning: dict[str, Any] = field(default_factory=dict)
    """What the tuner chose by the end of the timed run (:attr:`npyfeed.Loader.tuning`)."""
    io_threads: int = 0

    def own_trial(self) -> dict[str, Any] | None:
        """The trial with the run's own settings (tuned as the run was): the one other trials are judged against."""
        own = [t for t in self.trials if t.get("own")] or [
            t for t in self.trials if t["num_threads"] == self.num_threads
        ]
        return own[0] if own else None

    @property
    def raw_share(self) -> float:
        """The timed run's bytes/s over the raw reference's (the same bytes, from the same cache state, read by
        one thread front to back): above 1 when the Loader's parallel reads beat one sequential reader."""
        return self.bytes_per_s / max(self.raw_bytes_per_s, 1e-9)

    def trial_gap(self) -> str | None:
        """Why the trials' speeds may differ from the timed run's, when the trial at the run's own settings does."""
        own = self.own_trial()
        if own is None or not self.rows_per_s:
            return None
        ratio = own["rows_per_s"] / self.rows_per_s
        if 0.8 <= ratio <= 1.25:
            return None
        return (
            f"the trial with the run's settings read {ratio:.2f}x the timed run's rows/s: trials read 2 s each, "
            "timed after their first half second, after the timed run (page cache, files and connections warm; "
            "the timed run counts its start-up), so they are compared with each other, never with the timed run"
        )

    @property
    def rows_per_s(self) -> float:
        return self.rows / max(self.seconds, 1e-9)

    @property
    def bytes_per_s(self) -> float:
        return self.rows_per_s * self.row_bytes

    def as_dict(self) -> dict[str, Any]:
        out = {**asdict(self), "rows_per_s": self.rows_per_s, "bytes_per_s": self.bytes_per_s}
        out["requests"] = None if self.requests is None else self.requests.as_dict()
        out["raw_share"] = self.raw_share
        out["trial_gap"] = self.trial_gap()
        return out


def _time_loader(
    loader: Loader, *, epochs: int, max_seconds: float | None, progress: bool, label: str
) -> tuple[int, float]:
    total = epochs * len(loader)
    bar = _progress_bar(total, label) if progress else None
    rows, started = 0, time.perf_counter()
    try:
        for _ in range(epochs):
            for batch in loader:
                first = next(iter(batch.values())) if isinstance(batch, dict) else batch
                rows += len(first[0] if isinstance(first, tuple) else first)
                if bar is not None:
                    bar.update(1)
                if max_seconds is not None and time.perf_counter() - started > max_seconds:
                    return rows, time.perf_counter() - started
    finally:
        if bar is not None:
            bar.close()
    return rows, time.perf_counter() - started


def _time_trial(loader: Loader, seconds: float) -> tuple[int, float]:
    """Rows and seconds of whole epochs read for ``seconds`` (at least one epoch), counted after the first quarter:
    threads start and the tuner settles there, in every trial alike."""
    if not len(loader):
        return 0, 0.0
    rows, started = 0, time.perf_counter()
    counted_from: float | None = None
    while True:
        for batch in loader:
            now = time.perf_counter()
            if counted_from is None and now - started >= seconds / 4:
                counted_from = now
            elif counted_from is not None:
                first = next(iter(batch.values())) if isinstance(batch, dict) else batch
                rows += len(first[0] if isinstance(first, tuple) else first)
            if now - started >= seconds:
                break
        now = time.perf_counter()
        if now - started >= seconds:
            return rows, now - (counted_from or started)


def _progress_bar(total: int, label: str) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:  # the progress bar is optional (extra "cli")
        return None
    return tqdm(total=total, desc=label, unit="batch", leave=False, dynamic_ncols=True)


def run_bench(
    source: Any,
    *,
    batch_size: int = 256,
    shuffle: ShuffleMode = "none",
    num_threads: int | None = None,
    prefetch: int | None = None,
    cold: bool = False,
    epochs: int = 1,
    max_seconds: float | None = 30.0,
    progress: bool = True,
    sweep: bool = True,
    storage_options: StorageOptions = None,
    autotune: bool | None = None,
) -> BenchResult:
    """Time ``epochs`` of a Loader over ``source`` (capped at ``max_seconds``), plus the raw read reference.

    With ``sweep``, also tries the run's own settings and a few fixed ``num_threads`` x ``prefetch`` briefly (at
    most 2 s each) and records them in ``trials`` so the caller can recommend the fastest; ``autotune`` is the
    Loader's. URLs are read with ``storage_options`` (or the standard environment); ``cold`` applies
    to local files only (a store has no page cache of ours to drop).
    """
    columns = Columns.of(source, storage_options=storage_options)
    backends = list(storages(columns))
    objects = [s for s in backends if is_remote(s)]
    paths = [s.name for s in backends if not is_remote(s)]
    if cold:
        drop_from_cache(paths)
    elif paths:
        raw_read_speed(paths)  # warm: the files in page cache, for the timed run and the reference alike
    clients = list({id(s.client): s.client for s in objects}.values())
    before = [c.stats.copy() for c in clients]
    for client in clients:
        client.stats.max_in_flight = client.stats.in_flight  # the peak of this run, not of earlier ones
    baseline = anon_memory()
    began = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RemoteShuffleWarning)  # the report measures what it warns about
        loader = Loader(
            columns, batch_size, shuffle=shuffle, seed=0, num_threads=num_threads, prefetch=prefetch, autotune=autotune
        )
    with peak_anon_memory() as peak:
        rows, seconds = _time_loader(
            loader, epochs=epochs, max_seconds=max_seconds, progress=progress, label=f"shuffle={shuffle}"
        )
    tuning = loader.tuning
    loader.close()
    _settle(clients)
    span = time.perf_counter() - began  # requests ran from the loader's start until read-ahead settled
    # The raw reference, measured the same way: as many bytes as the timed run read, from the same cache state.
    read_bytes = rows * columns.row_bytes
    if cold:
        drop_from_cache(paths)
    raw = raw_read_speed(paths, max_bytes=max(read_bytes, 1)) if paths else 0.0
    raw_requests = 0
    if objects:
        remote_raw, raw_requests = raw_object_speed(objects, max_bytes=max(read_bytes, 1))
        # Local and remote columns together: the slower link is the limit.
        raw = min(raw, remote_raw) if paths else remote_raw
    result = BenchResult(
        shuffle=shuffle,
        batch_size=batch_size,
        num_threads=loader.num_threads,
        prefetch=prefetch,
        cold=cold,
        rows=rows,
        seconds=seconds,
        row_bytes=columns.row_bytes,
        raw_bytes_per_s=raw,
        memory_baseline=baseline,
        memory_peak=peak[0],
        autotune=tuning["autotune"],
        tuning=tuning,
        io_threads=loader.io_threads,
    )
    if clients:
        result.requests = _request_report(columns, clients, before, rows, span, raw_requests)
    if sweep:
        result.trials = _trials(columns, loader, paths, shuffle, num_threads, prefetch, autotune, cold, max_seconds)
    return result


_TRIAL_SECONDS = 2.0
_BEATS = 1.1  # a fixed setting must read this much faster than the run's own, in its trial and its rematch
_AHEAD = (1, 4)  # read tasks ahead in the fixed trials (prefetch = this x batches per read)


def _trials(
    columns: Columns,
    loader: Loader,
    paths: list[str],
    shuffle: ShuffleMode,
    num_threads: int | None,
    prefetch: int | None,
    autotune: bool | None,
    cold: bool,
    max_seconds: float | None,
) -> list[dict[str, Any]]:
    """The run's own settings (tuned as it was), then fixed thread counts x read-ahead depths (tuning off), each
    read for :data:`_TRIAL_SECONDS` (the last three quarters timed), from the same cache state: compared with each
    other, never with the timed run."""
    per_read = loader.batches_per_read
    own: dict[str, Any] = {"num_threads": num_threads, "prefetch": prefetch, "autotune": autotune, "own": True}
    settings: list[dict[str, Any]] = [own]
    for threads in sorted({1, cpu_count(), 2 * cpu_count(), loader.num_threads}):
        for ahead in [prefetch] if prefetch is not None else [_AHEAD[0] * per_read, _AHEAD[1] * per_read]:
            settings.append({"num_threads": threads, "prefetch": ahead, "autotune": False, "own": False})
    trials = [
        {**setting, **_trial(columns, loader, paths, shuffle, setting, cold, max_seconds)} for setting in settings
    ]
    own_trial, best = trials[0], max(trials, key=lambda t: t["rows_per_s"])
    if best is not own_trial and best["rows_per_s"] > _BEATS * own_trial["rows_per_s"]:
        # A fixed setting beat the run's own: a rematch (it first, then the run's own) before any advice trusts it.
        for trial in (best, own_trial):
            setting = {k: trial[k] for k in ("num_threads", "prefetch", "autotune")}
            if trial is own_trial:
                setting = {k: own[k] for k in ("num_threads", "prefetch", "autotune")}
            trial["rematch_rows_per_s"] = _trial(columns, loader, paths, shuffle, setting, cold, max_seconds)[
                "rows_per_s"
            ]
    return trials


def _trial(
    columns: Columns,
    loader: Loader,
    paths: list[str],
    shuffle: ShuffleMode,
    setting: dict[str, Any],
    cold: bool,
    max_seconds: float | None,
) -> dict[str, Any]:
    if cold:
        drop_from_cache(paths)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RemoteShuffleWarning)
        trial = Loader(
            columns,
            loader.batch_size,
            shuffle=shuffle,
            seed=1,
            num_threads=setting["num_threads"],
            prefetch=setting["prefetch"],
            autotune=setting["autotune"],
        )
    n, s = _time_trial(trial, min(_TRIAL_SECONDS, max_seconds or _TRIAL_SECONDS))
    tuning = trial.tuning
    trial.close()
    return {
        "num_threads": trial.num_threads,
        "autotune": tuning["autotune"],
        "rows_per_s": n / max(s, 1e-9),
        "depth": tuning["depth"],
        "concurrency": tuning["concurrency"],
    }


def _settle(clients: list[Any], timeout: float = 5.0) -> None:
    """Wait (a bounded time) for requests still in flight, e.g. blocks fetched ahead: they are the run's cost."""
    deadline = time.monotonic() + timeout
    while any(c.stats.in_flight for c in clients) and time.monotonic() < deadline:
        time.sleep(0.01)


def _request_report(
    columns: Columns, clients: list[Any], before: list[Any], rows: int, seconds: float, raw_requests: int
) -> RequestReport:
    spent = [c.stats.since(b) for c, b in zip(clients, before, strict=True)]
    remote = [a for a in columns.arrays if any(is_remote(s) for s in storages(a))]
    row_bytes = sum(row_nbytes(a) for a in remote)
    histogram = [sum(counts) for counts in zip(*(s.histogram for s in spent), strict=True)]
    merged = RequestStats(histogram=histogram)
    return RequestReport(
        requests=sum(s.requests for s in spent),
        retries=sum(s.retries for s in spent),
        bytes_asked=rows * row_bytes,
        bytes_fetched=sum(s.bytes for s in spent),
        row_reads=rows * len(remote),
        seconds=seconds,
        latency_p50_ms=merged.latency(0.5) * 1e3,
        latency_p99_ms=merged.latency(0.99) * 1e3,
        mean_in_flight=sum(s.seconds for s in spent) / max(seconds, 1e-9),
        max_in_flight=max(s.max_in_flight for s in spent),
        max_concurrency=max(c.options.max_concurrency for c in clients),
        gap_bytes=min(s.options.gap_bytes for a in remote for s in storages(a) if is_remote(s)),
        raw_requests=raw_requests,
    )
