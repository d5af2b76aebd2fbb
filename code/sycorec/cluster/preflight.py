"""Preflight: before the first stage of a full-scale run, everything it will need is checked, and nothing is written.

One module for both entry points: `sycorec reproduce` (local `dvc repro`) and `sycorec slurm submit` (login node).
Each missing thing is one line with the command that fixes it (`make data`, the exact `sycorec prefetch --only …`).
What a stage needs follows the profile's backends: the tiny profile (synthetic world, rule judge, transformers on CPU)
needs no data download, no hub snapshot and no GPU, so its checks are empty and cost nothing.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sycorec.cluster import slurm as jobs
from sycorec.cluster.prefetch import PARAM_KEYS, HubItem
from sycorec.config import Config
from sycorec.errors import SycorecError
from sycorec.hub import PIN_COMMAND, is_commit, prefetch_command, visible_gpus

# Stages that load the base model (weights or tokenizer) at full scale; the judge stages load the judge.
BASE_READERS = {"train_base", "train_sft", "train_pref", "train_rm", "rm_calibrate", "train_grpo", "relearn"}
BASE_READERS |= {"generate", "probe_extract", "probe_beyond"}
RAW_READERS = {"prepare", "train_base"}
# Stages that read the study's training data (fetched into data/raw at `data.training_data.hf_revision`).
TRAINING_DATA_READERS = {"prepare"}
# What the image must share with HEAD when its commit differs: the code runs from the checkout, the rest is baked in.
IMAGE_INPUTS = ("requirements/cluster.lock", "docker", "Dockerfile", "apptainer.def", "pyproject.toml")


class PreflightError(SycorecError):
    """Something a planned stage needs is missing; the message has one line per missing thing."""


@dataclass(frozen=True)
class Needs:
    hub: tuple[HubItem, ...]
    raw_data: bool
    gpus: int


def _family(stage: str) -> str:
    return stage.partition("@")[0]


def stage_needs(stage: str, cfg: Config, stage_map: dict) -> Needs:
    """What one stage needs under this profile's backends (a CPU-forced backend needs no GPU and no snapshot)."""
    family = _family(stage)
    hub: list[HubItem] = []
    gpu = False
    if family in BASE_READERS and not cfg.is_tiny:
        hub.append(HubItem("base_model", cfg.base_model.name, "model", cfg.base_model.revision))
        gpu = family != "train_base"  # it only records which snapshot the others load
    if family == "judge" and cfg.judge.backend == "llm":
        hub.append(HubItem("judge", cfg.judge.model, "model", cfg.judge.revision))
        gpu = True
    if family in TRAINING_DATA_READERS and cfg.data.source == "fetch":
        training = cfg.data.training_data
        hub.append(HubItem("training_data", training.hf_dataset, "dataset", training.hf_revision))
    gpus = jobs.stage_job(stage, cfg, stage_map).gpus if gpu else 0
    return Needs(tuple(hub), family in RAW_READERS and cfg.data.source == "fetch", gpus)


