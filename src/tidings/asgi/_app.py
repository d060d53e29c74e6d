"""The tidings endpoints as an ASGI 3 application, for ASGI servers that run Trio."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from contextlib import suppress
from typing import Any

import trio

from tidings.asgi._http import ASGIReceive, AsgiResponder, ASGISend, Scope, build_request
from tidings.asgi._websocket import serve_websocket
from tidings.trio.hub import Hub
from tidings.trio.server._app import App
from tidings.trio.server._config import ServerConfig
from tidings.trio.server._routes import Router

__all__ = ["ASGIApp", "TidingsASGI", "create_app", "mount"]

log = logging.getLogger("tidings.asgi")

#: An ASGI 3 application.
ASGIApp = Callable[[Scope, ASGIReceive, ASGISend], Awaitable[None]]


class TidingsASGI:
    """The tidings endpoints -- SSE, long polling, WebSocket sessions (``tidings.v1``),
    publish, ``/healthz``, ``/readyz`` -- as an ASGI 3 application.

    The same handlers and sans-IO machines as the built-in server serve every
    request, so behaviour (resume by ``Last-Event-ID``, resets, ``ETag``/``304``,
    the authorisation hook, limits) is the same.  It must run under **Trio**
    (hypercorn's trio worker, Quart-Trio).  The ASGI lifespan drains on shutdown:
    ``/readyz`` answers ``503``, event streams end with a short ``retry:``, held polls
    answer, WebSocket sessions close with 1001; :meth:`drain` does the same at any
    time (an ASGI server may cut long-lived requests before it sends the lifespan
    shutdown: hypercorn does after ``--graceful-timeout``; clients then resume by
    their last ID).
    """

    def __init__(
        self,
        hub: Hub | None = None,
        *,
        config: ServerConfig | None = None,
        router: Router | None = None,
    ) -> None:
        #: The hub the endpoints serve.
        self.hub = hub if hub is not None else Hub()
        #: The configuration (the parts about listening and connections are the
        #: ASGI server's business and are not used).
        self.config = config if config is not None else ServerConfig()
        self.app = App(self.hub, self.config, router)
        self._active = 0
        self._idle = trio.Event()
        self._idle.set()

    @property
    def draining(self) -> bool:
        """Whether a drain started."""
        return self.app.draining

    def drain(self) -> None:
        """Start draining (idempotent): streams end, held polls answer, sessions close."""
        self.app.drain()

    async def __call__(self, scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            raise RuntimeError(
                "tidings.asgi runs under Trio only: use hypercorn --worker-class trio, "
                "or Quart-Trio"
            ) from None
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        self._active += 1
        self._idle = trio.Event() if self._active == 1 else self._idle
        try:
            if kind == "http":
                await self._http(scope, receive, send)
            elif kind == "websocket":
                await serve_websocket(self.app, scope, receive, send)
        finally:
            self._active -= 1
            if self._active == 0:
                self._idle.set()

    async def _http(self, scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        request = build_request(scope)
        responder = AsgiResponder(
            receive,
            send,
            is_head=request.method == "HEAD",
            write_timeout=self.config.write_timeout,
        )
        await self.app.handle(request, responder)

    async def _lifespan(self, receive: ASGIReceive, send: ASGISend) -> None:
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif kind == "lifespan.shutdown":
                self.drain()
                with trio.move_on_after(self.config.drain_timeout):
                    await self._idle.wait()
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_app(
    hub: Hub | None = None, *, config: ServerConfig | None = None, router: Router | None = None
) -> TidingsASGI:
    """The tidings endpoints as an ASGI app (see :class:`TidingsASGI`)::

        hypercorn --worker-class trio 'tidings.asgi:create_app()'

    *hub* defaults to one with an in-memory history; *router* to the built-in
    server's routes (add your own handlers to it, see :class:`~tidings.trio.Router`).
    """
    return TidingsASGI(hub, config=config, router=router)


def mount(prefix: str, app: ASGIApp, default: ASGIApp) -> ASGIApp:
    """An ASGI app serving *prefix* (and below) with *app* and the rest with *default*.

    For example tidings under ``/rt`` next to a Quart-Trio application's own routes::

        asgi = mount("/rt", create_app(hub), quart_app)

    *app* sees ``root_path`` extended by *prefix* (tidings routes below it).  The
    lifespan reaches both apps: startup completes when both started, shutdown when
    both stopped.
    """
    if not prefix.startswith("/") or prefix.endswith("/"):
        raise ValueError("prefix must start with '/' and not end with it")

    async def dispatch(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] == "lifespan":
            await _both_lifespans(app, default, scope, receive, send)
            return
        root = scope.get("root_path", "") or ""
        path: str = scope.get("path", "")
        mounted = root + prefix
        if path == mounted or path.startswith(mounted + "/"):
            await app({**scope, "root_path": mounted}, receive, send)
        else:
            await default(scope, receive, send)

    return dispatch


async def _both_lifespans(
    first: ASGIApp, second: ASGIApp, scope: Scope, receive: ASGIReceive, send: ASGISend
) -> None:
    """Run two apps' lifespans side by side behind one."""
    channels = []
    answers_send, answers_receive = trio.open_memory_channel[MutableMapping[str, Any]](2)

    async def run(app: ASGIApp, inbox: trio.MemoryReceiveChannel[MutableMapping[str, Any]]) -> None:
        async def app_send(message: MutableMapping[str, Any]) -> None:
            await answers_send.send(message)

        try:
            await app(scope, inbox.receive, app_send)
        except Exception:  # an app without lifespan support: it "completes" everything
            log.debug("a mounted app does not support the lifespan", exc_info=True)
            with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                async for message in inbox:
                    await answers_send.send({"type": message["type"] + ".complete"})

    async with trio.open_nursery() as nursery:
        for app in (first, second):
            inbox_send, inbox_receive = trio.open_memory_channel[MutableMapping[str, Any]](1)
            channels.append(inbox_send)
            nursery.start_soon(run, app, inbox_receive)
        while True:
            message = await receive()
            for channel in channels:
                await channel.send(message)
            answers = [await answers_receive.receive() for _ in channels]
            failed = [a for a in answers if a["type"].endswith(".failed")]
            await send(failed[0] if failed else answers[0])
            if message["type"] == "lifespan.shutdown":
                nursery.cancel_scope.cancel()
                return
