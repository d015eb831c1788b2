// tarry's dashboard: plain JavaScript, no build step, nothing from the internet.
// Every value that comes from the database (task names, arguments, errors, tracebacks) is put
// into the page with textContent or as an attribute value, never parsed as HTML.
'use strict';

const REFRESH_MS = 5000;
const STATUSES = ['todo', 'doing', 'succeeded', 'failed', 'cancelled', 'aborted'];
const FILTERS = ['status', 'queue', 'task', 'lock', 'q'];
let config = { read_only: false };
let timer = null;

// ---- small helpers ----

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'onclick' || k === 'onsubmit' || k === 'onchange') e.addEventListener(k.slice(2), v);
    else if (k === 'text') e.textContent = v;
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function params() { return new URLSearchParams(location.search); }

function go(p, replace) {
  const url = '?' + p.toString();
  if (replace) history.replaceState(null, '', url); else history.pushState(null, '', url);
  render();
}

function when(t) {
  if (t === null || t === undefined) return '';
  return new Date(t * 1000).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}

function ago(seconds) {
  if (seconds === null || seconds === undefined) return '';
  if (seconds < 60) return seconds.toFixed(1) + ' s ago';
  if (seconds < 3600) return Math.round(seconds / 60) + ' min ago';
  return Math.round(seconds / 3600) + ' h ago';
}

function flash(text, bad) {
  const f = document.getElementById('flash');
  f.textContent = text;
  f.className = bad ? 'bad' : 'good';
  clearTimeout(flash.t);
  flash.t = setTimeout(() => { f.textContent = ''; f.className = ''; }, 6000);
}

async function api(path, body) {
  const opts = body === undefined ? {} : {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) };
  const r = await fetch('api/' + path, opts);
  let data = null;
  try { data = await r.json(); } catch (e) { data = { error: r.statusText }; }
  if (!r.ok) throw new Error(data && data.error ? data.error : ('HTTP ' + r.status));
  return data;
}

function badge(status) { return el('span', { class: 'status s-' + status, text: status }); }

function table(headers, rows) {
  return el('table', {}, el('thead', {}, el('tr', {}, ...headers.map(h => el('th', { text: h })))),
    el('tbody', {}, ...rows));
}

// ---- actions ----

const DESTRUCTIVE = { cancel: true, abort: true, delete: true };

async function act(id, action) {
  if (DESTRUCTIVE[action] && !confirm(action + ' job #' + id + '?')) return;
  try {
    const r = await api('jobs/' + id + '/' + action, {});
    flash('job #' + id + ': ' + action + ' done, now ' + r.status);
  } catch (e) { flash(e.message, true); }
  refresh();
}

async function bulk(action, filter) {
  const what = FILTERS.filter(k => filter[k]).map(k => k + '=' + filter[k]).join(', ') || 'every job';
  if (!confirm(action + ' every job matching: ' + what + '?')) return;
  try {
    const r = await api('jobs/' + action, filter);
    flash(action + ': ' + r.changed + ' of ' + r.matched + ' matching job(s) changed');
  } catch (e) { flash(e.message, true); }
  refresh();
}

function actionButtons(job) {
  if (config.read_only) return el('span', { class: 'muted', text: 'read-only' });
  const can = {
    retry: job.status === 'failed', cancel: job.status === 'todo',
    abort: job.status === 'todo' || job.status === 'doing',
    'run-now': job.status === 'todo' && job.scheduled_at !== null && job.scheduled_at * 1000 > Date.now(),
    delete: job.status !== 'doing',
  };
  return el('span', { class: 'actions' }, ...Object.keys(can).map(a =>
    el('button', { 'data-action': a, disabled: !can[a], class: DESTRUCTIVE[a] ? 'danger' : '',
      onclick: () => act(job.id, a), text: a })));
}

// ---- views ----

