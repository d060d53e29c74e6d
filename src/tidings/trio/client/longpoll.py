"""Follow a long-poll endpoint from Trio, resuming by cursor through every failure.

:func:`open_long_poll` is the pump around :class:`~tidings.longpoll.LongPollClient`:
it sleeps until the machine says to send, performs the request the machine built
(HTTP/1.1 or HTTP/2, see :mod:`tidings.trio.client._http`), and hands the complete
answer back.  Every decision -- the request's URL and headers, what an answer
means, how long to back off, whether ``Retry-After`` applies, when to stop -- is
the machine's.

Like :func:`~tidings.trio.open_event_stream`, the result is *pulled*: the next
request goes out only when the consumer has taken everything the previous answer
brought, so a slow consumer slows the polling instead of growing a buffer here.  It
yields what every tidings client yields, :class:`~tidings.events.Event` and
:class:`~tidings.events.ResetNotice`, in order.

Failed polls are logged under ``tidings.trio.longpoll`` at INFO (with the reason and
the delay); nothing is printed.
"""

from __future__ import annotations

import logging
import random
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Literal

import trio

from tidings.backoff import Backoff, Random
from tidings.events import DEFAULT_EVENT_TYPE, Event, ResetNotice
from tidings.longpoll.adaptive import AdaptivePoller
from tidings.longpoll.client import (
    DEFAULT_MAX_BODY_SIZE,
    LongPollClient,
    PollEvent,
    PollRejected,
    PollReset,
)
from tidings.retry import GiveUp
from tidings.trio.client._args import check_headers, check_timeout, topic_from_path
from tidings.trio.client._http import URL, HTTPTransportError, open_request

__all__ = ["DEFAULT_POLL_CONNECT_TIMEOUT", "LongPoll", "open_long_poll"]

logger = logging.getLogger("tidings.trio.longpoll")

#: Seconds allowed for connecting, the TLS handshake and sending the request.
DEFAULT_POLL_CONNECT_TIMEOUT = 30.0

_MANAGED = frozenset({b"accept", b"cache-control", b"if-none-match"})


class LongPoll:
    """The events of one poll endpoint, across requests and failures: an async iterator.

    Yields :class:`~tidings.events.Event` for every event and
    :class:`~tidings.events.ResetNotice` when the server could not continue from the
    cursor (events were skipped; resynchronise, then carry on); their ``topic`` is
    :attr:`topic`.  Network errors, timeouts and the statuses every tidings client
    retries (408, 425, 429, 500, 502, 503, 504) are never seen: the request is repeated
    from the same cursor after a backoff.  Iteration ends when the server answers
    ``204``; :class:`~tidings.longpoll.PollRejected` (a status that must not be
    retried, or ``max_retries`` failures in a row) or
    :class:`~tidings.errors.RemoteProtocolError` (a ``200`` that is not a poll answer,
    refused as soon as its head arrives) end it for good.  Obtain one with
    :func:`open_long_poll`.
    """

    def __init__(
        self,
        machine: LongPollClient,
        *,
        headers: list[tuple[bytes, bytes]],
        http2: bool | None,
        ssl_context: ssl.SSLContext | None,
        connect_timeout: float | None,
    ) -> None:
        self._machine = machine
        self._headers = headers
        self._http2 = http2
        self._ssl_context = ssl_context
        self._connect_timeout = connect_timeout
        self._pending: deque[PollEvent | PollReset] = deque()
        self._topic = topic_from_path(URL.parse(machine.url).target, "poll")
        self._consumed = machine.cursor
        self._requests = 0
        self._failures = 0
        self._http_version: str | None = None

    # -- inspection -------------------------------------------------------------------

    @property
    def cursor(self) -> str | None:
        """The cursor to resume after what was consumed so far (persist it to resume).

        Items already received but not yet consumed do not count.
        """
        if self._pending:
            return self._consumed
        return self._machine.cursor

    @property
    def topic(self) -> str | None:
        """The topic named by the URL (``.../topics/{topic}/poll``), else ``None``."""
        return self._topic

    @property
    def requests(self) -> int:
        """Polls that got an answer so far."""
        return self._requests

    @property
    def failures(self) -> int:
        """Polls that failed without an answer so far (and were repeated)."""
        return self._failures

    @property
    def http_version(self) -> str | None:
        """``"1.1"`` or ``"2"``: the version of the last answer, ``None`` before one."""
        return self._http_version

    # -- iteration --------------------------------------------------------------------

    def __aiter__(self) -> LongPoll:
        return self

    async def __anext__(self) -> Event | ResetNotice:
        while not self._pending:
            if self._machine.closed:
                gave_up = self._machine.gave_up
                if gave_up is not None:
                    raise PollRejected(gave_up.status, f"{self._machine.url}: {gave_up.reason}")
                raise StopAsyncIteration
            await self._poll_once()
        item = self._pending.popleft()
        if isinstance(item, PollReset):
            self._consumed = item.cursor
            return ResetNotice(self._topic, item.cursor, item.reason)
        self._consumed = item.id
        return Event(self._topic, item.id, item.event or DEFAULT_EVENT_TYPE, item.data)

    async def _poll_once(self) -> None:
        machine = self._machine
        deadline = machine.next_deadline()
        assert deadline is not None
        if deadline > trio.current_time():
            await trio.sleep_until(deadline)
        else:
            await trio.lowlevel.checkpoint()
        outgoing = machine.send_request(trio.current_time())
        # The connect timeout bounds connecting and sending; the machine's timeout
        # (hold time plus grace) bounds the whole exchange.
        limit = outgoing.timeout + (self._connect_timeout or 0.0)
        try:
            with trio.fail_after(limit):
                async with open_request(
                    "GET",
                    outgoing.url,
                    headers=[*outgoing.headers, *self._headers],
                    http2=self._http2,
                    ssl_context=self._ssl_context,
                ) as response:
                    # A 200 that is not JSON (an event stream never ends) fails now.
                    machine.receive_head(response.status, response.headers)
                    body = await self._read(response.receive_some)
        except (HTTPTransportError, trio.TooSlowError) as exc:
            self._failures += 1
            reason = "timed out" if isinstance(exc, trio.TooSlowError) else str(exc)
            decision = machine.connection_failed(trio.current_time(), reason)
            if not isinstance(decision, GiveUp):
                logger.info(
                    "%s: %s; retrying in %.3f s",
                    machine.url,
                    decision.reason,
                    decision.delay,
                )
            return
        self._requests += 1
        self._http_version = response.http_version
        items = machine.receive_response(
            response.status,
            response.headers,
            body,
            trio.current_time(),
            wall_time=time.time(),
        )
        if response.status not in (200, 204, 304):  # a status worth another attempt
            deadline = machine.next_deadline()
            assert deadline is not None
            logger.info(
                "%s: server answered %d; retrying in %.3f s",
                machine.url,
                response.status,
                deadline - trio.current_time(),
            )
        self._pending.extend(items)

    async def _read(self, receive: Callable[[], Awaitable[bytes]]) -> bytes:
        # Read at most one byte beyond the limit: the machine judges the size.
        cap = self._machine.max_body_size + 1
        chunks: list[bytes] = []
        size = 0
        while size < cap:
            chunk = await receive()
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)

    async def aclose(self) -> None:
        """Stop for good; iteration then ends.  Safe to call more than once."""
        self._machine.close()
        self._pending.clear()

    async def __aenter__(self) -> LongPoll:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


