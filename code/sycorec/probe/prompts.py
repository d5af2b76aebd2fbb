"""The probing prompt set: pressure prompts every probed model answered (correct or incorrect), one shared split.

Labels come from each model's own verdicts: incorrect (sycophantic) = 1, correct = 0. A prompt is kept only if every
model of the run (`cfg.probing.runs`) has a correct/incorrect verdict for it, so the set is the intersection across
the run, and runs over different models probe different prompts (as the study's runs did).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sycorec.config import Config
from sycorec.errors import DataError, MissingInputError
from sycorec.io import iter_jsonl, read_json, write_json
from sycorec.paths import beyond_run, eval_manifest_path, probe_prompts_path, verdicts_path

LABELS = {"incorrect": 1, "correct": 0}
DATASET = "answer"


def _read(path: Path, what: str) -> list[dict]:
    if not path.is_file():
        raise MissingInputError(f"{what} not found at {path}")
    return list(iter_jsonl(path))


def load_verdicts(cfg: Config, model: str) -> dict[str, str]:
    """item_id -> verdict for the model's answer-set verdicts."""
    rows = _read(verdicts_path(cfg, model), f"verdicts of {model!r} (run the eval stages first)")
    return {r["item_id"]: r["verdict"] for r in rows if r.get("dataset", DATASET) == DATASET}


def grouped_split(group_ids: list[str], val_fraction: float, seed: int) -> list[str]:
    """The study's holdout: unique groups sorted, shuffled with Random(seed), first int(f·n) groups -> val."""
    groups = sorted(set(group_ids))
    random.Random(seed).shuffle(groups)
    val = set(groups[: int(val_fraction * len(groups))])
    return ["val" if g in val else "train" for g in group_ids]


def build_prompt_set(cfg: Config, run: str) -> dict:
    """Select, label and split the prompts of probing run `run`; returns the prompts.json document."""
    probing = cfg.probing
    spec = probing.run(run)
    models, max_samples = spec.models, spec.max_samples
    candidates = [
        r for r in _read(eval_manifest_path(cfg, DATASET), "answer eval manifest") if r["template"] in probing.templates
    ]
    if not candidates:
        raise DataError(f"no answer items with templates {probing.templates} in {eval_manifest_path(cfg, DATASET)}")
    verdicts = {m: load_verdicts(cfg, m) for m in models}
    dropped: Counter[str] = Counter()
    kept = []
    for row in candidates:
        answers = [verdicts[m].get(row["item_id"]) for m in models]
        if all(v in LABELS for v in answers):
            kept.append((row, answers))
        else:
            dropped["missing" if None in answers else "hedged_or_refused"] += 1
    if max_samples and len(kept) > max_samples:
        kept = [kept[i] for i in sorted(random.Random(probing.sample_seed).sample(range(len(kept)), max_samples))]
    if not kept:
        raise DataError("no prompt has a correct/incorrect verdict from every probed model")
    splits = grouped_split([row["group_id"] for row, _ in kept], probing.val_fraction, probing.sample_seed)
    prompts = [
        {
            "item_id": row["item_id"],
            "prompt_id": row["prompt_id"],
            "group_id": row["group_id"],
            "template": row["template"],
            "split": split,
            # the probe reads the user message only (no prefill, no response)
            "messages": [m for m in row["messages"] if m["role"] == "user"][:1],
            "labels": {m: LABELS[v] for m, v in zip(models, answers, strict=True)},
        }
        for (row, answers), split in zip(kept, splits, strict=True)
    ]
    return {
        "run": run,
        "models": list(models),
        "reference_model": probing.reference_model,
        "templates": list(probing.templates),
        "n_candidates": len(candidates),
        "n_dropped": dict(sorted(dropped.items())),
        "n_prompts": len(prompts),
        "n_train": sum(p["split"] == "train" for p in prompts),
        "n_val": sum(p["split"] == "val" for p in prompts),
        "prompts": prompts,
    }


def beyond_prompt_set(cfg: Config, model: str, doc: dict) -> tuple[dict, np.ndarray]:
    """A model beyond the study on probing.beyond.run's prompt set `doc`: the prompts it also answered correct or
    incorrect, the run's split kept, labelled by the reference model and by it. Returns the document and the rows of
    the run's prompt set it kept."""
    run, reference = cfg.probing.beyond.run, cfg.probing.reference_model
    verdicts = load_verdicts(cfg, model)
    kept = [i for i, p in enumerate(doc["prompts"]) if verdicts.get(p["item_id"]) in LABELS]
    prompts = [
        {**p, "labels": {reference: p["labels"][reference], model: LABELS[verdicts[p["item_id"]]]}}
        for p in (doc["prompts"][i] for i in kept)
    ]
    derived = {
        "run": beyond_run(run, model),
        "source_run": run,
        "models": [reference, model],
        "reference_model": reference,
        "templates": doc["templates"],
        "n_candidates": doc["n_prompts"],
        "n_dropped": {"hedged_refused_or_missing": doc["n_prompts"] - len(prompts)},
        "n_prompts": len(prompts),
        "n_train": sum(p["split"] == "train" for p in prompts),
        "n_val": sum(p["split"] == "val" for p in prompts),
        "prompts": prompts,
    }
    return derived, np.array(kept, dtype=np.int64)


def write_prompt_set(cfg: Config, run: str) -> dict:
    doc = build_prompt_set(cfg, run)
    write_json(probe_prompts_path(cfg, run), doc)
    return doc


@dataclass(frozen=True)
class PromptSplit:
    """The analysis view of prompts.json: ids in order, split indices, labels per model."""

    item_ids: list[str]
    train: np.ndarray
    val: np.ndarray
    labels: dict[str, np.ndarray]

    @classmethod
    def from_doc(cls, doc: dict) -> PromptSplit:
        prompts = doc["prompts"]
        split = np.array([p["split"] for p in prompts])
        return cls(
            item_ids=[p["item_id"] for p in prompts],
            train=np.flatnonzero(split == "train"),
            val=np.flatnonzero(split == "val"),
            labels={m: np.array([p["labels"][m] for p in prompts], dtype=np.int64) for m in doc["models"]},
        )


def read_prompt_set(cfg: Config, run: str) -> dict:
    path = probe_prompts_path(cfg, run)
    if not path.is_file():
        raise MissingInputError(f"probing prompt set not found at {path} (run `sycorec probe prompts --run {run}`)")
    return read_json(path)
