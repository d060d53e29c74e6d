// A tidings.v1 client on node's `ws` package, for the interop tests.
// Usage: node ws_client.js URL TOPIC COUNT
// Subscribes to TOPIC from the earliest retained event, publishes one event, prints
// one JSON line per server message until COUNT events and the publish ack arrived,
// then closes normally.
"use strict";
const WebSocket = require("ws");

const [url, topic, count] = process.argv.slice(2);
const want = Number(count);
let events = 0;
let acked = false;
const socket = new WebSocket(url, "tidings.v1");

socket.on("open", () => {
  console.log(JSON.stringify({ type: "open", protocol: socket.protocol }));
  socket.send(JSON.stringify({ type: "subscribe", topic: topic, cursor: "earliest" }));
  socket.send(JSON.stringify({ type: "publish", topic: topic, msg_id: "node-1", data: "from node" }));
});
socket.on("message", (data, isBinary) => {
  const body = JSON.parse(data.toString());
  console.log(JSON.stringify(body));
  if (body.type === "event") {
    events += 1;
  } else if (body.type === "published") {
    acked = true;
  }
  if (events >= want && acked) {
    socket.close(1000, "done");
  }
});
socket.on("close", (code) => {
  console.log(JSON.stringify({ type: "close", code: code }));
});
socket.on("error", (error) => {
  console.error(String(error));
  process.exitCode = 1;
});
