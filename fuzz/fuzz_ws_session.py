"""atheris harness: the WebSocket session machines (:mod:`tidings.ws`).

The input is a program for one of the two machines:

- :class:`~tidings.ws.SessionServer` (small limits, with or without authorisation)
  gets client text messages -- well-formed ones built from a few topics, cursors
  and ``msg_id`` values, or raw bytes -- binary messages, oversized-message
  notices, the adapter's verdicts (``admit``/``deny``, ``published``,
  ``publish_failed`` for pending and unknown ``msg_id`` values, ``caught_up``) and
  the end of the connection.  Checks: only
  :class:`~tidings.errors.LocalProtocolError`, and only for misuse (input after the
  close, a second message while one awaits authorisation, a verdict on a message
  that is not waiting); never more topics than ``max_topics``; a
  ``CloseConnection`` is the last output and the machine is closed after it; at
  most ``max_errors`` errors; each publish is handed to the adapter once while
  pending and answered once.
- :class:`~tidings.ws.SessionClient` gets server text messages (well-formed events,
  resets, ``subscribed``, ``published`` and ``error`` messages about its topics and
  publishes, or raw bytes), connection ups and downs, and the application's
  subscribes, unsubscribes and publishes.  Checks: only misuse raises; a malformed
  message gives a ``CloseConnection`` instead; an event is reported only for a
  followed topic and, within an epoch, only after the last one reported; the
  outbox never exceeds ``max_outbox``; an acknowledged or refused publish leaves
  it.

Run: ``python fuzz/fuzz_ws_session.py -max_total_time=20`` (see fuzz/README.md).
"""

from __future__ import annotations

import json
import random
import sys
from typing import Any

import atheris

with atheris.instrument_imports(include=["tidings"]):
    from tidings.cursor import Position
    from tidings.errors import InvalidCursor, LocalProtocolError
    from tidings.history import Reset, ResetReason
    from tidings.session import SessionState
    from tidings.ws import (
        Authorize,
        CloseConnection,
        ErrorMessage,
        EventMessage,
        Follow,
        Publish,
        PublishAcknowledged,
        PublishedMessage,
        PublishFailed,
        SessionClient,
        SessionServer,
        SubscribeMessage,
        Unfollow,
    )

_TOPICS = ["a", "b", "c", "d"]
_CURSORS = [None, "earliest", "e.0", "e.3", "f.1", "junk", "e.99999999999999999999"]
_MSG_IDS = ["m1", "m2", "m3", "bad id", ""]
_IDS = ["e.1", "e.2", "e.3", "e.5", "f.1", "f.2", "opaque", "e.0"]


def _client_text(fdp: atheris.FuzzedDataProvider) -> str | bytes:
    kind = fdp.ConsumeIntInRange(0, 4)
    topic = fdp.PickValueInList(_TOPICS)
    if kind == 0:
        obj: dict[str, Any] = {"type": "subscribe", "topic": topic}
        cursor = fdp.PickValueInList(_CURSORS)
        if cursor is not None:
            obj["cursor"] = cursor
    elif kind == 1:
        obj = {"type": "unsubscribe", "topic": topic}
    elif kind == 2:
        obj = {"type": "publish", "topic": topic, "msg_id": fdp.PickValueInList(_MSG_IDS)}
        obj["data"] = "x" * fdp.ConsumeIntInRange(0, 40)
    elif kind == 3:
        return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 40))
    else:
        return '{"type": "subscribe", "topic": "a", "topic": "b"}'
    return json.dumps(obj)


