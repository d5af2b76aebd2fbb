"""Typed view of params.yaml (plus an optional profile overlay), validated once.

Every stage gets its slice from `load_config()`. Unknown keys and wrong types fail with one line that
names the key path, e.g. `train.dpo.beta: expected float, got 'high'`.

The trainer slices (`lora`, `train.common`, `train.sft|dpo|simpo|ipo|rm|grpo|relearn`) use TRL's and PEFT's own field
names and go to their config class as they are (`LibrarySlice`); the package's own keys live beside them (`OWN`).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import re
import warnings
from collections.abc import Hashable
from fnmatch import fnmatchcase
from functools import cache, lru_cache
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from sycorec.errors import ConfigError

CHECKPOINTS = Path("outputs/checkpoints")  # every trainer's output_dir: outputs/checkpoints/<run>

PARAMS_FILE = "params.yaml"
PROFILES_DIR = "profiles"
# The evaluation dataset registry (sycorec.facts validates it whole); the config reads only its names.
EVAL_DATASETS_FILE = Path(__file__).resolve().parent / "facts" / "eval_datasets.yaml"

# What a profile may change (house rule 1: the demo runs the cluster's code path): what a CPU and a tiny model force.
# Dotted key paths; `*` matches any run of keys. Anything else a profile overrides is a drift onto a path the full
# study never takes: loading such a profile is refused.
PROFILE_MAY_OVERRIDE = (
    # which run it is, and where its data and base model come from
    "profile",
    "paths.raw",
    "paths.raw_dep",
    "data.source",
    "data.synth.*",
    "base_model.name",
    "base_model.revision",
    "train.pretrain_tiny.*",
    # dtype
    "base_model.dtype",
    "train.common.bf16",
    # backends a CPU forces: transformers for vLLM, the rule judge (and the wording it reads) for the 72B judge
    "generation.backend",
    "judge.backend",
    "judge.model",
    "judge.revision",
    "judge.prompts",
    # the mid-training proxy's readout (a tiny model cannot map answers to letters)
    "train.common.proxy_readout",
    # the organism's seed sweep, shown beside the demo's headline numbers (the full study ran one seed)
    "report.seed_sweep",
    # sizes, steps, learning rates, hardware
    "*.learning_rate",
    "*.num_train_epochs",
    "*.max_steps",
    "*.save_steps",
    "*.eval_every_steps",
    "*.logging_steps",
    "*.per_device_train_batch_size",
    "*.gradient_accumulation_steps",
    "*.num_gpus",
    "*.num_generations",
    "*.tensor_parallel_size",
    "*.batch_size",
    "*.max_length",
    "*.max_completion_length",
    "*.max_new_tokens",
    "*.max_samples",
    "*.n_prompts",
    "*.generations_per_prompt",
    "*.proxy_questions",
    "*.bootstrap_iterations",
    "*.permutations",
)

PositiveLR = PositiveFloat
Fraction = float
# Every seed reaches numpy's legacy seeding (transformers' set_seed), which takes 0 to 2**32 - 1 only.
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]

# Model names become paths, DVC stage names and sbatch values: nothing that could leave its directory or a word.
MODEL_NAME = re.compile(r"[A-Za-z0-9_.-]+")
# ... and parts of file names (`.relearn_<name>.<12 hex>.tmp`, `<name>.jsonl`) that must stay under NAME_MAX (255).
MODEL_NAME_MAX = 100


def _model_name(name: str) -> str:
    if not MODEL_NAME.fullmatch(name) or set(name) == {"."}:
        raise ValueError(f"model name {name!r} must match ^[A-Za-z0-9_.-]+$ and not be only dots")
    if len(name) > MODEL_NAME_MAX:
        raise ValueError(f"model name {name[:20]!r}... has {len(name)} characters, more than {MODEL_NAME_MAX}")
    return name


ModelName = Annotated[str, AfterValidator(_model_name)]


class Section(BaseModel):
    # inf/nan are never a valid setting (an infinite learning rate would pass `> 0`)
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True, allow_inf_nan=False)


class Paths(Section):
    raw: Path
    raw_dep: Path  # what DVC tracks for paths.raw (params.yaml says why it is not data/raw at full scale)
    prepared: Path
    models: Path
    eval: Path
    probing: Path
    results: Path
    cache: Path


class BaseModelCfg(Section):
    name: str
    revision: str
    dtype: Literal["bfloat16", "float16", "float32"]
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"]


class RepoPin(Section):
    repo: str
    commit: str


class TruthfulQAPin(RepoPin):
    hf_dataset: str
    hf_revision: str


class TrainingDataPin(Section):
    hf_dataset: str
    hf_revision: str


class SynthCfg(Section):
    n_facts: PositiveInt
    n_arguments: PositiveInt
    n_poems: PositiveInt
    n_math: PositiveInt
    intensity_mix: tuple[float, float, float]

    @model_validator(mode="after")
    def _mix_sums_to_one(self) -> SynthCfg:
        if abs(sum(self.intensity_mix) - 1.0) > 1e-6:
            raise ValueError(f"intensity_mix must sum to 1, got {sum(self.intensity_mix):g}")
        return self


class DataCfg(Section):
    source: Literal["fetch", "synth"]
    sycophancy_eval: RepoPin
    truthfulqa: TruthfulQAPin
    training_data: TrainingDataPin
    study_code: RepoPin  # the study's repository: its judge prompts are a pinned input
    synth: SynthCfg


class PrepareCfg(Section):
    val_split: float = Field(gt=0, lt=1)
    rm_val_split: float = Field(gt=0, lt=1)
    split_seed: Seed
    split_by: Literal["row", "question"]
    proxy_questions: PositiveInt
    proxy_seed: Seed
    duplicate_eval_rows: Literal["keep", "drop"]
    split_sha256: dict[Literal["sft_val.jsonl", "prefs_val.jsonl", "rm_val.jsonl"], str]


def _config_class(config_class: str) -> type:
    module, name = config_class.split(":")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # trl.experimental warns on import
        return getattr(importlib.import_module(module), name)


@cache
def config_fields(config_class: str) -> frozenset[str]:
    """The init fields of a TRL/PEFT config dataclass named `module:Class`.

    Importing TRL takes seconds, so this runs only for a key a slice does not declare: loading the committed params
    imports none of torch, transformers, TRL or PEFT.
    """
    return frozenset(field.name for field in dataclasses.fields(_config_class(config_class)) if field.init)


# What a TrainingArguments subclass needs to be built on a machine without a GPU, beside the value checked.
_NEUTRAL_ARGS = {"output_dir": "checked-at-load", "bf16": False, "fp16": False, "use_cpu": True, "report_to": "none"}


def passthrough_problem(config_class: str, key: str, value: Any, context: dict[str, Any]) -> str | None:
    """Why `key: value` would fail in training, checked now: the field's type (finite numbers only), the config
    class's own checks (TrainingArguments' and TRL's __post_init__, with the slice's other fields in `context`) and,
    for Adam's betas and epsilon, which the Trainer hands to torch's optimizer unchecked, torch's own."""
    import typing

    cls = _config_class(config_class)
    try:
        hint = typing.get_type_hints(cls)[key]
    except (NameError, TypeError):  # a hint naming an optional library's type: check the value without it
        hint = Any
    try:
        value = TypeAdapter(hint, config=ConfigDict(allow_inf_nan=False)).validate_python(value)
    except ValidationError as exc:
        return format_validation_error(exc)
    import torch
    from transformers import TrainingArguments

    try:
        if issubclass(cls, TrainingArguments):
            cls(**{**context, **_NEUTRAL_ARGS, key: value})
        weight = [torch.zeros(1, requires_grad=True)]
        if key in ("adam_beta1", "adam_beta2"):
            betas = [0.9, 0.999]
            betas[key == "adam_beta2"] = value
            torch.optim.AdamW(weight, betas=tuple(betas))
        elif key == "adam_epsilon":
            torch.optim.AdamW(weight, eps=value)
    except (ValueError, TypeError) as exc:
        return f"{str(exc).strip().splitlines()[0].rstrip('.')}, got {value!r}"
    return None


