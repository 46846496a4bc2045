// Gateway nodes in a Phoenix app's cluster (redis.phoenix_pubsub), driven by the official
// phoenix.js client. A Redis "emitter" plays the Phoenix node: it PUBLISHes the frames a
// real Phoenix 1.7.21 node (phoenix_pubsub_redis 3.0.1) published, byte for byte, and
// listens on the Phoenix channel for what the gateway publishes there.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import net from "node:net";

import {
  REPO_ROOT,
  collect,
  connectSocket,
  disconnectAll,
  joinChannel,
  pushEvent,
  startCluster,
  waitFor,
} from "./support.mjs";

const CHANNEL = "phx:Elixir.Ref.PubSub.Adapter";
const FRAMES = JSON.parse(
  fs.readFileSync(`${REPO_ROOT}/tests/fixtures/phoenix-pubsub-redis-frames.json`, "utf8"),
).frames.map((f) => Buffer.from(f.hex, "hex"));

/** One RESP command as bytes (binary-safe arguments). */
function resp(args) {
  const parts = [Buffer.from(`*${args.length}\r\n`)];
  for (const a of args) {
    const b = Buffer.isBuffer(a) ? a : Buffer.from(String(a));
    parts.push(Buffer.from(`$${b.length}\r\n`), b, Buffer.from("\r\n"));
  }
  return Buffer.concat(parts);
}

/** One RESP array of bulk strings and integers at the start of `buf`, or null if incomplete. */
function readArray(buf) {
  const line = (at) => {
    const end = buf.indexOf("\r\n", at);
    return end < 0 ? null : { text: buf.toString("latin1", at, end), next: end + 2 };
  };
  const head = line(0);
  if (!head) return null;
  if (head.text[0] !== "*") throw new Error(`unexpected reply ${head.text}`);
  const items = [];
  let at = head.next;
  for (let i = 0; i < Number(head.text.slice(1)); i++) {
    const l = line(at);
    if (!l) return null;
    if (l.text[0] === ":") {
      items.push(Buffer.from(l.text.slice(1)));
      at = l.next;
    } else {
      const n = Number(l.text.slice(1));
      if (buf.length < l.next + n + 2) return null;
      items.push(buf.subarray(l.next, l.next + n));
      at = l.next + n + 2;
    }
  }
  return { items, end: at };
}

/** A plain Redis connection: publish(frame), and the frames seen on the Phoenix channel. */
async function emitter(port) {
  const connect = () =>
    new Promise((resolve, reject) => {
      const s = net.connect(port, "127.0.0.1", () => resolve(s));
      s.once("error", reject);
    });
  const pub = await connect();
  pub.on("data", () => {});
  const sub = await connect();
  const seen = [];
  let buf = Buffer.alloc(0);
  sub.on("data", (chunk) => {
    buf = Buffer.concat([buf, chunk]);
    // Pushes are arrays of 3: bulk strings ("message", channel, payload: anything, so read
    // by length) or an integer (the subscribe confirmation's count).
    for (;;) {
      const parsed = readArray(buf);
      if (!parsed) break;
      buf = buf.subarray(parsed.end);
      const [kind, , payload] = parsed.items;
      if (kind.toString() === "message") seen.push(Buffer.from(payload));
    }
  });
  sub.write(resp(["SUBSCRIBE", CHANNEL]));
  return {
    seen,
    publish: (frame) => pub.write(resp(["PUBLISH", CHANNEL, frame])),
    close: () => {
      pub.destroy();
      sub.destroy();
    },
  };
}

