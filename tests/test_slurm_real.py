"""The SLURM chain on a real one-node SLURM (tests/slurm_support.py): the tiny profile's stages as real jobs.

Jobs run with `--container none` (Debian has no Apptainer); the rendering tests in test_slurm_render.py and
test_slurm_jobs.py cover the Apptainer prefix, which is the only part of the script that differs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from slurm_support import OneNodeSlurm, missing_reason
from sycorec.demo.workspace import prepare_workspace

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CHAIN_TARGETS = ("score@sft", "generate@base")  # generate@base: a second branch beside train_sft → … → score@sft
CHAIN_STAGES = {"synth", "prepare", "train_base", "train_sft", "generate@sft", "judge@sft", "score@sft"}
CHAIN_STAGES |= {"generate@base"}
# Fewer pretraining steps than the demo, and no accuracy floor for them: these tests show the scheduling, not the
# organism. SFT checkpoints early, so that its job is requeued with most of its steps still to run.
PRETRAIN_STEPS = 40
SFT_SAVE_STEPS = 5

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> Iterator[OneNodeSlurm]:
    if reason := missing_reason():
        pytest.skip(reason)
    cluster = OneNodeSlurm(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def _shrink(raw: dict) -> dict:
    raw["train"]["pretrain_tiny"].update(max_steps=PRETRAIN_STEPS, min_plain_accuracy=0.0)
    raw["train"]["sft"]["save_steps"] = SFT_SAVE_STEPS
    return raw


def workspace(path: Path) -> Path:
    """A tiny-profile run root as a site has it: the pipeline, the slurm/ templates and the checkout's .venv."""
    prepare_workspace(ROOT, path, "tiny", _shrink)
    shutil.copytree(ROOT / "slurm", path / "slurm", dirs_exist_ok=True)
    (path / ".venv").symlink_to(BIN.parent)
    return path


def job_env(cluster: OneNodeSlurm) -> dict[str, str]:
    return {**cluster.env, "PATH": f"{BIN}{os.pathsep}{cluster.env['PATH']}"}


def sycorec(cluster: OneNodeSlurm, root: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "sycorec"), *args],
        cwd=root,
        env={**job_env(cluster), **(env or {})},
        capture_output=True,
        text=True,
        timeout=1500,
    )


def submit(cluster: OneNodeSlurm, root: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return sycorec(cluster, root, "slurm", "submit", "--container", "none", "--poll-s", "2", *args, env=env)


def job_ids(output: str) -> dict[str, str]:
    """stage -> job id from submit's `<stage>: job <id> …` lines (the first line of each stage)."""
    ids: dict[str, str] = {}
    for line in output.splitlines():
        stage, sep, rest = line.partition(": job ")
        if sep and " " not in stage:
            ids.setdefault(stage, rest.split()[0])
    return ids


def sacct(cluster: OneNodeSlurm, ids, *fields: str) -> dict[str, dict[str, str]]:
    out = cluster.run("sacct", "-X", "-n", "-P", "-o", ",".join(("JobID", *fields)), "-j", ",".join(ids))
    rows = [line.split("|") for line in out.splitlines()]
    return {row[0]: dict(zip(fields, row[1:], strict=True)) for row in rows}


def lock_outs(root: Path) -> dict[str, list]:
    stages = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    return {name: [(o["path"], o["md5"]) for o in spec.get("outs", [])] for name, spec in stages.items()}


def dvc(root: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "dvc"), *args], cwd=root, env=env, capture_output=True, text=True, timeout=1500, check=False
    )


