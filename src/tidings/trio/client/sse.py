"""Follow a server-sent event stream from Trio, reconnecting and resuming by itself.

:func:`open_event_stream` is the pump around :class:`~tidings.sse.client.EventSourceClient`:
it opens HTTP connections (HTTP/1.1 or HTTP/2, see
:mod:`tidings.trio.client._http`), feeds the machine, sleeps when it says to wait
and hands out what it parses.  Every decision -- which headers, whether a response
opens the stream, how long to wait, which ``Last-Event-ID`` to send -- is the
machine's.

The stream is *pulled*: nothing is read from the network while the consumer is busy,
so a slow consumer applies backpressure to the server (TCP and HTTP/2 flow control)
instead of growing a buffer here.

Connections and reconnections (with the reason and the delay) are logged under
``tidings.trio.client`` at INFO; nothing is printed.
"""

from __future__ import annotations

import logging
import random
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from types import TracebackType
from urllib.parse import urljoin

import trio

from tidings.backoff import Backoff, Random
from tidings.errors import LocalProtocolError, RemoteProtocolError
from tidings.events import Event, ResetNotice
from tidings.retry import GiveUp, Reconnect
from tidings.sse.client import (
    DEFAULT_MAX_RECONNECTION_TIME,
    EventSourceClient,
    EventSourceCloseReason,
    EventSourceState,
)
from tidings.sse.parser import DEFAULT_MAX_EVENT_SIZE, DEFAULT_MAX_LINE_LENGTH, MessageEvent
from tidings.sse.reset import parse_reset
from tidings.trio.client._args import check_headers, check_timeout, topic_from_path
from tidings.trio.client._http import URL, HTTPResponse, HTTPTransportError, open_request

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_MAX_REDIRECTS",
    "EventStream",
    "EventStreamClosed",
    "EventStreamError",
    "EventStreamFailed",
    "open_event_stream",
]

logger = logging.getLogger("tidings.trio.client")

#: Seconds allowed for connecting, the TLS handshake and the response head.
DEFAULT_CONNECT_TIMEOUT = 30.0
#: Redirects followed per connection attempt (Fetch allows 20; a stream needs few).
DEFAULT_MAX_REDIRECTS = 10

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


class EventStreamError(Exception):
    """The event stream ended for good; reconnecting would not help.

    ``status`` and ``content_type`` describe the last response (``None`` when the
    stream failed for another reason, such as an event beyond a size limit).
    """

    def __init__(
        self, message: str, *, status: int | None = None, content_type: str | None = None
    ) -> None:
        super().__init__(message)
        #: The status of the response that ended the stream, if one did.
        self.status = status
        #: Its ``Content-Type`` header, if any.
        self.content_type = content_type


class EventStreamClosed(EventStreamError):
    """The server answered ``204 No Content``: it asks this client to stop."""


class EventStreamFailed(EventStreamError):
    """The stream cannot go on: a status that must not be retried (after redirects;
    with ``strict=True``, any status but 200), a media type other than
    ``text/event-stream``, too many redirects, a body that broke the protocol or a size
    limit, or ``max_retries`` failed retries in a row."""


_MANAGED = frozenset({b"accept", b"cache-control", b"last-event-id"})


def _content_type(response: HTTPResponse) -> str | None:
    value = response.get_header(b"content-type")
    return None if value is None else value.decode("latin-1")


