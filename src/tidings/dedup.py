"""Remembering recent publishes so that a resent one is stored only once.

A client that lost its connection cannot know whether its last publishes arrived, so
it sends them again (same ``msg_id``) after reconnecting.  The server answers a
repeat with the position the first copy got instead of storing it twice.  The memory
is bounded by count and by age: a repeat older than the window is stored again, so
the window must outlast a client's reconnect time (the defaults allow 10 minutes).

One :class:`PublishDeduplicator` is shared by every connection of a server (a client
reconnects on a *new* connection), and is owned by the server or hub, not by a
connection.  So that one client cannot use the shared window against another -- by
sending another client's ``msg_id`` first, with other data, to have the real publish
taken for a repeat and dropped -- a key is only ever matched together with what was
published under it (:func:`bind_key`): a repeat must carry the same data and type, and
a reused key with new content is simply a new event.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict

from tidings.cursor import Position
from tidings.errors import LocalProtocolError

__all__ = [
    "DEFAULT_DEDUP_MAX_AGE",
    "DEFAULT_DEDUP_MAX_ENTRIES",
    "PublishDeduplicator",
    "bind_key",
]

#: Default number of ``(topic, msg_id)`` pairs remembered.
DEFAULT_DEDUP_MAX_ENTRIES = 100_000
#: Default age after which a pair is forgotten, in seconds.
DEFAULT_DEDUP_MAX_AGE = 600.0


def bind_key(key: str, data: str, event: str | None) -> str:
    """The de-duplication key of a publish: the client's *key* (``msg_id``,
    ``Idempotency-Key``) bound to a digest of the *event* type and *data* it carries.

    Two publishes share it only when all three match, which is what a resend is; a
    client that sends someone else's key with other content gets its own event.
    """
    digest = hashlib.blake2b(digest_size=12)
    if event is not None:
        digest.update(event.encode("utf-8", "surrogatepass"))
    digest.update(b"\x00" if event is None else b"\x01")
    digest.update(data.encode("utf-8", "surrogatepass"))
    return f"{key}#{digest.hexdigest()}"


class PublishDeduplicator:
    """A bounded map ``(topic, msg_id) -> position`` of recent publishes.

    At most *max_entries* pairs younger than *max_age* seconds are kept; the oldest go
    first.  Time is the ``now`` passed in (any monotonic clock, non-decreasing).
    """

    __slots__ = ("_entries", "max_age", "max_entries")

    def __init__(
        self,
        *,
        max_entries: int = DEFAULT_DEDUP_MAX_ENTRIES,
        max_age: float = DEFAULT_DEDUP_MAX_AGE,
    ) -> None:
        if type(max_entries) is not int or max_entries < 1:
            raise LocalProtocolError("max_entries must be an int >= 1")
        if not isinstance(max_age, int | float) or not math.isfinite(max_age) or max_age <= 0:
            raise LocalProtocolError("max_age must be a finite number > 0")
        self.max_entries = max_entries
        self.max_age = float(max_age)
        self._entries: OrderedDict[tuple[str, str], tuple[Position, float]] = OrderedDict()

    def __len__(self) -> int:
        """The number of pairs currently remembered (expired ones may linger until the
        next call that takes ``now``)."""
        return len(self._entries)

    def _expire(self, now: float) -> None:
        entries = self._entries
        horizon = now - self.max_age
        while entries:
            key, (_, at) = next(iter(entries.items()))
            if at > horizon:
                break
            del entries[key]

    def lookup(self, topic: str, msg_id: str, now: float) -> Position | None:
        """The position the first publish of ``(topic, msg_id)`` got, if remembered."""
        self._expire(now)
        entry = self._entries.get((topic, msg_id))
        return None if entry is None else entry[0]

    def remember(self, topic: str, msg_id: str, position: Position, now: float) -> None:
        """Record that ``(topic, msg_id)`` was stored at *position* at *now*."""
        self._expire(now)
        key = (topic, msg_id)
        self._entries.pop(key, None)
        self._entries[key] = (position, now)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
