// WebFones Relay operator dashboard: plain JavaScript, no build step, no third-party code.
// Talks only to this relay's admin API; state-changing requests carry the session's CSRF token.
"use strict";

const state = { csrf: null, timer: null, history: new Array(60).fill(0), lastDelivered: null, since: null };
const $ = (id) => document.getElementById(id);

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

async function api(method, path, body) {
  const headers = {};
  if (method !== "GET") {
    headers["Content-Type"] = "application/json";
    if (state.csrf) headers["X-CSRF-Token"] = state.csrf;
  }
  const resp = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: method === "GET" || method === "DELETE" ? undefined : JSON.stringify(body ?? {}),
  });
  if (resp.status === 401) { showSignIn(); throw new Error("signed out"); }
  const doc = await resp.json().catch(() => ({}));
  if (!resp.ok && resp.status !== 404) throw new Error(doc.error || `HTTP ${resp.status}`);
  return { status: resp.status, doc };
}

function toast(text) {
  const el = $("toast");
  el.textContent = text;
  el.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.hidden = true; }, 3500);
}

function ago(epoch) {
  if (epoch == null) return "–";
  const s = Math.max(0, Date.now() / 1000 - epoch);
  if (s < 60) return `${Math.round(s)}s ago`;
  if (s < 3600) return `${Math.round(s / 60)}m ago`;
  return `${(s / 3600).toFixed(1)}h ago`;
}

function duration(seconds) {
  if (seconds == null) return "–";
  if (seconds < 90) return `${Math.round(seconds)}s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)}m`;
  return `${(seconds / 3600).toFixed(1)}h`;
}

function every(poller) {
  const s = poller.interval;
  if (!s) return "–";
  const text = s < 10 ? `${s.toFixed(s < 1 ? 2 : 1)}s` : duration(s);
  return poller.interval_auto ? `${text} (auto)` : text;
}

