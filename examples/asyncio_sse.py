"""Server-Sent Events with Last-Event-ID replay on asyncio, using only the sans-IO core.

    python examples/asyncio_sse.py [--port 8001]
    curl -N http://127.0.0.1:8001/topics/news/events              # follow live
    curl -d hello http://127.0.0.1:8001/topics/news               # publish
    curl -N http://127.0.0.1:8001/topics/news/events -H 'Last-Event-ID: <an id>'

Nothing from ``tidings.trio`` is imported: h11 parses HTTP, a
:class:`~tidings.history.MemoryHistory` stores the events, and one
:class:`~tidings.follow.Follower` per stream decides what to send -- the same
follow machine the Trio server drives, so resume, duplicates, holes and resets
behave the same.  The asyncio code is only the pump.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
from collections.abc import Iterable

import h11

from tidings import (
    CaughtUp,
    Deliver,
    FollowAction,
    Follower,
    MemoryHistory,
    ReadHistory,
    Replay,
    Reset,
    ServerSentEvent,
    StoredEvent,
    encode_event,
    is_valid_topic,
    new_epoch,
)

history = MemoryHistory(new_epoch(random.SystemRandom()))
# topic -> the queues of the streams following it (the live feed)
followers: dict[str, set[asyncio.Queue[StoredEvent]]] = {}


def publish(topic: str, data: str) -> StoredEvent:
    stored = history.append(topic, data)
    for queue in followers.get(topic, ()):
        queue.put_nowait(stored)
    return stored


def perform(
    topic: str, follower: Follower[StoredEvent], actions: Iterable[FollowAction[StoredEvent]]
) -> bytes:
    """Carry out what the follower says; return the bytes to send."""
    out = b""
    for action in actions:
        if isinstance(action, ReadHistory):
            answer: Replay | Reset = (
                Replay((), history.head(topic))
                if action.after is None
                else history.read(topic, action.after, action.limit)
            )
            out += perform(topic, follower, follower.history(answer))
        elif isinstance(action, Deliver):
            for event in action.events:
                out += encode_event(event.data, id=event.position.format())
        elif isinstance(action, Reset):
            cursor = action.cursor.format()
            body = json.dumps({"cursor": cursor, "reason": action.reason.value})
            out += ServerSentEvent(data=body, event="tidings.reset", id=cursor).encode()
        else:
            assert isinstance(action, CaughtUp)
    return out


async def stream_events(
    conn: h11.Connection, writer: asyncio.StreamWriter, topic: str, last_id: str | None
) -> None:
    queue: asyncio.Queue[StoredEvent] = asyncio.Queue(maxsize=512)
    followers.setdefault(topic, set()).add(queue)  # register first, then read
    try:
        follower: Follower[StoredEvent] = Follower(last_id)
        headers = [("content-type", "text/event-stream"), ("cache-control", "no-store")]
        writer.write(conn.send(h11.Response(status_code=200, headers=headers)))
        replay = perform(topic, follower, follower.begin())
        writer.write(conn.send(h11.Data(data=b"retry: 3000\n\n" + replay)))
        await writer.drain()
        while True:
            events = [await queue.get()]
            while not queue.empty():
                events.append(queue.get_nowait())
            data = perform(topic, follower, follower.live_many(events))
            if data:
                writer.write(conn.send(h11.Data(data=data)))
                await writer.drain()
    finally:
        followers[topic].discard(queue)


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                if not data:
                    return
                conn.receive_data(data)
                continue
            if not isinstance(event, h11.Request):
                return
            path = event.target.decode("latin-1").partition("?")[0]
            parts = path.split("/")
            topic = parts[2] if len(parts) > 2 and parts[1] == "topics" else ""
            if not is_valid_topic(topic):
                status, body = 404, b"not found\n"
            elif event.method == b"GET" and parts[3:] == ["events"]:
                last = dict(event.headers).get(b"last-event-id")
                await stream_events(conn, writer, topic, last.decode("latin-1") if last else None)
                return
            elif event.method == b"POST" and len(parts) == 3:
                body_parts = []
                while not isinstance(part := conn.next_event(), h11.EndOfMessage):
                    if part is h11.NEED_DATA:
                        conn.receive_data(await reader.read(65536))
                    elif isinstance(part, h11.Data):
                        body_parts.append(part.data)
                stored = publish(topic, b"".join(body_parts).decode("utf-8", "replace"))
                status, body = 201, json.dumps({"id": stored.position.format()}).encode()
            else:
                status, body = 404, b"not found\n"
            headers = [("content-length", str(len(body))), ("connection", "close")]
            writer.write(conn.send(h11.Response(status_code=status, headers=headers)))
            writer.write(conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
            await writer.drain()
            return
    except (ConnectionError, h11.ProtocolError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    print(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8001)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(parser.parse_args().port))
