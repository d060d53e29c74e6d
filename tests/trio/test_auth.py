"""One authorisation hook on every transport, and idempotent HTTP publishing."""

from __future__ import annotations

import hmac
import json

import pytest
import trio

from tidings.errors import LocalProtocolError
from tidings.trio import Action, Hub, Refusal, Request, Server, ServerConfig, publish_token

from .conftest import Connect, StartServer
from .test_ws_server import open_ws, recv, send

Seen = list[tuple[str, str | None, str | None]]


def recording_hook(seen: Seen):  # type: ignore[no-untyped-def]
    """Admits a "session=ok" cookie; refuses topic "secret" with 403, the rest 401."""

    async def hook(request: Request, action: Action, topic: str | None) -> Refusal | None:
        seen.append((action.value, topic, request.cookie("session")))
        if topic == "secret":
            return Refusal(403, "not for you")
        if request.cookie("session") == "ok":
            return None
        return Refusal(401, "log in first", [(b"www-authenticate", b'Bearer realm="t"')])

    return hook


@pytest.fixture
async def guarded(start_server: StartServer) -> tuple[Server, Seen]:
    seen: Seen = []
    server = await start_server(config=ServerConfig(auth=recording_hook(seen)))
    return server, seen


@pytest.mark.parametrize("path", ["/topics/news/events", "/topics/news/poll?timeout=0"])
async def test_reading_is_refused_with_the_hooks_status_and_headers(
    guarded: tuple[Server, Seen], connect: Connect, path: str
) -> None:
    server, seen = guarded
    client = await connect(server)
    with trio.fail_after(10):
        status, headers, body = await client.request("GET", path)
    assert status == 401
    assert headers[b"www-authenticate"] == b'Bearer realm="t"'
    assert body == b"log in first\n"
    assert seen == [("subscribe", "news", None)]


async def test_reading_is_admitted_by_the_hook(
    guarded: tuple[Server, Seen], connect: Connect, hub: Hub
) -> None:
    server, seen = guarded
    await hub.publish("news", "x")
    client = await connect(server)
    with trio.fail_after(10):
        status, _, body = await client.request(
            "GET", "/topics/news/poll?cursor=earliest&timeout=0", [("cookie", "a=1; session=ok")]
        )
        assert status == 200
        assert [e["data"] for e in json.loads(body)["events"]] == ["x"]
        status, _, _ = await client.request(
            "GET", "/topics/secret/poll?timeout=0", [("cookie", "session=ok")]
        )
    assert status == 403
    assert seen[-1] == ("subscribe", "secret", "ok")


async def test_publishing_is_refused_before_the_body_is_read(
    guarded: tuple[Server, Seen], connect: Connect, hub: Hub
) -> None:
    server, seen = guarded
    client = await connect(server)
    with trio.fail_after(10):
        status, _, _ = await client.request("POST", "/topics/news", body=b"x")
    assert status == 401
    assert seen == [("publish", "news", None)]
    assert hub.history.memory.head("news").offset == 0  # type: ignore[attr-defined]


