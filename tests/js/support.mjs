// Shared helpers for the end-to-end tests: start the gateway binary on a free
// port, poll for conditions with bounded waits, and create phoenix.js sockets
// (the official npm client) that use the `ws` package as their transport.
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { execFile, spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { setTimeout as delay } from "node:timers/promises";

import WebSocket from "ws";
import { Socket, Presence } from "phoenix";

export { Socket, Presence, WebSocket };

export const REPO_ROOT = fileURLToPath(new URL("../../", import.meta.url));

export const GATEWAY_BIN = process.env.PHX_GATEWAY_BIN
  ? path.resolve(process.env.PHX_GATEWAY_BIN)
  : path.join(REPO_ROOT, "target", "debug", "phx-gateway");

// ---------------------------------------------------------------------------
// Ports, waiting
// ---------------------------------------------------------------------------

const handedOut = new Set();

/**
 * Asks the OS for a free TCP port on 127.0.0.1 (bind to 0, read it, close).
 * Never returns the same port twice within one test process.
 */
export async function freePort() {
  for (let attempt = 0; attempt < 20; attempt++) {
    const port = await new Promise((resolve, reject) => {
      const srv = net.createServer();
      srv.unref();
      srv.once("error", reject);
      srv.listen(0, "127.0.0.1", () => {
        const { port: p } = srv.address();
        srv.close((err) => (err ? reject(err) : resolve(p)));
      });
    });
    if (!handedOut.has(port)) {
      handedOut.add(port);
      return port;
    }
  }
  throw new Error("could not find an unused free port");
}

/**
 * Polls `predicate` (sync or async) until it returns a truthy value, which is
 * then returned. Throws after `timeout` ms with `message` (a string, or a
 * function returning one, so the error can show the state seen last).
 */
export async function waitFor(predicate, { timeout = 5000, interval = 25, message = "condition" } = {}) {
  const deadline = Date.now() + timeout;
  let lastError;
  for (;;) {
    try {
      const value = await predicate();
      if (value) return value;
      lastError = undefined;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() >= deadline) {
      const what = typeof message === "function" ? message() : message;
      const cause = lastError ? ` (last error: ${lastError.message})` : "";
      throw new Error(`timed out after ${timeout} ms waiting for ${what}${cause}`);
    }
    await delay(interval);
  }
}

/** Rejects with a clear message if `promise` does not settle within `ms`. */
export function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function tcpConnects(port, host = "127.0.0.1") {
  return new Promise((resolve) => {
    const sock = net.connect({ port, host });
    const done = (ok) => {
      sock.removeAllListeners();
      sock.destroy();
      resolve(ok);
    };
    sock.setTimeout(500, () => done(false));
    sock.once("connect", () => done(true));
    sock.once("error", () => done(false));
  });
}

// ---------------------------------------------------------------------------
// Child processes: a last-resort cleanup
// ---------------------------------------------------------------------------

// Every process spawned here (gateways, redis) until it has exited. Tests stop
// them in `after`; if the test process ends without that (an uncaught error, a
// hook that never ran), they are killed here so none outlives the test file.
const liveChildren = new Set();
process.once("exit", () => {
  for (const child of liveChildren) {
    try {
      child.kill("SIGKILL");
    } catch {
      // already gone
    }
  }
});

function track(child) {
  liveChildren.add(child);
  child.once("exit", () => liveChildren.delete(child));
  child.once("error", () => liveChildren.delete(child));
}

/**
 * SIGTERM, then SIGKILL after `graceMs` if `exitPromise` (resolved on the
 * child's exit) has not settled. Resolves with the exit result.
 */
async function terminate(child, exitPromise, graceMs = 3000) {
  child.kill("SIGTERM");
  let timer;
  const result = await Promise.race([
    exitPromise,
    new Promise((resolve) => {
      timer = setTimeout(() => resolve(null), graceMs);
    }),
  ]);
  clearTimeout(timer);
  if (result) return result;
  child.kill("SIGKILL");
  return exitPromise;
}

// ---------------------------------------------------------------------------
// The gateway process
// ---------------------------------------------------------------------------

/**
 * Starts the gateway binary (cwd = repo root, so it serves demo/ and
 * node_modules/phoenix) on a free port and waits until it accepts TCP
 * connections. `args` are extra command-line arguments (e.g. ["--config", file]).
 * Returns { port, url, wsUrl, output(), stop() }.
 */
export async function startGateway({ env = {}, args = [], readyTimeout = 20000 } = {}) {
  if (!fs.existsSync(GATEWAY_BIN)) {
    throw new Error(
      `gateway binary not found at ${GATEWAY_BIN}: build it first with \`cargo build\` ` +
        `(or point PHX_GATEWAY_BIN at a built binary)`,
    );
  }
  // Another process may grab the port between freePort() and the gateway's
  // bind; the gateway then exits at once, and we retry on a new port.
  for (let attempt = 1; ; attempt++) {
    try {
      return await spawnGateway({ env, args, readyTimeout, port: await freePort() });
    } catch (err) {
      if (!err.exitedEarly || attempt >= 3) throw err;
    }
  }
}

async function spawnGateway({ env, args, readyTimeout, port }) {
  const child = spawn(GATEWAY_BIN, args, {
    cwd: REPO_ROOT,
    stdio: ["ignore", "pipe", "pipe"],
    env: {
      ...process.env,
      RUST_LOG: process.env.PHX_GATEWAY_TEST_RUST_LOG || "warn",
      PHX_GATEWAY__HTTP__HOST: "127.0.0.1",
      PHX_GATEWAY__HTTP__PORT: String(port),
      // The admin listener (metrics, health) is not needed here; several gateways would
      // otherwise clash on its fixed default port.
      PHX_GATEWAY__ADMIN__PORT: "0",
      ...env,
    },
  });
  track(child);

  // Keep the tail of the output for error messages (and always drain the
  // pipes so the child never blocks on a full pipe).
  let log = "";
  const keep = (chunk) => {
    log = (log + chunk.toString()).slice(-20000);
    if (process.env.PHX_GATEWAY_TEST_VERBOSE) process.stderr.write(chunk);
  };
  child.stdout.on("data", keep);
  child.stderr.on("data", keep);

  let exited = null;
  const exitPromise = new Promise((resolve) => {
    // "close" rather than "exit": it fires once the output pipes are drained too.
    child.once("close", (code, signal) => {
      exited = { code, signal };
      resolve(exited);
    });
  });
  child.once("error", (err) => {
    exited = exited || { code: null, signal: null, error: err };
  });

  const stop = async () => {
    if (exited) return exited;
    return terminate(child, exitPromise);
  };

  try {
    await waitFor(async () => exited || (await tcpConnects(port)), {
      timeout: readyTimeout,
      interval: 50,
      message: () => `the gateway (${GATEWAY_BIN}) to listen on 127.0.0.1:${port}; its output:\n${log}`,
    });
  } catch (err) {
    await stop();
    throw err;
  }
  if (exited) {
    const err = new Error(`the gateway exited during startup (${JSON.stringify(exited)}); its output:\n${log}`);
    err.exitedEarly = !exited.signal && !exited.error;
    throw err;
  }

  return {
    port,
    url: `http://127.0.0.1:${port}`,
    wsUrl: `ws://127.0.0.1:${port}`,
    output: () => log,
    stop,
  };
}

// ---------------------------------------------------------------------------
// Redis (for cluster tests)
// ---------------------------------------------------------------------------

export const REDIS_BIN = process.env.PHX_GATEWAY_REDIS_BIN || "/usr/bin/redis-server";

/** Resolves true once a plain TCP `PING` on `port` is answered `+PONG`. */
function redisPongs(port, host = "127.0.0.1") {
  return new Promise((resolve) => {
    const sock = net.connect({ port, host });
    let data = "";
    const done = (ok) => {
      sock.removeAllListeners();
      sock.destroy();
      resolve(ok);
    };
    sock.setTimeout(500, () => done(false));
    sock.once("connect", () => sock.write("PING\r\n"));
    sock.on("data", (chunk) => {
      data += chunk.toString();
      if (data.includes("\r\n")) done(data.startsWith("+PONG"));
    });
    sock.once("error", () => done(false));
    sock.once("close", () => done(false));
  });
}

/**
 * Starts a throw-away `redis-server` (no persistence, its own temporary dir)
 * on a free port (never 6379) and waits until it answers PING. Returns
 * { port, url, output(), stop() }; stop() kills it and removes the dir.
 */
/** Presence counts by key (number of metas), keys sorted, like the demo page shows them. */
export function presenceCounts(presence) {
  const out = {};
  presence.list((key, { metas }) => {
    out[key] = metas.length;
  });
  return Object.fromEntries(Object.entries(out).sort(([a], [b]) => a.localeCompare(b)));
}

/**
 * Starts Redis (one server, or with `topology: "cluster"` a 3-master + 3-replica Redis
 * Cluster) and two gateway nodes on it (short presence timings for tests), one after the
 * other since the first also applies the key-layout migration.
 */
export async function startCluster({ env = {}, args = [], topology = "single" } = {}) {
  const redis = topology === "cluster" ? await startRedisCluster() : await startRedis();
  const redisEnv =
    topology === "cluster"
      ? { PHX_GATEWAY__REDIS__CLUSTER_URLS: redis.urls }
      : { PHX_GATEWAY__REDIS__URL: redis.url };
  const nodeEnv = {
    ...redisEnv,
    PHX_GATEWAY__REDIS__HEARTBEAT_MS: "500",
    PHX_GATEWAY__REDIS__DOWN_MS: "1500",
    PHX_GATEWAY__REDIS__UNSUBSCRIBE_DELAY_MS: "100",
    ...env,
  };
  const nodeA = await startGateway({ env: nodeEnv, args });
  const nodeB = await startGateway({ env: nodeEnv, args });
  return {
    redis,
    nodeA,
    nodeB,
    // Each stop is independent: a failure to stop one must not leave the others running.
    async stop() {
      await Promise.allSettled([nodeA.stop(), nodeB.stop()]);
      await redis.stop();
    },
  };
}

export async function startRedis({ readyTimeout = 10000, args = [], clusterBus = false } = {}) {
  if (!fs.existsSync(REDIS_BIN)) {
    throw new Error(`redis-server not found at ${REDIS_BIN} (apt-get install redis-server, or set PHX_GATEWAY_REDIS_BIN)`);
  }
  for (let attempt = 1; ; attempt++) {
    let port = await freePort();
    // A cluster node's bus listens on port + 10000, which must be a valid port too.
    while (port === 6379 || (clusterBus && port >= 55000)) port = await freePort();
    try {
      return await spawnRedis({ port, readyTimeout, args });
    } catch (err) {
      if (!err.exitedEarly || attempt >= 3) throw err;
    }
  }
}

async function spawnRedis({ port, readyTimeout, args }) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "phx-gateway-redis-"));
  const child = spawn(
    REDIS_BIN,
    ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir, ...args],
    { cwd: dir, stdio: ["ignore", "pipe", "pipe"] },
  );
  track(child);
  let log = "";
  const keep = (chunk) => {
    log = (log + chunk.toString()).slice(-20000);
    if (process.env.PHX_GATEWAY_TEST_VERBOSE) process.stderr.write(chunk);
  };
  child.stdout.on("data", keep);
  child.stderr.on("data", keep);
  let exited = null;
  const exitPromise = new Promise((resolve) => {
    child.once("close", (code, signal) => {
      exited = { code, signal };
      resolve(exited);
    });
  });
  child.once("error", (err) => {
    exited = exited || { code: null, signal: null, error: err };
  });
  const removeDir = () => fs.rmSync(dir, { recursive: true, force: true });
  const stop = async () => {
    const result = exited || (await terminate(child, exitPromise, 2000));
    removeDir();
    return result;
  };

  try {
    await waitFor(async () => exited || (await redisPongs(port)), {
      timeout: readyTimeout,
      interval: 50,
      message: () => `redis-server on 127.0.0.1:${port} to answer PING with +PONG; its output:\n${log}`,
    });
  } catch (err) {
    await stop();
    throw err;
  }
  if (exited) {
    removeDir();
    const err = new Error(`redis-server exited during startup (${JSON.stringify(exited)}); its output:\n${log}`);
    err.exitedEarly = !exited.signal && !exited.error;
    throw err;
  }
  return { port, url: `redis://127.0.0.1:${port}`, dir, output: () => log, stop };
}

