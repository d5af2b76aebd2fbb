"""The `train_base` stage: the model every other stage starts from.

Full profile: resolve Qwen3-8B at its pinned revision in the HF cache and record the exact commit, so every later stage
loads the same snapshot. Tiny profile: pretrain the tiny Qwen3 on the synthetic world.
"""

from __future__ import annotations

from pathlib import Path

from sycorec.config import Config
from sycorec.hub import resolve_snapshot
from sycorec.io import write_json
from sycorec.paths import SOURCE_FILE, model_dir


def record_base_snapshot(cfg: Config) -> dict[str, str]:
    """Resolve the pinned base model (offline-aware) and write outputs/models/base/source.json."""
    snapshot = Path(resolve_snapshot(cfg.base_model.name, cfg.base_model.revision, "model"))
    # A hub cache snapshot directory is named by its commit sha.
    record = {"repo": cfg.base_model.name, "revision": cfg.base_model.revision, "commit": snapshot.name}
    write_json(model_dir(cfg, "base") / SOURCE_FILE, record)
    return record
