"""Noticing, in one task, that any of many idle HTTP/1.1 clients went away.

A held long poll mostly waits for a publish.  Watching its socket from its own task
(``wait_readable``) means that every wake-up by a publish must cancel that wait,
which costs far more than the wake-up itself when thousands of polls are woken at
once.  Instead, held polls register their socket here: one private ``epoll`` object
holds them all, one task waits for *it* to become readable and calls the callback of
each socket that turned readable (the client closed, reset, or sent more).  A held
poll then waits on a plain :class:`~tidings.trio.Waiter`, which a publish wakes for
a few microseconds, and unregisters with one system call.

Linux only (``select.epoll``); :func:`new_watcher` returns ``None`` elsewhere and
callers fall back to watching the socket in their own task.
"""

from __future__ import annotations

import logging
import select
from collections.abc import Callable

import trio

__all__ = ["DisconnectWatcher", "new_watcher"]

log = logging.getLogger("tidings.server")

_EVENTS = getattr(select, "EPOLLIN", 0) | getattr(select, "EPOLLRDHUP", 0)


class DisconnectWatcher:
    """Calls back once when a registered socket becomes readable.

    Each registration fires at most once and is removed when it fires; remove it
    yourself (:meth:`discard`) before the socket is closed.  The watcher task is a
    Trio system task, started on the first registration and kept for the run.
    """

    __slots__ = ("_callbacks", "_epoll", "_running")

    def __init__(self) -> None:
        self._epoll: select.epoll | None = None
        self._callbacks: dict[int, Callable[[], None]] = {}
        self._running = False

    def __len__(self) -> int:
        return len(self._callbacks)

    def add(self, fd: int, callback: Callable[[], None]) -> None:
        """Call *callback* (from the watcher task) once *fd* becomes readable."""
        if self._epoll is None:
            self._epoll = select.epoll()
        self._epoll.register(fd, _EVENTS)
        self._callbacks[fd] = callback
        if not self._running:
            self._running = True
            trio.lowlevel.spawn_system_task(self._run, name="tidings disconnect watcher")

    def discard(self, fd: int) -> None:
        """Forget *fd* (no effect if it is not registered or already fired)."""
        if self._callbacks.pop(fd, None) is not None and self._epoll is not None:
            self._epoll.unregister(fd)

    async def _run(self) -> None:
        epoll = self._epoll
        assert epoll is not None
        try:
            while True:
                await trio.lowlevel.wait_readable(epoll.fileno())
                for fd, _mask in epoll.poll(0):
                    callback = self._callbacks.pop(fd, None)
                    if callback is None:
                        continue
                    epoll.unregister(fd)
                    try:
                        callback()
                    except Exception:  # a system task must not crash the run
                        log.exception("disconnect callback failed")
        finally:
            self._running = False
            self._callbacks.clear()
            self._epoll = None
            epoll.close()


def new_watcher() -> DisconnectWatcher | None:
    """A watcher for one server's connections; ``None`` where epoll is missing."""
    if not hasattr(select, "epoll"):
        return None
    return DisconnectWatcher()
