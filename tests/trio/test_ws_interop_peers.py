"""Other WebSocket clients speak ``tidings.v1`` to our server.

* python ``websockets`` (17, its synchronous client in a worker thread): fast, always run;
* node's ``ws`` package (pinned; ``.ci/run`` installs it into ``.ci-peers/``, outside
  the source tree, and the test never reaches a registry): marked external and slow;
  skipped when node or the package is missing, unless ``CI=true``, where that fails.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import trio
from websockets.exceptions import ConnectionClosedError, InvalidStatus
from websockets.sync.client import connect
from websockets.typing import Origin, Subprotocol

from tidings.trio import Hub, Server

try:
    from tests.trio._tools import require_node_package, require_program
except ImportError:  # tests/ is not a package: pytest put this directory on sys.path
    from _tools import require_node_package, require_program  # type: ignore[no-redef]

PEERS = Path(__file__).parent / "peers"
PROTOCOLS = [Subprotocol("tidings.v1")]


def ws_url(server: Server) -> str:
    return f"ws://127.0.0.1:{server.port}/ws"


def websockets_session(url: str) -> list[dict[str, Any]]:
    """Subscribe, publish twice with the same msg_id, read until both acks + event."""
    received: list[dict[str, Any]] = []
    with connect(url, subprotocols=PROTOCOLS) as ws:
        assert ws.subprotocol == "tidings.v1"
        ws.send(json.dumps({"type": "subscribe", "topic": "py", "cursor": "earliest"}))
        publish = {"type": "publish", "topic": "py", "msg_id": "py-1", "data": "from python"}
        ws.send(json.dumps(publish))
        ws.send(json.dumps(publish))
        while sum(m["type"] == "published" for m in received) < 2 or not any(
            m["type"] == "event" and m["data"] == "from python" for m in received
        ):
            received.append(json.loads(ws.recv(timeout=10)))
        ws.ping(b"are you there").wait(10)
    return received


async def test_python_websockets_client_speaks_tidings_v1(server: Server, hub: Hub) -> None:
    first = await hub.publish("py", "before")
    received = await trio.to_thread.run_sync(websockets_session, ws_url(server))
    events = [m for m in received if m["type"] == "event"]
    acks = [m for m in received if m["type"] == "published"]
    assert [e["data"] for e in events] == ["before", "from python"]
    assert events[0]["id"] == first.format()
    # The repeat got the original id and was not stored again.
    assert acks[0] == acks[1] == {"type": "published", "msg_id": "py-1", "id": events[1]["id"]}
    assert hub.history.memory.head("py").offset == 2


def websockets_refused(url: str, origin: str) -> int:
    try:
        with connect(url, subprotocols=PROTOCOLS, origin=Origin(origin)):
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


async def test_python_websockets_cross_site_origin_is_refused(server: Server) -> None:
    status = await trio.to_thread.run_sync(
        websockets_refused, ws_url(server), "https://evil.example"
    )
    assert status == 403


def websockets_oversized(url: str) -> int | None:
    with connect(url, subprotocols=PROTOCOLS, max_size=None) as ws:
        ws.send(json.dumps({"type": "publish", "topic": "t", "msg_id": "x", "data": "y" * 2**21}))
        try:
            ws.recv(timeout=10)
        except ConnectionClosedError as exc:
            return None if exc.rcvd is None else exc.rcvd.code
    return 0


async def test_python_websockets_oversized_message_is_closed_with_1009(server: Server) -> None:
    assert await trio.to_thread.run_sync(websockets_oversized, ws_url(server)) == 1009


# -- node ws ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def node_ws() -> Path:
    """node's ``ws`` package, as ``.ci/run`` installs it (see ``_tools.NODE_MODULES``)."""
    require_program("node", reason="node is needed for the node 'ws' interop test")
    return require_node_package("ws")


@pytest.mark.slow
@pytest.mark.external
async def test_node_ws_client_speaks_tidings_v1(server: Server, hub: Hub, node_ws: Path) -> None:
    before = await hub.publish("js", "before")
    node = shutil.which("node")
    assert node is not None
    with trio.fail_after(30):
        result = await trio.run_process(
            [node, str(PEERS / "ws_client.js"), ws_url(server), "js", "2"],
            capture_stdout=True,
            capture_stderr=True,
            cwd=PEERS,
            env={**os.environ, "NODE_PATH": str(node_ws.parent)},
        )
    lines = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert lines[0] == {"type": "open", "protocol": "tidings.v1"}
    events = [m for m in lines if m["type"] == "event"]
    assert [e["data"] for e in events] == ["before", "from node"]
    assert events[0]["id"] == before.format()
    assert {"type": "published", "msg_id": "node-1", "id": events[1]["id"]} in lines
    assert lines[-1] == {"type": "close", "code": 1000}
