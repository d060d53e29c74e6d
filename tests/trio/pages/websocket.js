// Opens new WebSocket(?src=..., "tidings.v1"), subscribes to ?topic=... from the
// earliest retained event, publishes one event of its own, and collects events
// until ?count=N arrived (or the socket closed).  Then writes the result into
// #result and posts it to ./done (which releases ./gate.js).
"use strict";
(function () {
  const params = new URLSearchParams(location.search);
  const want = Number(params.get("count"));
  const topic = params.get("topic");
  const result = { protocol: null, events: [], published: null, close: null, errors: 0 };
  let finished = false;

  function finish() {
    if (finished) {
      return;
    }
    finished = true;
    document.getElementById("result").textContent = JSON.stringify(result);
    fetch("done", { method: "POST", body: JSON.stringify(result) });
  }

  const socket = new WebSocket(params.get("src"), "tidings.v1");
  socket.onopen = function () {
    result.protocol = socket.protocol;
    socket.send(JSON.stringify({ type: "subscribe", topic: topic, cursor: "earliest" }));
    socket.send(JSON.stringify({
      type: "publish", topic: topic, msg_id: "browser-1", event: "hello", data: "from the browser ✓",
    }));
  };
  socket.onerror = function () { result.errors += 1; };
  socket.onmessage = function (message) {
    const body = JSON.parse(message.data);
    if (body.type === "event") {
      result.events.push({ id: body.id, event: body.event, data: body.data });
    } else if (body.type === "published") {
      result.published = body;
    }
    if (result.events.length >= want && result.published !== null) {
      socket.close(1000, "done");
      finish();
    }
  };
  socket.onclose = function (event) {
    result.close = { code: event.code, clean: event.wasClean };
    finish();
  };
}());
