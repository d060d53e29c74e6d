"""What holds for the whole suite: Hypothesis profiles, and a deadline for Trio tests.

Hypothesis profiles (``HYPOTHESIS_PROFILE`` picks one; the default is ``ci`` when
``CI=true``, else ``dev``).  None has a per-example deadline: the default 200 ms
fails tests on a loaded machine without saying anything about the code.

* ``dev``: Hypothesis' defaults otherwise (100 examples unless a test says more);
* ``ci``: twice the examples for tests that do not fix their own count;
* ``mutation``: fewer examples, derandomized and with no database, so that a mutant
  is judged quickly and by the same examples each time (``.ci/mutate.py``).

Deadlines: every Trio test (and its fixtures) runs under ``trio.fail_after``, so a
hang fails in seconds with the stack of what hung, instead of stopping the run at
pytest-timeout.  The bound is :data:`DEADLINE` seconds, or :data:`VIRTUAL_DEADLINE`
virtual seconds for a test on a :class:`trio.testing.MockClock` (where the autojump
clock reaches it at once when nothing else is left to happen);
``@pytest.mark.deadline(seconds)`` gives one test another bound.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import settings

pytest_plugins = ["pytester"]

settings.register_profile("dev", deadline=None)
settings.register_profile("ci", deadline=None, max_examples=200, print_blob=True)
settings.register_profile(
    "mutation", deadline=None, max_examples=30, derandomize=True, database=None
)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") == "true" else "dev")
)

#: Seconds a Trio test may run on the real clock.
DEADLINE = 30.0
#: Virtual seconds a Trio test may run on a MockClock.
VIRTUAL_DEADLINE = 3600.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "deadline(seconds): fail the Trio test with trio.TooSlowError after this long "
        f"(default {DEADLINE:g} s, or {VIRTUAL_DEADLINE:g} virtual s on a MockClock)",
    )


def _run_with_deadline(
    seconds: float | None,
    async_fn: Callable[[], Awaitable[Any]],
    *,
    clock: trio.abc.Clock | None = None,
    instruments: Sequence[trio.abc.Instrument] = (),
) -> Any:
    """``trio.run`` for pytest-trio, with the whole test under ``fail_after``."""
    if seconds is None:
        seconds = VIRTUAL_DEADLINE if isinstance(clock, trio.testing.MockClock) else DEADLINE

    async def bounded() -> Any:
        with trio.fail_after(seconds):
            return await async_fn()

    return trio.run(bounded, clock=clock, instruments=instruments)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # After pytest-trio marked the async tests: ours is the first "trio" marker with
    # a run= it finds.
    for item in items:
        if item.get_closest_marker("trio") is None:
            continue
        marker = item.get_closest_marker("deadline")
        seconds = float(marker.args[0]) if marker is not None else None
        item.add_marker(pytest.mark.trio(run=partial(_run_with_deadline, seconds)), append=False)
