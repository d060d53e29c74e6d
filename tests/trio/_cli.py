"""Running ``python -m tidings`` as a real subprocess: shared by the command-line tests
(tests/test_main.py, tests/trio/test_longpoll_cli.py, tests/trio/test_ws_cli.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import trio
import trio.testing

from tidings.cursor import Position
from tidings.trio import Hub

SRC = Path(__file__).resolve().parents[2] / "src"
ENV = {**os.environ, "PYTHONPATH": str(SRC)}
TIMEOUT = 30  # real seconds; generous for a loaded machine, never reached when all is well


class Lines:
    """Line-by-line reading of a subprocess pipe."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def next(self) -> str:
        while b"\n" not in self.buffer:
            chunk = await self.stream.receive_some()
            if not chunk:
                raise EOFError(self.buffer)
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()


async def start_cli(nursery: trio.Nursery, *args: str) -> trio.Process:
    """``python -m tidings *args`` running in *nursery*, stdout and stderr piped."""
    command = [sys.executable, "-m", "tidings", *args]
    process: trio.Process = await nursery.start(
        partial(
            trio.run_process,
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=ENV,
            check=False,
        )
    )
    return process


async def run_cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    """``python -m tidings *args`` run to its end (at most TIMEOUT), output captured."""
    with trio.fail_after(TIMEOUT):
        return await trio.run_process(
            [sys.executable, "-m", "tidings", *args],
            capture_stdout=True,
            capture_stderr=True,
            env=ENV,
            check=False,
        )


async def replay_then_live(
    process: trio.Process, hub: Hub, topic: str
) -> tuple[list[object], Position, int]:
    """Follow a tail that resumes after the first of three events of *topic* on *hub*.

    Reads the two replayed lines, publishes one live event (type ``tick``, data on two
    lines) once the tail follows *topic*, reads its line and stops the tail with
    SIGTERM.  Returns the three lines parsed, the live event and the exit status.
    """
    assert process.stdout is not None
    lines = Lines(process.stdout)
    with trio.fail_after(TIMEOUT):
        got = [json.loads(await lines.next()) for _ in range(2)]
        while hub.subscriber_count(topic) < 1:  # the tail follows live now
            await trio.testing.wait_all_tasks_blocked(0.01)
        live = await hub.publish(topic, "multi\nline", event="tick")
        got.append(json.loads(await lines.next()))
        process.send_signal(signal.SIGTERM)
        status = await process.wait()
    return got, live, status
