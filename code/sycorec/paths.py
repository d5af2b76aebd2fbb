"""Where each stage reads and writes, derived from `cfg.paths` so every profile uses the same layout: the one
registry of stage inputs and outputs (a stage learns another's file names here, never by importing it)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from sycorec.config import Config
from sycorec.errors import MissingInputError
from sycorec.io import read_json

# Written by the full profile's train_base stage: the base model's hub id and the exact commit it resolved to.
SOURCE_FILE = "source.json"


# prepare's outputs under cfg.paths.prepared, by the names the training stages read
SFT_TRAIN, SFT_VAL = "sft_train.jsonl", "sft_val.jsonl"
PREFS_TRAIN, PREFS_VAL = "prefs_train.jsonl", "prefs_val.jsonl"
RM_TRAIN, RM_VAL = "rm_train.jsonl", "rm_val.jsonl"
RELEARN_TRAIN = "relearn_train.jsonl"  # every sycophantic row, no validation split (as the study)
GRPO_PROMPTS = "grpo_prompts.jsonl"
CALIBRATION_PROMPTS = "calibration_prompts.jsonl"  # every unique prompt, not only the GRPO split (as the study)
PROXY_QUESTIONS = "proxy_questions.jsonl"


# `data fetch` writes it into data/raw: each fetched file's source, revision and sha256
RAW_MANIFEST = "MANIFEST.json"


def raw_dir(cfg: Config) -> Path:
    """Inputs of `prepare`: the pinned upstream files (data/raw) or the synthetic world (data/synth), same layout."""
    return cfg.paths.raw


def model_dir(cfg: Config, name: str) -> Path:
    return cfg.paths.models / name


def calibration_path(cfg: Config) -> Path:
    """The RM threshold calibration: its own DVC out, beside (not inside) the RM directory that train_rm owns."""
    return cfg.paths.models.parent / "calibration" / "calibration.json"


def eval_manifest_path(cfg: Config, dataset: str) -> Path:
    """prepare's eval items of one dataset (generate, judge, score and the probe prompts read it)."""
    return cfg.paths.prepared / "eval" / f"{dataset}.jsonl"


def generations_path(cfg: Config, model: str, dataset: str) -> Path:
    return cfg.paths.eval / "generations" / model / f"{dataset}.jsonl"


def judge_cache_path(cfg: Config, identity: str) -> Path:
    """The permanent judge cache of one judge model, shared by every model judged."""
    return cfg.paths.cache / "judge" / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', identity.split(':')[0])}.jsonl"


def judgments_path(cfg: Config, model: str, dataset: str) -> Path:
    return cfg.paths.eval / "judgments" / model / f"{dataset}.jsonl"


def metrics_path(cfg: Config, model: str) -> Path:
    return cfg.paths.results / "metrics" / f"{model}.json"


def detail_path(cfg: Config, model: str) -> Path:
    return cfg.paths.results / "metrics_detail" / f"{model}.json"


def verdicts_path(cfg: Config, model: str) -> Path:
    return cfg.paths.results / "verdicts" / f"{model}.jsonl"


def probing_run_dir(cfg: Config, run: str) -> Path:
    """results/probing/<run>: every output of one probing run."""
    return cfg.paths.results / "probing" / run


def beyond_run(run: str, model: str) -> str:
    """The probing results of a model beyond the study (probing.beyond) on study run `run`'s prompts: `R6+kto`."""
    return f"{run}+{model}"


def probing_result_runs(cfg: Config) -> list[str]:
    """Every folder of probing results: the study's runs, then the models probed beyond them."""
    beyond = cfg.probing.beyond
    return [*cfg.probing.runs, *(beyond_run(beyond.run, m) for m in beyond.models)]


def probe_prompts_path(cfg: Config, run: str) -> Path:
    return probing_run_dir(cfg, run) / "prompts.json"


def activations_path(cfg: Config, run: str, model: str) -> Path:
    return cfg.paths.probing / run / "activations" / f"{model}.safetensors"


@dataclass(frozen=True)
class ModelSource:
    """What to hand to `from_pretrained`: a local directory, or a hub id at a pinned revision."""

    path: str
    revision: str | None = None


def model_source(cfg: Config, name: str) -> ModelSource:
    path = model_dir(cfg, name)
    if name == "base" and not cfg.is_tiny:
        pinned = path / SOURCE_FILE
        if pinned.is_file():
            record = read_json(pinned)
            return ModelSource(record["repo"], record["commit"])
        return ModelSource(cfg.base_model.name, cfg.base_model.revision)
    if not (path / "config.json").is_file():
        raise MissingInputError(f"model {name!r} not found at {path} (run `dvc repro` for its training stage first)")
    return ModelSource(str(path))
