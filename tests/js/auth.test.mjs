// Connect tokens and targeted disconnects with the official phoenix.js client:
//   1. Phoenix.Token (auth.mode = "phoenix_token"): phoenix.js's `authToken`
//      option (the token travels in Sec-WebSocket-Protocol and the server
//      answers "phoenix"), the token as a connect param, and sockets without a
//      valid token refused with HTTP 403 (missing, garbage, forged, expired).
//   2. JWT (auth.mode = "jwt") with a route authorizing joins from the token's
//      `topics` claim (join = "claim").
//   3. The server API's POST /api/v1/disconnect on one node of a two-node
//      cluster closes every socket of that id on both nodes (code 1001);
//      phoenix.js reconnects and rejoins them; other users are untouched.
//
// Tokens are minted by the gateway binary itself (`phx-gateway token`), with
// the same auth settings as the gateway verifying them.
import { describe, it, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { execFile } from "node:child_process";

import {
  GATEWAY_BIN,
  Presence,
  REPO_ROOT,
  WebSocket,
  createSocket,
  disconnectAll,
  joinChannel,
  pushEvent,
  startGateway,
  uniqueRoom,
  waitFor,
  withTimeout,
  presenceCounts,
  startCluster,
} from "./support.mjs";

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

const SECRET_KEY_BASE = "phx-gateway-e2e-secret-key-base/".padEnd(80, "0123456789abcdef");
const PHOENIX_TOKEN_ENV = {
  PHX_GATEWAY__AUTH__MODE: "phoenix_token",
  PHX_GATEWAY__AUTH__SECRET_KEY_BASE: SECRET_KEY_BASE,
};
const JWT_ENV = {
  PHX_GATEWAY__AUTH__MODE: "jwt",
  PHX_GATEWAY__AUTH__JWT_SECRET: "phx-gateway-e2e-jwt-secret-0123456789",
};
const AUTH_TOKEN_PREFIX = "base64url.bearer.phx.";

/**
 * `phx-gateway token ...` with `env` (the auth settings) on top of ours;
 * resolves with the token it prints.
 */
function mintToken(env, { userId, maxAgeS, claims, config } = {}) {
  const args = ["token", "--user-id", String(userId)];
  if (config) args.push("--config", config);
  if (maxAgeS !== undefined) args.push("--max-age-s", String(maxAgeS));
  if (claims) args.push("--claims", JSON.stringify(claims));
  return new Promise((resolve, reject) => {
    execFile(
      GATEWAY_BIN,
      args,
      { cwd: REPO_ROOT, env: { ...process.env, RUST_LOG: "warn", ...env }, timeout: 10000 },
      (err, stdout, stderr) => {
        if (err) {
          reject(new Error(`\`phx-gateway ${args.join(" ")}\` failed: ${err.message}\nstderr: ${stderr}`));
          return;
        }
        const token = stdout.trim();
        if (!token || /\s/.test(token)) {
          reject(new Error(`\`phx-gateway ${args.join(" ")}\` printed no single token: ${JSON.stringify(stdout)}`));
          return;
        }
        resolve(token);
      },
    );
  });
}

/**
 * A `ws` WebSocket class for phoenix.js's `transport` option that records the
 * URL and subprotocols phoenix.js opens each connection with.
 */
function recordingTransport() {
  const seen = [];
  class RecordingWebSocket extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols);
      seen.push({ url, protocols, ws: this });
    }
  }
  return { transport: RecordingWebSocket, seen };
}

/** createSocket (support.mjs) + counters: opens, errors, close codes. */
function instrumentedSocket(gw, opts = {}) {
  const socket = createSocket(gw, opts);
  socket.opens = 0;
  socket.errors = [];
  socket.closeCodes = [];
  socket.onOpen(() => {
    socket.opens += 1;
  });
  socket.onError((err) => socket.errors.push(err));
  socket.onClose((event) => socket.closeCodes.push(event?.code));
  return socket;
}

const errorText = (err) => (err && (err.message || err.error?.message || err.type)) || String(err);
const describeErrors = (socket) => JSON.stringify(socket.errors.map(errorText));

