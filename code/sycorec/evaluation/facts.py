"""The study's evaluation facts, the headline metrics' registry and our judge prompts, read once from the packaged
YAML files."""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
WORLD_FILE = HERE.parent / "data" / "world.yaml"


@lru_cache(maxsize=1)
def study() -> dict[str, Any]:
    return yaml.safe_load((HERE / "study.yaml").read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def judge_prompts() -> dict[str, Any]:
    return yaml.safe_load((HERE / "judge_prompts.yaml").read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def world() -> dict[str, Any]:
    return yaml.safe_load(WORLD_FILE.read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def metric_registry() -> dict[str, dict[str, Any]]:
    """Headline metric → {definition, higher_is_better, version}, in the metrics file's key order."""
    return yaml.safe_load((HERE / "metric_registry.yaml").read_text(encoding="utf-8"))


def headline_keys() -> list[str]:
    return list(metric_registry())


def higher_is_better(metric: str) -> bool:
    return bool(metric_registry()[metric]["higher_is_better"])


def metric_versions(keys: Iterable[str]) -> dict[str, dict[str, Any]]:
    """What a metrics file records of its metrics' definitions: name → {version, higher_is_better}."""
    return {key: {f: metric_registry()[key][f] for f in ("version", "higher_is_better")} for key in keys}
