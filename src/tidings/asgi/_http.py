"""The handlers' :class:`~tidings.trio.Responder` over ASGI ``http`` messages.

The built-in server's handlers (event stream, long poll, publish, health) are
written against :class:`~tidings.trio.Request` and :class:`~tidings.trio.Responder`;
this module implements them with an ASGI ``receive``/``send`` pair, so the very same
handlers -- and behind them the same sans-IO machines -- serve under an ASGI server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, MutableMapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any
from urllib.parse import quote

import trio

from tidings.trio.server._http import (
    BodyTooLarge,
    ConnectionInfo,
    Headers,
    Request,
    Responder,
    StreamWriter,
    content_length,
)

__all__ = ["ASGIReceive", "ASGISend", "Scope", "AsgiResponder", "build_request"]

#: An ASGI connection scope.
Scope = MutableMapping[str, Any]
#: The ASGI ``receive`` callable.
ASGIReceive = Callable[[], Awaitable[MutableMapping[str, Any]]]
#: The ASGI ``send`` callable.
ASGISend = Callable[[MutableMapping[str, Any]], Awaitable[None]]

# Connection-specific headers: the ASGI server frames the connection itself (and an
# HTTP/2 answer must not carry them at all).
_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"upgrade", b"proxy-connection"}
)


def _route_path(scope: Scope) -> str:
    """The request path below the app's mount point (``root_path``), still
    percent-encoded as the routes expect it."""
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if isinstance(raw, bytes | bytearray) else quote(scope["path"])
    path = path.partition("?")[0]
    root = quote(scope.get("root_path", "") or "")
    if root and (path == root or path.startswith(root + "/")):
        path = path[len(root) :] or "/"
    return path


def build_request(scope: Scope, method: str | None = None) -> Request:
    """The :class:`~tidings.trio.Request` for an ASGI ``http`` or ``websocket`` scope."""
    headers = [(bytes(name).lower(), bytes(value)) for name, value in scope.get("headers", ())]
    client = scope.get("client")
    return Request(
        method=method or scope.get("method", "GET"),
        path=_route_path(scope),
        query=bytes(scope.get("query_string", b"")).decode("latin-1"),
        headers=headers,
        http_version=str(scope.get("http_version", "1.1")),
        connection=ConnectionInfo(
            scheme=scope.get("scheme", "http"),
            client=tuple(client) if client is not None else None,
        ),
    )


def _clean(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(name, value) for name, value in headers if name not in _HOP_BY_HOP]


class _Writer(StreamWriter):
    """The streamed body of one ASGI response."""

    __slots__ = ("_head", "_responder", "aborted")

    def __init__(self, responder: AsgiResponder, head: MutableMapping[str, Any]) -> None:
        self._responder = responder
        self._head: MutableMapping[str, Any] | None = head
        self.aborted = False

    async def send(self, data: bytes) -> None:
        responder = self._responder
        if responder.client_gone or self.aborted:
            raise trio.BrokenResourceError("client went away")
        with trio.move_on_after(responder.write_timeout) as scope:
            head = self._head
            if head is not None:
                self._head = None
                await responder.send(head)
            if data and not responder.is_head:
                await responder.send(
                    {"type": "http.response.body", "body": data, "more_body": True}
                )
        if scope.cancelled_caught:
            self.aborted = True
            raise trio.BrokenResourceError("write timed out")

    def abort(self) -> None:
        self.aborted = True

    async def finish(self) -> None:
        if self.aborted or self._responder.client_gone:
            return
        with trio.move_on_after(self._responder.write_timeout):
            head = self._head
            if head is not None:
                self._head = None
                await self._responder.send(head)
            await self._responder.send({"type": "http.response.body", "body": b""})


class AsgiResponder(Responder):
    """A :class:`~tidings.trio.Responder` for one ASGI ``http`` request."""

    __slots__ = ("_gone", "_started", "is_head", "receive", "send", "write_timeout")

    def __init__(
        self,
        receive: ASGIReceive,
        send: ASGISend,
        *,
        is_head: bool = False,
        write_timeout: float = 60.0,
    ) -> None:
        self.receive = receive
        self.send = send
        self.is_head = is_head
        self.write_timeout = write_timeout
        self._started = False
        self._gone = False

    @property
    def started(self) -> bool:
        return self._started

    @property
    def client_gone(self) -> bool:
        return self._gone

    async def read_body(self, max_size: int) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            kind = message["type"]
            if kind == "http.disconnect":
                self._gone = True
                raise trio.BrokenResourceError("client went away")
            if kind != "http.request":
                continue
            body = bytes(message.get("body", b""))
            size += len(body)
            if size > max_size:
                raise BodyTooLarge(f"body exceeds {max_size} bytes")
            chunks.append(body)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _start(self, status: int, headers: Headers) -> MutableMapping[str, Any]:
        if self._started:
            raise RuntimeError("the response has already started")
        self._started = True
        return {"type": "http.response.start", "status": status, "headers": _clean(headers)}

    async def respond(self, status: int, headers: Headers, body: bytes = b"") -> None:
        head = self._start(status, [*headers, *content_length(status, body)])
        with trio.move_on_after(self.write_timeout):
            await self.send(head)
            await self.send({"type": "http.response.body", "body": b"" if self.is_head else body})

    def open_stream(
        self, status: int, headers: Headers
    ) -> AbstractAsyncContextManager[StreamWriter]:
        return self._stream(status, headers)

    @asynccontextmanager
    async def _stream(self, status: int, headers: Headers) -> AsyncIterator[StreamWriter]:
        writer = _Writer(self, self._start(status, headers))
        async with self.watch_disconnect():
            yield writer
        # An aborted stream ends without its last empty chunk: the server then cuts
        # the connection (HTTP/1.1) or resets the stream (HTTP/2).
        await writer.finish()

    def watch_disconnect(self) -> AbstractAsyncContextManager[None]:
        return self._watch()

    @asynccontextmanager
    async def _watch(self) -> AsyncIterator[None]:
        with trio.CancelScope() as block:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._wait_gone, block)
                try:
                    yield
                finally:
                    nursery.cancel_scope.cancel()

    async def _wait_gone(self, block: trio.CancelScope) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self._gone = True
                block.cancel()
                return
