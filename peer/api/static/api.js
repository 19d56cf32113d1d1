// The peer's API as the page uses it: JSON calls with the session cookie, file uploads,
// and the live stream (/events, Server-Sent Events) resumed by cursor after any break.

export class Unauthorised extends Error {}

export async function call(method, path, body) {
  const init = { method, credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  const data = await res.json().catch(() => null);
  if (res.status === 401) throw new Unauthorised("not signed in");
  if (!res.ok) {
    const err = (data && data.error) || { code: String(res.status), message: res.statusText };
    throw Object.assign(new Error(err.message), { code: err.code, status: res.status });
  }
  return data;
}

// POST /blobs: the raw bytes, with the media type and the name in headers
export async function upload(file) {
  const res = await fetch("/blobs", {
    method: "POST",
    credentials: "same-origin",
    headers: {
      "Content-Type": file.type || "application/octet-stream",
      // the UTF-8 bytes of the name, one per character (header values are bytes)
      "X-Blob-Name": unescape(encodeURIComponent(file.name || "file")),
    },
    body: file,
  });
  const data = await res.json().catch(() => null);
  if (!res.ok) {
    const message = (data && data.error && data.error.message) || res.statusText;
    throw new Error(`${file.name}: ${message}`);
  }
  return { id: data.id, name: file.name || data.name, type: data.type || file.type, size: data.size };
}

// The live stream. Every message event carries its cursor: after a break the stream is
// opened again after the last cursor seen, so nothing is skipped; the page also keeps
// message ids, so nothing shows twice. `onState` hears "live", "reconnecting" (with the
// attempt number and the delay) and "offline" (the browser has no network).
export class Stream {
  constructor({ onEvent, onState }) {
    this.cursor = 0;
    this.onEvent = onEvent;
    this.onState = onState;
    this.attempt = 0;
    this.source = null;
    this.timer = null;
    window.addEventListener("online", () => this.open());
    window.addEventListener("offline", () => { this.close(); this.onState("offline", {}); });
  }

  open() {
    this.close();
    const source = new EventSource(`/events?after=${this.cursor}`, { withCredentials: true });
    this.source = source;
    source.onopen = () => { this.attempt = 0; this.onState("live", {}); };
    const take = (name) => (ev) => {
      if (ev.lastEventId && name !== "status") {
        const cursor = Number(ev.lastEventId);
        if (cursor > this.cursor) this.cursor = cursor;
      }
      this.onEvent(name, JSON.parse(ev.data));
    };
    for (const name of ["message", "status", "gap", "conversation"]) source.addEventListener(name, take(name));
    source.addEventListener("error", (ev) => {
      if (ev.data) this.onEvent("error", JSON.parse(ev.data)); // the peer said why
      this.retry();
    });
  }

  retry() {
    this.close();
    if (!navigator.onLine) { this.onState("offline", {}); return; }
    this.attempt += 1;
    const delay = Math.min(3000, 250 * 2 ** Math.min(this.attempt, 4)); // a local peer: retry often
    this.onState("reconnecting", { attempt: this.attempt, delay });
    this.timer = setTimeout(() => this.open(), delay);
  }

  close() {
    clearTimeout(this.timer);
    if (this.source) { this.source.close(); this.source = null; }
  }
}
