"""The tidings server: listening, connection limits, protocol detection, drain.

Embed it the Trio way::

    hub = Hub()
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve, hub, 8000)  # on 127.0.0.1
        print(server.url)
        await hub.publish("news", "hello")

or drive one connection on any :class:`trio.abc.Stream` (tests, fuzzers) with
:meth:`Server.serve_stream`.  Each connection is HTTP/1.1 (h11) unless it starts
with the HTTP/2 preface (cleartext prior knowledge) or TLS negotiated ``h2`` by
ALPN.  Draining — :meth:`Server.drain`, cancellation of :func:`serve`, or SIGTERM /
SIGINT with ``handle_signals=True`` — makes ``/readyz`` answer ``503``, stops
accepting, ends SSE streams with a short ``retry:``, lets requests finish for up to
``drain_timeout``, then returns.
"""

from __future__ import annotations

import errno
import logging
import signal
import ssl
from collections.abc import Sequence
from contextlib import nullcontext, suppress

import trio

from tidings.trio.hub import Hub
from tidings.trio.server._app import App
from tidings.trio.server._config import ServerConfig
from tidings.trio.server._h2 import PREFACE, H2Connection
from tidings.trio.server._h11 import H11Connection
from tidings.trio.server._http import ConnectionInfo
from tidings.trio.server._routes import Router

__all__ = ["Server", "ServerConfig", "serve", "serve_stream", "server_ssl_context"]

log = logging.getLogger("tidings.server")

# accept() errors that mean "out of resources for now", not "listener broken".
_ACCEPT_RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_ACCEPT_RETRY_SLEEP = 0.1


