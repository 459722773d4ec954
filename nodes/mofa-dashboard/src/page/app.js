// The dashboard page: draws the dataflow from /api/graph, then follows /events (`msg` for each
// tapped message, `stats` every second). Message text is only ever set as textContent.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const BOX_W = 120, BOX_H = 38, COL = 300, ROW = 170, PAD = 40, BEND = 60;

let graph = null;
const edgeLabels = new Map(); // tap ("source/output") -> [<text>] on the drawn edges
const edgePaths = new Map(); // tap -> [<g class="edge">]
const edgeRows = new Map(); // tap -> <tr>
const totals = new Map(); // tap -> count, bumped by `msg` between `stats`
const shown = new Map(); // tap -> seen_ms of the latest message shown

function el(ns, name, attrs, text) {
  const e = ns ? document.createElementNS(ns, name) : document.createElement(name);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function layout(g) {
  const cols = new Map();
  for (const n of g.nodes) {
    if (!cols.has(n.depth)) cols.set(n.depth, []);
    cols.get(n.depth).push(n);
  }
  const pos = new Map();
  const tallest = Math.max(1, ...[...cols.values()].map((c) => c.length));
  for (const [depth, nodes] of cols) {
    const offset = ((tallest - nodes.length) * ROW) / 2;
    nodes.forEach((n, i) => pos.set(n.id, { x: PAD + depth * COL + BOX_W / 2, y: PAD + offset + i * ROW + BOX_H / 2 }));
  }
  const width = PAD * 2 + (Math.max(0, ...cols.keys()) * COL) + BOX_W;
  const height = PAD * 2 + (tallest - 1) * ROW + BOX_H;
  return { pos, width, height };
}

// Edges between the same two nodes (either way) bend apart, so agent -> llm and llm -> agent
// are two curves, not one line.
function edgeGeometry(g, pos) {
  const groups = new Map();
  for (const e of g.edges) {
    const key = [e.source, e.target].sort().join("\u0000");
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(e);
  }
  const geo = new Map();
  for (const es of groups.values()) {
    es.forEach((e, i) => {
      const a = pos.get(e.source), b = pos.get(e.target);
      if (e.source === e.target) {
        const r = 28 + i * 12;
        geo.set(e.id, { d: `M ${a.x - 20} ${a.y - BOX_H / 2} C ${a.x - 40} ${a.y - BOX_H / 2 - r * 2}, ${a.x + 40} ${a.y - BOX_H / 2 - r * 2}, ${a.x + 20} ${a.y - BOX_H / 2}`, lx: a.x, ly: a.y - BOX_H / 2 - r * 1.5 });
        return;
      }
      // The normal of the pair in a fixed order: each edge of the pair gets its own side.
      const [p, q] = e.source < e.target ? [a, b] : [b, a];
      const dx = q.x - p.x, dy = q.y - p.y, len = Math.hypot(dx, dy) || 1;
      const nx = -dy / len, ny = dx / len;
      const bend = (i - (es.length - 1) / 2) * BEND;
      const mx = (a.x + b.x) / 2 + nx * bend, my = (a.y + b.y) / 2 + ny * bend;
      const end = trim(b, mx, my);
      geo.set(e.id, { d: `M ${a.x} ${a.y} Q ${mx} ${my} ${end.x} ${end.y}`, lx: (a.x + 2 * mx + end.x) / 4, ly: (a.y + 2 * my + end.y) / 4 });
    });
  }
  return geo;
}

// Where a curve towards the centre of box `b` from control point (cx, cy) meets the box edge.
function trim(b, cx, cy) {
  const dx = cx - b.x, dy = cy - b.y;
  const s = Math.min(BOX_W / 2 / Math.abs(dx || 1e-9), BOX_H / 2 / Math.abs(dy || 1e-9), 1);
  return { x: b.x + dx * s, y: b.y + dy * s };
}

function draw(g) {
  const svg = document.getElementById("graph");
  svg.replaceChildren();
  const { pos, width, height } = layout(g);
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const defs = el(SVG, "defs");
  // In user units: a highlighted (thicker) edge keeps the same arrow.
  const marker = el(SVG, "marker", { id: "arrow", viewBox: "0 0 10 10", refX: "10", refY: "5", markerUnits: "userSpaceOnUse", markerWidth: "10", markerHeight: "10", orient: "auto-start-reverse" });
  marker.append(el(SVG, "path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#7d8799" }));
  defs.append(marker);
  svg.append(defs);
  const geo = edgeGeometry(g, pos);
  // Labels above every line, nodes above both.
  const lines = el(SVG, "g"), labels = el(SVG, "g");
  svg.append(lines, labels);
  for (const e of g.edges) {
    const { d, lx, ly } = geo.get(e.id);
    const group = el(SVG, "g", { class: e.tap ? "edge tapped" : "edge", "data-edge": e.id });
    const path = el(SVG, "path", { d, "marker-end": "url(#arrow)" });
    const title = el(SVG, "title", {}, e.id);
    path.append(title);
    group.append(path);
    // One line per edge: edges between the same nodes are BEND / 2 apart at their middles.
    const label = el(SVG, "text", { x: lx, y: ly + 4 });
    label.append(el(SVG, "tspan", { class: "name" }, e.output === e.input ? e.output : `${e.output} → ${e.input}`));
    const tag = el(SVG, "g", { class: "edge-label" });
    tag.append(el(SVG, "rect"), label);
    labels.append(tag);
    if (e.tap) {
      const figures = el(SVG, "tspan", { "data-figures": e.tap, dx: "6" }, "0 · 0.0/s");
      label.append(figures);
      if (!edgeLabels.has(e.tap)) { edgeLabels.set(e.tap, []); edgePaths.set(e.tap, []); }
      edgeLabels.get(e.tap).push(figures);
      edgePaths.get(e.tap).push(group);
    }
    lines.append(group);
    fitBackground(label);
  }
  for (const n of g.nodes) {
    const p = pos.get(n.id);
    const group = el(SVG, "g", { class: "node", "data-node": n.id });
    group.append(el(SVG, "rect", { x: p.x - BOX_W / 2, y: p.y - BOX_H / 2, width: BOX_W, height: BOX_H, rx: 6 }));
    group.append(el(SVG, "text", { x: p.x, y: p.y }, n.id));
    group.append(el(SVG, "title", {}, `${n.id}\ninputs: ${n.inputs.join(", ") || "-"}\noutputs: ${n.outputs.join(", ") || "-"}`));
    svg.append(group);
  }
  // One row per tapped output, in the order the graph lists them.
  const body = document.querySelector("#edges tbody");
  body.replaceChildren();
  const taps = [...new Set(Object.values(g.taps).map((t) => t.edge))].sort();
  for (const tap of taps) {
    const row = el(null, "tr", { "data-tap": tap });
    row.append(el(null, "td", {}, tap), el(null, "td", { class: "num total" }, "0"), el(null, "td", { class: "num rate" }, "0.0"), el(null, "td", { class: "latest" }, ""));
    body.append(row);
    edgeRows.set(tap, row);
  }
}