/** An instrumented socket, connected; resolves once it is open. */
async function openSocket(gw, opts, what, sockets) {
  const socket = instrumentedSocket(gw, opts);
  sockets.push(socket);
  socket.connect();
  await waitFor(() => socket.opens >= 1, {
    message: () => `${what} to open; transport errors: ${describeErrors(socket)}\ngateway output:\n${gw.output().slice(-2000)}`,
  });
  return socket;
}

/**
 * The HTTP answer to a bare WebSocket upgrade: { status: 101, protocol } when it
 * opens, else { status } (the refusal's HTTP status).
 */
function upgrade(gw, { query = "vsn=2.0.0", protocols } = {}) {
  return withTimeout(
    new Promise((resolve) => {
      const ws = new WebSocket(`${gw.wsUrl}/socket/websocket?${query}`, protocols);
      ws.once("open", () => {
        resolve({ status: 101, protocol: ws.protocol });
        ws.close(1000);
      });
      ws.once("unexpected-response", (req, res) => {
        resolve({ status: res.statusCode });
        req.destroy();
      });
      ws.once("error", (err) => resolve({ status: null, error: err.message }));
    }),
    5000,
    `the answer to a WebSocket upgrade (${query})`,
  );
}

/**
 * A phoenix.js socket with `opts` must never open: it is refused (HTTP 403)
 * on every attempt. Waits for three refused attempts (reconnects come every
 * 100 ms), then disconnects it so it stops retrying.
 */
async function assertRefused(gw, opts, what) {
  const socket = instrumentedSocket(gw, opts);
  socket.connect();
  try {
    await waitFor(() => socket.errors.length >= 3 || socket.opens > 0, {
      timeout: 5000,
      message: () => `${what}: three refused connection attempts; errors so far: ${describeErrors(socket)}`,
    });
    assert.equal(socket.opens, 0, `${what}: the socket must never open (errors: ${describeErrors(socket)})`);
    for (const err of socket.errors) {
      assert.match(errorText(err), /\b403\b/, `${what}: the upgrade must be answered HTTP 403`);
    }
    assert.equal(socket.isConnected(), false);
  } finally {
    await disconnectAll([socket]);
  }
}

/** { key: metaCount } from a phoenix.js Presence instance, keys sorted. */

const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

/** Joins room:lobby with a Presence and waits until it shows exactly `want`. */
async function lobbyPresenceIs(socket, want, what) {
  const channel = socket.channel("room:lobby", {});
  const presence = new Presence(channel);
  assert.deepEqual(await joinChannel(channel), { status: "ok", response: {} }, `${what}: join room:lobby`);
  await waitFor(() => same(presenceCounts(presence), want), {
    message: () => `${what}: Presence on room:lobby to show ${JSON.stringify(want)}; it shows ${JSON.stringify(presenceCounts(presence))}`,
  });
  return { channel, presence };
}

const bearerProtocol = (token) => `${AUTH_TOKEN_PREFIX}${btoa(token).replace(/=/g, "")}`;

// ---------------------------------------------------------------------------
// 1. Phoenix.Token
// ---------------------------------------------------------------------------