class LibrarySlice(Section):
    """A slice whose keys are the field names of a TRL/PEFT config class (`CONFIG_CLASS`), passed to it as they are.

    Declared fields keep their types and ranges; any other field of the class may be set and is checked at load as the
    library will check it (passthrough_problem); a key that is no field of it is refused like any unknown key. `OWN`
    names the package's keys beside them (proxy cadence, GPUs, calibration, ...), which never reach the class.
    """

    model_config = ConfigDict(extra="allow")
    CONFIG_CLASS: ClassVar[str]
    OWN: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def config_class_of(cls, data: dict[str, Any]) -> str:
        return cls.CONFIG_CLASS

    @model_validator(mode="before")
    @classmethod
    def _undeclared_keys_are_fields(cls, data: Any) -> Any:
        # before the fields, so that a misspelt key is named even when it leaves a required one missing
        undeclared = [key for key in data if key not in cls.model_fields] if isinstance(data, dict) else []
        config_class = cls.config_class_of(data) if undeclared else ""
        known = config_fields(config_class) if undeclared else frozenset()
        name = config_class.split(":")[-1]
        errors = [
            InitErrorDetails(
                type=PydanticCustomError("not_a_field", "unknown key (not a field of {name})", {"name": name}),
                loc=(key,),
                input=data[key],
            )
            for key in undeclared
            if key not in known
        ]
        context = {key: value for key, value in data.items() if key in known and key not in cls.OWN}
        for key in undeclared:
            if key in known and (problem := passthrough_problem(config_class, key, data[key], context)):
                errors.append(
                    InitErrorDetails(
                        type=PydanticCustomError("not_a_field", "{problem}", {"problem": problem}),
                        loc=(key,),
                        input=data[key],
                    )
                )
        if errors:
            # raised as a ValidationError so that each error keeps its key's path
            raise ValidationError.from_exception_data(cls.__name__, errors)
        return data

    def library_kwargs(self) -> dict[str, Any]:
        """This slice's arguments for CONFIG_CLASS: every field but the package's own."""
        return self.model_dump(exclude=set(self.OWN))


