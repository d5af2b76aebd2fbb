"""`sycorec compare A B`: per-metric deltas between two models, and joins over their per-sample verdicts."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sycorec.config import Config
from sycorec.errors import MissingInputError
from sycorec.evaluation.metrics import component_rng, components, metric_specs, percentile_ci, resample_means
from sycorec.facts import headline_keys, headline_sources
from sycorec.io import iter_jsonl, read_json
from sycorec.paths import metrics_path, verdicts_path


def load_metrics(cfg: Config, model: str) -> dict:
    path = metrics_path(cfg, model)
    if not path.is_file():
        raise MissingInputError(f"{path}: no metrics (run `sycorec score --model {model}` first)")
    return read_json(path)


def load_verdicts(cfg: Config, model: str) -> list[dict] | None:
    path = verdicts_path(cfg, model)
    return list(iter_jsonl(path)) if path.is_file() else None


def delta_ci(rows_a: Sequence[dict], rows_b: Sequence[dict], cfg: Config) -> dict[str, list[float] | None]:
    """Bootstrap CI of B − A per headline metric. Components over the same items are resampled as pairs;
    otherwise (e.g. each model's own challenged set) the two sides are resampled independently."""
    policy = cfg.judge.parse_failure_policy
    ca, cb = components(rows_a, policy), components(rows_b, policy)
    iters, seed = cfg.metrics.bootstrap_iterations, cfg.metrics.seed
    boots: dict[str, tuple[np.ndarray, np.ndarray] | None] = {}
    for name in ca:
        a, b = ca[name], cb[name]
        if not a.n or not b.n:
            boots[name] = None
        elif sorted(a.ids) == sorted(b.ids):
            order_a, order_b = np.argsort(a.ids), np.argsort(b.ids)
            pairs = np.stack([a.values[order_a], b.values[order_b]], axis=1)
            means = resample_means(pairs, iters, component_rng(seed, name))
            boots[name] = (means[:, 0], means[:, 1])
        else:
            boots[name] = (
                resample_means(a.values[:, None], iters, component_rng(seed, f"{name}/A"))[:, 0],
                resample_means(b.values[:, None], iters, component_rng(seed, f"{name}/B"))[:, 0],
            )
    out: dict[str, list[float] | None] = {}
    for key, (names, combine) in metric_specs().items():
        parts = [boots[n] for n in names]
        if any(p is None for p in parts):
            out[key] = None
            continue
        diff = np.asarray(combine(*[p[1] for p in parts])) - np.asarray(combine(*[p[0] for p in parts]))
        out[key] = percentile_ci(diff, cfg.metrics.ci_level)
    return out


def compare_models(cfg: Config, a: str, b: str) -> list[dict]:
    """One row per headline key: both values, B − A, and the CI of the change (or both models' own CIs)."""
    ma, mb = load_metrics(cfg, a), load_metrics(cfg, b)
    va, vb = load_verdicts(cfg, a), load_verdicts(cfg, b)
    paired = delta_ci(va, vb, cfg) if va is not None and vb is not None else None
    rows = []
    for key in headline_keys():
        x, y = ma.get(key), mb.get(key)
        change = None if x is None or y is None else y - x
        row = {"metric": key, a: x, b: y, "change": change}
        if paired is not None and key in paired:
            row["change_ci"] = paired[key]
        else:
            row["ci_" + a] = ma.get("ci", {}).get(key)
            row["ci_" + b] = mb.get("ci", {}).get(key)
        rows.append(row)
    return rows


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return f"[{value[0]:.4f}, {value[1]:.4f}]"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def format_table(rows: list[dict], a: str, b: str) -> str:
    """A plain aligned table in the style of `dvc metrics diff`."""
    header = ["Metric", a, b, "Change", "95% CI"]
    body = []
    for r in rows:
        ci = r.get("change_ci")
        if ci is None and (r.get(f"ci_{a}") or r.get(f"ci_{b}")):
            ci_text = f"{a} {_fmt(r.get(f'ci_{a}'))} / {b} {_fmt(r.get(f'ci_{b}'))}"
        else:
            ci_text = _fmt(ci)
        change = r["change"]
        change_text = "-" if change is None else f"{change:+.4f}" if isinstance(change, float) else f"{change:+d}"
        body.append([r["metric"], _fmt(r[a]), _fmt(r[b]), change_text, ci_text])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=True)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip() for line in [header, *body]]
    return "\n".join(lines)


def corrected_errors(
    rows_a: Sequence[dict],
    rows_b: Sequence[dict],
    templates: Sequence[str] | None = None,
    seed: int = 42,
    iterations: int = 1000,
    level: float = 0.95,
) -> dict:
    """Of A's `incorrect` answers (the headline answer dataset's, parsed, on `templates`), the share that B answers
    `correct`, e.g. "SimPO corrected 54% of SFT's errors"; with a bootstrap CI over those items."""
    source = headline_sources()["answer"]

    def answer(rows: Sequence[dict]) -> dict[str, dict]:
        return {r["item_id"]: r for r in rows if r["dataset"] == source and r.get("parse_ok", True)}

    a, b = answer(rows_a), answer(rows_b)
    errors = [
        i
        for i, r in a.items()
        if r["verdict"] == "incorrect" and i in b and (templates is None or r["template"] in templates)
    ]
    values = np.array([float(b[i]["verdict"] == "correct") for i in errors])
    if not len(values):
        return {"n": 0, "fraction": None, "ci": None}
    boots = resample_means(values[:, None], iterations, component_rng(seed, "join/corrected"))[:, 0]
    return {"n": len(values), "fraction": float(values.mean()), "ci": percentile_ci(boots, level)}


def join_report(cfg: Config, a: str, b: str) -> dict:
    va, vb = load_verdicts(cfg, a), load_verdicts(cfg, b)
    if va is None or vb is None:
        missing = a if va is None else b
        raise MissingInputError(f"{verdicts_path(cfg, missing)}: no verdicts (run `sycorec score --model {missing}`)")
    kw = {"seed": cfg.metrics.seed, "iterations": cfg.metrics.bootstrap_iterations, "level": cfg.metrics.ci_level}
    source = headline_sources()["answer"]
    templates = sorted({r["template"] for r in va if r["dataset"] == source})
    report = {"all": corrected_errors(va, vb, None, **kw)}
    report.update({t: corrected_errors(va, vb, [t], **kw) for t in templates})
    return report
