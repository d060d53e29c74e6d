"""``python -m tidings tail --transport ws ws://host/ws --topic T``.

Prints the same JSON lines as the SSE and long-poll tails: ``{"id", "event",
"data"}`` per event (``"message"`` when the event has no type) and ``{"reset":
true, "cursor"}`` per reset, following the topics through reconnects until the
session gives up or a signal arrives.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import ssl
import sys
from collections.abc import Sequence

import trio

from tidings.errors import LocalProtocolError
from tidings.trio.session_client import SessionClosed, open_session
from tidings.ws import EventMessage

__all__ = ["tail_ws"]

log = logging.getLogger("tidings")


def _emit(line: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


async def tail_ws(
    url: str,
    topics: Sequence[str],
    last_event_id: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> int:
    """Follow *topics* over the session at *url*; the exit status (0, 1 or 2).

    *last_event_id* resumes every topic after that id (``"earliest"``: everything
    retained).  With several topics each line also carries ``"topic"``.
    """
    if not topics:
        print("tidings tail: --transport ws needs at least one --topic", file=sys.stderr)
        return 2
    code = 0
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for signum in signals:
                    log.info("stopping (%s)", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()

            nursery.start_soon(stop_on_signal)
            several = len(topics) > 1
            try:
                async with open_session(
                    url, dict.fromkeys(topics, last_event_id), ssl_context=ssl_context
                ) as session:
                    async for item in session:
                        line: dict[str, object]
                        if isinstance(item, EventMessage):
                            kind = "message" if item.event is None else item.event
                            line = {"id": item.id, "event": kind, "data": item.data}
                        else:
                            log.warning("reset of %s: continuing from %s", item.topic, item.cursor)
                            line = {"reset": True, "cursor": item.cursor}
                        if several:
                            line["topic"] = item.topic
                        _emit(line)
            except SessionClosed as exc:
                print(f"tidings tail: {url}: {exc}", file=sys.stderr)
                code = 0 if exc.code == 1000 else 1
            except LocalProtocolError as exc:
                print(f"tidings tail: {exc}", file=sys.stderr)
                code = 2
            except BrokenPipeError:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            nursery.cancel_scope.cancel()
    return code
