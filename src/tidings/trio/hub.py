"""The hub: topics, their history, and the live subscribers that follow them.

:meth:`Hub.publish` stores an event in the history and hands the *same* object to
every subscriber of the topic, waking each at once.  Each subscriber has a small
bounded buffer; one that falls further behind is cut off (its connection closes
and the client resumes by ID) instead of growing memory or slowing the publisher.

A :class:`Subscription` is also the follower that turns "resume after this ID"
into a gap-free sequence: it subscribes first, then reads the history, then drops
live events it already replayed (DESIGN §2).  A live event that is not exactly the
next position (another epoch, a hole) makes it re-read the history, which either
fills the hole or yields an explicit reset; it never jumps silently.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

import trio

from tidings.cursor import Position, new_epoch
from tidings.errors import LocalProtocolError
from tidings.history import MemoryHistory, Replay, Reset, StoredEvent
from tidings.trio._sync import Waiter

__all__ = [
    "Batch",
    "CloseReason",
    "DirectSink",
    "History",
    "Hub",
    "LiveEvent",
    "Subscription",
]

# Accounting overhead per buffered event, so that empty events are bounded too.
_ITEM_OVERHEAD = 64


class History(Protocol):
    """What the hub needs from a history (:class:`~tidings.history.MemoryHistory`)."""

    def append(self, topic: str, data: str, event: str | None = None) -> StoredEvent:
        """Store an event and return it with its position."""
        ...

    def head(self, topic: str) -> Position:
        """The position of the newest event of *topic*."""
        ...

    def read(self, topic: str, after: Position | str, limit: int = ...) -> Replay | Reset:
        """The events after *after*, or a reset."""
        ...


class LiveEvent:
    """A stored event as handed to subscribers, with its encodings cached.

    One object is shared by every subscriber of a topic, so an event is encoded once
    per wire format (SSE, JSON, ...) no matter how many clients receive it.
    """

    __slots__ = ("_key", "_more", "_value", "size", "stored")

    def __init__(self, stored: StoredEvent, size: int = 0) -> None:
        self.stored = stored
        #: Bytes charged against a subscriber's buffer for this event.
        self.size = size
        self._key: object = None
        self._value = b""
        self._more: dict[object, bytes] | None = None

    @property
    def position(self) -> Position:
        """The event's position."""
        return self.stored.position

    def encoded(self, encoder: Callable[[StoredEvent], bytes]) -> bytes:
        """``encoder(self.stored)``, computed once per encoder and then reused."""
        if self._key is encoder:
            return self._value
        if self._key is None:
            self._value = value = encoder(self.stored)
            self._key = encoder
            return value
        more = self._more
        if more is None:
            more = self._more = {}
        cached = more.get(encoder)
        if cached is None:
            cached = more[encoder] = encoder(self.stored)
        return cached

    def __repr__(self) -> str:
        return f"<LiveEvent {self.stored.position} event={self.stored.event!r}>"


class DirectSink(Protocol):
    """Takes live events synchronously, so that idle consumers need no wake-up.

    While its consumer is idle, a transport that can write without waiting (a plain
    socket) installs one as :attr:`Subscription.sink`.  The hub hands it each next
    event (:meth:`deliver`, which only queues bytes) and calls :meth:`flush` when
    the publisher yields -- at the end of :meth:`Hub.publish`, or from a helper task
    after a run of :meth:`Hub.publish_nowait` -- so that a burst of events goes out
    in one write per subscriber.
    """

    def deliver(self, item: LiveEvent) -> bool:
        """Queue *item*; ``False`` if the sink cannot take it (it is then buffered)."""
        ...

    def flush(self) -> None:
        """Write what was queued without blocking.

        What does not fit is kept, and the sink interrupts itself: its consumer
        then finishes the write before anything else.
        """
        ...

    def interrupt(self) -> None:
        """Wake the consumer: the sink is being detached (it has to look at things)."""
        ...


class CloseReason(enum.Enum):
    """Why a :class:`Subscription` stopped receiving events."""

    #: Its buffer overflowed: the consumer was too slow and must resume by ID.
    OVERFLOW = "overflow"
    #: The server is draining; the consumer should end its stream gracefully.
    DRAIN = "drain"
    #: It was closed by its owner (or the hub).
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Batch:
    """What a subscription has to deliver now: an optional reset, then events in order."""

    events: Sequence[LiveEvent]
    reset: Reset | None = None


def _event_size(data: str, event: str | None) -> int:
    size = _ITEM_OVERHEAD + (len(data) if data.isascii() else len(data.encode("utf-8", "replace")))
    if event is not None:
        size += len(event)
    return size


