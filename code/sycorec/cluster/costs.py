"""The planned stages of a run and their estimated GPU-hours, from slurm/costs.yaml (each figure says its source)."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sycorec.cluster import slurm as jobs
from sycorec.config import Config, read_mapping

COSTS_FILE = "costs.yaml"


@dataclass(frozen=True)
class StageCost:
    stage: str
    gpus: int
    hours: float | None  # None: no figure (a CPU stage)
    source: str

    @property
    def gpu_hours(self) -> float:
        return (self.hours or 0.0) * self.gpus


def load_costs(slurm_dir: Path = jobs.SLURM_DIR) -> dict[str, dict]:
    return read_mapping(slurm_dir / COSTS_FILE, "stages")["stages"]


def stage_cost(stage: str, cfg: Config, costs: dict[str, dict], stage_map: dict) -> StageCost:
    key = stage if stage in costs else next((p for p in costs if fnmatch.fnmatchcase(stage, p)), None)
    gpus = jobs.stage_job(stage, cfg, stage_map).gpus
    if key is None:
        return StageCost(stage, gpus, None, "CPU" if not gpus else "no figure")
    return StageCost(stage, gpus, float(costs[key]["hours"]), costs[key]["source"])


def plan_costs(stages: Sequence[str], cfg: Config, slurm_dir: Path = jobs.SLURM_DIR) -> list[StageCost]:
    costs, stage_map = load_costs(slurm_dir), jobs.load_stage_map(slurm_dir)
    return [stage_cost(stage, cfg, costs, stage_map) for stage in stages]


def format_plan(rows: Sequence[StageCost]) -> str:
    width = max([len(r.stage) for r in rows] + [5])
    lines = [f"{'stage':<{width}}  gpus  hours  GPU-h  source"]
    for r in rows:
        hours = "-" if r.hours is None else f"{r.hours:.2f}"
        lines.append(f"{r.stage:<{width}}  {r.gpus:>4}  {hours:>5}  {r.gpu_hours:>5.2f}  {r.source}")
    total = sum(r.gpu_hours for r in rows)
    lines.append(f"{len(rows)} stages, {sum(1 for r in rows if r.gpus)} on GPUs: {total:.1f} GPU-hours in total")
    return "\n".join(lines)
