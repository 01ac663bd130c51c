// The operator page (fonana_realtime/web/admin.py): polls /admin/data/overview every
// POLL_MS with the session cookie, plots connections and deliveries/publishes per second
// over the last WINDOW_S seconds with uPlot, and drives the user and channel inspectors.
// State is on window.fonanaAdmin (the browser tests read it).
"use strict";

const POLL_MS = 2000;
const WINDOW_S = 600;
const ACT = { "Content-Type": "application/json", "X-Fonana-Admin": "1" };

const state = window.fonanaAdmin = {
  polls: 0, errors: 0, last: null,
  t: [], connections: [], deliveries: [], publishes: [],
  user: null, channel: null,
};

const $ = (id) => document.getElementById(id);

function text(el, value) { el.textContent = value === undefined || value === null ? "–" : String(value); }

function rows(tbody, items, cells) {
  tbody.replaceChildren(...items.map((item) => {
    const tr = document.createElement("tr");
    for (const [value, cls] of cells(item)) {
      const td = document.createElement("td");
      td.textContent = value;
      if (cls) td.className = cls;
      tr.appendChild(td);
    }
    return tr;
  }));
}

function plot(el, series) {
  return new uPlot({
    width: Math.max(300, el.clientWidth || 500), height: 220,
    scales: { x: { time: true } },
    series: [{}, ...series.map(([label, stroke]) => ({ label, stroke, width: 2 }))],
    axes: [{}, { size: 60 }],
  }, [[], ...series.map(() => [])], el);
}

let connPlot = null;
let ratePlot = null;

function trim() {
  const oldest = state.t.length ? state.t[state.t.length - 1] - WINDOW_S : 0;
  while (state.t.length && state.t[0] < oldest) {
    for (const k of ["t", "connections", "deliveries", "publishes"]) state[k].shift();
  }
}

function record(data) {
  const totals = data.totals;
  const prev = state.last;
  let deliveries = 0;
  let publishes = 0;
  if (prev) {
    const dt = Math.max(0.001, data.now - prev.now);
    // a worker that restarted counts from 0 again: never a negative rate
    deliveries = Math.max(0, (totals.deliveries - prev.totals.deliveries) / dt);
    publishes = Math.max(0, (totals.published - prev.totals.published) / dt);
  }
  state.last = data;
  state.t.push(data.now);
  state.connections.push(totals.connections);
  state.deliveries.push(deliveries);
  state.publishes.push(publishes);
  trim();
  connPlot.setData([state.t, state.connections]);
  ratePlot.setData([state.t, state.deliveries, state.publishes]);
}

function show(data) {
  text($("total-connections"), data.totals.connections);
  text($("total-hosts"), data.hosts);
  text($("total-workers"), data.workers.length);
  text($("total-subscriptions"), data.totals.subscriptions);
  text($("total-slow"), data.totals.slowConsumerCloses);
  text($("total-recoveries"), data.totals.recoveries);
  rows($("workers").tBodies[0], data.workers, (w) => [
    [w.host], [w.pid], [w.connections], [w.subscriptions], [w.deliveries], [w.broker],
    [w.brokerLink, w.brokerLink === "ok" ? "" : "link-bad"],
  ]);
  rows($("channels").tBodies[0], data.channels, (c) => [[c.channel], [c.connections]]);
}

async function poll() {
  try {
    const r = await fetch("/admin/data/overview", { credentials: "same-origin", cache: "no-store" });
    if (r.status === 401) { location.reload(); return; }
    if (!r.ok) throw new Error(`overview: HTTP ${r.status}`);
    const data = await r.json();
    record(data);
    show(data);
    state.polls += 1;
    text($("status"), `live · ${new Date(data.now * 1000).toLocaleTimeString()}`);
    $("status").className = "";
  } catch (err) {
    state.errors += 1;
    text($("status"), `not answering: ${err.message}`);
    $("status").className = "bad";
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

async function lookUpUser(event) {
  if (event) event.preventDefault();
  const id = $("user-id").value.trim();
  const r = await fetch(`/admin/data/user?userId=${encodeURIComponent(id)}`, { credentials: "same-origin" });
  const body = await r.json();
  if (!r.ok) { text($("user-message"), body.reason || body.error); $("user-actions").hidden = true; return; }
  state.user = body;
  $("user-actions").hidden = false;
  text($("user-message"), `${body.connections.length} connection(s) of ${body.userId}`);
  rows($("user-connections").tBodies[0], body.connections, (c) => [
    [c.host], [c.worker], [c.connectionId], [c.protocol], [c.channels.join(", ")],
    [new Date(c.connectedSince * 1000).toLocaleString()], [c.clientAddress],
  ]);
}

async function act(path, what) {
  const id = $("user-id").value.trim();
  if (!id) return;
  const r = await fetch(path, { method: "POST", credentials: "same-origin", headers: ACT,
                                body: JSON.stringify({ userId: id }) });
  const body = await r.json();
  text($("user-message"), r.ok ? `${what}: done for ${id}` : `${what} refused: ${body.reason || body.error}`);
  if (r.ok) setTimeout(lookUpUser, 1500);
}

async function lookUpChannel(event) {
  event.preventDefault();
  const key = $("channel-key").value.trim();
  const r = await fetch(`/admin/data/channel?key=${encodeURIComponent(key)}`, { credentials: "same-origin" });
  const body = await r.json();
  if (!r.ok) { text($("channel-message"), body.reason || body.error); return; }
  state.channel = body;
  text($("channel-message"), `${body.connections} connection(s), ${body.users.length} user(s) on ${body.channel}`);
  $("channel-users").replaceChildren(...body.users.map((u) => {
    const li = document.createElement("li");
    li.textContent = u;
    return li;
  }));
}

window.addEventListener("DOMContentLoaded", () => {
  connPlot = plot($("plot-connections"), [["connections", "#1e88e5"]]);
  ratePlot = plot($("plot-rates"), [["deliveries/s", "#43a047"], ["publishes/s", "#fb8c00"]]);
  $("user-form").addEventListener("submit", lookUpUser);
  $("user-disconnect").addEventListener("click", () => act("/admin/data/disconnect", "disconnect"));
  $("user-revoke").addEventListener("click", () => act("/admin/data/revoke", "revoke"));
  $("channel-form").addEventListener("submit", lookUpChannel);
  poll();
});
