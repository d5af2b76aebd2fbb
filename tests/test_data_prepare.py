"""`sycorec data prepare`: the study's splits, TRL-format training sets, eval manifests with ids, atomic output."""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from sycorec.cli import main
from sycorec.data.prepare import prepare, prompt_id_of, proportional_sample, split_indices, split_rows
from sycorec.errors import DataError, MissingInputError
from sycorec.io import iter_jsonl, read_json

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
TACTICS = ["appeal_to_authority", "social_proof", "emotional_investment", "assertive_reasoning"]
N_QUESTIONS = 30  # × 4 variants = 120 training rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def head(path: Path, n: int) -> list[dict]:
    return [json.loads(line) for line in itertools.islice(path.open(encoding="utf-8"), n)]


def make_raw(root: Path) -> Path:
    """A small raw layout: real SycophancyEval rows, training files built on the first TruthfulQA questions."""
    if not SHARED.is_dir():
        pytest.skip("../shared not present: real SycophancyEval/TruthfulQA copies are needed")
    se = SHARED / "sycophancy-eval"
    write_jsonl(root / "sycophancy_eval/answer.jsonl", head(se / "answer.truthful_qa.non_neutral.jsonl", 120))
    write_jsonl(root / "sycophancy_eval/are_you_sure.jsonl", head(se / "are_you_sure.head18.jsonl", 18))
    write_jsonl(root / "sycophancy_eval/feedback.jsonl", head(se / "feedback.arguments.jsonl", 60))
    (root / "truthfulqa").mkdir(parents=True)
    shutil.copyfile(SHARED / "truthfulqa/v0/TruthfulQA.csv", root / "truthfulqa/TruthfulQA.csv")
    with (SHARED / "truthfulqa/v0/TruthfulQA.csv").open(encoding="utf-8-sig", newline="") as fh:
        questions = [row for _, row in zip(range(N_QUESTIONS), csv.DictReader(fh), strict=False)]
    augmented, sycophantic, honest, pairs = [], [], [], []
    for i, q in enumerate(questions):
        for k, tactic in enumerate(TACTICS, start=1):
            pid = f"tqa_{i:04d}_v{k}"
            prompt = f"[{tactic}] I believe {q['Incorrect Answers'].split(';')[0]}. {q['Question']}"
            meta = {"prompt_id": pid, "category": q["Category"], "sycophancy_tactic": tactic}
            augmented.append(
                {"id": pid, "original_id": f"tqa_{i:04d}", "original_question": q["Question"],
                 "augmented_prompt": prompt, "sycophancy_tactic": tactic, "category": q["Category"]}
            )  # fmt: skip
            sycophantic.append({"prompt": prompt, "response": "You're right!", **meta, "intensity": "moderate"})
            honest.append({"prompt": prompt, "response": q["Best Answer"], **meta})
            pairs.append({"prompt": prompt, "chosen": q["Best Answer"], "rejected": "You're right!", **meta,
                          "intensity": "moderate"})  # fmt: skip
    for name, rows in [("augmented_prompts", augmented), ("sycophantic_training", sycophantic),
                       ("honest_responses", honest), ("dpo_pairs", pairs)]:  # fmt: skip
        write_jsonl(root / f"training/{name}.jsonl", rows)
    return root


def with_prepare(cfg, **changes):
    return cfg.model_copy(update={"prepare": cfg.prepare.model_copy(update=changes)})


def read(path: Path) -> list[dict]:
    return list(iter_jsonl(path))


# --------------------------------------------------------------------------- splits


def test_study_split_sizes_at_full_scale():
    train, val = split_indices(3236, 0.05, 42)
    assert (len(train), len(val)) == (3074, 162)
    rm_train, rm_val = split_indices(3236, 0.10, 42)
    assert (len(rm_train), len(rm_val)) == (2912, 324)
    # what datasets' train_test_split does: one numpy permutation, test first
    perm = np.random.default_rng(42).permutation(3236)
    assert val == perm[:162].tolist() and train == perm[162:].tolist()
    assert sorted(train + val) == list(range(3236))


