"""What a job shares with the login node: the bind layout and DVC cache, persistent caches, and the repo lock."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sycorec.cluster import preflight
from sycorec.cluster import slurm as jobs
from sycorec.config import load_config

ROOT = Path(__file__).resolve().parents[1]
# A stage that writes a model directory, as the trainers do (shell only: it runs inside the namespace as well)
MODEL_STAGE = "  model: {cmd: mkdir -p out/m && seq 1 200000 > out/m/model.safetensors, outs: [out/m]}\n"


def rendered(run_root: Path) -> str:
    cfg = load_config(run_root / "params.yaml")
    site = jobs.Site(run_root, run_root / "s.sif", run_root / "hf", run_root / "logs")
    return jobs.render("train_sft", cfg, site)


def binds(script: str) -> list[tuple[str, str]]:
    (spec,) = re.findall(r'--bind "([^"]+)"', script)
    return [tuple(pair.split(":", 1)) for pair in spec.split(",")]


def job_env(script: str) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in re.findall(r"--env (\w+=\S+)", script))


def git_dvc_repo(path: Path, stages: str) -> Path:
    path.mkdir()
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=path, check=True)
    shutil.copy(ROOT / ".dvc" / "config", path / ".dvc" / "config")  # the project's cache settings
    (path / "dvc.yaml").write_text("stages:\n" + stages)
    (path / ".gitignore").write_text("/out/\n")  # what /outputs/ is to the project
    return path


def can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not can_unshare(), reason="needs `unshare -m` (root or user namespaces) to replay a job's binds")
def test_a_job_s_bind_layout_links_the_model_into_the_cache_once(run_root, tmp_path):
    """The stage runs in a mount namespace with the job's repository bind; outside it, DVC and the planner agree."""
    script = rendered(run_root)
    workdir = re.search(r"--pwd (\S+)", script).group(1)
    targets = {target: host for host, target in binds(script)}
    assert targets[workdir] == "$REPO"
    # the cache is the repository's .dvc/cache: no other bind may cover any part of the repository
    assert [t for t in targets if t != workdir and Path(t).is_relative_to(workdir)] == []
    repo = git_dvc_repo(tmp_path / "checkout", MODEL_STAGE)
    venv = tmp_path / "venv"  # the interpreter's environment stays reachable once `workdir` is covered
    venv.mkdir()
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": job_env(script)["DVC_SITE_CACHE_DIR"]}
    inside = (
        f"mount --bind {sys.prefix} {venv} && mount --bind {repo} {workdir} && cd {workdir} "
        f"&& {venv}/bin/python -m dvc repro"
    )
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", inside], env=env, text=True)
    assert done.returncode == 0
    model = repo / "out" / "m" / "model.safetensors"
    objects = [p for p in (repo / ".dvc" / "cache").rglob("*") if p.is_file() and not p.name.endswith(".dir")]
    assert model.stat().st_nlink == 2  # the output and its cache object are one file
    assert [p.stat().st_ino for p in objects] == [model.stat().st_ino]  # stored once
    status = subprocess.run([sys.executable, "-m", "dvc", "status"], cwd=repo, capture_output=True, text=True)
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout + status.stderr
    assert jobs.plan(repo, ["model"]) == []  # the login node's planner sees the job's commit: nothing to resubmit


def test_a_dvc_cache_outside_the_repository_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_GLOBAL_CONFIG_DIR", str(tmp_path / "user-config"))
    repo = git_dvc_repo(tmp_path / "checkout", MODEL_STAGE)

    def cache_dir(*args: str) -> None:
        subprocess.run([sys.executable, "-m", "dvc", "cache", "dir", *args], cwd=repo, check=True)

    assert preflight.dvc_cache_problem(repo) is None
    cache_dir("--local", "scratch-cache")  # relative, inside: the job resolves it the same way
    assert preflight.dvc_cache_problem(repo) is None
    for place in (tmp_path / "elsewhere", repo / "cache"):  # outside; inside but absolute (not so in the job)
        cache_dir("--local", str(place))
        assert "not a relative path inside the repository" in preflight.dvc_cache_problem(repo)
    cache_dir("--local", "--unset")
    cache_dir("--global", str(tmp_path / "elsewhere"))  # the login node reads the user's config, the job does not
    assert "not a relative path inside the repository" in preflight.dvc_cache_problem(repo)


def test_compile_caches_and_dvc_state_persist_in_the_checkout(run_root):
    """Not the node's /tmp: every job reuses what an earlier job compiled and hashed, and no other user's
    /tmp/.cache is in the way."""
    script = rendered(run_root)
    workdir = re.search(r"--pwd (\S+)", script).group(1)
    env = job_env(script)
    for var in (
        "TRITON_CACHE_DIR",
        "TORCHINDUCTOR_CACHE_DIR",
        "VLLM_CACHE_ROOT",
        "XDG_CACHE_HOME",
        "DVC_SITE_CACHE_DIR",
    ):
        assert Path(env[var]).is_relative_to(Path(workdir) / "outputs"), var  # git-ignored, no DVC output
    assert "/outputs/" in (ROOT / ".gitignore").read_text().splitlines()


MOUNTINFO = "36 25 0:32 / {point} rw,relatime shared:7 - {fstype} {source} {options}\n"


