"""Prefetching that adjusts itself: read-ahead depth and reads at once, turned online by the consumer's wait.

Two knobs, each within bounds fixed when the read path's plan is made:

- **depth**: read tasks kept in flight or ready ahead of the consumer, from the plan's starting depth up to its
  ``max_depth`` (the memory budget's limit, cgroup-aware: :mod:`npyfeed.loader.budget`; the tuner re-reads it as the
  plan is re-measured and never goes past it);
- **concurrency**: reads copying from storage at once (:class:`Slots`, a limit over the pool of ``io_threads``
  threads, which is never re-created), from ``num_threads`` up to ``io_threads``.

The consumer's takes are judged in windows (at least :data:`WINDOW_TAKES` read tasks and
:data:`WINDOW_SECONDS`). A window in which the consumer waited for at least half of its read tasks is *waiting*;
one in which it never waited while at least two more were ready is *surplus*. Hysteresis, so the settings settle:

- grow one step after a waiting window: one more read at once (depth following, so one more read is queued) or
  one more read ahead, the knob whose last step paid off first; the step is kept only if, in each of the next
  :data:`PROBE_WINDOWS` windows, the consumer received at least :data:`GAIN` more read tasks per second than in the
  best of the last :data:`BASELINE_WINDOWS` windows at the setting it left (on a busy machine whole windows run
  slower or faster by chance: one of them must not make a useless step look like a gain), else it is undone and
  that knob stops growing (probed again after a back-off that doubles each time, if the waiting goes on);
- shrink (undo the last kept step) only after :data:`SURPLUS_WINDOWS` surplus windows in a row, never below where
  it started; a shrink followed by waiting is undone and marks a floor no later shrink goes below.

A knob the user set (``num_threads=``, ``prefetch=``) or ``autotune=False`` is fixed, and so is the concurrency
of reads that take no slot (every read hinted: a block shuffle, ``io_hints=True``; :meth:`Tuner.fix_concurrency`).
What it chose is
:meth:`Tuner.snapshot` (``Loader.tuning``).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "BASELINE_WINDOWS",
    "GAIN",
    "PROBE_WINDOWS",
    "SURPLUS_WINDOWS",
    "WINDOW_SECONDS",
    "WINDOW_TAKES",
    "Slots",
    "Tuner",
]

WINDOW_TAKES = 8  # read tasks the consumer takes per judged window (and...)
WINDOW_SECONDS = 0.1  # (... at least this long: a window of tiny reads says nothing)
WAITED_S = 1e-4  # a take the consumer waited longer than this for counts as waited (as in DataWait)
GAIN = 0.05  # a step is kept when the consumer's rate rose by at least this fraction
SURPLUS_WINDOWS = 4  # surplus windows in a row before giving a step back
_RETRY_WINDOWS = 16  # waiting windows before a knob that stopped growing is probed again (then doubled)
BASELINE_WINDOWS = 3  # a step must beat the best of this many latest windows at the setting it left ...
PROBE_WINDOWS = 2  # ... in this many windows in a row

Knob = Literal["concurrency", "depth"]


class Slots:
    """At most ``limit`` holders at once; unlike a semaphore, the limit can be changed while threads hold slots
    (lowering it lets the holders finish and admits no new ones until fewer than the limit remain)."""

    def __init__(self, limit: int) -> None:
        self._cond = threading.Condition()
        self._limit = max(1, limit)
        self._busy = 0

    @property
    def limit(self) -> int:
        return self._limit

    def set_limit(self, limit: int) -> None:
        with self._cond:
            self._limit = max(1, limit)
            self._cond.notify_all()

    def __enter__(self) -> Slots:
        with self._cond:
            while self._busy >= self._limit:
                self._cond.wait()
            self._busy += 1
        return self

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._busy -= 1
            self._cond.notify()


@dataclass
class _Window:
    started: float
    takes: int = 0
    waited: int = 0
    wait_s: float = 0.0
    min_ready: int = 1 << 30


class Tuner:
    """The depth and concurrency a read path uses now, adjusted from what the consumer waited (see module doc).

    ``tune_depth`` / ``tune_concurrency`` False fix that knob at its start (a user's setting, or autotune off).
    """

    def __init__(
        self,
        *,
        depth: int,
        max_depth: int,
        concurrency: int,
        max_concurrency: int,
        tune_depth: bool,
        tune_concurrency: bool,
    ) -> None:
        self._lock = threading.Lock()
        self.tune_depth, self.tune_concurrency = tune_depth, tune_concurrency
        self._max_depth = max(1, max_depth)
        self._max_concurrency = max(1, max_concurrency)
        self._start = (max(1, min(depth, self._max_depth)), max(1, min(concurrency, self._max_concurrency)))
        self._depth, concurrency = self._start
        self.slots = Slots(concurrency)
        # States are (depth, concurrency). Kept steps: (knob, before, after), newest last.
        self._steps: list[tuple[Knob, tuple[int, int], tuple[int, int]]] = []
        self._floor = 0  # steps no shrink may undo
        self._probe: tuple[Knob, tuple[int, int], tuple[int, int], float] | None = None  # judged next, rate before
        self._probe_windows = 0  # windows of the probe judged faster so far
        self._shrunk: tuple[Knob, tuple[int, int], tuple[int, int]] | None = None  # given back, judged next
        self._last: Knob = "concurrency"  # the knob whose last step paid off
        self._stopped: dict[Knob, int] = {}  # knob -> waiting windows left before it is probed again
        self._backoff = _RETRY_WINDOWS
        self._surplus = 0
        self._recent: deque[tuple[tuple[int, int], float]] = deque(maxlen=BASELINE_WINDOWS)  # (state, rate)
        self._window: _Window | None = None
        self._skip = False
        self._last_take = 0.0
        self._counted = self._take_waited = False  # the last take was judged; the consumer waited for it
        self.counts = {"windows": 0, "grown": 0, "undone": 0, "shrunk": 0}
        self._peak_depth, self._peak_concurrency = self._start

    # -- what the read path asks ----------------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        return self._depth

    @property
    def concurrency(self) -> int:
        return self.slots.limit

    @property
    def active(self) -> bool:
        return self.tune_depth or self.tune_concurrency

    def bound(self, max_depth: int) -> None:
        """The plan was re-measured (memory left changed): depth never goes past its new ``max_depth``."""
        with self._lock:
            self._max_depth = max(1, max_depth)
            if self._depth > self._max_depth:
                self._depth = self._max_depth

    def fix_concurrency(self) -> None:
        """Stop tuning the reads at once: the read path's reads no longer take slots (every read is hinted and
        waits on storage outside them), so a step of it could only look like a gain by chance, and the depth is
        what sets how many run. A probe of it still being judged is undone."""
        with self._lock:
            self.tune_concurrency = False
            self._stopped.pop("concurrency", None)
            if self._probe is not None and self._probe[0] == "concurrency":
                self._set(self._probe[1])
                self._probe, self._probe_windows = None, 0

    def begin(self) -> None:
        """A pass starts: its first take always waits (its reads only just started), so it is not judged, and the
        time since the last pass's last take is left out of the window's rate."""
        with self._lock:
            self._skip = True

    def observe(self, wait: float, ready: int, now: float | None = None) -> None:
        """The consumer took a read task after waiting ``wait`` seconds, with ``ready`` more already done."""
        if not self.active:
            return
        now = time.perf_counter() if now is None else now
        with self._lock:
            window = self._window
            self._take_waited = wait >= WAITED_S
            last, self._last_take = self._last_take, now
            if window is None or self._skip:
                self._skip, self._counted = False, False
                if window is None:
                    self._window = _Window(now)
                else:  # the gap from the last pass's last take to this pass's first is no reading rate
                    window.started += now - last
                return
            self._counted = True
            window.takes += 1
            window.waited += self._take_waited
            window.wait_s += wait
            window.min_ready = min(window.min_ready, ready)
            if window.takes >= WINDOW_TAKES and now - window.started >= WINDOW_SECONDS:
                self._judge(window, window.takes / (now - window.started))
                self._window = _Window(now)

    def waited(self, wait: float) -> None:
        """The consumer waited ``wait`` seconds more for the read task it took last (for one of its batches, whose
        transforms run as jobs of their own: :mod:`npyfeed.loader.transforms`)."""
        if not self.active:
            return
        with self._lock:
            window = self._window
            if window is None or not self._counted:
                return
            window.wait_s += wait
            if wait >= WAITED_S and not self._take_waited:
                self._take_waited = True
                window.waited += 1

    def snapshot(self) -> dict[str, Any]:
        """What the tuner chose and why, JSON-able (``Loader.tuning``; documented in docs/observe.md)."""
        with self._lock:
            return {
                "autotune": self.active,
                "depth": self._depth,
                "concurrency": self.slots.limit,
                "max_depth": self._max_depth,
                "max_concurrency": self._max_concurrency,
                "tunes_depth": self.tune_depth,
                "tunes_concurrency": self.tune_concurrency,
                "peak_depth": self._peak_depth,
                "peak_concurrency": self._peak_concurrency,
                **self.counts,
            }

    # -- decisions (under the lock) ---------------------------------------------------------------------------
    def _judge(self, window: _Window, rate: float) -> None:
        self.counts["windows"] += 1
        self._recent.append(((self._depth, self.slots.limit), rate))
        waiting = 2 * window.waited >= window.takes
        surplus = window.waited == 0 and window.min_ready >= 2
        if self._probe is not None:
            knob, before, after, old_rate = self._probe
            self._probe_windows += 1
            gained = rate >= (1 + GAIN) * old_rate
            if gained and self._probe_windows < PROBE_WINDOWS:
                return  # faster: kept only if the next window is faster too (one lucky window is no gain)
            self._probe, self._probe_windows = None, 0
            if gained:
                self._steps.append((knob, before, after))
                self._last = knob
            else:  # no faster: undo, and stop growing this knob for a while
                self._set(before)
                self.counts["undone"] += 1
                self._stopped[knob] = self._backoff
                self._backoff *= 2
                return
        if self._shrunk is not None:
            knob, before, after = self._shrunk
            self._shrunk = None
            if waiting:  # giving it back made the consumer wait: take it again, and never give it back
                self._set(after)
                self._steps.append((knob, before, after))
                self._floor = len(self._steps)
                return
        if waiting:
            self._surplus = 0
            for stopped in list(self._stopped):
                self._stopped[stopped] -= 1
                if self._stopped[stopped] <= 0:
                    del self._stopped[stopped]
            self._grow(rate)
        elif surplus:
            self._surplus += 1
            if self._surplus >= SURPLUS_WINDOWS and len(self._steps) > self._floor:
                self._surplus = 0
                knob, before, after = self._steps.pop()
                self._set(before)
                self._shrunk = (knob, before, after)
                self.counts["shrunk"] += 1
        else:
            self._surplus = 0

    def _grow(self, rate: float) -> None:
        """One step up: the knob whose last step paid off first (concurrency at the start)."""
        depth, conc = now = (self._depth, self.slots.limit)
        grows: dict[Knob, tuple[int, int]] = {}
        if self.tune_concurrency and conc < self._max_concurrency and "concurrency" not in self._stopped:
            # One more read at once needs one more read queued beside it: depth follows when it is tuned.
            follow = max(depth, min(self._max_depth, conc + 2)) if self.tune_depth else depth
            grows["concurrency"] = (follow, conc + 1)
        if self.tune_depth and depth < self._max_depth and "depth" not in self._stopped:
            grows["depth"] = (depth + 1, conc)
        if not grows:
            return
        knob: Knob = self._last if self._last in grows else next(iter(grows))
        # Judged against the best of the latest windows at this setting, not the last one alone: a window that
        # was slow by chance (load elsewhere) would make any step look like a gain, and it would be kept.
        baseline = max([r for state, r in self._recent if state == now] + [rate])
        self._probe, self._probe_windows = (knob, now, grows[knob], baseline), 0
        self._set(grows[knob])
        self.counts["grown"] += 1

    def _set(self, state: tuple[int, int]) -> None:
        depth, conc = state
        self._depth = max(1, min(depth, self._max_depth))
        self.slots.set_limit(min(conc, self._max_concurrency))
        self._peak_depth = max(self._peak_depth, self._depth)
        self._peak_concurrency = max(self._peak_concurrency, self.slots.limit)
