"""The study's evaluation facts and our judge prompts, read once from the packaged YAML files."""

from __future__ import annotations

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


def headline_keys() -> list[str]:
    return list(study()["headline_keys"])
