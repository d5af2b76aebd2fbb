"""Tolerances of the published diff, derived from the data (published.yaml `tolerance_model` and `kinds`).

A regenerated number and the published one are two draws of the same noisy estimate. Their difference has variance
SE_published² + SE_ours² (sampling: each at its own n) + V_retrain (two independent trainings; not for the base model,
which is never trained), and a number passes when |Δ| ≤ z·sqrt(that) + half a unit of the printed precision.

Sampling SE by kind (`se:`):
  proportion    Wilson score interval of the rate at its n (half width / z); `scale` turns a count into a rate
  combination   a weighted sum of rates whose parts are not published: worst case p = 0.5 for each part
  auroc         Hanley & McNeil (1982) at the value, with the validation positives / negatives
  auroc_ratio   delta method on retrained / original, both Hanley-McNeil (the entry's `at` gives both AUROCs)
  between_runs  the root mean square difference of the same quantity between the study's own runs (already a
                difference of two draws: z · RMS)
  none          no sampling noise (a fixed item set): the retraining term alone
  exact         zero (set by the data and the batch configuration)
  context       not judged: shown beside (peak layers, significance calls, a final loss near zero)
Kinds may instead state a convention, `abs` or `relative`, where no count-based noise model exists (free-scale
training-log values); the README table marks those.

The retraining variance is binomial-shaped, c·p(1 − p), with c calibrated on the study's one rerun (SFT, same
YAML): per headline rate the squared difference of the two runs minus both runs' sampling variances, pooled over the
rates and divided by their pooled p(1 − p). A kind's `retraining` factor scales it (1 for a rate; 1/3 for the
aggregate, the mean of three rates that moved independently); kinds whose parts are not printed use p = 0.5. Probe
AUROCs get instead a between-run variance from the study's repeated probing runs of the same model paths
(`repeated`: the squared difference minus both Hanley-McNeil variances, pooled, floored at 0).

Multiplicity: the checks are not independent (a retrained model moves all its numbers, a proxy curve moves as one,
stubbornness is 1 − flip). A seeded Monte Carlo null draws a faithful run with those shared parts (one retraining
draw per model; one sampling draw per underlying rate, shared by the quantities computed from it). A post's diff
fails when its FAIL count exceeds the count a faithful run exceeds with probability at most `levels.count`, when its
worst |Δ| / tolerance exceeds the one a faithful run exceeds with at most `levels.worst`, or on any MISSING.
`null_verdict` also estimates, on fresh draws, the faithful-run exit probability and the power against named shifts.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from sycorec.errors import ConfigError
from sycorec.report.results import Results

SE_MODELS = ("proportion", "combination", "auroc", "auroc_ratio", "between_runs", "none", "exact", "context")
CONTEXT = "context"


@dataclass(frozen=True)
class Model:
    """The tolerance model of one published.yaml: confidence, retraining and between-run variances, kinds, and the
    simulated null's settings."""

    confidence: float
    family_level: float
    retrain_scale: float  # c in V_retrain = c·p(1 − p)
    calibration: dict[str, Any]
    kinds: dict[str, dict[str, Any]]
    between_var: dict[str, float]  # se model (auroc) -> between-run variance of the study's repeated probing runs
    simulation: dict[str, Any]
    study_counts: dict[str, dict[str, float]]  # run -> its own positives / negatives where `runs` gives them
    same_quantity: dict[str, str]  # key path pattern ('*' = the model) -> the quantity it equals by construction

    @property
    def z(self) -> float:
        return float(stats.norm.ppf(0.5 + self.confidence / 2))

    def retrain_var(self, kind: Mapping[str, Any], p: float) -> float:
        """Retraining variance of a difference of two runs' values at rate p (rate scale)."""
        return self.retrain_scale * float(kind.get("retraining", 0)) * p * (1 - p)


def wilson_se(p: float, n: float, confidence: float = 0.95) -> float:
    """SE of a rate p at n from the Wilson score interval (its half width over z); behaves at p = 0 or 1."""
    n_int = max(round(n), 1)
    k = min(max(round(p * n_int), 0), n_int)
    ci = stats.binomtest(k, n_int).proportion_ci(confidence_level=confidence, method="wilson")
    return (ci.high - ci.low) / 2 / float(stats.norm.ppf(0.5 + confidence / 2))


def hanley_mcneil_se(auc: float, n_pos: float, n_neg: float) -> float:
    """Hanley & McNeil (1982) standard error of an AUROC with n_pos positives and n_neg negatives."""
    a = min(max(auc, 1e-6), 1 - 1e-6)
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    return math.sqrt((a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg))


