// tidings.js: the browser client of tidings (an ES module, no dependencies, no build).
//
//   import { connect } from "/tidings.js";
//   const client = connect();                      // this page's origin
//   const sub = client.subscribe("news", { onEvent(ev) { show(ev.data); } });
//   const id = await client.publish("news", "hello");
//
// One client follows any number of topics over one of three transports: a WebSocket
// session (tidings.v1), Server-Sent Events or long polling, tried in that order. A
// transport that cannot open is skipped at once; one that opened is kept and
// reconnected. Each topic has one cursor (the id of the last event handed to the
// application, or of the last reset) whatever carries it, and every reconnection
// resumes from it, so the server sends nothing twice and skips nothing without a
// reset. Publishes carry an unguessable key and are resent until acknowledged: the
// server stores each once.

const TRANSPORTS = ["ws", "sse", "poll"];
const SUBPROTOCOL = "tidings.v1";
// The server's topic and event-type rules (tidings.names): checked here so that a
// mistake is an exception at the call, not a refusal far away.
const TOPIC_RE = /^[A-Za-z0-9._~-]{1,128}$/;
const CONTROL_RE = /[\x00-\x1f\x7f]/;
// The statuses worth another attempt (tidings.retry.RETRY_STATUSES).
const RETRY_STATUSES = new Set([408, 425, 429, 500, 502, 503, 504]);
// WebSocket close codes after which the same connection would fail the same way.
const STOP_CODES = new Set([1002, 1003, 1007, 1008, 1009, 1010, 1015, 3000, 3003]);
const RESTART_CLOSE = 1012; // service restart: wait at least RESTART_DELAY
const RESTART_DELAY = 5;
const MAX_FLOOR = 300; // a hostile Retry-After must not park a client for days
const MAX_RETRY_FIELD = 3600; // the longest SSE `retry` honoured, in seconds
const POLL_TIMEOUT = 25; // seconds a poll may be held; below common proxy idle limits
const POLL_GRACE = 15; // seconds beyond that before a held poll counts as lost
const MAX_MESSAGE = 1024 * 1024; // the server's default WebSocket message limit
// Failed openings in a row of the transport the client settled on before it tries
// the whole list again: the network may have changed under it (a proxy that now
// blocks WebSocket). Until then a failure is taken for an outage, not a block.
const REPROBE_AFTER = 3;

/**
 * Connect to the tidings server at `base` (an origin, or a URL with a path prefix;
 * default: this page's origin). Nothing is opened before the first `subscribe` or
 * `publish`.
 *
 * options.transports  the transports to try, in order (default ["ws", "sse", "poll"])
 * options.openTimeout ms a transport may take to open before the next is tried (5000)
 * options.onTransport called with "ws" | "sse" | "poll" when a connection opens and
 *                     with null when it is lost
 * options.onError     called once with an Error when the client gives up (a refusal
 *                     that retrying cannot mend); the client is closed then
 */
export function connect(base, options = {}) {
  return new Client(base, options);
}

// -- pacing ---------------------------------------------------------------------------

/**
 * The reconnection pacing of every tidings client (tidings.backoff.default_backoff):
 * full jitter over min(30, 2^n) s after a failure; U(0, 1) s after a connection that
 * delivered something new; after one that stayed up 5 s, full jitter over
 * min(30, 5 * 2^n) s, so that a crowd a restart dropped at once comes back spread out.
 * A server's floor (Retry-After, the SSE retry field) goes under the jitter. Times in
 * seconds; exported for tests.
 */
export class Backoff {
  constructor({ base = 1, spread = 5, factor = 2, cap = 30, stablePeriod = 5, random = Math.random } = {}) {
    Object.assign(this, { base, spread, factor, cap, stablePeriod, random });
    this.attempt = 0;
    this.connectedAt = null;
    this.progressed = false;
    this.runBase = base;
  }

  connected(now) {
    this.connectedAt = now;
    this.progressed = false;
  }

  /** The open connection delivered something new: its loss is not a failure. */
  progress() {
    if (this.connectedAt !== null && !this.progressed) {
      this.progressed = true;
      this.reset();
    }
  }

