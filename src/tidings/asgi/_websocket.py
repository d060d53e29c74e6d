"""``tidings.v1`` sessions over ASGI ``websocket`` messages.

The handshake checks are the built-in endpoint's (Origin, the authorisation hook,
the subprotocol, draining); the session's protocol work is the same
:class:`~tidings.trio.server._ws_core.SessionCore`, carrying text messages instead of
frames.  Pings are the ASGI server's business (hypercorn: ``--websocket-ping-interval``).

One task reads the client's messages into a rendezvous channel; the session's task
takes the next one only when it has sent what is queued and settled what it awaits,
so messages take effect in order and a client that sends without reading is held up
by the ASGI server's flow control, not served from memory.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any

import trio

from tidings.asgi._http import ASGIReceive, ASGISend, Scope, build_request
from tidings.trio.server._auth import Action
from tidings.trio.server._ws_core import SessionCore, SessionWaker
from tidings.ws import SUBPROTOCOL

if TYPE_CHECKING:
    from tidings.trio.server._app import App

__all__ = ["serve_websocket"]

log = logging.getLogger("tidings.asgi")


_Inbox = trio.MemorySendChannel[MutableMapping[str, Any]]


async def _refuse(send: ASGISend, scope: Scope, status: int, message: str, headers: Any) -> None:
    """Refuse the handshake with an HTTP answer where the server can send one."""
    if "websocket.http.response" in scope.get("extensions", {}):
        body = (message + "\n").encode("utf-8", "replace")
        await send(
            {
                "type": "websocket.http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                    *headers,
                ],
            }
        )
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        # The server answers 403 to a close before the accept.
        await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})


class _AsgiSession:
    """One accepted ASGI WebSocket, served by its task (see the module)."""

    def __init__(
        self, app: App, core: SessionCore[str], waiter: SessionWaker, send: ASGISend
    ) -> None:
        self.app = app
        self.core = core
        self.waiter = waiter
        self.send = send

    def drain(self) -> None:
        """The server drains: close with the configured code."""
        self.core.close(self.app.config.websocket.drain_close_code, "server draining")

    async def run(self, inbox: trio.MemoryReceiveChannel[MutableMapping[str, Any]]) -> None:
        core = self.core
        waiter = self.waiter
        timeout = self.app.config.write_timeout
        max_size = self.app.config.websocket.max_message_size
        while True:
            texts = core.take_queued()
            if core.closing is None:
                core.collect_live(texts)
            if texts:
                with trio.move_on_after(timeout) as scope:
                    for text in texts:
                        await self.send({"type": "websocket.send", "text": text})
                if scope.cancelled_caught:
                    log.debug("websocket client stopped reading; cutting it off")
                    return
                continue
            if core.closing is not None:
                code, reason = core.closing
                await self.send({"type": "websocket.close", "code": code, "reason": reason})
                return
            if core.needs_settle:
                await core.settle()
                continue
            if waiter.is_set:
                waiter.clear()
                await trio.lowlevel.checkpoint()
                continue
            message: MutableMapping[str, Any] | None = None
            try:
                with trio.CancelScope() as wait:
                    waiter.scope = wait
                    message = await inbox.receive()
            finally:
                waiter.scope = None
                waiter.clear()
            if message is None:
                continue
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("text")
            if isinstance(data, str):
                if len(data) > max_size or len(data.encode("utf-8", "surrogatepass")) > max_size:
                    core.message_too_big()
                else:
                    core.receive_text(data)
            elif message.get("bytes") is not None:
                core.receive_binary()


async def _read(receive: ASGIReceive, inbox: _Inbox) -> None:
    async with inbox:
        while True:
            message = await receive()
            await inbox.send(message)
            if message["type"] == "websocket.disconnect":
                return


async def serve_websocket(app: App, scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
    """Check the handshake and serve one ``tidings.v1`` session over ASGI."""
    first = await receive()
    if first["type"] != "websocket.connect":
        return
    request = build_request(scope, "GET")
    config = app.config.websocket
    if not app.origin_allowed(request):
        app.metrics.reject(403)
        await _refuse(send, scope, 403, "Origin not allowed", [])
        return
    refusal = await app.authorize(request, Action.CONNECT, None)
    if refusal is not None:
        app.metrics.rejected["auth"] += 1
        await _refuse(send, scope, refusal.status, refusal.message, refusal.headers)
        return
    offered = list(scope.get("subprotocols", ()))
    if SUBPROTOCOL not in offered and (offered or config.require_subprotocol):
        app.metrics.reject(400)
        await _refuse(send, scope, 400, f"Subprotocol {SUBPROTOCOL} required", [])
        return
    if app.draining:
        retry = app.retry_after_header()
        await _refuse(send, scope, 503, "Server draining", [retry])
        return
    accept: dict[str, Any] = {"type": "websocket.accept"}
    if SUBPROTOCOL in offered:
        accept["subprotocol"] = SUBPROTOCOL
    await send(accept)
    waiter = SessionWaker()
    core: SessionCore[str] = SessionCore(
        app, request, waiter, frame=str, size=len, encoder_for=app.websocket.text_encoder
    )
    session = _AsgiSession(app, core, waiter, send)
    app.connections.add(session)
    in_progress = app.metrics.open_requests
    key = ("ws", request.http_version)
    in_progress[key] += 1
    inbox_send, inbox_receive = trio.open_memory_channel[MutableMapping[str, Any]](0)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_read, receive, inbox_send)
            try:
                await session.run(inbox_receive)
            finally:
                nursery.cancel_scope.cancel()
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    finally:
        in_progress[key] -= 1
        app.connections.discard(session)
        core.cleanup()