def server_ssl_context(
    certfile: str, keyfile: str | None = None, *, http2: bool = True
) -> ssl.SSLContext:
    """A TLS server context for *certfile*/*keyfile* offering ``h2`` and ``http/1.1``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile, keyfile)
    context.set_alpn_protocols(["h2", "http/1.1"] if http2 else ["http/1.1"])
    return context


class Server:
    """One server: a hub, a configuration, optionally TLS; see :func:`serve`.

    When *ssl_context* is given, every connection is TLS and the context's ALPN
    protocols are set to ``h2`` (if :attr:`ServerConfig.http2`) and ``http/1.1``.
    """

    def __init__(
        self,
        hub: Hub,
        config: ServerConfig | None = None,
        *,
        ssl_context: ssl.SSLContext | None = None,
        router: Router | None = None,
    ) -> None:
        self.hub = hub
        self.config = config if config is not None else ServerConfig()
        self.ssl_context = ssl_context
        if ssl_context is not None:
            ssl_context.set_alpn_protocols(
                ["h2", "http/1.1"] if self.config.http2 else ["http/1.1"]
            )
        self.app = App(hub, self.config, router)
        #: Addresses listened on, as ``socket.getsockname()`` gives them.
        self.addresses: list[tuple[str, int]] = []
        self._active = 0
        # Connections beyond max_connections being answered, oldest first (a dict
        # for its order); each one's scope closes it when a newer one needs room.
        self._rejected: dict[trio.CancelScope, None] = {}
        self._accept_scope = trio.CancelScope()
        self._conn_scope: trio.CancelScope | None = None
        self._conn_nursery: trio.Nursery | None = None
        self._stop = trio.Event()
        self._drained = trio.Event()

    # -- properties ----------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port of the first listening address."""
        return self.addresses[0][1]

    @property
    def url(self) -> str:
        """``http(s)://host:port`` of the first listening address."""
        host = self.addresses[0][0]
        if ":" in host:
            host = f"[{host}]"
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{host}:{self.port}"

    @property
    def draining(self) -> bool:
        """Whether a drain started."""
        return self.app.draining

    @property
    def connection_count(self) -> int:
        """Connections being served (not counting rejected ones)."""
        return self._active

    # -- drain ---------------------------------------------------------------------

    def drain(self) -> None:
        """Start a graceful shutdown; idempotent, returns at once.

        ``/readyz`` turns ``503``, listeners stop accepting, SSE streams end with
        ``retry: drain_retry``, idle connections close and busy ones close after
        their current request.  Whatever is still open ``drain_timeout`` later is
        cut.  :func:`serve` (and :meth:`serve_listeners`) return when all is closed.
        """
        if self.app.draining:
            return
        log.debug("draining")
        self.app.drain()
        self._accept_scope.cancel()
        self._stop.set()
        if self._conn_scope is not None:
            self._conn_scope.deadline = trio.current_time() + self.config.drain_timeout

    async def wait_drained(self) -> None:
        """Wait until a drain finished and every connection is closed."""
        await self._drained.wait()

    # -- serving -------------------------------------------------------------------

    async def serve_listeners(
        self,
        listeners: Sequence[trio.abc.Listener[trio.abc.Stream]],
        *,
        handle_signals: bool = False,
        task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept on *listeners* until drained or cancelled, then drain and return.

        ``task_status.started`` receives this server (see :attr:`addresses`).  With
        *handle_signals*, SIGTERM and SIGINT start a drain (a second one cuts every
        connection at once); only possible in the main thread.
        """
        for listener in listeners:
            socket = getattr(listener, "socket", None)
            if socket is not None:
                name = socket.getsockname()
                self.addresses.append((name[0], name[1]))
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self._run_connections)
                if handle_signals:
                    nursery.start_soon(self._watch_signals)
                try:
                    with self._accept_scope:
                        async with trio.open_nursery() as accepting:
                            for listener in listeners:
                                accepting.start_soon(self._accept_loop, listener)
                            task_status.started(self)
                finally:
                    self.drain()
                    with trio.CancelScope(shield=True):
                        for listener in listeners:
                            await trio.aclose_forcefully(listener)
                        # Bounded by drain_timeout (the deadline drain() set).
                        await self._drained.wait()
                    nursery.cancel_scope.cancel()  # the signal watcher
        finally:
            self._drained.set()

    async def _run_connections(self, task_status: trio.TaskStatus[None]) -> None:
        # Connections live here, shielded from the cancellation of serve(), so that
        # cancelling serve() drains them instead of cutting them; the drain sets a
        # deadline on this scope.
        try:
            with trio.CancelScope(shield=True) as scope:
                self._conn_scope = scope
                if self.app.draining:
                    scope.deadline = trio.current_time() + self.config.drain_timeout
                async with trio.open_nursery() as nursery:
                    self._conn_nursery = nursery
                    task_status.started()
                    await self._stop.wait()
        finally:
            self._drained.set()

    async def _watch_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                if not self.app.draining:
                    log.debug("received signal %s", signal.Signals(signum).name)
                    self.drain()
                elif self._conn_scope is not None:
                    log.warning("second signal: closing every connection now")
                    self._conn_scope.cancel()

    async def _accept_loop(self, listener: trio.abc.Listener[trio.abc.Stream]) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno in _ACCEPT_RESOURCE_ERRORS:
                    log.warning("accept failed (%s); retrying shortly", exc)
                    await trio.sleep(_ACCEPT_RETRY_SLEEP)
                    continue
                raise
            self._start_connection(stream)

    def _start_connection(self, stream: trio.abc.Stream) -> None:
        assert self._conn_nursery is not None
        if self._active < self.config.max_connections:
            self._active += 1
            self._conn_nursery.start_soon(self._serve_connection, stream, None)
            return
        slot = self._reject_slot()
        if slot is not None:
            self._conn_nursery.start_soon(self._serve_connection, stream, slot)
        else:
            self._conn_nursery.start_soon(trio.aclose_forcefully, stream)

    def _reject_slot(self) -> trio.CancelScope | None:
        """A place for a connection beyond the limit, or ``None`` (close it unanswered).

        Such a connection is answered ``503`` (the health probes as usual), then
        closed.  When all :attr:`ServerConfig.max_rejected_connections` places are
        taken, the oldest connection in them is closed to make room: honest
        clients are answered at once, so the oldest is most likely one that sends
        nothing, and a health probe gets through however many of those there are.
        """
        if self.config.max_rejected_connections < 1:
            return None
        if len(self._rejected) >= self.config.max_rejected_connections:
            oldest = next(iter(self._rejected))
            del self._rejected[oldest]
            oldest.cancel()
            log.debug("over the connection limit: closed the oldest rejected connection")
        slot = trio.CancelScope()
        self._rejected[slot] = None
        return slot

    async def serve_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one connection on *stream* (any :class:`trio.abc.Stream`) until it closes.

        It counts toward :attr:`ServerConfig.max_connections` like an accepted one,
        is told about drains, and is wrapped in TLS when the server has an
        ``ssl_context``.  The stream is closed on return.
        """
        if self._active < self.config.max_connections:
            self._active += 1
            await self._serve_connection(stream, None)
            return
        slot = self._reject_slot()
        if slot is None:
            await trio.aclose_forcefully(stream)
        else:
            await self._serve_connection(stream, slot)

    async def _serve_connection(
        self, stream: trio.abc.Stream, slot: trio.CancelScope | None
    ) -> None:
        # The caller counted this connection in (as active, or with a *slot* among
        # the rejected ones); it is counted out here.  (One coroutine frame for all
        # of it: it lives as long as the connection.)
        config = self.config
        rejecting = slot is not None
        info = ConnectionInfo(rejecting=rejecting)
        socket = getattr(stream, "socket", None)
        if socket is not None:
            with suppress(OSError):
                info.client = socket.getpeername()
        try:
            with slot if slot is not None else nullcontext():
                alpn = None
                initial = b""
                with trio.move_on_after(config.header_timeout) as scope:
                    if self.ssl_context is not None:
                        tls = trio.SSLStream(stream, self.ssl_context, server_side=True)
                        stream = tls
                        info.scheme = "https"
                        await tls.do_handshake()
                        alpn = tls.selected_alpn_protocol()
                    if alpn != "h2":
                        initial = await self._sniff(stream)
                if scope.cancelled_caught or (alpn != "h2" and not initial):
                    return
                if alpn == "h2" or (config.http2 and initial.startswith(PREFACE)):
                    await H2Connection(stream, self.app, info, initial).run()
                else:
                    await H11Connection(stream, self.app, info, initial).run()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            log.exception("error on connection from %s", info.client)
        finally:
            if slot is None:
                self._active -= 1
            else:
                self._rejected.pop(slot, None)
            await trio.aclose_forcefully(stream)

    async def _sniff(self, stream: trio.abc.Stream) -> bytes:
        """Read until the first bytes show whether this is the HTTP/2 preface."""
        data = b""
        while len(data) < len(PREFACE):
            chunk = await stream.receive_some(self.config.receive_size)
            if not chunk:
                break
            data += chunk
            if not PREFACE.startswith(data[: len(PREFACE)]):
                break
        return data


async def serve(
    hub: Hub,
    port: int = 8000,
    *,
    host: str | None = "127.0.0.1",
    config: ServerConfig | None = None,
    ssl_context: ssl.SSLContext | None = None,
    router: Router | None = None,
    handle_signals: bool = False,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve *hub* on *host*:*port* until drained or cancelled (then drain and return).

    Use ``server = await nursery.start(serve, hub, 0)`` (*port* is positional, as
    in :func:`trio.serve_tcp`; use :func:`functools.partial` for the keyword
    arguments): the :class:`Server` handed to ``task_status`` knows the bound
    :attr:`~Server.addresses` and can :meth:`~Server.drain`.  Port ``0`` picks a
    free port; *host* ``None`` listens on every interface.  *router* adds your own
    routes (see :class:`~tidings.trio.Router`); by default the tidings endpoints.
    """
    server = Server(hub, config, ssl_context=ssl_context, router=router)
    listeners = await trio.open_tcp_listeners(port, host=host)
    await server.serve_listeners(listeners, handle_signals=handle_signals, task_status=task_status)


async def serve_stream(
    stream: trio.abc.Stream, hub: Hub, config: ServerConfig | None = None
) -> None:
    """Serve one connection on *stream* with a server of its own (tests, fuzzers).

    Shorthand for ``await Server(hub, config).serve_stream(stream)``; keep a
    :class:`Server` instead to serve several streams or to drain them.
    """
    await Server(hub, config).serve_stream(stream)