def snapshot_problem(item: HubItem, hub_cache: Path | None) -> str | None:
    """Why `item` cannot be loaded offline from the cache, or None: the snapshot exists and, for a model, holds its
    config and every weight shard its index names."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    fix = f"run `{prefetch_command(item.repo_id)}` on the login node"
    try:
        path = Path(
            snapshot_download(
                item.repo_id,
                repo_type=item.repo_type,
                revision=item.revision,
                cache_dir=hub_cache,
                local_files_only=True,
            )
        )
    except LocalEntryNotFoundError:
        return f"{item.repo_type} {item.repo_id}@{item.revision} ({item.role}) is not in the HF cache: {fix}"
    if item.repo_type != "model":
        return None
    missing = [] if (path / "config.json").is_file() else ["config.json"]
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        missing += [shard for shard in shards if not (path / shard).is_file()]
    elif not any(path.glob("*.safetensors")):
        missing.append("*.safetensors")
    if missing:
        return f"model {item.repo_id}@{item.revision} ({item.role}): snapshot {path} lacks {', '.join(missing)}: {fix}"
    return None


def raw_data_problem(cfg: Config) -> str | None:
    """data/raw must hold every pinned input file, each matching its pin (the check `make data` ends with)."""
    from sycorec.data.fetch import load_pins, resolve, verify

    bad = []
    for item in resolve(load_pins(), cfg.data):
        path = cfg.paths.raw / item.pin.path
        if not path.is_file():
            bad.append(f"{item.pin.path} missing")
            continue
        problems = verify(item, path)[1]
        bad += [f"{item.pin.path}: {p}" for p in problems[:1]]
    if bad:
        shown = "; ".join(bad[:3]) + (f"; … {len(bad) - 3} more" if len(bad) > 3 else "")
        return f"{cfg.paths.raw} does not verify ({shown}): run `make data`"
    return None


def pin_problems(items: Sequence[HubItem], cfg: Config) -> list[str]:
    """At full scale every hub input is pinned to a commit: a branch name moves under a week-long run."""
    if cfg.is_tiny:
        return []
    return [
        f"{PARAM_KEYS[item.role]} is {item.revision!r}, not a commit: `{PIN_COMMAND} --only {item.repo_id}` writes "
        "the commit it resolves to into params.yaml (review and commit the diff)"
        for item in items
        if not is_commit(item.revision)
    ]


def _unique(items: Sequence[HubItem]) -> list[HubItem]:
    return list({(i.repo_type, i.repo_id, i.revision): i for i in items}.values())


def common_problems(stages: Sequence[str], cfg: Config, hub_cache: Path | None) -> tuple[list[str], int]:
    """Problems shared by both entry points, and the most GPUs any one stage needs."""
    stage_map = jobs.load_stage_map()
    needs = [stage_needs(stage, cfg, stage_map) for stage in stages]
    items = _unique([item for need in needs for item in need.hub])
    problems = pin_problems(items, cfg)
    if any(need.raw_data for need in needs) and (problem := raw_data_problem(cfg)):
        problems.append(problem)
    problems += [p for item in items if (p := snapshot_problem(item, hub_cache))]
    return problems, max((need.gpus for need in needs), default=0)


def check_local(stages: Sequence[str], cfg: Config) -> None:
    """`sycorec reproduce` on this machine: data, pins, cached snapshots and enough visible GPUs."""
    problems, gpus = common_problems(stages, cfg, None)
    if gpus and (found := visible_gpus()) < gpus:
        problems.append(f"the planned stages need {gpus} CUDA GPU(s) but {found} are visible: run on a GPU node")
    _raise(problems)


# ---- the SLURM side ------------------------------------------------------------------------------------------------


def image_problem(site: jobs.Site, root: Path) -> str | None:
    """The image exists and was built from HEAD, or from a commit whose image inputs (lock, recipes) equal HEAD's.

    `make sif` writes `<sif>.commit` beside the image; the jobs run the checkout's code, so only the baked-in
    environment has to match.
    """
    if not site.sif.is_file():
        return f"image {site.sif} not found: build it with `make sif` (or pass --sif)"
    sidecar = site.sif.with_name(site.sif.name + ".commit")
    if not sidecar.is_file():
        return f"{sidecar} not found (the commit the image was built from): rebuild with `make sif`"
    built = sidecar.read_text(encoding="utf-8").strip()
    head = _git(root, "rev-parse", "HEAD")
    if head is None or built == head:
        return None
    if _git(root, "diff", "--quiet", built, head, "--", *IMAGE_INPUTS, ok_codes=(0,)) is None:
        return f"image {site.sif} was built from {built[:12]} and its lock or recipes differ from HEAD: `make sif`"
    return None


def venv_problem(site: jobs.Site) -> str | None:
    """--container none runs the checkout's own .venv: it must be there (on storage the nodes share)."""
    dvc = site.repo / ".venv" / "bin" / "dvc"
    return None if dvc.is_file() else f"{dvc} not found (--container none runs the checkout's .venv): `make setup`"


def _git(root: Path, *args: str, ok_codes: tuple[int, ...] = (0,)) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
    except OSError:
        return None
    return done.stdout.strip() if done.returncode in ok_codes else None


def slurm_minutes(value: str) -> float | None:
    """A SLURM time (minutes, minutes:seconds, hours:minutes:seconds, days-hours[:minutes[:seconds]]) in minutes;
    None for UNLIMITED/INFINITE."""
    if value.upper() in {"UNLIMITED", "INFINITE"}:
        return None
    days, sep, rest = value.partition("-") if "-" in value else ("0", "", value)
    parts = [int(p) for p in rest.split(":")]
    if sep:
        hours, minutes, seconds = [*parts, 0, 0][:3]
    else:
        hours, minutes, seconds = {1: [0, parts[0], 0], 2: [0, *parts], 3: parts}[len(parts)]
    return int(days) * 1440 + hours * 60 + minutes + seconds / 60


