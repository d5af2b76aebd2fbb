"""One sbatch job per DVC stage: render it from slurm/<group>.sbatch.j2, submit the jobs in order with `sbatch --wait`.

One stage per blocking job means only one `dvc repro` holds the repo lock at a time. Which template and how many
GPUs a stage gets comes from slurm/stages.yaml; GPU counts may point at params keys so they follow the config.
"""

from __future__ import annotations

import fnmatch
import shlex
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sycorec.config import Config
from sycorec.errors import ConfigError, SycorecError
from sycorec.io import write_text_atomic

SLURM_DIR = Path("slurm")
STAGES_FILE = "stages.yaml"
SCRIPT_DIR = Path("outputs/slurm")
LOG_DIR = SCRIPT_DIR / "logs"
# sacct states after which a job will not run again; anything else (PENDING, RUNNING, REQUEUED, ...) is still going.
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE"}


@dataclass(frozen=True)
class Site:
    """Where things live on the cluster (host paths) and the site's sbatch options."""

    repo: Path
    sif: Path
    hf_cache: Path
    dvc_cache: Path
    log_dir: Path
    partition: str | None = None
    account: str | None = None
    extra_sbatch: tuple[str, ...] = ()

    def sbatch_lines(self) -> list[str]:
        lines = [f"--partition={self.partition}"] if self.partition else []
        lines += [f"--account={self.account}"] if self.account else []
        return lines + list(self.extra_sbatch)


@dataclass(frozen=True)
class StageJob:
    stage: str
    group: str
    template: str
    gpus: int
    cpus: int
    mem_gb: int
    time: str


