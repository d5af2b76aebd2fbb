"""Judge prompt sets: the study's templates (read from its pinned `judge_prompts.py` without executing it) or our own
wording (judge_prompts.yaml). Our own are rendered strictly: a placeholder the row cannot fill is an error, never a
default. The study's are rendered as its builders did: their defaults for a missing field, a null printed as they
printed it (study.yaml `judge.study_prompts`); a field they required is still an error.

A prompt set maps each template key (`answer`, `are_you_sure`, `feedback/<sub-dataset>`) to its text and to the
source of each placeholder: a key of the item's `base` or one of the values `judge.build_prompt` computes
(`COMPUTED`). The study's placeholder names and where the study's builders took their values from are study facts
(study.yaml `judge.study_prompts`).
"""

from __future__ import annotations

import ast
import re
import string
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from sycorec.errors import DataError
from sycorec.facts import judge_prompts, schemas, study

# Values the judge computes for every request; anything else a template names must be a key of the item's base.
COMPUTED = ("response", "variations", "answers", "initial_answer", "suggestion", "challenge", "sentiment")


@dataclass(frozen=True)
class PromptSet:
    name: str  # study | own
    texts: dict[str, str]  # template key -> template text
    fields: dict[str, dict[str, str]]  # template key -> placeholder -> source (a base key or a COMPUTED name)
    sentiment: dict[str, str]  # feedback template name (baseline, like, ...) -> the sentiment line shown
    defaults: dict[str, dict[str, str]]  # template key -> placeholder -> text when the item lacks the source
    null: str  # how a null value renders


def placeholders(text: str) -> list[str]:
    return list(dict.fromkeys(name for _, name, _, _ in string.Formatter().parse(text) if name is not None))


def fill(prompts: PromptSet, key: str, values: dict[str, object], where: str) -> str:
    """Fill template `key`; a placeholder whose source the item lacks takes the prompt set's default for it, or raises
    DataError naming template, field, row. A source present with a null value (an upstream `NaN`) renders as the
    prompt set's `null`.
    """
    text = prompts.texts[key]
    defaults = prompts.defaults.get(key, {})
    filled = {}
    for name in placeholders(text):
        source = prompts.fields[key].get(name, name)
        if source in values:
            value = values[source]
            filled[name] = prompts.null if value is None else str(value)
        elif name in defaults:
            filled[name] = defaults[name]
        else:
            raise DataError(
                f"judge template {prompts.name}:{key}: placeholder {{{name}}} needs field {source!r}, "
                f"which item {where} does not have"
            )
    return text.format(**filled)


def template_regex(text: str) -> re.Pattern[str]:
    """A pattern that matches exactly the renderings of `text` and captures each placeholder's value."""
    parts, seen = [], set()
    for literal, name, _, _ in string.Formatter().parse(text):
        parts.append(re.escape(literal))
        if name is None:
            continue
        parts.append(f"(?P={name})" if name in seen else f"(?P<{name}>.*?)")
        seen.add(name)
    return re.compile("".join(parts), re.DOTALL)


# --------------------------------------------------------------------------- our own wording


@lru_cache(maxsize=1)
def own_prompts() -> PromptSet:
    doc = judge_prompts()
    texts = {"answer": doc.answer.text, "are_you_sure": doc.are_you_sure.text}
    texts.update({f"feedback/{sub}": prompt.text for sub, prompt in doc.feedback.items()})
    lines = study().feedback.sentiment
    sentiment = {name: doc.sentiment.format(line=line) if line else doc.no_sentiment for name, line in lines.items()}
    return PromptSet("own", texts, {key: {} for key in texts}, sentiment, {}, "")


# --------------------------------------------------------------------------- the study's file, read with `ast`


def _module_strings(tree: ast.Module) -> dict[str, ast.expr]:
    return {
        target.id: node.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }


def _literal(node: ast.expr, what: str, path: Path) -> object:
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise DataError(f"{path}: {what} is not a literal (the pinned file changed shape)") from None


def read_study_prompts(path: str | Path) -> PromptSet:
    """The study's template strings and sentiment labels, parsed (never executed) from its judge_prompts.py."""
    path = Path(path)
    spec = study().judge.study_prompts
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, UnicodeDecodeError, SyntaxError) as exc:
        raise DataError(f"{path}: cannot read the study's judge prompts ({exc.__class__.__name__}: {exc})") from None
    assigned = _module_strings(tree)
    texts, fields = {}, {}
    defaults = {key: dict(template.defaults) for key, template in spec.templates.items()}
    for key, template in spec.templates.items():
        if template.name not in assigned:
            raise DataError(f"{path}: no module-level {template.name} (judge template {key})")
        text = _literal(assigned[template.name], template.name, path)
        if not isinstance(text, str):
            raise DataError(f"{path}: {template.name} is not a string")
        if set(placeholders(text)) != set(template.fields):
            raise DataError(
                f"{path}: {template.name} has placeholders {sorted(placeholders(text))}, "
                f"pinned {sorted(template.fields)}"
            )
        texts[key], fields[key] = text, dict(template.fields)
    function = next(
        (n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == spec.sentiment_function), None
    )
    table = None
    if function is not None:
        table = next(
            (
                node.value
                for node in ast.walk(function)
                if isinstance(node, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == spec.sentiment_variable for t in node.targets)
            ),
            None,
        )
    if table is None:
        raise DataError(f"{path}: no {spec.sentiment_variable} table in {spec.sentiment_function}()")
    labels = _literal(table, spec.sentiment_variable, path)
    names = schemas()["feedback"]["template_types"]  # prompt_template_type -> template name
    if not isinstance(labels, dict) or set(labels) != set(names):
        raise DataError(f"{path}: the sentiment labels do not cover the feedback template types {sorted(names)}")
    sentiment = {names[t]: str(line) for t, line in labels.items()}
    return PromptSet("study", texts, fields, sentiment, defaults, study().nan_text)


def study_prompts_path(raw: Path) -> Path:
    return raw / study().judge.study_prompts.file


def load_prompt_set(mode: str, raw: Path) -> PromptSet:
    if mode == "own":
        return own_prompts()
    path = study_prompts_path(raw)
    if not path.is_file():
        raise DataError(
            f"{path}: the study's judge prompts are missing (judge.prompts: study); run `sycorec data fetch` "
            "or set judge.prompts: own"
        )
    return read_study_prompts(path)
