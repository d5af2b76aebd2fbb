"""The preflight: pinned snapshots, data, GPUs, partition limits, the image, site options; one line per problem."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from fake_slurm import sbatch_calls, site
from sycorec.cli import main
from sycorec.cluster import preflight
from sycorec.cluster import slurm as jobs
from sycorec.config import load_config
from sycorec.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


# ---- preflight -----------------------------------------------------------------------------------------------------


def test_preflight_with_a_missing_snapshot_stops_before_any_submission(run_root, fake_slurm, empty_hf_cache):
    args = ["slurm", "submit", "--stages", "judge@sft", "--no-upstream", "--sif", str(run_root / "s.sif")]
    result = CliRunner().invoke(main, [*args, "--hf-cache", str(empty_hf_cache.parent)])
    assert result.exit_code != 0
    assert "`sycorec prefetch --only Qwen/Qwen2.5-72B-Instruct`" in result.output
    assert "nothing was started" in result.output
    assert "image" in result.output and "make sif" in result.output
    assert sbatch_calls(fake_slurm) == []
    assert not (run_root / "outputs").exists()


def _cache_snapshot(cache: Path, repo_id: str, commit: str, shards: int, present: int) -> None:
    snap = cache / f"models--{repo_id.replace('/', '--')}" / "snapshots" / commit
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    names = [f"model-{i:05d}-of-{shards:05d}.safetensors" for i in range(1, shards + 1)]
    weight_map = {f"w{i}": name for i, name in enumerate(names)}
    (snap / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    for name in names[:present]:
        (snap / name).write_text("x")


def test_preflight_passes_a_complete_pinned_snapshot_and_names_a_missing_shard(run_root, empty_hf_cache):
    cfg = load_config(run_root / "params.yaml")
    commit = "a" * 40
    item = preflight.HubItem("judge", cfg.judge.model, "model", commit)
    _cache_snapshot(empty_hf_cache, cfg.judge.model, commit, shards=3, present=3)
    assert preflight.snapshot_problem(item, empty_hf_cache) is None
    other = preflight.HubItem("base_model", cfg.base_model.name, "model", commit)
    _cache_snapshot(empty_hf_cache, cfg.base_model.name, commit, shards=5, present=4)
    problem = preflight.snapshot_problem(other, empty_hf_cache)
    assert "model-00005-of-00005.safetensors" in problem and "sycorec prefetch --only Qwen/Qwen3-8B" in problem


def test_branch_names_are_refused_at_full_scale(run_root):
    cfg = load_config(run_root / "params.yaml")
    items = [preflight.HubItem("base_model", "Qwen/Qwen3-8B", "model", "main")]
    assert "base_model.revision is 'main', not a commit" in preflight.pin_problems(items, cfg)[0]
    pinned = [preflight.HubItem("base_model", "Qwen/Qwen3-8B", "model", "b" * 40)]
    assert preflight.pin_problems(pinned, cfg) == []


def test_tiny_profile_needs_no_data_snapshot_or_gpu(run_root):
    """The demo must not be slowed or blocked: under tiny every stage's needs are empty."""
    cfg = load_config(run_root / "params.yaml", "tiny")
    stage_map = jobs.load_stage_map()
    stages = ["synth", "prepare", "train_base", "train_sft", "train_grpo@v3", "generate@sft", "judge@sft"]
    for stage in [*stages, "probe_extract@R6-sft", "rm_calibrate", "relearn@dpo"]:
        assert preflight.stage_needs(stage, cfg, stage_map) == preflight.Needs((), False, 0), stage
    preflight.check_local(stages, cfg)  # no import of torch, no file read: nothing is needed


def test_full_scale_needs_follow_the_stage(run_root):
    cfg = load_config(run_root / "params.yaml")
    stage_map = jobs.load_stage_map()
    judge = preflight.stage_needs("judge@sft", cfg, stage_map)
    assert [i.repo_id for i in judge.hub] == [cfg.judge.model] and judge.gpus == cfg.judge.tensor_parallel_size
    training = preflight.HubItem(
        "training_data", cfg.data.training_data.hf_dataset, "dataset", cfg.data.training_data.hf_revision
    )
    assert preflight.stage_needs("prepare", cfg, stage_map) == preflight.Needs((training,), True, 0)
    assert preflight.stage_needs("score@sft", cfg, stage_map) == preflight.Needs((), False, 0)
    grpo = preflight.stage_needs("train_grpo@v3", cfg, stage_map)
    assert [i.repo_id for i in grpo.hub] == [cfg.base_model.name] and grpo.gpus == 2


