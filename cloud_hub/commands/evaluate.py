"""``cloud-hub evaluate NAME`` (also ``cloud-hub models evaluate NAME``): champion vs challenger verdict."""

from __future__ import annotations

import argparse

from cloud_hub.commands.split import client, common_parser, emit


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="model name with a champion/challenger split")
    p.add_argument("--decide-on", choices=["accuracy", "auc", "business"],
                   help="metric the challenger must improve significantly (default: the split's config, accuracy)")
    p.add_argument("--metric", dest="business_metric", choices=["positive_rate", "mean_score", "cost"],
                   help="business metric reported (and decided on with --decide-on business)")
    p.add_argument("--goal", dest="business_goal", choices=["min", "max"], help="better direction of the business metric")
    p.add_argument("--cost-fp", type=float, help="cost of a false positive (cost metric)")
    p.add_argument("--cost-fn", type=float, help="cost of a false negative (cost metric)")
    p.add_argument("--cost-tp", type=float, help="cost (negative: gain) of a true positive")
    p.add_argument("--cost-tn", type=float, help="cost of a true negative")
    p.add_argument("--guardrail", dest="business_guardrail", action="store_true", default=None,
                   help="refuse promotion when the business metric is significantly worse")
    p.add_argument("--alpha", type=float, help="significance level (default 0.05)")
    p.add_argument("--min-samples", type=int, help="labelled rows needed per group (default 30)")
    p.add_argument("--promote", action="store_true", help="promote when the verdict is PROMOTE")
    p.set_defaults(func=cmd_evaluate)


def register(sub) -> None:
    common = common_parser()
    p = sub.add_parser("evaluate", parents=[common], help="compare champion and challenger: "
                       "PROMOTE / KEEP_CHAMPION / NOT_ENOUGH_DATA",
                       description="Compare the groups of NAME's split on a business metric and on "
                       "accuracy/AUC from feedback, with significance tests. Exit code 0 for any verdict.")
    add_arguments(p)
    models = sub.choices.get("models")  # also as `cloud-hub models evaluate` when hub-core's group exists
    if models is not None:
        for action in models._actions:
            if isinstance(action, argparse._SubParsersAction) and "evaluate" not in action.choices:
                add_arguments(action.add_parser("evaluate", parents=[common],
                                                help="champion vs challenger verdict (same as `cloud-hub evaluate`)"))


def _n(x, fmt=".4f") -> str:
    return "n/a" if x is None else format(x, fmt)


def cmd_evaluate(args) -> int:
    keys = ["decide_on", "business_metric", "business_goal", "cost_fp", "cost_fn", "cost_tp", "cost_tn",
            "business_guardrail", "alpha", "min_samples"]
    body = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    c = client(args)
    d = c.post(f"/v1/models/{args.name}/evaluate", json=body)
    lines = [f"{args.name}: {d['verdict']}"] + [f"  reason: {r}" for r in d.get("reasons", [])]
    lines += [f"  warning: {w}" for w in d.get("warnings", [])]
    lines.append(f"  {'group':<11} {'requests':>8} {'labelled':>8} {'accuracy':>8} {'auc':>8} {'pos.rate':>8}  versions")
    for g, v in d["groups"].items():
        lines.append(f"  {g:<11} {v['requests']:>8} {v['labelled']:>8} {_n(v['accuracy']):>8} {_n(v['auc']):>8} "
                     f"{_n(v['positive_rate']):>8}  {','.join(v['versions'])}")
    for name, t in d["tests"].items():
        label = f"{name} ({t['metric']})" if name == "business" else name
        lines.append(f"  {label:<24} {t['test']:<16} diff={_n(t['difference'])} p={_n(t['p_value'], '.3g')}")
    if args.promote and d["verdict"] == "PROMOTE":
        pr = c.post(f"/v1/models/{args.name}/promote", json={"force": False, "evaluation": body or None})
        d["promotion"] = pr
        lines.append(f"  promoted: champion is now {pr['champion']} (previous {pr['previous']})")
    return emit(args, d, "\n".join(lines))
