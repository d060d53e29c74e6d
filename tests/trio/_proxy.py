"""A TCP proxy for tests that cuts connections at random, reproducibly.

Each accepted connection is relayed to the target; for the first ``max_cuts``
connections (every one when ``max_cuts`` is ``None``) the proxy draws (from a seeded
``random.Random``) how many bytes of the server's answer to pass on, from
``min_bytes`` to ``max_bytes``, and then closes both sides abruptly -- in the middle
of a header, a chunk, an HTTP/2 frame or an event, as luck has it.  With a
``max_cuts``, later connections are relayed untouched, so a test always finishes;
without one, a client finishes only by making progress on every connection.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass, field

import trio


@dataclass
class ChaosProxy:
    target_port: int
    rng: random.Random
    max_cuts: int | None = 30
    max_bytes: int = 64 * 1024
    min_bytes: int = 0
    target_host: str = "127.0.0.1"
    #: More target ports: each new connection goes to the next one, in turn (several
    #: servers behind one address, as behind a load balancer).
    more_targets: list[int] = field(default_factory=list)
    port: int = 0
    connections: int = 0
    cuts: int = 0
    cut_at: list[int] = field(default_factory=list)

    async def start(self, nursery: trio.Nursery) -> ChaosProxy:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, self._relay, 0, host="127.0.0.1")
        )
        self.port = listeners[0].socket.getsockname()[1]
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _relay(self, client: trio.SocketStream) -> None:
        self.connections += 1
        budget: int | None = None
        if self.max_cuts is None or self.connections <= self.max_cuts:
            budget = self.rng.randint(self.min_bytes, self.max_bytes)
            self.cut_at.append(budget)
        ports = [self.target_port, *self.more_targets]
        port = ports[(self.connections - 1) % len(ports)]
        try:
            server = await trio.open_tcp_stream(self.target_host, port)
        except OSError:
            # The server refused or reset the connection (it may be busy or just
            # restarting): like a real proxy, end the client's connection.
            await trio.aclose_forcefully(client)
            return
        except BaseException:
            await trio.aclose_forcefully(client)
            raise
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, client, server, None, nursery.cancel_scope)
                nursery.start_soon(self._pump, server, client, budget, nursery.cancel_scope)
        finally:
            # Shielded: in a cancelled task the first close would raise Cancelled
            # and skip the second.
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(client)
                await trio.aclose_forcefully(server)

    async def _pump(
        self,
        source: trio.abc.Stream,
        sink: trio.abc.Stream,
        budget: int | None,
        scope: trio.CancelScope,
    ) -> None:
        try:
            while True:
                if budget is not None and budget <= 0:
                    self.cuts += 1
                    return
                data = await source.receive_some(16384)
                if not data:
                    return
                if budget is not None:
                    data = data[:budget]
                    budget -= len(data)
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            # Either side ending (or the cut) ends the whole relay, abruptly.
            scope.cancel()