def partition_limits(partition: str | None, runner: jobs.Runner = subprocess.run) -> tuple[str, dict[str, str]]:
    """`scontrol show partition` fields of the named (or the default) partition."""
    out = jobs._slurm(["scontrol", "show", "partition", "--oneliner", *([partition] if partition else [])], runner)
    for line in out.stdout.splitlines():
        fields = dict(tok.split("=", 1) for tok in line.split() if "=" in tok)
        if partition or fields.get("Default") == "YES":
            return fields.get("PartitionName", partition or "?"), fields
    raise SycorecError("scontrol shows no default partition: pass --partition")


def node_gpus(gres: str, gres_type: str | None) -> int:
    """GPUs per node in one sinfo %G value (`gpu:h100:4(S:0-1),shard:8`), of the given type when one is asked for."""
    best = 0
    for item in gres.split(","):
        parts = item.split("(")[0].split(":")
        typed = len(parts) == 3 and parts[1] == gres_type
        if parts[0] == "gpu" and len(parts) >= 2 and parts[-1].isdigit() and (gres_type is None or typed):
            best = max(best, int(parts[-1]))
    return best


def node_shapes(partition: str, runner: jobs.Runner) -> list[tuple[float, str]]:
    """(memory in MB, GRES) of the partition's node groups, from `sinfo`."""
    out = jobs._slurm(["sinfo", "--noheader", f"--partition={partition}", "--format=%m|%G"], runner).stdout
    shapes = []
    for line in out.splitlines():
        memory, _, gres = line.strip().partition("|")
        if memory.rstrip("+").isdigit():
            shapes.append((float(memory.rstrip("+")), gres))
    return shapes


def job_partition(site: jobs.Site, job: jobs.StageJob) -> str | None:
    """The partition the job goes to: the last --partition among the site's and the stage's options."""
    named = [line.split("=", 1)[1] for line in [*site.sbatch_lines(), *job.sbatch] if line.startswith("--partition=")]
    return named[-1] if named else None


def limit_problems(stages: Sequence[str], cfg: Config, site: jobs.Site, runner: jobs.Runner) -> list[str]:
    """Every job fits its partition: --time its MaxTime, --mem its MaxMemPerNode and a node's memory, and its GPUs
    (of the stage's type) a node's GRES."""
    stage_map = jobs.load_stage_map()
    problems: list[str] = []
    limits: dict[str | None, tuple[str, dict[str, str], list[tuple[float, str]]]] = {}
    for stage in stages:
        job = jobs.stage_job(stage, cfg, stage_map)
        partition = job_partition(site, job)
        if partition not in limits:
            try:
                name, fields = partition_limits(partition, runner)
                limits[partition] = (name, fields, node_shapes(name, runner))
            except SycorecError as err:  # off a SLURM host: one line, and the other checks still run
                return [*problems, str(err)]
        name, fields, shapes = limits[partition]
        max_minutes = slurm_minutes(fields.get("MaxTime", "UNLIMITED"))
        max_mem = fields.get("MaxMemPerNode", "UNLIMITED")
        if max_minutes is not None and (minutes := slurm_minutes(job.time)) and minutes > max_minutes:
            problems.append(f"{stage}: --time={job.time} exceeds partition {name}'s MaxTime={fields['MaxTime']}")
        if max_mem.upper() != "UNLIMITED" and job.mem_gb * 1024 > float(max_mem):
            problems.append(f"{stage}: --mem={job.mem_gb}G exceeds partition {name}'s MaxMemPerNode={max_mem}M")
        elif shapes and job.mem_gb * 1024 > (biggest := max(memory for memory, _ in shapes)):
            problems.append(f"{stage}: --mem={job.mem_gb}G exceeds every node of partition {name} ({biggest:.0f}M)")
        if job.gpus and shapes and job.gpus > max(node_gpus(gres, job.gres_type) for _, gres in shapes):
            found = ", ".join(sorted({gres for _, gres in shapes}))
            problems.append(f"{stage}: --gres={job.gres} fits no node of partition {name} (GRES: {found})")
    return problems


