// The clawmesh web page: conversations, threads, attachments, peers and status, live.
// Plain ES modules, no build step; everything comes from this peer's API.
import { call, upload, Stream, Unauthorised } from "./api.js";
import { el, short, when, ago, size, attachmentList } from "./render.js";
import { Composer } from "./composer.js";
import { Conversations } from "./conversations.js";

const $ = (id) => document.getElementById(id);
const state = {
  me: null, // /status
  peers: new Map(), // peer id -> /peers entry
  channels: [],
  messages: new Map(), // id -> message (each shown once, whatever the stream repeats)
  order: [], // ids in cursor order
  replies: new Map(), // a thread's first message id -> how many replies it has
  conv: null, // "#name" or "@peerid"
  thread: null, // the id of the open thread's first message
};
const RENDER_LAST = 500; // messages of one conversation kept on screen
const convos = new Conversations({ nameOf, onOpen: leaveConv, me: () => state.me?.peer_id });

function isReadMark(m) {
  return m.payload && typeof m.payload === "object" && m.payload.clawmesh
    && Array.isArray(m.payload.clawmesh.read);
}

function convOf(m) {
  return m.kind === "dm" ? `@${m.peer}` : `#${m.channel}`;
}

function nameOf(peerId) {
  if (state.me && peerId === state.me.peer_id) return state.me.name || "you";
  const info = state.peers.get(peerId);
  return (info && info.name) || short(peerId);
}

// -- connection state -------------------------------------------------------------------

function setConn(kind, info) {
  const node = $("conn");
  node.dataset.state = kind;
  node.textContent = {
    live: "Live",
    connecting: "Connecting…",
    reconnecting: `Reconnecting… (attempt ${info.attempt}, next in ${Math.ceil((info.delay || 0) / 1000)} s)`,
    offline: "Offline: no network",
  }[kind];
  if (kind === "live") { refresh(); convos.load(); if (wasDown) resyncStatuses(); }
  wasDown = kind !== "live";
}
let wasDown = false;

// Status changes are live-only events: after a break, ask again for the state of our
// DMs that were not final yet (one /messages call per conversation, from the oldest).
async function resyncStatuses() {
  const oldest = new Map();
  for (const m of state.messages.values()) {
    if (!m.outgoing || m.kind !== "dm" || m.status === "read" || isReadMark(m)) continue;
    oldest.set(m.peer, Math.min(oldest.get(m.peer) ?? Infinity, m.cursor));
  }
  for (const [peer, cursor] of oldest) {
    const got = await call("GET", `/messages?peer=${peer}&after=${cursor - 1}&limit=1000`).catch(() => []);
    for (const fresh of got) {
      const m = state.messages.get(fresh.id);
      if (m && fresh.status && rank(fresh.status) > rank(m.status)) { m.status = fresh.status; updateMessage(m); }
    }
  }
}

// -- the stream -------------------------------------------------------------------------

function onEvent(name, data) {
  if (name === "message") addMessage(data);
  else if (name === "status") {
    const m = state.messages.get(data.id);
    if (m && rank(data.status) >= rank(m.status)) { m.status = data.status; updateMessage(m); }
  } else if (name === "conversation") {
    convos.onEvent(data);
  } else if (name === "gap") {
    // from the start (after=0) a gap is only history older than what the peer keeps
    if (data.after > 0) notice(`The peer no longer holds ${data.lost} message(s): ${data.message}`);
  } else if (name === "error") {
    notice(data.error ? data.error.message : "stream error");
  }
}

function rank(status) {
  return { pending: 0, undeliverable: 1, delivered: 2, read: 3 }[status] ?? -1;
}

function addMessage(m) {
  if (state.messages.has(m.id)) return;
  state.messages.set(m.id, m);
  state.order.push(m.id);
  if (m.thread) state.replies.set(m.thread, (state.replies.get(m.thread) || 0) + 1);
  if (isReadMark(m)) return; // a read receipt: it moved its DMs' state, nothing to show
  const conv = convOf(m);
  if (m.kind === "dm" && !state.peers.has(m.peer)) state.peers.set(m.peer, { peer_id: m.peer });
  if (conv === state.conv) {
    if (m.thread) { updateRootReplies(m.thread); if (m.thread === state.thread) appendThread(m); }
    else appendMessage($("messages"), m);
    markRead();
  }
  scheduleSidebar();
}