async function viewJobs(main) {
  const p = params();
  const filter = {};
  for (const k of FILTERS) if (p.get(k)) filter[k] = p.get(k);
  const form = el('form', { class: 'filters', id: 'filters', onsubmit: ev => {
    ev.preventDefault();
    const np = new URLSearchParams({ view: 'jobs' });
    for (const k of FILTERS) { const v = form.elements[k].value.trim(); if (v) np.set(k, v); }
    go(np);
  } },
  el('select', { name: 'status' }, el('option', { value: '', text: 'any status' }),
    ...STATUSES.map(s => el('option', { value: s, selected: filter.status === s, text: s }))),
  ...['queue', 'task', 'lock'].map(k => el('input', { name: k, placeholder: k, value: filter[k] || '' })),
  el('input', { name: 'q', class: 'wide', placeholder: 'args: key=value or {"json": "containment"}', value: filter.q || '' }),
  el('button', { type: 'submit', text: 'Filter' }));
  main.append(form);
  if (!config.read_only) {
    main.append(el('div', { class: 'bulk' }, 'On everything this filter matches: ',
      ...['retry', 'cancel', 'delete'].map(a => el('button', { 'data-bulk': a, class: a === 'retry' ? '' : 'danger',
        onclick: () => bulk(a, filter), text: a + ' all' }))));
    main.append(deferForm());
  }
  const q = new URLSearchParams(filter);
  if (p.get('after_id')) q.set('after_id', p.get('after_id'));
  const data = await api('jobs?' + q.toString());
  const rows = data.jobs.map(j => el('tr', { 'data-job-id': j.id },
    el('td', {}, el('a', { href: '?job=' + j.id, text: '#' + j.id, onclick: ev => { ev.preventDefault(); go(new URLSearchParams({ job: j.id })); } })),
    el('td', { class: 'task', text: j.task_name }), el('td', { text: j.queue }),
    el('td', { class: 'status-cell' }, badge(j.status)), el('td', { text: j.attempts }),
    el('td', { text: j.lock || '' }), el('td', { text: when(j.scheduled_at) }),
    el('td', { class: 'args', text: JSON.stringify(j.args) }), el('td', {}, actionButtons(j))));
  main.append(table(['id', 'task', 'queue', 'status', 'attempts', 'lock', 'scheduled', 'args', ''], rows));
  if (data.jobs.length === 0) main.append(el('p', { class: 'muted', id: 'no-jobs', text: 'No job matches.' }));
  const pager = el('div', { class: 'pager' });
  if (p.get('after_id')) pager.append(el('button', { text: '⟵ newest', onclick: () => { p.delete('after_id'); go(p); } }));
  if (data.next_after_id !== null) {
    pager.append(el('button', { id: 'older', text: 'older ⟶', onclick: () => { p.set('after_id', data.next_after_id); go(p); } }));
  }
  main.append(pager);
}

function deferForm() {
  const f = el('form', { class: 'defer', id: 'defer-form', onsubmit: async ev => {
    ev.preventDefault();
    let args;
    try { args = JSON.parse(f.elements.args.value || '{}'); } catch (e) { flash('args: ' + e.message, true); return; }
    const body = { task: f.elements.task.value.trim(), args };
    for (const k of ['queue', 'lock', 'queueing_lock']) if (f.elements[k].value) body[k] = f.elements[k].value;
    if (f.elements.priority.value) body.priority = Number(f.elements.priority.value);
    if (f.elements.schedule_in.value) body.schedule_in = Number(f.elements.schedule_in.value);
    try { const r = await api('jobs', body); flash('deferred job #' + r.id); refresh(); } catch (e) { flash(e.message, true); }
  } },
  el('strong', { text: 'Defer a job: ' }),
  el('input', { name: 'task', placeholder: 'task name', required: true }),
  el('input', { name: 'args', class: 'wide', placeholder: 'args as JSON, e.g. {"a": 1}' }),
  el('input', { name: 'queue', placeholder: 'queue' }), el('input', { name: 'priority', type: 'number', placeholder: 'priority' }),
  el('input', { name: 'lock', placeholder: 'lock' }), el('input', { name: 'queueing_lock', placeholder: 'queueing lock' }),
  el('input', { name: 'schedule_in', type: 'number', placeholder: 'in seconds' }),
  el('button', { type: 'submit', text: 'Defer' }));
  return el('details', {}, el('summary', { text: 'Defer a job' }), f);
}

