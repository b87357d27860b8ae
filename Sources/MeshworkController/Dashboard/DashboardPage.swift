/// The dashboard (`GET /ui`): one self-contained page (no CDN, no external asset: it is
/// compiled into the binary) that reads the same API as `ctl` every two seconds: services,
/// instances, golden metrics, edges, per-service series and certificate expiries. It draws
/// the topology as a layered graph whose edges carry RPS and success rate, each service's
/// golden metrics with their last ten minutes, its routes (each rule's matches, backends
/// with their weights and the route's conditions), the rollouts (phase, step, weights, the
/// last analysis against its thresholds) and its instances.
///
/// A token, when reads are protected, comes from the page's fragment: `/ui#token=...`
/// (a fragment never reaches a server log).
enum DashboardPage {
    static let html = #"""
        <!doctype html>
        <html lang="en">
        <head>
        <meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <title>Meshwork</title>
        <link rel="icon" href="data:,">
        <style>
          :root { --bg:#0f1419; --panel:#171d24; --line:#2a333d; --text:#d8dee6; --dim:#8a96a3;
                  --ok:#3fb950; --warn:#d29922; --bad:#f85149; --accent:#58a6ff; }
          * { box-sizing: border-box; }
          body { margin:0; font:14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; background:var(--bg); color:var(--text); }
          header { display:flex; align-items:center; gap:16px; padding:12px 20px; border-bottom:1px solid var(--line); }
          header h1 { font-size:18px; margin:0; letter-spacing:.5px; }
          header .dim { color:var(--dim); }
          header select { background:var(--panel); color:var(--text); border:1px solid var(--line); border-radius:4px; padding:2px 6px; }
          main { padding:16px 20px; display:grid; gap:16px; }
          section { background:var(--panel); border:1px solid var(--line); border-radius:8px; padding:12px 16px; }
          section h2 { font-size:13px; text-transform:uppercase; letter-spacing:1px; color:var(--dim); margin:0 0 8px; }
          table { border-collapse:collapse; width:100%; }
          th, td { text-align:left; padding:5px 10px 5px 0; border-bottom:1px solid var(--line); white-space:nowrap; }
          th { color:var(--dim); font-weight:500; font-size:12px; }
          td.num { font-variant-numeric: tabular-nums; }
          .ok { color:var(--ok); } .warn { color:var(--warn); } .bad { color:var(--bad); } .dim { color:var(--dim); }
          .badge { display:inline-block; padding:0 7px; border-radius:9px; font-size:12px; border:1px solid currentColor; }
          svg text { fill:var(--text); font-size:12px; }
          svg .node circle { fill:#1f2a36; stroke:var(--accent); stroke-width:2; }
          svg .node.external circle { stroke:var(--dim); stroke-dasharray:3 3; }
          svg .edge line { stroke-width:2; }
          svg .edge text { font-size:11px; fill:var(--dim); }
          #banner { display:none; padding:8px 20px; background:#3d1d1d; color:#ffb4ae; }
          #errors { display:none; }
          .spark polyline { fill:none; stroke-width:1.5; }
          .instances td:first-child { padding-left:18px; }
        </style>
        </head>
        <body>
        <header>
          <h1>Meshwork</h1>
          <span class="dim" id="summary">loading…</span>
          <span style="flex:1"></span>
          <label class="dim">window <select id="window"><option value="1m">1m</option><option value="10m">10m</option></select></label>
          <span class="dim" id="updated"></span>
        </header>
        <div id="banner"></div>
        <main>
          <section><h2>Topology</h2><svg id="topology" width="100%" height="260" role="img" aria-label="service topology"></svg></section>
          <section><h2>Services</h2>
            <table id="services"><thead><tr><th>Service</th><th>Instances</th><th>RPS</th><th>Success</th><th>p50</th><th>p95</th><th>p99</th><th>Requests, last 10m</th><th>p99, last 10m</th></tr></thead><tbody></tbody></table>
          </section>
          <section><h2>Edges</h2>
            <table id="edges"><thead><tr><th>Source</th><th>Target</th><th>RPS</th><th>Success</th><th>p50</th><th>p99</th><th>mTLS</th></tr></thead><tbody></tbody></table>
          </section>
          <section><h2>Routes</h2>
            <table id="routes"><thead><tr><th>Service</th><th>Route</th><th>Rule</th><th>Matches</th><th>Backends</th><th>Filters</th><th>Status</th></tr></thead><tbody></tbody></table>
          </section>
          <section><h2>Rollouts</h2>
            <table id="rollouts"><thead><tr><th>Rollout</th><th>Service</th><th>Phase</th><th>Step</th><th>Weights</th><th>Analysis</th><th>Message</th><th>History</th></tr></thead><tbody></tbody></table>
          </section>
          <section><h2>Instances</h2>
            <table id="instances" class="instances"><thead><tr><th>Instance</th><th>Address</th><th>Health</th><th>Zone</th><th>Weight</th><th>Version</th><th>Certificate expires</th><th>RPS</th><th>Success</th><th>p99</th></tr></thead><tbody></tbody></table>
          </section>
        </main>
        <pre id="errors"></pre>
        <script>
        "use strict";
        const errors = [];
        function recordError(text) {
          errors.push(String(text));
          const pre = document.getElementById("errors");
          pre.textContent = errors.join("\n");
          document.body.dataset.errors = String(errors.length);
        }
        window.addEventListener("error", e => recordError(e.message));
        window.addEventListener("unhandledrejection", e => recordError(e.reason));

        const token = new URLSearchParams(location.hash.slice(1)).get("token");
        const headers = token ? { authorization: "Bearer " + token } : {};
        const svgNS = "http://www.w3.org/2000/svg";

        async function get(path) {
          const response = await fetch(path, { headers });
          if (!response.ok) throw new Error(path + ": " + response.status + " " + (await response.text()).slice(0, 200));
          return response.json();
        }

        function el(tag, attrs, ...children) {
          const node = tag.startsWith("svg:") ? document.createElementNS(svgNS, tag.slice(4)) : document.createElement(tag);
          for (const [k, v] of Object.entries(attrs || {})) {
            if (v !== undefined && v !== null) node.setAttribute(k, v);
          }
          for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
          return node;
        }

        const pct = r => r === undefined ? "–" : (r * 100).toFixed(r >= 0.9995 || r === 0 ? 0 : 2) + "%";
        const ms = v => v === undefined || v === null ? "–" : (v < 10 ? v.toFixed(2) : v.toFixed(0)) + " ms";
        const rps = v => v === undefined ? "–" : v < 10 ? v.toFixed(1) : v.toFixed(0);
        const rateClass = r => r === undefined ? "dim" : r >= 0.99 ? "ok" : r >= 0.95 ? "warn" : "bad";
        const healthClass = h => h === "healthy" ? "ok" : h === "starting" ? "warn" : "bad";

        function until(date) {
          const s = Math.round((new Date(date) - Date.now()) / 1000);
          if (s <= 0) return "expired";
          if (s < 120) return "in " + s + " s";
          if (s < 7200) return "in " + Math.round(s / 60) + " min";
          if (s < 172800) return "in " + Math.round(s / 3600) + " h";
          return "in " + Math.round(s / 86400) + " d";
        }

        function sparkline(values, color) {
          const w = 140, h = 26, max = Math.max(1e-9, ...values.map(v => v || 0));
          const step = values.length > 1 ? w / (values.length - 1) : w;
          const points = values.map((v, i) => (i * step).toFixed(1) + "," + (h - 2 - ((v || 0) / max) * (h - 4)).toFixed(1)).join(" ");
          return el("svg:svg", { class: "spark", width: w, height: h, viewBox: `0 0 ${w} ${h}` },
            el("svg:polyline", { points, stroke: color }));
        }

        /// Layers: a service sits one column right of its deepest caller (cycles are cut).
        function layout(names, edges, width) {
          const callers = new Map(names.map(n => [n, []]));
          for (const e of edges) if (callers.has(e.target) && e.source !== e.target) callers.get(e.target).push(e.source);
          const depth = new Map();
          const visiting = new Set();
          function depthOf(n) {
            if (depth.has(n)) return depth.get(n);
            if (visiting.has(n)) return 0;
            visiting.add(n);
            const d = Math.max(-1, ...(callers.get(n) || []).map(depthOf)) + 1;
            visiting.delete(n);
            depth.set(n, d);
            return d;
          }
          names.forEach(depthOf);
          const columns = [];
          for (const n of names) (columns[depth.get(n)] = columns[depth.get(n)] || []).push(n);
          const positions = new Map();
          const colWidth = width / Math.max(1, columns.length);
          let rows = 1;
          columns.forEach((column, c) => {
            rows = Math.max(rows, column.length);
            column.forEach((n, r) => positions.set(n, { x: colWidth * (c + 0.5), y: 50 + r * 80 }));
          });
          return { positions, height: Math.max(140, 40 + rows * 80) };
        }

        function drawTopology(services, edges) {
          const svg = document.getElementById("topology");
          const width = Math.max(400, svg.clientWidth || 900);
          const names = [...new Set([...services, ...edges.flatMap(e => [e.source, e.target])])].sort();
          const { positions, height } = layout(names, edges, width);
          svg.setAttribute("height", height);
          svg.replaceChildren(el("svg:defs", {},
            el("svg:marker", { id: "arrow", viewBox: "0 0 10 10", refX: "10", refY: "5", markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse" },
              el("svg:path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#8a96a3" }))));
          const r = 22;
          for (const e of edges) {
            const a = positions.get(e.source), b = positions.get(e.target);
            if (!a || !b || e.source === e.target) continue;
            const dx = b.x - a.x, dy = b.y - a.y, len = Math.hypot(dx, dy) || 1;
            const x1 = a.x + dx / len * r, y1 = a.y + dy / len * r, x2 = b.x - dx / len * (r + 3), y2 = b.y - dy / len * (r + 3);
            const color = getComputedStyle(document.documentElement).getPropertyValue("--" + rateClass(e.metrics.successRate)).trim();
            svg.append(el("svg:g", { class: "edge", "data-source": e.source, "data-target": e.target },
              el("svg:line", { x1, y1, x2, y2, stroke: color, "marker-end": "url(#arrow)" }),
              el("svg:text", { x: (x1 + x2) / 2, y: (y1 + y2) / 2 - 6, "text-anchor": "middle" },
                rps(e.metrics.rps) + " rps · " + pct(e.metrics.successRate) + (e.mtls ? " · mTLS" : ""))));
          }
          for (const n of names) {
            const p = positions.get(n);
            svg.append(el("svg:g", { class: "node" + (services.includes(n) ? "" : " external"), "data-service": n },
              el("svg:circle", { cx: p.x, cy: p.y, r }),
              el("svg:text", { x: p.x, y: p.y + r + 15, "text-anchor": "middle" }, n)));
          }
        }

        function cells(row, values) {
          for (const v of values) row.append(v instanceof Node && v.tagName === "TD" ? v : el("td", {}, v));
          return row;
        }

        /// A rule's matches in a few words: `PathPrefix /api · x-canary=1 · GET`.
        function describeMatch(m) {
          const parts = [];
          if (m.path && !(m.path.type === "PathPrefix" && m.path.value === "/")) parts.push(m.path.type + " " + m.path.value);
          if (m.method && typeof m.method === "object") parts.push((m.method.service || "*") + "/" + (m.method.method || "*"));
          else if (m.method) parts.push(m.method);
          for (const h of m.headers || []) parts.push(h.name + (h.type === "Present" ? " present" : h.type === "Absent" ? " absent" : (h.type === "RegularExpression" ? " ~ " : "=") + h.value));
          for (const q of m.queryParams || []) parts.push("?" + q.name + (q.type === "RegularExpression" ? " ~ " : "=") + q.value);
          return parts.length ? parts.join(" · ") : "every request";
        }

        /// The route's problems by reason (conditions in Gateway API's shape), or Accepted.
        function routeStatus(route) {
          const problems = (route.status?.conditions || []).filter(c => c.type === "Conflicted" ? c.status === "True" : c.status !== "True");
          return problems.length
            ? el("td", { class: "warn", title: problems.map(c => c.message).join("\n") }, problems.map(c => c.reason).join(", "))
            : el("td", { class: "ok" }, "Accepted");
        }

        /// A parent as the table names it: the service, or `gateway edge:public` (its listener).
        function parentName(parent) {
          return parent.kind === "Gateway" ? "gateway " + parent.name + (parent.sectionName ? ":" + parent.sectionName : "") : parent.name;
        }

        function renderRoutes(names, routes) {
          const rows = [];
          const parents = [...new Set([...names, ...routes.flatMap(r => (r.parentRefs || []).map(parentName))])];
          for (const service of parents) {
            for (const route of routes.filter(r => (r.parentRefs || []).some(p => parentName(p) === service))) {
              (route.rules || []).forEach((rule, index) => {
                const backends = (rule.backendRefs || []).map(b => b.name + (b.version ? "@" + b.version : "") + " " + (b.weight ?? 1));
                rows.push(cells(el("tr", { "data-route": route.name, "data-service": service }), [
                  index === 0 ? el("td", {}, el("strong", {}, service)) : "",
                  index === 0 ? route.name + (route.kind === "GRPCRoute" ? " (gRPC)" : "") + ((route.hostnames || []).length && service.startsWith("gateway ") ? " · " + route.hostnames.join(", ") : "") : "",
                  rule.name || String(index),
                  (rule.matches || []).length ? rule.matches.map(describeMatch).join(" | ") : "every request",
                  backends.length ? backends.join(", ") : service,
                  (rule.filters || []).map(f => f.type).join(", ") || "–",
                  index === 0 ? routeStatus(route) : "",
                ]));
              });
            }
          }
          if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 7, class: "dim" }, "no routes: every request goes to its service")));
          document.querySelector("#routes tbody").replaceChildren(...rows);
        }

        /// Each rollout: where it is, the weights it sets, the last figures against the current
        /// analysis step's thresholds, and its last transitions.
        function renderRollouts(rollouts) {
          const rows = rollouts.map(r => {
            const s = r.status || {};
            const steps = r.steps || [];
            const step = steps[Math.min(s.step ?? 0, steps.length - 1)] || {};
            const wanted = step.analysis;
            const f = s.figures;
            let analysis = "–";
            if (f) {
              const rate = f.successRate == null ? "–" : f.successRate.toFixed(2) + "%";
              const p99 = f.p99 == null ? "–" : f.p99.toFixed(1) + " ms";
              analysis = f.requests + " req · success " + rate + (wanted && wanted.successRate != null ? " (≥ " + wanted.successRate + "%)" : "")
                + " · p99 " + p99 + (wanted && wanted.p99 ? " (≤ " + wanted.p99 + ")" : "");
            }
            const good = s.phase === "Promoted" || s.phase === "Progressing";
            const history = (s.history || []).slice(-3).map(h => new Date(h.at).toLocaleTimeString() + " " + h.message).join("\n");
            return cells(el("tr", { "data-rollout": r.name, "data-phase": s.phase }), [
              el("td", {}, el("strong", {}, r.name)),
              r.service + " " + r.stable + " → " + r.canary,
              el("td", { class: good ? "ok" : (s.phase === "Paused" || s.phase === "Pending" ? "" : "warn") }, s.phase || "–"),
              Math.min((s.step ?? 0) + 1, steps.length) + " of " + steps.length,
              r.stable + " " + (100 - (s.weight ?? 0)) + "% · " + r.canary + " " + (s.weight ?? 0) + "%",
              analysis,
              s.message || "",
              el("td", { class: "dim", title: history }, (s.history || []).length + " transitions"),
            ]);
          });
          if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 8, class: "dim" }, "no rollouts")));
          document.querySelector("#rollouts tbody").replaceChildren(...rows);
        }

        function render(data) {
          const { services, instances, stats, edges, series, certificates, routes, rollouts } = data;
          const statsByService = new Map(stats.services.map(s => [s.service, s]));
          const seriesByService = new Map(series.services.map(s => [s.service, s.points]));
          const expiry = new Map(certificates.certificates.map(c => [c.instance, c.notAfter]));
          const names = services.map(s => s.name);
          drawTopology(names, edges.edges);

          const body = document.querySelector("#services tbody");
          body.replaceChildren(...names.map(name => {
            const m = statsByService.get(name)?.metrics;
            const own = instances.filter(i => i.service === name);
            const healthy = own.filter(i => i.health === "healthy").length;
            const points = seriesByService.get(name) || [];
            return cells(el("tr", { "data-service": name }), [
              el("td", {}, el("strong", {}, name)),
              el("td", { class: healthy === own.length ? "num" : "num warn" }, healthy + " / " + own.length + " healthy"),
              el("td", { class: "num" }, rps(m?.rps)),
              el("td", { class: "num " + rateClass(m?.successRate) }, pct(m?.successRate)),
              el("td", { class: "num" }, ms(m?.p50Ms)), el("td", { class: "num" }, ms(m?.p95Ms)), el("td", { class: "num" }, ms(m?.p99Ms)),
              el("td", {}, sparkline(points.map(p => p.requests), "#58a6ff")),
              el("td", {}, sparkline(points.map(p => p.p99Ms), "#d29922")),
            ]);
          }));

          document.querySelector("#edges tbody").replaceChildren(...edges.edges.map(e => cells(el("tr", { "data-source": e.source, "data-target": e.target }), [
            e.source, e.target, el("td", { class: "num" }, rps(e.metrics.rps)),
            el("td", { class: "num " + rateClass(e.metrics.successRate) }, pct(e.metrics.successRate)),
            el("td", { class: "num" }, ms(e.metrics.p50Ms)), el("td", { class: "num" }, ms(e.metrics.p99Ms)),
            el("td", { class: e.mtls ? "ok" : "warn" }, e.mtls ? "yes" : "no"),
          ])));

          const rows = [];
          for (const name of names) {
            rows.push(el("tr", {}, el("td", { colspan: 10, style: "padding-left:0" }, el("strong", {}, name))));
            const perInstance = new Map((statsByService.get(name)?.instances || []).map(i => [i.instance, i.metrics]));
            for (const i of instances.filter(i => i.service === name)) {
              const m = perInstance.get(i.id);
              rows.push(cells(el("tr", { "data-instance": i.id }), [
                i.id, i.address + ":" + i.port, el("td", {}, el("span", { class: "badge " + healthClass(i.health) }, i.health)),
                i.zone || "–", el("td", { class: "num" }, i.weight), i.version || "–",
                el("td", { class: expiry.has(i.id) ? "expiry" : "expiry dim" }, expiry.has(i.id) ? until(expiry.get(i.id)) : "none"),
                el("td", { class: "num" }, rps(m?.rps)), el("td", { class: "num " + rateClass(m?.successRate) }, pct(m?.successRate)),
                el("td", { class: "num" }, ms(m?.p99Ms)),
              ]));
            }
          }
          document.querySelector("#instances tbody").replaceChildren(...rows);
          renderRoutes(names, routes);
          renderRollouts(rollouts);
          const total = stats.services.reduce((sum, s) => sum + s.metrics.rps, 0);
          document.getElementById("summary").textContent =
            names.length + " services · " + instances.length + " instances · " + rps(total) + " rps";
          document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
        }

        async function refresh() {
          const window_ = document.getElementById("window").value;
          try {
            const [services, instances, stats, edges, series, certificates, routes, rollouts] = await Promise.all([
              get("/v1/services"), get("/v1/instances"), get("/v1/stats?window=" + window_), get("/v1/edges?window=" + window_),
              get("/v1/stats/series?window=10m"), get("/v1/certificates"), get("/v1/routes"), get("/v1/rollouts"),
            ]);
            render({ services, instances, stats, edges, series, certificates, routes, rollouts });
            document.getElementById("banner").style.display = "none";
            document.body.dataset.ready = "1";
          } catch (error) {
            const banner = document.getElementById("banner");
            banner.textContent = "cannot reach the controller API: " + error.message;
            banner.style.display = "block";
          }
        }

        document.getElementById("window").addEventListener("change", refresh);
        refresh();
        setInterval(refresh, 2000);
        </script>
        </body>
        </html>
        """#
}