function notice(text) {
  $("messages").append(el("li", { class: "msg notice", text }));
}

// -- rendering messages -------------------------------------------------------------------

function messageItem(m, { inThread = false } = {}) {
  const replies = inThread ? 0 : state.replies.get(m.id) || 0;
  const status = m.outgoing && m.kind === "dm" ? m.status || "pending" : null;
  return el("li", { class: "msg", id: `m-${m.id}`, dataset: { id: m.id } },
    el("div", { class: "meta" },
      el("span", { class: "who", text: nameOf(m.from) }),
      el("span", { class: "pid", title: m.from, text: short(m.from) }),
      el("time", { datetime: m.timestamp, title: m.timestamp, text: when(m.timestamp) }),
      status && el("span", { class: "state", dataset: { status }, text: status })),
    m.body ? el("p", { class: "body", text: m.body }) : null,
    attachmentList(m.attachments),
    inThread ? null : el("button", {
      type: "button", class: "link reply", title: `Reply in thread to ${nameOf(m.from)}`,
      onclick: () => openThread(m.id),
    }, replies ? `${replies} ${replies === 1 ? "reply" : "replies"}` : "Reply in thread"));
}

function appendMessage(list, m, opts) {
  const stick = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
  list.querySelector(".empty")?.remove();
  list.append(messageItem(m, opts));
  if (stick) list.scrollTop = list.scrollHeight;
}

function updateMessage(m) {
  for (const node of document.querySelectorAll(`[data-id="${m.id}"]`)) {
    const inThread = node.closest("#thread-messages") !== null;
    node.replaceWith(messageItem(m, { inThread }));
  }
}

function repliesOf(rootId) {
  return state.order.map((id) => state.messages.get(id)).filter((m) => m.thread === rootId);
}

function updateRootReplies(rootId) {
  const root = state.messages.get(rootId);
  if (root) updateMessage(root);
}

function renderConversation() {
  const list = $("messages");
  list.replaceChildren();
  const shown = state.order.map((id) => state.messages.get(id))
    .filter((m) => !isReadMark(m) && convOf(m) === state.conv && !m.thread).slice(-RENDER_LAST);
  for (const m of shown) list.append(messageItem(m));
  if (!shown.length) list.append(el("li", { class: "msg notice empty", text: "No messages yet." }));
  list.scrollTop = list.scrollHeight;
  markRead();
}

// -- threads --------------------------------------------------------------------------------

function openThread(rootId) {
  state.thread = rootId;
  const root = state.messages.get(rootId);
  $("thread").hidden = false;
  $("thread-title").textContent = root ? `Thread: ${nameOf(root.from)}` : "Thread";
  const list = $("thread-messages");
  list.replaceChildren();
  if (root) list.append(messageItem(root, { inThread: true }));
  for (const m of repliesOf(rootId)) list.append(messageItem(m, { inThread: true }));
  $("thread-text").focus();
}

function appendThread(m) {
  appendMessage($("thread-messages"), m, { inThread: true });
}

function closeThread() {
  const wasOpen = state.thread !== null;
  state.thread = null;
  $("thread").hidden = true;
  if (wasOpen && !$("composer").hidden) $("text").focus(); // keyboard users land back here
}

// -- reading ----------------------------------------------------------------------------------

let readTimer = null;
function markRead() {
  if (document.visibilityState !== "visible" || !state.conv) return;
  clearTimeout(readTimer);
  readTimer = setTimeout(async () => {
    const ids = [];
    for (const m of state.messages.values()) {
      if (!m.read && !m.outgoing && convOf(m) === state.conv && !isReadMark(m)) ids.push(m.id);
    }
    if (!ids.length) return;
    for (const id of ids) state.messages.get(id).read = true;
    scheduleSidebar();
    for (let i = 0; i < ids.length; i += 1000) {
      await call("POST", "/ack", { ids: ids.slice(i, i + 1000) }).catch(() => {});
    }
  }, 150);
}
document.addEventListener("visibilitychange", markRead);

// -- the sidebar --------------------------------------------------------------------------------

