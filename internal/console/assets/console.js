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
      var x = { time: true };
      // One bucket alone would get an axis of years around it.
      if (d.times.length === 1) x.range = [d.times[0] - 1800, d.times[0] + 1800];
      var opts = { width: Math.max(280, el.clientWidth), height: 260, series: series, axes: [axis, axis],
        scales: { x: x }, legend: { live: true } };
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
    // A rule problem's file:line selects that line of the rule text.
    var go = ev.target.closest && ev.target.closest("[data-goto-line]");
    var ta = go && document.getElementById("f-rules");
    if (ta) {
      ev.preventDefault();
      var lines = ta.value.split("\n"), n = parseInt(go.dataset.gotoLine, 10) - 1, start = 0;
      for (var i = 0; i < n && i < lines.length; i++) start += lines[i].length + 1;
      ta.focus();
      ta.setSelectionRange(start, start + (lines[n] || "").length);
      ta.scrollTop = Math.max(0, n - 3) * 18;
    }
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

  // The live overview: server-sent events from /console/live.
  function text(el, t) { if (el) el.textContent = t; }
  function startLive() {
    var root = document.querySelector("[data-live]");
    if (!root || !window.EventSource) return;
    var status = document.getElementById("live-status"), dot = document.getElementById("live-dot");
    var chartEl = document.getElementById("live-chart");
    var times = [], series = {}, names = [], plot = null, keep = 120;
    var es = new EventSource(root.dataset.live);
    function say(msg, on) {
      if (!status) return;
      status.textContent = "";
      var d = document.createElement("span"); d.className = "live-dot" + (on ? " on" : ""); d.id = "live-dot";
      status.appendChild(d); status.appendChild(document.createTextNode(msg));
    }
    function draw() {
      if (!chartEl || typeof uPlot === "undefined" || !times.length) return;
      var data = [times.slice()];
      names.forEach(function (n) { data.push(series[n].slice()); });
      if (plot && plot.series.length === names.length + 1) { plot.setData(data); return; }
      if (plot) plot.destroy();
      var dark = window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches;
      var axisColor = dark ? "#9da7b3" : "#57606a", grid = dark ? "#30363d" : "#d0d7de";
      var axis = { stroke: axisColor, grid: { stroke: grid }, ticks: { stroke: grid } };
      var ss = [{}];
      names.forEach(function (n, i) { var c = palette[n] || fallback[i % fallback.length]; ss.push({ label: n, stroke: c, fill: c + "33", width: 2 }); });
      plot = new uPlot({ width: Math.max(280, chartEl.clientWidth), height: 220, series: ss, axes: [axis, axis],
        scales: { x: { time: true } }, legend: { live: true } }, data, chartEl);
    }
    es.addEventListener("stats", function (m) {
      var d; try { d = JSON.parse(m.data); } catch (e) { return; }
      say(d.tail ? " Live, without request rates: " + d.tail : " Live: updated every second.", true);
      root.dataset.updates = String((parseInt(root.dataset.updates || "0", 10) || 0) + 1);
      var rate = document.getElementById("live-rate"), none = document.getElementById("live-rate-none");
      if (none) none.remove();
      if (rate) {
        rate.textContent = "";
        Object.keys(d.rate || {}).sort().forEach(function (k) {
          var dt = document.createElement("dt"), dd = document.createElement("dd");
          dt.textContent = k; dd.textContent = d.rate[k].toFixed(2);
          rate.appendChild(dt); rate.appendChild(dd);
        });
        if (!rate.children.length) { var dt = document.createElement("dt"); dt.textContent = "no traffic"; rate.appendChild(dt); }
      }
      if (d.stored !== undefined) text(document.getElementById("live-stored"), String(d.stored));
      var lag = document.querySelector("#live-lag tbody");
      if (lag && d.lag) {
        lag.textContent = "";
        Object.keys(d.lag).sort().forEach(function (g) {
          Object.keys(d.lag[g]).sort(function (a, b) { return a - b; }).forEach(function (p) {
            var tr = document.createElement("tr");
            [g, p, String(d.lag[g][p])].forEach(function (v, i) { var td = document.createElement("td"); td.textContent = v; if (i === 2) td.className = "num"; tr.appendChild(td); });
            lag.appendChild(tr);
          });
        });
        if (!lag.children.length) { var tr = document.createElement("tr"), td = document.createElement("td"); td.colSpan = 3; td.className = "muted"; td.textContent = "no consumer groups here"; tr.appendChild(td); lag.appendChild(tr); }
      }
      var le = document.getElementById("live-lag-error");
      if (le) { le.hidden = !d.lag_error; le.textContent = d.lag_error || ""; }
      times.push(d.t);
      Object.keys(d.rate || {}).forEach(function (k) {
        if (!series[k]) { series[k] = times.slice(0, -1).map(function () { return 0; }); names.push(k); names.sort(); }
      });
      names.forEach(function (k) { series[k].push((d.rate || {})[k] || 0); });
      if (times.length > keep) { times.shift(); names.forEach(function (k) { series[k].shift(); }); }
      draw();
    });
    es.addEventListener("summary", function (m) {
      var d; try { d = JSON.parse(m.data); } catch (e) { return; }
      text(document.getElementById("decisions-hour"), String(d.decisions));
      text(document.getElementById("revocations-hour"), String(d.revocations));
      var ul = document.getElementById("live-rules");
      if (ul) {
        ul.textContent = "";
        (d.rules || []).forEach(function (r) { var li = document.createElement("li"), a = document.createElement("a"); a.href = "/console/rules"; a.textContent = r; li.appendChild(a); ul.appendChild(li); });
        if (!ul.children.length) { var li = document.createElement("li"); li.className = "muted"; li.textContent = "none"; ul.appendChild(li); }
      }
    });
    es.addEventListener("end", function (m) {
      es.close();
      var why = ""; try { why = JSON.parse(m.data); } catch (e) { why = ""; }
      say(" Live updates ended: " + why + ". Reload the page to resume.", false);
    });
    es.onerror = function () { if (es.readyState !== 2) say(" Reconnecting…", false); };
  }
  document.addEventListener("DOMContentLoaded", function () { drawCharts(document); startLive(); });
  document.addEventListener("htmx:afterSettle", function () { drawCharts(document); });
})();
