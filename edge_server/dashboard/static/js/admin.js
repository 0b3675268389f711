/* A service's admin page: its settings, health, operations and log from GET {url}/admin,
 * and the panels the service declares. A panel is data (a source to show, a form to edit
 * with), drawn here: a service, maybe on another node, never puts markup on this page. */
(function () {
  "use strict";
  const { el, api, live, topicParts, can, toast, badge, form, act, pageData } = window.PyEdge;
  const service = pageData().service;
  const base = service.url;
  let panelsShown = false;

  function label(name) {
    const text = String(name).replace(/_/g, " ");
    return text.charAt(0).toUpperCase() + text.slice(1);
  }

  /** A value as a cell or a fact shows it. */
  function show(value) {
    if (value === null || value === undefined || value === "") return "—";
    if (typeof value === "boolean") return value ? "yes" : "no";
    if (Array.isArray(value)) {
      if (!value.length) return "none";
      if (value.every((item) => typeof item !== "object" || item === null)) return value.join(", ");
    }
    if (typeof value === "object") return JSON.stringify(value);
    return String(value);
  }

  /** An edit path with its {field}s filled in from the row, each as one path segment. */
  // A panel comes from the service, which may be another node's: its paths must stay
  // under that service's API. `..` (or `.`) would let a node send the admin's session,
  // with its CSRF token, to any endpoint of this server.
  const PATH = /^[A-Za-z0-9_~{}-][A-Za-z0-9_.~{}-]*(\/[A-Za-z0-9_~{}-][A-Za-z0-9_.~{}-]*)*$/;
  const METHODS = new Set(["PATCH", "PUT", "POST"]);

  function safePath(path) {
    return typeof path === "string" && PATH.test(path) && !path.split("/").some((s) => /^\.+$/.test(s));
  }

  /** Refuse a panel whose paths or method would leave its service's API. */
  function checkPanel(spec) {
    if (!safePath(spec.source)) return `its source ${JSON.stringify(spec.source)} is not a path under the service's API`;
    if (spec.edit != null && (!safePath(spec.edit) || !METHODS.has(spec.method))) {
      return `its edit ${JSON.stringify(spec.edit)} (${spec.method}) is not a change under the service's API`;
    }
    return null;
  }

  function fill(template, row) {
    return template.replace(/\{(\w+)\}/g, (_, field) => {
      const value = String(row[field] ?? "");
      // encodeURIComponent keeps dots: a value of "." or ".." would still climb out.
      if (/^\.+$/.test(value) || value === "") throw new Error(`${field} ${JSON.stringify(value)} cannot name a row`);
      return encodeURIComponent(value);
    });
  }

  /** A cell; on a phone its table is stacked, and the cell shows its column's name first. */
  function cell(name, attrs, ...children) {
    return el("td", { ...attrs, "data-label": name }, ...children);
  }

  /** A table that becomes a stack of blocks on a phone (a block per row). */
  function table(head, rows, attrs) {
    const options = { ...attrs, class: `stacked ${(attrs && attrs.class) || ""}`.trim() };
    return el("div", { class: "table-wrap" }, el("table", options,
      el("thead", {}, el("tr", {}, head.map(([text, cls]) => el("th", { scope: "col", class: cls }, text)))),
      el("tbody", {}, rows)));
  }

  function section(id) { return document.querySelector(`#${id} [data-body]`); }

  function renderHealth(health) {
    const summary = el("p", {}, badge(health.status), " ", health.detail || "");
    const rows = health.checks.map((check) => el("tr", { dataset: { check: check.name } },
      el("td", {}, el("code", {}, check.name),
        check.description ? el("div", {}, el("small", {}, check.description)) : null),
      cell("Status", {}, badge(check.status)),
      cell("Detail", {}, check.detail || "—")));
    section("health").replaceChildren(summary, rows.length
      ? table([["Check"], ["Status"], ["Detail"]], rows)
      : el("p", { class: "muted" }, "The service declares no health check of its own."));
  }

  function opBadge(op) {
    const failed = op.state === "done" && op.success === false;
    const node = badge(failed ? "failed" : op.state);
    node.dataset.state = "";
    return node;
  }

  function renderOperations(operations) {
    const rows = operations.map((op) => el("tr", { dataset: { op: op.name } },
      el("td", {}, el("code", {}, op.name)),
      cell("Kind", {}, op.kind),
      cell("State", {}, opBadge(op)),
      el("td", { class: "hide-narrow" }, op.description || "")));
    section("operations").replaceChildren(rows.length
      ? table([["Operation"], ["Kind"], ["State"], ["What it does", "hide-narrow"]], rows)
      : el("p", { class: "muted" }, "No operations."));
  }

  function settingRow(setting) {
    const value = setting.secret && setting.value !== null
      ? el("em", { class: "muted" }, setting.value)
      : el("code", {}, show(setting.value));
    return el("tr", { dataset: { key: setting.key } },
      el("td", {}, el("code", {}, setting.key),
        setting.description ? el("div", {}, el("small", {}, setting.description)) : null),
      cell("Value", { class: "value" }, value),
      cell("Source", { class: "source" }, setting.source));
  }

  function renderSettings(settings) {
    const head = [["Setting"], ["Value"], ["Source"]];
    const own = settings.filter((s) => !s.core);
    const core = settings.filter((s) => s.core);
    section("settings").replaceChildren(
      el("h3", {}, "The service's own"),
      own.length ? table(head, own.map(settingRow), { class: "settings", "data-group": "service" })
        : el("p", { class: "muted" }, "The service has no settings of its own."),
      el("h3", {}, "Core settings of its process"),
      table(head, core.map(settingRow), { class: "settings", "data-group": "core" }));
  }

  function renderLog(lines) {
    const pre = document.querySelector("#log pre");
    pre.textContent = lines.length
      ? lines.map((l) => `${l.ts} ${l.level.padEnd(8)}${l.logger}: ${l.message}`).join("\n")
      : "No log lines yet (the process's log level may hide the service's lines).";
    pre.scrollTop = pre.scrollHeight;
  }

  async function load() {
    const error = document.getElementById("admin-error");
    try {
      const admin = await api("GET", `${base}/admin`);
      error.hidden = true;
      renderHealth(admin.health);
      renderOperations(admin.operations);
      renderSettings(admin.settings);
      renderLog(admin.log);
      if (!panelsShown) {
        panelsShown = true;
        document.getElementById("panels").replaceChildren(...admin.panels.map(panel));
      }
    } catch (exc) {
      error.textContent = `The service's admin view did not load: ${exc.message}`;
      error.hidden = false;
    }
  }

  /** One panel the service declared: its source as a table (a list) or facts (an object),
   *  and an edit form generated from its schema, prefilled with the row. */
  function panel(spec, index) {
    const titleId = `panel-${index}`;
    const refused = checkPanel(spec);
    if (refused) {
      return el("section", { class: "card panel", "aria-labelledby": titleId, dataset: { panel: String(spec.title) } },
        el("h2", { id: titleId }, String(spec.title)),
        el("p", { class: "bad", role: "alert" }, `This panel is not shown: ${refused}.`));
    }
    const content = el("div", {}, el("p", { class: "muted" }, "Loading…"));
    const editor = el("div", { class: "panel-edit" });
    const editable = Boolean(spec.edit && spec.form_schema && can(spec.role));
    const box = el("section", { class: "card panel", "aria-labelledby": titleId, dataset: { panel: spec.title } },
      el("h2", { id: titleId }, spec.title),
      spec.description ? el("p", { class: "muted" }, spec.description) : null,
      content, editor);

    async function refresh() {
      try {
        const data = await api("GET", `${base}/${spec.source}`);
        content.replaceChildren(...[Array.isArray(data) ? rows(data) : facts(data)].flat());
      } catch (exc) {
        content.replaceChildren(el("p", { class: "bad", role: "alert" }, `${spec.source} did not load: ${exc.message}`));
      }
    }

    function rows(items) {
      if (!items.length) return el("p", { class: "muted" }, "Nothing to show.");
      const columns = spec.columns.length ? spec.columns : Object.keys(items[0]);
      const head = columns.map((c) => [label(c)]);
      if (editable) head.push(["Actions"]);
      return table(head, items.map((item) => {
        const name = String(item[spec.key] ?? "");
        return el("tr", { dataset: { key: name } },
          columns.map((c, i) => i === 0 ? el("td", { dataset: { column: c } }, el("strong", {}, show(item[c])))
            : cell(label(c), { dataset: { column: c } }, show(item[c]))),
          editable ? el("td", {}, el("button", { type: "button", "aria-label": `Edit ${name}`,
            onclick: (event) => openEditor(item, name, event.currentTarget) }, "Edit")) : null);
      }));
    }

    function facts(object) {
      // The declared columns pick the facts and their order; without them, all are shown.
      const keys = spec.columns.length ? spec.columns : Object.keys(object);
      const list = el("dl", { class: "facts" }, keys.flatMap((k) =>
        [el("dt", {}, label(k)), el("dd", { dataset: { fact: k } }, show(object[k]))]));
      if (!editable) return list;
      return [list, el("div", { class: "actions" }, el("button", { type: "button",
        "aria-label": `Edit ${spec.title}`, onclick: (event) => openEditor(object, null, event.currentTarget) }, "Edit"))];
    }

    function openEditor(row, name, opener) {
      const heading = name ? `Edit ${name}` : `Edit ${spec.title}`;
      const close = () => { editor.replaceChildren(); if (opener && opener.isConnected) opener.focus(); };
      const cancel = el("button", { type: "button", onclick: close }, "Cancel");
      const editForm = form(spec.form_schema, {
        initial: row,
        label: "Save",
        extra: cancel,
        submit: async (values) => {
          await api(spec.method, `${base}/${fill(spec.edit, row)}`, values);
          toast(`${name || spec.title} saved`);
          editor.replaceChildren();
          await refresh();
        },
      });
      editForm.setAttribute("aria-label", heading);
      editor.replaceChildren(el("h3", {}, heading), editForm);
      const first = editForm.querySelector("input, select, textarea");
      if (first) first.focus();
      editor.scrollIntoView({ block: "nearest" });
    }

    refresh();
    return box;
  }

  // Operation states arrive live (retained first): the table stays right without reloads.
  live([`${window.PyEdge.root}/${service.node}/${service.slug}/ops/+`], (topic, session) => {
    const [node, slug, kind, op] = topicParts(topic);
    if (node !== service.node || slug !== service.slug || kind !== "ops" || !session) return;
    const cell = document.querySelector(`#operations tr[data-op="${CSS.escape(op)}"] [data-state]`);
    if (cell) cell.replaceWith(opBadge(session));
  });

  const refreshButton = document.getElementById("log-refresh");
  refreshButton.addEventListener("click", () => act(refreshButton, load));
  load();
})();
