// Lekiwi Heartbeat dashboard: a single-page application over control's
// REST API (/v1/...) and live stream (/v1/stream). No framework, no build
// step: DOM built with createElement and textContent (never innerHTML with
// data), so robot-supplied strings cannot inject markup.

const TOKEN_KEY = 'lekiwi.token';
const STREAM_PROTOCOL = 'lekiwi.stream.v1';
const TOKEN_PROTOCOL_PREFIX = 'lekiwi.bearer.';
const MAX_SAMPLES = 600;   // telemetry points kept per robot for plots
const MAX_FEED = 200;      // live events kept for the events page
const MAX_ROBOT_PAGES = 20; // GET /v1/robots pages (1,000 each) at most
const DEPLOYMENT_TYPES = ['DeploymentCreated', 'DeploymentBatchStarted', 'DeploymentBatchCompleted',
  'DeploymentRobotDeferred', 'DeploymentRobotUpdateSent', 'DeploymentRobotProgress',
  'DeploymentRobotUpdateResult', 'DeploymentPaused', 'DeploymentResumed', 'DeploymentAborted',
  'DeploymentCompleted', 'DeploymentRollbackStarted', 'DeploymentRolledBack'];

const state = {
  token: sessionStorage.getItem(TOKEN_KEY) || '',
  me: null,
  robots: new Map(),     // id -> robot document (GET /v1/robots/{id})
  samples: new Map(),    // id -> [{t, cpu, mem, disk, temp}]
  feed: [],              // newest first
  deployments: [],
  alerts: null,          // firing alerts (GET /v1/alerts), null without that API
  ws: null,
  wsRetry: 0,
  wsTimer: 0,
  refetch: new Map(),    // robot id -> timer of a pending GET
  deployTimer: 0,
  page: null,            // {name, render, ...} of what is shown
  afterLogin: '/',
};

// ---------- small helpers ----------

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(e.dataset, v);
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function svg(tag, attrs, ...children) {
  const e = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'text') e.textContent = v;
    else e.setAttribute(k, String(v));
  }
  e.append(...children);
  return e;
}

