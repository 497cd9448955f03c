"""``cloud-hub shadow``: attach/detach shadow versions, queue status, comparison report."""

from __future__ import annotations

from cloud_hub.commands.split import client, common_parser, emit


def register(sub) -> None:
    common = common_parser()
    p = sub.add_parser("shadow", help="shadow deployments: attach, detach, list, status, report",
                       description="Mirror live requests of a model to shadow versions off the critical "
                       "path and compare their answers.")
    s = p.add_subparsers(dest="shadow_command", metavar="ACTION", required=True)

    at = s.add_parser("attach", parents=[common], help="attach VERSION as a shadow of NAME")
    at.add_argument("name")
    at.add_argument("version", help="version (or name@alias) to mirror to")
    at.add_argument("--sample-rate", type=float, default=1.0, help="share of requests mirrored (0..1]")
    at.add_argument("--segment", action="append", default=[], metavar="SPEC",
                    help="report segment: FEATURE, FEATURE:E1,E2,... (numeric bins) or tag:group (repeatable)")
    at.set_defaults(func=cmd_attach)

    dt = s.add_parser("detach", parents=[common], help="detach a shadow version (records are kept)")
    dt.add_argument("name")
    dt.add_argument("version")
    dt.set_defaults(func=cmd_detach)

    ls = s.add_parser("list", parents=[common], help="shadow versions of NAME")
    ls.add_argument("name")
    ls.set_defaults(func=cmd_list)

    st = s.add_parser("status", parents=[common], help="mirror queue depth, drops, errors")
    st.set_defaults(func=cmd_status)

    rc = s.add_parser("records", parents=[common], help="export comparison records as JSON lines",
                      description="Print NAME's comparison records (one JSON object per line), oldest first.")
    rc.add_argument("name")
    rc.add_argument("--shadow", help="only this shadow version")
    rc.add_argument("--since", help="only records from this ISO time")
    rc.add_argument("--limit", type=int, default=None, help="at most this many records (default: all)")
    rc.set_defaults(func=cmd_records)

    pr = s.add_parser("prune", parents=[common], help="delete comparison records older than a time",
                      description="Retention: delete NAME's comparison records created before --before.")
    pr.add_argument("name")
    pr.add_argument("--before", required=True, help="ISO time, e.g. 2026-11-01T00:00:00Z")
    pr.set_defaults(func=cmd_prune)

    rp = s.add_parser("report", parents=[common], help="shadow vs primary report with a PASS/FAIL verdict",
                      description="Identical-bucket rate, decision-change rate, mean scores, KS test, most "
                      "divergent segments, shadow latency vs SLA, and a verdict. Exit code 0 on PASS, "
                      "3 on FAIL, 4 on NOT_ENOUGH_DATA.")
    rp.add_argument("name")
    rp.add_argument("--shadow", help="only this shadow version")
    rp.add_argument("--since", help="only records from this ISO time")
    rp.add_argument("--max-decision-change", type=float, default=0.05, help="criterion (default 0.05)")
    rp.add_argument("--sla-ms", type=float, default=50.0, help="shadow p99 latency at most (default 50)")
    rp.add_argument("--min-samples", type=int, default=100, help="compared rows needed (default 100)")
    rp.add_argument("--max-mean-divergence", type=float, help="criterion on mean |score difference|")
    rp.add_argument("--min-ks-pvalue", type=float, help="criterion on the KS p-value")
    rp.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                    help="first wait up to SECONDS for queued mirrors to be compared (default 0)")
    rp.set_defaults(func=cmd_report)


def cmd_attach(args) -> int:
    d = client(args).post(f"/v1/models/{args.name}/shadows", json={
        "version": args.version, "sample_rate": args.sample_rate, "segments": args.segment})
    return emit(args, d, f"{args.name}: shadow {d['version']} attached (sample rate {d['sample_rate']:g})")


def cmd_detach(args) -> int:
    client(args).request("DELETE", f"/v1/models/{args.name}/shadows/{args.version}")
    return emit(args, {"detached": args.version}, f"{args.name}: shadow {args.version} detached")


def cmd_list(args) -> int:
    d = client(args).get(f"/v1/models/{args.name}/shadows")
    text = "\n".join(f"{t['version']}  sample_rate={t['sample_rate']:g}  segments={','.join(t['segments']) or '-'}"
                     for t in d["shadows"]) or f"{args.name}: no shadows"
    return emit(args, d, text)


def cmd_status(args) -> int:
    d = client(args).get("/v1/shadow/status")
    return emit(args, d, " ".join(f"{k}={v}" for k, v in d.items()))


def _n(x, fmt=".4f") -> str:
    return "n/a" if x is None else format(x, fmt)


def cmd_report(args) -> int:
    params = {"max_decision_change": args.max_decision_change, "sla_ms": args.sla_ms,
              "min_samples": args.min_samples, "wait_s": args.wait}
    for k in ("shadow", "since", "max_mean_divergence", "min_ks_pvalue"):
        if getattr(args, k) is not None:
            params[k] = getattr(args, k)
    d = client(args).get(f"/v1/models/{args.name}/shadow/report", params=params)
    lines = [f"{args.name}: {d['verdict']}"]
    for s in d["shadows"]:
        lat = s["latency_ms"]
        lines += [
            (f"  shadow {s['shadow_version']} vs primary {','.join(s['primary_versions']) or '-'}: "
             f"{s['verdict']} ({'; '.join(s['reasons'])})"),
            f"    compared={s['compared']} requests={s['requests']} shadow_errors={s['shadow_errors']}",
            (f"    identical_bucket_rate={_n(s['identical_bucket_rate'])} "
             f"decision_change_rate={_n(s['decision_change_rate'])}"),
            (f"    mean_score primary={_n(s['mean_primary_score'])} shadow={_n(s['mean_shadow_score'])} "
             f"mean_divergence={_n(s['mean_divergence'])}"),
            f"    KS statistic={_n(s['ks_statistic'])} p={_n(s['ks_pvalue'], '.3g')}",
            (f"    shadow latency p50={_n(lat['shadow_p50'], '.2f')} ms p99={_n(lat['shadow_p99'], '.2f')} ms "
             f"(SLA {_n(lat['sla_ms'], 'g')} ms)")]
        for seg in s["segments"][:5]:
            lines.append(f"    segment {seg['segment']}={seg['value']}: n={seg['count']} "
                         f"decision_change={seg['decision_change_rate']:.3f} "
                         f"mean_divergence={_n(seg['mean_divergence'])}")
    q = d["queue"]
    lines.append(f"  queue: depth={q['queue_depth']}/{q['queue_capacity']} dropped={q['dropped']}")
    emit(args, d, "\n".join(lines))
    return {"PASS": 0, "FAIL": 3}.get(d["verdict"], 4)


def cmd_prune(args) -> int:
    d = client(args).request("DELETE", f"/v1/models/{args.name}/shadow/records", params={"before": args.before})
    return emit(args, d, f"{args.name}: deleted {d['deleted']} comparison records")


def cmd_records(args) -> int:
    import json

    c = client(args)
    params = {k: getattr(args, k) for k in ("shadow", "since") if getattr(args, k) is not None}
    left = args.limit
    after = None
    while left is None or left > 0:
        page = min(1000, left) if left is not None else 1000
        d = c.get(f"/v1/models/{args.name}/shadow/records",
                  params={**params, "limit": page, **({"after_id": after} if after is not None else {})})
        for r in d["records"]:
            print(json.dumps(r))
        if left is not None:
            left -= len(d["records"])
        after = d["next_after_id"]
        if after is None:
            break
    return 0
