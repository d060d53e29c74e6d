"""Reconnect or give up: the transport-agnostic client session, its close classifier
and the WebSocket heartbeat policy.

:class:`ReconnectingSession` decides *when* to (re)connect and *when to stop*; it never
touches a socket.  An adapter feeds it what happened (``connected``, ``closed``,
``http_failure``, ``network_error``, ``message``, ``timer``) and acts on what it returns
(:class:`Connect`, :class:`Wait`, :class:`GiveUp`).  Its states and the inputs each one
accepts are the data in :data:`TRANSITIONS`; any other input is a caller bug and raises
:class:`~tidings.errors.LocalProtocolError`.

Retry versus stop is decided by two pure functions, :func:`classify_close` (WebSocket
close codes) and :func:`classify_http` (HTTP statuses and ``Retry-After``), so that the
rule is written down once and the same for every transport.  Delays come from
:class:`tidings.backoff.Backoff`, which resets its attempt counter only after a
connection stayed up for a stable period: a server that accepts and immediately closes
gets ever longer pauses, not a hot loop.

:class:`HeartbeatPolicy` is the ping/pong clock of one WebSocket connection: ping every
*interval* seconds, give up on the peer (close 1011) when no pong arrives within
*timeout* seconds.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from tidings.backoff import Backoff, FullJitter, Random
from tidings.errors import LocalProtocolError

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

#: Minimum wait after close code 1012 (service restart), in seconds.
DEFAULT_RESTART_DELAY = 5.0
#: Largest server-imposed floor (``Retry-After``, restart delay) honoured, in seconds.
DEFAULT_MAX_FLOOR = 300.0
#: Default ping interval and pong timeout of :class:`HeartbeatPolicy`, in seconds.
DEFAULT_PING_INTERVAL = 20.0
DEFAULT_PONG_TIMEOUT = 20.0


# --------------------------------------------------------------------------- classifier


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do after a connection ended: retry (after at least *floor* s) or stop."""

    retry: bool
    reason: str
    #: A lower bound on the next delay imposed by the peer (seconds, 0 when none).
    floor: float = 0.0


# Close codes that end the session whoever sent them: the same request would fail the
# same way (protocol, payload and policy errors; 1015 is a TLS failure that retrying
# will not fix).
_STOP_CODES: Mapping[int, str] = {
    1002: "protocol error",
    1003: "unsupported data",
    1007: "invalid payload data",
    1008: "policy violation",
    1009: "message too big",
    1010: "mandatory extension missing",
    1015: "TLS handshake failure",
    3000: "unauthorized",
    3003: "forbidden",
}
# Close codes after which the same request will probably work later.
_RETRY_CODES: Mapping[int, str] = {
    1005: "closed without a status code",
    1006: "connection lost",
    1011: "internal error",
    1012: "service restart",
    1013: "try again later",
    1014: "bad gateway",
    3008: "timeout",
}