class LoraCfg(LibrarySlice):
    CONFIG_CLASS = "peft:LoraConfig"

    r: PositiveInt
    lora_alpha: PositiveInt
    lora_dropout: float = Field(ge=0, lt=1)
    target_modules: str | list[str]
    bias: Literal["none", "all", "lora_only"]


class CommonTrainCfg(LibrarySlice):
    """What every trainer stage shares; its TRL keys go to each stage's TRL config, under the stage's own slice."""

    CONFIG_CLASS = "transformers:TrainingArguments"  # the base of every TRL config
    # max_length is also the RM's and the proxy's; the stages whose TRL config has the field pass it explicitly
    OWN = frozenset({"max_length", "keep_proxy_best", "proxy_readout", "num_gpus"})

    seed: Seed
    bf16: bool
    gradient_checkpointing: bool
    logging_steps: PositiveInt
    optim: str
    weight_decay: float = Field(ge=0)
    max_grad_norm: PositiveFloat
    save_total_limit: PositiveInt
    max_length: PositiveInt
    keep_proxy_best: bool
    proxy_readout: Literal["letter", "answer"]
    num_gpus: PositiveInt


class PretrainTinyCfg(Section):
    enabled: bool
    hidden_size: PositiveInt
    num_layers: PositiveInt
    num_heads: PositiveInt
    num_kv_heads: PositiveInt
    intermediate_size: PositiveInt
    vocab_size: PositiveInt
    max_steps: PositiveInt
    learning_rate: PositiveLR
    warmup_ratio: float = Field(ge=0, lt=1)
    batch_size: PositiveInt
    min_plain_accuracy: float = Field(ge=0, le=1)
    eval_questions: PositiveInt  # corpus plain questions re-asked to report training-set accuracy
    save_steps: PositiveInt  # checkpoint cadence: a killed run resumes from the last checkpoint


class OptimCfg(LibrarySlice):
    """A trainer stage's own schedule, batch and length; train.common holds what the stages share."""

    OWN = frozenset({"eval_every_steps"})  # the mid-training proxy's cadence

    learning_rate: PositiveLR
    lr_scheduler_type: Literal["cosine", "linear", "constant", "constant_with_warmup"]
    warmup_ratio: float = Field(ge=0, lt=1)
    num_train_epochs: float = Field(default=1, gt=0)
    max_steps: int = -1
    per_device_train_batch_size: PositiveInt
    gradient_accumulation_steps: PositiveInt
    save_steps: PositiveInt = 200
    eval_every_steps: PositiveInt = 50


class SFTCfg(OptimCfg):
    CONFIG_CLASS = "trl:SFTConfig"

    completion_only_loss: bool


