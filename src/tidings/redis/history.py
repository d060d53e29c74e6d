"""A :class:`~tidings.trio.history.History` in Redis, shared by every server process.

Each topic is three things in Redis, all named with the topic as hash tag
(``{topic}``) so that they live in one Cluster slot:

* ``<prefix>{<topic>}:meta`` -- a hash: ``epoch`` (the topic's generation),
  ``last`` (the offset of its newest event) and ``created`` (Redis clock, ms);
* ``<prefix>{<topic>}:events`` -- a stream holding the retained events, entry ID
  ``<offset>-0``, fields ``d`` (data) and ``e`` (event type, when there is one),
  trimmed to exactly ``max_events`` entries;
* ``<prefix>{<topic>}:live`` -- a PUB/SUB channel on which each event is published
  with its position.

Appending is one Lua script (``append.lua``): it takes the next offset, adds the
entry, trims, refreshes the idle expiry, records the idempotency key and
publishes, atomically, so that processes appending at once never share an offset
and every subscriber sees a topic's events in position order.  When the meta hash
is missing (a new topic, an expired one, a flushed or failed-over Redis) the script
starts a new generation with a random epoch and deletes any stream left over, so
old positions give an explicit reset, never a silent gap (but see the failover
caveat in :doc:`/scaling`).  Reads go through a
second script (``read.lua``) that checks the epoch and reads the stream in one
step.

Each :class:`RedisHistory` holds one PUB/SUB connection, subscribed to the
channels of the topics it watches; when that connection breaks it reconnects by
itself, subscribes again and tells the feed ``on_lost(None)`` so that followers
read what they missed from the streams.

Open one with :func:`open_redis_history`.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import random
import re
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any, NamedTuple, cast

import anyio
import coredis
import trio
from coredis.commands.script import Script
from coredis.exceptions import ConnectionError as RedisConnectionError
from coredis.exceptions import RedisError
from coredis.response.types import PubSubMessage
from coredis.retry import NoRetryPolicy

from tidings.backoff import Backoff, FullJitter
from tidings.cursor import EARLIEST, Position, _trusted_position, new_epoch
from tidings.dedup import DEFAULT_DEDUP_MAX_AGE
from tidings.errors import InvalidCursor, LocalProtocolError
from tidings.history import Replay, Reset, ResetReason, StoredEvent
from tidings.names import TOPIC_RULE, is_valid_topic
from tidings.trio.history import Feed, HistoryUnavailable

__all__ = [
    "DEFAULT_MAX_CALLS",
    "DEFAULT_MAX_EVENTS",
    "DEFAULT_MAX_EVENT_SIZE",
    "DEFAULT_PREFIX",
    "DEFAULT_TIMEOUT",
    "DEFAULT_URL",
    "RedisClient",
    "RedisHistory",
    "open_redis_history",
]

#: Where :func:`open_redis_history` connects by default.
DEFAULT_URL = "redis://127.0.0.1:6379/0"
#: The default prefix of every key and channel name.
DEFAULT_PREFIX = "tidings:"
#: Events retained per topic by default (the streams' ``MAXLEN``).
DEFAULT_MAX_EVENTS = 1000
#: The largest event accepted by default, in bytes of UTF-8 (data plus event type).
DEFAULT_MAX_EVENT_SIZE = 1024 * 1024
#: Seconds an operation may take talking to Redis, retries included, before it raises
#: :class:`~tidings.trio.history.HistoryUnavailable`.
DEFAULT_TIMEOUT = 3.0
#: Commands a history has in flight at most by default; the others wait their turn.
DEFAULT_MAX_CALLS = 64

#: A coredis client a :class:`RedisHistory` can use (``decode_responses=False``).
RedisClient = coredis.Redis[bytes] | coredis.RedisCluster[bytes]

_log = logging.getLogger("tidings.redis")

# Attempts per operation: the first, then retries after a lost connection.
_ATTEMPTS = 3
# Delay before a retry: full jitter over 20 ms, 40 ms, ... (at most 250 ms).
_RETRY_DELAY = FullJitter(base=0.02, factor=2.0, cap=0.25)
# Keep-alive of the PUB/SUB connection: a PING after this many idle seconds.
_KEEPALIVE = 5.0
# Fresh positions: "f_" + the Redis clock in ms, base 36 (real epochs have no "_").
_FRESH_RE = re.compile(r"f_([0-9a-z]{1,13})")
_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"
# A prefix must not contain a hash tag of its own.
_PREFIX_RE = re.compile(r"[^{}]*")

# What a lost or stalled connection raises.  coredis wraps most of it in its
# ConnectionError, but a connection torn down while a command is being queued
# can let anyio's own exceptions through.
_TRANSIENT = (
    RedisConnectionError,
    TimeoutError,
    OSError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
)


def _script(name: str) -> str:
    return resources.files(__package__ or "tidings.redis").joinpath(name).read_text("utf-8")


def _encode(text: str) -> bytes:
    # surrogatepass: any str a MemoryHistory stores round-trips through Redis too.
    return text.encode("utf-8", "surrogatepass")


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogatepass")


def _fresh_epoch(now_ms: int) -> str:
    digits = []
    while True:
        now_ms, digit = divmod(now_ms, 36)
        digits.append(_BASE36[digit])
        if not now_ms:
            break
    return "f_" + "".join(reversed(digits))


def _fresh_time(epoch: str) -> int | None:
    """The Redis time (ms) a fresh epoch was handed out at, or ``None``."""
    match = _FRESH_RE.fullmatch(epoch)
    return None if match is None else int(match.group(1), 36)


def _describe(exc: BaseException) -> str:
    """*exc* in a few words; the leaves of an exception group."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(inner) for inner in exc.exceptions)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _client_from_url(url: str, operation_timeout: float) -> RedisClient:
    """A client for *url*, with timeouts within *operation_timeout*.

    No retries of its own (the history retries, with an idempotency record); the
    connect timeout is half the operation timeout so that a connection attempt always
    ends by coredis's timeout rather than by the history's (see ``_call``).
    """
    return coredis.Redis.from_url(
        url,
        decode_responses=False,
        retry_policy=NoRetryPolicy(),
        connect_timeout=operation_timeout / 2,
        stream_timeout=operation_timeout,
        pool_timeout=operation_timeout,
    )


