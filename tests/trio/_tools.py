"""External programs the interop tests drive (installed by ``.ci/run``)."""

from __future__ import annotations

import os
import shutil

import pytest


def missing(reason: str) -> None:
    """Skip the test for want of a peer program, except on CI, where it fails."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}, and CI=true forbids skipping")
    pytest.skip(reason)


def require_program(*names: str, reason: str) -> str:
    """The path of the first of *names* on ``PATH``; see :func:`missing` otherwise."""
    for name in names:
        path = shutil.which(name)
        if path is not None:
            return path
    missing(reason)
    raise AssertionError("unreachable")  # pragma: no cover