async function viewJob(main, id) {
  const j = await api('jobs/' + encodeURIComponent(id));
  const field = (k, v) => el('tr', {}, el('th', { text: k }), el('td', {}, v));
  main.append(el('section', { id: 'job-detail', 'data-job-id': j.id },
    el('h2', {}, 'Job #' + j.id + ' ', el('span', { id: 'job-status' }, badge(j.status))),
    actionButtons(j),
    el('table', { class: 'fields' }, el('tbody', {},
      field('task', j.task_name), field('queue', j.queue), field('priority', String(j.priority)),
      field('attempts', String(j.attempts)), field('lock', j.lock || '—'), field('queueing lock', j.queueing_lock || '—'),
      field('scheduled at', when(j.scheduled_at) || '—'), field('worker', j.worker_id === null || j.worker_id === undefined ? '—' : String(j.worker_id)),
      field('abort requested', String(j.abort_requested)))),
    el('h3', { text: 'Arguments' }), el('pre', { class: 'args', id: 'job-args', text: JSON.stringify(j.args, null, 2) }),
    el('h3', { text: 'Events' }),
    el('ol', { class: 'timeline' }, ...j.events.map(e => el('li', {}, el('span', { class: 'ev-type', text: e.type }), ' ', when(e.at)))),
    el('h3', { text: 'Errors' }),
    j.errors.length === 0 ? el('p', { class: 'muted', text: 'No error recorded.' }) : el('div', { id: 'job-errors' },
      ...j.errors.map(e => el('div', { class: 'error' },
        el('div', { class: 'error-head', text: 'attempt ' + e.attempt + ' at ' + when(e.at) + ': ' + e.message }),
        e.traceback ? el('pre', { class: 'traceback', text: e.traceback }) : null)))));
}

// Every bucket of the window, the empty ones as zeros (the API returns only those with events).
function series(points, bucket, window, now) {
  const by = new Map(points.map(p => [p.t, p]));
  const out = [];
  for (let t = Math.floor((now - window) / bucket) * bucket; t <= now; t += bucket) {
    out.push(by.get(t) || { t, succeeded: 0, failed: 0 });
  }
  return out;
}

function chart(raw, bucket, now) {
  const points = series(raw, bucket, chart.window, now);
  const W = 720, H = 160, P = 30;
  const c = el('canvas', { width: W, height: H, id: 'throughput', 'aria-label': 'succeeded and failed jobs per second' });
  const g = c.getContext('2d');
  const max = Math.max(1, ...points.map(p => Math.max(p.succeeded, p.failed) / bucket));
  const span = chart.window;
  const x = t => P + (W - 2 * P) * (1 - (now - t) / span);
  const y = v => H - P - (H - 2 * P) * v / max;
  g.strokeStyle = '#999'; g.strokeRect(P, P, W - 2 * P, H - 2 * P);
  g.fillStyle = '#555'; g.font = '11px sans-serif';
  g.fillText(max.toFixed(1) + '/s', 2, P + 4); g.fillText('0', 2, H - P);
  g.fillText('-' + Math.round(span / 60) + ' min', P, H - 8); g.fillText('now', W - P - 16, H - 8);
  for (const [key, color] of [['succeeded', '#2a7'], ['failed', '#c33']]) {
    g.strokeStyle = color; g.lineWidth = 2; g.beginPath();
    points.forEach((p, i) => { const px = x(p.t + bucket / 2), py = y(p[key] / bucket); if (i) g.lineTo(px, py); else g.moveTo(px, py); });
    g.stroke();
  }
  return c;
}

