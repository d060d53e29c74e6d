"""What every tidings client yields, whatever the transport: an event or a reset.

:func:`tidings.trio.open_event_stream` (SSE), :func:`tidings.trio.open_long_poll` and
:func:`tidings.trio.open_session` (WebSocket) all yield exactly these two types, so
code that consumes a stream does not depend on how it travels::

    async for item in stream:
        if isinstance(item, ResetNotice):
            ...  # events before item.cursor may be missing: resynchronise
        else:
            handle(item.topic, item.id, item.event, item.data)

The wire layers keep their own, protocol-shaped types
(:class:`~tidings.sse.MessageEvent`, :class:`~tidings.longpoll.PollEvent`,
:class:`~tidings.ws.EventMessage` ...); the clients convert.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_EVENT_TYPE", "Event", "ResetNotice"]

#: The event type of an event the server sent without one (the SSE default).
DEFAULT_EVENT_TYPE = "message"


@dataclass(frozen=True, slots=True)
class Event:
    """One event of a stream, delivered once and in order.

    ``topic`` is the topic it belongs to: always known over long polling and
    WebSockets; for SSE, taken from a ``/topics/{topic}/events`` URL, and ``None``
    for any other stream.  ``id`` is its position in wire form (resume after it);
    for a foreign SSE stream, the last event ID in force (``""`` when the server sets
    none).  ``event`` is its type, ``"message"`` when the server gave none.  ``data``
    is its payload.
    """

    topic: str | None
    id: str
    event: str
    data: str


@dataclass(frozen=True, slots=True)
class ResetNotice:
    """The server could not continue from where the client was; events may be missing.

    ``cursor`` is where the stream continues: the events that follow the notice come
    after it, and it is also the position to resume from.  ``topic`` is as for
    :class:`Event`.  ``reason`` is the server's short explanation (for tidings servers
    one of :class:`tidings.history.ResetReason`'s values), or ``None`` when the
    transport does not carry one.
    """

    topic: str | None
    cursor: str
    reason: str | None = None