class EventStream:
    """The events of one logical stream, across reconnections: an async iterator.

    Yields :class:`~tidings.events.Event` for every event and
    :class:`~tidings.events.ResetNotice` when a tidings server says it could not resume
    from :attr:`last_event_id` (type ``tidings.reset``); their ``topic`` is
    :attr:`topic`.  Raises :class:`EventStreamClosed` or :class:`EventStreamFailed` when
    the stream ends for good; network errors, ended bodies and statuses worth another
    attempt (503 ...) are never seen, they cause a reconnection.  Obtain one with
    :func:`open_event_stream`.
    """

    def __init__(
        self,
        url: URL,
        machine: EventSourceClient,
        *,
        headers: list[tuple[bytes, bytes]],
        http2: bool | None,
        ssl_context: ssl.SSLContext | None,
        connect_timeout: float | None,
        idle_timeout: float | None,
        max_redirects: int,
    ) -> None:
        self._url = url
        self._machine = machine
        self._headers = headers
        self._http2 = http2
        self._ssl_context = ssl_context
        self._connect_timeout = connect_timeout
        self._idle_timeout = idle_timeout
        self._max_redirects = max_redirects
        self._pending: deque[MessageEvent] = deque()
        self._connection: AsyncExitStack | None = None
        self._response: HTTPResponse | None = None
        self._error: EventStreamError | None = None
        self._connections = 0
        self._consumed_id = machine.last_event_id
        self._topic = topic_from_path(url.target, "events")

    # -- inspection -------------------------------------------------------------------

    @property
    def last_event_id(self) -> str:
        """The ID to resume after what was consumed so far (persist it to resume later).

        Events already received but not yet consumed do not count: resuming from this
        ID in another process gets them again.
        """
        if self._pending:
            return self._consumed_id
        return self._machine.last_event_id

    @property
    def topic(self) -> str | None:
        """The topic named by the URL (``.../topics/{topic}/events``), else ``None``."""
        return self._topic

    @property
    def reconnection_time(self) -> float:
        """The server's ``retry`` in seconds: the least wait before reconnecting."""
        return self._machine.reconnection_time

    @property
    def connections(self) -> int:
        """How many responses opened the stream so far (1 + successful reconnections)."""
        return self._connections

    @property
    def http_version(self) -> str | None:
        """``"1.1"`` or ``"2"`` while a connection is open, else ``None``."""
        return None if self._response is None else self._response.http_version

    # -- iteration --------------------------------------------------------------------

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event | ResetNotice:
        while not self._pending:
            await self._fill()
        event = self._pending.popleft()
        self._consumed_id = event.last_event_id
        return parse_reset(event, self._topic) or Event(
            self._topic, event.last_event_id, event.type, event.data
        )

    async def _fill(self) -> None:
        """One step: wait, connect or read, as the machine's state says; or raise."""
        machine = self._machine
        state = machine.state
        if state is EventSourceState.CLOSED:
            if self._error is not None:
                raise self._error
            raise StopAsyncIteration
        if state is EventSourceState.WAITING:
            deadline = machine.next_deadline()
            assert deadline is not None
            await trio.sleep_until(deadline)
            machine.handle_timer(trio.current_time())
        elif state is EventSourceState.CONNECTING:
            await self._connect()
        else:
            await self._receive()

    async def _connect(self) -> None:
        machine = self._machine
        request_headers = [*machine.request_headers(), *self._headers]
        stack = AsyncExitStack()
        try:
            with trio.fail_after(self._connect_timeout or float("inf")):
                response = await self._follow(stack, request_headers)
        except (HTTPTransportError, trio.TooSlowError) as exc:
            await stack.aclose()
            self._lost("", exc)
            return
        except BaseException:
            await stack.aclose()
            raise
        machine.receive_response(
            response.status, response.headers, trio.current_time(), wall_time=time.time()
        )
        if machine.state is EventSourceState.WAITING:
            await stack.aclose()
            self._log_reconnect(machine.last_decision)
            return
        if machine.state is EventSourceState.CLOSED:
            await stack.aclose()
            kind = (
                EventStreamClosed
                if machine.close_reason is EventSourceCloseReason.SERVER_STOP
                else EventStreamFailed
            )
            self._error = kind(
                f"{self._url}: {machine.close_message}",
                status=response.status,
                content_type=_content_type(response),
            )
            raise self._error
        self._connection = stack
        self._response = response
        self._connections += 1
        logger.info(
            "%s: connected (HTTP/%s), last event id %r",
            self._url,
            response.http_version,
            machine.last_event_id,
        )

    async def _follow(
        self, stack: AsyncExitStack, headers: list[tuple[bytes, bytes]]
    ) -> HTTPResponse:
        url = self._url
        for _ in range(self._max_redirects + 1):
            response = await stack.enter_async_context(
                open_request(
                    "GET",
                    url,
                    headers=headers,
                    http2=self._http2,
                    ssl_context=self._ssl_context,
                )
            )
            location = response.get_header(b"location")
            if response.status not in _REDIRECT_STATUSES or location is None:
                return response
            await stack.aclose()
            try:
                url = URL.parse(urljoin(str(url), location.decode("latin-1")))
            except LocalProtocolError as exc:
                raise self._fail(f"bad redirect: {exc}", response) from None
        raise self._fail(f"more than {self._max_redirects} redirects", response)

    def _fail(self, message: str, response: HTTPResponse | None = None) -> EventStreamFailed:
        self._machine.close()
        self._error = EventStreamFailed(
            f"{self._url}: {message}",
            status=None if response is None else response.status,
            content_type=None if response is None else _content_type(response),
        )
        return self._error

    async def _receive(self) -> None:
        response = self._response
        assert response is not None
        try:
            with trio.fail_after(self._idle_timeout or float("inf")):
                data = await response.receive_some()
        except (HTTPTransportError, trio.TooSlowError) as exc:
            await self._disconnect()
            self._lost("connection lost", exc)
            return
        machine = self._machine
        if not data:
            await self._disconnect()
            self._after(machine.receive_eof(trio.current_time()))
            return
        try:
            self._pending.extend(machine.receive_data(data))
        except RemoteProtocolError as exc:
            await self._disconnect()
            raise self._fail(f"invalid event stream: {exc}", response) from exc

    def _lost(self, what: str, exc: BaseException) -> None:
        reason = "timed out" if isinstance(exc, trio.TooSlowError) else str(exc)
        error = f"{what}: {reason}" if what else reason
        self._after(self._machine.connection_failed(trio.current_time(), error))

    def _after(self, decision: Reconnect | GiveUp) -> None:
        if isinstance(decision, GiveUp):
            self._error = EventStreamFailed(f"{self._url}: {decision.reason}")
            raise self._error
        self._log_reconnect(decision)

    def _log_reconnect(self, decision: Reconnect | GiveUp | None) -> None:
        if isinstance(decision, Reconnect):
            logger.info(
                "%s: %s; reconnecting in %.3f s", self._url, decision.reason, decision.delay
            )

    async def _disconnect(self) -> None:
        stack, self._connection, self._response = self._connection, None, None
        if stack is not None:
            await stack.aclose()

    async def aclose(self) -> None:
        """Stop for good and close the connection; iteration then ends."""
        self._machine.close()
        self._pending.clear()
        await self._disconnect()

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


