/* Tiny SVG charts for the dashboard (no dependencies, no CDN). */
(function () {
  "use strict";
  var PALETTE = ["#2457d6", "#d64524", "#1a7f37", "#8e44ad", "#b26a00", "#00838f", "#6d4c41", "#c2185b"];
  var NS = "http://www.w3.org/2000/svg";

  function el(name, attrs, text) {
    var e = document.createElementNS(NS, name);
    for (var k in attrs) if (attrs[k] !== undefined && attrs[k] !== null) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function fmt(v) {
    if (v === null || v === undefined || isNaN(v)) return "–";
    var a = Math.abs(v);
    if (a >= 1000) return v.toFixed(0);
    if (a >= 10) return v.toFixed(1);
    if (a >= 0.01 || a === 0) return v.toFixed(2);
    return v.toExponential(1);
  }
  function frame(title, label) {
    var box = document.createElement("figure");
    box.className = "chart";
    box.setAttribute("role", "img");
    box.setAttribute("aria-label", label || title);
    var h = document.createElement("h3");
    h.textContent = title;
    box.appendChild(h);
    return box;
  }
  function legend(box, names) {
    var lg = document.createElement("div");
    lg.className = "legend";
    names.forEach(function (n, i) {
      var s = document.createElement("span");
      var sw = document.createElement("i");
      sw.style.background = PALETTE[i % PALETTE.length];
      s.appendChild(sw);
      s.appendChild(document.createTextNode(n));
      lg.appendChild(s);
    });
    box.appendChild(lg);
  }

  /* series: {name: [{x, y}]}; opts: {title, yLabel, xTime, yMax} */
  function line(series, opts) {
    opts = opts || {};
    var W = 520, H = 200, L = 46, R = 10, T = 10, B = 26;
    var box = frame(opts.title || "", opts.label);
    var names = Object.keys(series);
    var xs = [], ys = [];
    names.forEach(function (n) { series[n].forEach(function (p) {
      if (p.y !== null && p.y !== undefined && !isNaN(p.y)) { xs.push(p.x); ys.push(p.y); } }); });
    var svg = el("svg", {viewBox: "0 0 " + W + " " + H, preserveAspectRatio: "xMidYMid meet"});
    if (!xs.length) {
      svg.appendChild(el("text", {x: W / 2, y: H / 2, "text-anchor": "middle", fill: "#667085"}, "no data yet"));
      box.appendChild(svg);
      return box;
    }
    var x0 = Math.min.apply(null, xs), x1 = Math.max.apply(null, xs);
    if (x1 === x0) { x1 = x0 + 1; }
    var y1 = opts.yMax !== undefined ? opts.yMax : Math.max.apply(null, ys);
    if (!(y1 > 0)) y1 = 1;
    y1 *= 1.1;
    function sx(x) { return L + (x - x0) / (x1 - x0) * (W - L - R); }
    function sy(y) { return T + (1 - y / y1) * (H - T - B); }
    for (var i = 0; i <= 4; i++) {
      var yv = y1 * i / 4, yy = sy(yv);
      svg.appendChild(el("line", {x1: L, x2: W - R, y1: yy, y2: yy, stroke: "#eceff3"}));
      svg.appendChild(el("text", {x: L - 4, y: yy + 4, "text-anchor": "end", "font-size": 10, fill: "#667085"}, fmt(yv)));
    }
    [x0, (x0 + x1) / 2, x1].forEach(function (xv) {
      var label = opts.xTime ? new Date(xv * 1000).toLocaleTimeString() : fmt(xv);
      svg.appendChild(el("text", {x: sx(xv), y: H - 8, "text-anchor": "middle", "font-size": 10, fill: "#667085"}, label));
    });
    if (opts.yLabel) svg.appendChild(el("text", {x: 4, y: 10, "font-size": 10, fill: "#667085"}, opts.yLabel));
    if (opts.threshold !== undefined && opts.threshold !== null && opts.threshold <= y1) {
      svg.appendChild(el("line", {x1: L, x2: W - R, y1: sy(opts.threshold), y2: sy(opts.threshold),
                                  stroke: "#c62828", "stroke-dasharray": "4 3"}));
    }
    names.forEach(function (n, k) {
      var pts = series[n].filter(function (p) { return p.y !== null && p.y !== undefined && !isNaN(p.y); });
      if (!pts.length) return;
      var d = pts.map(function (p, j) { return (j ? "L" : "M") + sx(p.x).toFixed(1) + " " + sy(p.y).toFixed(1); }).join(" ");
      var color = PALETTE[k % PALETTE.length];
      svg.appendChild(el("path", {d: d, fill: "none", stroke: color, "stroke-width": 2}));
      pts.forEach(function (p) {
        var c = el("circle", {cx: sx(p.x), cy: sy(p.y), r: 2.5, fill: color});
        c.appendChild(el("title", {}, n + ": " + fmt(p.y)));
        svg.appendChild(c);
      });
    });
    box.appendChild(svg);
    legend(box, names);
    return box;
  }

  /* groups: {name: {edges:[...], counts:[...]}} drawn as grouped bars of fractions */
  function histogram(groups, opts) {
    opts = opts || {};
    var W = 520, H = 200, L = 40, R = 10, T = 10, B = 26;
    var box = frame(opts.title || "", opts.label);
    var names = Object.keys(groups).filter(function (n) { return groups[n] && groups[n].counts; });
    var svg = el("svg", {viewBox: "0 0 " + W + " " + H});
    if (!names.length) {
      svg.appendChild(el("text", {x: W / 2, y: H / 2, "text-anchor": "middle", fill: "#667085"}, "no data yet"));
      box.appendChild(svg);
      return box;
    }
    var edges = groups[names[0]].edges, nb = edges.length - 1;
    var fr = {}, ymax = 0;
    names.forEach(function (n) {
      var c = groups[n].counts, tot = c.reduce(function (a, b) { return a + b; }, 0) || 1;
      fr[n] = c.map(function (v) { return v / tot; });
      ymax = Math.max(ymax, Math.max.apply(null, fr[n]));
    });
    if (!(ymax > 0)) ymax = 1;
    var bw = (W - L - R) / nb, gw = bw * 0.85 / names.length;
    for (var i = 0; i <= 4; i++) {
      var yv = ymax * i / 4, yy = T + (1 - i / 4) * (H - T - B);
      svg.appendChild(el("line", {x1: L, x2: W - R, y1: yy, y2: yy, stroke: "#eceff3"}));
      svg.appendChild(el("text", {x: L - 4, y: yy + 4, "text-anchor": "end", "font-size": 10, fill: "#667085"}, (yv * 100).toFixed(0) + "%"));
    }
    names.forEach(function (n, k) {
      fr[n].forEach(function (v, b) {
        var h = v / ymax * (H - T - B);
        var r = el("rect", {x: L + b * bw + k * gw + bw * 0.075, y: H - B - h, width: Math.max(gw - 1, 1), height: h,
                            fill: PALETTE[k % PALETTE.length]});
        r.appendChild(el("title", {}, n + " [" + fmt(edges[b]) + ", " + fmt(edges[b + 1]) + "): " + (v * 100).toFixed(1) + "%"));
        svg.appendChild(r);
      });
    });
    [0, Math.floor(nb / 2), nb].forEach(function (b) {
      svg.appendChild(el("text", {x: L + b * bw, y: H - 8, "text-anchor": "middle", "font-size": 10, fill: "#667085"}, fmt(edges[b])));
    });
    box.appendChild(svg);
    legend(box, names);
    return box;
  }

  window.Charts = {line: line, histogram: histogram, fmt: fmt};
})();
