"""The application: routing, error answers and the state handlers share.

The protocol adapters call :meth:`App.handle` once per request; it resolves the
route, answers ``400``/``404``/``405``/``OPTIONS`` itself, runs the handler and
turns an unexpected exception into ``500`` (or a cut connection when the answer
had already started).  It also owns what a drain must reach: open connections and
live subscriptions.
"""

from __future__ import annotations

import logging
from contextlib import suppress
from functools import cache, partial
from importlib.resources import files
from typing import Protocol

import trio

from tidings.trio.hub import CloseReason, Hub, Subscription, Watch
from tidings.trio.metrics import Metrics
from tidings.trio.server._auth import Action, Refusal
from tidings.trio.server._config import ServerConfig
from tidings.trio.server._disconnects import DisconnectWatcher, new_watcher
from tidings.trio.server._heartbeat import Heartbeats
from tidings.trio.server._http import Headers, Request, Responder
from tidings.trio.server._routes import BadParameter, Handler, Router, static

__all__ = ["App", "default_router", "origin_allowed"]

log = logging.getLogger("tidings.server")

# Answered as usual even on a connection beyond the connection limit, so that an
# orchestrator does not take a busy server for a dead one.
_HEALTH_PATHS = frozenset({"/healthz", "/readyz"})

_TEXT = (b"content-type", b"text/plain; charset=utf-8")
_NO_STORE = (b"cache-control", b"no-store")


class _Drainable(Protocol):
    def drain(self) -> None: ...


@cache
def _asset(name: str) -> bytes:
    """A file shipped in ``tidings/static`` (read once per process)."""
    return files("tidings").joinpath("static", name).read_bytes()


def default_router(prefix: str = "") -> Router:
    """A router with the tidings endpoints (DESIGN §7), under *prefix* (``""`` or a
    path such as ``/rt``); add your own routes to it before serving.

    ``/healthz`` and ``/readyz`` stay at the root whatever the prefix, where
    orchestrators look for them.  ``{prefix}/tidings.js`` is the browser client and
    ``{prefix}/`` the demo page (which pushes the client to HTTP/2 clients that allow
    server push); adding ``/`` again puts your own page there.
    """
    from tidings.trio.server._endpoints import healthz, publish, readyz
    from tidings.trio.server._poll_endpoint import long_poll
    from tidings.trio.server._sse_endpoint import sse_events
    from tidings.trio.server._ws_endpoint import ws_session

    if prefix and (not prefix.startswith("/") or prefix.endswith("/")):
        raise ValueError("prefix must start with '/' and not end with it")
    router = Router()
    router.add("/healthz", {"GET": healthz})
    router.add("/readyz", {"GET": readyz})
    router.add(f"{prefix}/topics/{{topic}}/events", {"GET": sse_events})
    router.add(f"{prefix}/topics/{{topic}}/poll", {"GET": long_poll})
    router.add(f"{prefix}/topics/{{topic}}", {"POST": publish})
    router.add(f"{prefix}/ws", {"GET": ws_session})
    router.add(
        f"{prefix}/tidings.js",
        {"GET": static(_asset("tidings.js"), "text/javascript; charset=utf-8")},
    )
    router.add(f"{prefix}/", {"GET": static(_asset("demo.html"))}, push=[f"{prefix}/tidings.js"])
    return router


def origin_allowed(config: ServerConfig, request: Request) -> bool:
    """Whether *request*'s ``Origin`` may open a session or publish.

    No ``Origin`` (not a browser: cross-site abuse needs a browser's ambient
    credentials) and the same origin (its host equals ``Host``) are admitted; so are
    :attr:`ServerConfig.allow_origin` (the CORS origin: one origin or ``"*"``) and
    what :attr:`WebSocketConfig.allowed_origins` admits (a collection or a callable).
    """
    raw = request.header(b"origin")
    if raw is None:
        return True
    origin = raw.decode("latin-1")
    cors = config.allow_origin
    if cors is not None and (cors == "*" or cors == origin):
        return True
    allowed = config.websocket.allowed_origins
    if callable(allowed):
        return bool(allowed(origin, request))
    if allowed is not None and ("*" in allowed or origin in allowed):
        return True
    host = request.header(b"host")
    if host is None:
        return False
    _, sep, rest = origin.partition("://")
    return bool(sep) and rest.lower() == host.decode("latin-1").lower()


