/* Operations: every service's Tasks and Processes, a form from each one's parameter schema,
 * its live session (state, result, progress, messages, data) and the buttons its kind allows. */
(function () {
  "use strict";
  const { el, api, live, topicParts, can, confirm, toast, act, form, pageData } = window.PyEdge;
  const data = pageData();
  // How long the Wait button waits for a session to end (the API allows up to 60 s).
  const WAIT_S = 30;
  const SHOWN_MESSAGES = 5;
  const RANK = { idle: 0, starting: 1, running: 2, stopping: 3, done: 4 };

  const views = new Map();   // node, slug, op → the operation's card and its parts
  const sessions = new Map(); // same key → the newest session seen (live or answered)

  const key = (node, slug, op) => `${node}\u0000${slug}\u0000${op}`;

  /** Is session `a` older than `b`? A later start, or a later state of the same start, wins. */
  function older(a, b) {
    if (!b) return false;
    if ((a.started_at || "") !== (b.started_at || "")) return (a.started_at || "") < (b.started_at || "");
    return (RANK[a.state] ?? 0) < (RANK[b.state] ?? 0);
  }

  function stateBadge(session) {
    const state = session ? session.state : "unknown";
    let cls = state;
    if (state === "done") cls = session.success === false ? "done-failed" : "done-ok";
    return [cls, state];
  }

  function time(iso) {
    if (!iso) return "—";
    const date = new Date(iso);
    return isNaN(date) ? iso : date.toLocaleTimeString();
  }

  function format(value) {
    if (value === null || value === undefined) return "—";
    if (typeof value === "object") return JSON.stringify(value);
    return String(value);
  }

  /** A session's newer snapshot (live or an action's answer) shown on its card. */
  function apply(node, slug, op, session) {
    const k = key(node, slug, op);
    if (session && !older(session, sessions.get(k))) sessions.set(k, session);
    const view = views.get(k);
    if (view) render(view, sessions.get(k));
  }

  function render(view, session) {
    const s = session || { state: "idle", success: null, messages: [], data: {}, params: {} };
    const [cls, state] = stateBadge(s);
    view.state.className = "badge " + cls;
    view.state.textContent = state;
    view.success.className = s.success === true ? "ok" : s.success === false ? "bad" : "muted";
    view.success.textContent = s.success === true ? "succeeded" : s.success === false ? "failed" : "—";
    view.started.textContent = time(s.started_at);
    view.started.title = s.started_at || "";
    let ended = time(s.ended_at);
    if (s.ended_at && s.started_at) {
      const took = (Date.parse(s.ended_at) - Date.parse(s.started_at)) / 1000;
      if (isFinite(took)) ended += ` (took ${took.toFixed(1)} s)`;
    }
    view.ended.textContent = ended;
    view.ended.title = s.ended_at || "";
    const params = s.params || {};
    view.params.textContent = Object.keys(params).length ? JSON.stringify(params) : "—";

    const values = s.data || {};
    const progress = typeof values.progress === "number" ? Math.min(Math.max(values.progress, 0), 1) : null;
    view.progressRow.hidden = progress === null;
    if (progress !== null) {
      view.progress.value = progress;
      view.progressText.textContent = `${Math.round(progress * 100)} %`;
    }
    const rest = Object.entries(values).filter(([name]) => name !== "progress");
    view.dataRow.hidden = rest.length === 0;
    view.data.replaceChildren(...rest.flatMap(([name, value]) =>
      [el("dt", {}, name.replace(/_/g, " ")), el("dd", {}, format(value))]));

    const messages = (s.messages || []).slice(-SHOWN_MESSAGES);
    view.messagesRow.hidden = messages.length === 0;
    view.messages.replaceChildren(...messages.map((m) =>
      el("li", {}, el("time", { datetime: m.ts, title: m.ts }, time(m.ts)), m.text)));

    // Only what applies to the session is enabled; the API would refuse the rest (409).
    const active = RANK[s.state] >= RANK.starting && RANK[s.state] <= RANK.stopping;
    if (view.abort) view.abort.disabled = !(active && s.state !== "stopping");
    if (view.stop) view.stop.disabled = !(active && s.state !== "stopping");
    if (view.wait) view.wait.disabled = !active;
  }

  /** The role that starts and ends an operation (GET /ops says; older services: operator). */
  function roleOf(op) {
    return op.role || "operator";
  }

  function card(service, op) {
    const opUrl = `${service.url}/ops/${encodeURIComponent(op.name)}`;
    const isTask = op.kind === "task";
    const kindLabel = isTask ? "Task" : "Process";
    const view = {
      state: el("span", { class: "badge", "data-state": true }),
      success: el("span", { "data-success": true }),
      started: el("span"),
      ended: el("span"),
      params: el("code", { class: "data" }),
      progress: el("progress", { max: 1, value: 0, "aria-label": `${op.name} progress` }),
      progressText: el("span", { "data-progress": true }),
      data: el("dl", { class: "facts data" }),
      messages: el("ul", { class: "log", "aria-label": `${op.name} messages` }),
    };
    view.progressRow = el("div", { class: "progress", hidden: true }, view.progress, view.progressText);
    view.dataRow = el("div", { hidden: true }, view.data);
    view.messagesRow = el("div", { hidden: true }, view.messages);

    const refresh = (session) => {
      if (session) apply(service.node, service.slug, op.name, session);
    };

    let controls = null;
    const role = roleOf(op);
    if (can(role)) {
      const extra = [];
      if (isTask) {
        view.wait = el("button", { type: "button", onclick: async () => {
          const session = await act(view.wait, () =>
            api("POST", `${opUrl}/wait`, undefined, { timeout: WAIT_S }));
          refresh(session);
          if (session) {
            toast(session.state === "done"
              ? `${op.name}: ${session.success ? "succeeded" : "failed"}`
              : `${op.name} is still ${session.state} after ${WAIT_S} s`);
          }
          render(view, sessions.get(key(service.node, service.slug, op.name)));
        } }, "Wait");
        view.abort = el("button", { type: "button", class: "danger", onclick: async () => {
          const ok = await confirm(
            `Abort ${op.name} of ${service.title} on ${service.node}? The task ends early and fails.`,
            "Abort");
          if (!ok) return;
          refresh(await act(view.abort, () => api("POST", `${opUrl}/abort`)));
          render(view, sessions.get(key(service.node, service.slug, op.name)));
        } }, "Abort");
        extra.push(view.wait, view.abort);
      } else {
        view.stop = el("button", { type: "button", class: "danger", onclick: async () => {
          const ok = await confirm(
            `Stop ${op.name} of ${service.title} on ${service.node}? The running process ends.`,
            "Stop");
          if (!ok) return;
          refresh(await act(view.stop, () => api("POST", `${opUrl}/stop`)));
          render(view, sessions.get(key(service.node, service.slug, op.name)));
        } }, "Stop");
        extra.push(view.stop);
      }
      const last = op.session && op.session.state !== "idle" ? op.session.params : undefined;
      controls = form(op.params_schema, {
        label: "Start",
        initial: last || {},
        extra,
        submit: async (values) => {
          // An operation that deletes data says so (GET /ops): ask before it starts.
          if (op.destructive && !(await confirm(`${op.name} deletes data and cannot be undone. Start it?`, "Start"))) return;
          // Errors (422 at the fields, 409 above the buttons) are shown by the form.
          refresh(await api("POST", `${opUrl}/start`, values));
        },
      });
      controls.setAttribute("aria-label", `Start ${op.name}`);
    }

    const headingId = `op-${views.size}`;
    view.root = el("article", {
      class: "op", "aria-labelledby": headingId,
      dataset: { node: service.node, slug: service.slug, op: op.name, kind: op.kind },
    },
    el("div", { class: "op-head" },
      el("h4", { id: headingId }, el("code", {}, op.name)), el("small", {}, kindLabel), view.state),
    op.description ? el("p", { class: "muted" }, op.description) : null,
    el("dl", { class: "facts" },
      el("dt", {}, "Result"), el("dd", {}, view.success),
      el("dt", {}, "Started"), el("dd", {}, view.started),
      el("dt", {}, "Ended"), el("dd", {}, view.ended),
      el("dt", {}, "Params"), el("dd", {}, view.params)),
    view.progressRow, view.dataRow, view.messagesRow, controls);
    views.set(key(service.node, service.slug, op.name), view);
    return view;
  }

  function serviceCard(service) {
    return document.querySelector(
      `section.service[data-node="${CSS.escape(service.node)}"][data-slug="${CSS.escape(service.slug)}"]`);
  }

  async function load(service) {
    const box = serviceCard(service).querySelector("[data-ops]");
    let ops;
    try {
      ops = await api("GET", `${service.url}/ops`);
    } catch (exc) {
      const retry = el("button", { type: "button", onclick: () => {
        box.replaceChildren(el("p", { class: "muted" }, "Loading operations…"));
        load(service);
      } }, "Retry");
      box.replaceChildren(el("p", { class: "bad" }, `Operations could not be read: ${exc.message} `), retry);
      return;
    }
    if (!ops.length) {
      box.replaceChildren(el("p", { class: "muted" }, "No operations."));
      return;
    }
    box.replaceChildren(...ops.map((op) => card(service, op).root));
    for (const op of ops) apply(service.node, service.slug, op.name, op.session);
  }

  // Sessions and statuses arrive retained: the page is right as soon as it opens, and
  // whatever comes before an operation's card is kept for it.
  live([`${window.PyEdge.root}/+/+/status`, `${window.PyEdge.root}/+/+/ops/+`], (topic, payload) => {
    const [node, slug, kind, op, extra] = topicParts(topic);
    if (kind === "ops" && op && extra === undefined && payload && payload.state) {
      apply(node, slug, op, payload);
    } else if (kind === "status") {
      const section = serviceCard({ node, slug });
      const badge = section && section.querySelector("[data-health]");
      if (!badge) return;
      // Online says nothing of a service's checks: only an offline one changes its badge.
      const text = payload === "offline" ? "offline" : badge.textContent === "offline" ? "ok" : null;
      if (text) { badge.textContent = text; badge.className = "badge " + text; }
    }
  });

  for (const service of data.services) load(service);
})();
