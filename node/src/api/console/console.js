// halo console. Reads every node's API from the browser (this node's at
// the page's origin, each peer's at its address in /api/v1/nodes and this
// page's port, allowed by the API's CORS answers) and drives the modules
// with the token the admin pasted, kept in sessionStorage (this tab only).
'use strict';

(() => {
  const TOKEN_KEY = 'halo.token';
  const REFRESH_MS = 2000;
  const TIMEOUT_MS = 2500;
  const CONFIRM_MS = 4000;
  const READY = ['PRIM', 'SECOND', 'ALONE', 'UP'];
  const $ = (id) => document.getElementById(id);

  let token = sessionStorage.getItem(TOKEN_KEY) || '';
  let timer = null;
  // What the last refresh saw.
  let view = null;
  // Where each node's API answered last: '' for this node, else a URL base.
  const bases = {};
  // The action button waiting for its confirming click: "node/module/action".
  let armed = null;
  // What each section was last drawn from, so that an unchanged section
  // keeps its elements (hover, focus, a click in progress).
  const drawn = {};

  class Refused extends Error {}

  /** An element with attributes and children (strings become text). */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === 'class') el.className = value;
      else if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
      else if (key === 'data') Object.assign(el.dataset, value);
      else el.setAttribute(key, value === true ? '' : value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  async function call(base, path, options = {}) {
    return fetch(base + path, {
      cache: 'no-store',
      headers: { Authorization: 'Bearer ' + token },
      signal: AbortSignal.timeout(TIMEOUT_MS),
      ...options,
    });
  }

  async function getJson(base, path) {
    const response = await call(base, path);
    if (response.status === 401) throw new Refused('the node refused the token');
    if (!response.ok) throw new Error(`${path}: ${response.status} ${await errorText(response)}`);
    return response.json();
  }

  async function errorText(response) {
    try {
      return (await response.json()).error || '';
    } catch {
      return '';
    }
  }

  // ---- formatting ----

  const pad = (n) => String(n).padStart(2, '0');
  function clock(ms) {
    const d = new Date(ms);
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }
  function bytes(n) {
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) {
      n /= 1024;
      i += 1;
    }
    return `${n >= 10 || i === 0 ? Math.round(n) : n.toFixed(1)} ${units[i]}`;
  }
  function duration(s) {
    if (s === null || s === undefined) return 'unknown';
    s = Math.round(s);
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
    return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  }

  /** ok (green), busy (orange) or bad (red) for a module on a node. */
  function tone(module) {
    if (!module) return 'bad';
    if (module.phase === 'transient') return 'busy';
    return READY.includes(module.state) ? 'ok' : 'bad';
  }

  function toast(text, bad) {
    const el = h('div', { class: bad ? 'toast bad' : 'toast' }, text);
    $('toasts').append(el);
    setTimeout(() => el.remove(), 5000);
  }

  // ---- login ----

  function showLogin(message) {
    clearTimeout(timer);
    token = '';
    sessionStorage.removeItem(TOKEN_KEY);
    $('app').hidden = true;
    $('signout').hidden = true;
    $('login').hidden = false;
    $('login-error').textContent = message || '';
    $('token').value = '';
    $('token').focus();
  }

  // A write to a module no configuration can name (names start with a
  // letter or digit): 404 with the right token, 401 with a wrong one, and
  // nothing runs either way.
  async function tokenAccepted(candidate) {
    const response = await fetch('/api/v1/modules/_token-check/stop', {
      method: 'POST',
      cache: 'no-store',
      headers: { Authorization: 'Bearer ' + candidate },
    });
    if (response.status === 401) return 'This node refused the token.';
    if (response.status === 404) return null;
    return `Unexpected answer from this node: ${response.status}.`;
  }

  $('login-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const candidate = $('token').value.trim();
    $('login-submit').disabled = true;
    try {
      const refused = await tokenAccepted(candidate);
      if (refused) {
        $('login-error').textContent = refused;
        return;
      }
      token = candidate;
      sessionStorage.setItem(TOKEN_KEY, token);
      start();
    } catch (error) {
      $('login-error').textContent = `This node does not answer: ${error.message}`;
    } finally {
      $('login-submit').disabled = false;
    }
  });

  $('signout').addEventListener('click', () => showLogin('Signed out.'));

  function start() {
    $('login').hidden = true;
    $('app').hidden = false;
    $('signout').hidden = false;
    refresh();
  }

  // ---- reading the cluster ----

  function peerBases(node) {
    const port = location.port ? `:${location.port}` : '';
    return node.networks
      .map((n) => n.address)
      .filter(Boolean)
      .map((a) => `${location.protocol}//${a.includes(':') ? `[${a}]` : a}${port}`);
  }

  /** The node's /api/v1/state, from the address that answered last first. */
  async function nodeState(node) {
    if (node.local) {
      bases[node.name] = '';
      return { ok: true, status: await getJson('', '/api/v1/state') };
    }
    const candidates = peerBases(node);
    const last = bases[node.name];
    if (last && candidates.includes(last)) {
      candidates.splice(candidates.indexOf(last), 1);
      candidates.unshift(last);
    }
    let why = 'no address';
    for (const base of candidates) {
      try {
        const status = await getJson(base, '/api/v1/state');
        bases[node.name] = base;
        return { ok: true, status };
      } catch (error) {
        if (error instanceof Refused) throw error;
        why = error.name === 'TimeoutError' ? 'no answer' : error.message;
      }
    }
    delete bases[node.name];
    return { ok: false, why };
  }

  function moduleOn(states, node, name) {
    const state = states[node];
    return state && state.ok ? state.status.modules.find((m) => m.name === name) : undefined;
  }

  async function read() {
    const [cluster, nodeList] = await Promise.all([
      getJson('', '/api/v1/cluster'),
      getJson('', '/api/v1/nodes'),
    ]);
    const nodes = nodeList.nodes;
    const answers = await Promise.all(nodes.map(nodeState));
    const states = {};
    nodes.forEach((n, i) => {
      states[n.name] = answers[i];
    });
    const buckets = {};
    const events = [];
    await Promise.all(
      cluster.modules.map(async (module) => {
        const running = module.nodes.filter((n) => moduleOn(states, n, module.name));
        if (module.kind === 'farm') {
          const serving = running.find((n) => moduleOn(states, n, module.name).state === 'UP');
          if (serving) {
            try {
              buckets[module.name] = await getJson(
                bases[serving],
                `/api/v1/modules/${encodeURIComponent(module.name)}/buckets`,
              );
            } catch {
              // Between two states: the next refresh has it.
            }
          }
        }
        await Promise.all(
          running.map(async (node) => {
            try {
              const log = await getJson(
                bases[node],
                `/api/v1/modules/${encodeURIComponent(module.name)}/events?limit=40`,
              );
              for (const e of log.events) events.push({ ...e, node, module: module.name });
            } catch {
              // The node went away meanwhile: its card says so.
            }
          }),
        );
      }),
    );
    events.sort((a, b) => b.at_ms - a.at_ms);
    return { cluster, nodes, states, buckets, events: events.slice(0, 80) };
  }

  async function refresh() {
    clearTimeout(timer);
    try {
      view = await read();
      render();
      $('updated').textContent = `updated ${clock(Date.now())}`;
    } catch (error) {
      if (error instanceof Refused) {
        showLogin('The node refused the token: sign in again.');
        return;
      }
      $('updated').textContent = `this node does not answer (${error.message})`;
    }
    timer = setTimeout(refresh, REFRESH_MS);
  }

  // ---- actions ----

  async function act(node, module, action) {
    const base = bases[node];
    if (base === undefined) {
      toast(`${node} is unreachable`, true);
      return;
    }
    try {
      const response = await call(
        base,
        `/api/v1/modules/${encodeURIComponent(module)}/${action}`,
        { method: 'POST' },
      );
      if (response.status === 202) {
        toast(`${action} ${module} on ${node}: accepted`);
      } else if (response.status === 401) {
        showLogin(`${node} refused the token: sign in again.`);
        return;
      } else {
        toast(`${action} ${module} on ${node}: ${await errorText(response) || response.status}`, true);
      }
    } catch (error) {
      toast(`${action} ${module} on ${node}: ${error.message}`, true);
    }
    setTimeout(refresh, 300);
  }

  /** A button that asks for a second click before it acts. */
  function actionButton(node, module, action, label, extra) {
    const key = `${node}/${module}/${action}`;
    const isArmed = armed && armed.key === key && armed.until > Date.now();
    return h(
      'button',
      {
        class: `small ${isArmed ? 'confirm' : extra || ''}`,
        data: { node, module, action, label },
        disabled: bases[node] === undefined,
        title: isArmed ? 'Click again to confirm' : `${action} ${module} on ${node}`,
        onclick: (event) => {
          const button = event.currentTarget;
          if (armed && armed.key === key && armed.until > Date.now()) {
            armed = null;
            button.className = `small ${extra || ''}`;
            button.textContent = label;
            act(node, module, action);
            return;
          }
          armed = { key, until: Date.now() + CONFIRM_MS };
          document.querySelectorAll('button.confirm').forEach((b) => {
            b.classList.remove('confirm');
            b.textContent = b.dataset.label;
          });
          button.className = 'small confirm';
          button.textContent = `Confirm ${label.toLowerCase()}`;
          setTimeout(() => {
            if (armed && armed.key === key && armed.until <= Date.now()) {
              armed = null;
              button.className = `small ${extra || ''}`;
              button.textContent = label;
            }
          }, CONFIRM_MS + 50);
        },
      },
      isArmed ? `Confirm ${label.toLowerCase()}` : label,
    );
  }

  // ---- drawing ----

  /** Replaces `el`'s content with `build()` when `data` changed. */
  function draw(id, data, build) {
    const signature = JSON.stringify(data);
    if (drawn[id] === signature) return;
    drawn[id] = signature;
    $(id).replaceChildren(...[build()].flat());
  }

  function render() {
    const { cluster, nodes, states, buckets, events } = view;
    $('cluster').replaceChildren(
      'cluster ',
      h('b', {}, cluster.name),
      ` · ${nodes.length} nodes · seen from ${cluster.node}`,
    );
    document.title = `halo · ${cluster.name}`;
    const reach = Object.fromEntries(
      Object.entries(states).map(([n, s]) => [n, s.ok ? { base: bases[n], status: s.status } : s]),
    );
    draw('nodes', [nodes, reach], () => nodes.map((n) => nodeCard(n, states[n.name])));
    draw('modules', [cluster.modules, reach, buckets, armed], () =>
      cluster.modules.map((m) => moduleCard(m, states, buckets[m.name])),
    );
    draw('timeline', events, () =>
      events.length
        ? events.map((e) =>
            h(
              'li',
              {},
              h('time', { title: new Date(e.at_ms).toLocaleString() }, clock(e.at_ms)),
              h('span', { class: 'where' }, `${e.node} · ${e.module}`),
              h('span', { class: e.source === 'fsm' ? 'what fsm' : 'what' }, e.text),
            ),
          )
        : h('li', { class: 'empty' }, 'No events yet.'),
    );
    logChoices(cluster, states);
  }

  function nodeCard(node, state) {
    const modules = state.ok ? state.status.modules : [];
    const tones = modules.map(tone);
    const worst = !state.ok ? 'bad' : tones.includes('bad') ? 'bad' : tones.includes('busy') ? 'busy' : 'ok';
    const address = node.networks.map((n) => n.address).find(Boolean) || '—';
    const networks = node.networks.map((n) => `${n.name} ${n.up ? 'up' : 'down'}`).join(', ');
    return h(
      'div',
      { class: `card node ${worst}`, data: { node: node.name, reachable: String(state.ok) } },
      h(
        'div',
        { class: 'head' },
        h('span', { class: 'name' }, node.name),
        node.local ? h('span', { class: 'tag' }, 'this node') : null,
        state.ok
          ? h('span', { class: 'pill ok' }, 'reachable')
          : h('span', { class: 'pill bad' }, 'unreachable'),
      ),
      h(
        'dl',
        {},
        h('dt', {}, 'address'),
        h('dd', { class: 'mono' }, address),
        h('dt', {}, 'heartbeat'),
        h('dd', {}, node.local ? 'this node' : networks),
        h('dt', {}, state.ok ? 'boot epoch' : 'browser'),
        h('dd', {}, state.ok ? String(state.status.epoch) : state.why),
      ),
      h(
        'div',
        { class: 'mods' },
        modules.map((m) =>
          h('span', { class: `pill ${tone(m)}`, title: `${m.name}: ${m.state} (${m.phase})` }, `${m.name} ${m.state}`),
        ),
      ),
    );
  }

  function meter(ratio, value, done) {
    return h(
      'div',
      { class: 'meter' },
      h('div', { class: 'track' }, h('div', { class: done ? 'fill ok' : 'fill', style: `width: ${(ratio * 100).toFixed(1)}%` })),
      h('span', { class: 'value' }, value),
    );
  }

  function farmDetail(table, node) {
    if (!table) return h('span', { class: 'detail' }, 'no bucket table (no node serves)');
    const share = table.members.find((m) => m.node === node);
    if (!share) return h('span', { class: 'detail' }, 'owns no bucket');
    return h(
      'div',
      {},
      meter(share.percent / 100, `${share.percent.toFixed(1)} %`, true),
      h('div', { class: 'detail' }, `${share.buckets} of ${table.buckets} buckets · power ${share.power} · target ${share.target_percent.toFixed(1)} %`),
    );
  }

  function mirrorDetail(module) {
    const p = module && module.progress;
    if (!p) return h('span', { class: 'detail' }, module && module.state === 'PRIM' ? 'no replication figures yet' : '—');
    const ratio = p.bytes_total === 0 ? 1 : Math.min(1, p.bytes_done / p.bytes_total);
    const done = ratio >= 1;
    return h(
      'div',
      {},
      meter(ratio, `${(ratio * 100).toFixed(1)} %`, done),
      h(
        'div',
        { class: 'detail' },
        done
          ? `in sync · lag ${p.lag_seconds.toFixed(1)} s · backlog ${bytes(p.backlog_bytes)}`
          : `${bytes(p.bytes_done)} of ${bytes(p.bytes_total)} · ${p.files_done}/${p.files_total} files · ETA ${duration(p.eta_seconds)}`,
      ),
    );
  }

  function moduleCard(module, states, table) {
    const mirror = module.kind === 'mirror';
    const on = (n) => moduleOn(states, n, module.name);
    const primary = module.nodes.find((n) => on(n) && on(n).state === 'PRIM');
    const up = module.nodes.filter((n) => on(n) && on(n).state === 'UP').length;
    const summary = mirror
      ? primary
        ? `primary ${primary}`
        : 'no primary'
      : `${up} of ${module.nodes.length} nodes serving`;
    const rows = module.nodes.map((node) => {
      const m = on(node);
      const reachable = states[node] && states[node].ok;
      const state = !reachable ? 'unreachable' : m ? m.state : 'not running';
      const t = tone(reachable ? m : null);
      const switches = [];
      if (m && !m.failover && mirror) switches.push(h('span', { class: 'off' }, 'failover off'));
      if (m && !m.checkers) switches.push(h('span', { class: 'off' }, 'checkers off'));
      return h(
        'tr',
        { data: { node, module: module.name, state, tone: t } },
        h('td', { class: 'node-name' }, node),
        h(
          'td',
          { class: 'state' },
          h('span', { class: `pill ${t}`, title: m ? `${m.state}, ${m.phase}` : state }, m && m.phase === 'transient' ? `${state} …` : state),
          switches.length ? h('div', { class: 'switches' }, switches) : null,
        ),
        h('td', {}, reachable ? (mirror ? mirrorDetail(m) : farmDetail(table, node)) : h('span', { class: 'detail' }, states[node] ? states[node].why : '')),
        h(
          'td',
          { class: 'actions' },
          actionButton(node, module.name, 'start', 'Start'),
          actionButton(node, module.name, 'stop', 'Stop', 'danger'),
          actionButton(node, module.name, 'restart', 'Restart'),
          mirror ? actionButton(node, module.name, 'prim', 'Prim') : null,
          mirror ? actionButton(node, module.name, 'second', 'Second') : null,
        ),
      );
    });
    return h(
      'div',
      { class: 'card module', data: { module: module.name } },
      h(
        'div',
        { class: 'head' },
        h('span', { class: 'name' }, module.name),
        h('span', { class: 'tag' }, module.kind),
        h('span', { class: 'summary' }, summary),
        h(
          'div',
          { class: 'tools' },
          mirror && primary ? actionButton(primary, module.name, 'swap', 'Swap', 'primary') : null,
        ),
      ),
      h(
        'table',
        {},
        h('thead', {}, h('tr', {}, h('th', {}, 'node'), h('th', {}, 'state'), h('th', {}, mirror ? 'replication' : 'load share'), h('th', {}, ''))),
        h('tbody', {}, rows),
      ),
    );
  }

  // ---- log view ----

  function fillSelect(select, values) {
    const current = select.value;
    const same = [...select.options].map((o) => o.value).join('\n') === values.join('\n');
    if (!same) select.replaceChildren(...values.map((v) => h('option', { value: v }, v)));
    if (values.includes(current)) select.value = current;
  }

  let logKey = '';
  async function logChoices(cluster, states) {
    fillSelect($('log-node'), view.nodes.filter((n) => states[n.name].ok).map((n) => n.name));
    const node = $('log-node').value;
    fillSelect(
      $('log-module'),
      cluster.modules.filter((m) => m.nodes.includes(node)).map((m) => m.name),
    );
    const module = $('log-module').value;
    if (!node || !module || bases[node] === undefined) {
      $('log').replaceChildren(h('span', { class: 'empty' }, 'No log to show.'));
      return;
    }
    try {
      const log = await getJson(bases[node], `/api/v1/modules/${encodeURIComponent(module)}/events?limit=500`);
      const last = log.events[log.events.length - 1];
      const key = `${node}/${module}/${log.events.length}/${last ? last.at_ms : 0}`;
      if (key === logKey) return;
      logKey = key;
      const pre = $('log');
      pre.replaceChildren(
        ...log.events.map((e) =>
          h('div', {}, h('span', { class: 't' }, `${new Date(e.at_ms).toISOString().replace('T', ' ').slice(0, 23)} `), h('span', { class: 's' }, `${e.source} `), e.text),
        ),
      );
      if ($('log-follow').checked) pre.scrollTop = pre.scrollHeight;
    } catch {
      // The next refresh tries again.
    }
  }
  for (const id of ['log-node', 'log-module']) {
    $(id).addEventListener('change', () => {
      logKey = '';
      if (view) logChoices(view.cluster, view.states);
    });
  }

  if (token) start();
  else showLogin();
})();
