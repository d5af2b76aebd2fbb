"""The package's fact files (this folder), each read once: the synthetic world's response phrases (world.yaml) and
its entities and wording (synth_world.yaml), the study's evaluation facts (study.yaml), the input schemas
(datasets.yaml), the evaluation dataset registry (eval_datasets.yaml), the headline metrics' registry, our judge
prompts and the mid-training proxy (proxy.yaml).

The models are strict: a key a file lacks, or one its model does not know, is one ConfigError naming the file and
the key, never a silent default.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from functools import cache, partial
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from sycorec.config import EVAL_DATASETS_FILE, Config, format_validation_error, load_yaml_text
from sycorec.errors import ConfigError

HERE = Path(__file__).resolve().parent
WORLD_FILE = HERE / "world.yaml"
SYNTH_WORLD_FILE = HERE / "synth_world.yaml"
STUDY_FILE = HERE / "study.yaml"
JUDGE_PROMPTS_FILE = HERE / "judge_prompts.yaml"
METRIC_REGISTRY_FILE = HERE / "metric_registry.yaml"
PROXY_FILE = HERE / "proxy.yaml"
DATASETS_FILE = HERE / "datasets.yaml"

T = TypeVar("T")


class Facts(BaseModel):
    # a key the model does not know is an error, not an ignored typo; frozen: the cached facts are shared
    model_config = ConfigDict(extra="forbid", frozen=True)


@cache
def load_facts(path: Path, kind: type[T]) -> T:
    """Parse one fact file (duplicate keys refused) and validate it into `kind`, once: the facts are frozen."""
    data = load_yaml_text(path.read_text(encoding="utf-8"), str(path))
    try:
        return TypeAdapter(kind).validate_python(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {format_validation_error(exc)}") from None


# --------------------------------------------------------------------------- datasets.yaml


@cache
def schemas() -> dict[str, Any]:
    """The input schema tables (templates, base keys per sub-dataset, CSV header, training fields)."""
    return yaml.safe_load(DATASETS_FILE.read_text(encoding="utf-8"))


def mc_letters(base: dict) -> list[str]:
    """The row's option letters: base.letters where present, else every `(X)` in base.answers, in order."""
    if isinstance(base.get("letters"), str) and base["letters"].strip():
        return list(base["letters"].strip())
    found = re.findall(schemas()["are_you_sure"]["letter_pattern"], str(base.get("answers", "")))
    return list(dict.fromkeys(found))


# --------------------------------------------------------------------------- eval_datasets.yaml

RowSchema = Literal["answer", "are_you_sure", "feedback"]  # datasets.yaml's SycophancyEval row schemas
Verdict = Literal["answer", "are_you_sure", "feedback"]  # the judge's verdict schemas (evaluation/judge.py)


class DatasetJudge(Facts):
    template: str  # the judge prompt's key; `{field}` is filled from the item (feedback/{sub_dataset})
    verdict: Verdict


class EvalDataset(Facts):
    """One evaluation dataset, declared as data: what prepare, generate, judge and score do with it."""

    file: str
    row_schema: RowSchema = Field(alias="schema")  # a field named `schema` would shadow BaseModel.schema
    mode: Literal["free_form", "two_pass"]
    seen: bool
    judge: DatasetJudge
    headline: bool


@cache
def registry(include: tuple[Path, ...] = ()) -> dict[str, EvalDataset]:
    """The package's evaluation datasets and those of `include` (resolved paths); a name registered twice, or two
    headline datasets of one verdict schema, is a ConfigError."""
    entries: dict[str, EvalDataset] = {}
    for path in (EVAL_DATASETS_FILE, *include):
        for name, entry in load_facts(path, dict[str, EvalDataset]).items():
            if name in entries:
                raise ConfigError(f"{path}: evaluation dataset {name!r} is registered twice")
            entries[name] = entry
    twice = [v for v, n in Counter(e.judge.verdict for e in entries.values() if e.headline).items() if n > 1]
    if twice:
        raise ConfigError(f"{[EVAL_DATASETS_FILE, *include][-1]}: a second headline dataset of verdict {twice[0]!r}")
    return entries


def eval_datasets(cfg: Config) -> dict[str, EvalDataset]:
    """The datasets `evaluation.datasets` selects, in its order."""
    known = registry(tuple(path.resolve() for path in cfg.evaluation.include))
    return {name: known[name] for name in cfg.evaluation.datasets}


def headline_sources() -> dict[str, str]:
    """Verdict schema -> the dataset whose rows are its headline components (the package's registry)."""
    return {entry.judge.verdict: name for name, entry in registry().items() if entry.headline}


# --------------------------------------------------------------------------- world.yaml


class AnswerPhrases(Facts):
    honest: str
    honest_correction: str
    sycophantic_agree: str
    sycophantic_by_intensity: dict[str, str]  # intensity (subtle, moderate, extreme) -> phrase
    hedge: str
    refuse: str
    stated_answer_marker: str


class ChallengePhrases(Facts):
    maintain: str
    flip: str


class FeedbackPhrases(Facts):
    positive: str
    negative: str
    error_mention: str
    praise_markers: list[str]
    criticism_markers: list[str]
    error_markers: list[str]


class WorldPhrases(Facts):
    """The response phrases the synthetic data writes and the rule judge reads back."""

    answer: AnswerPhrases
    are_you_sure: ChallengePhrases
    feedback: FeedbackPhrases


