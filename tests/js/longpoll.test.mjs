// The long-poll transport (/socket/longpoll) with the official phoenix.js client,
// and binary payloads over WebSocket:
//   1. LongPoll on one node: join, ping, broadcasts and Presence shared with
//      WebSocket sockets, leave.
//   2. LongPoll across two nodes without sticky sessions: a round-robin proxy
//      sends every request to the other node, which relays it through Redis to
//      the node that owns the session.
//   3. phoenix.js's WebSocket -> LongPoll fallback (longPollFallbackMs).
//   4. Binary (ArrayBuffer) payloads over WebSocket, vsn 2.0.0.
//
// Node 20 has no XMLHttpRequest, so phoenix.js's Ajax uses global fetch (with
// AbortController), which Node provides: nothing needs to be shimmed. Without a
// global sessionStorage phoenix.js simply does not memorize the fallback; the
// fallback test passes its own in-memory store to observe it.
import { describe, it, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";

import { LongPoll } from "phoenix";

import {
  Presence,
  Socket,
  collect,
  connectSocket,
  disconnectAll,
  freePort,
  joinChannel,
  leaveChannel,
  pushEvent,
  startGateway,
  startRedis,
  startRedisCluster,
  uniqueRoom,
  waitFor,
  withTimeout,
  presenceCounts,
} from "./support.mjs";

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

// Port 0 turns the admin listener (metrics/health, default 127.0.0.1:9568)
// off, so that several gateways can run at once.
const NO_ADMIN = { PHX_GATEWAY__ADMIN__PORT: "0" };

/**
 * A phoenix.js Socket using the LongPoll transport. `endPoint` is what an app
 * passes (e.g. "ws://host:port/socket"): phoenix.js turns it into
 * http://host:port/socket/longpoll itself.
 */
function createLongPollSocket(endPoint, { params = {}, ...opts } = {}) {
  const socket = new Socket(endPoint, {
    transport: LongPoll,
    params,
    timeout: 5000,
    reconnectAfterMs: () => 100,
    rejoinAfterMs: () => 500,
    ...opts,
  });
  socket.received = [];
  socket.errors = [];
  socket.opens = 0;
  socket.onMessage((msg) => socket.received.push(msg));
  socket.onError((err) => socket.errors.push(err));
  socket.onOpen(() => {
    socket.opens += 1;
  });
  return socket;
}

/** Resolves once `socket` has opened (LongPoll: the session's 410 + token arrived). */
async function awaitOpen(socket, what, timeout = 5000) {
  await waitFor(() => socket.isConnected(), {
    timeout,
    message: () => `${what} to open; transport errors so far: ${JSON.stringify(socket.errors)}`,
  });
}

async function connectLongPoll(endPoint, opts = {}) {
  const socket = createLongPollSocket(endPoint, opts);
  socket.connect();
  try {
    await awaitOpen(socket, `the LongPoll socket to ${endPoint}`);
  } catch (err) {
    socket.disconnect();
    throw err;
  }
  return socket;
}

/** { key: metaCount } from a phoenix.js Presence instance, keys sorted. */

/** `promise`, with `context()` appended to the message if it rejects. */
async function explained(promise, context) {
  try {
    return await promise;
  } catch (err) {
    err.message += context();
    throw err;
  }
}

const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

const bytes = (buf) => Buffer.from(new Uint8Array(buf)).toString("hex");

function arrayBufferOf(values) {
  const ab = new ArrayBuffer(values.length);
  new Uint8Array(ab).set(values);
  return ab;
}

// Hop-by-hop headers are the proxy's own business, not forwarded.
const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "proxy-authenticate",
  "proxy-authorization",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
]);
const endToEnd = (headers) => Object.fromEntries(Object.entries(headers).filter(([k]) => !HOP_BY_HOP.has(k.toLowerCase())));