function clock(epoch) {
  return new Date(epoch * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

function pill(kind, text) { return `<span class="pill pill-${kind}">${esc(text)}</span>`; }

function accountPill(status) {
  const kinds = { ok: "ok", backing_off: "warn", rate_limited: "warn", auth_failed: "bad", store_error: "bad" };
  return pill(kinds[status] || "muted", (status || "starting").replace("_", " "));
}

// -- sign-in -----------------------------------------------------------------------------------

function showSignIn() {
  clearInterval(state.timer);
  state.csrf = null;
  $("app").hidden = true;
  $("sign-out").hidden = true;
  $("signin").hidden = false;
  $("token").focus();
}

function showApp() {
  $("signin").hidden = true;
  $("app").hidden = false;
  $("sign-out").hidden = false;
  refresh();
  clearInterval(state.timer);
  state.timer = setInterval(refresh, 3000);
}

async function start() {
  const resp = await fetch("/session", { credentials: "same-origin" });
  const doc = await resp.json();
  if (doc.signed_in) { state.csrf = doc.csrf; showApp(); return; }
  if (!doc.token_required) { await signIn(""); return; }
  showSignIn();
}

async function signIn(token) {
  const resp = await fetch("/session", {
    method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json" }, body: JSON.stringify({ token }),
  });
  const doc = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    $("signin-error").textContent = doc.error || "Sign-in failed";
    $("signin-error").hidden = false;
    return;
  }
  $("signin-error").hidden = true;
  $("token").value = "";
  state.csrf = doc.csrf;
  showApp();
}

// -- rendering ---------------------------------------------------------------------------------

function renderStatus(status) {
  const ready = status.ready;
  $("ready").className = `pill ${ready ? "pill-ok" : "pill-bad"}`;
  $("ready").textContent = ready ? "Ready" : "Not ready";
  $("ready").title = (status.problems || []).join("\n");
  $("updated").textContent = `Updated ${clock(status.at || Date.now() / 1000)}`;

  const names = Object.keys(status.pollers).sort();
  const healthy = names.filter((n) => (status.pollers[n].health || "ok") === "ok").length;
  $("kpi-accounts").textContent = `${healthy} / ${names.length}`;
  $("accounts").innerHTML = names.map((name) => {
    const p = status.pollers[name];
    const stored = status.accounts[name] || {};
    return `<tr data-testid="account-row" data-name="${esc(name)}"><td><b>${esc(name)}</b></td>
      <td title="${esc(p.reason || "")}">${accountPill(p.health || stored.status)}</td>
      <td><code>${esc(stored.cursor || "–")}</code></td><td>${duration(p.lag_seconds)}</td>
      <td title="${p.interval_auto ? "poll_interval: auto" : "poll_interval"}">${every(p)}</td>
      <td>${p.outcomes.ok}</td><td>${p.outcomes.rate_limited}</td><td>${p.ingested}</td></tr>`;
  }).join("");

  const subs = new Set([...Object.keys(status.dispatchers), ...Object.keys(status.subscribers)]);
  let pending = 0, dead = 0, delivered = 0;
  const cards = [...subs].sort().map((name) => {
    const q = status.subscribers[name] || { pending: 0, inflight: 0, delivered: 0, dead: 0 };
    const live = status.dispatchers[name];
    pending += q.pending; dead += q.dead;
    if (live) delivered += live.outcomes.delivered;
    const paused = (q.disabled || "").startsWith("paused");
    let badge = pill("ok", "Active");
    if (!live) badge = pill("muted", "Not in config");
    else if (paused) badge = pill("warn", "Paused");
    else if (q.disabled) badge = pill("bad", `Disabled: ${q.disabled}`);
    else if (live.circuit === "open") badge = pill("bad", "Circuit open");
    const action = !live ? "" : paused || q.disabled
      ? `<button class="btn btn-small" data-act="${q.disabled && !paused ? "enable" : "resume"}" data-name="${esc(name)}">${q.disabled && !paused ? "Enable" : "Resume"}</button>`
      : `<button class="btn btn-small" data-act="pause" data-name="${esc(name)}">Pause</button>`;
    const failing = live && live.last_error && (live.last_delivered_at ?? 0) < (live.last_error_at ?? 0);
    const error = failing ? `<span class="sub-error" title="${esc(live.last_error)}">Last error ${ago(live.last_error_at)}: ${esc(live.last_error)}</span>` : `<span class="muted">${live && live.last_delivered_at ? `Last delivery ${ago(live.last_delivered_at)}` : "No deliveries yet"}</span>`;
    return `<div class="card sub-card" data-testid="subscriber" data-name="${esc(name)}">
      <div class="card-head"><h3>${esc(name)}</h3>${badge}</div>
      <div class="counts">
        <div class="count"><b data-testid="pending">${q.pending}</b><span>Pending</span></div>
        <div class="count"><b>${q.inflight}</b><span>In flight</span></div>
        <div class="count"><b data-testid="delivered">${q.delivered}</b><span>Delivered</span></div>
        <div class="count"><b data-testid="dead">${q.dead}</b><span>Dead</span></div>
      </div>
      <div class="sub-foot">${error}${action}</div></div>`;
  });
  $("subscribers").innerHTML = cards.join("") || `<p class="empty">No subscribers configured.</p>`;
  $("kpi-pending").textContent = pending;
  $("kpi-dead").textContent = dead;

  const now = Date.now() / 1000;
  if (state.lastDelivered !== null) {
    const delta = Math.max(0, delivered - state.lastDelivered.count);
    state.history.push(delta);
    // Over the last minute of refreshes (20 of them, 3 s apart), not just the last one.
    const perMin = state.history.slice(-20).reduce((x, y) => x + y, 0) * 60 / Math.max(3, Math.min(60, now - state.since));
    $("kpi-rate").textContent = perMin.toFixed(perMin < 10 ? 1 : 0);
  }
  state.since = state.since ?? now;
  state.lastDelivered = { count: delivered, at: now };
  state.history = state.history.slice(-60);
  drawChart();
}

function drawChart() {
  const canvas = $("chart");
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  canvas.width = w * ratio; canvas.height = h * ratio;
  const ctx = canvas.getContext("2d");
  ctx.scale(ratio, ratio);
  ctx.clearRect(0, 0, w, h);
  const data = state.history.length ? state.history : [0];
  const max = Math.max(1, ...data);
  ctx.strokeStyle = "#e2e8f0"; ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) { const y = 8 + (h - 24) * i / 4; ctx.beginPath(); ctx.moveTo(0, y); ctx.lineTo(w, y); ctx.stroke(); }
  const step = w / Math.max(1, 59);
  const points = data.map((v, i) => [w - (data.length - 1 - i) * step, 8 + (h - 24) * (1 - v / max)]);
  const grad = ctx.createLinearGradient(0, 0, 0, h);
  grad.addColorStop(0, "rgba(79,70,229,.35)"); grad.addColorStop(1, "rgba(79,70,229,0)");
  ctx.beginPath(); ctx.moveTo(points[0][0], h - 16);
  points.forEach(([x, y]) => ctx.lineTo(x, y));
  ctx.lineTo(points[points.length - 1][0], h - 16); ctx.closePath(); ctx.fillStyle = grad; ctx.fill();
  ctx.beginPath(); points.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
  ctx.strokeStyle = "#4f46e5"; ctx.lineWidth = 2; ctx.stroke();
  ctx.fillStyle = "#64748b"; ctx.font = "11px system-ui"; ctx.fillText(`max ${max}`, 4, h - 2);
}

