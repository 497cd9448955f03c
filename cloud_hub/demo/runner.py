"""The one-command demo: a real hub, a simulated fleet, a promotion and an automatic rollback.

Everything runs in this process with no outside service: the embedded MQTT broker (or
``--mqtt-url``), SQLite in the output directory, the hub's HTTP API on a free port (devices
download bundles from it), the rollout controller, and N simulated devices running the real
device daemon. Steps:

1. train a champion and a challenger on scikit-learn's breast-cancer data, convert and sign
   them (``export_model``), push them to the registry (champion ← 1.0.0);
2. boot the fleet on the champion;
3. roll the challenger out: shadow (every device runs it on the same requests) → canary
   10 % → 50 % → 100 % → the ``champion`` alias moves to it;
4. push a bad model (the simulator makes it fail on devices) and roll it out: the canary's
   error-rate gate fails and every device goes back to the champion automatically;
5. print a summary and write an HTML report.

Stage durations are compressed (seconds instead of hours); the gates are the real ones.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloud_hub.demo.runtime import LocalHub, wait_for

MODEL = "cancer-risk"


@dataclass
class DemoConfig:
    devices: int = 50
    out: Path | None = None
    mqtt_url: str | None = None  # None: embedded broker
    stage_s: float = 4.0
    min_samples: int = 200
    interval_s: float = 0.5
    request_rate: float = 4.0
    batch: int = 8
    bad_fault: str = "errors"  # errors | slow
    profiles: tuple[str, ...] = ("tiny-arm", "rpi4")
    keep_serving: float = 0.0
    timeout_s: float = 150.0
    quiet: bool = False
    seed: int = 0


@dataclass
class DemoResult:
    ok: bool
    promoted: bool
    rolled_back: bool
    report: Path
    out: Path
    summary: list[tuple[str, str]] = field(default_factory=list)
    rollouts: list[dict[str, Any]] = field(default_factory=list)


class Demo:
    def __init__(self, config: DemoConfig) -> None:
        from rich.console import Console

        self.cfg = config
        self.console = Console(quiet=config.quiet, highlight=False)
        self.series: dict[str, dict[str, list[tuple[float, float | None]]]] = {"p99": {}, "error_rate": {}}
        self._last_sample = 0.0
        self._seen_events: dict[str, int] = {}

    # ---- helpers -----------------------------------------------------------------------
    def say(self, msg: str) -> None:
        self.console.print(msg)

    def _sample(self, hub: LocalHub, versions: list[str]) -> None:
        now = time.time()
        if now - self._last_sample < 1.0:
            return
        self._last_sample = now
        for v in versions:
            agg = hub.hub.fleet.window_stats(name=MODEL, version=v, slot="active", since=now - 3.0)
            p99 = agg.p99 * 1000 if agg.requests and agg.p99 is not None else None
            rate = agg.errors / agg.requests if agg.requests else None
            self.series["p99"].setdefault(v, []).append((now, p99))
            self.series["error_rate"].setdefault(v, []).append((now, rate))

    def _print_events(self, hub: LocalHub, rid: str) -> None:
        last = self._seen_events.get(rid, 0)
        for e in hub.rollouts.events(rid):
            if e["id"] <= last or e["kind"] in ("assigned",):
                continue
            style = {"rollback": "bold red", "completed": "bold green", "advanced": "green",
                     "rolled_back": "red", "paused": "yellow"}.get(e["kind"], "dim")
            self.say(f"  [{style}]{e['kind']:>11}[/] {e['message']}")
            self._seen_events[rid] = e["id"]
        for e in hub.rollouts.events(rid):
            self._seen_events[rid] = max(self._seen_events.get(rid, 0), e["id"])

    def _table(self, st: dict[str, Any]):
        from rich.table import Table

        t = Table(title=f"rollout {st['id']} — {st['model']}:{st['candidate']['version']} "
                        f"[{st['status']}] stage {st['stage']['index'] + 1}/{len(st['stages'])} "
                        f"{st['stage']['name']}", expand=False)
        t.add_column("gate")
        t.add_column("status")
        t.add_column("value / detail")
        for g in st.get("gates") or []:
            color = {"pass": "green", "fail": "red", "wait": "yellow", "pause": "magenta"}[g["status"]]
            t.add_row(g["name"], f"[{color}]{g['status']}[/]", g["message"][:90])
        d = st.get("devices") or {}
        t.caption = ("devices: " + ", ".join(f"{k} {d[k]}" for k in ("cohort", "stage", "verified", "installing",
                                                                     "unknown", "failed", "reverting") if k in d))
        return t

    def _follow(self, hub: LocalHub, rid: str, versions: list[str], deadline: float) -> dict[str, Any]:
        from rich.live import Live

        final = ("completed", "rolled_back", "aborted", "paused")
        with Live(self._table(hub.rollouts.status(rid)), console=self.console, refresh_per_second=4,
                  transient=True) as live:
            while True:
                st = hub.rollouts.status(rid)
                live.update(self._table(st))
                self._sample(hub, versions)
                self._print_events(hub, rid)
                if st["status"] in final:
                    return st
                if time.monotonic() > deadline:
                    raise TimeoutError(f"rollout {rid} did not finish in time (status {st['status']})")
                time.sleep(0.4)

    # ---- the run -------------------------------------------------------------------------
    def run(self) -> DemoResult:
        from cloud_hub.demo.models import build_bundle
        from devices.simulator import Fleet
        from edge_runtime.signing import generate_keypair

        cfg = self.cfg
        t_start = time.time()
        deadline = time.monotonic() + cfg.timeout_s
        out = Path(cfg.out) if cfg.out else Path(tempfile.mkdtemp(prefix="edgefleet-demo-"))
        out.mkdir(parents=True, exist_ok=True)
        for sub in ("hub", "bundles", "fleet"):
            shutil.rmtree(out / sub, ignore_errors=True)
        self.say(f"[bold]edgefleet demo[/] — {cfg.devices} simulated devices, output in {out}")

        key, pub = generate_keypair(out / "keys" / "fleet.key", out / "keys" / "fleet.pub") \
            if not (out / "keys" / "fleet.key").exists() else (out / "keys" / "fleet.key", out / "keys" / "fleet.pub")
        self.say("1/5 training champion, challenger and a bad model on load_breast_cancer; "
                 "converting + signing with export_model")
        bundles = {kind: build_bundle(kind, ver, out / "bundles" / kind, key, name=MODEL)
                   for kind, ver in (("champion", "1.0.0"), ("challenger", "2.0.0"), ("bad", "3.0.0"))}

        hub = LocalHub(out / "hub", mqtt_url=cfg.mqtt_url, trusted_keys=[pub], tick_s=0.5,
                       silent_after_s=max(15.0, 20 * cfg.interval_s))
        fleet = None
        rollouts: list[dict[str, Any]] = []
        promoted = rolled_back = False
        try:
            hub.start()
            reg = hub.hub.registry
            champ = reg.push(bundles["champion"], aliases=["champion"])
            chall = reg.push(bundles["challenger"])
            bad = reg.push(bundles["bad"])
            self.say(f"2/5 hub on {hub.url} (MQTT {hub.hub.fleet.mqtt_url}); registry: "
                     f"{MODEL}:1.0.0 (@champion), 2.0.0, 3.0.0")
            self.say(f"   dashboard: {hub.url}/ui  (live while the demo runs; --keep-serving SECONDS "
                     f"keeps it up afterwards)")
            fleet = Fleet(cfg.devices, hub_url=hub.url, mqtt_url=hub.hub.fleet.mqtt_url,
                          prefix=hub.hub.settings.mqtt_prefix, bundle=bundles["champion"],
                          public_keys=[pub, hub.hub_public_key], interval_s=cfg.interval_s,
                          request_rate=cfg.request_rate, batch=cfg.batch, profiles=cfg.profiles,
                          workdir=out / "fleet", seed=cfg.seed)
            fleet.start(timeout=60)
            wait_for(lambda: sum(d.online for d in hub.hub.fleet.devices()) >= cfg.devices, 60,
                     what="every device online at the hub")
            self.say(f"   {cfg.devices} devices online, running {MODEL}:1.0.0, "
                     f"{cfg.request_rate * cfg.batch:g} rows/s each")

            s = f"{cfg.stage_s:g}s"
            # at least 3 devices per stage: the sequential gates need ~600 calls to pass a flawless
            # candidate, and the divergence gate measures the spread between devices (needs >= 2)
            common = {"min_devices": 3,
                      "defaults": {"min_duration": s, "min_samples": cfg.min_samples, "timeout": "60s"},
                      "gates": {"silent_after_s": max(15.0, 20 * cfg.interval_s), "install_timeout_s": 45,
                                "max_failed_fraction": 0.1,
                                # compressed stages: 600 calls (a flawless candidate needs 595 to pass
                                # the sequential tests) instead of the production 1,000
                                "min_latency_samples": 600}}
            plan1 = {**common, "shadow": {"percent": 100, "min_duration": s}, "stages": [10, 50, 100]}
            self.say(f"3/5 rollout of {MODEL}:2.0.0: shadow → 10 % → 50 % → 100 % (min {s} and "
                     f"{cfg.min_samples} samples per stage; gates: error rate, p99, decision change, "
                     f"score divergence, install, unknown devices)")
            r1 = hub.rollouts.start(f"{MODEL}:2.0.0", "*", plan1)
            st1 = self._follow(hub, r1["id"], ["1.0.0", "2.0.0"], deadline)
            promoted = st1["status"] == "completed" and reg.aliases(MODEL).get("champion") == "2.0.0"
            rollouts.append({"id": r1["id"], "label": f"{MODEL}:2.0.0 (challenger)",
                             "outcome": st1["status"], "events": hub.rollouts.events(r1["id"]),
                             "end_ts": st1.get("finished_at") or time.time()})
            self.say(f"   → {st1['status']}; @champion = {reg.aliases(MODEL).get('champion')}")
            # the plan tolerates failed installs (max_failed_fraction): a device whose self-test of
            # 2.0.0 failed (e.g. over its latency budget on this loaded machine) keeps 1.0.0 and says
            # why; every other device must be on 2.0.0
            refused: dict[str, str] = {}

            def on_new_champion() -> bool:
                refused.update({ev.device_id: ev.reason or "failed" for ev in
                                hub.hub.fleet.events(rollout_id=r1["id"], limit=100_000)
                                if ev.step == "failed"
                                and (ev.bundle or {}).get("sha256") in (None, chall.digest)})
                return all((d.running('active') or {}).get('version') == '2.0.0'
                           for d in hub.hub.fleet.devices() if d.id not in refused)

            wait_for(on_new_champion, 30, what="every device on 2.0.0 (or its install refused)")
            for did, reason in sorted(refused.items()):
                self.say(f"   {did} refused 2.0.0 and keeps 1.0.0: {reason}")

            # the bad model: its fault shows only on devices running it
            if cfg.bad_fault == "slow":
                fleet.inject("slow", latency_ms=400, sha256=bad.digest)
                what = "+400 ms per call"
            else:
                fleet.inject("errors", rate=0.3, sha256=bad.digest)
                what = "30 % of calls fail"
            plan2 = {**common, "stages": [10, 50, 100]}
            self.say(f"4/5 rollout of {MODEL}:3.0.0, a bad model ({what} on devices running it): "
                     f"10 % → 50 % → 100 %")
            r2 = hub.rollouts.start(f"{MODEL}:3.0.0", "*", plan2)
            st2 = self._follow(hub, r2["id"], ["2.0.0", "3.0.0"], deadline)
            back = wait_for(lambda: all((d.running('active') or {}).get('version') == '2.0.0'
                                        or (d.id in refused and (d.running('active') or {})
                                            .get('version') == '1.0.0')
                                        for d in hub.hub.fleet.devices() if d.online), 30,
                            what="every device back on the champion")
            rolled_back = st2["status"] == "rolled_back" and bool(back) \
                and reg.aliases(MODEL).get("champion") == "2.0.0"
            rollouts.append({"id": r2["id"], "label": f"{MODEL}:3.0.0 (bad)", "outcome": st2["status"],
                             "events": hub.rollouts.events(r2["id"]),
                             "end_ts": st2.get("finished_at") or time.time()})
            self.say(f"   → {st2['status']}: {st2.get('reason')}")
            for _ in range(3):  # a few points after the rollback for the charts
                self._last_sample = 0
                self._sample(hub, ["2.0.0", "3.0.0"])
                time.sleep(1.0)

            shadow = self._shadow_data(hub, rollouts[0]["events"], "1.0.0", "2.0.0")
            t_end = time.time()
            fs = fleet.stats()
            summary = [
                ("devices", f"{cfg.devices} simulated (real daemon), profiles {', '.join(cfg.profiles)}"),
                ("requests served on devices", f"{fs['requests']} calls ({fs['errors']} failed)"),
                ("promotion", f"{MODEL}:2.0.0 {'promoted to @champion' if promoted else 'NOT promoted'} "
                              f"(rollout {r1['id']}, {st1['status']})"),
                ("rollback", f"{MODEL}:3.0.0 {'rolled back automatically' if rolled_back else 'NOT rolled back'}"
                             f": {st2.get('reason')}"),
                ("champion now", str(reg.aliases(MODEL).get("champion"))),
                ("shadow", shadow.get("text", "")),
                ("duration", f"{t_end - t_start:.1f} s"),
            ]
            ok = promoted and rolled_back
            from cloud_hub.demo.report import render_report

            report = render_report({
                "title": "edgefleet demo — canary rollouts with automatic rollback", "started": t_start,
                "finished": t_end, "ok": ok, "summary": summary, "rollouts": rollouts, "series": self.series,
                "shadow": shadow, "thresholds": {"max_p99_ms": 200, "max_error_rate": 0.01}},
                out / "report.html")
            self.say("5/5 summary")
            from rich.table import Table

            t = Table(show_header=False)
            for k, v in summary:
                t.add_row(k, v)
            self.console.print(t)
            self.say(f"report: {report}")
            self.say("[bold green]DEMO OK[/]: promotion happened and the bad model was rolled back"
                     if ok else "[bold red]DEMO FAILED[/]")
            if cfg.keep_serving > 0:
                self.say(f"hub still serving on {hub.url} (dashboard {hub.url}/ui) for "
                         f"{cfg.keep_serving:g} s (Ctrl-C to stop)")
                try:
                    time.sleep(cfg.keep_serving)
                except KeyboardInterrupt:
                    pass
            return DemoResult(ok, promoted, rolled_back, report, out, summary, rollouts)
        finally:
            if fleet is not None:
                fleet.stop()
            hub.stop()

    def _shadow_data(self, hub: LocalHub, events: list[dict[str, Any]], champ: str, chall: str) -> dict[str, Any]:
        start = next((e["ts"] for e in events if e["kind"] == "started"), None)
        end = next((e["ts"] for e in events if e["kind"] == "advanced"), None)
        if start is None or end is None:
            return {}
        f = hub.hub.fleet
        cand = f.window_stats(name=MODEL, version=chall, slot="shadow", since=start, until=end + 1)
        base = f.window_stats(name=MODEL, version=champ, slot="active", since=start, until=end + 1)
        if cand.scores is None or base.scores is None:
            return {}
        from cloud_hub.rollouts.gates import divergence

        raw, noise = divergence("psi", cand.scores.counts, base.scores.counts)
        rate = cand.decision_changed / cand.compared if cand.compared else 0.0
        return {"edges": cand.scores.edges, "champion": base.scores.counts, "challenger": cand.scores.counts,
                "divergence_edges": cand.divergence.edges if cand.divergence else None,
                "divergence": cand.divergence.counts if cand.divergence else None,
                "text": f"{cand.compared} requests compared on-device: decision changed on "
                        f"{cand.decision_changed} ({rate:.2%}); score PSI {raw:.3f} (noise {noise:.3f})"}
