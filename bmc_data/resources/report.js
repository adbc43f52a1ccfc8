/* bmc_data.report page logic. Data arrive through two global functions called by script files beside the page
   (works under file://, no fetch): BMC_INDEX(index) once, BMC_ROWS(chunk, rows) per chunk. All dataset text is
   put into the page with textContent / text nodes, never as HTML. */
(function () {
  'use strict';
  var CFG = window.BMC_CONFIG || {};
  var IDX = null;
  var chunks = new Map();
  var waiting = new Map();
  var S = { status: -1, group: -1, query: '', sort: 'row', dir: 1, page: 0, selected: -1 };
  var hits = null, searched = 0, searchGen = 0;
  var view = [];
  var $ = function (id) { return document.getElementById(id); };

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  // --- data -----------------------------------------------------------------------------------------------
  window.BMC_ROWS = function (k, rows) {
    chunks.set(k, rows);
    var w = waiting.get(k);
    if (w) { waiting.delete(k); w.resolve(rows); }
  };
  function loadChunk(k) {
    if (chunks.has(k)) return Promise.resolve(chunks.get(k));
    if (waiting.has(k)) return waiting.get(k).promise;
    var entry = {};
    entry.promise = new Promise(function (res, rej) { entry.resolve = res; entry.reject = rej; });
    waiting.set(k, entry);
    var s = document.createElement('script');
    s.src = CFG.files + '/rows-' + String(k).padStart(5, '0') + '.js';
    s.charset = 'utf-8';
    s.onload = function () { s.remove(); };
    s.onerror = function () { waiting.delete(k); s.remove(); entry.reject(new Error('could not load ' + s.src)); };
    document.head.appendChild(s);
    return entry.promise;
  }
  function getRow(i) { return loadChunk(Math.floor(i / IDX.chunk)).then(function (rows) { return rows[i % IDX.chunk]; }); }
  function sideText(side, raw) { return side.t !== undefined ? side.t : (side.a || '') + raw + (side.z || ''); }
  function promptText(p) {
    if (typeof p === 'string') return p;
    return p.map(function (m) { return '[' + m.role + '] ' + m.content; }).join('\n');
  }

  // --- list -----------------------------------------------------------------------------------------------
  function computeView() {
    var n = IDX.n, out = [];
    for (var i = 0; i < n; i++) {
      if (S.status >= 0 && IDX.st[i] !== S.status) continue;
      if (S.group >= 0 && IDX.gr[i] !== S.group) continue;
      if (hits && !hits[i]) continue;
      out.push(i);
    }
    if (S.sort !== 'row') {
      var key = IDX[S.sort], d = S.dir;
      out.sort(function (a, b) { return (key[a] - key[b]) * d || a - b; });
    } else if (S.dir < 0) out.reverse();
    view = out;
  }
  function statusName(i) { return IDX.statuses[IDX.st[i]]; }
  function renderList() {
    computeView();
    var pages = Math.max(1, Math.ceil(view.length / IDX.page));
    if (S.page >= pages) S.page = pages - 1;
    var body = $('rows').tBodies[0];
    var frag = document.createDocumentFragment();
    var lo = S.page * IDX.page, hi = Math.min(view.length, lo + IDX.page);
    for (var k = lo; k < hi; k++) {
      var i = view[k], st = statusName(i);
      var tr = el('tr');
      tr.dataset.row = i; tr.tabIndex = 0;
      tr.setAttribute('aria-selected', String(i === S.selected));
      tr.appendChild(el('td', null, i));
      var td = el('td'); td.appendChild(el('span', 'badge b-' + st, st)); tr.appendChild(td);
      tr.appendChild(el('td', null, IDX.eb[i] + ' \u2192 ' + IDX.ea[i]));
      tr.appendChild(el('td', null, IDX.sh[i] < 0 ? '\u2013' : Math.round(IDX.sh[i] / 10) + '%'));
      var g = IDX.gr[i];
      var last = el('td', g >= 0 ? 'why' : null, g >= 0 ? IDX.groups[g][0] : IDX.sn[i]);
      last.title = g >= 0 ? IDX.groups[g][0] : IDX.sn[i];
      tr.appendChild(last);
      frag.appendChild(tr);
    }
    body.replaceChildren(frag);
    var c = $('count');
    c.dataset.count = view.length;
    var searching = hits && searched < IDX.chunks;
    c.textContent = view.length.toLocaleString('en') + ' row' + (view.length === 1 ? '' : 's') +
      (S.query ? ' matching \u201c' + S.query + '\u201d' + (searching ? ' (searching ' + searched + '/' + IDX.chunks + ' chunks\u2026)' : '') : '');
    $('pageinfo').textContent = 'page ' + (S.page + 1) + ' of ' + pages;
    $('prev').disabled = S.page === 0; $('next').disabled = S.page >= pages - 1;
  }

  function runSearch(q) {
    var gen = ++searchGen;
    S.query = q; S.page = 0;
    if (!q) { hits = null; renderList(); return; }
    var needle = q.toLowerCase();
    hits = new Uint8Array(IDX.n); searched = 0;
    renderList();
    var k = 0;
    function next() {
      if (gen !== searchGen || k >= IDX.chunks) return;
      var kk = k++;
      loadChunk(kk).then(function (rows) {
        if (gen !== searchGen) return;
        for (var j = 0; j < rows.length; j++) {
          var r = rows[j];
          var hay = promptText(r.p) + '\u0000' + r.c + '\u0000' + r.l + '\u0000' + (r.o || '') + '\u0000' + (r.why || '') + '\u0000' + (r.id || '');
          if (hay.toLowerCase().indexOf(needle) >= 0) hits[kk * IDX.chunk + j] = 1;
        }
        searched = kk + 1;
        if (searched === IDX.chunks || searched % 8 === 0) renderList();
        next();
      }, function (err) { $('count').textContent = String(err.message); });
    }
    next();
  }

  // --- detail ---------------------------------------------------------------------------------------------
  function marked(side, raw, tag, weights) {
    var text = sideText(side, raw), m = side.m, pre = el('pre', 'txt side'), end = 0, pos = 0;
    for (var k = 0; k < m.length; k += 2) {
      var s = end + m[k], e = s + m[k + 1];
      if (s > pos) pre.appendChild(document.createTextNode(text.slice(pos, s)));
      var piece = text.slice(s, e), t = el(tag, 'tok', piece);
      if (!piece) t.classList.add('z');
      else if (/^\s+$/.test(piece)) t.classList.add(piece.indexOf('\n') >= 0 ? 'nl' : 'sp');
      if (weights && weights[k / 2] !== undefined) {
        var w = weights[k / 2];
        t.title = '\u03bb = ' + w.toFixed(3);
        t.style.boxShadow = 'inset 0 -1.2em rgba(214,120,20,' + Math.min(0.65, 0.08 + 0.57 * (w - 1) / (CFG.delta || 1)).toFixed(3) + ')';
      }
      pre.appendChild(t);
      pos = e; end = e;
    }
    if (pos < text.length) pre.appendChild(document.createTextNode(text.slice(pos)));
    return pre;
  }
  function rowJSON(i, r) {
    var o = { row: i, prompt: r.p, chosen: r.c, rejected: r.l, original_chosen: r.o !== undefined ? r.o : r.c,
      bmc_status: statusName(i), bmc_reason: r.why || '' };
    if (r.id) o.id = r.id;
    if (r.a) o.answer = r.a;
    if (r.v) o.bmc_prompt_version = r.v;
    if (r.pv) o.bmc_provider = r.pv;
    if (r.mo) o.bmc_model = r.mo;
    return JSON.stringify(o, null, 2);
  }
  function copy(text, button) {
    function done(ok) { button.textContent = ok ? 'copied' : 'copy failed'; setTimeout(function () { button.textContent = 'copy as JSON'; }, 1500); }
    function fallback() {
      var ta = el('textarea'); ta.value = text; ta.style.position = 'fixed'; ta.style.opacity = '0';
      document.body.appendChild(ta); ta.select();
      var ok = false; try { ok = document.execCommand('copy'); } catch (e) { ok = false; }
      ta.remove(); done(ok);
    }
    if (navigator.clipboard && navigator.clipboard.writeText) navigator.clipboard.writeText(text).then(function () { done(true); }, fallback);
    else fallback();
  }
  function renderDetail(i, r) {
    var st = statusName(i), d = $('detail');
    var head = el('div', 'dhead');
    head.appendChild(el('h2', null, 'Row ' + i));
    head.appendChild(el('span', 'badge b-' + st, st));
    var a = el('a', null, 'permalink'); a.href = '#row-' + i; head.appendChild(a);
    var b = el('button', 'copy', 'copy as JSON'); b.type = 'button';
    b.addEventListener('click', function () { copy(rowJSON(i, r), b); });
    head.appendChild(b);
    var frag = document.createDocumentFragment();
    frag.appendChild(head);
    if (r.why) frag.appendChild(el('p', 'warn', r.why));
    var kv = el('dl', 'kv');
    [['id', r.id], ['answer', r.a], ['editor', [r.pv, r.mo].filter(Boolean).join(' \u00b7 ')], ['prompt version', r.v],
     ['edit distance', IDX.eb[i] + ' words before \u2192 ' + IDX.ea[i] + ' after']].forEach(function (p) {
      if (p[1]) { kv.appendChild(el('dt', null, p[0])); kv.appendChild(el('dd', null, p[1])); }
    });
    frag.appendChild(kv);
    frag.appendChild(el('h3', null, 'Prompt'));
    frag.appendChild(el('pre', 'txt prompt', promptText(r.p)));
    var bridged = st === 'bridged';
    frag.appendChild(el('h3', null, bridged ? '\u1ef9_w (pseudo-winner) against y_l' : 'y_w against y_l (not bridged: chosen is the original winner)'));
    var unit = r.k === 'token' ? 'tokens' : 'words';
    var nc = r.cd.m.length / 2, nr = r.rd.m.length / 2;
    frag.appendChild(el('p', 'note', (r.k === 'token' ? 'Token-level diff from the stored masks: ' : 'Word-level diff (no usable token masks): ') +
      nc + ' of ' + r.cd.n + ' ' + unit + ' of the chosen response and ' + nr + ' of ' + r.rd.n + ' of y_l are marked.' +
      (r.k === 'token' ? ' The text includes what the trainer appends (EOS or chat markup).' : '')));
    if (r.kn) frag.appendChild(el('p', 'warn', r.kn));
    if (r.lw) {
      var lp = el('p', 'note');
      lp.appendChild(el('span', 'legend-l'));
      lp.appendChild(document.createTextNode(' shade: BMC weight \u03bb = 1 + min(1/\u03c0\u03b8, \u03b4) of each marked token (\u03b4 = ' + CFG.delta + '); hover a token for its value.'));
      frag.appendChild(lp);
    }
    var cols = el('div', 'cols');
    var left = el('div', 'rej'), right = el('div', 'cho');
    var hl = el('h4', null, 'y_l \u2014 rejected '); hl.appendChild(el('small', null, '(struck: changed or removed)'));
    var hr = el('h4', null, (bridged ? '\u1ef9_w \u2014 pseudo-winner ' : 'y_w \u2014 chosen ')); hr.appendChild(el('small', null, '(underlined: new or changed)'));
    left.appendChild(hl); left.appendChild(marked(r.rd, r.l, 'del', r.lw && r.lw.r));
    right.appendChild(hr); right.appendChild(marked(r.cd, r.c, 'ins', r.lw && r.lw.c));
    cols.appendChild(left); cols.appendChild(right);
    frag.appendChild(cols);
    if (bridged) {
      var det = el('details');
      det.appendChild(el('summary', null, 'y_w \u2014 original winner (before bridging)'));
      det.appendChild(el('pre', 'txt', r.o !== undefined ? r.o : r.c));
      frag.appendChild(det);
    }
    d.replaceChildren(frag);
    d.dataset.row = i;
    d.scrollTop = 0;
  }
  function show(i) {
    if (!(i >= 0 && i < IDX.n)) { $('detail').replaceChildren(el('p', 'warn', 'No row ' + i + ' in this report.')); return; }
    S.selected = i;
    Array.prototype.forEach.call($('rows').tBodies[0].rows, function (tr) { tr.setAttribute('aria-selected', String(+tr.dataset.row === i)); });
    $('detail').replaceChildren(el('p', 'muted', 'loading row ' + i + '\u2026'));
    getRow(i).then(function (r) { if (S.selected === i) renderDetail(i, r); },
      function (err) { $('detail').replaceChildren(el('p', 'warn', err.message + ' (is the ' + CFG.files + '/ folder beside this page?)')); });
  }
  function fromHash() {
    var m = /^#row-(\d+)$/.exec(location.hash);
    if (m) show(parseInt(m[1], 10));
  }

  // --- controls -------------------------------------------------------------------------------------------
  function setStatus(s) {
    S.status = s; S.page = 0;
    Array.prototype.forEach.call($('status-chips').children, function (c) { c.setAttribute('aria-pressed', String(+c.dataset.s === s)); });
    fillGroups();
    renderList();
  }
  function fillGroups() {
    var sel = $('group'), keep = S.group;
    var opts = [new Option('all reasons', '-1')];
    IDX.groups.forEach(function (g, k) {
      if (S.status < 0 || IDX.statuses[S.status] === g[1]) opts.push(new Option(g[1] + ': ' + g[0] + ' (' + g[2] + ')', String(k)));
    });
    sel.replaceChildren.apply(sel, opts);
    var still = opts.some(function (o) { return +o.value === keep; });
    S.group = still ? keep : -1;
    sel.value = String(S.group);
  }
  function init() {
    var chips = $('status-chips');
    var counts = IDX.statuses.map(function () { return 0; });
    for (var i = 0; i < IDX.n; i++) counts[IDX.st[i]]++;
    var all = el('button', 'chip', 'all (' + IDX.n.toLocaleString('en') + ')'); all.type = 'button'; all.dataset.s = '-1';
    chips.appendChild(all);
    IDX.statuses.forEach(function (s, k) {
      var c = el('button', 'chip', s + ' (' + counts[k].toLocaleString('en') + ')'); c.type = 'button'; c.dataset.s = String(k); c.dataset.status = s;
      chips.appendChild(c);
    });
    chips.addEventListener('click', function (e) { var c = e.target.closest('.chip'); if (c) setStatus(+c.dataset.s); });
    Array.prototype.forEach.call(document.querySelectorAll('.stat'), function (b) {
      b.addEventListener('click', function () { setStatus(IDX.statuses.indexOf(b.dataset.status)); $('rows').scrollIntoView({ block: 'start' }); });
    });
    $('group').addEventListener('change', function (e) { S.group = +e.target.value; S.page = 0; renderList(); });
    $('sort').addEventListener('change', function (e) { S.sort = e.target.value; S.dir = S.sort === 'row' ? 1 : -1; $('dir').textContent = S.dir > 0 ? 'ascending' : 'descending'; S.page = 0; renderList(); });
    $('dir').addEventListener('click', function () { S.dir = -S.dir; $('dir').textContent = S.dir > 0 ? 'ascending' : 'descending'; S.page = 0; renderList(); });
    var timer = null;
    $('q').addEventListener('input', function (e) { clearTimeout(timer); var v = e.target.value.trim(); timer = setTimeout(function () { runSearch(v); }, 250); });
    $('prev').addEventListener('click', function () { S.page--; renderList(); });
    $('next').addEventListener('click', function () { S.page++; renderList(); });
    var body = $('rows').tBodies[0];
    body.addEventListener('click', function (e) { var tr = e.target.closest('tr'); if (tr) location.hash = 'row-' + tr.dataset.row; });
    body.addEventListener('keydown', function (e) {
      var tr = e.target.closest('tr'); if (!tr) return;
      if (e.key === 'Enter') location.hash = 'row-' + tr.dataset.row;
      else if (e.key === 'ArrowDown' && tr.nextElementSibling) { e.preventDefault(); tr.nextElementSibling.focus(); }
      else if (e.key === 'ArrowUp' && tr.previousElementSibling) { e.preventDefault(); tr.previousElementSibling.focus(); }
    });
    window.addEventListener('hashchange', fromHash);
    setStatus(-1);
    fromHash();
    document.documentElement.dataset.ready = '1';
    if (window.performance && performance.mark) performance.mark('bmc-ready');
  }
  window.BMC_INDEX = function (data) { IDX = data; init(); };
  window.addEventListener('load', function () {
    if (!IDX) $('count').textContent = 'The row index (' + CFG.files + '/index.js) did not load: keep that folder beside this page.';
  });
})();
