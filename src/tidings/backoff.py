"""How long to wait before reconnecting: jittered, capped backoff with a server floor.

Two layers, both free of clocks and global randomness:

* **Policies** (:class:`FullJitter`, :class:`EqualJitter`, :class:`DecorrelatedJitter`,
  :class:`NoJitter`) are pure: ``policy.next(attempt, rng, previous=..., floor=...)``
  turns a retry number into a delay in seconds.  Jitter is applied to the *capped*
  exponential ``d = min(cap, base * factor ** attempt)``, never the other way round:
  capping after jittering would make every client wait exactly ``cap`` once the
  exponential saturates, re-synchronising the reconnect storm jitter exists to spread.
  (A policy's own ``floor`` argument gives ``max(floor, jittered)``.)
* :class:`Backoff` is a small tracker that owns the attempt counter and the previous
  delay, and knows what the connection that ended achieved (:class:`Loss`).  A
  connection that delivered something new, or stayed up for a stable period (default
  5 s), resets the counter; one that died young with nothing new does not, so a server
  that accepts and then closes at once cannot drive the client into a hot reconnect
  loop.  A server's floor (the SSE ``retry`` field, an HTTP ``Retry-After``) goes
  *under* the jitter: ``delay = floor + jittered``, so that a crowd told the same floor
  does not come back in step.

:func:`default_backoff` is the pacing every tidings client uses.

Randomness comes in as any object with a ``random() -> float`` method (see
:class:`Random`): pass ``random.Random(seed)`` in tests and ``random.SystemRandom()`` or
a private ``random.Random()`` in production.  Time comes in as ``now`` arguments in
seconds from any monotonic clock.

Defaults: ``base`` 0.5 s, ``factor`` 2, ``cap`` 30 s, stable period 5 s.  With full
jitter the first retry waits ``U(0, 0.5)`` s, and from the seventh on ``U(0, 30)`` s.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Protocol

from tidings._checks import check_now as _check_now
from tidings._checks import check_seconds as _check_seconds
from tidings.errors import LocalProtocolError

__all__ = [
    "DEFAULT_BASE",
    "DEFAULT_CAP",
    "DEFAULT_FACTOR",
    "DEFAULT_SPREAD",
    "DEFAULT_STABLE_PERIOD",
    "Backoff",
    "BackoffPolicy",
    "DecorrelatedJitter",
    "EqualJitter",
    "FullJitter",
    "Loss",
    "NoJitter",
    "Random",
    "capped_exponential",
    "default_backoff",
]

#: Default delay scale of the first retry, in seconds.
DEFAULT_BASE = 0.5
#: Default growth factor per failed attempt.
DEFAULT_FACTOR = 2.0
#: Default ceiling of the exponential (before the floor), in seconds.
DEFAULT_CAP = 30.0
#: Default time a connection must stay up to count as stable, in seconds.
DEFAULT_STABLE_PERIOD = 5.0
#: First window of :func:`default_backoff` after a stable connection ended, in seconds.
DEFAULT_SPREAD = 5.0


class Random(Protocol):
    """The one thing tidings asks of a random number generator.

    ``random.Random`` and ``random.SystemRandom`` fit; so does any test double whose
    ``random()`` returns floats in ``[0, 1)``.
    """

    def random(self) -> float:
        """A float uniformly distributed in ``[0, 1)``."""
        ...


def _check_attempt(attempt: int) -> None:
    if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 0:
        raise LocalProtocolError(f"attempt must be an int >= 0, got {attempt!r}")


def _check_exponential(base: float, factor: float, cap: float) -> None:
    _check_seconds("base", base, positive=True)
    if (
        not isinstance(factor, int | float)
        or isinstance(factor, bool)
        or not math.isfinite(factor)
        or factor < 1
    ):
        raise LocalProtocolError(f"factor must be finite and >= 1, got {factor!r}")
    _check_seconds("cap", cap, positive=True)
    if cap < base:
        raise LocalProtocolError(f"cap ({cap!r}) must be >= base ({base!r})")


def _uniform(rng: Random, low: float, high: float) -> float:
    return low + (high - low) * rng.random()


def capped_exponential(attempt: int, base: float, factor: float, cap: float) -> float:
    """``min(cap, base * factor ** attempt)`` without ever overflowing.

    The exponent is clamped to the first attempt that reaches the cap, so attempt
    10 000 (or 10**100) costs the same as attempt 10 and never raises
    :class:`OverflowError`.
    """
    _check_attempt(attempt)
    if factor == 1 or base >= cap:
        return min(cap, base)
    # Any n at or past this reaches the cap; below it factor**n stays near cap/base,
    # so the power cannot overflow.  Rounding only moves which side min() picks.
    if attempt >= math.ceil(math.log(cap / base) / math.log(factor)):
        return cap
    return min(cap, base * factor**attempt)


class BackoffPolicy(Protocol):
    """What every policy offers: a delay for a retry number."""

    def next(
        self,
        attempt: int,
        rng: Random,
        *,
        previous: float | None = None,
        floor: float = 0.0,
    ) -> float:
        """The delay in seconds before retry number *attempt* (0 for the first retry).

        *previous* is the policy's own previous result (``None`` after a reset); only
        :class:`DecorrelatedJitter` uses it.  The result is never below *floor*.
        """
        ...


def _apply_floor(jittered: float, floor: float) -> float:
    _check_seconds("floor", floor)
    return max(floor, jittered)


@dataclass(frozen=True, slots=True)
class FullJitter:
    """``U(0, min(cap, base * factor ** attempt))``: the widest spread, the default.

    Spreads a crowd of clients that lost the same server evenly over the whole window,
    which minimises the peak reconnection rate; the price is that an unlucky client
    may retry almost at once (the stable-period rule of :class:`Backoff` keeps that
    from becoming a loop).
    """

    base: float = DEFAULT_BASE
    factor: float = DEFAULT_FACTOR
    cap: float = DEFAULT_CAP

    def __post_init__(self) -> None:
        _check_exponential(self.base, self.factor, self.cap)

    def next(
        self,
        attempt: int,
        rng: Random,
        *,
        previous: float | None = None,
        floor: float = 0.0,
    ) -> float:
        """``max(floor, U(0, d))`` with ``d`` the capped exponential."""
        ceiling = capped_exponential(attempt, self.base, self.factor, self.cap)
        return _apply_floor(ceiling * rng.random(), floor)


@dataclass(frozen=True, slots=True)
class EqualJitter:
    """``d/2 + U(0, d/2)`` with ``d`` the capped exponential.

    Always waits at least half the exponential, at the cost of a narrower spread
    than :class:`FullJitter`.
    """

    base: float = DEFAULT_BASE
    factor: float = DEFAULT_FACTOR
    cap: float = DEFAULT_CAP

    def __post_init__(self) -> None:
        _check_exponential(self.base, self.factor, self.cap)

    def next(
        self,
        attempt: int,
        rng: Random,
        *,
        previous: float | None = None,
        floor: float = 0.0,
    ) -> float:
        """``max(floor, d/2 + U(0, d/2))`` with ``d`` the capped exponential."""
        half = capped_exponential(attempt, self.base, self.factor, self.cap) / 2
        return _apply_floor(half + half * rng.random(), floor)


@dataclass(frozen=True, slots=True)
class DecorrelatedJitter:
    """``min(cap, U(base, previous * multiplier))``, starting from ``previous = base``.

    Each delay depends on the previous one rather than on the attempt number, which
    keeps clients that started together from moving in step.  *previous* is clamped
    to ``[base, cap]`` first, so a value raised by a floor cannot push the range
    beyond the cap.
    """

    base: float = DEFAULT_BASE
    cap: float = DEFAULT_CAP
    multiplier: float = 3.0

    def __post_init__(self) -> None:
        _check_exponential(self.base, 1.0, self.cap)
        if (
            not isinstance(self.multiplier, int | float)
            or not math.isfinite(self.multiplier)
            or self.multiplier < 1
        ):
            raise LocalProtocolError(f"multiplier must be finite and >= 1, got {self.multiplier!r}")

    def next(
        self,
        attempt: int,
        rng: Random,
        *,
        previous: float | None = None,
        floor: float = 0.0,
    ) -> float:
        """``max(floor, min(cap, U(base, previous * multiplier)))``."""
        _check_attempt(attempt)
        if previous is None:
            previous = self.base
        else:
            _check_seconds("previous", previous)
        previous = min(self.cap, max(self.base, previous))
        jittered = min(self.cap, _uniform(rng, self.base, previous * self.multiplier))
        return _apply_floor(jittered, floor)


@dataclass(frozen=True, slots=True)
class NoJitter:
    """``min(cap, base * factor ** attempt)`` exactly: for comparisons and tests.

    Clients that lose a server together come back together; prefer a jittered policy.
    *rng* is accepted for interface compatibility and never used.
    """

    base: float = DEFAULT_BASE
    factor: float = DEFAULT_FACTOR
    cap: float = DEFAULT_CAP

    def __post_init__(self) -> None:
        _check_exponential(self.base, self.factor, self.cap)

    def next(
        self,
        attempt: int,
        rng: Random,
        *,
        previous: float | None = None,
        floor: float = 0.0,
    ) -> float:
        """``max(floor, d)`` with ``d`` the capped exponential."""
        return _apply_floor(capped_exponential(attempt, self.base, self.factor, self.cap), floor)


class Loss(enum.Enum):
    """How the connection that just ended went: it decides the next delay (see :class:`Backoff`)."""

    #: It stayed up for the stable period: the server (or the path to it) went away
    #: under a settled client, and probably under every other client at the same
    #: moment.  The counter resets and the next attempts are spread widely.
    STABLE = "stable"
    #: It ended before the stable period but delivered something new: the server
    #: works and the path is flaky.  The counter resets and the client resumes soon.
    PROGRESS = "progress"
    #: It never opened, or it ended young with nothing new: a failure.  The counter
    #: grows.
    FAILURE = "failure"


class Backoff:
    """Attempt counter and previous delay of one reconnecting client, without a clock.

    Call :meth:`connected` when a connection is established (for HTTP: when a good
    response arrived, not merely when TCP connected), :meth:`progress` whenever it
    delivers something new (an event not seen before, an acknowledged publish), and
    :meth:`disconnected` when it ends or a connection attempt fails; the latter
    returns how long to wait.  What the connection achieved decides the delay
    (:class:`Loss`):

    * **failure** -- it never opened, or it died before *stable_period* seconds
      without delivering anything new: the counter grows, so a server that accepts and
      closes at once, or sends the same nothing again and again, gets ever longer
      pauses, never a hot loop;
    * **progress** -- it delivered something new but died young (a proxy or a mobile
      link that cuts connections every few kilobytes): the counter resets and the
      delay is the policy's first, ``U(0, base)`` by default, *without* the standing
      floor (below), so a follower keeps up with the stream;
    * **stable** -- it lived for the stable period: the counter resets and the run
      of attempts that follows is paced by *spread_policy* (the policy itself when
      ``None``).  A settled connection that drops is what a server restart does to
      every client at once; a wide first window spreads that crowd.

    Two kinds of floor sit *under the jitter*, ``delay = floor + jittered``, so that a
    crowd told the same value still comes back spread out ("full jitter above the
    floor"): *floor*, one loss's own minimum (an HTTP ``Retry-After``, the delay a
    WebSocket 1012 asks for), applies always; *standing_floor*, a server's general
    preference (the SSE ``retry`` field), applies after a failure or a stable
    connection but not after progress.  When both are given the larger is used.
    """

    __slots__ = (
        "_attempt",
        "_connected_at",
        "_last_loss",
        "_previous",
        "_progressed",
        "_run_policy",
        "policy",
        "spread_policy",
        "stable_period",
    )

    def __init__(
        self,
        policy: BackoffPolicy | None = None,
        *,
        stable_period: float = DEFAULT_STABLE_PERIOD,
        spread_policy: BackoffPolicy | None = None,
    ) -> None:
        _check_seconds("stable_period", stable_period)
        #: The policy that turns attempts into delays (:class:`FullJitter` by default).
        self.policy: BackoffPolicy = FullJitter() if policy is None else policy
        #: The policy of the attempts after a stable connection ended (``None``: the
        #: same as :attr:`policy`).
        self.spread_policy = spread_policy
        #: Seconds a connection must stay up to count as stable.
        self.stable_period = stable_period
        self._attempt = 0
        self._previous: float | None = None
        self._connected_at: float | None = None
        self._progressed = False
        self._run_policy: BackoffPolicy = self.policy
        self._last_loss: Loss | None = None

    @property
    def attempt(self) -> int:
        """Failed attempts since the last reset: the ``attempt`` of the next delay."""
        return self._attempt

    @property
    def previous(self) -> float | None:
        """The policy's last result (before any floor), or ``None`` after a reset."""
        return self._previous

    @property
    def connected_at(self) -> float | None:
        """When the current connection was established, or ``None`` when not connected."""
        return self._connected_at

    @property
    def progressed(self) -> bool:
        """Whether the current connection delivered something new (see :meth:`progress`)."""
        return self._progressed

    @property
    def last_loss(self) -> Loss | None:
        """How the connection behind the last :meth:`disconnected` went (``None`` before)."""
        return self._last_loss

    def connected(self, now: float) -> None:
        """A connection is established at *now*; its lifetime starts counting."""
        _check_now(now)
        self._connected_at = now
        self._progressed = False

    def progress(self) -> None:
        """The current connection delivered something new (an event, an acknowledgement).

        The failures are forgotten at once (:attr:`attempt` is 0 again), and the loss
        of this connection will not count as one.  Raises
        :class:`~tidings.errors.LocalProtocolError` when not connected.
        """
        if self._connected_at is None:
            raise LocalProtocolError("progress() without a connection (call connected() first)")
        if not self._progressed:
            self._progressed = True
            self.reset()

    def disconnected(
        self, now: float, rng: Random, floor: float = 0.0, *, standing_floor: float = 0.0
    ) -> float:
        """The connection (or connection attempt) ended at *now*: how long to wait.

        Classifies the connection (:attr:`last_loss`), resets the counter after a
        stable or productive one, then draws ``floor + jittered`` (see the class
        documentation for the two floors) and counts the attempt.
        """
        _check_now(now)
        _check_seconds("floor", floor)
        _check_seconds("standing_floor", standing_floor)
        since = self._connected_at
        progressed = self._progressed
        self._connected_at = None
        self._progressed = False
        if since is not None and now - since >= self.stable_period:
            loss = Loss.STABLE
            self.reset()
            if self.spread_policy is not None:
                self._run_policy = self.spread_policy
        elif progressed:
            loss = Loss.PROGRESS
            self.reset()
            standing_floor = 0.0
        else:
            loss = Loss.FAILURE
        self._last_loss = loss
        jittered = self._run_policy.next(self._attempt, rng, previous=self._previous)
        self._previous = jittered
        self._attempt += 1
        return max(floor, standing_floor) + jittered

    def reset(self) -> None:
        """Forget the failures: the next delay is computed as for a first retry."""
        self._attempt = 0
        self._previous = None
        self._run_policy = self.policy

    def __repr__(self) -> str:
        return (
            f"<Backoff attempt={self._attempt} previous={self._previous!r} "
            f"connected_at={self._connected_at!r} policy={self.policy!r}>"
        )


def default_backoff() -> Backoff:
    """The pacing every tidings client uses unless given another :class:`Backoff`.

    After a failure, full jitter over ``min(30, 1 * 2**n)`` seconds; after a
    connection that delivered something new but died young, ``U(0, 1)`` s; after a
    connection that stayed up :data:`DEFAULT_STABLE_PERIOD` (5 s), full jitter over
    ``min(30, 5 * 2**n)`` s (:data:`DEFAULT_SPREAD`), so that the crowd a server
    restart disconnects all at once comes back over several seconds: 1 000 clients
    then peak at about 3 % of them per 100 ms whatever the downtime, where a fixed
    3 s plus up to 25 % put them all within 0.75 s (see ``tests/test_backoff.py`` and
    ``bench/bench_storm.py``).
    """
    return Backoff(
        FullJitter(base=1.0, cap=DEFAULT_CAP),
        stable_period=DEFAULT_STABLE_PERIOD,
        spread_policy=FullJitter(base=DEFAULT_SPREAD, cap=DEFAULT_CAP),
    )
