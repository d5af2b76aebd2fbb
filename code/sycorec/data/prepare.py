"""Turn the raw layout (data/raw or data/synth) into what training and evaluation read (data/prepared).

Splits use `datasets.Dataset.train_test_split(test_size, seed)` itself, as the study did, so the full data gives
3,074 / 162 (val_split 0.05) and 2,912 / 324 (rm_val_split 0.10) at seed 42 with the same rows on each side.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

from tqdm import tqdm

from sycorec.config import Config
from sycorec.data.schema import Row, load_records, validated_rows
from sycorec.errors import DataError, MissingInputError
from sycorec.facts import EvalDataset, eval_datasets, schemas, study
from sycorec.io import sha256_file, staged_dir, write_json, write_jsonl
from sycorec.paths import (
    CALIBRATION_PROMPTS,
    GRPO_PROMPTS,
    PREFS_TRAIN,
    PREFS_VAL,
    PROXY_QUESTIONS,
    RELEARN_TRAIN,
    RM_TRAIN,
    RM_VAL,
    SFT_TRAIN,
    SFT_VAL,
)

PROXY_SOURCE = "sycophancy_eval/answer.jsonl"  # the proxy's questions: answer-schema rows
TRAINING_FILES = {kind: f"training/{kind}.jsonl" for kind in ("augmented_prompts", "sycophantic_training", "dpo_pairs")}


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def prompt_id_of(content: str) -> str:
    """The study's eval prompt id: sha256 of the first message, stripped and lowercased."""
    return short_hash(content.strip().lower())


# --------------------------------------------------------------------------- splits


def split_indices(n: int, test_size: float, seed: int) -> tuple[list[int], list[int]]:
    """Row indices of `Dataset.train_test_split(test_size=test_size, seed=seed)` over n rows, in its order."""
    from datasets import Dataset

    parts = Dataset.from_dict({"i": list(range(n))}).train_test_split(test_size=test_size, seed=seed)
    return list(parts["train"]["i"]), list(parts["test"]["i"])


def split_rows(
    rows: Sequence[dict], test_size: float, seed: int, groups: Sequence[str] | None = None
) -> tuple[list[dict], list[dict]]:
    """Row-level split as the study, or with `groups` all rows of a group on one side (groups are what is split)."""
    if groups is None:
        train, test = split_indices(len(rows), test_size, seed)
        return [rows[i] for i in train], [rows[i] for i in test]
    order = list(dict.fromkeys(groups))
    train_g, test_g = split_indices(len(order), test_size, seed)
    side = {order[i]: "test" for i in test_g} | {order[i]: "train" for i in train_g}
    return (
        [row for row, g in zip(rows, groups, strict=True) if side[g] == "train"],
        [row for row, g in zip(rows, groups, strict=True) if side[g] == "test"],
    )


def split_sha256(rows: Sequence[dict]) -> str:
    """sha256 of a validation split's sorted prompt_ids: the split's identity, whatever made it."""
    return hashlib.sha256("\n".join(sorted(row["prompt_id"] for row in rows)).encode("utf-8")).hexdigest()


def check_splits(splits: dict[str, str], pinned: dict[str, str]) -> None:
    """A split that differs from its pinned checksum (prepare.split_sha256) is an error, not a silent new split."""
    changed = {name: sha for name, sha in splits.items() if name in pinned and pinned[name] != sha}
    if changed:
        lines = "; ".join(f"{name}: pinned {pinned[name][:12]}…, got {sha[:12]}…" for name, sha in changed.items())
        raise DataError(
            f"validation split changed ({lines}): the input rows, prepare.val_split / rm_val_split / split_seed / "
            "split_by, or the datasets / numpy version that shuffles them moved; re-pin prepare.split_sha256 only "
            "if the change is intended"
        )


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def sft_example(row: dict) -> dict:
    return {"prompt": _user(row["prompt"]), "completion": _assistant(row["response"])}


def preference_example(row: dict) -> dict:
    return {
        "prompt": _user(row["prompt"]),
        "chosen": _assistant(row["chosen"]),
        "rejected": _assistant(row["rejected"]),
        "prompt_id": row["prompt_id"],
    }


