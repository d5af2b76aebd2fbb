"""One driver for every trainer stage: resume, dvclive, proxy curve, training, final save."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sycorec.config import Config
from sycorec.paths import ModelSource
from sycorec.train.common import (
    CHECKPOINTS,
    fingerprint,
    finish_checkpoints,
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


def lora_build(
    cfg: Config, run: Run, trainer_class: type, config: Any, dataset: Any, tokenizer: Any, **extra: Any
) -> Callable[[list[Any]], Any]:
    """`build` for run_trainer: a `trainer_class` with LoRA on the run's causal start model (loaded when built)."""

    def build(callbacks: list[Any]) -> Any:
        return trainer_class(
            model=load_causal_lm(cfg, run.start),
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=lora_config(cfg),
            callbacks=callbacks,
            **extra,
        )

    return build


def run_trainer(
    cfg: Config,
    run: Run,
    tokenizer: Any,
    build: Callable[[list[Any]], Any],
    stop_after_save: Callable[[], Any] | None = None,
) -> Result:
    """Build the trainer with our callbacks, train (resuming from the newest complete checkpoint), save the model.

    `build(callbacks)` returns a TRL trainer; `stop_after_save` is a test hook (a callback that kills the run).
    """
    checkpoint = prepare_checkpoints(run.name, fingerprint(cfg, run.name, run.inputs, run.start, run.extra))
    live = open_live(run.name, checkpoint is not None)
    callbacks = [live_callback(live), log_at_save()]
    curve = None
    best_dir = CHECKPOINTS / run.name / "proxy-best"
    if run.eval_every:
        questions = prepared_rows(cfg, "proxy_questions.jsonl")
        curve = ProxyCurve(CHECKPOINTS / run.name / "proxy_curve.json")
        keep = run.keep_best and cfg.train.common.keep_proxy_best
        callbacks.append(
            proxy_callback(
                tokenizer,
                questions,
                run.eval_every,
                curve,
                live,
                cfg.prepare.proxy_seed,
                best_dir if keep else None,
                cfg.train.common.proxy_readout,
            )
        )
    if stop_after_save is not None:
        callbacks.append(stop_after_save())
    from transformers import set_seed

    # TRL applies LoRA (random A matrices) before the Trainer seeds itself: seed first, or every run differs.
    set_seed(cfg.train.common.seed)
    trainer = build(callbacks)
    keep_epoch_when_skipping()
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    runtime = time.perf_counter() - start
    out = save_merged(
        cfg, trainer, run.start, run.name, tokenizer, run.kind, run.merge, extra_dirs={"proxy_best": best_dir}
    )
    columns = None
    if curve is not None and is_main_process():
        curve.write(cfg.paths.results / CURVES / f"{run.name}.json")
        columns = curve.columns()
    return Result(trainer=trainer, model_dir=out, runtime_s=runtime, curve=columns)


def finish(run: Run) -> None:
    finish_checkpoints(run.name)
