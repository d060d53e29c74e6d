"""What a ``tidings.v1`` session does, whatever carries its messages.

:class:`SessionCore` pumps one :class:`~tidings.ws.SessionServer` (the protocol
decisions) and the hub subscriptions that drive its followers (what to send): it
feeds client messages in, asks the authorisation hook, stores publishes, and
queues what to send, in order.  It knows nothing of frames or sockets: the
built-in server's endpoint (wsproto over the connection's stream) and the ASGI
app (``websocket.send`` messages) each carry its output their own way -- as
ready-made frame bytes or as text -- through the *frame* and *encoder_for*
functions they pass in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, TypeVar

import trio

from tidings.errors import LocalProtocolError
from tidings.history import StoredEvent
from tidings.trio._sync import Waiter
from tidings.trio.history import HistoryUnavailable
from tidings.trio.hub import CloseReason, Subscription
from tidings.trio.server._auth import Action
from tidings.trio.server._http import Request
from tidings.ws import CloseConnection as CloseInstruction
from tidings.ws import ServerOutput, SessionServer
from tidings.ws.server import Authorize, Follow, Publish, Unfollow

if TYPE_CHECKING:
    from tidings.trio.server._app import App

__all__ = ["SessionCore", "SessionWaker"]

T = TypeVar("T", bytes, str)


class SessionWaker(Waiter):
    """The waiter of one session (shared by its subscriptions): a wake-up also
    cancels what the session's task is waiting for (a client message, an idle
    socket), so that what became ready goes out at once."""

    __slots__ = ("scope",)

    def __init__(self) -> None:
        super().__init__()
        #: The scope to cancel on the next wake-up (set by the task before waiting).
        self.scope: trio.CancelScope | None = None

    def wake(self) -> bool:
        woke = super().wake()
        scope = self.scope
        if scope is not None:
            self.scope = None
            scope.cancel()
            return True
        return woke


class SessionCore(Generic[T]):
    """One session's state and its pump (see the module).

    *frame* turns a message's JSON text into what the transport sends, *size*
    measures it (for the queue's high-water mark), and *encoder_for* gives, per
    topic, the function that turns a stored event into it (shared by every
    session, so that an event is encoded once).
    """

    __slots__ = (
        "app",
        "authorizing",
        "closing",
        "encoder_for",
        "frame",
        "publishes",
        "queued",
        "queued_size",
        "request",
        "server",
        "size",
        "subscriptions",
        "waiter",
    )

    def __init__(
        self,
        app: App,
        request: Request,
        waiter: Waiter,
        *,
        frame: Callable[[str], T],
        size: Callable[[T], int],
        encoder_for: Callable[[str], Callable[[StoredEvent], T]],
    ) -> None:
        config = app.config.websocket
        self.app = app
        self.request = request
        self.waiter = waiter
        self.frame: Callable[[str], T] = frame
        self.size: Callable[[T], int] = size
        self.encoder_for: Callable[[str], Callable[[StoredEvent], T]] = encoder_for
        self.server = SessionServer(
            max_topics=config.max_topics,
            max_message_size=config.max_message_size,
            max_errors=config.max_errors,
            replay_chunk=app.hub.replay_page,
            max_buffered=app.config.subscriber_max_events,
            authorize=app.config.auth is not None,
        )
        #: The topics followed, each by a hub subscription driving its follower.
        self.subscriptions: dict[str, Subscription] = {}
        #: What to send next, in order (answers before live events).
        self.queued: list[T] = []
        self.queued_size = 0
        #: Publishes to store by awaiting the history (one that cannot store at once).
        self.publishes: list[Publish] = []
        #: A message waiting for the authorisation hook: no further client message
        #: is handled until :meth:`settle` asked it.
        self.authorizing: Authorize | None = None
        #: ``(code, reason)`` once the session should close.
        self.closing: tuple[int, str] | None = None

    # -- input -----------------------------------------------------------------------

    @property
    def blocked(self) -> bool:
        """Whether client messages must wait (for the authorisation hook)."""
        return self.authorizing is not None

    def receive_text(self, text: str) -> None:
        """One complete text message from the client."""
        if not self.server.closed:
            self.apply(self.server.receive_text(text))

    def receive_binary(self) -> None:
        """One complete binary message from the client."""
        if not self.server.closed:
            self.apply(self.server.receive_binary())

    def message_too_big(self) -> None:
        """The transport stopped assembling a message over the size limit."""
        if not self.server.closed:
            self.apply(self.server.message_too_big())

    def apply(self, outputs: list[ServerOutput]) -> None:
        """Act on the machine's outputs, synchronously (no checkpoint in here)."""
        for output in outputs:
            if isinstance(output, Follow):
                self._follow(output)
            elif isinstance(output, Unfollow):
                subscription = self.subscriptions.pop(output.topic, None)
                if subscription is not None:
                    self._unsubscribe(subscription)
            elif isinstance(output, Publish):
                if self.app.hub._immediate is None:
                    self.publishes.append(output)
                else:
                    self._store(output)
            elif isinstance(output, Authorize):
                self.authorizing = output
            elif isinstance(output, CloseInstruction):
                self.close(output.code, output.reason)
            else:
                self.queue(self.frame(output.encode()))

    def queue(self, item: T) -> None:
        """Send *item* after what is queued already."""
        self.queued.append(item)
        self.queued_size += self.size(item)

    def take_queued(self) -> list[T]:
        """What is queued, in order (the queue is then empty)."""
        queued = self.queued
        self.queued = []
        self.queued_size = 0
        return queued

    # -- waiting work ----------------------------------------------------------------

    @property
    def needs_settle(self) -> bool:
        """Whether :meth:`settle` has something to await."""
        return (
            self.authorizing is not None
            or bool(self.publishes)
            or (
                self.app.hub._immediate is None
                and any(sub.needs_read for sub in self.subscriptions.values())
            )
        )

    async def settle(self) -> None:
        """Await what cannot be done at once: the authorisation hook, publishes to a
        history that stores by waiting, history reads of the followers."""
        authorize = self.authorizing
        if authorize is not None:
            self.authorizing = None
            action = Action.SUBSCRIBE if authorize.action == "subscribe" else Action.PUBLISH
            refusal = await self.app.authorize(self.request, action, authorize.topic)
            if refusal is None:
                self.apply(self.server.admit(authorize))
            else:
                self.app.metrics.rejected["auth"] += 1
                self.apply(self.server.deny(authorize, refusal.status, refusal.message))
        publishes, self.publishes = self.publishes, []
        for publish in publishes:
            try:
                position = await self.app.hub.publish(
                    publish.topic, publish.data, publish.event, key=publish.msg_id
                )
            except LocalProtocolError as exc:
                self.apply(self.server.publish_failed(publish.msg_id, str(exc)))
            except HistoryUnavailable as exc:
                self.apply(self.server.publish_failed(publish.msg_id, str(exc), retry=True))
            else:
                self.apply(self.server.published(publish.msg_id, position))
        for subscription in list(self.subscriptions.values()):
            if subscription.needs_read:
                await subscription.read()

    # -- output ----------------------------------------------------------------------

    def collect_live(self, chunks: list[T]) -> None:
        """Append what every subscription has ready (events, resets, ``subscribed``)."""
        for topic, subscription in list(self.subscriptions.items()):
            self._live(topic, subscription, chunks)

    def _live(self, topic: str, subscription: Subscription, chunks: list[T]) -> None:
        encoder = self.encoder_for(topic)
        server = self.server
        frame = self.frame
        while True:
            batch = subscription.next_batch()
            if batch is None:
                break
            if batch.reset is not None:
                chunks.append(frame(server.reset_message(topic, batch.reset).encode()))
            chunks += [item.encoded(encoder) for item in batch.events]
            if batch.caught_up is not None:
                chunks += [
                    frame(m.encode())  # type: ignore[union-attr]
                    for m in server.caught_up(topic, batch.caught_up)
                ]
        reason = subscription.closed
        if reason is CloseReason.DRAIN:
            self.close(self.app.config.websocket.drain_close_code, "server draining")
        elif reason is CloseReason.CUT:
            self.close(1011, "cut off by the server")
        elif reason is not None and self.subscriptions.get(topic) is subscription:
            raise LocalProtocolError(f"subscription to {topic!r} closed unexpectedly")

    # -- lifecycle -------------------------------------------------------------------

    def close(self, code: int, reason: str) -> None:
        """The session should close with *code* (the transport does it next)."""
        if self.closing is None:
            self.closing = (code, reason)
        self.waiter.wake()

    def cleanup(self) -> None:
        """The connection ended: stop following everything."""
        self.server.connection_closed()
        for subscription in self.subscriptions.values():
            self._unsubscribe(subscription)
        self.subscriptions.clear()

    # -- internals -------------------------------------------------------------------

    def _store(self, publish: Publish) -> None:
        """Store a publish in a history that answers at once."""
        try:
            stored = self.app.hub.append(
                publish.topic, publish.data, publish.event, key=publish.msg_id
            )
        except LocalProtocolError as exc:
            self.apply(self.server.publish_failed(publish.msg_id, str(exc)))
            return
        self.apply(self.server.published(publish.msg_id, stored.position))

    def _follow(self, follow: Follow) -> None:
        """Follow a topic: registered with the hub before the follower's first read
        (in the same step), so nothing published in between is missed."""
        old = self.subscriptions.get(follow.topic)
        if old is not None:
            self._unsubscribe(old)
        config = self.app.config
        subscription = self.app.hub.subscribe(
            follow.topic,
            waiter=self.waiter,
            max_pending_events=config.subscriber_max_events,
            max_pending_bytes=config.subscriber_max_bytes,
            follower=follow.follower,
        )
        subscription.transport = "ws"
        self.subscriptions[follow.topic] = subscription
        self.app.subscriptions.add(subscription)
        if subscription.caught_up is not None:
            # Live from now, known at once: "subscribed" goes before any live event.
            self.apply(self.server.caught_up(follow.topic, subscription.caught_up))
        elif self.app.hub._immediate is not None:
            # The replay and "subscribed" are queued before the next client message
            # is handled: they count toward the queue's high-water mark (backpressure)
            # and a later subscribe to the same topic cannot cut them short.
            chunks: list[T] = []
            self._live(follow.topic, subscription, chunks)
            for chunk in chunks:
                self.queue(chunk)
        self.waiter.wake()

    def _unsubscribe(self, subscription: Subscription) -> None:
        subscription.close()
        subscription.count_delivered()
        self.app.subscriptions.discard(subscription)
