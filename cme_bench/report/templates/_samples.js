// Per-sample viewer. All text goes into the page through textContent, never innerHTML.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("samples-data").textContent);
  var LIMIT = 500;
  var selA = document.getElementById("run-a"), selB = document.getElementById("run-b");
  var show = document.getElementById("show"), q = document.getElementById("q");
  function option(sel, value, text) { var o = document.createElement("option"); o.value = value; o.textContent = text; sel.appendChild(o); }
  option(selB, "", "(none)");
  data.runs.forEach(function (r, i) { option(selA, String(i), r.name); option(selB, String(i), r.name); });
  if (data.runs.length > 1) selB.value = "1";
  function el(tag, text, cls) { var e = document.createElement(tag); if (text !== undefined) e.textContent = text; if (cls) e.className = cls; return e; }
  function correct(s) { return s !== null && s !== undefined && s >= 1; }
  function scoreCell(p) {
    var td = el("td");
    if (!p) { td.textContent = "—"; return td; }
    var b = el("span", data.binary ? (correct(p[1]) ? "correct" : "wrong") : String(p[1]), "badge" + (correct(p[1]) ? "" : " no"));
    td.appendChild(b);
    return td;
  }
  // Exact two-sided McNemar p-value: 2 * P(X <= min(b, c)), X ~ Binomial(b + c, 1/2), summed in log space.
  function mcnemar(x, y) {
    var n = x + y, k = Math.min(x, y), tail = 0, logc = 0;
    if (n === 0) return 1;
    for (var i = 0; i <= k; i++) {
      if (i > 0) logc += Math.log(n - i + 1) - Math.log(i);
      tail += Math.exp(logc - n * Math.LN2);
    }
    return Math.min(1, 2 * tail);
  }
  // Continuous scores: paired z-test on per-item differences (normal approximation).
  function pairedZ(diffs) {
    var m = diffs.length; if (m < 2) return null;
    var mean = diffs.reduce(function (s, d) { return s + d; }, 0) / m;
    var v = diffs.reduce(function (s, d) { return s + (d - mean) * (d - mean); }, 0) / (m - 1);
    if (v === 0) return { mean: mean, p: mean === 0 ? 1 : 0 };
    var z = Math.abs(mean) / Math.sqrt(v / m);
    // two-sided normal tail via the Abramowitz-Stegun erfc approximation (error < 1.5e-7)
    var t = 1 / (1 + 0.3275911 * z / Math.SQRT2);
    var erfc = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))) * Math.exp(-z * z / 2);
    return { mean: mean, p: erfc };
  }
  function pairedTest(a, b) {
    var diffs = [], x = 0, y = 0;
    data.doc_ids.forEach(function (d) {
      var pa = a.preds[d], pb = b.preds[d];
      if (!pa || !pb) return;
      diffs.push(pa[1] - pb[1]);
      if (correct(pa[1]) && !correct(pb[1])) x++;
      if (correct(pb[1]) && !correct(pa[1])) y++;
    });
    if (data.binary) return "McNemar exact p = " + mcnemar(x, y).toPrecision(3) + " on " + diffs.length + " paired items.";
    var r = pairedZ(diffs);
    return r ? "Mean difference A − B = " + r.mean.toPrecision(3) + ", paired z-test p = " + r.p.toPrecision(3) + "." : "";
  }
  function render() {
    var a = data.runs[+selA.value], b = selB.value === "" ? null : data.runs[+selB.value];
    var head = document.getElementById("samples-head"); head.textContent = "";
    ["doc", "prompt", "target", "A: " + a.name, "A"].concat(b ? ["B: " + b.name, "B"] : []).forEach(function (t) { head.appendChild(el("th", t)); });
    var body = document.getElementById("samples-body"); body.textContent = "";
    var needle = q.value.trim().toLowerCase(), mode = show.value, n = 0, shown = 0;
    var counts = { both: 0, onlyA: 0, onlyB: 0, neither: 0 };
    data.doc_ids.forEach(function (d) {
      var item = data.items[d], pa = a.preds[d], pb = b ? b.preds[d] : null;
      if (!pa && !(b && pb)) return;
      var ca = pa && correct(pa[1]), cb = pb && correct(pb[1]);
      if (b && pa && pb) { if (ca && cb) counts.both++; else if (ca) counts.onlyA++; else if (cb) counts.onlyB++; else counts.neither++; }
      if (mode === "a-correct" && !ca) return;
      if (mode === "a-wrong" && (!pa || ca)) return;
      if (mode === "disagree" && (!b || !pa || !pb || ca === cb)) return;
      if (mode === "only-a" && !(ca && !cb)) return;
      if (mode === "only-b" && !(cb && !ca)) return;
      if (needle) {
        var hay = (item.prompt + " " + item.target + " " + (pa ? pa[0] : "") + " " + (pb ? pb[0] : "")).toLowerCase();
        if (hay.indexOf(needle) < 0) return;
      }
      n++;
      if (shown >= LIMIT) return;
      shown++;
      var tr = el("tr");
      tr.appendChild(el("td", d));
      tr.appendChild(el("td", item.prompt, "wrap"));
      tr.appendChild(el("td", item.target, "wrap"));
      tr.appendChild(el("td", pa ? pa[0] : "—", "wrap"));
      tr.appendChild(scoreCell(pa));
      if (b) { tr.appendChild(el("td", pb ? pb[0] : "—", "wrap")); tr.appendChild(scoreCell(pb)); }
      body.appendChild(tr);
    });
    var summary = n + " matching item(s).";
    if (b) {
      summary += " Paired items: both correct " + counts.both + ", only A " + counts.onlyA + ", only B " + counts.onlyB + ", neither " + counts.neither + ".";
      summary += " " + pairedTest(a, b);
    }
    document.getElementById("summary").textContent = summary;
    document.getElementById("limit-note").textContent = n > LIMIT ? "Showing the first " + LIMIT + "; narrow the filter to see more." : "";
  }
  [selA, selB, show].forEach(function (s) { s.addEventListener("change", render); });
  q.addEventListener("input", render);
  if (data.runs.length) render(); else document.getElementById("summary").textContent = "No per-sample logs for this task.";
})();
