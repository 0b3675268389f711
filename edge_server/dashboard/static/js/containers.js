/* Containers and apps: each container-manager's containers (lifecycle, one-shot stats, live
 * logs), apps (desired against actual; the plan shown before it is applied) and images (pull
 * with progress). Every call goes to the manager's own URL, so a remote node's manager is
 * reached through the hub's proxy the same way. */
(function () {
  "use strict";
  const P = window.PyEdge;
  const { el, api, can, ago, bytes, badge } = P;
  // Lines of a container's log kept on the page: a chatty container must not fill the tab.
  const MAX_LOG_LINES = 1000;
  const HISTORY_LINES = 200;
  const REFRESH_MS = 5000;
  const PULL_POLL_MS = 700;
  const APP_NAME_RE = /^[a-z0-9][a-z0-9_-]{0,62}$/;
  const data = P.pageData();

  /** The smorest envelope's errors as "where: what" lines (violations are in the message). */
  function flatten(errors, prefix, out) {
    if (Array.isArray(errors)) {
      if (errors.every((item) => typeof item !== "object")) {
        out.push(prefix ? `${prefix}: ${errors.join(" ")}` : errors.join(" "));
      }
      else errors.forEach((item, i) => flatten(item, `${prefix}[${i}]`, out));
    } else if (errors && typeof errors === "object") {
      for (const [key, value] of Object.entries(errors)) {
        // marshmallow nests a mapping's errors under "value" (and "key"): not a field.
        const part = key === "value" ? "" : key === "key" ? "(name)" : key;
        flatten(value, prefix && part ? `${prefix}.${part}` : prefix || part, out);
      }
    } else if (errors !== null && errors !== undefined) {
      out.push(prefix ? `${prefix}: ${errors}` : String(errors));
    }
    return out;
  }

  /** What went wrong, readably: the API's message plus its field errors, if any. */
  function describe(exc) {
    const errors = (exc && exc.errors) || {};
    const lines = [];
    for (const [location, value] of Object.entries(errors)) {
      // The message already lists every violation and conflict.
      if (location === "violations" || location === "conflicts") continue;
      flatten(value, "", lines);
    }
    const message = exc.status === 422 ? "Not valid" : exc.message;
    return lines.length ? `${message}: ${lines.join("; ")}` : message;
  }

  /** Run an action from a button: disabled meanwhile, a failure shown as a toast. */
  async function attempt(button, action) {
    if (button) button.disabled = true;
    try {
      return await action();
    } catch (exc) {
      P.toast(describe(exc), "bad");
      return undefined;
    } finally {
      if (button && button.isConnected) button.disabled = false;
    }
  }

  /** Replace a node, keeping keyboard focus on the same action (or the first button). */
  function swap(old, fresh) {
    const active = document.activeElement;
    const had = old.contains(active);
    const key = had && active.dataset ? active.dataset.act : null;
    old.replaceWith(fresh);
    if (had) {
      const target = (key && fresh.querySelector(`[data-act="${CSS.escape(key)}"]`)) ||
        fresh.querySelector("button");
      if (target) target.focus();
    }
  }

  /** A refresher that never overlaps itself: a call during a run schedules one more. */
  function serial(run) {
    let running = null;
    let again = false;
    return async function refresh() {
      if (running) { again = true; return running; }
      running = (async () => {
        do {
          again = false;
          await run();
        } while (again);
      })();
      try { await running; } finally { running = null; }
    };
  }

  function button(act, label, name, onclick, cls) {
    return el("button", { type: "button", class: cls, dataset: { act }, "aria-label": `${label} ${name}`,
      onclick: (event) => onclick(event.currentTarget) }, label);
  }

  function healthOf(status) {
    const found = /\((healthy|unhealthy|health: starting)\)/.exec(status || "");
    return found ? found[1].replace("health: ", "") : null;
  }

  /** A log line's engine time as a sortable key: its fractions vary in length. */
  function stampKey(ts) {
    const found = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z$/.exec(ts || "");
    return found ? `${found[1]}.${(found[2] || "").padEnd(9, "0")}` : "";
  }

  // ---------------------------------------------------------------- live logs

  function logsPanel(section, base) {
    const card = section.querySelector(".logs");
    const box = card.querySelector("[data-log-lines]");
    const filter = card.querySelector("[data-log-filter]");
    const follow = card.querySelector("[data-log-follow]");
    const pause = card.querySelector("[data-log-pause]");
    const state = card.querySelector("[data-log-state]");
    const reconnect = el("button", { type: "button", hidden: true, onclick: () => resume() }, "Reconnect");
    state.before(reconnect);
    let source = null;
    let current = null;
    let ended = false;
    let paused = false;
    let held = [];
    let last = { stdout: "", stderr: "" };

    function setState(text) {
      const count = box.childElementCount;
      state.textContent = `${text} · ${count} line${count === 1 ? "" : "s"}` +
        (held.length ? ` · ${held.length} held while paused` : "");
      reconnect.hidden = Boolean(source) || !current;
    }

    function matches(text) {
      const wanted = filter.value.trim().toLowerCase();
      return !wanted || text.toLowerCase().includes(wanted);
    }

    function show(node) {
      box.append(node);
      while (box.childElementCount > MAX_LOG_LINES) box.firstElementChild.remove();
      if (follow.checked) box.scrollTop = box.scrollHeight;
    }

    function note(text) {
      show(el("div", { class: "line note" }, text));
    }

    function append(line) {
      const node = el("div", { class: `line ${line.stream}`, title: line.ts }, line.text);
      node.hidden = !matches(line.text);
      show(node);
    }

    function accept(line) {
      // A resumed stream repeats the history: each stream goes on after its last line shown.
      const key = stampKey(line.ts);
      const stream = line.stream === "stderr" ? "stderr" : "stdout";
      if (key && key <= last[stream]) return;
      if (key) last[stream] = key;
      if (paused) {
        held.push(line);
        if (held.length > MAX_LOG_LINES) held.shift();
      } else {
        append(line);
      }
    }

    function connect(tail) {
      const url = new URL(`${base}/containers/${encodeURIComponent(current.id)}/logs/stream`,
        window.location.origin);
      url.searchParams.set("tail", String(tail));
      const opened = new EventSource(url, { withCredentials: true });
      source = opened;
      ended = false;
      setState("Connecting…");
      // Events of a stream that was replaced (another container's) change nothing.
      const mine = () => opened === source;
      opened.addEventListener("open", () => { if (mine()) setState(paused ? "Paused" : "Following"); });
      opened.addEventListener("message", (event) => {
        if (!mine()) return;
        accept(JSON.parse(event.data));
        setState(paused ? "Paused" : "Following");
      });
      opened.addEventListener("end", () => {
        if (!mine()) return;
        // The container stopped: EventSource would reconnect to it forever, so stop here;
        // the stream resumes when the container runs again.
        opened.close();
        source = null;
        ended = true;
        note("The container stopped: its output ended here.");
        setState("Stopped");
      });
      opened.addEventListener("error", (event) => {
        if (!mine()) return;
        if (event.data) {
          note(JSON.parse(event.data).error || "The log stream failed");
          return;
        }
        if (opened.readyState === EventSource.CLOSED) {
          // Refused (too many streams open, the container gone): no automatic retry.
          source = null;
          setState("The log stream could not be opened");
        } else {
          setState("Interrupted: reconnecting…");
        }
      });
    }

    function stop() {
      if (source) source.close();
      source = null;
    }

    function open(container) {
      card.hidden = false;
      if (current && current.id === container.id && source) {
        box.focus();
        return;
      }
      stop();
      current = { id: container.id, name: container.name };
      last = { stdout: "", stderr: "" };
      held = [];
      box.replaceChildren();
      card.querySelector("[data-log-name]").textContent = container.name;
      connect(HISTORY_LINES);
      box.focus();
    }

    function resume() {
      if (!current || source) return;
      // The history again, of which what was shown already is skipped.
      connect(MAX_LOG_LINES);
    }

    /** The containers' listing came: resume the stream of a container that runs again. */
    function seen(containers) {
      if (!current || source || !ended) return;
      const found = containers.find((c) => c.id === current.id);
      if (found && found.state === "running") resume();
    }

    filter.addEventListener("input", () => {
      for (const node of box.children) {
        if (!node.classList.contains("note")) node.hidden = !matches(node.textContent);
      }
      if (follow.checked) box.scrollTop = box.scrollHeight;
    });
    follow.addEventListener("change", () => { if (follow.checked) box.scrollTop = box.scrollHeight; });
    pause.addEventListener("click", () => {
      paused = !paused;
      pause.textContent = paused ? "Resume" : "Pause";
      pause.setAttribute("aria-pressed", String(paused));
      if (!paused) {
        const waiting = held;
        held = [];
        waiting.forEach(append);
      }
      setState(paused ? "Paused" : source ? "Following" : ended ? "Stopped" : "Not connected");
    });
    card.querySelector("[data-log-clear]").addEventListener("click", () => {
      box.replaceChildren();
      held = [];
      setState(source ? (paused ? "Paused" : "Following") : "Stopped");
    });
    card.querySelector("[data-log-close]").addEventListener("click", () => {
      const id = current && current.id;
      stop();
      current = null;
      card.hidden = true;
      const back = id && section.querySelector(`tr[data-id="${CSS.escape(id)}"] [data-act="logs"]`);
      if (back) back.focus();
    });
    window.addEventListener("pagehide", stop);

    return { open, seen, resume, get id() { return current && current.id; } };
  }

  // ---------------------------------------------------------------- containers

  function containersPanel(section, base, logs, hooks) {
    const table = section.querySelector("table.containers");
    const placeholder = table.querySelector("tbody.placeholder");
    const units = new Map();

    function placeholderText(text, cls) {
      placeholder.hidden = false;
      placeholder.replaceChildren(el("tr", {}, el("td", { colspan: 6, class: cls || "muted" }, text)));
    }

    async function stats(unit) {
      const cell = unit.detail.firstElementChild;
      cell.replaceChildren(el("span", { class: "muted" }, "Sampling…"));
      try {
        const s = await api("GET", `${base}/containers/${encodeURIComponent(unit.container.id)}/stats`);
        const figure = (label, value) => [el("dt", {}, label), el("dd", {}, value)];
        cell.replaceChildren(el("dl", { class: "facts", dataset: { stats: unit.container.name } },
          figure("CPU", s.cpu_percent === null ? "—" : `${s.cpu_percent} % of one CPU`),
          figure("Memory", `${bytes(s.memory_bytes)}` +
            (s.memory_limit_bytes ? ` of ${bytes(s.memory_limit_bytes)}` : "") +
            (s.memory_percent === null ? "" : ` (${s.memory_percent} %)`)),
          figure("Network", `${bytes(s.network_rx_bytes)} received, ${bytes(s.network_tx_bytes)} sent`),
          figure("Disk", `${bytes(s.block_read_bytes)} read, ${bytes(s.block_write_bytes)} written`),
          figure("Processes", s.pids ?? "—"),
          figure("Sampled", s.read_at ? new Date(s.read_at).toLocaleTimeString() : "—")),
        el("div", { class: "actions" },
          button("sample", "Sample again", unit.container.name, (b) => attempt(b, () => stats(unit)))));
      } catch (exc) {
        cell.replaceChildren(el("span", { class: "bad" }, describe(exc)));
      }
    }

    function toggleStats(unit) {
      if (!unit.detail) {
        unit.detail = el("tr", { class: "detail" }, el("td", { colspan: 6 }));
        unit.body.append(unit.detail);
      } else if (!unit.detail.hidden) {
        unit.detail.hidden = true;
        unit.row.querySelector('[data-act="stats"]').setAttribute("aria-expanded", "false");
        return;
      }
      unit.detail.hidden = false;
      unit.row.querySelector('[data-act="stats"]').setAttribute("aria-expanded", "true");
      stats(unit);
    }

    const ASK = {
      stop: (c) => [`Stop ${c.name}? It gets SIGTERM, and SIGKILL after 10 s.`, "Stop"],
      restart: (c) => [`Restart ${c.name}? It stops first, as stop does.`, "Restart"],
      remove: (c) => [`Remove ${c.name}?` +
        (c.state === "running" ? " It is running: it is killed first." : "") +
        " Its own files go with it (volumes stay)." +
        (c.app ? ` It belongs to app ${c.app}, which creates it again: remove the app instead.` : ""),
      "Remove"],
    };

    async function lifecycle(btn, c, act) {
      // The button is disabled meanwhile (which drops its focus) and then replaced.
      const focused = document.activeElement === btn;
      if (ASK[act]) {
        const [text, ok] = ASK[act](c);
        if (!(await P.confirm(text, ok))) return;
      }
      await attempt(btn, async () => {
        const path = `${base}/containers/${encodeURIComponent(c.id)}`;
        if (act === "remove") {
          await api("DELETE", path, undefined, { force: "true" });
          P.toast(`Removed ${c.name}`);
        } else {
          const after = await api("POST", `${path}/${act}`);
          P.toast(`${c.name} is ${after.state}`);
        }
        await hooks.changed();
      });
      const unit = units.get(c.id);
      if (focused && unit && !unit.row.contains(document.activeElement)) {
        // Stopped, the row offers Start where Stop was (and the other way round).
        const next = { stop: "start", start: "stop" }[act] || act;
        const target = unit.row.querySelector(`[data-act="${next}"]`) || unit.row.querySelector("button");
        if (target) target.focus();
      }
    }

    function row(c, unit) {
      const running = c.state === "running";
      const health = healthOf(c.status);
      const owner = c.system ? "PyEdge itself" : c.app ? `app ${c.app}` : c.managed ? "PyEdge" : "—";
      const buttons = [];
      if (running) {
        const stat = button("stats", "Stats", c.name, () => toggleStats(unit));
        stat.setAttribute("aria-expanded", String(Boolean(unit.detail && !unit.detail.hidden)));
        buttons.push(stat);
      }
      buttons.push(button("logs", "Logs", c.name, () => logs.open(c)));
      // The bundle's own containers: the API refuses every change, so none is offered.
      if (!c.system) {
        if (can("operator")) {
          if (running) {
            buttons.push(button("stop", "Stop", c.name, (b) => lifecycle(b, c, "stop")),
              button("restart", "Restart", c.name, (b) => lifecycle(b, c, "restart")));
          } else {
            buttons.push(button("start", "Start", c.name, (b) => lifecycle(b, c, "start"), "primary"));
          }
        }
        if (can("admin")) buttons.push(button("remove", "Remove", c.name, (b) => lifecycle(b, c, "remove"), "danger"));
      }
      return el("tr", { class: "container", dataset: { id: c.id, name: c.name, state: c.state || "" } },
        el("td", {}, el("strong", {}, c.name), c.system ? [" ", el("span", {
          class: "badge protected", title: "PyEdge's own container: the API refuses to change it",
        }, "protected")] : null),
        el("td", { dataset: { cell: "state" } }, badge(c.state),
          el("div", { class: "hide-narrow" }, el("small", {}, c.status || ""))),
        el("td", { dataset: { cell: "health" } }, health ? badge(health) : el("span", { class: "muted" }, "—")),
        el("td", { class: "hide-narrow" }, el("code", {}, c.image || "—")),
        el("td", { class: "hide-narrow" }, owner),
        el("td", {}, el("div", { class: "actions" }, buttons)));
    }

    function render(list) {
      const seen = new Set();
      let previous = placeholder;
      for (const c of list) {
        seen.add(c.id);
        let unit = units.get(c.id);
        if (!unit) {
          unit = { body: el("tbody", { dataset: { id: c.id } }), row: null, detail: null, sig: null };
          units.set(c.id, unit);
        }
        unit.container = c;
        const sig = JSON.stringify([c.name, c.state, c.status, c.image, c.system, c.app, c.managed]);
        if (sig !== unit.sig) {
          const fresh = row(c, unit);
          if (unit.row) swap(unit.row, fresh);
          else unit.body.prepend(fresh);
          unit.row = fresh;
          unit.sig = sig;
        }
        if (previous.nextElementSibling !== unit.body) previous.after(unit.body);
        previous = unit.body;
      }
      for (const [id, unit] of units) {
        if (!seen.has(id)) {
          unit.body.remove();
          units.delete(id);
        }
      }
      if (list.length) placeholder.hidden = true;
      else placeholderText("No containers.");
    }

    const refresh = serial(async () => {
      try {
        const list = await api("GET", `${base}/containers`, undefined, { all: "true" });
        list.sort((a, b) => a.name.localeCompare(b.name));
        render(list);
        logs.seen(list);
      } catch (exc) {
        if (!units.size) placeholderText(`Could not list the containers: ${describe(exc)}`, "bad");
        else P.toast(`Containers: ${describe(exc)}`, "bad");
      }
    });
    return { refresh };
  }

  // ---------------------------------------------------------------- apps

  function appsPanel(section, base, deploy, hooks) {
    const box = section.querySelector("[data-apps]");
    const level = section.querySelector("[id$='-apps']").tagName === "H2" ? "h3" : "h4";
    const cards = new Map();

    async function remove(btn, name) {
      const ok = await P.confirm(`Remove app ${name}? Its containers and network are removed; ` +
        "its volumes are kept.", "Remove");
      if (!ok) return;
      await attempt(btn, async () => {
        await api("DELETE", `${base}/apps/${encodeURIComponent(name)}`);
        P.toast(`Removed app ${name}`);
        await hooks.changed();
      });
    }

    function serviceRow(name, s) {
      const actual = s.state ? [badge(s.state), s.health ? [" ", badge(s.health)] : null,
        s.state === "exited" && s.exit_code !== null ? ` (exit ${s.exit_code})` : ""] :
        el("span", { class: "muted" }, "no container");
      return el("tr", { dataset: { service: name } },
        el("th", { scope: "row" }, name),
        el("td", {}, badge(s.status)),
        el("td", {}, el("code", {}, s.desired_image), s.up_to_date === false && s.state ?
          el("div", { class: "warn" }, el("small", {}, "container from an older spec")) : null),
        el("td", {}, actual, s.image && s.image !== s.desired_image ?
          el("div", {}, el("small", {}, "image ", el("code", {}, s.image))) : null),
        el("td", { class: "hide-narrow" }, String(s.restart_count ?? 0),
          s.failures ? el("small", {}, ` · ${s.failures} crash${s.failures === 1 ? "" : "es"}` +
            (s.backoff ? `, next try in ${s.backoff} s` : "")) : null),
        el("td", { class: s.last_error ? "bad" : "muted" }, s.last_error || "—"));
    }

    function card(app) {
      const services = Object.entries(app.services || {});
      return el("article", { class: "card app-card", dataset: { app: app.name } },
        el(level, {}, el("span", {}, app.name), badge(app.status),
          el("small", { title: app.updated_at }, `generation ${app.generation} · changed ${ago(app.updated_at)}`)),
        app.error ? el("p", { class: "bad" }, app.error) : null,
        el("div", { class: "table-wrap" }, el("table", {},
          el("thead", {}, el("tr", {},
            el("th", { scope: "col" }, "Service"), el("th", { scope: "col" }, "Status"),
            el("th", { scope: "col" }, "Desired image"), el("th", { scope: "col" }, "Actual"),
            el("th", { scope: "col", class: "hide-narrow" }, "Restarts"),
            el("th", { scope: "col" }, "Last error"))),
          el("tbody", {}, services.map(([name, s]) => serviceRow(name, s))))),
        can("admin") ? el("div", { class: "actions" },
          deploy.enabled ? button("edit", "Change spec", app.name, (b) => attempt(b, () => deploy.edit(app.name))) : null,
          button("remove", "Remove", app.name, (b) => remove(b, app.name), "danger")) : null);
    }

    const refresh = serial(async () => {
      let apps;
      try {
        apps = await api("GET", `${base}/apps`);
      } catch (exc) {
        if (!cards.size) box.replaceChildren(el("p", { class: "bad" }, `Could not list the apps: ${describe(exc)}`));
        return;
      }
      apps.sort((a, b) => a.name.localeCompare(b.name));
      const seen = new Set();
      const empty = box.querySelector(":scope > p");
      if (empty) empty.remove();
      let previous = null;
      for (const app of apps) {
        seen.add(app.name);
        const sig = JSON.stringify(app);
        let entry = cards.get(app.name);
        if (!entry || entry.sig !== sig) {
          const fresh = card(app);
          if (entry) swap(entry.node, fresh);
          entry = { node: fresh, sig };
          cards.set(app.name, entry);
        }
        if (previous ? previous.nextElementSibling !== entry.node : box.firstElementChild !== entry.node) {
          if (previous) previous.after(entry.node);
          else box.prepend(entry.node);
        }
        previous = entry.node;
      }
      for (const [name, entry] of cards) {
        if (!seen.has(name)) {
          entry.node.remove();
          cards.delete(name);
        }
      }
      if (!apps.length) box.replaceChildren(el("p", { class: "muted" }, "No apps deployed."));
    });
    return { refresh };
  }

  /** The deploy form: the plan of a spec first; Apply (confirmed) only for the plan shown. */
  function deployForm(section, base, hooks) {
    const form = section.querySelector("form[data-deploy]");
    if (!form || !can("admin")) return { enabled: false, edit: async () => {} };
    const nameInput = form.elements.name;
    const specInput = form.elements.spec;
    const forceInput = form.elements.force;
    const apply = form.querySelector("[data-apply]");
    const planBox = form.querySelector("[data-plan]");
    const formError = form.querySelector(".form-error");
    let planned = null;

    function fieldError(name, text) {
      const error = form.querySelector(`[data-error-for="${name}"]`);
      error.textContent = text;
      const field = error.closest(".field");
      field.classList.add("invalid");
      const input = field.querySelector("input, textarea");
      input.setAttribute("aria-invalid", "true");
      input.focus();
    }

    function read() {
      P.clearErrors(form);
      const name = nameInput.value.trim();
      if (!APP_NAME_RE.test(name)) {
        fieldError("name", "An app name: lowercase letters, digits, '_' and '-', starting with a letter or digit, at most 63");
        return null;
      }
      let spec;
      try {
        spec = JSON.parse(specInput.value);
      } catch (exc) {
        fieldError("spec", `Not JSON: ${exc.message}`);
        return null;
      }
      if (!spec || typeof spec !== "object" || Array.isArray(spec)) {
        fieldError("spec", 'An app spec is an object: {"services": {…}}');
        return null;
      }
      return { name, spec, text: specInput.value, force: forceInput.checked };
    }

    function showFailure(exc) {
      const errors = exc.errors || {};
      if (errors.path && errors.path.name) fieldError("name", flatten(errors.path.name, "", []).join(" "));
      if (errors.json) fieldError("spec", flatten(errors.json, "", []).join("; "));
      if (!errors.path && !errors.json) formError.textContent = describe(exc);
    }

    function blocking(plan, force) {
      return plan.conflicts.filter((c) => !(force && c.forceable));
    }

    function stepText(step) {
      const what = step.service || step.network || step.volume || "";
      return `${step.action.replace("_", " ")} ${what}` + (step.container ? ` (replaces container ${step.container})` : "") +
        (step.reason ? `: ${step.reason}` : "");
    }

    function renderPlan(plan, force) {
      const stop = blocking(plan, force);
      planBox.replaceChildren(...[
        el("p", {}, el("strong", {}, `Plan for app ${plan.app}`)),
        plan.steps.length ?
          el("ol", { class: "steps" }, plan.steps.map((step) => el("li", {}, stepText(step)))) :
          el("p", { class: "muted" }, "Nothing to do: the engine is as the spec says."),
        plan.violations.length ? [el("p", { class: "bad" }, "Denied by the security policy:"),
          el("ul", {}, plan.violations.map((v) =>
            el("li", { class: "violation" }, `${v.field} = ${v.value}: ${v.reason}`)))] : null,
        plan.conflicts.length ? [el("p", { class: "warn" }, "In the way:"),
          el("ul", {}, plan.conflicts.map((c) => el("li", { class: c.forceable && force ? "" : "bad" },
            `${c.container || c.network || c.volume}: ${c.reason}` +
            (c.forceable ? (force ? " (force replaces or adopts it)" : " (Force would replace or adopt it)") :
              " (cannot be forced)"))))] : null,
        plan.violations.length || stop.length ?
          el("p", { class: "bad" }, "This spec cannot be applied as it is.") :
          el("p", { class: "muted" }, "Apply to carry out this plan."),
      ].flat().filter(Boolean));
      return !plan.violations.length && !stop.length;
    }

    form.addEventListener("input", () => {
      if (planned) {
        planned = null;
        apply.disabled = true;
        planBox.prepend(el("p", { class: "warn" }, "The form changed: show the plan again before applying."));
      }
    });

    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const wanted = read();
      if (!wanted) return;
      const submit = form.querySelector('button[type="submit"]');
      await attempt(submit, async () => {
        try {
          const plan = await api("POST", `${base}/apps/${encodeURIComponent(wanted.name)}/plan`,
            wanted.spec, { force: wanted.force ? "true" : undefined });
          const ok = renderPlan(plan, wanted.force);
          planned = ok ? { ...wanted, plan } : null;
          apply.disabled = !ok;
          (ok ? apply : planBox).focus();
        } catch (exc) {
          planBox.replaceChildren();
          showFailure(exc);
        }
      });
    });

    apply.addEventListener("click", async () => {
      if (!planned) return;
      const chosen = planned;
      const steps = chosen.plan.steps.length;
      const ok = await P.confirm(`Apply app ${chosen.name}: ${steps} step${steps === 1 ? "" : "s"} ` +
        "as planned? The reconciler carries them out.", "Apply");
      if (!ok) return;
      await attempt(apply, async () => {
        try {
          await api("PUT", `${base}/apps/${encodeURIComponent(chosen.name)}`, chosen.spec,
            { force: chosen.force ? "true" : undefined });
        } catch (exc) {
          showFailure(exc);
          return;
        }
        planned = null;
        planBox.replaceChildren(el("p", { class: "ok" }, `Applied app ${chosen.name}: it converges now.`));
        P.toast(`Applied app ${chosen.name}`);
        hooks.changed();
      });
      apply.disabled = !planned;
    });

    async function edit(name) {
      const app = await api("GET", `${base}/apps/${encodeURIComponent(name)}`);
      const details = form.closest("details");
      if (details) details.open = true;
      P.clearErrors(form);
      nameInput.value = app.name;
      specInput.value = JSON.stringify(app.spec, null, 2);
      planned = null;
      apply.disabled = true;
      planBox.replaceChildren(specInput.value.includes("<redacted>") ?
        el("p", { class: "warn" }, "Environment values are shown redacted: type them in again before applying.") : "");
      specInput.focus();
    }

    return { enabled: true, edit };
  }

  // ---------------------------------------------------------------- images

  function imagesPanel(section, base) {
    const tbody = section.querySelector("table.images tbody");
    const columns = can("admin") ? 6 : 5;

    async function remove(btn, ref, image) {
      const used = image.containers;
      const ok = await P.confirm(`Remove image ${ref}?` + (used ?
        ` ${used} container${used === 1 ? " uses" : "s use"} it: the engine refuses while they do.` : ""),
      "Remove");
      if (!ok) return;
      await attempt(btn, async () => {
        await api("DELETE", `${base}/images/${encodeURI(ref)}`);
        P.toast(`Removed image ${ref}`);
        await refresh();
      });
    }

    function row(image, tag) {
      const ref = tag || image.id;
      const shortId = image.id.replace(/^sha256:/, "").slice(0, 12);
      return el("tr", { dataset: { ref } },
        el("td", {}, tag ? el("code", {}, tag) : el("span", { class: "muted" }, "untagged")),
        el("td", {}, bytes(image.size)),
        el("td", { class: "hide-narrow", title: image.created }, ago(image.created)),
        el("td", { class: "hide-narrow" }, el("code", {}, shortId)),
        el("td", {}, image.containers ? `${image.containers} container${image.containers === 1 ? "" : "s"}` : "none"),
        can("admin") ? el("td", {}, el("div", { class: "actions" },
          button("remove", "Remove", tag || shortId, (b) => remove(b, ref, image), "danger"))) : null);
    }

    const refresh = serial(async () => {
      try {
        const images = await api("GET", `${base}/images`);
        const rows = images.flatMap((image) =>
          (image.tags.length ? image.tags : [null]).map((tag) => [tag || "~", row(image, tag)]));
        rows.sort((a, b) => a[0].localeCompare(b[0]));
        tbody.replaceChildren(...rows.map(([, tr]) => tr));
        if (!rows.length) tbody.append(el("tr", {}, el("td", { colspan: columns, class: "muted" }, "No images.")));
      } catch (exc) {
        tbody.replaceChildren(el("tr", {}, el("td", { colspan: columns, class: "bad" },
          `Could not list the images: ${describe(exc)}`)));
      }
    });
    return { refresh };
  }

  function pullForm(section, base, hooks) {
    const form = section.querySelector("form[data-pull]");
    if (!form || !can("admin")) return;
    const submit = form.querySelector('button[type="submit"]');
    const abort = form.querySelector("[data-pull-abort]");
    const box = form.querySelector("[data-pull-progress]");
    const bar = box.querySelector("progress");
    const status = box.querySelector("[data-pull-status]");
    let watching = false;

    function render(session) {
      const d = session.data || {};
      const layers = Object.values(d.layers || {});
      const done = layers.filter((l) => /complete|Already exists/.test(l.status)).length;
      const active = session.state !== "done" && session.state !== "idle";
      box.hidden = false;
      bar.value = d.percent || 0;
      abort.hidden = !active;
      submit.disabled = active;
      const lastMessage = (session.messages || []).slice(-1)[0];
      if (active) {
        status.className = "";
        status.textContent = `${d.ref || session.params.ref}: ${d.percent || 0} % · ${d.status || session.state}` +
          (layers.length ? ` · ${done} of ${layers.length} layers` : "");
      } else {
        status.className = session.success ? "ok" : "bad";
        status.textContent = lastMessage ? lastMessage.text : session.success ? "Pulled." : "The pull failed.";
      }
      return active;
    }

    async function watch() {
      if (watching) return;
      watching = true;
      try {
        for (;;) {
          const session = await api("GET", `${base}/ops/pull`);
          if (!render(session)) {
            if (session.success) P.toast(`Pulled ${(session.params || {}).ref}`);
            else if (session.success === false) P.toast(status.textContent, "bad");
            hooks.changed();
            return;
          }
          await new Promise((resolve) => setTimeout(resolve, PULL_POLL_MS));
        }
      } catch (exc) {
        status.className = "bad";
        status.textContent = describe(exc);
      } finally {
        watching = false;
      }
    }

    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      P.clearErrors(form);
      const ref = form.elements.ref.value.trim();
      const platform = form.elements.platform.value.trim();
      if (!ref) {
        P.showErrors(form, { message: "", errors: { json: { ref: ["Give an image reference."] } } });
        return;
      }
      submit.disabled = true;
      try {
        const session = await api("POST", `${base}/ops/pull/start`, platform ? { ref, platform } : { ref });
        render(session);
        watch();
      } catch (exc) {
        submit.disabled = false;
        P.showErrors(form, { message: describe(exc), errors: exc.errors });
      }
    });

    abort.addEventListener("click", () => attempt(abort, async () => {
      await api("POST", `${base}/ops/pull/abort`);
    }));

    // A pull started before the page opened (or elsewhere) is followed from here on.
    api("GET", `${base}/ops/pull`).then((session) => {
      if (session.state === "starting" || session.state === "running" || session.state === "stopping") {
        render(session);
        watch();
      }
    }).catch(() => { /* the images listing shows why the manager does not answer */ });
  }

  // ---------------------------------------------------------------- wiring

  const refreshers = [];
  document.querySelectorAll("section.manager").forEach((section) => {
    const manager = data.managers[Number(section.dataset.manager)];
    const base = manager.url;
    const hooks = { changed: () => {} };
    const logs = logsPanel(section, base);
    const containers = containersPanel(section, base, logs, hooks);
    const deploy = deployForm(section, base, hooks);
    const apps = appsPanel(section, base, deploy, hooks);
    const images = imagesPanel(section, base);
    // Whatever one part changes shows in the others: an app's containers, an image's users.
    hooks.changed = () => Promise.all([containers.refresh(), apps.refresh(), images.refresh()]);
    pullForm(section, base, hooks);
    hooks.changed();
    refreshers.push(() => { containers.refresh(); apps.refresh(); });
  });
  setInterval(() => {
    if (!document.hidden) refreshers.forEach((refresh) => refresh());
  }, REFRESH_MS);
})();
