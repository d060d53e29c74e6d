"""Small endpoints: health, readiness and publishing."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

from tidings.errors import LocalProtocolError
from tidings.names import EVENT_TYPE_RULE, is_valid_event_type
from tidings.trio.history import HistoryUnavailable
from tidings.trio.server._auth import Action
from tidings.trio.server._http import BodyTooLarge, Request, Responder

if TYPE_CHECKING:
    from tidings.trio.server._app import App

__all__ = ["healthz", "publish", "readyz"]

_TEXT = (b"content-type", b"text/plain; charset=utf-8")
_KEY_RE = re.compile(r"[!-~]{1,128}")
_JSON = (b"content-type", b"application/json")
_NO_STORE = (b"cache-control", b"no-store")


async def healthz(app: App, request: Request, responder: Responder) -> None:
    """``GET /healthz``: the process is alive (also while draining)."""
    await responder.respond(200, app.headers(_TEXT, _NO_STORE), b"ok\n")


async def readyz(app: App, request: Request, responder: Responder) -> None:
    """``GET /readyz``: ``200`` while accepting work, ``503`` once draining or while
    the history's store cannot be reached (a history with a false ``healthy``)."""
    if app.draining:
        await app.error(responder, 503, "draining")
    elif not getattr(app.hub.history, "healthy", True):
        await app.error(responder, 503, "history store unreachable")
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


def _idempotency_key(raw: bytes | None) -> str | None:
    """The ``Idempotency-Key`` header, validated; raises ``ValueError`` with the reason."""
    if raw is None:
        return None
    key = raw.decode("latin-1").strip(" \t")
    if _KEY_RE.fullmatch(key) is None:
        raise ValueError(
            "Idempotency-Key must be 1 to 128 printable ASCII characters without spaces"
        )
    return key


async def publish(app: App, request: Request, responder: Responder) -> None:
    """``POST /topics/{topic}[?event=TYPE]``: store the body (UTF-8) as an event.

    Answers ``201`` with ``{"id": "<position>"}``; ``400`` for a body that is not
    UTF-8 or a bad event type, ``413`` for a body over the limit.  With an
    ``Idempotency-Key`` header a resend within the history's de-duplication window
    stores nothing and answers the first publish's id (the same window as WebSocket
    ``msg_id`` values).
    """
    topic = request.params["topic"]
    if not app.origin_allowed(request):
        # Any page a user visits could otherwise publish through their browser.
        await app.error(responder, 403, "Origin not allowed")
        return
    refusal = await app.authorize(request, Action.PUBLISH, topic)
    if refusal is not None:
        await app.refuse(responder, refusal)
        return
    try:
        event = _event_type(request.query_param("event"))
        key = _idempotency_key(request.header(b"idempotency-key"))
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
        position = await app.hub.publish(topic, data, event, key=key)
    except LocalProtocolError as exc:
        await app.error(responder, exc.error_status_hint, str(exc))
        return
    except HistoryUnavailable as exc:
        retry = app.retry_after_header()
        await app.error(responder, 503, f"cannot store now: {exc}", retry)
        return
    answer = json.dumps({"id": position.format()}).encode()
    await responder.respond(201, app.headers(_JSON, _NO_STORE), answer)
