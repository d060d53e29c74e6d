"""An idle HTTP/1.1 event stream that is cancelled outright gives its socket back."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import trio
import trio.testing

from tidings.trio import Hub, Server
from tidings.trio.server._h11 import _DirectSink

if TYPE_CHECKING:
    from conftest import Connect

pytestmark = pytest.mark.timeout(30)


async def test_a_hard_cancelled_idle_stream_stops_its_direct_sink_writing(
    hub: Hub, server: Server, connect: Connect
) -> None:
    client = await connect(server)
    await client.send("GET", "/topics/t/events")
    response = await client.response()
    assert response.status_code == 200
    with trio.fail_after(5):
        while True:
            await trio.testing.wait_all_tasks_blocked()
            [subscription] = list(hub._subscribers.get("t", set()))
            sink = subscription.sink
            if sink is not None:
                break
    assert isinstance(sink, _DirectSink)
    # An event is queued for the hub's flusher, then the connections are cut at once
    # (a drain timeout or a second signal) before the flusher has run.
    hub.publish_nowait("t", "late")
    assert server._conn_scope is not None
    server._conn_scope.cancel()
    await trio.testing.wait_all_tasks_blocked()
    # Whichever ran first, the sink never wrote to the closed (maybe reused) fd:
    # that write fails with EBADF here, which marks the sink broken.
    assert sink.interrupted
    assert not sink.broken
    assert subscription.sink is None
