// DOM building: every text from the mesh goes in as text (never as HTML).

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function short(id) {
  return id ? `${id.slice(0, 8)}…` : "";
}

export function size(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  const units = ["KiB", "MiB", "GiB"];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

export function when(iso) {
  const date = new Date(iso);
  const today = new Date().toDateString() === date.toDateString();
  return today ? date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : date.toLocaleString([], { dateStyle: "short", timeStyle: "short" });
}

export function ago(iso) {
  const then = new Date(iso).getTime();
  if (!(then > 0)) return "never";
  const s = Math.max(0, (Date.now() - then) / 1000);
  if (s < 60) return "just now";
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

const SAFE_ID = /^[0-9A-Za-z_-]{1,128}$/;

export function attachmentList(attachments) {
  const items = (attachments || []).filter((a) => a && SAFE_ID.test(String(a.id)));
  if (!items.length) return null;
  return el("ul", { class: "attachments", "aria-label": "Attachments" },
    items.map((a) => {
      const url = `/blobs/${a.id}`;
      const name = String(a.name || a.id);
      if (String(a.type || "").startsWith("image/")) {
        return el("li", {}, el("a", { href: url, target: "_blank", rel: "noopener" },
          el("img", { src: url, alt: name, loading: "lazy", class: "preview" })));
      }
      return el("li", {}, el("a", { class: "card", href: url, download: name },
        el("span", { class: "name", text: name }),
        el("span", { class: "size", text: `${size(Number(a.size) || 0)} · download` })));
    }));
}
