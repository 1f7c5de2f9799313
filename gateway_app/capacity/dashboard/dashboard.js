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

  const CAPACITY_COLUMNS = [
    // [title, key, format]
    ["#", "priority", String], ["deployment", "deployment", String], ["model", "model", String],
    ["calls", "calls", String], ["failed", "failedCalls", String],
    ["failed share", "failedShare", (v) => (v * 100).toFixed(1) + "%"],
    ["tokens", "tokens", String], ["TPM avg", "tpmAvg", round0], ["TPM p95", "tpmP95", round0],
    ["TPM peak", "tpmPeak", round0], ["RPM avg", "rpmAvg", (v) => v.toFixed(1)],
    ["RPM peak", "rpmPeak", (v) => v.toFixed(1)], ["ms avg", "avgLatencyMs", round0],
    ["output share", "outputShare", (v) => (v * 100).toFixed(0) + "%"],
    ["PTU p95", "ptuP95", String], ["PTU peak", "ptuPeak", String],
  ];
  const TEXT_COLUMNS = new Set(["deployment", "model"]);

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

  // A line chart of one or more series over the same points, with a y scale from 0.
  function chart(title, labels, series, unit) {
    const W = 360, H = 150, L = 48, R = 10, T = 22, B = 22;
    const top = Math.max(1, ...series.flatMap((s) => s.values));
    const x = (i) => L + (labels.length > 1 ? (i * (W - L - R)) / (labels.length - 1) : (W - L - R) / 2);
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
    if (labels.length) {
      root.appendChild(svg("text", { x: L, y: H - 6, class: "axis" }, clock(labels[0])));
      root.appendChild(svg("text", { x: W - R, y: H - 6, class: "axis", "text-anchor": "end" },
                           clock(labels[labels.length - 1])));
    }
    series.forEach((s, n) => {
      const points = s.values.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
      root.appendChild(svg("polyline", { points, class: `series series-${n}` }));
      if (s.values.length === 1) {
        root.appendChild(svg("circle", { cx: x(0), cy: y(s.values[0]), r: 2.5,
                                         class: `series-${n}` }));
      }
      const last = s.values.length ? s.values[s.values.length - 1] : 0;
      root.appendChild(svg("text", { x: W - R - 85 * (series.length - 1 - n), y: 14,
                                     class: `legend series-${n}`, "text-anchor": "end" },
                           `${s.name} ${formatNumber(last)}${unit || ""}`));
    });
    return root;
  }

  function formatNumber(v) {
    if (v >= 10000) return (v / 1000).toFixed(0) + "k";
    if (v >= 1000) return (v / 1000).toFixed(1) + "k";
    return Number.isInteger(v) ? String(v) : v.toFixed(1);
  }

  function renderState(ready) {
    const body = document.querySelector("#state tbody");
    body.replaceChildren(...ready.endpoints.map((e) => {
      const state = e.available ? "available" : "cooling down";
      const row = el("tr", { "data-available": String(e.available),
                             class: e.available ? "" : "cooling" });
      row.append(el("td", { class: "num" }, String(e.priority)),
                 el("td", {}, deploymentOf(e.endpoint)), el("td", {}, state),
                 el("td", {}, e.reason || ""),
                 el("td", { class: "num" }, e.cooldownSeconds.toFixed(1)),
                 el("td", { class: "num" }, String(e.inFlight)),
                 el("td", { class: "uri" }, e.endpoint));
      return row;
    }));
  }

  function renderCharts(metrics) {
    const minutes = metrics.collectionInterval;
    const cards = metrics.endpointMetrics.map((e) => {
      const history = Object.keys(e.metrics.history).sort((a, b) => a - b)
        .map((k) => e.metrics.history[k]);
      const labels = history.map((h) => h.collectionTime);
      const calls = history.map((h) => h.collectedMetrics.noOfApiCalls);
      const failed = history.map((h) => h.collectedMetrics.noOfFailedCalls);
      const tpm = history.map((h) => (h.collectedMetrics.throughput.kTokensPerWindow * 1000) / minutes);
      const card = el("article", { class: "endpoint", "data-endpoint": e.endpoint });
      card.append(el("h3", {}, `#${e.priority} ${deploymentOf(e.endpoint)}`),
                  el("p", { class: "uri" }, e.endpoint),
                  chart("Calls per interval", labels,
                        [{ name: "answered", values: calls }, { name: "failed", values: failed }]),
                  chart("Tokens per minute", labels, [{ name: "TPM", values: tpm }]));
      return card;
    });
    document.getElementById("charts").replaceChildren(...cards);
    const kept = Math.max(0, ...metrics.endpointMetrics.map((e) => Object.keys(e.metrics.history).length));
    document.getElementById("history-note").textContent =
      `${kept} closed interval(s) of ${minutes} min kept (at most ${metrics.historyCount}); ` +
      "failed counts throttled (429) and failed calls.";
  }

  function renderCapacity(report) {
    const head = document.querySelector("#capacity thead tr");
    head.replaceChildren(...CAPACITY_COLUMNS.map(([title, key]) =>
      el("th", { class: TEXT_COLUMNS.has(key) ? "" : "num" }, title)));
    const body = document.querySelector("#capacity tbody");
    body.replaceChildren(...report.rows.map((r) => {
      const row = el("tr", { "data-scope": r.scope, class: r.scope, title: r.name });
      for (const [, key, format] of CAPACITY_COLUMNS) {
        let text = r[key] === null || r[key] === undefined ? "" : format(r[key]);
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
      `, over ${report.from || "-"} to ${report.to || "-"}.` +
      (report.warnings.length ? " Warning: " + report.warnings.join("; ") : "");
    document.getElementById("assumptions").replaceChildren(
      ...report.assumptions.map((a) => el("li", {}, a)));
    document.getElementById("table-source").textContent = "PTU table: " + report.ptuTable.source;
  }

  async function refresh() {
    const status = document.getElementById("status");
    try {
      const [metrics, ready, report] = await Promise.all(
        [getJson("metrics"), getJson("readyz"), getJson("capacity")]);
      document.getElementById("instance").textContent = metrics.instanceName;
      renderState(ready);
      renderCharts(metrics);
      renderCapacity(report);
      status.textContent = `Updated ${clock(new Date().toISOString())} UTC; ` +
        `gateway ${ready.status === "OK" ? "ready" : "not ready"}; ` +
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