async def test_the_publish_token_guards_post_only_and_is_compared_in_constant_time(
    start_server: StartServer, connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    server = await start_server(config=ServerConfig(auth=publish_token("s3cret")))
    client = await connect(server)
    with trio.fail_after(10):
        missing, headers, _ = await client.request("POST", "/topics/t", body=b"x")
        wrong, _, _ = await client.request(
            "POST", "/topics/t", [("authorization", "Bearer guess")], body=b"x"
        )
        right, _, body = await client.request(
            "POST", "/topics/t", [("authorization", "Bearer s3cret")], body=b"x"
        )
        reading, _, _ = await client.request("GET", "/topics/t/poll?timeout=0")
    assert (missing, wrong, right, reading) == (401, 403, 201, 200)
    assert headers[b"www-authenticate"].startswith(b"Bearer")
    assert compared == [(b"Bearer guess", b"Bearer s3cret"), (b"Bearer s3cret", b"Bearer s3cret")]
    assert json.loads(body)["id"]


async def test_websocket_handshake_and_every_message_ask_the_hook(
    start_server: StartServer, hub: Hub
) -> None:
    seen: Seen = []

    async def hook(request: Request, action: Action, topic: str | None) -> Refusal | None:
        seen.append((action.value, topic, request.header(b"origin") and "browser"))
        if action is Action.CONNECT:
            return None
        if topic == "secret":
            return Refusal(403, "not for you")
        if action is Action.PUBLISH and topic == "readonly":
            return Refusal(401, "log in to publish")
        return None

    server = await start_server(config=ServerConfig(auth=hook))
    async with open_ws(server) as ws:
        await send(ws, type="subscribe", topic="secret")
        error = await recv(ws)
        assert (error["type"], error["code"], error["topic"]) == ("error", "forbidden", "secret")
        await send(ws, type="publish", topic="readonly", msg_id="m1", data="x")
        error = await recv(ws)
        assert (error["code"], error["msg_id"]) == ("unauthorized", "m1")
        # The connection stays up, and admitted messages work.
        await send(ws, type="subscribe", topic="news")
        assert (await recv(ws))["type"] == "subscribed"
        await send(ws, type="publish", topic="news", msg_id="m2", data="hello")
        got = [await recv(ws) for _ in range(2)]
        assert {m["type"] for m in got} == {"event", "published"}
    assert seen[0] == ("connect", None, None)
    assert [(a, t) for a, t, _ in seen[1:]] == [
        ("subscribe", "secret"),
        ("publish", "readonly"),
        ("subscribe", "news"),
        ("publish", "news"),
    ]
    assert hub.history.memory.head("readonly").offset == 0  # type: ignore[attr-defined]


async def test_a_failing_hook_refuses_with_500(
    start_server: StartServer, connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    async def hook(request: Request, action: Action, topic: str | None) -> Refusal | None:
        raise RuntimeError("database down")

    server = await start_server(config=ServerConfig(auth=hook))
    client = await connect(server)
    with trio.fail_after(10):
        status, _, _ = await client.request("GET", "/topics/t/poll?timeout=0")
    assert status == 500
    assert "authorisation hook failed" in caplog.text


async def test_an_idempotency_key_makes_a_resent_post_store_once(
    server: Server, connect: Connect, hub: Hub
) -> None:
    client = await connect(server)
    key = [("idempotency-key", "5f1c-resend-me")]
    with trio.fail_after(10):
        first = await client.request("POST", "/topics/t", key, body=b"once")
        again = await client.request("POST", "/topics/t", key, body=b"once")
        other = await client.request("POST", "/topics/u", key, body=b"other topic")
        bad = await client.request("POST", "/topics/t", [("idempotency-key", "")], body=b"x")
    assert first[0] == again[0] == other[0] == 201
    assert json.loads(first[2]) == json.loads(again[2])
    assert hub.history.memory.stats("t")[0] == 1  # type: ignore[attr-defined]
    assert bad[0] == 400


async def test_another_clients_idempotency_key_cannot_suppress_its_post(
    server: Server, connect: Connect, hub: Hub
) -> None:
    # Someone who learnt (or guessed) a client's key posts first, with other data.
    key = [("idempotency-key", "a-key-someone-else-uses")]
    with trio.fail_after(10):
        attacker = await (await connect(server)).request("POST", "/topics/t", key, b"forged")
        victim = await connect(server)
        real = await victim.request("POST", "/topics/t", key, b"real")
        resent = await victim.request("POST", "/topics/t", key, b"real")
    assert attacker[0] == real[0] == resent[0] == 201
    assert json.loads(real[2]) != json.loads(attacker[2])
    assert json.loads(resent[2]) == json.loads(real[2])
    replay = hub.history.memory.read("t", "earliest")  # type: ignore[attr-defined]
    assert [event.data for event in replay.events] == ["forged", "real"]


def test_refusals_are_checked() -> None:
    with pytest.raises(LocalProtocolError, match=r"400\.\.599"):
        Refusal(200, "ok")
    with pytest.raises(LocalProtocolError, match="one line"):
        Refusal(403, "a\nb")
    with pytest.raises(LocalProtocolError, match="publish token"):
        publish_token("has space")


async def test_a_cross_site_post_is_refused_and_a_same_origin_one_admitted(
    server: Server, connect: Connect, hub: Hub
) -> None:
    client = await connect(server)
    host = "test"  # the Host header the test client sends
    plain = ("content-type", "text/plain")  # a "simple" request: no CORS preflight
    with trio.fail_after(10):
        evil = await client.request(
            "POST", "/topics/t", [("origin", "http://evil.example"), plain], body=b"x"
        )
        same = await client.request(
            "POST", "/topics/t", [("origin", f"http://{host}"), plain], body=b"y"
        )
        tool = await client.request("POST", "/topics/t", [plain], body=b"z")  # curl, no Origin
    assert (evil[0], same[0], tool[0]) == (403, 201, 201)
    assert evil[2] == b"Origin not allowed\n"
    assert hub.history.memory.stats("t")[0] == 2  # type: ignore[attr-defined]
