"""Where a hub keeps topics' events: the one history interface every backend implements.

A :class:`History` stores events (assigning positions), reads them back after a
position, and feeds the hub every event stored -- by this process or, for a shared
store, by any other.  :class:`LocalHistory` keeps them in this process's memory
(the default); a Redis-backed history shares them between processes.  To write
another, implement :class:`History` and hand it to :class:`~tidings.trio.Hub`.

The contract, which the hub and the follow machine (:mod:`tidings.follow`) rely on:

* **Positions are assigned atomically**: within an epoch, every appended event gets
  the next offset, 1, 2, 3, ...; no two events ever share a position, even when
  several processes append at once.  A new epoch starts at offset 1.
* **Reads answer exactly**: :meth:`History.read` returns the retained events after a
  position, oldest first (a :class:`~tidings.history.Replay`), or a
  :class:`~tidings.history.Reset` when that is impossible.  For an unknown epoch (a
  restart, a flushed store) and for evicted events, the reset's cursor is just
  before the earliest event retained, so that nothing still retained is skipped;
  for a malformed cursor or one ahead of the head, it is the head.
* **The feed carries every event stored, in position order**, from the moment
  :meth:`History.watch` returned for its topic, possibly more than once; the hub
  gives each event to the follow machine, which drops duplicates and reads the
  history to fill any hole.  A feed that may have lost events (a reconnect) says so
  with ``on_lost(topic)``.

Histories that can answer from memory without waiting also implement
:class:`ImmediateHistory`; the hub then reads and publishes without a checkpoint.
"""

from __future__ import annotations

import random
from typing import Protocol, runtime_checkable

import trio

from tidings.cursor import Position, new_epoch
from tidings.dedup import PublishDeduplicator
from tidings.history import MemoryHistory, Replay, Reset, StoredEvent

__all__ = [
    "Feed",
    "History",
    "HistoryUnavailable",
    "ImmediateHistory",
    "LocalHistory",
]


class HistoryUnavailable(Exception):
    """The history cannot be reached right now (its store is down): try again later.

    A publish that fails this way was stored at most once (a networked store may
    still store an append whose answer was lost); resending it with the same
    idempotency key is safe.  A server answers it with ``503`` and ``Retry-After``.
    """


class Feed(Protocol):
    """What a history tells the hub (:meth:`History.bind`)."""

    def on_event(self, topic: str, stored: StoredEvent) -> None:
        """*stored* was appended to *topic* (by anyone); call in position order."""
        ...

    def on_lost(self, topic: str | None) -> None:
        """Events of *topic* (``None``: of every topic) may have been missed by the
        feed; followers read them from the history."""
        ...


@runtime_checkable
class History(Protocol):
    """The async history interface (the extension point; see the module)."""

    def bind(self, feed: Feed) -> None:
        """Deliver every event stored from now on to *feed* (called once, by the hub)."""
        ...

    async def append(
        self, topic: str, data: str, event: str | None = None, *, key: str | None = None
    ) -> StoredEvent:
        """Store an event at the end of *topic*; return it with its position.

        *key* makes the append idempotent: when an event was stored in *topic* under
        the same key within the history's de-duplication window, nothing is stored
        and that first event is returned (so a client that resends after a lost
        answer gets the original position).

        Raises :class:`~tidings.errors.LocalProtocolError` for an event the history
        refuses (too large: ``error_status_hint`` 413), :class:`HistoryUnavailable`
        when the store cannot be reached (the event was then stored at most once:
        resend with the same *key*).  An append cut off in the middle either
        stored the event once or raises: it is never acknowledged and lost.
        """
        ...

    async def read(self, topic: str, after: Position | str, limit: int) -> Replay | Reset:
        """At most *limit* events of *topic* after *after*, or a reset."""
        ...

    async def head(self, topic: str) -> Position:
        """The position of the newest event of *topic* (offset 0 when none)."""
        ...

    async def watch(self, topic: str) -> None:
        """Feed *topic*'s events from now on (the hub calls it for its first follower
        of the topic, before that follower's first read)."""
        ...

    def unwatch(self, topic: str) -> None:
        """*topic* has no follower any more: its events need not be fed."""
        ...