let sidebarQueued = false;
function scheduleSidebar() {
  if (sidebarQueued) return;
  sidebarQueued = true;
  requestAnimationFrame(() => { sidebarQueued = false; renderSidebar(); });
}

function unreadCounts() {
  const counts = new Map();
  for (const m of state.messages.values()) {
    if (m.read || m.outgoing || isReadMark(m)) continue;
    const conv = convOf(m);
    counts.set(conv, (counts.get(conv) || 0) + 1);
  }
  return counts;
}

function convButton(conv, label, extra, unread) {
  return el("button", {
    type: "button", class: "conv", "aria-current": conv === state.conv ? "true" : "false",
    "aria-label": `${label}${unread ? `, ${unread} unread` : ""}`,
    onclick: () => selectConv(conv),
  }, extra, el("span", { text: label }), unread ? el("span", { class: "badge", text: unread }) : null);
}

function renderSidebar() {
  const counts = unreadCounts();
  const total = [...counts.values()].reduce((a, b) => a + b, 0);
  document.title = total ? `(${total}) clawmesh` : "clawmesh";
  $("channels").replaceChildren(...state.channels.map((name) =>
    el("li", {}, convButton(`#${name}`, `#${name}`, null, counts.get(`#${name}`) || 0))));
  const peers = [...state.peers.values()].filter((p) => !state.me || p.peer_id !== state.me.peer_id)
    .sort((a, b) => (b.online === true) - (a.online === true) || nameOf(a.peer_id).localeCompare(nameOf(b.peer_id)));
  $("dms").replaceChildren(...peers.map((p) => {
    const online = p.online === true;
    const seen = p.last_seen ? `last seen ${ago(p.last_seen)}` : "never seen";
    return el("li", { title: p.peer_id },
      convButton(`@${p.peer_id}`, nameOf(p.peer_id),
        el("span", { class: `dot${online ? " on" : ""}`, role: "img", "aria-label": online ? "online" : "offline" }),
        counts.get(`@${p.peer_id}`) || 0),
      el("span", { class: "small", text: `${short(p.peer_id)} · ${online ? "online" : seen}` }));
  }));
  if (!peers.length) $("dms").append(el("li", { class: "small", text: "No peers seen yet." }));
}

// an agent conversation opens in the main area: no channel or DM is shown meanwhile
function leaveConv() {
  state.conv = null;
  closeThread();
  $("sidebar").classList.remove("open");
  $("menu").setAttribute("aria-expanded", "false");
  renderSidebar();
}

function selectConv(conv) {
  state.conv = conv;
  closeThread();
  convos.close();
  $("messages").hidden = false;
  const isDm = conv.startsWith("@");
  const id = conv.slice(1);
  $("conv-title").textContent = isDm ? nameOf(id) : conv;
  $("conv-sub").textContent = isDm ? `direct messages with ${id}` : "channel";
  $("leave").hidden = isDm;
  $("composer").hidden = false;
  $("sidebar").classList.remove("open");
  $("menu").setAttribute("aria-expanded", "false");
  renderSidebar();
  renderConversation();
  $("text").focus();
  history.replaceState(null, "", `#${encodeURIComponent(conv)}`);
}

// -- sending ----------------------------------------------------------------------------------

async function send(text, extra, errorNode) {
  errorNode.textContent = "";
  const conv = state.conv;
  const target = conv.startsWith("@") ? { to: conv.slice(1) } : { channel: conv.slice(1) };
  try {
    const attachments = [];
    for (const file of extra.files || []) attachments.push(await upload(file));
    const body = { ...target, body: text, ...extra.fields };
    if (attachments.length) body.attachments = attachments;
    await call("POST", "/send", body);
    return true;
  } catch (exc) {
    if (exc instanceof Unauthorised) return showSignin();
    errorNode.textContent = `Not sent: ${exc.message}`;
    return false;
  }
}

function wireComposers() {
  const ids = (prefix) => ({
    form: `${prefix}composer`, text: `${prefix}text`, files: `${prefix}files`,
    pending: `${prefix}pending-files`, drop: `${prefix}drop`, error: `${prefix}error`,
    button: `${prefix}send`,
  });
  new Composer(ids(""), (text, files, error) => send(text, { files }, error));
  new Composer(ids("thread-"), (text, files, error) => (state.thread
    ? send(text, { files, fields: { thread: state.thread, reply_to: state.thread } }, error)
    : Promise.resolve(false)));
}

