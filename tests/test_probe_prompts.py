"""The probing prompt set: labels from each model's own verdicts, intersection filter, subsample, grouped split."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from sycorec.cli import main
from sycorec.config import load_config
from sycorec.errors import MissingInputError
from sycorec.io import write_jsonl
from sycorec.probe.prompts import beyond_prompt_set, build_prompt_set, grouped_split, write_prompt_set

TEMPLATES = ["plain", "suggest_incorrect", "deny_correct", "suggest_correct"]


def _write_world(n_questions: int, models: list[str], verdict_of: Callable[[int, int], str | None]) -> list[dict]:
    items = [
        {
            "item_id": f"q{q}-{t}",
            "prompt_id": f"p{q}-{t}",
            "group_id": f"g{q}",
            "dataset": "answer",
            "template": t,
            "messages": [{"role": "user", "content": f"Question {q}? ({t})"}],
        }
        for q in range(n_questions)
        for t in TEMPLATES
    ]
    write_jsonl("data/prepared/eval/answer.jsonl", items)
    for m_index, model in enumerate(models):
        rows = [
            {"item_id": it["item_id"], "dataset": "answer", "template": it["template"], "verdict": v}
            for i, it in enumerate(items)
            if (v := verdict_of(m_index, i)) is not None
        ]
        write_jsonl(f"results/verdicts/{model}.jsonl", rows)
    return items


def test_labels_filter_and_split(run_root: Path) -> None:
    cfg = load_config("params.yaml", "tiny")
    models = cfg.probing.runs["R6"].models

    def verdict_of(m: int, i: int) -> str | None:
        if i == 5 and m == 2:
            return "hedged"
        if i == 9 and m == 4:
            return None  # no verdict
        if i == 13 and m == 0:
            return "refused"
        return "incorrect" if (i + m) % 3 == 0 else "correct"

    items = _write_world(200, models, verdict_of)
    doc = build_prompt_set(cfg, "R6")
    kept = {p["item_id"] for p in doc["prompts"]}
    assert {p["template"] for p in doc["prompts"]} <= set(cfg.probing.templates)
    assert not kept & {items[5]["item_id"], items[9]["item_id"], items[13]["item_id"]}
    assert doc["n_dropped"] == {"hedged_or_refused": 2, "missing": 1}
    index = {it["item_id"]: i for i, it in enumerate(items)}
    for p in doc["prompts"]:
        for m_index, model in enumerate(models):
            assert p["labels"][model] == int((index[p["item_id"]] + m_index) % 3 == 0)
        assert p["messages"][0]["role"] == "user"
    n_candidates = 200 * len(cfg.probing.templates) - 3
    assert doc["n_prompts"] == min(cfg.probing.runs["R6"].max_samples, n_candidates)
    order = [index[p["item_id"]] for p in doc["prompts"]]
    assert order == sorted(order)
    train_groups = {p["group_id"] for p in doc["prompts"] if p["split"] == "train"}
    val_groups = {p["group_id"] for p in doc["prompts"] if p["split"] == "val"}
    assert not train_groups & val_groups
    assert len(val_groups) == int(cfg.probing.val_fraction * len(train_groups | val_groups))
    assert build_prompt_set(cfg, "R6") == doc  # deterministic


def test_a_run_reads_only_its_own_models(run_root: Path) -> None:
    """R3030 (base, SFT, DPO) needs no other model's verdicts, and keeps prompts a later model hedged on."""
    cfg = load_config("params.yaml", "tiny")
    r6, r3030 = cfg.probing.runs["R6"].models, cfg.probing.runs["R3030"].models
    hedger = r6.index(next(m for m in r6 if m not in r3030))
    _write_world(20, r6, lambda m, i: "hedged" if m == hedger and i < 5 else "correct" if i % 2 else "incorrect")
    Path(f"results/verdicts/{r6[-1]}.jsonl").unlink()  # a model outside R3030 not evaluated yet
    doc = build_prompt_set(cfg, "R3030")
    assert doc["models"] == r3030 and doc["run"] == "R3030"
    assert doc["n_prompts"] == 20 * len(cfg.probing.templates) and not doc["n_dropped"]
    with pytest.raises(MissingInputError):
        build_prompt_set(cfg, "R6")


def test_grouped_split_is_the_studys() -> None:
    groups = ["b", "a", "c", "a", "d", "e", "b"]
    split = grouped_split(groups, 0.4, seed=42)
    order = sorted(set(groups))
    random.Random(42).shuffle(order)
    assert {g for g, s in zip(groups, split, strict=True) if s == "val"} == set(order[:2])


