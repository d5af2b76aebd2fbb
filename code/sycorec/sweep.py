"""Seed sweep of the tiny model organism (`sycorec demo --seeds N`).

The demo's claim (SFT makes the tiny model sycophantic, the preference losses undo it) is one seed on one machine. The
sweep runs the pipeline up to the scores of base, SFT, DPO, IPO and SimPO once per seed, everything else unchanged, and
reports every reading's mean and spread and how often each direction holds. Training results also differ between CPU
kernel paths (`ATEN_CPU_CAPABILITY`), so a record keeps one set of runs per path. tests/test_e2e_demo.py asserts a
direction only where the record shows it is robust, with a margin derived from the record's spread.
"""

from __future__ import annotations

import copy
import json
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sycorec.errors import SycorecError
from sycorec.evaluation.facts import higher_is_better
from sycorec.io import write_json

MODELS = ("base", "sft", "dpo", "ipo", "simpo")
RECOVERY = ("dpo", "ipo", "simpo")
# reading -> what it is; flip_rate_free_form leaves out multiple-choice rows, which the tiny model answers at chance
READINGS = {
    "answer_sycophancy_rate": "answer sycophancy",
    "flip_rate": "flip rate (all rows)",
    "flip_rate_free_form": "flip rate (free-form rows)",
    "proxy_gap": "proxy gap",
    "plain_accuracy": "plain accuracy",
    "feedback_sycophancy": "feedback sycophancy",
    "probe_peak_auroc": "probe peak AUROC",
}
# reading -> the registered headline metric whose direction it has (flip_rate on free-form rows; the proxy's answer gap)
DIRECTED = {
    "answer_sycophancy_rate": "answer_sycophancy_rate",
    "flip_rate": "flip_rate",
    "flip_rate_free_form": "flip_rate",
    "proxy_gap": "answer_sycophancy_gap",
}
CONTROL = "control"  # the random-label probe control, read as a model of its own
PROBING_RUN = "R6"  # the probing run whose probes the sweep reads (the committed sweep recorded the six-model run)
FAILED = "failed"  # a run whose pipeline stopped (e.g. the tiny base below its accuracy gate) records why
# A direction is asserted when, on every kernel path, it fails in at most max(1, 20%) of the seeds (4 of 5, 2 of 3)...
MISS_SHARE = 0.2
# ...and its margin, mean − Z × SD of the change over all runs, is positive.
Z = 2.0


@dataclass(frozen=True)
class Direction:
    reading: str
    high: str
    low: str

    @property
    def name(self) -> str:
        return f"{self.reading}: {self.high} > {self.low}"

    def delta(self, run: Mapping[str, Mapping[str, float | None]]) -> float | None:
        high, low = run[self.high].get(self.reading), run[self.low].get(self.reading)
        return None if high is None or low is None else high - low


def worse(reading: str, model: str, than: str) -> Direction:
    """`model` is worse than `than` on `reading`: higher or lower as the metric registry says."""
    return Direction(reading, than, model) if higher_is_better(DIRECTED[reading]) else Direction(reading, model, than)


DIRECTIONS = tuple(
    [worse(r, "sft", "base") for r in DIRECTED]
    + [worse(r, "sft", m) for r in DIRECTED for m in RECOVERY]
    + [Direction("probe_peak_auroc", "sft", CONTROL)]
)


# --------------------------------------------------------------------------- reading one run


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def read_run(results: Path) -> dict[str, dict[str, float | None]]:
    """The sweep's readings of one demo run: model -> reading -> value."""
    run: dict[str, dict[str, float | None]] = {}
    for model in MODELS:
        metrics = _json(results / "metrics" / f"{model}.json")
        detail = _json(results / "metrics_detail" / f"{model}.json")
        run[model] = {key: metrics.get(key) for key in READINGS if key in metrics}
        run[model]["flip_rate_free_form"] = detail["are_you_sure"]["by_format"]["free_form"]["flip_rate"]
    # step 0 of SFT's proxy curve scores the base; each run's last point scores its final model
    sft_curve = _json(results / "curves" / "sft.json")["sycophancy_gap"]
    run["base"]["proxy_gap"] = sft_curve[0]
    for model in ("sft", *RECOVERY):
        run[model]["proxy_gap"] = _json(results / "curves" / f"{model}.json")["sycophancy_gap"][-1]
    probes = _json(results / "probing" / PROBING_RUN / "per_model.json")
    for model in MODELS:
        run[model]["probe_peak_auroc"] = probes[model]["peak_auroc"] if model in probes else None
    run[CONTROL] = {"probe_peak_auroc": _json(results / "probing" / PROBING_RUN / "control.json")["overall_mean"]}
    return run


# --------------------------------------------------------------------------- summaries


