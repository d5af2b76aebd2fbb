"""One sbatch job per DVC stage, submitted as a chain of SLURM dependencies; the login node only submits.

Each stage renders from slurm/<group>.sbatch.j2 (template and GPU count from slurm/stages.yaml; GPU counts may point
at params keys so they follow the config) and runs `dvc --wait-for-lock repro --single-item <stage>`: DVC holds its
repo lock only while it collects stages and commits results, so concurrent stage jobs in one workspace wait for it
instead of failing. A job starts when the jobs of its upstream stages completed (`afterok`), at most `max_parallel`
jobs of the chain at once; a stage whose job is already queued or running is not submitted again.
"""

from __future__ import annotations

import contextlib
import fnmatch
import re
import shlex
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sycorec.config import Config, read_mapping
from sycorec.errors import ConfigError, SycorecError
from sycorec.io import write_text_atomic

SLURM_DIR = Path("slurm")
STAGES_FILE = "stages.yaml"
SCRIPT_DIR = Path("outputs/slurm")
LOG_DIR = SCRIPT_DIR / "logs"
# sacct states after which a job will not run again; anything else (PENDING, RUNNING, REQUEUED, ...) is still going.
# PREEMPTED is final: a requeued job shows REQUEUED/PENDING, so PREEMPTED means the cluster cancelled it.
FINAL_STATES = {
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE", "PREEMPTED"
}  # fmt: skip
JOB_PREFIX = "sycorec-"
CONTAINERS = ("apptainer", "none")
# An sbatch option as a site gives it (`--qos=high`, `--gres=gpu:h100:4`, `--nodelist=gpu[01-04]`): one option, no
# shell metacharacters, quotes or spaces, so that it means the same in a `#SBATCH` line, a log and a shell.
SBATCH_OPTION = re.compile(r"--?[A-Za-z][A-Za-z0-9-]*(=[A-Za-z0-9_.,:@%/+=\[\]-]*)?")


@dataclass(frozen=True)
class Site:
    """Where things live on the cluster (host paths) and the site's sbatch options."""

    repo: Path
    sif: Path
    hf_cache: Path
    log_dir: Path
    partition: str | None = None
    account: str | None = None
    extra_sbatch: tuple[str, ...] = ()
    hf_hub_cache: Path | None = None  # $HF_HUB_CACHE when it is set apart from $HF_HOME/hub
    container: str = "apptainer"  # or "none": the checkout's .venv on shared storage

    @property
    def hub_cache(self) -> Path:
        return self.hf_hub_cache or self.hf_cache / "hub"

    def sbatch_lines(self) -> list[str]:
        lines = [f"--partition={self.partition}"] if self.partition else []
        lines += [f"--account={self.account}"] if self.account else []
        return [sbatch_option(line) for line in lines + list(self.extra_sbatch)]


def sbatch_option(text: str) -> str:
    """One site or stage sbatch option, refused (before anything is submitted) unless it is one plain option."""
    if not SBATCH_OPTION.fullmatch(str(_one_line("sbatch option", text))):
        raise ConfigError(
            f"sbatch option {text!r}: give one option as --name=value, without spaces, quotes or shell characters"
        )
    return text


@dataclass(frozen=True)
class StageJob:
    stage: str
    group: str
    template: str
    gpus: int
    cpus: int
    mem_gb: int
    time: str
    serial: bool = False  # jobs of this family never run at once (they append to one shared cache)
    gres_type: str | None = None  # a typed GPU request, gpu:<type>:<n> (e.g. the 72B judge on 80 GB GPUs)
    sbatch: tuple[str, ...] = ()  # the stage's own sbatch options (after the site's, so they win)

    @property
    def gres(self) -> str:
        return f"gpu:{self.gres_type}:{self.gpus}" if self.gres_type else f"gpu:{self.gpus}"


def load_stage_map(slurm_dir: Path = SLURM_DIR) -> dict[str, Any]:
    return read_mapping(slurm_dir / STAGES_FILE)


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


def stage_entry(stage: str, stage_map: dict[str, Any]) -> dict[str, Any]:
    """The stage's entry of slurm/stages.yaml: exact name first, then the first matching `name@*` pattern."""
    stages = stage_map["stages"]
    key = stage if stage in stages else next((p for p in stages if fnmatch.fnmatchcase(stage, p)), None)
    if key is None:
        raise ConfigError(f"stage {stage!r} has no SLURM mapping in slurm/stages.yaml (known: {', '.join(stages)})")
    return stages[key]


