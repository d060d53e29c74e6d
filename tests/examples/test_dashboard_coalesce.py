"""examples/dashboard/coalesce.py: bursts of readings become at most one snapshot per window."""

from __future__ import annotations

import importlib.util
import itertools
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from tidings.trio import Hub

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "dashboard" / "coalesce.py"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dashboard_coalesce", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


coalesce = load()
Coalescer = coalesce.Coalescer


def test_a_burst_within_the_window_is_one_snapshot_of_the_latest_values() -> None:
    c = Coalescer(0.5)
    assert c.deadline is None
    assert c.take(100.0) is None
    c.update("cpu", 10.0, now=1.0)
    assert c.deadline == 1.5
    c.update("cpu", 20.0, now=1.1)
    c.update("queue", 3.0, now=1.4)
    assert c.take(1.49) is None
    assert c.deadline == 1.5  # later updates do not push the window back
    assert c.take(1.5) == {"values": {"cpu": 20.0, "queue": 3.0}, "merged": 3}
    assert c.deadline is None
    assert c.take(1.6) is None  # once


def test_a_snapshot_holds_every_value_and_the_next_window_opens_on_the_next_update() -> None:
    c = Coalescer(0.5)
    c.update("cpu", 10.0, now=0.0)
    c.update("queue", 1.0, now=0.1)
    assert c.take(0.5) is not None
    c.update("queue", 2.0, now=3.0)
    assert c.deadline == 3.5
    assert c.take(3.5) == {"values": {"cpu": 10.0, "queue": 2.0}, "merged": 1}


@pytest.mark.parametrize("window", [0.0, -1.0, float("nan")])
def test_the_window_is_positive(window: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        Coalescer(window)


@given(
    gaps=st.lists(st.floats(min_value=0, max_value=2, allow_nan=False), min_size=1, max_size=60),
    names=st.data(),
)
def test_snapshots_are_a_window_apart_and_lose_no_update(
    gaps: list[float], names: st.DataObject
) -> None:
    # The pump's schedule: a due window is taken at its deadline, before a later update.
    window = 0.5
    c = Coalescer(window)
    now = 0.0
    latest: dict[str, float] = {}
    snapshots: list[tuple[float, dict[str, object]]] = []
    for index, gap in enumerate(gaps):
        now += gap
        deadline = c.deadline
        if deadline is not None and deadline <= now:
            snapshot = c.take(deadline)
            assert snapshot is not None
            snapshots.append((deadline, snapshot))
            assert snapshot["values"] == latest
        name = names.draw(st.sampled_from(["cpu", "queue", "latency"]))
        latest[name] = float(index)
        c.update(name, float(index), now)
    deadline = c.deadline
    assert deadline is not None
    final = c.take(deadline)
    assert final is not None
    assert final["values"] == latest
    snapshots.append((deadline, final))
    times = [at for at, _ in snapshots]
    assert all(b - a >= window for a, b in itertools.pairwise(times))
    assert sum(int(s["merged"]) for _, s in snapshots) == len(gaps)  # type: ignore[call-overload]


class RecordingHub(Hub):
    """A hub that notes when each publish happened (virtual time)."""

    def __init__(self) -> None:
        super().__init__()
        self.published: list[tuple[float, str, str | None, dict[str, object]]] = []

    async def publish(self, topic: str, data: str, **kwargs: object) -> object:  # type: ignore[override]
        self.published.append(
            (trio.current_time(), topic, kwargs.get("event"), json.loads(data))  # type: ignore[arg-type]
        )
        return await super().publish(topic, data, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("autojump_clock", [trio.testing.MockClock(autojump_threshold=0)])
async def test_a_burst_of_updates_is_published_once_with_the_latest_values(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    hub = RecordingHub()
    send, receive = trio.open_memory_channel[tuple[str, float]](0)
    nursery.start_soon(coalesce.publish_coalesced, hub, "metrics", receive, 0.5)
    start = trio.current_time()
    # A burst: 100 readings over 99 ms.
    for step in range(100):
        await send.send(("requests", float(step)))
        await send.send(("cpu", float(step % 7)))
        await trio.sleep(0.001)
    await trio.sleep(1)  # the window closes meanwhile, and nothing else comes
    assert hub.published == [
        (
            start + 0.5,
            "metrics",
            "snapshot",
            {"values": {"requests": 99.0, "cpu": 1.0}, "merged": 200},
        )
    ]
    # A second burst, and the channel closed before its window ends: published at once.
    await send.send(("queue", 4.0))
    second = trio.current_time()
    await send.aclose()
    await trio.testing.wait_all_tasks_blocked()
    assert len(hub.published) == 2
    at, _, _, snapshot = hub.published[1]
    assert at == second
    assert snapshot == {"values": {"requests": 99.0, "cpu": 1.0, "queue": 4.0}, "merged": 1}