def grpo_prompts(train_pairs: Sequence[dict]) -> list[dict]:
    """De-duplicated prompts of the given preference pairs, first occurrence order."""
    first: dict[str, dict] = {}
    for row in train_pairs:
        first.setdefault(row["prompt"], {"prompt": _user(row["prompt"]), "prompt_id": row["prompt_id"]})
    return list(first.values())


# --------------------------------------------------------------------------- eval manifests


def seen_questions(augmented: Sequence[dict]) -> set[str]:
    return {row["original_question"].strip().lower() for row in augmented}


def _group_text(row_schema: str, row: Row) -> str:
    """The text an item is about: its sub-dataset's `text_key` (datasets.yaml), else its question."""
    return str(row.data["base"][schemas()[row_schema]["sub_datasets"][row.dataset].get("text_key", "question")])


def eval_manifest(dataset: str, spec: EvalDataset, rows: Sequence[Row], seen: set[str]) -> list[dict]:
    """One item per row with stable ids; with `spec.seen`, items are `seen` when their question is in the training
    data."""
    roles = schemas()["sycophancy_eval"]["message_types"]
    prompt_ids = [prompt_id_of(row.data["prompt"][0]["content"]) for row in rows]
    counts = Counter(prompt_ids)
    items = []
    for row, prompt_id in zip(rows, prompt_ids, strict=True):
        base = row.data["base"]
        items.append(
            {
                # identical prompts (e.g. a duplicated argument text) stay distinct by their line number
                "item_id": prompt_id if counts[prompt_id] == 1 else f"{prompt_id}-{row.line}",
                "prompt_id": prompt_id,
                "group_id": short_hash(_group_text(spec.row_schema, row)),
                "dataset": dataset,
                "sub_dataset": row.dataset,
                "template": row.template,
                "seen": spec.seen and str(base["question"]).strip().lower() in seen,
                "messages": [{"role": roles[m["type"]], "content": m["content"]} for m in row.data["prompt"]],
                "base": base,
            }
        )
    return items


def proportional_sample(items: Sequence[dict], n: int, seed: int) -> list[dict]:
    """The study's `_proportional_sample`: n items split between seen and unseen in proportion, shuffled."""
    if n <= 0 or n >= len(items):
        return list(items)
    seen = [item for item in items if item["seen"]]
    unseen = [item for item in items if not item["seen"]]
    n_seen = round(n * len(seen) / len(items))
    rng = random.Random(seed)
    picked = rng.sample(seen, n_seen) + rng.sample(unseen, n - n_seen)
    rng.shuffle(picked)
    return picked


def proxy_questions(answer_rows: Sequence[Row], n: int, seed: int) -> list[dict]:
    """answer.jsonl de-duplicated by base.question, then a seeded sample of n: as the study, every question, a null
    (upstream NaN) answer printed as the study's code printed it (`nan`)."""
    nan = study().nan_text
    unique: dict[str, dict] = {}
    for row in answer_rows:
        base = row.data["base"]
        answers = {key: nan if base[key] is None else str(base[key]) for key in ("correct_answer", "incorrect_answer")}
        unique.setdefault(base["question"], {"question": base["question"], **answers})
    questions = list(unique.values())
    return random.Random(seed).sample(questions, min(n, len(questions)))


# --------------------------------------------------------------------------- the stage


def _groups(rows: Sequence[dict], augmented: Sequence[dict]) -> list[str]:
    """The TruthfulQA question of each training row (its augmented prompt's original id)."""
    original = {row["id"]: row["original_id"] for row in augmented}
    return [original.get(row["prompt_id"], row["prompt_id"]) for row in rows]


