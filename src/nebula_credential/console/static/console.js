// nebula-credential console: the timeline chart (uPlot). No inline script anywhere: the CSP forbids it.
(function () {
  "use strict";
  var COLORS = { active: "#2e7d32", valid: "#1565c0", grace: "#f9a825", revoked: "#c62828", destroyed: "#616161" };

  function drawTimeline(el) {
    fetch(el.dataset.src, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.json(); })
      .then(function (data) { render(el, data); })
      .catch(function (e) { el.textContent = "timeline unavailable (" + e.message + ")"; });
  }

  function render(el, data) {
    var versions = data.versions;
    if (!versions.length) { el.textContent = "no versions yet"; return; }
    var start = Infinity;
    versions.forEach(function (v) { v.segments.forEach(function (s) { start = Math.min(start, s[0]); }); });
    var end = data.now;
    var pad = Math.max((end - start) * 0.03, 60);
    var maxV = versions[versions.length - 1].version;
    var ticks = versions.map(function (v) { return v.version; });
    var opts = {
      width: Math.max(el.clientWidth, 320),
      height: 60 + 34 * versions.length,
      legend: { show: false },
      cursor: { show: false },
      scales: {
        x: { time: true, range: [start - pad, end + pad] },
        y: { range: [0.4, maxV + 0.6] }
      },
      axes: [
        {},
        { splits: function () { return ticks; }, values: function (u, vals) { return vals.map(function (t) { return "v" + t; }); }, size: 44 }
      ],
      series: [{}, { stroke: "transparent", points: { show: false } }],
      hooks: {
        draw: [function (u) {
          var ctx = u.ctx;
          ctx.save();
          versions.forEach(function (v) {
            var yTop = u.valToPos(v.version + 0.3, "y", true);
            var yBottom = u.valToPos(v.version - 0.3, "y", true);
            v.segments.forEach(function (s) {
              var x0 = u.valToPos(s[0], "x", true);
              var x1 = Math.max(x0 + 3 * devicePixelRatio, u.valToPos(s[1], "x", true));
              ctx.fillStyle = COLORS[s[2]] || "#999";
              ctx.fillRect(x0, yTop, x1 - x0, yBottom - yTop);
            });
          });
          ctx.strokeStyle = "#111";
          ctx.setLineDash([4 * devicePixelRatio, 3 * devicePixelRatio]);
          ctx.lineWidth = devicePixelRatio;
          data.rotations.forEach(function (t) {
            var x = u.valToPos(t, "x", true);
            ctx.beginPath();
            ctx.moveTo(x, u.bbox.top);
            ctx.lineTo(x, u.bbox.top + u.bbox.height);
            ctx.stroke();
          });
          ctx.restore();
        }]
      }
    };
    el.textContent = "";
    el.dataset.rendered = String(versions.length);
    new uPlot(opts, [[start - pad, end + pad], [null, null]], el);
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll(".timeline[data-src]").forEach(drawTimeline);
  });
})();
