// Presence on room:lobby, observed through the official phoenix.js Presence
// class, as in the Phoenix guide: two tabs of Alice, one of Bob, a watcher.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";

import {
  Presence,
  collect,
  connectSocket,
  disconnectAll,
  joinChannel,
  leaveChannel,
  startGateway,
  waitFor,
  presenceCounts,
} from "./support.mjs";

/** { key: metaCount } from a phoenix.js Presence instance. */

describe("presence on room:lobby", () => {
  let gw;
  const sockets = [];
  before(async () => {
    gw = await startGateway();
  });
  after(async () => {
    await disconnectAll(sockets);
    await gw?.stop();
  });

  const open = async (params) => {
    const socket = await connectSocket(gw, { params });
    sockets.push(socket);
    return socket;
  };

  it("tracks users by user_id, one meta per connection", async () => {
    // The watcher has no user_id: it may join and watch but is not tracked.
    const watcher = await open({});
    const watchChan = watcher.channel("room:lobby", {});
    const presence = new Presence(watchChan);
    let syncs = 0;
    presence.onSync(() => {
      syncs += 1;
    });
    const states = collect(watchChan, "presence_state");
    const diffs = collect(watchChan, "presence_diff");
    assert.deepEqual(await joinChannel(watchChan), { status: "ok", response: {} });

    await waitFor(() => states.length === 1, { message: "presence_state after the watcher's join" });
    assert.deepEqual(states[0], {}, "nobody is tracked yet (the watcher has no user_id)");
    assert.ok(syncs >= 1, "Presence.onSync fires after presence_state");

    const alice1 = await open({ user_id: "Alice" });
    const alice2 = await open({ user_id: "Alice" });
    const bob = await open({ user_id: "Bob" });
    const alice1Chan = alice1.channel("room:lobby", {});
    const alice1Presence = new Presence(alice1Chan);
    const alice2Chan = alice2.channel("room:lobby", {});
    const bobChan = bob.channel("room:lobby", {});
    for (const chan of [alice1Chan, alice2Chan, bobChan]) {
      assert.deepEqual(await joinChannel(chan), { status: "ok", response: {} });
    }

    await waitFor(() => JSON.stringify(presenceCounts(presence)) === JSON.stringify({ Alice: 2, Bob: 1 }), {
      message: () => `the watcher to see Alice x2 and Bob x1; it sees ${JSON.stringify(presenceCounts(presence))}`,
    });

    // Every diff carries both joins and leaves (Phoenix always sends both).
    assert.ok(diffs.length >= 1, "presence_diff events reached the watcher");
    for (const diff of diffs) {
      assert.deepEqual(Object.keys(diff).sort(), ["joins", "leaves"], `diff shape: ${JSON.stringify(diff)}`);
    }

    // Metas: online_at is unix seconds as a string, phx_ref is a unique string.
    const now = Math.floor(Date.now() / 1000);
    const refs = new Set();
    presence.list((key, { metas }) => {
      for (const meta of metas) {
        assert.equal(typeof meta.online_at, "string", `${key} meta.online_at: ${JSON.stringify(meta)}`);
        assert.match(meta.online_at, /^\d+$/);
        assert.ok(Math.abs(Number(meta.online_at) - now) < 120, `online_at ${meta.online_at} is not close to ${now}`);
        assert.equal(typeof meta.phx_ref, "string", `${key} meta.phx_ref: ${JSON.stringify(meta)}`);
        assert.ok(meta.phx_ref.length > 0);
        refs.add(meta.phx_ref);
      }
    });
    assert.equal(refs.size, 3, "each tracked connection has its own phx_ref");

    // A participant that joined before the others converges to the same view.
    await waitFor(() => JSON.stringify(presenceCounts(alice1Presence)) === JSON.stringify({ Alice: 2, Bob: 1 }), {
      message: () => `Alice's first tab to see Alice x2 and Bob x1; it sees ${JSON.stringify(presenceCounts(alice1Presence))}`,
    });

    // Closing one of Alice's connections removes one meta.
    await disconnectAll([alice2]);
    await waitFor(() => JSON.stringify(presenceCounts(presence)) === JSON.stringify({ Alice: 1, Bob: 1 }), {
      message: () => `Alice's count to drop to 1 after one tab closed; watcher sees ${JSON.stringify(presenceCounts(presence))}`,
    });

    // Closing Bob's only connection removes Bob.
    await disconnectAll([bob]);
    await waitFor(() => JSON.stringify(presenceCounts(presence)) === JSON.stringify({ Alice: 1 }), {
      message: () => `Bob to disappear after his socket closed; watcher sees ${JSON.stringify(presenceCounts(presence))}`,
    });
    assert.deepEqual(presenceCounts(alice1Presence), presenceCounts(presence));

    // Leaving the channel (socket still open) removes the presence too.
    assert.equal((await leaveChannel(alice1Chan)).status, "ok");
    await waitFor(() => JSON.stringify(presenceCounts(presence)) === "{}", {
      message: () => `Alice to disappear after leaving the channel; watcher sees ${JSON.stringify(presenceCounts(presence))}`,
    });
    assert.ok(alice1.isConnected(), "leaving a channel does not close the socket");
  });

  it("sends a fresh presence_state to every joiner, including existing users", async () => {
    const carol = await open({ user_id: "Carol" });
    const carolChan = carol.channel("room:lobby", {});
    const carolPresence = new Presence(carolChan);
    assert.equal((await joinChannel(carolChan)).status, "ok");
    // Her join is published with the next diff (one batch window later); once she sees it,
    // every snapshot holds it.
    await waitFor(() => presenceCounts(carolPresence).Carol === 1, { message: "Carol to see her own join" });

    const late = await open({ user_id: "Dave" });
    const lateChan = late.channel("room:lobby", {});
    const states = collect(lateChan, "presence_state");
    assert.equal((await joinChannel(lateChan)).status, "ok");
    await waitFor(() => states.length >= 1, { message: "presence_state for the late joiner" });
    const state = states[0];
    assert.ok(state.Carol, `Carol is in the late joiner's presence_state: ${JSON.stringify(state)}`);
    assert.equal(state.Carol.metas.length, 1);
    // The push carries the channel's join_ref (V2), so phoenix.js accepts it.
    const frame = late.received.find((m) => m.event === "presence_state");
    assert.equal(frame.join_ref, lateChan.joinRef());
    assert.equal(frame.ref ?? null, null);
  });
});
