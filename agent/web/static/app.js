// Charts on "My data": each [data-chart] element gets a uPlot of the JSON at its URL (the table beside it
// carries the same numbers, for screen readers and for browsers without JavaScript).
(function () {
  "use strict";
  function draw(el) {
    fetch(el.dataset.chart, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (s) {
        if (!s || typeof uPlot === "undefined") { return; }
        var opts = {
          width: Math.max(280, el.clientWidth), height: 240,
          scales: { x: { time: true }, W: {}, m3: {} },
          series: [{}, { label: el.dataset.labelImport, stroke: "#0b5cad", width: 2, scale: "W" },
                   { label: el.dataset.labelExport, stroke: "#1b6e20", width: 2, scale: "W" },
                   { label: el.dataset.labelGas, stroke: "#8a4b00", width: 1, scale: "m3" }],
          axes: [{}, { scale: "W", size: 60 }, { scale: "m3", side: 1, size: 50, grid: { show: false } }]
        };
        el.textContent = "";
        var plot = new uPlot(opts, [s.t, s.import_w, s.export_w, s.gas_m3], el);
        window.addEventListener("resize", function () { plot.setSize({ width: Math.max(280, el.clientWidth), height: 240 }); });
      })
      .catch(function () { /* the table beside the chart still has the data */ });
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-chart]").forEach(draw);
  });
})();
