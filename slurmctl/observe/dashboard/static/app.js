/* The slurmctl dashboard: renders the JSON API into the page and refreshes it. Every value is
   inserted as text (never as HTML): error messages and ids cannot inject markup. */
"use strict";
(function () {
  const REFRESH_MS = 3000;
  const ERRORS_REFRESH_MS = 30000;

  function el(tag, attrs, ...children) {
    const n = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") n.className = v; else n.setAttribute(k, String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined) continue;
      n.appendChild(typeof c === "object" ? c : document.createTextNode(String(c)));
    }
    return n;
  }
  const num = (v, d = 0) => (v === null || v === undefined) ? "-" :
    Number(v).toLocaleString(undefined, { maximumFractionDigits: d });
  function bytes(v) {
    if (v === null || v === undefined) return "-";
    const u = ["B", "KB", "MB", "GB", "TB"]; let i = 0; let x = Number(v);
    while (x >= 1024 && i < u.length - 1) { x /= 1024; i++; }
    return `${x.toFixed(i ? 1 : 0)} ${u[i]}`;
  }
  function duration(s) {
    if (s === null || s === undefined) return "-";
    s = Math.round(s);
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
    if (s < 86400) return `${Math.floor(s / 3600)}h${String(Math.floor(s % 3600 / 60)).padStart(2, "0")}m`;
    return `${Math.floor(s / 86400)}d${String(Math.floor(s % 86400 / 3600)).padStart(2, "0")}h`;
  }
  const when = (epoch) => epoch ? new Date(epoch * 1000).toISOString().replace(".000", "") : "-";
  function table(headers, rows, numeric) {
    const isNum = (i) => (numeric || []).includes(i);
    return el("table", {},
      el("thead", {}, el("tr", {}, headers.map((h, i) => el("th", isNum(i) ? { class: "num" } : {}, h)))),
      el("tbody", {}, rows.length ? rows.map((r) => el("tr", {}, r.map((c, i) =>
        el("td", isNum(i) ? { class: "num" } : {}, c)))) :
        el("tr", {}, el("td", { colspan: headers.length, class: "muted" }, "none"))));
  }
  const kv = (pairs) => table(["", ""], pairs.filter((p) => p), [1]);
  function put(id, node) { const c = document.getElementById(id); if (c) c.replaceChildren(node); }
  async function getJSON(url) {
    const r = await fetch(url, { cache: "no-store" });
    if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
    return r.json();
  }
  function stamp(error) {
    put("updated", document.createTextNode(error ? `refresh failed: ${error}` :
      `updated ${new Date().toISOString().slice(11, 19)}Z`));
  }
  function minibar(fraction) {
    const s = el("span"); s.style.width = `${Math.round(100 * Math.min(1, fraction))}%`;
    return el("span", { class: "minibar" }, s);
  }

  /* --- the list of jobs ------------------------------------------------------------------ */
  function renderList(rows) {
    const body = rows.map((j) => [
      el("a", { href: `/job/${encodeURIComponent(j.job_id)}` }, j.job_id),
      el("span", { class: `badge ${j.status}` }, j.status), j.phase,
      el("span", {}, minibar(j.items ? j.done / j.items : 0),
        `${num(100 * (j.items ? j.done / j.items : 0), 1)}%`),
      `${num(j.done)}/${num(j.items)}`, num(j.failed), num(j.items_per_s, 1), j.executor,
      j.backend, when(j.created_at)]);
    const t = table(["job", "status", "phase", "progress", "items", "failed", "items/s",
      "executor", "backend", "created"], body, [4, 5, 6]);
    t.id = "jobs";
    document.getElementById("jobs").replaceWith(t);
  }
  async function refreshList() {
    try { renderList(await getJSON("/api/jobs")); stamp(); } catch (e) { stamp(e.message); }
  }

  /* --- one job --------------------------------------------------------------------------- */
  function renderJob(d) {
    const s = d.status, items = s.items, total = items.total || 0;
    const done = total - items.pending;
    document.getElementById("job-status").textContent = s.status;
    document.getElementById("job-status").className = `badge ${s.status}`;
    document.getElementById("bar-fill").style.width = `${total ? 100 * done / total : 0}%`;
    const rate = s.items_per_s || {};
    const figures = [
      ["progress", `${num(done)}/${num(total)} (${num(total ? 100 * done / total : 0, 1)}%)`],
      ["items/s now", num(rate.now, 1)], ["items/s average", num(rate.average, 1)],
      ["ETA", duration(s.eta_s)], ["workers running", num(s.workers_running)],
      ["phase", s.phase], ["open alerts", Object.keys(d.alerts.open).length]];
    if (s.in_flight) {
      figures.push(["items in flight / worker", num(s.in_flight.items_per_worker, 1)],
        ["item latency (avg)", `${num(s.in_flight.item_latency_ms, 1)} ms`]);
    }
    put("figures", el("div", { class: "figures" }, figures.map(([k, v]) =>
      el("div", { class: "figure" }, el("div", { class: "v" }, v), el("div", { class: "k" }, k)))));
    window.SlurmctlChart.draw(document.getElementById("chart"), d.series, d.now, s.created_at);
    const statuses = Object.keys(s.tasks);
    put("tasks", table(["phase", ...statuses], Object.entries(s.phases).map(([p, c]) =>
      [p, ...statuses.map((k) => num(c[k]))]), statuses.map((_, i) => i + 1)));
    put("items", kv(Object.entries(items).map(([k, v]) => [k, num(v)])));
    const open = Object.entries(d.alerts.open).map(([rule, a]) =>
      [el("span", { class: "alert-open" }, rule), a.since || "", a.message || ""]);
    const events = d.alerts.events.map((e) => [e.at, el("span",
      { class: e.state === "firing" ? "alert-open" : "alert-resolved" }, `${e.rule} ${e.state}`),
      e.message]);
    put("alerts", el("div", {}, table(["open", "since", "why"], open),
      el("h2", {}, "recent"), table(["at", "alert", "message"], events)));
    put("ratelimit", table(["bucket", "rate/s", "burst", "paused", "waiting"],
      (s.rate_limits || []).map((b) => [b.name, num(b.effective_tokens_per_sec ?? b.tokens_per_sec, 2),
        num(b.burst), b.paused ? "paused" : "no",
        b.wait_share === undefined ? "-" : `${num(100 * b.wait_share, 1)}%`])));
    const r = d.resources;
    put("resources", kv([["tasks committed", num(r.tasks)], ["CPU", duration(r.cpu_s)],
      ["task wall time", duration(r.wall_s)], ["handler calls", num(r.handler_calls)],
      ["storage read", bytes(r.io_read_bytes)], ["storage written", bytes(r.io_write_bytes)],
      ["HTTP requests", num(r.http_requests)], ["HTTP errors", num(r.http_errors)],
      ["HTTP 429", num(r.http_429)], ["HTTP received", bytes(r.http_bytes_received)],
      ["HTTP sent", bytes(r.http_bytes_sent)],
      ["HTTP latency (avg)", r.http_latency_ms_avg === null ? "-" : `${num(r.http_latency_ms_avg, 1)} ms`],
      ["rate-limit wait", duration(r.rate_wait_s)]]));
    put("errortypes", kv(Object.entries(r.failures_by_type).map(([k, v]) => [k, num(v)])));
    put("history", table(["at", "who", "action", "details"], d.history.map((h) => {
      const rest = Object.entries(h).filter(([k]) => !["at", "who", "action", "pid"].includes(k))
        .map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(" ");
      return [h.at, h.who, h.action, rest];
    })));
  }
  function renderErrors(a) {
    const groups = table(["type", "count", "final", "first seen", "last seen", "signature", "sample ids"],
      a.groups.slice(0, 50).map((g) => [g.error_type, num(g.count), num(g.final), g.first_seen || "-",
        g.last_seen || "-", el("code", {}, g.signature), g.sample_item_ids.join(", ")]), [1, 2]);
    const spots = table(["phase", "where", "key", "items", "failures", "rate", "× phase rate"],
      a.hot_spots.map((h) => [h.phase, h.dimension, h.key, num(h.items), num(h.failures),
        `${num(100 * h.failure_rate, 1)}%`, num(h.times_phase_rate, 1)]), [3, 4, 5, 6]);
    put("errors", el("div", {},
      el("p", {}, `${num(a.failures)} failures in ${num(a.items_processed)} items processed ` +
        `(${num(100 * a.failure_rate, 2)}%); ${num(a.final_failures)} items failed for good.`),
      groups, el("h2", {}, "hot spots"), spots));
    document.getElementById("errors").className = "";
  }
  function startJob() {
    const id = document.body.dataset.jobId;
    const api = `/api/jobs/${encodeURIComponent(id)}`;
    try { renderJob(JSON.parse(document.getElementById("initial").textContent)); stamp(); }
    catch (e) { stamp(e.message); }
    const refresh = async () => {
      try { renderJob(await getJSON(api)); stamp(); } catch (e) { stamp(e.message); }
    };
    const errors = async () => {
      try { renderErrors(await getJSON(`${api}/errors`)); } catch (e) { put("errors", document.createTextNode(e.message)); }
    };
    errors();
    setInterval(refresh, REFRESH_MS);
    setInterval(errors, ERRORS_REFRESH_MS);
  }

  if (document.body.dataset.page === "job") startJob();
  else { refreshList(); setInterval(refreshList, REFRESH_MS); }
})();
