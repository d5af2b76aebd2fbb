"""The SLURM chain against fake sbatch/squeue/sacct/scontrol on PATH, the preflight, the plan and DVC's lock."""

from __future__ import annotations

import functools
import json
import operator
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from dvc_support import BARRIER_PAIR, dvc_pipeline
from sycorec.cli import main
from sycorec.cluster import preflight
from sycorec.cluster import slurm as jobs
from sycorec.config import load_config
from sycorec.errors import ConfigError, SycorecError

ROOT = Path(__file__).resolve().parents[1]

# Fake SLURM: state lives in $FAKE_SLURM (a directory). sbatch logs its arguments and prints the next job id;
# squeue prints the `queue` file; sacct prints `<id>|<state>` from the `states` file; scontrol prints `partition`.
FAKES = {
    "sbatch": """
        n=$(( $(cat "$FAKE_SLURM/next" 2>/dev/null || echo 100) + 1 )); echo "$n" > "$FAKE_SLURM/next"
        echo "$n $*" >> "$FAKE_SLURM/sbatch.log"; echo "$n"
    """,
    "squeue": 'cat "$FAKE_SLURM/queue" 2>/dev/null || true',
    "sacct": 'echo "$*" >> "$FAKE_SLURM/sacct.log"; cat "$FAKE_SLURM/states" 2>/dev/null || true',
    "scontrol": 'cat "$FAKE_SLURM/partition"',
    "sinfo": "true",  # no node shapes: only the partition's own limits apply
}


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    state, bin_dir = tmp_path / "fake-slurm", tmp_path / "bin"
    state.mkdir()
    bin_dir.mkdir()
    for name, body in FAKES.items():
        path = bin_dir / name
        path.write_text("#!/bin/bash\nset -eu\n" + textwrap.dedent(body))
        path.chmod(0o755)
    (state / "partition").write_text("PartitionName=gpu Default=YES MaxTime=2-00:00:00 MaxMemPerNode=UNLIMITED\n")
    monkeypatch.setenv("FAKE_SLURM", str(state))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return state


def sbatch_calls(state: Path) -> list[list[str]]:
    log = state / "sbatch.log"
    return [line.split() for line in log.read_text().splitlines()] if log.is_file() else []


def site(root: Path, **kw) -> jobs.Site:
    return jobs.Site(root, root / "s.sif", root / "hf", root / "logs", **kw)


def planned(*stages: tuple[str, tuple[str, ...]], serial: tuple[str, ...] = ()) -> list[jobs.Planned]:
    return [jobs.Planned(name, ups, f"#!/bin/bash\n# {name}\n", name in serial) for name, ups in stages]


CHAIN = (("train_sft", ()), ("train_pref@dpo", ("train_sft",)), ("generate@dpo", ("train_pref@dpo",)))


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


def test_requeue_is_requested_before_the_step_is_stopped_and_capped(run_root):
    cfg = load_config(run_root / "params.yaml")
    script = jobs.render("train_sft", cfg, site(run_root))
    handler = script[script.index("on_time_limit() {") : script.index("on_term() {")]
    cap = jobs.load_stage_map()["requeue"]["max_restarts"]
    assert f"MAX_RESTARTS={cap}" in script
    assert handler.index("SLURM_RESTART_COUNT:-0} >= MAX_RESTARTS") < handler.index("scontrol requeue")
    assert handler.index("scontrol requeue") < handler.rindex("stop_step")
    grace = jobs.load_stage_map()["requeue"]["stop_grace_s"]
    assert 0 < grace < int(re.search(r"--signal=B:USR1@(\d+)", script).group(1))
    assert "kill -KILL" in script[script.index("stop_step() {") : script.index("on_time_limit() {")]


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


# ---- the plan --------------------------------------------------------------------------------------------------