  /** The connection (or an attempt) ended at `now`: seconds to wait. */
  disconnected(now, floor = 0, standingFloor = 0) {
    const since = this.connectedAt;
    const progressed = this.progressed;
    this.connectedAt = null;
    this.progressed = false;
    if (since !== null && now - since >= this.stablePeriod) {
      this.reset();
      this.runBase = this.spread;
    } else if (progressed) {
      this.reset();
      standingFloor = 0; // a follower on a flaky path keeps up with its stream
    }
    const ceiling = Math.min(this.cap, this.runBase * this.factor ** Math.min(this.attempt, 64));
    this.attempt += 1;
    return Math.max(floor, standingFloor) + ceiling * this.random();
  }

  reset() {
    this.attempt = 0;
    this.runBase = this.base;
  }
}

const now = () => performance.now() / 1000;

// `Retry-After` as seconds (delta or HTTP date), capped; 0 when absent or unreadable.
function retryAfter(response) {
  const value = response.headers.get("retry-after");
  if (value === null) return 0;
  let seconds = /^\s*\d+\s*$/.test(value) ? Number(value) : (Date.parse(value) - Date.now()) / 1000;
  if (!Number.isFinite(seconds) || seconds < 0) seconds = 0;
  return Math.min(seconds, MAX_FLOOR);
}

