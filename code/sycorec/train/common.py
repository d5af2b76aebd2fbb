"""What every training stage shares: loading, LoRA, trainer arguments, resume, dvclive, merge and save.

Heavy libraries (torch, transformers, peft, TRL) are imported inside functions so that `sycorec --help` stays fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from sycorec.config import CHECKPOINTS, Config
from sycorec.errors import MissingInputError
from sycorec.hub import require_gpu
from sycorec.io import iter_jsonl, seal_weights, sha256_file, staged_dir, write_json
from sycorec.paths import ModelSource, model_dir, model_source

if TYPE_CHECKING:
    from dvclive import Live
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback

DVCLIVE = Path("outputs/dvclive")
RUN_FILE = "run.json"
TRAINER_STATE = "trainer_state.json"  # the Trainer writes it last in a checkpoint
# One-off totals the Trainer logs at the end of train(); they are not curves.
RUN_TOTALS = {"train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss", "total_flos"}


# --------------------------------------------------------------------------- hardware and processes


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def barrier() -> None:
    """Wait for every DDP rank (initialising the process group if the trainer has not done it yet)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()


# --------------------------------------------------------------------------- data and models


def prepared_rows(cfg: Config, name: str) -> list[dict]:
    """The rows of the prepared file `name` (data/prepared)."""
    path = cfg.paths.prepared / name
    if not path.is_file():
        raise MissingInputError(f"{path} not found (run `sycorec data prepare` first)")
    return list(iter_jsonl(path))


def prepared_dataset(cfg: Config, name: str, keep: tuple[str, ...]) -> Any:
    """The prepared split `name` as a `datasets.Dataset` of its `keep` columns."""
    from datasets import Dataset

    return Dataset.from_list([{key: row[key] for key in keep} for row in prepared_rows(cfg, name)])


def torch_dtype(cfg: Config) -> Any:
    import torch

    return getattr(torch, cfg.base_model.dtype)


def require_model(cfg: Config, name: str) -> ModelSource:
    """The start weights of a stage; a missing model fails before any training with the stage to run."""
    try:
        return model_source(cfg, name)
    except MissingInputError as exc:
        raise MissingInputError(f"{exc}; its training stage (`dvc repro`) builds it") from None


def training_start(cfg: Config, name: str) -> ModelSource:
    """The model a training stage starts from. Full-profile stages train an 8B model: without CUDA they would run for
    days, so a machine without one is refused first."""
    if not cfg.is_tiny:
        require_gpu(f"profile {cfg.profile!r}")
    return require_model(cfg, name)


def load_tokenizer(source: ModelSource, padding_side: str = "right") -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.path, revision=source.revision)
    tokenizer.padding_side = padding_side
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(cfg: Config, source: ModelSource) -> PreTrainedModel:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        source.path,
        revision=source.revision,
        dtype=torch_dtype(cfg),
        attn_implementation=cfg.base_model.attn_implementation,
    )


def lora_config(cfg: Config, task: str = "CAUSAL_LM", modules_to_save: list[str] | None = None) -> Any:
    from peft import LoraConfig

    return LoraConfig(**cfg.lora.library_kwargs(), task_type=task, modules_to_save=modules_to_save)


# --------------------------------------------------------------------------- resume


# The train.* sections a run reads besides train.common and its own (GRPO's reward reads train.rm; relearning takes
# SFT's loss). A preference method reads its own row of the method table.
ALSO_READS = {"grpo": ("rm",), "relearn": ("sft",)}


def train_params_read(cfg: Config, run: str) -> dict[str, Any]:
    """train.common and the sections `run` reads (a GRPO version: its own entry of train.grpo.versions only), so an
    edit of another stage's params keeps this run's checkpoints."""
    kind, _, version = run.partition("_") if run.startswith(("grpo_", "relearn_")) else (run, "", "")
    train = cfg.train.model_dump(mode="json")
    read = {name: train[name] for name in ("common", kind, *ALSO_READS.get(kind, ()))}
    if kind == "grpo":
        read["grpo"]["versions"] = {version: read["grpo"]["versions"][version]}
    return read