def _default_history() -> MemoryHistory:
    return MemoryHistory(new_epoch(random.SystemRandom()))


class Hub:
    """Topics → history + live subscribers.

    *history* defaults to a :class:`~tidings.history.MemoryHistory` with a fresh
    random epoch and its default limits.  *max_pending_events* and
    *max_pending_bytes* bound each subscriber's buffer of not-yet-sent events (they
    can be overridden per subscription); *replay_page* is how many events a
    subscription reads from the history at once when replaying.

    Any non-empty string is a topic; checking names is the server's job.
    """

    def __init__(
        self,
        history: History | None = None,
        *,
        max_pending_events: int = 512,
        max_pending_bytes: int = 1024 * 1024,
        replay_page: int = 128,
    ) -> None:
        if max_pending_events < 1 or max_pending_bytes < 1 or replay_page < 1:
            raise LocalProtocolError(
                "max_pending_events, max_pending_bytes and replay_page must be >= 1"
            )
        self.history: History = history if history is not None else _default_history()
        self.max_pending_events = max_pending_events
        self.max_pending_bytes = max_pending_bytes
        self.replay_page = replay_page
        self._subscribers: dict[str, set[Subscription]] = {}
        # Sinks holding queued bytes (an ordered set), and whether a task will flush.
        self._dirty: dict[DirectSink, None] = {}
        self._flusher_running = False

    async def publish(self, topic: str, data: str, event: str | None = None) -> Position:
        """Store an event and wake every subscriber of *topic*; return its position.

        Never waits for subscribers: a slow one is cut off instead.  This is a Trio
        checkpoint; :meth:`publish_nowait` is the synchronous form.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        stored = self._publish(topic, data, event)
        self._flush()
        await trio.lowlevel.cancel_shielded_checkpoint()
        return stored.position

    def publish_nowait(self, topic: str, data: str, event: str | None = None) -> Position:
        """Synchronous :meth:`publish` (for callbacks and bursts).

        Idle subscribers get the events of a run of calls in one write each, once the
        calling task yields.  Raises :class:`~tidings.errors.LocalProtocolError` for a
        non-string *data*, an *event* type containing CR or LF, or an event larger
        than the history accepts.
        """
        return self.append(topic, data, event).position

    def append(self, topic: str, data: str, event: str | None = None) -> StoredEvent:
        """:meth:`publish_nowait`, returning the whole stored event.

        For code that stands in for a history's ``append`` (the WebSocket endpoint
        stores clients' publishes this way, so that they reach every subscriber).
        """
        stored = self._publish(topic, data, event)
        if self._dirty and not self._flusher_running:
            self._flusher_running = True
            trio.lowlevel.spawn_system_task(self._run_flusher, name="tidings hub flusher")
        return stored

    def _flush(self) -> None:
        dirty = self._dirty
        if dirty:
            self._dirty = {}
            for sink in dirty:
                sink.flush()

    async def _run_flusher(self) -> None:
        # A system task starts at the next scheduling round: after the publisher
        # yielded, so everything it published meanwhile goes out together.
        try:
            self._flush()
        finally:
            self._flusher_running = False

    def _publish(self, topic: str, data: str, event: str | None) -> StoredEvent:
        if not isinstance(data, str):
            raise LocalProtocolError(f"data must be a str, not {type(data).__name__}")
        if event is not None and (not isinstance(event, str) or "\n" in event or "\r" in event):
            raise LocalProtocolError(f"invalid event type {event!r}")
        stored = self.history.append(topic, data, event)
        subscribers = self._subscribers.get(topic)
        if subscribers:
            item = LiveEvent(stored, _event_size(data, event))
            overflowed = [subscription for subscription in subscribers if subscription._push(item)]
            for subscription in overflowed:
                self._remove(subscription)
        return stored

    def subscribe(
        self,
        topic: str,
        after: Position | str | bytes | None = None,
        *,
        waiter: Waiter | None = None,
        max_pending_events: int | None = None,
        max_pending_bytes: int | None = None,
    ) -> Subscription:
        """Start following *topic*; use the result as a context manager.

        *after* is where to resume: ``None`` for live from now, a position or its
        wire form (for example a ``Last-Event-ID``; anything malformed gives a reset,
        never an error), or :data:`~tidings.cursor.EARLIEST` for everything
        retained.  The subscription is registered before anything is read, so no
        event published in between can be missed.
        """
        if not isinstance(topic, str) or not topic:
            raise LocalProtocolError("topic must be a non-empty str")
        subscription = Subscription(
            self,
            topic,
            waiter if waiter is not None else Waiter(),
            self.max_pending_events if max_pending_events is None else max_pending_events,
            self.max_pending_bytes if max_pending_bytes is None else max_pending_bytes,
        )
        if after is None:
            subscription._set_last(self.history.head(topic))
        else:
            subscription._resume = _cursor_text(after)
        self._subscribers.setdefault(topic, set()).add(subscription)
        return subscription

    def subscriber_count(self, topic: str | None = None) -> int:
        """Live subscriptions of *topic*, or of all topics."""
        if topic is not None:
            return len(self._subscribers.get(topic, ()))
        return sum(len(subs) for subs in self._subscribers.values())

    def topics_with_subscribers(self) -> list[str]:
        """Topics that currently have at least one subscription."""
        return list(self._subscribers)

    def _remove(self, subscription: Subscription) -> None:
        subscribers = self._subscribers.get(subscription.topic)
        if subscribers is not None:
            subscribers.discard(subscription)
            if not subscribers:
                del self._subscribers[subscription.topic]


def _cursor_text(after: Position | str | bytes) -> Position | str:
    if isinstance(after, bytes):
        # Decoding never fails; anything that was not ASCII is then malformed.
        return after.decode("ascii", "replace")
    if isinstance(after, Position | str):
        return after
    raise LocalProtocolError(f"after must be a Position, str or bytes, not {type(after).__name__}")


class Subscription:
    """One consumer following one topic, from :meth:`Hub.subscribe`.

    Typical loop::

        with hub.subscribe(topic, after=last_event_id) as sub:
            while True:
                batch = sub.next_batch()
                if batch is not None:
                    ...  # send batch.reset (if any), then batch.events
                elif sub.closed is not None:
                    break
                else:
                    await sub.wait()

    Events arrive in position order with neither gaps nor duplicates; when that is
    impossible a batch carries a :class:`~tidings.history.Reset` first.
    """

    __slots__ = (
        "_epoch",
        "_hub",
        "_max_bytes",
        "_max_events",
        "_offset",
        "_pending",
        "_pending_bytes",
        "_resume",
        "closed",
        "delivered",
        "on_overflow",
        "sink",
        "topic",
        "waiter",
    )

    def __init__(
        self, hub: Hub, topic: str, waiter: Waiter, max_events: int, max_bytes: int
    ) -> None:
        if max_events < 1 or max_bytes < 1:
            raise LocalProtocolError("max_pending_events and max_pending_bytes must be >= 1")
        self._hub = hub
        #: The topic followed.
        self.topic = topic
        #: The waiter woken when something is ready (shared if one was passed in).
        self.waiter = waiter
        #: Why the subscription stopped, or ``None`` while it is live.
        self.closed: CloseReason | None = None
        #: Called (from the publisher's task) when the buffer overflows, so that the
        #: consumer can abandon a blocked send.
        self.on_overflow: Callable[[], None] | None = None
        #: Set by an idle consumer that can take events synchronously; detached
        #: (and interrupted) as soon as an event cannot go that way.
        self.sink: DirectSink | None = None
        #: Events delivered so far (by batches or directly), a cheap progress mark.
        self.delivered = 0
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._pending: list[LiveEvent] = []
        self._pending_bytes = 0
        self._resume: Position | str | None = None
        self._epoch = ""
        self._offset = 0

    # -- owner API -----------------------------------------------------------------

    @property
    def last(self) -> Position | None:
        """The position of the last event delivered (or the head it resumed from).

        ``None`` until the first :meth:`next_batch` when resuming from a cursor.
        """
        if not self._epoch:
            return None
        return Position(self._epoch, self._offset)

    @property
    def pending(self) -> int:
        """Live events buffered and not yet taken by :meth:`next_batch`."""
        return len(self._pending)

    def next_batch(self) -> Batch | None:
        """What to deliver now, or ``None`` when there is nothing (then :meth:`wait`).

        Never blocks.  While replaying, each call reads one page of history; live
        events that the replay already covered are dropped.
        """
        self.waiter.clear()
        if self._resume is not None:
            return self._read_history()
        pending = self._pending
        if not pending:
            return None
        self._pending = []
        self._pending_bytes = 0
        epoch = self._epoch
        offset = self._offset
        first = pending[0].stored.position
        last = pending[-1].stored.position
        if first.epoch != epoch and self._rebase(first):
            epoch = self._epoch
        # Fast path: offsets grow by exactly one within an epoch and an epoch never
        # comes back, so matching ends mean everything in between is in order.
        if (
            first.epoch == epoch
            and last.epoch == epoch
            and first.offset == offset + 1
            and last.offset == offset + len(pending)
        ):
            self._offset = last.offset
            self.delivered += len(pending)
            return Batch(pending)
        out: list[LiveEvent] = []
        for item in pending:
            position = item.stored.position
            if position.epoch == epoch:
                if position.offset <= offset:
                    continue  # already delivered by the replay
                if position.offset == offset + 1:
                    out.append(item)
                    offset += 1
                    continue
            # A hole or another epoch: drop the rest (the history has it, or says
            # it was lost) and re-read from the last delivered position.
            self._resume = Position(epoch, offset)
            break
        self._offset = offset
        if out:
            self.delivered += len(out)
            return Batch(out)
        if self._resume is not None:
            return self._read_history()
        return None

    async def wait(self, deadline: float = math.inf) -> bool:
        """Wait until something may be ready, the subscription closes, or *deadline*.

        Returns ``False`` only when the deadline passed with nothing new.
        """
        if self._pending or self._resume is not None or self.closed is not None:
            await trio.lowlevel.checkpoint()
            return True
        return await self.waiter.wait(deadline)

    def close(self, reason: CloseReason = CloseReason.CLOSED) -> None:
        """Stop receiving events and wake the consumer; idempotent.

        Events already buffered stay available to :meth:`next_batch` except after an
        overflow, whose buffer is dropped.
        """
        if self.closed is None:
            self.closed = reason
        self._hub._remove(self)
        self.wake()

    def detach(self, sink: DirectSink | None) -> None:
        """Stop using *sink*, unless the hub already did (it detaches refusing sinks)."""
        if self.sink is sink:
            self.sink = None

    def wake(self) -> None:
        """Get the consumer's attention (wake its waiter, interrupt its sink)."""
        self.waiter.wake()
        sink = self.sink
        if sink is not None:
            self.sink = None
            sink.interrupt()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
        self._pending = []
        self._pending_bytes = 0

    def __repr__(self) -> str:
        state = self.closed.value if self.closed is not None else "live"
        return f"<Subscription {self.topic!r} at {self.last} {state} pending={self.pending}>"

    # -- internals -----------------------------------------------------------------

    def _set_last(self, position: Position) -> None:
        self._epoch = position.epoch
        self._offset = position.offset

    def _rebase(self, position: Position) -> bool:
        """Follow *position*, the first event of a new epoch, from "before anything".

        A subscription at offset 0 has seen no event of its epoch (a topic the
        history did not hold yet has a fresh epoch of its own), and it was registered
        before that position was read, so every event since reached it live: the
        first event of another epoch is then the next one, not a gap.
        """
        if self._offset != 0 or position.offset != 1:
            return False
        self._epoch = position.epoch
        return True

    def _read_history(self) -> Batch | None:
        after = self._resume
        assert after is not None
        self._resume = None
        # Everything buffered so far is in the history after the last read (or was
        # evicted, which this read reports), so drop it: reading and dropping happen
        # with no checkpoint in between.
        self._pending = []
        self._pending_bytes = 0
        result = self._hub.history.read(self.topic, after, self._hub.replay_page)
        if isinstance(result, Reset):
            self._set_last(result.head)
            return Batch((), result)
        self._set_last(result.cursor)
        if result.more:
            self._resume = result.cursor
        if not result.events:
            return None
        self.delivered += len(result.events)
        return Batch([LiveEvent(stored) for stored in result.events])

    def _push(self, item: LiveEvent) -> bool:
        """Buffer *item*; ``True`` when that overflowed (the caller unregisters us)."""
        if self.closed is not None:
            return False
        pending = self._pending
        sink = self.sink
        if sink is not None:
            position = item.stored.position
            if (
                not pending
                and self._resume is None
                and position.offset == self._offset + 1
                and (position.epoch == self._epoch or self._rebase(position))
                and sink.deliver(item)
            ):
                self._offset = position.offset
                self.delivered += 1
                self._hub._dirty[sink] = None
                return False
            self.sink = None
            sink.interrupt()
        pending.append(item)
        self._pending_bytes += item.size
        if len(pending) > self._max_events or self._pending_bytes > self._max_bytes:
            self._overflow()
            return True
        self.waiter.wake()
        return False

    def _overflow(self) -> None:
        self.closed = CloseReason.OVERFLOW
        self._pending = []
        self._pending_bytes = 0
        self.wake()
        if self.on_overflow is not None:
            self.on_overflow()