@pytest.mark.parametrize(
    ("fstype", "options", "beegfs_conf", "coherent"),
    [
        ("lustre", "rw,flock,lazystatfs", "", True),
        ("lustre", "rw,localflock", "", False),
        ("lustre", "rw,noflock", "", False),
        ("nfs4", "rw,vers=4.2,local_lock=none", "", True),
        ("nfs", "rw,vers=3,local_lock=flock", "", False),
        ("nfs", "rw,vers=3,nolock", "", False),
        ("beegfs", "rw,cfgFile=/etc/beegfs/beegfs-client.conf", "", False),
        ("beegfs", "rw,cfgFile=/etc/beegfs/beegfs-client.conf", "tuneUseGlobalFileLocks = true\n", True),
        ("gpfs", "rw", "", True),
    ],
)
def test_max_parallel_needs_flock_that_holds_across_nodes(tmp_path, fstype, options, beegfs_conf, coherent):
    repo = tmp_path / "repo"
    (repo / ".dvc").mkdir(parents=True)
    (repo / ".dvc" / "config").write_text("")
    mountinfo, conf = tmp_path / "mountinfo", tmp_path / "beegfs-client.conf"
    mountinfo.write_text(
        MOUNTINFO.format(point="/", fstype="ext4", source="/dev/sda1", options="rw")
        + MOUNTINFO.format(point=repo.resolve(), fstype=fstype, source="server:/fs", options=options)
    )
    conf.write_text(beegfs_conf)
    problem = preflight.flock_problem(repo, 4, mountinfo, conf)
    assert (problem is None) is coherent, problem
    if not coherent:
        assert "--max-parallel 1" in problem
    assert preflight.flock_problem(repo, 1, mountinfo, conf) is None  # one job at a time needs no cluster lock


def test_plan_counts_the_judge_load_and_dvc_hashing_with_their_sources(cfg):
    from sycorec.cluster.costs import format_plan, load_costs, plan_costs

    costs = load_costs()
    judge, train, score = plan_costs(["judge@sft", "train_sft", "score@sft"], cfg)
    load = costs["loads"]["judge"]["hours"]
    assert judge.load_hours == load and judge.gpu_hours == pytest.approx((judge.hours + load) * judge.gpus)
    hashing = costs["stages"]["train_sft"]["hashed_gb"] / costs["dvc_hash"]["gb_per_s"] / 3600
    assert train.hash_hours == pytest.approx(hashing) and train.load_hours == 0
    assert train.gpu_hours == pytest.approx((train.hours + hashing) * train.gpus)
    assert score.gpu_hours == 0
    text = format_plan([judge, train, score])
    assert f"+ load: judge {load} h per job (estimate: " in text
    assert f"+ hash: DVC hashes a job's outputs at {costs['dvc_hash']['gb_per_s']} GB/s (measured: " in text
    total = float(re.search(r"([0-9.]+) GPU-hours in total$", text).group(1))
    assert total == pytest.approx(judge.gpu_hours + train.gpu_hours, abs=0.05)


def test_each_stage_records_where_it_ran_and_the_manifest_collects_it(tmp_path, monkeypatch, cfg):
    """The report may run on a login node outside the image: the GPU stages' own records say where they ran."""
    import platform

    import torch

    from sycorec import provenance
    from sycorec.clikit import timed
    from sycorec.report.manifest import build_manifest

    monkeypatch.chdir(tmp_path)
    digest = "sha256:" + "ab" * 32
    monkeypatch.setenv("SYCOREC_IMAGE_DIGEST", digest)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # what a GPU node's torch reports
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(provenance, "driver_version", lambda: "550.54.15")
    timed("generate@{model}")(lambda model: None)(model="sft")
    monkeypatch.setenv("SYCOREC_IMAGE_DIGEST", "")  # the login node: no image
    manifest = build_manifest(cfg, tmp_path)
    assert manifest["environment"]["image_digest"] is None
    ran = manifest["stages"]["generate@sft"]
    assert ran["image_digest"] == digest and ran["slurm_job_id"] == "4242" and ran["node"] == platform.node()
    assert ran["hardware"]["gpus"] == ["NVIDIA H100 80GB HBM3"] * 4
    assert ran["hardware"]["cuda"] == torch.version.cuda and ran["hardware"]["driver"] == "550.54.15"
    assert ran["versions"]["torch"]


def test_checkpoints_are_removed_only_once_the_model_is_committed(tmp_path):
    """A trainer keeps its checkpoints when it finishes; they go once DVC has committed the stage's output."""
    from sycorec.io import write_json
    from sycorec.train.common import CHECKPOINTS, RUN_FILE, prune_committed_checkpoints

    stages = "".join(
        f"  {name}: {{cmd: mkdir -p outputs/models/{name} && echo {name} > outputs/models/{name}/w, "
        f"outs: [outputs/models/{name}]}}\n"
        for name in ("sft", "dpo")
    )
    repo = git_dvc_repo(tmp_path / "checkout", stages)
    for name in ("sft", "dpo"):
        (repo / CHECKPOINTS / name / "checkpoint-8").mkdir(parents=True)
        write_json(repo / CHECKPOINTS / name / RUN_FILE, {"fingerprint": "f", "output": f"outputs/models/{name}"})
    assert prune_committed_checkpoints(repo) == []  # nothing committed yet
    subprocess.run([sys.executable, "-m", "dvc", "repro", "-q", "sft"], cwd=repo, check=True)
    assert prune_committed_checkpoints(repo) == [repo / CHECKPOINTS / "sft"]
    assert not (repo / CHECKPOINTS / "sft").exists() and (repo / CHECKPOINTS / "dpo" / "checkpoint-8").is_dir()