// -- channels ----------------------------------------------------------------------------------

function wireChannels() {
  $("join-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const name = $("join-name").value.trim().replace(/^#/, "");
    try {
      const data = await call("POST", "/subscribe", { channel: name });
      state.channels = data.channels;
      $("join-name").value = "";
      selectConv(`#${data.channel}`);
    } catch (exc) {
      $("join-name").setCustomValidity(exc.message);
      $("join-name").reportValidity();
      $("join-name").setCustomValidity("");
    }
  });
  $("leave").addEventListener("click", async () => {
    const name = state.conv.slice(1);
    const data = await call("POST", "/unsubscribe", { channel: name });
    state.channels = data.channels;
    state.conv = null;
    $("conv-title").textContent = `Left #${name}`;
    $("messages").replaceChildren();
    $("composer").hidden = true;
    $("leave").hidden = true;
    renderSidebar();
  });
}

// -- peers and status panels ------------------------------------------------------------------

function peersTable() {
  const links = new Map((state.me?.relay_status || []).map((l) => [l.peer_id, l]));
  const rows = [...state.peers.values()].filter((p) => p.pubkey).map((p) => {
    const link = links.get(p.peer_id);
    const via = link ? `direct link${link.remote ? ` (${link.remote})` : ""}` : "through the mesh";
    return el("tr", {},
      el("td", {}, el("strong", { text: p.name || "—" }), el("br"), el("code", { text: p.peer_id })),
      el("td", { text: p.online ? "online" : `offline, seen ${ago(p.last_seen)}` }),
      el("td", { text: p.linked ? "yes" : "no" }),
      el("td", { text: via }),
      el("td", { text: (p.features || []).join(", ") || "—" }),
      el("td", { text: !p.agent ? "—" : typeof p.agent === "string" ? p.agent : JSON.stringify(p.agent) }));
  });
  if (!rows.length) return el("p", { text: "No peers known yet." });
  return el("table", {},
    el("caption", { class: "visually-hidden", text: "Peers this one knows" }),
    el("thead", {}, el("tr", {}, ["Peer", "State", "Linked", "Reached", "Features", "Agent"]
      .map((h) => el("th", { scope: "col", text: h })))),
    el("tbody", {}, rows));
}

function statusList() {
  const s = state.me;
  if (!s) return el("p", { text: "Unknown." });
  const store = s.store || {};
  const row = (k, v) => [el("dt", { text: k }), el("dd", {}, v)];
  return el("dl", {},
    row("Name", s.name || "—"), row("Peer id", el("code", { text: s.peer_id })),
    row("Mesh address", (s.listen || []).join(", ") || "not listening"),
    row("Links", `${s.peer_count} (${(s.relay_status || []).map((l) => nameOf(l.peer_id)).join(", ") || "none"})`),
    row("Peers known", `${s.known_peers}, ${s.online_peers} online`),
    row("Features", (s.caps || []).join(", ")),
    row("Store", s.store ? `${store.stored} messages stored, ${store.outbox} DMs awaiting receipt, `
      + `${store.dead_letters} undeliverable, mailbox ${size(store.mailbox?.held_bytes || 0)} held` : "none (in memory only)"),
    row("Catch-up", s.store ? catchupText(store.catchup) : "—"),
    row("Unread", String(s.unread)), row("Up for", `${s.uptime_seconds} s`));
}

