"""The follow machine: a topic's events after a position, then live, none lost or repeated.

Following a topic means merging two sources that overlap: the *history* (what was
stored before, and while, it is read) and the *live feed* (what is published from
now on).  :class:`Follower` is that merge, and the only place in tidings that makes
its decisions; every transport (SSE, long polling, WebSocket) and every adapter
(the Trio hub, the ASGI app) drives one per followed topic.  It does no I/O, reads
no clock and draws no random numbers.

Drive it like this (``perform`` is yours: read, send, send a reset)::

    follower = Follower(start)      # after a position, its wire form, "earliest",
                                    # or None for "live from now"
    register for the topic's live events     # *before* the first read
    perform(follower.begin())
    on each live event:        perform(follower.live(event))
    on live events you dropped (your buffer was full, the feed reconnected):
                               perform(follower.overflow())
    where perform does, for each action in order:
        ReadHistory(after, limit) -> answer = read the history (the head when
                                     after is None) and perform(follower.history(answer))
        Deliver(events)           -> send the events, in order
        Reset(cursor, reason)     -> send a reset: events were lost before cursor
        CaughtUp(cursor)          -> (optional) the replay is over: live from here

What the machine guarantees, for any interleaving of inputs (the property its tests
check against a model): the delivered events are exactly the events stored after the
start, in order, each once, except where the history no longer holds them; there, a
:class:`~tidings.history.Reset` stands exactly where events were lost, and it is
followed by every event still retained after the loss (a reset never jumps to the
head).  A malformed start is the one exception: it resets to the head ("live from
now"), because it names no place at all.

How: live events that arrive while a read is outstanding are buffered (up to
*max_buffered*; beyond that they are dropped and read again from the history).  A
live event that is not exactly the next position -- a hole, another epoch -- is
never delivered as such: the machine reads the history after the last event
delivered, which either fills the hole or answers with a reset.  Duplicates (the
replay and the live feed overlap) are dropped by position.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from tidings.cursor import Position
from tidings.errors import LocalProtocolError
from tidings.history import Replay, Reset, StoredEvent

__all__ = [
    "DEFAULT_MAX_BUFFERED",
    "DEFAULT_PAGE_SIZE",
    "CaughtUp",
    "Deliver",
    "FollowAction",
    "FollowState",
    "Follower",
    "Positioned",
    "ReadHistory",
]

#: Events asked of the history per read, by default.
DEFAULT_PAGE_SIZE = 128
#: Live events kept while a read is outstanding, by default (more are read again).
DEFAULT_MAX_BUFFERED = 1024


class Positioned(Protocol):
    """Anything with a :attr:`position`: a :class:`~tidings.history.StoredEvent`, or an
    adapter's own wrapper around one (the Trio hub's ``LiveEvent``)."""

    @property
    def position(self) -> Position:
        """Where the event is stored."""
        ...


E = TypeVar("E", bound=Positioned)


@dataclass(frozen=True, slots=True)
class ReadHistory:
    """Read the history after ``after``, at most ``limit`` events, and pass the answer
    (a :class:`~tidings.history.Replay` or :class:`~tidings.history.Reset`) to
    :meth:`Follower.history`.

    ``after`` is a position, a cursor string (perhaps malformed: the history says so
    with a reset) or :data:`~tidings.cursor.EARLIEST`; ``None`` asks only for the head:
    answer ``Replay((), head)``.
    """

    after: Position | str | None
    limit: int


@dataclass(frozen=True, slots=True)
class Deliver(Generic[E]):
    """Send ``events`` in order: live events as they were passed in, replayed ones as
    :class:`~tidings.history.StoredEvent`."""

    events: Sequence[E | StoredEvent]


@dataclass(frozen=True, slots=True)
class CaughtUp:
    """The initial replay is over (sent once): from here on events come live.

    ``cursor`` is the position of the last event delivered, or the head the follower
    started from; a WebSocket server says so with its ``subscribed`` message.
    """

    cursor: Position


#: What a :class:`Follower` asks of its adapter.
FollowAction = ReadHistory | Deliver[E] | Reset | CaughtUp


class FollowState(enum.Enum):
    """Where a :class:`Follower` stands."""

    #: Made, :meth:`~Follower.begin` not called yet.
    IDLE = "idle"
    #: A :class:`ReadHistory` is outstanding: live events are buffered meanwhile.
    READING = "reading"
    #: Caught up: each next live event is delivered as it comes.
    LIVE = "live"


_IDLE = FollowState.IDLE
_READING = FollowState.READING
_LIVE = FollowState.LIVE


class Follower(Generic[E]):
    """Turns "resume after *start*" plus a live feed into a sequence with no loss, no
    duplicate and an explicit reset where a gap cannot be filled (see the module).

    *start* is a :class:`~tidings.cursor.Position`, its wire form (for example a
    ``Last-Event-ID``; anything malformed gives a reset, never an error),
    :data:`~tidings.cursor.EARLIEST` for everything retained, or ``None`` for live
    from now.  *page_size* is the ``limit`` of each read; *max_buffered* bounds the
    live events kept while a read is outstanding.
    """

    __slots__ = (
        "_buffer",
        "_caught_up",
        "_last",
        "_reread",
        "_start",
        "_state",
        "max_buffered",
        "page_size",
    )

    def __init__(
        self,
        start: Position | str | None = None,
        *,
        page_size: int = DEFAULT_PAGE_SIZE,
        max_buffered: int = DEFAULT_MAX_BUFFERED,
    ) -> None:
        if not (start is None or isinstance(start, Position | str)):
            raise LocalProtocolError(
                f"start must be a Position, str or None, not {type(start).__name__}"
            )
        for name, value in (("page_size", page_size), ("max_buffered", max_buffered)):
            if type(value) is not int or value < 1:
                raise LocalProtocolError(f"{name} must be an int >= 1")
        #: Events asked of the history per read.
        self.page_size = page_size
        #: Live events kept while a read is outstanding.
        self.max_buffered = max_buffered
        self._start = start
        self._state = _IDLE
        self._last: Position | None = None
        self._buffer: list[E] = []
        self._reread = False
        self._caught_up = False

    # -- inspection ----------------------------------------------------------------

    @property
    def state(self) -> FollowState:
        """Idle, reading, or live."""
        return self._state

    @property
    def start(self) -> Position | str | None:
        """Where the follower was asked to start."""
        return self._start

    @property
    def last(self) -> Position | None:
        """The position of the last event delivered (or the place a reset or the head
        continued from); ``None`` until the first answer of the history."""
        return self._last

    @property
    def buffered(self) -> int:
        """Live events kept until the outstanding read is answered."""
        return len(self._buffer)

    # -- inputs --------------------------------------------------------------------

    def begin(self) -> list[FollowAction[E]]:
        """Start: the first read (register for live events *before* performing it)."""
        if self._state is not _IDLE:
            raise LocalProtocolError("begin() was already called")
        self._state = _READING
        # Live events that came before begin() are covered by this read.
        self._buffer = []
        return [ReadHistory(self._start, self.page_size)]

    def history(self, answer: Replay | Reset) -> list[FollowAction[E]]:
        """The answer to the outstanding :class:`ReadHistory`."""
        if self._state is not _READING:
            raise LocalProtocolError(f"history() while {self._state.value}: no read is outstanding")
        if isinstance(answer, Reset):
            # Events were lost before answer.cursor; everything retained after it
            # follows (the next read), and buffered events are covered by that read.
            self._last = answer.cursor
            self._buffer = []
            self._reread = False
            return [answer, ReadHistory(answer.cursor, self.page_size)]
        if not isinstance(answer, Replay):
            raise LocalProtocolError(f"expected a Replay or a Reset, got {answer!r}")
        self._last = answer.cursor
        actions: list[FollowAction[E]] = []
        if answer.events:
            actions.append(Deliver(answer.events))
        if answer.more or self._reread:
            # Live events seen so far were stored before this next read: it covers them.
            self._buffer = []
            self._reread = False
            actions.append(ReadHistory(answer.cursor, self.page_size))
            return actions
        self._state = _LIVE
        if not self._caught_up:
            self._caught_up = True
            actions.append(CaughtUp(answer.cursor))
        buffer = self._buffer
        if buffer:
            self._buffer = []
            actions += self._run(buffer)
        return actions

    def live(self, event: E) -> list[FollowAction[E]]:
        """One live event (in the order the feed gave it)."""
        return self.live_many((event,))

    def live_many(self, events: Sequence[E]) -> list[FollowAction[E]]:
        """Live events, oldest first."""
        if not events:
            return []
        if self._state is not _LIVE:
            buffer = self._buffer
            buffer += events
            if len(buffer) > self.max_buffered:
                # Too many to keep: the history has them (or says they were lost).
                self._buffer = []
                self._reread = self._state is _READING
            return []
        return self._run(events)

    def overflow(self) -> list[FollowAction[E]]:
        """Live events were dropped before reaching the machine (the adapter's buffer
        was full, or its feed reconnected): read them from the history."""
        self._buffer = []
        if self._state is _LIVE:
            self._state = _READING
            assert self._last is not None
            return [ReadHistory(self._last, self.page_size)]
        if self._state is _READING:
            self._reread = True
        return []

    def accept(self, position: Position) -> bool:
        """Fast path: whether a live event at *position* is to be delivered right now.

        ``True`` exactly when :meth:`live` would answer ``[Deliver([event])]``: the
        follower is live and *position* is the next one.  The event then counts as
        delivered (the caller must deliver it).  ``False`` changes nothing: pass the
        event to :meth:`live`, which decides what to do.
        """
        if self._state is not _LIVE:
            return False
        last = self._last
        assert last is not None
        if position[1] == last[1] + 1 and (position[0] == last[0] or last[1] == 0):
            self._last = position
            return True
        return False

    # -- internals -----------------------------------------------------------------

    def _run(self, events: Sequence[E]) -> list[FollowAction[E]]:
        """Deliver the next events in *events*, drop duplicates, read on a hole."""
        last = self._last
        assert last is not None
        epoch, offset = last
        actions: list[FollowAction[E]] = []
        start = 0  # first index of the run of events being delivered
        for index, event in enumerate(events):
            position = event.position
            if position[0] == epoch:
                if position[1] == offset + 1:
                    offset += 1
                    last = position
                    continue
                if position[1] <= offset:
                    # Already delivered (the replay and the feed overlap): drop it.
                    if index > start:
                        actions.append(Deliver(events[start:index]))
                    start = index + 1
                    continue
            elif offset == 0 and position[1] == 1:
                # Nothing of the epoch delivered yet, and the follower was registered
                # before its position was read: every event since reached it live, so
                # the first event of another epoch is the next one, not a gap.
                epoch = position[0]
                offset = 1
                last = position
                continue
            # A hole or another epoch: the history knows what really follows.
            if index > start:
                actions.append(Deliver(events[start:index]))
            self._last = last
            self._state = _READING
            self._buffer = []
            actions.append(ReadHistory(last, self.page_size))
            return actions
        if start < len(events):
            actions.append(Deliver(events if start == 0 else events[start:]))
        self._last = last
        return actions

    def __repr__(self) -> str:
        return (
            f"<Follower {self._state.value} last={self._last} "
            f"buffered={len(self._buffer)}{' reread' if self._reread else ''}>"
        )
