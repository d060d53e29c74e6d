"""Writing bursts of live events straight to an idle connection's socket.

While a connection's own task has nothing to send, the hub's publisher (or its
flusher) may queue encoded events here and write a whole burst with one system
call, without waking any task.  Anything unusual -- a full socket buffer, an error
-- *interrupts*: the connection's task wakes, :meth:`SocketSink.take`\\ s the unsent
bytes and owns the socket again.  The SSE stream (HTTP/1.1) and the WebSocket
session both work this way; they differ only in how their task is woken.
"""

from __future__ import annotations

import os

__all__ = ["FLUSH_SIZE", "SocketSink", "write_some"]

#: Bytes a sink gathers before it writes them, within one burst of publishes.
FLUSH_SIZE = 64 * 1024


def write_some(fd: int, data: bytes) -> int:
    """Offer *data* to a non-blocking socket in one system call; bytes taken.

    ``0`` when its buffer is full; :class:`OSError` when the connection is broken.
    """
    try:
        return os.write(fd, data)
    except BlockingIOError:
        return 0


class SocketSink:
    """Queued bytes for one non-blocking socket, written by whoever publishes."""

    __slots__ = ("_fd", "_queued", "_size", "broken", "interrupted")

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._queued: list[bytes] = []
        self._size = 0
        #: Set once: the connection's task owns the socket again.
        self.interrupted = False
        #: The socket failed; whatever was queued is gone with it.
        self.broken = False

    def queue(self, data: bytes) -> bool:
        """Queue *data*; ``False`` once interrupted (the caller keeps the event)."""
        if self.interrupted:
            return False
        self._queued.append(data)
        self._size += len(data)
        if self._size >= FLUSH_SIZE:
            self.flush()  # a long burst: do not let the queue grow
        return True

    def flush(self) -> None:
        """Write what is queued in one call; interrupt unless all of it went out."""
        queued = self._queued
        if self.interrupted or not queued:
            return
        data = queued[0] if len(queued) == 1 else b"".join(queued)
        try:
            sent = self._write(data)
        except OSError:
            self.broken = True
            self._queued = []
            self._size = 0
            self.interrupt()
            return
        if sent < len(data):
            self._queued = [data[sent:]]
            self._size = len(data) - sent
            self.interrupt()
        else:
            self._queued = []
            self._size = 0

    def _write(self, data: bytes) -> int:
        """Write a prefix of *data* without blocking; return its length.

        Raises :class:`OSError` when the transport is broken.  A plain socket
        writes with one system call; other transports (an HTTP/2 stream) override.
        """
        return write_some(self._fd, data)

    def take(self) -> bytes:
        """Stop for good; the bytes not written yet (the owner writes them first)."""
        self.interrupted = True
        data = b"".join(self._queued)
        self._queued = []
        self._size = 0
        return data

    def interrupt(self) -> None:
        """Hand the socket back to the connection's task (once)."""
        if not self.interrupted:
            self.interrupted = True
            self._wake()

    def _wake(self) -> None:
        """Wake the connection's task; each kind of connection says how."""
        raise NotImplementedError