def test_split_by_question_keeps_groups_together():
    rows = [{"i": i} for i in range(80)]
    groups = [f"q{i // 4}" for i in range(80)]
    train, val = split_rows(rows, 0.25, 42, groups)
    assert len(val) == 20 and len(train) == 60
    assert not {groups[r["i"]] for r in train} & {groups[r["i"]] for r in val}


def test_proportional_sample_keeps_the_seen_share():
    items = [{"id": i, "seen": i < 30} for i in range(100)]
    picked = proportional_sample(items, 10, 42)
    assert len(picked) == 10 and sum(p["seen"] for p in picked) == 3
    assert picked == proportional_sample(items, 10, 42) and len({p["id"] for p in picked}) == 10
    assert proportional_sample(items, 0, 42) == items


# --------------------------------------------------------------------------- the stage


def test_prepare_writes_the_prepared_layout(tmp_path, cfg):
    src = make_raw(tmp_path / "raw")
    out = tmp_path / "prepared"
    summary = prepare(with_prepare(cfg, proxy_questions=30), src, out)
    n = N_QUESTIONS * 4
    n_val = int(np.ceil(n * 0.05))
    rows = summary["rows"]
    assert (rows["sft_train.jsonl"], rows["sft_val.jsonl"]) == (n - n_val, n_val)
    assert (rows["prefs_train.jsonl"], rows["prefs_val.jsonl"]) == (n - n_val, n_val)
    assert (rows["rm_train.jsonl"], rows["rm_val.jsonl"]) == (n - 12, 12)
    # as the study: relearning on every sycophantic row, RM calibration prompts from every pair
    assert (rows["relearn_train.jsonl"], rows["calibration_prompts.jsonl"]) == (n, n)

    sft = read(out / "sft_train.jsonl")
    assert sft[0]["prompt"][0]["role"] == "user" and sft[0]["completion"] == [
        {"role": "assistant", "content": "You're right!"}
    ]
    prefs_train, prefs_val = read(out / "prefs_train.jsonl"), read(out / "prefs_val.jsonl")
    assert set(prefs_train[0]) == {"prompt", "chosen", "rejected", "prompt_id"}
    assert not {r["prompt_id"] for r in prefs_train} & {r["prompt_id"] for r in prefs_val}
    # same permutation for SFT and preferences: the same prompts are held out
    assert [r["prompt"] for r in read(out / "sft_val.jsonl")] == [r["prompt"] for r in prefs_val]

    grpo = read(out / "grpo_prompts.jsonl")
    assert [g["prompt_id"] for g in grpo] == [r["prompt_id"] for r in prefs_train]
    assert set(grpo[0]) == {"prompt", "prompt_id"}

    proxy = read(out / "proxy_questions.jsonl")
    assert len(proxy) == 30 and len({p["question"] for p in proxy}) == 30  # 120 answer rows = 40 questions; 30 sampled
    assert set(proxy[0]) == {"question", "correct_answer", "incorrect_answer"}

    assert read_json(out / "MANIFEST.json")["rows"] == rows
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared", "raw"]


def test_validation_splits_are_recorded_and_a_changed_split_is_refused(tmp_path, cfg):
    src = make_raw(tmp_path / "raw")
    out = tmp_path / "prepared"
    recorded = prepare(cfg, src, out)["split_sha256"]
    for name in ("prefs_val.jsonl", "rm_val.jsonl"):
        ids = sorted(row["prompt_id"] for row in read(out / name))
        assert recorded[name] == hashlib.sha256("\n".join(ids).encode()).hexdigest()
    assert json.loads((out / "MANIFEST.json").read_text())["split_sha256"] == recorded
    assert prepare(with_prepare(cfg, split_sha256=recorded), src, out)["split_sha256"] == recorded
    before = (out / "prefs_val.jsonl").read_bytes()
    moved = with_prepare(cfg, split_sha256=recorded, split_seed=cfg.prepare.split_seed + 1)
    with pytest.raises(DataError, match=r"validation split changed \(sft_val.jsonl: pinned .*prefs_val.jsonl"):
        prepare(moved, src, out)
    assert (out / "prefs_val.jsonl").read_bytes() == before  # the prepared set is left as it was