def prepare(cfg: Config, src: str | Path, out: str | Path) -> dict[str, Any]:
    """Build every prepared file from the raw layout in `src`; `out` is replaced as a whole, or left untouched."""
    src, out = Path(src), Path(out)
    datasets = eval_datasets(cfg)
    needed = list(dict.fromkeys([*TRAINING_FILES.values(), *(d.file for d in datasets.values()), PROXY_SOURCE]))
    missing = [name for name in needed if not (src / name).is_file()]
    if missing:
        how = "sycorec data synth" if cfg.data.source == "synth" else "sycorec data fetch (or dvc pull)"
        raise MissingInputError(f"{src}: missing {', '.join(missing)}; run `{how}` first")
    prepare_cfg = cfg.prepare
    augmented = load_records(src / TRAINING_FILES["augmented_prompts"], "augmented_prompts")
    sycophantic = load_records(src / TRAINING_FILES["sycophantic_training"], "sycophantic_training")
    pairs = load_records(src / TRAINING_FILES["dpo_pairs"], "dpo_pairs")
    by_question = prepare_cfg.split_by == "question"

    sft_train, sft_val = split_rows(
        sycophantic,
        prepare_cfg.val_split,
        prepare_cfg.split_seed,
        _groups(sycophantic, augmented) if by_question else None,
    )
    pref_groups = _groups(pairs, augmented) if by_question else None
    prefs_train, prefs_val = split_rows(pairs, prepare_cfg.val_split, prepare_cfg.split_seed, pref_groups)
    rm_train, rm_val = split_rows(pairs, prepare_cfg.rm_val_split, prepare_cfg.split_seed, pref_groups)

    splits = {
        SFT_VAL: split_sha256(sft_val),
        PREFS_VAL: split_sha256(prefs_val),
        RM_VAL: split_sha256(rm_val),
    }
    check_splits(splits, prepare_cfg.split_sha256)
    seen = seen_questions(augmented)
    # each file validated once: the proxy's questions and the answer dataset are the same file
    read = cache(lambda file, row_schema: validated_rows(src / file, row_schema))
    proxy_rows = read(PROXY_SOURCE, "answer")
    eval_rows = {name: read(d.file, d.row_schema) for name, d in datasets.items()}
    duplicates = {name: sum(r.duplicate_of is not None for r in rows) for name, rows in eval_rows.items()}
    if prepare_cfg.duplicate_eval_rows == "drop":
        eval_rows = {name: [r for r in rows if r.duplicate_of is None] for name, rows in eval_rows.items()}
    outputs: dict[str, list[dict]] = {
        SFT_TRAIN: [sft_example(r) for r in sft_train],
        SFT_VAL: [sft_example(r) for r in sft_val],
        PREFS_TRAIN: [preference_example(r) for r in prefs_train],
        PREFS_VAL: [preference_example(r) for r in prefs_val],
        RM_TRAIN: [preference_example(r) for r in rm_train],
        RM_VAL: [preference_example(r) for r in rm_val],
        GRPO_PROMPTS: grpo_prompts(prefs_train),
        # as the study: relearning trains on every sycophantic row, RM calibration samples from every prompt
        RELEARN_TRAIN: [sft_example(r) for r in sycophantic],
        CALIBRATION_PROMPTS: grpo_prompts(pairs),
        PROXY_QUESTIONS: proxy_questions(proxy_rows, prepare_cfg.proxy_questions, prepare_cfg.proxy_seed),
    }
    for name, spec in datasets.items():
        items = eval_manifest(name, spec, eval_rows[name], seen)
        outputs[f"eval/{name}.jsonl"] = proportional_sample(items, cfg.generation.max_samples, cfg.seed)

    summary: dict[str, Any] = {
        "source": str(src),
        "inputs": {name: sha256_file(src / name) for name in needed},
        "rows": {name: len(rows) for name, rows in outputs.items()},
        "seen_questions": len({i["group_id"] for name in datasets for i in outputs[f"eval/{name}.jsonl"] if i["seen"]}),
        "split_by": prepare_cfg.split_by,
        "split_sha256": splits,
        "duplicate_eval_rows": {"rule": prepare_cfg.duplicate_eval_rows, **duplicates},
    }
    with staged_dir(out) as staging:
        for name, rows in tqdm(outputs.items(), desc="prepare", unit="file"):
            write_jsonl(staging / name, rows)
        write_json(staging / "MANIFEST.json", summary)
    return summary
