/* Sensors: every device-service's sensors, live; a history chart for each sensor the user
 * opens (charts cost, so only opened ones are drawn and fed); actuators as switches.
 *
 * Readings arrive retained (the forwarder publishes them so), so `retained` says nothing
 * about age: a reading is shown only if it is newer than the one on the card. */
(function () {
  "use strict";
  const { el, api, live, topicParts, can, toast, pageData } = window.PyEdge;
  const devices = pageData().devices || [];
  const container = document.getElementById("devices");
  if (!container) return;

  const RANGES = { "1h": 3600, "24h": 86400 };
  const COLORS = ["#0b5cad", "#a0291d", "#176b2c", "#8a5a00", "#6a3d9a", "#1b7f86"];
  const number = new Intl.NumberFormat(undefined, { maximumFractionDigits: 3 });
  const sensors = new Map(); // "<node>/<name>" → card state
  const switches = new Map(); // "<node>/<name>" → {input, text}
  let ids = 0;

  function uid(prefix) { ids += 1; return `${prefix}-${ids}`; }
  function key(node, name) { return `${node}/${name}`; }

  function format(value) {
    if (value === null || value === undefined) return "—";
    if (typeof value === "boolean") return value ? "on" : "off";
    if (typeof value === "number") return number.format(value);
    return String(value);
  }

  /** A reading's value as a chart point: numbers as they are, booleans 0/1, else a gap. */
  function plotted(value) {
    if (typeof value === "boolean") return value ? 1 : 0;
    return typeof value === "number" && isFinite(value) ? value : null;
  }

  /** A sensor's quantities: one ("value" in its readings) or one per key of its units. */
  function quantities(sensor) {
    const units = Object.entries(sensor.units || {});
    if (units.length <= 1) {
      const [name, unit] = units[0] || ["value", ""];
      return [{ key: "value", label: name === "value" ? sensor.name : name, unit }];
    }
    return units.map(([name, unit]) => ({ key: name, label: name, unit }));
  }

  function setAvailability(state, available, error) {
    const text = available === true ? "online" : available === false ? "offline" : "unknown";
    state.badge.textContent = text;
    state.badge.className = "badge " + text;
    if (error !== undefined) state.error.textContent = error || "";
  }

  function showReading(state, body) {
    if (!body || typeof body !== "object") return;
    const ts = Date.parse(body.ts);
    if (state.ts && !(ts >= state.ts)) return; // older than what is shown
    state.ts = ts;
    for (const q of state.quantities) state.values[q.key].textContent = format(body[q.key]);
    state.updated.textContent = isFinite(ts) ? `read ${new Date(ts).toLocaleTimeString()}` : "";
    state.updated.title = body.ts || "";
    if (state.chart && state.open) appendPoint(state, ts / 1000, body);
  }

  function sensorCard(device, sensor) {
    const heading = uid("sensor");
    const panelId = uid("history");
    const state = {
      device, name: sensor.name, quantities: quantities(sensor), values: {}, ts: 0,
      chart: null, open: false,
    };
    state.badge = el("span", { class: "badge", dataset: { availability: "" } });
    state.error = el("p", { class: "error", dataset: { error: "" } });
    state.updated = el("span", { dataset: { updated: "" } });
    let reading;
    if (state.quantities.length === 1) {
      const q = state.quantities[0];
      state.values.value = el("span", { dataset: { quantity: "value" } }, "—");
      reading = el("p", { class: "value" }, state.values.value, q.unit ? el("small", {}, " ", q.unit) : null);
    } else {
      reading = el("dl", { class: "facts" }, state.quantities.map((q) => {
        state.values[q.key] = el("span", { dataset: { quantity: q.key } }, "—");
        return [el("dt", {}, q.label), el("dd", {}, state.values[q.key], q.unit ? el("small", {}, " ", q.unit) : null)];
      }));
    }
    state.panel = el("div", { class: "history", id: panelId, hidden: true });
    state.toggle = el("button", {
      type: "button", "aria-expanded": "false", "aria-controls": panelId,
      onclick: () => toggleHistory(state),
    }, "Show history");
    state.card = el("article", { class: "card sensor", "aria-labelledby": heading,
      dataset: { sensor: sensor.name, node: device.node } },
      el("div", { class: "sensor-head" }, el("h3", { id: heading }, sensor.name), state.badge),
      reading, state.error,
      el("p", {}, el("small", {}, `${sensor.driver} · every ${number.format(sensor.interval)} s · `, state.updated)),
      state.toggle, state.panel);
    setAvailability(state, sensor.available, sensor.error);
    if (sensor.last) showReading(state, sensor.last);
    sensors.set(key(device.node, sensor.name), state);
    return state.card;
  }

  // ---- history charts ----------------------------------------------------------------

  function localInput(date) {
    // datetime-local wants local wall time without a zone.
    return new Date(date.getTime() - date.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
  }

  function buildPanel(state) {
    const group = uid("range");
    const chart = { range: "1h", plot: null, data: null, limit: 0, width: 0, token: 0 };
    state.chart = chart;
    const radio = (value, label) => el("label", {},
      el("input", { type: "radio", name: group, value, checked: value === chart.range,
        onchange: () => chooseRange(state, value) }), label);
    const from = uid("from");
    const to = uid("to");
    chart.from = el("input", { type: "datetime-local", id: from, name: "since" });
    chart.to = el("input", { type: "datetime-local", id: to, name: "until" });
    chart.custom = el("form", { class: "range", hidden: true, novalidate: true },
      el("label", { for: from }, "From"), chart.from,
      el("label", { for: to }, "To"), chart.to,
      el("button", { type: "submit", class: "primary" }, "Show"));
    chart.custom.addEventListener("submit", (event) => { event.preventDefault(); loadHistory(state); });
    chart.error = el("p", { class: "error", role: "alert", dataset: { rangeError: "" } });
    chart.target = el("div", { class: "chart", dataset: { chart: "", points: "" } });
    chart.summary = el("p", { class: "muted", dataset: { summary: "" } });
    state.panel.append(
      el("fieldset", { class: "range" }, el("legend", {}, "Range"),
        radio("1h", "1 h"), radio("24h", "24 h"), radio("custom", "Custom")),
      chart.custom, chart.error, chart.target, chart.summary);
    // Charts follow their card's width: a phone turned, a window resized.
    new ResizeObserver(() => resize(state)).observe(state.panel);
  }

  function chartSize(chart) {
    const width = Math.floor(chart.target.clientWidth);
    return { width, height: window.matchMedia("(max-width: 640px)").matches ? 180 : 240 };
  }

  function resize(state) {
    const chart = state.chart;
    const size = chartSize(chart);
    if (chart.plot && size.width > 0 && size.width !== chart.plot.width) chart.plot.setSize(size);
  }

  function toggleHistory(state) {
    state.open = !state.open;
    if (state.open && !state.chart) buildPanel(state);
    state.panel.hidden = !state.open;
    state.card.classList.toggle("open", state.open);
    state.toggle.setAttribute("aria-expanded", String(state.open));
    state.toggle.textContent = state.open ? "Hide history" : "Show history";
    // Closed charts are not fed: opening one again loads what it missed.
    if (state.open && state.chart.range !== "custom") loadHistory(state);
  }

  function chooseRange(state, range) {
    const chart = state.chart;
    chart.range = range;
    chart.error.textContent = "";
    chart.custom.hidden = range !== "custom";
    if (range === "custom") {
      const now = new Date();
      if (!chart.to.value) chart.to.value = localInput(now);
      if (!chart.from.value) chart.from.value = localInput(new Date(now.getTime() - 86400000));
      chart.from.focus();
      return;
    }
    loadHistory(state);
  }

  /** The window to ask for, or a message saying what is wrong with the custom one. */
  function rangeWindow(chart) {
    if (chart.range !== "custom") {
      return { since: new Date(Date.now() - RANGES[chart.range] * 1000), until: null, live: true };
    }
    if (!chart.from.value || !chart.to.value) return { problem: "Choose both a start and an end." };
    const since = new Date(chart.from.value);
    const until = new Date(chart.to.value);
    if (!isFinite(since) || !isFinite(until)) return { problem: "That is not a date and time." };
    if (until <= since) return { problem: "The end of the range must be after its start." };
    return { since, until, live: false };
  }

  async function loadHistory(state) {
    const chart = state.chart;
    chart.error.textContent = "";
    const span = rangeWindow(chart);
    if (span.problem) {
      chart.error.textContent = span.problem;
      return;
    }
    const token = ++chart.token;
    const size = chartSize(chart);
    chart.limit = Math.max(60, Math.min(1500, size.width || 600));
    chart.span = span;
    chart.summary.textContent = "Loading…";
    let answer;
    try {
      answer = await api("GET", `${state.device.url}/sensors/${encodeURIComponent(state.name)}/history`,
        undefined, {
          since: span.since.toISOString(), until: span.until && span.until.toISOString(), limit: chart.limit,
        });
    } catch (exc) {
      if (token !== chart.token) return;
      chart.error.textContent = `History could not be loaded: ${exc.message}`;
      chart.summary.textContent = "";
      return;
    }
    if (token !== chart.token) return; // a newer range was chosen meanwhile
    const xs = answer.points.map((p) => Date.parse(p.ts) / 1000);
    const data = [xs, ...state.quantities.map((q) => answer.points.map((p) => plotted(p.values[q.key])))];
    // Live points are spaced like the history's buckets once it is full.
    chart.width = (Date.parse(answer.until) - Date.parse(answer.since)) / 1000 / chart.limit;
    draw(state, data, answer.downsampled);
  }

  function draw(state, data, downsampled) {
    const chart = state.chart;
    chart.data = data;
    chart.downsampled = downsampled;
    if (!chart.plot) {
      chart.plot = new window.uPlot({
        ...chartSize(chart),
        scales: { x: { time: true } },
        cursor: { drag: { x: false, y: false } },
        series: [{}, ...state.quantities.map((q, i) => ({
          label: q.unit ? `${q.label} (${q.unit})` : q.label,
          stroke: COLORS[i % COLORS.length], width: 2,
          value: (u, v) => format(v),
        }))],
        axes: [{}, { size: 56 }],
      }, data, chart.target);
    } else {
      chart.plot.setData(data);
    }
    summarize(state);
  }

  function summarize(state) {
    const chart = state.chart;
    const xs = chart.data[0];
    chart.target.dataset.points = String(xs.length);
    if (!xs.length) {
      chart.summary.textContent = "No readings in this range.";
      return;
    }
    const when = (x) => new Date(x * 1000).toLocaleString();
    chart.summary.textContent = `${xs.length} point${xs.length === 1 ? "" : "s"} from ${when(xs[0])} ` +
      `to ${when(xs[xs.length - 1])}${chart.downsampled ? " (averaged)" : ""}` +
      (chart.span && chart.span.live ? ", updating live." : ".");
  }

  function appendPoint(state, x, body) {
    const chart = state.chart;
    if (!chart.data || !chart.span || !chart.span.live || !isFinite(x)) return;
    const xs = chart.data[0];
    const last = xs[xs.length - 1];
    if (last !== undefined && x <= last) return;
    // Every reading while the chart is sparse; one per history bucket once it is full.
    if (last !== undefined && xs.length >= chart.limit && x - last < chart.width) return;
    xs.push(x);
    state.quantities.forEach((q, i) => chart.data[i + 1].push(plotted(body[q.key])));
    const oldest = x - RANGES[chart.range];
    while (xs.length && xs[0] < oldest) chart.data.forEach((series) => series.shift());
    chart.plot.setData(chart.data);
    summarize(state);
  }

  // ---- actuators ---------------------------------------------------------------------

  function setSwitch(entry, value) {
    const known = value !== null && value !== undefined;
    entry.text.textContent = known ? format(Boolean(value)) : "state unknown";
    if (entry.input) {
      entry.input.indeterminate = !known;
      entry.input.checked = Boolean(value);
    }
  }

  function actuatorRow(device, actuator) {
    const text = el("span", { class: "muted", dataset: { actuatorState: "" } });
    const entry = { text, input: null };
    let control;
    if (can("operator")) {
      const id = uid("actuator");
      entry.input = el("input", { type: "checkbox", role: "switch", id, dataset: { actuator: actuator.name } });
      entry.input.addEventListener("change", () => switchActuator(device, actuator.name, entry));
      control = el("label", { class: "switch", for: id }, entry.input, actuator.name);
    } else {
      control = el("strong", {}, actuator.name);
    }
    switches.set(key(device.node, actuator.name), entry);
    setSwitch(entry, actuator.state);
    return el("li", { dataset: { actuatorRow: actuator.name } }, control, text);
  }

  async function switchActuator(device, name, entry) {
    const wanted = entry.input.checked;
    entry.input.disabled = true;
    try {
      const answer = await api("PUT", `${device.url}/actuators/${encodeURIComponent(name)}`, { state: wanted });
      setSwitch(entry, answer.state);
    } catch (exc) {
      setSwitch(entry, !wanted);
      toast(`${name} was not switched: ${exc.message}`, "bad");
    } finally {
      entry.input.disabled = false;
      entry.input.focus();
    }
  }

  // ---- nodes ---------------------------------------------------------------------------

  async function loadNode(device, section) {
    const status = section.querySelector("[data-node-status]");
    const body = section.querySelector("[data-node-body]");
    status.replaceChildren(el("p", { class: "muted" }, "Loading…"));
    let list;
    let actuators;
    try {
      [list, actuators] = await Promise.all([
        api("GET", `${device.url}/sensors`), api("GET", `${device.url}/actuators`)]);
    } catch (exc) {
      status.replaceChildren(el("p", { class: "error", role: "alert" },
        `The sensors of ${device.node} could not be loaded: ${exc.message} `),
        el("button", { type: "button", onclick: () => loadNode(device, section) }, "Try again"));
      return;
    }
    status.replaceChildren();
    const parts = [];
    if (actuators.length) {
      const heading = uid("actuators");
      parts.push(el("section", { class: "card actuators", "aria-labelledby": heading },
        el("h3", { id: heading }, "Actuators"),
        el("ul", { class: "switches" }, actuators.map((a) => actuatorRow(device, a)))));
    }
    parts.push(list.length
      ? el("div", { class: "grid sensors" }, list.map((s) => sensorCard(device, s)))
      : el("p", { class: "muted" }, "This device-service has no sensors."));
    body.replaceChildren(...parts);
  }

  function nodeSection(device) {
    const heading = uid("node");
    return el("section", { class: "node", "aria-labelledby": heading, dataset: { node: device.node } },
      el("h2", { id: heading }, "Node ", el("code", {}, device.node),
        device.node === window.PyEdge.node ? el("small", {}, " (this one)") : null,
        device.health && device.health.status !== "ok" ? [" ", window.PyEdge.badge(device.health.status)] : null),
      el("div", { dataset: { nodeStatus: "" } }), el("div", { dataset: { nodeBody: "" } }));
  }

  function onMessage(topic, payload) {
    const [node, slug, kind, name, extra] = topicParts(topic);
    if (slug !== "device-service") return;
    if (kind === "actuators" && extra === undefined) {
      const entry = switches.get(key(node, name));
      if (entry && typeof payload === "string") setSwitch(entry, payload.toUpperCase() === "ON");
      return;
    }
    const state = kind === "sensors" ? sensors.get(key(node, name)) : undefined;
    if (!state) return;
    if (extra === undefined) {
      showReading(state, payload);
    } else if (extra === "availability") {
      const online = payload === "online";
      setAvailability(state, online, online ? "" : undefined);
      // The reason is not on the bus: ask the service.
      if (!online) {
        api("GET", `${state.device.url}/sensors/${encodeURIComponent(state.name)}`)
          .then((sensor) => setAvailability(state, sensor.available, sensor.error))
          .catch(() => { /* the badge already says offline */ });
      }
    }
  }

  async function start() {
    const sections = devices.map((device) => [device, nodeSection(device)]);
    container.replaceChildren(...sections.map(([, section]) => section));
    await Promise.all(sections.map(([device, section]) => loadNode(device, section)));
    // After the cards exist: the retained snapshot then lands on them.
    const root = window.PyEdge.root;
    live([`${root}/+/device-service/sensors/#`, `${root}/+/device-service/actuators/+`], onMessage);
  }

  start();
})();
