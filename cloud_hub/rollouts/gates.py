"""Gate statistics and the stage verdict.

Every gate answers ``pass``, ``fail``, ``wait`` (not enough data yet) or ``pause``
(needs a human), with the numbers behind it. Rules:

* **Sample size first** (the users' guide's sketch checked the error rate before
  the sample size, so one early error rolled back): below ``min_samples`` a gate
  says ``wait``, whatever the ratio.
* **Rates use Wilson bounds**, not raw ratios. A rate gate *passes* only when its
  upper bound is under the threshold (the data show the candidate is good) and
  *fails* when the upper bound is over it **and** the lower bound exceeds
  ``fail_floor × threshold`` (the data show a real excess, not noise). In
  between, it waits for more data — and a stage that keeps waiting past its
  timeout pauses. With the defaults (1 %, 95 %), 1 error in 10 requests waits,
  10 in 1,000 rolls back, 0 in 300 passes.
* **p99 latency** comes from the merged DDSketch of the stage's devices (never an
  average of per-device p99s).
* **Divergence** compares the candidate's merged score histogram with the
  champion's (PSI, Jensen-Shannon or total variation) minus the value expected
  from sampling noise alone, so two samples of the same distribution do not fail.
* **Unknown devices** (silent past the deadline, or not converged after the
  install timeout) pause a stage when too many — they never count as success.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import Any, Sequence

from cloud_hub.rollouts.plan import Gates, Stage

PASS, FAIL, WAIT, PAUSE = "pass", "fail", "wait", "pause"
FAIL_FLOOR = 0.5
_EPS = 1e-4


def z_value(confidence: float) -> float:
    """One-sided normal quantile (0.95 → 1.645)."""
    return NormalDist().inv_cdf(confidence)


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes in ``n`` trials at one-sided ``confidence``."""
    if n <= 0:
        return 0.0, 1.0
    z = z_value(confidence)
    p = k / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = p + z2 / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, (centre - half) / denom), min(1.0, (centre + half) / denom)


def _probs(counts: Sequence[float]) -> list[float]:
    total = float(sum(counts))
    return [c / total for c in counts] if total else [0.0] * len(counts)


def psi(a: Sequence[float], b: Sequence[float]) -> float:
    """Population stability index Σ (p−q)·ln(p/q) over the bins (ε-smoothed)."""
    p, q = _probs(a), _probs(b)
    return sum((pi - qi) * math.log((pi + _EPS) / (qi + _EPS)) for pi, qi in zip(p, q))


def js_divergence(a: Sequence[float], b: Sequence[float]) -> float:
    """Jensen-Shannon divergence in bits, in [0, 1]."""
    p, q = _probs(a), _probs(b)
    out = 0.0
    for pi, qi in zip(p, q):
        m = (pi + qi) / 2
        if pi > 0:
            out += 0.5 * pi * math.log2(pi / m)
        if qi > 0:
            out += 0.5 * qi * math.log2(qi / m)
    return out


def total_variation(a: Sequence[float], b: Sequence[float]) -> float:
    """Half the L1 distance: the share of probability mass that must move, in [0, 1]."""
    p, q = _probs(a), _probs(b)
    return 0.5 * sum(abs(pi - qi) for pi, qi in zip(p, q))


DESIGN_EFFECT = 2.0
DIV_MIN_PER_BIN = 100
MAX_BINS = 10


def coarsen(a: Sequence[float], b: Sequence[float], max_bins: int = MAX_BINS) -> tuple[list[float], list[float]]:
    """Merge adjacent bins pairwise until at most ``max_bins`` (PSI's usual 10 buckets): fewer,
    fuller bins make the statistic far less noisy on the sample sizes a canary stage gets."""
    a, b = list(a), list(b)
    while len(a) > max_bins:
        a = [sum(a[i:i + 2]) for i in range(0, len(a), 2)]
        b = [sum(b[i:i + 2]) for i in range(0, len(b), 2)]
    return a, b