function bytes(n) {
  if (!n) return '0 B';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(n < 10 && i > 0 ? 1 : 0)} ${units[i]}`;
}

function pct(used, total) {
  return total > 0 ? (100 * used) / total : null;
}

function duration(s) {
  if (s === undefined || s === null || !isFinite(s)) return '—';
  s = Math.max(0, Math.floor(s));
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  if (d > 0) return `${d}d ${h}h`;
  if (h > 0) return `${h}h ${m}m`;
  if (m > 0) return `${m}m ${s % 60}s`;
  return `${s}s`;
}

function ago(t) {
  if (!t) return '—';
  const ms = Date.now() - new Date(t).getTime();
  if (!isFinite(ms)) return '—';
  return ms < 1500 ? 'just now' : `${duration(ms / 1000)} ago`;
}

function timeOf(t) {
  const d = new Date(t);
  return isFinite(d.getTime()) ? d.toLocaleTimeString() : '—';
}

let toastTimer = 0;
function toast(msg, ok) {
  const t = document.getElementById('toast');
  t.textContent = msg;
  t.className = ok ? 'toast ok' : 'toast';
  t.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { t.hidden = true; }, 6000);
}

function canDeploy() {
  return state.me && (state.me.role === 'engineer' || state.me.role === 'admin');
}

// ---------- REST ----------

class HTTPError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, opts = {}) {
  const headers = { Authorization: `Bearer ${state.token}` };
  if (opts.body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(path, {
    method: opts.method || 'GET',
    headers,
    body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
    cache: 'no-store',
  });
  let body = null;
  try { body = await res.json(); } catch { /* empty or not JSON */ }
  if (!res.ok) {
    const msg = (body && body.error && body.error.message) || `${res.status} ${res.statusText}`;
    if (res.status === 401 && !opts.login) logout(`Your session ended: ${msg}`);
    throw new HTTPError(res.status, msg);
  }
  return body;
}

// ---------- login ----------

async function login(token) {
  state.token = token.trim();
  try {
    state.me = await api('/v1/whoami', { login: true });
  } catch (e) {
    state.token = '';
    sessionStorage.removeItem(TOKEN_KEY);
    throw e;
  }
  sessionStorage.setItem(TOKEN_KEY, state.token);
  const who = document.getElementById('whoami');
  who.textContent = `${state.me.name} · ${state.me.role}`;
  who.dataset.role = state.me.role;
  for (const id of ['nav', 'whoami', 'logout', 'live']) document.getElementById(id).hidden = false;
  connectStream();
  await loadRobots();
  loadAlerts();
}

function logout(reason) {
  state.token = '';
  state.me = null;
  sessionStorage.removeItem(TOKEN_KEY);
  if (state.ws) { state.ws.onclose = null; state.ws.close(1000, 'logged out'); state.ws = null; }
  clearTimeout(state.wsTimer);
  state.robots.clear();
  state.samples.clear();
  state.feed = [];
  for (const id of ['nav', 'whoami', 'logout', 'live']) document.getElementById(id).hidden = true;
  navigate('/login', true, reason);
}

function renderLogin(reason) {
  const err = el('p', { class: 'error', id: 'login-error', text: reason || '' });
  const input = el('input', { type: 'password', id: 'token', name: 'token', autocomplete: 'off', placeholder: 'lkw_…', required: true });
  const form = el('form', { id: 'login-form' },
    el('label', { for: 'token', text: 'API token' }), input,
    el('button', { type: 'submit', id: 'login-button', text: 'Log in' }), err);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    err.textContent = '';
    try {
      await login(input.value);
      navigate(state.afterLogin || '/', true);
    } catch (e) {
      err.textContent = `Login failed: ${e.message}`;
    }
  });
  show('login', el('div', { class: 'login card' },
    el('h1', { text: 'Log in' }),
    el('p', { class: 'muted', text: 'Paste a control API token (control token create). It is kept in this tab only.' }),
    form));
  input.focus();
}

// ---------- live stream ----------

function b64url(s) {
  const bin = String.fromCharCode(...new TextEncoder().encode(s));
  return btoa(bin).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

function setLive(s, text) {
  const live = document.getElementById('live');
  live.dataset.state = s;
  live.textContent = text;
}

function connectStream() {
  if (!state.token) return;
  const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/v1/stream`;
  let ws;
  try {
    ws = new WebSocket(url, [STREAM_PROTOCOL, TOKEN_PROTOCOL_PREFIX + b64url(state.token)]);
  } catch (e) {
    setLive('closed', 'offline');
    toast(`Live updates unavailable: ${e.message}`);
    return;
  }
  state.ws = ws;
  setLive('connecting', 'connecting…');
  ws.onopen = () => {
    state.wsRetry = 0;
    const send = (o) => ws.send(JSON.stringify(o));
    send({ type: 'subscribe', id: 'heartbeat', topics: ['robot.*.heartbeat'], throttle: { rate: 1, strategy: 'latest' } });
    send({ type: 'subscribe', id: 'telemetry', topics: ['robot.*.telemetry'], throttle: { rate: 1, strategy: 'latest' } });
    send({ type: 'subscribe', id: 'changes', topics: ['robot.*.presence', 'robot.*.event', 'robot.*.command', 'alert.>'] });
    send({ type: 'subscribe', id: 'deployments', topics: ['deployment.*.progress', ...DEPLOYMENT_TYPES.map((t) => `log.${t}`)] });
  };
  ws.onmessage = (ev) => {
    let f;
    try { f = JSON.parse(ev.data); } catch { return; }
    onFrame(f);
  };
  ws.onclose = (ev) => {
    if (state.ws !== ws) return;
    state.ws = null;
    setLive('closed', 'offline');
    if (!state.token) return;
    // Back off 1, 2, 4 … 15 s; a policy close (bad token) logs out.
    if (ev.code === 1008 && /token|auth/i.test(ev.reason)) { logout(ev.reason); return; }
    const delay = Math.min(15000, 1000 * 2 ** state.wsRetry++);
    state.wsTimer = setTimeout(() => { connectStream(); loadRobots().catch(() => {}); }, delay);
  };
}

function onFrame(f) {
  switch (f.type) {
    case 'subscribed':
      if (f.id === 'deployments') setLive('open', 'live');
      return;
    case 'error':
      toast(`Live stream refused subscription ${f.id || ''}: ${f.message}`);
      return;
    case 'lagging':
      setLive('lagging', 'live (behind)');
      return;
    case 'caught_up':
      setLive('open', 'live');
      return;
    case 'message':
    case 'aggregate':
      break;
    default:
      return;
  }
  const id = f.robot_id;
  switch (f.sub) {
    case 'heartbeat': onHeartbeat(id, f); break;
    case 'telemetry': onTelemetry(id, f); break;
    case 'changes':
      addFeed(f);
      if (id) scheduleRobot(id);
      if (f.topic && f.topic.startsWith('alert.')) scheduleAlerts();
      break;
    case 'deployments':
      addFeed(f);
      scheduleDeployments();
      break;
  }
}

function onHeartbeat(id, f) {
  const r = state.robots.get(id);
  if (!r) { scheduleRobot(id); return; }
  const d = f.data || {};
  r.status = Object.assign({}, r.status, { state: 'online', connected: true, last_seen: f.time, uptime_seconds: d.uptime_seconds, node: d.node || r.status.node });
  robotChanged(id);
}

