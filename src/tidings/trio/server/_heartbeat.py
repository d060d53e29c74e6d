"""Heartbeats for quiet streams from one task, instead of a timer per stream.

A timer per stream costs a cancel scope on every wait of every stream; with
thousands of idle streams that is most of their memory and of the fan-out time.
One ticker per server instead looks at every registered stream four times per
interval and wakes those that delivered nothing for a whole interval, so each
quiet stream gets its comment within 1 to 1.25 intervals of its last activity.
"""

from __future__ import annotations

import logging

import trio

from tidings.trio._sync import Waiter
from tidings.trio.hub import Subscription

__all__ = ["Beat", "Heartbeats"]

log = logging.getLogger("tidings.server")

# Ticks per interval: the precision of the heartbeat timing.
_TICKS = 4


class Beat:
    """One stream's heartbeat state, owned by its handler."""

    __slots__ = ("due", "last_activity", "mark", "subscription")

    def __init__(self, subscription: Subscription, now: float) -> None:
        self.subscription = subscription
        #: Set by the ticker when a heartbeat is due; the handler clears it.
        self.due = False
        #: When the handler last wrote (or the ticker saw events delivered).
        self.last_activity = now
        self.mark = subscription.delivered

    def check(self, now: float, interval: float) -> None:
        """Called by the ticker: note activity, or wake the stream for a heartbeat."""
        delivered = self.subscription.delivered
        if delivered != self.mark:
            self.mark = delivered
            self.last_activity = now
        elif now - self.last_activity >= interval and not self.due:
            self.due = True
            self.subscription.wake()


class Heartbeats:
    """The ticker: started when the first stream registers, ends with the last one."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._members: set[Beat] = set()
        self._waiter = Waiter()
        self._running = False

    def __len__(self) -> int:
        return len(self._members)

    def add(self, beat: Beat) -> None:
        """Start watching *beat*'s stream."""
        self._members.add(beat)
        if not self._running:
            self._running = True
            trio.lowlevel.spawn_system_task(self._run, name="tidings heartbeats")

    def discard(self, beat: Beat) -> None:
        """Stop watching *beat*'s stream."""
        self._members.discard(beat)
        if not self._members:
            self._waiter.wake()

    async def _run(self) -> None:
        period = self.interval / _TICKS
        try:
            next_tick = trio.current_time() + period
            while self._members:
                if await self._waiter.wait(next_tick):
                    continue  # woken: the last member left (or a spurious wake)
                now = trio.current_time()
                next_tick = max(next_tick + period, now)
                for beat in list(self._members):
                    beat.check(now, self.interval)
        except Exception:  # a system task must not crash the run
            log.exception("heartbeat ticker failed")
        finally:
            self._running = False

    def __repr__(self) -> str:
        return f"<Heartbeats every {self.interval}s, {len(self._members)} streams>"