export const REDIS_CLI_BIN = process.env.PHX_GATEWAY_REDIS_CLI_BIN || "/usr/bin/redis-cli";

/** Runs redis-cli with `args`; resolves with its stdout. */
export function redisCli(args, { timeout = 30000 } = {}) {
  return new Promise((resolve, reject) => {
    execFile(REDIS_CLI_BIN, args, { timeout }, (err, stdout, stderr) => {
      if (err) reject(new Error(`redis-cli ${args.join(" ")} failed: ${err.message}\n${stdout}${stderr}`));
      else resolve(stdout);
    });
  });
}

/**
 * Starts a real Redis Cluster: 6 `redis-server --cluster-enabled yes` on free ports, made
 * 3 masters + 3 replicas by `redis-cli --cluster create`, and waits until every node says
 * `cluster_state:ok`. Returns { nodes, urls (comma-separated seeds), stop() }.
 */
export async function startRedisCluster() {
  const nodes = [];
  try {
    for (let i = 0; i < 6; i++) {
      nodes.push(
        await startRedis({
          args: ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000"],
          clusterBus: true,
        }),
      );
    }
    await redisCli([
      "--cluster", "create",
      ...nodes.map((n) => `127.0.0.1:${n.port}`),
      "--cluster-replicas", "1", "--cluster-yes",
    ]);
    for (const n of nodes) {
      await waitFor(async () => (await redisCli(["-p", String(n.port), "cluster", "info"])).includes("cluster_state:ok"), {
        timeout: 20000,
        interval: 100,
        message: `redis cluster node ${n.port} to report cluster_state:ok`,
      });
    }
  } catch (err) {
    await Promise.allSettled(nodes.map((n) => n.stop()));
    throw err;
  }
  return {
    nodes,
    urls: nodes.slice(0, 3).map((n) => n.url).join(","),
    stop: async () => {
      await Promise.allSettled(nodes.map((n) => n.stop()));
    },
  };
}

