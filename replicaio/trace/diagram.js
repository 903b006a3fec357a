// The space-time diagram of a replicaio run (replicaio/trace/html.py embeds this file).
// Nodes are lanes, time runs downwards, every message is an arrow from its send to its
// delivery. Drawn on one canvas: only what lies in the visible window is drawn, found by
// binary search over arrays sorted by time, so runs of tens of thousands of messages stay
// interactive (docs/visualisation.md gives the measured figure).
// State can be set from the URL fragment: #node=0,2&type=READY&inst=bcast/1&term=2-4
// &select=e12 (or m7)&mode=order&lost=0&t=1000-5000 (a time window in microseconds).
"use strict";
(function () {
  const model = JSON.parse(document.getElementById("diagram-data").textContent);
  const E = model.events, M = model.messages;
  const eventCount = E.t.length, messageCount = M.t0.length;
  const KIND = ["start", "receive", "timer", "request"];
  const LOST = 1, DUPLICATE = 2, REORDERED = 4, FORGED = 8, UNMATCHED = 16;
  const HAS_CHOICES = 1, HAS_OUTPUTS = 2, VIOLATION = 8;
  const PALETTE = ["#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#17becf", "#bcbd22",
    "#e377c2", "#7f7f7f", "#3949ab", "#00897b", "#6d4c41", "#5e35b1", "#43a047", "#0277bd"];
  const COLOR = { lost: "#d62728", duplicate: "#ff7f0e", forged: "#9c27b0",
    reordered: "#e6007e", inflight: "#9aa3ad", chain: "#d62728", selected: "#111", past: "#f9a825",
    timer: "#ef8d00", request: "#1565c0", start: "#2e7d32", output: "#c79100",
    choice: "#7b1fa2", down: "rgba(90,90,90,0.22)", partition: "rgba(255,152,0,0.16)" };
  const HEADER = 30, GUTTER = 74;

  const canvas = document.getElementById("canvas");
  const context = canvas.getContext("2d");
  const $ = (id) => document.getElementById(id);
  const state = {
    mode: "time", top: 0, scale: 1, width: 0, height: 0,
    nodes: model.nodes.map(() => true), types: model.types.map(() => true),
    instance: "", termMin: null, termMax: null,
    show: { lost: true, duplicate: true, forged: true, timers: true, outputs: true,
      choices: true },
    selected: null, chain: new Set(), chainMessages: new Set(), past: null,
    drawn: { events: 0, messages: 0, ms: 0 },
  };
  const api = { model, state, select, jump, render: () => draw(), fit };
  window.replicaioDiagram = api;

  // ---------------------------------------------------------------- positions
  // A "position" is where on the vertical axis a time lies: the time itself in
  // "time" mode, the rank of the time among distinct step times in "order" mode.
  const distinctTimes = (function () {
    const found = [];
    for (let i = 0; i < eventCount; i++) {
      if (!found.length || found[found.length - 1] !== E.t[i]) found.push(E.t[i]);
    }
    return Float64Array.from(found);
  })();
  function lowerBound(array, value) {
    let low = 0, high = array.length;
    while (low < high) {
      const middle = (low + high) >> 1;
      if (array[middle] < value) low = middle + 1; else high = middle;
    }
    return low;
  }
  function position(t) {
    if (state.mode === "time") return t;
    const index = lowerBound(distinctTimes, t);
    if (index < distinctTimes.length && distinctTimes[index] === t) return index;
    if (index === 0 || index >= distinctTimes.length) return index;
    const before = distinctTimes[index - 1], after = distinctTimes[index];
    return index - 1 + (t - before) / (after - before);
  }
  let eventPos, sendPos, recvPos, messageOrder, longMessages, spanMax;
  function computePositions() {
    eventPos = new Float64Array(eventCount);
    for (let i = 0; i < eventCount; i++) eventPos[i] = position(E.t[i]);
    sendPos = new Float64Array(messageCount);
    recvPos = new Float64Array(messageCount);
    const spans = [];
    const lostLength = state.mode === "time" ? lostSpanTime() : 0.6;
    for (let m = 0; m < messageCount; m++) {
      sendPos[m] = M.send[m] >= 0 ? eventPos[M.send[m]] : position(M.t0[m]);
      recvPos[m] = M.recv[m] >= 0 ? eventPos[M.recv[m]] : sendPos[m] + lostLength;
      spans.push(recvPos[m] - sendPos[m]);
    }
    messageOrder = Uint32Array.from({ length: messageCount }, (_, m) => m);
    messageOrder.sort((a, b) => sendPos[a] - sendPos[b]);
    // Arrows longer than most are kept apart, so the window query stays narrow.
    const sorted = spans.slice().sort((a, b) => a - b);
    spanMax = sorted.length ? sorted[Math.floor(sorted.length * 0.99)] : 0;
    longMessages = [];
    for (let m = 0; m < messageCount; m++) if (spans[m] > spanMax) longMessages.push(m);
  }
  function lostSpanTime() {
    const options = model.meta.options || {};
    return Number(options.latency_mean_us) || 300;
  }
  const orderedPositions = () => eventPos; // events are sorted by time

  // ---------------------------------------------------------------- filters
  const termOf = (m) => M.term[m];
  function messageVisible(m) {
    if (!state.nodes[M.src[m]] || !state.nodes[M.dst[m]] || !state.types[M.type[m]]) {
      return false;
    }
    const flags = M.flags[m];
    if ((flags & LOST) && !state.show.lost) return false;
    if ((flags & DUPLICATE) && !state.show.duplicate) return false;
    if ((flags & (FORGED | UNMATCHED)) && !state.show.forged) return false;
    if (state.instance) {
      const name = model.instances[M.inst[m]];
      if (!(name === state.instance || name.startsWith(state.instance + "/"))) return false;
    }
    if (state.termMin !== null || state.termMax !== null) {
      const term = termOf(m);
      if (term === null || term === undefined) return false;
      if (state.termMin !== null && term < state.termMin) return false;
      if (state.termMax !== null && term > state.termMax) return false;
    }
    return true;
  }
  function eventVisible(i) {
    if (!state.nodes[E.node[i]]) return false;
    if (E.kind[i] === 1 && E.ref[i] >= 0) return messageVisible(E.ref[i]);
    return true;
  }

  // ---------------------------------------------------------------- layout
  let laneX = [];
  function layout() {
    const box = $("canvas-box");
    const ratio = window.devicePixelRatio || 1;
    state.width = box.clientWidth;
    state.height = box.clientHeight;
    canvas.width = Math.max(1, Math.round(state.width * ratio));
    canvas.height = Math.max(1, Math.round(state.height * ratio));
    context.setTransform(ratio, 0, 0, ratio, 0, 0);
    const shown = model.nodes.map((_, node) => node).filter((node) => state.nodes[node]);
    const laneWidth = (state.width - GUTTER - 10) / Math.max(1, shown.length);
    laneX = model.nodes.map(() => NaN);
    shown.forEach((node, index) => { laneX[node] = GUTTER + laneWidth * (index + 0.5); });
    state.laneWidth = laneWidth;
  }
  const yOf = (p) => HEADER + (p - state.top) * state.scale;
  const pOf = (y) => state.top + (y - HEADER) / state.scale;
  function fullRange() {
    if (state.mode === "order") return [0, Math.max(1, distinctTimes.length)];
    const end = Math.max(model.meta.end_us || 0, eventCount ? E.t[eventCount - 1] : 0);
    return [0, Math.max(1, end)];
  }
  function fit() {
    const [low, high] = fullRange();
    state.top = low - (high - low) * 0.01;
    state.scale = (state.height - HEADER - 10) / ((high - low) * 1.02);
    draw();
  }
  function zoom(factor, y) {
    const anchor = pOf(y === undefined ? (HEADER + state.height) / 2 : y);
    state.scale *= factor;
    state.top = anchor - (anchor - state.top) * (1 / factor);
    draw();
  }

  // ---------------------------------------------------------------- drawing
  const typeColor = (type) => PALETTE[type % PALETTE.length];
  let pending = false;
  function draw() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; paint(); });
  }
  function paint() {
    const started = performance.now();
    const low = pOf(HEADER), high = pOf(state.height);
    context.clearRect(0, 0, state.width, state.height);
    paintLanes();
    paintSpans(low, high);
    const messages = visibleMessages(low, high);
    paintMessages(messages);
    const events = paintEvents(low, high);
    paintHighlights();
    paintAxis(low, high);
    paintHeader();
    state.drawn = { events, messages: messages.length,
      ms: Math.round((performance.now() - started) * 10) / 10 };
    $("perf").textContent = `drawn: ${messages.length} arrows, ${events} steps in ` +
      `${state.drawn.ms} ms`;
    $("perf").dataset.arrows = String(messages.length);
    $("perf").dataset.steps = String(events);
    $("perf").dataset.ms = String(state.drawn.ms);
  }
  function paintLanes() {
    context.strokeStyle = "#c9ced6";
    context.lineWidth = 1;
    context.beginPath();
    for (const x of laneX) {
      if (isNaN(x)) continue;
      context.moveTo(x, HEADER);
      context.lineTo(x, state.height);
    }
    context.stroke();
  }
  function paintHeader() {
    context.fillStyle = "#f1f3f5";
    context.fillRect(0, 0, state.width, HEADER);
    context.fillStyle = "#1d232b";
    context.font = "bold 12px system-ui, sans-serif";
    context.textAlign = "center";
    model.nodes.forEach((node, id) => {
      if (isNaN(laneX[id])) return;
      const label = `node ${id}` + (node.byzantine ? " (byz)" : "") +
        (node.logged ? "" : " (no log)");
      context.fillStyle = node.byzantine ? COLOR.forged : "#1d232b";
      context.fillText(label, laneX[id], 19);
    });
    context.textAlign = "left";
  }
  function band(node) {
    const half = Math.min(state.laneWidth * 0.35, 40);
    return [laneX[node] - half, half * 2];
  }
  function paintSpans(low, high) {
    context.font = "11px system-ui, sans-serif";
    for (const [start, end, side, symmetric] of model.partitions) {
      const p0 = position(start), p1 = position(end);
      if (p1 < low || p0 > high) continue;
      const y0 = yOf(p0), y1 = yOf(p1);
      context.fillStyle = COLOR.partition;
      for (const node of side) {
        if (isNaN(laneX[node])) continue;
        const [x, width] = band(node);
        context.fillRect(x, y0, width, y1 - y0);
      }
      context.strokeStyle = "rgba(230,120,0,0.7)";
      context.setLineDash([6, 4]);
      context.beginPath();
      context.moveTo(GUTTER, y0); context.lineTo(state.width, y0);
      context.moveTo(GUTTER, y1); context.lineTo(state.width, y1);
      context.stroke();
      context.setLineDash([]);
      context.fillStyle = "#b35c00";
      context.fillText(`partition {${side.join(",")}} ${symmetric ? "|" : "→|"} rest`,
        GUTTER + 4, Math.max(HEADER + 12, y0 + 12));
    }
    for (const [node, start, end, why] of model.downs) {
      if (isNaN(laneX[node])) continue;
      const p0 = position(start), p1 = position(end);
      if (p1 < low || p0 > high) continue;
      const [x, width] = band(node);
      const y0 = yOf(p0), y1 = Math.max(yOf(p1), y0 + 2);
      context.fillStyle = COLOR.down;
      context.fillRect(x, y0, width, y1 - y0);
      context.fillStyle = "#444";
      context.fillText(`✖ ${why}`, x + 2, Math.max(HEADER + 12, y0 + 12));
    }
    for (const [t, , kind] of model.notes) {
      if (kind !== "liveness") continue;
      const p = position(t);
      if (p < low || p > high) continue;
      const y = yOf(p);
      context.strokeStyle = "#2e7d32";
      context.setLineDash([2, 3]);
      context.beginPath(); context.moveTo(GUTTER, y); context.lineTo(state.width, y);
      context.stroke(); context.setLineDash([]);
      context.fillStyle = "#2e7d32";
      context.fillText("network healed (liveness phase)", GUTTER + 4, y - 3);
    }
    if (state.show.timers) paintTimers(low, high);
  }
  function paintTimers(low, high) {
    context.strokeStyle = "rgba(239,141,0,0.55)";
    context.setLineDash([1, 3]);
    context.beginPath();
    let drawn = 0;
    for (const [node, set, fire] of model.timers) {
      if (isNaN(laneX[node])) continue;
      const p0 = eventPos[set], p1 = eventPos[fire];
      if (p1 < low || p0 > high) continue;
      const x = laneX[node] + 5;
      context.moveTo(x, yOf(p0)); context.lineTo(x, yOf(p1));
      if (++drawn > 20000) break;
    }
    context.stroke();
    context.setLineDash([]);
  }
  function visibleMessages(low, high) {
    const found = [];
    const from = lowerBound(sendPos.length ? sortedSendPositions() : [], low - spanMax);
    for (let k = from; k < messageOrder.length; k++) {
      const m = messageOrder[k];
      if (sendPos[m] > high) break;
      if (recvPos[m] >= low && messageVisible(m)) found.push(m);
    }
    for (const m of longMessages) {
      if (sendPos[m] < low - spanMax && recvPos[m] >= low && messageVisible(m)) found.push(m);
    }
    return found;
  }
  let sortedSends = null;
  function sortedSendPositions() {
    if (!sortedSends) sortedSends = Float64Array.from(messageOrder, (m) => sendPos[m]);
    return sortedSends;
  }
  const quietLoss = new Set(["in flight at end", "no receiver log"]);
  function messageStyle(m) {
    const flags = M.flags[m];
    if (flags & LOST) return quietLoss.has(model.lostReasons[M.reason[m]]) ? "inflight" : "lost";
    if (flags & (FORGED | UNMATCHED)) return "forged";
    if (flags & DUPLICATE) return "duplicate";
    if (flags & REORDERED) return "reordered";
    return "t" + M.type[m];
  }
  function paintMessages(messages) {
    const groups = new Map();
    // Zoomed out, many arrows fall on the same pixels: each distinct one is drawn once.
    const seen = messages.length > 8000 ? new Set() : null;
    for (const m of messages) {
      const style = messageStyle(m);
      const x0 = laneX[M.src[m]], x1 = laneX[M.dst[m]];
      const y0 = yOf(sendPos[m]), y1 = yOf(recvPos[m]);
      if (seen) {
        const key = `${style}|${M.src[m]}|${M.dst[m]}|${Math.round(y0)}|${Math.round(y1)}`;
        if (seen.has(key)) continue;
        seen.add(key);
      }
      let path = groups.get(style);
      if (!path) { path = new Path2D(); groups.set(style, path); }
      if (M.flags[m] & LOST) {
        const x = x0 + (x1 - x0) * 0.45, y = y0 + (y1 - y0) * 0.45 + 6;
        path.moveTo(x0, y0); path.lineTo(x, y);
        if (style === "lost") {
          path.moveTo(x - 4, y - 4); path.lineTo(x + 4, y + 4);
          path.moveTo(x - 4, y + 4); path.lineTo(x + 4, y - 4);
        }
      } else {
        path.moveTo(x0, y0); path.lineTo(x1, y1);
        if (messages.length < 4000) arrowHead(path, x0, y0, x1, y1);
      }
    }
    const thin = messages.length > 20000;
    context.globalAlpha = thin ? 0.45 : 0.85;
    for (const [style, path] of groups) {
      const named = COLOR[style];
      context.strokeStyle = named || typeColor(Number(style.slice(1)));
      context.lineWidth = style === "reordered" ? 1.8 : 1;
      if (style === "duplicate" || style === "forged") context.setLineDash([5, 3]);
      if (style === "inflight") context.setLineDash([2, 3]);
      context.stroke(path);
      context.setLineDash([]);
    }
    context.globalAlpha = 1;
    context.lineWidth = 1;
  }
  function arrowHead(path, x0, y0, x1, y1) {
    const angle = Math.atan2(y1 - y0, x1 - x0), size = 6;
    path.moveTo(x1, y1);
    path.lineTo(x1 - size * Math.cos(angle - 0.4), y1 - size * Math.sin(angle - 0.4));
    path.moveTo(x1, y1);
    path.lineTo(x1 - size * Math.cos(angle + 0.4), y1 - size * Math.sin(angle + 0.4));
  }
  let visibleEvents = [];
  function paintEvents(low, high) {
    const positions = orderedPositions();
    const from = lowerBound(positions, low), to = lowerBound(positions, high + 1e-9);
    visibleEvents = [];
    const dense = to - from > 30000;
    let lastDot = -1;
    const labels = to - from < 400;
    context.font = "10px system-ui, sans-serif";
    for (let i = from; i < to; i++) {
      if (!eventVisible(i)) continue;
      visibleEvents.push(i);
      const x = laneX[E.node[i]], y = yOf(positions[i]);
      const kind = E.kind[i], flags = E.flags[i];
      if (dense) {
        const key = E.node[i] * 100000 + Math.round(y);
        if (kind === 1 && key === lastDot) continue;
        lastDot = key;
        context.fillStyle = kind === 1 ? "#56606d" : kindColor(kind);
        context.fillRect(x - 1, y - 1, 2, 2);
        continue;
      }
      context.fillStyle = kind === 1 ? typeColor(M.type[E.ref[i]] || 0) : kindColor(kind);
      if (kind === 2) triangle(x, y); else if (kind === 3) context.fillRect(x - 3, y - 3, 6, 6);
      else if (kind === 0) context.fillRect(x - 8, y - 2, 16, 4);
      else { context.beginPath(); context.arc(x, y, 2.6, 0, 6.3); context.fill(); }
      if ((flags & HAS_OUTPUTS) && state.show.outputs) outputMark(i, x, y, labels);
      if ((flags & HAS_CHOICES) && state.show.choices) {
        context.strokeStyle = COLOR.choice;
        context.beginPath(); context.arc(x, y, 5.5, 0, 6.3); context.stroke();
      }
      if (flags & VIOLATION) {
        context.strokeStyle = COLOR.chain; context.lineWidth = 3;
        context.beginPath(); context.arc(x, y, 10, 0, 6.3); context.stroke();
        context.lineWidth = 1;
      }
    }
    return visibleEvents.length;
  }
  function kindColor(kind) {
    return [COLOR.start, "#56606d", COLOR.timer, COLOR.request][kind];
  }
  function triangle(x, y) {
    context.beginPath();
    context.moveTo(x, y - 4); context.lineTo(x + 4, y + 3); context.lineTo(x - 4, y + 3);
    context.closePath(); context.fill();
  }
  function outputMark(i, x, y, labels) {
    context.fillStyle = COLOR.output;
    context.beginPath();
    context.moveTo(x + 6, y - 5); context.lineTo(x + 11, y); context.lineTo(x + 6, y + 5);
    context.lineTo(x + 1, y); context.closePath(); context.fill();
    if (!labels) return;
    const detail = model.details[i] || {};
    const names = (detail.outputs || []).map((p) => outputLabel(model.payloads[p]));
    context.fillStyle = "#6b5200";
    context.fillText(names.join(", ").slice(0, 60), x + 13, y + 3);
  }
  function outputLabel(payload) {
    if (!payload || typeof payload !== "object") return String(payload);
    const fields = Object.entries(payload).filter(([key]) => key !== "type").slice(0, 3)
      .map(([, value]) => JSON.stringify(value).slice(0, 14));
    return `${payload.type} ${fields.join(" ")}`;
  }
  function paintHighlights() {
    if (state.past) {
      context.fillStyle = COLOR.past;
      for (const i of visibleEvents) {
        if (!state.past.has(i)) continue;
        context.beginPath(); context.arc(laneX[E.node[i]], yOf(eventPos[i]), 4, 0, 6.3);
        context.fill();
      }
    }
    context.strokeStyle = COLOR.chain;
    context.lineWidth = 3;
    context.beginPath();
    for (const m of state.chainMessages) {
      if (isNaN(laneX[M.src[m]]) || isNaN(laneX[M.dst[m]])) continue;
      context.moveTo(laneX[M.src[m]], yOf(sendPos[m]));
      context.lineTo(laneX[M.dst[m]], yOf(recvPos[m]));
    }
    for (const i of state.chain) {
      if (isNaN(laneX[E.node[i]])) continue;
      const x = laneX[E.node[i]], y = yOf(eventPos[i]);
      context.moveTo(x + 5, y); context.arc(x, y, 5, 0, 6.3);
    }
    context.stroke();
    const selected = state.selected;
    if (selected) {
      context.strokeStyle = COLOR.selected;
      context.lineWidth = 2.5;
      context.beginPath();
      if (selected.kind === "m") {
        const m = selected.index;
        context.moveTo(laneX[M.src[m]], yOf(sendPos[m]));
        context.lineTo(laneX[M.dst[m]], yOf(recvPos[m]));
      } else {
        const i = selected.index;
        context.arc(laneX[E.node[i]], yOf(eventPos[i]), 7, 0, 6.3);
      }
      context.stroke();
    }
    context.lineWidth = 1;
  }
  function paintAxis(low, high) {
    context.fillStyle = "#fbfbfa";
    context.fillRect(0, HEADER, GUTTER - 8, state.height);
    context.fillStyle = "#5b6472";
    context.strokeStyle = "#e3e6ea";
    context.font = "11px system-ui, sans-serif";
    const span = high - low;
    const step = niceStep(span / Math.max(2, state.height / 70));
    for (let p = Math.ceil(low / step) * step; p <= high; p += step) {
      const y = yOf(p);
      context.fillText(axisLabel(p), 4, y + 4);
      context.beginPath(); context.moveTo(GUTTER - 6, y); context.lineTo(state.width, y);
      context.stroke();
    }
  }
  function niceStep(raw) {
    const power = Math.pow(10, Math.floor(Math.log10(Math.max(raw, 1e-9))));
    for (const factor of [1, 2, 5, 10]) if (power * factor >= raw) return power * factor;
    return power * 10;
  }
  function axisLabel(p) {
    if (state.mode === "order") return `#${Math.round(p)}`;
    if (Math.abs(p) >= 1e6) return `${(p / 1e6).toFixed(3)} s`;
    if (Math.abs(p) >= 1e3) return `${(p / 1e3).toFixed(2)} ms`;
    return `${Math.round(p)} µs`;
  }

  // ---------------------------------------------------------------- selection
  function select(kind, index) {
    state.selected = { kind, index };
    state.past = null;
    showDetails();
    draw();
  }
  function jump(kind, index) {
    const p = kind === "m" ? sendPos[index] : eventPos[index];
    state.top = p - (state.height - HEADER) / 3 / state.scale;
    select(kind, index);
  }
  function messageFacts(m) {
    const flags = M.flags[m];
    const facts = [];
    if (flags & LOST) facts.push(`not delivered (${model.lostReasons[M.reason[m]]})`);
    if (flags & DUPLICATE) facts.push("duplicate delivery");
    if (flags & REORDERED) facts.push("reordered (overtaken on its link)");
    if (flags & FORGED) facts.push("forged by the Byzantine sender's adversary");
    if (flags & UNMATCHED) facts.push("no matching send in the logs");
    return {
      message: m, from: M.src[m], to: M.dst[m], type: model.types[M.type[m]],
      instance: model.instances[M.inst[m]] || undefined,
      term: M.term[m] === null ? undefined : M.term[m],
      sent_us: M.t0[m], delivered_us: M.t1[m] >= 0 ? M.t1[m] : undefined,
      latency_us: M.t1[m] >= 0 ? M.t1[m] - M.t0[m] : undefined,
      status: facts.length ? facts : ["delivered"],
      fields: model.payloads[M.payload[m]],
    };
  }
  function eventFacts(i) {
    const detail = model.details[i] || {};
    const facts = { step: i, time_us: E.t[i], node: E.node[i], incarnation: E.inc[i],
      input: KIND[E.kind[i]] };
    if (E.kind[i] === 1 && E.ref[i] >= 0) facts.message = messageFacts(E.ref[i]);
    if (E.kind[i] === 2) facts.timer = E.ref[i];
    if (detail.request !== undefined) facts.request = model.payloads[detail.request];
    for (const key of ["recovered_keys", "start", "choices", "persists", "timers_set",
      "timers_cancelled"]) if (detail[key] !== undefined) facts[key] = detail[key];
    if (detail.outputs) facts.outputs = detail.outputs.map((p) => model.payloads[p]);
    if (E.sendCount[i]) {
      facts.sends = [];
      for (let m = E.sendFirst[i]; m < E.sendFirst[i] + E.sendCount[i]; m++) {
        facts.sends.push(`→ node ${M.dst[m]}: ${model.types[M.type[m]]}` +
          (M.flags[m] & LOST ? " (not delivered)" : ""));
      }
    }
    const violations = model.violations.filter((v) => v.event === i);
    if (violations.length) facts.violations = violations.map((v) => `${v.property}: ${v.detail}`);
    return facts;
  }
  function button(label, action) {
    const element = document.createElement("button");
    element.textContent = label;
    element.addEventListener("click", action);
    $("details-actions").appendChild(element);
  }
  function showDetails() {
    const selected = state.selected;
    $("details-actions").textContent = "";
    if (!selected) return;
    let facts;
    if (selected.kind === "m") {
      const m = selected.index;
      facts = messageFacts(m);
      $("details-title").textContent = `Message ${m}: ${facts.type}`;
      if (M.send[m] >= 0) button("sending step", () => jump("e", M.send[m]));
      if (M.recv[m] >= 0) button("receiving step", () => jump("e", M.recv[m]));
    } else {
      const i = selected.index;
      facts = eventFacts(i);
      $("details-title").textContent = `Step ${i}: node ${E.node[i]}, ${KIND[E.kind[i]]}`;
      if (E.kind[i] === 1 && E.ref[i] >= 0) button("message", () => jump("m", E.ref[i]));
      button("causal past", () => { state.past = causalPast(i); draw(); });
      button("previous on lane", () => stepOnLane(i, -1));
      button("next on lane", () => stepOnLane(i, 1));
    }
    $("details-body").textContent = JSON.stringify(facts, null, 1);
  }
  function stepOnLane(i, direction) {
    for (let k = i + direction; k >= 0 && k < eventCount; k += direction) {
      if (E.node[k] === E.node[i]) { jump("e", k); return; }
    }
  }
  let previousOnLane = null;
  function causalPast(i) {
    if (!previousOnLane) {
      previousOnLane = new Int32Array(eventCount).fill(-1);
      const last = new Map();
      for (let k = 0; k < eventCount; k++) {
        previousOnLane[k] = last.has(E.node[k]) ? last.get(E.node[k]) : -1;
        last.set(E.node[k], k);
      }
    }
    const seen = new Set([i]), stack = [i];
    while (stack.length) {
      const k = stack.pop();
      const before = [previousOnLane[k]];
      if (E.kind[k] === 1 && E.ref[k] >= 0) before.push(M.send[E.ref[k]]);
      for (const j of before) if (j >= 0 && !seen.has(j)) { seen.add(j); stack.push(j); }
    }
    return seen;
  }
  function hit(x, y) {
    let best = null, bestDistance = 7;
    for (const i of visibleEvents) {
      const distance = Math.hypot(laneX[E.node[i]] - x, yOf(eventPos[i]) - y);
      if (distance < bestDistance) { best = { kind: "e", index: i }; bestDistance = distance; }
    }
    if (best) return best;
    bestDistance = 5;
    for (const m of visibleMessages(pOf(y - 200), pOf(y + 200))) {
      const distance = segmentDistance(x, y, laneX[M.src[m]], yOf(sendPos[m]),
        laneX[M.dst[m]], yOf(recvPos[m]));
      if (distance < bestDistance) { best = { kind: "m", index: m }; bestDistance = distance; }
    }
    return best;
  }
  function segmentDistance(x, y, x0, y0, x1, y1) {
    const dx = x1 - x0, dy = y1 - y0, length = dx * dx + dy * dy;
    const t = length ? Math.max(0, Math.min(1, ((x - x0) * dx + (y - y0) * dy) / length)) : 0;
    return Math.hypot(x - (x0 + t * dx), y - (y0 + t * dy));
  }

  // ---------------------------------------------------------------- controls
  function checkbox(parent, label, checked, color, count, onChange) {
    const element = document.createElement("label");
    const input = document.createElement("input");
    input.type = "checkbox"; input.checked = checked;
    input.addEventListener("change", () => onChange(input.checked));
    element.appendChild(input);
    if (color) {
      const swatch = document.createElement("span");
      swatch.className = "swatch"; swatch.style.background = color;
      element.appendChild(swatch);
    }
    element.appendChild(document.createTextNode(label + " "));
    if (count !== undefined) {
      const number = document.createElement("span");
      number.className = "count"; number.textContent = String(count);
      element.appendChild(number);
    }
    parent.appendChild(element);
    return input;
  }
  const typeInputs = [];
  function buildControls() {
    model.nodes.forEach((node, id) => checkbox($("node-filter"),
      `node ${id}` + (node.byzantine ? " (Byzantine)" : ""), state.nodes[id], null, undefined,
      (on) => { state.nodes[id] = on; layout(); draw(); }));
    const typeCounts = model.types.map(() => 0);
    for (let m = 0; m < messageCount; m++) typeCounts[M.type[m]]++;
    model.types.forEach((name, id) => {
      if (!typeCounts[id]) return;
      typeInputs[id] = checkbox($("type-filter"), name, state.types[id], typeColor(id),
        typeCounts[id], (on) => { state.types[id] = on; draw(); });
    });
    const setAll = (on) => {
      state.types = state.types.map(() => on);
      typeInputs.forEach((input) => { if (input) input.checked = on; });
      draw();
    };
    $("types-all").addEventListener("click", () => setAll(true));
    $("types-none").addEventListener("click", () => setAll(false));
    for (const name of model.instances.slice(0, 2000)) {
      if (!name) continue;
      const option = document.createElement("option");
      option.value = name; $("instance-list").appendChild(option);
    }
    $("instance-filter").value = state.instance;
    $("instance-filter").addEventListener("input", (event) => {
      state.instance = event.target.value.trim(); draw();
    });
    const readTerm = () => {
      const low = $("term-min").value, high = $("term-max").value;
      state.termMin = low === "" ? null : Number(low);
      state.termMax = high === "" ? null : Number(high);
      draw();
    };
    $("term-min").addEventListener("input", readTerm);
    $("term-max").addEventListener("input", readTerm);
    const labels = { lost: "lost messages", duplicate: "duplicates", forged: "forged",
      timers: "timer spans", outputs: "outputs", choices: "choice points" };
    for (const key of Object.keys(labels)) {
      checkbox($("show-filter"), labels[key], state.show[key], null, undefined,
        (on) => { state.show[key] = on; draw(); });
    }
    $("mode").value = state.mode;
    $("mode").addEventListener("change", (event) => setMode(event.target.value));
    $("zoom-in").addEventListener("click", () => zoom(2));
    $("zoom-out").addEventListener("click", () => zoom(0.5));
    $("zoom-fit").addEventListener("click", fit);
    buildLegend();
    buildViolations();
  }
  function setMode(mode) {
    const anchor = state.selected && state.selected.kind === "e" ? state.selected.index : null;
    state.mode = mode;
    sortedSends = null;
    computePositions();
    fit();
    if (anchor !== null) jump("e", anchor);
  }
  function buildLegend() {
    const rows = [
      [COLOR.lost, "✕ lost / not delivered"], [COLOR.inflight, "in flight at the end"],
      [COLOR.duplicate, "duplicate delivery"],
      [COLOR.reordered, "reordered (overtaken)"], [COLOR.forged, "forged / unmatched"],
      [COLOR.timer, "▲ timer fired (dotted: armed)"], [COLOR.request, "■ client request"],
      [COLOR.start, "▬ start / restart"], [COLOR.output, "◆ output"],
      [COLOR.choice, "○ choice point"], [COLOR.chain, "◯ violation and its chain"],
      ["rgba(90,90,90,0.5)", "node down"], ["rgba(255,152,0,0.5)", "partitioned side"],
    ];
    for (const [color, text] of rows) {
      const row = document.createElement("div");
      row.innerHTML = `<span class="swatch" style="background:${color}"></span>`;
      row.appendChild(document.createTextNode(text));
      $("legend-body").appendChild(row);
    }
  }
  function buildViolations() {
    if (!model.violations.length) return;
    $("violations-box").classList.add("has");
    model.violations.forEach((violation, index) => {
      const item = document.createElement("li");
      item.textContent = `${violation.property}` +
        (violation.node !== null && violation.node !== undefined ? ` at node ${violation.node}` : "") +
        (violation.time_us !== null && violation.time_us !== undefined ?
          `, t=${violation.time_us} µs` : "") + `: ${violation.detail}`;
      item.dataset.event = String(violation.event);
      item.addEventListener("click", () => showViolation(index));
      $("violations").appendChild(item);
    });
  }
  function showViolation(index) {
    const violation = model.violations[index];
    state.chain = new Set(violation.chain);
    state.chainMessages = new Set();
    for (const i of violation.chain) {
      if (E.kind[i] === 1 && E.ref[i] >= 0) state.chainMessages.add(E.ref[i]);
    }
    if (violation.event >= 0) jump("e", violation.event); else draw();
  }
  function summarize() {
    let lost = 0, duplicate = 0, reordered = 0, forged = 0;
    for (let m = 0; m < messageCount; m++) {
      const flags = M.flags[m];
      if (flags & LOST) lost++;
      if (flags & DUPLICATE) duplicate++;
      if (flags & REORDERED) reordered++;
      if (flags & (FORGED | UNMATCHED)) forged++;
    }
    const summary = $("summary");
    summary.textContent = `${model.nodes.length} nodes, ${eventCount} steps, ` +
      `${messageCount} messages (${lost} lost, ${duplicate} duplicates, ${reordered} ` +
      `reordered, ${forged} forged), ${model.downs.length} down spans, ` +
      `${model.partitions.length} partitions, ${model.violations.length} violations`;
    Object.assign(summary.dataset, { steps: eventCount, messages: messageCount, lost,
      duplicates: duplicate, reordered, forged, violations: model.violations.length });
  }

  // ---------------------------------------------------------------- input
  let drag = null;
  canvas.addEventListener("mousedown", (event) => {
    drag = { y: event.offsetY, top: state.top, moved: false };
  });
  window.addEventListener("mousemove", (event) => {
    if (!drag) return;
    const dy = event.clientY - canvas.getBoundingClientRect().top - drag.y;
    if (Math.abs(dy) > 3) drag.moved = true;
    state.top = drag.top - dy / state.scale;
    draw();
  });
  window.addEventListener("mouseup", (event) => {
    if (drag && !drag.moved && event.target === canvas) {
      const found = hit(event.offsetX, event.offsetY);
      if (found) select(found.kind, found.index);
    }
    drag = null;
  });
  canvas.addEventListener("wheel", (event) => {
    event.preventDefault();
    if (event.ctrlKey || event.metaKey) zoom(event.deltaY < 0 ? 1.25 : 0.8, event.offsetY);
    else { state.top += event.deltaY / state.scale; draw(); }
  }, { passive: false });
  window.addEventListener("keydown", (event) => {
    if (event.target instanceof HTMLInputElement) return;
    if (event.key === "+" || event.key === "=") zoom(1.5);
    else if (event.key === "-") zoom(1 / 1.5);
    else if (event.key === "0") fit();
  });
  window.addEventListener("resize", () => {
    // Keep the same stretch of time in view (a taller window shows it larger).
    const low = pOf(HEADER), high = pOf(state.height);
    layout();
    if (high > low && state.height > HEADER) state.scale = (state.height - HEADER) / (high - low);
    draw();
  });

  // ---------------------------------------------------------------- start
  function applyFragment() {
    const params = new URLSearchParams(location.hash.slice(1));
    if (params.get("mode") === "order") state.mode = "order";
    if (params.has("node")) {
      const wanted = new Set(params.get("node").split(",").map(Number));
      state.nodes = state.nodes.map((_, id) => wanted.has(id));
    }
    if (params.has("type")) {
      const wanted = new Set(params.get("type").split(","));
      state.types = model.types.map((name) => wanted.has(name));
    }
    if (params.has("inst")) state.instance = params.get("inst");
    if (params.has("term")) {
      const [low, high] = params.get("term").split("-");
      state.termMin = low === "" ? null : Number(low);
      state.termMax = high === undefined ? state.termMin : (high === "" ? null : Number(high));
      $("term-min").value = state.termMin === null ? "" : String(state.termMin);
      $("term-max").value = state.termMax === null ? "" : String(state.termMax);
    }
    if (params.get("lost") === "0") state.show.lost = false;
    return params;
  }
  function start() {
    const params = applyFragment();
    summarize();
    buildControls();
    computePositions();
    layout();
    fit();
    if (params.has("t")) {
      const [low, high] = params.get("t").split("-").map(Number);
      state.top = position(low);
      state.scale = (state.height - HEADER) / Math.max(1e-9, position(high) - position(low));
    }
    if (params.has("violation")) showViolation(Number(params.get("violation")));
    const selected = params.get("select");
    if (selected) jump(selected[0] === "m" ? "m" : "e", Number(selected.slice(1)));
    paint();
    if (params.has("bench")) bench(Number(params.get("bench")) || 20);
    document.body.dataset.ready = "1";
  }
  // #bench=N: N frames scrolled through the whole run at the current zoom, timed
  // (bench/bench_viz.py reads the figures off #perf).
  function bench(frames) {
    const [low, high] = fullRange();
    const window = (state.height - HEADER) / state.scale;
    const times = [], arrows = [];
    for (let k = 0; k < frames; k++) {
      state.top = low + (high - low - window) * (k / Math.max(1, frames - 1));
      paint();
      times.push(state.drawn.ms);
      arrows.push(state.drawn.messages);
    }
    times.sort((a, b) => a - b);
    Object.assign($("perf").dataset, { benchFrames: frames,
      benchMedianMs: times[Math.floor(frames / 2)], benchMaxMs: times[frames - 1],
      benchArrowsMax: Math.max(...arrows), benchArrowsTotal: arrows.reduce((a, b) => a + b) });
  }
  start();
})();
