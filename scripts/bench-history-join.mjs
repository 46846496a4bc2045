// Join latency with a 100-message backfill (docs/benchmarks.md, "History"), with the
// official phoenix.js client: 100 messages are published on hist:join through the first
// node, then 200 sockets join one after the other through the second node with
// `history: {last: 100}`; the time from join() to the 100th replayed message is reported.
// Usage: node scripts/bench-history-join.mjs HOST:PORT HOST:PORT   (config/bench.toml)
import { Socket } from "phoenix";
import WebSocket from "ws";

const [pubAddr, joinAddr] = process.argv.slice(2);
const JOINS = 200;
const BACKFILL = 100;

function connect(addr) {
  const socket = new Socket(`ws://${addr}/socket`, { transport: WebSocket, timeout: 10000 });
  return new Promise((resolve, reject) => {
    socket.onOpen(() => resolve(socket));
    socket.onError(reject);
    socket.connect();
  });
}

function join(channel) {
  return new Promise((resolve, reject) =>
    channel.join().receive("ok", resolve).receive("error", reject).receive("timeout", reject),
  );
}

const publisher = await connect(pubAddr);
const pub = publisher.channel("hist:join", {});
await join(pub);
for (let n = 0; n < BACKFILL; n++) {
  await new Promise((resolve) => pub.push("new_msg", { n, body: "x".repeat(64) }).receive("ok", resolve));
}

const times = [];
for (let i = 0; i < JOINS; i++) {
  const socket = await connect(joinAddr);
  const channel = socket.channel("hist:join", { history: { last: BACKFILL } });
  let got = 0;
  const started = performance.now();
  const done = new Promise((resolve) =>
    channel.on("new_msg", () => {
      got += 1;
      if (got === BACKFILL) resolve();
    }),
  );
  await join(channel);
  await done;
  times.push(performance.now() - started);
  socket.disconnect();
}
times.sort((a, b) => a - b);
const pct = (p) => times[Math.min(times.length - 1, Math.floor((p / 100) * times.length))].toFixed(2);
console.log(`${JOINS} joins, ${BACKFILL} replayed each: p50 ${pct(50)} ms, p99 ${pct(99)} ms, max ${times.at(-1).toFixed(2)} ms`);
process.exit(0);
