"""Self-contained HTML report of a demo run: inline SVG charts drawn here, no CDN, no JavaScript.

Charts: the stage timeline of each rollout (with its decisions), fleet p99 and
error rate per model version over time, and the shadow comparison (score
histograms of champion vs challenger on the same requests, decision-change rate).
"""

from __future__ import annotations

import datetime as dt
import html
import math
from pathlib import Path
from typing import Any, Sequence

PALETTE = ["#2563eb", "#16a34a", "#dc2626", "#9333ea", "#ea580c", "#0891b2", "#4b5563"]
KIND_COLORS = {"shadow": "#a78bfa", "canary": "#60a5fa", "rollback": "#f87171", "done": "#4ade80"}


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if v <= m * exp:
            return m * exp
    return 10 * exp


def line_chart(series: dict[str, Sequence[tuple[float, float | None]]], *, title: str, y_label: str,
               width: int = 760, height: int = 260, hline: tuple[float, str] | None = None,
               t0: float | None = None, y_fmt: str = "{:g}") -> str:
    """Lines of (t, y) per label; None breaks a line. ``hline`` = (y, label) threshold."""
    pts = [(t, y) for s in series.values() for t, y in s if y is not None]
    left, right, top, bottom = 64, 150, 30, 36
    w, h = width - left - right, height - top - bottom
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{_esc(title)}">',
           f'<text x="{left}" y="18" font-size="14" font-weight="600">{_esc(title)}</text>']
    if not pts:
        out.append(f'<text x="{left}" y="{top + h / 2}" fill="#6b7280">no data</text></svg>')
        return "".join(out)
    t_min = t0 if t0 is not None else min(t for t, _ in pts)
    t_max = max(max(t for t, _ in pts), t_min + 1)
    y_max = max(y for _, y in pts)
    if hline:
        y_max = max(y_max, hline[0])
    y_max = _nice_max(y_max * 1.1)

    def X(t: float) -> float:
        return left + (t - t_min) / (t_max - t_min) * w

    def Y(y: float) -> float:
        return top + h - y / y_max * h

    out.append(f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="#f9fafb" stroke="#d1d5db"/>')
    for i in range(5):
        yv = y_max * i / 4
        out.append(f'<line x1="{left}" x2="{left + w}" y1="{Y(yv):.1f}" y2="{Y(yv):.1f}" stroke="#e5e7eb"/>'
                   f'<text x="{left - 6}" y="{Y(yv) + 4:.1f}" font-size="11" text-anchor="end">'
                   f'{_esc(y_fmt.format(yv))}</text>')
    for i in range(6):
        tv = t_min + (t_max - t_min) * i / 5
        out.append(f'<text x="{X(tv):.1f}" y="{top + h + 16}" font-size="11" text-anchor="middle">'
                   f'{tv - t_min:.0f}s</text>')
    out.append(f'<text x="14" y="{top + h / 2}" font-size="11" transform="rotate(-90 14 {top + h / 2})" '
               f'text-anchor="middle">{_esc(y_label)}</text>')
    if hline:
        out.append(f'<line x1="{left}" x2="{left + w}" y1="{Y(hline[0]):.1f}" y2="{Y(hline[0]):.1f}" '
                   f'stroke="#dc2626" stroke-dasharray="5,4"/><text x="{left + w - 4}" y="{Y(hline[0]) - 4:.1f}" '
                   f'font-size="11" fill="#dc2626" text-anchor="end">{_esc(hline[1])}</text>')
    for i, (label, s) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        segs: list[list[str]] = [[]]
        for t, y in s:
            if y is None:
                segs.append([])
            else:
                segs[-1].append(f"{X(t):.1f},{Y(y):.1f}")
        for seg in segs:
            if len(seg) > 1:
                out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{" ".join(seg)}"/>')
            elif len(seg) == 1:
                x, y = seg[0].split(",")
                out.append(f'<circle cx="{x}" cy="{y}" r="2.5" fill="{color}"/>')
        ly = top + 14 + i * 18
        out.append(f'<rect x="{left + w + 12}" y="{ly - 9}" width="12" height="12" fill="{color}"/>'
                   f'<text x="{left + w + 30}" y="{ly + 1}" font-size="12">{_esc(label)}</text>')
    out.append("</svg>")
    return "".join(out)


def histogram_chart(hists: dict[str, Sequence[float]], edges: Sequence[float], *, title: str,
                    width: int = 760, height: int = 240) -> str:
    """Side-by-side bars of normalised histograms sharing ``edges``."""
    left, right, top, bottom = 56, 150, 30, 36
    w, h = width - left - right, height - top - bottom
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{_esc(title)}">',
           f'<text x="{left}" y="18" font-size="14" font-weight="600">{_esc(title)}</text>']
    norm = {k: [c / (sum(v) or 1) for c in v] for k, v in hists.items() if v}
    if not norm or len(edges) < 2:
        out.append(f'<text x="{left}" y="{top + h / 2}" fill="#6b7280">no data</text></svg>')
        return "".join(out)
    n_bins = len(edges) - 1
    y_max = _nice_max(max(max(v) for v in norm.values()) * 1.1)
    bw = w / n_bins
    out.append(f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="#f9fafb" stroke="#d1d5db"/>')
    for i in range(5):
        yv = y_max * i / 4
        y = top + h - yv / y_max * h
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">{yv:.0%}</text>')
    k = len(norm)
    for j, (label, v) in enumerate(norm.items()):
        color = PALETTE[j % len(PALETTE)]
        for i, p in enumerate(v[:n_bins]):
            bh = p / y_max * h
            x = left + i * bw + j * bw / k
            out.append(f'<rect x="{x:.1f}" y="{top + h - bh:.1f}" width="{max(bw / k - 1, 1):.1f}" '
                       f'height="{bh:.1f}" fill="{color}" opacity="0.85"/>')
        ly = top + 14 + j * 18
        out.append(f'<rect x="{left + w + 12}" y="{ly - 9}" width="12" height="12" fill="{color}"/>'
                   f'<text x="{left + w + 30}" y="{ly + 1}" font-size="12">{_esc(label)}</text>')
    for i in range(0, n_bins + 1, max(1, n_bins // 5)):
        x = left + i * bw
        out.append(f'<text x="{x:.1f}" y="{top + h + 16}" font-size="11" text-anchor="middle">'
                   f'{edges[i]:g}</text>')
    out.append("</svg>")
    return "".join(out)


def timeline_chart(rollouts: list[dict[str, Any]], *, t0: float, t_end: float, width: int = 760) -> str:
    """One row per rollout: a bar per stage (shadow / canary), the end state, decision markers."""
    left, right, top = 150, 20, 30
    row_h = 46
    height = top + row_h * max(len(rollouts), 1) + 30
    w = width - left - right
    span = max(t_end - t0, 1.0)

    def X(t: float) -> float:
        return left + (t - t0) / span * w

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="stage timeline">',
           '<text x="10" y="18" font-size="14" font-weight="600">Stage timeline</text>']
    for i, r in enumerate(rollouts):
        y = top + i * row_h
        out.append(f'<text x="10" y="{y + 20}" font-size="12">{_esc(r["label"])}</text>'
                   f'<text x="10" y="{y + 35}" font-size="11" fill="#6b7280">{_esc(r["outcome"])}</text>')
        for seg in r["segments"]:
            x1, x2 = X(seg["start"]), X(seg["end"])
            color = KIND_COLORS.get(seg["kind"], "#9ca3af")
            out.append(f'<rect x="{x1:.1f}" y="{y + 6}" width="{max(x2 - x1, 2):.1f}" height="24" '
                       f'fill="{color}" stroke="#fff"><title>{_esc(seg["label"])}: '
                       f'{seg["end"] - seg["start"]:.1f}s</title></rect>')
            if x2 - x1 > 34:
                out.append(f'<text x="{(x1 + x2) / 2:.1f}" y="{y + 22}" font-size="10" text-anchor="middle">'
                           f'{_esc(seg["short"])}</text>')
    for i in range(6):
        tv = t0 + span * i / 5
        out.append(f'<text x="{X(tv):.1f}" y="{height - 8}" font-size="11" text-anchor="middle">'
                   f'{tv - t0:.0f}s</text>')
    out.append("</svg>")
    return "".join(out)


def segments_from_events(events: list[dict[str, Any]], end_ts: float) -> list[dict[str, Any]]:
    """Stage bars from a rollout's decision log (started / advanced / rollback / completed …)."""
    segs: list[dict[str, Any]] = []
    cur: dict[str, Any] | None = None
    for e in events:
        k = e["kind"]
        if k in ("started", "advanced", "resumed"):
            if cur:
                cur["end"] = e["ts"]
                segs.append(cur)
            stage = (e.get("message") or "").split("→")[-1].split(":")[0].strip() if k == "advanced" \
                else (e.get("stage") or "")
            stage = e.get("stage") or stage
            kind = "shadow" if stage.startswith("shadow") else "canary"
            cur = {"start": e["ts"], "end": e["ts"], "kind": kind, "label": stage,
                   "short": stage.replace("canary-", "")}
        elif k in ("rollback", "aborted", "paused", "completed"):
            if cur:
                cur["end"] = e["ts"]
                segs.append(cur)
                cur = None
            if k in ("rollback", "aborted"):
                cur = {"start": e["ts"], "end": e["ts"], "kind": "rollback", "label": "rolling back",
                       "short": "rollback"}
        elif k in ("rolled_back",) and cur:
            cur["end"] = e["ts"]
            segs.append(cur)
            cur = None
    if cur:
        cur["end"] = end_ts
        segs.append(cur)
    return segs


def render_report(data: dict[str, Any], path: str | Path) -> Path:
    """Write the report. ``data`` keys: title, started, finished, summary (list of (k, v)),
    rollouts (list of {id, label, outcome, events}), series ({"p99": {ver: [(t, ms)]},
    "error_rate": {ver: [(t, rate)]}}), shadow ({edges, champion, challenger, decision_change,
    divergence_edges, divergence}), thresholds ({max_p99_ms, max_error_rate}); optional result
    (the text shown instead of PASS/FAIL, e.g. a rollout's status)."""
    t0, t1 = data["started"], data["finished"]
    th = data.get("thresholds", {})
    tl = [{"label": r["label"], "outcome": r["outcome"],
           "segments": segments_from_events(r["events"], r.get("end_ts", t1))} for r in data["rollouts"]]
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>{_esc(data['title'])}</title>",
        "<style>body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:980px;"
        "margin:24px auto;padding:0 16px;color:#111827}h1{font-size:22px}h2{font-size:17px;margin-top:28px}"
        "table{border-collapse:collapse;font-size:13px;width:100%}td,th{border-bottom:1px solid #e5e7eb;"
        "padding:4px 8px;text-align:left;vertical-align:top}th{background:#f3f4f6}.ok{color:#15803d;"
        "font-weight:600}.bad{color:#b91c1c;font-weight:600}svg{max-width:100%;height:auto;"
        "margin:6px 0}code{font-size:12px}</style></head><body>",
        f"<h1>{_esc(data['title'])}</h1>",
        f"<p>{_esc(dt.datetime.fromtimestamp(t0, dt.timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC'))} · "
        f"{t1 - t0:.1f} s · result: <span class={'ok' if data.get('ok') else 'bad'}>"
        f"{_esc(data.get('result') or ('PASS' if data.get('ok') else 'FAIL'))}</span></p>",
        "<h2>Summary</h2><table>",
        *(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in data.get("summary", [])),
        "</table>",
        "<h2>Stage timeline</h2>", timeline_chart(tl, t0=t0, t_end=t1),
        "<h2>Fleet latency and errors per version</h2>",
        line_chart(data["series"].get("p99", {}), title="Fleet p99 latency (merged sketches)",
                   y_label="p99 (ms)", t0=t0, y_fmt="{:.0f}",
                   hline=(th["max_p99_ms"], f"SLA {th['max_p99_ms']:g} ms") if th.get("max_p99_ms") else None),
        line_chart(data["series"].get("error_rate", {}), title="Fleet error rate", y_label="error rate",
                   t0=t0, y_fmt="{:.1%}",
                   hline=(th["max_error_rate"], f"max {th['max_error_rate']:.0%}") if th.get("max_error_rate")
                   else None),
    ]
    sh = data.get("shadow") or {}
    parts.append("<h2>Shadow comparison (same requests, same devices)</h2>")
    if sh.get("edges"):
        parts.append(f"<p>{_esc(sh.get('text', ''))}</p>")
        parts.append(histogram_chart({k: v for k, v in (("champion (active)", sh.get("champion")),
                                                        ("challenger (shadow)", sh.get("challenger"))) if v},
                                     sh["edges"], title="Score distribution"))
        if sh.get("divergence") and sh.get("divergence_edges"):
            parts.append(histogram_chart({"|p_shadow − p_active|": sh["divergence"]}, sh["divergence_edges"],
                                         title="Per-request score divergence"))
    else:
        parts.append("<p>no shadow stage in this run</p>")
    for r in data["rollouts"]:
        parts.append(f"<h2>Decision log — {_esc(r['label'])}</h2><table><tr><th>t</th><th>event</th>"
                     "<th>stage</th><th>message</th></tr>")
        for e in r["events"]:
            parts.append(f"<tr><td>{e['ts'] - t0:.1f}s</td><td>{_esc(e['kind'])}</td>"
                         f"<td>{_esc(e.get('stage') or '')}</td><td>{_esc(e['message'])}</td></tr>")
        parts.append("</table>")
    parts.append("<p style='color:#6b7280;font-size:12px'>Generated by <code>cloud-hub demo</code>; "
                 "every number comes from the devices' telemetry windows aggregated by the hub.</p>")
    parts.append("</body></html>")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(parts), encoding="utf-8")
    return out