function onTelemetry(id, f) {
  const d = f.data || {};
  addSample(id, f.time, d.resources);
  const r = state.robots.get(id);
  if (!r) { scheduleRobot(id); return; }
  if (d.resources) r.resources = d.resources;
  if (d.network) r.network = d.network;
  if (d.uptime_seconds !== undefined) r.status = Object.assign({}, r.status, { uptime_seconds: d.uptime_seconds, last_seen: f.time });
  robotChanged(id);
}

function addSample(id, t, res) {
  if (!res) return;
  let s = state.samples.get(id);
  if (!s) { s = []; state.samples.set(id, s); }
  const ts = new Date(t).getTime();
  if (s.length && s[s.length - 1].t >= ts) return; // keep time order; drop duplicates
  s.push({
    t: ts,
    cpu: res.cpu_percent,
    mem: pct(res.memory_used_bytes, res.memory_total_bytes),
    disk: pct(res.disk_used_bytes, res.disk_total_bytes),
    temp: res.temperature_c ?? null,
  });
  if (s.length > MAX_SAMPLES) s.splice(0, s.length - MAX_SAMPLES);
}

// mergeSamples adds history points (from the telemetry API or the event
// log) to a robot's samples, in time order, one per instant.
function mergeSamples(id, points) {
  const all = (state.samples.get(id) || []).concat(points).sort((a, b) => a.t - b.t);
  const out = [];
  for (const p of all) {
    const last = out[out.length - 1];
    if (last && last.t === p.t) Object.assign(last, Object.fromEntries(Object.entries(p).filter(([, v]) => v !== null && v !== undefined)));
    else out.push(Object.assign({}, p));
  }
  state.samples.set(id, out.slice(-MAX_SAMPLES));
}

// loadTelemetryHistory reads the downsampled history of GET
// /v1/robots/{id}/telemetry (the last 3 hours). It returns false when this
// control has no telemetry API, so the event log's reports are all there is.
async function loadTelemetryHistory(id) {
  let res;
  try {
    res = await api(`/v1/robots/${encodeURIComponent(id)}/telemetry?from=-3h`);
  } catch (e) {
    if (e.status === 404 || e.status === 400) return false;
    throw e;
  }
  const field = { cpu: 'cpu', memory: 'mem', disk: 'disk', temperature: 'temp' };
  const byTime = new Map();
  for (const series of (res && res.series) || []) {
    const k = field[series.metric];
    if (!k) continue;
    for (const p of series.points || []) {
      if (!p.count) continue;
      const t = new Date(p.t).getTime();
      const o = byTime.get(t) || { t, cpu: null, mem: null, disk: null, temp: null };
      o[k] = p.avg;
      byTime.set(t, o);
    }
  }
  mergeSamples(id, [...byTime.values()]);
  return true;
}

async function loadAlerts() {
  try {
    const res = await api('/v1/alerts');
    state.alerts = (res && res.alerts) || [];
  } catch (e) {
    state.alerts = null; // this control has no alerts API
  }
  if (state.page && state.page.alertsLoaded) state.page.alertsLoaded();
}

function addFeed(f) {
  state.feed.unshift(f);
  if (state.feed.length > MAX_FEED) state.feed.length = MAX_FEED;
  if (state.page && state.page.name === 'events') state.page.prepend(f);
  if (state.page && state.page.name === 'robot' && state.page.id === f.robot_id) state.page.prepend(f);
}

// scheduleRobot re-reads one robot shortly after a change: several events
// of one robot (connect, hello, telemetry) cost one request.
function scheduleRobot(id) {
  if (!id || state.refetch.has(id)) return;
  state.refetch.set(id, setTimeout(async () => {
    state.refetch.delete(id);
    try {
      const r = await api(`/v1/robots/${encodeURIComponent(id)}`);
      state.robots.set(id, r);
      robotChanged(id);
    } catch (e) {
      if (e.status !== 404) console.warn('refresh robot', id, e);
    }
  }, 250));
}

function scheduleAlerts() {
  if (state.alertTimer) return;
  state.alertTimer = setTimeout(() => { state.alertTimer = 0; loadAlerts(); }, 400);
}

function scheduleDeployments() {
  if (state.deployTimer) return;
  state.deployTimer = setTimeout(() => {
    state.deployTimer = 0;
    if (state.page && state.page.name === 'deployments') state.page.reload();
  }, 400);
}

function robotChanged(id) {
  if (state.page && state.page.robotChanged) state.page.robotChanged(id);
}