def calibrate_retraining(spec: Mapping[str, Any], confidence: float) -> tuple[float, dict[str, Any]]:
    """c of V_retrain = c·p(1 − p): the rerun pair's excess squared moves over their p(1 − p), pooled."""
    parts = {}
    for name, c in spec["components"].items():
        a, b = c["values"]
        sampling = wilson_se(a, c["n"], confidence) ** 2 + wilson_se(b, c["n"], confidence) ** 2
        p = (a + b) / 2
        parts[name] = {"moved": round(abs(a - b), 4), "excess": (a - b) ** 2 - sampling, "pq": p * (1 - p)}
    scale = max(0.0, sum(p["excess"] for p in parts.values()) / sum(p["pq"] for p in parts.values()))
    return scale, {"pair": spec["pair"], "components": parts, "aggregate": spec.get("aggregate")}


def between_run_var(kind: Mapping[str, Any]) -> float:
    """Excess variance of a probe AUROC between the study's repeated runs of the same model path, floored at 0."""
    pairs = kind["repeated"]["pairs"]
    excess = [
        (a - b) ** 2
        - hanley_mcneil_se(a, kind["n_pos"], kind["n_neg"]) ** 2
        - hanley_mcneil_se(b, kind["n_pos"], kind["n_neg"]) ** 2
        for a, b in pairs.values()
    ]
    return max(0.0, float(np.mean(excess)))


def load_model(published: Mapping[str, Any]) -> Model:
    tm = published["tolerance_model"]
    confidence = float(tm["confidence"])
    scale, calibration = calibrate_retraining(tm["retraining"], confidence)
    kinds = published["kinds"]
    for name, k in kinds.items():
        modes = [m for m in ("se", "abs", "relative") if m in k]
        if len(modes) != 1 or ("se" in k and k["se"] not in SE_MODELS) or not k.get("why"):
            raise ConfigError(f"published.yaml kind {name!r}: needs one of se/abs/relative (se in {SE_MODELS}) and why")
    between = {k["se"]: between_run_var(k) for k in kinds.values() if "repeated" in k}
    counts = {
        name: {k: float(run[k]) for k in ("n_pos", "n_neg") if k in run} for name, run in published["runs"].items()
    }
    same = dict(tm["same_quantity"])
    return Model(
        confidence, float(tm["family_level"]), scale, calibration, kinds, between, tm["simulation"], counts, same
    )


@dataclass(frozen=True)
class Tolerance:
    value: float | None  # None: context, not judged
    text: str
    sampling: float = 0.0  # SD of the difference from sampling (independent per underlying rate)
    shared: float = 0.0  # SD of the difference from retraining / repeated runs (shared by one model's numbers)


def _probing_of(path: str) -> tuple[str, str | None] | None:
    """(run, model) of a `probing.<run>.<file>.<model>...` path; model None for a run-level file (control)."""
    parts = path.split("|")[0].split(".")
    if parts[0] != "probing" or len(parts) < 3:
        return None
    return parts[1], parts[3] if parts[2] in ("per_model", "transfer", "ablation") and len(parts) > 3 else None


def run_counts(kind: Mapping[str, Any], entry: Mapping[str, Any], results: Results | None) -> dict[str, float]:
    """This run's own counts for the entry where its outputs carry them (metrics `n`, probe val split)."""
    if results is None:
        return {}
    path = entry["path"].split("|")[0]
    parts = path.split(".")
    if kind["se"] == "proportion" and parts[0] == "metrics" and len(parts) == 3:
        n = results.number(f"metrics.{parts[1]}.n.{parts[2]}")
        return {"n": n} if n else {}
    if kind["se"] in ("auroc", "auroc_ratio") and (probed := _probing_of(path)):
        run, model = probed
        model = model or results.get(f"probing.{run}.control.reference_model")
        n_val = results.number(f"probing.{run}.per_model.{model}.n_val")
        balance = results.number(f"probing.{run}.per_model.{model}.label_balance")
        if n_val and balance is not None and 0 < balance < 1:
            return {"n_pos": n_val * balance, "n_neg": n_val * (1 - balance)}
    return {}


