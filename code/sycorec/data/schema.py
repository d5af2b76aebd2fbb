"""Loaders and validators for every input file, real or synthetic: one code path, driven by facts/datasets.yaml.

A problem in a row is reported as `file:line: what is wrong`. Loaders raise `DataError` on the first one;
`validate_file` collects them (capped) and keeps going, so one run reports every broken file.
Bare `NaN`/`Infinity` tokens (not strict JSON, but present in some upstream rows) are read as null: a null in a
key that must hold a string is then reported, a null in a free-typed key is accepted.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

from sycorec.errors import DataError
from sycorec.facts import RowSchema, mc_letters, schemas

EVAL_KINDS: tuple[str, ...] = get_args(RowSchema)
TRAINING_KINDS = ("augmented_prompts", "sycophantic_training", "honest_responses", "dpo_pairs")
KINDS = (*EVAL_KINDS, "truthfulqa", *TRAINING_KINDS)
MAX_REPORTED_ERRORS = 50

_TYPES: dict[str, tuple[type, ...]] = {"str": (str,), "list": (list,), "int": (int,), "any": (object,)}


@dataclass(frozen=True)
class Row:
    """One validated record with what the schema says about it."""

    line: int
    data: dict[str, Any]
    dataset: str | None = None  # base.dataset (SycophancyEval files)
    template: str | None = None  # answer category / feedback template name
    format: str | None = None  # mc | free_form (are_you_sure)
    duplicate_of: int | None = None  # eval files: line of an earlier, identical record


@dataclass
class FileReport:
    path: str
    kind: str | None
    rows: int = 0
    by_dataset: Counter = field(default_factory=Counter)
    by_template: Counter = field(default_factory=Counter)
    by_format: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    duplicate_rows: int = 0
    duplicates: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": self.path,
            "kind": self.kind,
            "rows": self.rows,
            "by_dataset": dict(sorted(self.by_dataset.items())),
            "by_template": dict(self.by_template),
        }
        if self.kind == "are_you_sure":
            out["by_format"] = {name: self.by_format.get(name, 0) for name in schemas()["are_you_sure"]["formats"]}
        if self.kind in EVAL_KINDS:  # reported, not errors: real upstream files repeat records
            out["duplicate_rows"] = self.duplicate_rows
            out["duplicates"] = self.duplicates
        out["errors"] = self.errors
        return out


class RowProblem(Exception):
    """What is wrong with one row (the caller adds `file:line:`)."""


# --------------------------------------------------------------------------- kind detection


def detect_kind(path: str | Path) -> str:
    """The kind of a file, from its name (`answer*.jsonl`, `TruthfulQA*.csv`, ...) or else its first record."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        return "truthfulqa"
    name = path.name.lower()
    for kind in sorted(KINDS, key=len, reverse=True):
        if name.startswith(kind):
            return kind
    kind = _kind_from_content(path)
    if kind is None:
        raise DataError(f"{path}: cannot tell what kind of file this is; name it after its kind or pass --kind")
    return kind


def _kind_from_content(path: Path) -> str | None:
    try:
        with path.open(encoding="utf-8") as fh:
            first = next((line for line in fh if line.strip()), "")
        obj = json.loads(first, parse_constant=lambda _: None)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    if {"prompt", "base", "metadata"} <= obj.keys() and isinstance(obj["metadata"], dict):
        if "prompt_template_type" in obj["metadata"]:
            return "feedback"
        return (
            "answer" if obj["metadata"].get("prompt_template") in schemas()["answer"]["templates"] else "are_you_sure"
        )
    keys = set(obj)
    for kind in ("dpo_pairs", "augmented_prompts", "sycophantic_training", "honest_responses"):
        if set(schemas()["training"][kind]["required"]) <= keys:
            return kind
    return None


# --------------------------------------------------------------------------- row checks


def _check_fields(obj: dict, required: dict[str, str], prefix: str = "") -> None:
    for key, type_name in required.items():
        if key not in obj:
            raise RowProblem(f"{prefix}{key}: missing")
        value = obj[key]
        if type_name == "any":
            continue
        if value is None:
            raise RowProblem(f"{prefix}{key}: null (expected {type_name})")
        # bool is an int subclass; a rating of `true` is still wrong
        if not isinstance(value, _TYPES[type_name]) or isinstance(value, bool):
            raise RowProblem(f"{prefix}{key}: expected {type_name}, got {type(value).__name__}")
        if type_name == "str" and not value.strip():
            raise RowProblem(f"{prefix}{key}: empty string")


def _check_messages(prompt: Any, expected: list[str] | None) -> None:
    types = schemas()["sycophancy_eval"]["message_types"]
    if not isinstance(prompt, list) or not prompt:
        raise RowProblem("prompt: expected a non-empty list of messages")
    for i, msg in enumerate(prompt):
        if not isinstance(msg, dict) or not isinstance(msg.get("content"), str):
            raise RowProblem(f"prompt[{i}]: expected {{type, content}} with string content")
        if msg.get("type") not in types:
            raise RowProblem(f"prompt[{i}].type: {msg.get('type')!r} is not one of {sorted(types)}")
    got = [msg["type"] for msg in prompt]
    if expected is not None and got != expected:
        raise RowProblem(f"prompt: message types {got}, expected {expected}")
    if got[0] != "human":
        raise RowProblem("prompt[0]: the first message must be from the human")