// ---------------------------------------------------------------------------
// phoenix.js helpers
// ---------------------------------------------------------------------------

/**
 * A phoenix.js Socket for the gateway, with `ws` as transport. vsn "1.0.0"
 * selects the V1 object serializer (phoenix.js only ships the V2 one).
 */
export function createSocket(gw, { vsn = "2.0.0", params = {}, ...opts } = {}) {
  const options = {
    transport: WebSocket,
    params,
    timeout: 5000,
    // Fast, bounded retry schedules so a test never idles on the defaults.
    reconnectAfterMs: () => 100,
    rejoinAfterMs: () => 500,
    ...opts,
  };
  if (vsn === "1.0.0") {
    options.vsn = "1.0.0";
    options.encode = (msg, callback) => callback(JSON.stringify(msg));
    options.decode = (raw, callback) => callback(JSON.parse(raw));
  } else {
    options.vsn = vsn;
  }
  const socket = new Socket(`${gw.wsUrl}/socket`, options);
  // Every decoded frame, for assertions on what the server sent.
  socket.received = [];
  socket.onMessage((msg) => socket.received.push(msg));
  return socket;
}

/** createSocket + connect, resolved once the WebSocket is open. */
export async function connectSocket(gw, opts = {}, { timeout = 5000 } = {}) {
  const socket = createSocket(gw, opts);
  let lastError;
  const opened = new Promise((resolve) => socket.onOpen(resolve));
  socket.onError((err) => {
    lastError = err;
  });
  socket.connect();
  try {
    await withTimeout(opened, timeout, `the socket to ${gw.wsUrl}/socket (vsn ${opts.vsn || "2.0.0"}) to open`);
  } catch (err) {
    socket.disconnect();
    if (lastError) err.message += ` (transport error: ${lastError.message || lastError.type || lastError})`;
    throw err;
  }
  return socket;
}

