"""The leaderboard page's inline script (sort a table by a clicked header or by `#sort=COLUMN:asc|desc`)
and its style sheet: static text, kept apart from the code that renders the tables."""

SCRIPT = """
(function () {
  function value(cell, numeric) {
    var raw = cell.getAttribute('data-value');
    if (numeric) { return raw === null || raw === '' ? null : parseFloat(raw); }
    return cell.textContent.trim().toLowerCase();
  }
  function sortTable(table, index, direction) {
    var body = table.tBodies[0];
    var header = table.tHead.rows[0].cells[index];
    var numeric = header.getAttribute('data-numeric') === '1';
    var rows = Array.prototype.slice.call(body.rows);
    rows.forEach(function (row, i) { row.setAttribute('data-order', i); });
    rows.sort(function (a, b) {
      var x = value(a.cells[index], numeric), y = value(b.cells[index], numeric);
      if (x === null && y === null) { return a.getAttribute('data-order') - b.getAttribute('data-order'); }
      if (x === null) { return 1; }   /* missing numbers last, whichever the direction */
      if (y === null) { return -1; }
      var c = numeric ? x - y : x.localeCompare(y);
      if (c === 0) { return a.getAttribute('data-order') - b.getAttribute('data-order'); }
      return direction === 'asc' ? c : -c;
    });
    rows.forEach(function (row) { body.appendChild(row); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) { th.removeAttribute('aria-sort'); });
    header.setAttribute('aria-sort', direction === 'asc' ? 'ascending' : 'descending');
    table.setAttribute('data-sort-key', header.getAttribute('data-key'));
    table.setAttribute('data-sort-dir', direction);
  }
  var tables = document.querySelectorAll('table.sortable');
  Array.prototype.forEach.call(tables, function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, index) {
      th.addEventListener('click', function () {
        var same = table.getAttribute('data-sort-key') === th.getAttribute('data-key');
        var next = same && table.getAttribute('data-sort-dir') === 'desc' ? 'asc' : 'desc';
        if (!same && th.getAttribute('data-numeric') !== '1') { next = 'asc'; }
        sortTable(table, index, next);
      });
    });
  });
  var match = /sort=([A-Za-z0-9_]+)(?::(asc|desc))?/.exec(window.location.hash);
  if (match) {
    Array.prototype.forEach.call(tables, function (table) {
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, index) {
        if (th.getAttribute('data-key') === match[1]) { sortTable(table, index, match[2] || 'desc'); }
      });
    });
  }
  document.body.setAttribute('data-ready', '1');
})();
"""

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 110em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.5em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
th { background: #f2f2f2; cursor: pointer; user-select: none; }
th[aria-sort=ascending]::after { content: " \\25B2"; }
th[aria-sort=descending]::after { content: " \\25BC"; }
tr.reference td { color: #666; }
figure { display: inline-block; margin: 0.5em; }
figure img { max-width: 48em; border: 1px solid #ddd; }
code { background: #f6f6f6; padding: 0 0.2em; }
.scroll { overflow-x: auto; }
.note { color: #555; }
td.flags { min-width: 16em; max-width: 28em; font-size: 0.8em; color: #8a4b00; overflow-wrap: anywhere; }
"""