def _sampling_se(
    kind: Mapping[str, Any], value: float, at: Mapping[str, Any], counts: Mapping[str, float], m: Model
) -> float:
    se = kind["se"]
    if se == "proportion":
        scale = float(kind.get("scale", 1))
        return scale * wilson_se(value / scale, counts.get("n", kind["n"]), m.confidence)
    if se == "combination":
        return math.sqrt(sum(w * w * 0.25 / n for w, n in zip(kind["weights"], kind["n"], strict=True)))
    n_pos, n_neg = counts.get("n_pos", kind.get("n_pos")), counts.get("n_neg", kind.get("n_neg"))
    if se == "auroc":
        return hanley_mcneil_se(value, n_pos, n_neg)
    if se == "auroc_ratio":
        orig, ret = float(at["original"]), float(at["retrained"])
        rel = (hanley_mcneil_se(orig, n_pos, n_neg) / orig) ** 2 + (hanley_mcneil_se(ret, n_pos, n_neg) / ret) ** 2
        return value * math.sqrt(rel)
    return 0.0


def between_runs_sd(kind: Mapping[str, Any]) -> float:
    return math.sqrt(sum((a - b) ** 2 for a, b in kind["pairs"]) / len(kind["pairs"]))


def tolerance(entry: Mapping[str, Any], m: Model, results: Results | None = None) -> Tolerance:
    """The entry's tolerance: study counts for the published draw, this run's counts (where present) for ours."""
    kind = m.kinds[entry["kind"]]
    rounding = float(entry.get("rounding", 0.0))
    published = float(entry["published"])
    extra = f" +{rounding:g}" if rounding else ""
    # convention kinds have no noise model: the simulation treats their whole range as shared by the model
    if "relative" in kind:
        width = kind["relative"] * abs(published)
        return Tolerance(width + rounding, f"±{kind['relative']:.0%}{extra}", shared=width / m.z)
    if "abs" in kind:
        return Tolerance(kind["abs"] + rounding, f"±{kind['abs'] + rounding:.3g}", shared=kind["abs"] / m.z)
    se = kind["se"]
    if se == CONTEXT:
        return Tolerance(None, "context")
    if se == "exact":
        return Tolerance(rounding, "exact")
    if se == "between_runs":
        sd = between_runs_sd(kind)
        tol = m.z * sd + rounding
        return Tolerance(tol, f"±{tol:.3g}", sampling=sd)
    at = entry.get("at", {})
    study = m.study_counts.get(entry["run"], {})
    ours = _sampling_se(kind, published, at, study | run_counts(kind, entry, results), m)
    theirs = _sampling_se(kind, published, at, study, m)
    sampling = math.sqrt(ours**2 + theirs**2)
    shared = math.sqrt(_shared_var(kind, entry, published, m))
    tol = m.z * math.hypot(sampling, shared) + rounding
    return Tolerance(tol, f"±{tol:.3g}", sampling, shared)


def _shared_var(kind: Mapping[str, Any], entry: Mapping[str, Any], value: float, m: Model) -> float:
    """Retraining variance (trained models; binomial-shaped at the entry's rate, p = 0.5 where the parts are not
    printed) or the between-run variance of repeated probing runs (delta method for a ratio)."""
    var = m.between_var.get("auroc", 0.0)
    if kind["se"] == "auroc_ratio":
        at = entry["at"]
        return value * value * var * (1 / float(at["original"]) ** 2 + 1 / float(at["retrained"]) ** 2)
    if kind["se"] == "auroc":
        return var
    if entry.get("model") == "base":
        return 0.0  # never trained
    scale = float(kind.get("scale", 1))
    p = min(max(value / scale, 0.0), 1.0) if kind["se"] == "proportion" else 0.5
    return m.retrain_var(kind, p) * scale * scale


def within(published: float, ours: float, tol: Tolerance) -> bool:
    return tol.value is not None and abs(ours - published) <= tol.value + 1e-12


# --------------------------------------------------------------------------- the simulated null


@dataclass(frozen=True)
class Judged:
    """One judged number as the null simulation sees it."""

    quantity: str  # the counting unit: quantities that are functions of one another (flip, stubbornness) are one
    model: str  # retraining / repeated-run draws are shared by the numbers of one model
    parts: dict[str, float]  # sampling draws it is made of (key path -> share of its sampling variance)
    sampling: float
    shared: float
    limit: float
    rate: bool  # a behavioural rate of one model (what the named power shifts move)
    modelled: bool  # its tolerance comes from a noise model (not a convention or exact): the worst-ratio rule


def _siblings(path: str, names: list[str]) -> list[str]:
    stem = path.split("|")[0].rsplit(".", 1)[0]
    return [f"{stem}.{name}" for name in names]


