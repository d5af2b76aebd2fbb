"""Rendering the SLURM jobs: one per DVC stage, the container, GPUs and binds from params, the plan from dvc.yaml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cluster_support import invoke
from sycorec.cli import main
from sycorec.cluster import slurm as jobs

ROOT = Path(__file__).resolve().parents[1]


SITE = ("--sif", "/images/sycorec.sif", "--hf-cache", "/scratch/hf")


def test_render_runs_the_stage_in_the_container_with_binds_gpus_and_offline_env(run_root, cfg):
    result = invoke("slurm", "render", "train_grpo@v3", *SITE, "--partition", "gengpu")
    assert result.exit_code == 0
    script = result.output
    assert f"#SBATCH --gres=gpu:{cfg.train.grpo.versions['v3'].num_gpus}" in script
    for needle in (
        "#SBATCH --requeue",
        "#SBATCH --signal=B:USR1@120",
        "#SBATCH --partition=gengpu",
        f"srun --kill-on-bad-exit=1 --ntasks=1 --cpus-per-task={8 * cfg.train.grpo.versions['v3'].num_gpus}",
        "apptainer exec --nv --cleanenv",
        '--bind "$REPO:/work,$HF_CACHE:/cache/hf,$HF_HUB:/cache/hf/hub"',
        "HF_HUB=/scratch/hf/hub",
        "--env HF_HUB_CACHE=/cache/hf/hub",
        "#SBATCH --kill-on-invalid-dep=yes",
        "SIF=/images/sycorec.sif",
        "HF_CACHE=/scratch/hf",
        f"REPO={run_root.resolve()}",
        "--env PYTHONNOUSERSITE=1",
        "--env HF_HUB_OFFLINE=1",
        "scontrol requeue",
        "dvc --wait-for-lock repro --single-item train_grpo@v3",
    ):
        assert needle in script, needle


def test_rendering_is_deterministic_and_valid_bash(run_root):
    first, second = (
        invoke("slurm", "render", "judge@sft", *SITE).output,
        invoke("slurm", "render", "judge@sft", *SITE).output,
    )
    assert first == second
    assert subprocess.run(["bash", "-n"], input=first, text=True, capture_output=True).returncode == 0


def test_gpu_counts_follow_params(cfg):
    stage_map = jobs.load_stage_map()
    assert jobs.stage_job("train_sft", cfg, stage_map).gpus == cfg.train.common.num_gpus
    assert jobs.stage_job("train_pref@simpo", cfg, stage_map).gpus == cfg.train.common.num_gpus
    assert jobs.stage_job("train_grpo@v4", cfg, stage_map).gpus == cfg.train.grpo.versions["v4"].num_gpus == 2
    assert jobs.stage_job("generate@dpo", cfg, stage_map).gpus == cfg.generation.tensor_parallel_size
    assert jobs.stage_job("judge@grpo_v2", cfg, stage_map).gpus == cfg.judge.tensor_parallel_size
    assert jobs.stage_job("judge@grpo_v2", cfg, stage_map).serial
    assert jobs.stage_job("probe_analyze@R6", cfg, stage_map).gpus == 0  # it uses none
    report = jobs.stage_job("report", cfg, stage_map)
    assert (report.gpus, report.group) == (0, "report")


def test_every_dvc_stage_has_a_slurm_job(run_root, cfg):
    names = jobs.dvc_stage_names(ROOT)
    if names is None:
        pytest.skip("no dvc.yaml yet")
    site = jobs.Site(run_root, run_root / "s.sif", run_root / "hf", run_root / "dvc", run_root / "logs")
    assert names
    stage_map = jobs.load_stage_map()
    for stage in sorted(names):
        script = jobs.render(stage, cfg, site)
        job = jobs.stage_job(stage, cfg, stage_map)
        assert f"dvc --wait-for-lock repro --single-item {stage}" in script
        assert ("--nv" in script) == ("--gres=gpu:" in script)
        assert f"#SBATCH --cpus-per-task={job.cpus}" in script
        assert f"srun --kill-on-bad-exit=1 --ntasks=1 --cpus-per-task={job.cpus} " in script
        assert "#SBATCH --kill-on-invalid-dep=yes" in script
        assert "$HF_HUB:/cache/hf/hub" in script and f"HF_HUB={run_root / 'hf' / 'hub'}" in script
        assert subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True).returncode == 0


def test_cpu_stage_gets_no_gpu(run_root):
    script = invoke("slurm", "render", "report", *SITE).output
    assert "--gres" not in script and "--nv" not in script
    assert "apptainer exec --cleanenv" in script


def test_unknown_stage_is_one_line_error(run_root):
    result = CliRunner().invoke(main, ["slurm", "render", "nonsense", *SITE])
    assert result.exit_code == 2
    assert result.output.startswith("error: stage 'nonsense' has no SLURM mapping")


def test_submit_dry_run_prints_every_script_in_order_and_writes_nothing(run_root):
    result = invoke("slurm", "submit", "--stages", "train_sft,generate@sft,judge@sft", "--dry-run", *SITE)
    assert result.exit_code == 0
    out = result.output
    positions = [out.index(f"repro --single-item {s}") for s in ("train_sft", "generate@sft", "judge@sft")]
    assert positions == sorted(positions)
    assert out.count("#!/bin/bash") == 3
    assert "==> outputs/slurm/generate-sft.sbatch <==" in out
    assert not (run_root / "outputs").exists()


def test_stage_names_are_checked_against_dvc_yaml(run_root):
    (run_root / "dvc.yaml").write_text(
        "stages:\n  generate:\n    foreach: [sft, dpo]\n    do:\n      cmd: echo ${item}\n"
        "  judge:\n    cmd: echo judge\n"
    )
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=run_root, check=True)
    assert jobs.dvc_stage_names(run_root) == {"generate@sft", "generate@dpo", "judge"}
    bad = CliRunner().invoke(main, ["slurm", "submit", "--stages", "generate@sft,generate@ipo", "--dry-run", *SITE])
    assert bad.exit_code == 2 and "generate@ipo" in bad.output


@pytest.mark.slow  # runs a DVC pipeline
def test_plan_runs_upstream_stages_first_and_skips_up_to_date_ones(run_root):
    (run_root / "dvc.yaml").write_text(
        "stages:\n"
        "  a: {cmd: echo a > a.txt, outs: [a.txt]}\n"
        "  b: {cmd: cp a.txt b.txt, deps: [a.txt], outs: [b.txt]}\n"
        "  c: {cmd: cp b.txt c.txt, deps: [b.txt], outs: [c.txt]}\n"
        "  other: {cmd: echo o > o.txt, outs: [o.txt]}\n"
    )
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=run_root, check=True)
    assert jobs.plan(run_root, ["c"]) == ["a", "b", "c"]
    subprocess.run([sys.executable, "-m", "dvc", "repro", "-q", "a"], cwd=run_root, check=True)
    assert jobs.plan(run_root, ["c"]) == ["b", "c"]
    assert jobs.plan(run_root, ["c"], skip_up_to_date=False) == ["a", "b", "c"]
    (run_root / "a.txt").write_text("changed\n")  # a re-runs, so everything downstream of it does too
    assert jobs.plan(run_root, ["c", "other"]) == ["a", "b", "c", "other"]


def test_plan_reads_the_workspace_it_is_given_from_any_directory(run_root, tmp_path, monkeypatch):
    # the seed sweep plans each seed's workspace from the project, whose dvc.yaml has the same stage names
    (run_root / "dvc.yaml").write_text("stages:\n  a: {cmd: echo a > a.txt, outs: [a.txt]}\n")
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=run_root, check=True)
    elsewhere = tmp_path / "project"
    elsewhere.mkdir()
    (elsewhere / "dvc.yaml").write_text(
        "stages:\n  z: {cmd: echo z > z.txt, outs: [z.txt]}\n  a: {cmd: cat z.txt, deps: [z.txt]}\n"
    )
    monkeypatch.chdir(elsewhere)
    assert jobs.plan(run_root, ["a"]) == ["a"]