describe("auth: Phoenix.Token connect tokens (auth.mode = phoenix_token)", () => {
  let gw;
  // A second gateway whose auth.max_age_s is 1 s, for the expiry test.
  let shortGw;
  const SHORT_ENV = { ...PHOENIX_TOKEN_ENV, PHX_GATEWAY__AUTH__MAX_AGE_S: "1" };
  let sockets = [];

  before(async () => {
    [gw, shortGw] = await Promise.all([startGateway({ env: PHOENIX_TOKEN_ENV }), startGateway({ env: SHORT_ENV })]);
  });

  after(async () => {
    await disconnectAll(sockets);
    await Promise.allSettled([gw?.stop(), shortGw?.stop()]);
  });

  afterEach(async () => {
    await disconnectAll(sockets);
    sockets = [];
  });

  it("authToken: sent as the bearer subprotocol, answered 'phoenix'; Presence shows the token's user, not params.user_id", async () => {
    const token = await mintToken(PHOENIX_TOKEN_ENV, { userId: 42 });
    const { transport, seen } = recordingTransport();
    const socket = await openSocket(
      gw,
      { transport, authToken: token, params: { user_id: "evil" } },
      "a socket with authToken (user 42) and params.user_id = evil",
      sockets,
    );

    assert.equal(seen.length, 1, "one connection attempt");
    assert.deepEqual(seen[0].protocols, ["phoenix", bearerProtocol(token)], "phoenix.js's authToken subprotocols");
    assert.match(seen[0].url, /[?&]user_id=evil(&|$)/, `the client did send user_id=evil: ${seen[0].url}`);
    assert.equal(seen[0].ws.protocol, "phoenix", "the server selected the 'phoenix' subprotocol");

    const { channel } = await lobbyPresenceIs(socket, { 42: 1 }, "authToken socket");
    assert.deepEqual(await pushEvent(channel, "ping", { hi: 1 }), { status: "ok", response: { hi: 1 } });
    assert.deepEqual(socket.errors, []);
  });

  it("the token as the connect param `token` works too (and params.user_id is still ignored)", async () => {
    const token = await mintToken(PHOENIX_TOKEN_ENV, { userId: 42 });
    const { transport, seen } = recordingTransport();
    const socket = await openSocket(
      gw,
      { transport, params: { token, user_id: "evil" } },
      "a socket with params.token (user 42)",
      sockets,
    );
    assert.equal(seen[0].protocols, undefined, "no authToken: phoenix.js offers no subprotocol");
    await lobbyPresenceIs(socket, { 42: 1 }, "params.token socket");
  });

  it("no token, a garbage token or a forged token: HTTP 403, the socket never opens", async () => {
    assert.deepEqual(await upgrade(gw, { query: "vsn=2.0.0&user_id=42" }), { status: 403 }, "bare upgrade without a token");
    assert.deepEqual(
      await upgrade(gw, { protocols: ["phoenix", bearerProtocol("garbage")] }),
      { status: 403 },
      "bare upgrade with a garbage bearer subprotocol",
    );

    await assertRefused(gw, { params: { user_id: "42" } }, "no token (only params.user_id)");
    await assertRefused(gw, { authToken: "not-a-token" }, "authToken = garbage");
    await assertRefused(gw, { params: { token: "SFMyNTY.g2gDYSpuBgBBhPgEogFiAAFRgA.forged" } }, "params.token = garbage");
    const forged = await mintToken(
      { ...PHOENIX_TOKEN_ENV, PHX_GATEWAY__AUTH__SECRET_KEY_BASE: "another-secret-key-base/".padEnd(80, "x") },
      { userId: 42 },
    );
    await assertRefused(gw, { authToken: forged }, "authToken signed with another secret_key_base");
  });

  it("an expired token: HTTP 403, the socket never opens (auth.max_age_s governs expiry)", async () => {
    // On `gw` (auth.max_age_s = 86400) a token minted with --max-age-s 1 does
    // NOT expire after 1 s: the configured max age overrides the token's own,
    // as Phoenix.Token.verify(..., max_age: ...) does (docs/auth.md).
    const overridden = await mintToken(PHOENIX_TOKEN_ENV, { userId: 42, maxAgeS: 1 });

    // `shortGw` has auth.max_age_s = 1: valid at first, refused once 1 s old.
    const token = await mintToken(SHORT_ENV, { userId: 42, maxAgeS: 1 });
    const fresh = await upgrade(shortGw, { protocols: ["phoenix", bearerProtocol(token)] });
    assert.deepEqual(fresh, { status: 101, protocol: "phoenix" }, "the 1 s token is accepted while fresh");
    let last;
    await waitFor(
      async () => {
        last = await upgrade(shortGw, { protocols: ["phoenix", bearerProtocol(token)] });
        return last.status !== 101;
      },
      { timeout: 5000, interval: 100, message: () => `the 1 s token to be refused; last answer ${JSON.stringify(last)}` },
    );
    assert.deepEqual(last, { status: 403 }, "an expired token is refused with HTTP 403");
    await assertRefused(shortGw, { authToken: token }, "authToken = expired token");
    await assertRefused(shortGw, { params: { token } }, "params.token = expired token");

    // More than 1 s has passed since `overridden` was signed.
    const socket = await openSocket(gw, { authToken: overridden }, "a --max-age-s 1 token older than 1 s on a gateway with max_age_s 86400", sockets);
    await lobbyPresenceIs(socket, { 42: 1 }, "the overridden-max-age socket");
  });
});