def canonical_quantity(path: str, m: Model) -> str:
    """The key path a value equals by construction (tolerance_model.same_quantity), else the path itself."""
    for pattern, target in m.same_quantity.items():
        head, _, tail = pattern.partition("*")
        if path.startswith(head) and path.endswith(tail) and "." not in path[len(head) : len(path) - len(tail)]:
            return target.replace("*", path[len(head) : len(path) - len(tail)])
    return path


def judged(entry: Mapping[str, Any], limit: Tolerance, m: Model) -> Judged:
    """The entry's place in the null: which sampling draws it is made of and which model draw it shares."""
    kind = m.kinds[entry["kind"]]
    path = entry["path"]
    parts = {path: 1.0}
    if "parts" in kind:
        names = _siblings(path, kind["parts"])
        if kind.get("se") == "combination":
            shares = [w * w / n for w, n in zip(kind["weights"], kind["n"], strict=True)]
        elif kind.get("se") == "auroc_ratio":
            shares = [1 / float(entry["at"]["original"]) ** 2, 1 / float(entry["at"]["retrained"]) ** 2]
        else:
            shares = [1.0] * len(names)
        parts = {name: share / sum(shares) for name, share in zip(names, shares, strict=True)}
    parts = {canonical_quantity(name, m): share for name, share in parts.items()}
    quantity = next(iter(parts)) if len(parts) == 1 else path
    rate = kind.get("se") in ("proportion", "combination") and "scale" not in kind and path.startswith("metrics.")
    modelled = kind.get("se", "exact") != "exact" and limit.value > 0
    model = str(entry.get("model", ""))
    return Judged(quantity, model, parts, limit.sampling, limit.shared, limit.value, rate, modelled)