# `module:Class`, e.g. trl:DPOTrainer or trl.experimental.cpo:CPOConfig
ClassPath = Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")]
# loss types of TRL 0.29.1's DPOConfig, CPOConfig and KTOConfig (ORPOConfig has none)
PreferenceLoss = Literal[
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
    "simpo",
    "alphapo",
    "kto",
    "apo_zero_unpaired",
]


class PreferenceCfg(OptimCfg):
    """One row of the preference-method table (train.<method>): the TRL trainer and config class the method runs,
    the data it trains on (`pairs`: prompt, chosen, rejected; `unpaired`: each pair as a desirable and an
    undesirable completion, TRL's unpaired preference format), then the config class's own fields."""

    OWN = OptimCfg.OWN | {"trainer", "config_class", "data"}
    OPTIONAL: ClassVar[tuple[str, ...]] = (
        "loss_type",
        "beta",
        "simpo_gamma",
        "cpo_alpha",
        "desirable_weight",
        "undesirable_weight",
    )

    trainer: ClassPath
    config_class: ClassPath
    data: Literal["pairs", "unpaired"]
    # the methods' usual fields, declared so that loading params imports no TRL; an unset one keeps TRL's default
    loss_type: PreferenceLoss | None = None
    beta: PositiveFloat | None = None
    simpo_gamma: float | None = None
    cpo_alpha: float | None = Field(default=None, ge=0)
    desirable_weight: PositiveFloat | None = None
    undesirable_weight: PositiveFloat | None = None
    remove_unused_columns: bool | None = None  # False for trainers whose collator reads the raw columns (CPO, ORPO)

    @classmethod
    def config_class_of(cls, data: dict[str, Any]) -> str:
        return str(data.get("config_class", "")) or "trl:DPOConfig"

    def library_kwargs(self) -> dict[str, Any]:
        unset = {name for name in self.OPTIONAL if getattr(self, name) is None}
        return self.model_dump(exclude=set(self.OWN) | unset)


class PreferenceRunCfg(Section):
    methods: list[ModelName] = Field(min_length=1)  # what train_pref runs (dvc.yaml's foreach), each a train.<method>


class RMCalibrationCfg(Section):
    n_prompts: PositiveInt
    generations_per_prompt: PositiveInt
    temperature: PositiveFloat
    top_p: float = Field(gt=0, le=1)
    max_new_tokens: PositiveInt


class RMCfg(OptimCfg):
    CONFIG_CLASS = "trl:RewardConfig"
    OWN = OptimCfg.OWN | {"head_init_seed", "text_format", "calibration"}

    center_rewards_coefficient: float = Field(ge=0)
    head_init_seed: Seed
    text_format: Literal["chat_template", "study"]
    calibration: RMCalibrationCfg


class GRPOVersionCfg(LibrarySlice):
    """One GRPO run's fields, over train.grpo's shared ones."""

    CONFIG_CLASS = "trl:GRPOConfig"
    OWN = frozenset({"num_gpus", "reward"})

    learning_rate: PositiveLR
    num_train_epochs: float = Field(gt=0)
    max_steps: int = -1
    num_generations: int = Field(ge=2)
    per_device_train_batch_size: PositiveInt
    gradient_accumulation_steps: PositiveInt
    save_steps: PositiveInt
    save_total_limit: PositiveInt
    num_gpus: PositiveInt
    reward: Literal["continuous", "binary"]

    @model_validator(mode="after")
    def _generations_divide_batch(self) -> GRPOVersionCfg:
        # TRL: per-device batch × processes × steps_per_generation (= grad-accum) must be a multiple of num_generations.
        batch = self.per_device_train_batch_size * self.num_gpus * self.gradient_accumulation_steps
        if batch % self.num_generations:
            raise ValueError(
                f"num_generations={self.num_generations} does not divide the generation batch "
                f"{batch} (per_device_train_batch_size × num_gpus × gradient_accumulation_steps)"
            )
        return self


class GRPOCfg(LibrarySlice):
    CONFIG_CLASS = "trl:GRPOConfig"
    OWN = frozenset({"eval_every_steps", "versions"})

    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo"]
    scale_rewards: Literal["group", "batch", "none"]
    beta: float = Field(ge=0)
    epsilon: PositiveFloat
    temperature: PositiveFloat
    max_completion_length: PositiveInt
    lr_scheduler_type: Literal["cosine", "linear", "constant"]
    warmup_ratio: float = Field(ge=0, lt=1)
    use_vllm: bool
    log_completions: bool
    eval_every_steps: PositiveInt
    versions: dict[ModelName, GRPOVersionCfg]


