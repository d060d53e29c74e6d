"""``GET /topics/{topic}/events``: the Server-Sent Events stream.

Resumes after the ``Last-Event-ID`` header, or the ``last-event-id`` query
parameter for polyfills that cannot set headers (the header wins when both are
present); without either the stream is live from now, and ``earliest`` asks for
everything retained.  What to send is decided by the subscription's follow machine
(:mod:`tidings.follow`): where events were lost (unknown epoch, evicted, malformed
ID) it sends a ``tidings.reset`` event whose ``id`` is the reset's cursor, so that
a plain ``EventSource`` continues from there too, followed by every event still
retained after the loss.

Each batch of events goes out in one write; a quiet stream gets a comment line
every ``heartbeat_interval``.  A subscriber that falls behind catches up from the
history (its buffer of live events is bounded).  On drain the stream gets a short
``retry:`` and ends cleanly, so clients reconnect elsewhere soon.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from tidings.history import Reset, StoredEvent
from tidings.sse.encoder import ServerSentEvent, encode_comment, encode_event
from tidings.sse.reset import RESET_EVENT_TYPE, encode_reset_data
from tidings.trio.hub import CloseReason
from tidings.trio.server._auth import Action
from tidings.trio.server._heartbeat import Beat
from tidings.trio.server._http import Request, Responder

if TYPE_CHECKING:
    from tidings.trio.server._app import App

__all__ = ["SSE_HEADERS", "encode_reset", "encode_stored", "sse_events"]

#: Response headers of every event stream.
SSE_HEADERS = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),
)
_HEARTBEAT = encode_comment("")


def encode_stored(stored: StoredEvent) -> bytes:
    """The SSE bytes of a stored event (its position as ``id``)."""
    return encode_event(stored.data, event=stored.event, id=stored.position.format())


def encode_reset(reset: Reset) -> bytes:
    """The ``tidings.reset`` event announcing *reset*, with ``id`` set to its cursor."""
    cursor = reset.cursor.format()
    return ServerSentEvent(
        data=encode_reset_data(cursor, reset.reason.value), event=RESET_EVENT_TYPE, id=cursor
    ).encode()


def _retry(milliseconds: int) -> bytes:
    return ServerSentEvent(retry=milliseconds).encode()


async def sse_events(app: App, request: Request, responder: Responder) -> None:
    """Serve one event stream until the client leaves, falls behind, or we drain."""
    config = app.config
    topic = request.params["topic"]
    refusal = await app.authorize(request, Action.SUBSCRIBE, topic)
    if refusal is not None:
        await app.refuse(responder, refusal)
        return
    headers = app.headers(*SSE_HEADERS)
    if request.method == "HEAD":
        async with responder.open_stream(200, headers):
            return
    if app.draining:
        async with responder.open_stream(200, headers) as out:
            await out.send(_retry(config.drain_retry))
        return
    after = request.header(b"last-event-id") or request.query_param("last-event-id") or None
    subscription = app.hub.subscribe(
        topic,
        after,
        max_pending_events=config.subscriber_max_events,
        max_pending_bytes=config.subscriber_max_bytes,
    )
    subscription.transport = "sse"
    # One frame for the whole stream (it lives as long as the connection).
    beat = Beat(subscription, trio.current_time())
    app.subscriptions.add(subscription)
    app.heartbeats.add(beat)
    try:
        if after is None and subscription.needs_read:
            # Live from now, on a history that must be asked where "now" is: ask before
            # answering, so that a client holding the response head is subscribed --
            # what it publishes next, it receives.  (Should the store be away, the
            # stream opens anyway and keeps asking.)
            await subscription.read()
        async with responder.open_stream(200, headers) as out:
            chunks = [_retry(config.sse_retry) if config.sse_retry is not None else _HEARTBEAT]
            while True:
                batch = subscription.next_batch()
                if batch is not None:
                    if batch.reset is not None:
                        chunks.append(encode_reset(batch.reset))
                    chunks += [item.encoded(encode_stored) for item in batch.events]
                    if not chunks:
                        continue  # only the end of the replay: nothing to say
                elif subscription.closed is not None:
                    break
                elif beat.due:
                    beat.due = False
                    chunks.append(_HEARTBEAT)
                elif not chunks:
                    if subscription.needs_read:
                        await subscription.read()
                    else:
                        await out.idle(subscription, encode_stored)
                    continue
                await out.send(b"".join(chunks))
                chunks.clear()
                beat.last_activity = trio.current_time()
            if subscription.closed is CloseReason.CUT:
                out.abort()
            elif subscription.closed is CloseReason.DRAIN:
                await out.send(_retry(config.drain_retry))
    finally:
        subscription.close()
        subscription.count_delivered()
        app.heartbeats.discard(beat)
        app.subscriptions.discard(subscription)