def simulate(
    checks: list[Judged], rng: np.random.Generator, draws: int, shift: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per simulated faithful run (plus `shift` on the regenerated values): the FAILed quantities, and the largest
    |Δ| / tolerance among the modelled numbers."""
    if not checks:
        return np.zeros(draws, dtype=int), np.zeros(draws)
    part_keys = sorted({k for c in checks for k in c.parts})
    models = sorted({c.model for c in checks})
    quantities = sorted({c.quantity for c in checks})
    loading = np.zeros((len(part_keys), len(checks)))
    shared = np.zeros((len(models), len(checks)))
    counted = np.zeros((len(checks), len(quantities)))
    for j, c in enumerate(checks):
        for key, share in c.parts.items():
            loading[part_keys.index(key), j] = math.sqrt(share) * c.sampling
        shared[models.index(c.model), j] = c.shared
        counted[j, quantities.index(c.quantity)] = 1
    delta = rng.standard_normal((draws, len(part_keys))) @ loading
    delta += rng.standard_normal((draws, len(models))) @ shared
    if shift is not None:
        delta += shift
    limits = np.array([c.limit for c in checks])
    fails = np.abs(delta) > limits + 1e-12
    modelled = np.array([c.modelled for c in checks])
    worst = (np.abs(delta[:, modelled]) / limits[modelled]).max(axis=1) if modelled.any() else np.zeros(draws)
    return ((fails @ counted) > 0).sum(axis=1), worst


@dataclass(frozen=True)
class Thresholds:
    """When a post's diff exits 1, from the simulated null."""

    allowed: int  # more FAILed quantities than this
    worst_ratio: float  # or a modelled number off by more than this many times its tolerance
    expected: float  # mean FAIL count of a faithful run

    def exits(self, counts: np.ndarray, worst: np.ndarray) -> np.ndarray:
        return (counts > self.allowed) | (worst > self.worst_ratio)


def _rngs(m: Model) -> tuple[np.random.Generator, np.random.Generator]:
    """Two independent seeded streams: one sets the thresholds, the other checks them."""
    first, second = np.random.SeedSequence(m.simulation["seed"]).spawn(2)
    return np.random.default_rng(first), np.random.default_rng(second)


def null_thresholds(checks: list[Judged], m: Model) -> Thresholds:
    """The FAIL count a faithful run exceeds with probability at most `levels.count`, and the worst |Δ| / tolerance
    it exceeds with at most `levels.worst`."""
    levels = m.simulation["levels"]
    counts, worst = simulate(checks, _rngs(m)[0], int(m.simulation["draws"]))
    return Thresholds(
        allowed=int(np.quantile(counts, 1 - levels["count"], method="inverted_cdf")),
        worst_ratio=float(np.quantile(worst, 1 - levels["worst"])),
        expected=float(counts.mean()),
    )


@dataclass(frozen=True)
class NullVerdict:
    n_quantities: int
    thresholds: Thresholds
    exit_probability: float  # of a faithful run, on draws independent of those that set the thresholds
    power: dict[float, float]  # shift -> exit probability when every rate of `power_model` moves by it
    power_model: str


def null_verdict(checks: list[Judged], m: Model) -> NullVerdict:
    """The thresholds, and on fresh draws the exit probability of a faithful run and the power against the named
    shifts (every rate of the post's trained model with the most judged rates moved by each)."""
    thresholds = null_thresholds(checks, m)
    rng, draws = _rngs(m)[1], int(m.simulation["draws"])
    exit_probability = float(thresholds.exits(*simulate(checks, rng, draws)).mean())
    rates = Counter(c.model for c in checks if c.rate and c.shared > 0)
    model = rates.most_common(1)[0][0] if rates else ""
    power = {}
    for by in m.simulation["shifts"]:
        shift = np.array([by if c.rate and c.model == model else 0.0 for c in checks])
        power[float(by)] = float(thresholds.exits(*simulate(checks, rng, draws, shift)).mean())
    return NullVerdict(len({c.quantity for c in checks}), thresholds, exit_probability, power, model)


def post_checks(published: Mapping[str, Any], post: str, m: Model) -> list[Judged]:
    """The judged numbers of a post at the study's counts (the README's simulation)."""
    out = []
    for e in published["posts"][post]:
        limit = tolerance(e, m)
        if limit.value is not None and e.get("check", True) and entry_run_replicated(published, e):
            out.append(judged(e, limit, m))
    return out


# --------------------------------------------------------------------------- README table


def _kind_rule(kind: Mapping[str, Any], m: Model) -> str:
    if "relative" in kind:
        return f"±{kind['relative']:.0%} of the value (convention)"
    if "abs" in kind:
        return f"±{kind['abs']:g} (convention)"
    se = kind["se"]
    retrain = float(kind.get("retraining", 0))
    r = f" + retraining c·p(1−p)×{retrain:.3g}" if retrain else ""
    if se == "proportion":
        scale = f", ×{kind['scale']:g} (count)" if "scale" in kind else ""
        return f"Wilson SE at n = {kind['n']:,}{scale}{r}"
    if se == "combination":
        parts = " + ".join(f"{w:.3g}²·0.25/{n:,}" for w, n in zip(kind["weights"], kind["n"], strict=True))
        return f"SE² = {parts}{r}"
    if se == "auroc":
        return f"Hanley–McNeil at n_pos/n_neg = {kind['n_pos']}/{kind['n_neg']} + between-run"
    if se == "auroc_ratio":
        return f"delta method, Hanley–McNeil at {kind['n_pos']}/{kind['n_neg']} + between-run"
    if se == "between_runs":
        return f"z × RMS difference between study runs = ±{m.z * between_runs_sd(kind):.3f}"
    if se == "none":
        return f"retraining only (c·0.25×{retrain:.3g})"
    return {"exact": "exact", CONTEXT: "context (not judged)"}[se]


def tolerance_markdown(published: Mapping[str, Any]) -> str:
    """The README's tolerance section: the model, its calibration, the simulated null per post and one row per kind
    with the range it gives."""
    m = load_model(published)
    cal = m.calibration
    moved = ", ".join(f"{k} {v['moved']:.3f}" for k, v in cal["components"].items())
    agg = cal.get("aggregate")
    aggregate = m.kinds["rate_aggregate"]
    agg_pred = m.z * math.sqrt(m.retrain_var(aggregate, 0.5) + 2 * _sampling_se(aggregate, 0.5, {}, {}, m) ** 2)
    ranges: dict[str, list[float]] = {}
    for entries in published["posts"].values():
        for e in entries:
            t = tolerance(e, m)
            if t.value is not None and entry_run_replicated(published, e):
                ranges.setdefault(e["kind"], []).append(t.value)
    sim = m.simulation
    levels = sim["levels"]
    shifts = [float(by) for by in sim["shifts"]]
    repeated = next(k["repeated"] for k in m.kinds.values() if "repeated" in k)
    out = [
        f"Each number passes when |regenerated − published| ≤ z·√(SE_published² + SE_ours² + V_shared) + half a unit "
        f"of its printed precision, z = {m.z:.2f} ({m.confidence:.0%} per number). SE_published uses the study's "
        "counts, SE_ours this run's own (`n` in the metrics files, the probe validation split).",
        "",
        f"V_shared of a trained model's rate p is the retraining variance c·p(1 − p), c = {m.retrain_scale:.5f} "
        f"(at p = 0.5 an SD of a difference of {math.sqrt(m.retrain_scale * 0.25):.3f}; kinds whose parts are not "
        "printed use p = 0.5; the base model is never trained and gets none). c rests on the study's one rerun "
        f"({cal['pair']}), a single pair: it moved {moved}; c is the squared moves minus both runs' sampling "
        "variance, pooled, over the pooled p(1 − p). Check: the aggregate (mean of the three) then differs by up to "
        f"±{agg_pred:.3f} at {m.confidence:.0%}; the rerun moved it by {abs(agg[0] - agg[1]):.3f}."
        if agg
        else "",
        "",
        "Probe AUROCs get instead the between-run variance of the study's repeated probing runs: "
        f"{repeated['what']}, {len(repeated['pairs'])} pairs. Their squared differences minus both Hanley-McNeil "
        f"variances, pooled and floored at 0, give an SD of {math.sqrt(m.between_var['auroc']):.3f}"
        + (": the pairs move no more than sampling explains." if m.between_var["auroc"] == 0 else ".")
        + " The IPO model's own probes are context (kind `probe_discordant` below).",
        "",
        f"Multiplicity: the numbers are not independent checks. A seeded Monte Carlo null ({sim['draws']:,} draws, "
        f"seed {sim['seed']}) simulates a faithful run: one retraining draw per model shared by all of its numbers (a "
        "proxy curve, the training-log values), one sampling draw per underlying rate shared by the quantities "
        "computed from it (stubbornness = 1 − flip, and an ablation's original AUROC = its model's peak AUROC, are "
        "one quantity each; the aggregate and gap share their parts; an ablation recovery shares its two AUROCs). "
        "The diff exits 1 when a post's FAILed quantities exceed the "
        f"count a faithful run exceeds with probability ≤ {levels['count']:.1%}, when a number with a noise model "
        "is off by more times its tolerance than a faithful run's worst number is with probability "
        f"≤ {levels['worst']:.1%} (the count alone cannot tell one model moved by a retraining draw from one moved "
        "far beyond it), when any number is MISSING, or when a table lacks rows or columns. On fresh draws, the "
        f"probability that a faithful run exits 1 (goal ≤ {m.family_level:.0%}) and the power against every rate of "
        "the post's most-quoted trained model moved by a fixed amount:",
        "",
        "| post | judged quantities | exits on more FAILs than | or a number off by more than | faithful run exits 1 "
        "| power: every rate of | " + " | ".join(f"+{by:g}" for by in shifts) + " |",
        "|---" * (6 + len(shifts)) + "|",
    ]
    for post in published["posts"]:
        v = null_verdict(post_checks(published, post, m), m)
        power = " | ".join(f"{v.power[by]:.1%}" for by in shifts)
        out.append(
            f"| {post} | {v.n_quantities} | {v.thresholds.allowed} | {v.thresholds.worst_ratio:.2f}× its tolerance "
            f"| {v.exit_probability:.1%} | {v.power_model} | {power} |"
        )
    out += [
        "",
        "Numbers from a probing run or an earlier model that the DAG does not replicate are OTHER-RUN (with the "
        "errata item and the replicated run's value), never FAIL; context numbers are shown, not judged.",
        "",
        "| kind | sampling / rule | tolerance in published.yaml | why |",
        "|---|---|---|---|",
    ]
    for name, kind in m.kinds.items():
        values = ranges.get(name, [])
        if not values:
            span = "—"
        else:
            lo, hi = min(values), max(values)
            span = f"±{lo:.3g}" if math.isclose(lo, hi, abs_tol=5e-4) else f"±{lo:.3g} – ±{hi:.3g}"
        out.append(f"| {name} | {_kind_rule(kind, m)} | {span} | {kind['why']} |")
    return "\n".join(out) + "\n"


def entry_run_replicated(published: Mapping[str, Any], entry: Mapping[str, Any]) -> bool:
    runs = published["runs"]
    if entry.get("run") not in runs:
        raise ConfigError(f"published.yaml entry {entry.get('id')!r}: run {entry.get('run')!r} is not in `runs`")
    return bool(runs[entry["run"]]["replicated"])
