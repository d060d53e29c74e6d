"""What every ``python -m tidings tail`` transport shares.

The SSE, long-poll and WebSocket tails print the same JSON lines by construction:
each builds its lines with :func:`event_line` and :func:`reset_line`, prints them
with :func:`emit` and runs inside :func:`run_tail`, which stops on SIGINT or SIGTERM
and treats a closed standard output as the reader's choice, not an error.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable

import trio

__all__ = ["emit", "event_line", "reset_line", "run_tail"]

log = logging.getLogger("tidings")


def event_line(id: str, event: str | None, data: str) -> dict[str, object]:
    """The line for one event; ``"message"`` stands for an event without a type."""
    return {"id": id, "event": "message" if event is None else event, "data": data}


def reset_line(cursor: str) -> dict[str, object]:
    """The line for one reset: the tail continues from *cursor*."""
    return {"reset": True, "cursor": cursor}


def emit(line: dict[str, object]) -> None:
    """Print *line* as one JSON line, at once (a reader may be waiting for it)."""
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


def _is_broken_pipe(exc: BaseException) -> bool:
    """Whether *exc* is a broken pipe, alone or as every leaf of an exception group."""
    if isinstance(exc, BaseExceptionGroup):
        matched, rest = exc.split(BrokenPipeError)
        return matched is not None and rest is None
    return isinstance(exc, BrokenPipeError)


async def run_tail(follow: Callable[[], Awaitable[int]]) -> int:
    """Run *follow* until it returns an exit status, or until SIGINT or SIGTERM (then 0).

    A broken pipe on standard output (``tidings tail ... | head``) ends the tail
    with status 0 and sends further output to the null device.
    """
    code = 0
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for signum in signals:
                    log.info("stopping (%s)", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()

            nursery.start_soon(stop_on_signal)
            try:
                code = await follow()
            except BaseException as exc:
                # stdout went away (perhaps reported from inside a client's nursery,
                # wrapped in an exception group): not an error of ours.
                if not _is_broken_pipe(exc):
                    raise
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            nursery.cancel_scope.cancel()
    return code