def fingerprint(
    cfg: Config, run: str, inputs: list[Path], start: ModelSource | None = None, extra: dict | None = None
) -> str:
    """What a run's checkpoints depend on; a changed param or input makes old checkpoints stale."""
    start_ids: list[str | None] = []
    if start is not None:
        start_path = Path(start.path)
        config = start_path / "config.json"
        start_ids = [start.path, start.revision, sha256_file(config) if config.is_file() else start.path]
    blob = {
        "run": run,
        "train": train_params_read(cfg, run),
        "lora": cfg.lora.model_dump(mode="json"),
        "base_model": cfg.base_model.model_dump(mode="json"),
        "start": start_ids,
        "inputs": {str(p): sha256_file(p) for p in inputs},
        "extra": extra or {},
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def say(message: str) -> None:
    """A stage's progress note, on stderr and rank 0 only (stdout carries the stage's JSON summary)."""
    if is_main_process():
        click.echo(message, err=True)


def checkpoint_problem(path: Path) -> str | None:
    """Why a checkpoint cannot be resumed, or None when it is complete.

    The Trainer writes trainer_state.json last, so a checkpoint without it was cut off while saving (a kill, a full
    disk). Every torch-saved file (optimizer.pt, scheduler.pt, rng_state.pth, training_args.bin) is a zip archive whose
    directory is written last and whose members carry a CRC; a safetensors file states its own length and each
    tensor's place: a truncated or overwritten one fails to open or to read.
    """
    from safetensors import SafetensorError, safe_open

    state = path / TRAINER_STATE
    if not state.is_file():
        return f"no {TRAINER_STATE}: saving was cut off"
    try:
        if "global_step" not in json.loads(state.read_text(encoding="utf-8")):
            return f"torn {TRAINER_STATE}"
    except (UnicodeDecodeError, json.JSONDecodeError, TypeError):
        return f"torn {TRAINER_STATE}"
    for file in sorted(path.iterdir()):
        try:
            if file.suffix in {".pt", ".pth", ".bin"}:
                with zipfile.ZipFile(file) as archive:
                    if (member := archive.testzip()) is not None:  # a node crash can leave zeros, not a short file
                        return f"damaged {file.name} (member {member} fails its CRC)"
            elif file.suffix == ".safetensors":
                with safe_open(str(file), framework="pt") as tensors:
                    for name in tensors.keys():  # noqa: SIM118 (safe_open is not iterable)
                        tensors.get_tensor(name)
        except (zipfile.BadZipFile, SafetensorError, OSError, ValueError, RuntimeError) as exc:
            return f"torn {file.name} ({type(exc).__name__})"
    return None


def checkpoints_of(directory: Path) -> list[Path]:
    """The Trainer's `checkpoint-<step>` directories, oldest first."""
    found = [p for p in directory.glob("checkpoint-*") if p.is_dir() and p.name.split("-", 1)[1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-", 1)[1]))


def prepare_checkpoints(run: str, key: str, output: Path, directory: Path | None = None) -> Path | None:
    """The newest complete checkpoint of `run` to resume from, or None to start afresh.

    Checkpoints made with another fingerprint are stale and removed; so are torn ones (newer than the one resumed),
    each with a note saying why, so that a re-run never dies on a half-written checkpoint. A finished run's last
    checkpoint stays until DVC has committed `output` (prune_committed_checkpoints): a re-run after a failed commit
    resumes at the final step instead of training again from step 0.
    """
    directory = CHECKPOINTS / run if directory is None else directory
    run_file = directory / RUN_FILE
    if directory.exists():
        try:
            stale = json.loads(run_file.read_text(encoding="utf-8")).get("fingerprint") != key
        except (OSError, ValueError, AttributeError):  # missing, not UTF-8, not JSON, not an object
            stale = True
        if stale and is_main_process():
            if any(directory.glob("checkpoint-*")):
                say(
                    f"{run}: params or inputs changed since its checkpoints were saved (or {run_file} is damaged); "
                    "starting from step 0"
                )
            shutil.rmtree(directory)
    barrier()
    if is_main_process():
        directory.mkdir(parents=True, exist_ok=True)
        write_json(run_file, {"fingerprint": key, "output": output.as_posix()})
        for checkpoint in reversed(checkpoints_of(directory)):
            problem = checkpoint_problem(checkpoint)
            if problem is None:
                break
            say(f"{run}: skipping {checkpoint} ({problem}); removed it")
            shutil.rmtree(checkpoint)
    barrier()
    complete = checkpoints_of(directory)
    if not complete:
        return None
    newest = complete[-1]
    state = json.loads((newest / TRAINER_STATE).read_text(encoding="utf-8"))
    done, total = state["global_step"], state["max_steps"]
    say(f"{run}: resuming from {newest} at step {done} of {total} ({total - done} steps left)")
    return newest


def prune_committed_checkpoints(root: Path = Path(".")) -> list[Path]:
    """Remove the checkpoints of every run whose DVC stage is up to date (its output committed); return them.

    Runs whose stage has not committed (not run yet, failed, or its commit failed) keep theirs.
    """
    runs = {}
    for run_file in sorted((root / CHECKPOINTS).glob(f"*/{RUN_FILE}")):
        if output := json.loads(run_file.read_text(encoding="utf-8")).get("output"):
            runs[Path(output)] = run_file.parent
    if not runs:
        return []
    import contextlib

    from dvc.repo import Repo

    removed = []
    with contextlib.chdir(root), Repo(".") as repo, repo.lock:  # stage.changed() reads the workspace under the lock
        for stage in repo.index.stages:
            directories = [runs[path] for out in stage.outs if (path := Path(out.def_path)) in runs]
            if directories and not stage.changed():
                for directory in directories:
                    shutil.rmtree(directory)
                    removed.append(directory)
    return removed


def keep_epoch_when_skipping() -> None:
    """Make a mid-epoch resume read the data in the order the uninterrupted run read it.

    The Trainer sets the dataloader's epoch and then skips the batches already trained on with accelerate's
    `skip_first_batches`, whose new loader starts at iteration 0 and so resets the sampler to epoch 0's shuffle
    (fixed upstream in accelerate PR 4071). Carry the epoch over; harmless where accelerate already does.
    """
    import transformers.trainer as hf_trainer
    from accelerate import skip_first_batches

    if hf_trainer.skip_first_batches is not skip_first_batches:
        return

    def skip_keeping_epoch(dataloader: Any, num_batches: int = 0) -> Any:
        skipped = skip_first_batches(dataloader, num_batches)
        if hasattr(dataloader, "iteration") and hasattr(skipped, "set_epoch"):
            skipped.set_epoch(dataloader.iteration)
        return skipped

    hf_trainer.skip_first_batches = skip_keeping_epoch


# --------------------------------------------------------------------------- dvclive


def open_live(run: str, resume: bool) -> Live | None:
    """One dvclive run per stage, on rank 0 only; it leaves dvc.yaml alone (the stage declares its plots)."""
    if not is_main_process():
        return None
    from dvclive import Live

    return Live(dir=str(DVCLIVE / run), resume=resume, save_dvc_exp=False, dvcyaml=None)


def live_callback(live: Live | None) -> TrainerCallback:
    from dvclive.plots import Metric
    from transformers import TrainerCallback

    class LiveCallback(TrainerCallback):
        """Trainer logs → dvclive at the trainer's global step (so resumed curves continue where they stopped)."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if live is None or not state.is_world_process_zero or not logs:
                return
            live.step = state.global_step
            for key, value in logs.items():
                if key not in RUN_TOTALS and Metric.could_log(value):
                    name = f"eval/{key[5:]}" if key.startswith("eval_") else f"train/{key}"
                    live.log_metric(name, value)
            live.make_summary()

        def on_train_end(self, args, state, control, **kwargs):
            if live is not None and state.is_world_process_zero:
                live.end()

    return LiveCallback()


def log_at_save() -> TrainerCallback:
    from transformers import TrainerCallback

    class LogAtSave(TrainerCallback):
        """Log at every checkpoint (before it is saved): the Trainer averages the loss since the last log, so a run
        resumed between two logs would log another mean than the uninterrupted run. The final save needs no log."""

        def on_step_end(self, args, state, control, **kwargs):
            if control.should_save and not control.should_training_stop:
                control.should_log = True

    return LogAtSave()


def last_logged(log_history: list[dict], key: str) -> float | None:
    return first_logged(list(reversed(log_history)), key)


def first_logged(log_history: list[dict], key: str) -> float | None:
    for entry in log_history:
        if key in entry:
            return float(entry[key])
    return None


def write_train_summary(cfg: Config, run: str, trainer: Any, keys: dict[str, str]) -> dict[str, Any]:
    """results/train/<run>.json: optimizer steps and the last logged value of each trainer log key (rank 0)."""
    history = trainer.state.log_history
    summary: dict[str, Any] = {"steps": trainer.state.global_step}
    summary |= {name: last_logged(history, key) for name, key in keys.items()}
    if is_main_process():
        write_json(cfg.paths.results / "train" / f"{run}.json", summary)
    return summary


# --------------------------------------------------------------------------- saving


def save_merged(
    cfg: Config,
    trainer: Any,
    start: ModelSource,
    name: str,
    tokenizer: PreTrainedTokenizerBase,
    kind: str = "causal",
    merge: bool = True,
    extra_dirs: dict[str, Path] | None = None,
) -> Path:
    """Save the final adapter and (rank 0) the adapter merged into freshly loaded start weights + base tokenizer.

    The merge reloads the start model in its stored dtype, as the study did, instead of folding the training copy.
    """
    out = model_dir(cfg, name)
    adapter_tmp = CHECKPOINTS / name / "final-adapter"
    trainer.save_model(str(adapter_tmp))  # every rank must call it; it writes on rank 0
    barrier()
    if is_main_process():
        with staged_dir(out) as staging:
            if merge:
                from peft import PeftModel

                base = load_start(cfg, start, kind)
                base.config.pad_token_id = tokenizer.pad_token_id
                merged = PeftModel.from_pretrained(base, str(adapter_tmp)).merge_and_unload()
                merged.save_pretrained(str(staging), safe_serialization=True)
                tokenizer.save_pretrained(str(staging))
            shutil.copytree(adapter_tmp, staging / "adapter")
            for sub, src in (extra_dirs or {}).items():
                if src.exists():
                    shutil.copytree(src, staging / sub)
            for config in staging.rglob("adapter_config.json"):
                sort_adapter_config(config)
            seal_weights(staging)
    barrier()
    return out


def sort_adapter_config(path: Path) -> None:
    """PEFT keeps target_modules as a set and writes it in this process's string-hash order: sort it, so the same
    adapter is the same bytes in every run (PEFT's own layout: indent 2, sorted keys)."""
    config = json.loads(path.read_text(encoding="utf-8"))
    for key in ("target_modules", "exclude_modules"):
        if isinstance(config.get(key), list):
            config[key] = sorted(config[key])
    path.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")


def load_start(cfg: Config, start: ModelSource, kind: str) -> PreTrainedModel:
    if kind == "causal":
        return load_causal_lm(cfg, start)
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(
        start.path,
        revision=start.revision,
        num_labels=1,
        dtype=torch_dtype(cfg),
        attn_implementation=cfg.base_model.attn_implementation,
    )
