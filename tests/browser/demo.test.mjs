// The demo page in a real headless Chromium (Debian's /usr/bin/chromium,
// driven by playwright-core; no browser is downloaded): presence counts,
// chat across tabs, the recent chat in a new tab, what a tab missed while its
// connection was cut, and the notice shown when phoenix.mjs is missing.

/**
 * A TCP proxy in front of `port` whose connections can be cut: `cut()` drops every
 * open connection and refuses new ones until `resume()`, like a network that goes away.
 */
async function startCuttableProxy(port) {
  const open = new Set();
  let down = false;
  const server = net.createServer((client) => {
    if (down) {
      client.destroy();
      return;
    }
    const upstream = net.connect({ port, host: "127.0.0.1" });
    open.add(client);
    open.add(upstream);
    client.pipe(upstream);
    upstream.pipe(client);
    const close = () => {
      client.destroy();
      upstream.destroy();
      open.delete(client);
      open.delete(upstream);
    };
    client.on("close", close);
    upstream.on("close", close);
    client.on("error", close);
    upstream.on("error", close);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    cut() {
      down = true;
      for (const s of open) s.destroy();
    },
    resume() {
      down = false;
    },
    stop() {
      this.cut();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}
import { describe, it, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import net from "node:net";

import { chromium } from "playwright-core";

import { connectSocket, joinChannel, pushEvent, startGateway, waitFor } from "../js/support.mjs";

const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
const haveChromium = fs.existsSync(CHROMIUM);
// Outside CI a machine without Chromium skips; in CI the test must run (and
// fails with a clear message if Chromium is missing).
const skip = !haveChromium && !process.env.CI ? `${CHROMIUM} not found (install Debian's chromium package)` : false;

const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-quic",
  "--disable-component-update",
  "--disable-sync",
];

describe("demo page in Chromium", { skip }, () => {
  let gw;
  let browser;
  const pageErrors = [];

  before(async () => {
    if (!haveChromium) throw new Error(`${CHROMIUM} not found; CI must install Debian's chromium package`);
    gw = await startGateway();
    browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, timeout: 30000 });
  });

  after(async () => {
    await browser?.close().catch(() => {});
    await gw?.stop();
  });

  async function openPage(path, { context } = {}) {
    const ctx = context || (await browser.newContext());
    const page = await ctx.newPage();
    page.on("pageerror", (err) => pageErrors.push(`${path}: ${err.message}`));
    page.on("console", (msg) => {
      if (msg.type() === "error") pageErrors.push(`${path}: console: ${msg.text()}`);
    });
    await page.goto(`${gw.url}${path}`, { timeout: 10000 });
    return page;
  }

  const texts = (page, selector) => page.locator(selector).allTextContents();

  async function waitForTexts(page, selector, expected, what) {
    let seen = [];
    await waitFor(
      async () => {
        seen = await texts(page, selector);
        return expected.every((t) => seen.includes(t));
      },
      {
        timeout: 10000,
        interval: 50,
        message: () =>
          `${what}: ${JSON.stringify(expected)} in ${selector}; it shows ${JSON.stringify(seen)}` +
          (pageErrors.length ? `; page errors: ${pageErrors.join(" / ")}` : ""),
      },
    );
    return seen;
  }

  it("serves the page and its assets", async () => {
    for (const [path, type] of [
      ["/", "text/html"],
      ["/demo/app.js", "javascript"],
      ["/demo/style.css", "text/css"],
      ["/assets/phoenix.mjs", "javascript"],
    ]) {
      const res = await fetch(`${gw.url}${path}`);
      assert.equal(res.status, 200, `GET ${path}`);
      assert.match(res.headers.get("content-type") || "", new RegExp(type), `content type of ${path}`);
      await res.arrayBuffer();
    }
  });

  it("shows presence counts and chat across three tabs", async () => {
    const alice1 = await openPage("/?name=Alice");
    const alice2 = await openPage("/?name=Alice");
    const bob = await openPage("/?name=Bob");
    const pages = [alice1, alice2, bob];

    for (const page of pages) {
      await waitForTexts(page, "#presence-list li", ["Alice (count: 2)", "Bob (count: 1)"], "presence list");
    }
    assert.deepEqual(await texts(bob, "#presence-list li"), ["Alice (count: 2)", "Bob (count: 1)"]);
    assert.equal(await bob.locator("#status").getAttribute("data-state"), "joined");
    assert.equal(await bob.locator("#phoenix-missing").isVisible(), false);

    await bob.locator("#chat-input").fill("hello from Bob");
    await bob.locator("#chat-input").press("Enter");
    for (const page of pages) {
      await waitForTexts(page, "#messages li", ["Bob: hello from Bob"], "Bob's chat message");
    }
    assert.equal(await bob.locator("#chat-input").inputValue(), "", "the input is cleared after sending");

    await alice1.locator("#chat-input").fill("hi Bob, Alice here");
    await alice1.locator("#chat-input").press("Enter");
    for (const page of [alice2, bob]) {
      await waitForTexts(page, "#messages li", ["Alice: hi Bob, Alice here"], "Alice's chat message");
    }
    assert.deepEqual(await texts(alice2, "#messages li"), ["Bob: hello from Bob", "Alice: hi Bob, Alice here"]);

    // A new tab shows the recent chat (history backfill, docs/history.md).
    const carol = await openPage("/?name=Carol");
    await waitForTexts(carol, "#messages li", ["Bob: hello from Bob", "Alice: hi Bob, Alice here"], "the recent chat in a new tab");
    assert.deepEqual(await texts(carol, "#messages li"), ["Bob: hello from Bob", "Alice: hi Bob, Alice here"]);
    await carol.context().close();

    await alice2.screenshot({ path: process.env.DEMO_SCREENSHOT || "/tmp/phx-gateway-demo.png" }).catch(() => {});

    await alice1.context().close();
    for (const page of [alice2, bob]) {
      await waitForTexts(page, "#presence-list li", ["Alice (count: 1)", "Bob (count: 1)"], "presence after closing a tab");
    }
    assert.deepEqual(await texts(alice2, "#presence-list li"), ["Alice (count: 1)", "Bob (count: 1)"]);
    assert.deepEqual(pageErrors, []);

    await alice2.context().close();
    await bob.context().close();
  });

  it("defaults the name to anonymous", async () => {
    const page = await openPage("/");
    await waitForTexts(page, "#presence-list li", ["anonymous (count: 1)"], "presence list");
    await page.context().close();
  });

  it("a tab whose connection was cut shows what it missed once it is back", async () => {
    const proxy = await startCuttableProxy(gw.port);
    const context = await browser.newContext();
    let eve;
    try {
      const page = await context.newPage();
      await page.goto(`${proxy.url}/?name=Dana`, { timeout: 10000 });
      const status = page.locator("#status");
      await waitFor(async () => (await status.getAttribute("data-state")) === "joined", {
        timeout: 10000,
        message: "Dana's tab to join",
      });

      proxy.cut();
      await waitFor(async () => (await status.getAttribute("data-state")) !== "joined", {
        timeout: 10000,
        message: "Dana's tab to notice the cut",
      });
      // Eve chats while Dana's tab is away.
      eve = await connectSocket(gw, { params: { user_id: "Eve" } });
      const lobby = eve.channel("room:lobby", {});
      assert.equal((await joinChannel(lobby)).status, "ok");
      const missed = [0, 1, 2].map((i) => `Eve: missed ${i}`);
      for (let i = 0; i < 3; i++) await pushEvent(lobby, "new_msg", { user: "Eve", body: `missed ${i}` });

      proxy.resume();
      await waitForTexts(page, "#messages li", missed, "the messages sent while the tab was away");
      const shown = await texts(page, "#messages li");
      for (const line of missed) {
        assert.equal(shown.filter((t) => t === line).length, 1, `${line} exactly once: ${JSON.stringify(shown)}`);
      }
      assert.deepEqual(shown.slice(-3), missed, "in order, after what the tab had");
    } finally {
      eve?.disconnect();
      await context.close();
      await proxy.stop();
    }
  });

  it("tells the user to run npm ci when phoenix.mjs is missing", async () => {
    const context = await browser.newContext();
    await context.route("**/assets/phoenix.mjs", (route) =>
      route.fulfill({ status: 404, contentType: "text/plain", body: "not found" }),
    );
    const page = await context.newPage();
    await page.goto(`${gw.url}/?name=Alice`, { timeout: 10000 });
    const notice = page.locator("#phoenix-missing");
    await notice.waitFor({ state: "visible", timeout: 10000 });
    assert.match(await notice.textContent(), /npm ci/);
    assert.equal(await page.locator("#status").getAttribute("data-state"), "error");
    await context.close();
  });
});
