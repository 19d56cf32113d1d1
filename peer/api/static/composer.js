// A composer: a text box, files waiting to go (picker, drag and drop, paste), and its
// submit (Enter sends, Shift+Enter is a new line). The page has two: the conversation's
// and the thread's.
import { el, size } from "./render.js";

export class Composer {
  // ids: { form, text, files, pending, drop, error, button }; send(text, files, errorNode)
  // resolves true when sent; fields() gives what the message carries besides (a thread)
  constructor(ids, send) {
    this.node = Object.fromEntries(Object.entries(ids).map(([k, id]) => [k, document.getElementById(id)]));
    this.send = send;
    this.files = [];
    this.label = this.node.button.textContent;
    const { form, text, files, drop } = this.node;
    form.addEventListener("submit", (ev) => { ev.preventDefault(); this.submit(); });
    text.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); form.requestSubmit(); }
    });
    files.addEventListener("change", () => { this.add(files.files); files.value = ""; });
    drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (ev) => {
      ev.preventDefault();
      drop.classList.remove("over");
      this.add(ev.dataTransfer.files);
    });
    text.addEventListener("paste", (ev) => {
      const pasted = [...(ev.clipboardData?.files || [])];
      if (pasted.length) { ev.preventDefault(); this.add(pasted); }
    });
  }

  add(list) {
    for (const file of list) this.files.push(file);
    this.render();
  }

  render() {
    this.node.pending.replaceChildren(...this.files.map((file, i) => el("li", {},
      file.type.startsWith("image/") ? el("img", { src: URL.createObjectURL(file), alt: "" }) : null,
      el("span", { text: `${file.name} (${size(file.size)})` }),
      el("button", { type: "button", class: "link", "aria-label": `Remove ${file.name}`,
        onclick: () => { this.files.splice(i, 1); this.render(); } }, "×"))));
  }

  async submit() {
    const { text, button, error } = this.node;
    if (!text.value.trim() && !this.files.length) return;
    const files = this.files.splice(0);
    this.render();
    button.disabled = true;
    button.textContent = files.length ? `Uploading ${files.length} file(s)…` : "Sending…";
    try {
      if (await this.send(text.value, files, error)) text.value = "";
      else { this.files.unshift(...files); this.render(); }
    } finally {
      button.disabled = false;
      button.textContent = this.label;
    }
  }
}