// The fleet: this peer's status and every status heard in the others' presence (GET /fleet)
function fleetTable(fleet) {
  const row = (p, state) => el("tr", {},
    el("td", {}, el("strong", { text: p.name || "—" }), el("br"), el("code", { text: p.peer_id })),
    el("td", { text: state }),
    el("td", { text: p.version }),
    el("td", { text: `${Math.floor(p.uptime_seconds / 3600)} h ${Math.floor(p.uptime_seconds / 60) % 60} min` }),
    el("td", { text: String(p.links) }),
    el("td", { text: String(p.outbox) }),
    el("td", { text: p.store_bytes == null ? "—" : size(p.store_bytes) }),
    el("td", { text: Object.entries(p.circuits || {}).map(([k, v]) => `${k}: ${v}`).join(", ") || "—" }));
  const rows = [row(fleet.self, "this peer"),
    ...fleet.peers.map((p) => row(p, p.online ? `online (heard ${ago(p.heard)})` : `silent since ${ago(p.heard)}`))];
  const refused = Object.entries(fleet.refused || {}).map(([k, v]) => `${v} ${k}`).join(", ");
  return el("div", {},
    el("table", {},
      el("caption", { class: "visually-hidden", text: "The fleet's status" }),
      el("thead", {}, el("tr", {}, ["Peer", "State", "Version", "Up", "Links", "Outbox", "Store", "Circuits"]
        .map((h) => el("th", { scope: "col", text: h })))),
      el("tbody", {}, rows)),
    el("p", { text: `${fleet.peers.length} peer(s) heard${refused ? `; statuses refused: ${refused}` : ""}` }));
}

function catchupText(catchup) {
  if (!catchup || !Object.keys(catchup).length) return "idle";
  return Object.entries(catchup).map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`).join("; ");
}

function wirePanels() {
  $("open-peers").addEventListener("click", async () => {
    await refresh();
    $("peers-body").replaceChildren(peersTable());
    $("peers-panel").showModal();
  });
  $("open-status").addEventListener("click", async () => {
    await refresh();
    $("status-body").replaceChildren(statusList());
    $("status-panel").showModal();
  });
  // the fleet panel is live: refreshed every 2 s while it is open
  let fleetTimer = null;
  const showFleet = async () => {
    try {
      $("fleet-body").replaceChildren(fleetTable(await call("GET", "/fleet")));
    } catch (err) {
      $("fleet-body").replaceChildren(el("p", { text: `The fleet view is not available: ${err.message}` }));
    }
  };
  $("open-fleet").addEventListener("click", async () => {
    await showFleet();
    $("fleet-panel").showModal();
    fleetTimer = setInterval(showFleet, 2000);
  });
  $("fleet-panel").addEventListener("close", () => clearInterval(fleetTimer));
  for (const b of document.querySelectorAll(".close-dialog")) {
    b.addEventListener("click", () => b.closest("dialog").close());
  }
  $("logout").addEventListener("click", async () => {
    await call("POST", "/logout", {}).catch(() => {});
    location.replace("/");
  });
  $("close-thread").addEventListener("click", closeThread);
  $("menu").addEventListener("click", () => {
    const open = $("sidebar").classList.toggle("open");
    $("menu").setAttribute("aria-expanded", String(open));
  });
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape" && state.thread && !document.querySelector("dialog[open]")) closeThread();
  });
}

// -- start ------------------------------------------------------------------------------------

async function refresh() {
  try {
    const [me, peers, channels] = await Promise.all([
      call("GET", "/status"), call("GET", "/peers"), call("GET", "/channels")]);
    state.me = me;
    for (const p of peers) state.peers.set(p.peer_id, p);
    state.channels = channels;
    renderSidebar();
  } catch (exc) {
    if (exc instanceof Unauthorised) showSignin();
  }
}

function showSignin() {
  $("app").hidden = true;
  $("signin").hidden = false;
  $("signin-failed").hidden = new URLSearchParams(location.search).get("login") !== "failed";
  return false;
}

async function start() {
  try {
    await call("GET", "/channels"); // wants the session: 401 means not signed in
  } catch (exc) {
    if (exc instanceof Unauthorised) { showSignin(); return; }
  }
  if (location.search) history.replaceState(null, "", "/");
  $("app").hidden = false;
  wireComposers();
  wireChannels();
  wirePanels();
  convos.wire();
  await refresh();
  new Stream({ onEvent, onState: setConn }).open();
  const wanted = decodeURIComponent(location.hash.slice(1));
  if (wanted.startsWith("conversation/")) { await convos.load(); convos.open(wanted.slice(13)); }
  else if (wanted) selectConv(wanted);
  else if (state.channels.length) selectConv(`#${state.channels[0]}`);
  setInterval(refresh, 10000);
}

start();
