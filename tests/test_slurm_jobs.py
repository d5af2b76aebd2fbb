"""What a rendered job does: requeue and quoting, DVC's repo lock under two jobs, what runs inside a job."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from dvc_support import BARRIER_PAIR, dvc_pipeline
from fake_slurm import site
from sycorec.cli import main
from sycorec.cluster import slurm as jobs
from sycorec.config import load_config
from sycorec.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


# ---- rendering: requeue and quoting -----------------------------------------------------------------------------


def test_sft_dpo_ipo_checkpoint_well_before_they_end(run_root):
    """A preemption must not restart them from zero: the study's save_steps 200 exceeded their step counts."""
    import yaml

    cfg = load_config(run_root / "params.yaml")
    posts = yaml.safe_load((ROOT / "code/sycorec/report/published.yaml").read_text())["posts"]
    logged = {row["id"]: row["published"] for row in posts["post1"]}
    # IPO ran DPO's batch configuration on the same pairs for one epoch, so DPO's logged step count is IPO's too
    steps = {"sft": logged["p1.sft.steps"], "dpo": logged["p1.dpo.steps"], "ipo": logged["p1.dpo.steps"]}
    for name in steps:
        assert getattr(cfg.train, name).save_steps * 2 <= steps[name], name


def test_the_stop_grace_fits_in_the_time_limit_signal_s_lead(run_root):
    """The requeue handler (run for real below) gets SLURM's USR1 this long before the limit: stopping must fit."""
    script = jobs.render("train_sft", load_config(run_root / "params.yaml"), site(run_root))
    grace = jobs.load_stage_map()["requeue"]["stop_grace_s"]
    assert 0 < grace < int(re.search(r"--signal=B:USR1@(\d+)", script).group(1))


