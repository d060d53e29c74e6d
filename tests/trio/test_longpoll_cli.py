"""``python -m tidings tail --transport poll``, run as a real subprocess against a real
server on 127.0.0.1: the same JSON lines as the SSE tail."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing

from tidings.trio import Hub, Server

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


async def start_tail(nursery: trio.Nursery, *args: str) -> trio.Process:
    command = [sys.executable, "-m", "tidings", "tail", "--transport", "poll", *args]
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


@pytest.mark.parametrize("http", [[], ["--http2"]], ids=["http1.1", "h2c"])
async def test_tail_over_poll_prints_replayed_and_live_events_as_json_lines(
    nursery: trio.Nursery, server: Server, hub: Hub, http: list[str]
) -> None:
    ids = [(await hub.publish("news", f"n{i}")).position.format() for i in range(3)]
    process = await start_tail(
        nursery, server.url + "/topics/news/poll", "--last-event-id", ids[0], *http
    )
    assert process.stdout is not None
    lines = Lines(process.stdout)
    with trio.fail_after(TIMEOUT):
        got = [json.loads(await lines.next()) for _ in range(2)]
        while hub.subscriber_count("news") < 1:  # the next poll is held
            await trio.testing.wait_all_tasks_blocked(0.01)
        live = await hub.publish("news", "multi\nline", event="tick")
        got.append(json.loads(await lines.next()))
        process.send_signal(signal.SIGTERM)
        assert await process.wait() == 0
    assert got == [
        {"id": ids[1], "event": "message", "data": "n1"},
        {"id": ids[2], "event": "message", "data": "n2"},
        {"id": live.position.format(), "event": "tick", "data": "multi\nline"},
    ]


async def test_tail_over_poll_prints_a_reset_line_for_an_evicted_cursor(
    nursery: trio.Nursery, server: Server, hub: Hub
) -> None:
    first = (await hub.publish("news", "old")).position.format()
    for i in range(120):  # the fixture's history keeps 100
        head = (await hub.publish("news", str(i))).position.format()
    process = await start_tail(nursery, server.url + "/topics/news/poll", "--last-event-id", first)
    assert process.stdout is not None
    with trio.fail_after(TIMEOUT):
        assert json.loads(await Lines(process.stdout).next()) == {"reset": True, "cursor": head}
        process.send_signal(signal.SIGINT)
        assert await process.wait() == 0


async def test_tail_over_poll_of_something_that_is_not_a_poll_endpoint_exits_1(
    server: Server,
) -> None:
    with trio.fail_after(TIMEOUT):
        result = await trio.run_process(
            [sys.executable, "-m", "tidings", "tail", "--transport", "poll", server.url + "/x"],
            capture_stdout=True,
            capture_stderr=True,
            env=ENV,
            check=False,
        )
    assert result.returncode == 1
    assert b"404" in result.stderr


async def test_tail_over_poll_with_a_malformed_cursor_is_a_usage_error() -> None:
    with trio.fail_after(TIMEOUT):
        result = await trio.run_process(
            [
                sys.executable,
                "-m",
                "tidings",
                "tail",
                "--transport",
                "poll",
                "http://127.0.0.1:9/topics/t/poll",
                "--last-event-id",
                "not a cursor",
            ],
            capture_stdout=True,
            capture_stderr=True,
            env=ENV,
            check=False,
        )
    assert result.returncode == 2
    assert b"cursor" in result.stderr