def submit_in_background(cluster: OneNodeSlurm, root: Path, stages: str, jobs: int, *args: str):
    """`submit --wait`, still waiting when this returns the process and the ids of the `jobs` jobs it submitted."""
    cmd = [str(BIN / "sycorec"), "slurm", "submit", "--container", "none", "--poll-s", "2", "--stages", stages, *args]
    proc = subprocess.Popen(
        [*cmd, "--wait"], cwd=root, env=job_env(cluster), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    lines = [proc.stdout.readline() for _ in range(jobs)]
    ids = job_ids("".join(lines))
    assert len(ids) == jobs, lines
    return proc, ids


def _running(cluster: OneNodeSlurm, job_id: str) -> bool:
    return cluster.run("squeue", "-h", "-j", job_id, "-o", "%T", check=False).strip() == "RUNNING"


def requeue(cluster: OneNodeSlurm, job_id: str) -> None:
    """`scontrol requeue`, as a preemption does; SLURM then holds the job for two minutes before it may start again,
    which the test, as an admin could, cuts short once the job is pending."""
    cluster.run("scontrol", "requeue", job_id)
    _until(lambda: cluster.run("squeue", "-h", "-j", job_id, "-o", "%T", check=False).strip() == "PENDING", "pending")
    cluster.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")


def _until(check, what: str, timeout: float = 900.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} within {timeout:.0f} s"
        time.sleep(0.5)


# ---- the tiny chain end to end ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chain(slurm_cluster, tmp_path_factory) -> tuple[Path, str, dict[str, str]]:
    """The chain, with its train_sft job requeued by `scontrol requeue` (as a preemption does) once it has written
    its first checkpoint. Returns the run root, submit's output and the job ids."""
    root = workspace(tmp_path_factory.mktemp("chain"))
    proc, ids = submit_in_background(
        slurm_cluster, root, ",".join(CHAIN_TARGETS), len(CHAIN_STAGES), "--max-parallel", "2"
    )
    checkpoints = root / "outputs/checkpoints/sft"
    _until(lambda: any(checkpoints.glob("checkpoint-*/trainer_state.json")), "train_sft's first checkpoint")
    assert _running(slurm_cluster, ids["train_sft"])
    requeue(slurm_cluster, ids["train_sft"])
    out, err = proc.communicate(timeout=1800)
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    return root, out, ids


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The same stages by a plain `dvc repro`, in the environment a `--container none` job gives them."""
    root = workspace(tmp_path_factory.mktemp("reference"))
    env = {"HOME": os.environ["HOME"], "PATH": f"{root / '.venv/bin'}:/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    done = dvc(root, "repro", *CHAIN_TARGETS, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return root


def test_tiny_chain_runs_as_real_jobs_and_lands_in_dvc_lock(chain, slurm_cluster):
    root, _, ids = chain
    assert set(ids) == CHAIN_STAGES
    states = sacct(slurm_cluster, ids.values(), "State", "Start", "End")
    assert {row["State"] for row in states.values()} == {"COMPLETED"}
    assert set(lock_outs(root)) == CHAIN_STAGES
    status = dvc(root, "status", "--json", *CHAIN_TARGETS)
    assert status.returncode == 0 and json.loads(status.stdout) == {}, status.stdout + status.stderr
    # two jobs shared the workspace at once (each waits for DVC's lock only while it collects and commits)
    spans = [(datetime.fromisoformat(r["Start"]), datetime.fromisoformat(r["End"])) for r in states.values()]
    assert any(a[0] < b[1] and b[0] < a[1] for i, a in enumerate(spans) for b in spans[i + 1 :])


def test_a_second_submit_submits_nothing(chain, slurm_cluster):
    root = chain[0]
    again = submit(slurm_cluster, root, "--stages", ",".join(CHAIN_TARGETS), "--max-parallel", "2", "--wait")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "every stage is up to date: nothing to submit"


def test_chain_outputs_are_byte_identical_to_a_plain_dvc_repro(chain, reference):
    """Every output, the preempted train_sft's weights included, equals an uninterrupted local run's."""
    root = chain[0]
    assert lock_outs(root) == lock_outs(reference)
    assert (root / "results/metrics/sft.json").read_bytes() == (reference / "results/metrics/sft.json").read_bytes()


def test_the_requeued_training_job_restarted_and_resumed_from_its_checkpoint(chain):
    root, _, ids = chain
    log_path = root / "outputs/slurm/logs" / f"sycorec-train_sft-{ids['train_sft']}.out"
    log = log_path.read_text(errors="replace")  # the killed step may have cut a progress bar mid-character
    assert f"job {ids['train_sft']} restart 1: dvc repro --single-item train_sft" in log
    assert "sft: resuming from outputs/checkpoints/sft/checkpoint-" in log


# ---- a failing stage -------------------------------------------------------------------------------------------


def test_a_failing_stage_cancels_its_dependents_and_names_its_job(slurm_cluster, tmp_path):
    root = workspace(tmp_path / "failing")
    assert dvc(root, "repro", "synth", env=job_env(slurm_cluster)).returncode == 0
    broken = root / "data/synth/pretrain/corpus.jsonl"  # train_base's pretraining corpus; prepare reads it not
    broken.write_text("{not json\n")
    assert dvc(root, "commit", "--force", "synth").returncode == 0  # synth is up to date with the broken file
    done = submit(slurm_cluster, root, "--stages", "train_sft", "--wait")
    ids = job_ids(done.stdout)
    assert set(ids) == {"prepare", "train_base", "train_sft"}
    assert done.returncode != 0
    log = root / "outputs/slurm/logs" / f"sycorec-train_base-{ids['train_base']}.out"
    assert done.stderr.strip() == f"error: stage train_base: job {ids['train_base']} ended FAILED; see {log}"
    assert "JSONDecodeError" in log.read_text(errors="replace")  # it failed on the broken input
    state = lambda stage: sacct(slurm_cluster, [ids[stage]], "State")[ids[stage]]["State"].split()[0]  # noqa: E731
    assert state("train_base") == "FAILED"
    _until(lambda: state("train_sft") == "CANCELLED", "train_sft cancelled by SLURM", timeout=120)
    assert "train_base" not in lock_outs(root) and "train_sft" not in lock_outs(root)
    assert not (root / "outputs/models").exists()


# ---- preemption: the restart cap (the requeued chain job is above) -----------------------------------------


def test_a_job_requeued_past_the_cap_stops_with_one_line_naming_it(reference, slurm_cluster):
    root = reference
    stage_map = yaml.safe_load((root / "slurm/stages.yaml").read_text())
    stage_map["requeue"]["max_restarts"] = 0
    (root / "slurm/stages.yaml").write_text(yaml.safe_dump(stage_map, sort_keys=False))
    (root / "results/metrics/sft.json").unlink()
    proc, ids = submit_in_background(slurm_cluster, root, "score@sft", 1)
    job_id = ids["score@sft"]
    _until(lambda: _running(slurm_cluster, job_id), "the job running")
    requeue(slurm_cluster, job_id)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode != 0
    log_path = root / "outputs/slurm/logs" / f"sycorec-score-sft-{job_id}.out"
    assert f"stage score@sft: job {job_id} ended FAILED; see {log_path}" in err
    log = log_path.read_text(errors="replace")
    assert f"job {job_id} (score@sft) was requeued 1 times, past the cap of 0: stopping" in log


# ---- site options and preflight against the real scheduler -------------------------------------------------------


@pytest.fixture(scope="module")
def site_cluster(slurm_cluster) -> OneNodeSlurm:
    """A second partition (80 GB GPUs, by its nodes' feature) and a QOS the user may use."""
    slurm_cluster.run("scontrol", "create", "PartitionName=gpu80", f"Nodes={slurm_cluster.host}", "MaxTime=2-00:00:00")
    slurm_cluster.run("sacctmgr", "-i", "add", "qos", "high")
    slurm_cluster.run("sacctmgr", "-i", "modify", "user", "root", "set", "qos+=high")
    return slurm_cluster


def show_job(cluster: OneNodeSlurm, job_id: str) -> dict[str, str]:
    line = cluster.run("scontrol", "show", "job", "--oneliner", job_id)
    return dict(tok.split("=", 1) for tok in line.split() if "=" in tok)


def test_site_options_reach_the_job(site_cluster, tmp_path):
    root = workspace(tmp_path / "site")
    site = ["--partition=gpu80", "--account=sycorec", "--qos=high", "--constraint=gpu80gb", "--gres=gpu:h100:4"]
    args = [f"--sbatch-option={option}" for option in site]
    done = submit(site_cluster, root, "--stages", "synth", "--wait", *args)
    assert done.returncode == 0, done.stderr
    job_id = job_ids(done.stdout)["synth"]
    job = show_job(site_cluster, job_id)
    assert (job["Partition"], job["Account"], job["QOS"], job["Features"]) == ("gpu80", "sycorec", "high", "gpu80gb")
    assert job["TresPerNode"].endswith("gpu:h100:4")
    fields = ("Partition", "Account", "QOS", "State")
    # slurmctld sends the job's record to slurmdbd after the job: wait until it has the partition
    _until(lambda: sacct(site_cluster, [job_id], *fields)[job_id]["Partition"], "sacct's record", timeout=60)
    accounted = sacct(site_cluster, [job_id], *fields)
    assert accounted[job_id] == {"Partition": "gpu80", "Account": "sycorec", "QOS": "high", "State": "COMPLETED"}


def test_site_options_from_the_environment_and_stage_overrides(site_cluster, tmp_path):
    """SYCOREC_SBATCH_OPTIONS for every job; slurm/stages.yaml's gres_type and constraint for one stage."""
    root = workspace(tmp_path / "env")
    stage_map = yaml.safe_load((root / "slurm/stages.yaml").read_text())
    stage_map["stages"]["train_sft"].update(gres_type="h100", constraint="gpu80gb")
    (root / "slurm/stages.yaml").write_text(yaml.safe_dump(stage_map, sort_keys=False))
    env = {"SYCOREC_SBATCH_OPTIONS": "--partition=gpu80 --qos=high --hold"}
    done = submit(site_cluster, root, "--stages", "synth,train_sft", "--no-upstream", env=env)
    assert done.returncode == 0, done.stderr
    ids = job_ids(done.stdout)
    try:
        synth, sft = show_job(site_cluster, ids["synth"]), show_job(site_cluster, ids["train_sft"])
        assert (synth["Partition"], synth["QOS"], sft["Partition"], sft["QOS"]) == ("gpu80", "high", "gpu80", "high")
        assert sft["TresPerNode"].endswith("gpu:h100:1") and sft["Features"] == "gpu80gb"
        assert "gpu" not in synth.get("TresPerNode", "") and synth["Features"] == "(null)"
    finally:
        site_cluster.run("scancel", *ids.values())


def test_a_shell_metacharacter_in_an_option_is_refused_before_submission(site_cluster, tmp_path):
    root = workspace(tmp_path / "evil")
    before = site_cluster.run("sacct", "-X", "-n", "-a", "-o", "JobID")
    for option in ("--qos=high;touch pwned", "--comment=$(touch pwned)", "--account=a b"):
        done = submit(site_cluster, root, "--stages", "synth", "--no-upstream", f"--sbatch-option={option}")
        assert done.returncode != 0 and "without spaces, quotes or shell characters" in done.stderr, option
    assert site_cluster.run("sacct", "-X", "-n", "-a", "-o", "JobID") == before
    assert not (root / "pwned").exists()


def test_preflight_reads_the_partition_from_the_scheduler_and_refuses_what_does_not_fit(site_cluster, tmp_path):
    limits = ["PartitionName=short", f"Nodes={site_cluster.host}", "MaxTime=00:30:00", "MaxMemPerNode=65536"]
    site_cluster.run("scontrol", "create", *limits)
    root = workspace(tmp_path / "fit")
    stage_map = yaml.safe_load((root / "slurm/stages.yaml").read_text())
    stage_map["stages"]["train_sft"]["gres_type"] = "a100"  # the node has h100s only
    (root / "slurm/stages.yaml").write_text(yaml.safe_dump(stage_map, sort_keys=False))
    before = site_cluster.run("sacct", "-X", "-n", "-a", "-o", "JobID")
    done = submit(site_cluster, root, "--stages", "train_sft", "--no-upstream", "--partition", "short")
    assert done.returncode != 0
    job = yaml.safe_load((ROOT / "slurm/stages.yaml").read_text())["groups"]["train"]
    assert f"train_sft: --time={job['time']} exceeds partition short's MaxTime=00:30:00" in done.stderr
    assert f"train_sft: --mem={job['mem_per_gpu_gb']}G exceeds partition short's MaxMemPerNode=65536M" in done.stderr
    assert "train_sft: --gres=gpu:a100:1 fits no node of partition short (GRES: gpu:h100:4" in done.stderr
    assert "nothing was started" in done.stderr
    assert site_cluster.run("sacct", "-X", "-n", "-a", "-o", "JobID") == before
