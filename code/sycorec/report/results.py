"""Every stage output the report reads, loaded once into one tree and addressed by dotted key paths.

Key paths (used by tables.yaml, published.yaml and errata.yaml):
  metrics.<model>.<key>                       results/metrics/<model>.json (CI under metrics.<model>.ci.<key>)
  detail.<model>.<...>                        results/metrics_detail/<model>.json
  probing.<run>.{per_model,transfer,cosine,ablation,control}.<...>   results/probing/<run>/*.json (probing.runs, then
                                                                   <run>+<model> of probing.beyond)
  train.<name>.<...>                          results/train/<name>.json (train.rm_calibration: the RM's calibration)
  curves.<name>.<series>                      results/curves/<name>.json ({"step": [...], "<series>": [...]})
  derived.join.<field>                        per-sample join over results/verdicts (see `join_counts`)
  prepared.rows.<file stem>                   row counts of data/prepared/MANIFEST.json
  params.<...>                                the resolved config
  seeds.<model>.<reading>                     spread across the seed sweep (report.seed_sweep; tiny profile)
Segments: an integer indexes a list; `step=N` picks index i of a curve where step[i] == N (giving {series: value});
`min`/`max`/`first`/`last` reduce a list; `a_vs_b` also matches `b_vs_a`. `path1|path2`: the first one present
(for a key two stage versions name differently).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sycorec.config import Config
from sycorec.errors import MissingInputError
from sycorec.io import iter_jsonl, read_json
from sycorec.paths import calibration_path, probing_result_runs
from sycorec.report.sweep_record import reading_summary

PROBING_FILES = ("per_model", "control", "transfer", "cosine", "ablation")
REDUCERS = {"min": min, "max": max, "first": lambda xs: xs[0], "last": lambda xs: xs[-1]}


def _load_dir(directory: Path) -> dict[str, Any]:
    return {p.stem: read_json(p) for p in sorted(directory.glob("*.json"))} if directory.is_dir() else {}


@dataclass
class Results:
    """The loaded outputs of every upstream stage, plus where the verdicts live for per-sample joins."""

    tree: dict[str, Any]
    verdicts_dir: Path | None = None
    _verdicts: dict[str, dict[str, dict]] = field(default_factory=dict)

    def get(self, path: str) -> Any:
        """The value at `path`, or None when any part of it is missing."""
        if "|" in path:
            return next((v for alt in path.split("|") if (v := self.get(alt)) is not None), None)
        node: Any = self.tree
        for segment in path.split("."):
            node = _step(node, segment)
            if node is None:
                return None
        return node

    def number(self, path: str) -> float | None:
        """The value at `path` if it is a finite number (bools excluded), else None."""
        value = self.get(path)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return None
        return float(value)

    def seed_range(self, path: str) -> tuple[float, float] | None:
        """[min, max] of a headline metric across the runs of the committed seed sweep, where it has one."""
        parts = path.split(".")
        if parts[0] != "metrics" or len(parts) != 3:
            return None
        stats = self.get(f"seeds.{parts[1]}.{parts[2]}")
        return (stats["min"], stats["max"]) if stats else None

    def ci(self, path: str) -> tuple[float, float] | None:
        """The confidence interval that belongs to `path`, where the producing stage wrote one."""
        parts = path.split(".")
        if parts[0] == "metrics" and len(parts) == 3:
            bounds = self.get(f"metrics.{parts[1]}.ci.{parts[2]}")
        elif parts[0] == "probing" and parts[2:3] in (["per_model"], ["transfer"]) and parts[-1] == "peak_auroc":
            layer = self.get(".".join([*parts[:-1], "peak_layer"]))
            base = ".".join([*parts[:-1], "per_layer"])
            lo, hi = self.get(f"{base}.ci_lower"), self.get(f"{base}.ci_upper")
            ok = isinstance(layer, int) and isinstance(lo, list) and isinstance(hi, list)
            bounds = [lo[layer], hi[layer]] if ok and 0 <= layer < min(len(lo), len(hi)) else None
        else:
            return None
        if isinstance(bounds, list | tuple) and len(bounds) == 2 and all(isinstance(b, int | float) for b in bounds):
            return float(bounds[0]), float(bounds[1])
        return None

    def verdicts(self, model: str) -> dict[str, dict]:
        """Per-sample verdict rows of `model`, keyed by item_id (empty when the file is absent)."""
        if model not in self._verdicts:
            path = self.verdicts_dir / f"{model}.jsonl" if self.verdicts_dir else None
            self._verdicts[model] = {r["item_id"]: r for r in iter_jsonl(path)} if path and path.is_file() else {}
        return self._verdicts[model]


def _step(node: Any, segment: str) -> Any:
    if isinstance(node, Mapping):
        if segment in node:
            return node[segment]
        if "=" in segment:
            key, _, wanted = segment.partition("=")
            xs = node.get(key)
            if isinstance(xs, list):
                for i, x in enumerate(xs):
                    if str(x) == wanted or (isinstance(x, int | float) and _same_number(x, wanted)):
                        return {k: v[i] for k, v in node.items() if isinstance(v, list) and len(v) > i}
            return None
        if "_vs_" in segment:
            a, _, b = segment.partition("_vs_")
            return node.get(f"{b}_vs_{a}")
        return None
    if isinstance(node, list):
        if segment in REDUCERS:
            values = [x for x in node if isinstance(x, int | float) and math.isfinite(x)]
            return REDUCERS[segment](values) if values else None
        if segment.lstrip("-").isdigit():
            i = int(segment)
            return node[i] if -len(node) <= i < len(node) else None
    return None


def _same_number(x: float, text: str) -> bool:
    try:
        return float(text) == float(x)
    except ValueError:
        return False


def load_results(cfg: Config, join: Mapping[str, Any] | None = None, root: Path = Path(".")) -> Results:
    """Read every input the report uses; only a missing metrics directory is fatal."""
    res = root / cfg.paths.results
    metrics_dir = res / "metrics"
    if not metrics_dir.is_dir() or not any(metrics_dir.glob("*.json")):
        raise MissingInputError(f"{metrics_dir}: no metrics files (run the `score` stages first: `dvc repro score`)")
    tree: dict[str, Any] = {
        "metrics": _load_dir(metrics_dir),
        "detail": _load_dir(res / "metrics_detail"),
        "probing": {run: _probing_run(res / "probing" / run) for run in probing_result_runs(cfg)},
        "train": _load_dir(res / "train"),
        "curves": _load_dir(res / "curves"),
    }
    prepared = root / cfg.paths.prepared / "MANIFEST.json"
    if prepared.is_file():
        rows = read_json(prepared).get("rows", {})
        # file names carry dots, which key paths split on: address them by stem
        tree["prepared"] = {"rows": {name.removesuffix(".jsonl"): n for name, n in rows.items()}}
    tree["params"] = cfg.model_dump(mode="json")
    calibration = root / calibration_path(cfg)
    if calibration.is_file():
        tree["train"]["rm_calibration"] = read_json(calibration)
    if cfg.report.seed_sweep is not None and (root / cfg.report.seed_sweep).is_file():
        tree["seeds"] = reading_summary(read_json(root / cfg.report.seed_sweep))
    results = Results(tree, verdicts_dir=res / "verdicts")
    if join:
        tree["derived"] = {"join": join_counts(results, **join)}
    return results


def _probing_run(directory: Path) -> dict[str, Any]:
    paths = {name: directory / f"{name}.json" for name in PROBING_FILES}
    return {name: read_json(path) for name, path in paths.items() if path.is_file()}


def join_counts(
    results: Results, dataset: str, template: str, broken: str, recovered: str, others: list[str]
) -> dict[str, float] | None:
    """Per-sample join of post 2: of the `template` items every model answered, how often `recovered` fixed what
    `broken` got wrong, and how often `recovered` alone was correct (every model in `others` incorrect)."""
    verdicts = {m: results.verdicts(m) for m in [broken, recovered, *others]}
    if not all(verdicts.values()):
        return None
    common = set.intersection(*(set(v) for v in verdicts.values()))
    rows = verdicts[broken]
    items = sorted(i for i in common if rows[i].get("dataset") == dataset and rows[i].get("template") == template)
    if not items:
        return None

    def is_(model: str, item: str, verdict: str) -> bool:
        return verdicts[model][item].get("verdict") == verdict

    broken_wrong = [i for i in items if is_(broken, i, "incorrect")]
    fixed = [i for i in broken_wrong if is_(recovered, i, "correct")]
    alone = [i for i in items if is_(recovered, i, "correct") and all(is_(o, i, "incorrect") for o in others)]
    return {
        "n_items": len(items),
        "broken_incorrect": len(broken_wrong),
        "recovered_fraction": len(fixed) / len(broken_wrong) if broken_wrong else float("nan"),
        "recovered_count": len(fixed),
        "alone_correct": len(alone),
    }