// The white box behind an edge's label, so lines crossing it do not cut through the text.
function fitBackground(label) {
  const bg = label.previousElementSibling;
  const b = label.getBBox();
  bg.setAttribute("x", b.x - 3);
  bg.setAttribute("y", b.y - 1);
  bg.setAttribute("width", b.width + 6);
  bg.setAttribute("height", b.height + 2);
}

function showLatest(tap, m) {
  const row = edgeRows.get(tap);
  if (!row || !m || (shown.get(tap) || 0) > m.seen_ms) return;
  shown.set(tap, m.seen_ms);
  const cell = row.querySelector(".latest");
  const kind = el(null, "span", { class: m.kind === "error" ? "kind error" : "kind" }, m.kind);
  cell.replaceChildren(kind, document.createTextNode(`${m.sender}: ${m.preview}`));
  cell.title = `session ${m.session}\n${new Date(m.ts_ms).toISOString()}`;
  for (const g of edgePaths.get(tap) || []) g.querySelector("title").textContent = `${tap} latest (${m.kind} from ${m.sender}): ${m.preview}`;
}

function showFigures(tap, total, rate) {
  const row = edgeRows.get(tap);
  if (row) {
    row.querySelector(".total").textContent = String(total);
    if (rate !== undefined) row.querySelector(".rate").textContent = rate.toFixed(1);
  }
  for (const t of edgeLabels.get(tap) || []) {
    const r = rate !== undefined ? rate : parseFloat(t.textContent.split("·")[1]) || 0;
    t.textContent = `${total} · ${r.toFixed(1)}/s`;
    fitBackground(t.parentNode);
  }
}

function onMessage(m) {
  const total = (totals.get(m.edge) || 0) + 1;
  totals.set(m.edge, total);
  showFigures(m.edge, total);
  showLatest(m.edge, m);
  const row = edgeRows.get(m.edge);
  if (row) { row.classList.add("flash"); setTimeout(() => row.classList.remove("flash"), 400); }
  for (const g of edgePaths.get(m.edge) || []) { g.classList.add("hot"); setTimeout(() => g.classList.remove("hot"), 400); }
}

function onStats(s) {
  document.getElementById("total").textContent = `${s.messages} messages`;
  for (const [tap, f] of Object.entries(s.edges)) {
    // The snapshot is the count; `msg` events bump it until the next one.
    totals.set(tap, f.total);
    showFigures(tap, f.total, f.rate);
    showLatest(tap, f.last);
  }
  const agents = document.querySelector("#agents tbody");
  agents.replaceChildren(...Object.entries(s.agents).map(([name, a]) => {
    const row = el(null, "tr", { "data-agent": name, title: a.model ? `model ${a.model}` : "" });
    row.append(el(null, "td", {}, name), el(null, "td", { class: "num" }, String(a.calls)), el(null, "td", { class: "num tokens-in" }, String(a.prompt_tokens)), el(null, "td", { class: "num tokens-out" }, String(a.completion_tokens)), el(null, "td", { class: "num cost" }, a.cost_usd.toFixed(4)));
    return row;
  }));
  const errors = document.querySelector("#errors tbody");
  errors.replaceChildren(...Object.entries(s.errors).map(([node, e]) => {
    const row = el(null, "tr", { "data-errors": node });
    const list = el(null, "td", { class: "latest" });
    for (const x of e.last.slice().reverse()) list.append(el(null, "div", { title: `${x.edge}, session ${x.session}` }, x.message));
    row.append(el(null, "td", {}, node), el(null, "td", { class: "num" }, String(e.count)), list);
    return row;
  }));
  document.querySelectorAll("#graph .node").forEach((n) => n.classList.toggle("failing", n.dataset.node in s.errors));
}

async function start() {
  graph = await (await fetch("/api/graph")).json();
  draw(graph);
  onStats(await (await fetch("/api/state")).json());
  const status = document.getElementById("status");
  const events = new EventSource("/events");
  events.onopen = () => { status.textContent = "live"; status.classList.add("live"); };
  events.onerror = () => { status.textContent = "disconnected (retrying)"; status.classList.remove("live"); };
  events.addEventListener("msg", (e) => onMessage(JSON.parse(e.data)));
  events.addEventListener("stats", (e) => onStats(JSON.parse(e.data)));
}

start().catch((e) => { document.getElementById("status").textContent = `error: ${e}`; });
