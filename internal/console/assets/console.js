// keymeter console: small progressive enhancements. Every page works
// without this file: charts also have tables, forms post normally.
(function () {
  "use strict";
  var palette = { valid: "#2da44e", invalid: "#cf222e", revoked: "#8250df", rate_limited: "#bf8700",
    quota_exceeded: "#d1242f", all: "#0969da" };
  var fallback = ["#0969da", "#bf3989", "#1a7f37", "#9a6700", "#8250df", "#cf222e", "#57606a"];

  function drawCharts(root) {
    if (typeof uPlot === "undefined") return;
    root.querySelectorAll("[data-chart]").forEach(function (el) {
      if (el.dataset.drawn) return;
      var d;
      try { d = JSON.parse(el.dataset.chart); } catch (e) { return; }
      if (!d.times || !d.times.length) return;
      el.dataset.drawn = "1";
      var dark = window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches;
      var axisColor = dark ? "#9da7b3" : "#57606a", grid = dark ? "#30363d" : "#d0d7de";
      var series = [{}], data = [d.times];
      (d.series || []).forEach(function (s, i) {
        var color = palette[s.name] || fallback[i % fallback.length];
        series.push({ label: s.name, stroke: color, fill: color + "33", width: 2, points: { show: d.times.length < 60 } });
        data.push(s.values);
      });
      var axis = { stroke: axisColor, grid: { stroke: grid }, ticks: { stroke: grid } };
      var opts = { width: Math.max(280, el.clientWidth), height: 260, series: series, axes: [axis, axis],
        scales: { x: { time: true } }, legend: { live: true } };
      var plot = new uPlot(opts, data, el);
      window.addEventListener("resize", function () { plot.setSize({ width: Math.max(280, el.clientWidth), height: 260 }); });
    });
  }

  function copy(btn) {
    var input = document.getElementById(btn.dataset.copy);
    var status = document.getElementById("copy-status");
    var done = function (ok) { if (status) status.textContent = ok ? "Copied to the clipboard." : "Select the secret and copy it (Ctrl+C)."; };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(input.value).then(function () { done(true); }, function () { input.select(); done(document.execCommand("copy")); });
    } else {
      input.select();
      var ok = false;
      try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
      done(ok);
    }
  }

  document.addEventListener("click", function (ev) {
    var btn = ev.target.closest && ev.target.closest("[data-copy]");
    if (btn) { ev.preventDefault(); copy(btn); }
  });
  document.addEventListener("submit", function (ev) {
    var f = ev.target;
    if (f.dataset && f.dataset.confirm && !window.confirm(f.dataset.confirm)) ev.preventDefault();
  });
  document.addEventListener("change", function (ev) {
    if (ev.target.id !== "period") return;
    document.querySelectorAll("[data-billing-link]").forEach(function (a) {
      a.href = "/console/billing/" + encodeURIComponent(ev.target.value) + "." + a.dataset.billingLink;
    });
  });
  document.addEventListener("DOMContentLoaded", function () { drawCharts(document); });
  document.addEventListener("htmx:afterSettle", function () { drawCharts(document); });
})();
