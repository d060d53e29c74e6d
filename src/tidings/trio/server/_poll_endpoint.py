"""``GET /topics/{topic}/poll``: long polling, driven by :class:`~tidings.longpoll.LongPollServer`.

Every decision (parse, what to read, answer now, hold, time out, ``304``, reset,
``400``) is the sans-IO machine's (which drives the follow machine); this module only
supplies the clock, the wake-ups, the history reads and the socket:

* the request is parsed with :func:`~tidings.longpoll.parse_poll_request`; a bad one
  gets the machine's JSON ``400``;
* the request registers a :class:`~tidings.trio.hub.Watch` on the topic, then makes
  the read the machine asks for; with events waiting (or a reset) the answer goes
  out at once;
* otherwise it sleeps until a publish wakes it (then it reads again, from where the
  machine says), its deadline passes, the client goes away or the server drains.
  No timer polls the history.

Noticing the client leaving: on a plain HTTP/1.1 socket the request waits on its
subscription's :class:`~tidings.trio.Waiter` (a publish wakes it in microseconds)
while the server's :class:`~tidings.trio.server._disconnects.DisconnectWatcher` watches its
socket; elsewhere (TLS, HTTP/2) it uses ``Responder.watch_disconnect``.  Waking
thousands of held requests that wait on their sockets would cost a cancellation
each, an order of magnitude more.

Answering a publish: on that plain HTTP/1.1 socket, with a history that answers at
once, the held request also leaves an :class:`_AnswerSink` on its watch, which
writes the answer from the publisher's task (one history read and one answer per
publish shared by all the requests that read the same thing -- the answer is a
pure function of the read, :func:`~tidings.longpoll.server.answer_read` -- and one
``write`` each) and only then wakes the request, whose task finishes h11's
bookkeeping.  The last of thousands of held requests is then answered after a few
tens of milliseconds instead of after thousands of task switches and h11 rounds.

A drain answers every held request at once with "nothing new" (the empty ``200`` or
``304``, plus ``Connection: close`` on HTTP/1.1) so that clients come back,
elsewhere, right away.  A held request keeps its connection busy, so it
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
from tidings.follow import ReadHistory
from tidings.history import Replay, Reset
from tidings.longpoll.request import PollLimits, parse_poll_request
from tidings.longpoll.server import LongPollServer, PollAnswer, answer_read, error_answer
from tidings.trio.history import HistoryUnavailable
from tidings.trio.hub import Hub, LiveEvent, Watch
from tidings.trio.server._auth import Action
from tidings.trio.server._disconnects import DisconnectWatcher
from tidings.trio.server._h11 import H11Connection, H11Responder
from tidings.trio.server._http import Request, Responder
from tidings.trio.server._routes import Handler

if TYPE_CHECKING:
    from tidings.trio.server._app import App

__all__ = ["SharedReads", "long_poll", "make_long_poll_handler"]


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
    custom router to serve one route differently.
    """

    async def handler(app: App, request: Request, responder: Responder) -> None:
        grant = app.config.poll_limits if limits is None else limits
        await _long_poll(app, request, responder, grant)

    handler.__doc__ = "Serve one long poll (see :mod:`tidings.trio.server._poll_endpoint`)."
    return handler


async def _read(hub: Hub, topic: str, read: ReadHistory) -> Replay | Reset:
    """Make *read* against the hub's history."""
    if hub._immediate is not None:
        await trio.lowlevel.checkpoint()
        return _read_now(hub, topic, read)
    await hub._watch(topic)
    if read.after is None:
        return Replay((), await hub.history.head(topic))
    return await hub.history.read(topic, read.after, read.limit)


async def _long_poll(app: App, request: Request, responder: Responder, limits: PollLimits) -> None:
    topic = request.params["topic"]
    refusal = await app.authorize(request, Action.SUBSCRIBE, topic)
    if refusal is not None:
        await app.refuse(responder, refusal)
        return
    try:
        poll = parse_poll_request(request.query, request.headers, limits)
    except RemoteProtocolError as exc:
        await _send(app, responder, error_answer(str(exc), exc.error_status_hint))
        return
    hub = app.hub
    server = LongPollServer(topic, poll, trio.current_time())
    # Registered before the first read: a publish in between wakes it.
    with hub.watch(topic) as watch:
        app.subscriptions.add(watch)
        try:
            answer = await _poll(app, responder, server, watch)
        except HistoryUnavailable as exc:
            answer = error_answer(f"history unavailable: {exc}", 503)
            answer = PollAnswer(503, (*answer.headers, app.retry_after_header()), answer.body)
        finally:
            app.subscriptions.discard(watch)
    if answer is None:
        return  # the client went away
    metrics = app.metrics
    metrics.delivered["poll"] += answer.events
    if answer.reset is not None:
        metrics.resets[answer.reset] += 1
    if isinstance(responder, H11Responder) and responder.nowait_pending:
        # Answered from the publisher's task (see _AnswerSink).
        await responder.finish_nowait(answer.status, _headers(app, answer), answer.body)
    else:
        await _send(app, responder, answer)