function renderRecent(rows) {
  $("recent").innerHTML = rows.map((r) => {
    const ok = r.status !== null && r.status >= 200 && r.status < 300;
    const result = ok ? pill("ok", r.status) : pill("bad", r.status ?? (r.error || "error"));
    return `<tr data-testid="recent-row" data-subscriber="${esc(r.subscriber)}" data-status="${esc(r.status ?? "")}">
      <td>${clock(r.at)}</td><td>${esc(r.subscriber)}</td>
      <td><button class="link" data-journey="${esc(r.account)}/${esc(r.rid)}">${esc(r.account)}/${esc(r.rid)}</button></td>
      <td title="${esc(r.error || "")}">${result}</td><td>${Math.round(r.latency_ms)} ms</td></tr>`;
  }).join("");
}

function renderDead(rows) {
  $("dead-empty").hidden = rows.length > 0;
  $("replay-all").disabled = rows.length === 0;
  $("dead").innerHTML = rows.map((d) => `<tr data-testid="dead-row" data-id="${d.id}" data-subscriber="${esc(d.subscriber)}">
      <td>${esc(d.subscriber)}</td>
      <td><button class="link" data-journey="${esc(d.account)}/${esc(d.rid)}">${esc(d.account)}/${esc(d.rid)}</button></td>
      <td>${d.attempts}</td><td class="err" title="${esc(d.last_error || "")}">${esc(d.last_error || "")}</td>
      <td><button class="btn btn-small replay" data-id="${d.id}" data-subscriber="${esc(d.subscriber)}">Replay</button></td></tr>`).join("");
}

async function refresh() {
  try {
    const [status, recent, dead] = await Promise.all([
      api("GET", "/status"), api("GET", "/deliveries/recent?limit=12"), api("GET", "/dead-letters?limit=50"),
    ]);
    renderStatus(status.doc);
    renderRecent(recent.doc);
    renderDead(dead.doc);
  } catch (err) {
    if (err.message !== "signed out") $("updated").textContent = `Cannot reach the relay: ${err.message}`;
  }
}

// -- a call's journey --------------------------------------------------------------------------

function renderJourney(j) {
  const rec = j.record;
  const data = rec && rec.body && rec.body.data ? rec.body.data : {};
  const facts = rec ? `<dl class="kv">
      <dt>Account / rid</dt><dd>${esc(j.account)} / ${esc(j.rid)}</dd>
      <dt>Call time</dt><dd>${esc(rec.call_ts)}</dd>
      <dt>Caller</dt><dd>${esc(data.cidname_outside || "")} ${esc(data.cidnumber_outside || "")}</dd>
      <dt>Direction</dt><dd>${esc(data.direction || "–")} · ${esc(data.disposition || "")}</dd>
      <dt>Received</dt><dd>${new Date(rec.received_at * 1000).toLocaleString()}</dd></dl>`
    : `<p class="muted">Record ${esc(j.account)}/${esc(j.rid)} is not stored.</p>`;
  const quarantine = (j.quarantined || []).map((q) => `<p class="error">Quarantined: ${esc(q.reason)}</p>`).join("");
  const deliveries = (j.deliveries || []).map((d) => `<div class="card">
      <div class="card-head"><h3>${esc(d.subscriber)}</h3>${pill(d.state === "delivered" ? "ok" : d.state === "dead" ? "bad" : "warn", d.state)}</div>
      <p class="muted">webhook-id <code>${esc(d.webhook_id)}</code></p>
      <ol class="timeline">${(d.attempt_log || []).map((a) => `<li class="${a.error ? "bad" : "ok"}">
        ${clock(a.at)} · ${a.status ?? "no answer"} · ${Math.round(a.latency_ms)} ms ${a.error ? `· ${esc(a.error)}` : ""}
        ${a.response ? `<br><code>${esc(a.response)}</code>` : ""}</li>`).join("") || "<li>No attempt yet</li>"}</ol>
      ${d.state === "delivered" || d.state === "dead" ? `<button class="btn btn-small" data-redeliver="${d.id}">Redeliver</button>` : ""}
    </div>`).join("");
  const missing = Object.entries(j.missing || {}).map(([s, why]) => `<li><b>${esc(s)}</b>: ${esc(why)}</li>`).join("");
  $("journey-body").innerHTML = `${facts}${quarantine}<div class="journey-grid">${deliveries}</div>
    ${missing ? `<h3>No delivery</h3><ul>${missing}</ul>` : ""}`;
  $("journey").hidden = false;
}

