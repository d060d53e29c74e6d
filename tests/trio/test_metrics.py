"""``GET /metrics``: every counter moves by exactly what happened, read as Prometheus
reads it (the official parser), while clients of every transport come and go."""

from __future__ import annotations

import json
import random
from functools import partial

import pytest
import trio
import trio.testing

from tidings.cursor import new_epoch
from tidings.history import MemoryHistory
from tidings.trio import Hub, Server, ServerConfig, default_router, metrics_page, serve
from tidings.trio.hub import Subscription

from .conftest import HTTP1
from .test_ws_server import RawClient, open_ws, read_messages_until, recv, send

parser = pytest.importorskip("prometheus_client.parser")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(server: Server) -> Samples:
    client = HTTP1(await trio.open_tcp_stream("127.0.0.1", server.port))
    try:
        status, headers, body = await client.request("GET", "/metrics")
    finally:
        await trio.aclose_forcefully(client.stream)
    assert status == 200
    assert headers[b"content-type"].startswith(b"text/plain; version=")
    samples: Samples = {}
    for family in parser.text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples) -> dict[str, float]:
    """Every sample that changed, by a readable key."""
    out: dict[str, float] = {}
    for key in before.keys() | after.keys():
        delta = after.get(key, 0.0) - before.get(key, 0.0)
        if delta:
            name, labels = key
            out[name + "".join(f",{k}={v}" for k, v in sorted(labels))] = delta
    return out


async def start(nursery: trio.Nursery, hub: Hub, **config: object) -> Server:
    router = default_router()
    router.add("/metrics", {"GET": metrics_page()})
    server: Server = await nursery.start(
        partial(serve, hub, 0, config=ServerConfig(**config), router=router)  # type: ignore[arg-type]
    )
    return server


async def test_counters_move_by_exactly_what_happened(nursery: trio.Nursery) -> None:
    hub = Hub(MemoryHistory(new_epoch(random.Random(3)), max_events=100))
    server = await start(nursery, hub, subscriber_max_events=4)
    with trio.fail_after(20):
        before = await scrape(server)
        assert value(before, "tidings_published_total") == 0

        # One SSE stream and one WebSocket session follow "t" live; a scrape sees them.
        sse = HTTP1(await trio.open_tcp_stream("127.0.0.1", server.port))
        await sse.send("GET", "/topics/t/events")
        assert (await sse.response()).status_code == 200
        async with open_ws(server) as ws:
            await send(ws, type="subscribe", topic="t")
            assert (await recv(ws))["type"] == "subscribed"
            during = await scrape(server)
            assert value(during, "tidings_subscribers", transport="sse") == 1
            assert value(during, "tidings_subscribers", transport="ws") == 1
            assert value(during, "tidings_connections", transport="sse", http_version="1.1") == 1
            assert value(during, "tidings_connections", transport="ws", http_version="1.1") == 1
            # The scrape itself is a plain HTTP request in progress.
            assert value(during, "tidings_connections", transport="http", http_version="1.1") == 1

            # Three publishes over HTTP reach both, live.
            publisher = HTTP1(await trio.open_tcp_stream("127.0.0.1", server.port))
            ids = []
            for n in range(3):
                status, _, body = await publisher.request("POST", "/topics/t", body=str(n).encode())
                assert status == 201
                ids.append(json.loads(body)["id"])
            assert [e.last_event_id for e in await sse.events(3)] == ids
            assert [(await recv(ws))["id"] for _ in range(3)] == ids

        # A long poll from the start gets the three from the history.
        status, _, body = await publisher.request("GET", "/topics/t/poll?cursor=earliest&timeout=0")
        assert status == 200
        assert [e["id"] for e in json.loads(body)["events"]] == ids
        # A stream resuming from an epoch the server never had: one reset, then the
        # three retained events.
        resumed = HTTP1(await trio.open_tcp_stream("127.0.0.1", server.port))
        await resumed.send("GET", "/topics/t/events", [("last-event-id", "nosuchepoch.7")])
        assert (await resumed.response()).status_code == 200
        reset, *replayed = await resumed.events(4)
        assert reset.type == "tidings.reset"
        assert json.loads(reset.data)["reason"] == "unknown-epoch"
        assert [e.last_event_id for e in replayed] == ids
        # Refusals: a foreign page publishing, and a path parameter that is no topic.
        status, _, _ = await publisher.request(
            "POST", "/topics/t", [("origin", "http://evil.example")], b"x"
        )
        assert status == 403
        status, _, _ = await publisher.request("GET", "/topics/no%20topic/events")
        assert status == 400
        await trio.aclose_forcefully(sse.stream)
        await trio.aclose_forcefully(resumed.stream)
        await trio.aclose_forcefully(publisher.stream)
        await trio.testing.wait_all_tasks_blocked()  # the server saw them all go

        after = await scrape(server)
    # The replayed events were never live: only the six live deliveries are timed.
    assert moved(before, after) == {
        "tidings_published_total": 3,
        "tidings_delivered_total,transport=sse": 6,
        "tidings_delivered_total,transport=ws": 3,
        "tidings_delivered_total,transport=poll": 3,
        "tidings_resets_total,reason=unknown-epoch": 1,
        "tidings_rejected_total,reason=auth": 1,
        "tidings_rejected_total,reason=bad_request": 1,
        **{k: v for k, v in moved(before, after).items() if "publish_to_delivery" in k},
    }
    # A sample of the six live deliveries (one batch in 8 per subscriber, and every
    # write from the publisher's task): at least each subscriber's first batch.
    timed = value(after, "tidings_publish_to_delivery_seconds_count")
    assert 2 <= timed <= 6
    assert value(after, "tidings_publish_to_delivery_seconds_bucket", le="+Inf") == timed
    assert 0 <= value(after, "tidings_publish_to_delivery_seconds_sum") < 20
    # Everything that ended left the gauges.
    for transport in ("sse", "ws", "poll"):
        assert value(after, "tidings_subscribers", transport=transport) == 0
        assert value(after, "tidings_connections", transport=transport, http_version="1.1") == 0