// A publish key: the server de-duplicates by it, so another client must not guess it.
function newKey() {
  if (crypto.randomUUID) return crypto.randomUUID(); // secure contexts only
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function report(error) {
  // An application callback failed: show it, but keep the client going.
  if (typeof reportError === "function") reportError(error);
  else setTimeout(() => { throw error; });
}

function checkTopic(topic) {
  if (typeof topic !== "string" || !TOPIC_RE.test(topic) || topic === "." || topic === "..") {
    throw new TypeError(`invalid topic ${JSON.stringify(topic)}: 1-128 characters from A-Z a-z 0-9 . _ ~ -`);
  }
}

function isWellFormed(text) {
  if (typeof text.isWellFormed === "function") return text.isWellFormed();
  return !/[\ud800-\udbff](?![\udc00-\udfff])|(?:^|[^\ud800-\udbff])[\udc00-\udfff]/.test(text);
}

// Why a connection ended, and what to do about it.
class Loss {
  constructor(reason, { floor = 0, stop = false } = {}) {
    Object.assign(this, { reason, floor, stop });
  }
}

function httpLoss(response, what) {
  const reason = `${what}: HTTP ${response.status}`;
  if (RETRY_STATUSES.has(response.status)) return new Loss(reason, { floor: retryAfter(response) });
  return null; // not worth retrying: the caller decides what it refuses
}

// -- the client -------------------------------------------------------------------------

class Client {
  #options;
  #transports;
  #index = 0; // the transport tried (or kept) now
  #settled = false; // a transport opened: keep it
  #failedOpens = 0; // failed openings in a row of the settled transport
  #link = null;
  #timer = null;
  #backoff = new Backoff();
  #standingFloor = 0; // the SSE `retry` field
  #postBackoff = new Backoff();
  #posting = false;
  #closed = false;

  constructor(base, options) {
    const url = new URL(base ?? globalThis.location.origin, globalThis.location?.href);
    this.base = (url.origin + url.pathname).replace(/\/+$/, "");
    this.#options = { openTimeout: 5000, ...options };
    this.#transports = [...(options.transports ?? TRANSPORTS)];
    if (!this.#transports.length || this.#transports.some((t) => !TRANSPORTS.includes(t))) {
      throw new TypeError(`transports must be some of ${TRANSPORTS.join(", ")}`);
    }
    /** "ws" | "sse" | "poll" while connected, else null. */
    this.transport = null;
    /** topic -> its state: { name, cursor, handlers }. */
    this.topics = new Map();
    /** msgKey -> an unacknowledged publish, in order. */
    this.outbox = new Map();
  }

  /**
   * Follow `topic`: options.onEvent({topic, id, event, data}) for each event, in order
   * and once; options.onReset({topic, cursor, reason}) where events were lost;
   * options.onError(error) if the server refuses the topic (the subscription ends).
   * options.cursor: where to start: an event id (resume after it), "earliest" (all
   * that is retained) or nothing (live from now).
   */
  subscribe(topic, { cursor = null, onEvent, onReset, onError } = {}) {
    checkTopic(topic);
    if (this.#closed) throw new Error("the client is closed");
    if (this.topics.has(topic)) throw new Error(`already subscribed to ${topic}`);
    const state = { name: topic, cursor: cursor || null, onEvent, onReset, onError };
    this.topics.set(topic, state);
    if (this.#link) this.#link.add(state);
    else this.#start();
    const client = this;
    return {
      topic,
      /** Where this topic would resume: the last event id, or null. */
      get cursor() { return state.cursor; },
      close() { client.#unsubscribe(state); },
    };
  }

  /**
   * Store `data` (a string) as one event of `topic`, of type options.event if given.
   * Resolves to the stored event's id once the server acknowledged it; resent across
   * reconnections (and transports) under one key, so it is stored exactly once.
   */
  publish(topic, data, { event } = {}) {
    checkTopic(topic);
    if (typeof data !== "string" || !isWellFormed(data)) {
      return Promise.reject(new TypeError("data must be a string of well-formed Unicode"));
    }
    if (event !== undefined && event !== null) {
      const length = [...String(event)].length;
      if (typeof event !== "string" || length < 1 || length > 256 || CONTROL_RE.test(event)) {
        return Promise.reject(new TypeError("event types are 1-256 characters without control characters"));
      }
    }
    if (this.#closed) return Promise.reject(new Error("the client is closed"));
    return new Promise((resolve, reject) => {
      const key = newKey();
      this.outbox.set(key, { key, topic, data, event: event ?? null, resolve, reject });
      if (this.#link) this.#dispatchPublishes();
      else this.#start();
    });
  }

  /** Drop the connection now and open a new one at once, resuming every topic. */
  reconnect() {
    if (this.#closed) return;
    this.#stopLink();
    clearTimeout(this.#timer);
    this.#open();
  }

  /** Stop everything; unacknowledged publishes are rejected (they may have been stored). */
  close() {
    if (this.#closed) return;
    this.#closed = true;
    this.#stopLink(false);
    clearTimeout(this.#timer);
    this.topics.clear();
    const error = new Error("the client is closed");
    for (const pending of this.outbox.values()) this.#settle(pending, error);
  }

  // -- what links report ----------------------------------------------------------------

  linkOpened(link) {
    if (link !== this.#link) return;
    this.#settled = true;
    this.#failedOpens = 0;
    if (link.kind !== "sse") this.#standingFloor = 0;
    this.#backoff.connected(now());
    this.#setTransport(link.kind);
    this.#dispatchPublishes();
  }

  linkLost(link, loss) {
    if (link !== this.#link) return;
    this.#stopLink();
    if (loss.stop) {
      this.#giveUp(new Error(`tidings: ${loss.reason}`));
      return;
    }
    if (!link.opened) {
      if (!this.#settled && this.#index + 1 < this.#transports.length) {
        this.#index += 1; // skipped without waiting: it may be blocked, not down
        this.#open();
        return;
      }
      if (!this.#settled || ++this.#failedOpens >= REPROBE_AFTER) {
        this.#settled = false;
        this.#failedOpens = 0;
        this.#index = 0; // every transport failed: start over, after a pause
      }
    }
    const delay = this.#backoff.disconnected(now(), loss.floor, this.#standingFloor);
    this.#timer = setTimeout(() => this.#open(), delay * 1000);
  }

  // The SSE `retry` field: the server's floor under reconnections.
  retryField(ms) {
    this.#standingFloor = Math.min(ms / 1000, MAX_RETRY_FIELD);
  }

  // Only the current link speaks for a topic: one the application stopped (from
  // inside a callback, say) must not move a cursor the next link resumes from.
  #current(link, state) {
    return link === this.#link && this.topics.get(state.name) === state;
  }

  deliver(link, state, event) {
    if (!this.#current(link, state)) return;
    state.cursor = event.id;
    this.#backoff.progress();
    if (state.onEvent) {
      try { state.onEvent(event); } catch (error) { report(error); }
    }
  }

  reset(link, state, cursor, reason) {
    if (!this.#current(link, state)) return;
    state.cursor = cursor;
    if (state.onReset) {
      try { state.onReset({ topic: state.name, cursor, reason: reason ?? null }); } catch (error) { report(error); }
    }
  }

  refused(link, state, error) {
    if (!this.#current(link, state)) return;
    this.#unsubscribe(state);
    if (state.onError) {
      try { state.onError(error); } catch (e) { report(e); }
    } else {
      report(error);
    }
  }

  acknowledged(key, id) {
    const pending = this.outbox.get(key);
    if (pending === undefined) return; // a repeat, or not ours
    this.#backoff.progress();
    this.#settle(pending, null, id);
  }

  publishFailed(key, error) {
    const pending = this.outbox.get(key);
    if (pending !== undefined) this.#settle(pending, error);
  }

  // The server could not store it now: send it again later, under the same key.
  publishLater(key, link) {
    const pending = this.outbox.get(key);
    if (pending === undefined) return;
    const delay = this.#postBackoff.disconnected(now());
    clearTimeout(pending.timer);
    pending.timer = setTimeout(() => {
      if (this.#link === link && link.opened && this.outbox.has(key)) link.send(pending);
    }, delay * 1000);
  }

  // -- inside -----------------------------------------------------------------------------

  #start() {
    if (!this.#link && this.#timer === null && !this.#closed) this.#open();
  }

  #open() {
    this.#timer = null;
    if (this.#closed) return;
    const kind = this.#transports[this.#index];
    const Link = kind === "ws" ? WsLink : kind === "sse" ? SseLink : PollLink;
    this.#link = new Link(this, this.#options.openTimeout);
    this.#link.start();
    this.#dispatchPublishes();
  }

  #stopLink(tell = true) {
    const link = this.#link;
    this.#link = null;
    if (link) {
      link.stop();
      if (!link.opened) return;
      if (tell) this.#setTransport(null);
      else this.transport = null; // closed on purpose: nothing to report
    }
  }

  #setTransport(kind) {
    this.transport = kind;
    if (this.#options.onTransport) {
      try { this.#options.onTransport(kind); } catch (error) { report(error); }
    }
  }

  #unsubscribe(state) {
    if (this.topics.get(state.name) !== state) return;
    this.topics.delete(state.name);
    this.#link?.remove(state);
  }

  #settle(pending, error, id) {
    this.outbox.delete(pending.key);
    clearTimeout(pending.timer);
    if (error) pending.reject(error);
    else pending.resolve(id);
  }

  #giveUp(error) {
    const onError = this.#options.onError;
    this.close();
    if (onError) {
      try { onError(error); } catch (e) { report(e); }
    }
  }

  // Publishes go over the WebSocket when that is the transport, else as POSTs.
  #dispatchPublishes() {
    const link = this.#link;
    if (!link || !this.outbox.size) return;
    if (link.kind === "ws") {
      if (!link.opened) return; // sent once it opens, after the subscribes
      for (const pending of this.outbox.values()) {
        if (pending.sentOn === link) continue; // awaiting its answer
        pending.sentOn = link;
        link.send(pending);
      }
    } else {
      this.#postAll();
    }
  }

  // One POST at a time, oldest first, so that publishes are stored in the order made.
  async #postAll() {
    if (this.#posting) return;
    this.#posting = true;
    try {
      while (!this.#closed && this.#link && this.#link.kind !== "ws" && this.outbox.size) {
        const pending = this.outbox.values().next().value;
        const delay = await this.#post(pending);
        if (delay > 0) await new Promise((resolve) => setTimeout(resolve, delay * 1000));
      }
    } finally {
      this.#posting = false;
    }
  }

  // One attempt; returns how long to wait before the next (0: settled).
  async #post(pending) {
    const query = pending.event === null ? "" : `?event=${encodeURIComponent(pending.event)}`;
    let response;
    try {
      response = await fetch(`${this.base}/topics/${pending.topic}${query}`, {
        method: "POST",
        headers: { "Content-Type": "text/plain;charset=UTF-8", "Idempotency-Key": pending.key },
        body: pending.data,
        cache: "no-store",
      });
    } catch {
      return this.#postBackoff.disconnected(now()); // network error: it may have been stored
    }
    if (response.status === 201) {
      let body = null;
      try { body = await response.json(); } catch { /* checked below */ }
      if (body && typeof body.id === "string") {
        this.#postBackoff.reset();
        if (this.outbox.has(pending.key)) this.#settle(pending, null, body.id);
        return 0;
      }
      return this.#postBackoff.disconnected(now()); // cut short: try again, same key
    }
    if (RETRY_STATUSES.has(response.status)) {
      return this.#postBackoff.disconnected(now(), retryAfter(response));
    }
    const text = (await response.text().catch(() => "")).trim();
    if (this.outbox.has(pending.key)) {
      this.#settle(pending, new Error(`publish refused: HTTP ${response.status}${text ? `: ${text}` : ""}`));
    }
    return 0;
  }
}

// -- links: one connection over one transport -------------------------------------------
//
// A link opens, carries every topic of the client, and ends once: it reports
// linkOpened when it has proof that the transport works (the WebSocket opened, the
// first bytes of an event stream, the first poll answer) and linkLost when it ends,
// opened or not. It never reconnects itself: the client decides what comes next.

class Link {
  constructor(client, openTimeout) {
    this.client = client;
    this.openTimeout = openTimeout;
    this.opened = false;
    this.stopped = false;
    this.timer = null;
  }

  // Started when there is something to prove; a link with nothing to carry yet (an
  // HTTP transport with no topic) neither opens nor fails.
  armOpenTimer() {
    if (this.opened || this.timer !== null) return;
    this.timer = setTimeout(() => this.lost(new Loss(`${this.kind} did not open within ${this.openTimeout} ms`)), this.openTimeout);
  }

  open() {
    if (this.opened || this.stopped) return;
    clearTimeout(this.timer);
    this.opened = true;
    this.client.linkOpened(this);
  }

  lost(loss) {
    if (this.stopped) return;
    this.client.linkLost(this, loss); // calls stop()
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
  }
}

class WsLink extends Link {
  kind = "ws";
  ready = false; // the socket is open

  start() {
    const url = this.client.base.replace(/^http/, "ws") + "/ws";
    try {
      this.socket = new WebSocket(url, SUBPROTOCOL);
    } catch (error) {
      queueMicrotask(() => this.lost(new Loss(`cannot open ${url}: ${error.message}`)));
      return;
    }
    this.armOpenTimer();
    this.socket.onopen = () => {
      if (this.socket.protocol !== SUBPROTOCOL) {
        this.lost(new Loss(`the server did not agree to ${SUBPROTOCOL}`));
        return;
      }
      // Subscribes first: a publish to a topic followed "live from now" must come
      // back to this client. The client sends its outbox once it hears we opened.
      this.ready = true;
      for (const state of this.client.topics.values()) this.add(state);
      this.open();
    };
    this.socket.onmessage = (message) => this.#receive(message.data);
    // A refused handshake and a lost connection look alike here (1006): the close
    // code is all a page is told.
    this.socket.onclose = (close) => this.lost(this.#closeLoss(close.code, close.reason));
  }

  add(state) {
    if (!this.ready) return; // subscribed once open
    const message = { type: "subscribe", topic: state.name };
    if (state.cursor !== null) message.cursor = state.cursor;
    this.#send(message);
  }

  remove(state) {
    if (this.ready) this.#send({ type: "unsubscribe", topic: state.name });
  }

  send(pending) {
    const message = { type: "publish", topic: pending.topic, msg_id: pending.key, data: pending.data };
    if (pending.event !== null) message.event = pending.event;
    const text = JSON.stringify(message);
    // The server closes the whole session (1009) for a message over its limit.
    if (text.length > MAX_MESSAGE / 3 && new TextEncoder().encode(text).length > MAX_MESSAGE) {
      this.client.publishFailed(pending.key, new RangeError("publish larger than the server accepts (1 MiB)"));
      return;
    }
    this.socket.send(text);
  }

  stop() {
    super.stop();
    if (this.socket) {
      this.socket.onopen = this.socket.onmessage = this.socket.onclose = null;
      this.socket.close(1000);
    }
  }

  #send(message) {
    this.socket.send(JSON.stringify(message));
  }

  #receive(text) {
    let message;
    try {
      message = JSON.parse(text);
    } catch {
      this.lost(new Loss("the server sent a message that is not JSON", { stop: true }));
      return;
    }
    const client = this.client;
    const state = client.topics.get(message.topic);
    switch (message.type) {
      case "event":
        if (state) client.deliver(this, state, { topic: state.name, id: message.id, event: message.event ?? "message", data: message.data });
        break;
      case "reset":
        if (state) client.reset(this, state, message.cursor, message.reason);
        break;
      case "subscribed":
        // Where a "live from now" subscription resumes, should this link drop
        // before its first event.
        if (state) state.cursor = message.cursor;
        break;
      case "published":
        client.acknowledged(message.msg_id, message.id);
        break;
      case "error":
        this.#error(message, state);
        break;
      default:
        break; // a later protocol version's message: not for us
    }
  }

  #error(message, state) {
    const error = Object.assign(new Error(`${message.code}: ${message.message}`), { code: message.code });
    if (message.msg_id !== undefined) {
      if (message.code === "unavailable") this.client.publishLater(message.msg_id, this);
      else this.client.publishFailed(message.msg_id, error);
    } else if (state) {
      this.client.refused(this, state, error);
    } else if (message.topic === undefined) {
      report(error); // a message the server could not read: a bug on this side
    }
  }

  #closeLoss(code, reason) {
    const text = `WebSocket closed (${code}${reason ? ` ${reason}` : ""})`;
    if (code === 1000 || STOP_CODES.has(code)) return new Loss(text, { stop: true });
    if (code >= 4400 && code <= 4599) {
      return new Loss(text, { stop: !RETRY_STATUSES.has(code - 4000) });
    }
    return new Loss(text, { floor: code === RESTART_CLOSE ? RESTART_DELAY : 0 });
  }
}

// The HTTP transports: one request loop per topic, all ended together when one breaks
// (they share a path to the server, so one loss is usually all of them).
class HttpLink extends Link {
  loops = new Map(); // topic name -> AbortController

  start() {
    for (const state of this.client.topics.values()) this.add(state);
  }

  add(state) {
    if (this.stopped) return;
    const abort = new AbortController();
    this.loops.set(state.name, abort);
    this.armOpenTimer();
    this.follow(state, abort.signal).catch((error) => {
      if (abort.signal.aborted || this.stopped) return;
      if (error instanceof Loss) this.lost(error);
      else if (error instanceof Refusal) this.client.refused(this, state, error.error);
      else this.lost(new Loss(`${this.kind}: ${error.message}`)); // network error
    });
  }

  remove(state) {
    this.loops.get(state.name)?.abort();
    this.loops.delete(state.name);
    if (!this.loops.size && !this.opened) {
      // Nothing left to prove the transport with: neither opened nor failed.
      clearTimeout(this.timer);
      this.timer = null;
    }
  }

  stop() {
    super.stop();
    for (const abort of this.loops.values()) abort.abort();
  }

  url(state, path) {
    return `${this.client.base}/topics/${state.name}/${path}`;
  }

  // A topic the server will not serve (a status not worth retrying) ends its
  // subscription, not the link.
  judge(response, state, what) {
    const loss = httpLoss(response, what);
    if (loss) throw loss;
    const error = Object.assign(new Error(`${what} of ${state.name} refused: HTTP ${response.status}`), { status: response.status });
    throw new Refusal(error);
  }

  // One poll; `timeout` 0 answers at once. Resolves to the parsed answer.
  async poll(state, timeout, signal) {
    const query = new URLSearchParams({ timeout: String(timeout) });
    if (state.cursor !== null) query.set("cursor", state.cursor);
    // A held poll that outlives its timeout by far went down with its connection
    // without a word (a sleeping laptop, a silent proxy).
    const deadline = new AbortController();
    const timer = setTimeout(() => deadline.abort(), (timeout + POLL_GRACE) * 1000);
    const cancel = () => deadline.abort();
    signal.addEventListener("abort", cancel);
    try {
      const response = await fetch(`${this.url(state, "poll")}?${query}`, { signal: deadline.signal, cache: "no-store" });
      if (response.status !== 200) this.judge(response, state, "poll");
      const body = await response.json();
      if (!body || !Array.isArray(body.events) || typeof body.cursor !== "string") {
        throw new Loss("the server's poll answer is not one", { stop: true });
      }
      return body;
    } finally {
      clearTimeout(timer);
      signal.removeEventListener("abort", cancel);
    }
  }
}

class Refusal {
  constructor(error) {
    this.error = error;
  }
}

class SseLink extends HttpLink {
  kind = "sse";

  async follow(state, signal) {
    if (state.cursor === null) {
      // An event stream says nothing until the first event: learn where "now" is
      // first, so that a stream cut before then resumes without a gap.
      const head = await this.poll(state, 0, signal);
      if (this.topicGone(state, signal)) return;
      state.cursor = head.cursor;
    }
    const response = await fetch(this.url(state, "events"), {
      headers: { Accept: "text/event-stream", "Last-Event-ID": state.cursor },
      cache: "no-store",
      signal,
    });
    const type = response.headers.get("content-type") || "";
    if (response.status !== 200 || !type.startsWith("text/event-stream")) {
      this.judge(response, state, "event stream");
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder(); // UTF-8; drops a leading BOM, as the format says
    const parser = new EventStreamParser();
    for (;;) {
      const { value, done } = await reader.read();
      if (this.topicGone(state, signal)) return;
      if (done) throw new Loss("the event stream ended");
      // The first bytes are the proof: a buffering proxy would hold them back.
      this.open();
      for (const item of parser.feed(decoder.decode(value, { stream: true }))) {
        if (this.topicGone(state, signal)) return;
        this.dispatch(state, item);
      }
      if (parser.retry !== null) this.client.retryField(parser.retry);
    }
  }

  topicGone(state, signal) {
    return signal.aborted || this.stopped || this.client.topics.get(state.name) !== state;
  }

  dispatch(state, { type, data, id }) {
    if (type === "tidings.reset") {
      let detail = {};
      try { detail = JSON.parse(data); } catch { /* the id is the cursor anyway */ }
      this.client.reset(this, state, id || detail.cursor, detail.reason);
    } else {
      this.client.deliver(this, state, { topic: state.name, id, event: type, data });
    }
  }
}

class PollLink extends HttpLink {
  kind = "poll";

  async follow(state, signal) {
    // The first poll answers at once: proof that the transport works, as quickly as
    // the streams give theirs, and a cursor for a "live from now" subscription.
    let timeout = 0;
    for (;;) {
      const answer = await this.poll(state, timeout, signal);
      if (signal.aborted || this.stopped || this.client.topics.get(state.name) !== state) return;
      this.open();
      if (answer.reset) {
        this.client.reset(this, state, answer.cursor, answer.reason);
      } else {
        for (const event of answer.events) {
          this.client.deliver(this, state, { topic: state.name, id: event.id, event: event.event ?? "message", data: event.data });
        }
        if (this.stopped || this.client.topics.get(state.name) !== state) return;
        state.cursor = answer.cursor;
      }
      timeout = POLL_TIMEOUT;
    }
  }
}

// -- the event stream format -------------------------------------------------------------

/**
 * The WHATWG event stream format, fed decoded text in any pieces: CR, LF and CRLF
 * line ends (split anywhere), comments, `data` lines joined with LF, `event`, `id`
 * (ignored when it holds NUL, kept across events) and `retry` (digits only).
 */
class EventStreamParser {
  #buffer = "";
  #skipLF = false; // the last piece ended with CR: a LF that follows ends nothing
  #data = "";
  #type = "";
  #id = "";
  retry = null;

  feed(text) {
    if (this.#skipLF && text.startsWith("\n")) text = text.slice(1);
    this.#skipLF = false;
    const out = [];
    let buffer = this.#buffer + text;
    let start = 0;
    for (let i = 0; i < buffer.length; i++) {
      const c = buffer[i];
      if (c !== "\n" && c !== "\r") continue;
      const line = buffer.slice(start, i);
      if (c === "\r") {
        if (i + 1 === buffer.length) this.#skipLF = true;
        else if (buffer[i + 1] === "\n") i += 1;
      }
      start = i + 1;
      this.#line(line, out);
    }
    this.#buffer = buffer.slice(start);
    return out;
  }

  #line(line, out) {
    if (line === "") {
      if (this.#data !== "") out.push({ type: this.#type || "message", data: this.#data.slice(0, -1), id: this.#id });
      this.#data = this.#type = "";
      return;
    }
    if (line.startsWith(":")) return; // a comment: the server's heartbeat
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.#data += value + "\n";
    else if (field === "event") this.#type = value;
    else if (field === "id" && !value.includes("\0")) this.#id = value;
    else if (field === "retry" && /^\d+$/.test(value)) this.retry = Number(value);
  }
}
