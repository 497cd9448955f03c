"""Gate statistics and the stage verdict.

Every gate answers ``pass``, ``fail``, ``wait`` (not enough data yet) or ``pause``
(needs a human), with the numbers behind it. The controller looks at the gates every
tick, so a gate must keep its error rates however often it is looked at. Each gate is
therefore a *sequential test* between a good and a bad candidate, with ``α = β = 1 −
confidence`` (plan ``confidence``, default 0.95):

* **P(roll back | the candidate is good) ≤ α** — good = at or below *half* the
  threshold (error rate ≤ ``max_error_rate``/2, decision change ≤ ``max_decision_change``/2,
  ≤ 0.5 % of calls slower than the SLA, divergence ≤ ``max_<metric>``/2);
* **P(advance | the candidate is bad) ≤ β** — bad = at or above the threshold (≥ 1 % of
  calls slower than the SLA: the p99 is over it);
* in between either decision is acceptable; a stage that stays undecided until its
  timeout pauses.

Rates (error rate, decision change, share of calls over the latency SLA) use Wald's
sequential probability ratio test between ``p0 = threshold/2`` and ``p1 = threshold``: the
log-likelihood ratio ``LLR = k·ln(p1/p0) + (n−k)·ln((1−p1)/(1−p0))`` rolls back at
``ln(1/α)`` and advances at ``ln β``. The likelihood ratio is a nonnegative supermartingale
for any true rate ≤ p0 (and its inverse for any rate ≥ p1), so by Ville's inequality the two
error bounds hold for *every* look schedule, with no overshoot approximation.

The unit is the **call**, not the row: the rows of one call fail together and share their
inputs. Errors are failed calls / calls; decision change is the mean over compared calls of
each call's share of changed decisions — the LLR above is linear in ``k``, and for outcomes in
[0, 1] ``a^x·b^(1−x) ≤ x·a + (1−x)·b``, so the same test stays valid on these shares whatever
the dependence between the rows of a call. Windows from runtimes that report no call counts
are left out (and named); they never count as independent rows.

**p99 latency**: from the merged DDSketch of the stage's devices (never an average of per-device
p99s). "p99 > SLA" is "more than 1 % of calls slower than the SLA", tested sequentially on the
sketch's exceedance count (the sketch bucket straddling the SLA counts against the candidate
when passing and for it when rolling back). Passing also needs ``min_latency_samples`` (default
1,000) calls in the sketch, so the p99 is not its maximum; rolling back needs only the evidence.
The data carry the distribution-free order-statistic bounds of the p99.

**Divergence**: one threshold per metric (``max_psi``, ``max_js``, ``max_tv``). The estimate is
the divergence of the candidate's merged score histogram from the champion's minus the value
expected from noise alone, where the noise is the larger of multinomial sampling and the
spread *between devices* (cluster-robust, from each device's histogram: a canary compares
devices, and devices see different traffic). Its uncertainty comes from a seeded parametric
bootstrap; the gate rolls back when the lower confidence bound exceeds half the threshold and
passes when the upper bound is under it. Looks are grouped in doublings of the sample size
and each doubling spends ``α/((j+1)(j+2))`` (Bonferroni over an unbounded number of doublings).

**Unknown devices** (silent past the deadline, or not converged after the install timeout)
pause a stage when too many — they never count as success.

The measured error rates of all four gates (seeded simulations with clustered calls and
heterogeneous devices) are pinned by ``tests/rollouts/test_gate_error_rates.py`` and listed in
the README.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np

from cloud_hub.rollouts.plan import Gates, Stage
from edge_runtime.sketch import Sketch

PASS, FAIL, WAIT, PAUSE = "pass", "fail", "wait", "pause"
GOOD_FRACTION = 0.5  # "good" is at most this share of a threshold
P99 = 0.99
_EPS = 1e-4


def z_value(confidence: float) -> float:
    """One-sided normal quantile (0.95 → 1.645)."""
    return NormalDist().inv_cdf(confidence)


def wilson_interval(k: float, n: float, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes in ``n`` trials at one-sided ``confidence``
    (shown next to the sequential test; a single-look interval, not a decision rule)."""
    if n <= 0:
        return 0.0, 1.0
    z = z_value(confidence)
    p = min(max(k / n, 0.0), 1.0)
    z2 = z * z
    denom = 1 + z2 / n
    centre = p + z2 / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, (centre - half) / denom), min(1.0, (centre + half) / denom)


