"""The suite's own rules (``tests/conftest.py``) do what they promise."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import settings

HERE = Path(__file__).parent


def test_hypothesis_profile_has_no_deadline() -> None:
    assert settings().deadline is None


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    """A pytest run with this suite's conftest and settings."""
    pytester.makeconftest((HERE / "conftest.py").read_text())
    pytester.makeini("[pytest]\ntrio_mode = true\n")
    return pytester


def test_a_hanging_trio_test_fails_at_its_deadline(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        """
        import pytest
        import trio

        @pytest.mark.deadline(0.2)
        async def test_hangs():
            await trio.sleep_forever()

        async def test_done():
            await trio.sleep(0)
        """
    )
    result = suite.runpytest_inprocess()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*TooSlowError*"])


def test_a_hang_on_the_autojump_clock_fails_at_once(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        """
        import trio

        async def test_hangs(autojump_clock):
            await trio.Event().wait()  # nothing will ever set it

        async def test_sleeps_an_hour_less_a_second(autojump_clock):
            await trio.sleep(3599)
        """
    )
    result = suite.runpytest_inprocess("--durations=0")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*TooSlowError*"])
