// Channels over WebSocket with the official phoenix.js client (vsn 2.0.0 and
// 1.0.0), plus a few exact-wire checks with a raw `ws` connection.
import { describe, it, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";

import {
  collect,
  connectSocket,
  disconnectAll,
  joinChannel,
  leaveChannel,
  openRaw,
  pushEvent,
  startGateway,
  uniqueRoom,
  waitFor,
} from "./support.mjs";

describe("channels", () => {
  let gw;
  before(async () => {
    gw = await startGateway();
  });
  after(async () => {
    await gw?.stop();
  });

  for (const vsn of ["2.0.0", "1.0.0"]) {
    describe(`phoenix.js, vsn ${vsn}`, () => {
      let sockets = [];
      const open = async (params = {}) => {
        const socket = await connectSocket(gw, { vsn, params });
        sockets.push(socket);
        return socket;
      };
      afterEach(async () => {
        await disconnectAll(sockets);
        sockets = [];
      });

      it("joins room:lobby with an empty ok reply and echoes ping", async () => {
        const socket = await open({ user_id: `pinger-${vsn}` });
        const channel = socket.channel("room:lobby", {});
        assert.deepEqual(await joinChannel(channel), { status: "ok", response: {} });
        assert.equal(channel.state, "joined");

        const payload = { n: 42, text: "héllo ✓", nested: { list: [1, "two", null, true] } };
        assert.deepEqual(await pushEvent(channel, "ping", payload), { status: "ok", response: payload });
      });

      it("broadcasts new_msg to every subscriber, the sender included", async () => {
        const topic = uniqueRoom();
        const alice = await open({ user_id: "alice" });
        const bob = await open({ user_id: "bob" });
        const aliceChan = alice.channel(topic, {});
        const bobChan = bob.channel(topic, {});
        const aliceGot = collect(aliceChan, "new_msg");
        const bobGot = collect(bobChan, "new_msg");
        assert.equal((await joinChannel(aliceChan)).status, "ok");
        assert.equal((await joinChannel(bobChan)).status, "ok");

        const msg = { body: `hello from alice over ${vsn}`, user: "alice" };
        assert.deepEqual(await pushEvent(aliceChan, "new_msg", msg), { status: "ok", response: {} });

        await waitFor(() => aliceGot.length >= 1 && bobGot.length >= 1, {
          message: () => `new_msg on both sockets; alice saw ${JSON.stringify(aliceGot)}, bob saw ${JSON.stringify(bobGot)}`,
        });
        assert.deepEqual(aliceGot, [msg]);
        assert.deepEqual(bobGot, [msg]);

        // On the wire a broadcast has no refs.
        const frame = bob.received.find((m) => m.event === "new_msg");
        // room:* keeps history: the ref is the message's position (docs/history.md).
        assert.match(String(frame.ref), /^[0-9a-f]+:\d+-\d+$/, `a position in the ref: ${JSON.stringify(frame)}`);
        assert.equal(frame.join_ref ?? null, null);
      });

      it("broadcasts typing to the others but not to the sender", async () => {
        const topic = uniqueRoom();
        const alice = await open({ user_id: "alice" });
        const bob = await open({ user_id: "bob" });
        const aliceChan = alice.channel(topic, {});
        const bobChan = bob.channel(topic, {});
        const aliceGot = collect(aliceChan, "typing");
        const bobGot = collect(bobChan, "typing");
        assert.equal((await joinChannel(aliceChan)).status, "ok");
        assert.equal((await joinChannel(bobChan)).status, "ok");

        const msg = { user: "alice", typing: true };
        assert.deepEqual(await pushEvent(aliceChan, "typing", msg), { status: "ok", response: {} });
        await waitFor(() => bobGot.length >= 1, {
          message: () => `typing on bob's socket; bob saw ${JSON.stringify(bobGot)}`,
        });
        assert.deepEqual(bobGot, [msg]);

        // The broadcast has reached bob; one more round trip on alice's own
        // connection gives a copy sent to her (wrongly) time to arrive.
        assert.equal((await pushEvent(aliceChan, "ping", { after: "typing" })).status, "ok");
        assert.deepEqual(aliceGot, [], "the sender must not receive its own typing event");
        assert.equal(alice.received.filter((m) => m.event === "typing").length, 0);
      });

      it("refuses room:private:* with unauthorized", async () => {
        const socket = await open({ user_id: "mallory" });
        const channel = socket.channel("room:private:x", {});
        const reply = await joinChannel(channel);
        // Stop phoenix.js from retrying the refused join.
        channel.leave();
        assert.deepEqual(reply, { status: "error", response: { reason: "unauthorized" } });
      });

      it("answers a join to an unrouted topic with unmatched topic", async () => {
        const socket = await open({ user_id: "alice" });
        const channel = socket.channel("nope:1", {});
        const reply = await joinChannel(channel);
        channel.leave();
        assert.deepEqual(reply, { status: "error", response: { reason: "unmatched topic" } });
      });

      it("replies error to an unknown event and keeps the channel joined", async () => {
        const socket = await open({ user_id: "alice" });
        const channel = socket.channel(uniqueRoom(), {});
        assert.equal((await joinChannel(channel)).status, "ok");
        const errors = [];
        channel.onError((reason) => errors.push(reason));

        assert.deepEqual(await pushEvent(channel, "dance", { style: "waltz" }), {
          status: "error",
          response: { reason: "unhandled event" },
        });
        // Still joined: the same channel keeps working.
        assert.deepEqual(await pushEvent(channel, "ping", { still: "here" }), {
          status: "ok",
          response: { still: "here" },
        });
        assert.equal(channel.state, "joined");
        assert.deepEqual(errors, []);
        assert.equal(socket.received.filter((m) => m.event === "phx_error" || m.event === "phx_close").length, 0);
      });

      it("leave() gets an ok reply from the server", async () => {
        const socket = await open({ user_id: "alice" });
        const topic = uniqueRoom();
        const channel = socket.channel(topic, {});
        assert.equal((await joinChannel(channel)).status, "ok");

        const { status, ref } = await leaveChannel(channel);
        assert.equal(status, "ok");
        assert.equal(channel.state, "closed");
        // phoenix.js closes the channel locally right away (its leave() never
        // waits), so look for the server's own reply to the phx_leave on the wire.
        const reply = await waitFor(
          () => socket.received.find((m) => m.topic === topic && m.event === "phx_reply" && m.ref === ref),
          { message: () => `the server's phx_reply to phx_leave (ref ${ref}); frames: ${JSON.stringify(socket.received)}` },
        );
        assert.deepEqual(reply.payload, { status: "ok", response: {} });
      });
    });
  }

  describe("raw wire, vsn 2.0.0", () => {
    let raw;
    afterEach(async () => {
      await raw?.close();
      raw = undefined;
    });

    it("join reply is byte-exact", async () => {
      raw = await openRaw(gw);
      raw.send('["1","1","room:lobby","phx_join",{}]');
      const reply = await raw.next((m) => Array.isArray(m) && m[3] === "phx_reply", { what: "the join reply" });
      assert.equal(reply.raw, '["1","1","room:lobby","phx_reply",{"response":{},"status":"ok"}]');
    });

    it("heartbeat reply is byte-exact", async () => {
      raw = await openRaw(gw);
      raw.send('[null,"2","phoenix","heartbeat",{}]');
      const reply = await raw.next((m) => Array.isArray(m) && m[1] === "2", { what: "the heartbeat reply" });
      assert.equal(reply.raw, '[null,"2","phoenix","phx_reply",{"response":{},"status":"ok"}]');
    });

    it("unmatched topic reply has a null join_ref", async () => {
      raw = await openRaw(gw);
      raw.send('["3","3","nope:1","phx_join",{}]');
      const reply = await raw.next((m) => Array.isArray(m) && m[1] === "3", { what: "the join reply" });
      assert.deepEqual(reply.msg, [
        null,
        "3",
        "nope:1",
        "phx_reply",
        { response: { reason: "unmatched topic" }, status: "error" },
      ]);
    });
  });

  describe("raw wire, vsn 1.0.0", () => {
    it("replies are objects without join_ref", async () => {
      const raw = await openRaw(gw, { query: "vsn=1.0.0" });
      try {
        raw.send(JSON.stringify({ topic: "room:lobby", event: "phx_join", payload: {}, ref: "1", join_ref: "1" }));
        const reply = await raw.next((m) => m && m.event === "phx_reply", { what: "the V1 join reply" });
        assert.deepEqual(reply.msg, {
          topic: "room:lobby",
          event: "phx_reply",
          ref: "1",
          payload: { status: "ok", response: {} },
        });
        raw.send(JSON.stringify({ topic: "phoenix", event: "heartbeat", payload: {}, ref: "2" }));
        const hb = await raw.next((m) => m && m.ref === "2", { what: "the V1 heartbeat reply" });
        assert.deepEqual(hb.msg, { topic: "phoenix", event: "phx_reply", ref: "2", payload: { status: "ok", response: {} } });
      } finally {
        await raw.close();
      }
    });
  });
});

describe("heartbeat timeout", () => {
  const TIMEOUT_MS = 600;
  let gw;
  before(async () => {
    gw = await startGateway({ env: { PHX_GATEWAY__SOCKET__HEARTBEAT_TIMEOUT_MS: String(TIMEOUT_MS) } });
  });
  after(async () => {
    await gw?.stop();
  });

  it("closes a silent socket and keeps a heartbeating one open", async () => {
    const silent = await openRaw(gw);
    const beating = await openRaw(gw);
    const started = Date.now();
    let ref = 0;
    const beat = setInterval(() => {
      ref += 1;
      beating.send(JSON.stringify([null, `hb${ref}`, "phoenix", "heartbeat", {}]));
    }, TIMEOUT_MS / 4);
    try {
      await waitFor(() => silent.closeInfo(), {
        timeout: TIMEOUT_MS * 10,
        message: `the server to close a socket silent for longer than ${TIMEOUT_MS} ms`,
      });
      const elapsed = Date.now() - started;
      assert.ok(elapsed >= TIMEOUT_MS * 0.8, `closed after ${elapsed} ms, before the ${TIMEOUT_MS} ms timeout`);
      // The heartbeating socket has outlived the silent one and got answers.
      await waitFor(() => Date.now() - started > TIMEOUT_MS * 2.5, { timeout: TIMEOUT_MS * 5, message: "time to pass" });
      assert.equal(beating.closeInfo(), null, "a socket that keeps sending heartbeats must stay open");
      const replies = beating.frames.filter((f) => Array.isArray(f.msg) && f.msg[2] === "phoenix" && f.msg[3] === "phx_reply");
      assert.ok(replies.length >= 3, `expected heartbeat replies, got ${beating.frames.map((f) => f.raw).join(" | ")}`);
    } finally {
      clearInterval(beat);
      await silent.close();
      await beating.close();
    }
  });
});