def test_requeue_handler_runs_in_order_and_respects_the_cap(run_root, tmp_path):
    """Run the rendered handler for real, with srun/apptainer/scontrol faked, on the USR1 of a long step."""
    cfg = load_config(run_root / "params.yaml")
    script = jobs.render("train_sft", cfg, site(run_root)).replace("STOP_GRACE_S=90", "STOP_GRACE_S=5")
    bin_dir, log = tmp_path / "rbin", tmp_path / "events.log"
    bin_dir.mkdir()
    for name, body in {
        "srun": f"trap 'echo step-term >> {log}; exit 143' TERM; echo step-start >> {log}; sleep 30 & wait",
        "scontrol": f'echo "requeue $2" >> {log}',
        "sha256sum": 'echo "0 $1"',
    }.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    (run_root / "s.sif").write_text("image")
    for restarts, expected_exit, requeued in ((0, 0, True), (3, 1, False)):
        log.write_text("")
        env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_ID": "55"}
        env["SLURM_RESTART_COUNT"] = str(restarts)
        proc = subprocess.Popen(["bash", "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for _ in range(200):  # until the step runs
            if "step-start" in log.read_text():
                break
            subprocess.run(["sleep", "0.05"])
        proc.send_signal(10)  # USR1
        proc.wait(timeout=20)
        events = log.read_text().split("\n")
        assert proc.returncode == expected_exit
        assert ("requeue 55" in events) is requeued
        if requeued:
            assert events.index("requeue 55") < events.index("step-term")


def test_crafted_values_cannot_run_in_the_script(run_root, tmp_path):
    cfg = load_config(run_root / "params.yaml")
    evil = site(run_root)
    evil = jobs.Site(run_root, Path("/images/$(touch pwned)`id`.sif"), evil.hf_cache, evil.log_dir)
    script = jobs.render("train_sft", cfg, evil)
    assert "SIF='/images/$(touch pwned)`id`.sif'" in script
    assert jobs.render("train_sft", cfg, site(run_root)).count("{{") == 0
    crafted = jobs.render("generate@x$(touch pwned)", cfg, site(run_root))  # a model name from params
    assert "STAGE='generate@x$(touch pwned)'" in crafted
    assert "\"$SIF\" dvc --wait-for-lock repro --single-item 'generate@x$(touch pwned)' &" in crafted
    assert "#SBATCH --job-name='sycorec-generate-x$(touch pwned)'" in crafted
    code = "\n".join(line for line in crafted.splitlines() if not line.startswith("#"))  # bash runs no comment
    assert "$(touch pwned)" not in code.replace("'generate@x$(touch pwned)'", "")
    fake = tmp_path / "fakebin"  # run it: srun and sha256sum stand in, nothing else may execute
    fake.mkdir()
    for name in ("srun", "sha256sum"):
        (fake / name).write_text('#!/bin/bash\necho "$@" > /dev/null\n')
        (fake / name).chmod(0o755)
    (run_root / "s.sif").write_text("image")
    env = {**os.environ, "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"}
    assert subprocess.run(["bash", "-c", crafted], cwd=tmp_path, env=env, capture_output=True).returncode == 0
    assert not (tmp_path / "pwned").exists() and not (run_root / "pwned").exists()
    with pytest.raises(ConfigError, match="control characters"):
        jobs.render("train_sft", cfg, site(run_root, extra_sbatch=("--qos=high\necho pwned",)))
    with pytest.raises(ConfigError, match="control characters"):
        jobs.render("generate@x\ntouch pwned", cfg, site(run_root))


# ---- DVC's repo lock: two stage jobs at once in one workspace ----------------------------------------------------


@pytest.mark.slow  # runs two DVC stage jobs at once
def test_two_stage_jobs_at_once_in_one_workspace_both_land_in_dvc_lock(tmp_path):
    """Each stage waits until the other has started, so both run (and commit) concurrently."""
    dvc_pipeline(tmp_path, BARRIER_PAIR)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", *jobs.stage_command(stage)],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for stage in ("a", "b")
    ]
    outputs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    lock = (tmp_path / "dvc.lock").read_text()
    assert "\n  a:\n" in lock and "\n  b:\n" in lock


# ---- what runs inside a job --------------------------------------------------------------------------------------


def test_gpus_option_launches_the_stage_under_accelerate_on_a_free_port(monkeypatch):
    """`sycorec --gpus 4 train sft` (dvc.yaml's cmd) with 4 GPUs visible: the same command under DDP, not here."""
    import socket

    import torch

    from sycorec import launch

    calls = []
    monkeypatch.delenv(launch.LAUNCHED, raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(
        launch.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or subprocess.CompletedProcess(cmd, 0)
    )
    monkeypatch.chdir(ROOT)
    argv = ["--gpus", "4", "train", "sft"]
    monkeypatch.setattr(sys, "argv", ["sycorec", *argv])
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 0, result.output  # in this process, sft would have failed: no data here
    (cmd,) = calls
    assert "accelerate.commands.launch" in cmd and cmd[-len(argv) :] == argv
    port = int(cmd[cmd.index("--main_process_port") + 1])
    assert port != 29500 and cmd[cmd.index("--num_processes") + 1] == "4"
    with socket.socket() as sock:  # it was free when chosen (and released for accelerate to take)
        sock.bind(("127.0.0.1", port))


def test_provenance_records_which_copy_of_the_code_ran(tmp_path):
    from sycorec import provenance

    here = provenance.code_origin(ROOT / "code")
    assert here["from_checkout"] is True and here["package_dir"].endswith("sycorec")
    assert provenance.code_origin(tmp_path)["from_checkout"] is False
    assert "code" in provenance.environment_block(ROOT)


def test_proxy_plot_overlays_every_training_run():
    """`dvc plots show proxy_gap` draws the proxy of every run that evaluates it; a new run must be added to it."""
    import yaml

    from sycorec.train.common import DVCLIVE

    (plot,) = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    files = plot["proxy_gap"]["y"]
    for profile in (None, "tiny"):
        cfg = load_config(ROOT / "params.yaml", profile)
        runs = ["sft", "dpo", "simpo", "ipo", *(f"grpo_{v}" for v in cfg.train.grpo.versions)]
        runs += [f"relearn_{start}" for start in cfg.train.relearn.starts]
        expected = {f"{DVCLIVE}/{run}/plots/metrics/proxy/sycophancy_gap.tsv": "sycophancy_gap" for run in runs}
        assert files == expected
