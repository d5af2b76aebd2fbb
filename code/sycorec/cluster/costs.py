"""The planned stages of a run and their estimated GPU-hours, from slurm/costs.yaml (each figure says its source).

A job holds its GPUs for the stage's own wall time, for loading a model it needs (the 72B judge) and for DVC hashing
its outputs when it commits them; `--plan` counts all three.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sycorec.cluster import slurm as jobs
from sycorec.config import Config, read_mapping

COSTS_FILE = "costs.yaml"


@dataclass(frozen=True)
class StageCost:
    stage: str
    gpus: int
    hours: float | None  # None: no figure (a CPU stage)
    source: str
    load_hours: float = 0.0  # loading a model before the work starts (costs.yaml `loads`)
    hash_hours: float = 0.0  # DVC hashing the outputs at commit (costs.yaml `dvc_hash`)

    @property
    def gpu_hours(self) -> float:
        return ((self.hours or 0.0) + self.load_hours + self.hash_hours) * self.gpus


def load_costs(slurm_dir: Path = jobs.SLURM_DIR) -> dict[str, Any]:
    return read_mapping(slurm_dir / COSTS_FILE, "stages", "loads", "dvc_hash")


def stage_cost(stage: str, cfg: Config, costs: dict[str, Any], stage_map: dict) -> StageCost:
    figures = costs["stages"]
    key = stage if stage in figures else next((p for p in figures if fnmatch.fnmatchcase(stage, p)), None)
    gpus = jobs.stage_job(stage, cfg, stage_map).gpus
    if key is None:
        return StageCost(stage, gpus, None, "CPU" if not gpus else "no figure")
    entry = figures[key]
    load = float(costs["loads"][entry["load"]]["hours"]) if "load" in entry else 0.0
    hashing = float(entry.get("hashed_gb", 0.0)) / float(costs["dvc_hash"]["gb_per_s"]) / 3600
    return StageCost(stage, gpus, float(entry["hours"]), entry["source"], load, hashing)


def plan_costs(stages: Sequence[str], cfg: Config, slurm_dir: Path = jobs.SLURM_DIR) -> list[StageCost]:
    costs, stage_map = load_costs(slurm_dir), jobs.load_stage_map(slurm_dir)
    return [stage_cost(stage, cfg, costs, stage_map) for stage in stages]


def format_plan(rows: Sequence[StageCost], slurm_dir: Path = jobs.SLURM_DIR) -> str:
    """One row per stage (its own hours, model load, DVC hashing, GPU-hours, source), then the sources of the
    loads and the hashing rate (lines starting with `+`), then the total."""
    costs = load_costs(slurm_dir)
    width = max([len(r.stage) for r in rows] + [5])
    lines = [f"{'stage':<{width}}  gpus  hours   load   hash  GPU-h  source"]
    for r in rows:
        hours = "-" if r.hours is None else f"{r.hours:.2f}"
        extra = f"{r.load_hours:>5.2f}  {r.hash_hours:>5.3f}"
        lines.append(f"{r.stage:<{width}}  {r.gpus:>4}  {hours:>5}  {extra}  {r.gpu_hours:>5.2f}  {r.source}")
    for name, load in costs["loads"].items():
        lines.append(f"+ load: {name} {load['hours']} h per job ({load['source']})")
    rate = costs["dvc_hash"]
    lines.append(f"+ hash: DVC hashes a job's outputs at {rate['gb_per_s']} GB/s ({rate['source']})")
    total = sum(r.gpu_hours for r in rows)
    lines.append(f"{len(rows)} stages, {sum(1 for r in rows if r.gpus)} on GPUs: {total:.1f} GPU-hours in total")
    return "\n".join(lines)