def stage_job(stage: str, cfg: Config, stage_map: dict[str, Any]) -> StageJob:
    """The job shape of one DVC stage: its group's, with the stage entry's own `time`, `gres_type`, `constraint`
    and `sbatch` options over it."""
    entry = stage_entry(stage, stage_map)
    group = stage_map["groups"][entry["group"]]
    spec = {**group, **entry}
    gpus = _gpus(entry["gpus"], stage, cfg)
    if gpus:
        cpus, mem_gb = group["cpus_per_gpu"] * gpus, group["mem_per_gpu_gb"] * gpus
    else:
        cpus, mem_gb = group.get("cpus", 8), group.get("mem_gb", 32)
    options = [f"--constraint={spec['constraint']}"] if spec.get("constraint") else []
    options += list(spec.get("sbatch", []))
    return StageJob(
        stage,
        entry["group"],
        group["template"],
        gpus,
        cpus,
        mem_gb,
        spec["time"],
        bool(entry.get("serial")),
        spec.get("gres_type"),
        tuple(sbatch_option(str(option)) for option in options),
    )


def stage_command(stage: str) -> list[str]:
    return ["dvc", "--wait-for-lock", "repro", "--single-item", stage]


def job_name(stage: str) -> str:
    return stage.replace("@", "-")


def _one_line(name: str, value: object) -> object:
    """Refuse values that could break out of a `#SBATCH` line or a comment (shell contexts are quoted as well)."""
    text = str(value)
    if not text.isprintable():  # newlines, NUL and other control characters
        raise ConfigError(f"{name} {text!r}: control characters cannot go into an sbatch script")
    return value


def render(stage: str, cfg: Config, site: Site, slurm_dir: Path = SLURM_DIR) -> str:
    """The sbatch script of one DVC stage. Deterministic: same inputs, same bytes."""
    import jinja2

    stage_map = load_stage_map(slurm_dir)
    job = stage_job(stage, cfg, stage_map)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(slurm_dir)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["q"] = lambda value: shlex.quote(str(value))
    if site.container not in CONTAINERS:
        raise ConfigError(f"container {site.container!r}: choose one of {', '.join(CONTAINERS)}")
    requeue = stage_map["requeue"]
    values = {
        "stage": stage,
        "group": job.group,
        "job_name": JOB_PREFIX + job_name(stage),
        "gpus": job.gpus,
        "gres": sbatch_option(f"--gres={job.gres}").partition("=")[2],
        "cpus": job.cpus,
        "mem": f"{job.mem_gb}G",
        "time": job.time,
        "log_dir": site.log_dir,
        "extra_sbatch": site.sbatch_lines() + list(job.sbatch),
        "container": site.container,
        "repo": site.repo,
        "sif": site.sif,
        "hf_cache": site.hf_cache,
        "hf_hub_cache": site.hub_cache,
        "command": shlex.join(stage_command(stage)),
        "max_restarts": int(requeue["max_restarts"]),
        "stop_grace_s": int(requeue["stop_grace_s"]),
    }
    for name, value in values.items():
        if not isinstance(value, list):
            _one_line(name, value)
    return env.get_template(job.template).render(**values)


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


def plan_graph(root: Path, targets: Sequence[str], skip_up_to_date: bool = True) -> list[tuple[str, list[str]]]:
    """The stages `dvc repro targets` would run, dependencies first, each with the planned stages it directly needs:
    the targets' upstream closure in DVC's order, without stages that are up to date and have no re-running stage
    upstream (when `skip_up_to_date`)."""
    from dvc.repo import Repo
    from dvc.repo.reproduce import collect_stages, get_active_graph, plan_repro
    from dvc.stage import PipelineStage

    # DVC resolves target names against the working directory, so a caller elsewhere (the sweep runs from the
    # project, whose dvc.yaml has the same stage names) would plan another repository's stages
    with contextlib.chdir(root), Repo(".") as repo, repo.lock:  # stage.changed() reads the workspace under the lock
        graph = get_active_graph(repo.index.graph)  # edges point from a stage to the stages it depends on
        order = [s for s in plan_repro(graph, collect_stages(repo, targets)) if isinstance(s, PipelineStage)]
        chosen: set = set()
        for stage in order:
            if not skip_up_to_date or chosen.intersection(graph.successors(stage)) or stage.changed():
                chosen.add(stage)
        return [
            (stage.name, sorted(up.name for up in graph.successors(stage) if up in chosen))
            for stage in order
            if stage in chosen
        ]


def plan(root: Path, targets: Sequence[str], skip_up_to_date: bool = True) -> list[str]:
    return [name for name, _ in plan_graph(root, targets, skip_up_to_date)]


def check_stages(stages: Sequence[str], root: Path) -> None:
    names = dvc_stage_names(root)
    if names is None:
        return
    unknown = [stage for stage in stages if stage not in names]
    if unknown:
        raise ConfigError(f"not DVC stages of {root / 'dvc.yaml'}: {', '.join(unknown)}")


Runner = Callable[..., subprocess.CompletedProcess]


