"""Checks that a loader delivered the right rows: each id at most once (exactly once for a whole epoch), labels
aligned with rows, the requested order, and row contents equal to NumPy's reading of the file.

The per-batch part is a few microseconds (each row's id, from its first 8 bytes, copied into one preallocated
array) and runs inside the timed loop for every runner alike; counting, order and range checks run on all ids after
the timed loop, and the content comparison on copies of a few sampled batches.
"""

from __future__ import annotations

import numpy as np

from benchmarks.data import BenchFiles, open_oracle, row_ids

__all__ = ["EpochChecker"]

_MAX_SAMPLES = 8


class EpochChecker:
    """Feed it every batch with :meth:`add`; :meth:`verdict` returns None if all is right, else what is wrong."""

    def __init__(self, files: BenchFiles, shuffle: bool, batch_size: int) -> None:
        self.files = files
        self.shuffle = shuffle
        self.batch_size = batch_size
        self.kind = files.row_kind
        # Every delivered id, in order; written now so its pages are resident before the memory baseline.
        self._ids = np.full(files.num_rows + batch_size, -1, dtype=np.int64)  # np.zeros would map pages lazily
        self.rows = 0
        self.batches = 0
        self.any_unsorted_jump = False
        self.problem: str | None = None
        num_batches = -(-files.num_rows // batch_size)
        self._sample_every = max(1, num_batches // _MAX_SAMPLES)
        # Room for the sampled batches, written now so its pages are resident before the memory baseline.
        self._x_samples = np.ones((_MAX_SAMPLES, batch_size, *self.kind.row_shape), dtype=self.kind.dtype)
        self.samples: list[tuple[np.ndarray, np.ndarray | None]] = []

    def _fail(self, message: str) -> None:
        if self.problem is None:
            self.problem = f"batch {self.batches}: {message}"

    def add(self, x: np.ndarray, y: np.ndarray | None) -> None:
        """Check one batch's shape, ids, labels and order; keep a copy of some batches for :meth:`verdict`."""
        if self.problem is not None:
            self.batches += 1
            return
        if x.shape[1:] != self.kind.row_shape or x.dtype != np.dtype(self.kind.dtype):
            self._fail(f"x is {x.dtype}{list(x.shape)}, expected {self.kind.dtype}[B, {self.kind.row_shape}]")
        elif (y is None) != (self.files.y is None):
            self._fail("labels missing" if y is None else "unexpected labels")
        else:
            self._check_ids(x, y)
        # Only a right-shaped batch gets here without a problem; keep some to compare with the file afterwards.
        if self.problem is None and self.batches % self._sample_every == 0 and len(self.samples) < _MAX_SAMPLES:
            self._keep_sample(x, y)
        self.batches += 1

    def add_ids(self, ids: np.ndarray, labels_ok: bool) -> None:
        """One batch checked where it was consumed (inside a ``tf.function``): its row ids, and whether its
        labels equalled them. Contents are compared on the batches given to :meth:`keep`."""
        if self.problem is None:
            if not labels_ok:
                self._fail("labels do not match the rows")
            else:
                self._store_ids(np.asarray(ids, dtype=np.int64).reshape(-1))
        self.batches += 1

    def keep(self, x: np.ndarray, y: np.ndarray | None) -> None:
        """Keep a copy of this batch (already counted by :meth:`add_ids`) for the content check, if room is left."""
        if len(self.samples) < _MAX_SAMPLES and x.shape[1:] == self.kind.row_shape and len(x) <= self.batch_size:
            self._keep_sample(x, y)

    def _keep_sample(self, x: np.ndarray, y: np.ndarray | None) -> None:
        """Copy a batch as delivered (a loader may reuse its buffers) into the preallocated room."""
        room = self._x_samples[len(self.samples), : len(x)]
        np.copyto(room, x)
        self.samples.append((room, None if y is None else np.array(y)))

    def _check_ids(self, x: np.ndarray, y: np.ndarray | None) -> None:
        ids = row_ids(x)
        if y is not None and not np.array_equal(np.asarray(y).reshape(-1), ids):
            self._fail("labels do not match the rows")
            self.rows += len(ids)
        else:
            self._store_ids(ids)

    def _store_ids(self, ids: np.ndarray) -> None:
        if len(ids) == 0 or len(ids) > self.batch_size or self.rows + len(ids) > self.files.num_rows:
            self._fail(f"{len(ids)} rows after {self.rows}, expected 1..{self.batch_size} of {self.files.num_rows}")
        else:
            self._ids[self.rows : self.rows + len(ids)] = ids
        self.rows += len(ids)

    def _check_all_ids(self) -> str | None:
        """Range, repeats and order of every id delivered (after timing: these are whole-array passes)."""
        ids, n = self._ids[: self.rows], self.files.num_rows
        if ids.size and (ids.min() < 0 or ids.max() >= n):
            return f"row id out of range [0, {n}): {ids.min()}..{ids.max()}"
        counts = np.bincount(ids, minlength=n)
        if counts.max(initial=0) > 1:
            return f"{int(np.count_nonzero(counts > 1))} rows delivered more than once"
        if not self.shuffle and not np.array_equal(ids, np.arange(ids.size)):
            first = int(np.flatnonzero(ids != np.arange(ids.size))[0])
            return f"not sequential: row {ids[first]} delivered at position {first}"
        self.any_unsorted_jump = bool(np.any(np.diff(ids) != 1))
        return None

    def _check_contents(self) -> str | None:
        x_ref, y_ref = open_oracle(self.files)
        for x, y in self.samples:
            ids = row_ids(x)
            if np.any((ids < 0) | (ids >= self.files.num_rows)):
                continue  # already reported by the id checks
            if x.tobytes() != np.asarray(x_ref[ids]).tobytes():
                return "row contents differ from the file"
            if y is not None and y_ref is not None and not np.array_equal(y.reshape(-1), y_ref[ids]):
                return "labels differ from the label file"
        return None

    def verdict(self, complete: bool) -> str | None:
        """None if everything delivered was right; ``complete`` means the epoch was read to its end."""
        if self.problem is not None:
            return self.problem
        problem = self._check_all_ids()
        if problem is not None:
            return problem
        if complete and self.rows != self.files.num_rows:
            return f"epoch ended after {self.rows} of {self.files.num_rows} rows"
        if self.shuffle and self.batches > 1 and not self.any_unsorted_jump:
            return "asked to shuffle, but rows came in file order"
        return self._check_contents()