def test_local_preflight_lists_gpu_data_and_snapshot_in_one_go(run_root, empty_hf_cache, monkeypatch):
    cfg = load_config(run_root / "params.yaml")
    monkeypatch.setattr(preflight, "visible_gpus", lambda: 0)
    with pytest.raises(preflight.PreflightError) as err:
        preflight.check_local(["prepare", "train_sft", "judge@sft"], cfg)
    lines = str(err.value).splitlines()[1:]
    assert any("run `make data`" in line for line in lines)
    assert any("need 4 CUDA GPU(s) but 0 are visible" in line for line in lines)
    assert any("`sycorec prefetch --only Qwen/Qwen3-8B`" in line for line in lines)
    assert any("`sycorec prefetch --only Qwen/Qwen2.5-72B-Instruct`" in line for line in lines)


@pytest.mark.parametrize(
    ("value", "minutes"),
    [("90", 90), ("30:00", 30), ("06:00:00", 360), ("2-00:00:00", 2880), ("1-12", 2160), ("UNLIMITED", None)],
)
def test_slurm_time_formats(value, minutes):
    assert preflight.slurm_minutes(value) == minutes


def test_partition_limits_are_checked_against_the_stage_table(run_root, fake_slurm):
    cfg = load_config(run_root / "params.yaml")
    (fake_slurm / "partition").write_text("PartitionName=short Default=YES MaxTime=04:00:00 MaxMemPerNode=262144\n")
    problems = preflight.limit_problems(["train_sft", "score@sft"], cfg, site(run_root), subprocess.run)
    assert problems == [
        "train_sft: --time=06:00:00 exceeds partition short's MaxTime=04:00:00",
        "train_sft: --mem=384G exceeds partition short's MaxMemPerNode=262144M",
    ]


def test_image_must_match_head_or_share_its_lock(tmp_path):
    repo = tmp_path / "r"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    (repo / "requirements").mkdir()
    (repo / "requirements/cluster.lock").write_text("a==1\n")
    (repo / "x.py").write_text("1\n")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    built = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    where = jobs.Site(repo, repo / "s.sif", repo / "hf", repo / "dvc", repo / "logs")
    assert "not found" in preflight.image_problem(where, repo)
    (repo / "s.sif").write_text("image")
    (repo / "s.sif.commit").write_text(built + "\n")
    assert preflight.image_problem(where, repo) is None
    (repo / "x.py").write_text("2\n")  # code only: jobs run the checkout's code
    subprocess.run([*git, "commit", "-qam", "code"], check=True)
    assert preflight.image_problem(where, repo) is None
    (repo / "requirements/cluster.lock").write_text("a==2\n")
    subprocess.run([*git, "commit", "-qam", "lock"], check=True)
    assert "differ from HEAD" in preflight.image_problem(where, repo)


# ---- site options, the container choice, the preflight off a SLURM host -------------------------------------------


@pytest.mark.parametrize("option", ["--qos=high", "--gres=gpu:h100:4", "--nodelist=gpu[01-04]", "--exclusive", "-A=p1"])
def test_plain_sbatch_options_are_accepted(option):
    assert jobs.sbatch_option(option) == option


@pytest.mark.parametrize(
    "option", ["--qos=a;id", "--comment=$(id)", "--qos=`id`", "--account=a b", "qos=high", "--x='y'"]
)
def test_sbatch_options_with_shell_characters_are_refused(option):
    with pytest.raises(ConfigError, match="without spaces, quotes or shell characters"):
        jobs.sbatch_option(option)


def test_container_none_runs_the_checkouts_venv_with_the_same_variables_and_nothing_else(run_root, tmp_path):
    """The rendered script runs for real, with srun standing in as a plain exec and the venv's dvc printing its
    environment: the stage sees the Apptainer job's variables (the HF cache at its host path) and nothing else."""
    cfg = load_config(run_root / "params.yaml")
    where = jobs.Site(
        run_root, run_root / "s.sif", tmp_path / "hf", tmp_path / "dvc", tmp_path / "logs", container="none"
    )
    script = jobs.render("train_sft", cfg, where)
    assert "apptainer" not in "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("#"))
    apptainer = jobs.render("train_sft", cfg, site(run_root))
    passed = set(re.findall(r"--env (\w+)=", apptainer)) - {"SYCOREC_IMAGE_DIGEST", "HF_HOME", "HF_HUB_CACHE"}
    fake = tmp_path / "fakebin"
    (run_root / ".venv/bin").mkdir(parents=True)
    fake.mkdir()
    (fake / "srun").write_text('#!/bin/bash\nwhile [[ $1 == --* ]]; do shift; done\nexec "$@"\n')
    (run_root / ".venv/bin/dvc").write_text('#!/bin/bash\necho "args=$*"; echo "cwd=$PWD"; env\n')
    for path in (fake / "srun", run_root / ".venv/bin/dvc"):
        path.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}", "SUBMITTER_SECRET": "x"}
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    seen = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    assert seen["args"] == "--wait-for-lock repro --single-item train_sft" and seen["cwd"] == str(run_root)
    assert seen["HF_HOME"] == str(tmp_path / "hf") and seen["HF_HUB_CACHE"] == str(tmp_path / "hf" / "hub")
    assert passed <= set(seen) and "SUBMITTER_SECRET" not in seen and "SYCOREC_IMAGE_DIGEST" not in seen
    assert seen["PATH"].split(os.pathsep)[0] == str(run_root / ".venv/bin")