async def _poll(
    app: App, responder: Responder, server: LongPollServer, watch: Watch
) -> PollAnswer | None:
    """The answer to one poll (``None``: the client went away)."""
    hub = app.hub
    topic = server.topic
    answer = None
    read = server.read
    if read is not None:
        if hub._immediate is not None:
            # No checkpoint between registering and reading (Trio is cooperative).
            answer = server.receive_read(_read_now(hub, topic, read), trio.current_time())
        else:
            answer = server.receive_read(await _read(hub, topic, read), trio.current_time())
    if answer is None and app.draining:
        answer = server.answer_now()
    if answer is None:
        answer = await _hold(app, responder, server, watch)
    return answer


def _read_now(hub: Hub, topic: str, read: ReadHistory) -> Replay | Reset:
    """:func:`_read` without a checkpoint, for a history that answers at once."""
    immediate = hub._immediate
    assert immediate is not None
    if read.after is None:
        return Replay((), immediate.head_nowait(topic))
    return immediate.read_nowait(topic, read.after, read.limit)


class _WakeSink:
    """A :class:`~tidings.trio.hub.DirectSink` that takes nothing.

    The hub offers it the first event published; refusing makes the hub detach and
    interrupt it, and the interruption is the wake-up of the held request.  A close
    of the watch (drain) interrupts it too.
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


async def _wait_on_socket(connection: H11Connection, watch: Watch, deadline: float) -> bool:
    """Like ``watch.wait(deadline)``, in the connection's own task.

    The task waits for the socket to become readable (the client leaving, which
    marks the connection gone) while the hub holds a :class:`_WakeSink`: one task,
    one cancel scope, no nursery per held request.
    """
    if watch.woken or watch.closed is not None:
        await trio.lowlevel.checkpoint()
        return True
    with trio.CancelScope(deadline=deadline) as scope:
        sink = _WakeSink(scope)
        watch.sink = sink
        try:
            await connection.wait_gone()
        finally:
            watch.detach(sink)
    return sink.woken


class SharedReads:
    """The reads (and answers) of held requests woken by one published event.

    Requests woken by the same event that read from the same position with the same
    limit read the same thing, and get the same answer
    (:func:`~tidings.longpoll.server.answer_read` is a pure function of the read):
    the first one's read is made and answered, the others reuse both.  Valid only
    while that event is being fanned out (the history does not change meanwhile).
    One per server (:class:`~tidings.trio.server._app.App`).
    """

    __slots__ = ("answers", "item")

    def __init__(self) -> None:
        self.item: LiveEvent | None = None
        self.answers: dict[tuple[str, Position, int], tuple[Replay | Reset, PollAnswer | None]] = {}

    def lookup(
        self, item: LiveEvent, key: tuple[str, Position, int]
    ) -> tuple[Replay | Reset, PollAnswer | None] | None:
        if item is not self.item:
            self.item = item
            self.answers = {}
        return self.answers.get(key)

    def clear(self) -> None:
        self.item = None
        self.answers = {}


class _AnswerSink:
    """A :class:`~tidings.trio.hub.DirectSink` that answers its held request itself.

    Offered the first event published, it makes the machine's next read and writes
    the answer to the socket right there, in the publisher's task
    (:meth:`H11Responder.respond_nowait`), and takes the event; the request's task is
    woken only when the hub flushes its sinks, after the publisher has written to
    every held request, and then finishes the bookkeeping.  Waking thousands of held
    requests thus costs one write each (and next to no new objects, so no garbage
    collection) before the last one is answered, rather than a task switch, an h11
    round and a write each.  When it cannot answer this way it refuses the event:
    the hub then wakes the request, which reads and answers as usual.
    """

    __slots__ = ("app", "responder", "server", "watch", "written")

    def __init__(
        self, app: App, responder: H11Responder, server: LongPollServer, watch: Watch
    ) -> None:
        self.app = app
        self.responder = responder
        self.server = server
        self.watch = watch
        #: The answer went out from the publisher's task.
        self.written = False

    def deliver(self, item: LiveEvent) -> bool:
        server = self.server
        responder = self.responder
        if server.answer is not None or self.written or responder.client_gone:
            return False
        immediate = self.app.hub._immediate
        if immediate is None:
            return False
        # Nothing may escape into the publisher: on any error the request's task
        # takes over (and reads again, and meets the error itself).
        try:
            read = server.published()
            if read is None or not isinstance(read.after, Position):
                return False
            key = (server.topic, read.after, read.limit)
            shared = self.app.poll_reads.lookup(item, key)
            if shared is None:
                result = immediate.read_nowait(server.topic, read.after, read.limit)
                shared = (result, answer_read(read.after, result, read.limit))
                self.app.poll_reads.answers[key] = shared
            result, answer = shared
            if answer is None:
                return False  # nothing for this request after all: it reads itself
            if not responder.respond_nowait(answer.status, _headers(self.app, answer), answer.body):
                return False
        except Exception:
            return False
        server.receive_answer(result, answer)
        self.written = True
        return True

    def flush(self) -> None:
        # Every answer is out: drop the shared reads, wake the request (this
        # detaches the sink).
        reads = self.app.poll_reads
        if reads.item is not None:
            reads.clear()
        self.watch.wake()

    def interrupt(self) -> None:
        pass


class _WatchedWait:
    """``watch.wait(deadline)`` for a held request on a plain HTTP/1.1 socket.

    The socket is registered with the server's :class:`DisconnectWatcher` while the
    request waits on its watch's waiter (with its :class:`_AnswerSink`, if any, on
    the watch), so a publish wakes it cheaply and the client leaving wakes it too.
    If the client sends more (pipelining) instead, the request falls back to
    :func:`_wait_on_socket`, which takes those bytes in.
    """

    __slots__ = ("connection", "fallback", "fd", "readable", "sink", "watch", "watcher")

    def __init__(
        self,
        watcher: DisconnectWatcher,
        connection: H11Connection,
        watch: Watch,
        sink: _AnswerSink | None,
    ) -> None:
        self.watcher = watcher
        self.connection = connection
        self.watch = watch
        self.sink = sink
        self.fd = connection.stream.socket.fileno()  # type: ignore[attr-defined]
        self.readable = False
        self.fallback = False

    def _on_readable(self) -> None:
        self.readable = True
        self.watch.wake()

    async def __call__(self, deadline: float) -> bool:
        if self.fallback:
            return await _wait_on_socket(self.connection, self.watch, deadline)
        watch = self.watch
        sink = self.sink
        self.watcher.add(self.fd, self._on_readable)
        watch.sink = sink
        try:
            woken = await watch.wait(deadline)
        finally:
            self.watcher.discard(self.fd)
            watch.detach(sink)
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


async def _hold(
    app: App, responder: Responder, server: LongPollServer, watch: Watch
) -> PollAnswer | None:
    """Wait for a publish, the deadline, a drain or the client leaving."""
    connection = _plain_h11(responder)
    watcher = app.disconnect_watcher() if connection is not None else None
    if connection is not None:
        wait: Callable[[float], Awaitable[bool]]
        sink: _AnswerSink | None = None
        if watcher is not None:
            if (
                isinstance(responder, H11Responder)
                and responder.can_respond_nowait()
                and app.hub._immediate is not None
            ):
                sink = _AnswerSink(app, responder, server, watch)
            wait = _WatchedWait(watcher, connection, watch, sink)
        else:
            wait = partial(_wait_on_socket, connection, watch)
        return await _hold_loop(app, responder, server, watch, wait)
    # The block is cancelled (answer left None) when the client goes away.
    answer: PollAnswer | None = None
    async with responder.watch_disconnect():
        answer = await _hold_loop(app, responder, server, watch, watch.wait)
    return answer  # noqa: RET504


async def _hold_loop(
    app: App,
    responder: Responder,
    server: LongPollServer,
    watch: Watch,
    wait: Callable[[float], Awaitable[bool]],
) -> PollAnswer | None:
    hub = app.hub
    while True:
        deadline = server.next_deadline()
        assert deadline is not None
        woken = await wait(deadline)
        if responder.client_gone:
            return None
        if server.answer is not None:
            return server.answer  # answered by the _AnswerSink
        if not woken:
            answer = server.handle_timer(trio.current_time())
        elif watch.closed is not None:
            # Closed by a drain: answer "nothing new" now; the client comes back.
            answer = server.answer_now()
        else:
            watch.clear()
            read = server.published()
            answer = None
            if read is not None:
                answer = server.receive_read(
                    await _read(hub, server.topic, read), trio.current_time()
                )
        if answer is not None:
            return answer


#: The default ``GET /topics/{topic}/poll`` handler: it grants the server's
#: :attr:`~tidings.trio.ServerConfig.poll_limits`.
long_poll: Handler = make_long_poll_handler()
