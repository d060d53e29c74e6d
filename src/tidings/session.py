"""Reconnect or give up: the transport-agnostic client session, its close classifier
and the WebSocket heartbeat policy.

:class:`ReconnectingSession` decides *when* to (re)connect and *when to stop*; it never
touches a socket.  An adapter feeds it what happened (``connected``, ``closed``,
``http_failure``, ``network_error``, ``message``, ``timer``) and acts on what it returns
(:class:`Connect`, :class:`Wait`, :class:`GiveUp`).  Its states and the inputs each one
accepts are the data in :data:`TRANSITIONS`; any other input is a caller bug and raises
:class:`~tidings.errors.LocalProtocolError`.

Retry versus stop, and the delays, come from one :class:`~tidings.retry.Retrier`
(the decision tables :func:`~tidings.retry.classify_close` and
:func:`~tidings.retry.classify_http`, the pacing of :class:`tidings.backoff.Backoff`),
the same object the SSE and long-poll clients use, so the rule is written down once
and is the same for every transport.  Progress counts: a connection that delivered a
new message resets the attempt counter, one that died young with nothing new does not,
so a server that accepts and immediately closes gets ever longer pauses, not a hot
loop.

:class:`HeartbeatPolicy` is the ping/pong clock of one WebSocket connection: ping every
*interval* seconds, give up on the peer (close 1011) when no pong arrives within
*timeout* seconds.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from tidings._checks import check_now as _check_now
from tidings._checks import check_seconds as _check_seconds
from tidings.backoff import Backoff, Random, default_backoff
from tidings.errors import LocalProtocolError
from tidings.retry import (
    DEFAULT_MAX_FLOOR,
    DEFAULT_RESTART_DELAY,
    GiveUp,
    Reconnect,
    Retrier,
    Verdict,
    classify_close,
    classify_http,
)

__all__ = [
    "DEFAULT_MAX_FLOOR",
    "DEFAULT_PING_INTERVAL",
    "DEFAULT_PONG_TIMEOUT",
    "DEFAULT_RESTART_DELAY",
    "TRANSITIONS",
    "ClosePeer",
    "Connect",
    "GiveUp",
    "HeartbeatPolicy",
    "ReconnectingSession",
    "SendPing",
    "SessionAction",
    "SessionInput",
    "SessionState",
    "Verdict",
    "Wait",
    "classify_close",
    "classify_http",
    "default_backoff",
]

#: Default ping interval and pong timeout of :class:`HeartbeatPolicy`, in seconds.
DEFAULT_PING_INTERVAL = 20.0
DEFAULT_PONG_TIMEOUT = 20.0


# ------------------------------------------------------------------- session machine


class SessionState(enum.Enum):
    """Where a :class:`ReconnectingSession` is."""

    #: Created, not started.
    IDLE = "idle"
    #: A connection attempt is under way (the adapter acts on a :class:`Connect`).
    CONNECTING = "connecting"
    #: Connected; messages flow.
    OPEN = "open"
    #: Disconnected, waiting for the deadline of a :class:`Wait`.
    WAITING = "waiting"
    #: Finished for good (gave up or stopped); terminal.
    CLOSED = "closed"


class SessionInput(enum.Enum):
    """The things an adapter can tell a :class:`ReconnectingSession`."""

    START = "start"
    CONNECTED = "connected"
    CLOSED = "closed"
    HTTP_FAILURE = "http_failure"
    NETWORK_ERROR = "network_error"
    MESSAGE = "message"
    PROGRESS = "progress"
    TIMER = "timer"
    STOP = "stop"


_S = SessionState
_I = SessionInput

#: Every allowed ``(state, input)`` pair and the states it may lead to.  A pair not in
#: this table is caller misuse (:class:`~tidings.errors.LocalProtocolError`).  Where two
#: targets are listed, the classifier (or ``max_retries``) picks one.
TRANSITIONS: Mapping[tuple[SessionState, SessionInput], frozenset[SessionState]] = MappingProxyType(
    {
        (_S.IDLE, _I.START): frozenset({_S.CONNECTING}),
        (_S.IDLE, _I.TIMER): frozenset({_S.IDLE}),
        (_S.IDLE, _I.STOP): frozenset({_S.CLOSED}),
        (_S.CONNECTING, _I.CONNECTED): frozenset({_S.OPEN}),
        (_S.CONNECTING, _I.HTTP_FAILURE): frozenset({_S.WAITING, _S.CLOSED}),
        (_S.CONNECTING, _I.NETWORK_ERROR): frozenset({_S.WAITING, _S.CLOSED}),
        (_S.CONNECTING, _I.TIMER): frozenset({_S.CONNECTING}),
        (_S.CONNECTING, _I.STOP): frozenset({_S.CLOSED}),
        (_S.OPEN, _I.MESSAGE): frozenset({_S.OPEN}),
        (_S.OPEN, _I.PROGRESS): frozenset({_S.OPEN}),
        (_S.OPEN, _I.CLOSED): frozenset({_S.WAITING, _S.CLOSED}),
        # Long polling makes one HTTP request after another while "open".
        (_S.OPEN, _I.HTTP_FAILURE): frozenset({_S.WAITING, _S.CLOSED}),
        (_S.OPEN, _I.NETWORK_ERROR): frozenset({_S.WAITING, _S.CLOSED}),
        (_S.OPEN, _I.TIMER): frozenset({_S.OPEN}),
        (_S.OPEN, _I.STOP): frozenset({_S.CLOSED}),
        (_S.WAITING, _I.TIMER): frozenset({_S.WAITING, _S.CONNECTING}),
        (_S.WAITING, _I.STOP): frozenset({_S.CLOSED}),
        (_S.CLOSED, _I.STOP): frozenset({_S.CLOSED}),
    }
)


@dataclass(frozen=True, slots=True)
class Connect:
    """Open a connection now, resuming every stream from ``resume``.

    ``resume`` maps each tracked topic (``""`` for a single-stream transport such as
    SSE) to its last seen position in wire form, or ``None`` for "live from now".
    ``attempt`` counts the failures since the last stable or productive connection.
    """

    resume: Mapping[str, str | None]
    attempt: int


@dataclass(frozen=True, slots=True)
class Wait:
    """Do nothing until ``until`` (then call :meth:`ReconnectingSession.timer`)."""

    until: float
    delay: float
    reason: str


#: What a :class:`ReconnectingSession` input may return.
SessionAction = Connect | Wait | GiveUp


class ReconnectingSession:
    """The reconnect/give-up machine of one logical client session, without IO.

    *rng* draws the jitter (``random.SystemRandom()`` or a private ``random.Random()``
    in production, seeded in tests).  *topics* are the streams to resume, mapped to
    their starting positions (``None``: live from now).  *backoff*, *max_retries*,
    *restart_delay* and *max_floor* configure its :class:`~tidings.retry.Retrier`
    (:attr:`retrier`): the pacing (:func:`~tidings.backoff.default_backoff` unless
    given), giving up once *max_retries* consecutive retries failed (``None``: never
    give up on a retryable failure; 0: never retry), the least wait after close code
    1012, and the cap on any server-imposed minimum wait (a hostile
    ``Retry-After: 99999999`` must not park a client forever).
    """

    def __init__(
        self,
        rng: Random,
        *,
        topics: Mapping[str, str | None] | Iterable[str] = (),
        backoff: Backoff | None = None,
        max_retries: int | None = None,
        restart_delay: float = DEFAULT_RESTART_DELAY,
        max_floor: float = DEFAULT_MAX_FLOOR,
    ) -> None:
        #: The retry decision and its pacing (shared with the SSE and long-poll clients).
        self.retrier = Retrier(
            rng,
            backoff=backoff,
            max_retries=max_retries,
            restart_delay=restart_delay,
            max_floor=max_floor,
        )
        self._state = SessionState.IDLE
        self._until: float | None = None
        self._positions: dict[str, str | None] = {}
        if isinstance(topics, Mapping):
            for topic, position in topics.items():
                self.track(topic, position)
        else:
            for topic in topics:
                self.track(topic)

    @property
    def backoff(self) -> Backoff:
        """The pacing: attempt counter, stable-period and progress rules."""
        return self.retrier.backoff

    @property
    def max_retries(self) -> int | None:
        """Consecutive failed retries tolerated (``None``: no limit)."""
        return self.retrier.max_retries

    @property
    def restart_delay(self) -> float:
        """The least wait after close code 1012, in seconds."""
        return self.retrier.restart_delay

    @property
    def max_floor(self) -> float:
        """The largest server-imposed floor honoured, in seconds."""
        return self.retrier.max_floor

    # -- observation

    @property
    def state(self) -> SessionState:
        """The current state."""
        return self._state

    @property
    def positions(self) -> Mapping[str, str | None]:
        """A snapshot of the resume position of every tracked topic."""
        return MappingProxyType(dict(self._positions))

    @property
    def attempt(self) -> int:
        """Failed attempts since the last stable or productive connection."""
        return self.retrier.attempt

    def next_deadline(self) -> float | None:
        """When :meth:`timer` has something to do (``None``: nothing scheduled)."""
        return self._until if self._state is SessionState.WAITING else None

    # -- topics (data, not transitions: allowed in every state)

    def track(self, topic: str, position: str | None = None) -> None:
        """Resume *topic* from *position* on the next connection (replacing any)."""
        if not isinstance(topic, str):
            raise LocalProtocolError(f"topic must be a str, not {type(topic).__name__}")
        if position is not None and not isinstance(position, str):
            raise LocalProtocolError("position must be a str (wire form) or None")
        self._positions[topic] = position

    def forget(self, topic: str) -> None:
        """Stop tracking *topic* (no error if it was not tracked)."""
        self._positions.pop(topic, None)

    # -- inputs

    def _enter(self, event: SessionInput) -> frozenset[SessionState]:
        targets = TRANSITIONS.get((self._state, event))
        if targets is None:
            raise LocalProtocolError(f"{event.value} is not allowed in state {self._state.value}")
        return targets

    def _go(self, targets: frozenset[SessionState], state: SessionState) -> None:
        assert state in targets, (self._state, state)
        self._state = state

    def _connect(self) -> Connect:
        return Connect(MappingProxyType(dict(self._positions)), self.backoff.attempt)

    def start(self, now: float) -> Connect:
        """Begin: the first connection attempt."""
        _check_now(now)
        targets = self._enter(SessionInput.START)
        self._go(targets, SessionState.CONNECTING)
        return self._connect()

    def connected(self, now: float) -> None:
        """The connection attempt succeeded (handshake accepted / good response)."""
        _check_now(now)
        targets = self._enter(SessionInput.CONNECTED)
        self.retrier.connected(now)
        self._go(targets, SessionState.OPEN)

    def message(self, position: str, *, topic: str = "", progress: bool = True) -> None:
        """A message at *position* of *topic* was delivered; resume after it.

        With *progress* (the default) it also counts as progress: the connection's
        loss will not count as a failure.  Pass ``progress=False`` for bookkeeping
        messages that every connection repeats (a subscription confirmed, a reset).
        """
        targets = self._enter(SessionInput.MESSAGE)
        if not isinstance(position, str):
            raise LocalProtocolError("position must be a str (wire form)")
        self._positions[topic] = position
        if progress:
            self.retrier.progress()
        self._go(targets, SessionState.OPEN)

    def progress(self) -> None:
        """The open connection achieved something new without a position (for example
        a publish was acknowledged)."""
        targets = self._enter(SessionInput.PROGRESS)
        self.retrier.progress()
        self._go(targets, SessionState.OPEN)

    def closed(
        self, code: int | None, reason: str = "", *, by_peer: bool, now: float
    ) -> Wait | GiveUp:
        """The open connection ended with close *code* (``None``: no close frame)."""
        _check_now(now)
        targets = self._enter(SessionInput.CLOSED)
        return self._after(
            targets, self.retrier.closed(code, reason, by_peer=by_peer, now=now), now
        )

    def http_failure(self, status: int, retry_after: float | None, now: float) -> Wait | GiveUp:
        """The attempt (or a request of an open long-poll session) got HTTP *status*."""
        _check_now(now)
        targets = self._enter(SessionInput.HTTP_FAILURE)
        return self._after(targets, self.retrier.http_failure(status, retry_after, now), now)

    def network_error(self, now: float, error: str = "") -> Wait | GiveUp:
        """The attempt failed or the connection broke below the protocol (DNS, TCP, TLS)."""
        _check_now(now)
        targets = self._enter(SessionInput.NETWORK_ERROR)
        return self._after(targets, self.retrier.network_error(now, error), now)

    def timer(self, now: float) -> Connect | None:
        """Time passed; returns :class:`Connect` once a :class:`Wait` has expired."""
        _check_now(now)
        targets = self._enter(SessionInput.TIMER)
        if self._state is SessionState.WAITING:
            assert self._until is not None
            if now >= self._until:
                self._until = None
                self._go(targets, SessionState.CONNECTING)
                return self._connect()
        self._go(targets, self._state)
        return None

    def stop(self) -> None:
        """The application is done: close for good (idempotent)."""
        targets = self._enter(SessionInput.STOP)
        self._until = None
        self._go(targets, SessionState.CLOSED)

    def _after(
        self, targets: frozenset[SessionState], decision: Reconnect | GiveUp, now: float
    ) -> Wait | GiveUp:
        if isinstance(decision, GiveUp):
            self._go(targets, SessionState.CLOSED)
            return decision
        self._until = now + decision.delay
        self._go(targets, SessionState.WAITING)
        return Wait(self._until, decision.delay, decision.reason)

    def __repr__(self) -> str:
        return (
            f"<ReconnectingSession state={self._state.value} attempt={self.attempt} "
            f"topics={len(self._positions)}>"
        )


# ------------------------------------------------------------------------- heartbeats


@dataclass(frozen=True, slots=True)
class SendPing:
    """Send a WebSocket ping carrying ``payload``."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class ClosePeer:
    """Close the connection with ``code`` (1011 after a missed pong) and ``reason``."""

    code: int
    reason: str


