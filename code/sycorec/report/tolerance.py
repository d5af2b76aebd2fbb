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

The retraining variance is calibrated on the study's one rerun (SFT, same YAML): per headline rate, the squared
difference of the two runs minus both runs' sampling variances, pooled over the rates. A kind's `retraining`
factor scales it (1 for a rate; 1/3 for the aggregate, the mean of three rates that moved independently).

Multiplicity: each checked quantity fails by chance with probability 1 − confidence. A post's diff fails when its
FAIL count exceeds the (1 − family_level) quantile of Binomial(n_checked, 1 − confidence), or on any MISSING.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from scipy import stats

from sycorec.errors import ConfigError
from sycorec.report.results import Results

SE_MODELS = ("proportion", "combination", "auroc", "auroc_ratio", "between_runs", "none", "exact", "context")
CONTEXT = "context"


@dataclass(frozen=True)
class Model:
    """The tolerance model of one published.yaml: confidence, retraining variance, kinds."""

    confidence: float
    family_level: float
    retrain_var: float
    calibration: dict[str, Any]
    kinds: dict[str, dict[str, Any]]

    @property
    def z(self) -> float:
        return float(stats.norm.ppf(0.5 + self.confidence / 2))

    @property
    def chance_fail(self) -> float:
        return 1.0 - self.confidence


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
    """Variance that retraining adds to the difference of two runs' rates, from the study's rerun pair."""
    parts = {}
    for name, c in spec["components"].items():
        a, b = c["values"]
        sampling = wilson_se(a, c["n"], confidence) ** 2 + wilson_se(b, c["n"], confidence) ** 2
        parts[name] = {"moved": round(abs(a - b), 4), "excess": (a - b) ** 2 - sampling}
    var = max(0.0, sum(p["excess"] for p in parts.values()) / len(parts))
    return var, {"pair": spec["pair"], "components": parts, "aggregate": spec.get("aggregate")}


def load_model(published: Mapping[str, Any]) -> Model:
    tm = published["tolerance_model"]
    confidence = float(tm["confidence"])
    var, calibration = calibrate_retraining(tm["retraining"], confidence)
    kinds = published["kinds"]
    for name, k in kinds.items():
        modes = [m for m in ("se", "abs", "relative") if m in k]
        if len(modes) != 1 or ("se" in k and k["se"] not in SE_MODELS) or not k.get("why"):
            raise ConfigError(f"published.yaml kind {name!r}: needs one of se/abs/relative (se in {SE_MODELS}) and why")
    return Model(confidence, float(tm["family_level"]), var, calibration, kinds)


@dataclass(frozen=True)
class Tolerance:
    value: float | None  # None: context, not judged
    text: str


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
    if "relative" in kind:
        return Tolerance(kind["relative"] * abs(published) + rounding, f"±{kind['relative']:.0%}{extra}")
    if "abs" in kind:
        return Tolerance(kind["abs"] + rounding, f"±{kind['abs'] + rounding:.3g}")
    se = kind["se"]
    if se == CONTEXT:
        return Tolerance(None, "context")
    if se == "exact":
        return Tolerance(rounding, "exact")
    if se == "between_runs":
        tol = m.z * between_runs_sd(kind) + rounding
        return Tolerance(tol, f"±{tol:.3g}")
    at = entry.get("at", {})
    ours = _sampling_se(kind, published, at, run_counts(kind, entry, results), m)
    theirs = _sampling_se(kind, published, at, {}, m)
    scale = float(kind.get("scale", 1))
    retrain = m.retrain_var * float(kind.get("retraining", 0)) * scale * scale if entry.get("model") != "base" else 0
    tol = m.z * math.sqrt(ours**2 + theirs**2 + retrain) + rounding
    return Tolerance(tol, f"±{tol:.3g}")


def within(published: float, ours: float, tol: Tolerance) -> bool:
    return tol.value is not None and abs(ours - published) <= tol.value + 1e-12


