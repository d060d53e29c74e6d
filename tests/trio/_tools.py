"""External programs the interop tests drive (installed by ``.ci/run``)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import pytest
import trio


def missing(reason: str) -> None:
    """Skip the test for want of a peer program, except on CI, where it fails."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}, and CI=true forbids skipping")
    pytest.skip(reason)


#: Where ``.ci/run`` installs the node packages the interop tests use (pinned, outside
#: the source tree); ``TIDINGS_NODE_MODULES`` names another ``node_modules``.
NODE_MODULES = Path(
    os.environ.get("TIDINGS_NODE_MODULES")
    or Path(__file__).resolve().parents[2] / ".ci-peers" / "node_modules"
)


def require_node_package(name: str) -> Path:
    """The directory of node package *name* in :data:`NODE_MODULES` (give node
    ``NODE_PATH=NODE_MODULES``); see :func:`missing` otherwise.  Tests never install
    anything: ``.ci/run`` does, before the tests."""
    package = NODE_MODULES / name
    if not (package / "package.json").is_file():
        missing(f"node package {name!r} is not installed in {NODE_MODULES} (.ci/run installs it)")
    return package


def require_program(*names: str, reason: str) -> str:
    """The path of the first of *names* on ``PATH``; see :func:`missing` otherwise."""
    for name in names:
        path = shutil.which(name)
        if path is not None:
            return path
    missing(reason)
    raise AssertionError("unreachable")  # pragma: no cover


async def stop_process_group(process: trio.Process, grace: float) -> None:
    """SIGTERM *process* (a session leader), wait at most *grace* s, then SIGKILL its
    whole process group, and reap it; shielded so that it runs to its end."""
    with trio.CancelScope(shield=True):
        with suppress(ProcessLookupError):
            process.terminate()
        with trio.move_on_after(grace):
            await process.wait()
        # Whether or not the leader left in time: its workers may still be there.
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()


async def _discard(stream: trio.abc.ReceiveStream, scope: trio.CancelScope) -> None:
    with scope:
        while await stream.receive_some():
            pass


@asynccontextmanager
async def hypercorn_app(
    nursery: trio.Nursery,
    app: str,
    *,
    pythonpath: str,
    args: tuple[str, ...] = (),
    env: Mapping[str, str] | None = None,
    grace: float = 3.0,
) -> AsyncIterator[tuple[str, trio.Process]]:
    """Run ``hypercorn --worker-class trio <args> <app>`` in a process of its own;
    yields its ``http://host:port`` URL and the process.

    Hypercorn runs its worker in a child process (and multiprocessing may add a
    resource tracker), all sharing our stderr pipe, and does not always exit on
    SIGTERM: it runs in its own session and teardown ends the whole process group
    (SIGTERM, at most *grace* seconds, then SIGKILL; always reaped).
    """
    command = [
        sys.executable,
        "-m",
        "hypercorn",
        "--worker-class",
        "trio",
        "--bind",
        "127.0.0.1:0",
        "--log-level",
        "info",
        *args,
        app,
    ]
    process = await trio.lowlevel.open_process(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {}), "PYTHONPATH": pythonpath},
        start_new_session=True,
    )
    assert process.stderr is not None
    discard = trio.CancelScope()
    try:
        buffer = b""
        with trio.fail_after(30):
            while (match := re.search(rb"Running on (http://\S+)", buffer)) is None:
                chunk = await process.stderr.receive_some()
                assert chunk, buffer
                buffer += chunk
        nursery.start_soon(_discard, process.stderr, discard)
        yield match.group(1).decode(), process
    finally:
        discard.cancel()
        await stop_process_group(process, grace)
        await process.stderr.aclose()