async function loadRobots() {
  const all = new Map();
  let after = '';
  for (let i = 0; i < MAX_ROBOT_PAGES; i++) {
    const page = await api(`/v1/robots?limit=1000${after ? `&after=${encodeURIComponent(after)}` : ''}`);
    for (const r of page.robots) all.set(r.id, r);
    if (!page.next) break;
    after = page.next;
  }
  state.robots = all;
  for (const r of all.values()) addSample(r.id, r.status.last_seen || r.registered_at, r.resources);
  if (state.page && state.page.robotsLoaded) state.page.robotsLoaded();
}

// ---------- pages ----------

function show(name, node, page) {
  const main = document.getElementById('main');
  main.replaceChildren(node);
  state.page = Object.assign({ name }, page || {});
  for (const a of document.querySelectorAll('nav a')) a.classList.toggle('active', a.dataset.nav === name || (name === 'robot' && a.dataset.nav === 'fleet'));
  document.title = `${name === 'robot' ? page.id : name} · Lekiwi Heartbeat`;
}

const FLEET_COLUMNS = [
  ['id', 'Robot'], ['online', 'Online'], ['type', 'Type'], ['model', 'Model'], ['image', 'Image'], ['os', 'OS'], ['agent', 'Agent'],
  ['teleop', 'Teleoperation'], ['cpu', 'CPU'], ['memory', 'Memory'], ['disk', 'Disk'], ['temp', 'Temp'],
  ['uptime', 'Uptime'], ['seen', 'Last seen'],
];

// imageOf is the release a robot's system was built as (its hello's
// image.json), or null for a system not made by provision image build.
function imageOf(r) {
  return (r.deployment && r.deployment.image) || null;
}

function imageBuilt(img) {
  const d = img && img.created ? new Date(img.created) : null;
  return d && isFinite(d.getTime()) ? d.toLocaleString() : '—';
}

function fleetCells(r) {
  const res = r.resources || {};
  const mem = pct(res.memory_used_bytes, res.memory_total_bytes);
  const disk = pct(res.disk_used_bytes, res.disk_total_bytes);
  const temp = res.temperature_c;
  const online = r.status && r.status.state === 'online';
  const tele = r.teleoperation || {};
  // A robot that never reported telemetry has all-zero resources.
  const reported = res.memory_total_bytes > 0 || res.disk_total_bytes > 0 || res.cpu_percent > 0;
  return {
    id: el('a', { href: `/robots/${encodeURIComponent(r.id)}`, 'data-link': true, text: r.id }),
    online: el('span', { class: `badge ${online ? 'online' : 'offline'}`, text: online ? 'online' : 'offline' }),
    type: r.type || '—',
    model: (r.hardware && r.hardware.model) || '—',
    image: imageOf(r) && imageOf(r).version
      ? el('span', { title: `profile ${imageOf(r).profile || '?'}, built ${imageBuilt(imageOf(r))}`, text: imageOf(r).version })
      : '—',
    os: (r.deployment && r.deployment.os_version) || '—',
    agent: (r.deployment && r.deployment.agent_version) || '—',
    teleop: tele.active ? el('span', { class: 'badge teleop', title: tele.operator ? `operator ${tele.operator} since ${tele.session_start || '?'}` : '', text: tele.operator ? `driven · ${tele.operator}` : 'driven' }) : el('span', { class: 'muted', text: 'idle' }),
    cpu: reported ? el('span', { class: res.cpu_percent >= 90 ? 'hot' : '', text: `${res.cpu_percent.toFixed(0)}%` }) : '—',
    memory: mem !== null ? el('span', { class: mem >= 90 ? 'hot' : '', title: `${bytes(res.memory_used_bytes)} of ${bytes(res.memory_total_bytes)}`, text: `${mem.toFixed(0)}%` }) : '—',
    disk: disk !== null ? el('span', { class: disk >= 90 ? 'hot' : '', title: `${bytes(res.disk_used_bytes)} of ${bytes(res.disk_total_bytes)}`, text: `${disk.toFixed(0)}%` }) : '—',
    temp: temp !== undefined && temp !== null ? el('span', { class: temp >= 80 ? 'hot' : '', text: `${temp.toFixed(1)} °C` }) : '—',
    uptime: online ? duration(r.status && r.status.uptime_seconds) : '—',
    seen: ago(r.status && r.status.last_seen),
  };
}

function fleetRow(r) {
  const cells = fleetCells(r);
  const tr = el('tr', { 'data-robot': r.id, 'data-state': r.status && r.status.state });
  for (const [col] of FLEET_COLUMNS) {
    const td = el('td', { 'data-col': col, class: ['cpu', 'memory', 'disk', 'temp', 'uptime'].includes(col) ? 'num' : '' }, cells[col]);
    if (col === 'uptime') td.dataset.value = String((r.status && r.status.uptime_seconds) || 0);
    tr.append(td);
  }
  return tr;
}

