"""The peer server for bench/bench_sse_server.py: sse-starlette on Starlette.

Run it under uvicorn or hypercorn (``--worker-class trio``); it is an ASGI app.

- ``GET /stream?n=N`` -- (a) one client reading N events: an async generator yields
  N ``ServerSentEvent`` objects (id = sequence number, data = ``bench_payload(i)``),
  as fast as the client reads them (sse-starlette's send waits for the transport).
  No asyncio primitive is used, so this runs on the trio worker too.
- ``GET /topics/{topic}/events`` and ``POST /topics/{topic}`` -- (b) broadcast: each
  subscriber has a bounded ``asyncio.Queue`` (512 events, like tidings' default
  subscriber buffer; one that overflows is dropped); a publish puts the body into
  every queue of the topic and answers ``201 {"id": n}``.  asyncio only (uvicorn).

Events (and the response) use ``sep="\\n"`` so that every server's stream ends
events with ``\\n\\n``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


def bench_payload(i: int) -> str:
    """The data of event *i* (the same text tidings' bench server publishes)."""
    return f'{{"seq": {i}, "user": "alice", "text": "hello world", "ok": true}}'


async def stream(request: Request) -> Response:
    n = int(request.query_params.get("n", "100000"))

    async def events() -> AsyncIterator[ServerSentEvent]:
        for i in range(n):
            yield ServerSentEvent(data=bench_payload(i), id=str(i), sep="\n")

    return EventSourceResponse(events(), sep="\n")


_subscribers: dict[str, set[asyncio.Queue[tuple[int, str]]]] = {}
_counter = 0


async def topic_events(request: Request) -> Response:
    topic = request.path_params["topic"]
    queue: asyncio.Queue[tuple[int, str]] = asyncio.Queue(maxsize=512)
    _subscribers.setdefault(topic, set()).add(queue)

    async def events() -> AsyncIterator[ServerSentEvent]:
        try:
            while True:
                number, data = await queue.get()
                yield ServerSentEvent(data=data, id=str(number), sep="\n")
        finally:
            subscribers = _subscribers.get(topic)
            if subscribers is not None:
                subscribers.discard(queue)

    return EventSourceResponse(events(), sep="\n", ping=15)


async def publish(request: Request) -> Response:
    global _counter
    topic = request.path_params["topic"]
    data = (await request.body()).decode("utf-8", "replace")
    _counter += 1
    subscribers = _subscribers.get(topic, set())
    for queue in list(subscribers):
        try:
            queue.put_nowait((_counter, data))
        except asyncio.QueueFull:
            subscribers.discard(queue)  # too slow: dropped (its generator just stalls)
    return JSONResponse({"id": _counter}, status_code=201)


app = Starlette(
    routes=[
        Route("/stream", stream),
        Route("/topics/{topic}/events", topic_events),
        Route("/topics/{topic}", publish, methods=["POST"]),
    ]
)
