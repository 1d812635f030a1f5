/* A tiny SVG chart of the processing rate: one bar per time bucket (buckets widen as the job
   ages), failures overlaid. Written for slurmctl's dashboard; no library, nothing fetched. */
"use strict";
(function () {
  const NS = "http://www.w3.org/2000/svg"; // the SVG namespace name: an identifier, not fetched

  function node(tag, attrs, text) {
    const n = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) n.setAttribute(k, String(v));
    if (text !== undefined) n.textContent = text;
    return n;
  }

  function clock(epoch) {
    const d = new Date(epoch * 1000);
    return d.toISOString().slice(11, 19) + "Z";
  }

  function niceMax(v) {
    if (v <= 0) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  /* series: [{t, width_s, items, failed, items_per_s}], now: epoch seconds, start: epoch */
  function draw(container, series, now, start) {
    const W = 800, H = 220, L = 48, R = 10, T = 10, B = 24;
    const svg = node("svg", { viewBox: `0 0 ${W} ${H}`, role: "img",
      "aria-label": "items per second over time" });
    const t0 = Math.min(start, ...series.map((p) => p.t));
    const t1 = Math.max(now, t0 + 1);
    const rate = (p, n) => n / Math.max(1, Math.min(p.width_s, now - p.t));
    const top = niceMax(Math.max(0, ...series.map((p) => rate(p, p.items))));
    const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
    const y = (v) => T + (1 - v / top) * (H - T - B);
    for (const f of [0, 0.5, 1]) {
      svg.appendChild(node("line", { x1: L, x2: W - R, y1: y(top * f), y2: y(top * f),
        class: "axis" }));
      svg.appendChild(node("text", { x: L - 6, y: y(top * f) + 4, "text-anchor": "end" },
        (top * f).toLocaleString(undefined, { maximumFractionDigits: 1 })));
    }
    for (const p of series) {
      const x0 = x(p.t), x1 = Math.max(x0 + 1, x(Math.min(p.t + p.width_s, now)));
      const r = rate(p, p.items), f = rate(p, p.failed || 0);
      svg.appendChild(node("rect", { x: x0, y: y(r), width: x1 - x0, height: y(0) - y(r),
        class: "rate" }, undefined)).appendChild(node("title", {},
        `${clock(p.t)}: ${p.items} items (${r.toFixed(2)}/s), ${p.failed || 0} failed`));
      if (f > 0) {
        svg.appendChild(node("rect", { x: x0, y: y(f), width: x1 - x0, height: y(0) - y(f),
          class: "fail" }));
      }
    }
    svg.appendChild(node("text", { x: L, y: H - 6 }, clock(t0)));
    svg.appendChild(node("text", { x: W - R, y: H - 6, "text-anchor": "end" }, clock(t1)));
    svg.appendChild(node("text", { x: (L + W) / 2, y: H - 6, "text-anchor": "middle" },
      "items/s"));
    container.replaceChildren(svg);
  }

  window.SlurmctlChart = { draw };
})();
