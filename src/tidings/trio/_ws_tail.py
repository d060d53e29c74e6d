"""``python -m tidings tail --transport ws ws://host/ws --topic T``.

Prints the same JSON lines as the SSE and long-poll tails: ``{"id", "event",
"data"}`` per event (``"message"`` when the event has no type) and ``{"reset":
true, "cursor"}`` per reset, following the topics through reconnects until the
session gives up or a signal arrives.
"""

from __future__ import annotations

import logging
import ssl
import sys
from collections.abc import Sequence

from tidings.errors import LocalProtocolError
from tidings.trio._tail import emit, event_line, reset_line, run_tail
from tidings.trio.session_client import SessionClosed, open_session
from tidings.ws import EventMessage

__all__ = ["tail_ws"]

log = logging.getLogger("tidings")


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

    async def follow() -> int:
        several = len(topics) > 1
        try:
            async with open_session(
                url, dict.fromkeys(topics, last_event_id), ssl_context=ssl_context
            ) as session:
                async for item in session:
                    if isinstance(item, EventMessage):
                        line = event_line(item.id, item.event, item.data)
                    else:
                        log.warning("reset of %s: continuing from %s", item.topic, item.cursor)
                        line = reset_line(item.cursor)
                    if several:
                        line["topic"] = item.topic
                    emit(line)
        except SessionClosed as exc:
            print(f"tidings tail: {url}: {exc}", file=sys.stderr)
            return 0 if exc.code == 1000 else 1
        except LocalProtocolError as exc:
            print(f"tidings tail: {exc}", file=sys.stderr)
            return 2
        return 0

    return await run_tail(follow)