@pytest.mark.slow  # plans every post through DVC
def test_plan_prints_each_post_s_stages_and_the_total(tmp_path, monkeypatch):
    root = tmp_path / "copy"
    root.mkdir()
    for rel in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / rel, root / rel)
    for rel in ("profiles", "slurm"):
        shutil.copytree(ROOT / rel, root / rel)
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=root, check=True)
    monkeypatch.chdir(root)
    plans = {}
    for post in ("1", "4", "all"):
        result = CliRunner().invoke(main, ["reproduce", "--post", post, "--plan"], catch_exceptions=False)
        assert result.exit_code == 0
        plans[post] = result.output
        lines = result.output.splitlines()[1:-1]
        rows = [line.split(None, 6) for line in lines if not line.startswith("+ ")]
        gpu_rows = [r for r in rows if int(r[1])]
        assert gpu_rows and all(r[6].split(":")[0] in {"study", "derived", "estimate"} for r in gpu_rows)
        printed = float(re.search(r"on GPUs: ([0-9.]+) GPU-hours in total$", result.output.strip()).group(1))
        assert printed == pytest.approx(sum(float(r[5]) for r in rows), abs=0.05 + 0.005 * len(rows))
        # every judge job loads the 72B judge; every trained model is hashed when its job commits it
        assert all(float(r[3]) > 0 for r in rows if r[0].startswith("judge@"))
        assert all(float(r[4]) > 0 for r in rows if r[0].startswith("train_grpo@"))
        sources = [line.split("(", 1)[1] for line in lines if line.startswith("+ ")]
        assert [s.split(":")[0] for s in sources] == ["estimate", "measured"]
    for stage in ("train_grpo@v4", "judge@grpo_v4", "probe_analyze@R6", "train_rm", "rm_calibrate"):
        assert re.search(rf"^{re.escape(stage)} ", plans["all"], flags=re.MULTILINE), stage
    # post 1 judges, scores and trains no model it neither reports nor probes: its probing run is R3030
    cfg = load_config(root / "params.yaml")
    assert re.search(r"^probe_analyze@R3030 ", plans["1"], flags=re.MULTILINE)
    for model in set(cfg.models) - {"base", "sft", "dpo"} - set(cfg.probing.runs["R3030"].models):
        assert f"@{model} " not in plans["1"] and f"@{model.removeprefix('grpo_')} " not in plans["1"], model
    for stage in ("train_grpo@", "train_rm ", "rm_calibrate ", "probe_analyze@R6 "):
        assert not re.search(rf"^{re.escape(stage)}", plans["1"], flags=re.MULTILINE), stage
    assert not (root / "outputs").exists()


def test_probing_stages_follow_the_runs_models():
    """Each probing run's prompt stage depends on exactly its models' verdicts, and probe_extract has one item per
    (run, model): dvc.yaml spells both out (DVC cannot expand a list into deps), params.yaml names them."""
    import yaml

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for profile in (None, "tiny"):
        runs = load_config(ROOT / "params.yaml", profile).probing.runs
        assert sorted(s for s in stages if s.startswith("probe_prompts_")) == sorted(f"probe_prompts_{r}" for r in runs)
        for run, spec in runs.items():
            deps = stages[f"probe_prompts_{run}"]["deps"]
            verdicts = [d for d in deps if d.startswith("${paths.results}/verdicts")]
            assert verdicts == [f"${{paths.results}}/verdicts/{m}.jsonl" for m in spec.models], run
        pairs = [{"run": run, "model": m} for run, spec in runs.items() for m in spec.models]
        assert list(stages["probe_extract"]["foreach"].values()) == pairs
        assert all(key == f"{p['run']}-{p['model']}" for key, p in stages["probe_extract"]["foreach"].items())


# Params sections a stage lists leaf by leaf, with the leaves it leaves out because another stage reads them: a leaf
# added to params.yaml fails here until its stage lists it or leaves it out on purpose
PROBE_INPUTS = {"templates", "sample_seed", "val_fraction", "batch_size", "max_length"}
LEAF_BY_LEAF = {
    ("train_rm", "train.rm"): {"calibration", "text_format"},  # rm_calibrate and the GRPO reward
    ("train_grpo", "train.grpo"): set(),  # versions: each version's own
    ("probe_analyze", "probing"): PROBE_INPUTS,  # they reach it through prompts.json and the activations
}


def test_stages_listing_leaves_miss_none_they_read():
    import yaml

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for (name, section), left_out in LEAF_BY_LEAF.items():
        listed = {p.removeprefix(f"{section}.").split(".")[0] for p in stages[name].get("do", stages[name])["params"]}
        leaves = set(functools.reduce(operator.getitem, section.split("."), params))
        assert listed & leaves == leaves - left_out, name


def test_stage_commands_import_no_torch_until_they_need_it():
    """Each judge@<model> is its own DVC stage: with the rule judge (the demo) it must start cheaply."""
    code = "import sys, sycorec.cli, sycorec.evaluation.judge; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


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
