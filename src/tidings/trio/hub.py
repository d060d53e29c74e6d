"""The hub: the pump between a history, its live feed, and the subscribers of each topic.

:meth:`Hub.publish` stores an event in the :class:`~tidings.trio.history.History`;
the history's feed hands it back to the hub, which gives the *same* object to every
subscriber of the topic, waking each at once.  The hub decides nothing about gaps,
duplicates or resets: each :class:`Subscription` drives a
:class:`~tidings.follow.Follower` (the follow machine of the core) and does what it
says -- read the history, deliver events, announce a reset.

Each subscriber has a small bounded buffer.  One that falls further behind loses
its buffered live events, not its place: its follower reads them from the history
instead (and if the history evicted them meanwhile, the subscriber gets a reset at
the place of the loss), so a slow consumer costs no memory and never slows the
publisher or the other subscribers.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from time import perf_counter
from types import TracebackType
from typing import Any, Protocol, TypeVar, cast

import trio

from tidings.cursor import Position
from tidings.dedup import bind_key
from tidings.errors import LocalProtocolError
from tidings.follow import CaughtUp, Deliver, FollowAction, Follower, ReadHistory
from tidings.history import MemoryHistory, Replay, Reset, StoredEvent
from tidings.names import check_event_type, check_topic, is_valid_topic
from tidings.trio._sync import Waiter
from tidings.trio.history import History, HistoryUnavailable, ImmediateHistory, LocalHistory
from tidings.trio.metrics import Metrics

__all__ = [
    "Batch",
    "CloseReason",
    "DirectSink",
    "Hub",
    "LiveEvent",
    "Subscription",
    "Watch",
]

# Accounting overhead per buffered event, so that empty events are bounded too.
_ITEM_OVERHEAD = 64
#: Work (publishes, plus events handed to direct sinks) that :meth:`Hub.publish` may
#: do between two scheduling rounds while it wakes no task; see there.  At a few
#: microseconds each, a publisher yields at least every millisecond or so; one that
#: feeds one idle subscriber writes 128 events per write.
PUBLISH_BATCH = 256
#: The longest wait between two tries of a history read that failed, in seconds.
MAX_READ_RETRY_DELAY = 5.0

log = logging.getLogger("tidings.hub")

_Encoded = TypeVar("_Encoded")


class LiveEvent:
    """A stored event as handed to subscribers, with its encodings cached.

    One object is shared by every subscriber of a topic, so an event is encoded once
    per wire format (SSE, JSON, ...) no matter how many clients receive it.
    """

    __slots__ = ("_key", "_more", "_value", "created", "position", "size", "stored")

    def __init__(self, stored: StoredEvent, size: int = 0, created: float = -1.0) -> None:
        self.stored = stored
        #: When the hub got it from the feed (``time.perf_counter()``: real time, for
        #: the delivery histogram), or -1 for a replayed one.
        self.created = created
        #: The event's position (the follow machine's key).
        self.position: Position = stored[0]
        #: Bytes charged against a subscriber's buffer for this event.
        self.size = size
        self._key: object = None
        self._value: object = None
        self._more: dict[object, object] | None = None

    def encoded(self, encoder: Callable[[StoredEvent], _Encoded]) -> _Encoded:
        """``encoder(self.stored)``, computed once per encoder and then reused."""
        if self._key is encoder:
            return cast(_Encoded, self._value)
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
        return cast(_Encoded, cached)

    def __repr__(self) -> str:
        return f"<LiveEvent {self.position} event={self.stored.event!r}>"


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
    """Why a :class:`Subscription` (or :class:`Watch`) stopped receiving events."""

    #: The server is draining; the consumer should end its stream gracefully.
    DRAIN = "drain"
    #: Cut off by the server (an operator's or application's decision): the
    #: connection ends abruptly, and the client resumes by its last ID.
    CUT = "cut"
    #: It was closed by its owner (or the hub).
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Batch:
    """What a subscription has to deliver now, in this order: an optional reset (events
    were lost before ``reset.cursor``), then ``events``; then, when ``caught_up`` is
    set, the initial replay is over there (once per subscription; a WebSocket server
    announces it with ``subscribed``, other transports ignore it)."""

    events: Sequence[LiveEvent]
    reset: Reset | None = None
    caught_up: Position | None = None


def _event_size(data: str, event: str | None) -> int:
    size = _ITEM_OVERHEAD + (len(data) if data.isascii() else len(data.encode("utf-8", "replace")))
    if event is not None:
        size += len(event)
    return size


def _as_history(history: History | MemoryHistory | None) -> History:
    if history is None:
        return LocalHistory()
    if isinstance(history, MemoryHistory):
        return LocalHistory(history)
    if not isinstance(history, History):
        raise LocalProtocolError(f"not a History: {history!r}")
    return history


class _Registrant(Protocol):
    """What the hub fans an event out to (:class:`Subscription`, :class:`Watch`)."""

    topic: str

    def _push(self, item: LiveEvent) -> None: ...

    def _lost(self) -> None: ...


# One live batch in 8 of each subscription is timed for the publish-to-delivery
# histogram (a clock read and a bucket search cost more than the rest of the
# bookkeeping of a one-event batch); events written from the publisher's task are
# all counted, at zero.
_TIMED_MASK = 7


class Hub:
    """Topics: their history, and the live subscribers that follow them.

    *history* is where events are stored and read back: a
    :class:`~tidings.trio.history.History` (the extension point), or a
    :class:`~tidings.history.MemoryHistory` to keep in this process (wrapped in a
    :class:`~tidings.trio.history.LocalHistory`); the default is a fresh one with
    default limits.  *max_pending_events* and *max_pending_bytes* bound each
    subscriber's buffer of not-yet-sent live events (per subscription overrides are
    possible); *replay_page* is how many events a subscription reads from the
    history at once.

    Topic names and event types follow :mod:`tidings.names` (the rule every transport
    shares); anything else raises :class:`~tidings.errors.LocalProtocolError`.
    """

    def __init__(
        self,
        history: History | MemoryHistory | None = None,
        *,
        max_pending_events: int = 512,
        max_pending_bytes: int = 1024 * 1024,
        replay_page: int = 128,
    ) -> None:
        if max_pending_events < 1 or max_pending_bytes < 1 or replay_page < 1:
            raise LocalProtocolError(
                "max_pending_events, max_pending_bytes and replay_page must be >= 1"
            )
        #: Where events are stored and read back.
        self.history: History = _as_history(history)
        self._immediate: ImmediateHistory | None = (
            self.history if isinstance(self.history, ImmediateHistory) else None
        )
        self.max_pending_events = max_pending_events
        self.max_pending_bytes = max_pending_bytes
        self.replay_page = replay_page
        #: What this hub (and the servers on it) counted.
        self.metrics = Metrics()
        self._subscribers: dict[str, set[_Registrant]] = {}
        # Topics whose feed is being set up (History.watch), and those that are fed.
        self._watching: dict[str, trio.Event] = {}
        # Sinks holding queued bytes (an ordered set), and whether a task will flush.
        self._dirty: dict[DirectSink, None] = {}
        self._flusher_running = False
        self._publishing = False
        # Work done since the sinks were last flushed (see publish); a publish that
        # woke a task adds PUBLISH_BATCH, so that its publisher yields at once.
        self._unflushed = 0
        self.history.bind(self)

    # -- publishing ----------------------------------------------------------------

    async def publish(
        self, topic: str, data: str, event: str | None = None, *, key: str | None = None
    ) -> Position:
        """Store an event; every subscriber of *topic* gets it.  Returns its position.

        *key* (an idempotency key, such as a WebSocket ``msg_id`` or an HTTP
        ``Idempotency-Key``) makes a resend store nothing: within the history's
        de-duplication window it returns the position of the first publish with the
        same key, data and type (:func:`~tidings.dedup.bind_key`: a key reused for
        other content stores a new event, so no client can suppress another's).

        Never waits for subscribers: a slow one catches up from the history instead.
        Always a cancellation point; with a history that answers at once, a
        scheduling point only when the publish woke a task (a consumer waiting for
        its subscription, one whose sink had to be interrupted, a held poll), or
        every :data:`PUBLISH_BATCH` publishes and deliveries: in between, the
        events wait in the idle subscribers' sinks (or the buffers of busy ones)
        and go out together, in one write each, when the publisher yields.
        Raises :class:`~tidings.errors.LocalProtocolError` for a non-string *data*,
        a bad *event* type or an event larger than the history accepts, and
        :class:`~tidings.trio.history.HistoryUnavailable` when the history's store
        cannot be reached.
        """
        _check_event(topic, data, event, self._subscribers)
        if key is not None:
            key = bind_key(key, data, event)
        immediate = self._immediate
        if immediate is None:
            try:
                stored = await self.history.append(topic, data, event, key=key)
            except HistoryUnavailable:
                self.metrics.store_errors += 1
                raise
            self.metrics.published += 1
            return stored.position
        await trio.lowlevel.checkpoint_if_cancelled()
        self._publishing = True
        try:
            stored = immediate.append_nowait(topic, data, event, key=key)
        finally:
            self._publishing = False
        self.metrics.published += 1
        unflushed = self._unflushed = self._unflushed + 1
        if unflushed < PUBLISH_BATCH:
            # Nobody was woken (the subscribers took the event into their sinks, or
            # buffered it for a consumer that is busy): no task is waiting for this
            # publish, so no scheduling round now.  The sinks are written when the
            # publisher yields (here, once PUBLISH_BATCH is reached, or by the
            # flusher), one write for the whole run.
            if self._dirty and not self._flusher_running:
                self._flusher_running = True
                trio.lowlevel.spawn_system_task(self._run_flusher, name="tidings hub flusher")
            return stored.position
        self._flush()
        await trio.lowlevel.cancel_shielded_checkpoint()
        return stored.position

    def publish_nowait(
        self, topic: str, data: str, event: str | None = None, *, key: str | None = None
    ) -> Position:
        """Synchronous :meth:`publish` (for callbacks and bursts).

        Idle subscribers get the events of a run of calls in one write each, once the
        calling task yields.  Only for histories that answer at once
        (:class:`~tidings.trio.history.ImmediateHistory`, such as the default).
        """
        return self.append(topic, data, event, key=key).position

    def append(
        self, topic: str, data: str, event: str | None = None, *, key: str | None = None
    ) -> StoredEvent:
        """:meth:`publish_nowait`, returning the whole stored event."""
        immediate = self._immediate
        if immediate is None:
            raise LocalProtocolError(
                f"{type(self.history).__name__} cannot store without waiting: use publish()"
            )
        _check_event(topic, data, event, self._subscribers)
        if key is not None:
            key = bind_key(key, data, event)
        stored = immediate.append_nowait(topic, data, event, key=key)
        self.metrics.published += 1
        return stored

    # -- the history's feed (tidings.trio.history.Feed) ----------------------------

    def on_event(self, topic: str, stored: StoredEvent) -> None:
        """*stored* was appended to *topic*: hand it to every registered follower."""
        subscribers = self._subscribers.get(topic)
        if not subscribers:
            return
        item = LiveEvent(stored, _event_size(stored.data, stored.event), perf_counter())
        for subscriber in subscribers:
            subscriber._push(item)
        # One unit of work each; one that woke a task added PUBLISH_BATCH, so that
        # a publisher that awaits yields at once and lets it run.
        self._unflushed += len(subscribers)
        if self._dirty and not self._publishing and not self._flusher_running:
            self._flusher_running = True
            trio.lowlevel.spawn_system_task(self._run_flusher, name="tidings hub flusher")

    def on_lost(self, topic: str | None) -> None:
        """The feed may have missed events of *topic* (all topics for ``None``)."""
        topics = list(self._subscribers) if topic is None else [topic]
        self._unflushed += PUBLISH_BATCH
        for name in topics:
            for subscriber in list(self._subscribers.get(name, ())):
                subscriber._lost()

    def _flush(self) -> None:
        self._unflushed = 0
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

    # -- following -----------------------------------------------------------------

    def subscribe(
        self,
        topic: str,
        after: Position | str | bytes | None = None,
        *,
        waiter: Waiter | None = None,
        max_pending_events: int | None = None,
        max_pending_bytes: int | None = None,
        follower: Follower[Any] | None = None,
    ) -> Subscription:
        """Start following *topic*; use the result as a context manager.

        *after* is where to resume: ``None`` for live from now, a position or its
        wire form (for example a ``Last-Event-ID``; anything malformed gives a reset,
        never an error), or :data:`~tidings.cursor.EARLIEST` for everything
        retained.  Alternatively pass a *follower* made elsewhere (a WebSocket
        session machine makes one per topic).  The subscription is registered before
        anything is read, so no event published in between can be missed.
        """
        check_topic(topic)
        if follower is None:
            max_events = (
                self.max_pending_events if max_pending_events is None else max_pending_events
            )
            follower = Follower(
                _cursor_text(after), page_size=self.replay_page, max_buffered=max_events
            )
        elif after is not None:
            raise LocalProtocolError("pass either after or follower, not both")
        subscription = Subscription(
            self,
            topic,
            follower,
            waiter if waiter is not None else Waiter(),
            self.max_pending_events if max_pending_events is None else max_pending_events,
            self.max_pending_bytes if max_pending_bytes is None else max_pending_bytes,
        )
        self._register(subscription)
        subscription._start()
        return subscription

    def watch(self, topic: str, *, waiter: Waiter | None = None) -> Watch:
        """A wake-up for each event published on *topic* from now on (no event is
        kept: a held long poll reads what it answers from the history)."""
        check_topic(topic)
        watch = Watch(self, topic, waiter if waiter is not None else Waiter())
        self._register(watch)
        return watch

    def subscriber_count(self, topic: str | None = None) -> int:
        """Live subscriptions (and watches) of *topic*, or of all topics."""
        if topic is not None:
            return len(self._subscribers.get(topic, ()))
        return sum(len(subs) for subs in self._subscribers.values())

    def topics_with_subscribers(self) -> list[str]:
        """Topics that currently have at least one subscription."""
        return list(self._subscribers)

    def _register(self, registrant: _Registrant) -> None:
        topic = registrant.topic
        subscribers = self._subscribers.get(topic)
        if subscribers is None:
            subscribers = self._subscribers[topic] = set()
        subscribers.add(registrant)

    def _remove(self, registrant: _Registrant) -> None:
        topic = registrant.topic
        subscribers = self._subscribers.get(topic)
        if subscribers is not None:
            subscribers.discard(registrant)
            if not subscribers:
                del self._subscribers[topic]
                if self._watching.pop(topic, None) is not None:
                    self.history.unwatch(topic)

    async def _watch(self, topic: str) -> None:
        """Make sure the history feeds *topic* (before a follower's first read)."""
        ready = self._watching.get(topic)
        if ready is None:
            ready = self._watching[topic] = trio.Event()
            try:
                await self.history.watch(topic)
            except BaseException:
                del self._watching[topic]
                ready.set()
                raise
            ready.set()
        else:
            await ready.wait()


def _check_event(topic: str, data: object, event: str | None, known: dict[str, Any]) -> None:
    # A topic someone subscribes to passed check_topic already (in subscribe/watch).
    if not (type(topic) is str and topic in known) and not is_valid_topic(topic):
        check_topic(topic)
    if not isinstance(data, str):
        raise LocalProtocolError(f"data must be a str, not {type(data).__name__}")
    if event is not None:
        check_event_type(event)


def _cursor_text(after: Position | str | bytes | None) -> Position | str | None:
    if isinstance(after, bytes):
        # Decoding never fails; anything that was not ASCII is then malformed.
        return after.decode("ascii", "replace")
    if after is None or isinstance(after, Position | str):
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

    What to send comes from the subscription's :attr:`follower` (the follow
    machine): events in position order with neither gaps nor duplicates, and a
    reset where events were lost.  The subscription performs the follower's history
    reads: at once when the history answers without waiting, otherwise in
    :meth:`wait`.
    """

    __slots__ = (
        "_actions",
        "_batches",
        "_counted",
        "_dropped",
        "_hub",
        "_max_bytes",
        "_max_events",
        "_raw",
        "_raw_bytes",
        "_read_failures",
        "_ready",
        "_ready_bytes",
        "caught_up",
        "closed",
        "delivered",
        "follower",
        "overflows",
        "sink",
        "topic",
        "transport",
        "waiter",
    )

    def __init__(
        self,
        hub: Hub,
        topic: str,
        follower: Follower[LiveEvent],
        waiter: Waiter,
        max_events: int,
        max_bytes: int,
    ) -> None:
        if max_events < 1 or max_bytes < 1:
            raise LocalProtocolError("max_pending_events and max_pending_bytes must be >= 1")
        self._hub = hub
        #: The topic followed.
        self.topic = topic
        #: The follow machine deciding what to send.
        self.follower = follower
        #: The waiter woken when something is ready (shared if one was passed in).
        self.waiter = waiter
        #: Why the subscription stopped, or ``None`` while it is live.
        self.closed: CloseReason | None = None
        #: Set by an idle consumer that can take events synchronously; detached
        #: (and interrupted) as soon as an event cannot go that way.
        self.sink: DirectSink | None = None
        #: Events delivered so far (by batches or directly), a cheap progress mark.
        self.delivered = 0
        self._counted = 0
        self._batches = 0
        #: The transport serving it (``sse``, ``ws``...), for the metrics.
        self.transport = "other"
        #: Times the buffer overflowed (live events then came from the history).
        self.overflows = 0
        #: Where the initial replay ended, once it has (see :attr:`Batch.caught_up`;
        #: set at once, with no batch, for "live from now" on a history that
        #: answers at once).
        self.caught_up: Position | None = None
        self._max_events = max_events
        self._max_bytes = max_bytes
        # Live events the follower accepted, not yet taken by the consumer.
        self._ready: list[LiveEvent] = []
        # Live events the follower has not seen yet (it decides in next_batch).
        self._raw: list[LiveEvent] = []
        self._ready_bytes = 0
        self._raw_bytes = 0
        self._read_failures = 0
        # Live events were dropped (buffer full, feed lost): tell the follower.
        self._dropped = False
        # The follower's actions not yet carried out, in order.  Invariant: _ready
        # and _actions are never both non-empty (accepted events are newer).
        self._actions: list[FollowAction[LiveEvent]] = []

    # -- owner API -----------------------------------------------------------------

    @property
    def last(self) -> Position | None:
        """The position of the last event the follower delivered (or the place it
        continues from); ``None`` until the history first answered."""
        return self.follower.last

    @property
    def pending(self) -> int:
        """Live events buffered and not yet taken by :meth:`next_batch`."""
        return len(self._ready) + len(self._raw)

    @property
    def needs_read(self) -> bool:
        """Whether a history read must be awaited (:meth:`wait` does it) before
        :meth:`next_batch` can go on."""
        actions = self._actions
        return bool(actions) and type(actions[0]) is ReadHistory and self._hub._immediate is None

    def next_batch(self) -> Batch | None:
        """What to deliver now, or ``None`` when there is nothing (then :meth:`wait`).

        Never blocks.  While replaying, each call reads at most one page of history.
        """
        self.waiter.clear()
        ready = self._ready
        if ready:
            self._ready = []
            self._ready_bytes = 0
            self.delivered += len(ready)
            if not self._batches & _TIMED_MASK:
                self._hub.metrics.observe_delivery(perf_counter() - ready[0].created, len(ready))
            self._batches += 1
            return Batch(ready)
        follower = self.follower
        actions = self._actions
        if self._dropped:
            self._dropped = False
            actions += follower.overflow()
        raw = self._raw
        if raw:
            self._raw = []
            self._raw_bytes = 0
            actions += follower.live_many(raw)
        if not actions:
            return None
        reset: Reset | None = None
        events: list[LiveEvent] = []
        caught_up: Position | None = None
        index = 0
        while index < len(actions):
            action = actions[index]
            kind = type(action)
            if kind is Deliver:
                assert isinstance(action, Deliver)
                delivered = action.events
                if delivered and type(delivered[0]) is not LiveEvent:
                    events += [LiveEvent(stored) for stored in delivered]  # type: ignore[arg-type]
                else:
                    events += delivered  # type: ignore[arg-type]
            elif kind is ReadHistory:
                if events:
                    break  # one page per batch
                assert isinstance(action, ReadHistory)
                answer = self._read_now(action)
                if answer is None:
                    break  # wait() reads it
                actions[index : index + 1] = follower.history(answer)
                continue
            elif kind is CaughtUp:
                assert isinstance(action, CaughtUp)
                caught_up = self.caught_up = action.cursor
                index += 1
                break  # announced before anything live
            else:
                assert isinstance(action, Reset)
                if reset is not None or events:
                    break
                reset = action
                self._hub.metrics.resets[action.reason.value] += 1
            index += 1
        del actions[:index]
        if reset is None and not events and caught_up is None:
            return None
        self.delivered += len(events)
        if events and events[0].created >= 0:
            if not self._batches & _TIMED_MASK:
                self._hub.metrics.observe_delivery(perf_counter() - events[0].created, len(events))
            self._batches += 1
        return Batch(events, reset, caught_up)

    async def wait(self, deadline: float = math.inf) -> bool:
        """Wait until something may be ready, the subscription closes, or *deadline*.

        Performs a history read that :meth:`next_batch` left to it.  Returns
        ``False`` only when the deadline passed with nothing new.
        """
        if self.needs_read:
            await self.read()
            return True
        if self._ready or self._raw or self._dropped or self._actions or self.closed is not None:
            await trio.lowlevel.checkpoint()
            return True
        return await self.waiter.wait(deadline)

    async def read(self) -> None:
        """Perform the history read :meth:`next_batch` is waiting for (if any).

        When the history cannot be reached (:class:`~tidings.trio.history.HistoryUnavailable`)
        it waits a moment (longer after each failure, at most
        :data:`MAX_READ_RETRY_DELAY`) and returns with the read still to do: the
        consumer stays connected (and sends its heartbeats) until the store is back.
        """
        if not self.needs_read:
            await trio.lowlevel.checkpoint()
            return
        action = self._actions[0]
        assert isinstance(action, ReadHistory)
        hub = self._hub
        try:
            await hub._watch(self.topic)
            if action.after is None:
                answer: Replay | Reset = Replay((), await hub.history.head(self.topic))
            else:
                answer = await hub.history.read(self.topic, action.after, action.limit)
        except HistoryUnavailable as exc:
            hub.metrics.store_errors += 1
            delay = min(MAX_READ_RETRY_DELAY, 0.25 * 2**self._read_failures)
            self._read_failures += 1
            log.debug("history read for %r failed (%s); again in %.2f s", self.topic, exc, delay)
            await trio.sleep(delay)
            return
        self._read_failures = 0
        if self._actions and self._actions[0] is action:
            self._actions[0:1] = self.follower.history(answer)

    def close(self, reason: CloseReason = CloseReason.CLOSED) -> None:
        """Stop receiving events and wake the consumer; idempotent.

        What was already decided stays available to :meth:`next_batch`.
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

    def count_delivered(self) -> None:
        """Add what it delivered since the last call to the hub's metrics, under its
        :attr:`transport` (servers call it when the stream ends, and a scrape)."""
        delivered = self.delivered
        self._hub.metrics.delivered[self.transport] += delivered - self._counted
        self._counted = delivered

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
        self._ready = []
        self._raw = []
        self._actions = []
        self._ready_bytes = self._raw_bytes = 0

    def __repr__(self) -> str:
        state = self.closed.value if self.closed is not None else "live"
        return f"<Subscription {self.topic!r} at {self.last} {state} pending={self.pending}>"

    # -- internals -----------------------------------------------------------------

    def _start(self) -> None:
        """Begin following; the first read is made at once when it can be."""
        actions = self._actions = self.follower.begin()
        action = actions[0] if actions else None
        if (
            self._hub._immediate is not None
            and isinstance(action, ReadHistory)
            and action.after is None
        ):
            # Live from now: the head must be taken now, not at the first batch.
            answer = self._read_now(action)
            assert answer is not None
            actions[0:1] = self.follower.history(answer)
            if actions and type(actions[0]) is CaughtUp:
                # Known at once: reported by caught_up, not by a batch of nothing.
                self.caught_up = actions.pop(0).cursor  # type: ignore[union-attr]

    def _read_now(self, action: ReadHistory) -> Replay | Reset | None:
        immediate = self._hub._immediate
        if immediate is None:
            return None
        if action.after is None:
            return Replay((), immediate.head_nowait(self.topic))
        return immediate.read_nowait(self.topic, action.after, action.limit)

    def _push(self, item: LiveEvent) -> None:
        """A live event from the hub (in the publisher's task)."""
        if self.closed is not None:
            return
        ready = self._ready
        if (
            not self._raw
            and not self._actions
            and len(ready) < self._max_events
            and self._ready_bytes + item.size <= self._max_bytes
            and self.follower.accept(item.position)
        ):
            # The follower says: deliver it now.  Straight to an idle consumer's
            # socket if it has a sink, else into the buffer for next_batch().
            sink = self.sink
            if sink is not None:
                if not ready and sink.deliver(item):
                    self.delivered += 1
                    hub = self._hub
                    hub.metrics.direct_deliveries += 1
                    hub._dirty[sink] = None
                    return
                self.sink = None
                sink.interrupt()
                self._hub._unflushed += PUBLISH_BATCH  # its consumer was woken
            ready.append(item)
            self._ready_bytes += item.size
            if self.waiter.wake() or self._half_full():
                self._hub._unflushed += PUBLISH_BATCH
            return
        # Not for now: the follower decides in the consumer's task.
        sink = self.sink
        if sink is not None:
            self.sink = None
            sink.interrupt()
            self._hub._unflushed += PUBLISH_BATCH
        raw = self._raw
        raw.append(item)
        self._raw_bytes += item.size
        if (
            len(raw) + len(ready) > self._max_events
            or self._raw_bytes + self._ready_bytes > self._max_bytes
        ):
            if not self._dropped:
                self._hub.metrics.overflows += 1
            self._lost()
            return
        if self.waiter.wake() or self._half_full():
            self._hub._unflushed += PUBLISH_BATCH

    def _half_full(self) -> bool:
        """Whether the buffer is half full (then a publisher yields: a consumer that
        is busy is not made to overflow by a publisher's batch alone)."""
        return (
            2 * (len(self._ready) + len(self._raw)) > self._max_events
            or 2 * (self._ready_bytes + self._raw_bytes) > self._max_bytes
        )

    def _lost(self) -> None:
        """Live events did not fit (or the feed lost some): drop what the follower has
        not seen; it reads them from the history.  Losses before the consumer
        noticed the first count once."""
        self._raw = []
        self._raw_bytes = 0
        if not self._dropped:
            self._dropped = True
            self.overflows += 1
        self._hub._unflushed += PUBLISH_BATCH
        self.wake()


class Watch:
    """A wake-up on each event published on one topic, from :meth:`Hub.watch`.

    Keeps no events: :attr:`woken` says that something was published since it was
    last cleared.  A held long poll waits on one and reads its answer from the
    history.  Like a subscription it may carry a :attr:`sink`, offered each event
    first.
    """

    __slots__ = ("_hub", "closed", "sink", "topic", "transport", "waiter", "woken")

    def __init__(self, hub: Hub, topic: str, waiter: Waiter) -> None:
        self._hub = hub
        #: The topic watched.
        self.topic = topic
        #: Woken on each publish.
        self.waiter = waiter
        #: Why the watch stopped, or ``None``.
        self.closed: CloseReason | None = None
        #: Offered each event first; detached (and interrupted) when it refuses.
        self.sink: DirectSink | None = None
        #: Something was published since :meth:`clear`.
        self.woken = False
        #: The transport it serves (a held long poll), for the metrics.
        self.transport = "poll"

    @property
    def pending(self) -> int:
        """1 when something was published since :meth:`clear` (like
        :attr:`Subscription.pending`, for code that looks at both)."""
        return int(self.woken)

    def clear(self) -> None:
        """Forget earlier wake-ups."""
        self.woken = False
        self.waiter.clear()

    async def wait(self, deadline: float = math.inf) -> bool:
        """Wait for a publish (or a close) until *deadline*; ``False`` on timeout."""
        if self.woken or self.closed is not None:
            await trio.lowlevel.checkpoint()
            return True
        return await self.waiter.wait(deadline)

    def close(self, reason: CloseReason = CloseReason.CLOSED) -> None:
        """Stop watching and wake the waiter; idempotent."""
        if self.closed is None:
            self.closed = reason
        self._hub._remove(self)
        self.wake()

    def detach(self, sink: DirectSink | None) -> None:
        """Stop using *sink*, unless the hub already did."""
        if self.sink is sink:
            self.sink = None

    def wake(self) -> None:
        """Wake the waiter and interrupt the sink."""
        self.waiter.wake()
        sink = self.sink
        if sink is not None:
            self.sink = None
            sink.interrupt()

    def __enter__(self) -> Watch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _push(self, item: LiveEvent) -> None:
        if self.closed is not None:
            return
        # A held poll is answered (by its sink) or woken: either way, the
        # publisher yields soon after.
        self._hub._unflushed += PUBLISH_BATCH
        sink = self.sink
        if sink is not None:
            if sink.deliver(item):
                self._hub._dirty[sink] = None
                return
            self.sink = None
            sink.interrupt()
        self.woken = True
        self.waiter.wake()

    def _lost(self) -> None:
        self.woken = True
        self.wake()

    def __repr__(self) -> str:
        state = self.closed.value if self.closed is not None else "live"
        return f"<Watch {self.topic!r} {state} woken={self.woken}>"
