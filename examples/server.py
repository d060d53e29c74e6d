"""A tidings server embedded in a Trio program, publishing a clock every second.

Run it, then follow the stream and publish into it::

    python examples/server.py 8000
    curl -N http://127.0.0.1:8000/topics/clock/events
    curl -d 'hello' 'http://127.0.0.1:8000/topics/clock?event=greeting'

Stop the stream with Ctrl-C and start it again with the last ``id`` you saw::

    curl -N -H 'Last-Event-ID: <id>' http://127.0.0.1:8000/topics/clock/events

Nothing is missed in between.  Ctrl-C (or SIGTERM) on the server drains it: streams
get a short ``retry:`` and end, then the program exits.
"""

from __future__ import annotations

import sys
import time

import trio

from tidings.trio import Hub, Server, ServerConfig, serve


async def publish_clock(hub: Hub) -> None:
    """The application's part: publish something now and then."""
    while True:
        await hub.publish("clock", time.strftime("%H:%M:%S"), event="tick")
        await trio.sleep(1)


async def main(port: int) -> None:
    hub = Hub()
    config = ServerConfig(heartbeat_interval=15, allow_origin="*")
    async with trio.open_nursery() as nursery:

        async def run_server(task_status: trio.TaskStatus[Server]) -> None:
            await serve(hub, port, config=config, handle_signals=True, task_status=task_status)
            nursery.cancel_scope.cancel()  # drained: stop the clock too

        server: Server = await nursery.start(run_server)
        print(f"listening on {server.url}/topics/clock/events", file=sys.stderr)
        nursery.start_soon(publish_clock, hub)


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 8000)
