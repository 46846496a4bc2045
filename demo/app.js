// Chat + presence demo for phx-gateway, using the official phoenix.js client
// unchanged. Open /?name=Alice in one tab and /?name=Bob in another.

const $ = (id) => document.getElementById(id);

const userName = (new URLSearchParams(window.location.search).get("name") || "").trim() || "anonymous";

const ui = {
  status: $("status"),
  missing: $("phoenix-missing"),
  presenceList: $("presence-list"),
  messages: $("messages"),
  form: $("chat-form"),
  input: $("chat-input"),
};

function setStatus(state, text) {
  ui.status.dataset.state = state;
  ui.status.textContent = text;
}

// The gateway serves node_modules/phoenix/priv/static/phoenix.mjs here; it is
// missing until the npm dependencies are installed.
async function loadPhoenix() {
  try {
    return await import("/assets/phoenix.mjs");
  } catch (err) {
    console.error("could not load /assets/phoenix.mjs:", err);
    ui.missing.hidden = false;
    setStatus("error", "Phoenix client missing");
    return null;
  }
}

// One <li> per user: "Alice (count: 2)", where count is the number of metas,
// i.e. how many tabs or devices that user has open.
function renderPresence(presence) {
  const users = presence.list((id, { metas }) => ({ id, count: metas.length }));
  users.sort((a, b) => a.id.localeCompare(b.id));
  ui.presenceList.replaceChildren(
    ...users.map(({ id, count }) => {
      const li = document.createElement("li");
      li.textContent = `${id} (count: ${count})`;
      if (id === userName) li.classList.add("me");
      return li;
    }),
  );
}

function appendMessage({ user, body }) {
  const li = document.createElement("li");
  li.textContent = `${user}: ${body}`;
  ui.messages.append(li);
  ui.messages.scrollTop = ui.messages.scrollHeight;
}

function appendNotice(text) {
  const li = document.createElement("li");
  li.className = "notice";
  li.textContent = text;
  ui.messages.append(li);
}

async function main() {
  $("user-name").textContent = userName;

  const phoenix = await loadPhoenix();
  if (!phoenix) return;
  const { Socket, Presence } = phoenix;

  setStatus("loading", "connecting…");
  const socket = new Socket("/socket", { params: { user_id: userName } });
  socket.onOpen(() => setStatus("connected", "connected, joining…"));
  socket.onClose(() => setStatus("disconnected", "disconnected, reconnecting…"));
  socket.onError(() => setStatus("disconnected", "connection error, reconnecting…"));
  socket.connect();

  // History (docs/history.md): a new tab asks for the last 50 messages; after a lost
  // connection the rejoin asks for everything after the last message it showed.
  let position = null;
  const channel = socket.channel("room:lobby", () =>
    position ? { history: { since: position } } : { history: { last: 50 } },
  );

  const presence = new Presence(channel);
  presence.onSync(() => renderPresence(presence));

  channel.on("new_msg", (msg, ref) => {
    position = ref;
    appendMessage(msg);
  });

  channel
    .join()
    .receive("ok", (resp) => {
      if (resp.history && resp.history.recovered === false && position) {
        appendNotice("some messages were missed while offline");
      }
      setStatus("joined", "online");
      ui.input.disabled = false;
      ui.input.focus();
    })
    .receive("error", ({ reason }) => setStatus("error", `could not join room:lobby: ${reason}`))
    .receive("timeout", () => setStatus("disconnected", "join timed out, retrying…"));

  channel.onError(() => {
    if (socket.isConnected()) setStatus("connected", "channel error, rejoining…");
  });

  // Enter in the single text field submits the form.
  ui.form.addEventListener("submit", (event) => {
    event.preventDefault();
    const body = ui.input.value.trim();
    if (!body) return;
    channel.push("new_msg", { body, user: userName });
    ui.input.value = "";
  });
}

main();
