"""The exception types shared by every tidings machine.

Modelled on h11: a :class:`LocalProtocolError` means *you* (the caller) asked for
something the protocol forbids; a :class:`RemoteProtocolError` means the peer sent
something it must not.  Both carry an ``error_status_hint`` so that a server can
turn them into an HTTP status without guessing.
"""

from __future__ import annotations

__all__ = [
    "InvalidCursor",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
]


class ProtocolError(Exception):
    """Base class for every protocol violation tidings detects.

    ``error_status_hint`` is the HTTP status a server should answer with when this
    error is raised while handling a request (400 unless a subclass knows better).
    """

    def __init__(self, msg: str, error_status_hint: int = 400) -> None:
        if type(self) is ProtocolError:
            raise TypeError("tried to directly instantiate ProtocolError")
        super().__init__(msg)
        self.error_status_hint = error_status_hint


class LocalProtocolError(ProtocolError):
    """The caller asked for something the protocol forbids (a bug in *your* code)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol forbids (bad or hostile input)."""


class InvalidCursor(RemoteProtocolError, ValueError):
    """A position string (SSE ``id``, long-poll cursor, resume token) is malformed."""
