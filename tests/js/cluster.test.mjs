// Two gateway nodes sharing one Redis, driven by the official phoenix.js client:
// broadcasts (new_msg, typing) and Presence must behave across nodes exactly as
// they do on one node.
//
// Ordering used for "no duplicate" checks: one node publishes in order, and a
// Redis subscriber receives a channel's messages in PUBLISH order. So once a
// later message from node X has arrived on a socket, any (wrong) extra copy of
// an earlier message from X would already have arrived there too.
import { describe, it, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";

import {
  Presence,
  collect,
  connectSocket,
  disconnectAll,
  joinChannel,
  pushEvent,
  uniqueRoom,
  waitFor,
  presenceCounts,
  startCluster,
} from "./support.mjs";

/** { key: metaCount } from a phoenix.js Presence instance, keys sorted. */

const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

// Every scenario runs with one Redis and with a 3-master + 3-replica Redis Cluster
// (sharded pub/sub): clients must not be able to tell.
for (const topology of ["single", "cluster"]) {
describe(`cluster: two gateway nodes sharing Redis (${topology})`, () => {
  let cluster;
  let nodeA;
  let nodeB;
  let sockets = [];

  before(async () => {
    cluster = await startCluster({ topology });
    ({ nodeA, nodeB } = cluster);
  });

  after(async () => {
    await disconnectAll(sockets);
    await cluster?.stop();
  });

  afterEach(async () => {
    await disconnectAll(sockets);
    sockets = [];
  });

  const open = async (node, { vsn = "2.0.0", params = {} } = {}) => {
    const socket = await connectSocket(node, { vsn, params });
    sockets.push(socket);
    return socket;
  };

  /** A joined channel plus the new_msg payloads it receives. */
  const joined = async (socket, topic) => {
    const channel = socket.channel(topic, {});
    const got = collect(channel, "new_msg");
    assert.deepEqual(await joinChannel(channel), { status: "ok", response: {} }, `join ${topic}`);
    return { channel, got };
  };

  const show = (list) => JSON.stringify(list.map((m) => m.body ?? m));

  /** Waits until `got` ends with a payload whose body is `body`. */
  const arrives = (got, body, where) =>
    waitFor(() => got.some((m) => m.body === body), {
      message: () => `"${body}" to arrive on ${where}; it has ${show(got)}`,
    });

  /**
   * new_msg from a V2 socket on node A to a socket (vsn `vsnB`) on node B,
   * both on `topic`: exactly once each, in order.
   */
  async function broadcastAcrossNodes(topic, vsnB) {
    const onA = await joined(await open(nodeA, { params: { user_id: "sender-a" } }), topic);
    const sockB = await open(nodeB, { vsn: vsnB, params: { user_id: `reader-b-${vsnB}` } });
    const onB = await joined(sockB, topic);

    // One message from A; then a later one from B (a round trip through Redis
    // in the other direction) to be sure no second copy of the first follows.
    const first = { body: "first from A", user: "sender-a" };
    assert.deepEqual(await pushEvent(onA.channel, "new_msg", first), { status: "ok", response: {} });
    await arrives(onB.got, first.body, `node B (vsn ${vsnB})`);
    await arrives(onA.got, first.body, "node A (the sender)");

    const reply = { body: "reply from B", user: "reader-b" };
    assert.deepEqual(await pushEvent(onB.channel, "new_msg", reply), { status: "ok", response: {} });
    await arrives(onA.got, reply.body, "node A");
    await arrives(onB.got, reply.body, `node B (vsn ${vsnB}, the sender)`);
    assert.deepEqual(onA.got, [first, reply], "node A: each message exactly once, in order");
    assert.deepEqual(onB.got, [first, reply], "node B: each message exactly once, in order");

    // The frame node B delivered is a broadcast in the socket's serializer:
    // V1 = an object {topic, event, payload, ref}, V2 = an array decoded by
    // phoenix.js into the same fields, join_ref null; room:* keeps history, so
    // the ref is the message's position (docs/history.md), a string.
    const frame = sockB.received.find((m) => m.event === "new_msg");
    assert.equal(frame.topic, topic);
    assert.deepEqual(frame.payload, first);
    assert.match(String(frame.ref), /^[0-9a-f]+:\d+-\d+$/, `a position in the ref: ${JSON.stringify(frame)}`);
    if (vsnB === "1.0.0") {
      assert.ok(!("join_ref" in frame) || frame.join_ref === null, `V1 frame: ${JSON.stringify(frame)}`);
    } else {
      assert.equal(frame.join_ref ?? null, null);
    }

    // 20 messages pushed back to back from A.
    const burst = Array.from({ length: 20 }, (_, i) => ({ body: `burst ${i + 1}`, n: i + 1 }));
    const replies = burst.map((msg) => pushEvent(onA.channel, "new_msg", msg));
    for (const r of await Promise.all(replies)) assert.deepEqual(r, { status: "ok", response: {} });
    await arrives(onB.got, "burst 20", `node B (vsn ${vsnB})`);
    // Fences: a later message from A (so B has had every copy of A's burst) and
    // one from B (so A has had every copy of its own burst back from Redis).
    const fenceA = { body: "fence from A" };
    const fenceB = { body: "fence from B" };
    assert.equal((await pushEvent(onA.channel, "new_msg", fenceA)).status, "ok");
    await arrives(onB.got, fenceA.body, `node B (vsn ${vsnB})`);
    assert.equal((await pushEvent(onB.channel, "new_msg", fenceB)).status, "ok");
    await arrives(onA.got, fenceB.body, "node A");
    await arrives(onB.got, fenceB.body, `node B (vsn ${vsnB})`);

    const expected = [first, reply, ...burst, fenceA, fenceB];
    assert.deepEqual(onB.got, expected, `node B (vsn ${vsnB}) got ${show(onB.got)}`);
    assert.deepEqual(onA.got, expected, `node A got ${show(onA.got)}`);
  }

  it("new_msg pushed on A reaches B once, and 20 in a row arrive in order (vsn 2.0.0 on room:lobby)", async () => {
    await broadcastAcrossNodes("room:lobby", "2.0.0");
  });

  it("typing pushed on A reaches B and another socket on A, never the sender", async () => {
    const topic = uniqueRoom("room:typing");
    const alice = await joined(await open(nodeA, { params: { user_id: "alice" } }), topic);
    const carol = await joined(await open(nodeA, { params: { user_id: "carol" } }), topic);
    const bob = await joined(await open(nodeB, { params: { user_id: "bob" } }), topic);
    const aliceTyping = collect(alice.channel, "typing");
    const carolTyping = collect(carol.channel, "typing");
    const bobTyping = collect(bob.channel, "typing");

    const typing = { user: "alice", typing: true };
    assert.deepEqual(await pushEvent(alice.channel, "typing", typing), { status: "ok", response: {} });
    await waitFor(() => bobTyping.length >= 1 && carolTyping.length >= 1, {
      message: () =>
        `typing on node B (bob: ${JSON.stringify(bobTyping)}) and on node A's other socket ` +
        `(carol: ${JSON.stringify(carolTyping)})`,
    });

    // Bob answers after seeing it: his new_msg goes through Redis to node A,
    // which therefore has already received its own typing publish back; any
    // copy meant for Alice would have been delivered before this new_msg.
    const answer = { body: "bob saw alice typing" };
    assert.equal((await pushEvent(bob.channel, "new_msg", answer)).status, "ok");
    await arrives(alice.got, answer.body, "alice (node A)");
    await arrives(carol.got, answer.body, "carol (node A)");
    // One more typing from A, by carol: alice (same node) and bob (node B) get
    // it; fenced the same way, for carol herself and for late duplicates.
    const carolTypes = { user: "carol", typing: false };
    assert.equal((await pushEvent(carol.channel, "typing", carolTypes)).status, "ok");
    await waitFor(() => bobTyping.length >= 2 && aliceTyping.length >= 1, {
      message: () =>
        `carol's typing on node B (bob: ${JSON.stringify(bobTyping)}) and on node A (alice: ${JSON.stringify(aliceTyping)})`,
    });
    const answer2 = { body: "bob saw carol typing" };
    assert.equal((await pushEvent(bob.channel, "new_msg", answer2)).status, "ok");
    await arrives(alice.got, answer2.body, "alice (node A)");
    await arrives(carol.got, answer2.body, "carol (node A)");

    assert.deepEqual(aliceTyping, [carolTypes], "alice (node A): carol's typing once, never her own");
    assert.deepEqual(carolTyping, [typing], "carol (node A): alice's typing once, never her own");
    assert.deepEqual(bobTyping, [typing, carolTypes], "bob (node B): each typing once, in order");
  });

  it("Presence: the same users, metas and leaves on watchers of both nodes", async () => {
    const topic = uniqueRoom("room:presence");
    // Watchers have no user_id: they watch without being tracked.
    const watch = async (node) => {
      const channel = (await open(node)).channel(topic, {});
      const presence = new Presence(channel);
      assert.deepEqual(await joinChannel(channel), { status: "ok", response: {} });
      return presence;
    };
    const watcherA = await watch(nodeA);
    const watcherB = await watch(nodeB);

    const aliceOnA = await open(nodeA, { params: { user_id: "Alice" } });
    const aliceOnB = await open(nodeB, { params: { user_id: "Alice" } });
    const bobOnB = await open(nodeB, { params: { user_id: "Bob" } });
    for (const socket of [aliceOnA, aliceOnB, bobOnB]) await joined(socket, topic);

    const converge = async (want, why) => {
      for (const [name, presence] of [
        ["node A", watcherA],
        ["node B", watcherB],
      ]) {
        await waitFor(() => same(presenceCounts(presence), want), {
          message: () => `the watcher on ${name} to see ${JSON.stringify(want)} ${why}; it sees ${JSON.stringify(presenceCounts(presence))}`,
        });
      }
    };

    await converge({ Alice: 2, Bob: 1 }, "after Alice joined on both nodes and Bob on B");
    // Both nodes agree on the metas themselves (three tracked connections, three refs).
    const refs = (presence) => {
      const out = [];
      presence.list((key, { metas }) => metas.forEach((m) => out.push(`${key}/${m.phx_ref}`)));
      return out.sort();
    };
    assert.equal(new Set(refs(watcherA)).size, 3, `distinct phx_refs: ${JSON.stringify(refs(watcherA))}`);
    assert.deepEqual(refs(watcherB), refs(watcherA), "both watchers see the same metas");

    // A late joiner gets the cross-node state in its presence_state.
    const lateChan = (await open(nodeA)).channel(topic, {});
    const states = collect(lateChan, "presence_state");
    assert.equal((await joinChannel(lateChan)).status, "ok");
    await waitFor(() => states.length >= 1, { message: "presence_state for a late joiner on node A" });
    assert.deepEqual(
      Object.fromEntries(Object.entries(states[0]).map(([k, v]) => [k, v.metas.length]).sort()),
      { Alice: 2, Bob: 1 },
      `late joiner's presence_state: ${JSON.stringify(states[0])}`,
    );

    await disconnectAll([aliceOnA]);
    await converge({ Alice: 1, Bob: 1 }, "after Alice's socket on node A closed");
    assert.deepEqual(refs(watcherB), refs(watcherA));

    await disconnectAll([bobOnB]);
    await converge({ Alice: 1 }, "after Bob's socket (node B) closed");
  });

  it("new_msg from a V2 socket on A reaches a vsn 1.0.0 socket on B once, in order", async () => {
    await broadcastAcrossNodes(uniqueRoom("room:v1"), "1.0.0");
  });
});
}