def _check_eval_common(kind: str, obj: dict) -> tuple[dict, dict, str]:
    spec = schemas()[kind]
    for key in schemas()["sycophancy_eval"]["top_level_keys"]:
        if key not in obj:
            raise RowProblem(f"{key}: missing")
    base, metadata = obj["base"], obj["metadata"]
    if not isinstance(base, dict):
        raise RowProblem("base: expected an object")
    if not isinstance(metadata, dict):
        raise RowProblem("metadata: expected an object")
    _check_messages(obj["prompt"], spec.get("prompt_messages"))
    _check_fields(metadata, dict.fromkeys(spec["metadata_keys"], "any"), "metadata.")
    for key in spec["metadata_keys"]:
        if not isinstance(metadata[key], str):
            raise RowProblem(f"metadata.{key}: expected str")
    dataset = base.get("dataset")
    if not isinstance(dataset, str) or dataset not in spec["sub_datasets"]:
        raise RowProblem(f"base.dataset: {dataset!r} is not one of {sorted(spec['sub_datasets'])}")
    return base, metadata, dataset


def classify_answer_template(template: str) -> str:
    """The study's substring classifier of answer.jsonl templates."""
    spec = schemas()["answer"]
    for rule in spec["classify"]:
        if any(s in template for s in rule["any_of"]):
            return rule["category"]
    return spec["default_category"]


def check_record(kind: str, obj: Any) -> Row:
    """Validate one parsed record of `kind`; raise RowProblem naming the first thing wrong."""
    if not isinstance(obj, dict):
        raise RowProblem(f"expected a JSON object, got {type(obj).__name__}")
    if kind in TRAINING_KINDS:
        _check_fields(obj, schemas()["training"][kind]["required"])
        return Row(0, obj)
    base, metadata, dataset = _check_eval_common(kind, obj)
    spec = schemas()[kind]
    if kind == "answer":
        template = metadata["prompt_template"]
        if template not in spec["templates"]:
            raise RowProblem(f"metadata.prompt_template: unknown template {template!r}")
        _check_fields(base, spec["sub_datasets"][dataset]["required"], "base.")
        return Row(0, obj, dataset, classify_answer_template(template))
    if kind == "are_you_sure":
        is_mc = all(key in base for key in spec["mc_keys"])
        if spec["sub_datasets"][dataset]["format"] == "mc" and not is_mc:
            missing = next(key for key in spec["mc_keys"] if key not in base)
            raise RowProblem(f"base.{missing}: missing in a multiple-choice ({dataset}) row")
        _check_fields(base, spec["sub_datasets"][dataset]["required"], "base.")
        if is_mc:
            letters = mc_letters(base)
            if not letters:
                raise RowProblem("base.answers: no (A), (B), ... option letters found")
            if base["correct_letter"] not in letters:
                raise RowProblem(f"base.correct_letter: {base['correct_letter']!r} is not among {''.join(letters)}")
        fmt = "mc" if is_mc else "free_form"
        return Row(0, obj, dataset, fmt, fmt)
    # feedback
    template_type = metadata["prompt_template_type"]
    if template_type not in spec["template_types"]:
        raise RowProblem(f"metadata.prompt_template_type: unknown template type {template_type!r}")
    _check_fields(base, spec["sub_datasets"][dataset]["required"], "base.")
    return Row(0, obj, dataset, spec["template_types"][template_type])


# --------------------------------------------------------------------------- file readers


def _parse_jsonl(path: Path) -> Iterator[tuple[int, Any] | tuple[int, RowProblem]]:
    """(line number, record) per line, or (line number, problem) for a line that is not a JSON record."""
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield lineno, RowProblem("not valid UTF-8")
                continue
            if not line.strip():
                yield lineno, RowProblem("empty line")
                continue
            try:
                obj = json.loads(line, parse_constant=lambda _: None)
                json.dumps(obj, ensure_ascii=False).encode("utf-8")  # prepare writes it back as UTF-8
            except json.JSONDecodeError as exc:
                yield lineno, RowProblem(f"not valid JSON ({exc.msg} at column {exc.colno})")
            except RecursionError:
                yield lineno, RowProblem("nested too deeply to read")
            except UnicodeEncodeError as exc:
                yield lineno, RowProblem(f"a lone surrogate escape (\\u{ord(exc.object[exc.start]):04x}) is not text")
            else:
                yield lineno, obj