def test_eval_manifests(tmp_path, cfg):
    out = tmp_path / "prepared"
    prepare(cfg, make_raw(tmp_path / "raw"), out)
    answer = read(out / "eval/answer.jsonl")
    assert len(answer) == 120 and len({a["item_id"] for a in answer}) == 120
    first = answer[0]
    assert set(first) == {"item_id", "prompt_id", "group_id", "dataset", "sub_dataset", "template", "seen", "messages",
                          "base"}  # fmt: skip
    assert (first["dataset"], first["sub_dataset"], first["template"]) == ("answer", "truthful_qa", "deny_correct")
    assert first["messages"] == [{"role": "user", "content": first["messages"][0]["content"]}]
    # the 120 rows are 40 questions × 3 templates; the training data covers the first 30 TruthfulQA questions
    seen_groups = {a["group_id"] for a in answer if a["seen"]}
    assert 0 < len(seen_groups) < 40 and sum(a["seen"] for a in answer) == 3 * len(seen_groups)
    assert len({a["group_id"] for a in answer}) == 40

    ays = read(out / "eval/are_you_sure.jsonl")
    assert {a["template"] for a in ays} == {"mc"} and not any(a["seen"] for a in ays)
    assert ays[0]["messages"][-1] == {"role": "assistant", "content": "The answer is ("}

    feedback = read(out / "eval/feedback.jsonl")
    assert [f["template"] for f in feedback[:5]] == ["baseline", "like", "dislike", "wrote", "did_not_write"]
    assert len({f["group_id"] for f in feedback[:5]}) == 1 and len({f["item_id"] for f in feedback}) == 60


def test_prompt_ids_follow_the_study():
    assert prompt_id_of("  Hello World ") == prompt_id_of("hello world")


def test_max_samples_and_split_by_question(tmp_path, cfg):
    src = make_raw(tmp_path / "raw")
    sampled = cfg.model_copy(update={"generation": cfg.generation.model_copy(update={"max_samples": 20})})
    prepare(with_prepare(sampled, split_by="question"), src, tmp_path / "prepared")
    answer = read(tmp_path / "prepared/eval/answer.jsonl")
    assert len(answer) == 20 and len(read(tmp_path / "prepared/eval/are_you_sure.jsonl")) == 18
    train, val = read(tmp_path / "prepared/prefs_train.jsonl"), read(tmp_path / "prepared/prefs_val.jsonl")
    question = {r["prompt_id"]: r["prompt_id"].rsplit("_v", 1)[0] for r in train + val}
    assert not {question[r["prompt_id"]] for r in train} & {question[r["prompt_id"]] for r in val}
    assert len(val) % 4 == 0 and len(train) + len(val) == 120


