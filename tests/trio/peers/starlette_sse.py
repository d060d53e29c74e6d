"""A foreign SSE server for client tests: Starlette + sse-starlette, run by hypercorn.

``GET /events`` sends three events numbered after the request's ``Last-Event-ID``
(0 when absent) and ends the response, so a client has to reconnect and resume to
see more.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route


async def events(request: Request) -> EventSourceResponse:
    header = request.headers.get("last-event-id", "0")
    start = int(header) if header.isdigit() else 0

    async def generate() -> AsyncIterator[dict[str, str]]:
        for number in range(start + 1, start + 4):
            yield {"id": str(number), "data": f"event {number}"}

    return EventSourceResponse(generate())


app = Starlette(routes=[Route("/events", events)])
