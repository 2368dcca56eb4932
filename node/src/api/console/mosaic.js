// halo mosaic: fires requests at a URL (by default a farm VIP of this
// node's configuration, written into the page by the daemon) and paints
// each tile with the colour of the node that answered: the answer's body
// is the node's name, as the lab's and the demo's web servers answer.
'use strict';

(() => {
  const PALETTE = ['#3563e9', '#1f9d55', '#e08a00', '#9b51e0', '#0ea5b7', '#db2777', '#65a30d', '#c2410c', '#475569', '#a16207'];
  const TIMEOUT_MS = 3000;
  const URL_KEY = 'halo.mosaic.url';
  const $ = (id) => document.getElementById(id);

  const colours = new Map();
  const counts = new Map();
  let failed = 0;
  let run = 0;

  function colour(name) {
    if (!colours.has(name)) colours.set(name, PALETTE[colours.size % PALETTE.length]);
    return colours.get(name);
  }

  let targets = [];
  try {
    targets = JSON.parse($('targets-data').textContent);
  } catch {
    targets = [];
  }
  $('targets').replaceChildren(
    ...targets.map((t) => {
      const option = document.createElement('option');
      option.value = t;
      return option;
    }),
  );
  $('url').value = sessionStorage.getItem(URL_KEY) || targets[0] || '';

  // The cluster's nodes get the first colours, in the configuration's
  // order, so that n1 is always the same colour.
  (async () => {
    const token = sessionStorage.getItem('halo.token');
    try {
      const response = await fetch('/api/v1/cluster', {
        cache: 'no-store',
        headers: token ? { Authorization: 'Bearer ' + token } : {},
      });
      if (!response.ok) return;
      const cluster = await response.json();
      for (const node of cluster.nodes) colour(node);
      const name = document.createElement('b');
      name.textContent = cluster.name;
      $('cluster').replaceChildren('cluster ', name);
      legend();
    } catch {
      // Colours then come in the order nodes answer.
    }
  })();

  function legend() {
    const total = [...counts.values()].reduce((a, b) => a + b, 0) + failed;
    const entry = (swatch, label, n) => {
      const el = document.createElement('div');
      el.className = 'entry';
      const sw = document.createElement('span');
      sw.className = 'swatch';
      sw.style.background = swatch;
      const name = document.createElement('b');
      name.textContent = label;
      const count = document.createElement('span');
      count.className = 'count';
      count.textContent = total ? `${n} · ${((100 * n) / total).toFixed(0)} %` : '0';
      el.append(sw, name, count);
      return el;
    };
    const entries = [...colours.keys()].map((name) => entry(colour(name), name, counts.get(name) || 0));
    if (failed) entries.push(entry('#4b5263', 'failed', failed));
    $('legend').replaceChildren(...entries);
  }

  function tiles(n) {
    const grid = $('tiles');
    grid.replaceChildren(
      ...Array.from({ length: n }, () => {
        const tile = document.createElement('div');
        tile.className = 'tile';
        return tile;
      }),
    );
    return [...grid.children];
  }

  function paint(tile, name) {
    tile.classList.remove('pending', 'failed');
    if (name === null) {
      tile.classList.add('failed');
      tile.style.background = '';
      tile.textContent = '✕';
      tile.dataset.node = '';
      return;
    }
    tile.style.background = colour(name);
    tile.textContent = name.length <= 4 ? name : '';
    tile.title = name;
    tile.dataset.node = name;
  }

  async function probe(url, i) {
    const separator = url.includes('?') ? '&' : '?';
    const response = await fetch(`${url}${separator}tile=${i}&t=${Date.now()}`, {
      cache: 'no-store',
      signal: AbortSignal.timeout(TIMEOUT_MS),
    });
    const body = (await response.text()).trim();
    if (!response.ok || !body) throw new Error(`${response.status}`);
    return body.split(/\s/)[0];
  }

  async function start(event) {
    event.preventDefault();
    const url = $('url').value.trim();
    const n = Math.max(1, Math.min(2000, Number($('count').value) || 200));
    const parallel = Math.max(1, Math.min(32, Number($('parallel').value) || 6));
    sessionStorage.setItem(URL_KEY, url);
    const mine = ++run;
    counts.clear();
    failed = 0;
    let lastError = '';
    const all = tiles(n);
    $('start').disabled = true;
    $('stop').disabled = false;
    $('hint').classList.remove('bad');
    $('status').textContent = `requesting ${url}`;
    legend();
    let next = 0;
    const worker = async () => {
      while (run === mine) {
        if (next >= n) {
          if (!$('loop').checked) return;
          next = 0;
          counts.clear();
          failed = 0;
        }
        const i = next++;
        const tile = all[i];
        tile.classList.add('pending');
        try {
          const name = await probe(url, i);
          counts.set(name, (counts.get(name) || 0) + 1);
          paint(tile, name);
        } catch (error) {
          failed += 1;
          lastError = error.name === 'TimeoutError' ? 'no answer' : error.message;
          paint(tile, null);
        }
        legend();
      }
    };
    await Promise.all(Array.from({ length: parallel }, worker));
    if (run !== mine) return;
    $('start').disabled = false;
    $('stop').disabled = true;
    const answered = [...counts.values()].reduce((a, b) => a + b, 0);
    $('status').textContent = `${answered} answered, ${failed} failed`;
    if (failed && !answered) {
      $('hint').classList.add('bad');
      $('hint').textContent = `No answer could be read from ${url} (${lastError}): is a server listening there, and does it send Access-Control-Allow-Origin: * ?`;
    }
  }

  $('controls').addEventListener('submit', start);
  $('stop').addEventListener('click', () => {
    run += 1;
    $('start').disabled = false;
    $('stop').disabled = true;
    $('status').textContent = 'stopped';
  });
  tiles(Number($('count').value));
})();
