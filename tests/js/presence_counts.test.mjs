// Count-only presence (`presence = "counts"`, the `count:*` route of config/bench.toml)
// through the official phoenix.js client: members get presence_count, never the list.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";

import {
  Presence,
  collect,
  connectSocket,
  disconnectAll,
  joinChannel,
  startGateway,
  waitFor,
} from "./support.mjs";

describe("a counting room (presence = counts)", () => {
  let gw;
  const sockets = [];
  before(async () => {
    gw = await startGateway({ args: ["--config", "config/bench.toml"] });
  });
  after(async () => {
    await disconnectAll(sockets);
    await gw?.stop();
  });

  const member = async (params) => {
    const socket = await connectSocket(gw, { params });
    sockets.push(socket);
    const chan = socket.channel("count:room", {});
    const seen = {
      counts: collect(chan, "presence_count"),
      state: collect(chan, "presence_state"),
      diffs: collect(chan, "presence_diff"),
    };
    const presence = new Presence(chan);
    assert.equal((await joinChannel(chan)).status, "ok");
    return { socket, chan, seen, presence };
  };
  const last = (m) => m.seen.counts.at(-1);
  const is = (m, want) =>
    last(m)?.users === want.users && last(m)?.connections === want.connections;

  it("gives every member the exact count and never the member list", async () => {
    const watcher = await member({});
    const alice1 = await member({ user_id: "Alice" });
    const alice2 = await member({ user_id: "Alice" });
    const bob = await member({ user_id: "Bob" });
    const all = [watcher, alice1, alice2, bob];
    const want = { users: 2, connections: 3 };
    for (const m of all) {
      await waitFor(() => is(m, want), {
        message: `every member's last presence_count is ${JSON.stringify(want)}`,
      });
    }
    bob.socket.disconnect();
    const left = { users: 1, connections: 2 };
    for (const m of [watcher, alice1, alice2]) {
      await waitFor(() => is(m, left), {
        message: `after Bob left: ${JSON.stringify(left)}`,
      });
    }
    for (const m of all) {
      assert.equal(m.seen.state.length, 0, "no presence_state");
      assert.equal(m.seen.diffs.length, 0, "no presence_diff");
      assert.deepEqual(m.presence.list(), [], "phoenix.js Presence stays empty");
    }
  });
});
