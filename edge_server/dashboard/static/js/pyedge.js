/* PyEdge dashboard: the API, the live channel, forms from JSON Schema, dialogs.
 *
 * Every page script uses window.PyEdge. Text always goes in through textContent (never
 * innerHTML): values come from devices and remote nodes, and must not become markup. */
(function () {
  "use strict";

  const body = document.body;
  const ROLES = { viewer: 1, operator: 2, admin: 3 };
  const role = body.dataset.role || "viewer";

  /** An answer of the API that is not 2xx: status, the envelope's message and errors. */
  class ApiError extends Error {
    constructor(status, message, errors) {
      super(message);
      this.status = status;
      this.errors = errors || null;
    }
  }

  /** Build an element: el("td", {class: "x", onclick: f}, "text", child). */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key.startsWith("on") && typeof value === "function") {
        node.addEventListener(key.slice(2), value);
      } else if (key === "dataset") {
        Object.assign(node.dataset, value);
      } else if (value === true) {
        node.setAttribute(key, "");
      } else {
        node.setAttribute(key, String(value));
      }
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  // Requests in flight when the page is left are cut off by the browser: that is no error
  // to report (the page is going), so such a call simply never settles.
  let leaving = false;
  window.addEventListener("beforeunload", () => { leaving = true; });
  window.addEventListener("pagehide", () => { leaving = true; });

  /** Call the API with the session cookie (and its CSRF token on changes); JSON back. */
  async function api(method, path, data, query) {
    const url = new URL(path, window.location.origin);
    for (const [key, value] of Object.entries(query || {})) {
      if (Array.isArray(value)) value.forEach((v) => url.searchParams.append(key, v));
      else if (value !== undefined && value !== null) url.searchParams.set(key, value);
    }
    const init = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
    if (method !== "GET" && method !== "HEAD") init.headers["X-CSRF-Token"] = body.dataset.csrf;
    if (data !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(data);
    }
    let response;
    try {
      response = await fetch(url, init);
    } catch (exc) {
      if (leaving) return new Promise(() => {});
      throw new ApiError(0, "The device did not answer: " + exc.message);
    }
    if (response.status === 401) {
      window.location.assign("/login?next=" + encodeURIComponent(location.pathname));
      throw new ApiError(401, "Logged out");
    }
    let text;
    try {
      text = await response.text();
    } catch (exc) {
      if (leaving) return new Promise(() => {});
      throw new ApiError(0, "The answer was cut off: " + exc.message);
    }
    let payload = null;
    try { payload = text ? JSON.parse(text) : null; } catch (exc) { payload = null; }
    if (!response.ok) {
      const message = (payload && payload.message) || response.statusText || "Request failed";
      throw new ApiError(response.status, message, payload && payload.errors);
    }
    return payload;
  }

  /** Live bus messages: handler(topic, payload, retained) for each, across reconnects. */
  function live(filters, handler) {
    const url = new URL("/api/events", window.location.origin);
    for (const filter of filters) url.searchParams.append("topic", filter);
    const status = document.getElementById("live-status");
    const source = new EventSource(url, { withCredentials: true });
    source.addEventListener("message", (event) => {
      try {
        const data = JSON.parse(event.data);
        handler(data.topic, data.payload, data.retained);
      } catch (exc) { console.error(exc); }
    });
    source.addEventListener("open", () => { if (status) status.textContent = ""; });
    source.addEventListener("error", () => {
      // EventSource reconnects by itself and resumes with Last-Event-ID.
      if (status) status.textContent = "Live updates interrupted: reconnecting…";
    });
    return source;
  }

  /** Split a topic under the site's root into [node, slug, ...rest]. */
  function topicParts(topic) {
    const root = body.dataset.root + "/";
    return topic.startsWith(root) ? topic.slice(root.length).split("/") : [];
  }

  /** Ask before an action that loses data or stops something; resolves true on OK. */
  function confirmAction(text, okLabel) {
    const dialog = document.getElementById("confirm");
    document.getElementById("confirm-text").textContent = text;
    document.getElementById("confirm-ok").textContent = okLabel || "Confirm";
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
      dialog.returnValue = "";
      dialog.showModal();
      document.getElementById("confirm-ok").focus();
    });
  }

  /** A short message in the corner; kind "bad" for errors. */
  function toast(text, kind) {
    const box = el("div", { class: "toast " + (kind || ""), role: kind === "bad" ? "alert" : null }, text);
    document.getElementById("toasts").append(box);
    setTimeout(() => box.remove(), kind === "bad" ? 8000 : 4000);
  }

  /** Run an async action from a button: disabled meanwhile, errors shown as a toast. */
  async function act(button, action) {
    if (button) button.disabled = true;
    try {
      return await action();
    } catch (exc) {
      toast(exc.message, "bad");
      return undefined;
    } finally {
      if (button) button.disabled = false;
    }
  }

  function inputFor(name, prop, required, value) {
    const id = "f-" + Math.random().toString(36).slice(2, 9) + "-" + name;
    const attrs = { id, name, "aria-describedby": id + "-hint " + id + "-error" };
    if (required) attrs.required = true;
    let input;
    if (prop.enum) {
      input = el("select", attrs, required ? null : el("option", { value: "" }, "—"),
        prop.enum.map((option) => el("option", { value: option, selected: option === value }, option)));
    } else if (prop.type === "boolean") {
      input = el("input", { ...attrs, type: "checkbox", checked: Boolean(value) });
    } else if (prop.type === "number" || prop.type === "integer") {
      input = el("input", { ...attrs, type: "number", inputmode: "decimal",
        step: prop.type === "integer" ? "1" : "any", min: prop.minimum, max: prop.maximum,
        value: value ?? "" });
    } else if (prop.type === "array" || prop.type === "object") {
      const text = value === undefined || value === null ? "" :
        (prop.type === "array" && (prop.items || {}).type === "string" ? value.join("\n") : JSON.stringify(value));
      input = el("textarea", { ...attrs, rows: 3 }, text);
    } else {
      input = el("input", { ...attrs, type: prop.format === "password" ? "password" : "text",
        maxlength: prop.maxLength, placeholder: prop.example, value: value ?? "" });
    }
    input.dataset.kind = prop.type || "string";
    input.dataset.items = (prop.items || {}).type || "";
    return { id, input };
  }

  function readInput(input) {
    const kind = input.dataset.kind;
    if (kind === "boolean") return input.checked;
    const raw = input.value.trim();
    if (raw === "") return undefined;
    if (kind === "number" || kind === "integer") return Number(raw);
    if (kind === "array" && input.dataset.items === "string") {
      return raw.split(/[\n,]/).map((s) => s.trim()).filter(Boolean);
    }
    if (kind === "array" || kind === "object") {
      try { return JSON.parse(raw); } catch (exc) { return raw; }
    }
    return raw;
  }

  /** A form generated from a JSON Schema; submit(values) is called with what was filled in.
   *  A rejected submit's 422 messages are shown at their fields. The browser's own checks
   *  are off (novalidate): the API's message is the one shown. */
  function form(schema, options) {
    const opts = options || {};
    const props = (schema && schema.properties) || {};
    const required = new Set((schema && schema.required) || []);
    const initial = opts.initial || {};
    const formEl = el("form", { class: "generated", novalidate: true });
    const fields = {};
    for (const [name, prop] of Object.entries(props)) {
      if (prop.readOnly) continue;
      const value = name in initial ? initial[name] : prop.default;
      const { id, input } = inputFor(name, prop, required.has(name), value);
      const label = el("label", { for: id }, prop.title || name.replace(/_/g, " "),
        required.has(name) ? " *" : "");
      const hint = [prop.description,
        prop.minimum !== undefined && prop.maximum !== undefined
          ? `range ${prop.minimum} to ${prop.maximum}`
          : prop.minimum !== undefined ? `at least ${prop.minimum}`
            : prop.maximum !== undefined ? `at most ${prop.maximum}` : null,
        // A null default (an optional value left out) is no value worth naming.
        prop.default !== undefined && prop.default !== null
          ? `default ${JSON.stringify(prop.default)}` : null]
        .filter(Boolean).join(" · ");
      const error = el("div", { class: "error", id: id + "-error", dataset: { errorFor: name } });
      const field = el("div", { class: "field", dataset: { field: name } }, label,
        prop.type === "boolean" ? el("span", { class: "switch" }, input) : input,
        el("div", { class: "hint", id: id + "-hint" }, hint), error);
      fields[name] = { field, input, error };
      formEl.append(field);
    }
    const formError = el("div", { class: "form-error", role: "alert" });
    const submit = el("button", { type: "submit", class: "primary" }, opts.label || "Submit");
    formEl.append(formError, el("div", { class: "actions" }, submit, opts.extra || null));
    formEl.addEventListener("submit", async (event) => {
      event.preventDefault();
      clearErrors(formEl);
      const values = {};
      for (const [name, { input }] of Object.entries(fields)) {
        const value = readInput(input);
        if (value !== undefined) values[name] = value;
      }
      submit.disabled = true;
      try {
        await opts.submit(values);
      } catch (exc) {
        showErrors(formEl, exc);
      } finally {
        submit.disabled = false;
      }
    });
    return formEl;
  }

  function clearErrors(formEl) {
    formEl.querySelectorAll(".field").forEach((f) => f.classList.remove("invalid"));
    formEl.querySelectorAll("[data-error-for]").forEach((e) => { e.textContent = ""; });
    formEl.querySelectorAll('[aria-invalid="true"]').forEach((i) => i.removeAttribute("aria-invalid"));
    const formError = formEl.querySelector(".form-error");
    if (formError) formError.textContent = "";
  }

  /** Put an ApiError's field messages at their fields, the rest above the buttons. */
  function showErrors(formEl, exc) {
    const errors = (exc && exc.errors) || {};
    let placed = false;
    for (const location of Object.values(errors)) {
      if (!location || typeof location !== "object") continue;
      for (const [name, messages] of Object.entries(location)) {
        const error = formEl.querySelector(`[data-error-for="${CSS.escape(name)}"]`);
        const text = Array.isArray(messages) ? messages.join(" ") : JSON.stringify(messages);
        if (error) {
          error.textContent = text;
          error.closest(".field").classList.add("invalid");
          const input = error.closest(".field").querySelector("input, select, textarea");
          if (input) input.setAttribute("aria-invalid", "true");
          if (!placed) input && input.focus();
          placed = true;
        } else {
          formEl.querySelector(".form-error").textContent += `${name}: ${text} `;
        }
      }
    }
    if (!placed) formEl.querySelector(".form-error").textContent = exc.message;
  }

  function can(needed) { return ROLES[role] >= ROLES[needed]; }

  function ago(iso) {
    if (!iso) return "—";
    const seconds = (Date.now() - Date.parse(iso)) / 1000;
    if (!isFinite(seconds)) return iso;
    if (seconds < 60) return `${Math.max(0, Math.round(seconds))} s ago`;
    if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
    if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
    return new Date(iso).toLocaleString();
  }

  function bytes(n) {
    if (n === null || n === undefined) return "—";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
  }

  function badge(state) {
    return el("span", { class: "badge " + String(state || "unknown").toLowerCase() }, state || "unknown");
  }

  function pageData() {
    const node = document.getElementById("page-data");
    return node ? JSON.parse(node.textContent) : {};
  }

  // The phone-width menu.
  const toggle = document.querySelector(".menu-toggle");
  if (toggle) {
    toggle.addEventListener("click", () => {
      const nav = document.getElementById("nav");
      const open = nav.classList.toggle("open");
      toggle.setAttribute("aria-expanded", String(open));
    });
  }

  window.PyEdge = {
    ApiError, el, api, live, topicParts, confirm: confirmAction, toast, act, form,
    showErrors, clearErrors, can, role, ago, bytes, badge, pageData,
    root: body.dataset.root, node: body.dataset.node,
  };
})();
