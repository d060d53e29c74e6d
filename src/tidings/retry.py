"""Retry or stop, and how long to wait: the one decision every tidings client makes.

A connection (or an attempt at one) ended.  Whether to try again depends only on *how*
it ended -- an HTTP status and its ``Retry-After``, a WebSocket close code and who sent
it, a network error, a stream the server finished -- never on the transport, so it is
written here once:

* :func:`classify_http` and :func:`classify_close` are the decision tables, as pure
  functions returning a :class:`Verdict`;
* :class:`Retrier` joins them to the pacing of :class:`tidings.backoff.Backoff` and to
  ``max_retries``: fed what happened, it answers :class:`Reconnect` (after a delay) or
  :class:`GiveUp`.

The SSE model (:class:`tidings.sse.EventSourceClient`), the long-poll machine
(:class:`tidings.longpoll.LongPollClient`) and the WebSocket session machine
(:class:`tidings.session.ReconnectingSession`) each own one :class:`Retrier`; none of
them decides anything about retrying itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from tidings._checks import check_now as _check_now
from tidings._checks import check_seconds as _check_seconds
from tidings.backoff import Backoff, Random, default_backoff
from tidings.errors import LocalProtocolError

__all__ = [
    "DEFAULT_MAX_FLOOR",
    "DEFAULT_RESTART_DELAY",
    "RETRY_STATUSES",
    "GiveUp",
    "Reconnect",
    "Retrier",
    "Verdict",
    "classify_close",
    "classify_http",
]

#: Minimum wait after WebSocket close code 1012 (service restart), in seconds.
DEFAULT_RESTART_DELAY = 5.0
#: Largest server-imposed floor (``Retry-After``, restart delay) honoured, in seconds.
DEFAULT_MAX_FLOOR = 300.0
#: The HTTP statuses worth another attempt: the request may work later as it is.
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do after a connection ended: retry (after at least *floor* s) or stop."""

    retry: bool
    reason: str
    #: A lower bound on the next delay imposed by the peer (seconds, 0 when none).
    floor: float = 0.0