async def test_a_slow_subscriber_counts_as_an_overflow(nursery: trio.Nursery) -> None:
    hub = Hub(MemoryHistory(new_epoch(random.Random(4)), max_events=100))
    server = await start(nursery, hub, subscriber_max_events=4)
    # A session over a stream with no buffer at all: while its client does not
    # read, the server's writes block and the subscription's buffer fills up.
    client, remote = trio.testing.lockstep_stream_pair()
    nursery.start_soon(server.serve_stream, remote)
    raw = RawClient(client)
    with trio.fail_after(20):
        before = await scrape(server)
        await raw.handshake()
        await raw.send(type="subscribe", topic="slow")
        await raw.next_event()  # subscribed
        [subscription] = server.app.subscriptions
        assert isinstance(subscription, Subscription)
        stored = [hub.publish_nowait("slow", "0")]
        await trio.testing.wait_all_tasks_blocked()  # the session is stuck writing it
        stored += [hub.publish_nowait("slow", str(n)) for n in range(1, 30)]
        assert subscription.overflows == 1
        messages = await read_messages_until(raw, stored[-1].format())
        assert len(messages) == 30
        after = await scrape(server)
    delta = moved(before, after)
    assert delta["tidings_overflows_total"] == 1
    assert delta["tidings_published_total"] == 30
    # Still subscribed: a scrape counts what the live session delivered so far.
    assert delta["tidings_delivered_total,transport=ws"] == 30
    assert value(after, "tidings_subscribers", transport="ws") == 1


async def test_connections_over_the_limit_count_as_rejected(nursery: trio.Nursery) -> None:
    hub = Hub(MemoryHistory(new_epoch(random.Random(5)), max_events=10))
    server = await start(nursery, hub, max_connections=1)
    with trio.fail_after(20):
        held = HTTP1(await trio.open_tcp_stream("127.0.0.1", server.port))
        await held.send("GET", "/topics/t/events")
        assert (await held.response()).status_code == 200
        extra = HTTP1(await trio.open_tcp_stream("127.0.0.1", server.port))
        status, _, _ = await extra.request("GET", "/topics/t/poll?timeout=0")
        assert status == 503
        await trio.aclose_forcefully(extra.stream)
        await trio.aclose_forcefully(held.stream)
    assert hub.metrics.rejected == {"limit": 1}


async def test_a_held_poll_is_a_poll_subscriber(nursery: trio.Nursery) -> None:
    hub = Hub(MemoryHistory(new_epoch(random.Random(6)), max_events=10))
    server = await start(nursery, hub)
    with trio.fail_after(20):
        poller = HTTP1(await trio.open_tcp_stream("127.0.0.1", server.port))
        _status, _, body = await poller.request("GET", "/topics/t/poll?timeout=0")
        cursor = json.loads(body)["cursor"]
        await poller.send("GET", f"/topics/t/poll?cursor={cursor}&timeout=60")
        await trio.testing.wait_all_tasks_blocked()  # the server holds it
        during = await scrape(server)
        assert value(during, "tidings_subscribers", transport="poll") == 1
        assert value(during, "tidings_connections", transport="poll", http_version="1.1") == 1
        stored = await hub.publish("t", "x")
        response = await poller.response()
        assert response.status_code == 200
        assert [e["id"] for e in json.loads(await poller.body())["events"]] == [stored.format()]
        await trio.aclose_forcefully(poller.stream)
        await trio.testing.wait_all_tasks_blocked()
        after = await scrape(server)
    assert value(after, "tidings_subscribers", transport="poll") == 0
    assert moved(during, after)["tidings_delivered_total,transport=poll"] == 1
