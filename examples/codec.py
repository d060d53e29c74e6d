"""Encode a few server-sent events, then parse them back from arbitrary chunks.

    python examples/codec.py

No network: this is the sans-IO codec alone.  A server writes what ``encode()``
returns to the response body; a client feeds whatever pieces of the body arrive
to ``receive_data`` and gets whole events back.
"""

from __future__ import annotations

import json
import random

from tidings.errors import LocalProtocolError
from tidings.sse.encoder import ServerSentEvent, encode_comment, encode_event
from tidings.sse.parser import EventStreamParser


def main() -> None:
    body = b"".join(
        [
            ServerSentEvent(retry=3000, comment="tidings example stream").encode(),
            encode_event(json.dumps({"price": 101.5}), id="e1.1"),
            encode_event("two lines\nof text", event="note", id="e1.2"),
            encode_comment("heartbeat"),
            ServerSentEvent(data="", id="e1.3").encode(),  # an empty message
            ServerSentEvent(id="e1.4").encode(),  # no data: only moves the last ID
        ]
    )
    print(f"{len(body)} bytes on the wire:")
    for line in body.decode().removesuffix("\n").split("\n"):
        print(f"  | {line}")

    # Cut the body at random places -- even inside a line or a UTF-8 sequence.
    rng = random.Random(7)
    cuts = sorted(rng.sample(range(1, len(body)), 12))
    chunks = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]

    parser = EventStreamParser()
    print(f"\nparsed from {len(chunks)} chunks:")
    for chunk in chunks:
        for event in parser.receive_data(chunk):
            print(f"  {event.type:8} id={event.last_event_id!r:8} data={event.data!r}")
    parser.receive_eof()
    print(f"\nreconnect with Last-Event-ID: {parser.last_event_id!r}, after {parser.retry} ms")

    # What the encoder refuses rather than rewrite: an ID with a line break would let
    # whoever controls it inject fields into the stream.
    try:
        ServerSentEvent(data="x", id="1\ndata: injected")
    except LocalProtocolError as exc:
        print(f"\nrefused: {exc}")


if __name__ == "__main__":
    main()
