"""The SLURM chain's submission and wait against stand-in sbatch/squeue/sacct (real scheduler: test_slurm_real.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fake_slurm import CHAIN, planned, sbatch_calls, site
from sycorec.cluster import slurm as jobs
from sycorec.errors import SycorecError

# ---- submission ----------------------------------------------------------------------------------------------------


def test_chain_is_submitted_as_afterok_dependencies_without_waiting(run_root, fake_slurm):
    submitted = jobs.submit(planned(*CHAIN), site(run_root))
    assert [(j.stage, j.job_id, j.new) for j in submitted] == [
        ("train_sft", "101", True),
        ("train_pref@dpo", "102", True),
        ("generate@dpo", "103", True),
    ]
    calls = sbatch_calls(fake_slurm)
    assert [c[1:] for c in calls] == [
        ["--parsable", str(jobs.SCRIPT_DIR / "train_sft.sbatch")],
        ["--parsable", "--dependency=afterok:101", str(jobs.SCRIPT_DIR / "train_pref-dpo.sbatch")],
        ["--parsable", "--dependency=afterok:102", str(jobs.SCRIPT_DIR / "generate-dpo.sbatch")],
    ]
    assert all("--wait" not in c for c in calls)
    assert (jobs.SCRIPT_DIR / "generate-dpo.sbatch").read_text() == "#!/bin/bash\n# generate@dpo\n"


def test_rerun_while_stages_are_queued_submits_nothing_twice(run_root, fake_slurm):
    jobs.submit(planned(*CHAIN), site(run_root))
    (fake_slurm / "queue").write_text(
        "101|sycorec-train_sft|RUNNING\n102|sycorec-train_pref-dpo|PENDING\n7|someone-else|RUNNING\n"
    )
    again = jobs.submit(planned(*CHAIN, ("score@dpo", ("generate@dpo",))), site(run_root))
    calls = sbatch_calls(fake_slurm)
    assert [j.new for j in again] == [False, False, True, True]
    assert [j.job_id for j in again[:2]] == ["101", "102"]
    # 3 from the first submission, then only generate@dpo (after the queued 102) and score@dpo
    assert len(calls) == 5
    assert "--dependency=afterok:102" in calls[3] and "--dependency=afterok:104" in calls[4]


def test_max_parallel_lets_independent_stages_run_side_by_side(run_root, fake_slurm):
    independent = [("generate@base", ()), ("generate@sft", ()), ("generate@dpo", ()), ("generate@ipo", ())]
    jobs.submit(planned(*independent), site(run_root), max_parallel=2)
    deps = [next((a for a in c if a.startswith("--dependency")), None) for c in sbatch_calls(fake_slurm)]
    # two chains of two: at most two of the four run at once
    assert deps == [None, None, "--dependency=afterok:101", "--dependency=afterok:102"]


def test_serial_jobs_follow_each_other_even_when_parallel(run_root, fake_slurm):
    stages = [("judge@base", ()), ("judge@sft", ()), ("generate@dpo", ())]
    jobs.submit(planned(*stages, serial=("judge@base", "judge@sft")), site(run_root), max_parallel=3)
    deps = [next((a for a in c if a.startswith("--dependency")), None) for c in sbatch_calls(fake_slurm)]
    assert deps == [None, "--dependency=afterok:101", None]


def test_failed_sbatch_stops_with_its_message(run_root, fake_slurm, tmp_path):
    failing = Path(os.environ["PATH"].split(os.pathsep)[0]) / "sbatch"
    failing.write_text("#!/bin/bash\necho 'sbatch: error: invalid partition' >&2\nexit 1\n")
    with pytest.raises(SycorecError, match="invalid partition"):
        jobs.submit(planned(*CHAIN), site(run_root))


# ---- waiting -------------------------------------------------------------------------------------------------------


def test_wait_polls_sacct_until_every_job_completed(run_root, fake_slurm):
    submitted = jobs.submit(planned(*CHAIN[:2]), site(run_root))
    rounds = iter(["101|RUNNING\n", "101|COMPLETED\n102|REQUEUED\n", "101|COMPLETED\n102|COMPLETED\n"])
    (fake_slurm / "states").write_text(next(rounds))
    seen = []

    def sleep(_):
        (fake_slurm / "states").write_text(next(rounds))

    jobs.wait(submitted, site(run_root), sleep=sleep, on_done=lambda job, state: seen.append((job.stage, state)))
    assert seen == [("train_sft", "COMPLETED"), ("train_pref@dpo", "COMPLETED")]
    assert (fake_slurm / "sacct.log").read_text().splitlines()[0].endswith("-j 101,102")


@pytest.mark.parametrize("state", ["PREEMPTED", "CANCELLED by 4242", "OUT_OF_MEMORY"])
def test_a_preempted_or_failed_job_ends_the_wait(run_root, fake_slurm, state):
    submitted = jobs.submit(planned(*CHAIN), site(run_root))
    (fake_slurm / "states").write_text(f"101|COMPLETED\n102|{state}\n103|PENDING\n")

    def sleep(_):
        raise AssertionError("a final state must end the wait without another poll")

    with pytest.raises(SycorecError, match=rf"stage train_pref@dpo: job 102 ended {state.split()[0]}"):
        jobs.wait(submitted, site(run_root), sleep=sleep)