def server(fdp: atheris.FuzzedDataProvider) -> None:
    max_topics = fdp.ConsumeIntInRange(1, 3)
    max_errors = fdp.ConsumeIntInRange(1, 4)
    machine = SessionServer(
        max_topics=max_topics,
        max_message_size=fdp.PickValueInList([8, 64, 1024]),
        max_errors=max_errors,
        replay_chunk=2,
        max_buffered=2,
        authorize=fdp.ConsumeBool(),
    )
    waiting: Authorize | None = None
    pending: set[str] = set()
    errors = 0
    for _ in range(fdp.ConsumeIntInRange(0, 48)):
        if fdp.remaining_bytes() == 0:
            break
        closed = machine.closed
        choice = fdp.ConsumeIntInRange(0, 9)
        misuse = closed and choice in (0, 1, 2, 3, 4)
        # A subscribe or publish while another awaits its verdict is misuse; other
        # messages are fine then.
        maybe = choice == 0 and machine.authorize and waiting is not None
        try:
            if choice == 0:
                outputs = machine.receive_text(_client_text(fdp))
            elif choice == 1:
                outputs = machine.receive_binary()
            elif choice == 2:
                outputs = machine.message_too_big()
            elif choice in (3, 4):
                misuse = misuse or waiting is None
                stale = waiting or Authorize(SubscribeMessage("a"))
                if choice == 3:
                    outputs = machine.admit(stale)
                else:
                    outputs = machine.deny(stale, fdp.PickValueInList([401, 403]), "no")
                waiting = None
            elif choice == 5:
                msg_id = fdp.PickValueInList(_MSG_IDS)
                outputs = machine.published(msg_id, Position("e", 1))
                if outputs and msg_id not in pending:
                    raise AssertionError(f"answered {msg_id}, which is not pending")
                pending.discard(msg_id)
            elif choice == 6:
                msg_id = fdp.PickValueInList(_MSG_IDS)
                outputs = machine.publish_failed(msg_id, "no", retry=fdp.ConsumeBool())
                if outputs and msg_id not in pending:
                    raise AssertionError(f"refused {msg_id}, which is not pending")
                pending.discard(msg_id)
            elif choice == 7:
                outputs = machine.caught_up(fdp.PickValueInList(_TOPICS), Position("e", 2))
            elif choice == 8:
                topic = fdp.PickValueInList(_TOPICS)
                reason = fdp.PickValueInList(list(ResetReason))
                machine.reset_message(topic, Reset(Position("e", 0), reason)).encode()
                outputs = []
            else:
                outputs = machine.connection_closed()
        except LocalProtocolError:
            if not (misuse or maybe):
                raise
            continue
        if misuse:
            raise AssertionError(f"misuse {choice} accepted (closed={closed}, {waiting})")
        for index, output in enumerate(outputs):
            if isinstance(output, Authorize):
                waiting = output
            elif isinstance(output, Publish):
                if output.msg_id in pending:
                    raise AssertionError(f"{output.msg_id} handed over twice")
                pending.add(output.msg_id)
            elif isinstance(output, ErrorMessage):
                errors += 1
                output.encode()
            elif isinstance(output, CloseConnection):
                if index != len(outputs) - 1 or not machine.closed:
                    raise AssertionError(f"close is not the end: {outputs}")
            elif isinstance(output, Follow | Unfollow):
                pass
            else:
                output.encode()
        if machine.closed:
            waiting = None
            pending.clear()
        if len(machine.topics) > max_topics:
            raise AssertionError(f"{len(machine.topics)} topics, at most {max_topics}")
        if errors > max_errors:
            raise AssertionError(f"{errors} errors, at most {max_errors}")


def _server_text(fdp: atheris.FuzzedDataProvider, outbox: list[str]) -> str | bytes:
    kind = fdp.ConsumeIntInRange(0, 6)
    topic = fdp.PickValueInList(_TOPICS)
    msg_id = fdp.PickValueInList(outbox) if outbox and fdp.ConsumeBool() else "m1"
    if kind == 0:
        obj: dict[str, Any] = {"type": "event", "topic": topic, "id": fdp.PickValueInList(_IDS)}
        obj["data"] = "d"
    elif kind == 1:
        obj = {"type": "reset", "topic": topic, "cursor": fdp.PickValueInList(_IDS)}
    elif kind == 2:
        obj = {"type": "subscribed", "topic": topic, "cursor": fdp.PickValueInList(_IDS)}
    elif kind == 3:
        obj = {"type": "published", "msg_id": msg_id, "id": fdp.PickValueInList(_IDS)}
    elif kind == 4:
        obj = {"type": "error", "code": "publish-rejected", "message": "no"}
        if fdp.ConsumeBool():
            obj["msg_id"] = msg_id
    elif kind == 5:
        return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 40))
    else:
        obj = {"type": "event", "topic": topic, "id": "e.1", "data": "x" * 2000}
    return json.dumps(obj)