class HeartbeatPolicy:
    """Ping every *interval* seconds; declare the peer dead after *timeout* without pong.

    Works on either side of a WebSocket.  Call :meth:`start` when the connection
    opens, :meth:`pong_received` for every pong, and :meth:`handle_timer` whenever
    :meth:`next_deadline` passes.  Only a pong echoing the outstanding ping's payload
    counts (unsolicited pongs are allowed by RFC 6455 and ignored).  At most one ping
    is outstanding; the next one is due *interval* seconds after the previous one was
    sent.  Once the peer is declared dead the policy is spent.
    """

    def __init__(
        self, *, interval: float = DEFAULT_PING_INTERVAL, timeout: float = DEFAULT_PONG_TIMEOUT
    ) -> None:
        _check_seconds("interval", interval)
        _check_seconds("timeout", timeout)
        if interval == 0 or timeout == 0:
            raise LocalProtocolError("interval and timeout must be > 0")
        self.interval = float(interval)
        self.timeout = float(timeout)
        self._next_ping: float | None = None
        self._sent_at: float | None = None
        self._payload: bytes | None = None
        self._counter = 0
        self._dead = False

    @property
    def awaiting_pong(self) -> bool:
        """Whether a ping is outstanding."""
        return self._payload is not None

    @property
    def dead(self) -> bool:
        """Whether the peer missed a pong (a :class:`ClosePeer` was returned)."""
        return self._dead

    def start(self, now: float) -> None:
        """The connection opened at *now*: the first ping is due at ``now + interval``."""
        _check_now(now)
        if self._next_ping is not None or self._dead:
            raise LocalProtocolError("heartbeat already started")
        self._next_ping = now + self.interval

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must next be called (``None``: not running)."""
        if self._dead or self._next_ping is None:
            return None
        if self._sent_at is not None:
            return self._sent_at + self.timeout
        return self._next_ping

    def handle_timer(self, now: float) -> list[SendPing | ClosePeer]:
        """What to do at *now*: nothing, send a ping, or close the dead peer."""
        _check_now(now)
        if self._dead or self._next_ping is None:
            return []
        if self._sent_at is not None:
            if now >= self._sent_at + self.timeout:
                self._dead = True
                return [ClosePeer(1011, "ping timeout")]
            return []
        if now >= self._next_ping:
            self._counter += 1
            self._payload = b"tidings-%d" % self._counter
            self._sent_at = now
            self._next_ping = now + self.interval
            return [SendPing(self._payload)]
        return []

    def pong_received(self, payload: bytes, now: float) -> None:
        """A pong arrived at *now*; if it answers the outstanding ping, the peer lives."""
        _check_now(now)
        if self._payload is not None and payload == self._payload:
            self._payload = None
            self._sent_at = None
