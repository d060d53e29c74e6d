"""examples/asyncio_sse.py: the sans-IO core serving SSE on asyncio, resumed by a client."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from functools import partial
from pathlib import Path

import trio

from tidings.events import Event, ResetNotice
from tidings.trio import open_event_stream
from tidings.trio.client._http import open_request

from ..trio._cli import ENV, Lines

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "asyncio_sse.py"


def test_the_example_imports_nothing_of_trio() -> None:
    tree = ast.parse(EXAMPLE.read_text(encoding="utf-8"))
    modules = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "asyncio" in modules
    assert not any(name == "trio" or name.startswith(("trio.", "tidings.trio")) for name in modules)


async def publish(url: str, data: str) -> str:
    async with open_request("POST", f"{url}/topics/news", body=data.encode()) as response:
        assert response.status == 201
        ident: str = json.loads(await response.read())["id"]
        return ident


async def test_a_tidings_client_resumes_from_the_asyncio_server(nursery: trio.Nursery) -> None:
    command = [sys.executable, str(EXAMPLE), "--port", "0"]
    process: trio.Process = await nursery.start(
        partial(trio.run_process, command, stdout=subprocess.PIPE, env=ENV, check=False)
    )
    try:
        assert process.stdout is not None
        with trio.fail_after(20):
            url = await Lines(process.stdout).next()
            ids = [await publish(url, f"n{i}") for i in range(3)]
            async with open_event_stream(
                f"{url}/topics/news/events", last_event_id=ids[0]
            ) as stream:
                replayed = [await stream.__anext__() for _ in range(2)]
                live = await publish(url, "live")
                event = await stream.__anext__()
            async with open_event_stream(
                f"{url}/topics/news/events", last_event_id="otherepoch.7"
            ) as stream:
                reset = await stream.__anext__()
                first = await stream.__anext__()
    finally:
        process.kill()
    assert [(e.id, e.data) for e in replayed] == [(ids[1], "n1"), (ids[2], "n2")]  # type: ignore[union-attr]
    assert isinstance(event, Event)
    assert (event.id, event.data) == (live, "live")
    # A reset where events were lost, then everything the asyncio server retains.
    assert isinstance(reset, ResetNotice)
    assert reset.reason == "unknown-epoch"
    assert isinstance(first, Event)
    assert first.id == ids[0]
