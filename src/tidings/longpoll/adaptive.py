"""How often to short-poll: quickly while things change, slowly while they do not.

Conditional short polling (``If-None-Match`` with ``timeout=0``) costs one request per
interval whether or not anything happened.  :class:`AdaptivePoller` keeps that cost
proportional to activity: the interval starts at an *active* value, grows by a
factor after every answer that brought nothing new (``304`` or no events) up to an
*idle* ceiling, and drops back to *active* as soon as something changes.  Optional
jitter spreads clients that started together so they do not poll in step.
"""

from __future__ import annotations

import math

from tidings.backoff import Random
from tidings.errors import LocalProtocolError

__all__ = ["DEFAULT_ACTIVE_INTERVAL", "DEFAULT_IDLE_INTERVAL", "AdaptivePoller"]

#: Seconds between polls while updates flow.
DEFAULT_ACTIVE_INTERVAL = 2.0
#: The longest interval between polls while nothing changes, in seconds.
DEFAULT_IDLE_INTERVAL = 30.0


def _check(name: str, value: float, low: float) -> None:
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value < low
    ):
        raise LocalProtocolError(f"{name} must be a finite number >= {low}, got {value!r}")


class AdaptivePoller:
    """The interval of a conditional short poll, adapted to activity.

    Call :meth:`record` after each answer with whether it brought anything new; it
    returns when to poll next.  With the defaults (2 s active, 30 s idle, factor 1.5)
    the waits after a change are 2, 3, 4.5, 6.75, … seconds, reaching 30 s after about
    a minute of silence.

    *jitter* (a fraction in ``[0, 1)``, default 0) draws each wait uniformly from
    ``interval * [1 - jitter, 1 + jitter)`` using *rng*, which is required then.
    """

    __slots__ = ("_deadline", "_interval", "_rng", "active", "factor", "idle", "jitter")

    def __init__(
        self,
        active: float = DEFAULT_ACTIVE_INTERVAL,
        idle: float = DEFAULT_IDLE_INTERVAL,
        *,
        factor: float = 1.5,
        jitter: float = 0.0,
        rng: Random | None = None,
    ) -> None:
        _check("active", active, 0.0)
        _check("idle", idle, 0.0)
        _check("factor", factor, 1.0)
        _check("jitter", jitter, 0.0)
        if idle < active:
            raise LocalProtocolError(f"idle ({idle!r}) must be >= active ({active!r})")
        if jitter >= 1:
            raise LocalProtocolError(f"jitter must be < 1, got {jitter!r}")
        if jitter > 0 and rng is None:
            raise LocalProtocolError("jitter needs an rng")
        #: The interval while things change, in seconds.
        self.active = float(active)
        #: The ceiling the interval grows toward while nothing changes, in seconds.
        self.idle = float(idle)
        #: How much the interval grows after each answer with nothing new.
        self.factor = float(factor)
        #: The spread of each wait, as a fraction of the interval.
        self.jitter = float(jitter)
        self._rng = rng
        self._interval = self.active
        self._deadline: float | None = None

    @property
    def interval(self) -> float:
        """The (unjittered) wait that the next unchanged answer will get."""
        return self._interval

    def next_deadline(self) -> float | None:
        """When to poll next, as last returned by :meth:`record`; ``None`` before."""
        return self._deadline

    def record(self, changed: bool, now: float) -> float:
        """An answer arrived at *now*; return the time of the next poll.

        A change resets the interval to *active*; no change waits the current interval
        and then grows it toward *idle*.
        """
        _check("now", now, -math.inf)
        if changed:
            self._interval = self.active
            wait = self.active
        else:
            wait = self._interval
            self._interval = min(self.idle, self._interval * self.factor)
        if self.jitter > 0:
            assert self._rng is not None
            wait *= 1 + self.jitter * (2 * self._rng.random() - 1)
        self._deadline = now + wait
        return self._deadline

    def reset(self) -> None:
        """Back to the active interval, as after a change (e.g. the user came back)."""
        self._interval = self.active

    def __repr__(self) -> str:
        return (
            f"<AdaptivePoller interval={self._interval!r} active={self.active!r} "
            f"idle={self.idle!r} deadline={self._deadline!r}>"
        )