// ---------------------------------------------------------------------------
// 2. JWT, join authorized by the token's `topics` claim
// ---------------------------------------------------------------------------

describe("auth: JWT connect tokens (auth.mode = jwt) and join = \"claim\"", () => {
  let gw;
  let configDir;
  let configFile;
  let sockets = [];

  before(async () => {
    // config/gateway.toml's routes, preceded by one authorizing team:* joins from
    // the token's `topics` claim.
    const base = fs.readFileSync(path.join(REPO_ROOT, "config", "gateway.toml"), "utf8");
    const routesAt = base.search(/^\[\[routes\]\]/m);
    assert.ok(routesAt >= 0, "config/gateway.toml has [[routes]]");
    configDir = fs.mkdtempSync(path.join(os.tmpdir(), "phx-gateway-auth-"));
    configFile = path.join(configDir, "gateway.toml");
    fs.writeFileSync(configFile, `[[routes]]\ntopic = "team:*"\njoin = "claim"\n\n${base.slice(routesAt)}`);
    gw = await startGateway({ env: JWT_ENV, args: ["--config", configFile] });
  });

  after(async () => {
    await disconnectAll(sockets);
    await gw?.stop();
    if (configDir) fs.rmSync(configDir, { recursive: true, force: true });
  });

  afterEach(async () => {
    await disconnectAll(sockets);
    sockets = [];
  });

  it("authToken JWT: join team:red (in the topics claim) ok, team:blue error unauthorized", async () => {
    const token = await mintToken(JWT_ENV, { userId: "u1", claims: { topics: ["team:red"] }, config: configFile });
    const { transport, seen } = recordingTransport();
    const socket = await openSocket(gw, { transport, authToken: token, params: { user_id: "evil" } }, "a JWT authToken socket (u1)", sockets);
    assert.equal(seen[0].ws.protocol, "phoenix", "the server selected the 'phoenix' subprotocol");

    const red = socket.channel("team:red", {});
    assert.deepEqual(await joinChannel(red), { status: "ok", response: {} }, "join team:red");
    const blue = socket.channel("team:blue", {});
    const blueReply = await joinChannel(blue);
    blue.leave(); // phoenix.js would otherwise keep retrying the refused join
    assert.deepEqual(blueReply, { status: "error", response: { reason: "unauthorized" } }, "join team:blue");

    // Still connected, and the claims did not disturb other routes.
    assert.deepEqual(await pushEvent(red, "unknown_event", {}), { status: "error", response: { reason: "unhandled event" } });
    await lobbyPresenceIs(socket, { u1: 1 }, "JWT socket");
    assert.equal(socket.opens, 1);
  });

  it("the JWT as params.token works; without a valid JWT: HTTP 403, never opens", async () => {
    const token = await mintToken(JWT_ENV, { userId: "u1", claims: { topics: ["team:red"] }, config: configFile });
    const socket = await openSocket(gw, { params: { token } }, "a JWT params.token socket", sockets);
    assert.deepEqual(await joinChannel(socket.channel("team:red", {})), { status: "ok", response: {} });

    const otherSecret = await mintToken(
      { ...JWT_ENV, PHX_GATEWAY__AUTH__JWT_SECRET: "some-other-jwt-secret-0123456789" },
      { userId: "u1", claims: { topics: ["team:red"] }, config: configFile },
    );
    await assertRefused(gw, { params: { user_id: "u1" } }, "JWT gateway, no token");
    await assertRefused(gw, { authToken: otherSecret }, "JWT signed with another secret");
  });
});

// ---------------------------------------------------------------------------
// 3. Disconnect all sockets of a user, across nodes (server API)
// ---------------------------------------------------------------------------

