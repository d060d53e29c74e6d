"""The request object and response interface that handlers are written against.

Handlers never see h11 or h2: each protocol adapter turns its events into a
:class:`Request` and implements :class:`Responder` (and :class:`StreamWriter` for
streaming bodies), so one handler serves HTTP/1.1 and HTTP/2 alike.  Adapters deal
with framing, flow control, hop-by-hop headers, ``HEAD`` and client disconnects.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from urllib.parse import unquote_to_bytes

import trio

from tidings.history import StoredEvent
from tidings.trio.hub import Subscription

__all__ = [
    "BodyTooLarge",
    "ConnectionInfo",
    "Headers",
    "Request",
    "Responder",
    "StreamWriter",
    "UpgradeNotSupported",
    "content_length",
]

#: Header lists are ``(lower-case name, value)`` byte pairs.
Headers = list[tuple[bytes, bytes]]

# Query strings with more parameters than this are not looked at further.
_MAX_QUERY_PARAMS = 64


def content_length(status: int, body: bytes) -> Headers:
    """The ``content-length`` header a responder adds to a complete answer.

    None for ``1xx``, ``204`` and ``304`` (RFC 9110 §8.6): the first two must not
    carry one, and a ``304`` may only repeat the length a ``200`` would have had,
    which the responder cannot know (``0`` would be a lie to caches).
    """
    if status < 200 or status == 204 or status == 304:
        return []
    return [(b"content-length", str(len(body)).encode("ascii"))]


class BodyTooLarge(Exception):
    """The request body is larger than the handler accepts (answer ``413``)."""


class UpgradeNotSupported(Exception):
    """The connection cannot switch protocols (HTTP/2, or no ``Upgrade`` header)."""


@dataclass(slots=True)
class ConnectionInfo:
    """Facts about one client connection, shared by its requests."""

    #: ``"http"`` or ``"https"``.
    scheme: str = "http"
    #: The peer address when known (``(host, port)`` for TCP).
    client: object = None
    #: ``True`` when the connection is over the server's connection limit: every
    #: request on it is answered ``503`` and the connection is closed.
    rejecting: bool = False


@dataclass(slots=True)
class Request:
    """One HTTP request as handlers see it, whatever the protocol.

    ``path`` and ``query`` are the raw (still percent-encoded) parts of the target;
    ``headers`` have lower-case names and never include HTTP/2 pseudo-headers;
    ``params`` holds the decoded path parameters of the matched route.
    """

    method: str
    path: str
    query: str = ""
    headers: Sequence[tuple[bytes, bytes]] = ()
    http_version: str = "1.1"
    connection: ConnectionInfo = field(default_factory=ConnectionInfo)
    params: dict[str, str] = field(default_factory=dict)

    def header(self, name: bytes) -> bytes | None:
        """The first value of header *name* (lower-case), or ``None``."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def cookie(self, name: str) -> str | None:
        """The value of cookie *name* from the ``Cookie`` header(s), or ``None``."""
        for key, value in self.headers:
            if key != b"cookie":
                continue
            for pair in value.decode("latin-1").split(";"):
                cookie_name, sep, cookie_value = pair.strip().partition("=")
                if sep and cookie_name == name:
                    return cookie_value.strip('"')
        return None

    def query_param(self, name: str) -> bytes | None:
        """The first value of query parameter *name*, percent-decoded, or ``None``.

        ``+`` means a space (HTML form encoding); bytes are returned undecoded so
        that each caller chooses how strict to be about UTF-8.
        """
        if not self.query:
            return None
        for index, part in enumerate(self.query.split("&")):
            if index >= _MAX_QUERY_PARAMS:
                break
            key, _, value = part.partition("=")
            if unquote_to_bytes(key.replace("+", " ")) == name.encode():
                return unquote_to_bytes(value.replace("+", " "))
        return None


class StreamWriter(abc.ABC):
    """The body of a streaming response (see :meth:`Responder.open_stream`)."""

    @abc.abstractmethod
    async def send(self, data: bytes) -> None:
        """Send part of the body; returns once the transport took it.

        Raises :class:`trio.BrokenResourceError` when the client is gone.
        """

    @abc.abstractmethod
    def abort(self) -> None:
        """End the response abruptly instead of cleanly when the block exits.

        The client sees a network error (HTTP/1.1: the connection closes without the
        final chunk; HTTP/2: ``RST_STREAM``), which makes an SSE client reconnect
        and resume from its last event ID.  May be called from another task (the
        publisher's, on overflow): a send blocked meanwhile then fails with
        :class:`trio.BrokenResourceError`.
        """

    async def idle(
        self, subscription: Subscription, encoder: Callable[[StoredEvent], bytes]
    ) -> None:
        """Wait until *subscription* needs its consumer (events, close, heartbeat).

        A transport that can write without blocking may meanwhile deliver events
        itself, encoded by *encoder* (see :class:`~tidings.trio.hub.DirectSink`).
        Raises :class:`trio.BrokenResourceError` if the client goes away.
        """
        await subscription.wait()


class Responder(abc.ABC):
    """How a handler answers one request."""

    @property
    @abc.abstractmethod
    def started(self) -> bool:
        """Whether the response head has been (or is about to be) sent."""

    @property
    @abc.abstractmethod
    def client_gone(self) -> bool:
        """Whether the client is known to have gone away."""

    @abc.abstractmethod
    async def read_body(self, max_size: int) -> bytes:
        """The whole request body; :class:`BodyTooLarge` beyond *max_size* bytes."""

    @abc.abstractmethod
    async def respond(self, status: int, headers: Headers, body: bytes = b"") -> None:
        """Send a complete response (``Content-Length`` is added, see :func:`content_length`)."""

    @abc.abstractmethod
    def open_stream(
        self, status: int, headers: Headers
    ) -> AbstractAsyncContextManager[StreamWriter]:
        """Start a response whose body is streamed until the block exits.

        Inside the block the client's disconnect cancels the block (and the code
        after it continues, with :attr:`client_gone` true).  Leaving the block ends
        the body cleanly unless :meth:`StreamWriter.abort` was called or an
        exception escaped.  The head goes out with the first :meth:`StreamWriter.send`
        (or at the end), so that head and first data share one write.
        """

    @abc.abstractmethod
    def watch_disconnect(self) -> AbstractAsyncContextManager[None]:
        """A block that is cancelled when the client goes away (for held requests)."""

    def push(self, path: str) -> bool:
        """Promise the client the answer to ``GET path`` (HTTP/2 server push), and
        answer it through the router as if the client had asked.

        Call it before the response starts.  Returns whether a promise was made:
        ``False`` on HTTP/1.1, when the client disabled push (every current
        browser), on a pushed stream, or when the client allows no more streams.
        A client may still reset the promised stream; nothing fails then.
        """
        return False

    @property
    def can_upgrade(self) -> bool:
        """Whether :meth:`upgrade` is possible (HTTP/1.1 with ``Upgrade``)."""
        return False

    async def upgrade(self, headers: Headers) -> tuple[trio.abc.Stream, bytes]:
        """Answer ``101 Switching Protocols`` and take over the connection.

        Returns the byte stream and any bytes the client already sent after the
        request.  The connection is closed when the handler returns.
        """
        raise UpgradeNotSupported("this connection cannot switch protocols")