def _iter_jsonl(path: Path, kind: str) -> Iterator[tuple[int, Row | RowProblem]]:
    unique = schemas()["training"][kind].get("unique") if kind in TRAINING_KINDS else None
    seen: dict[str, int] = {}
    records: dict[str, int] = {}  # eval files: canonical record -> first line
    for lineno, obj in _parse_jsonl(path):
        if isinstance(obj, RowProblem):
            yield lineno, obj
            continue
        try:
            row = check_record(kind, obj)
        except RowProblem as problem:
            yield lineno, problem
            continue
        if unique:
            key = obj[unique]
            if key in seen:
                yield lineno, RowProblem(f"{unique}: duplicate {key!r} (first on line {seen[key]})")
                continue
            seen[key] = lineno
        duplicate_of = None
        if kind in EVAL_KINDS:
            duplicate_of = records.setdefault(json.dumps(obj, sort_keys=True), lineno)
            duplicate_of = None if duplicate_of == lineno else duplicate_of
        yield lineno, Row(lineno, row.data, row.dataset, row.template, row.format, duplicate_of)


def _iter_truthfulqa(path: Path) -> Iterator[tuple[int, Row | RowProblem]]:
    spec = schemas()["truthfulqa"]
    header = spec["header"]
    try:
        with path.open(encoding=spec["encoding"], newline="") as fh:
            reader = csv.reader(fh)
            first = next(reader, None)
            if first is None:
                return
            if first != header:
                yield 1, RowProblem(f"header {first} is not the TruthfulQA v0 header {header}")
                return
            for record in reader:
                lineno = reader.line_num
                if len(record) != len(header):
                    yield lineno, RowProblem(f"expected {len(header)} fields, got {len(record)}")
                    continue
                row = dict(zip(header, record, strict=True))
                empty = [key for key in spec["non_empty"] if not row[key].strip()]
                if empty:
                    yield lineno, RowProblem(f"{empty[0]}: empty")
                elif row["Type"] not in spec["types"]:
                    yield lineno, RowProblem(f"Type: {row['Type']!r} is not one of {spec['types']}")
                else:
                    yield lineno, Row(lineno, row)
    except UnicodeDecodeError as exc:
        yield 0, RowProblem(f"not valid UTF-8 ({exc.reason} at byte {exc.start})")
    except csv.Error as exc:
        yield 0, RowProblem(f"malformed CSV ({exc})")


def iter_rows(path: str | Path, kind: str) -> Iterator[tuple[int, Row | RowProblem]]:
    path = Path(path)
    if kind not in KINDS:
        raise DataError(f"unknown kind {kind!r} (expected one of {', '.join(KINDS)})")
    return _iter_truthfulqa(path) if kind == "truthfulqa" else _iter_jsonl(path, kind)


def _where(path: Path, lineno: int) -> str:
    return f"{path}:{lineno}" if lineno else str(path)


def require_file(path: Path) -> None:
    """DataError unless `path` is a regular file: one that is not there, a directory, a FIFO or a device each named."""
    if path.is_file():
        return
    if not path.exists():
        raise DataError(f"{path}: not found")
    raise DataError(
        f"{path}: {'a directory' if path.is_dir() else 'not a regular file (a FIFO or a device)'}, not a data file"
    )


def validated_rows(path: str | Path, kind: str | None = None) -> list[Row]:
    """All rows of a file, validated; DataError `file:line: problem` on the first bad one."""
    path = Path(path)
    require_file(path)
    kind = kind or detect_kind(path)
    rows: list[Row] = []
    for lineno, item in iter_rows(path, kind):
        if isinstance(item, RowProblem):
            raise DataError(f"{_where(path, lineno)}: {item}")
        rows.append(item)
    if not rows:
        raise DataError(f"{path}: empty file (no {kind} rows)")
    return rows


def load_records(path: str | Path, kind: str | None = None) -> list[dict[str, Any]]:
    return [row.data for row in validated_rows(path, kind)]


def validate_file(path: str | Path, kind: str | None = None, max_errors: int = MAX_REPORTED_ERRORS) -> FileReport:
    """Validate a whole file, collecting problems (the first `max_errors`, then a count)."""
    path = Path(path)
    report = FileReport(str(path), kind)
    try:
        require_file(path)
        report.kind = kind or detect_kind(path)
    except DataError as exc:
        report.errors.append(str(exc))
        return report
    if report.kind == "answer":
        report.by_template.update(dict.fromkeys(schemas()["answer"]["categories"], 0))
    elif report.kind == "feedback":
        report.by_template.update(dict.fromkeys(schemas()["feedback"]["template_types"].values(), 0))
    n_errors = 0
    for lineno, item in iter_rows(path, report.kind):
        if isinstance(item, RowProblem):
            n_errors += 1
            if n_errors <= max_errors:
                report.errors.append(f"{_where(path, lineno)}: {item}")
            continue
        report.rows += 1
        if item.duplicate_of is not None:
            report.duplicate_rows += 1
            if len(report.duplicates) < max_errors:
                report.duplicates.append(f"{_where(path, lineno)}: same record as line {item.duplicate_of}")
        if item.dataset is not None:
            report.by_dataset[item.dataset] += 1
        if item.template is not None and report.kind != "are_you_sure":
            report.by_template[item.template] += 1
        if item.format is not None:
            report.by_format[item.format] += 1
    if n_errors > max_errors:
        report.errors.append(f"{path}: ... and {n_errors - max_errors} more errors")
    if report.rows == 0 and n_errors == 0:
        report.errors.append(f"{path}: empty file (no {report.kind} rows)")
    return report
