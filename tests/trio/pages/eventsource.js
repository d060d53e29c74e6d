// Follows the EventSource URL given as ?src=... until ?count=N messages arrived
// (events of type "message"), reporting how many events it has to ./progress (so the test knows what the browser has seen
// before it cuts the connection), then writes the result into #result and posts it
// to ./done (which releases ./gate.js, so the page finishes loading).
"use strict";
(function () {
  const params = new URLSearchParams(location.search);
  const want = Number(params.get("count"));
  const events = [];
  let messages = 0;
  let opens = 0;
  let errors = 0;
  let finished = false;

  function post(path, body) {
    return fetch(path, { method: "POST", body: JSON.stringify(body) });
  }

  function finish() {
    finished = true;
    source.close();
    const navigation = performance.getEntriesByType("navigation")[0];
    const result = {
      events: events,
      opens: opens,
      errors: errors,
      protocol: navigation ? navigation.nextHopProtocol : null,
    };
    document.getElementById("result").textContent = JSON.stringify(result);
    post("done", result);
  }

  function collect(event) {
    if (finished) {
      return;
    }
    events.push({ type: event.type, id: event.lastEventId, data: event.data });
    if (event.type === "message") {
      messages += 1;
    }
    post("progress", { count: events.length, last_id: event.lastEventId });
    if (messages >= want) {
      finish();
    }
  }

  const source = new EventSource(params.get("src"));
  source.onopen = function () { opens += 1; };
  source.onerror = function () { errors += 1; };
  source.onmessage = collect;
  source.addEventListener("tidings.reset", collect);
})();
