"""Seed sweep of the tiny model organism (`sycorec demo --seeds N`): the pipeline up to the scores of base, SFT, DPO,
IPO and SimPO once per seed, its readings merged per CPU kernel path (`ATEN_CPU_CAPABILITY`) into a record that
report/sweep_record.py summarises (the demo's claim is otherwise one seed on one machine)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sycorec.errors import SycorecError
from sycorec.io import write_json
from sycorec.report.sweep_record import CONTROL, EXTRA_METHODS, FAILED, MODELS, READINGS

PROBING_RUN = "R6"  # the probing run whose probes the sweep reads (the committed sweep recorded the six-model run)


# --------------------------------------------------------------------------- reading one run


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def read_run(results: Path) -> dict[str, dict[str, float | None]]:
    """The sweep's readings of one demo run: model -> reading -> value."""
    run: dict[str, dict[str, float | None]] = {}
    models = [m for m in MODELS if (results / "metrics" / f"{m}.json").is_file()]  # the extra methods where run
    for model in models:
        metrics = _json(results / "metrics" / f"{model}.json")
        detail = _json(results / "metrics_detail" / f"{model}.json")
        run[model] = {key: metrics.get(key) for key in READINGS if key in metrics}
        run[model]["flip_rate_free_form"] = detail["are_you_sure"]["by_format"]["free_form"]["flip_rate"]
    # step 0 of SFT's proxy curve scores the base; each run's last point scores its final model
    sft_curve = _json(results / "curves" / "sft.json")["sycophancy_gap"]
    run["base"]["proxy_gap"] = sft_curve[0]
    for model in models[1:]:
        run[model]["proxy_gap"] = _json(results / "curves" / f"{model}.json")["sycophancy_gap"][-1]
    probes = _json(results / "probing" / PROBING_RUN / "per_model.json")
    for model in models:
        run[model]["probe_peak_auroc"] = probes[model]["peak_auroc"] if model in probes else None
    run[CONTROL] = {"probe_peak_auroc": _json(results / "probing" / PROBING_RUN / "control.json")["overall_mean"]}
    return run


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
        extra = [m for m in EXTRA_METHODS if m in raw["train"]]  # beyond the study: rows of the method table
        raw["train"]["preference"]["methods"] = [*raw["train"]["preference"]["methods"], *extra]
        raw["models"] = [*raw["models"], *extra]
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
    from sycorec.demo.workspace import prepare_workspace, run_pipeline

    runs: dict[int, dict] = {}
    for seed in seeds:
        work = prepare_workspace(project, root / f"seed-{seed}", profile, edit=with_seed(seed))
        try:
            run_pipeline(work, targets(), warm=warm, jobs=jobs)
        except SycorecError as exc:
            # the record is committed: name the sweep's folders relative to --dir, not by this machine's paths
            runs[seed] = {FAILED: str(exc).replace(f"{root.resolve()}/", "").replace(f"{root}/", "")}
            continue
        runs[seed] = read_run(work / "results")
    return runs