def test_prompts_command(run_root: Path) -> None:
    cfg = load_config("params.yaml", "tiny")
    _write_world(20, cfg.probing.runs["R6"].models, lambda m, i: "incorrect" if i % 2 else "correct")
    result = CliRunner().invoke(main, ["--profile", "tiny", "probe", "prompts", "--run", "R6"])
    assert result.exit_code == 0, result.output
    doc = json.loads((run_root / "results/probing/R6/prompts.json").read_text())
    assert doc["n_prompts"] == 40 and doc["n_train"] + doc["n_val"] == 40


def test_missing_verdicts_is_one_clear_error(run_root: Path) -> None:
    write_jsonl("data/prepared/eval/answer.jsonl", [])
    result = CliRunner().invoke(main, ["--profile", "tiny", "probe", "prompts", "--run", "R6"])
    assert result.exit_code == 2 and "error:" in result.output


def _with_kto_beyond(run_root: Path) -> None:
    for name in ("params.yaml", "profiles/tiny.yaml"):  # the profile restates the model list
        params = yaml.safe_load((run_root / name).read_text())
        params["models"].append("kto")
        params.setdefault("probing", {})["beyond"] = {"run": "R6", "models": ["kto"]}
        (run_root / name).write_text(yaml.safe_dump(params))


def test_a_model_beyond_the_study_is_probed_on_the_run_s_prompts_it_answered(run_root: Path) -> None:
    """probing.beyond: R6's prompts less those the model hedged, R6's split, labels of the reference and the model."""
    _with_kto_beyond(run_root)
    cfg = load_config("params.yaml", "tiny")
    models = [*cfg.probing.runs["R6"].models, "kto"]
    kto = len(models) - 1

    def verdict_of(m: int, i: int) -> str | None:
        if m == kto and i % 7 == 0:
            return "hedged"
        return "incorrect" if (i + m) % 3 == 0 else "correct"

    items = _write_world(100, models, verdict_of)
    source = write_prompt_set(cfg, "R6")
    doc, kept = beyond_prompt_set(cfg, "kto", source)
    index = {it["item_id"]: i for i, it in enumerate(items)}
    assert doc["run"] == "R6+kto" and doc["source_run"] == "R6" and doc["models"] == ["sft", "kto"]
    assert [p["item_id"] for p in doc["prompts"]] == [source["prompts"][i]["item_id"] for i in kept]
    hedged = [p for p in source["prompts"] if index[p["item_id"]] % 7 == 0]
    assert hedged and doc["n_prompts"] == source["n_prompts"] - len(hedged)
    assert doc["n_dropped"] == {"hedged_refused_or_missing": len(hedged)}
    for p, i in zip(doc["prompts"], kept, strict=True):
        assert p["split"] == source["prompts"][i]["split"]
        assert p["labels"] == {
            "sft": source["prompts"][i]["labels"]["sft"],
            "kto": int((index[p["item_id"]] + kto) % 3 == 0),
        }


def test_a_model_beyond_the_study_with_one_class_is_reported_not_probed(run_root: Path) -> None:
    """A method that broke the model (every answer hedged) is a finding: no probe, one line, the stage's outputs."""
    _with_kto_beyond(run_root)
    cfg = load_config("params.yaml", "tiny")
    models = [*cfg.probing.runs["R6"].models, "kto"]
    _write_world(100, models, lambda m, i: "hedged" if m == len(models) - 1 else ("correct" if i % 2 else "incorrect"))
    write_prompt_set(cfg, "R6")
    result = CliRunner().invoke(main, ["--profile", "tiny", "probe", "beyond", "--model", "kto"])
    assert result.exit_code == 0, result.output
    assert "kto not probed: sft: the train split has" not in result.output  # the reference is fine
    assert "kto not probed: kto: the train split has 0 incorrect and 0 correct answers" in result.output
    summary = json.loads((run_root / "results/probing/R6+kto/summary.json").read_text())
    assert summary["not_probed"].startswith("kto: the train split")
    assert (run_root / "outputs/probing/R6+kto").is_dir() and (run_root / "results/figures/probing/R6+kto").is_dir()
    refused = CliRunner().invoke(main, ["--profile", "tiny", "probe", "beyond", "--model", "dpo"])
    assert refused.exit_code == 2 and "model 'dpo' is not in probing.beyond.models ['kto']" in refused.output
