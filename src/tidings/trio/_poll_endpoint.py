"""``GET /topics/{topic}/poll``: long polling, driven by :class:`~tidings.longpoll.LongPollServer`.

Every decision (parse, answer now, hold, time out, ``304``, reset, ``400``) is the
sans-IO machine's; this module only supplies the clock, the wake-ups and the socket:

* the request is parsed with :func:`~tidings.longpoll.parse_poll_request`; a bad one
  gets the machine's JSON ``400``;
* the history is read at once; with events waiting (or a reset) the answer goes out
  without subscribing to anything, so immediate answers stay cheap;
* otherwise the request subscribes to the topic *before* any checkpoint (Trio is
  cooperative, so no publish can slip in between the read and the subscription)
  and sleeps until a publish wakes it, its deadline passes, the client goes away
  or the server drains.  No timer polls the history.

Noticing the client leaving: on a plain HTTP/1.1 socket the request waits on its
subscription's :class:`~tidings.trio.Waiter` (a publish wakes it in microseconds)
while the server's :class:`~tidings.trio._disconnects.DisconnectWatcher` watches its
socket; elsewhere (TLS, HTTP/2) it uses ``Responder.watch_disconnect``.  Waking
thousands of held requests that wait on their sockets would cost a cancellation
each, an order of magnitude more.

The subscription is a wake-up only: the answer is always read from the history, so
its buffer is one event long; a burst that overflows it just closes it, which wakes
the request too.  A drain answers every held request at once with "nothing new" (the
empty ``200`` or ``304``, plus ``Connection: close`` on HTTP/1.1) so that clients
come back, elsewhere, right away.  A held request keeps its connection busy, so it
counts toward :attr:`~tidings.trio.ServerConfig.max_connections` like any other.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING

import trio

from tidings.errors import RemoteProtocolError
from tidings.longpoll.request import PollLimits, parse_poll_request
from tidings.longpoll.server import LongPollServer, PollAnswer, error_answer
from tidings.trio._disconnects import DisconnectWatcher, watcher_for
from tidings.trio._h11 import H11Connection
from tidings.trio._http import Request, Responder
from tidings.trio._routes import Handler
from tidings.trio.hub import LiveEvent, Subscription

if TYPE_CHECKING:
    from tidings.trio._app import App

__all__ = ["long_poll", "make_long_poll_handler"]

# A held request needs only to learn *that* something was published; the events
# are read from the history.  One buffered event is enough for that.
_WAKE_BUFFER = 1


async def _send(app: App, responder: Responder, answer: PollAnswer) -> None:
    # The responder adds Content-Length itself.
    headers = app.headers(*(item for item in answer.headers if item[0] != b"content-length"))
    await responder.respond(answer.status, headers, answer.body)


def make_long_poll_handler(limits: PollLimits | None = None) -> Handler:
    """A ``GET /topics/{topic}/poll`` handler granting at most *limits*.

    The default route uses :data:`long_poll` (default :class:`~tidings.longpoll.PollLimits`:
    25 s default hold, 30 s maximum, 100 events per answer by default, 1000 at most);
    mount one made here on a custom :class:`~tidings.trio._routes.Router` to change them.
    """
    grant = PollLimits() if limits is None else limits

    async def handler(app: App, request: Request, responder: Responder) -> None:
        await _long_poll(app, request, responder, grant)

    handler.__doc__ = "Serve one long poll (see :mod:`tidings.trio._poll_endpoint`)."
    return handler


async def _long_poll(app: App, request: Request, responder: Responder, limits: PollLimits) -> None:
    try:
        poll = parse_poll_request(request.query, request.headers, limits)
    except RemoteProtocolError as exc:
        await _send(app, responder, error_answer(str(exc), exc.error_status_hint))
        return
    topic = request.params["topic"]
    hub = app.hub
    history = hub.history
    now = trio.current_time()
    server = LongPollServer(topic, poll, now)
    answer = server.poll(history, now)
    if answer is None and app.draining:
        answer = _nothing_new(server)
    if answer is None:
        answer = await _hold(app, responder, server)
        if answer is None:
            return  # the client went away
    await _send(app, responder, answer)


def _nothing_new(server: LongPollServer) -> PollAnswer:
    """The timeout answer, now (the server is draining)."""
    deadline = server.next_deadline()
    assert deadline is not None
    answer = server.handle_timer(deadline)
    assert answer is not None
    return answer


class _WakeSink:
    """A :class:`~tidings.trio.hub.DirectSink` that takes nothing.

    The hub offers it the first event published; refusing makes the hub detach and
    interrupt it, and the interruption is the wake-up of the held request.  A close
    of the subscription (drain) interrupts it too.
    """

    __slots__ = ("scope", "woken")

    def __init__(self, scope: trio.CancelScope) -> None:
        self.scope = scope
        self.woken = False

    def deliver(self, item: LiveEvent) -> bool:
        return False

    def flush(self) -> None:
        pass

    def interrupt(self) -> None:
        self.woken = True
        self.scope.cancel()


async def _wait_on_socket(
    connection: H11Connection, subscription: Subscription, deadline: float
) -> bool:
    """Like ``subscription.wait(deadline)``, in the connection's own task.

    The task waits for the socket to become readable (the client leaving, which
    marks the connection gone) while the hub holds a :class:`_WakeSink`: one task,
    one cancel scope, no nursery per held request.
    """
    if subscription.waiter.is_set or subscription.pending or subscription.closed is not None:
        subscription.waiter.clear()
        await trio.lowlevel.checkpoint()
        return True
    with trio.CancelScope(deadline=deadline) as scope:
        sink = _WakeSink(scope)
        subscription.sink = sink
        try:
            await connection.wait_gone()
        finally:
            if subscription.sink is sink:
                subscription.sink = None
    return sink.woken


class _WatchedWait:
    """``subscription.wait(deadline)`` for a held request on a plain HTTP/1.1 socket.

    The socket is registered with the server's :class:`DisconnectWatcher` while the
    request waits on its subscription's waiter, so a publish wakes it cheaply and the
    client leaving wakes it too.  If the client sends more (pipelining) instead, the
    request falls back to :func:`_wait_on_socket`, which takes those bytes in.
    """

    __slots__ = ("connection", "fallback", "fd", "readable", "subscription", "watcher")

    def __init__(
        self, watcher: DisconnectWatcher, connection: H11Connection, subscription: Subscription
    ) -> None:
        self.watcher = watcher
        self.connection = connection
        self.subscription = subscription
        self.fd = connection.stream.socket.fileno()  # type: ignore[attr-defined]
        self.readable = False
        self.fallback = False

    def _on_readable(self) -> None:
        self.readable = True
        self.subscription.wake()

    async def __call__(self, deadline: float) -> bool:
        if self.fallback:
            return await _wait_on_socket(self.connection, self.subscription, deadline)
        self.watcher.add(self.fd, self._on_readable)
        try:
            woken = await self.subscription.wait(deadline)
        finally:
            self.watcher.discard(self.fd)
        if self.readable:
            self.readable = False
            if not await self._client_left():
                self.fallback = True
        return woken

    async def _client_left(self) -> bool:
        """After the socket turned readable: did the client close (then mark it gone)?"""
        sock = self.connection.stream.socket  # type: ignore[attr-defined]
        try:
            data = await sock.recv(1, socket.MSG_PEEK)
        except OSError:
            data = b""
        if data:
            return False
        await self.connection.read_until_gone()
        return True


def _plain_h11(responder: Responder) -> H11Connection | None:
    """The HTTP/1.1 connection behind *responder* when it is a plain TCP socket."""
    connection = getattr(responder, "connection", None)
    if isinstance(connection, H11Connection) and isinstance(connection.stream, trio.SocketStream):
        return connection
    return None


async def _hold(app: App, responder: Responder, server: LongPollServer) -> PollAnswer | None:
    """Wait for a publish, the deadline, a drain or the client leaving."""
    connection = _plain_h11(responder)
    watcher = watcher_for(app) if connection is not None else None
    answer: PollAnswer | None = None
    # No checkpoint between the read in _long_poll and this subscription.
    with app.hub.subscribe(server.topic, None, max_pending_events=_WAKE_BUFFER) as subscription:
        app.subscriptions.add(subscription)
        try:
            if connection is not None:
                wait: Callable[[float], Awaitable[bool]]
                if watcher is not None:
                    wait = _WatchedWait(watcher, connection, subscription)
                else:
                    wait = partial(_wait_on_socket, connection, subscription)
                answer = await _hold_loop(app, responder, server, subscription, wait)
            else:
                # Cancelled (and left with answer None) when the client goes away.
                async with responder.watch_disconnect():
                    answer = await _hold_loop(
                        app, responder, server, subscription, subscription.wait
                    )
        finally:
            app.subscriptions.discard(subscription)
    return answer


async def _hold_loop(
    app: App,
    responder: Responder,
    server: LongPollServer,
    subscription: Subscription,
    wait: Callable[[float], Awaitable[bool]],
) -> PollAnswer | None:
    history = app.hub.history
    while True:
        deadline = server.next_deadline()
        assert deadline is not None
        woken = await wait(deadline)
        if responder.client_gone:
            return None
        now = trio.current_time()
        if not woken:
            answer = server.handle_timer(now)
        else:
            subscription.next_batch()  # forget the wake-up's event: we read
            answer = server.poll(history, now)
            if answer is None and subscription.closed is not None:
                # Closed by a drain (or overflowed with nothing new to us): answer
                # "nothing new" now; the client comes straight back.
                answer = _nothing_new(server)
        if answer is not None:
            return answer


#: The default ``GET /topics/{topic}/poll`` handler (default :class:`~tidings.longpoll.PollLimits`).
long_poll: Handler = make_long_poll_handler()