@dataclass(frozen=True)
class Sprt:
    """Wald's sequential probability ratio test of a rate: ``p0`` (good) against ``p1`` (bad)."""

    p0: float
    p1: float
    alpha: float  # P(decide bad | rate <= p0)
    beta: float  # P(decide good | rate >= p1)

    @classmethod
    def for_threshold(cls, threshold: float, confidence: float) -> Sprt:
        return cls(threshold * GOOD_FRACTION, threshold, 1 - confidence, 1 - confidence)

    @property
    def upper(self) -> float:
        """Roll back at or above this log-likelihood ratio."""
        return math.log(1 / self.alpha)

    @property
    def lower(self) -> float:
        """Advance at or below this log-likelihood ratio."""
        return math.log(self.beta)

    def llr(self, events: float, trials: float) -> float:
        """Log-likelihood ratio of bad vs good after ``events`` in ``trials`` (events may be a sum of
        shares in [0, 1], one per trial)."""
        return events * math.log(self.p1 / self.p0) + (trials - events) * math.log(
            (1 - self.p1) / (1 - self.p0)
        )

    def decide(self, llr: float) -> str:
        return FAIL if llr >= self.upper else PASS if llr <= self.lower else WAIT

    @property
    def trials_to_pass(self) -> int:
        """Trials with no event before the test can pass (595 calls for 1 % at 95 %)."""
        return math.ceil(self.lower / math.log((1 - self.p1) / (1 - self.p0)))


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