async function viewOverview(main) {
  const [stats, queues] = await Promise.all([api('stats?window=900&bucket=10'), api('queues')]);
  chart.window = stats.window;
  const last = stats.latency.length ? stats.latency[stats.latency.length - 1] : null;
  const sum = (k) => stats.throughput.reduce((a, p) => a + p[k], 0);
  main.append(el('section', { class: 'cards' },
    el('div', { class: 'card' }, el('b', { text: '~' + stats.estimates.total }), ' jobs (estimate)'),
    el('div', { class: 'card' }, el('b', { text: (sum('succeeded') / stats.window).toFixed(2) + '/s' }), ' succeeded, 15 min'),
    el('div', { class: 'card' }, el('b', { text: (sum('failed') / stats.window).toFixed(2) + '/s' }), ' failed, 15 min'),
    el('div', { class: 'card', id: 'latency' }, el('b', { text: last ? last.p50.toFixed(3) + ' s' : '—' }),
      ' defer-to-start p50', last ? ' (p95 ' + last.p95.toFixed(3) + ' s)' : '')));
  main.append(el('h3', {}, 'Throughput per second, last 15 minutes ', el('span', { class: 'legend ok', text: 'succeeded' }),
    ' ', el('span', { class: 'legend bad', text: 'failed' })), chart(stats.throughput, stats.bucket, stats.now));
  const link = (q, s, n) => el('a', { href: '?view=jobs&queue=' + encodeURIComponent(q) + '&status=' + s, text: String(n) });
  main.append(el('h3', { text: 'Queues (todo and doing: now; finished: the last 15 minutes' + (queues.finished_capped ? ', newest 10,000 events' : '') + ')' }),
    table(['queue', ...STATUSES], queues.queues.map(q => el('tr', { 'data-queue': q.name }, el('td', { text: q.name }),
      ...STATUSES.map(s => el('td', {}, link(q.name, s, q[s])))))));
}

async function viewWorkers(main) {
  const data = await api('workers');
  main.append(el('h2', { text: 'Workers' }), table(['id', 'last heartbeat', 'running'], data.workers.map(w =>
    el('tr', { 'data-worker-id': w.id }, el('td', { text: w.id }), el('td', { text: when(w.last_heartbeat) + ' (' + ago(w.heartbeat_age) + ')' }),
      el('td', {}, ...w.running.map(j => el('a', { href: '?job=' + j.id, class: 'chip', text: '#' + j.id + ' ' + j.task_name })))))));
  if (data.workers.length === 0) main.append(el('p', { class: 'muted', text: 'No worker registered.' }));
}

async function viewPeriodic(main) {
  const data = await api('periodic');
  main.append(el('h2', { text: 'Periodic tasks' }), table(['task', 'periodic id', 'cron', 'last tick', 'next tick'],
    data.periodic.map(p => el('tr', {}, el('td', { text: p.task_name }), el('td', { text: p.periodic_id }),
      el('td', { text: p.cron }), el('td', { text: when(p.last_tick) || 'never' }), el('td', { text: when(p.next_tick) })))));
  if (data.periodic.length === 0) main.append(el('p', { class: 'muted', text: 'No periodic task (start the dashboard with --app to see the app\'s).' }));
}

// ---- rendering and refresh ----

async function render(auto) {
  const p = params();
  const view = p.get('job') ? 'job' : (p.get('view') || 'overview');
  for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.dataset.view === view);
  const main = el('main', { id: 'main', 'data-view': view });
  try {
    if (view === 'job') await viewJob(main, p.get('job'));
    else if (view === 'jobs') await viewJobs(main);
    else if (view === 'workers') await viewWorkers(main);
    else if (view === 'periodic') await viewPeriodic(main);
    else await viewOverview(main);
  } catch (e) {
    main.append(el('p', { class: 'bad', text: 'Could not load: ' + e.message }));
  }
  const focused = document.activeElement && document.activeElement.name;
  if (auto && focused && document.getElementById('main').contains(document.activeElement)) return;  // the user is typing
  document.getElementById('main').replaceWith(main);
  main.setAttribute('data-loaded', String(Date.now()));
}

function refresh() { if (!document.hidden) render(true); }

function schedule() {
  clearInterval(timer);
  timer = null;
  const state = document.getElementById('refresh-state');
  if (document.hidden) { state.textContent = 'paused'; return; }
  state.textContent = 'live';
  timer = setInterval(refresh, REFRESH_MS);
}

document.addEventListener('visibilitychange', () => { schedule(); if (!document.hidden) render(true); });
window.addEventListener('popstate', () => render());
document.getElementById('nav').addEventListener('click', ev => {
  const a = ev.target.closest('a');
  if (!a) return;
  ev.preventDefault();
  go(new URLSearchParams(a.getAttribute('href').slice(1)));
});

(async function start() {
  try { config = await api('config'); } catch (e) { /* keep the defaults */ }
  if (config.read_only) document.getElementById('mode').textContent = 'read-only';
  schedule();
  render();
})();
