// The gateway's dashboard: charts of the metrics history, cooldowns and the capacity table.
// Plain JavaScript and inline SVG, no library: it reads /metrics, /readyz and /capacity of
// the gateway that served it and redraws every few seconds (?refresh=SECONDS to change).
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  // The page is {prefix}/dashboard and this script {prefix}/dashboard/dashboard.js.
  const base = new URL("..", document.currentScript.src);
  const asked = Number(new URLSearchParams(location.search).get("refresh"));
  const refreshMs = (asked > 0 ? asked : 5) * 1000;

  const LB = "/lb";  // how /lb's endpoints list is named; no pool can be (pool names have no "/")
  const CAPACITY_COLUMNS = [
    // [title, key, format]
    ["pool", "pool", poolLabel], ["#", "priority", String], ["deployment", "deployment", String],
    ["model", "model", String], ["calls", "calls", String], ["failed", "failedCalls", String],
    ["failed share", "failedShare", (v) => (v * 100).toFixed(1) + "%"],
    ["tokens", "tokens", String], ["TPM avg", "tpmAvg", round0], ["TPM p95", "tpmP95", round0],
    ["TPM peak", "tpmPeak", round0], ["RPM avg", "rpmAvg", (v) => v.toFixed(1)],
    ["RPM peak", "rpmPeak", (v) => v.toFixed(1)], ["ms avg", "avgLatencyMs", round0],
    ["output share", "outputShare", (v) => (v * 100).toFixed(0) + "%"],
    ["PTU p95", "ptuP95", String], ["PTU peak", "ptuPeak", String],
  ];
  const TEXT_COLUMNS = new Set(["pool", "deployment", "model"]);

  function poolLabel(pool) { return pool === null || pool === undefined ? LB : pool; }

  // "gpt-4o · 0 primary": the list, the backend's priority in it, the deployment
  function backendLabel(pool, priority, uri) {
    return `${poolLabel(pool)} · ${priority} ${deploymentOf(uri)}`;
  }

  function round0(v) { return Math.round(v).toString(); }

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function deploymentOf(uri) {
    const m = /\/openai\/deployments\/([^/?#]+)/.exec(uri);
    return m ? decodeURIComponent(m[1]) : uri;
  }

  function clock(iso) { return new Date(iso).toISOString().slice(11, 19); }

  // With client keys configured the data routes answer 401: ask once, keep it for the tab.
  const KEY_ITEM = "apirouter-client-key";
  let askedForKey = false;

  function fetchData(path) {
    const key = sessionStorage.getItem(KEY_ITEM);
    return fetch(new URL(path, base), { cache: "no-store", headers: key ? { "api-key": key } : {} });
  }

  async function getJson(path) {
    let response = await fetchData(path);
    if (response.status === 401 && !askedForKey) {
      askedForKey = true;
      const key = window.prompt("This gateway needs a client key (sent as the api-key header):");
      if (key) {
        sessionStorage.setItem(KEY_ITEM, key.trim());
        response = await fetchData(path);
      }
    }
    let body;
    try { body = await response.json(); } catch (e) { body = null; }
    // /readyz answers 503 with its usual body when no endpoint can serve: still data.
    if (!body || (!response.ok && !(path === "readyz" && response.status === 503))) {
      const why = body && body.error ? body.error.message : response.statusText;
      throw new Error(`${path}: HTTP ${response.status} ${why}`);
    }
    return body;
  }

  // Tick steps of a time axis, in seconds, shortest first.
  const TICK_STEPS = [0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600,
                      7200, 10800, 21600, 43200, 86400];
  const CHAR_WIDTH = 6.2;  // of a digit in the axis font (10px), in viewBox units

  // Ticks at whole multiples of a step, labelled 12:05, 12:05:30 or 12:05:30.5 as the step
  // needs: the shortest step whose labels fit side by side in ``width``, but longer while it
  // leaves fewer than two ticks.
  function timeTicks(from, to, width) {
    const plan = (step) => {
      const ticks = [];
      for (let t = Math.ceil(from / step) * step; t <= to; t += step) ticks.push(t);
      const end = step % 1000 ? 21 : step % 60000 ? 19 : 16;
      const label = (end - 11) * CHAR_WIDTH + 14;  // with a gap to the next one
      return { ticks, end, fits: label <= (width * step) / (to - from) };
    };
    const steps = TICK_STEPS.map((s) => s * 1000);
    let i = steps.findIndex((step) => plan(step).fits);
    if (i < 0) i = steps.length - 1;
    while (i > 0 && plan(steps[i]).ticks.length < 2) i -= 1;
    const { ticks, end } = plan(steps[i]);
    return ticks.map((t) => ({ t, text: new Date(t).toISOString().slice(11, end) }));
  }

  // A line chart of closed intervals: one or more series, y from 0, x in time (UTC). Each
  // point sits in the middle of its interval, which spans [start, start + minutes].
  function chart(title, starts, minutes, series) {
    const W = 360, H = 160, L = 48, R = 10, T = 24, B = 30;
    const top = Math.max(1, ...series.flatMap((s) => s.values));
    const length = minutes * 60000;
    const from = starts.length ? starts[0] : 0;
    const to = starts.length ? starts[starts.length - 1] + length : 1;
    const x = (t) => L + ((t - from) * (W - L - R)) / (to - from);
    const y = (v) => T + (H - T - B) * (1 - v / top);
    const root = svg("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img",
                              "aria-label": title });
    root.appendChild(svg("title", {}, title));
    root.appendChild(svg("text", { x: L, y: 14, class: "chart-title" }, title));
    for (const v of [0, top / 2, top]) {
      root.appendChild(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" }));
      root.appendChild(svg("text", { x: L - 4, y: y(v) + 4, class: "axis", "text-anchor": "end" },
                           formatNumber(v)));
    }
    if (!starts.length) {
      root.appendChild(svg("text", { x: (L + W - R) / 2, y: (T + H - B) / 2 + 4,
                                     class: "axis empty", "text-anchor": "middle" },
                           "no closed interval yet"));
      return root;
    }
    root.appendChild(svg("text", { x: L - 4, y: H - 8, class: "axis", "text-anchor": "end" },
                         "UTC"));
    for (const tick of timeTicks(from, to, W - L - R)) {
      root.appendChild(svg("line", { x1: x(tick.t), x2: x(tick.t), y1: T, y2: H - B + 4,
                                     class: "grid tick" }));
      // a label is centred on its tick, but never runs past the plot's right edge
      const half = (tick.text.length * CHAR_WIDTH) / 2;
      const at = Math.min(x(tick.t), W - 2 - half);
      root.appendChild(svg("text", { x: at, y: H - 8, class: "axis tick-label",
                                     "text-anchor": "middle" }, tick.text));
    }
    series.forEach((s, n) => {
      const points = s.values.map((v, i) =>
        `${x(starts[i] + length / 2).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
      root.appendChild(svg("polyline", { points, class: `series series-${n}` }));
      if (s.values.length === 1) {
        root.appendChild(svg("circle", { cx: x(starts[0] + length / 2), cy: y(s.values[0]),
                                         r: 2.5, class: `series-${n}` }));
      }
      // the legend names the series; the figures are in the card's text, labelled
      root.appendChild(svg("text", { x: W - R - 62 * (series.length - 1 - n), y: 14,
                                     class: `legend series-${n}`, "text-anchor": "end" },
                           s.name));
    });
    return root;
  }

  function formatNumber(v) {
    if (v >= 10000) return (v / 1000).toFixed(0) + "k";
    if (v >= 1000) return (v / 1000).toFixed(1) + "k";
    return Number.isInteger(v) ? String(v) : v.toFixed(1);
  }

  // /readyz names a pool backend's pool "pool" or, in this gateway's first shape, "deployment".
  function readyPool(e) { return "pool" in e ? e.pool : (e.deployment || null); }

  function renderState(ready) {
    const body = document.querySelector("#state tbody");
    body.replaceChildren(...ready.endpoints.map((e) => {
      const state = e.available ? "available" : "cooling down";
      const row = el("tr", { "data-available": String(e.available),
                             class: e.available ? "" : "cooling" });
      row.append(el("td", {}, poolLabel(readyPool(e))),
                 el("td", { class: "num" }, String(e.priority)),
                 el("td", {}, deploymentOf(e.endpoint)), el("td", {}, state),
                 el("td", {}, e.reason || ""),
                 el("td", { class: "num" }, e.cooldownSeconds.toFixed(1)),
                 el("td", { class: "num" }, String(e.inFlight)),
                 el("td", { class: "uri" }, e.endpoint));
      return row;
    }));
  }

  // Every (pool, backend) of /metrics: /lb's endpoints (pool null), then each pool's backends.
  function backendsOf(metrics) {
    return [
      ...metrics.endpointMetrics.map((e) => ({ pool: null, entry: e })),
      ...Object.entries(metrics.deploymentMetrics || {}).flatMap(([name, backends]) =>
        backends.map((e) => ({ pool: name, entry: e }))),
    ];
  }

  function figure(name, title, text) {
    const item = el("div", { "data-figure": name });
    item.append(el("dt", {}, title), el("dd", {}, text));
    return item;
  }

  function card(pool, e, minutes) {
    const history = Object.keys(e.metrics.history).sort((a, b) => a - b)
      .map((k) => e.metrics.history[k]);
    const starts = history.map((h) => Date.parse(h.collectionTime));
    const calls = history.map((h) => h.collectedMetrics.noOfApiCalls);
    const failed = history.map((h) => h.collectedMetrics.noOfFailedCalls);
    const tpm = history.map((h) => (h.collectedMetrics.throughput.kTokensPerWindow * 1000) / minutes);
    const m = e.metrics;
    const figures = el("dl", { class: "figures" });
    figures.append(figure("current", "Current interval (still open)",
      `${m.apiCalls} answered · ${m.failedCalls} failed · ` +
      `${formatNumber(Math.round(m.kInferenceTokens * 1000))} tokens`));
    const n = history.length - 1;
    figures.append(n < 0
      ? figure("last", "Last closed interval", "none yet")
      : figure("last", `Last closed interval (${clock(history[n].collectionTime)} to ` +
                       `${clock(new Date(starts[n] + minutes * 60000).toISOString())} UTC)`,
               `${calls[n]} answered · ${failed[n]} failed · ${formatNumber(Math.round(tpm[n]))} TPM`));
    const article = el("article", { class: "endpoint", "data-endpoint": e.endpoint,
                                    "data-pool": poolLabel(pool) });
    article.append(el("h3", {}, backendLabel(pool, e.priority, e.endpoint)),
                   el("p", { class: "uri" }, e.endpoint), figures,
                   chart("Calls per closed interval", starts, minutes,
                         [{ name: "answered", values: calls }, { name: "failed", values: failed }]),
                   chart("Tokens per minute, per closed interval", starts, minutes,
                         [{ name: "TPM", values: tpm }]));
    return article;
  }

  function renderCharts(metrics) {
    const minutes = metrics.collectionInterval;
    const backends = backendsOf(metrics);
    document.getElementById("charts").replaceChildren(
      ...backends.map(({ pool, entry }) => card(pool, entry, minutes)));
    const kept = Math.max(0, ...backends.map(({ entry }) =>
      Object.keys(entry.metrics.history).length));
    document.getElementById("history-note").textContent =
      `${kept} closed interval(s) of ${minutes} min kept (at most ${metrics.historyCount}), ` +
      `charted per (pool, backend); ${LB} is the endpoints list of POST /lb. ` +
      "Failed counts throttled (429) and failed calls.";
  }

  function renderCapacity(report) {
    const head = document.querySelector("#capacity thead tr");
    head.replaceChildren(...CAPACITY_COLUMNS.map(([title, key]) =>
      el("th", { class: TEXT_COLUMNS.has(key) ? "" : "num" }, title)));
    const body = document.querySelector("#capacity tbody");
    body.replaceChildren(...report.rows.map((r) => {
      const row = el("tr", { "data-scope": r.scope, class: r.scope, title: r.name,
                             ...(r.scope === "endpoint" ? { "data-pool": poolLabel(r.pool) } : {}) });
      for (const [, key, format] of CAPACITY_COLUMNS) {
        let text = r[key] === null || r[key] === undefined ? "" : format(r[key]);
        if (key === "pool") text = r.scope === "endpoint" ? poolLabel(r.pool) : "";
        if (key === "deployment" && r.scope !== "endpoint") {
          text = r.scope === "instance" ? "(instance)" : "(model)";
        }
        row.append(el("td", { class: TEXT_COLUMNS.has(key) ? "" : "num" }, text));
      }
      return row;
    }));
    document.getElementById("capacity-note").textContent =
      `PTUs for ${report.deploymentType} deployments, output share ` +
      (report.outputShare === null ? "measured per row" : `${(report.outputShare * 100).toFixed(0)}%`) +
      `, over ${report.from || "-"} to ${report.to || "-"}, ` +
      (report.scope === "cluster" ? `summed over ${report.replicas.length} replica(s).`
        : "this instance's figures." + (report.scopeNote ? ` (${report.scopeNote})` : "")) +
      (report.warnings.length ? " Warning: " + report.warnings.join("; ") : "");
    document.getElementById("assumptions").replaceChildren(
      ...report.assumptions.map((a) => el("li", {}, a)));
    document.getElementById("table-source").textContent = "PTU table: " + report.ptuTable.source;
  }

  // --- the decision: served and unmet demand per minute, coverage, recommendation ----------

  const W2 = 560, H2 = 210, L2 = 52, R2 = 14, T2 = 36, B2 = 32;

  // Numeric ticks at 1, 2 or 5 times a power of ten, at most ``most`` of them.
  function numberTicks(from, to, most) {
    const span = Math.max(to - from, 1e-9);
    // the smallest step that gives at most ``most`` ticks, from a tenth of the span's power
    const unit = Math.max(1e-9, Math.pow(10, Math.floor(Math.log10(span)) - 1));
    let step = unit * 100;
    for (const f of [1, 2, 5, 10, 20, 50, 100]) {
      if (span / (unit * f) <= most) { step = unit * f; break; }
    }
    const ticks = [];
    for (let v = Math.ceil(from / step) * step; v <= to + 1e-9; v += step) ticks.push(v);
    return ticks;
  }

  // A plot for the decision section: x and y scales, frame, y ticks, title and legend.
  function frame(title, xFrom, xTo, yTop, yTicks, yFormat, legend) {
    const x = (v) => L2 + ((v - xFrom) * (W2 - L2 - R2)) / Math.max(xTo - xFrom, 1e-9);
    const y = (v) => T2 + (H2 - T2 - B2) * (1 - v / yTop);
    const root = svg("svg", { class: "chart decision", viewBox: `0 0 ${W2} ${H2}`, role: "img",
                              "aria-label": title });
    root.appendChild(svg("title", {}, title));
    root.appendChild(svg("text", { x: L2, y: 14, class: "chart-title" }, title));
    for (const v of yTicks) {
      root.appendChild(svg("line", { x1: L2, x2: W2 - R2, y1: y(v), y2: y(v), class: "grid" }));
      root.appendChild(svg("text", { x: L2 - 4, y: y(v) + 4, class: "axis", "text-anchor": "end" },
                           yFormat(v)));
    }
    legend.forEach((name, n) => {
      // on a line of their own under the title, which may be long
      root.appendChild(svg("text", { x: W2 - R2 - 70 * (legend.length - 1 - n), y: 28,
                                     class: `legend series-${n}`, "text-anchor": "end" }, name));
    });
    return { root, x, y };
  }

  function path(points, n) {
    const d = points.map(([px, py], i) => `${i ? "L" : "M"}${px.toFixed(1)},${py.toFixed(1)}`)
      .join(" ");
    return svg("path", { d, class: `series series-${n}` });
  }

  function demandChart(demand) {
    const k = 60 / demand.minuteSeconds;  // tokens per bucket -> tokens per minute
    const starts = demand.minutes.map((m) => Date.parse(m.start));
    const served = demand.minutes.map((m) => m.servedTokens * k);
    const unmet = demand.minutes.map((m) => m.unmetTokens * k);
    const length = demand.minuteSeconds * 1000;
    const from = starts[0], to = starts[starts.length - 1] + length;
    const top = Math.max(1, ...served.map((v, i) => v + unmet[i]));
    const yTicks = numberTicks(0, top, 5);
    const yTop = Math.max(top, yTicks[yTicks.length - 1]);
    const title = demand.minuteSeconds === 60
      ? "Tokens per minute, whole instance: served vs unmet"
      : `Tokens per minute (buckets of ${demand.minuteSeconds} s), whole instance: served vs unmet`;
    const { root, x, y } = frame(title, from, to, yTop, yTicks, formatNumber,
                                 ["served", "unmet"]);
    for (const tick of timeTicks(from, to, W2 - L2 - R2)) {
      root.appendChild(svg("line", { x1: x(tick.t), x2: x(tick.t), y1: T2, y2: H2 - B2 + 4,
                                     class: "grid tick" }));
      const half = (tick.text.length * CHAR_WIDTH) / 2;
      root.appendChild(svg("text", { x: Math.min(x(tick.t), W2 - 2 - half), y: H2 - 10,
                                     class: "axis tick-label", "text-anchor": "middle" },
                           tick.text));
    }
    root.appendChild(svg("text", { x: W2 - R2, y: H2 - 1, class: "axis", "text-anchor": "end" },
                         "UTC"));
    // one bar a minute: served below, unmet stacked on it, so the bar's top is the demand
    const width = Math.max(1, x(from + length) - x(from) - 1);
    starts.forEach((t, i) => {
      root.appendChild(svg("rect", { x: x(t), width, y: y(served[i]),
                                     height: y(0) - y(served[i]), class: "bar series-0" }));
      if (unmet[i] > 0) {
        root.appendChild(svg("rect", { x: x(t), width, y: y(served[i] + unmet[i]),
                                       height: y(0) - y(unmet[i]), class: "bar series-1" }));
      }
    });
    return root;
  }

  function coverageChart(model, c) {
    const xs = c.curve.map((p) => p.ptu);
    const from = xs[0], to = Math.max(xs[xs.length - 1], from + c.increment);
    const title = `${model}: share of minutes fully served, by PTUs (${plural(c.minutes, "minute")})`;
    const { root, x, y } = frame(title, from, to, 100, [0, 25, 50, 75, 100], (v) => `${v}%`,
                                 ["minutes served fully"]);
    for (const v of numberTicks(from, to, 8)) {
      root.appendChild(svg("line", { x1: x(v), x2: x(v), y1: T2, y2: H2 - B2 + 4,
                                     class: "grid tick" }));
      root.appendChild(svg("text", { x: x(v), y: H2 - 10, class: "axis tick-label ptu",
                                     "text-anchor": "middle" }, String(v)));
    }
    root.appendChild(svg("text", { x: W2 - R2, y: H2 - 1, class: "axis", "text-anchor": "end" },
                         "PTUs"));
    root.appendChild(svg("line", { x1: L2, x2: W2 - R2, y1: y(c.target * 100),
                                   y2: y(c.target * 100), class: "target" }));
    // under the line at the left, clear of a first point at 100% and of the top labels
    root.appendChild(svg("text", { x: L2 + 10, y: y(c.target * 100) + 11, class: "axis" },
                         `target ${(c.target * 100).toFixed(0)}% of minutes`));
    root.appendChild(path(c.curve.map((p) => [x(p.ptu), y(p.minutesServedShare * 100)]), 0));
    const best = c.recommended;
    const bx = x(best.ptu), by = y(best.minutesServedShare * 100);
    root.appendChild(svg("circle", { cx: bx, cy: by, r: 4, class: "recommended" }));
    // beside the point, on the side away from the plot's edge: the curve rises to the right,
    // so left of a point on the right it runs below the label
    const right = bx > (L2 + W2 - R2) / 2;
    root.appendChild(svg("text", { x: right ? bx - 8 : bx + 8,
                                   y: right ? by + 4 : Math.min(by + 22, H2 - B2 - 4),
                                   class: "mark", "text-anchor": right ? "end" : "start" },
                         `recommended: ${best.ptu} PTU`));
    return root;
  }

  function plural(n, word) { return `${n} ${word}${n === 1 ? "" : "s"}`; }

  function money(v) {
    return v === null || v === undefined ? "no price"
      : "$" + Math.round(v).toLocaleString("en-US");
  }

  function renderDecision(report) {
    const charts = [];
    const items = [];
    const demand = report.minuteDemand;
    if (demand && demand.minutes.length) charts.push(demandChart(demand));
    for (const [model, c] of Object.entries(report.coverage || {})) {
      charts.push(coverageChart(model, c));
      const best = c.recommended;
      let text = `${model}: ${best.ptu} PTU serve ${(best.minutesServedShare * 100).toFixed(1)}% ` +
        `of the ${plural(c.minutes, "minute")} fully (target ${(c.target * 100).toFixed(0)}%); ` +
        `${formatNumber(best.spillTokensPerMonth)} tokens a month would spill to pay-as-you-go.`;
      if (c.cheapest) {
        text += ` Per month: all pay-as-you-go ${money(c.payAsYouGoPerMonth)}; recommended ` +
          `${money(best.costPerMonth.monthlyReservation)} (monthly reservation), ` +
          `${money(best.costPerMonth.yearlyReservation)} (yearly); cheapest: ` +
          (c.cheapest.ptu ? `${c.cheapest.ptu} PTU, ${c.cheapest.billing}`
            : "pay-as-you-go only") + `, ${money(c.cheapest.costPerMonth)}.`;
      }
      items.push(el("li", { "data-model": model }, text));
    }
    document.getElementById("decision-charts").replaceChildren(...charts);
    document.getElementById("recommendation").replaceChildren(...items);
    const instance = report.rows[report.rows.length - 1];
    document.getElementById("decision-note").textContent = items.length
      ? `Over every minute of the history kept (${report.from} to ${report.to}). Unmet demand: ` +
        `${instance.unmetCalls} call(s), ${formatNumber(instance.unmetTokens)} estimated ` +
        "tokens, that the gateway answered 429/503 itself because every backend was busy. " +
        "Costs scale the observed minutes to a month of 730 hours."
      : "No interval with per-minute figures yet: the curve and the recommendation appear " +
        "once one closes.";
    document.getElementById("price-source").textContent = "Prices: " + report.priceTable.source;
  }

  // The cluster's figures (summed over the replicas through Redis) when the gateway has
  // them; this instance's when Redis is not configured, or not reachable now (503).
  async function clusterMetrics() {
    try {
      return await getJson("metrics?scope=cluster");
    } catch (err) {
      const metrics = await getJson("metrics");
      metrics.scopeNote = "the cluster's figures cannot be read now: this instance's";
      return metrics;
    }
  }

  function scopeText(metrics) {
    if (metrics.scope === "cluster") {
      const live = metrics.replicas.filter((r) => r.live).length;
      return `figures of the cluster: ${metrics.replicas.length} replica(s), ${live} live`;
    }
    return metrics.scopeNote || "figures of this instance";
  }

  async function refresh() {
    const status = document.getElementById("status");
    try {
      const [metrics, ready, report] = await Promise.all(
        [clusterMetrics(), getJson("readyz"), getJson("capacity")]);
      document.getElementById("instance").textContent = metrics.instanceName;
      renderState(ready);
      renderCharts(metrics);
      renderCapacity(report);
      renderDecision(report);
      status.textContent = `Updated ${clock(new Date().toISOString())} UTC; ` +
        `gateway ${ready.status === "OK" ? "ready" : "not ready"}; ${scopeText(metrics)}; ` +
        `refreshes every ${refreshMs / 1000} s.`;
      status.classList.remove("error");
      document.body.dataset.state = "ready";
    } catch (err) {
      status.textContent = `Refresh failed (${err.message}); trying again in ${refreshMs / 1000} s.`;
      status.classList.add("error");
      if (document.body.dataset.state !== "ready") document.body.dataset.state = "error";
    } finally {
      setTimeout(refresh, refreshMs);
    }
  }

  refresh();
})();
