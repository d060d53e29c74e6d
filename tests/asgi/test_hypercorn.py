"""tidings.asgi served by a real hypercorn process (its trio worker), used by real clients."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from tidings.backoff import Backoff, NoJitter
from tidings.events import Event, ResetNotice
from tidings.trio import open_event_stream, open_long_poll, open_session
from tidings.trio.client._http import open_request

from ..trio._proxy import ChaosProxy
from ..trio._tools import hypercorn_app

HERE = str(Path(__file__).parent)
SRC = str(Path(__file__).resolve().parents[2] / "src")
PYTHONPATH = f"{HERE}:{SRC}"
TOKEN = "s3cret-token"


@pytest.fixture
async def asgi(nursery: trio.Nursery) -> AsyncIterator[str]:
    async with hypercorn_app(nursery, "apps:plain()", pythonpath=PYTHONPATH) as (url, _):
        yield url


async def publish(url: str, topic: str, data: str, **headers: str) -> tuple[int, str]:
    async with open_request(
        "POST", f"{url}/topics/{topic}", body=data.encode(), headers=list(headers.items())
    ) as response:
        body = (await response.read()).decode()
        return response.status, body


async def publish_ok(url: str, topic: str, data: str) -> str:
    status, body = await publish(url, topic, data)
    assert status == 201, body
    ident: str = json.loads(body)["id"]
    return ident


@pytest.mark.parametrize("http2", [False, True], ids=["http1.1", "h2c"])
async def test_sse_replays_after_last_event_id_then_goes_live(asgi: str, http2: bool) -> None:
    ids = [await publish_ok(asgi, "news", f"n{i}") for i in range(3)]
    with trio.fail_after(15):
        async with open_event_stream(
            f"{asgi}/topics/news/events", last_event_id=ids[0], http2=http2
        ) as stream:
            got = [await stream.__anext__() for _ in range(2)]
            assert [(e.id, e.data) for e in got] == [(ids[1], "n1"), (ids[2], "n2")]  # type: ignore[union-attr]
            live = await publish_ok(asgi, "news", "live")
            event = await stream.__anext__()
            assert isinstance(event, Event)
            assert (event.id, event.data, event.topic) == (live, "live", "news")
            assert stream.http_version == ("2" if http2 else "1.1")


async def test_sse_reset_for_an_unknown_id_is_followed_by_what_is_retained(asgi: str) -> None:
    first = await publish_ok(asgi, "t", "x")
    with trio.fail_after(15):
        async with open_event_stream(f"{asgi}/topics/t/events", last_event_id="gone.9") as stream:
            reset = await stream.__anext__()
            event = await stream.__anext__()
    assert isinstance(reset, ResetNotice)
    assert reset.reason == "unknown-epoch"
    assert isinstance(event, Event)
    assert event.id == first


async def test_a_held_long_poll_is_woken_by_a_publish(asgi: str) -> None:
    head = await publish_ok(asgi, "t", "old")
    with trio.fail_after(15):
        async with (
            open_long_poll(f"{asgi}/topics/t/poll", cursor=head, hold=10) as poll,
            trio.open_nursery() as nursery,
        ):

            async def later() -> None:
                await trio.testing.wait_all_tasks_blocked(0.2)
                await publish_ok(asgi, "t", "new")

            nursery.start_soon(later)
            event = await poll.__anext__()
    assert isinstance(event, Event)
    assert event.data == "new"


async def test_long_poll_answers_304_to_a_conditional_request_with_nothing_new(asgi: str) -> None:
    head = await publish_ok(asgi, "t", "x")
    with trio.fail_after(15):
        async with open_request(
            "GET", f"{asgi}/topics/t/poll?timeout=0.2", headers=[("If-None-Match", f'"{head}"')]
        ) as response:
            assert response.status == 304
            assert dict(response.headers)[b"etag"] == f'"{head}"'.encode()


async def test_websocket_sessions_resume_from_a_cursor_and_publish(asgi: str) -> None:
    ids = [await publish_ok(asgi, "room", f"m{i}") for i in range(3)]
    ws = asgi.replace("http://", "ws://") + "/ws"
    with trio.fail_after(15):
        async with open_session(ws, {"room": ids[0]}) as session:
            got = [await session.__anext__() for _ in range(2)]
            assert [e.data for e in got] == ["m1", "m2"]  # type: ignore[union-attr]
            published = await session.publish("room", "from ws")
            echo = await session.__anext__()
    assert isinstance(echo, Event)
    assert (echo.id, echo.data) == (published, "from ws")


async def test_no_event_is_lost_or_repeated_through_a_cutting_proxy(
    asgi: str, nursery: trio.Nursery
) -> None:
    port = int(asgi.rsplit(":", 1)[1])
    proxy = await ChaosProxy(
        port, random.Random(5), max_cuts=12, min_bytes=200, max_bytes=3000
    ).start(nursery)
    start = await publish_ok(asgi, "chaos", "start")
    total = 300
    seen: list[str] = []
    with trio.fail_after(60):
        async with open_event_stream(
            f"http://127.0.0.1:{proxy.port}/topics/chaos/events",
            last_event_id=start,
            backoff=Backoff(NoJitter(base=0.01, cap=0.05)),
        ) as stream:
            for i in range(total):
                await publish_ok(asgi, "chaos", str(i))
            async for item in stream:
                assert isinstance(item, Event), item
                seen.append(item.data)
                if len(seen) == total:
                    break
    assert seen == [str(i) for i in range(total)]
    assert proxy.cuts > 0


async def test_the_auth_hook_guards_publishing_under_asgi(nursery: trio.Nursery) -> None:
    async with hypercorn_app(
        nursery, "apps:guarded()", pythonpath=PYTHONPATH, env={"TIDINGS_TEST_TOKEN": TOKEN}
    ) as (url, _):
        with trio.fail_after(15):
            refused, _ = await publish(url, "t", "x")
            wrong, _ = await publish(url, "t", "x", Authorization="Bearer nope")
            admitted, _ = await publish(url, "t", "x", Authorization=f"Bearer {TOKEN}")
    assert (refused, wrong, admitted) == (401, 403, 201)


async def test_quart_trio_serves_its_page_and_tidings_under_a_prefix(nursery: trio.Nursery) -> None:
    async with hypercorn_app(nursery, "apps:quart()", pythonpath=PYTHONPATH) as (url, _):
        with trio.fail_after(15):
            async with open_request("GET", url + "/") as response:
                assert response.status == 200
                assert b"the chat page" in await response.read()
            ident = await publish_ok(url + "/rt", "lobby", "hello")
            async with open_request(
                "GET", f"{url}/rt/topics/lobby/poll?cursor=earliest&timeout=0"
            ) as response:
                answer = json.loads(await response.read())
            async with open_request("GET", f"{url}/topics/lobby/poll") as response:
                outside = response.status
            async with open_event_stream(
                f"{url}/rt/topics/lobby/events", last_event_id="earliest"
            ) as stream:
                event = await stream.__anext__()
    assert [e["id"] for e in answer["events"]] == [ident]
    assert outside == 404  # only under the prefix
    assert isinstance(event, Event)
    assert event.data == "hello"