def client(fdp: atheris.FuzzedDataProvider) -> None:
    max_outbox = fdp.ConsumeIntInRange(1, 3)
    machine = SessionClient(
        random.Random(fdp.ConsumeIntInRange(0, 255)),
        max_outbox=max_outbox,
        max_message_size=1024,
    )
    last: dict[str, Position] = {}
    for _ in range(fdp.ConsumeIntInRange(0, 48)):
        if fdp.remaining_bytes() == 0:
            break
        choice = fdp.ConsumeIntInRange(0, 6)
        connected = machine.connected
        topic = fdp.PickValueInList(_TOPICS)
        try:
            if choice == 0:
                text = _server_text(fdp, [m.msg_id for m in machine.outbox])
                before = {message.msg_id for message in machine.outbox}
                outputs = machine.receive_text(text)
            elif choice == 1:
                # As the adapter does: the session decides, then the connection is up.
                session = machine.session
                if session.state is SessionState.IDLE:
                    session.start(0.0)
                elif session.state is SessionState.WAITING:
                    session.timer(session.next_deadline() or 0.0)
                if session.state is SessionState.CONNECTING:
                    session.connected(0.0)
                machine.connection_made()
                outputs = []
            elif choice == 2:
                machine.connection_lost()
                if machine.session.state is SessionState.OPEN:
                    machine.session.closed(1006, by_peer=True, now=0.0)
                outputs = []
            elif choice == 3:
                cursor = fdp.PickValueInList(_CURSORS[:5])
                machine.subscribe(topic, cursor)
                last.pop(topic, None)
                if cursor is not None and cursor != "earliest":
                    last[topic] = Position.parse(cursor)
                outputs = []
            elif choice == 4:
                machine.unsubscribe(topic)
                last.pop(topic, None)
                outputs = []
            elif choice == 5:
                full = machine.outbox_full
                machine.publish(topic, "x")
                if full:
                    raise AssertionError("published into a full outbox")
                outputs = []
            else:
                outputs = machine.receive_binary()
        except LocalProtocolError:
            if choice == 0 and connected:
                raise
            if choice == 1 and not connected:
                raise
            if choice == 5 and not machine.outbox_full:
                raise
            if choice not in (0, 1, 5):
                raise
            continue
        for index, output in enumerate(outputs):
            if isinstance(output, EventMessage):
                if output.topic not in machine.topics:
                    raise AssertionError(f"an event of {output.topic}, which is not followed")
                position = output.position
                previous = last.get(output.topic)
                if (
                    position is not None
                    and previous is not None
                    and position.epoch == previous.epoch
                    and position.offset <= previous.offset
                ):
                    raise AssertionError(f"{position} reported after {previous}")
                if position is not None:
                    last[output.topic] = position
                else:
                    last.pop(output.topic, None)
            elif isinstance(output, PublishAcknowledged | PublishFailed):
                if output.msg_id not in before or output.msg_id in {
                    message.msg_id for message in machine.outbox
                }:
                    raise AssertionError(f"{output} for a publish not in the outbox")
            elif isinstance(output, CloseConnection):
                if index != len(outputs) - 1:
                    raise AssertionError(f"close is not the end: {outputs}")
            elif hasattr(output, "cursor") and output.topic in machine.topics:
                # reset / subscribed: the topic continues from their cursor.
                try:
                    last[output.topic] = Position.parse(output.cursor)
                except InvalidCursor:
                    last.pop(output.topic, None)
            elif isinstance(output, PublishedMessage):
                raise AssertionError("a raw published message leaked out")
        if len(machine.outbox) > max_outbox:
            raise AssertionError(f"{len(machine.outbox)} publishes in the outbox")


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    if fdp.ConsumeBool():
        server(fdp)
    else:
        client(fdp)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