/** Disconnects sockets and resolves once each one is closed (bounded). */
export async function disconnectAll(sockets, timeout = 3000) {
  await Promise.all(
    sockets.map((socket) =>
      withTimeout(new Promise((resolve) => socket.disconnect(resolve)), timeout, "socket disconnect").catch(() => {}),
    ),
  );
}

function awaitPush(push, what, timeout) {
  return withTimeout(
    new Promise((resolve, reject) => {
      push
        .receive("ok", (response) => resolve({ status: "ok", response }))
        .receive("error", (response) => resolve({ status: "error", response }))
        .receive("timeout", () => reject(new Error(`phoenix.js reported a timeout for ${what}`)));
    }),
    timeout + 1000,
    what,
  );
}

/**
 * channel.join() as a promise of { status: "ok" | "error", response }.
 * After an "error" phoenix.js keeps retrying the join: call channel.leave().
 */
export function joinChannel(channel, { timeout = 5000 } = {}) {
  return awaitPush(channel.join(timeout), `the reply to joining ${channel.topic}`, timeout);
}

/** channel.push() as a promise of { status, response }. */
export function pushEvent(channel, event, payload = {}, { timeout = 5000 } = {}) {
  return awaitPush(channel.push(event, payload, timeout), `the reply to "${event}" on ${channel.topic}`, timeout);
}