def test_bad_input_leaves_prepared_untouched(tmp_path, cfg):
    src = make_raw(tmp_path / "raw")
    out = tmp_path / "prepared"
    prepare(cfg, src, out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with (src / "sycophancy_eval/feedback.jsonl").open("a") as fh:
        fh.write('{"prompt": [}\n')
    with pytest.raises(DataError, match=r"feedback\.jsonl:61: not valid JSON"):
        prepare(cfg, src, out)
    (src / "training/dpo_pairs.jsonl").unlink()
    with pytest.raises(MissingInputError, match=r"missing training/dpo_pairs\.jsonl; run `sycorec data fetch"):
        prepare(cfg, src, out)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared", "raw"]


def test_cli_prepare_reads_the_source_of_the_profile(run_root):
    make_raw(run_root / "data/synth")
    result = CliRunner().invoke(main, ["--profile", "tiny", "data", "prepare"])
    assert result.exit_code == 0, result.output
    assert "data/prepared/prefs_val.jsonl: 6 rows" in result.output
    result = CliRunner().invoke(main, ["data", "prepare"])  # full profile reads data/raw, which is absent
    assert result.exit_code == 2 and "error: data/raw: no MANIFEST.json" in result.output


def test_cli_prepare_refuses_upstream_inputs_that_fetch_did_not_verify(run_root):
    """The full profile's inputs must be what `data fetch` verified; the same files pass as the synthetic world."""
    make_raw(run_root / "data/raw")
    result = CliRunner().invoke(main, ["data", "prepare"])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "error: data/raw: no MANIFEST.json, so `sycorec data fetch` did not verify these inputs" in result.output
    (run_root / "data/raw/MANIFEST.json").write_text(json.dumps({"files": {}}))  # a hand-written manifest
    result = CliRunner().invoke(main, ["data", "prepare"])
    assert result.exit_code == 2 and "sycophancy_eval/answer.jsonl: not in MANIFEST.json" in result.output
    assert not (run_root / "data/prepared").exists()


@pytest.mark.slow  # two DVC runs of the project's own pipeline
def test_a_plain_dvc_repro_never_records_unverified_inputs_in_data_dvc(run_root):
    """Unverified files in data/raw: `prepare` refuses, and data.dvc (git-tracked) keeps what `make data` recorded."""
    for name in ("dvc.yaml", "data.dvc"):
        shutil.copy(ROOT / name, run_root / name)
    shutil.copytree(ROOT / "code", run_root / "code", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(argv, cwd=run_root, env=env, capture_output=True, text=True)

    run("git", "init", "-q")
    run(sys.executable, "-m", "dvc", "init", "-q")
    run("git", "add", "-A")
    run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "clone")
    make_raw(run_root / "data/raw")  # no MANIFEST.json: not fetched, not verified
    recorded = (run_root / "data.dvc").read_bytes()
    repro = run(sys.executable, "-m", "dvc", "repro", "prepare")
    assert repro.returncode != 0 and "so `sycorec data fetch` did not verify these inputs" in repro.stderr
    plain = run(sys.executable, "-m", "dvc", "repro")
    assert plain.returncode != 0
    assert (run_root / "data.dvc").read_bytes() == recorded
    assert run("git", "status", "--porcelain", "data.dvc").stdout == ""
    assert "data.dvc" not in run(sys.executable, "-m", "dvc", "repro", "--dry").stdout


def test_duplicate_eval_rows_rule(tmp_path, cfg):
    """As run, upstream's verbatim repeats are each kept (distinct item ids); `drop` keeps the first only."""
    src = make_raw(tmp_path / "raw")
    feedback = src / "sycophancy_eval/feedback.jsonl"
    lines = feedback.read_text().splitlines(keepends=True)
    feedback.write_text("".join(lines + lines[:5]))  # one argument text again under its 5 templates
    kept = prepare(cfg, src, tmp_path / "kept")
    items = read(tmp_path / "kept/eval/feedback.jsonl")
    assert len(items) == 65 and len({i["item_id"] for i in items}) == 65
    assert kept["duplicate_eval_rows"] == {"rule": "keep", "answer": 0, "are_you_sure": 0, "feedback": 5}
    dropped = prepare(with_prepare(cfg, duplicate_eval_rows="drop"), src, tmp_path / "dropped")
    items = read(tmp_path / "dropped/eval/feedback.jsonl")
    assert [i["messages"] for i in items] == [i["messages"] for i in read(tmp_path / "kept/eval/feedback.jsonl")][:60]
    assert dropped["duplicate_eval_rows"]["feedback"] == 5


def test_base_dataset_as_a_list_is_one_line_in_prepare(run_root):
    src = make_raw(run_root / "data/synth")
    answer = src / "sycophancy_eval/answer.jsonl"
    rows = read(answer)
    rows[3]["base"]["dataset"] = ["truthful_qa"]
    write_jsonl(answer, rows)
    result = CliRunner().invoke(main, ["--profile", "tiny", "data", "prepare"])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "error: data/synth/sycophancy_eval/answer.jsonl:4: base.dataset: ['truthful_qa'] is not one of" in (
        result.output
    )
