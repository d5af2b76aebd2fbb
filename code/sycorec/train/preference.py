"""Offline preference recovery from the SFT model, one method per row of the method table (params.yaml's
train.<method>: its TRL trainer and config class, its data format, the config's fields): DPO (sigmoid) and IPO
(DPOTrainer), SimPO (CPOTrainer) as the study ran them; KTO and ORPO beyond it.

Run: `sycorec --gpus 4 train preference dpo` (stage train_pref@dpo). A sweep is a params override, e.g.
`dvc exp run -S train.simpo.learning_rate=1e-5 -S train.simpo.num_train_epochs=3` (SimPO v3) or
`dvc exp run -S train.ipo.beta=0.5 -S train.ipo.learning_rate=5e-6` (IPO v3).
"""

from __future__ import annotations

import importlib
import os
import warnings
from typing import Any

from sycorec.config import Config, PreferenceCfg
from sycorec.paths import PREFS_TRAIN
from sycorec.train.common import (
    load_tokenizer,
    prepared_dataset,
    training_start,
    write_train_summary,
)
from sycorec.train.runner import Result, Run, begin, lora_trainer_args, train, trainer_args

# results/train/<method>.json → the trainer log keys (last logged window): P1's DPO "loss 0.007, margins 7.13, 100%"
SUMMARY_KEYS = {"final_loss": "loss", "reward_accuracy": "rewards/accuracies", "reward_margin": "rewards/margins"}


def library_class(path: str) -> Any:
    """The class a row names as `module:Class` (trl.experimental's modules warn on import)."""
    module, name = path.split(":")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(importlib.import_module(module), name)


def preference_config(cfg: Config, method: str) -> Any:
    """The method's TRL config: train.common and train.<method> as they are."""
    row = cfg.train.method(method)
    max_length = cfg.train.common.max_length
    return library_class(row.config_class)(**trainer_args(cfg.train, method, row, max_length=max_length))


def preference_dataset(cfg: Config, row: PreferenceCfg) -> Any:
    pairs = prepared_dataset(cfg, PREFS_TRAIN, ("prompt", "chosen", "rejected"))
    if row.data == "pairs":
        return pairs
    from trl.data_utils import unpair_preference_dataset

    return unpair_preference_dataset(pairs)


def train_preference(cfg: Config, method: str, hook: Any = None) -> Result:
    """Train `method` from the SFT-merged model with LoRA; a trainer with a reference model uses the adapter-disabled
    model (no second copy)."""
    row = cfg.train.method(method)
    start = training_start(cfg, "sft")
    run = Run(method, start, [cfg.paths.prepared / PREFS_TRAIN], eval_every=row.eval_every_steps, keep_best=True)
    config = preference_config(cfg, method)
    tokenizer = load_tokenizer(start, padding_side="right")
    dataset = preference_dataset(cfg, row)
    session = begin(cfg, run, tokenizer, hook)
    trainer = library_class(row.trainer)(**lora_trainer_args(session, config, dataset))
    result = train(session, trainer)
    write_train_summary(cfg, run.name, result.trainer, SUMMARY_KEYS)
    return result
