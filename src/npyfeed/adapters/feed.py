"""What a framework adapter needs from a Loader: a small protocol the adapters own.

The adapters are typed against :class:`Feed`, never against :class:`npyfeed.Loader` (which satisfies it): they read
batches with pure functions of ``(epoch, index, offset)``, and record what their consumer received on the Loader's
one cursor (:meth:`Feed.begin`, :meth:`Feed.deliver`), or say that another checkpoint keeps it
(:meth:`Feed.track_elsewhere`). Nothing here imports the Loader (see the dependency rule in ``docs/architecture.md``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from npyfeed.order.orders import Order
from npyfeed.shard import Layout
from npyfeed.sources.columns import Columns

__all__ = ["Feed", "Pass", "WaitAccount", "WaitSource"]


class Pass(Protocol):
    """A pass over ``epoch`` from global position ``offset`` (0: the whole epoch), as :meth:`Feed.begin` gives."""

    @property
    def epoch(self) -> int: ...

    @property
    def offset(self) -> int: ...


class WaitSource(Protocol):
    """Counts of a consumer's waits kept outside the Loader (a tf.data graph's), as ``DataWait.add_counts`` takes."""

    def take(self) -> Mapping[str, Any] | None: ...

    def finished(self) -> bool: ...


class WaitAccount(Protocol):
    """``loader.metrics`` as an adapter sees it: its histogram's buckets, and a way to add counts kept elsewhere."""

    @property
    def bucket_edges(self) -> tuple[float, ...]: ...

    def pull(self, source: WaitSource) -> None: ...


class Feed(Protocol):
    """The Loader as the adapters see it."""

    @property
    def source(self) -> Columns: ...

    @property
    def order(self) -> Order: ...

    @property
    def batch_size(self) -> int: ...

    @property
    def shuffle(self) -> str: ...

    @property
    def drop_remainder(self) -> bool: ...

    @property
    def transform(self) -> Callable[[Any], Any] | None: ...

    @property
    def num_rows(self) -> int: ...

    @property
    def batches_per_read(self) -> int: ...

    @property
    def metrics(self) -> WaitAccount: ...

    # -- reading: pure functions of (epoch, index, offset) -----------------------------------------------------
    def __len__(self) -> int: ...

    def layout(self, offset: int = 0) -> Layout: ...

    def num_batches(self, offset: int = 0) -> int: ...

    def read_batch(self, epoch: int, index: int, *, offset: int = 0) -> Any: ...

    def read_batches(self, epoch: int, start: int, stop: int, *, offset: int = 0) -> list[Any]: ...

    def batch_rows(self, epoch: int, index: int, *, offset: int = 0) -> np.ndarray: ...

    def iter_batches(
        self, epoch: int, indices: range | None = None, *, offset: int = 0, prefetch: int | None = None
    ) -> Iterator[tuple[int, Any]]: ...

    def close(self) -> None: ...

    # -- the one cursor --------------------------------------------------------------------------------------------
    @property
    def epoch(self) -> int: ...

    @property
    def next_pass(self) -> tuple[int, int]: ...

    def begin(self, epoch: int | None = None) -> Pass: ...

    def deliver(self, cursor: Any, delivered: int) -> None: ...

    def set_epoch(self, epoch: int) -> None: ...

    def track_elsewhere(self, checkpoint: str) -> None: ...

    def get_state(self) -> dict[str, Any]: ...

    def set_state(self, state: dict[str, Any]) -> None: ...

    def state_after(self, epoch: int, delivered: int, *, offset: int = 0) -> dict[str, Any]: ...

    def to_keras(self, *, start_epoch: int | None = None, prefetch: int | None = None) -> Any: ...

    def to_tf_dataset(
        self,
        *,
        output_signature: Any = None,
        start_epoch: int | None = None,
        num_parallel_calls: int | None = None,
        threads: int | None = None,
        prefetch: int | None = None,
        native: bool = False,
        epochs: int | None = 1,
        targets: str | Sequence[str] | None = None,
        sample_weights: str | None = None,
        data_wait: bool = False,
        views: bool = False,
    ) -> Any: ...