def test_preflight_off_a_slurm_host_lists_every_problem(run_root, empty_hf_cache, monkeypatch, tmp_path):
    cfg = load_config(run_root / "params.yaml")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no scontrol, no sinfo
    where = jobs.Site(run_root, run_root / "s.sif", empty_hf_cache.parent, run_root / "dvc", run_root / "logs")
    with pytest.raises(preflight.PreflightError) as err:
        preflight.check_slurm(["judge@sft"], cfg, jobs.Site(**{**where.__dict__, "container": "none"}), run_root)
    lines = str(err.value).splitlines()[1:]
    assert any("`sycorec prefetch --only Qwen/Qwen2.5-72B-Instruct`" in line for line in lines)
    assert any(".venv/bin/dvc not found" in line for line in lines)
    assert any("scontrol not found" in line for line in lines)


def test_reproduce_passes_site_options_and_the_container_to_submit(run_root):
    args = ["reproduce", "--post", "1", "--cluster", "slurm", "--dry-run", "--container", "none"]
    result = CliRunner().invoke(main, [*args, "--sbatch-option=--qos=high", "--sbatch-option=--account=p1"])
    assert result.exit_code == 0, result.output
    (submit,) = [line for line in result.output.splitlines() if line.startswith("sycorec slurm submit")]
    assert submit.endswith("--container none --sbatch-option=--qos=high --sbatch-option=--account=p1 --dry-run")


def test_make_passes_sbatch_options_through_the_environment_not_the_shell(tmp_path):
    """`make reproduce-postN SBATCH_OPTIONS=…` (or $SYCOREC_SBATCH_OPTIONS) reaches sycorec's environment verbatim;
    a `sycorec` that prints what it gets stands in for the CLI (what the CLI does with it is tested above)."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin/.stamp").touch()  # newer than the locks: `make setup` installs nothing
    (venv / "bin/sycorec").write_text('#!/bin/bash\necho "[$SYCOREC_SBATCH_OPTIONS] $*"\n')
    (venv / "bin/sycorec").chmod(0o755)
    make = ["make", "-s", "-C", str(ROOT), "reproduce-post1", "CLUSTER=slurm", f"VENV={venv}"]
    env = {k: v for k, v in os.environ.items() if k != "SYCOREC_SBATCH_OPTIONS"}
    out = subprocess.run([*make, "SBATCH_OPTIONS=--qos=high --account=p1;touch pwned"], env=env, capture_output=True)
    assert out.stdout.decode().startswith("[--qos=high --account=p1;touch pwned] reproduce --post 1 --cluster slurm")
    out = subprocess.run(make, env={**env, "SYCOREC_SBATCH_OPTIONS": "--qos=low"}, capture_output=True)
    assert out.stdout.decode().startswith("[--qos=low] reproduce")
    assert not (ROOT / "pwned").exists() and not (tmp_path / "pwned").exists()


def test_stage_overrides_type_the_gres_and_come_after_the_site_options(run_root):
    import yaml

    cfg = load_config(run_root / "params.yaml")
    stage_map = yaml.safe_load((run_root / "slurm/stages.yaml").read_text())
    stage_map["stages"]["judge@*"].update(gres_type="h100", constraint="gpu80gb", sbatch=["--time=10:00:00"])
    (run_root / "slurm/stages.yaml").write_text(yaml.safe_dump(stage_map))
    script = jobs.render("judge@sft", cfg, site(run_root, extra_sbatch=("--constraint=any", "--qos=high")))
    lines = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    assert f"#SBATCH --gres=gpu:h100:{cfg.judge.tensor_parallel_size}" in lines
    site_at, stage_at = lines.index("#SBATCH --constraint=any"), lines.index("#SBATCH --constraint=gpu80gb")
    assert lines.index("#SBATCH --qos=high") < stage_at and site_at < stage_at
    assert lines[-1] == "#SBATCH --time=10:00:00"
    stage_map["stages"]["judge@*"]["sbatch"] = ["--comment=$(id)"]
    (run_root / "slurm/stages.yaml").write_text(yaml.safe_dump(stage_map))
    with pytest.raises(ConfigError, match="shell characters"):
        jobs.render("judge@sft", cfg, site(run_root))
