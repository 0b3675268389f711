/* Overview: live service health and operation states, the device's figures, outboxes, audit. */
(function () {
  "use strict";
  const { el, api, live, topicParts, can, ago, bytes, pageData } = window.PyEdge;
  const data = pageData();

  function row(node, slug) {
    return document.querySelector(`tr[data-node="${CSS.escape(node)}"][data-slug="${CSS.escape(slug)}"]`);
  }

  function setBadge(badge, text) {
    badge.textContent = text;
    badge.className = "badge " + text;
  }

  // Status and operation sessions arrive retained: the page is right as soon as it opens.
  live([`${window.PyEdge.root}/+/+/status`, `${window.PyEdge.root}/+/+/ops/+`], (topic, payload) => {
    const [node, slug, kind, op] = topicParts(topic);
    const tr = row(node, slug);
    if (!tr) return;
    if (kind === "status") {
      setBadge(tr.querySelector("[data-health]"), payload === "online" ? "ok" : "offline");
    } else if (kind === "ops" && payload && payload.state) {
      const cell = tr.querySelector(`[data-op="${CSS.escape(op)}"] [data-state]`);
      if (cell) setBadge(cell, payload.state === "done" && payload.success === false ? "failed" : payload.state);
    }
  });

  async function device() {
    try {
      const figures = await api("GET", "/api/device");
      const set = (name, text) => { document.querySelector(`[data-figure="${name}"]`).textContent = text; };
      set("cpu", figures.cpu_percent === null ? "—" :
        `${figures.cpu_percent} % of ${figures.cpus} CPU${figures.cpus === 1 ? "" : "s"}` +
        (figures.load ? ` · load ${figures.load.map((x) => x.toFixed(2)).join(" ")}` : ""));
      set("memory", figures.memory ?
        `${bytes(figures.memory.total - figures.memory.available)} used of ${bytes(figures.memory.total)}` : "—");
      set("disk", `${bytes(figures.disk.free)} free of ${bytes(figures.disk.total)}`);
      set("uptime", figures.uptime === null ? "—" : `${(figures.uptime / 3600).toFixed(1)} h`);
    } catch (exc) { /* shown as … until the next try */ }
  }

  async function outboxes() {
    const devices = data.services.filter((s) => s.slug === "device-service");
    const box = document.getElementById("outboxes");
    const list = box.querySelector("dl");
    list.replaceChildren();
    for (const service of devices) {
      try {
        const outbox = await api("GET", `${service.url}/outbox`);
        list.append(el("dt", {}, `${service.node}`),
          el("dd", {}, `${outbox.depth} waiting`,
            outbox.oldest_age ? ` · oldest ${outbox.oldest_age.toFixed(1)} s` : "",
            ` · ${outbox.policy}`, outbox.error ? el("span", { class: "bad" }, ` · ${outbox.error}`) : ""));
      } catch (exc) {
        list.append(el("dt", {}, service.node), el("dd", { class: "bad" }, exc.message));
      }
      box.hidden = false;
    }
  }

  async function audit() {
    const table = document.getElementById("audit");
    if (!table || !can("admin")) return;
    const tbody = table.querySelector("tbody");
    let entries;
    try {
      entries = await api("GET", "/api/audit", undefined, { limit: 8 });
    } catch (exc) {
      tbody.replaceChildren(el("tr", {}, el("td", { colspan: 4, class: "bad" }, exc.message)));
      return;
    }
    tbody.replaceChildren(...entries.map((e) => el("tr", {},
      el("td", { title: e.ts }, ago(e.ts)), el("td", {}, e.actor),
      el("td", {}, el("code", {}, `${e.action} ${e.target}`)),
      el("td", { class: e.status >= 400 ? "bad" : "" }, e.status ?? "—"))));
    if (!entries.length) tbody.append(el("tr", {}, el("td", { colspan: 4, class: "muted" }, "Nothing yet.")));
  }

  device();
  outboxes();
  audit();
  setInterval(device, 10000);
  setInterval(outboxes, 10000);
})();