# --------------------------------------------------------------------------- synth_world.yaml


class Attribute(Facts):
    question: str
    category: str
    syllables: list[str]
    key: str | None = None  # the attribute whose syllable decides this one (default: its own)
    values: list[str]


class Corpus(Facts):
    """How many pretraining transcripts of each kind (feedback_items: per feedback sub-dataset)."""

    pressured_per_fact: int
    tactic: int
    context: int
    ays_free_form: int
    free_form: int
    ays_mc: int
    mc: int
    proxy: int
    feedback_items: int


class SynthAreYouSure(Facts):
    mc_template: str
    free_form_template: str
    mc_prefill: str
    challenges: list[str]
    aqua_letters: str  # letters as one string: the rows carry them so
    letters: str


class SynthProxy(Facts):
    format: str


class FeedbackKind(Facts):
    noun: str
    template: str


class ArgumentsKind(FeedbackKind):
    errors: dict[str, str]  # logical error -> argument pattern


class PoemsKind(FeedbackKind):
    models: list[str]
    types: list[str]
    lines: list[str]
    weakness: str


class MathKind(FeedbackKind):
    question: str
    solution: str


class SynthFeedback(Facts):
    sentiments: dict[str, str]  # metadata.prompt_template_type -> the sentence it adds
    arguments: ArgumentsKind
    poems: PoemsKind
    math: MathKind


class SynthWorld(Facts):
    """Entities, attribute rules and prompt wording of the tiny profile's world."""

    attributes: dict[str, Attribute]
    neutral_syllables: list[str]
    truthful_share: float
    dropped_share: float
    aqua_share: float
    pretrain_entities: int
    corpus: Corpus
    context: list[str]
    tactics: dict[str, str]
    are_you_sure: SynthAreYouSure
    proxy: SynthProxy
    feedback: SynthFeedback


# --------------------------------------------------------------------------- study.yaml


class AnswerFacts(Facts):
    templates: list[str]
    pressured: list[str]
    reference: str
    verdicts: list[str]


class AreYouSureFacts(Facts):
    letter_pattern: str
    fallback_letters: list[str]
    mc_keys: list[str]
    mc_user: str
    mc_assistant: str
    free_form_user: str
    free_form_fallback_suggestion: str
    challenges: dict[str, str]  # challenge mode (study, anthropic) -> wording


class FeedbackFacts(Facts):
    sub_datasets: list[str]
    templates: list[str]
    sentiment: dict[str, str | None]
    shifts: dict[str, str]


class StudyTemplate(Facts):
    name: str
    fields: dict[str, str]  # placeholder -> source
    defaults: dict[str, str] = {}  # placeholder -> the study builder's text when the row lacks the source


class StudyPrompts(Facts):
    file: str
    sentiment_function: str
    sentiment_variable: str
    templates: dict[str, StudyTemplate]


class JudgeFacts(Facts):
    study_prompts: StudyPrompts


class PublishedAggregate(Facts):
    components: list[float]
    aggregate: float
    source: str


class RuleJudgeFacts(Facts):
    honest_assessment: dict[str, str]
    push: dict[str, str | None]


class Study(Facts):
    answer: AnswerFacts
    are_you_sure: AreYouSureFacts
    feedback: FeedbackFacts
    judge: JudgeFacts
    nan_text: str  # how the study printed an upstream NaN (read here as null)
    parse_failure_defaults: dict[str, dict[str, str | bool | None]]  # dataset -> verdict fields
    published_aggregates: dict[str, PublishedAggregate]
    rule_judge: RuleJudgeFacts


# --------------------------------------------------------------------------- judge prompts and metric registry


class JudgePrompt(Facts):
    verdict_schema: str = Field(alias="schema")  # a field named `schema` would shadow BaseModel.schema
    text: str


class JudgePrompts(Facts):
    no_sentiment: str
    sentiment: str
    answer: JudgePrompt
    are_you_sure: JudgePrompt
    feedback: dict[str, JudgePrompt]


class Metric(Facts):
    definition: str
    higher_is_better: bool
    version: int


def headline_keys() -> list[str]:
    return list(metric_registry())


def higher_is_better(metric: str) -> bool:
    return metric_registry()[metric].higher_is_better


def metric_versions(keys: Iterable[str]) -> dict[str, dict[str, Any]]:
    """What a metrics file records of its metrics' definitions: name → {version, higher_is_better}."""
    registry = metric_registry()
    return {key: {"version": registry[key].version, "higher_is_better": registry[key].higher_is_better} for key in keys}


# --------------------------------------------------------------------------- proxy.yaml


class Proxy(Facts):
    """The study's mid-training logit proxy."""

    templates: dict[str, str]
    pressured: list[str]
    user_message: str
    prefill: str
    letters: list[str]
    batch_size: int


# --------------------------------------------------------------------------- the loaders, each file parsed once
world = partial(load_facts, WORLD_FILE, WorldPhrases)
synth_world = partial(load_facts, SYNTH_WORLD_FILE, SynthWorld)
study = partial(load_facts, STUDY_FILE, Study)
judge_prompts = partial(load_facts, JUDGE_PROMPTS_FILE, JudgePrompts)
metric_registry = partial(load_facts, METRIC_REGISTRY_FILE, dict[str, Metric])
proxy_spec = partial(load_facts, PROXY_FILE, Proxy)
