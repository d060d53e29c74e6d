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

Answering a publish: on that plain HTTP/1.1 socket the held request also leaves an
:class:`_AnswerSink` on its subscription, which writes the answer from the
publisher's task (one history read and one answer per publish shared by all the
requests that read the same thing, one ``write`` each) and only then wakes the
request, whose machine is handed that same read and whose task finishes h11's
bookkeeping.  The last of thousands of held requests is then answered after a few
tens of milliseconds instead of after thousands of task switches and h11 rounds.

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

from tidings.cursor import Position
from tidings.errors import RemoteProtocolError
from tidings.history import Replay, Reset
from tidings.longpoll.request import Cursor, PollLimits, parse_poll_request
from tidings.longpoll.server import LongPollServer, PollAnswer, error_answer
from tidings.trio._disconnects import DisconnectWatcher, watcher_for
from tidings.trio._h11 import H11Connection, H11Responder
from tidings.trio._http import Request, Responder
from tidings.trio._routes import Handler
from tidings.trio.hub import LiveEvent, Subscription

if TYPE_CHECKING:
    from tidings.trio._app import App

__all__ = ["long_poll", "make_long_poll_handler"]

# A held request needs only to learn *that* something was published; the events
# are read from the history.  One buffered event is enough for that.
_WAKE_BUFFER = 1


def _headers(app: App, answer: PollAnswer) -> list[tuple[bytes, bytes]]:
    # The responder adds Content-Length itself.
    return app.headers(*(item for item in answer.headers if item[0] != b"content-length"))


async def _send(app: App, responder: Responder, answer: PollAnswer) -> None:
    await responder.respond(answer.status, _headers(app, answer), answer.body)


def make_long_poll_handler(limits: PollLimits | None = None) -> Handler:
    """A ``GET /topics/{topic}/poll`` handler granting at most *limits*.

    Without *limits* the handler grants the server's
    :attr:`~tidings.trio.ServerConfig.poll_limits` (the default route uses
    :data:`long_poll`, made that way); mount one made with explicit *limits* on a
    custom :class:`~tidings.trio._routes.Router` to serve one route differently.
    """

    async def handler(app: App, request: Request, responder: Responder) -> None:
        grant = app.config.poll_limits if limits is None else limits
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
    if isinstance(responder, H11Responder) and responder.nowait_pending:
        # Answered from the publisher's task (see _AnswerSink).
        await responder.finish_nowait(answer.status, _headers(app, answer), answer.body)
    else:
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
            subscription.detach(sink)
    return sink.woken


class _SharedReads:
    """The reads (and answers) of held requests woken by one published event.

    Requests woken by the same event that read from the same position with the same
    limit read the same thing, and their machines answer it alike: the first one's
    read is made and answered, the others reuse both.  Valid only while that event
    is being fanned out (the history does not change meanwhile).
    """

    __slots__ = ("answers", "item")

    def __init__(self) -> None:
        self.item: LiveEvent | None = None
        self.answers: dict[tuple[str, Cursor, int], tuple[Replay | Reset, PollAnswer]] = {}

    def lookup(
        self, item: LiveEvent, key: tuple[str, Cursor, int]
    ) -> tuple[Replay | Reset, PollAnswer] | None:
        if item is not self.item:
            self.item = item
            self.answers = {}
        return self.answers.get(key)

    def clear(self) -> None:
        self.item = None
        self.answers = {}


_shared_reads = _SharedReads()