def _slurm(cmd: list[str], runner: Runner) -> subprocess.CompletedProcess:
    try:
        done = runner(cmd, capture_output=True, text=True)
    except FileNotFoundError:
        raise SycorecError(f"{cmd[0]} not found: run `sycorec slurm submit` on a SLURM login node") from None
    if done.returncode:
        raise SycorecError(f"{shlex.join(cmd)} failed: {(done.stderr or done.stdout).strip() or 'no output'}")
    return done


def active_jobs(runner: Runner = subprocess.run) -> dict[str, str]:
    """Job name -> job id of this user's queued or running jobs (what a re-run must not submit again)."""
    out = _slurm(["squeue", "--me", "--noheader", "--format=%i|%j|%T"], runner).stdout
    jobs = {}
    for line in out.splitlines():
        job_id, _, rest = line.strip().partition("|")
        name = rest.rpartition("|")[0]
        if name.startswith(JOB_PREFIX):
            jobs[name] = job_id.split("_")[0]
    return jobs


@dataclass(frozen=True)
class Planned:
    stage: str
    upstream: tuple[str, ...]  # planned stages it needs
    script: str
    serial: bool = False


@dataclass(frozen=True)
class Submitted:
    stage: str
    job_id: str
    new: bool  # False: the stage's job was already queued or running
    after: tuple[str, ...]  # job ids it waits for


def submit(
    planned: Sequence[Planned],
    site: Site,
    script_dir: Path = SCRIPT_DIR,
    runner: Runner = subprocess.run,
    max_parallel: int = 1,
    on_submit: Callable[[Submitted], None] = lambda job: None,
) -> list[Submitted]:
    """Submit the planned stages in order as a dependency chain and return at once.

    A job waits for its upstream stages' jobs (`afterok`; `--kill-on-invalid-dep` cancels it when one fails), for
    the job `max_parallel` places before it in the order, so at most `max_parallel` of the chain run at a time (1: one
    after another), and, when serial, for the previous serial job. A stage whose job is already queued or running
    (same job name) keeps that job and is not submitted again.
    """
    if max_parallel < 1:
        raise SycorecError("--max-parallel must be at least 1")
    active = active_jobs(runner)
    site.log_dir.mkdir(parents=True, exist_ok=True)
    ids: dict[str, str] = {}
    chain: list[str] = []
    serial: list[str] = []
    done: list[Submitted] = []
    for item in planned:
        stage = item.stage
        name = JOB_PREFIX + job_name(stage)
        after = [ids[up] for up in item.upstream if up in ids]
        if len(chain) >= max_parallel:
            after.append(chain[-max_parallel])
        if item.serial and serial:
            after.append(serial[-1])
        after = list(dict.fromkeys(after))
        if name in active:
            job = Submitted(stage, active[name], False, ())
        else:
            path = script_dir / f"{job_name(stage)}.sbatch"
            write_text_atomic(path, item.script)
            cmd = ["sbatch", "--parsable"] + ([f"--dependency=afterok:{':'.join(after)}"] if after else [])
            out = _slurm([*cmd, str(path)], runner).stdout.strip()
            job_id = out.splitlines()[0].split(";")[0] if out else ""
            if not job_id:
                raise SycorecError(f"stage {stage}: sbatch printed no job id")
            job = Submitted(stage, job_id, True, tuple(after))
        ids[stage] = job.job_id
        chain.append(job.job_id)
        if item.serial:
            serial.append(job.job_id)
        done.append(job)
        on_submit(job)
    return done


def job_states(job_ids: Sequence[str], runner: Runner = subprocess.run) -> dict[str, str]:
    """sacct's state of each job (jobs sacct does not know yet are left out)."""
    cmd = ["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)]
    states = {}
    for line in _slurm(cmd, runner).stdout.splitlines():
        job_id, _, state = line.strip().partition("|")
        if job_id in job_ids and state:
            states[job_id] = state.split()[0]  # "CANCELLED by 123" -> CANCELLED
    return states


def wait(
    jobs: Sequence[Submitted],
    site: Site,
    runner: Runner = subprocess.run,
    poll_s: float = 60.0,
    sleep: Callable[[float], None] = time.sleep,
    on_done: Callable[[Submitted, str], None] = lambda job, state: None,
) -> None:
    """Poll sacct until every job completed; stop at the first job that ended otherwise (its dependents are
    cancelled by SLURM). A requeued job is not over until sacct says so."""
    pending = {job.job_id: job for job in jobs}
    while pending:
        for job_id, state in job_states(list(pending), runner).items():
            if state not in FINAL_STATES:
                continue
            job = pending.pop(job_id)
            if state != "COMPLETED":
                log = site.log_dir / f"{JOB_PREFIX}{job_name(job.stage)}-{job_id}.out"
                raise SycorecError(f"stage {job.stage}: job {job_id} ended {state}; see {log}")
            on_done(job, state)
        if pending:
            sleep(poll_s)