@asynccontextmanager
async def open_long_poll(
    url: str,
    *,
    cursor: str | None = None,
    cursor_in: Literal["query", "header"] | None = None,
    hold: float | None = None,
    limit: int | None = None,
    poller: AdaptivePoller | None = None,
    headers: Mapping[str, str] | None = None,
    http2: bool | None = None,
    ssl_context: ssl.SSLContext | None = None,
    connect_timeout: float | None = DEFAULT_POLL_CONNECT_TIMEOUT,
    backoff: Backoff | None = None,
    max_retries: int | None = None,
    min_interval: float = 1.0,
    timeout_grace: float = 10.0,
    max_retry_after: float = 600.0,
    max_body_size: int = DEFAULT_MAX_BODY_SIZE,
    rng: Random | None = None,
) -> AsyncIterator[LongPoll]:
    """Follow the poll endpoint at *url*; yields a :class:`LongPoll` to iterate.

    ::

        async with open_long_poll("http://localhost:8000/topics/news/poll") as poll:
            async for item in poll:
                if isinstance(item, ResetNotice):
                    ...  # resynchronise: events before item.cursor were skipped
                else:
                    print(item.topic, item.id, item.event, item.data)

    It yields :class:`~tidings.events.Event` and :class:`~tidings.events.ResetNotice`,
    as the SSE and WebSocket clients do; ``topic`` comes from a ``/topics/{topic}/poll``
    URL and is ``None`` for other endpoints.

    *cursor* is where to start: a cursor (the ``id`` of the last event handled),
    ``"earliest"`` for everything retained, or ``None`` for live from now.  The
    cursor moves only when a complete answer arrived, so a request cut off anywhere
    is repeated from the same cursor: every event once, in order, or a reset.

    *hold* is the ``timeout`` asked of the server: how long it may hold a request
    when nothing is new (default 25 s; ``0`` with a *poller*).  *cursor_in*, *limit*,
    *poller*, *backoff*, *max_retries*, *min_interval*, *timeout_grace*,
    *max_retry_after* and *max_body_size* configure the
    :class:`~tidings.longpoll.LongPollClient` (see there: by default the cursor goes in
    the query; with an :class:`~tidings.longpoll.AdaptivePoller` it is conditional short
    polling with ``If-None-Match``; retries are decided and paced as for every tidings
    client).  *rng* drives the backoff jitter (default :class:`random.SystemRandom`).

    *http2*, *ssl_context* and *headers* (a mapping of names to values) are as for
    :func:`~tidings.trio.open_event_stream` (``Accept``, ``Cache-Control`` and
    ``If-None-Match`` are the client's own).  Each poll uses a fresh connection; a
    poll that gets no complete answer within *connect_timeout* plus the hold time
    plus *timeout_grace* counts as a network failure.  The first request goes out
    on the first iteration.
    """
    URL.parse(url)  # refuse what no request could be sent to, before any waiting
    extra = check_headers(headers, _MANAGED, "long-poll client")
    check_timeout("connect_timeout", connect_timeout, finite=True)
    machine = LongPollClient(
        url,
        rng=rng if rng is not None else random.SystemRandom(),
        cursor=cursor,
        cursor_in=cursor_in,
        timeout=hold,
        limit=limit,
        poller=poller,
        backoff=backoff,
        max_retries=max_retries,
        min_interval=min_interval,
        timeout_grace=timeout_grace,
        max_retry_after=max_retry_after,
        max_body_size=max_body_size,
    )
    poll = LongPoll(
        machine,
        headers=extra,
        http2=http2,
        ssl_context=ssl_context,
        connect_timeout=connect_timeout,
    )
    async with poll:
        yield poll
