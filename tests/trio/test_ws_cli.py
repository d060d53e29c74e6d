"""``python -m tidings tail --transport ws``, run as a real subprocess against a real
server on 127.0.0.1: the same JSON lines as the SSE and long-poll tails."""

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
    command = [sys.executable, "-m", "tidings", "tail", "--transport", "ws", *args]
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


def ws_url(server: Server) -> str:
    return f"ws://127.0.0.1:{server.port}/ws"


async def test_tail_over_ws_prints_replayed_and_live_events_as_json_lines(
    nursery: trio.Nursery, server: Server, hub: Hub
) -> None:
    ids = [(await hub.publish("news", f"n{i}")).position.format() for i in range(3)]
    process = await start_tail(
        nursery, ws_url(server), "--topic", "news", "--last-event-id", ids[0]
    )
    assert process.stdout is not None
    lines = Lines(process.stdout)
    with trio.fail_after(TIMEOUT):
        got = [json.loads(await lines.next()) for _ in range(2)]
        while hub.subscriber_count("news") < 1:  # the session follows live now
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


async def test_tail_over_ws_prints_a_reset_line_for_an_unknown_cursor(
    nursery: trio.Nursery, server: Server, hub: Hub
) -> None:
    head = (await hub.publish("news", "x")).position.format()
    process = await start_tail(
        nursery, ws_url(server), "--topic", "news", "--last-event-id", "other.5"
    )
    assert process.stdout is not None
    with trio.fail_after(TIMEOUT):
        assert json.loads(await Lines(process.stdout).next()) == {"reset": True, "cursor": head}
        process.send_signal(signal.SIGINT)
        assert await process.wait() == 0


async def test_tail_over_ws_with_several_topics_labels_each_line(
    nursery: trio.Nursery, server: Server, hub: Hub
) -> None:
    process = await start_tail(
        nursery, ws_url(server), "--topic", "a", "--topic", "b", "--last-event-id", "earliest"
    )
    assert process.stdout is not None
    lines = Lines(process.stdout)
    with trio.fail_after(TIMEOUT):
        event = await hub.publish("b", "to b")
        line = json.loads(await lines.next())
        process.send_signal(signal.SIGTERM)
        assert await process.wait() == 0
    assert line == {
        "id": event.position.format(),
        "event": "message",
        "data": "to b",
        "topic": "b",
    }


async def test_tail_over_ws_without_a_topic_is_a_usage_error() -> None:
    result = await trio.run_process(
        [sys.executable, "-m", "tidings", "tail", "--transport", "ws", "ws://127.0.0.1:9/ws"],
        capture_stdout=True,
        capture_stderr=True,
        env=ENV,
        check=False,
    )
    assert result.returncode == 2
    assert b"--topic" in result.stderr


async def test_tail_over_ws_refused_by_the_server_exits_1(server: Server) -> None:
    # /healthz answers 200 to the handshake instead of 101: a refused session.
    url = f"ws://127.0.0.1:{server.port}/healthz"
    result = await trio.run_process(
        [sys.executable, "-m", "tidings", "tail", "--transport", "ws", url, "--topic", "t"],
        capture_stdout=True,
        capture_stderr=True,
        env=ENV,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert result.stdout == b""