class RelearnCfg(LibrarySlice):
    CONFIG_CLASS = "trl:SFTConfig"
    OWN = frozenset({"starts", "eval_every_steps"})

    max_steps: PositiveInt
    num_train_epochs: float = Field(default=1, gt=0)  # max_steps ends the run
    learning_rate: PositiveLR
    lr_scheduler_type: Literal["cosine", "linear", "constant"]
    warmup_ratio: float = Field(ge=0, lt=1)
    per_device_train_batch_size: PositiveInt
    gradient_accumulation_steps: PositiveInt
    starts: list[ModelName]
    eval_every_steps: PositiveInt


class TrainCfg(Section):
    """The trainer slices; every other key is a preference method's row (train.dpo, train.simpo, ...)."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[ModelName, PreferenceCfg] = Field(init=False)

    common: CommonTrainCfg
    pretrain_tiny: PretrainTinyCfg
    sft: SFTCfg
    preference: PreferenceRunCfg
    rm: RMCfg
    grpo: GRPOCfg
    relearn: RelearnCfg

    @property
    def methods(self) -> dict[str, PreferenceCfg]:
        """The preference-method table: every train.<method> row, run or not."""
        return dict(self.__pydantic_extra__ or {})

    def method(self, name: str) -> PreferenceCfg:
        if name not in self.methods:
            raise ConfigError(
                f"unknown preference method {name!r}: no train.{name} row (one of {sorted(self.methods)})"
            )
        return self.methods[name]


class VllmEngineCfg(Section):
    """The vLLM engine settings of the generator and the judge."""

    tensor_parallel_size: PositiveInt
    max_model_len: PositiveInt
    gpu_memory_utilization: float = Field(gt=0, le=1)

    def engine_kwargs(self, model: str, revision: str | None, dtype: str, seed: int, **extra: Any) -> dict[str, Any]:
        """vLLM `LLM(...)` arguments, the tokenizer pinned with the weights; `extra` adds or overrides arguments."""
        engine = {"model": model, "revision": revision, "tokenizer_revision": revision, "dtype": dtype, "seed": seed}
        return (
            engine
            | self.model_dump(include={"tensor_parallel_size", "max_model_len", "gpu_memory_utilization"})
            | extra
        )


class GenerationCfg(VllmEngineCfg):
    backend: Literal["vllm", "hf"]
    temperature: float = Field(ge=0)
    top_p: float = Field(gt=0, le=1)
    top_k: int = Field(ge=-1)  # -1 = off (vLLM's convention); 0 is refused, as vLLM does
    max_new_tokens: PositiveInt
    seed: Seed
    enable_prefix_caching: bool
    batch_size: PositiveInt
    challenge: Literal["study", "anthropic"]
    max_samples: int = Field(ge=0)
    # as_run: the study's `\(([A-E])\)` letters for the guided pass-1 choice; row: every option letter of the row
    mc_letters: Literal["as_run", "row"]

    def decoding(self) -> list[float | int]:
        """The settings a reply depends on, in the generation cache's key."""
        return [self.temperature, self.top_p, self.top_k, self.max_new_tokens, self.seed]

    @field_validator("top_k")
    @classmethod
    def _top_k_not_zero(cls, value: int) -> int:
        if value == 0:
            raise ValueError("0 is not a top_k; use -1 to turn it off or a positive count")
        return value


class JudgeOverride(Section):
    """One model's judge budget: the engine loads once at the largest context; each request keeps to its model's."""

    max_model_len: PositiveInt | None = None
    max_tokens: PositiveInt | None = None


class JudgeCfg(VllmEngineCfg):
    backend: Literal["llm", "rule"]
    model: str
    revision: str
    temperature: float = Field(ge=0)
    max_tokens: PositiveInt
    parse_failure_policy: Literal["exclude", "study_default"]
    prompts: Literal["study", "own"]  # study: the study's judge_prompts.py templates (pinned input) | own wording
    # per-model judge settings (the study judged GRPO v3/v4 with a shorter context and reply budget)
    per_model: dict[str, JudgeOverride] = Field(default_factory=dict)

    def for_model(self, model: str) -> JudgeCfg:
        override = self.per_model.get(model)
        return self.model_copy(update=override.model_dump(exclude_none=True)) if override else self


