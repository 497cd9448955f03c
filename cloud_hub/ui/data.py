"""Server-side data for the dashboard's charts and overview.

Fleet quantiles are computed from merged latency sketches per time bucket and
version (``SlotAggregate``), never from averaged per-device p99s.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from sqlalchemy import select

from cloud_hub.fleet import tables as T
from cloud_hub.fleet.aggregate import SlotAggregate
from cloud_hub.rollouts.service import rollout_service


def overview(hub: Any) -> dict[str, Any]:
    devices = hub.fleet.device_index()  # a few columns per device: fast at 10,000 devices
    online = sum(1 for d in devices if d.online)
    by_profile = Counter(d.profile or "unknown" for d in devices)
    by_tag: Counter[str] = Counter()
    for d in devices:
        for k, v in d.tags.items():
            by_tag[f"{k}={v}"] += 1
    versions = Counter(d.version for d in devices if d.version)
    rollouts = rollout_service(hub).list()
    models = {mv.name for mv in hub.registry.list()}
    return {
        "devices": {"total": len(devices), "online": online, "offline": len(devices) - online},
        "by_profile": dict(by_profile), "by_tag": dict(by_tag), "running_versions": dict(versions),
        "models": len(models),
        "rollouts": {"total": len(rollouts),
                     "active": sum(1 for r in rollouts if r["status"] in ("running", "paused",
                                                                          "rolling_back", "aborting")),
                     "recent": rollouts[:5]},
        "ts": time.time(),
    }


def cohort_preview(hub: Any, selector: str, *, first: int = 20) -> dict[str, Any]:
    """Devices a rollout cohort selector matches now (count, online, the first ids by id)."""
    from cloud_hub.rollouts.cohort import parse_selector

    sel = parse_selector(selector)
    rows = [r for r in hub.fleet.device_index() if sel.matches(r.id, r.tags, r.profile)]
    rows.sort(key=lambda r: r.id)
    return {"selector": str(sel), "count": len(rows), "online": sum(1 for r in rows if r.online),
            "devices": [{"id": r.id, "online": r.online, "version": r.version} for r in rows[:first]]}


def rollout_report(hub: Any, rollout_id: str) -> str:
    """The demo's self-contained HTML report (cloud_hub/demo/report.py) for one rollout."""
    import tempfile
    from pathlib import Path

    from cloud_hub.demo.report import render_report

    svc = rollout_service(hub)
    ro = svc.status(rollout_id)
    events = svc.events(rollout_id)
    t0 = ro["created_at"]
    t1 = ro.get("finished_at") or time.time()
    ts = timeseries(hub, ro["model"], since=t0 - 60)
    series: dict[str, dict[str, list[tuple[float, float | None]]]] = {"p99": {}, "error_rate": {}}
    for version, points in ts["series"].items():
        series["p99"][version] = [(p["t"], p["p99_ms"]) for p in points]
        series["error_rate"][version] = [(p["t"], p["error_rate"]) for p in points]
    gates = ro.get("plan", {}).get("gates", {}) if isinstance(ro.get("plan"), dict) else {}
    label = f"{ro['model']}:{ro['candidate']['version']}"
    summary = [("rollout", ro["id"]), ("candidate", label),
               ("champion", ro["champion"]["version"] if ro.get("champion") else "none"),
               ("cohort", str(ro.get("cohort"))), ("status", ro["status"]), ("stage", ro["stage"]["name"]),
               ("reason", ro.get("reason") or ""),
               ("devices", ", ".join(f"{k} {v}" for k, v in (ro.get("devices") or {}).items()))]
    for g in ro.get("gates") or []:
        summary.append((f"gate {g['name']}", f"{g['status']}: {g.get('message') or ''}"))
    with tempfile.TemporaryDirectory() as tmp:
        path = render_report({
            "title": f"edgefleet rollout {ro['id']} — {label}", "started": t0, "finished": t1,
            "ok": ro["status"] == "completed", "result": ro["status"], "summary": summary,
            "rollouts": [{"id": ro["id"], "label": label, "outcome": ro["status"], "events": events, "end_ts": t1}],
            "series": series, "shadow": None,
            "thresholds": {k: gates[k] for k in ("max_p99_ms", "max_error_rate") if gates.get(k)}},
            Path(tmp) / "report.html")
        return path.read_text()