def _only(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The exception a nursery wrapped (the group itself if there were several)."""
    while len(group.exceptions) == 1:
        inner = group.exceptions[0]
        if not isinstance(inner, BaseExceptionGroup):
            return inner
        group = inner
    return group


class _Keys(NamedTuple):
    tag: str
    meta: bytes
    stream: bytes
    channel: bytes


def _as_int(value: object) -> int:
    if type(value) is int:
        return value
    if isinstance(value, bytes | str):
        return int(value)
    raise ValueError(f"expected an integer from Redis, got {value!r}")


def _as_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("ascii")
    raise ValueError(f"expected a string from Redis, got {value!r}")


def _entry_event(epoch: str, entry: object) -> StoredEvent:
    """A :class:`StoredEvent` from one XRANGE entry ``[id, [field, value, ...]]``
    (*epoch* already checked)."""
    ident, fields = cast(Sequence[Any], entry)
    offset = int(_as_bytes(ident).partition(b"-")[0])
    values = cast(Sequence[bytes], fields)
    if len(values) == 2 and values[0] == b"d":  # as append.lua writes them
        return StoredEvent(_trusted_position(epoch, offset), _decode(values[1]))
    if len(values) == 4 and values[0] == b"d" and values[2] == b"e":
        return StoredEvent(_trusted_position(epoch, offset), _decode(values[1]), _decode(values[3]))
    found = dict(zip(values[::2], values[1::2], strict=False))
    if b"d" not in found:
        raise ValueError(f"stream entry {ident!r} has no data")
    event = found.get(b"e")
    return StoredEvent(
        _trusted_position(epoch, offset),
        _decode(found[b"d"]),
        None if event is None else _decode(event),
    )


def _decode_message(payload: bytes) -> StoredEvent:
    """The event in a message of a topic's channel (see ``append.lua``)."""
    end = payload.index(b"\n")
    position = Position.parse(payload[:end])
    start = end + 1
    end = payload.index(b"\n", start)
    length = int(payload[start:end])
    start = end + 1
    if length < 0:
        return StoredEvent(position, _decode(payload[start:]))
    if start + length > len(payload):
        raise ValueError("event type longer than the message")
    return StoredEvent(
        position, _decode(payload[start + length :]), _decode(payload[start : start + length])
    )


class _State(NamedTuple):
    """What ``read.lua`` answered: the topic's state and the page asked for."""

    now: int
    exists: bool
    epoch: str
    first: int
    last: int
    created: int
    entries: Sequence[object]


def _parse_state(reply: object) -> _State:
    items = cast(Sequence[object], reply)
    now = _as_int(items[1])
    if not _as_int(items[0]):
        return _State(now, False, _fresh_epoch(now), 1, 0, 0, ())
    return _State(
        now,
        True,
        Position(_as_bytes(items[2]).decode("ascii"), 0).epoch,  # checks the epoch
        _as_int(items[3]),
        _as_int(items[4]),
        _as_int(items[5]),
        cast(Sequence[object], items[6]),
    )


def _answer(
    state: _State, after: Position | str, fresh: int | None, horizon: int
) -> Replay | Reset:
    """The answer to a read, from the state ``read.lua`` returned: exactly the rules
    of :meth:`tidings.history.MemoryHistory.read`.

    *after* is what the caller asked (a :class:`Position`, ``EARLIEST`` or a malformed
    string); *fresh* the Redis time of a fresh position asked for, if it was one;
    *horizon* the idle expiry in ms (0: none).
    """
    epoch, first, last = state.epoch, state.first, state.last
    if isinstance(after, str):
        if after != EARLIEST:
            return Reset(Position(epoch, last), ResetReason.MALFORMED)
        after = Position(epoch, first - 1)
    elif fresh is not None:
        # A fresh position was handed out when the topic did not exist.
        if not state.exists:
            # Still nothing: nothing missed either.  Hand out today's fresh position.
            return Replay((), Position(epoch, 0))
        if not horizon or state.created <= fresh + horizon:
            # No earlier generation can have lived and expired since the position was
            # handed out (one expires only after horizon ms without an append): every
            # event of this one comes after it.
            after = Position(epoch, 0)
    elif not state.exists and _fresh_time(after.epoch) is not None:
        # Another fresh position, with an offset: ahead of an empty topic.
        after = Position(epoch, after.offset)
    if after.epoch != epoch:
        return Reset(Position(epoch, first - 1), ResetReason.UNKNOWN_EPOCH)
    if after.offset > last:
        return Reset(Position(epoch, last), ResetReason.UNKNOWN_POSITION)
    if after.offset < first - 1:
        return Reset(Position(epoch, first - 1), ResetReason.EVICTED)
    if after.offset == last:
        return Replay((), after, False)
    events: list[StoredEvent] = []
    expected = after.offset + 1
    for entry in state.entries:
        stored = _entry_event(epoch, entry)
        if stored.position.offset != expected:
            break  # never deliver across a hole (not seen unless the stream was altered)
        events.append(stored)
        expected += 1
    if not events:
        # Retained by the meta's count but not in the stream: lost all the same.
        return Reset(Position(epoch, last), ResetReason.EVICTED)
    cursor = events[-1].position
    return Replay(tuple(events), cursor, cursor.offset < last)


class _SharedRead:
    """One ``read.lua`` call, shared by every caller that asked the same of the same
    topic before it was sent (see ``RedisHistory._read``)."""

    __slots__ = ("done", "error", "state")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.state: _State | None = None
        self.error: HistoryUnavailable | None = None


class RedisHistory:
    """The :class:`~tidings.trio.history.History` of topics kept in Redis (see the module).

    Make one with :func:`open_redis_history`, which also runs its PUB/SUB reader;
    the constructor only sets it up.  *connect* makes a coredis client (with
    ``decode_responses=False``): it is called once for the commands, and once per
    PUB/SUB connection, each of which gets a client (and so a connection pool) of
    its own that is closed with it -- coredis 6.9 loses a slot of a pool each time
    a connection held out of it breaks, so a shared pool would run dry after as many
    PUB/SUB reconnections as it has slots.  Every operation that reaches Redis raises
    :class:`~tidings.trio.history.HistoryUnavailable` when Redis cannot answer within
    *operation_timeout* seconds (retries included); none hangs.

    At most *max_calls* commands are in flight at once; the others wait their turn
    (first come, first served), and *operation_timeout* starts when a command's turn
    comes, so that thousands of streams opening together are served one batch after
    another instead of all timing out together.  Waiting for a turn is local work,
    not Redis failing: it never makes the history unhealthy.  But once Redis has
    failed to answer, calls waiting for a turn fail at once (and so do new ones that
    find no free turn), so that publishes still get their ``503`` promptly.
    Identical reads of one topic waiting together (streams opening on a topic ask
    for its head, followers of a new topic for its first events) share one command:
    a call joins a read only until that read is sent, so every answer is one Redis
    gave after its call began.

    *max_events* is the number of events retained per topic; *ttl* the idle expiry
    of a topic in seconds (refreshed by each append; ``None``: topics never expire);
    *max_event_size* the largest event accepted (bytes of UTF-8, data plus event
    type); *dedup_window* how long an idempotency key is remembered, in seconds;
    *prefix* starts every key and channel name (it must not contain ``{`` or ``}``).
    """

    __slots__ = (
        "_answered_at",
        "_append_script",
        "_client",
        "_closing",
        "_connect",
        "_connected",
        "_failing",
        "_feed",
        "_limiter",
        "_lock",
        "_pubsub",
        "_queued",
        "_read_script",
        "_reads",
        "_restart",
        "_rng",
        "_stopped",
        "_unreachable",
        "_unwatched",
        "_unwatched_wakeup",
        "_watched",
        "dedup_window",
        "max_calls",
        "max_event_size",
        "max_events",
        "operation_timeout",
        "prefix",
        "ttl",
    )

    def __init__(
        self,
        connect: Callable[[], RedisClient],
        *,
        max_events: int = DEFAULT_MAX_EVENTS,
        ttl: float | None = None,
        prefix: str = DEFAULT_PREFIX,
        max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
        dedup_window: float = DEFAULT_DEDUP_MAX_AGE,
        operation_timeout: float = DEFAULT_TIMEOUT,
        max_calls: int = DEFAULT_MAX_CALLS,
    ) -> None:
        client = connect()
        if client.decode_responses:
            raise LocalProtocolError("the coredis client must have decode_responses=False")
        if type(max_events) is not int or max_events < 1:
            raise LocalProtocolError("max_events must be an int >= 1")
        if type(max_calls) is not int or max_calls < 1:
            raise LocalProtocolError("max_calls must be an int >= 1")
        if type(max_event_size) is not int or max_event_size < 1:
            raise LocalProtocolError("max_event_size must be an int >= 1")
        for name, value in (
            ("operation_timeout", operation_timeout),
            ("dedup_window", dedup_window),
            ("ttl", ttl),
        ):
            if value is None and name == "ttl":
                continue
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise LocalProtocolError(f"{name} must be a finite number > 0")
        if not isinstance(prefix, str) or _PREFIX_RE.fullmatch(prefix) is None:
            raise LocalProtocolError("prefix must be a str without '{' or '}'")
        #: Events retained per topic.
        self.max_events = max_events
        #: Idle expiry of a topic in seconds, or ``None``.
        self.ttl = ttl
        #: The start of every key and channel name.
        self.prefix = prefix
        #: The largest event accepted, in bytes.
        self.max_event_size = max_event_size
        #: How long an idempotency key is remembered, in seconds.
        self.dedup_window = dedup_window
        #: The most an operation may take talking to Redis before it raises
        #: ``HistoryUnavailable`` (its wait for a turn not counted).
        self.operation_timeout = operation_timeout
        #: Commands in flight at most.
        self.max_calls = max_calls
        self._client = client
        self._connect = connect
        self._append_script: Script[bytes] = client.register_script(_script("append.lua"))
        self._read_script: Script[bytes] = client.register_script(_script("read.lua"))
        self._rng = random.Random(secrets.randbits(128))
        self._feed: Feed | None = None
        self._watched: set[str] = set()
        self._unwatched: set[str] = set()
        self._unwatched_wakeup = trio.Event()
        self._lock = trio.Lock()
        self._pubsub: Any = None
        self._restart: trio.CancelScope | None = None
        self._connected = False
        self._failing = False
        # Whether the last command that ended did not reach Redis (no answer, lost
        # connection): calls then fail rather than wait for a turn.
        self._unreachable = False
        # When Redis last answered a command (trio time).
        self._answered_at = -math.inf
        self._limiter = trio.CapacityLimiter(max_calls)
        # The cancel scopes of the calls waiting for a turn.
        self._queued: set[trio.CancelScope] = set()
        # Reads not sent yet, which identical reads may join.
        self._reads: dict[tuple[bytes, str, int, int], _SharedRead] = {}
        self._closing = False
        self._stopped = trio.Event()

    # -- state -----------------------------------------------------------------------

    @property
    def client(self) -> RedisClient:
        """The coredis client the commands use (not the PUB/SUB connection's)."""
        return self._client

    @property
    def connected(self) -> bool:
        """Whether the PUB/SUB connection is up (live events are being received)."""
        return self._connected

    @property
    def healthy(self) -> bool:
        """Whether the history works right now: the PUB/SUB connection is up and the
        last operation that reached Redis succeeded (one that timed out while Redis
        answered others does not count: that was this process being busy).  For a
        ``/readyz`` check."""
        return self._connected and not self._failing

    @property
    def watched(self) -> frozenset[str]:
        """The topics whose events are fed."""
        return frozenset(self._watched)

    async def ping(self) -> bool:
        """Ask Redis now (within *operation_timeout*): ``True`` when it answered."""
        with trio.move_on_after(self.operation_timeout):
            try:
                await self._client.ping()
            except (*_TRANSIENT, RedisError):
                return False
            return True
        return False

    def _keys(self, topic: str) -> _Keys:
        if not is_valid_topic(topic):
            raise LocalProtocolError(f"invalid topic {str(topic)[:140]!r}: {TOPIC_RULE}")
        tag = f"{self.prefix}{{{topic}}}"
        return _Keys(tag, f"{tag}:meta".encode(), f"{tag}:events".encode(), f"{tag}:live".encode())

    def _topic_of(self, channel: bytes) -> str | None:
        """The topic whose channel is *channel* (``None`` if it is not one)."""
        try:
            name = channel.decode("ascii")
        except UnicodeDecodeError:
            return None
        head = f"{self.prefix}{{"
        if not (name.startswith(head) and name.endswith("}:live")):
            return None
        return name[len(head) : -len("}:live")]

    # -- History ---------------------------------------------------------------------

    def bind(self, feed: Feed) -> None:
        """Deliver every event stored in a watched topic, by any process, to *feed*."""
        if self._feed is not None and self._feed is not feed:
            raise RuntimeError("this history already feeds another hub")
        self._feed = feed

    async def append(
        self, topic: str, data: str, event: str | None = None, *, key: str | None = None
    ) -> StoredEvent:
        """Store an event at the end of *topic* and return it with its position.

        *key* makes the append idempotent across every process sharing the Redis:
        within *dedup_window* seconds, a repeat stores nothing and returns the first
        event's position.  An append whose answer was lost (the connection broke) is
        retried under an internal key when the caller gave none, so it is stored
        once.

        Raises :class:`~tidings.errors.LocalProtocolError` (``error_status_hint``
        413) for an event larger than *max_event_size*, and
        :class:`~tidings.trio.history.HistoryUnavailable` when Redis does not answer
        within *operation_timeout* seconds.  In that case the event was not stored
        -- unless an attempt reached Redis and only its answer was lost (Redis
        stalled, or went away after running the script): then it is stored once and
        fed like any other, and resending it with the same *key* returns its
        position.
        """
        keys = self._keys(topic)
        raw_data = _encode(data)
        raw_event = b"" if event is None else _encode(event)
        size = len(raw_data) + len(raw_event)
        if size > self.max_event_size:
            raise LocalProtocolError(
                f"event of {size} bytes exceeds max_event_size {self.max_event_size}",
                error_status_hint=413,
            )
        if key is not None:
            digest = hashlib.sha256(_encode(key)).hexdigest()
            record = f"{keys.tag}:key:{digest}"
            keep = self.dedup_window
        else:
            # Only this call's retries will ever repeat it: keep it briefly.
            record = f"{keys.tag}:retry:{self._rng.getrandbits(128):032x}"
            keep = max(10.0, 2 * self.operation_timeout)
        reply = await self._call(
            "append",
            self._append_script,
            (keys.meta, keys.stream, record.encode()),
            (
                raw_data,
                raw_event,
                b"0" if event is None else b"1",
                new_epoch(self._rng).encode(),
                self.max_events,
                0 if self.ttl is None else max(1, math.ceil(self.ttl * 1000)),
                max(1, math.ceil(keep * 1000)),
                keys.channel,
            ),
        )
        items = cast(Sequence[object], reply)
        return StoredEvent(Position.parse(_as_bytes(items[1])), data, event)

    async def read(self, topic: str, after: Position | str, limit: int) -> Replay | Reset:
        """At most *limit* events of *topic* after *after*, or a reset: the answers of
        :meth:`tidings.history.MemoryHistory.read`, for a topic shared by every
        process.

        A topic that does not exist reads as empty, at a *fresh* position: offset 0
        of an epoch ``f_<time>`` naming the Redis clock when it was handed out.
        Reading after a fresh position once the topic exists replays it from its
        first event -- unless the topic was created more than *ttl* after the
        position was handed out (an earlier generation may have lived and expired
        meanwhile), which gives an ``unknown-epoch`` reset instead.
        Following a topic from a fresh position loses nothing: its first event is
        offset 1 of its epoch.
        """
        if type(limit) is not int or limit < 1:
            raise LocalProtocolError("limit must be >= 1")
        keys = self._keys(topic)
        fresh: int | None = None
        want_epoch = ""
        want_offset = -1
        if isinstance(after, str) and after != EARLIEST:
            try:
                after = Position.parse(after)
            except InvalidCursor:
                limit = 0  # only the head is needed
        if isinstance(after, Position):
            if after.offset == 0:
                fresh = _fresh_time(after.epoch)
            if fresh is not None:
                want_offset = 0
            else:
                want_epoch, want_offset = after.epoch, after.offset
        state = await self._read(keys, want_epoch, want_offset, limit)
        horizon = 0 if self.ttl is None else math.ceil(self.ttl * 1000)
        return _answer(state, after, fresh, horizon)

    async def head(self, topic: str) -> Position:
        """The position of the newest event of *topic*, or a fresh position (offset 0)
        when the topic does not exist."""
        state = await self._read(self._keys(topic), "", -1, 0)
        return Position(state.epoch, state.last)

    async def watch(self, topic: str) -> None:
        """Feed *topic*'s events from now on.

        Returns once the PUB/SUB subscription is confirmed, so that a read made after
        it cannot miss an event.  When the PUB/SUB connection is down (or the
        subscription is not confirmed within *operation_timeout*), returns at once instead: the
        reconnection subscribes the topic and then tells the feed ``on_lost(None)``,
        so followers read what they missed.  Never raises for want of Redis.
        """
        channel = self._keys(topic).channel
        async with self._lock:
            self._watched.add(topic)
            self._unwatched.discard(topic)
            pubsub = self._pubsub
            if pubsub is None:
                return
            try:
                await pubsub.subscribe(channel)
            except (*_TRANSIENT, RedisError) as exc:
                _log.warning("subscribing to %r failed (%s): reconnecting", topic, _describe(exc))
                self._reconnect()

    def unwatch(self, topic: str) -> None:
        """Stop feeding *topic*'s events (at once; the unsubscription follows)."""
        if topic in self._watched:
            self._watched.discard(topic)
            self._unwatched.add(topic)
            self._unwatched_wakeup.set()

    # -- Redis calls -------------------------------------------------------------------

    async def _read(self, keys: _Keys, epoch: str, offset: int, limit: int) -> _State:
        """What ``read.lua`` answers for these arguments.

        Identical reads share one command while it waits for its turn: a read joins
        only one that has not been sent yet, so that its answer still reflects
        everything stored before it began.  When the caller that sends a shared read
        is cancelled before it is answered, the others read again themselves.
        """
        key = (keys.meta, epoch, offset, limit)
        while (shared := self._reads.get(key)) is not None:
            await shared.done.wait()
            if shared.state is not None:
                return shared.state
            if shared.error is not None:
                raise HistoryUnavailable(str(shared.error)) from shared.error
        shared = self._reads[key] = _SharedRead()

        def sent() -> None:
            if self._reads.get(key) is shared:
                del self._reads[key]

        try:
            reply = await self._call(
                "read",
                self._read_script,
                (keys.meta, keys.stream),
                (epoch.encode(), offset, limit),
                sent=sent,
            )
            state = shared.state = _parse_state(reply)
        except HistoryUnavailable as exc:
            shared.error = exc
            raise
        finally:
            sent()
            shared.done.set()
        return state

    async def _turn(self, what: str) -> None:
        """Wait for a turn to send a command (see the class).

        Raises :class:`HistoryUnavailable` when Redis was found unreachable before
        the turn came.
        """
        limiter = self._limiter
        if self._unreachable:
            try:
                limiter.acquire_nowait()
            except trio.WouldBlock:
                raise HistoryUnavailable(
                    f"Redis is unavailable for the {what}: it did not answer the last command"
                ) from None
            return
        with trio.CancelScope() as scope:
            self._queued.add(scope)
            try:
                await limiter.acquire()
            finally:
                self._queued.discard(scope)
        if scope.cancelled_caught:
            raise HistoryUnavailable(
                f"Redis is unavailable for the {what}: another command found it unreachable"
            )

    def _reached(self) -> None:
        """Redis answered a command."""
        self._failing = self._unreachable = False
        self._answered_at = trio.current_time()

    def _not_reached(self) -> None:
        """Redis did not answer a command: the calls waiting for a turn fail too."""
        self._failing = self._unreachable = True
        for scope in self._queued:
            scope.cancel()

    async def _call(
        self,
        what: str,
        script: Script[bytes],
        keys: Sequence[bytes],
        args: Sequence[bytes | int],
        *,
        sent: Callable[[], None] | None = None,
    ) -> object:
        """Run *script* in its turn, retrying after a lost connection, within
        *operation_timeout* from the moment the turn came; *sent* is called then.

        Retrying is safe for both scripts: reading has no effect, and an append
        carries an idempotency record, so a retry of one that was stored returns
        the first position.
        """
        await self._turn(what)
        try:
            if sent is not None:
                sent()
            return await self._send(what, script, keys, args)
        finally:
            self._limiter.release()

    async def _send(
        self,
        what: str,
        script: Script[bytes],
        keys: Sequence[bytes],
        args: Sequence[bytes | int],
    ) -> object:
        start = trio.current_time()
        deadline = start + self.operation_timeout
        # A connection attempt cut off by this deadline rather than by coredis's own
        # connect timeout could leak a slot of its pool: no retry starts that late.
        connect = self.operation_timeout / 2
        failure: BaseException | None = None
        for attempt in range(_ATTEMPTS):
            with trio.move_on_at(deadline):
                try:
                    reply: object = await script(keys=keys, args=args)
                except _TRANSIENT as exc:
                    failure = exc
                except RedisError as exc:
                    # Out of memory, a read-only replica after a failover, ACLs...
                    _log.warning("Redis refused the %s: %s", what, _describe(exc))
                    self._answered_at = trio.current_time()
                    self._failing = True
                    raise HistoryUnavailable(f"Redis refused the {what}: {exc}") from exc
                else:
                    self._reached()
                    return reply
                if attempt + 1 < _ATTEMPTS:
                    await trio.sleep(_RETRY_DELAY.next(attempt, self._rng))
            if deadline - trio.current_time() < connect:
                break
        if (failure is None or isinstance(failure, TimeoutError)) and self._answered_at > start:
            # No answer in time, but Redis answered other commands meanwhile: this
            # process was too busy to read the answer (or one connection is stuck,
            # which its own timeout will tell).  Not Redis being unreachable.
            raise HistoryUnavailable(
                f"no answer to the {what} within {self.operation_timeout} s "
                "(Redis answered other commands meanwhile)"
            )
        self._not_reached()
        reason = (
            _describe(failure)
            if failure is not None
            else f"no answer within {self.operation_timeout} s"
        )
        raise HistoryUnavailable(f"Redis is unavailable for the {what}: {reason}") from failure

    # -- the live feed -----------------------------------------------------------------

    def _reconnect(self) -> None:
        restart = self._restart
        if restart is not None:
            restart.cancel()

    def _lost(self, topic: str | None) -> None:
        feed = self._feed
        if feed is None:
            return
        try:
            feed.on_lost(topic)
        except Exception:
            _log.exception("the feed's on_lost(%r) raised", topic)

    def _dispatch(self, message: PubSubMessage) -> None:
        if message["type"] != "message":
            return
        channel = message["channel"]
        topic = self._topic_of(channel if isinstance(channel, bytes) else _encode(str(channel)))
        if topic is None or topic not in self._watched:
            return
        payload = message["data"]
        try:
            if not isinstance(payload, bytes):
                raise ValueError(f"expected bytes, got {type(payload).__name__}")
            stored = _decode_message(payload)
        except (ValueError, LocalProtocolError) as exc:
            _log.warning("malformed message on the channel of %r: %s", topic, exc)
            self._lost(topic)
            return
        feed = self._feed
        if feed is None:
            return
        try:
            feed.on_event(topic, stored)
        except Exception:
            _log.exception("the feed's on_event(%r, ...) raised", topic)

    async def _run_pubsub(self, *, task_status: trio.TaskStatus[None]) -> None:
        """Keep the PUB/SUB connection up and subscribed to the watched topics.

        Started by :func:`open_redis_history`, which waits for the first connection
        (retried for at most *operation_timeout* seconds, else :class:`HistoryUnavailable`).
        After that it reconnects forever, with jittered backoff, and after each
        reconnection tells the feed ``on_lost(None)``.
        """
        backoff = Backoff(FullJitter(base=0.05, factor=2.0, cap=2.0))
        started = False
        deadline = trio.current_time() + self.operation_timeout

        def up() -> None:
            nonlocal started
            backoff.connected(trio.current_time())
            if started:
                # Events published while no connection was subscribed are in the
                # streams only: followers read them from there.
                self._lost(None)
            else:
                started = True
                task_status.started()

        try:
            while not self._is_closing():
                failure: BaseException | None = None
                try:
                    await self._session(up)
                except* trio.Cancelled:
                    raise
                except* Exception as group:
                    # coredis raises more than ConnectionError when a connection
                    # breaks (anyio's ClosedResourceError, say), in groups.
                    failure = group
                if self._is_closing():
                    break
                if failure is not None:
                    if not started and trio.current_time() >= deadline:
                        raise HistoryUnavailable(
                            f"cannot reach Redis: {_describe(failure)}"
                        ) from failure
                    _log.warning(
                        "Redis PUB/SUB connection lost (%s): reconnecting", _describe(failure)
                    )
                delay = backoff.disconnected(trio.current_time(), self._rng)
                if not started:
                    delay = min(delay, max(0.0, deadline - trio.current_time()))
                await trio.sleep(delay)
        finally:
            self._stopped.set()

    def _is_closing(self) -> bool:
        # A method, not the attribute: it changes while the reader awaits.
        return self._closing

    async def _close(self) -> None:
        """Stop the reader: end the PUB/SUB connection while its client is still up
        (coredis unsubscribes on the way out), at most *operation_timeout*."""
        self._closing = True
        self._reconnect()
        with trio.move_on_after(self.operation_timeout) as scope:
            scope.shield = True
            await self._stopped.wait()

    async def _session(self, up: Callable[[], None]) -> None:
        """One PUB/SUB connection, from connecting to its loss (or a forced restart:
        :meth:`_reconnect`)."""
        client = self._connect()
        pubsub_context = client.pubsub(
            ignore_subscribe_messages=True,
            retry_policy=None,
            subscription_timeout=self.operation_timeout,
            max_idle_seconds=_KEEPALIVE,
        )
        # A client of its own, closed with the connection (see the class).
        async with client, pubsub_context as pubsub:
            with trio.CancelScope() as self._restart:
                if self._closing:
                    self._restart.cancel()
                try:
                    # Not under the lock (a stalled Redis would hold up every watch):
                    # topics watched meanwhile are picked up by the next round, and
                    # the feed hears on_lost(None) once all are subscribed.
                    subscribed: set[str] = set()
                    while todo := self._watched - subscribed:
                        await pubsub.subscribe(*(self._keys(topic).channel for topic in todo))
                        subscribed |= todo
                    self._pubsub = pubsub
                    self._connected = True
                    self._failing = self._unreachable = False
                    self._unwatched = subscribed - self._watched
                    if self._unwatched:
                        self._unwatched_wakeup.set()
                    up()
                    while True:
                        message = await pubsub.get_message()
                        if message is not None:
                            self._dispatch(message)
                finally:
                    self._pubsub = None
                    self._connected = False
                    self._restart = None

    async def _run_unsubscriber(self) -> None:
        """Unsubscribe from the channels of unwatched topics, in the background."""
        while True:
            await self._unwatched_wakeup.wait()
            self._unwatched_wakeup = trio.Event()
            async with self._lock:
                # Without a connection nothing is subscribed: forget them.
                gone = [topic for topic in self._unwatched if topic not in self._watched]
                self._unwatched.clear()
                pubsub = self._pubsub
                if pubsub is None or not gone:
                    continue
                try:
                    with trio.move_on_after(self.operation_timeout):
                        await pubsub.unsubscribe(*(self._keys(topic).channel for topic in gone))
                except (*_TRANSIENT, RedisError) as exc:
                    # The session notices the broken connection itself.
                    _log.info("unsubscribing failed: %s", exc)

    def __repr__(self) -> str:
        state = "connected" if self._connected else "disconnected"
        return (
            f"<RedisHistory {self._client!r} prefix={self.prefix!r} {state} "
            f"watched={len(self._watched)}>"
        )


@asynccontextmanager
async def open_redis_history(
    url: str = DEFAULT_URL,
    *,
    connect: Callable[[], RedisClient] | None = None,
    max_events: int = DEFAULT_MAX_EVENTS,
    ttl: float | None = None,
    prefix: str = DEFAULT_PREFIX,
    max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
    dedup_window: float = DEFAULT_DEDUP_MAX_AGE,
    operation_timeout: float = DEFAULT_TIMEOUT,
    max_calls: int = DEFAULT_MAX_CALLS,
) -> AsyncIterator[RedisHistory]:
    """Open a :class:`RedisHistory` on the Redis at *url*, for the ``async with`` block::

        async with open_redis_history("redis://127.0.0.1:6379/0", ttl=3600) as history:
            hub = Hub(history)  # the hub binds and watches
            ...

    Connects (``redis://``, ``rediss://`` or ``unix://`` URLs, see coredis), starts
    the PUB/SUB reader in a nursery of its own and waits for its first connection:
    raises :class:`~tidings.trio.history.HistoryUnavailable` when Redis cannot be
    reached within *operation_timeout* seconds.  Leaving the block stops the reader
    and closes the connections.

    Pass *connect* instead of *url* to make the coredis clients yourself, for example
    ``coredis.RedisCluster`` or a Sentinel's ``primary_for(...)``: a callable that
    returns a new client (not entered yet) with ``decode_responses=False`` each time
    it is called; see :class:`RedisHistory`.  The other arguments are those of
    :class:`RedisHistory`.
    """
    if connect is None:
        connect = functools.partial(_client_from_url, url, operation_timeout)
    history = RedisHistory(
        connect,
        max_events=max_events,
        ttl=ttl,
        prefix=prefix,
        max_event_size=max_event_size,
        dedup_window=dedup_window,
        operation_timeout=operation_timeout,
        max_calls=max_calls,
    )
    try:
        async with history.client, trio.open_nursery() as nursery:
            await nursery.start(history._run_pubsub)
            nursery.start_soon(history._run_unsubscriber)
            try:
                yield history
            finally:
                await history._close()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The nurseries (ours, coredis's) wrap whatever was raised, the caller's own
        # exceptions included: hand back the one exception when there was only one.
        raise _only(group) from None
