"""The long-poll endpoint of tidings written the usual way in Starlette, for
bench/bench_longpoll.py.

    uvicorn --app-dir bench/peers starlette_longpoll_app:app

Same protocol as ``GET /topics/{topic}/poll`` of tidings (DESIGN §4), reduced to what
the benchmark exercises but doing the same work per request: parse and bound
``cursor`` / ``timeout`` / ``limit`` (or the cursor in ``If-None-Match``), read the
events after the cursor from an in-memory history (a bounded ring per topic,
positions ``<epoch>.<offset>``), answer ``{"events", "cursor", "reset"}`` as JSON
with ``ETag`` and ``Cache-Control: no-store``, or hold the request until a publish or
the timeout (then an empty ``200``, or ``304`` for ``If-None-Match``).  Held requests
wait on one :class:`asyncio.Event` per topic, which a publish sets and replaces: one
publish wakes every held request of the topic at once.  ``POST /topics/{topic}``
publishes the body and answers ``201 {"id": ...}``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections import deque

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

EPOCH = os.urandom(6).hex()
MAX_EVENTS = 1000
MAX_TIMEOUT = 30.0
DEFAULT_TIMEOUT = 25.0
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
_CURSOR_RE = re.compile(r"([0-9a-f]{1,32})\.([0-9]{1,19})")
_TIMEOUT_RE = re.compile(r"[0-9]{1,12}(?:\.[0-9]{0,9})?")


class Topic:
    """One topic's retained events and the event that wakes its held requests."""

    def __init__(self) -> None:
        self.events: deque[tuple[int, str | None, str]] = deque(maxlen=MAX_EVENTS)
        self.last = 0
        self.changed = asyncio.Event()

    def append(self, data: str, event: str | None) -> int:
        self.last += 1
        self.events.append((self.last, event, data))
        self.changed.set()
        self.changed = asyncio.Event()
        return self.last

    def read(self, after: int, limit: int) -> list[tuple[int, str | None, str]] | None:
        """The events after *after*, or ``None`` when some were evicted."""
        if after >= self.last:
            return []
        first = self.events[0][0] if self.events else self.last + 1
        if after + 1 < first:
            return None
        start = after + 1 - first
        return [self.events[i] for i in range(start, min(start + limit, len(self.events)))]


topics: dict[str, Topic] = {}


def _topic(name: str) -> Topic:
    topic = topics.get(name)
    if topic is None:
        topic = topics[name] = Topic()
    return topic


def _cursor(offset: int) -> str:
    return f"{EPOCH}.{offset}"


def _answer(events: list[tuple[int, str | None, str]], cursor: int, reset: bool) -> Response:
    body = {
        "events": [{"id": _cursor(o), "event": e, "data": d} for o, e, d in events],
        "cursor": _cursor(cursor),
        "reset": reset,
    }
    return Response(
        json.dumps(body, separators=(",", ":")),
        media_type="application/json",
        headers={"cache-control": "no-store", "etag": f'"{_cursor(cursor)}"'},
    )


def _error(message: str) -> Response:
    return JSONResponse({"error": message}, status_code=400, headers={"cache-control": "no-store"})


async def poll(request: Request) -> Response:
    topic = _topic(request.path_params["topic"])
    query = request.query_params
    cursor = query.get("cursor") or None
    conditional = False
    tag = request.headers.get("if-none-match")
    if tag is not None:
        tag = tag.strip()
        if tag.startswith("W/"):
            tag = tag[2:]
        if len(tag) < 2 or tag[0] != '"' or tag[-1] != '"':
            return _error("If-None-Match: malformed entity tag")
        cursor, conditional = tag[1:-1], True
    raw_timeout = query.get("timeout") or ""
    if raw_timeout and not _TIMEOUT_RE.fullmatch(raw_timeout):
        return _error("bad timeout")
    timeout = min(float(raw_timeout), MAX_TIMEOUT) if raw_timeout else DEFAULT_TIMEOUT
    raw_limit = query.get("limit") or ""
    if raw_limit and (not raw_limit.isdigit() or int(raw_limit) < 1):
        return _error("bad limit")
    limit = min(int(raw_limit), MAX_LIMIT) if raw_limit else DEFAULT_LIMIT
    if cursor is None:
        after = topic.last
    elif cursor == "earliest":
        after = topic.events[0][0] - 1 if topic.events else topic.last
    else:
        match = _CURSOR_RE.fullmatch(cursor)
        if match is None:
            return _error("malformed cursor")
        if match.group(1) != EPOCH or int(match.group(2)) > topic.last:
            return _answer([], topic.last, reset=True)
        after = int(match.group(2))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        events = topic.read(after, limit)
        if events is None:
            return _answer([], topic.last, reset=True)
        if events:
            return _answer(events, events[-1][0], reset=False)
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        try:
            await asyncio.wait_for(topic.changed.wait(), remaining)
        except TimeoutError:
            break
    if conditional and cursor != "earliest":
        return Response(
            status_code=304, headers={"cache-control": "no-store", "etag": f'"{_cursor(after)}"'}
        )
    return _answer([], after, reset=False)


async def publish(request: Request) -> Response:
    data = (await request.body()).decode("utf-8")
    event = request.query_params.get("event") or None
    offset = _topic(request.path_params["topic"]).append(data, event)
    return JSONResponse({"id": _cursor(offset)}, status_code=201)


app = Starlette(
    routes=[
        Route("/topics/{topic}/poll", poll, methods=["GET"]),
        Route("/topics/{topic}", publish, methods=["POST"]),
    ]
)
