"""Coalescing bursts of metric updates into at most one snapshot per window.

:class:`Coalescer` decides (no clock inside: the caller says what time it is);
:func:`publish_coalesced` is the Trio pump that feeds it from a channel and publishes
what it hands out.  A burst of a hundred updates within half a second becomes one
event carrying the latest value of every metric, so a page -- a slow one above all --
gets fewer, fuller updates instead of a hundred small ones.
"""

from __future__ import annotations

import json
import math

import trio

from tidings.trio import Hub

__all__ = ["Coalescer", "publish_coalesced"]

#: The seed's batching window, in seconds.
WINDOW = 0.5


class Coalescer:
    """Merges ``(name, value)`` updates into snapshots, at most one per *window* seconds.

    The first update after a quiet spell opens a window that closes *window* seconds
    later; updates within it only change the state (the latest value of each name
    wins).  Once the window closed, :meth:`take` hands out one snapshot: every value
    seen so far (not only the changed ones: a page that missed a snapshot needs
    nothing else) and how many updates it merges.  The next update opens the next
    window, so two snapshots are always at least *window* seconds apart.
    """

    def __init__(self, window: float = WINDOW) -> None:
        if not window > 0:
            raise ValueError("the window must be positive")
        self.window = window
        self._values: dict[str, float] = {}
        self._merged = 0
        self._deadline: float | None = None

    @property
    def deadline(self) -> float | None:
        """When the open window closes (then call :meth:`take`), or ``None``."""
        return self._deadline

    def update(self, name: str, value: float, now: float) -> None:
        """Note that *name* is now *value*."""
        self._values[name] = value
        self._merged += 1
        if self._deadline is None:
            self._deadline = now + self.window

    def take(self, now: float) -> dict[str, object] | None:
        """The snapshot to publish if the window has closed by *now*, else ``None``."""
        if self._deadline is None or now < self._deadline:
            return None
        snapshot: dict[str, object] = {"values": dict(self._values), "merged": self._merged}
        self._merged = 0
        self._deadline = None
        return snapshot


async def publish_coalesced(
    hub: Hub,
    topic: str,
    updates: trio.MemoryReceiveChannel[tuple[str, float]],
    window: float = WINDOW,
) -> None:
    """Publish the updates received on *updates* to *topic*, coalesced (see
    :class:`Coalescer`) as events of type ``snapshot`` with JSON data
    ``{"values": {name: value}, "merged": n}``.  Returns when the channel is closed
    (after publishing what was still pending)."""
    coalescer = Coalescer(window)
    async with updates:
        while True:
            deadline = coalescer.deadline
            with trio.move_on_at(math.inf if deadline is None else deadline):
                try:
                    name, value = await updates.receive()
                except trio.EndOfChannel:
                    break
                coalescer.update(name, value, trio.current_time())
                continue
            snapshot = coalescer.take(trio.current_time())
            if snapshot is not None:
                await hub.publish(topic, json.dumps(snapshot), event="snapshot")
    if coalescer.deadline is not None:
        snapshot = coalescer.take(coalescer.deadline)
        await hub.publish(topic, json.dumps(snapshot), event="snapshot")