describe("phoenix interop: two gateway nodes joined to a Phoenix PubSub", () => {
  let cluster;
  let phoenix;
  const sockets = [];

  before(async () => {
    cluster = await startCluster({ env: { PHX_GATEWAY__REDIS__PHOENIX_PUBSUB: "Ref.PubSub" } });
    phoenix = await emitter(cluster.redis.port);
  });

  after(async () => {
    phoenix?.close();
    await disconnectAll(sockets);
    await cluster?.stop();
  });

  const open = async (node, opts) => {
    const socket = await connectSocket(node, opts);
    sockets.push(socket);
    return socket;
  };

  it("delivers what Phoenix published to phoenix.js on both nodes, and publishes what they send as Phoenix does", async () => {
    const alice = await open(cluster.nodeA, { params: { user_id: "alice" }, reconnectAfterMs: () => 60000 });
    const bob = await open(cluster.nodeB, { params: { user_id: "bob" } });
    const old = await open(cluster.nodeB, { vsn: "1.0.0" });
    const channels = [alice, bob, old].map((s) => s.channel("room:lobby", {}));
    for (const ch of channels) assert.equal((await joinChannel(ch)).status, "ok");
    const msgs = channels.map((ch) => collect(ch, "new_msg"));
    const shouts = channels.map((ch) => collect(ch, "shout"));
    const bins = channels.slice(0, 2).map((ch) => collect(ch, "bin_evt"));

    // Tracker replication, then Endpoint.broadcast with every JSON type, the compressed
    // broadcast!, a {:binary, _} payload and broadcast_from! (a plain broadcast here).
    for (const i of [0, 4, 7, 1, 8, 9, 6]) phoenix.publish(FRAMES[i]);
    await waitFor(() => shouts.every((s) => s.length === 1), { message: "every socket to get the shout" });
    const big = {
      body: "hello", n: 1, f: 1.5, ok: true, none: null, list: [1, "two", { three: 3 }],
      nested: { a: { b: "c" } }, unicode: "héllo ✓", big: 12345678901234567890, neg: -42,
      empty_map: {}, empty_list: [],
    };
    for (const m of msgs) {
      assert.deepEqual(m, [big, { body: "from client", user_id: "alice" }]);
    }
    assert.deepEqual(shouts[1], [{ body: "to others" }]);
    for (const b of bins) {
      assert.equal(b.length, 1);
      assert.deepEqual([...new Uint8Array(b[0])], [0, 1, 2, 253, 254, 255]);
    }
    // Nothing of Phoenix.Tracker reached phoenix.js: its delta (frame 5) carries alice's
    // presence with phx_ref GO1jv-7v_ApnCgBR (the gateway's own presence of alice has its own
    // refs), and no event but the channel's own.
    const events = new Set(["phx_reply", "presence_state", "presence_diff", "new_msg", "shout", "bin_evt"]);
    for (const s of [alice, bob, old]) {
      assert.ok(!JSON.stringify(s.received).includes("GO1jv-7v_ApnCgBR"), "no tracker presence");
      assert.deepEqual(s.received.filter((m) => !events.has(m.event)).map((m) => m.event), []);
    }

    // A direct broadcast to node gw-node-1 reaches nobody here (the nodes are named after
    // their host), then a socket id's disconnect closes alice's socket only.
    const closed = new Promise((resolve) => alice.onClose(resolve));
    phoenix.publish(FRAMES[10]);
    phoenix.publish(FRAMES[2]);
    await closed;
    assert.equal(msgs[1].length, 2, "the :only frame addressed another node");

    // phoenix.js on node B pushes new_msg: one frame on the Phoenix channel, as Phoenix writes it.
    const before = phoenix.seen.length;
    assert.equal((await pushEvent(channels[1], "new_msg", { body: "from phoenix.js" })).status, "ok");
    await waitFor(() => msgs[2].length === 3, { message: "the V1 socket to get bob's message" });
    await waitFor(() => phoenix.seen.length > before, { message: "a frame on the Phoenix channel" });
    const frames = phoenix.seen.slice(before).filter((f) => f.includes("from phoenix.js"));
    assert.equal(frames.length, 1, `published once: ${frames.map((x) => x.toString("latin1")).join(" | ")}`);
    const f = frames[0];
    assert.deepEqual([...f.subarray(0, 14)], [131, 104, 6, 97, 3, 100, 0, 6, ...Buffer.from("except")]);
    for (const part of ["phx-gateway", "room:lobby", "Elixir.Phoenix.Socket.Broadcast", "new_msg", "Elixir.Phoenix.Channel.Server"]) {
      assert.ok(f.includes(part), `the frame holds ${part}`);
    }
    // The gateway's own frame is not delivered again by either node.
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(msgs[1].length, 3);
    assert.equal(msgs[2].length, 3);
  });
});
