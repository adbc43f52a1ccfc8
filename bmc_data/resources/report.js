/* bmc_data.report page logic. Data arrive through two global functions called by script files beside the page
   (works under file://, no fetch): BMC_INDEX(index) once, BMC_ROWS(chunk, rows) per chunk. All dataset text is
   put into the page with textContent / text nodes, never as HTML. Span offsets are UTF-16 units (JS indices).
   The review part (decisions, export/import) is at the end: decisions live in localStorage under the dataset's
   fingerprint until exported as JSONL for bmc_data.apply_review. */
(function () {
  'use strict';
  var CFG = window.BMC_CONFIG || {};
  var IDX = null;
  var chunks = new Map();
  var waiting = new Map();
  var RANGES = [['ea', 'word edit distance after'], ['eb', 'word edit distance before'], ['td', 'token edit distance'],
    ['sh', 'diff share, %'], ['nc', 'length of \u1ef9_w'], ['dl', 'length change']];
  var DEFAULTS = { status: -1, group: -1, q: '', field: 'all', sort: 'row', dir: 1, page: 0, row: -1, view: 'l',
    dec: '', seed: 1, r: {}, x: {} };
  var S = JSON.parse(JSON.stringify(DEFAULTS));
  var hits = null, searched = 0, searchGen = 0, view = [], active = -1, current = null, changeAt = -1, listed = false;
  var DEC = {}, saveTimer = null;
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
  function key(name, i) { return name === 'dl' ? IDX.nc[i] - IDX.nl[i] : name === 'sh' ? IDX.sh[i] / 10 : IDX[name][i]; }
  function statusName(i) { return IDX.statuses[IDX.st[i]]; }

  // --- state in the URL (#row=12&status=bridged&q=...): a view can be shared ------------------------------
  function toHash() {
    var p = new URLSearchParams();
    if (S.row >= 0) p.set('row', S.row);
    if (S.status >= 0) p.set('status', IDX.statuses[S.status]);
    if (S.group >= 0) p.set('reason', S.group);
    if (S.q) p.set('q', S.q);
    if (S.field !== 'all') p.set('in', S.field);
    if (S.sort !== 'row') p.set('sort', S.sort);
    if (S.dir !== (S.sort === 'row' ? 1 : -1)) p.set('dir', S.dir);
    if (S.sort === 'rnd') p.set('seed', S.seed);
    if (S.page) p.set('page', S.page + 1);
    if (S.view !== 'l') p.set('view', S.view);
    if (S.dec) p.set('decision', S.dec);
    Object.keys(S.r).forEach(function (k) { p.set('r.' + k, (S.r[k][0] === null ? '' : S.r[k][0]) + '~' + (S.r[k][1] === null ? '' : S.r[k][1])); });
    Object.keys(S.x).forEach(function (k) { p.set('x.' + IDX.ex[k][0], IDX.ex[k][1][S.x[k]]); });
    return p.toString();
  }
  function saveHash() { var h = toHash(); if (location.hash.slice(1) !== h) history.replaceState(null, '', h ? '#' + h : location.pathname + location.search); }
  function fromHash() {
    var h = location.hash.slice(1), old = /^row-(\d+)$/.exec(h);
    if (old) {  // a row permalink (#row-12) keeps the current view
      if (!listed) { syncControls(); renderList(); }
      show(parseInt(old[1], 10), false);
      return;
    }
    var p = new URLSearchParams(h);
    var st = JSON.parse(JSON.stringify(DEFAULTS));
    var num = function (v, d) { var x = parseInt(v, 10); return isNaN(x) ? d : x; };
    st.row = p.has('row') ? num(p.get('row'), -2) : -1;
    st.status = p.has('status') ? IDX.statuses.indexOf(p.get('status')) : -1;
    st.group = num(p.get('reason'), -1);
    st.q = p.get('q') || '';
    st.field = p.get('in') || 'all';
    st.sort = p.get('sort') || 'row';
    st.dir = p.has('dir') ? (num(p.get('dir'), 1) < 0 ? -1 : 1) : (st.sort === 'row' ? 1 : -1);
    st.seed = num(p.get('seed'), 1);
    st.page = Math.max(0, num(p.get('page'), 1) - 1);
    st.view = p.get('view') === 'w' ? 'w' : 'l';
    st.dec = p.get('decision') || '';
    p.forEach(function (v, k) {
      if (k.indexOf('r.') === 0) {
        var parts = v.split('~'), lo = parseFloat(parts[0]), hi = parseFloat(parts[1]);
        st.r[k.slice(2)] = [isNaN(lo) ? null : lo, isNaN(hi) ? null : hi];
      } else if (k.indexOf('x.') === 0) {
        IDX.ex.forEach(function (f, c) { if (f[0] === k.slice(2) && f[1].indexOf(v) >= 0) st.x[c] = f[1].indexOf(v); });
      }
    });
    var queryChanged = st.q !== S.q || st.field !== S.field;
    S = st;
    syncControls();
    if (queryChanged) runSearch(); else renderList();
    if (S.row >= 0 || S.row === -2) show(S.row === -2 ? NaN : S.row, false);
  }

  // --- list -----------------------------------------------------------------------------------------------
  function rand(seed) { return function () { seed = (seed * 1103515245 + 12345) & 0x7fffffff; return seed / 0x7fffffff; }; }
  function computeView() {
    var n = IDX.n, out = [], rk = Object.keys(S.r), xk = Object.keys(S.x);
    for (var i = 0; i < n; i++) {
      if (S.status >= 0 && IDX.st[i] !== S.status) continue;
      if (S.group >= 0 && IDX.gr[i] !== S.group) continue;
      if (hits && !hits[i]) continue;
      if (S.dec) { var d = DEC[i] ? DEC[i][0] : 'none'; if (d !== S.dec) continue; }
      var ok = true;
      for (var a = 0; a < rk.length && ok; a++) {
        var v = key(rk[a], i), r = S.r[rk[a]];
        if ((r[0] !== null && v < r[0]) || (r[1] !== null && v >= r[1])) ok = false;  // [from, below)
      }
      for (var b = 0; b < xk.length && ok; b++) if (IDX.ex[xk[b]][2][i] !== S.x[xk[b]]) ok = false;
      if (ok) out.push(i);
    }
    if (S.sort === 'rnd') {
      var rng = rand(S.seed);
      for (var j = out.length - 1; j > 0; j--) { var t = Math.floor(rng() * (j + 1)), tmp = out[j]; out[j] = out[t]; out[t] = tmp; }
    } else if (S.sort !== 'row') {
      var name = S.sort, dd = S.dir;
      out.sort(function (x, y) { return (key(name, x) - key(name, y)) * dd || x - y; });
    } else if (S.dir < 0) out.reverse();
    view = out;
  }
  function decCell(i) { return DEC[i] ? DEC[i][0] + (DEC[i][1] ? ' \u270e' : '') : '\u2013'; }
  function renderList() {
    listed = true;
    computeView();
    var pages = Math.max(1, Math.ceil(view.length / IDX.page));
    if (S.page >= pages) S.page = pages - 1;
    var body = $('rows').tBodies[0];
    var frag = document.createDocumentFragment();
    var lo = S.page * IDX.page, hi = Math.min(view.length, lo + IDX.page);
    var focusRow = view.indexOf(S.row) >= lo && view.indexOf(S.row) < hi ? S.row : (view.indexOf(active) >= lo && view.indexOf(active) < hi ? active : view[lo]);
    for (var k = lo; k < hi; k++) {
      var i = view[k], st = statusName(i);
      var tr = el('tr');
      tr.dataset.row = i; tr.id = 'r-' + i;
      tr.tabIndex = i === focusRow ? 0 : -1;
      tr.setAttribute('aria-selected', String(i === S.row));
      tr.appendChild(el('td', null, i));
      var td = el('td'); td.appendChild(el('span', 'badge b-' + st, st)); tr.appendChild(td);
      tr.appendChild(el('td', 'dec d-' + (DEC[i] ? DEC[i][0] : 'none'), decCell(i)));
      tr.appendChild(el('td', null, IDX.eb[i] + ' \u2192 ' + IDX.ea[i]));
      tr.appendChild(el('td', null, IDX.td[i]));
      var dl = IDX.nc[i] - IDX.nl[i];
      tr.appendChild(el('td', null, IDX.nc[i] + ' (' + (dl > 0 ? '+' : '') + dl + ')'));
      tr.appendChild(el('td', null, IDX.sh[i] < 0 ? '\u2013' : Math.round(IDX.sh[i] / 10) + '%'));
      var g = IDX.gr[i];
      var last = el('td', g >= 0 ? 'why' : null, g >= 0 ? IDX.groups[g][0] : IDX.sn[i]);
      last.title = g >= 0 ? IDX.groups[g][0] : IDX.sn[i];
      tr.appendChild(last);
      frag.appendChild(tr);
    }
    active = focusRow === undefined ? -1 : focusRow;
    body.replaceChildren(frag);
    Array.prototype.forEach.call($('rows').tHead.rows[0].cells, function (th) {
      if (th.dataset.key === S.sort || (S.sort === 'row' && th.dataset.key === 'row')) th.setAttribute('aria-sort', S.dir > 0 ? 'ascending' : 'descending');
      else th.removeAttribute('aria-sort');
    });
    var c = $('count');
    c.dataset.count = view.length;
    var searching = hits && searched < IDX.chunks;
    c.textContent = view.length.toLocaleString('en') + ' row' + (view.length === 1 ? '' : 's') +
      (S.q ? ' matching \u201c' + S.q + '\u201d' + (searching ? ' (searching ' + searched + '/' + IDX.chunks + ' chunks\u2026)' : '') : '') +
      (S.sort === 'rnd' ? ', in random order (seed ' + S.seed + ')' : '');
    $('pageinfo').textContent = 'page ' + (S.page + 1) + ' of ' + pages;
    $('prev').disabled = S.page === 0; $('next').disabled = S.page >= pages - 1;
    saveHash();
  }
  function haystack(r) {
    var f = S.field;
    if (f === 'p') return promptText(r.p);
    if (f === 'c') return r.c;
    if (f === 'l') return r.l;
    if (f === 'o') return r.o !== undefined ? r.o : r.c;
    if (f === 'why') return r.why || '';
    if (f === 'id') return r.id || '';
    return promptText(r.p) + '\u0000' + r.c + '\u0000' + r.l + '\u0000' + (r.o || '') + '\u0000' + (r.why || '') + '\u0000' + (r.id || '');
  }
  function runSearch() {
    var gen = ++searchGen;
    if (!S.q) { hits = null; renderList(); return; }
    var needle = S.q.toLowerCase();
    hits = new Uint8Array(IDX.n); searched = 0;
    renderList();
    var k = 0;
    function next() {
      if (gen !== searchGen || k >= IDX.chunks) return;
      var kk = k++;
      loadChunk(kk).then(function (rows) {
        if (gen !== searchGen) return;
        for (var j = 0; j < rows.length; j++) if (haystack(rows[j]).toLowerCase().indexOf(needle) >= 0) hits[kk * IDX.chunk + j] = 1;
        searched = kk + 1;
        if (searched === IDX.chunks || searched % 8 === 0) renderList();
        next();
      }, function (err) { $('count').textContent = String(err.message); });
    }
    next();
  }

  // --- detail ---------------------------------------------------------------------------------------------
  var FOLD = 700, KEEP = 200;
  function plain(pre, text, fold) {  // unchanged text; a long stretch folds to its ends with a button between
    if (!fold || text.length <= FOLD) { pre.appendChild(document.createTextNode(text)); return; }
    var head = text.slice(0, KEEP), tail = text.slice(text.length - KEEP), mid = text.slice(KEEP, text.length - KEEP);
    pre.appendChild(document.createTextNode(head));
    var b = el('button', 'fold', '\u2026 ' + mid.length.toLocaleString('en') + ' unchanged characters (show)'); b.type = 'button';
    b.addEventListener('click', function () { b.replaceWith(document.createTextNode(mid)); });
    pre.appendChild(b);
    pre.appendChild(document.createTextNode(tail));
  }
  function marked(text, m, tag, weights) {
    var pre = el('pre', 'txt side'), end = 0, pos = 0;
    for (var k = 0; k < m.length; k += 2) {
      var s = end + m[k], e = s + m[k + 1];
      if (s > pos) plain(pre, text.slice(pos, s), true);
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
    if (pos < text.length) plain(pre, text.slice(pos), true);
    return pre;
  }
  function highlight(root, needle) {  // search matches inside one text node each, as <mark>
    if (!needle) return;
    var low = needle.toLowerCase(), walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT), nodes = [];
    while (walker.nextNode()) nodes.push(walker.currentNode);
    nodes.forEach(function (node) {
      var text = node.nodeValue, at = text.toLowerCase().indexOf(low);
      if (at < 0) return;
      var frag = document.createDocumentFragment(), pos = 0;
      while (at >= 0) {
        frag.appendChild(document.createTextNode(text.slice(pos, at)));
        frag.appendChild(el('mark', 'hit', text.slice(at, at + needle.length)));
        pos = at + needle.length;
        at = text.toLowerCase().indexOf(low, pos);
      }
      frag.appendChild(document.createTextNode(text.slice(pos)));
      node.replaceWith(frag);
    });
  }
  function rowObject(i, r) {  // the row as the dataset has it: original column names, chat messages, extra columns
    var o = { prompt: r.p, chosen: r.cr !== undefined ? r.cr : r.c, rejected: r.lr !== undefined ? r.lr : r.l,
      original_chosen: r.or !== undefined ? r.or : (r.o !== undefined ? r.o : (r.cr !== undefined ? r.cr : r.c)) };
    if (r.id !== undefined) o.id = r.id;
    if (r.a !== undefined) o.answer = r.a;
    o.bmc_status = statusName(i);
    o.bmc_reason = r.why || '';
    if (r.v) o.bmc_prompt_version = r.v;
    if (r.pv) o.bmc_provider = r.pv;
    if (r.mo) o.bmc_model = r.mo;
    if (r.x) Object.keys(r.x).forEach(function (k) { o[k] = r.x[k]; });
    return o;
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
  function reviewBox(i) {
    var box = el('div', 'review'), d = DEC[i];
    box.setAttribute('role', 'group'); box.setAttribute('aria-label', 'decision on row ' + i);
    [['keep', 'a'], ['drop', 'x'], ['flag', 'f']].forEach(function (p) {
      var b = el('button', 'mark m-' + p[0], p[0] + ' (' + p[1] + ')'); b.type = 'button'; b.dataset.decision = p[0];
      b.setAttribute('aria-pressed', String(!!d && d[0] === p[0]));
      b.addEventListener('click', function () { decide(i, p[0]); });
      box.appendChild(b);
    });
    var lab = el('label', 'notel', 'note ');
    var note = el('input'); note.type = 'text'; note.id = 'note'; note.value = d ? d[1] : ''; note.placeholder = 'why (optional)';
    note.addEventListener('input', function () { setNote(i, note.value); });
    note.addEventListener('keydown', function (e) { if (e.key === 'Enter' || e.key === 'Escape') { e.preventDefault(); focusActive(); } });
    lab.appendChild(note); box.appendChild(lab);
    return box;
  }
  function renderDetail(i, r) {
    var st = statusName(i), d = $('detail');
    var head = el('div', 'dhead');
    head.appendChild(el('h2', null, 'Row ' + i));
    head.appendChild(el('span', 'badge b-' + st, st));
    var a = el('a', null, 'permalink'); a.href = '#' + toHash(); head.appendChild(a);
    var b = el('button', 'copy', 'copy as JSON'); b.type = 'button';
    b.addEventListener('click', function () { copy(JSON.stringify(rowObject(i, r), null, 2), b); });
    head.appendChild(b);
    var frag = document.createDocumentFragment();
    frag.appendChild(head);
    frag.appendChild(reviewBox(i));
    if (r.why) frag.appendChild(el('p', 'warn', r.why));
    var kv = el('dl', 'kv');
    [['id', r.id], ['answer', r.a], ['editor', [r.pv, r.mo].filter(Boolean).join(' \u00b7 ')], ['prompt version', r.v],
     ['edit distance', IDX.eb[i] + ' words before \u2192 ' + IDX.ea[i] + ' after; ' + IDX.td[i] + ' ' + (r.k === 'token' ? 'tokens' : 'words') + ' \u1ef9_w \u2194 y_l'],
     ['length', IDX.nc[i] + ' \u1ef9_w, ' + IDX.nl[i] + ' y_l ' + (r.k === 'token' ? 'tokens' : 'words')]].forEach(function (p) {
      if (p[1]) { kv.appendChild(el('dt', null, p[0])); kv.appendChild(el('dd', null, p[1])); }
    });
    if (r.x) Object.keys(r.x).forEach(function (k) {
      var v = r.x[k];
      if (v !== null && typeof v !== 'object' && String(v).length < 200) { kv.appendChild(el('dt', null, k)); kv.appendChild(el('dd', null, v)); }
    });
    frag.appendChild(kv);
    frag.appendChild(el('h3', null, 'Prompt'));
    frag.appendChild(el('pre', 'txt prompt', promptText(r.p)));
    var bridged = st === 'bridged', other = S.view === 'w' && r.ow;
    var tabs = el('div', 'tabs'); tabs.setAttribute('role', 'group'); tabs.setAttribute('aria-label', 'compare');
    [['l', '\u1ef9_w against y_l'], ['w', '\u1ef9_w against y_w']].forEach(function (p) {
      var t = el('button', 'tab', p[1]); t.type = 'button'; t.dataset.view = p[0];
      t.setAttribute('aria-pressed', String((r.ow ? S.view : 'l') === p[0]));
      if (p[0] === 'w' && !r.ow) { t.disabled = true; t.title = 'the chosen response is the original winner: nothing to compare'; }
      t.addEventListener('click', function () { setView(p[0]); });
      tabs.appendChild(t);
    });
    frag.appendChild(tabs);
    var cols = el('div', 'cols'), left = el('div', 'rej'), right = el('div', 'cho');
    if (other) {
      frag.appendChild(el('p', 'note', 'Word-level diff of \u1ef9_w against the original winner y_w: did the edit keep y_w\u2019s content? ' +
        (r.ow.c.length / 2) + ' words of \u1ef9_w and ' + (r.ow.o.length / 2) + ' of y_w differ.'));
      var ho = el('h4', null, 'y_w \u2014 original winner '); ho.appendChild(el('small', null, '(struck: not kept)'));
      left.appendChild(ho); left.appendChild(marked(r.o, r.ow.o, 'del'));
      var hc = el('h4', null, '\u1ef9_w \u2014 pseudo-winner '); hc.appendChild(el('small', null, '(underlined: new)'));
      right.appendChild(hc); right.appendChild(marked(r.c, r.ow.c, 'ins'));
    } else {
      frag.appendChild(el('h3', null, bridged ? '\u1ef9_w (pseudo-winner) against y_l' : 'y_w against y_l (not bridged: chosen is the original winner)'));
      var unit = r.k === 'token' ? 'tokens' : 'words', nc = r.cd.m.length / 2, nr = r.rd.m.length / 2;
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
      var hl = el('h4', null, 'y_l \u2014 rejected '); hl.appendChild(el('small', null, '(struck: changed or removed)'));
      var hr = el('h4', null, (bridged ? '\u1ef9_w \u2014 pseudo-winner ' : 'y_w \u2014 chosen ')); hr.appendChild(el('small', null, '(underlined: new or changed)'));
      left.appendChild(hl); left.appendChild(marked(sideText(r.rd, r.l), r.rd.m, 'del', r.lw && r.lw.r));
      right.appendChild(hr); right.appendChild(marked(sideText(r.cd, r.c), r.cd.m, 'ins', r.lw && r.lw.c));
    }
    cols.appendChild(left); cols.appendChild(right);
    frag.appendChild(cols);
    if (bridged && !other) {
      var det = el('details');
      det.appendChild(el('summary', null, 'y_w \u2014 original winner (before bridging)'));
      det.appendChild(el('pre', 'txt', r.o !== undefined ? r.o : r.c));
      frag.appendChild(det);
    }
    d.replaceChildren(frag);
    if (S.q) { highlight(d.querySelector('pre.prompt'), S.q); highlight(d.querySelector('.cols'), S.q); }
    d.dataset.row = i;
    d.scrollTop = 0;
    changeAt = -1;
  }
  function show(i, focusList) {
    if (!(i >= 0 && i < IDX.n)) {
      S.row = -1; current = null;
      Array.prototype.forEach.call($('rows').tBodies[0].rows, function (tr) { tr.setAttribute('aria-selected', 'false'); });
      $('detail').replaceChildren(el('p', 'warn', 'No row ' + (isNaN(i) ? '' : i + ' ') + 'in this report (it has rows 0 to ' + (IDX.n - 1) + ').'));
      delete $('detail').dataset.row;
      return;
    }
    S.row = i; active = i;
    var pos = view.indexOf(i);
    if (pos >= 0 && Math.floor(pos / IDX.page) !== S.page) { S.page = Math.floor(pos / IDX.page); renderList(); }
    Array.prototype.forEach.call($('rows').tBodies[0].rows, function (tr) {
      var on = +tr.dataset.row === i;
      tr.setAttribute('aria-selected', String(on)); tr.tabIndex = on ? 0 : -1;
      if (on && focusList) tr.focus();
    });
    saveHash();
    $('detail').replaceChildren(el('p', 'muted', 'loading row ' + i + '\u2026'));
    getRow(i).then(function (r) {
      if (S.row !== i) return;
      current = r; renderDetail(i, r);
      $('announce').textContent = 'row ' + i + ' opened';
      if (window.matchMedia && window.matchMedia('(max-width: 980px)').matches) $('detail').scrollIntoView({ block: 'start' });
    }, function (err) { $('detail').replaceChildren(el('p', 'warn', err.message + ' (is the ' + CFG.files + '/ folder beside this page?)')); });
  }
  function setView(v) { S.view = v; saveHash(); if (current && S.row >= 0) renderDetail(S.row, current); }
  function nextChange(step) {  // n / p: the next marked token of the open row, scrolled into view
    var toks = $('detail').querySelectorAll('.cho .tok, .rej .tok');
    if (!toks.length) return;
    var prev = $('detail').querySelector('.tok.cur'); if (prev) prev.classList.remove('cur');
    changeAt = (changeAt + step + toks.length) % toks.length;
    var t = toks[changeAt]; t.classList.add('cur');
    t.scrollIntoView({ block: 'center', inline: 'nearest' });
  }

  // --- keyboard: one Tab stop for the list (roving tabindex), j/k/a/x/f/u/m/n/p/v/s anywhere else --------
  function focusActive() { var tr = $('r-' + active) || $('rows').tBodies[0].rows[0]; if (tr) tr.focus(); }
  function move(step, open) {
    if (!view.length) return;
    var pos = view.indexOf(open ? (S.row >= 0 ? S.row : active) : active);
    if (open && S.row < 0 && pos >= 0) step = 0;  // the first j opens the row the list is on
    var target = pos < 0 ? 0 : Math.max(0, Math.min(view.length - 1, pos + step));
    var i = view[target];
    if (Math.floor(target / IDX.page) !== S.page) { S.page = Math.floor(target / IDX.page); active = i; renderList(); }
    active = i;
    Array.prototype.forEach.call($('rows').tBodies[0].rows, function (tr) { tr.tabIndex = +tr.dataset.row === i ? 0 : -1; });
    if (open) show(i, true); else focusActive();
  }
  function onGridKey(e) {
    var tr = e.target.closest('tr'); if (!tr) return;
    var keys = { ArrowDown: 1, ArrowUp: -1, PageDown: IDX.page, PageUp: -IDX.page, Home: -Infinity, End: Infinity };
    if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); show(+tr.dataset.row, true); }
    else if (keys[e.key] !== undefined) {
      e.preventDefault();
      active = +tr.dataset.row;
      var step = keys[e.key];
      if (step === -Infinity) step = -view.length; else if (step === Infinity) step = view.length;
      move(step, false);
    }
  }
  function onKey(e) {
    if (e.ctrlKey || e.metaKey || e.altKey || !IDX) return;
    var t = e.target, tag = t && t.tagName;
    if (tag === 'INPUT' || tag === 'TEXTAREA' || tag === 'SELECT' || (t && t.isContentEditable)) return;
    var k = e.key, i = S.row;
    if (k === 'j' || k === 'k') { e.preventDefault(); move(k === 'j' ? 1 : -1, true); }
    else if ((k === 'a' || k === 'x' || k === 'f') && i >= 0) { e.preventDefault(); decide(i, { a: 'keep', x: 'drop', f: 'flag' }[k]); }
    else if (k === 'u' && i >= 0) { e.preventDefault(); decide(i, null); }
    else if (k === 'm' && i >= 0 && $('note')) { e.preventDefault(); $('note').focus(); }
    else if (k === 'n' || k === 'p') { e.preventDefault(); nextChange(k === 'n' ? 1 : -1); }
    else if (k === 'v' && current) { e.preventDefault(); setView(S.view === 'l' ? 'w' : 'l'); }
    else if (k === '/') { e.preventDefault(); $('q').focus(); }
    else if (k === 's') { e.preventDefault(); exportDecisions(); }
  }

  // --- controls -------------------------------------------------------------------------------------------
  function syncControls() {
    Array.prototype.forEach.call($('status-chips').children, function (c) { c.setAttribute('aria-pressed', String(+c.dataset.s === S.status)); });
    fillGroups();
    $('q').value = S.q; $('qfield').value = S.field; $('sort').value = S.sort; $('dec').value = S.dec;
    $('dir').textContent = S.dir > 0 ? 'ascending' : 'descending';
    $('dir').setAttribute('aria-label', 'sort direction: ' + $('dir').textContent);
    RANGES.forEach(function (r) {
      var v = S.r[r[0]] || [null, null];
      $('lo-' + r[0]).value = v[0] === null ? '' : v[0]; $('hi-' + r[0]).value = v[1] === null ? '' : v[1];
    });
    IDX.ex.forEach(function (f, c) { $('x-' + c).value = S.x[c] !== undefined ? String(S.x[c]) : ''; });
  }
  function changed() { S.page = 0; renderList(); }
  function setStatus(s) { S.status = s; syncControls(); changed(); }
  function fillGroups() {
    var sel = $('group'), keep = S.group;
    var opts = [new Option('all reasons', '-1')];
    IDX.groups.forEach(function (g, k) {
      if (S.status < 0 || IDX.statuses[S.status] === g[1]) {
        var o = new Option(g[1] + ': ' + g[0] + ' (' + g[2] + ')', String(k)); o.title = o.text;
        opts.push(o);
      }
    });
    sel.replaceChildren.apply(sel, opts);
    var still = opts.some(function (o) { return +o.value === keep; });
    S.group = still ? keep : -1;
    sel.value = String(S.group);
  }
  function buildFilters() {
    var box = $('ranges');
    RANGES.forEach(function (r) {
      var f = el('fieldset', 'range'); f.appendChild(el('legend', null, r[1]));
      ['lo', 'hi'].forEach(function (side, j) {
        var lab = el('label', null, j ? 'below ' : 'from '), inp = el('input');
        inp.type = 'number'; inp.id = side + '-' + r[0]; inp.step = 'any';
        inp.addEventListener('change', function () {
          var lo = parseFloat($('lo-' + r[0]).value), hi = parseFloat($('hi-' + r[0]).value);
          if (isNaN(lo) && isNaN(hi)) delete S.r[r[0]]; else S.r[r[0]] = [isNaN(lo) ? null : lo, isNaN(hi) ? null : hi];
          changed();
        });
        lab.appendChild(inp); f.appendChild(lab);
      });
      box.appendChild(f);
    });
    IDX.ex.forEach(function (fc, c) {
      var lab = el('label', null, fc[0] + ' '), sel = el('select'); sel.id = 'x-' + c;
      sel.appendChild(new Option('any', ''));
      fc[1].forEach(function (v, j) { sel.appendChild(new Option(v, String(j))); });
      sel.addEventListener('change', function () { if (sel.value === '') delete S.x[c]; else S.x[c] = +sel.value; changed(); });
      lab.appendChild(sel); $('facets').appendChild(lab);
    });
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
    buildFilters();
    loadDecisions();
    chips.addEventListener('click', function (e) { var c = e.target.closest('.chip'); if (c) setStatus(+c.dataset.s); });
    Array.prototype.forEach.call(document.querySelectorAll('.stat'), function (b) {
      b.addEventListener('click', function () { setStatus(IDX.statuses.indexOf(b.dataset.status)); $('rows').scrollIntoView({ block: 'start' }); });
    });
    Array.prototype.forEach.call(document.querySelectorAll('svg.hist rect[data-key]'), function (bar) {
      bar.setAttribute('tabindex', '0'); bar.setAttribute('role', 'button');
      bar.setAttribute('aria-label', bar.querySelector('title').textContent);
      function pick() {
        var lo = parseFloat(bar.dataset.lo), hi = parseFloat(bar.dataset.hi);
        S.status = IDX.statuses.indexOf('bridged'); S.r = {}; S.r[bar.dataset.key] = [lo, isNaN(hi) ? null : hi];
        $('more').open = true; syncControls(); changed(); $('rows').scrollIntoView({ block: 'start' });
      }
      bar.addEventListener('click', pick);
      bar.addEventListener('keydown', function (e) { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); pick(); } });
    });
    $('group').addEventListener('change', function (e) { S.group = +e.target.value; changed(); });
    $('sort').addEventListener('change', function (e) {
      S.sort = e.target.value; S.dir = S.sort === 'row' ? 1 : -1;
      if (S.sort === 'rnd') S.seed = 1 + Math.floor(Math.random() * 1e6);
      syncControls(); changed();
    });
    $('dir').addEventListener('click', function () { S.dir = -S.dir; syncControls(); changed(); });
    $('dec').addEventListener('change', function (e) { S.dec = e.target.value; changed(); });
    $('clear').addEventListener('click', function () { var row = S.row; S = JSON.parse(JSON.stringify(DEFAULTS)); S.row = row; syncControls(); runSearch(); });
    var timer = null;
    $('q').addEventListener('input', function (e) { clearTimeout(timer); var v = e.target.value.trim(); timer = setTimeout(function () { S.q = v; S.page = 0; runSearch(); }, 250); });
    $('qfield').addEventListener('change', function (e) { S.field = e.target.value; S.page = 0; runSearch(); });
    $('prev').addEventListener('click', function () { S.page--; renderList(); });
    $('next').addEventListener('click', function () { S.page++; renderList(); });
    var body = $('rows').tBodies[0];
    body.addEventListener('click', function (e) { var tr = e.target.closest('tr'); if (tr) show(+tr.dataset.row, true); });
    body.addEventListener('keydown', onGridKey);
    document.addEventListener('keydown', onKey);
    $('export-dec').addEventListener('click', exportDecisions);
    $('import-dec').addEventListener('change', importDecisions);
    $('export-ids').addEventListener('click', exportIds);
    $('export-rows').addEventListener('click', exportRows);
    window.addEventListener('hashchange', fromHash);
    window.addEventListener('pagehide', storeDecisions);
    fromHash();
    document.documentElement.dataset.ready = '1';
    if (window.performance && performance.mark) performance.mark('bmc-ready');
  }

  // --- review: decisions in localStorage, JSONL export / import -------------------------------------------
  var STORE = 'bmc-review:' + (CFG.fp || 'unknown');
  function loadDecisions() {
    try { DEC = JSON.parse(localStorage.getItem(STORE) || '{}') || {}; } catch (e) { DEC = {}; }
    Object.keys(DEC).forEach(function (k) { if (!(+k >= 0 && +k < IDX.n)) delete DEC[k]; });
    counter();
  }
  function storeDecisions() {
    clearTimeout(saveTimer); saveTimer = null;
    try { localStorage.setItem(STORE, JSON.stringify(DEC)); } catch (e) { $('review-msg').textContent = 'decisions not saved in this browser: ' + e.message + ' (export them)'; }
  }
  function later() { if (!saveTimer) saveTimer = setTimeout(storeDecisions, 400); }
  function counter() {
    var n = Object.keys(DEC).length;
    $('reviewed').textContent = 'reviewed ' + n.toLocaleString('en') + '/' + IDX.n.toLocaleString('en');
    $('reviewed').dataset.count = n;
  }
  function refreshRow(i) {
    var tr = $('r-' + i);
    if (tr) { tr.cells[2].textContent = decCell(i); tr.cells[2].className = 'dec d-' + (DEC[i] ? DEC[i][0] : 'none'); }
    if (S.row === i) Array.prototype.forEach.call($('detail').querySelectorAll('.review .mark'), function (b) {
      b.setAttribute('aria-pressed', String(!!DEC[i] && DEC[i][0] === b.dataset.decision));
    });
    counter(); later();
  }
  function decide(i, d) {
    if (d === null) delete DEC[i];
    else DEC[i] = [d, DEC[i] ? DEC[i][1] : ($('note') && S.row === i ? $('note').value : '')];
    refreshRow(i);
  }
  function setNote(i, note) {
    if (!DEC[i]) DEC[i] = ['flag', note];  // a note alone flags the row: it was looked at and needs a word
    else DEC[i][1] = note;
    refreshRow(i);
  }
  function idOf(i) { return getRow(i).then(function (r) { return r.id; }); }
  function download(name, text, type) {
    var a = el('a'); a.href = URL.createObjectURL(new Blob([text], { type: type })); a.download = name;
    document.body.appendChild(a); a.click(); a.remove();
    setTimeout(function () { URL.revokeObjectURL(a.href); }, 5000);
  }
  function exportDecisions() {
    storeDecisions();
    var rows = Object.keys(DEC).map(Number).sort(function (a, b) { return a - b; });
    Promise.all(rows.map(idOf)).then(function (ids) {
      var lines = rows.map(function (i, k) {
        var o = { row: i };
        if (ids[k] !== undefined && ids[k] !== null) o.id = ids[k];
        o.decision = DEC[i][0]; o.note = DEC[i][1] || ''; o.dataset = CFG.fp;
        return JSON.stringify(o);
      });
      download('review-' + CFG.fp + '.jsonl', lines.join('\n') + (lines.length ? '\n' : ''), 'application/x-ndjson');
      $('review-msg').textContent = 'exported ' + lines.length + ' decision(s)';
    });
  }
  function importDecisions(e) {
    var file = e.target.files && e.target.files[0]; if (!file) return;
    file.text().then(function (text) {
      var got = {}, bad = [];
      text.split(/\r?\n/).forEach(function (line, k) {
        if (!line.trim()) return;
        try {
          var o = JSON.parse(line);
          if (!(Number.isInteger(o.row) && o.row >= 0 && o.row < IDX.n) || ['keep', 'drop', 'flag'].indexOf(o.decision) < 0) throw new Error('bad');
          if (o.dataset && o.dataset !== CFG.fp) throw new Error('another dataset');
          got[o.row] = [o.decision, typeof o.note === 'string' ? o.note : ''];
        } catch (err) { bad.push(k + 1); }
      });
      if (bad.length) { $('review-msg').textContent = file.name + ': line(s) ' + bad.slice(0, 5).join(', ') + ' are not decisions for this dataset; nothing imported'; return; }
      Object.keys(got).forEach(function (k) { DEC[k] = got[k]; });
      storeDecisions(); counter(); renderList();
      $('review-msg').textContent = 'imported ' + Object.keys(got).length + ' decision(s) from ' + file.name;
    });
    e.target.value = '';
  }
  function exportIds() {
    Promise.all(view.map(idOf)).then(function (ids) {
      var lines = view.map(function (i, k) { return ids[k] !== undefined && ids[k] !== null ? String(ids[k]) : String(i); });
      download('selection-ids.txt', lines.join('\n') + '\n', 'text/plain');
      $('review-msg').textContent = 'exported ' + lines.length + ' id(s)';
    });
  }
  function exportRows() {
    Promise.all(view.map(function (i) { return getRow(i).then(function (r) { return JSON.stringify(rowObject(i, r)); }); })).then(function (lines) {
      download('selection.jsonl', lines.join('\n') + '\n', 'application/x-ndjson');
      $('review-msg').textContent = 'exported ' + lines.length + ' row(s)';
    });
  }

  window.BMC_INDEX = function (data) { IDX = data; init(); };
  window.addEventListener('load', function () {
    if (!IDX) $('count').textContent = 'The row index (' + CFG.files + '/index.js) did not load: keep that folder beside this page.';
  });
})();