@runtime_checkable
class ImmediateHistory(History, Protocol):
    """A :class:`History` that can also answer at once, without a checkpoint.

    Its feed is immediate too: :meth:`append_nowait` feeds the event before it
    returns, and :meth:`History.watch` has nothing to wait for.
    """

    def append_nowait(
        self, topic: str, data: str, event: str | None = None, *, key: str | None = None
    ) -> StoredEvent:
        """:meth:`History.append` without waiting (the event is fed at once)."""
        ...

    def read_nowait(self, topic: str, after: Position | str, limit: int) -> Replay | Reset:
        """:meth:`History.read` without waiting."""
        ...

    def head_nowait(self, topic: str) -> Position:
        """:meth:`History.head` without waiting."""
        ...


class LocalHistory:
    """The history of one process, in its memory: a :class:`~tidings.history.MemoryHistory`
    behind the :class:`History` interface (and :class:`ImmediateHistory`).

    *memory* defaults to one with a fresh random epoch and default limits; pass one
    to choose its limits.  *dedup* remembers the keys of idempotent appends (one
    with its default window when not given).  Nothing survives the process: after a
    restart clients resuming with an old position get a reset (unknown epoch).
    """

    __slots__ = ("_feed", "dedup", "memory")

    def __init__(
        self, memory: MemoryHistory | None = None, *, dedup: PublishDeduplicator | None = None
    ) -> None:
        #: The sans-IO store behind this history.
        self.memory = (
            memory if memory is not None else MemoryHistory(new_epoch(random.SystemRandom()))
        )
        #: The keys of recent idempotent appends.
        self.dedup = dedup if dedup is not None else PublishDeduplicator()
        self._feed: Feed | None = None

    def bind(self, feed: Feed) -> None:
        if self._feed is not None and self._feed is not feed:
            raise RuntimeError("this history already feeds another hub")
        self._feed = feed

    def append_nowait(
        self, topic: str, data: str, event: str | None = None, *, key: str | None = None
    ) -> StoredEvent:
        if key is not None:
            now = trio.current_time()
            original = self.dedup.lookup(topic, key, now)
            if original is not None:
                return StoredEvent(original, data, event)
        stored = self.memory.append(topic, data, event)
        if key is not None:
            self.dedup.remember(topic, key, stored.position, now)
        feed = self._feed
        if feed is not None:
            feed.on_event(topic, stored)
        return stored

    def read_nowait(self, topic: str, after: Position | str, limit: int) -> Replay | Reset:
        return self.memory.read(topic, after, limit)

    def head_nowait(self, topic: str) -> Position:
        return self.memory.head(topic)

    async def append(
        self, topic: str, data: str, event: str | None = None, *, key: str | None = None
    ) -> StoredEvent:
        await trio.lowlevel.checkpoint_if_cancelled()
        stored = self.append_nowait(topic, data, event, key=key)
        await trio.lowlevel.cancel_shielded_checkpoint()
        return stored

    async def read(self, topic: str, after: Position | str, limit: int) -> Replay | Reset:
        await trio.lowlevel.checkpoint()
        return self.memory.read(topic, after, limit)

    async def head(self, topic: str) -> Position:
        await trio.lowlevel.checkpoint()
        return self.memory.head(topic)

    async def watch(self, topic: str) -> None:
        # Every append is fed at once: nothing to set up.
        await trio.lowlevel.checkpoint()

    def unwatch(self, topic: str) -> None:
        pass

    def __repr__(self) -> str:
        return f"<LocalHistory epoch={self.memory.epoch!r} topics={len(self.memory)}>"
