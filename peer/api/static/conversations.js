// Agent conversations (GET /conversations): the list in the sidebar, and one conversation
// in the main area, its subject and posts threaded in order, its state and its verdict.
// Live: every `conversation` event on /events fetches that conversation again (one fetch
// in flight per conversation; a change meanwhile fetches once more after it).
import { call } from "./api.js";
import { el, short, when } from "./render.js";

const $ = (id) => document.getElementById(id);
const STATE_LABEL = { open: "open", active: "active", complete: "complete", timed_out: "timed out" };
// verdict.verified: checked against the initiator's key; null on the initiator's own peer
const SIGNATURE = { true: "signature checked", false: "signature NOT valid", null: "given by this peer" };
const SHOWN = 200; // conversations listed (the newest)

export function stateLabel(state) {
  return STATE_LABEL[state] || String(state || "unknown");
}

export class Conversations {
  // nameOf(peerId) -> a display name; onOpen() is called before one is shown (the page
  // leaves its channel or DM)
  constructor({ nameOf, onOpen, me }) {
    this.nameOf = nameOf;
    this.onOpen = onOpen;
    this.me = me; // () -> this peer's id
    this.items = new Map(); // id -> GET /conversations/{id}
    this.current = null; // the id shown
    this.fetching = new Map(); // id -> true when another fetch is wanted after this one
  }