function renderFleet() {
  const filter = el('input', { type: 'search', id: 'fleet-filter', placeholder: 'Filter by id, type, model, version…' });
  const tbody = el('tbody');
  const summary = el('div', { class: 'summary', id: 'fleet-summary' });
  const table = el('table', { id: 'fleet' },
    el('thead', {}, el('tr', {}, FLEET_COLUMNS.map(([, label]) => el('th', { text: label })))), tbody);
  const empty = el('p', { class: 'muted', id: 'fleet-empty', text: 'No robots yet.' });
  const alerts = el('ul', { class: 'alerts', id: 'fleet-alerts' });

  const matches = (r) => {
    const q = filter.value.trim().toLowerCase();
    if (!q) return true;
    return [r.id, r.type, r.hardware && r.hardware.model, imageOf(r) && imageOf(r).version, r.deployment && r.deployment.os_version, r.deployment && r.deployment.agent_version]
      .some((v) => v && String(v).toLowerCase().includes(q));
  };
  const renderSummary = () => {
    let online = 0, driven = 0, hot = 0;
    for (const r of state.robots.values()) {
      if (r.status && r.status.state === 'online') online++;
      if (r.teleoperation && r.teleoperation.active) driven++;
      const res = r.resources || {};
      if ((res.temperature_c ?? 0) >= 80 || (pct(res.disk_used_bytes, res.disk_total_bytes) ?? 0) >= 90) hot++;
    }
    const card = (id, n, l) => el('div', { class: 'card', id }, el('div', { class: 'n', text: n }), el('div', { class: 'l', text: l }));
    summary.replaceChildren(card('count-online', `${online} / ${state.robots.size}`, 'online'),
      card('count-driven', driven, 'teleoperated'), card('count-hot', hot, 'hot or disk ≥ 90%'),
      state.alerts ? card('count-alerts', state.alerts.length, 'alerts firing') : null);
    alerts.replaceChildren(...(state.alerts || []).map((a) => el('li', {},
      el('span', { class: 'badge failed', text: a.rule }), ' ',
      el('a', { href: `/robots/${encodeURIComponent(a.robot_id)}`, 'data-link': true, text: a.robot_id }),
      el('span', { class: 'muted', text: ` value ${Number(a.value).toFixed(1)} since ${new Date(a.fired_at).toLocaleString()}` }))));
  };
  const renderAll = () => {
    const rows = [...state.robots.values()].filter(matches).sort((a, b) => a.id.localeCompare(b.id)).map(fleetRow);
    tbody.replaceChildren(...rows);
    empty.hidden = state.robots.size > 0;
    renderSummary();
  };
  filter.addEventListener('input', renderAll);
  const timer = setInterval(() => {
    for (const tr of tbody.children) {
      const r = state.robots.get(tr.dataset.robot);
      if (r) tr.querySelector('td[data-col="seen"]').textContent = ago(r.status && r.status.last_seen);
    }
  }, 5000);
  show('fleet', el('section', {},
    el('h1', { text: 'Fleet' }), summary, alerts,
    el('div', { class: 'toolbar' }, filter), table, empty), {
    robotsLoaded: renderAll,
    alertsLoaded: renderSummary,
    robotChanged(id) {
      const r = state.robots.get(id);
      if (!r) return;
      const old = tbody.querySelector(`tr[data-robot="${CSS.escape(id)}"]`);
      if (!matches(r)) { if (old) old.remove(); renderSummary(); return; }
      const tr = fleetRow(r);
      tr.classList.add('flash');
      if (old) old.replaceWith(tr);
      else {
        const next = [...tbody.children].find((x) => x.dataset.robot.localeCompare(id) > 0);
        tbody.insertBefore(tr, next || null);
      }
      empty.hidden = true;
      renderSummary();
    },
    leave() { clearInterval(timer); },
  });
  renderAll();
}

