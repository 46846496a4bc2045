// History and recovery (docs/history.md) with the official phoenix.js client, unchanged:
// the snippet of docs/history.md as written, on one node (in-memory history) and on two
// nodes over Redis (a Redis stream per topic), reconnecting through the same or the other
// node.
import { describe, it, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import path from "node:path";
import { setTimeout as delay } from "node:timers/promises";

import {
  REPO_ROOT,
  connectSocket,
  disconnectAll,
  joinChannel,
  pushEvent,
  redisCli,
  startCluster,
  startGateway,
  uniqueRoom,
  waitFor,
} from "./support.mjs";

// hist:* keeps 30 messages, small:* 10; plain:* keeps none.
const CONFIG = path.join(REPO_ROOT, "tests/fixtures/history.toml");
const SMALL_HISTORY = 10;

/** The docs/history.md client: a channel that asks for what it missed on every rejoin. */
function recoveringChannel(socket, topic, { backfill = 5 } = {}) {
  const state = { position: null, got: [], refs: [], replies: [] };
  const channel = socket.channel(topic, () =>
    state.position ? { history: { since: state.position } } : { history: { last: backfill } },
  );
  channel.on("new_msg", (msg, ref) => {
    state.position = ref;
    state.got.push(msg.n);
    state.refs.push(ref);
  });
  state.channel = channel;
  state.join = () =>
    new Promise((resolve, reject) => {
      channel
        .join()
        .receive("ok", (resp) => {
          state.replies.push(resp);
          resolve(resp);
        })
        .receive("error", reject)
        .receive("timeout", () => reject(new Error("join timeout")));
    });
  // Later (re)joins' replies, pushed by phoenix.js's rejoin.
  channel.on("phx_reply", () => {});
  return state;
}

/** Publishes new_msg {n} for n in [from, to) through a joined channel, in order. */
async function publish(channel, from, to) {
  for (let n = from; n < to; n++) {
    await pushEvent(channel, "new_msg", { n });
  }
}

const range = (from, to) => Array.from({ length: to - from }, (_, i) => from + i);

for (const topology of ["one node", "two nodes over Redis"]) {
  describe(`history and recovery (${topology})`, () => {
    let nodeA;
    let nodeB;
    let cluster;
    let sockets = [];

    before(async () => {
      if (topology === "one node") {
        nodeA = await startGateway({ args: ["--config", CONFIG] });
        nodeB = nodeA;
      } else {
        cluster = await startCluster({ args: ["--config", CONFIG] });
        ({ nodeA, nodeB } = cluster);
      }
    });

    after(async () => {
      await disconnectAll(sockets);
      if (cluster) await cluster.stop();
      else await nodeA?.stop();
    });

    afterEach(async () => {
      await disconnectAll(sockets);
      sockets = [];
    });

    const open = async (node, opts = {}) => {
      const socket = await connectSocket(node, opts);
      sockets.push(socket);
      return socket;
    };

    const publisher = async (topic) => {
      const socket = await open(nodeB);
      const channel = socket.channel(topic, {});
      assert.equal((await joinChannel(channel)).status, "ok");
      return channel;
    };

    /** Disconnect, publish 20 elsewhere, reconnect (to `through`): exactly the 20, then live. */
    async function recoverThrough(through) {
      const topic = uniqueRoom("hist:r");
      const pub = await publisher(topic);
      const socket = await open(nodeA);
      const client = recoveringChannel(socket, topic);
      const first = await client.join();
      assert.equal(first.history.recovered, true, JSON.stringify(first));
      await publish(pub, 0, 3);
      await waitFor(() => client.got.length === 3, { message: "live messages before the disconnect" });
      for (const ref of client.refs) {
        assert.equal(typeof ref, "string", "a position is a string");
        assert.ok(!/^\d+$/.test(ref), `a position is never a plain integer: ${ref}`);
      }

      // Fully closed (the callback runs after the close handshake): nothing more arrives.
      await new Promise((resolve) => socket.disconnect(resolve));
      await publish(pub, 3, 23);
      if (through !== nodeA) socket.endPoint = `${through.wsUrl}/socket/websocket`;
      socket.connect();
      await waitFor(() => client.replies.length === 2, { message: "the rejoin reply" });
      assert.equal(client.replies[1].history.recovered, true, JSON.stringify(client.replies[1]));
      await waitFor(() => client.got.length === 23, {
        message: () => `the 20 missed messages (got ${JSON.stringify(client.got)})`,
      });
      await publish(pub, 23, 25);
      await waitFor(() => client.got.length === 25, { message: "live messages after the replay" });
      assert.deepEqual(client.got, range(0, 25), "every message exactly once, in order");
      assert.equal(client.replies[1].history.position, client.refs[22], "the reply names the position");
    }

    it("the docs/history.md snippet recovers the 20 messages missed while disconnected", async () => {
      await recoverThrough(nodeA);
    });

    it("recovers through the other node", { skip: topology === "one node" }, async () => {
      await recoverThrough(nodeB);
    });

    it("more than history_size missed: recovered false and nothing replayed", async () => {
      const topic = uniqueRoom("small:f");
      const pub = await publisher(topic);
      const socket = await open(nodeA);
      const client = recoveringChannel(socket, topic);
      await client.join();
      await publish(pub, 0, 1);
      await waitFor(() => client.got.length === 1, { message: "one live message" });
      // Fully closed (the callback runs after the close handshake): nothing more arrives.
      await new Promise((resolve) => socket.disconnect(resolve));
      await publish(pub, 1, 1 + SMALL_HISTORY + 1);
      socket.connect();
      await waitFor(() => client.replies.length === 2, { message: "the rejoin reply" });
      assert.equal(client.replies[1].history.recovered, false, JSON.stringify(client.replies[1]));
      await publish(pub, 100, 101);
      await waitFor(() => client.got.includes(100), { message: "the next live message" });
      assert.deepEqual(client.got, [0, 100], "nothing replayed");
    });

    it("backfill: history {last: 5} pushes the last 5 after the reply, then live ones", async () => {
      const topic = uniqueRoom("hist:b");
      const pub = await publisher(topic);
      await publish(pub, 0, 8);
      const socket = await open(nodeA);
      const client = recoveringChannel(socket, topic, { backfill: 5 });
      const reply = await client.join();
      assert.equal(reply.history.recovered, true);
      await publish(pub, 8, 9);
      await waitFor(() => client.got.length === 6, { message: () => `backfill + live: ${client.got}` });
      assert.deepEqual(client.got, [3, 4, 5, 6, 7, 8]);
    });

    it("a stock client sees what it saw before, plus a position in ref", async () => {
      const topic = uniqueRoom("hist:s");
      const pub = await publisher(topic);
      await publish(pub, 0, 3);
      const socket = await open(nodeA);
      const channel = socket.channel(topic, {});
      const got = [];
      channel.on("new_msg", (msg, ref) => got.push([msg.n, typeof ref]));
      const reply = await joinChannel(channel);
      assert.deepEqual(reply, { status: "ok", response: {} }, "no history in the reply");
      await publish(pub, 3, 4);
      await waitFor(() => got.length === 1, { message: "the live message" });
      assert.deepEqual(got, [[3, "string"]], "nothing replayed; the ref is a position");
    });

    it("a V1 (vsn 1.0.0) client recovers too", async () => {
      const topic = uniqueRoom("hist:v1");
      const pub = await publisher(topic);
      const socket = await open(nodeA, { vsn: "1.0.0" });
      const client = recoveringChannel(socket, topic);
      await client.join();
      await publish(pub, 0, 2);
      await waitFor(() => client.got.length === 2, { message: "live messages" });
      // Fully closed (the callback runs after the close handshake): nothing more arrives.
      await new Promise((resolve) => socket.disconnect(resolve));
      await publish(pub, 2, 7);
      socket.connect();
      await waitFor(() => client.got.length === 7, { message: () => `recovered: ${client.got}` });
      assert.deepEqual(client.got, range(0, 7));
      assert.equal(client.replies[1].history.recovered, true);
    });

    it("a malformed history request is an error reply, and the socket lives on", async () => {
      const socket = await open(nodeA);
      const bad = socket.channel(uniqueRoom("hist:m"), { history: { since: 42 } });
      const reply = await joinChannel(bad);
      assert.equal(reply.status, "error");
      assert.match(reply.response.reason, /invalid history/);
      const ok = socket.channel(uniqueRoom("plain:m"), { history: { last: 3 } });
      assert.equal((await joinChannel(ok)).status, "ok", "routes without history ignore it");
    });

    it("Redis flushed: an old position does not recover", { skip: topology === "one node" }, async () => {
      const topic = uniqueRoom("hist:x");
      const pub = await publisher(topic);
      const socket = await open(nodeA);
      const client = recoveringChannel(socket, topic);
      await client.join();
      await publish(pub, 0, 2);
      await waitFor(() => client.got.length === 2, { message: "live messages" });
      // Fully closed (the callback runs after the close handshake): nothing more arrives.
      await new Promise((resolve) => socket.disconnect(resolve));
      await redisCli(["-p", String(cluster.redis.port), "FLUSHALL"]);
      await publish(pub, 2, 4);
      socket.connect();
      await waitFor(() => client.replies.length === 2, { message: "the rejoin reply" });
      assert.equal(client.replies[1].history.recovered, false, JSON.stringify(client.replies[1]));
    });
  });
}

// ---------------------------------------------------------------------------
// A rolling restart: no message lost for clients that ask for recovery
// ---------------------------------------------------------------------------

/**
 * A TCP round-robin proxy in front of `ports` (like a load balancer without sticky
 * sessions): each new connection goes to the next target; a target that refuses is skipped,
 * as a load balancer's health check would.
 */
async function startTcpRoundRobin(ports) {
  const targets = [...ports];
  let next = 0;
  const open = new Set();
  const server = net.createServer((client) => {
    open.add(client);
    client.on("close", () => open.delete(client));
    const tryTarget = (attempt) => {
      if (attempt >= targets.length) {
        client.destroy();
        return;
      }
      const port = targets[next++ % targets.length];
      const upstream = net.connect({ port, host: "127.0.0.1" });
      let connected = false;
      upstream.once("connect", () => {
        connected = true;
        client.pipe(upstream);
        upstream.pipe(client);
        upstream.on("close", () => client.destroy());
        client.on("close", () => upstream.destroy());
        client.on("error", () => upstream.destroy());
      });
      upstream.on("error", () => {
        if (connected) client.destroy();
        else tryTarget(attempt + 1);
      });
    };
    tryTarget(0);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = server.address().port;
  return {
    wsUrl: `ws://127.0.0.1:${port}`,
    stop: async () => {
      for (const c of open) c.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

describe("a rolling restart behind a round-robin proxy (two nodes over Redis)", () => {
  let cluster;
  let proxy;
  let sockets = [];

  before(async () => {
    cluster = await startCluster({
      args: ["--config", CONFIG],
      env: { PHX_GATEWAY__SHUTDOWN__DRAIN_MS: "1000" },
    });
    proxy = await startTcpRoundRobin([cluster.nodeA.port, cluster.nodeB.port]);
  });

  after(async () => {
    await disconnectAll(sockets);
    await proxy?.stop();
    await cluster?.stop();
  });

  it("SIGTERM one node under traffic: 20 recovering clients end with every message exactly once, in order", async () => {
    const topic = uniqueRoom("roll:r");
    const clients = [];
    for (let i = 0; i < 20; i++) {
      const socket = await connectSocket(proxy);
      sockets.push(socket);
      const client = recoveringChannel(socket, topic);
      await client.join();
      clients.push(client);
    }
    // The publisher talks to node B directly; node A is the one restarted.
    const pubSocket = await connectSocket(cluster.nodeB);
    sockets.push(pubSocket);
    const pub = pubSocket.channel(topic, {});
    assert.equal((await joinChannel(pub)).status, "ok");

    let sent = 0;
    let stopping = false;
    const publishing = (async () => {
      while (!stopping) {
        await pushEvent(pub, "new_msg", { n: sent });
        sent++;
        await delay(20);
      }
    })();
    await waitFor(() => sent >= 30, { message: "traffic before the restart" });
    // SIGTERM: node A drains (closes its sockets over 1 s) and exits.
    const stopped = cluster.nodeA.stop();
    await delay(2500);
    stopping = true;
    await publishing;
    await stopped;
    for (const [i, c] of clients.entries()) {
      await waitFor(() => c.got.length === sent, {
        timeout: 10000,
        message: () => `client ${i}: ${sent} messages (got ${c.got.length}: ${JSON.stringify(c.got.slice(-5))})`,
      });
      assert.deepEqual(c.got, range(0, sent), `client ${i}: every message exactly once, in order`);
    }
    const rejoined = clients.filter((c) => c.replies.length > 1);
    assert.ok(rejoined.length > 0, "some clients were on the stopped node and rejoined");
    for (const c of rejoined) {
      assert.equal(c.replies.at(-1).history.recovered, true, JSON.stringify(c.replies.at(-1)));
    }
  });
});