/**
 * channel.leave() as a promise of { status, response, ref }. Note: phoenix.js
 * resolves "ok" locally at once (the channel is already "leaving" when it
 * checks whether it can push), so check socket.received for the server's reply.
 */
export async function leaveChannel(channel, { timeout = 5000 } = {}) {
  const push = channel.leave(timeout);
  const result = await awaitPush(push, `the reply to leaving ${channel.topic}`, timeout);
  return { ...result, ref: push.ref };
}

/** Records every payload of `event` on `channel` into the returned array. */
export function collect(channel, event) {
  const seen = [];
  channel.on(event, (payload) => seen.push(payload));
  return seen;
}

/** Unique topic suffix so tests sharing a gateway do not see each other. */
let topicCounter = 0;
export function uniqueRoom(prefix = "room:t") {
  topicCounter += 1;
  return `${prefix}-${process.pid}-${Date.now().toString(36)}-${topicCounter}`;
}

// ---------------------------------------------------------------------------
// Raw WebSocket (exact wire checks)
// ---------------------------------------------------------------------------

/**
 * Opens a plain `ws` connection to /socket/websocket and records every text
 * frame. Returns { ws, frames, send(text), next(pred, opts), close() } where
 * `frames` holds { raw, msg } objects (msg = parsed JSON) in arrival order and
 * `next` waits for the first not-yet-consumed frame matching pred.
 */
export async function openRaw(gw, { query = "vsn=2.0.0", timeout = 5000 } = {}) {
  const ws = new WebSocket(`${gw.wsUrl}/socket/websocket?${query}`);
  const frames = [];
  let closeInfo = null;
  ws.on("message", (data, isBinary) => {
    const raw = isBinary ? data : data.toString("utf8");
    let msg;
    try {
      msg = isBinary ? undefined : JSON.parse(raw);
    } catch {
      msg = undefined;
    }
    frames.push({ raw, msg, isBinary });
  });
  const closed = new Promise((resolve) =>
    ws.once("close", (code, reason) => {
      closeInfo = { code, reason: reason.toString() };
      resolve(closeInfo);
    }),
  );
  await withTimeout(
    new Promise((resolve, reject) => {
      ws.once("open", resolve);
      ws.once("error", reject);
    }),
    timeout,
    `raw WebSocket to ${gw.wsUrl}/socket/websocket?${query} to open`,
  );
  let consumed = 0;
  return {
    ws,
    frames,
    closed,
    closeInfo: () => closeInfo,
    send: (text) => ws.send(text),
    async next(pred = () => true, { timeout: t = 5000, what = "a matching frame" } = {}) {
      const found = await waitFor(
        () => {
          for (let i = consumed; i < frames.length; i++) {
            if (pred(frames[i].msg, frames[i].raw)) {
              consumed = i + 1;
              return frames[i];
            }
          }
          return null;
        },
        { timeout: t, interval: 10, message: () => `${what}; frames so far: ${frames.map((f) => f.raw).join(" | ")}` },
      );
      return found;
    },
    close() {
      if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING) ws.close(1000);
      return withTimeout(closed, 3000, "raw WebSocket close").catch(() => ws.terminate());
    },
  };
}