// plot draws one series as an SVG line: time on x, value on y.
function plot(title, points, unit, fixedMax) {
  const W = 300, H = 100, L = 28, B = 14;
  const box = el('div', { class: 'plot card', 'data-plot': title });
  box.append(el('h3', { text: title }));
  const vals = points.filter((p) => p.v !== null && p.v !== undefined && isFinite(p.v));
  const s = svg('svg', { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', role: 'img', 'aria-label': title });
  s.append(svg('line', { class: 'axis', x1: L, y1: H - B, x2: W, y2: H - B }), svg('line', { class: 'axis', x1: L, y1: 0, x2: L, y2: H - B }));
  if (vals.length === 0) {
    s.append(svg('text', { x: L + 8, y: H / 2, text: 'no samples yet' }));
    box.append(s);
    return box;
  }
  let lo = fixedMax ? 0 : Math.min(...vals.map((p) => p.v));
  let hi = fixedMax || Math.max(...vals.map((p) => p.v));
  if (hi - lo < 1) { hi += 0.5; lo -= 0.5; }
  const t0 = vals[0].t, t1 = Math.max(vals[vals.length - 1].t, t0 + 1);
  const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - 2);
  const y = (v) => (H - B) - ((v - lo) / (hi - lo)) * (H - B - 4);
  const pts = vals.map((p) => `${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join(' ');
  s.append(svg(vals.length === 1 ? 'circle' : 'polyline', vals.length === 1
    ? { class: 'line', cx: x(vals[0].t), cy: y(vals[0].v), r: 2 }
    : { class: 'line', points: pts }));
  s.append(svg('text', { x: 2, y: 9, text: `${hi.toFixed(0)}${unit}` }), svg('text', { x: 2, y: H - B, text: `${lo.toFixed(0)}${unit}` }),
    svg('text', { x: L + 2, y: H - 2, text: timeOf(t0) }), svg('text', { x: W - 60, y: H - 2, text: timeOf(t1) }));
  box.append(s, el('div', { class: 'muted', text: `${vals.length} samples, last ${vals[vals.length - 1].v.toFixed(1)}${unit}` }));
  return box;
}

function eventSummary(f) {
  const d = f.data || {};
  if (d.kind && d.message) return `${d.kind}: ${d.message}`;
  const s = JSON.stringify(d);
  return s.length > 240 ? `${s.slice(0, 240)}…` : s;
}

function feedRow(f) {
  // f is a stream frame or an event of GET /v1/events.
  const kind = f.kind || f.type;
  return el('tr', { 'data-seq': f.seq || '' },
    el('td', { text: timeOf(f.time) }),
    el('td', { class: 'num muted', text: f.seq || '' }),
    el('td', {}, el('span', { class: `badge ${f.priority === 'critical' ? 'failed' : ''}`, text: kind })),
    el('td', {}, f.robot_id ? el('a', { href: `/robots/${encodeURIComponent(f.robot_id)}`, 'data-link': true, text: f.robot_id }) : el('span', { class: 'muted', text: f.actor || '' })),
    el('td', { class: 'data', text: eventSummary(f) }));
}

function feedTable(id) {
  const tbody = el('tbody');
  const table = el('table', { id, class: 'feed' },
    el('thead', {}, el('tr', {}, ['Time', 'Seq', 'Kind', 'Robot', 'Detail'].map((h) => el('th', { text: h })))), tbody);
  return { table, tbody };
}

// Robot events of the log for the detail page: up to 5 pages, keeping the
// newest; telemetry among them seeds the plots.
async function loadRobotHistory(id) {
  let after = 0;
  const events = [];
  for (let i = 0; i < 5; i++) {
    const page = await api(`/v1/events?robot=${encodeURIComponent(id)}&limit=1000&after=${after}`);
    events.push(...page.events);
    if (events.length > 2000) events.splice(0, events.length - 2000);
    if (page.events.length < 1000) break;
    after = page.next;
  }
  const points = [];
  for (const e of events) {
    const res = e.type === 'TelemetryReported' && e.data && e.data.resources;
    if (res) {
      points.push({ t: new Date(e.time).getTime(), cpu: res.cpu_percent, mem: pct(res.memory_used_bytes, res.memory_total_bytes),
        disk: pct(res.disk_used_bytes, res.disk_total_bytes), temp: res.temperature_c ?? null });
    }
  }
  mergeSamples(id, points);
  return events.filter((e) => e.type !== 'TelemetryReported').slice(-50).reverse();
}

function renderRobot(id) {
  const props = el('dl', { class: 'props', id: 'robot-props' });
  const plots = el('div', { class: 'grid', id: 'robot-plots' });
  const { table, tbody } = feedTable('robot-events');
  const header = el('h1', { id: 'robot-title', text: id });
  const fill = () => {
    const r = state.robots.get(id);
    if (!r) { props.replaceChildren(el('dd', { class: 'muted', text: 'Loading…' })); return; }
    const c = fleetCells(r);
    const net = r.network || {};
    const rows = [
      ['Online', c.online], ['Type', c.type], ['Model', c.model], ['Serial', (r.hardware && r.hardware.serial) || '—'],
      ['Image', c.image], ['Image profile', (imageOf(r) && imageOf(r).profile) || '—'], ['Image built', imageBuilt(imageOf(r))],
      ['OS version', c.os], ['Agent version', c.agent], ['Teleoperation', c.teleop], ['Uptime', c.uptime],
      ['Last seen', c.seen], ['Control node', (r.status && r.status.node) || '—'],
      ['Network', [net.hostname, net.mac, (net.ips || []).join(' ')].filter(Boolean).join(' · ') || '—'],
      ['Certificate', r.certificate ? `serial ${r.certificate.serial}, until ${new Date(r.certificate.not_after).toLocaleDateString()}` : '—'],
      ['Packages', Object.entries((r.deployment && r.deployment.packages) || {}).map(([k, v]) => `${k} ${v}`).join(', ') || '—'],
    ];
    props.replaceChildren(...rows.flatMap(([k, v]) => [el('dt', { text: k }), el('dd', {}, v)]));
    const s = state.samples.get(id) || [];
    plots.replaceChildren(
      plot('CPU', s.map((p) => ({ t: p.t, v: p.cpu })), '%', 100),
      plot('Memory', s.map((p) => ({ t: p.t, v: p.mem })), '%', 100),
      plot('Disk', s.map((p) => ({ t: p.t, v: p.disk })), '%', 100),
      plot('Temperature', s.map((p) => ({ t: p.t, v: p.temp })), ' °C', 0));
  };
  show('robot', el('section', {},
    el('p', {}, el('a', { href: '/', 'data-link': true, text: '← Fleet' })), header,
    el('div', { class: 'card' }, props),
    el('h2', { text: 'Recent telemetry' }), plots,
    el('p', { class: 'muted', text: 'From the event log’s telemetry reports and live updates since this page was opened.' }),
    el('h2', { text: 'Recent events' }), table), {
    id,
    robotChanged(rid) { if (rid === id) fill(); },
    robotsLoaded: fill,
    prepend(f) {
      if (f.kind === 'TelemetryReported') return;
      tbody.prepend(feedRow(f));
      while (tbody.children.length > 50) tbody.lastChild.remove();
    },
  });
  fill();
  if (!state.robots.has(id)) scheduleRobot(id);
  loadRobotHistory(id).then((events) => {
    if (state.page.name !== 'robot' || state.page.id !== id) return;
    tbody.append(...events.map(feedRow));
    fill();
  }).catch((e) => toast(`Could not load ${id}'s events: ${e.message}`));
  loadTelemetryHistory(id).then((ok) => {
    if (ok && state.page.name === 'robot' && state.page.id === id) fill();
  }).catch((e) => toast(`Could not load ${id}'s telemetry: ${e.message}`));
}

function renderEvents() {
  const live = feedTable('feed');
  const hist = feedTable('history');
  const status = el('span', { class: 'muted', id: 'history-range' });
  let after = 0;
  const loadHistory = async (from) => {
    after = Math.max(0, from);
    const page = await api(`/v1/events?after=${after}&limit=200`);
    hist.tbody.replaceChildren(...page.events.slice().reverse().map(feedRow));
    status.textContent = page.events.length ? `sequences ${page.events[0].seq}–${page.events[page.events.length - 1].seq}` : `nothing after ${after}`;
    return page;
  };
  const older = el('button', { type: 'button', class: 'secondary', text: '← Older', onclick: () => loadHistory(after - 200).catch((e) => toast(e.message)) });
  const newer = el('button', { type: 'button', class: 'secondary', text: 'Newer →', onclick: () => loadHistory(after + 200).catch((e) => toast(e.message)) });
  live.tbody.append(...state.feed.map(feedRow));
  show('events', el('section', {},
    el('h1', { text: 'Events' }),
    el('h2', { text: 'Live' }),
    el('p', { class: 'muted', text: 'Robot events, presence, commands, alerts and deployment decisions as they are committed.' }),
    live.table,
    el('h2', { text: 'Event log' }),
    el('div', { class: 'toolbar' }, older, newer, status), hist.table), {
    prepend(f) {
      live.tbody.prepend(feedRow(f));
      while (live.tbody.children.length > MAX_FEED) live.tbody.lastChild.remove();
    },
  });
  // Start the log view near its end: the newest sequence any robot or the
  // live feed has seen, minus one page.
  let newest = 0;
  for (const r of state.robots.values()) newest = Math.max(newest, r.version || 0);
  for (const f of state.feed) newest = Math.max(newest, f.seq || 0);
  loadHistory(newest - 200).catch((e) => toast(`Could not load the event log: ${e.message}`));
}

function deploymentRow(d) {
  const c = d.counts || {};
  const total = c.total || 0;
  const done = (c.succeeded || 0) + (c.failed || 0) + (c.rolled_back || 0) + (c.rollback_failed || 0);
  const actions = el('div', { class: 'actions' });
  if (canDeploy()) {
    const act = (verb, label, cls, enabled) => {
      const b = el('button', { type: 'button', class: cls, 'data-action': verb, text: label, disabled: !enabled });
      b.addEventListener('click', async () => {
        if ((verb === 'abort' || verb === 'rollback') && !confirm(`${label} deployment ${d.spec.name || d.id}?`)) return;
        b.disabled = true;
        try {
          await api(`/v1/deployments/${encodeURIComponent(d.id)}/${verb}`, { method: 'POST', body: { reason: `from the dashboard by ${state.me.name}` } });
          toast(`Deployment ${d.spec.name || d.id}: ${verb} requested`, true);
        } catch (e) {
          toast(`Could not ${verb} ${d.spec.name || d.id}: ${e.message}`);
        }
        if (state.page && state.page.reload) state.page.reload();
      });
      return b;
    };
    const st = d.state;
    actions.append(
      act('pause', 'Pause', 'secondary', st === 'running'),
      act('resume', 'Resume', '', st === 'paused'),
      act('abort', 'Abort', 'danger', st === 'running' || st === 'paused'),
      act('rollback', 'Roll back', 'danger', st === 'running' || st === 'paused' || st === 'aborted' || st === 'completed'));
  }
  const batches = d.batches || [];
  return el('tr', { 'data-deployment': d.id, 'data-state': d.state },
    el('td', { 'data-col': 'name' }, el('div', { text: d.spec.name || d.id }), el('div', { class: 'muted', text: d.id })),
    el('td', { 'data-col': 'version', text: d.spec.version }),
    el('td', { 'data-col': 'strategy', text: d.spec.strategy }),
    el('td', { 'data-col': 'state' }, el('span', { class: `badge ${d.state}`, text: d.state, title: d.reason || '' })),
    el('td', { 'data-col': 'progress' },
      el('progress', { max: total || 1, value: done, title: `${done} of ${total} finished` }), ' ',
      el('span', { class: 'muted', text: `${c.succeeded || 0}/${total} ok${c.failed ? `, ${c.failed} failed` : ''}${c.deferred ? `, ${c.deferred} deferred` : ''}` })),
    el('td', { 'data-col': 'batch', text: batches.length ? `${d.current_batch + 1} / ${batches.length}` : '—' }),
    el('td', { 'data-col': 'created' }, el('div', { text: new Date(d.created_at).toLocaleString() }), el('div', { class: 'muted', text: d.created_by || '' })),
    el('td', { 'data-col': 'reason', class: 'muted wrap', text: d.reason || '' }),
    el('td', { 'data-col': 'actions' }, actions));
}

function renderDeployments() {
  const tbody = el('tbody');
  const empty = el('p', { class: 'muted', id: 'deployments-empty', text: 'No deployments yet.', hidden: true });
  const heads = ['Deployment', 'Version', 'Strategy', 'State', 'Progress', 'Batch', 'Created', 'Reason', canDeploy() ? 'Actions' : ''];
  const reload = async () => {
    try {
      const list = await api('/v1/deployments?limit=100');
      state.deployments = list.deployments;
      if (state.page.name !== 'deployments') return;
      tbody.replaceChildren(...state.deployments.map(deploymentRow));
      empty.hidden = state.deployments.length > 0;
    } catch (e) {
      toast(`Could not load deployments: ${e.message}`);
    }
  };
  show('deployments', el('section', {},
    el('h1', { text: 'Deployments' }),
    canDeploy() ? null : el('p', { class: 'muted', id: 'read-only', text: `Your role (${state.me.role}) can watch deployments; engineers and admins steer them.` }),
    el('table', { id: 'deployments' }, el('thead', {}, el('tr', {}, heads.map((h) => el('th', { text: h })))), tbody),
    empty), { reload });
  reload();
}

// ---------- routing ----------

function route(path, reason) {
  if (state.page && state.page.leave) state.page.leave();
  if (!state.token || !state.me) {
    if (path !== '/login') state.afterLogin = path;
    renderLogin(reason);
    return;
  }
  const m = path.match(/^\/robots\/([^/]+)$/);
  if (m) renderRobot(decodeURIComponent(m[1]));
  else if (path === '/events') renderEvents();
  else if (path === '/deployments') renderDeployments();
  else if (path === '/login') { navigate('/', true); }
  else renderFleet();
}

function navigate(path, replace, reason) {
  if (location.pathname !== path) {
    if (replace) history.replaceState(null, '', path);
    else history.pushState(null, '', path);
  }
  route(path, reason);
}

document.addEventListener('click', (ev) => {
  const a = ev.target.closest('a[data-link]');
  if (!a || ev.ctrlKey || ev.metaKey || ev.shiftKey || ev.button !== 0) return;
  ev.preventDefault();
  navigate(new URL(a.href).pathname);
});
window.addEventListener('popstate', () => route(location.pathname));
document.getElementById('logout').addEventListener('click', () => logout('Logged out.'));

async function start() {
  if (state.token) {
    try {
      await login(state.token);
    } catch (e) {
      state.afterLogin = location.pathname;
      navigate('/login', true, `Please log in again: ${e.message}`);
      return;
    }
  }
  route(location.pathname);
}

start();