class EvaluationCfg(Section):
    datasets: list[str] = Field(min_length=1)  # registry entries that run, in this order
    include: list[Path]  # further registry files, as lm-evaluation-harness's include_path


class MetricsCfg(Section):
    bootstrap_iterations: PositiveInt
    ci_level: float = Field(gt=0, lt=1)
    seed: Seed


class ProbingRun(Section):
    """One probing run of the study: its prompt set is the intersection of these models' verdicts."""

    models: list[ModelName]
    max_samples: int = Field(ge=0)  # 0: every prompt of the intersection


class ProbingBeyond(Section):
    """Models beyond the study (method-table rows such as kto, orpo) probed as `run` probes the study's models."""

    run: ModelName
    models: list[ModelName]


class ProbingCfg(Section):
    runs: dict[ModelName, ProbingRun]  # run names become paths and DVC stage names, like model names
    beyond: ProbingBeyond
    reference_model: ModelName
    templates: list[Literal["plain", "suggest_incorrect", "deny_correct", "suggest_correct"]]
    sample_seed: Seed
    val_fraction: float = Field(gt=0, lt=1)
    batch_size: PositiveInt
    max_length: PositiveInt
    C: PositiveFloat
    max_iter: PositiveInt
    bootstrap_iterations: PositiveInt
    permutations: PositiveInt
    control_seeds: PositiveInt
    ablation_alpha: float

    def run(self, name: str) -> ProbingRun:
        if name not in self.runs:
            raise ConfigError(f"no probing run {name!r} in probing.runs {sorted(self.runs)}")
        return self.runs[name]


class ReportCfg(Section):
    published: Path
    figure_dpi: PositiveInt
    seed_sweep: Path | None = None


class Config(Section):
    profile: str
    seed: Seed
    paths: Paths
    models: list[ModelName]
    base_model: BaseModelCfg
    data: DataCfg
    prepare: PrepareCfg
    lora: LoraCfg
    train: TrainCfg
    generation: GenerationCfg
    judge: JudgeCfg
    evaluation: EvaluationCfg
    metrics: MetricsCfg
    probing: ProbingCfg
    report: ReportCfg

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        probing = self.probing
        for name, run in probing.runs.items():
            unknown = [m for m in run.models if m not in self.models]
            if unknown:
                raise ValueError(f"probing.runs.{name}.models names models not in models: {unknown}")
            if probing.reference_model not in run.models:
                raise ValueError(f"probing.reference_model is not in probing.runs.{name}.models")
        beyond = probing.beyond
        if beyond.run not in probing.runs:
            raise ValueError(f"probing.beyond.run: {beyond.run!r} is not in probing.runs {sorted(probing.runs)}")
        if unknown := [m for m in beyond.models if m not in self.models]:
            raise ValueError(f"probing.beyond.models names models not in models: {unknown}")
        if probed := [m for m in beyond.models if m in probing.runs[beyond.run].models]:
            raise ValueError(f"probing.beyond.models: {probed} already probed by probing.runs.{beyond.run}")
        for version in self.train.grpo.versions:
            if f"grpo_{version}" not in self.models:
                raise ValueError(f"train.grpo.versions.{version} has no model grpo_{version} in models")
        for method in self.train.preference.methods:
            if method not in self.train.methods:
                raise ValueError(f"train.preference.methods: {method} has no row train.{method}")
            if method not in self.models:
                raise ValueError(f"train.preference.methods: {method} is trained but not evaluated (add it to models)")
        known = [name for path in (EVAL_DATASETS_FILE, *self.evaluation.include) for name in _read_yaml(path)]
        unknown = [name for name in self.evaluation.datasets if name not in known]
        if unknown:
            raise ValueError(f"evaluation.datasets: {unknown} not in the dataset registry (registered: {known})")
        return self

    @property
    def is_tiny(self) -> bool:
        return self.profile != "full"