@asynccontextmanager
async def open_event_stream(
    url: str,
    *,
    last_event_id: str | None = None,
    headers: Mapping[str, str] | None = None,
    http2: bool | None = None,
    ssl_context: ssl.SSLContext | None = None,
    connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
    idle_timeout: float | None = None,
    max_redirects: int = DEFAULT_MAX_REDIRECTS,
    backoff: Backoff | None = None,
    max_retries: int | None = None,
    strict: bool = False,
    max_reconnection_time: float = DEFAULT_MAX_RECONNECTION_TIME,
    max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
    max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
    rng: Random | None = None,
) -> AsyncIterator[EventStream]:
    """Follow the SSE stream at *url*; yields an :class:`EventStream` to iterate.

    ::

        async with open_event_stream("http://localhost:8000/topics/news/events") as events:
            async for item in events:
                if isinstance(item, ResetNotice):
                    ...  # resynchronise: events before item.cursor were skipped
                else:
                    print(item.topic, item.id, item.event, item.data)

    It yields :class:`~tidings.events.Event` and :class:`~tidings.events.ResetNotice`,
    as the long-poll and WebSocket clients do; ``topic`` comes from a
    ``/topics/{topic}/events`` URL and is ``None`` for other streams.

    The first connection sends *last_event_id* as ``Last-Event-ID`` (when given and
    not empty); later ones send the ID of the last event received.  The connection is
    made lazily, on the first iteration.  A network error, a timeout, the end of the
    body or a status worth another attempt (408, 425, 429, 500, 502, 503, 504, with
    ``Retry-After`` honoured) leads to a reconnection, decided and paced as for every
    tidings client by a :class:`~tidings.retry.Retrier`: *backoff*
    (:func:`~tidings.backoff.default_backoff` by default) with the server's ``retry``
    as a floor, except after a connection that delivered new events, which resumes
    promptly; *max_retries* failed retries in a row end the stream (``None``: never).
    *strict* applies the WHATWG rules instead: any status but 200 fails the stream and
    the ``retry`` is always waited.  See :class:`~tidings.sse.client.EventSourceClient`
    for *max_reconnection_time* and the parser limits *max_line_length* and
    *max_event_size*.

    *http2*: ``None`` lets TLS (ALPN) choose between HTTP/2 and HTTP/1.1 and uses
    HTTP/1.1 on cleartext; ``True`` insists on HTTP/2 (prior knowledge on ``http://``);
    ``False`` insists on HTTP/1.1.  *ssl_context* (for ``https://``) has its ALPN
    protocols set accordingly.  *connect_timeout* bounds connecting plus the response
    head, *idle_timeout* (default: none) the silence between two reads of the body;
    both count as network errors.  Up to *max_redirects* redirects are followed, and
    every reconnection starts again from *url*.  *headers* (a mapping of names to
    values, as for every tidings client) are added to every request; ``Accept``,
    ``Cache-Control`` and ``Last-Event-ID`` are the client's own.  *rng* drives the
    jitter (default :class:`random.SystemRandom`).

    Leaving the block closes the connection.
    """
    target = URL.parse(url)
    extra = check_headers(headers, _MANAGED, "event stream client (use last_event_id=)")
    if max_redirects < 0:
        raise LocalProtocolError("max_redirects must be >= 0")
    check_timeout("connect_timeout", connect_timeout)
    check_timeout("idle_timeout", idle_timeout)
    machine = EventSourceClient(
        rng=random.SystemRandom() if rng is None else rng,
        last_event_id=last_event_id or "",
        max_reconnection_time=max_reconnection_time,
        backoff=backoff,
        max_retries=max_retries,
        strict=strict,
        max_line_length=max_line_length,
        max_event_size=max_event_size,
    )
    stream = EventStream(
        target,
        machine,
        headers=extra,
        http2=http2,
        ssl_context=ssl_context,
        connect_timeout=connect_timeout,
        idle_timeout=idle_timeout,
        max_redirects=max_redirects,
    )
    async with stream:
        yield stream