def classify_close(
    code: int | None,
    *,
    by_peer: bool,
    restart_delay: float = DEFAULT_RESTART_DELAY,
) -> Verdict:
    """Retry or stop after a WebSocket closed with *code* (``None``: no close frame).

    *by_peer* is true when the peer initiated the close.

    ==========================  =======================================================
    code                        verdict
    ==========================  =======================================================
    ``None`` (network error)    retry
    1000 normal closure         stop (the server is done with us, or we are done)
    1001 going away             by the peer: retry (server shutting down or draining);
                                by us: stop (the application is leaving)
    1002 1003 1007-1010 1015    stop: the same connection would fail the same way
    1005 1006 1011 1013 1014    retry
    1012 service restart        retry, waiting at least *restart_delay* seconds
    3000 / 3003                 stop (IANA-registered unauthorized / forbidden)
    3008                        retry (IANA-registered timeout)
    4400-4499                   stop, except 4408 and 4429: retry
    4500-4599                   retry
    anything else               retry (backoff bounds the cost of guessing wrong)
    ==========================  =======================================================

    **The 44xx convention.**  Application close codes 4400-4499 mirror the HTTP 4xx
    status ``code - 4000``: 4401 unauthorized, 4403 forbidden, 4404 no such topic,
    4408 request timeout, 4429 too many requests.  Like their HTTP counterparts they
    stop the session, except 4408 and 4429, which are temporary.  4500-4599 mirror
    HTTP 5xx and are retried.  A tidings server uses these codes to refuse a session
    after the upgrade (for example when credentials expire).
    """
    if code is None:
        return Verdict(True, "network error")
    if type(code) is not int:
        raise LocalProtocolError(f"close code must be an int or None, not {code!r}")
    if code == 1000:
        return Verdict(False, "normal closure")
    if code == 1001:
        if by_peer:
            return Verdict(True, "peer going away")
        return Verdict(False, "going away")
    if code in _STOP_CODES:
        return Verdict(False, _STOP_CODES[code])
    if code == 1012:
        _check_seconds("restart_delay", restart_delay)
        return Verdict(True, _RETRY_CODES[code], restart_delay)
    if code in _RETRY_CODES:
        return Verdict(True, _RETRY_CODES[code])
    if 4400 <= code <= 4499:
        if code in (4408, 4429):
            return Verdict(True, f"application close {code} (temporary)")
        return Verdict(False, f"application close {code} (refused)")
    return Verdict(True, f"close code {code}")


def classify_http(status: int, retry_after: float | None = None) -> Verdict:
    """Retry or stop after a connection attempt was answered with HTTP *status*.

    ==========================  =======================================================
    status                      verdict
    ==========================  =======================================================
    408, 425, 429               retry
    other 4xx                   stop (authentication, not found, bad request ...)
    5xx                         retry
    1xx, 2xx, 3xx               stop: the wrong answer to an upgrade or stream request
                                (redirects are the adapter's business before this)
    ==========================  =======================================================

    *retry_after* (seconds, already parsed: see :func:`parse_retry_after`) becomes the
    floor of the next delay whenever the verdict is retry; it matters most on 429 and
    503.
    """
    if type(status) is not int or not 100 <= status <= 599:
        raise LocalProtocolError(f"invalid HTTP status {status!r}")
    floor = 0.0
    if retry_after is not None:
        _check_seconds("retry_after", retry_after)
        floor = float(retry_after)
    if status in (408, 425, 429) or status >= 500:
        return Verdict(True, f"HTTP {status}", floor)
    if status >= 400:
        return Verdict(False, f"HTTP {status}")
    return Verdict(False, f"unexpected HTTP {status}")


def _check_seconds(name: str, value: float) -> None:
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value < 0
    ):
        raise LocalProtocolError(f"{name} must be a finite number >= 0, got {value!r}")


def _check_now(now: float) -> None:
    if not isinstance(now, int | float) or isinstance(now, bool) or not math.isfinite(now):
        raise LocalProtocolError(f"now must be a finite number, got {now!r}")


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
    ``attempt`` counts the failures since the last stable connection.
    """

    resume: Mapping[str, str | None]
    attempt: int


@dataclass(frozen=True, slots=True)
class Wait:
    """Do nothing until ``until`` (then call :meth:`ReconnectingSession.timer`)."""

    until: float
    delay: float
    reason: str


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Stop for good; ``code``/``status`` is the close code or HTTP status that decided."""

    reason: str
    code: int | None = None
    status: int | None = None


#: What a :class:`ReconnectingSession` input may return.
SessionAction = Connect | Wait | GiveUp


def default_backoff() -> Backoff:
    """The backoff a :class:`ReconnectingSession` uses unless given one.

    Full jitter over ``min(30, 1 * 2**n)`` s, reset only after 5 s of stable
    connection, and server floors (``Retry-After``, restart delay) spread over
    ``[floor, 1.5 * floor]``.  The 1 s base (rather than the 0.5 s backoff default)
    spreads the first wave of a reconnect storm over a whole second: 1 000 clients
    losing the server together then peak at about one sixth of the attempts per
    100 ms that un-jittered clients make (see ``tests/test_session.py``).
    """
    return Backoff(FullJitter(base=1.0, cap=30.0), stable_period=5.0, floor_spread=0.5)