describe("server API: POST /api/v1/disconnect closes a user's sockets on every node", () => {
  const API_KEY = "test-key";
  let cluster;
  let nodeA;
  let nodeB;
  let sockets = [];

  before(async () => {
    cluster = await startCluster({ env: { PHX_GATEWAY__API__KEY: API_KEY } });
    ({ nodeA, nodeB } = cluster);
  });

  after(async () => {
    await disconnectAll(sockets);
    await cluster?.stop();
  });

  const disconnect = (node, body, headers = {}) =>
    fetch(`${node.url}/api/v1/disconnect`, {
      method: "POST",
      headers: { "Content-Type": "application/json", ...headers },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(5000),
    });

  it("both user-42 sockets (nodes A and B) close with 1001 and rejoin; user 7 is untouched; 401 without the key", async () => {
    const topic = uniqueRoom("room:kick");
    const ctx = () => `\nnode A output:\n${nodeA.output().slice(-2000)}\nnode B output:\n${nodeB.output().slice(-2000)}`;

    /** A socket of `userId` on `node`, joined to `topic`, counting its join replies. */
    const member = async (node, userId, name) => {
      const socket = await openSocket(node, { params: { user_id: userId } }, name, sockets);
      socket.name = name;
      const channel = socket.channel(topic, {});
      socket.joins = 0;
      // Push hooks persist across phoenix.js's rejoins: this counts every ok join.
      channel.joinPush.receive("ok", () => {
        socket.joins += 1;
      });
      assert.deepEqual(await joinChannel(channel), { status: "ok", response: {} }, `${name}: join ${topic}`);
      socket.topicChannel = channel;
      return socket;
    };
    const user42onA = await member(nodeA, "42", "user 42 on node A");
    const user42onB = await member(nodeB, "42", "user 42 on node B");
    const user7onB = await member(nodeB, "7", "user 7 on node B");
    const all = [user42onA, user42onB, user7onB];
    const state = () =>
      JSON.stringify(
        all.map((s) => ({ name: s.name, opens: s.opens, closeCodes: s.closeCodes, joins: s.joins, channel: s.topicChannel.state })),
      );

    // Without the key, or with a wrong one: 401, nothing is disconnected.
    const noKey = await disconnect(nodeA, { socket_id: "users_socket:42" });
    assert.equal(noKey.status, 401, `no Authorization header: ${noKey.status} ${await noKey.text()}`);
    const wrongKey = await disconnect(nodeA, { socket_id: "users_socket:42" }, { Authorization: "Bearer not-the-key" });
    assert.equal(wrongKey.status, 401, `wrong key: ${wrongKey.status} ${await wrongKey.text()}`);

    const res = await disconnect(nodeA, { socket_id: "users_socket:42" }, { Authorization: `Bearer ${API_KEY}` });
    assert.equal(res.status, 202, `POST /api/v1/disconnect with the key: ${res.status} ${await res.text()}${ctx()}`);

    for (const socket of [user42onA, user42onB]) {
      await waitFor(() => socket.closeCodes.length >= 1, {
        message: () => `${socket.name} to be closed by the server; sockets: ${state()}${ctx()}`,
      });
      assert.deepEqual(socket.closeCodes, [1001], `${socket.name}: closed once, with code 1001 (going away)`);
    }
    for (const socket of [user42onA, user42onB]) {
      await waitFor(() => socket.opens >= 2 && socket.joins >= 2 && socket.topicChannel.state === "joined", {
        message: () => `${socket.name} to reconnect and rejoin ${topic}; sockets: ${state()}${ctx()}`,
      });
      assert.deepEqual(await pushEvent(socket.topicChannel, "ping", { back: socket.name }), {
        status: "ok",
        response: { back: socket.name },
      });
    }

    // User 7 shares node B with a socket that was closed (after the disconnect
    // had reached node B): it was left alone.
    assert.deepEqual(await pushEvent(user7onB.topicChannel, "ping", { still: "here" }), {
      status: "ok",
      response: { still: "here" },
    });
    assert.equal(user7onB.opens, 1, `user 7 opened once; sockets: ${state()}`);
    assert.deepEqual(user7onB.closeCodes, [], `user 7 was never closed; sockets: ${state()}`);
    assert.equal(user7onB.joins, 1, "user 7 joined once");
    assert.equal(user7onB.topicChannel.state, "joined");
    for (const socket of [user42onA, user42onB]) {
      assert.equal(socket.opens, 2, `${socket.name}: reconnected exactly once; sockets: ${state()}`);
      assert.deepEqual(socket.closeCodes, [1001], `${socket.name}: closed only by the API call`);
    }
  });
});