def timeseries(hub: Any, model: str, *, since: float | None = None, buckets: int = 40,
               slot: str = "active") -> dict[str, Any]:
    """Fleet p99 / p50 latency, error rate and requests per version per time bucket."""
    s = T.slot_stats
    q = select(s.c.version, s.c.end, s.c.requests, s.c.errors, s.c.latency, s.c.device_id) \
        .where(s.c.name == model, s.c.slot == slot)
    if since is not None:
        q = q.where(s.c.end >= since)
    with hub.engine.connect() as conn:
        rows = conn.execute(q.order_by(s.c.end)).all()
    if not rows:
        return {"model": model, "slot": slot, "bucket_s": None, "series": {}}
    t0, t1 = rows[0].end, rows[-1].end
    width = max((t1 - t0) / buckets, 1.0)
    acc: dict[str, dict[int, SlotAggregate]] = {}
    for r in rows:
        b = int((r.end - t0) // width)
        agg = acc.setdefault(r.version, {}).setdefault(b, SlotAggregate())
        agg.add_row({"requests": r.requests, "errors": r.errors, "latency": r.latency,
                     "device_id": r.device_id})
    series = {}
    for version, points in acc.items():
        out = []
        for b in sorted(points):
            a = points[b]
            p99, p50 = a.p99, a.p50
            out.append({"t": t0 + (b + 1) * width, "requests": a.requests, "errors": a.errors,
                        "error_rate": a.error_rate,
                        "p99_ms": None if p99 is None else p99 * 1000.0,
                        "p50_ms": None if p50 is None else p50 * 1000.0,
                        "devices": a.devices_reporting})
        series[version] = out
    return {"model": model, "slot": slot, "bucket_s": width, "series": series}


def distributions(hub: Any, model: str, *, since: float | None = None) -> dict[str, Any]:
    """Score histograms per version (active slot) and the shadow divergence histogram."""
    s = T.slot_stats
    q = select(s.c.version, s.c.slot, s.c.scores, s.c.divergence, s.c.compared, s.c.decision_changed,
               s.c.requests, s.c.errors, s.c.latency, s.c.device_id, s.c.decisions, s.c.dropped) \
        .where(s.c.name == model)
    if since is not None:
        q = q.where(s.c.end >= since)
    with hub.engine.connect() as conn:
        rows = conn.execute(q).all()
    per: dict[tuple[str, str], SlotAggregate] = {}
    for r in rows:
        per.setdefault((r.version, r.slot), SlotAggregate()).add_row(dict(r._mapping))
    scores = {}
    shadow = {}
    for (version, slot), a in per.items():
        if slot == "active" and a.scores is not None:
            scores[version] = a.scores.to_dict()
        if slot == "shadow":
            shadow[version] = {"compared": a.compared, "decision_changed": a.decision_changed,
                               "decision_change_rate": a.decision_change_rate,
                               "divergence": a.divergence.to_dict() if a.divergence else None,
                               "scores": a.scores.to_dict() if a.scores else None}
    return {"model": model, "scores": scores, "shadow": shadow}


def device_series(hub: Any, device_id: str, *, limit: int = 120) -> dict[str, Any]:
    """Recent windows of one device: latency, errors, requests, shadow change rate, RSS."""
    s, w = T.slot_stats, T.windows
    with hub.engine.connect() as conn:
        wins = conn.execute(select(w.c.seq, w.c.end, w.c.rss_bytes, w.c.cpu_percent)
                            .where(w.c.device_id == device_id).order_by(w.c.end.desc()).limit(limit)).all()
        seqs = [x.seq for x in wins]
        stats = conn.execute(select(s).where(s.c.device_id == device_id, s.c.seq.in_(seqs))).all() \
            if seqs else []
    by_seq: dict[int, list[Any]] = {}
    for r in stats:
        by_seq.setdefault(r.seq, []).append(r)
    points = []
    for win in reversed(wins):
        p: dict[str, Any] = {"t": win.end, "seq": win.seq, "rss_mb": win.rss_bytes / 1e6,
                             "cpu_percent": win.cpu_percent}
        for r in by_seq.get(win.seq, []):
            a = SlotAggregate()
            a.add_row(dict(r._mapping))
            key = r.slot
            p[f"{key}_requests"] = a.requests
            p[f"{key}_errors"] = a.errors
            p[f"{key}_p50_ms"] = None if a.p50 is None else a.p50 * 1000.0
            p[f"{key}_p99_ms"] = None if a.p99 is None else a.p99 * 1000.0
            if key == "shadow":
                p["shadow_change_rate"] = a.decision_change_rate
        points.append(p)
    return {"device_id": device_id, "points": points}