def allowed_fails(n_checked: int, m: Model) -> int:
    """The most FAILs that chance alone explains among n_checked quantities (at the family level)."""
    return int(stats.binom.ppf(1 - m.family_level, n_checked, m.chance_fail)) if n_checked else 0


# --------------------------------------------------------------------------- README table


def _kind_rule(kind: Mapping[str, Any], m: Model) -> str:
    if "relative" in kind:
        return f"±{kind['relative']:.0%} of the value (convention)"
    if "abs" in kind:
        return f"±{kind['abs']:g} (convention)"
    se = kind["se"]
    retrain = float(kind.get("retraining", 0))
    r = f" + retraining×{retrain:.3g}" if retrain else ""
    if se == "proportion":
        scale = f", ×{kind['scale']:g} (count)" if "scale" in kind else ""
        return f"Wilson SE at n = {kind['n']:,}{scale}{r}"
    if se == "combination":
        parts = " + ".join(f"{w:.3g}²·0.25/{n:,}" for w, n in zip(kind["weights"], kind["n"], strict=True))
        return f"SE² = {parts}{r}"
    if se == "auroc":
        return f"Hanley–McNeil at n_pos/n_neg = {kind['n_pos']}/{kind['n_neg']}"
    if se == "auroc_ratio":
        return f"delta method, Hanley–McNeil at {kind['n_pos']}/{kind['n_neg']}"
    if se == "between_runs":
        return f"z × RMS difference between study runs = ±{m.z * between_runs_sd(kind):.3f}"
    if se == "none":
        return f"retraining only (×{retrain:.3g})"
    return {"exact": "exact", CONTEXT: "context (not judged)"}[se]


def tolerance_markdown(published: Mapping[str, Any]) -> str:
    """The README's tolerance section: the model, its calibration and one row per kind with the range it gives."""
    m = load_model(published)
    cal = m.calibration
    moved = ", ".join(f"{k} {v['moved']:.3f}" for k, v in cal["components"].items())
    agg = cal.get("aggregate")
    agg_pred = m.z * math.sqrt(m.retrain_var / 3 + 2 * _sampling_se(m.kinds["rate_aggregate"], 0.5, {}, {}, m) ** 2)
    ranges: dict[str, list[float]] = {}
    for entries in published["posts"].values():
        for e in entries:
            t = tolerance(e, m)
            if t.value is not None and entry_run_replicated(published, e):
                ranges.setdefault(e["kind"], []).append(t.value)
    out = [
        f"Each number passes when |regenerated − published| ≤ z·√(SE_published² + SE_ours² + V_retrain) + half a unit "
        f"of its printed precision, z = {m.z:.2f} ({m.confidence:.0%} per number). SE_published uses the study's "
        "counts, SE_ours this run's own (`n` in the metrics files, the probe validation split); the base model gets "
        "no retraining term.",
        "",
        f"V_retrain = {m.retrain_var:.5f} (SD of a difference {math.sqrt(m.retrain_var):.3f}) on the rate scale, "
        f"calibrated on the study's one rerun ({cal['pair']}): it moved {moved}; pooled over these rates, the squared "
        "move minus both runs' sampling variance. Check: the aggregate (mean of the three) then differs by up to "
        f"±{agg_pred:.3f} at {m.confidence:.0%}; the rerun moved it by "
        f"{abs(agg[0] - agg[1]):.3f}."
        if agg
        else "",
        "",
        f"Multiplicity: each checked quantity fails by chance with probability {m.chance_fail:.2f}. The diff prints "
        "the FAIL count against the count expected by chance and exits 1 when FAILs exceed the "
        f"{1 - m.family_level:.0%} quantile of Binomial(n checked, {m.chance_fail:.2f}) (e.g. more than "
        f"{allowed_fails(100, m)} of 100), or when any number is MISSING or a table lacks rows or columns. Numbers "
        "from a probing run or an earlier model that the DAG does not replicate are OTHER-RUN (with the errata "
        "item and the replicated run's value), never FAIL; context numbers are shown, not judged.",
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
