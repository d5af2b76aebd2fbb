"""Where each stage reads and writes, derived from `cfg.paths` so every profile uses the same layout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sycorec.config import Config
from sycorec.errors import MissingInputError
from sycorec.io import read_json

# Written by the full profile's train_base stage: the base model's hub id and the exact commit it resolved to.
SOURCE_FILE = "source.json"


def raw_dir(cfg: Config) -> Path:
    """Inputs of `prepare`: the pinned upstream files (data/raw) or the synthetic world (data/synth), same layout."""
    return cfg.paths.raw


def model_dir(cfg: Config, name: str) -> Path:
    return cfg.paths.models / name


def calibration_path(cfg: Config) -> Path:
    """The RM threshold calibration: its own DVC out, beside (not inside) the RM directory that train_rm owns."""
    return cfg.paths.models.parent / "calibration" / "calibration.json"


@dataclass(frozen=True)
class ModelSource:
    """What to hand to `from_pretrained`: a local directory, or a hub id at a pinned revision."""

    path: str
    revision: str | None = None


def model_source(cfg: Config, name: str) -> ModelSource:
    path = model_dir(cfg, name)
    if name == "base" and not cfg.is_tiny:
        pinned = path / SOURCE_FILE
        if pinned.is_file():
            record = read_json(pinned)
            return ModelSource(record["repo"], record["commit"])
        return ModelSource(cfg.base_model.name, cfg.base_model.revision)
    if not (path / "config.json").is_file():
        raise MissingInputError(f"model {name!r} not found at {path} (run `dvc repro` for its training stage first)")
    return ModelSource(str(path))
