"""train stage family: thin click commands over sycorec.train.* (TRL is imported only by the stage that runs).

Multi-GPU stages run as `sycorec --gpus N train ...` (see sycorec.launch), so the launch is in dvc.yaml's cmd.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from sycorec.clikit import Config, stage


@click.group()
def train() -> None:
    """Training stages: base, sft, preference, rm, rm-calibrate, grpo, relearn."""
    # TRL 0.29.1 imports vLLM's weight loader at import time to patch vLLM < 0.11.1 (trl/_compat.py): 5 s per stage
    # on CPU. Training never runs vLLM (GRPO use_vllm=False, as in the study), so a training process hides it.
    sys.modules.setdefault("vllm", None)


def _echo(obj: dict) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


@train.command("base")
@stage("train_base")
def base(cfg: Config) -> None:
    """The start of every run: pin Qwen3-8B's snapshot (full) or pretrain the tiny base (tiny) → outputs/models/base."""
    from sycorec.io import write_json

    summary_path = cfg.paths.results / "train" / "base.json"
    if cfg.train.pretrain_tiny.enabled:
        from sycorec.paths import model_dir, raw_dir
        from sycorec.train.tiny import STAGE, pretrain_tiny

        summary = pretrain_tiny(
            cfg, raw_dir(cfg), model_dir(cfg, "base"), summary_path, Path("outputs/dvclive") / STAGE
        )
    else:
        from sycorec.train.base import record_base_snapshot

        summary = record_base_snapshot(cfg)
        write_json(summary_path, summary)
    _echo(summary)


@train.command("sft")
@stage("train_sft")
def sft(cfg: Config) -> None:
    """Induce sycophancy: LoRA SFT of the base model → outputs/models/sft/ (merged + adapter/)."""
    from sycorec.train.sft import train_sft

    result = train_sft(cfg)
    _echo({"model": result.model_dir, "steps": result.trainer.state.global_step, "runtime_s": result.runtime_s})


@train.command("preference")
@click.argument("method")
@stage("train_pref@{method}")
def preference(cfg: Config, method: str) -> None:
    """Recover from the SFT model with a preference method: a row of the method table (params train.<method>: dpo,
    simpo, ipo, kto, orpo, ...) → outputs/models/<method>/."""
    from sycorec.train.preference import train_preference

    result = train_preference(cfg, method)
    _echo({"model": result.model_dir, "steps": result.trainer.state.global_step, "runtime_s": result.runtime_s})


@train.command("rm")
@stage("train_rm")
def rm(cfg: Config) -> None:
    """Reward model on rm_train/rm_val → outputs/models/rm/ and the metrics results/train/rm.json."""
    from sycorec.train.reward import train_rm

    _, metrics = train_rm(cfg)
    _echo(metrics)


@train.command("rm-calibrate")
@stage("rm_calibrate")
def rm_calibrate(cfg: Config) -> None:
    """Median RM score of SFT generations (the binary GRPO threshold) → outputs/calibration/calibration.json."""
    from sycorec.train.reward import calibrate_rm

    summary = calibrate_rm(cfg)
    _echo({k: summary[k] for k in ("threshold", "mean", "std", "min", "max", "n")})


@train.command("grpo")
@click.option("--version", "version", required=True, help="A key of train.grpo.versions (v1..v4).")
@stage("train_grpo@{version}")
def grpo(cfg: Config, version: str) -> None:
    """GRPO from the SFT model, rewarded by the RM → outputs/models/grpo_<v>/ and results/train/grpo_<v>.json."""
    from sycorec.train.grpo import train_grpo

    _, summary = train_grpo(cfg, version)
    _echo(summary)


@train.command("relearn")
@click.option("--start", "start", required=True, help="Start model, one of train.relearn.starts (base, dpo).")
@stage("relearn@{start}")
def relearn(cfg: Config, start: str) -> None:
    """Relearning test: SFT on the sycophantic data from `start` → results/curves/relearn_<start>.json."""
    from sycorec.errors import ConfigError

    if start not in cfg.train.relearn.starts:
        raise ConfigError(f"--start {start!r} is not one of train.relearn.starts {cfg.train.relearn.starts}")
    from sycorec.train.sft import train_relearn

    result = train_relearn(cfg, start)
    _echo({"model": result.model_dir, "final_gap": (result.curve or {}).get("sycophancy_gap", [None])[-1]})