def load_stage_map(slurm_dir: Path = SLURM_DIR) -> dict[str, Any]:
    path = slurm_dir / STAGES_FILE
    if not path.is_file():
        raise ConfigError(f"{path}: not found (run from the repository root)")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _params_value(cfg: Config, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else getattr(node, part, None)
        if node is None:
            raise ConfigError(f"slurm/stages.yaml: params key {dotted!r} does not exist")
    return node


def _gpus(spec: int | str, stage: str, cfg: Config) -> int:
    if isinstance(spec, int):
        return spec
    item = stage.partition("@")[2]
    return int(_params_value(cfg, spec.format(item=item)))


def stage_job(stage: str, cfg: Config, stage_map: dict[str, Any]) -> StageJob:
    """The job shape of one DVC stage: exact name first, then the first matching `name@*` pattern."""
    stages = stage_map["stages"]
    key = stage if stage in stages else next((p for p in stages if fnmatch.fnmatchcase(stage, p)), None)
    if key is None:
        raise ConfigError(f"stage {stage!r} has no SLURM mapping in slurm/stages.yaml (known: {', '.join(stages)})")
    entry = stages[key]
    group = stage_map["groups"][entry["group"]]
    gpus = _gpus(entry["gpus"], stage, cfg)
    if gpus:
        cpus, mem_gb = group["cpus_per_gpu"] * gpus, group["mem_per_gpu_gb"] * gpus
    else:
        cpus, mem_gb = group.get("cpus", 8), group.get("mem_gb", 32)
    return StageJob(stage, entry["group"], group["template"], gpus, cpus, mem_gb, group["time"])


def stage_command(stage: str) -> list[str]:
    return ["dvc", "repro", "--single-item", stage]


def job_name(stage: str) -> str:
    return stage.replace("@", "-")


def render(stage: str, cfg: Config, site: Site, slurm_dir: Path = SLURM_DIR) -> str:
    """The sbatch script of one DVC stage. Deterministic: same inputs, same bytes."""
    import jinja2

    job = stage_job(stage, cfg, load_stage_map(slurm_dir))
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(slurm_dir)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["q"] = lambda value: shlex.quote(str(value))
    return env.get_template(job.template).render(
        stage=stage,
        group=job.group,
        job_name=job_name(stage),
        gpus=job.gpus,
        cpus=job.cpus,
        mem=f"{job.mem_gb}G",
        time=job.time,
        log_dir=site.log_dir,
        extra_sbatch=site.sbatch_lines(),
        repo=site.repo,
        sif=site.sif,
        hf_cache=site.hf_cache,
        dvc_cache=site.dvc_cache,
        command=shlex.join(stage_command(stage)),
    )


def has_pipeline(root: Path) -> bool:
    return (root / "dvc.yaml").is_file()


def dvc_stage_names(root: Path) -> set[str] | None:
    """Stage names (foreach items expanded) of root/dvc.yaml, or None when there is none yet."""
    if not has_pipeline(root):
        return None
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    with Repo(str(root)) as repo:  # pipeline stages only: a `.dvc` file tracks data, it runs nothing
        return {stage.name for stage in repo.index.stages if isinstance(stage, PipelineStage)}


def plan(root: Path, targets: Sequence[str], skip_up_to_date: bool = True) -> list[str]:
    """The stages `dvc repro targets` would run, dependencies first: the targets' upstream closure in DVC's order,
    without stages that are up to date and have no re-running stage upstream (when `skip_up_to_date`)."""
    from dvc.repo import Repo
    from dvc.repo.reproduce import collect_stages, get_active_graph, plan_repro
    from dvc.stage import PipelineStage

    with Repo(str(root)) as repo, repo.lock:  # stage.changed() reads the workspace under the repo lock
        graph = get_active_graph(repo.index.graph)  # edges point from a stage to the stages it depends on
        order = [s for s in plan_repro(graph, collect_stages(repo, targets)) if isinstance(s, PipelineStage)]
        chosen: set = set()
        for stage in order:
            if not skip_up_to_date or chosen.intersection(graph.successors(stage)) or stage.changed():
                chosen.add(stage)
        return [stage.name for stage in order if stage in chosen]


def check_stages(stages: Sequence[str], root: Path) -> None:
    names = dvc_stage_names(root)
    if names is None:
        return
    unknown = [stage for stage in stages if stage not in names]
    if unknown:
        raise ConfigError(f"not DVC stages of {root / 'dvc.yaml'}: {', '.join(unknown)}")


Runner = Callable[..., subprocess.CompletedProcess]


def _job_state(job_id: str, runner: Runner) -> str | None:
    try:
        out = runner(["sacct", "-X", "-n", "-P", "-o", "State", "-j", job_id], capture_output=True, text=True)
    except OSError:
        return None
    first = out.stdout.strip().splitlines()[0] if out.stdout.strip() else ""
    return first.split()[0] if first else None


def wait_final(job_id: str, runner: Runner, poll_s: float = 60.0) -> str | None:
    """A requeued job makes `sbatch --wait` return early; keep polling sacct until the job is really over."""
    while (state := _job_state(job_id, runner)) is not None and state not in FINAL_STATES:
        time.sleep(poll_s)
    return state


def submit(
    scripts: Sequence[tuple[str, str]],
    site: Site,
    script_dir: Path = SCRIPT_DIR,
    runner: Runner = subprocess.run,
    poll_s: float = 60.0,
    on_done: Callable[[str, str], None] = lambda stage, job_id: None,
) -> list[str]:
    """Write and submit each (stage, script) in order, each blocking until its job is over; stop at a failure."""
    site.log_dir.mkdir(parents=True, exist_ok=True)
    job_ids = []
    for stage, text in scripts:
        path = script_dir / f"{job_name(stage)}.sbatch"
        write_text_atomic(path, text)
        try:
            done = runner(["sbatch", "--parsable", "--wait", str(path)], capture_output=True, text=True)
        except FileNotFoundError:
            raise SycorecError("sbatch not found: run `sycorec slurm submit` on a SLURM login node") from None
        job_id = done.stdout.strip().splitlines()[0].split(";")[0] if done.stdout.strip() else ""
        if not job_id:
            raise SycorecError(f"stage {stage}: sbatch did not submit ({done.stderr.strip() or 'no output'})")
        state = "COMPLETED" if done.returncode == 0 else wait_final(job_id, runner, poll_s)
        if state != "COMPLETED":
            log = site.log_dir / f"sycorec-{job_name(stage)}-{job_id}.out"
            raise SycorecError(f"stage {stage}: job {job_id} ended {state or 'with an error'}; see {log}")
        on_done(stage, job_id)
        job_ids.append(job_id)
    return job_ids
