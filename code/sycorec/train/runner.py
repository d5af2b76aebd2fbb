"""What every trainer stage does around its TRL trainer: resume, dvclive, proxy curve, seeding, training, final save."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sycorec.config import Config, LibrarySlice, TrainCfg
from sycorec.errors import ConfigError
from sycorec.paths import PROXY_QUESTIONS, ModelSource, model_dir
from sycorec.train.common import (
    CHECKPOINTS,
    fingerprint,
    is_main_process,
    keep_epoch_when_skipping,
    live_callback,
    load_causal_lm,
    log_at_save,
    lora_config,
    open_live,
    prepare_checkpoints,
    prepared_rows,
    save_merged,
)
from sycorec.train.proxy import ProxyCurve, proxy_callback

CURVES = "curves"


@dataclass
class Run:
    """A stage's identity and its inputs, enough to resume it and to write its outputs."""

    name: str
    start: ModelSource
    inputs: list[Path]
    eval_every: int | None = None  # proxy cadence; None: no proxy (the RM is not a generator)
    keep_best: bool = False  # keep the proxy-best adapter (recovery runs: lowest gap)
    kind: str = "causal"
    merge: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Result:
    trainer: Any
    model_dir: Path
    runtime_s: float
    curve: dict[str, list[float]] | None


@dataclass
class Session:
    """A run ready for its trainer: where it resumes from and the callbacks the trainer must carry."""

    cfg: Config
    run: Run
    tokenizer: Any
    checkpoint: Path | None
    callbacks: list[Any]
    curve: ProxyCurve | None
    best_dir: Path


def begin(cfg: Config, run: Run, tokenizer: Any, stop_after_save: Callable[[], Any] | None = None) -> Session:
    """Find the newest complete checkpoint, open dvclive, set up the proxy curve, and seed, before the trainer is built.

    `stop_after_save` is a test hook (a callback that kills the run).
    """
    key = fingerprint(cfg, run.name, run.inputs, run.start, run.extra)
    checkpoint = prepare_checkpoints(run.name, key, model_dir(cfg, run.name))
    live = open_live(run.name, checkpoint is not None)
    callbacks = [live_callback(live), log_at_save()]
    curve = None
    best_dir = CHECKPOINTS / run.name / "proxy-best"
    if run.eval_every:
        questions = prepared_rows(cfg, PROXY_QUESTIONS)
        curve = ProxyCurve(CHECKPOINTS / run.name / "proxy_curve.json")
        keep = run.keep_best and cfg.train.common.keep_proxy_best
        callbacks.append(
            proxy_callback(cfg, tokenizer, questions, run.eval_every, curve, live, best_dir if keep else None)
        )
    if stop_after_save is not None:
        callbacks.append(stop_after_save())
    from transformers import set_seed

    # TRL applies LoRA (random A matrices) before the Trainer seeds itself: seed first, or every run differs.
    set_seed(cfg.train.common.seed)
    return Session(cfg, run, tokenizer, checkpoint, callbacks, curve, best_dir)


def trainer_args(train_cfg: TrainCfg, run: str, *slices: LibrarySlice, **computed: Any) -> dict[str, Any]:
    """A TRL config's arguments: train.common's TRL fields, then each slice's (a later one's value wins, e.g. a
    GRPO version's save_total_limit), then what the package sets for this run: `computed` and the fields below."""
    import torch

    args: dict[str, Any] = {}
    for part in (train_cfg.common, *slices):
        args |= part.library_kwargs()
    computed |= {
        "output_dir": str(CHECKPOINTS / run),
        # stored in training_args.bin: the default is timestamped, so every run's adapter/ would hash differently
        "logging_dir": str(CHECKPOINTS / run / "logs"),
        "gradient_checkpointing_kwargs": {"use_reentrant": False} if train_cfg.common.gradient_checkpointing else None,
        "report_to": "none",  # curves go to dvclive through LiveCallback, on rank 0 only
        "ddp_find_unused_parameters": False,
        "use_cpu": not torch.cuda.is_available(),
        "dataloader_num_workers": 0,
    }
    clash = sorted(args.keys() & computed.keys())
    if clash:
        raise ConfigError(f"{run}: params set {', '.join(clash)}, which the package sets itself")
    return args | computed


def lora_trainer_args(session: Session, config: Any, dataset: Any) -> dict[str, Any]:
    """A TRL trainer's arguments for LoRA on the run's causal start model, loaded now (after the seed)."""
    return {
        "model": load_causal_lm(session.cfg, session.run.start),
        "args": config,
        "train_dataset": dataset,
        "processing_class": session.tokenizer,
        "peft_config": lora_config(session.cfg),
        "callbacks": session.callbacks,
    }


def train(session: Session, trainer: Any) -> Result:
    """Train (resuming from the session's checkpoint), save the model, write the proxy curve."""
    cfg, run = session.cfg, session.run
    keep_epoch_when_skipping()
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(session.checkpoint) if session.checkpoint else None)
    runtime = time.perf_counter() - start
    extra_dirs = {"proxy_best": session.best_dir}
    out = save_merged(cfg, trainer, run.start, run.name, session.tokenizer, run.kind, run.merge, extra_dirs=extra_dirs)
    columns = None
    if session.curve is not None and is_main_process():
        session.curve.write(cfg.paths.results / CURVES / f"{run.name}.json")
        columns = session.curve.columns()
    return Result(trainer=trainer, model_dir=out, runtime_s=runtime, curve=columns)
