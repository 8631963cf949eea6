// nebula-credential console: the timeline chart (uPlot). No inline script anywhere: the CSP forbids it.
(function () {
  "use strict";
  var COLORS = { active: "#2e7d32", valid: "#1565c0", grace: "#f9a825", revoked: "#c62828", destroyed: "#616161" };
  var AXIS_FONT = "12px system-ui, -apple-system, \"Segoe UI\", Roboto, Arial, sans-serif";
  var DAY = 86400;

  function pad2(n) { return (n < 10 ? "0" : "") + n; }

  var MINUTE = 60, HOUR = 3600, MONTH = 30 * DAY, YEAR = 365 * DAY;
  // Round steps only (uPlot's own list has 9-day steps): seconds to years.
  var INCRS = [1, 5, 10, 15, 30, MINUTE, 2 * MINUTE, 5 * MINUTE, 10 * MINUTE, 15 * MINUTE, 30 * MINUTE,
    HOUR, 2 * HOUR, 3 * HOUR, 6 * HOUR, 12 * HOUR, DAY, 2 * DAY, 7 * DAY, 14 * DAY,
    MONTH, 3 * MONTH, 6 * MONTH, YEAR, 2 * YEAR, 5 * YEAR, 10 * YEAR];

  function utcDate(t) {
    var d = new Date(t * 1000);
    return d.getUTCFullYear() + "-" + pad2(d.getUTCMonth() + 1) + "-" + pad2(d.getUTCDate());
  }

  // The time axis reads as the tables do: UTC, 24-hour, ISO dates (never "7:14pm").  Every label is
  // short (the span's dates are in the axis title), so none reaches the next one, the first included.
  function timeLabels(splits, incr) {
    var last = "";
    return splits.map(function (t) {
      var d = new Date(t * 1000);
      var year = String(d.getUTCFullYear()), month = pad2(d.getUTCMonth() + 1), day = pad2(d.getUTCDate());
      if (incr >= MONTH) { return year + "-" + month; }
      if (incr >= DAY) {  // month-day, and the year under the first tick and where it changes
        var y = year === last ? "" : "\n" + year;
        last = year;
        return month + "-" + day + y;
      }
      var date = utcDate(t);  // hour:minute, and the month-day under a tick where the day changes
      var time = pad2(d.getUTCHours()) + ":" + pad2(d.getUTCMinutes()) + (incr < MINUTE ? ":" + pad2(d.getUTCSeconds()) : "");
      var line = last && date !== last ? "\n" + month + "-" + day : "";
      last = date;
      return time + line;
    });
  }

  function textWidth(label) {
    var ctx = textWidth.ctx || (textWidth.ctx = document.createElement("canvas").getContext("2d"));
    ctx.font = AXIS_FONT;
    return Math.max.apply(null, label.split("\n").map(function (line) { return ctx.measureText(line).width; }));
  }

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
    var drawn = [];
    var title = "UTC · " + utcDate(start) + (utcDate(end) !== utcDate(start) ? " to " + utcDate(end) : "");
    var opts = {
      // splits on UTC minutes, hours and days, as the labels are written
      tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"); },
      width: Math.max(el.clientWidth, 240),
      height: 82 + 34 * versions.length,  // the time axis, its title, and a row per version
      legend: { show: false },
      cursor: { show: false },
      scales: {
        x: { time: true, range: [start - pad, end + pad] },
        y: { range: [0.4, maxV + 0.6] }
      },
      axes: [
        {
          font: AXIS_FONT,
          label: title,
          labelFont: AXIS_FONT,
          labelSize: 22,
          incrs: INCRS,
          // room for the widest label (2026-01, 00:00:00) and a gap between any two ticks
          space: Math.ceil(Math.max(textWidth("2026-12"), textWidth("00:00:00"))) + 14,
          values: function (u, splits, axisIdx, space, incr) {
            var labels = timeLabels(splits, incr);
            drawn = splits.map(function (t, i) { return [t, labels[i]]; });
            return labels;
          }
        },
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
          // where the time labels went (CSS px in the chart): the browser test checks that none overlap
          el.dataset.axis = JSON.stringify({
            title: title,
            plotLeft: u.bbox.left / devicePixelRatio,
            width: u.width,
            labels: drawn.map(function (d) {
              var x = u.valToPos(d[0], "x") + u.bbox.left / devicePixelRatio, w = textWidth(d[1]);
              return { text: d[1], left: x - w / 2, right: x + w / 2 };
            })
          });
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
