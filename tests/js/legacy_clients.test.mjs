// Older official clients: phoenix.js 1.2 (V1 objects) and 1.3 (V2 arrays), from npm under
// aliases, using the static Presence API of that era (`Presence.syncState`/`syncDiff` on a
// plain object, as the Phoenix 1.2 guide wrote it). That API appends the metas of a diff's
// joins without de-duplicating them, so it shows any diff that repeats what the client's
// presence_state already held: the server must send a joiner exactly the changes after its
// snapshot. Many joins land within one (deliberately long) batch window, on one node and
// across two nodes.
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";

import phoenix12 from "phoenix-1.2";
import phoenix13 from "phoenix-1.3";

import { WebSocket, startCluster, startGateway, waitFor, withTimeout } from "./support.mjs";

const CLIENTS = [
  { name: "phoenix.js 1.2.1 (vsn 1.0.0)", lib: phoenix12 },
  { name: "phoenix.js 1.3.4 (vsn 2.0.0)", lib: phoenix13 },
];

// Long enough that every join of a round lands in one window, so each joiner's snapshot is
// taken while the others' joins are still queued for the next diff.
const BATCH_MS = "400";

// Every legacy socket opened, so that a failed test still closes them (their reconnect
// timers would keep the test process alive).
const opened = [];

/** A legacy socket whose channel keeps presences the way Phoenix 1.2-era apps did. */
async function legacyMember(lib, wsUrl, topic, userId) {
  const socket = new lib.Socket(`${wsUrl}/socket`, {
    transport: WebSocket,
    params: userId ? { user_id: userId } : {},
    timeout: 5000,
    reconnectAfterMs: () => 100,
  });
  const isOpen = new Promise((resolve) => socket.onOpen(resolve));
  opened.push(socket);
  socket.connect();
  await withTimeout(isOpen, 5000, `a legacy socket to ${wsUrl} to open`);
  const channel = socket.channel(topic, {});
  const member = { socket, channel, userId, presences: {}, states: 0 };
  channel.on("presence_state", (state) => {
    member.presences = lib.Presence.syncState(member.presences, state);
    member.states += 1;
  });
  channel.on("presence_diff", (diff) => {
    member.presences = lib.Presence.syncDiff(member.presences, diff);
  });
  await withTimeout(
    new Promise((resolve, reject) => {
      channel
        .join()
        .receive("ok", resolve)
        .receive("error", (e) => reject(new Error(`join refused: ${JSON.stringify(e)}`)));
    }),
    6000,
    `a legacy join of ${topic}`,
  );
  return member;
}

/** { key: number of metas }, keys sorted. */
function counts(presences) {
  const out = {};
  for (const key of Object.keys(presences).sort()) out[key] = presences[key].metas.length;
  return out;
}

const show = (members) => members.map((m) => JSON.stringify(counts(m.presences))).join("\n  ");

/**
 * Joins 2 sockets per user for `users` concurrently (spread over `urls`), then one marker
 * user whose join comes in a later diff: once every member shows the marker, every earlier
 * diff was applied, and each view must hold exactly the true metas.
 */
async function joinStorm(lib, urls, topic, users) {
  const joins = [];
  let i = 0;
  for (const user of users) {
    for (let n = 0; n < 2; n++) joins.push(legacyMember(lib, urls[i++ % urls.length], topic, user));
  }
  // A watcher with no presence of its own, joining amid the others.
  joins.push(legacyMember(lib, urls[i++ % urls.length], topic, null));
  const members = await Promise.all(joins);
  const marker = await legacyMember(lib, urls[i++ % urls.length], topic, "zz-marker");
  members.push(marker);
  await waitFor(() => members.every((m) => m.presences["zz-marker"]), {
    timeout: 8000,
    message: () => `every member to see the marker user; views:\n  ${show(members)}`,
  });
  const truth = Object.fromEntries([...users.map((u) => [u, 2]), ["zz-marker", 1]]);
  for (const m of members) {
    assert.deepEqual(
      counts(m.presences),
      truth,
      `a legacy client's view must hold each meta once (it got ${m.states} presence_state)`,
    );
  }
  return members;
}

async function closeSockets(sockets) {
  await Promise.all(
    sockets.map((s) => withTimeout(new Promise((resolve) => s.disconnect(resolve)), 3000, "disconnect").catch(() => {})),
  );
  // These versions' disconnect() leaves the heartbeat interval and the retry timers running.
  for (const s of sockets) {
    clearInterval(s.heartbeatTimer);
    s.reconnectTimer?.reset();
    for (const ch of s.channels || []) ch.rejoinTimer?.reset();
  }
}

const closeAll = (members) => closeSockets(members.map((m) => m.socket));

for (const { name, lib } of CLIENTS) {
  describe(`${name}, static Presence API, one node`, () => {
    let gw;
    before(async () => {
      gw = await startGateway({ env: { PHX_GATEWAY__PRESENCE__DIFF_BATCH_MS: BATCH_MS } });
    });
    after(async () => {
      await closeSockets(opened.splice(0));
      await gw?.stop();
    });

    it("a join storm within one batch window: every view exact, and after a tab closes", async () => {
      const users = ["alice", "bob", "carol", "dave"];
      const members = await joinStorm(lib, [gw.wsUrl], "room:legacy-one", users);
      try {
        // One of alice's two sockets closes: every other view drops exactly one meta.
        const alice = members.find((m) => m.userId === "alice");
        await closeAll([alice]);
        const rest = members.filter((m) => m !== alice);
        await waitFor(() => rest.every((m) => counts(m.presences).alice === 1), {
          timeout: 8000,
          message: () => `every view to show alice with 1 meta; views:\n  ${show(rest)}`,
        });
        for (const m of rest) {
          assert.deepEqual(counts(m.presences), { alice: 1, bob: 2, carol: 2, dave: 2, "zz-marker": 1 });
        }
      } finally {
        await closeAll(members);
      }
    });
  });

  describe(`${name}, static Presence API, two nodes on Redis`, () => {
    let cluster;
    before(async () => {
      cluster = await startCluster({ env: { PHX_GATEWAY__PRESENCE__DIFF_BATCH_MS: BATCH_MS } });
    });
    after(async () => {
      await closeSockets(opened.splice(0));
      await cluster?.stop();
    });

    it("a join storm within one batch window across nodes: every view exact", async () => {
      const urls = [cluster.nodeA.wsUrl, cluster.nodeB.wsUrl];
      const members = await joinStorm(lib, urls, "room:legacy-two", ["erin", "frank", "grace", "heidi"]);
      await closeAll(members);
    });
  });
}