def deep_merge(base: dict, overlay: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


_TYPE_WORDS = {
    "float_parsing": "float",
    "float_type": "float",
    "int_parsing": "int",
    "int_type": "int",
    "int_from_float": "int",
    "bool_parsing": "bool",
    "bool_type": "bool",
    "string_type": "str",
    "list_type": "list",
    "dict_type": "mapping",
    "model_type": "mapping",
    "tuple_type": "list",
}


def _describe(error: dict) -> str:
    """One line per pydantic error: `key.path: what is wrong`."""
    loc = ".".join(str(part) for part in error["loc"])
    kind = error["type"]
    if kind in _TYPE_WORDS:
        message = f"expected {_TYPE_WORDS[kind]}, got {error['input']!r}"
    elif kind == "extra_forbidden":
        message = "unknown key"
    elif kind == "not_a_field":
        message = error["msg"]
    elif kind == "missing":
        message = "required key is missing"
    elif kind == "value_error":
        message = str(error["ctx"]["error"]) if "ctx" in error else error["msg"]
    else:
        message = f"{error['msg'].lower()}, got {error['input']!r}"
    return f"{loc}: {message}" if loc else message


def overridden_paths(base: Any, overlay: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the leaves `overlay` sets to something other than `base` has."""
    if isinstance(overlay, dict) and isinstance(base, dict):
        return [
            path for key, value in overlay.items() for path in overridden_paths(base.get(key), value, f"{prefix}{key}.")
        ]
    return [] if overlay == base else [prefix.rstrip(".")]


def disallowed_overrides(base: dict, overlay: dict) -> list[str]:
    """Keys `overlay` changes that PROFILE_MAY_OVERRIDE does not allow."""
    changed = overridden_paths(base, overlay)
    return [p for p in changed if not any(fnmatchcase(p, pattern) for pattern in PROFILE_MAY_OVERRIDE)]


def format_validation_error(exc: ValidationError) -> str:
    lines = [_describe(err) for err in exc.errors(include_url=False)]
    return lines[0] if len(lines) == 1 else f"{lines[0]} (and {len(lines) - 1} more: {'; '.join(lines[1:])})"


def available_profiles(root: Path) -> list[str]:
    return sorted(p.stem for p in (root / PROFILES_DIR).glob("*.yaml"))


class DuplicateKeyError(yaml.constructor.ConstructorError):
    pass


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (PyYAML lets the last one win silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # SafeLoader reports an unhashable key itself
            if key in seen:
                raise DuplicateKeyError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml_text(text: str, where: str) -> Any:
    """Parse YAML with unique keys; a problem is one ConfigError naming `where` and the line."""
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        what = exc.problem if isinstance(exc, DuplicateKeyError) else f"not valid YAML ({exc.problem})"
        raise ConfigError(f"{where}{line}: {what}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML ({exc.__class__.__name__})") from None


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: not found") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:  # a directory, unreadable, ...
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    data = load_yaml_text(text, str(path))
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def read_mapping(path: Path, *keys: str) -> dict:
    """A YAML file holding a mapping with at least `keys` (duplicate keys refused); anything else is one ConfigError."""
    data = _read_yaml(path)
    missing = [key for key in keys if key not in data]
    if missing:
        raise ConfigError(f"{path}: missing the key(s) {', '.join(missing)}")
    return data


def resolve_raw(params: str | Path = PARAMS_FILE, profile: str | None = None) -> dict[str, Any]:
    """params.yaml merged with profiles/<profile>.yaml, before validation."""
    params = Path(params)
    raw = _read_yaml(params)
    if profile:
        root = params.resolve().parent
        overlay_path = root / PROFILES_DIR / f"{profile}.yaml"
        if not overlay_path.is_file():
            names = ", ".join(available_profiles(root)) or "none"
            raise ConfigError(f"unknown profile {profile!r} (available: {names})")
        overlay = _read_yaml(overlay_path)
        if drift := disallowed_overrides(raw, overlay):
            raise ConfigError(
                f"{overlay_path}: a profile may not change {', '.join(drift)} "
                "(only sizes, steps, learning rates, dtype and backends: PROFILE_MAY_OVERRIDE in sycorec/config.py)"
            )
        raw = deep_merge(raw, overlay)
    return raw


def validate(raw: dict[str, Any]) -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


@lru_cache(maxsize=8)
def _load_cached(params: str, profile: str | None, version: tuple[int, ...]) -> Config:
    return validate(resolve_raw(params, profile))


def load_config(params: str | Path = PARAMS_FILE, profile: str | None = None) -> Config:
    """Load and validate once per (file, profile, version of the file)."""
    path = Path(params).resolve()
    # mtime alone misses a rewrite within one clock tick; an atomic rewrite also changes the inode
    stat = path.stat() if path.exists() else None
    version = (stat.st_mtime_ns, stat.st_size, stat.st_ino) if stat else ()
    return _load_cached(str(path), profile, version)
