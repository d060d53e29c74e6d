"""A server restart, as a user lives it: followers on all three transports see
every event before the restart, one reset, and every event after it.

``python -m tidings serve`` is killed (its memory history is gone) and started
again on the same port; new events are published at once, before the followers
come back.  They were retained by the new server, so nothing may be skipped: each
``tidings tail`` prints ev0..ev9, one reset line, then new0..new4.
"""

from __future__ import annotations

import json
import signal
import socket

import pytest
import trio

from tidings.cursor import Position
from tidings.trio.client._http import open_request

try:
    from tests.trio._cli import TIMEOUT, Lines, start_cli
except ImportError:  # tests/ is not a package: pytest put tests/trio on sys.path
    from _cli import TIMEOUT, Lines, start_cli  # type: ignore[no-redef]

pytestmark = [pytest.mark.slow, pytest.mark.deadline(5 * TIMEOUT)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def start_server(nursery: trio.Nursery, port: int) -> tuple[trio.Process, str]:
    process = await start_cli(nursery, "serve", "--port", str(port))
    assert process.stdout is not None
    url = await Lines(process.stdout).next()
    return process, url


async def publish(url: str, data: str) -> str:
    async with open_request("POST", url + "/topics/news", body=data.encode()) as response:
        assert response.status == 201
        ident: str = json.loads(await response.read())["id"]
        return ident


async def test_followers_on_every_transport_lose_nothing_across_a_restart(
    nursery: trio.Nursery,
) -> None:
    port = free_port()
    with trio.fail_after(4 * TIMEOUT):
        server, url = await start_server(nursery, port)
        ws_url = url.replace("http://", "ws://") + "/ws"
        tails = {
            "sse": await start_cli(
                nursery, "tail", url + "/topics/news/events", "--last-event-id", "earliest"
            ),
            "poll": await start_cli(
                nursery,
                "tail",
                "--transport",
                "poll",
                url + "/topics/news/poll",
                "--last-event-id",
                "earliest",
            ),
            "ws": await start_cli(
                nursery,
                "tail",
                "--transport",
                "ws",
                ws_url,
                "--topic",
                "news",
                "--last-event-id",
                "earliest",
            ),
        }
        lines = {name: Lines(process.stdout) for name, process in tails.items()}  # type: ignore[arg-type]
        before = [await publish(url, f"ev{n}") for n in range(10)]
        for name, reader in lines.items():
            got = [json.loads(await reader.next()) for _ in range(10)]
            assert [(g["id"], g["data"]) for g in got] == list(
                zip(before, [f"ev{n}" for n in range(10)], strict=True)
            ), name

        # The server dies with its memory; a new one takes the port and gets five
        # events at once, before any follower is back.
        server.send_signal(signal.SIGKILL)
        await server.wait()
        server, url = await start_server(nursery, port)
        after = [await publish(url, f"new{n}") for n in range(5)]
        new_epoch = Position.parse(after[0]).epoch
        assert new_epoch != Position.parse(before[0]).epoch

        for name, reader in lines.items():
            reset = json.loads(await reader.next())
            assert reset == {"reset": True, "cursor": f"{new_epoch}.0"}, name
            got = [json.loads(await reader.next()) for _ in range(5)]
            assert [(g["id"], g["data"]) for g in got] == list(
                zip(after, [f"new{n}" for n in range(5)], strict=True)
            ), name

        for process in tails.values():
            process.send_signal(signal.SIGTERM)
        for process in tails.values():
            assert await process.wait() == 0
        server.send_signal(signal.SIGTERM)
        assert await server.wait() == 0
