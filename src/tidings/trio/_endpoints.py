"""Small endpoints: health, readiness and publishing."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from tidings.errors import LocalProtocolError
from tidings.names import EVENT_TYPE_RULE, is_valid_event_type
from tidings.trio._http import BodyTooLarge, Request, Responder

if TYPE_CHECKING:
    from tidings.trio._app import App

__all__ = ["healthz", "publish", "readyz"]

_TEXT = (b"content-type", b"text/plain; charset=utf-8")
_JSON = (b"content-type", b"application/json")
_NO_STORE = (b"cache-control", b"no-store")


async def healthz(app: App, request: Request, responder: Responder) -> None:
    """``GET /healthz``: the process is alive (also while draining)."""
    await responder.respond(200, app.headers(_TEXT, _NO_STORE), b"ok\n")


async def readyz(app: App, request: Request, responder: Responder) -> None:
    """``GET /readyz``: ``200`` while accepting work, ``503`` once draining."""
    if app.draining:
        await app.error(responder, 503, "draining")
    else:
        await responder.respond(200, app.headers(_TEXT, _NO_STORE), b"ready\n")


def _event_type(raw: bytes | None) -> str | None:
    """The ``event`` query parameter, validated; raises ``ValueError`` with the reason."""
    if raw is None or raw == b"":
        return None
    try:
        event = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("event type must be UTF-8") from None
    if not is_valid_event_type(event):
        raise ValueError(EVENT_TYPE_RULE)
    return event


async def publish(app: App, request: Request, responder: Responder) -> None:
    """``POST /topics/{topic}[?event=TYPE]``: store the body (UTF-8) as an event.

    Answers ``201`` with ``{"id": "<position>"}``; ``400`` for a body that is not
    UTF-8 or a bad event type, ``413`` for a body over the limit.
    """
    try:
        event = _event_type(request.query_param("event"))
    except ValueError as exc:
        await app.error(responder, 400, str(exc))
        return
    try:
        body = await responder.read_body(app.config.max_body_size)
    except BodyTooLarge as exc:
        await app.error(responder, 413, str(exc), (b"connection", b"close"))
        return
    try:
        data = body.decode("utf-8")
    except UnicodeDecodeError:
        await app.error(responder, 400, "body must be UTF-8")
        return
    try:
        position = await app.hub.publish(request.params["topic"], data, event)
    except LocalProtocolError as exc:
        await app.error(responder, exc.error_status_hint, str(exc))
        return
    answer = json.dumps({"id": position.format()}).encode()
    await responder.respond(201, app.headers(_JSON, _NO_STORE), answer)
