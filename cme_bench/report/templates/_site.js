// Sorting and filtering for every table marked data-sortable; plain DOM, no libraries, no network.
// Values come from data-v attributes written (escaped) by the server side; nothing here builds HTML from strings.
(function () {
  "use strict";
  function cellValue(td, numeric) {
    var v = td.getAttribute("data-v");
    if (v === null || v === "") return null;
    if (numeric) { var f = parseFloat(v); return isNaN(f) ? null : f; }
    return v.toLowerCase();
  }
  function sortTable(table, th, col) {
    var tbody = table.tBodies[0];
    var rows = Array.prototype.slice.call(tbody.rows);
    var numeric = rows.some(function (r) { var v = r.cells[col].getAttribute("data-v"); return v !== "" && !isNaN(parseFloat(v)) && isFinite(v); });
    var current = th.getAttribute("aria-sort");
    var hib = th.getAttribute("data-hib");
    var desc;
    // First click: best first (descending where higher is better; rank and lower-is-better ascending).
    if (current === "none") desc = numeric && hib !== "0" && th.getAttribute("data-group") !== "info";
    else desc = current === "ascending";
    var keyed = rows.map(function (r, i) { return { r: r, v: cellValue(r.cells[col], numeric), i: i }; });
    keyed.sort(function (a, b) {
      if (a.v === null && b.v === null) return a.i - b.i;
      if (a.v === null) return 1;   // missing values always last
      if (b.v === null) return -1;
      if (a.v < b.v) return desc ? 1 : -1;
      if (a.v > b.v) return desc ? -1 : 1;
      return a.i - b.i;
    });
    var frag = document.createDocumentFragment();
    keyed.forEach(function (k) { frag.appendChild(k.r); });
    tbody.appendChild(frag);
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) { h.setAttribute("aria-sort", "none"); });
    th.setAttribute("aria-sort", desc ? "descending" : "ascending");
  }
  function applyFilters(table, controls) {
    var filters = {};
    controls.querySelectorAll("select[data-filter]").forEach(function (s) { filters[s.getAttribute("data-filter")] = s.value; });
    var searchBox = controls.querySelector("input[data-search]");
    var q = searchBox ? searchBox.value.trim().toLowerCase() : "";
    var shown = 0;
    Array.prototype.forEach.call(table.tBodies[0].rows, function (r) {
      var ok = Object.keys(filters).every(function (k) { return !filters[k] || r.getAttribute("data-" + k) === filters[k]; });
      if (ok && q) ok = (r.cells[1].textContent + " " + r.getAttribute("data-id")).toLowerCase().indexOf(q) >= 0;
      r.classList.toggle("hidden", !ok);
      if (ok) shown++;
    });
    var domainSel = controls.querySelector("select[data-domain-filter]");
    if (domainSel) {
      var d = domainSel.value;
      table.querySelectorAll("th, td").forEach(function (c) {
        var g = c.getAttribute("data-group");
        var hide = d !== "" && (g === "task" || g === "domain") && c.getAttribute("data-domain") !== d;
        c.classList.toggle("hidden", hide);
      });
    }
    document.querySelectorAll('.js-count[data-for="' + table.id + '"]').forEach(function (e) { e.textContent = String(shown); });
  }
  // On a phone the filters start folded so the scores are on the first screen.
  if (window.innerWidth < 700) document.querySelectorAll("details.filters").forEach(function (d) { d.open = false; });
  document.querySelectorAll("table[data-sortable]").forEach(function (table) {
    var ths = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(ths, function (th, col) {
      var first = table.tBodies[0].rows[0];
      if (first) th.setAttribute("data-key", first.cells[col].getAttribute("data-key") || "");
      th.addEventListener("click", function () { sortTable(table, th, col); });
      th.addEventListener("keydown", function (e) { if (e.key === "Enter") sortTable(table, th, col); });
    });
    var controls = document.querySelector('[data-controls="' + table.id + '"]');
    if (controls) {
      controls.querySelectorAll("select").forEach(function (s) { s.addEventListener("change", function () { applyFilters(table, controls); }); });
      controls.querySelectorAll("input[data-search]").forEach(function (s) { s.addEventListener("input", function () { applyFilters(table, controls); }); });
    }
  });
})();