def divergence(metric: str, a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """(raw divergence, expected value under "same distribution" from sampling noise alone).

    With k non-empty bins and samples of n₁ and n₂, PSI ≈ χ²(k−1)·(1/n₁+1/n₂) under the
    null; JS ≈ PSI/(8 ln 2); total variation ≈ √(PSI-noise)/2 (conservative). Requests
    arrive in batches and devices see different traffic, so samples are clustered: the
    noise is scaled by a design effect of 2.
    """
    a, b = coarsen(a, b)
    n1, n2 = float(sum(a)), float(sum(b))
    k = sum(1 for x, y in zip(a, b) if x or y)
    noise_psi = DESIGN_EFFECT * (max(k, 1) - 1) * (1 / n1 + 1 / n2) if n1 and n2 else math.inf
    if metric == "psi":
        return psi(a, b), noise_psi
    if metric == "js":
        return js_divergence(a, b), noise_psi / (8 * math.log(2))
    return total_variation(a, b), math.sqrt(noise_psi) / 2


@dataclass
class GateResult:
    name: str
    status: str
    value: float | None = None
    threshold: float | None = None
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Aggregate:
    """The numbers a gate needs (built from the fleet's ``SlotAggregate``)."""

    requests: int = 0
    errors: int = 0
    p99_ms: float | None = None
    p50_ms: float | None = None
    scores: list[float] | None = None  # histogram counts
    score_edges: list[float] | None = None
    compared: int = 0
    decision_changed: int = 0
    devices_reporting: int = 0

    @classmethod
    def from_fleet(cls, agg: Any) -> "Aggregate":
        """Adapt ``FleetService.window_stats`` output (latency in seconds → ms)."""
        if agg is None:
            return cls()

        def ms(v: Any) -> float | None:
            return None if v is None else float(v) * 1000.0

        hist = getattr(agg, "scores", None)
        counts = list(getattr(hist, "counts", []) or []) if hist is not None else None
        edges = list(getattr(hist, "edges", []) or []) if hist is not None else None
        return cls(requests=int(getattr(agg, "requests", 0) or 0), errors=int(getattr(agg, "errors", 0) or 0),
                   p99_ms=ms(getattr(agg, "p99", None)), p50_ms=ms(getattr(agg, "p50", None)),
                   scores=counts, score_edges=edges,
                   compared=int(getattr(agg, "compared", 0) or 0),
                   decision_changed=int(getattr(agg, "decision_changed", 0) or 0),
                   devices_reporting=int(getattr(agg, "devices_reporting", 0) or 0))

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    def summary(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors, "error_rate": self.error_rate,
                "p50_ms": self.p50_ms, "p99_ms": self.p99_ms, "compared": self.compared,
                "decision_changed": self.decision_changed, "devices_reporting": self.devices_reporting}


def rate_gate(name: str, k: int, n: int, threshold: float, min_n: int, confidence: float,
              what: str) -> GateResult:
    # Judging before a flawless candidate *could* pass (0 errors: upper bound = z²/(n+z²)) would be
    # judging on noise, so the sample floor is at least that size (268 requests for 1 % at 95 %).
    z = z_value(confidence)
    min_n = max(min_n, math.ceil(z * z * (1 - threshold) / threshold))
    data = {"count": k, "total": n, "min_samples": min_n}
    if n < min_n:
        return GateResult(name, WAIT, k / n if n else None, threshold,
                          f"{what}: {n} of {min_n} samples needed", data)
    lo, hi = wilson_interval(k, n, confidence)
    data.update(lower=lo, upper=hi, confidence=confidence)
    if hi <= threshold:
        return GateResult(name, PASS, hi, threshold,
                          f"{what} upper bound {hi:.2%} <= {threshold:.2%} ({k}/{n})", data)
    if lo > threshold * FAIL_FLOOR:
        return GateResult(name, FAIL, hi, threshold,
                          f"{what} {k}/{n} = {k / n:.2%}, upper bound {hi:.2%} > {threshold:.2%}", data)
    return GateResult(name, WAIT, hi, threshold,
                      f"{what} {k}/{n}: upper bound {hi:.2%} > {threshold:.2%} but not conclusive; "
                      f"collecting more", data)


def latency_gate(cand: Aggregate, gates: Gates, min_n: int, champion: Aggregate | None) -> GateResult:
    data = {"requests": cand.requests, "min_samples": min_n,
            "champion_p99_ms": champion.p99_ms if champion else None}
    if cand.requests < min_n or cand.p99_ms is None:
        return GateResult("p99_latency", WAIT, cand.p99_ms, gates.max_p99_ms,
                          f"p99: {cand.requests} of {min_n} samples needed", data)
    ok = cand.p99_ms <= gates.max_p99_ms
    return GateResult("p99_latency", PASS if ok else FAIL, cand.p99_ms, gates.max_p99_ms,
                      f"p99 {cand.p99_ms:.1f} ms {'<=' if ok else '>'} SLA {gates.max_p99_ms:g} ms", data)


def divergence_gate(cand: Aggregate, base: Aggregate | None, gates: Gates, min_n: int,
                    against: str) -> GateResult:
    name = "score_divergence"
    if base is None or not base.scores or not cand.scores:
        return GateResult(name, WAIT, None, gates.max_divergence,
                          f"divergence: no {against} score histogram yet", {"against": against})
    n1, n2 = sum(cand.scores), sum(base.scores)
    # PSI on a few hundred scores swings by ±0.1 from noise alone (measured: 95th percentile 0.12
    # at 300 per side, 0.03 at 1,000), and the gate is re-evaluated every tick: judge only on
    # at least 100 scores per bucket.
    min_n = max(min_n, DIV_MIN_PER_BIN * MAX_BINS)
    data = {"metric": gates.divergence_metric, "against": against, "candidate_n": n1, "champion_n": n2,
            "candidate_hist": cand.scores, "champion_hist": base.scores, "edges": cand.score_edges}
    if n1 < min_n or n2 < min_n or len(cand.scores) != len(base.scores):
        return GateResult(name, WAIT, None, gates.max_divergence,
                          f"divergence: {int(n1)} candidate / {int(n2)} {against} scores, "
                          f"{min_n} each needed", data)
    raw, noise = divergence(gates.divergence_metric, cand.scores, base.scores)
    value = max(0.0, raw - noise)
    data.update(raw=raw, noise=noise)
    ok = value <= gates.max_divergence
    return GateResult(name, PASS if ok else FAIL, value, gates.max_divergence,
                      f"{gates.divergence_metric.upper()} vs {against} {value:.3f} (raw {raw:.3f}, noise "
                      f"{noise:.3f}) {'<=' if ok else '>'} {gates.max_divergence:g}", data)


@dataclass
class StageView:
    """Everything the verdict needs for one stage at one tick."""

    stage: Stage
    elapsed_s: float
    stage_devices: int
    verified: int
    pending: int
    failed: int
    unknown: int
    candidate: Aggregate
    champion: Aggregate | None  # same devices' active slot (shadow) or the champion's devices
    champion_label: str = "champion"


@dataclass
class Verdict:
    decision: str  # advance | rollback | pause | wait
    reason: str
    gates: list[GateResult]

    def to_dict(self) -> dict[str, Any]:
        return {"decision": self.decision, "reason": self.reason, "gates": [g.to_dict() for g in self.gates]}


def evaluate(view: StageView, gates: Gates) -> Verdict:
    """The stage verdict: any fail → rollback; a pause → pause; all pass + duration → advance."""
    st = view.stage
    n = max(view.stage_devices, 1)
    results: list[GateResult] = []
    failed_frac = view.failed / n
    results.append(GateResult(
        "install", FAIL if view.failed and failed_frac > gates.max_failed_fraction else PASS,
        failed_frac, gates.max_failed_fraction,
        f"{view.failed} of {view.stage_devices} devices failed to install/self-test the candidate",
        {"failed": view.failed, "devices": view.stage_devices}))
    unknown_frac = view.unknown / n
    results.append(GateResult(
        "unknown_devices", PAUSE if view.unknown and unknown_frac > gates.max_unknown_fraction else PASS,
        unknown_frac, gates.max_unknown_fraction,
        f"{view.unknown} of {view.stage_devices} devices silent or not converged (unknown)",
        {"unknown": view.unknown, "devices": view.stage_devices}))
    results.append(GateResult(
        "converged", WAIT if view.pending else PASS, float(view.verified), float(view.stage_devices),
        f"{view.verified} of {view.stage_devices} devices verified running the candidate"
        + (f", {view.pending} installing" if view.pending else ""),
        {"verified": view.verified, "pending": view.pending}))
    c = view.candidate
    results.append(rate_gate("error_rate", c.errors, c.requests, gates.max_error_rate, st.min_samples,
                             gates.confidence, "error rate"))
    results.append(latency_gate(c, gates, st.min_samples, view.champion))
    if st.kind == "shadow":
        results.append(rate_gate("decision_change", c.decision_changed, c.compared, gates.max_decision_change,
                                 max(gates.min_compared, 1), gates.confidence, "decision change"))
    results.append(divergence_gate(c, view.champion, gates, st.min_samples, view.champion_label))
    results.append(GateResult(
        "min_duration", PASS if view.elapsed_s >= st.min_duration_s else WAIT, view.elapsed_s,
        st.min_duration_s, f"{view.elapsed_s:.0f}s of {st.min_duration_s:.0f}s minimum"))

    fails = [g for g in results if g.status == FAIL]
    if fails:
        return Verdict("rollback", "; ".join(f"{g.name}: {g.message}" for g in fails), results)
    pauses = [g for g in results if g.status == PAUSE]
    if pauses:
        return Verdict("pause", "; ".join(f"{g.name}: {g.message}" for g in pauses), results)
    waits = [g for g in results if g.status == WAIT]
    if not waits:
        return Verdict("advance", "all gates passed", results)
    if view.elapsed_s >= st.timeout_s:
        return Verdict("pause", f"not enough data after {st.timeout_s:.0f}s (stage timeout): "
                       + "; ".join(f"{g.name}: {g.message}" for g in waits), results)
    return Verdict("wait", "; ".join(f"{g.name}: {g.message}" for g in waits), results)