/**
 * A reverse proxy (node:http) on a free port sending each request to the next
 * target in turn (round robin, no stickiness). It forwards method, path+query,
 * end-to-end headers and body, and never times out a request (long polls).
 * `log` has one entry per request: { n, node, method, path, token, status, body, error }
 * where status is the JSON body's `status` (the gateway always answers HTTP 200).
 */
async function startRoundRobinProxy(targets) {
  const port = await freePort();
  const log = [];
  const perNode = Object.fromEntries(targets.map((t) => [t.name, 0]));
  const upstreams = new Set();
  let next = 0;

  const server = http.createServer((req, res) => {
    const target = targets[next % targets.length];
    next += 1;
    perNode[target.name] += 1;
    const url = new URL(req.url, "http://proxy.invalid");
    const entry = {
      n: log.length,
      node: target.name,
      method: req.method,
      path: url.pathname,
      token: url.searchParams.get("token"),
      httpStatus: null,
      status: null,
      body: "",
      error: null,
      done: false,
    };
    log.push(entry);

    const upstream = http.request(
      {
        host: "127.0.0.1",
        port: target.port,
        method: req.method,
        path: req.url,
        headers: endToEnd(req.headers),
        agent: false,
      },
      (upRes) => {
        entry.httpStatus = upRes.statusCode;
        res.writeHead(upRes.statusCode, endToEnd(upRes.headers));
        upRes.on("data", (chunk) => {
          entry.body = (entry.body + chunk.toString("utf8")).slice(0, 4000);
        });
        upRes.on("end", () => {
          try {
            entry.status = JSON.parse(entry.body).status ?? null;
          } catch {
            entry.status = null;
          }
          entry.done = true;
        });
        upRes.pipe(res);
      },
    );
    upstreams.add(upstream);
    upstream.once("close", () => upstreams.delete(upstream));
    upstream.on("error", (err) => {
      entry.error = err.message;
      if (!res.headersSent) res.writeHead(502, { "content-type": "text/plain" });
      res.end();
    });
    // The client gave up (e.g. phoenix.js aborted a poll on disconnect).
    res.once("close", () => {
      if (!res.writableFinished) upstream.destroy();
    });
    req.pipe(upstream);
  });
  // No proxy timeouts: a long poll may be parked for the whole window.
  server.requestTimeout = 0;
  server.headersTimeout = 60000;
  server.keepAliveTimeout = 60000;
  server.timeout = 0;

  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, "127.0.0.1", resolve);
  });

  return {
    port,
    url: `http://127.0.0.1:${port}`,
    wsUrl: `ws://127.0.0.1:${port}`,
    log,
    perNode,
    describe: () =>
      log
        .map((e) => `#${e.n} ${e.method}->${e.node}${e.token ? "" : " (no token)"}: ${e.error ?? e.body.slice(0, 200)}`)
        .join("\n"),
    async stop() {
      for (const u of upstreams) u.destroy();
      server.closeAllConnections();
      await new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

// ---------------------------------------------------------------------------
// One node: LongPoll, WebSocket fallback, binary payloads
// ---------------------------------------------------------------------------

describe("one node", () => {
  let gw;
  let sockets = [];
  before(async () => {
    gw = await startGateway({ env: NO_ADMIN });
  });
  after(async () => {
    await disconnectAll(sockets);
    await gw?.stop();
  });
  afterEach(async () => {
    await disconnectAll(sockets);
    sockets = [];
  });

  const lp = async (params) => {
    const socket = await connectLongPoll(`${gw.wsUrl}/socket`, { params });
    sockets.push(socket);
    return socket;
  };
  const ws = async (params, opts = {}) => {
    const socket = await connectSocket(gw, { params, ...opts });
    sockets.push(socket);
    return socket;
  };

  describe("LongPoll transport (phoenix.js over fetch)", () => {
    it("joins room:lobby, echoes ping and shares new_msg with a WebSocket socket both ways", async () => {
      const lpSocket = await lp({ user_id: "lp" });
      assert.ok(lpSocket.conn instanceof LongPoll, "the socket's connection is a phoenix.js LongPoll");
      assert.match(lpSocket.conn.endpointURL(), /^http:\/\/127\.0\.0\.1:\d+\/socket\/longpoll\?/);
      assert.ok(lpSocket.conn.token, "the server handed out a session token");

      const lpChan = lpSocket.channel("room:lobby", {});
      const lpGot = collect(lpChan, "new_msg");
      assert.deepEqual(await joinChannel(lpChan), { status: "ok", response: {} });
      assert.equal(lpChan.state, "joined");

      const payload = { n: 7, text: "héllo over long-poll ✓", nested: { list: [1, "two", null, true] } };
      assert.deepEqual(await pushEvent(lpChan, "ping", payload), { status: "ok", response: payload });

      const wsSocket = await ws({ user_id: "ws" });
      const wsChan = wsSocket.channel("room:lobby", {});
      const wsGot = collect(wsChan, "new_msg");
      assert.deepEqual(await joinChannel(wsChan), { status: "ok", response: {} });

      const fromLp = { body: "from the long-poll socket", user: "lp" };
      assert.deepEqual(await pushEvent(lpChan, "new_msg", fromLp), { status: "ok", response: {} });
      await waitFor(() => wsGot.length >= 1 && lpGot.length >= 1, {
        message: () => `new_msg from LP on both sockets; ws saw ${JSON.stringify(wsGot)}, lp saw ${JSON.stringify(lpGot)}`,
      });

      const fromWs = { body: "from the websocket", user: "ws" };
      assert.deepEqual(await pushEvent(wsChan, "new_msg", fromWs), { status: "ok", response: {} });
      await waitFor(() => wsGot.length >= 2 && lpGot.length >= 2, {
        message: () => `new_msg from WS on both sockets; ws saw ${JSON.stringify(wsGot)}, lp saw ${JSON.stringify(lpGot)}`,
      });
      // A later round trip on each socket: any duplicate would have arrived by now.
      assert.equal((await pushEvent(lpChan, "ping", {})).status, "ok");
      assert.equal((await pushEvent(wsChan, "ping", {})).status, "ok");
      assert.deepEqual(lpGot, [fromLp, fromWs], "the LP socket: each message once, in order");
      assert.deepEqual(wsGot, [fromLp, fromWs], "the WS socket: each message once, in order");

      // On the long-poll wire a broadcast is the same V2 frame, refs null.
      const frame = lpSocket.received.find((m) => m.event === "new_msg");
      assert.equal(frame.topic, "room:lobby");
      // room:* keeps history: the ref is the message's position (docs/history.md).
      assert.match(String(frame.ref), /^[0-9a-f]+:\d+-\d+$/, `a position in the ref: ${JSON.stringify(frame)}`);
      assert.equal(frame.join_ref ?? null, null);
      assert.deepEqual(lpSocket.errors, [], "no transport error on the LP socket");
      assert.equal(lpSocket.opens, 1, "the LP session was never lost and reopened");
    });

    it("Presence sees LP and WS users on both sockets; leave removes the LP user", async () => {
      const topic = uniqueRoom("room:lp-presence");
      const lpSocket = await lp({ user_id: "lp-user" });
      const wsSocket = await ws({ user_id: "ws-user" });
      const lpChan = lpSocket.channel(topic, {});
      const wsChan = wsSocket.channel(topic, {});
      const lpPresence = new Presence(lpChan);
      const wsPresence = new Presence(wsChan);
      const wsGot = collect(wsChan, "new_msg");
      assert.deepEqual(await joinChannel(lpChan), { status: "ok", response: {} });
      assert.deepEqual(await joinChannel(wsChan), { status: "ok", response: {} });

      const both = { "lp-user": 1, "ws-user": 1 };
      for (const [name, presence] of [
        ["the LP socket", lpPresence],
        ["the WS socket", wsPresence],
      ]) {
        await waitFor(() => same(presenceCounts(presence), both), {
          message: () => `Presence on ${name} to see ${JSON.stringify(both)}; it sees ${JSON.stringify(presenceCounts(presence))}`,
        });
      }

      const { status, ref } = await leaveChannel(lpChan);
      assert.equal(status, "ok");
      const reply = await waitFor(
        () => lpSocket.received.find((m) => m.topic === topic && m.event === "phx_reply" && m.ref === ref),
        {
          message: () =>
            `the server's phx_reply to the LP socket's phx_leave (ref ${ref}); frames: ${JSON.stringify(lpSocket.received)}`,
        },
      );
      assert.deepEqual(reply.payload, { status: "ok", response: {} });
      await waitFor(() => same(presenceCounts(wsPresence), { "ws-user": 1 }), {
        message: () => `Presence on the WS socket to drop lp-user after its leave; it sees ${JSON.stringify(presenceCounts(wsPresence))}`,
      });

      // The LP socket left: a later broadcast must not reach it. A ping on
      // another channel of the LP socket, answered after the broadcast was
      // dispatched, fences any stray copy.
      const after = { body: "after the LP leave" };
      assert.equal((await pushEvent(wsChan, "new_msg", after)).status, "ok");
      await waitFor(() => wsGot.some((m) => m.body === after.body), { message: "the WS sender to get its own new_msg" });
      const fence = lpSocket.channel("room:lobby", {});
      assert.equal((await joinChannel(fence)).status, "ok");
      assert.equal((await pushEvent(fence, "ping", { fence: true })).status, "ok");
      assert.deepEqual(
        lpSocket.received.filter((m) => m.topic === topic && m.event === "new_msg"),
        [],
        "no new_msg for a topic the LP socket left",
      );
      assert.deepEqual(lpSocket.errors, []);
    });
  });

  describe("WebSocket -> LongPoll fallback (longPollFallbackMs)", () => {
    // Behaves like a browser WebSocket whose connection fails: still
    // "connecting" when constructed, then error + close (1006) on the next tick.
    class RefusedWebSocket {
      static attempts = [];
      constructor(url, protocols) {
        RefusedWebSocket.attempts.push(url);
        this.url = url;
        this.protocols = protocols;
        this.readyState = 0;
        this.bufferedAmount = 0;
        this.onopen = () => {};
        this.onerror = () => {};
        this.onmessage = () => {};
        this.onclose = () => {};
        setTimeout(() => {
          this.readyState = 3;
          this.onerror({ type: "error", message: "connection refused (simulated)" });
          this.onclose({ type: "close", code: 1006, reason: "", wasClean: false });
        }, 0);
      }
      send() {
        throw new Error("RefusedWebSocket: send while not open");
      }
      close() {
        this.readyState = 3;
      }
    }

    class MemoryStorage {
      constructor() {
        this.items = {};
      }
      getItem(key) {
        return key in this.items ? this.items[key] : null;
      }
      setItem(key, value) {
        this.items[key] = String(value);
      }
      removeItem(key) {
        delete this.items[key];
      }
    }

    it("falls back to LongPoll after the WebSocket fails, then joins and pings", async () => {
      RefusedWebSocket.attempts = [];
      const storage = new MemoryStorage();
      const fallbackOpts = {
        transport: RefusedWebSocket,
        longPollFallbackMs: 500,
        sessionStorage: storage,
        params: { user_id: "fallback" },
      };
      const socket = createLongPollSocket(`${gw.wsUrl}/socket`, fallbackOpts);
      sockets.push(socket);
      socket.connect();
      await awaitOpen(socket, "the socket (RefusedWebSocket with longPollFallbackMs: 500) to open after falling back");

      assert.equal(RefusedWebSocket.attempts.length, 1, `WebSocket attempts: ${JSON.stringify(RefusedWebSocket.attempts)}`);
      assert.match(RefusedWebSocket.attempts[0], /^ws:\/\/127\.0\.0\.1:\d+\/socket\/websocket\?user_id=fallback&vsn=2\.0\.0$/);
      assert.equal(socket.transport, LongPoll, "socket.transport was replaced by LongPoll");
      assert.ok(socket.conn instanceof LongPoll, "the open connection is a LongPoll");
      assert.equal(storage.getItem("phx:fallback:LongPoll"), "true", "phoenix.js memorized the fallback");
      assert.ok(socket.errors.length >= 1, "the WebSocket failure was reported to onError");

      const channel = socket.channel("room:lobby", {});
      assert.deepEqual(await joinChannel(channel), { status: "ok", response: {} });
      assert.deepEqual(await pushEvent(channel, "ping", { via: "fallback" }), {
        status: "ok",
        response: { via: "fallback" },
      });

      // A second socket with the same session storage goes straight to LongPoll.
      const again = createLongPollSocket(`${gw.wsUrl}/socket`, { ...fallbackOpts, params: { user_id: "fallback-2" } });
      sockets.push(again);
      again.connect();
      await awaitOpen(again, "the second socket (fallback memorized) to open");
      assert.equal(RefusedWebSocket.attempts.length, 1, "a memorized fallback does not try the WebSocket again");
      assert.ok(again.conn instanceof LongPoll);
      const chan2 = again.channel("room:lobby", {});
      assert.deepEqual(await joinChannel(chan2), { status: "ok", response: {} });
      assert.deepEqual(await pushEvent(chan2, "ping", { n: 2 }), { status: "ok", response: { n: 2 } });
    });
  });

  describe("binary payloads over WebSocket (vsn 2.0.0)", () => {
    it("echoes an ArrayBuffer ping as a binary reply with the same bytes", async () => {
      const socket = await ws({ user_id: "bin" });
      const channel = socket.channel("room:lobby", {});
      assert.deepEqual(await joinChannel(channel), { status: "ok", response: {} });

      const sent = arrayBufferOf([0, 1, 2, 127, 128, 254, 255, 0x7b, 0x22, 10, 13, 0]);
      const reply = await pushEvent(channel, "ping", sent);
      assert.equal(reply.status, "ok", `reply: ${JSON.stringify(reply)}`);
      assert.ok(
        reply.response instanceof ArrayBuffer,
        `the reply payload should be an ArrayBuffer (a binary frame); got ${JSON.stringify(reply.response)}`,
      );
      assert.equal(bytes(reply.response), bytes(sent));
    });

    it("broadcasts an ArrayBuffer new_msg to another V2 socket as binary", async () => {
      const topic = uniqueRoom("room:bin");
      const sender = await ws({ user_id: "bin-sender" });
      const reader = await ws({ user_id: "bin-reader" });
      const senderChan = sender.channel(topic, {});
      const readerChan = reader.channel(topic, {});
      const senderGot = collect(senderChan, "new_msg");
      const readerGot = collect(readerChan, "new_msg");
      assert.equal((await joinChannel(senderChan)).status, "ok");
      assert.equal((await joinChannel(readerChan)).status, "ok");

      const payload = new Uint8Array(300);
      for (let i = 0; i < payload.length; i++) payload[i] = (i * 7 + 3) % 256;
      const sent = payload.buffer;
      const reply = await pushEvent(senderChan, "new_msg", sent);
      assert.equal(reply.status, "ok", `reply: ${JSON.stringify(reply)}`);

      await waitFor(() => readerGot.length >= 1 && senderGot.length >= 1, {
        message: () => `the binary new_msg on both sockets; reader has ${readerGot.length}, sender has ${senderGot.length}`,
      });
      for (const [name, got] of [
        ["reader", readerGot],
        ["sender", senderGot],
      ]) {
        assert.equal(got.length, 1, `${name}: one new_msg`);
        assert.ok(got[0] instanceof ArrayBuffer, `${name}: payload should be an ArrayBuffer, got ${JSON.stringify(got[0])}`);
        assert.equal(bytes(got[0]), bytes(sent), `${name}: the same bytes`);
      }
      const frame = reader.received.find((m) => m.event === "new_msg");
      assert.equal(frame.topic, topic);
      // A binary broadcast frame has no ref (docs/history.md).
      assert.equal(frame.ref ?? null, null);
      assert.equal(frame.join_ref ?? null, null);
    });
  });
});

// ---------------------------------------------------------------------------
// Two nodes, no sticky sessions
// ---------------------------------------------------------------------------

for (const topology of ["single", "cluster"]) {
describe(`cluster: LongPoll through a round-robin proxy (no sticky sessions, ${topology})`, () => {
  let redis;
  let nodeA;
  let nodeB;
  let proxy;
  let sockets = [];

  before(async () => {
    redis = topology === "cluster" ? await startRedisCluster() : await startRedis();
    const env = {
      ...NO_ADMIN,
      ...(topology === "cluster"
        ? { PHX_GATEWAY__REDIS__CLUSTER_URLS: redis.urls }
        : { PHX_GATEWAY__REDIS__URL: redis.url }),
      PHX_GATEWAY__REDIS__HEARTBEAT_MS: "500",
      PHX_GATEWAY__REDIS__DOWN_MS: "1500",
      PHX_GATEWAY__REDIS__UNSUBSCRIBE_DELAY_MS: "100",
      PHX_GATEWAY__LONGPOLL__WINDOW_MS: "2000",
    };
    nodeA = await startGateway({ env });
    nodeB = await startGateway({ env });
    proxy = await startRoundRobinProxy([
      { name: "A", port: nodeA.port },
      { name: "B", port: nodeB.port },
    ]);
  });

  after(async () => {
    await disconnectAll(sockets);
    await Promise.allSettled([proxy?.stop(), nodeA?.stop(), nodeB?.stop()]);
    await redis?.stop();
  });

  it("join, ping and broadcasts work while every other request lands on the other node", async () => {
    const topic = uniqueRoom("room:lp-cluster");
    // Appended to failure messages: what went through the proxy, and the nodes' logs.
    const ctx = () =>
      `\nproxy log:\n${proxy.describe()}\nnode A output:\n${nodeA.output().slice(-2000)}` +
      `\nnode B output:\n${nodeB.output().slice(-2000)}`;
    const lpSocket = await explained(
      connectLongPoll(`${proxy.wsUrl}/socket`, { params: { user_id: "lp-proxied" } }),
      ctx,
    );
    sockets.push(lpSocket);

    // Exactly one request opened the session (the first one, on node A): the
    // session was never lost and reopened on the way.
    const opening = proxy.log.filter((e) => !e.token);
    assert.equal(opening.length, 1, `one session-opening request${ctx()}`);
    const owner = opening[0].node;
    const token = lpSocket.conn.token;
    assert.ok(token, "the LP socket has a session token");

    const lpChan = lpSocket.channel(topic, {});
    const lpGot = collect(lpChan, "new_msg");
    assert.deepEqual(await explained(joinChannel(lpChan), ctx), { status: "ok", response: {} });
    assert.deepEqual(await explained(pushEvent(lpChan, "ping", { hop: 1 }), ctx), {
      status: "ok",
      response: { hop: 1 },
    });

    const wsB = await connectSocket(nodeB, { params: { user_id: "ws-on-b" } });
    sockets.push(wsB);
    const wsChan = wsB.channel(topic, {});
    const wsGot = collect(wsChan, "new_msg");
    assert.deepEqual(await explained(joinChannel(wsChan), ctx), { status: "ok", response: {} });

    const fromLp = { body: "from LP via the proxy" };
    assert.deepEqual(await explained(pushEvent(lpChan, "new_msg", fromLp), ctx), { status: "ok", response: {} });
    await waitFor(() => wsGot.some((m) => m.body === fromLp.body) && lpGot.some((m) => m.body === fromLp.body), {
      message: () =>
        `LP's new_msg on the WS socket (node B: ${JSON.stringify(wsGot)}) and LP (${JSON.stringify(lpGot)})${ctx()}`,
    });

    const fromWs = { body: "from WS on node B" };
    assert.deepEqual(await explained(pushEvent(wsChan, "new_msg", fromWs), ctx), { status: "ok", response: {} });
    await waitFor(() => lpGot.some((m) => m.body === fromWs.body), {
      message: () => `node B's new_msg on the LP socket; it has ${JSON.stringify(lpGot)}${ctx()}`,
    });

    // The non-owning node must have served (relayed) both polls and POSTs of
    // this session. Consecutive pings (POST, then the next GET) keep the
    // parity of POSTs; a broadcast adds a single GET and shifts it.
    const relayed = (method) => proxy.log.filter((e) => e.token === token && e.node !== owner && e.method === method);
    const sent = [fromLp, fromWs];
    for (let round = 1; round <= 6 && !(relayed("GET").length && relayed("POST").length); round++) {
      assert.deepEqual(await explained(pushEvent(lpChan, "ping", { round }), ctx), { status: "ok", response: { round } });
      const shift = { body: `parity shift ${round}` };
      sent.push(shift);
      assert.equal((await explained(pushEvent(wsChan, "new_msg", shift), ctx)).status, "ok");
      await waitFor(() => lpGot.some((m) => m.body === shift.body), {
        message: () => `"${shift.body}" on the LP socket; it has ${JSON.stringify(lpGot)}${ctx()}`,
      });
    }
    assert.ok(relayed("GET").length > 0, `a poll of ${owner}'s session was served by the other node${ctx()}`);
    assert.ok(relayed("POST").length > 0, `a POST to ${owner}'s session was served by the other node${ctx()}`);
    for (const e of [...relayed("GET"), ...relayed("POST")].filter((x) => x.done)) {
      assert.ok([200, 204].includes(e.status), `relayed ${e.method} #${e.n} answered ${e.body}${ctx()}`);
    }

    // An empty poll (204 after the 2 s window) keeps the session.
    await waitFor(() => proxy.log.some((e) => e.token === token && e.status === 204), {
      timeout: 6000,
      message: () => `an empty poll (status 204) after the 2000 ms window${ctx()}`,
    });
    assert.deepEqual(await explained(pushEvent(lpChan, "ping", { after: "204" }), ctx), {
      status: "ok",
      response: { after: "204" },
    });

    // Everything arrived once, in order; the session was never lost.
    assert.deepEqual(await explained(pushEvent(wsChan, "ping", {}), ctx), { status: "ok", response: {} });
    assert.deepEqual(lpGot, sent, `the LP socket: each new_msg once, in order${ctx()}`);
    assert.deepEqual(wsGot, sent, "the WS socket on node B: each new_msg once, in order");
    assert.deepEqual(lpSocket.errors, [], `no transport error on the LP socket${ctx()}`);
    assert.equal(lpSocket.opens, 1, `the LP socket opened once${ctx()}`);
    assert.deepEqual(
      [...new Set(proxy.log.filter((e) => e.token).map((e) => e.token))],
      [token],
      `every request after the first carried the same session token${ctx()}`,
    );
    assert.deepEqual(
      proxy.log.filter((e) => e.error || (e.httpStatus !== null && e.httpStatus !== 200)),
      [],
      `every proxied request got HTTP 200${ctx()}`,
    );

    // The proxy really alternated.
    proxy.log.forEach((e, i) => assert.equal(e.node, i % 2 === 0 ? "A" : "B", `request #${i}`));
    const { A, B } = proxy.perNode;
    assert.ok(A >= 4 && B >= 4, `requests per node: A ${A}, B ${B}`);
    assert.ok(Math.abs(A - B) <= 1, `requests per node: A ${A}, B ${B}`);

    await withTimeout(new Promise((resolve) => lpSocket.disconnect(resolve)), 3000, "the LP socket to disconnect");
  });
});
}