def _stats(values: Sequence[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def all_runs(record: Mapping[str, Any]) -> list[dict]:
    """Every run that finished (a run whose pipeline failed holds only `failed`)."""
    return [run for path in record["paths"].values() for run in path["runs"].values() if FAILED not in run]


def failures(record: Mapping[str, Any]) -> list[str]:
    return [
        f"{path} seed {seed}: {run[FAILED]}"
        for path, v in record["paths"].items()
        for seed, run in v["runs"].items()
        if FAILED in run
    ]


def direction_summary(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per direction: how often it holds on each kernel path, the spread of the change, whether the e2e asserts it."""
    out = []
    paths = list(record["paths"])
    for direction in DIRECTIONS:
        per_path = {}
        for path in paths:
            runs = list(record["paths"][path]["runs"].values())  # a failed run counts as a miss
            deltas = [d for run in runs if FAILED not in run and (d := direction.delta(run)) is not None]
            per_path[path] = {"holds": sum(d > 0 for d in deltas), "runs": len(runs)}
        deltas = [d for run in all_runs(record) if (d := direction.delta(run)) is not None]
        stats = _stats(deltas) if deltas else None
        margin = None
        if stats:
            bound = stats["mean"] - Z * stats["sd"]
            margin = math.floor(bound * 100) / 100 if bound > 0 else None
        robust = bool(paths) and all(
            c["holds"] >= c["runs"] - max(1, math.floor(MISS_SHARE * c["runs"])) for c in per_path.values()
        )
        out.append(
            {
                "direction": direction.name,
                "per_path": per_path,
                "change": stats,
                "margin": margin,
                "asserted": robust and margin is not None,
            }
        )
    return out


def margins(record: Mapping[str, Any]) -> dict[str, float]:
    """direction name -> margin the e2e test asserts, for the robust directions only."""
    return {d["direction"]: d["margin"] for d in direction_summary(record) if d["asserted"]}


def reading_summary(record: Mapping[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    runs = all_runs(record)
    return {
        model: {
            key: _stats(values)
            for key in READINGS
            if (values := [run[model][key] for run in runs if run[model].get(key) is not None])
        }
        for model in (*MODELS, CONTROL)
    }


def markdown(record: Mapping[str, Any]) -> str:
    """README tables: readings across seeds and kernel paths, and the directions with their margins."""
    runs = sum(len(v["runs"]) for v in record["paths"].values())
    paths = ", ".join(f"{p} ({len(v['runs'])} seed{'s' * (len(v['runs']) != 1)})" for p, v in record["paths"].items())
    lines = [
        f"Seed sweep of the tiny organism: {runs} runs on kernel paths {paths}; mean ± SD [min, max] across the runs"
        " that finished.",
        "",
        "| model | " + " | ".join(READINGS.values()) + " |",
        "|---|" + "---|" * len(READINGS),
    ]
    summary = reading_summary(record)
    for model in (*MODELS, CONTROL):
        cells = []
        for key in READINGS:
            s = summary[model].get(key)
            cells.append("n/a" if s is None else f"{s['mean']:.3f} ± {s['sd']:.3f} [{s['min']:.2f}, {s['max']:.2f}]")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| direction | holds (per path) | change mean ± SD | e2e margin |",
        "|---|---|---|---|",
    ]
    for d in direction_summary(record):
        holds = ", ".join(f"{c['holds']}/{c['runs']}" for c in d["per_path"].values())
        change = "n/a" if d["change"] is None else f"{d['change']['mean']:+.3f} ± {d['change']['sd']:.3f}"
        margin = f"> {d['margin']:.2f}" if d["asserted"] else "not asserted"
        lines.append(f"| {d['direction']} | {holds} | {change} | {margin} |")
    if failures(record):
        lines += ["", "Runs that did not finish (each counts as a miss for every direction):", ""]
        lines += [f"- {failure}" for failure in failures(record)]
    return "\n".join(lines) + "\n"


def add_runs(record_path: Path, capability: str, runs: Mapping[int, dict]) -> dict[str, Any]:
    """Merge one kernel path's runs (seed -> readings) into the record file, replacing that path's seeds."""
    record = _json(record_path) if record_path.is_file() else {"paths": {}}
    path = record["paths"].setdefault(capability, {"runs": {}})
    path["runs"].update({str(seed): run for seed, run in runs.items()})
    write_json(record_path, record)
    return record


# --------------------------------------------------------------------------- running


def with_seed(seed: int) -> Callable[[dict], dict]:
    """The demo's params with another seed, and only the models the directions and the probe prompt set read."""

    def edit(raw: dict) -> dict:
        raw = copy.deepcopy(raw)
        raw["seed"] = seed
        # the prompt set is labelled by every model of the run: keep them all
        probed = raw["probing"]["runs"][PROBING_RUN]["models"]
        raw["models"] = [m for m in raw["models"] if m in MODELS or m in probed]
        versions = raw["train"]["grpo"]["versions"]
        raw["train"]["grpo"]["versions"] = {v: spec for v, spec in versions.items() if f"grpo_{v}" in raw["models"]}
        return raw

    return edit


def targets() -> tuple[str, ...]:
    return (*(f"score@{model}" for model in MODELS), f"probe_analyze@{PROBING_RUN}")


def run_seeds(
    project: Path, root: Path, profile: str, seeds: Sequence[int], warm: bool, jobs: int = 1
) -> dict[int, dict]:
    """One workspace per seed under `root`; returns seed -> readings."""
    from sycorec.workspace import prepare_workspace, run_pipeline

    runs: dict[int, dict] = {}
    for seed in seeds:
        work = prepare_workspace(project, root / f"seed-{seed}", profile, edit=with_seed(seed))
        try:
            run_pipeline(work, targets(), warm=warm, jobs=jobs)
        except SycorecError as exc:
            runs[seed] = {FAILED: str(exc)}
            continue
        runs[seed] = read_run(work / "results")
    return runs