class App:
    """What every handler of one server shares: the hub, the config, the routes and
    the drain bookkeeping.  A handler is ``await handler(app, request, responder)``;
    use :meth:`headers` for the headers every answer carries, :meth:`error` for a
    one-line error answer and :meth:`authorize` to ask the authorisation hook."""

    def __init__(self, hub: Hub, config: ServerConfig, router: Router | None = None) -> None:
        self.hub = hub
        self.config = config
        self.router = router if router is not None else default_router()
        #: ``True`` once a drain started: ``/readyz`` answers ``503``.
        self.draining = False
        #: Open connections (HTTP/1.1 and HTTP/2 adapters), told when a drain starts.
        self.connections: set[_Drainable] = set()
        #: Live subscriptions (and held polls' watches), closed when a drain starts.
        self.subscriptions: set[Subscription | Watch] = set()
        #: The heartbeat ticker of this server's event streams.
        self.heartbeats = Heartbeats(config.heartbeat_interval)
        from tidings.trio.server._poll_endpoint import SharedReads
        from tidings.trio.server._ws_endpoint import WebSocketState

        #: Held polls' reads shared while one publish is fanned out.
        self.poll_reads = SharedReads()
        from tidings.trio.server._h11 import H11Caches

        #: What this server's HTTP/1.1 connections share.
        self.h11_caches = H11Caches()
        #: What this server's WebSocket sessions share.
        self.websocket = WebSocketState(config.websocket)
        from tidings.trio.server._poll_endpoint import long_poll
        from tidings.trio.server._sse_endpoint import sse_events
        from tidings.trio.server._ws_endpoint import ws_session

        # The transport label of the endpoints' requests (tidings_connections).
        self._transports: dict[Handler, str] = {
            sse_events: "sse",
            long_poll: "poll",
            ws_session: "ws",
        }
        self._disconnects: DisconnectWatcher | bool | None = False
        self._base: Headers = []
        if config.allow_origin is not None:
            self._base.append((b"access-control-allow-origin", config.allow_origin.encode()))
            # Not CORS-safelisted: without this a page of another origin cannot read
            # them (pacing by Retry-After; a poll's ETag, its cursor).
            self._base.append((b"access-control-expose-headers", b"retry-after, etag"))

    @property
    def metrics(self) -> Metrics:
        """What this server counted (kept by its hub; see :mod:`tidings.trio.metrics`)."""
        return self.hub.metrics

    def disconnect_watcher(self) -> DisconnectWatcher | None:
        """The watcher of this server's idle sockets (``None`` where unsupported)."""
        watcher = self._disconnects
        if watcher is False:
            watcher = self._disconnects = new_watcher()
        assert watcher is not True
        return watcher

    def retry_after_header(self) -> tuple[bytes, bytes]:
        """``Retry-After`` as this server sends it with ``503`` answers."""
        return (b"retry-after", str(self.config.retry_after).encode())

    def headers(self, *extra: tuple[bytes, bytes]) -> Headers:
        """The headers every answer carries, plus *extra*."""
        return [*self._base, *extra]

    def drain(self) -> None:
        """Start draining: readiness fails, streams end, idle connections close."""
        if self.draining:
            return
        self.draining = True
        for subscription in list(self.subscriptions):
            subscription.close(CloseReason.DRAIN)
        for connection in list(self.connections):
            connection.drain()

    def origin_allowed(self, request: Request) -> bool:
        """Whether *request*'s ``Origin`` may publish or open a WebSocket session
        (see :func:`origin_allowed`)."""
        return origin_allowed(self.config, request)

    async def authorize(
        self, request: Request, action: Action, topic: str | None
    ) -> Refusal | None:
        """Ask the authorisation hook (:attr:`ServerConfig.auth`) about *request*;
        ``None`` admits.  A hook that fails refuses with ``500`` (and is logged)."""
        hook = self.config.auth
        if hook is None:
            return None
        try:
            return await hook(request, action, topic)
        except Exception:
            log.exception("the authorisation hook failed on %s %s", request.method, request.path)
            return Refusal(500, "Internal server error")

    async def refuse(self, responder: Responder, refusal: Refusal) -> None:
        """Answer with *refusal*'s status, message and headers (counted as ``auth``)."""
        self.metrics.rejected["auth"] += 1
        await self._error(responder, refusal.status, refusal.message, refusal.headers)

    async def error(
        self,
        responder: Responder,
        status: int,
        message: str,
        *extra: tuple[bytes, bytes],
    ) -> None:
        """Answer *status* with a one-line plain-text *message* (a refusal of the
        client counts in :attr:`Metrics.rejected <tidings.trio.metrics.Metrics>`)."""
        self.metrics.reject(status)
        await self._error(responder, status, message, extra)

    async def _error(
        self,
        responder: Responder,
        status: int,
        message: str,
        extra: tuple[tuple[bytes, bytes], ...] | list[tuple[bytes, bytes]],
    ) -> None:
        body = (message + "\n").encode("utf-8", "replace")
        await responder.respond(status, self.headers(_TEXT, _NO_STORE, *extra), body)

    async def handle(self, request: Request, responder: Responder) -> None:
        """Answer one request; never raises for a client's fault or disappearance."""
        handler, push = self._resolve(request)
        in_progress = self.hub.metrics.open_requests
        key = (self._transports.get(handler, "http"), request.http_version)
        in_progress[key] += 1
        try:
            if push and request.method == "GET":
                for path in push:
                    responder.push(path)
            await handler(self, request, responder)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            log.exception("error while handling %s %s", request.method, request.path)
            if not responder.started:
                with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await self.error(responder, 500, "Internal server error")
        finally:
            in_progress[key] -= 1

    def _resolve(self, request: Request) -> tuple[Handler, tuple[str, ...]]:
        """The handler for *request* (its route's, or one that answers an error) and
        the paths its route pushes.

        On a connection beyond the limit every request but the health probes is
        answered ``503`` (the connection closes after the answer either way).
        """
        if request.connection.rejecting and not (
            request.path in _HEALTH_PATHS and request.method in ("GET", "HEAD")
        ):
            self.metrics.rejected["limit"] += 1
            busy = (self.retry_after_header(), (b"connection", b"close"))
            return partial(_answer, 503, "Server busy, retry later", busy), ()
        if request.path == "*" and request.method == "OPTIONS":
            return partial(_answer, 204, "", ((b"allow", b"GET, HEAD, POST, OPTIONS"),)), ()
        try:
            match = self.router.resolve(request.path)
        except BadParameter as exc:
            return partial(_answer, 400, str(exc), ()), ()
        if match is None:
            return partial(_answer, 404, "Not found", ()), ()
        route, params = match
        handler = route.methods.get(request.method)
        if handler is None and request.method == "HEAD":
            handler = route.methods.get("GET")
        if handler is None:
            allow = (b"allow", ", ".join(route.allowed).encode())
            if request.method == "OPTIONS":
                return partial(_answer, 204, "", (allow, *self._preflight())), ()
            return partial(_answer, 405, "Method not allowed", (allow,)), ()
        request.params = params
        return handler, route.push

    def _preflight(self) -> list[tuple[bytes, bytes]]:
        if self.config.allow_origin is None:
            return []
        return [
            (b"access-control-allow-methods", b"GET, HEAD, POST, OPTIONS"),
            (
                b"access-control-allow-headers",
                b"last-event-id, if-none-match, content-type, idempotency-key",
            ),
            (b"access-control-max-age", b"600"),
        ]


async def _answer(
    status: int,
    message: str,
    extra: tuple[tuple[bytes, bytes], ...],
    app: App,
    request: Request,
    responder: Responder,
) -> None:
    """A handler answering *status*: a one-line *message*, or no body for 204."""
    if status == 204:
        await responder.respond(204, app.headers(*extra))
    else:
        await app.error(responder, status, message, *extra)
