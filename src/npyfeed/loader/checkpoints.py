"""A Loader's checkpoints: the consumer's position saved as a state, and a saved state made the next pass.

A state is where the consumer is (the batches it received, not those read ahead), as one global position of the
epoch's order (:mod:`npyfeed.loader.state`): all shards at the same synchronous step give the same state, and any
worker count can restore it. This module turns the cursor (:mod:`npyfeed.loader.cursor`) into that state with the
seed and order (:mod:`npyfeed.loader.ordering`), and a saved state back into the cursor's next pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from npyfeed.loader.cursor import Tracker
from npyfeed.loader.ordering import Ordering
from npyfeed.shard import Layout

__all__ = ["Checkpoints"]


class Checkpoints:
    """Saves and restores one Loader's position: its ``tracker`` (the one cursor), its ``ordering`` (seed, order,
    block geometry) and ``layout(offset)`` (the positions a pass from ``offset`` reads on this shard)."""

    def __init__(self, ordering: Ordering, tracker: Tracker, layout: Callable[[int], Layout]) -> None:
        self._ordering = ordering
        self._tracker = tracker
        self._layout = layout

    def get_state(self) -> dict[str, Any]:
        """The state of what the consumer received (a ``ConfigError`` while a tf.data pipeline keeps the position
        instead, naming the checkpoint that can save it: see :meth:`Tracker.elsewhere`)."""
        c = self._tracker.position()
        return self.state_after(c.epoch, c.delivered, offset=c.offset)

    def state_after(self, epoch: int, delivered: int, *, offset: int = 0) -> dict[str, Any]:
        """The state after a consumer received ``delivered`` batches of ``epoch`` (of its rest from ``offset``)."""
        position = self._layout(offset).consumed(delivered)
        if position is None:
            epoch, position = epoch + 1, 0
        return self._ordering.describe(epoch, position).to_dict()

    def set_state(self, state: dict[str, Any]) -> None:
        """Make the next pass continue exactly after the last batch delivered when ``state`` was taken (the next
        epoch when nothing of the saved one is left for this shard)."""
        saved = self._ordering.restore(state)
        epoch, position = saved.epoch, saved.position
        if len(self._layout(position)) == 0:
            epoch, position = epoch + 1, 0
        self._tracker.reset(epoch, position)