class _AnswerSink:
    """A :class:`~tidings.trio.hub.DirectSink` that answers its held request itself.

    Offered the first event published, it reads the history for the request and
    writes the answer to the socket right there, in the publisher's task
    (:meth:`H11Responder.respond_nowait`), and takes the event; the request's task is
    woken only when the hub flushes its sinks, after the publisher has written to
    every held request, and then hands its machine the same read (:attr:`read`),
    which answers what was written, and finishes the bookkeeping.  Waking thousands
    of held requests thus costs one write each (and next to no new objects, so no
    garbage collection) before the last one is answered, rather than a task switch,
    an h11 round and a write each.  When it cannot answer this way it refuses the
    event: the hub then wakes the request, which answers as usual.

    Only reads with events or a reset are answered here: a machine's answer to
    those depends on the read alone (see :meth:`LongPollServer.receive_read`), not
    on the time or on how the request was made.
    """

    __slots__ = ("answer", "app", "read", "responder", "server", "subscription")

    def __init__(
        self,
        app: App,
        responder: H11Responder,
        server: LongPollServer,
        subscription: Subscription,
    ) -> None:
        self.app = app
        self.responder = responder
        self.server = server
        self.subscription = subscription
        #: The read the answer was written from; the machine has not seen it yet.
        self.read: Replay | Reset | None = None
        #: The answer written.
        self.answer: PollAnswer | None = None

    def deliver(self, item: LiveEvent) -> bool:
        server = self.server
        responder = self.responder
        if server.answer is not None or self.read is not None or responder.client_gone:
            return False
        # Nothing may escape into the publisher: on any error the request's task
        # takes over (and reads again, and meets the error itself).
        try:
            key = (server.topic, server.read_after, server.limit)
            shared = _shared_reads.lookup(item, key)
            if shared is None:
                after = server.read_after
                if not isinstance(after, Position):
                    return False
                read = self.app.hub.history.read(server.topic, after, server.limit)
                if isinstance(read, Replay) and not read.events:
                    return False
                # Any machine answers this read alike; this one decides for them all.
                probe = LongPollServer(server.topic, server.request, 0.0)
                answer = probe.receive_read(read, 0.0)
                if answer is None:
                    return False
                _shared_reads.answers[key] = (read, answer)
            else:
                read, answer = shared
            if not responder.respond_nowait(answer.status, _headers(self.app, answer), answer.body):
                return False
        except Exception:
            return False
        self.read = read
        self.answer = answer
        return True

    def flush(self) -> None:
        # Every answer is out: drop the shared reads, wake the request (this
        # detaches the sink).
        if _shared_reads.item is not None:
            _shared_reads.clear()
        self.subscription.wake()

    def interrupt(self) -> None:
        pass


class _WatchedWait:
    """``subscription.wait(deadline)`` for a held request on a plain HTTP/1.1 socket.

    The socket is registered with the server's :class:`DisconnectWatcher` while the
    request waits on its subscription's waiter (with its :class:`_AnswerSink`, if
    any, on the subscription), so a publish wakes it cheaply and the client leaving
    wakes it too.  If the client sends more (pipelining) instead, the
    request falls back to :func:`_wait_on_socket`, which takes those bytes in.
    """

    __slots__ = ("connection", "fallback", "fd", "readable", "sink", "subscription", "watcher")

    def __init__(
        self,
        watcher: DisconnectWatcher,
        connection: H11Connection,
        subscription: Subscription,
        sink: _AnswerSink | None,
    ) -> None:
        self.watcher = watcher
        self.connection = connection
        self.subscription = subscription
        self.sink = sink
        self.fd = connection.stream.socket.fileno()  # type: ignore[attr-defined]
        self.readable = False
        self.fallback = False

    def _on_readable(self) -> None:
        self.readable = True
        self.subscription.wake()

    async def __call__(self, deadline: float) -> bool:
        if self.fallback:
            return await _wait_on_socket(self.connection, self.subscription, deadline)
        subscription = self.subscription
        sink = self.sink
        self.watcher.add(self.fd, self._on_readable)
        subscription.sink = sink
        try:
            woken = await subscription.wait(deadline)
        finally:
            self.watcher.discard(self.fd)
            subscription.detach(sink)
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
                    sink = (
                        _AnswerSink(app, responder, server, subscription)
                        if isinstance(responder, H11Responder) and responder.can_respond_nowait()
                        else None
                    )
                    wait = _WatchedWait(watcher, connection, subscription, sink)
                else:
                    sink = None
                    wait = partial(_wait_on_socket, connection, subscription)
                answer = await _hold_loop(app, responder, server, subscription, wait, sink)
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
    sink: _AnswerSink | None = None,
) -> PollAnswer | None:
    history = app.hub.history
    while True:
        deadline = server.next_deadline()
        assert deadline is not None
        woken = await wait(deadline)
        if responder.client_gone:
            return None
        now = trio.current_time()
        if sink is not None and sink.read is not None:
            # Answered by the sink: the machine gets the read the answer came from.
            answer = server.receive_read(sink.read, now)
            assert answer == sink.answer, "a machine answered a shared read differently"
            return answer
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


#: The default ``GET /topics/{topic}/poll`` handler: it grants the server's
#: :attr:`~tidings.trio.ServerConfig.poll_limits`.
long_poll: Handler = make_long_poll_handler()