class ReconnectingSession:
    """The reconnect/give-up machine of one logical client session, without IO.

    *rng* draws the jitter (``random.SystemRandom()`` or a private ``random.Random()``
    in production, seeded in tests).  *topics* are the streams to resume, mapped to
    their starting positions (``None``: live from now).  *max_retries* gives up instead
    of retrying once that many consecutive retries have failed (``None``: never give up
    on a retryable failure; 0: never retry).  *restart_delay* is the
    minimum wait after close code 1012 and *max_floor* caps any server-imposed
    minimum wait (a hostile ``Retry-After: 99999999`` must not park a client forever).
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
        if max_retries is not None and (type(max_retries) is not int or max_retries < 0):
            raise LocalProtocolError("max_retries must be None or an int >= 0")
        _check_seconds("restart_delay", restart_delay)
        _check_seconds("max_floor", max_floor)
        self._rng = rng
        #: The backoff tracker (attempt counter, stable-period rule).
        self.backoff = default_backoff() if backoff is None else backoff
        self.max_retries = max_retries
        self.restart_delay = restart_delay
        self.max_floor = max_floor
        self._state = SessionState.IDLE
        self._until: float | None = None
        self._positions: dict[str, str | None] = {}
        if isinstance(topics, Mapping):
            for topic, position in topics.items():
                self.track(topic, position)
        else:
            for topic in topics:
                self.track(topic)

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
        """Failed attempts since the last stable connection."""
        return self.backoff.attempt

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
        self.backoff.connected(now)
        self._go(targets, SessionState.OPEN)

    def message(self, position: str, *, topic: str = "") -> None:
        """A message at *position* of *topic* was delivered; resume after it."""
        targets = self._enter(SessionInput.MESSAGE)
        if not isinstance(position, str):
            raise LocalProtocolError("position must be a str (wire form)")
        self._positions[topic] = position
        self._go(targets, SessionState.OPEN)

    def closed(
        self, code: int | None, reason: str = "", *, by_peer: bool, now: float
    ) -> Wait | GiveUp:
        """The open connection ended with close *code* (``None``: no close frame)."""
        _check_now(now)
        targets = self._enter(SessionInput.CLOSED)
        verdict = classify_close(code, by_peer=by_peer, restart_delay=self.restart_delay)
        detail = f"{verdict.reason}: {reason}" if reason else verdict.reason
        return self._after(targets, verdict, detail, now, code=code)

    def http_failure(self, status: int, retry_after: float | None, now: float) -> Wait | GiveUp:
        """The attempt (or a request of an open long-poll session) got HTTP *status*."""
        _check_now(now)
        targets = self._enter(SessionInput.HTTP_FAILURE)
        verdict = classify_http(status, retry_after)
        return self._after(targets, verdict, verdict.reason, now, status=status)

    def network_error(self, now: float, error: str = "") -> Wait | GiveUp:
        """The attempt failed or the connection broke below the protocol (DNS, TCP, TLS)."""
        _check_now(now)
        targets = self._enter(SessionInput.NETWORK_ERROR)
        detail = f"network error: {error}" if error else "network error"
        return self._after(targets, Verdict(True, detail), detail, now)

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
        self,
        targets: frozenset[SessionState],
        verdict: Verdict,
        detail: str,
        now: float,
        *,
        code: int | None = None,
        status: int | None = None,
    ) -> Wait | GiveUp:
        if not verdict.retry:
            self._go(targets, SessionState.CLOSED)
            return GiveUp(detail, code, status)
        floor = min(verdict.floor, self.max_floor)
        delay = self.backoff.disconnected(now, self._rng, floor)
        if self.max_retries is not None and self.backoff.attempt > self.max_retries:
            self._go(targets, SessionState.CLOSED)
            return GiveUp(f"gave up after {self.max_retries} retries ({detail})", code, status)
        self._until = now + delay
        self._go(targets, SessionState.WAITING)
        return Wait(self._until, delay, detail)

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