def dvc_cache_problem(root: Path) -> str | None:
    """The DVC cache lies inside the repository, the one bind a job has, and is the cache the login node uses: the
    planner and the jobs then see the same cache, and DVC can hardlink outputs to it (a hardlink cannot cross two
    mounts). A job reads only the repository's own config files (the image has no DVC config and HOME is /tmp)."""
    if not (root / ".dvc").is_dir():
        return None
    from configobj import ConfigObj
    from dvc.repo import Repo

    files = [root / ".dvc" / name for name in ("config", "config.local")]  # the local file wins
    configured = [ConfigObj(str(path)).get("cache", {}).get("dir") for path in files if path.is_file()]
    raw = next((value for value in reversed(configured) if value), None)
    in_job = (root / ".dvc" / (raw or "cache")).resolve()
    with Repo(str(root)) as repo:
        on_host = Path(repo.cache.local_cache_dir).resolve()
    if on_host == in_job and in_job.is_relative_to(root.resolve()) and not (raw and Path(raw).is_absolute()):
        return None
    return (
        f"the DVC cache {on_host} is not a relative path inside the repository {root} set in the repository's "
        "config: jobs see only the repository (at /work), so they would commit to another cache and every plan "
        "would submit finished stages again; `dvc cache dir --unset` (and --local, --global) to keep it in .dvc/cache"
    )


def _mount_of(path: Path, mountinfo: Path) -> tuple[str, set[str]]:
    """Filesystem type and mount + superblock options of the mount holding `path` (the longest mount point)."""
    best: tuple[int, str, set[str]] = (-1, "", set())
    for line in mountinfo.read_text(encoding="utf-8").splitlines():
        fields, _, tail = line.partition(" - ")  # id parent dev root point options [tags] - fstype source super
        _, _, _, _, point, options, *_ = fields.split()
        fstype, _source, super_options = tail.split()
        point = point.replace("\\040", " ")
        if path.is_relative_to(point) and len(point) > best[0]:
            best = (len(point), fstype, set(options.split(",")) | set(super_options.split(",")))
    return best[1], best[2]


BEEGFS_CLIENT_CONF = Path("/etc/beegfs/beegfs-client.conf")


def _local_flock(fstype: str, options: set[str], beegfs_conf: Path) -> str | None:
    """Why `flock` on this filesystem is not coherent across nodes, or None (assumed coherent)."""
    if fstype == "lustre" and "flock" not in options:
        return "a Lustre mount without -o flock (localflock/noflock) keeps flock local to each node"
    if fstype.startswith("nfs") and options & {"nolock", "local_lock=flock", "local_lock=all"}:
        return "an NFS mount with nolock/local_lock keeps flock local to each node"
    if fstype.startswith("beegfs"):
        conf = beegfs_conf.read_text(encoding="utf-8") if beegfs_conf.is_file() else ""
        if not re.search(r"^\s*tuneUseGlobalFileLocks\s*=\s*true\b", conf, flags=re.MULTILINE):
            return f"BeeGFS keeps flock local to each node unless {beegfs_conf} sets tuneUseGlobalFileLocks = true"
    return None


def flock_problem(
    root: Path,
    max_parallel: int,
    mountinfo: Path = Path("/proc/self/mountinfo"),
    beegfs_conf: Path = BEEGFS_CLIENT_CONF,
) -> str | None:
    """DVC's repo lock is `flock` on the repository: it must work there, and with jobs side by side on several nodes
    it must hold across nodes, or two jobs both take it and one `dvc.lock` update is lost."""
    probe = root / ".dvc" / "config" if (root / ".dvc" / "config").is_file() else root
    fd = os.open(probe, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    except OSError as exc:
        return f"flock fails on the repository's filesystem ({exc.strerror}): DVC cannot take its repo lock there"
    finally:
        os.close(fd)
    if max_parallel == 1 or not mountinfo.is_file():
        return None
    fstype, options = _mount_of(root.resolve(), mountinfo)
    if reason := _local_flock(fstype, options, beegfs_conf):
        return f"--max-parallel {max_parallel}: {reason}; run with --max-parallel 1"
    return None


def check_slurm(
    stages: Sequence[str],
    cfg: Config,
    site: jobs.Site,
    root: Path,
    runner: jobs.Runner = subprocess.run,
    max_parallel: int = 1,
) -> None:
    """`sycorec slurm submit` on the login node: the common checks against the site's HF cache, then the image, the
    DVC cache and lock, and the partition's limits."""
    problems, _ = common_problems(stages, cfg, site.hub_cache)
    if problem := (image_problem(site, root) if site.container == "apptainer" else venv_problem(site)):
        problems.append(problem)
    problems += [p for p in (dvc_cache_problem(root), flock_problem(root, max_parallel)) if p]
    problems += limit_problems(stages, cfg, site, runner)
    _raise(problems)


def _raise(problems: list[str]) -> None:
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise PreflightError(f"preflight: {len(problems)} thing(s) missing, nothing was started:\n{lines}")