async function openJourney(key) {
  const [account, rid] = key.split("/");
  const { doc } = await api("GET", `/records/${encodeURIComponent(account)}/${encodeURIComponent(rid)}`);
  renderJourney(doc);
}

async function search(text) {
  const q = text.trim();
  if (!q) return;
  if (q.includes("/")) { await openJourney(q); return; }
  const { doc } = await api("GET", `/records?caller=${encodeURIComponent(q)}&limit=20`);
  let hits = doc;
  if (/^\d+$/.test(q)) {
    const status = await api("GET", "/status");
    for (const account of Object.keys(status.doc.pollers)) {
      const j = await api("GET", `/records/${encodeURIComponent(account)}/${q}`);
      if (j.doc.record) { renderJourney(j.doc); return; }
    }
  }
  if (hits.length === 1) { await openJourney(`${hits[0].account}/${hits[0].rid}`); return; }
  $("journey-body").innerHTML = hits.length
    ? `<table class="table"><thead><tr><th>Call time</th><th>Call</th><th>Caller</th><th>Deliveries</th></tr></thead><tbody>${hits.map((h) => `<tr>
        <td>${esc(h.call_ts)}</td><td><button class="link" data-journey="${esc(h.account)}/${esc(h.rid)}">${esc(h.account)}/${esc(h.rid)}</button></td>
        <td>${esc(h.caller || "")}</td><td>${Object.entries(h.states).map(([s, st]) => `${esc(s)}: ${esc(st)}`).join(", ")}</td></tr>`).join("")}</tbody></table>`
    : `<p class="muted">No stored call matches “${esc(q)}”.</p>`;
  $("journey").hidden = false;
}

// -- actions -----------------------------------------------------------------------------------

document.addEventListener("click", async (event) => {
  const el = event.target.closest("button");
  if (!el) return;
  try {
    if (el.dataset.act) {
      await api("POST", `/subscribers/${encodeURIComponent(el.dataset.name)}/${el.dataset.act}`, {});
      toast(`${el.dataset.name}: ${el.dataset.act === "pause" ? "paused" : "resumed"}`);
    } else if (el.classList.contains("replay")) {
      el.disabled = true;
      const { doc } = await api("POST", "/dead-letters/replay", { subscriber: el.dataset.subscriber, ids: [Number(el.dataset.id)] });
      toast(`Replayed ${doc.replayed} delivery to ${el.dataset.subscriber}`);
    } else if (el.id === "replay-all") {
      const { doc } = await api("POST", "/dead-letters/replay", {});
      toast(`Replayed ${doc.replayed} dead letters`);
    } else if (el.dataset.journey) {
      await openJourney(el.dataset.journey);
      return;
    } else if (el.dataset.redeliver) {
      await api("POST", `/deliveries/${el.dataset.redeliver}/redeliver`, {});
      toast("Redelivery queued (same webhook-id)");
    } else if (el.id === "journey-close") {
      $("journey").hidden = true;
      return;
    } else if (el.id === "sign-out") {
      await api("DELETE", "/session");
      showSignIn();
      return;
    } else {
      return;
    }
    refresh();
  } catch (err) {
    if (err.message !== "signed out") toast(err.message);
  }
});

document.addEventListener("DOMContentLoaded", () => {
  $("signin-form").addEventListener("submit", (e) => { e.preventDefault(); signIn($("token").value); });
  $("search").addEventListener("submit", (e) => { e.preventDefault(); search($("search-input").value).catch((err) => toast(err.message)); });
  start().catch(() => showSignIn());
});