def _metric_rows(metric: str, p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """The metric for each row of two (draws × bins) probability arrays (vectorised)."""
    if metric == "psi":
        return ((p - q) * np.log((p + _EPS) / (q + _EPS))).sum(axis=-1)
    if metric == "js":
        m = (p + q) / 2
        with np.errstate(divide="ignore", invalid="ignore"):
            a = np.where(p > 0, p * np.log2(np.where(p > 0, p, 1) / np.where(m > 0, m, 1)), 0.0)
            b = np.where(q > 0, q * np.log2(np.where(q > 0, q, 1) / np.where(m > 0, m, 1)), 0.0)
        return 0.5 * (a + b).sum(axis=-1)
    return 0.5 * np.abs(p - q).sum(axis=-1)


DESIGN_EFFECT = 2.0  # noise inflation when the spread between devices cannot be measured
DIV_MIN_PER_BIN = 100
MAX_BINS = 10
BOOTSTRAP_DRAWS = 400
_SEED = 20260418


def coarsen(
    a: Sequence[float], b: Sequence[float], max_bins: int = MAX_BINS
) -> tuple[list[float], list[float]]:
    """Merge adjacent bins pairwise until at most ``max_bins`` (PSI's usual 10 buckets): fewer,
    fuller bins make the statistic far less noisy on the sample sizes a canary stage gets."""
    a, b = list(a), list(b)
    while len(a) > max_bins:
        a = [sum(a[i : i + 2]) for i in range(0, len(a), 2)]
        b = [sum(b[i : i + 2]) for i in range(0, len(b), 2)]
    return a, b


def _coarse(counts: Sequence[float]) -> np.ndarray:
    return np.asarray(coarsen(counts, counts)[0], dtype=np.float64)


def _coarse_rows(m: np.ndarray) -> np.ndarray:
    """:func:`coarsen` on every row of a (devices × bins) matrix at once."""
    while m.shape[1] > MAX_BINS:
        if m.shape[1] % 2:
            m = np.pad(m, ((0, 0), (0, 1)))
        m = m[:, 0::2] + m[:, 1::2]
    return m


def _device_rows(
    devices: dict[str, Sequence[float]] | None, width: int
) -> tuple[list[str], np.ndarray]:
    """(device ids, their coarsened histograms) for the devices with scores in this binning."""
    ids = [d for d, v in (devices or {}).items() if len(v) == width and sum(v)]
    if not ids:
        return [], np.zeros((0, 0))
    return ids, _coarse_rows(np.asarray([devices[d] for d in ids], dtype=np.float64))  # type: ignore[index]


def _spread(
    counts: Sequence[float], ids: list[str], rows: np.ndarray, paired: bool
) -> tuple[np.ndarray | None, np.ndarray | None, int, str]:
    """How one side's bin shares vary: (per-device residual rows, or None; else a covariance
    matrix; the number of devices; how).

    With two or more devices: the cluster-robust (between-device) residuals
    ``(c_d − p̂·n_d)/n·√(k/(k−1))`` — their cross-products are the covariance *across* bins, so a
    device whose traffic shifts every score moves all bins together, as it does in the data.
    With fewer devices the spread between devices cannot be measured: the multinomial
    covariance, inflated by ``DESIGN_EFFECT`` unless paired."""
    c = _coarse(counts)
    n = c.sum()
    p = c / n
    k = len(ids)
    if k >= 2 and rows.shape[1] == len(c):
        resid = (rows - p * rows.sum(axis=1, keepdims=True)) / n * math.sqrt(k / (k - 1))
        return resid, None, k, f"cluster bootstrap over {k} devices"
    effect = 1.0 if paired else DESIGN_EFFECT
    cov = (np.diag(p) - np.outer(p, p)) * effect / n
    how = (
        "multinomial (paired)"
        if paired
        else f"multinomial × {DESIGN_EFFECT:g} (fewer than 2 devices)"
    )
    return None, cov, 0, how


def _joint_draws(
    sides: list[tuple[list[str], np.ndarray | None, np.ndarray | None]],
    width: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Gaussian draws (draws × sides·bins) with the joint covariance of the sides' shares.

    Device residuals enter through ``Rᵀ·R`` with one row per device id across both sides — a
    multiplier bootstrap ``Σ_d g_d·r_d`` with ``g_d ~ N(0, 1)`` has exactly this covariance — so a
    device seen on both sides (shadow: the same devices, the same requests) is one row, and what
    its two histograms share cancels in their difference."""
    union = {
        d: i for i, d in enumerate(sorted({d for ids, r, _ in sides if r is not None for d in ids}))
    }
    cov = np.zeros((width * len(sides), width * len(sides)))
    if union:
        big = np.zeros((len(union), width * len(sides)))
        for j, (ids, resid, _) in enumerate(sides):
            if resid is not None:
                big[[union[d] for d in ids], j * width : (j + 1) * width] = resid
        cov += big.T @ big
    for j, (_, _, block) in enumerate(sides):
        if block is not None:
            cov[j * width : (j + 1) * width, j * width : (j + 1) * width] += block
    vals, vecs = np.linalg.eigh(cov)
    root = vecs * np.sqrt(np.clip(vals, 0.0, None))
    return rng.standard_normal((BOOTSTRAP_DRAWS, cov.shape[0])) @ root.T


def _shares(base: np.ndarray, pert: np.ndarray) -> np.ndarray:
    x = np.clip(base[None, :] + pert, 0.0, None)
    return x / np.maximum(x.sum(axis=1, keepdims=True), 1e-12)


@dataclass
class DivergenceEstimate:
    metric: str
    raw: float  # divergence of the two histograms
    noise: float  # its expected value when both come from one distribution
    scale: float  # sd of the whitened difference along its worst direction (√λmax, bootstrap)
    df: int | None = None  # degrees of freedom of the device-level spread (None: multinomial)

    @property
    def value(self) -> float:
        """Noise-corrected divergence (never negative)."""
        return max(0.0, self.raw - self.noise)

    def bounds(self, z: float) -> tuple[float, float]:
        """(lower, upper) confidence bounds of the true divergence at ``z`` standard deviations.

        PSI and JS are, for small differences, squared norms of the whitened difference
        ``w = (p − q)/√π`` (PSI ≈ Σ (p−q)²/π, JS ≈ PSI/(8 ln 2)), and TV is at most a ½-Lipschitz
        norm of it. A norm of a Gaussian vector is 1-Lipschitz, so it concentrates within
        ``z·√λmax`` of its mean whatever the true difference — unlike the divergence itself,
        whose spread grows with the (unknown) true value. Bounds are made on the norm and
        squared back; ``noise`` is the expected squared norm of the noise alone."""
        if self.metric == "tv":
            s = 0.5 * self.scale
            return max(0.0, self.raw - z * s - self.noise), self.raw + z * s
        unit = 8 * math.log(2) if self.metric == "js" else 1.0
        g, noise, s2 = math.sqrt(max(self.raw, 0.0) * unit), self.noise * unit, self.scale**2
        lower = max(0.0, g - z * self.scale) ** 2 - noise
        upper = (g + z * self.scale) ** 2 - noise + s2
        return max(0.0, lower) / unit, max(0.0, upper) / unit


def divergence_estimates(
    a: Sequence[float],
    b: Sequence[float],
    metrics: Sequence[str],
    devices_a: dict[str, Sequence[float]] | None = None,
    devices_b: dict[str, Sequence[float]] | None = None,
    paired: bool = False,
) -> tuple[list[DivergenceEstimate], dict[str, Any]]:
    """Raw divergence, expected null value and bootstrap scale for each metric (seeded: the same
    histograms always give the same numbers)."""
    ca, cb = _coarse(a), _coarse(b)
    p, q = ca / ca.sum(), cb / cb.sum()
    pooled = (ca + cb) / (ca.sum() + cb.sum())
    rng = np.random.default_rng(_SEED)
    ids_a, rows_a = _device_rows(devices_a, len(a))
    ids_b, rows_b = _device_rows(devices_b, len(b))
    ra, ca_cov, ka, how_a = _spread(a, ids_a, rows_a, paired)
    rb, cb_cov, kb, how_b = _spread(b, ids_b, rows_b, paired)
    width = len(ca)
    draws = _joint_draws([(ids_a, ra, ca_cov), (ids_b, rb, cb_cov)], width, rng)
    pa, pb = draws[:, :width], draws[:, width:]
    null_a, null_b = _shares(pooled, pa), _shares(pooled, pb)
    live = pooled > 0
    w = (pa - pb)[:, live] / np.sqrt(pooled[live])
    scale = (
        math.sqrt(max(float(np.linalg.eigvalsh(np.atleast_2d(np.cov(w, rowvar=False)))[-1]), 0.0))
        if w.shape[1] > 1
        else float(w.std(ddof=1))
        if w.size
        else 0.0
    )
    ks = [k for k in (ka, kb) if k]
    df = min(ks) - 1 if ks else None
    out = []
    for m in metrics:
        raw = float(_metric_rows(m, p[None, :], q[None, :])[0])
        noise = float(_metric_rows(m, null_a, null_b).mean())
        out.append(DivergenceEstimate(m, raw, noise, scale, df))
    return out, {"candidate_noise": how_a, "baseline_noise": how_b}


def divergence(metric: str, a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """(raw divergence, expected value under "same distribution") of two histograms whose
    per-device split is unknown (multinomial noise × ``DESIGN_EFFECT``)."""
    est, _ = divergence_estimates(a, b, [metric])
    return est[0].raw, est[0].noise


def look_level(alpha: float, n: float, min_n: float) -> tuple[int, float]:
    """(doubling index j, the share of α it may spend): α/((j+1)(j+2)), Σ over j = α."""
    j = max(0, math.floor(math.log2(max(n, min_n) / min_n)))
    return j, alpha / ((j + 1) * (j + 2))


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

    requests: int = 0  # rows
    errors: int = 0  # rows of failed calls
    p99_ms: float | None = None
    p50_ms: float | None = None
    scores: list[float] | None = None  # histogram counts
    score_edges: list[float] | None = None
    compared: int = 0
    decision_changed: int = 0
    devices_reporting: int = 0
    calls: int = 0
    errored_calls: int = 0
    uncounted_windows: int = 0
    compared_calls: int = 0
    changed_share: float = 0.0
    latency: dict[str, Any] | None = None  # Sketch.to_dict(), seconds
    device_scores: dict[str, list[int]] | None = None
    rejected: int = 0
    rejected_reason: str | None = None

    @classmethod
    def from_fleet(cls, agg: Any) -> Aggregate:
        """Adapt ``FleetService.window_stats`` output (latency in seconds → ms)."""
        if agg is None:
            return cls()

        def ms(v: Any) -> float | None:
            return None if v is None else float(v) * 1000.0

        def num(name: str) -> int:
            return int(getattr(agg, name, 0) or 0)

        hist = getattr(agg, "scores", None)
        counts = list(getattr(hist, "counts", []) or []) if hist is not None else None
        edges = list(getattr(hist, "edges", []) or []) if hist is not None else None
        lat = getattr(agg, "latency", None)
        return cls(
            requests=num("requests"),
            errors=num("errors"),
            p99_ms=ms(getattr(agg, "p99", None)),
            p50_ms=ms(getattr(agg, "p50", None)),
            scores=counts,
            score_edges=edges,
            compared=num("compared"),
            decision_changed=num("decision_changed"),
            devices_reporting=num("devices_reporting"),
            calls=num("calls"),
            errored_calls=num("errored_calls"),
            uncounted_windows=num("uncounted_windows"),
            compared_calls=num("compared_calls"),
            changed_share=float(getattr(agg, "changed_share", 0.0) or 0.0),
            latency=lat.to_dict() if isinstance(lat, Sketch) else lat,
            device_scores=dict(getattr(agg, "device_scores", None) or {}) or None,
            rejected=num("rejected"),
            rejected_reason=getattr(agg, "rejected_reason", None),
        )

    @property
    def error_rate(self) -> float | None:
        """Share of failed calls (the gate's unit)."""
        return self.errored_calls / self.calls if self.calls else None

    @property
    def sketch(self) -> Sketch | None:
        return Sketch.from_dict(self.latency) if self.latency else None

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "calls": self.calls,
            "errored_calls": self.errored_calls,
            "error_rate": self.error_rate,
            "uncounted_windows": self.uncounted_windows,
            "latency_samples": int((self.latency or {}).get("count") or 0),
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "compared": self.compared,
            "decision_changed": self.decision_changed,
            "compared_calls": self.compared_calls,
            "changed_share": self.changed_share,
            "devices_reporting": self.devices_reporting,
            "rejected_rows": self.rejected,
        }


def rate_gate(
    name: str,
    k: float,
    n: int,
    threshold: float,
    min_n: int,
    confidence: float,
    what: str,
    unit: str = "calls",
) -> GateResult:
    """Sequential test of a rate: roll back when the data favour ``threshold`` over
    ``threshold/2`` by a likelihood ratio of 1/α, pass at β, otherwise wait."""
    test = Sprt.for_threshold(threshold, confidence)
    data: dict[str, Any] = {
        "count": k,
        "total": n,
        "unit": unit,
        "min_samples": min_n,
        "good": test.p0,
        "bad": test.p1,
        "alpha": test.alpha,
        "beta": test.beta,
        "roll_back_at_llr": test.upper,
        "advance_at_llr": test.lower,
    }
    if n < min_n or n <= 0:
        return GateResult(
            name,
            WAIT,
            k / n if n else None,
            threshold,
            f"{what}: {n} of {min_n} {unit} needed",
            data,
        )
    llr = test.llr(k, n)
    lo, hi = wilson_interval(k, n, confidence)
    rate = k / n
    data.update(llr=llr, rate=rate, lower=lo, upper=hi, confidence=confidence)
    status = test.decide(llr)
    shown = f"{k:g}/{n} {unit} = {rate:.2%}"
    if status == FAIL:
        msg = (
            f"{what} {shown}: the data favour {threshold:.2%} over {test.p0:.2%} by a likelihood "
            f"ratio of {math.exp(min(llr, 700)):.3g} >= {1 / test.alpha:g} (sequential test, α = {test.alpha:g})"
        )
    elif status == PASS:
        msg = (
            f"{what} {shown}: the data favour {test.p0:.2%} over {threshold:.2%} by a likelihood "
            f"ratio of {math.exp(min(-llr, 700)):.3g} >= {1 / test.beta:g} (sequential test, β = {test.beta:g})"
        )
    else:
        msg = (
            f"{what} {shown}: not conclusive between {test.p0:.2%} (good) and {threshold:.2%} (bad) "
            f"(log-likelihood ratio {llr:.2f}; rolls back at {test.upper:.2f}, advances at "
            f"{test.lower:.2f}); collecting more"
        )
    return GateResult(name, status, rate, threshold, msg, data)


def error_rate_gate(c: Aggregate, gates: Gates, min_n: int) -> GateResult:
    """Failed calls / calls; windows without call counts are left out and named."""
    g = rate_gate(
        "error_rate",
        c.errored_calls,
        c.calls,
        gates.max_error_rate,
        min_n,
        gates.confidence,
        "error rate",
    )
    g.data.update(rows=c.requests, failed_rows=c.errors, uncounted_windows=c.uncounted_windows)
    if c.uncounted_windows:
        g.message += (
            f" ({c.uncounted_windows} windows from devices that report no call counts left out: "
            f"their rows fail together and cannot be counted as independent)"
        )
    return g


def decision_change_gate(c: Aggregate, gates: Gates) -> GateResult:
    """Mean over compared calls of each call's share of changed decisions."""
    g = rate_gate(
        "decision_change",
        c.changed_share,
        c.compared_calls,
        gates.max_decision_change,
        max(gates.min_compared, 1),
        gates.confidence,
        "decision change",
        unit="compared calls",
    )
    g.data.update(compared_rows=c.compared, changed_rows=c.decision_changed)
    if c.compared and not c.compared_calls:
        g.message += (
            " (the devices report no compared-call counts: runtime older than the call counts)"
        )
    return g


def p99_bounds(sk: Sketch, confidence: float) -> tuple[float | None, float | None]:
    """Distribution-free one-sided bounds of the p99 from the sketch's order statistics (ms):
    ``X(l) <= p99`` and ``X(u) >= p99`` each with probability >= ``confidence`` (binomial ranks;
    within the sketch's relative error). None where ``n`` is too small for a bound."""
    from scipy.stats import binom

    n = sk.count
    if n == 0:
        return None, None
    u = int(binom.ppf(confidence, n, P99)) + 1
    lo_rank = int(binom.ppf(1 - confidence, n, P99))
    hi = sk.value_at_rank(u) if u <= n else None
    lo = sk.value_at_rank(lo_rank) if lo_rank >= 1 else None
    return (None if lo is None else lo * 1000.0), (None if hi is None else hi * 1000.0)


def latency_gate(cand: Aggregate, gates: Gates, champion: Aggregate | None = None) -> GateResult:
    """p99 vs the SLA as a sequential test on the share of calls slower than the SLA."""
    sk = cand.sketch
    n = sk.count if sk is not None else 0
    sla = gates.max_p99_ms
    min_n = gates.min_latency_samples
    data: dict[str, Any] = {
        "samples": n,
        "min_samples": min_n,
        "champion_p99_ms": champion.p99_ms if champion else None,
    }
    if sk is None or n == 0:
        return GateResult(
            "p99_latency",
            WAIT,
            cand.p99_ms,
            sla,
            f"p99: 0 of {min_n} latency samples (calls)",
            data,
        )
    test = Sprt((1 - P99) * GOOD_FRACTION, 1 - P99, 1 - gates.confidence, 1 - gates.confidence)
    over_lo, over_hi = sk.count_above(sla / 1000.0)
    llr_fail, llr_pass = test.llr(over_lo, n), test.llr(over_hi, n)
    if n < min_n and test.decide(llr_fail) != FAIL:
        # passing needs the guard (below it the p99 is about the maximum); rolling back only
        # needs the evidence, which the sequential test measures at any n (5 calls over the SLA
        # in 5 are a likelihood ratio of 32; one slow call in 300 is evidence *for* the candidate)
        return GateResult(
            "p99_latency",
            WAIT,
            cand.p99_ms,
            sla,
            f"p99: {n} of {min_n} latency samples (calls) needed to pass; {over_lo} over the "
            f"SLA {sla:g} ms so far",
            data,
        )
    lo_ms, hi_ms = p99_bounds(sk, gates.confidence)
    data.update(
        over_sla_min=over_lo,
        over_sla_max=over_hi,
        llr_roll_back=llr_fail,
        llr_advance=llr_pass,
        roll_back_at_llr=test.upper,
        advance_at_llr=test.lower,
        p99_lower_ms=lo_ms,
        p99_upper_ms=hi_ms,
        confidence=gates.confidence,
    )
    p99 = cand.p99_ms if cand.p99_ms is not None else (sk.quantile(P99) or 0.0) * 1000.0
    bounds = (
        f"p99 {p99:.1f} ms, {gates.confidence:.0%} order-statistic bounds "
        f"[{'-' if lo_ms is None else f'{lo_ms:.1f}'}, {'-' if hi_ms is None else f'{hi_ms:.1f}'}] ms"
    )
    if test.decide(llr_fail) == FAIL:
        return GateResult(
            "p99_latency",
            FAIL,
            p99,
            sla,
            f"{bounds} > SLA {sla:g} ms: at least {over_lo} of {n} calls slower than the SLA "
            f"({over_lo / n:.2%}); the data favour > 1 % over 0.5 % (sequential test, "
            f"α = {test.alpha:g})",
            data,
        )
    if test.decide(llr_pass) == PASS:
        return GateResult(
            "p99_latency",
            PASS,
            p99,
            sla,
            f"{bounds} <= SLA {sla:g} ms: at most {over_hi} of {n} calls slower than the SLA "
            f"(sequential test, β = {test.beta:g})",
            data,
        )
    return GateResult(
        "p99_latency",
        WAIT,
        p99,
        sla,
        f"{bounds}: {over_lo}-{over_hi} of {n} calls slower than SLA {sla:g} ms, not conclusive "
        f"between 0.5 % and 1 %; collecting more",
        data,
    )


def divergence_gate(
    cand: Aggregate,
    base: Aggregate | None,
    gates: Gates,
    min_n: int,
    against: str,
    paired: bool = False,
) -> GateResult:
    """Noise-corrected divergence per metric with look-corrected bootstrap bounds."""
    name = "score_divergence"
    limits = gates.divergence_thresholds
    first = next(iter(limits))
    if base is None or not base.scores or not cand.scores:
        return GateResult(
            name,
            WAIT,
            None,
            limits[first],
            f"divergence: no {against} score histogram yet",
            {"against": against},
        )
    n1, n2 = sum(cand.scores), sum(base.scores)
    # judge only on at least 100 scores per bucket: below that the statistic is mostly noise
    min_n = max(min_n, DIV_MIN_PER_BIN * MAX_BINS)
    data: dict[str, Any] = {
        "metrics": dict(limits),
        "against": against,
        "candidate_n": n1,
        "champion_n": n2,
        "candidate_hist": cand.scores,
        "champion_hist": base.scores,
        "edges": cand.score_edges,
        "paired": paired,
    }
    if n1 < min_n or n2 < min_n or len(cand.scores) != len(base.scores):
        return GateResult(
            name,
            WAIT,
            None,
            limits[first],
            f"divergence: {int(n1)} candidate / {int(n2)} {against} scores, {min_n} each needed",
            data,
        )
    alpha = 1 - gates.confidence
    j, spend = look_level(alpha, min(n1, n2), min_n)
    ests, how = divergence_estimates(
        cand.scores, base.scores, list(limits), cand.device_scores, base.device_scores, paired
    )
    z = z_value(1 - spend)
    data.update(how, look=j, z=z, devices=ests[0].df + 1 if ests[0].df is not None else None)
    statuses, parts = [], []
    for e in ests:
        limit = limits[e.metric]
        lcb, ucb = e.bounds(z)
        st = FAIL if lcb > limit * GOOD_FRACTION else PASS if ucb < limit else WAIT
        statuses.append(st)
        data[e.metric] = {
            "value": e.value,
            "raw": e.raw,
            "noise": e.noise,
            "scale": e.scale,
            "lower": lcb,
            "upper": ucb,
            "threshold": limit,
            "status": st,
        }
        parts.append(
            f"{e.metric.upper()} {e.value:.3f} (raw {e.raw:.3f}, noise {e.noise:.3f}; bounds "
            f"[{max(lcb, 0):.3f}, {max(ucb, 0):.3f}]) vs {limit:g}: {st}"
        )
    status = FAIL if FAIL in statuses else WAIT if WAIT in statuses else PASS
    head = {FAIL: "diverges", PASS: "within", WAIT: "not conclusive"}[status]
    return GateResult(
        name,
        status,
        ests[0].value,
        limits[first],
        f"vs {against}: {head} — "
        + "; ".join(parts)
        + (
            " (rolls back when a lower bound exceeds half the threshold, passes when every "
            "upper bound is under it)"
            if status == WAIT
            else ""
        ),
        data,
    )


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
        return {
            "decision": self.decision,
            "reason": self.reason,
            "gates": [g.to_dict() for g in self.gates],
        }


def evaluate(view: StageView, gates: Gates) -> Verdict:
    """The stage verdict: any fail → rollback; a pause → pause; all pass + duration → advance."""
    st = view.stage
    n = max(view.stage_devices, 1)
    results: list[GateResult] = []
    failed_frac = view.failed / n
    results.append(
        GateResult(
            "install",
            FAIL if view.failed and failed_frac > gates.max_failed_fraction else PASS,
            failed_frac,
            gates.max_failed_fraction,
            f"{view.failed} of {view.stage_devices} devices failed to install/self-test the candidate",
            {"failed": view.failed, "devices": view.stage_devices},
        )
    )
    unknown_frac = view.unknown / n
    results.append(
        GateResult(
            "unknown_devices",
            PAUSE if view.unknown and unknown_frac > gates.max_unknown_fraction else PASS,
            unknown_frac,
            gates.max_unknown_fraction,
            f"{view.unknown} of {view.stage_devices} devices silent or not converged (unknown)",
            {"unknown": view.unknown, "devices": view.stage_devices},
        )
    )
    results.append(
        GateResult(
            "converged",
            WAIT if view.pending else PASS,
            float(view.verified),
            float(view.stage_devices),
            f"{view.verified} of {view.stage_devices} devices verified running the candidate"
            + (f", {view.pending} installing" if view.pending else ""),
            {"verified": view.verified, "pending": view.pending},
        )
    )
    c = view.candidate
    results.append(error_rate_gate(c, gates, st.min_samples))
    results.append(latency_gate(c, gates, view.champion))
    if st.kind == "shadow":
        results.append(decision_change_gate(c, gates))
    results.append(
        divergence_gate(
            c, view.champion, gates, st.min_samples, view.champion_label, paired=st.kind == "shadow"
        )
    )
    results.append(
        GateResult(
            "min_duration",
            PASS if view.elapsed_s >= st.min_duration_s else WAIT,
            view.elapsed_s,
            st.min_duration_s,
            f"{view.elapsed_s:.0f}s of {st.min_duration_s:.0f}s minimum",
        )
    )
    rejected = c.rejected + (view.champion.rejected if view.champion else 0)
    if rejected:
        why = c.rejected_reason or (view.champion.rejected_reason if view.champion else None)
        for g in results:
            g.data["rejected_rows"] = rejected
        results[-1].message += f"; {rejected} impossible stored rows skipped (last: {why})"

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
        return Verdict(
            "pause",
            f"not enough data after {st.timeout_s:.0f}s (stage timeout): "
            + "; ".join(f"{g.name}: {g.message}" for g in waits),
            results,
        )
    return Verdict("wait", "; ".join(f"{g.name}: {g.message}" for g in waits), results)
