"""What the Redis history tests share: a real ``redis-server`` (started on a free port,
persistence off) and a feed that records what it is told."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import trio

from tidings.history import StoredEvent

try:
    from tests.trio._tools import require_program
except ImportError:  # tests/ is not a package and the repository root is not on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "trio"))
    from _tools import require_program  # type: ignore[no-redef]

__all__ = ["RecordingFeed", "RedisServer"]

# How long a starting server may take to answer PING, in seconds.
_START_TIMEOUT = 10.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One ``redis-server`` process in *directory*; :meth:`start` it again on the same
    port after :meth:`kill` to play a restart (it comes back empty)."""

    def __init__(self, directory: Path) -> None:
        self.binary = require_program("redis-server", reason="redis-server is not installed")
        self.directory = directory
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL of database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and wait (at most 10 s) until it answers PING."""
        assert self.process is None, "already running"
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--logfile",
                str(self.directory / "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + _START_TIMEOUT
        while not self._answers_ping():
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                self.kill()
                raise RuntimeError(f"redis-server did not start on port {self.port}:\n{log}")
            time.sleep(0.02)  # polling a starting process: nothing to wait on

    def command(self, *words: str) -> bytes:
        """Send one inline command (``FLUSHALL``, ...) and return the reply's first line."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(" ".join(words).encode() + b"\r\n")
            return sock.recv(4096).split(b"\r\n", 1)[0]

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """Kill the server at once (SIGKILL: a crash, nothing flushed)."""
        process, self.process = self.process, None
        if process is not None:
            process.kill()
            process.wait()

    def pause(self) -> None:
        """Stop the process (SIGSTOP): connections stay open, nothing answers."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused server go on (SIGCONT)."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)


class RecordingFeed:
    """A :class:`~tidings.trio.history.Feed` that keeps what it is told, and lets a
    test wait (no sleeping) until it has been told something."""

    def __init__(self) -> None:
        self.events: list[tuple[str, StoredEvent]] = []
        self.lost: list[str | None] = []
        self._changed = trio.Event()

    def on_event(self, topic: str, stored: StoredEvent) -> None:
        self.events.append((topic, stored))
        self._wake()

    def on_lost(self, topic: str | None) -> None:
        self.lost.append(topic)
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def of(self, topic: str) -> list[StoredEvent]:
        """The events fed for *topic*, in the order fed."""
        return [stored for name, stored in self.events if name == topic]

    async def wait_until(self, condition: Callable[[], bool], within: float = 5.0) -> None:
        """Return once *condition* holds (checked after each callback); fail after
        *within* seconds."""
        with trio.fail_after(within):
            while not condition():
                await self._changed.wait()