  // the forms: post (with an optional vote) and, for the initiator, the verdict
  wire() {
    const submit = (form, errorId, path, body, reset) => $(form).addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const id = this.current;
      $(errorId).textContent = "";
      try {
        const fresh = await call("POST", `/conversations/${id}/${path}`, body());
        reset();
        this.items.set(id, fresh);
        this.renderList();
        if (this.current === id) this.renderOne();
      } catch (exc) {
        $(errorId).textContent = `Not sent: ${exc.message}`;
      }
    });
    submit("convo-form", "convo-error", "messages", () => {
      const vote = $("convo-vote").value.trim();
      return vote ? { body: $("convo-text").value, vote } : { body: $("convo-text").value };
    }, () => { $("convo-text").value = ""; $("convo-vote").value = ""; });
    submit("verdict-form", "verdict-error", "verdict",
      () => ({ decision: $("verdict-decision").value.trim(), summary: $("verdict-summary").value }),
      () => { $("verdict-decision").value = ""; $("verdict-summary").value = ""; });
    $("convo-text").addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); $("convo-form").requestSubmit(); }
    });
  }

  async load() {
    const list = await call("GET", "/conversations").catch(() => null);
    if (!list) return;
    for (const c of list) this.items.set(c.id, c);
    this.renderList();
    if (this.current && this.items.has(this.current)) this.renderOne();
  }

  // a `conversation` event: {id, change, state, type, verdict?}
  onEvent(data) {
    if (!data || typeof data.id !== "string") return;
    const known = this.items.get(data.id);
    if (known && data.state) { known.state = data.state; this.renderList(); }
    this.refetch(data.id);
  }

  async refetch(id) {
    if (this.fetching.has(id)) { this.fetching.set(id, true); return; }
    this.fetching.set(id, false);
    try {
      const fresh = await call("GET", `/conversations/${encodeURIComponent(id)}`).catch(() => null);
      if (fresh) {
        this.items.set(id, fresh);
        this.renderList();
        if (this.current === id) this.renderOne();
      }
    } finally {
      const again = this.fetching.get(id);
      this.fetching.delete(id);
      if (again) this.refetch(id);
    }
  }

  close() {
    this.current = null;
    $("convo").hidden = true;
    this.renderList();
  }

  open(id) {
    this.onOpen();
    this.current = id;
    $("messages").hidden = true;
    $("composer").hidden = true;
    $("leave").hidden = true;
    $("convo").hidden = false;
    this.renderList();
    this.renderOne();
    $("conv-title").focus();
    history.replaceState(null, "", `#conversation/${id}`);
    this.refetch(id);
  }

  renderList() {
    const list = [...this.items.values()].sort((a, b) => b.last_activity.localeCompare(a.last_activity))
      .slice(0, SHOWN);
    $("convos").replaceChildren(...list.map((c) => {
      const label = `${c.subject.slice(0, 60)}: ${c.type}, ${stateLabel(c.state)}`;
      return el("li", { dataset: { conversation: c.id } },
        el("button", {
          type: "button", class: "conv", "aria-label": label,
          "aria-current": c.id === this.current ? "true" : "false",
          onclick: () => this.open(c.id),
        },
        el("span", { class: "subject", text: c.subject }),
        el("span", { class: "pill", dataset: { state: c.state }, text: stateLabel(c.state) })),
        el("span", { class: "small", text: `${c.type} · ${c.participants.length + 1} members` }));
    }));
    if (!list.length) $("convos").append(el("li", { class: "small", text: "No conversations yet." }));
  }

  renderOne() {
    const c = this.items.get(this.current);
    if (!c) return;
    $("conv-title").textContent = c.subject;
    $("conv-sub").textContent = `${c.type} conversation · ${stateLabel(c.state)}`
      + `${c.rule ? ` · rule: ${c.rule}${c.rule === "threshold" ? ` ${c.threshold}` : ""}` : ""}`;
    const members = [c.initiator, ...c.participants];
    $("convo-facts").replaceChildren(
      ...fact("State", el("span", { class: "pill", dataset: { state: c.state }, text: stateLabel(c.state) })),
      ...fact("Members", el("ul", { class: "members" }, members.map((p) => el("li", { title: p },
        el("span", { class: "who", text: this.nameOf(p) }),
        p === c.initiator ? " (started it)" : "",
        c.votes[p] !== undefined ? el("span", { class: "vote", text: `voted ${c.votes[p]}` }) : null)))),
      ...fact("Started", el("time", { datetime: c.created, text: when(c.created) })),
      ...fact(c.ended ? "Ended" : "Deadline", el("time", {
        datetime: c.ended || c.deadline, text: when(c.ended || c.deadline) })));
    const posts = [{ from: c.initiator, id: `subject-${c.id}`, body: c.subject, at: c.created, opening: true },
      ...c.history];
    $("convo-messages").replaceChildren(...posts.map((p) => this.post(p)));
    $("convo-verdict").replaceChildren(...this.verdict(c));
    const finished = c.state === "complete" || c.state === "timed_out";
    $("convo-form").hidden = finished;
    $("verdict-form").hidden = finished || c.initiator !== this.me();
  }

  post(p) {
    return el("li", { class: `msg${p.opening ? " opening" : " reply"}`, dataset: { post: p.id } },
      el("div", { class: "meta" },
        el("span", { class: "who", text: this.nameOf(p.from) }),
        el("span", { class: "pid", title: p.from, text: short(p.from) }),
        el("time", { datetime: p.at, title: p.at, text: when(p.at) }),
        p.opening ? el("span", { class: "state", text: "subject" }) : null,
        p.vote != null ? el("span", { class: "vote", text: `vote: ${p.vote}` }) : null),
      el("p", { class: "body", text: p.body }));
  }

  verdict(c) {
    const head = el("h3", { id: "verdict-h", text: "Verdict" });
    const v = c.verdict;
    if (!v) {
      const why = c.state === "timed_out" ? "It timed out without a verdict."
        : c.rule ? `Not decided yet: the ${c.rule} rule decides from the votes.`
          : "Not decided yet: the initiator gives it.";
      return [head, el("p", { class: "small", text: why })];
    }
    const votes = v.votes && typeof v.votes === "object" ? Object.entries(v.votes) : [];
    return [head, el("dl", {},
      ...fact("Decision", el("strong", { class: "decision", text: String(v.decision ?? "") })),
      ...fact("Summary", String(v.summary ?? "")),
      ...(v.rule ? fact("Rule", String(v.rule)) : []),
      ...(votes.length ? fact("Votes", el("ul", { class: "members" }, votes.map(([p, vote]) =>
        el("li", { title: p }, el("span", { class: "who", text: this.nameOf(p) }), `: ${vote}`)))) : []),
      ...fact("Signed by", `${this.nameOf(v.signed_by || c.initiator)}, ${SIGNATURE[String(v.verified)]
        || "not checked"}`))];
  }
}

function fact(name, value) {
  return [el("dt", { text: name }), el("dd", {}, value)];
}
