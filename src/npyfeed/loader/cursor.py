"""The consumer's cursor: which batches of which pass over an epoch the consumer has received.

A *pass* reads epoch ``epoch`` from global position ``offset`` (0 for a whole epoch, a saved position after
``set_state``); its batches are a pure function of ``(seed, epoch, offset, index)``. A Loader holds exactly one
:class:`Tracker`; every way of consuming it (``iter(loader)``, the torch and Keras datasets) begins passes with it
and records each batch once the consumer holds it, never what was read ahead, so ``get_state()`` is the position
of what the consumer received. tf.data reads ahead inside its own graph, where no Python sees a batch arrive: a
Loader feeding it says so instead of answering with a stale position.

>>> t = Tracker(epoch=0)
>>> t.begin()
Cursor(epoch=0, offset=0, delivered=0)
>>> t.deliver(Cursor(0, 0), 2); t.position()
Cursor(epoch=0, offset=0, delivered=2)
>>> t.next_pass  # a new iteration is the next epoch
(1, 0)
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from npyfeed.errors import ConfigError

__all__ = ["Cursor", "Tracker"]


@dataclass(frozen=True)
class Cursor:
    """The consumer received ``delivered`` batches of the pass over ``epoch`` that starts at position ``offset``."""

    epoch: int
    offset: int = 0
    delivered: int = 0


class Tracker:
    """A Loader's one cursor (thread-safe): the pass being consumed, and whether the next one is pending."""

    def __init__(self, epoch: int) -> None:
        self._lock = threading.Lock()
        self._cursor = Cursor(epoch)
        # Batches delivered of the pass _cursor names, when counted since it was made (None: _cursor says): the
        # numpy iterator delivers every batch, and a Cursor made per batch cost ~1.3 us, about half its per-batch
        # overhead; one is made when the position is asked for.
        self._delivered: int | None = None
        self._begun = False  # False: _cursor is the pending pass (a new loader, set_state, set_epoch)
        self._elsewhere: str | None = None

    @property
    def next_pass(self) -> tuple[int, int]:
        """``(epoch, offset)`` of the pass the next :meth:`begin` without an epoch gets."""
        with self._lock:
            c = self._cursor
            return (c.epoch + 1, 0) if self._begun else (c.epoch, c.offset)

    def begin(self, epoch: int | None = None) -> Cursor:
        """Begin the next pass (or a pass over ``epoch``: from the pending offset if that epoch is pending)."""
        with self._lock:
            c = self._cursor
            if epoch is None:
                epoch, offset = (c.epoch + 1, 0) if self._begun else (c.epoch, c.offset)
            else:
                offset = c.offset if not self._begun and epoch == c.epoch else 0
            self._cursor, self._delivered, self._begun, self._elsewhere = Cursor(epoch, offset), None, True, None
            return self._cursor

    def deliver(self, cursor: Cursor, delivered: int) -> None:
        """The consumer now holds ``delivered`` batches of the pass ``cursor`` names."""
        with self._lock:
            self._cursor, self._delivered, self._begun, self._elsewhere = cursor, delivered, True, None

    def reset(self, epoch: int, offset: int = 0) -> None:
        """Make ``(epoch, offset)`` the pending pass (``set_state``, ``set_epoch``)."""
        with self._lock:
            self._cursor, self._delivered, self._begun = Cursor(epoch, offset), None, False

    def elsewhere(self, checkpoint: str) -> None:
        """The consumer's position is now kept by ``checkpoint`` (tf.data's iterator), not by this cursor."""
        with self._lock:
            self._elsewhere = checkpoint

    def position(self) -> Cursor:
        """The cursor, or a ``ConfigError`` naming the checkpoint to use when another one keeps the position."""
        with self._lock:
            if self._elsewhere is not None:
                raise ConfigError(
                    "this Loader feeds a tf.data pipeline, which reads ahead in its own graph: the Loader cannot know "
                    f"which batches the consumer received, so it has no state to give. Save {self._elsewhere} "
                    "instead (iterating the Loader itself makes get_state() available again)"
                )
            return self._current()

    def _current(self) -> Cursor:
        """The cursor with the batches delivered since it was made (under the lock)."""
        c, delivered = self._cursor, self._delivered
        if delivered is not None and delivered != c.delivered:
            c = self._cursor = Cursor(c.epoch, c.offset, delivered)
        self._delivered = None
        return c

    # Locks do not pickle: a worker process gets the cursor's value.
    def __getstate__(self) -> dict[str, Any]:
        with self._lock:
            return {"cursor": self._current(), "begun": self._begun, "elsewhere": self._elsewhere}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._lock = threading.Lock()
        self._cursor, self._begun, self._elsewhere = state["cursor"], state["begun"], state["elsewhere"]
        self._delivered = None
