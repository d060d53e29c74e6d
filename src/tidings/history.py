"""Per-topic event logs in memory, with replay after a position or an explicit reset.

:class:`MemoryHistory` keeps, for each topic, a ring of the most recent events bounded
by count and by total size.  :meth:`MemoryHistory.read` answers "what came after this
position?" with either every retained event after it, in order (a :class:`Replay`), or
a :class:`Reset` saying why that is impossible and where the retained events go on.
It never silently skips: an evicted, foreign or malformed position always gives a
reset.

Nothing here waits: waking readers when something is appended is the job of the Trio
layer (:mod:`tidings.trio`).
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import FrozenInstanceError, dataclass
from itertools import repeat
from operator import itemgetter
from typing import NamedTuple, cast
from zlib import crc32

from tidings.cursor import (
    EARLIEST,
    MAX_EPOCH_LENGTH,
    Position,
    _new_position,
    _trusted_position,
)
from tidings.errors import InvalidCursor, LocalProtocolError

__all__ = [
    "DEFAULT_MAX_TOTAL_BYTES",
    "MemoryHistory",
    "Replay",
    "Reset",
    "ResetReason",
    "StoredEvent",
]

#: Longest base epoch a :class:`MemoryHistory` accepts (room is left for the
#: per-topic suffix within :data:`~tidings.cursor.MAX_EPOCH_LENGTH`).
_MAX_BASE_EPOCH = MAX_EPOCH_LENGTH - 14
# Topic tags in an epoch: 5 base-36 characters.
_TAG_SPACE = 36**5
_DIGITS36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def _base36(number: int) -> str:
    """*number* (< 36**5) in exactly 5 base-36 digits."""
    digits = []
    for _ in range(5):
        number, digit = divmod(number, 36)
        digits.append(_DIGITS36[digit])
    return "".join(reversed(digits))


#: The default budget of a :class:`MemoryHistory` for all topics together, in bytes.
DEFAULT_MAX_TOTAL_BYTES = 256 * 1024 * 1024
# Per stored event bookkeeping charged against ``max_bytes`` on top of its payload,
# so that a flood of empty events is bounded too.
_EVENT_OVERHEAD = 64


class StoredEvent(NamedTuple):
    """One event as it sits in a history: its position, payload and optional type.

    Immutable: assigning to a field raises :class:`dataclasses.FrozenInstanceError`.
    A named tuple (like :class:`~tidings.cursor.Position`) because one is built for
    every event published and every event replayed; so it also compares equal to
    the tuple ``(position, data, event)``.
    """

    position: Position
    data: str
    event: str | None = None

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")


_DATA = itemgetter(0)
_TYPE = itemgetter(1)

# Builds a StoredEvent in one C call (no keyword handling, no defaults).
_new_stored = cast(
    Callable[[type[StoredEvent], tuple[Position, str, str | None]], StoredEvent],
    tuple.__new__,
)


class ResetReason(enum.StrEnum):
    """Why a read could not continue from the given position."""

    #: The cursor is not a valid position string.
    MALFORMED = "malformed"
    #: The cursor belongs to another generation of the topic (restart, dropped topic).
    UNKNOWN_EPOCH = "unknown-epoch"
    #: The cursor is ahead of anything this history has produced.
    UNKNOWN_POSITION = "unknown-position"
    #: Events after the cursor were evicted; continuing would skip them.
    EVICTED = "evicted"


@dataclass(frozen=True, slots=True)
class Replay:
    """The retained events after a position, oldest first.

    ``cursor`` is where the next read should continue from: the position of the last
    event here, or the requested position when there are none.  ``more`` is true when
    *limit* cut the answer short and further events are already retained.
    """

    events: tuple[StoredEvent, ...]
    cursor: Position
    more: bool = False


@dataclass(frozen=True, slots=True)
class Reset:
    """A read that cannot continue from the position asked: events were lost.

    ``cursor`` is where the history continues: reading after it gives every event
    still retained after the loss.  For an unknown epoch (a restart, a dropped
    topic) and for evicted events that is just before the earliest event retained;
    for a position ahead of the head, and for a malformed cursor (which names no
    place at all), it is the head: live from now.
    """

    cursor: Position
    reason: ResetReason


# Events per sealed chunk of a topic's ring (see _Topic).
_CHUNK = 256

_Item = tuple[str, str | None, int]


class _Topic:
    """The ring of one topic's retained events.

    Events are kept as plain ``(data, event, size)`` tuples, never as
    :class:`StoredEvent` objects, and in chunks: every :data:`_CHUNK` of them are
    sealed into one tuple.  A tuple holding only strings, ints and such tuples is
    untracked by CPython's cyclic garbage collector after one collection, so a full
    collection visits one object per chunk instead of two or three per event (with
    10 000 topics of 1 000 events that is the difference between a pause of
    seconds and one of milliseconds), and the history takes about half the memory.
    Reads build :class:`StoredEvent` objects from the tuples.

    The retained events are offsets ``first..last``; the chunks (then ``tail``, the
    chunk being filled) start at offset ``base``, and the first ``skip`` of them
    were evicted.
    """

    __slots__ = ("base", "chunks", "epoch", "first", "last", "nbytes", "skip", "tail")

    def __init__(self, epoch: str) -> None:
        self.epoch = epoch
        self.chunks: list[tuple[_Item, ...]] = []
        self.tail: list[_Item] = []
        self.base = 1
        self.skip = 0
        self.first = 1
        self.last = 0
        self.nbytes = 0

    def append(self, item: _Item) -> None:
        tail = self.tail
        tail.append(item)
        self.last += 1
        self.nbytes += item[2]
        if len(tail) == _CHUNK:
            self.chunks.append(tuple(tail))
            self.tail = []

    def evict_one(self) -> None:
        chunks = self.chunks
        chunk: Sequence[_Item] = chunks[0] if chunks else self.tail
        self.nbytes -= chunk[self.skip][2]
        self.skip += 1
        self.first += 1
        if chunks and self.skip == _CHUNK:
            del chunks[0]
            self.base += _CHUNK
            self.skip = 0

    def items(self, begin: int, end: int) -> Sequence[_Item]:
        """The items of offsets ``begin..end - 1`` (all retained)."""
        chunks = self.chunks
        index = begin - self.base
        stop = end - self.base
        number, start = divmod(index, _CHUNK)
        if start + stop - index <= _CHUNK:  # within one chunk: the usual case
            chunk: Sequence[_Item] = chunks[number] if number < len(chunks) else self.tail
            return chunk[start : start + stop - index]
        out: list[_Item] = []
        while index < stop:
            number, start = divmod(index, _CHUNK)
            chunk = chunks[number] if number < len(chunks) else self.tail
            take = min(_CHUNK - start, stop - index)
            out += chunk[start : start + take]
            index += take
        return out


def _event_size(data: str, event: str | None) -> int:
    size = _EVENT_OVERHEAD + (len(data) if data.isascii() else len(data.encode("utf-8", "replace")))
    if event is not None:
        size += len(event)
    return size


class MemoryHistory:
    """Bounded in-memory event logs, one per topic.

    Each topic is a ring holding at most *max_events* events and *max_bytes* of payload
    (plus a small per-event overhead); the oldest events are evicted first.  All
    topics together hold at most *max_total_bytes*: beyond it the oldest events of the
    least recently used topics are evicted (and a topic left with nothing is dropped),
    which followers see as ordinary resets.  At most *max_topics* topics are kept:
    appending to a new topic beyond that drops the least recently used one, and when
    that topic comes back it starts a new generation (a new epoch), so stale cursors
    into it reset instead of silently resuming.

    Only :meth:`append` creates a topic.  Reading one that holds nothing costs
    nothing and answers with offset 0 of the epoch the topic *will* get when it is
    created now, so a client asking about made-up topic names cannot push real
    topics out, and a follower that saw "nothing yet" follows the topic's first
    event as the next one.  That epoch changes whenever any topic is dropped (the
    topic might have lived and died meanwhile): a position handed out before then
    gives a reset.

    *epoch* names this history's generation; pass a fresh random one per process
    (:func:`tidings.cursor.new_epoch`).  Each topic's epoch is derived from it, the
    number of topics dropped so far and the topic's name.
    """

    def __init__(
        self,
        epoch: str,
        *,
        max_events: int = 1000,
        max_bytes: int = 16 * 1024 * 1024,
        max_event_size: int = 1024 * 1024,
        max_topics: int = 10_000,
        max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    ) -> None:
        Position(epoch, 0)  # validates the charset
        if len(epoch) > _MAX_BASE_EPOCH:
            raise LocalProtocolError(f"epoch longer than {_MAX_BASE_EPOCH} characters")
        if max_events < 1 or max_topics < 1 or max_event_size < 1:
            raise LocalProtocolError("max_events, max_event_size and max_topics must be >= 1")
        if max_bytes < max_event_size + _EVENT_OVERHEAD:
            raise LocalProtocolError("max_bytes must leave room for one event of max_event_size")
        if max_total_bytes < max_event_size + _EVENT_OVERHEAD:
            raise LocalProtocolError(
                "max_total_bytes must leave room for one event of max_event_size"
            )
        self.epoch = epoch
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.max_event_size = max_event_size
        self.max_topics = max_topics
        self.max_total_bytes = max_total_bytes
        self._topics: OrderedDict[str, _Topic] = OrderedDict()
        # Bytes charged to every topic together (payload plus per-event overhead).
        self._total = 0
        # Topics dropped so far (mod 2**32): part of every new topic's epoch.
        self._dropped = 0

    def _new_epoch(self, topic: str) -> str:
        """The epoch *topic* gets if it is created now (see the class)."""
        tag = crc32(topic.encode("utf-8", "surrogatepass"))
        return f"{self.epoch}_{self._dropped:x}{_base36(tag % _TAG_SPACE)}"

    def _topic(self, topic: str) -> _Topic:
        state = self._held(topic)
        if state is not None:
            return state
        # The epoch readers of the topic were told (before this append, which may
        # drop another topic: that one did not live and die in between).
        epoch = self._new_epoch(topic)
        if len(self._topics) >= self.max_topics:
            self._drop_oldest()
        state = _Topic(epoch)
        self._topics[topic] = state
        return state

    def _drop_oldest(self) -> None:
        """Drop the least recently used topic (its epoch is never used again)."""
        _, state = self._topics.popitem(last=False)
        self._total -= state.nbytes
        self._dropped = (self._dropped + 1) % 2**32

    def _fit_total(self, current: _Topic) -> None:
        """Evict the oldest events of the least recently used topics (dropping those
        left with nothing) until everything fits :attr:`max_total_bytes`."""
        topics = self._topics
        while self._total > self.max_total_bytes:
            state = next(iter(topics.values()))
            if state.last > state.first or state is current:
                before = state.nbytes
                state.evict_one()
                self._total -= before - state.nbytes
            else:
                self._drop_oldest()

    def _held(self, topic: str) -> _Topic | None:
        state = self._topics.get(topic)
        if state is not None:
            self._topics.move_to_end(topic)
        return state

    def __len__(self) -> int:
        """The number of topics currently held."""
        return len(self._topics)

    def __contains__(self, topic: object) -> bool:
        return topic in self._topics

    def append(self, topic: str, data: str, event: str | None = None) -> StoredEvent:
        """Store an event at the end of *topic* and return it with its new position.

        Raises :class:`~tidings.errors.LocalProtocolError` when the event is larger
        than *max_event_size* (a server should answer ``413``).
        """
        size = _event_size(data, event)
        if size - _EVENT_OVERHEAD > self.max_event_size:
            raise LocalProtocolError(
                f"event of {size - _EVENT_OVERHEAD} bytes exceeds max_event_size "
                f"{self.max_event_size}",
                error_status_hint=413,
            )
        state = self._topic(topic)
        stored = _new_stored(
            StoredEvent, (_trusted_position(state.epoch, state.last + 1), data, event)
        )
        before = state.nbytes
        state.append((data, event, size))
        while state.last - state.first + 1 > self.max_events or state.nbytes > self.max_bytes:
            state.evict_one()
        self._total += state.nbytes - before
        if self._total > self.max_total_bytes:
            self._fit_total(state)
        return stored

    @property
    def total_bytes(self) -> int:
        """Bytes charged to every topic together (see *max_total_bytes*)."""
        return self._total

    def head(self, topic: str) -> Position:
        """The position of the newest event of *topic* (offset 0 when it has none).

        Reading after the head returns only events appended later: "live from now".
        """
        state = self._held(topic)
        if state is None:
            return _trusted_position(self._new_epoch(topic), 0)
        return _trusted_position(state.epoch, state.last)

    def read(self, topic: str, after: Position | str, limit: int = 1000) -> Replay | Reset:
        """The events of *topic* after *after*, at most *limit* of them, or a reset.

        *after* is a :class:`~tidings.cursor.Position`, its wire form, or
        :data:`~tidings.cursor.EARLIEST` for everything retained.  A position of
        another epoch, or one whose successors were evicted, gives a :class:`Reset`
        whose cursor is just before the earliest event retained, so that reading on
        from it loses nothing more; a malformed string or a position ahead of the
        head gives one at the head.
        """
        if limit < 1:
            raise LocalProtocolError("limit must be >= 1")
        state = self._held(topic)
        # A topic not held reads as an empty one in the epoch it would get now.
        if state is None:
            epoch, first, last = self._new_epoch(topic), 1, 0
        else:
            epoch, first, last = state.epoch, state.first, state.last
        if isinstance(after, str):
            if after == EARLIEST:
                after = Position(epoch, first - 1)
            else:
                try:
                    after = Position.parse(after)
                except InvalidCursor:
                    return Reset(_trusted_position(epoch, last), ResetReason.MALFORMED)
        # A reset continues with every event still retained after the loss.
        if after.epoch != epoch:
            return Reset(_trusted_position(epoch, first - 1), ResetReason.UNKNOWN_EPOCH)
        if after.offset > last:
            return Reset(_trusted_position(epoch, last), ResetReason.UNKNOWN_POSITION)
        if after.offset < first - 1:
            return Reset(_trusted_position(epoch, first - 1), ResetReason.EVICTED)
        begin = after.offset + 1
        end = min(begin + limit, last + 1)
        if begin == end:
            return Replay((), after, False)
        assert state is not None  # it holds events
        chunk = state.items(begin, end)
        count = len(chunk)
        if count == 1:  # a live follower's usual read
            data, event, _ = chunk[0]
            stored = _new_stored(StoredEvent, (_trusted_position(state.epoch, begin), data, event))
            return Replay((stored,), stored.position, end <= state.last)
        # Built column by column at C speed: replay is the bulk path.
        positions = map(
            _new_position,
            repeat(Position, count),
            zip(
                repeat(state.epoch, count),
                range(after.offset + 1, after.offset + 1 + count),
                strict=True,
            ),
        )
        columns = zip(positions, map(_DATA, chunk), map(_TYPE, chunk), strict=True)
        events = tuple(map(_new_stored, repeat(StoredEvent, count), columns))
        return Replay(events, events[-1].position, end <= state.last)

    def stats(self, topic: str) -> tuple[int, int]:
        """``(events, bytes)`` retained for *topic*, without creating it."""
        state = self._topics.get(topic)
        if state is None:
            return (0, 0)
        return (state.last - state.first + 1, state.nbytes)
