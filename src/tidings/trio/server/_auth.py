"""Who may read and who may publish: one authorisation hook for every transport.

A hook is ``await hook(request, action, topic)``: it admits (``None``) or refuses
with a :class:`Refusal` (a status such as ``401`` or ``403``, a one-line message,
extra headers such as ``WWW-Authenticate``).  The server calls it

* before an event stream or a long poll is answered (``Action.SUBSCRIBE``),
* before a ``POST`` body is read (``Action.PUBLISH``),
* at a WebSocket handshake (``Action.CONNECT``, topic ``None``), and again for every
  ``subscribe`` and ``publish`` message of the session (refused with an ``error``
  message; the connection stays up).

The request carries headers, cookies (:meth:`~tidings.trio.Request.cookie`), the
query and the client address, so one hook covers bearer tokens, cookie sessions
and per-topic rules alike.  :func:`publish_token` is the ready-made hook of
``tidings serve --publish-token``.
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from tidings.errors import LocalProtocolError
from tidings.trio.server._http import Headers, Request

__all__ = ["Action", "AuthHook", "Refusal", "publish_token"]


class Action(enum.StrEnum):
    """What a request wants to do."""

    #: Read a topic (an event stream, a long poll, a WebSocket ``subscribe``).
    SUBSCRIBE = "subscribe"
    #: Publish to a topic (``POST``, a WebSocket ``publish``).
    PUBLISH = "publish"
    #: Open a WebSocket session (the handshake; no topic yet).
    CONNECT = "connect"


@dataclass(frozen=True, slots=True)
class Refusal:
    """An answer that refuses a request: *status* (401, 403, 429, ...) with a one-line
    *message* and extra *headers* (for example ``WWW-Authenticate``)."""

    status: int = 403
    message: str = "Forbidden"
    headers: Headers = field(default_factory=list)

    def __post_init__(self) -> None:
        if type(self.status) is not int or not 400 <= self.status <= 599:
            raise LocalProtocolError("a refusal status must be an int in 400..599")
        if any(c in self.message for c in "\r\n"):
            raise LocalProtocolError("a refusal message is one line")


#: ``await hook(request, action, topic)``: ``None`` admits, a :class:`Refusal`
#: refuses.  *topic* is ``None`` for :attr:`Action.CONNECT`.
AuthHook = Callable[[Request, Action, "str | None"], Awaitable["Refusal | None"]]


def publish_token(token: str) -> AuthHook:
    """A hook that lets anyone read and only ``Authorization: Bearer <token>`` publish.

    The token is compared in constant time (:func:`hmac.compare_digest`), so its
    value cannot be guessed byte by byte from response times.
    """
    if not token or any(c in token for c in "\r\n\x00 "):
        raise LocalProtocolError("the publish token must be non-empty, without spaces")
    expected = b"Bearer " + token.encode("utf-8")

    async def hook(request: Request, action: Action, topic: str | None) -> Refusal | None:
        if action is not Action.PUBLISH:
            return None
        given = request.header(b"authorization")
        if given is not None and hmac.compare_digest(given, expected):
            return None
        challenge = [(b"www-authenticate", b'Bearer realm="tidings"')]
        if given is None:
            return Refusal(401, "Publishing needs Authorization: Bearer <token>", challenge)
        return Refusal(403, "Wrong token", challenge)

    return hook