@dataclass(frozen=True, slots=True)
class Reconnect:
    """Try again in ``delay`` seconds; ``reason`` says what ended the last connection."""

    delay: float
    reason: str


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Stop for good; ``code``/``status`` is the close code or HTTP status that decided."""

    reason: str
    code: int | None = None
    status: int | None = None


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
_STATUS_NAMES: Mapping[int, str] = {
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    408: "Request Timeout",
    410: "Gone",
    425: "Too Early",
    429: "Too Many Requests",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def _status_text(status: int) -> str:
    name = _STATUS_NAMES.get(status)
    return f"HTTP {status} {name}" if name else f"HTTP {status}"


def classify_http(
    status: int, retry_after: float | None = None, *, strict: bool = False
) -> Verdict:
    """Retry or stop after a connection attempt was answered with HTTP *status*.

    Call it for an answer that does not open the stream (or, for long polling, that is
    not an answer to the poll).

    =============================  ====================================================
    status                         verdict
    =============================  ====================================================
    408 425 429 500 502 503 504    retry (:data:`RETRY_STATUSES`): timeouts, "too
                                   early", rate limits, overloaded or restarting
                                   servers and gateways
    any other                      stop: authentication, not found, bad request, 501
                                   and 505 (retrying cannot help), 204 (the server asks
                                   to stop), 1xx-3xx (the wrong answer; following
                                   redirects is the adapter's business before this)
    *strict*                       stop on every status, as a browser's EventSource
                                   does (the WHATWG rule: a non-200 fails the stream)
    =============================  ====================================================

    *retry_after* (seconds, already parsed: see
    :func:`~tidings.retry_after.parse_retry_after`) becomes the floor of the next delay
    whenever the verdict is retry; it matters most on 429 and 503.
    """
    if type(status) is not int or not 100 <= status <= 599:
        raise LocalProtocolError(f"invalid HTTP status {status!r}")
    floor = 0.0
    if retry_after is not None:
        _check_seconds("retry_after", retry_after)
        floor = float(retry_after)
    text = _status_text(status)
    if status in RETRY_STATUSES and not strict:
        return Verdict(True, text, floor)
    if status == 204:
        return Verdict(False, f"{text}: the server asks the client to stop")
    if 100 <= status < 400:
        return Verdict(False, f"unexpected {text}")
    return Verdict(False, text)


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
    4400-4499                   like the HTTP status ``code - 4000``: retry 4408,
                                4425 and 4429, stop on the rest
    4500-4599                   like the HTTP status ``code - 4000``: retry 4500,
                                4502, 4503 and 4504, stop on the rest
    anything else               retry (backoff bounds the cost of guessing wrong)
    ==========================  =======================================================

    **The 4xxx convention.**  Application close codes 4400-4599 mirror the HTTP status
    ``code - 4000`` and are judged exactly as :func:`classify_http` judges that status:
    4401 unauthorized, 4403 forbidden and 4404 no such topic stop; 4408 request
    timeout, 4429 too many requests and 4503 unavailable are retried.  A tidings server
    uses these codes to refuse a session after the upgrade (for example when
    credentials expire).
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
    if 4400 <= code <= 4599:
        as_http = classify_http(code - 4000)
        outcome = "temporary" if as_http.retry else "refused"
        return Verdict(as_http.retry, f"application close {code} ({outcome})")
    return Verdict(True, f"close code {code}")


class Retrier:
    """Retry or stop, and when: the reconnection policy of one client, without IO.

    Tell it when a connection opens (:meth:`connected`) and when it delivers
    something new (:meth:`progress`); when the connection or an attempt ends, call
    the method that says how (:meth:`http_failure`, :meth:`closed`,
    :meth:`network_error`, :meth:`ended`).  Each returns :class:`Reconnect` with the
    delay, or :class:`GiveUp` when the decision table says stop or *max_retries*
    consecutive retries failed.

    *rng* draws the jitter.  *backoff* paces the attempts
    (:func:`~tidings.backoff.default_backoff` by default; see
    :class:`~tidings.backoff.Backoff` for how progress and stable connections reset
    it).  *max_retries* gives up once that many retries in a row have failed
    (``None``: never give up on a retryable failure; ``0``: never retry).
    *restart_delay* is the least wait after close code 1012, and *max_floor* caps any
    floor the server imposes (a hostile ``Retry-After: 99999999`` must not park a
    client forever).  *strict* makes every HTTP status final, as in a browser's
    EventSource.

    :attr:`standing_floor` is a floor the server asked for every reconnection (the
    SSE ``retry`` field, which the SSE client clamps to its own maximum); it is not
    applied after a connection that made progress, unless *strict*.
    """

    def __init__(
        self,
        rng: Random,
        *,
        backoff: Backoff | None = None,
        max_retries: int | None = None,
        restart_delay: float = DEFAULT_RESTART_DELAY,
        max_floor: float = DEFAULT_MAX_FLOOR,
        strict: bool = False,
    ) -> None:
        if max_retries is not None and (type(max_retries) is not int or max_retries < 0):
            raise LocalProtocolError("max_retries must be None or an int >= 0")
        _check_seconds("restart_delay", restart_delay)
        _check_seconds("max_floor", max_floor)
        self._rng = rng
        #: The pacing (attempt counter, what a connection achieved).
        self.backoff = default_backoff() if backoff is None else backoff
        #: Consecutive failed retries tolerated (``None``: no limit).
        self.max_retries = max_retries
        #: Least wait after close code 1012, in seconds.
        self.restart_delay = restart_delay
        #: Largest server-imposed floor honoured, in seconds.
        self.max_floor = max_floor
        #: Whether every HTTP status is final (the WHATWG EventSource rule).
        self.strict = strict
        #: A floor the server asked for every reconnection (seconds; the SSE ``retry``).
        self.standing_floor = 0.0

    @property
    def attempt(self) -> int:
        """Failed attempts since the last stable or productive connection."""
        return self.backoff.attempt

    def connected(self, now: float) -> None:
        """A connection opened at *now* (a good response, an accepted handshake)."""
        _check_now(now)
        self.backoff.connected(now)

    def progress(self) -> None:
        """The open connection delivered something new: its loss will not count as a
        failure."""
        self.backoff.progress()

    def http_failure(
        self, status: int, retry_after: float | None, now: float
    ) -> Reconnect | GiveUp:
        """An attempt (or a long poll) was answered with *status* instead of the stream.

        A status no HTTP response can have (outside 100-599; h11 reads any three
        digits) comes from a broken server: it is final, like an unknown status.
        """
        if type(status) is int and not 100 <= status <= 599:
            verdict = Verdict(False, f"invalid HTTP status {status}")
            return self._after(verdict, verdict.reason, now, status=status)
        verdict = classify_http(status, retry_after, strict=self.strict)
        return self._after(verdict, verdict.reason, now, status=status)

    def closed(
        self, code: int | None, reason: str = "", *, by_peer: bool, now: float
    ) -> Reconnect | GiveUp:
        """A WebSocket ended with close *code* (``None``: no close frame)."""
        verdict = classify_close(code, by_peer=by_peer, restart_delay=self.restart_delay)
        detail = f"{verdict.reason}: {reason}" if reason else verdict.reason
        return self._after(verdict, detail, now, code=code)

    def network_error(self, now: float, error: str = "") -> Reconnect | GiveUp:
        """The attempt failed or the connection broke below the protocol (DNS, TCP, TLS,
        a timeout, a body cut short)."""
        detail = f"network error: {error}" if error else "network error"
        return self._after(Verdict(True, detail), detail, now)

    def ended(self, now: float, reason: str = "stream ended by the server") -> Reconnect | GiveUp:
        """The server finished the stream cleanly (an SSE body ended): reconnect."""
        return self._after(Verdict(True, reason), reason, now)

    def _after(
        self,
        verdict: Verdict,
        detail: str,
        now: float,
        *,
        code: int | None = None,
        status: int | None = None,
    ) -> Reconnect | GiveUp:
        _check_now(now)
        if not verdict.retry:
            self.backoff.disconnected(now, self._rng)  # the connection is over either way
            return GiveUp(detail, code, status)
        floor = min(verdict.floor, self.max_floor)
        standing = self.standing_floor
        if self.strict:
            floor, standing = max(floor, standing), 0.0
        delay = self.backoff.disconnected(now, self._rng, floor, standing_floor=standing)
        if self.max_retries is not None and self.backoff.attempt > self.max_retries:
            return GiveUp(f"gave up after {self.max_retries} retries ({detail})", code, status)
        return Reconnect(delay, detail)

    def __repr__(self) -> str:
        return (
            f"<Retrier attempt={self.attempt} max_retries={self.max_retries} strict={self.strict}>"
        )
