"""Provenance manifest written beside every report, and the collected stage timings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sycorec import provenance
from sycorec.clikit import ENVIRONMENTS_DIR
from sycorec.config import Config
from sycorec.io import read_json, sha256_file
from sycorec.paths import raw_dir

PREFETCH_MANIFEST = Path("outputs/prefetch_manifest.json")


def input_hashes(root: Path, relative: Path) -> dict[str, Any]:
    """The data stage's MANIFEST.json (its sha256 and content) where present, else sha256 of every file."""
    directory = root / relative
    manifest = directory / "MANIFEST.json"
    if manifest.is_file():
        return {"dir": str(relative), "manifest_sha256": sha256_file(manifest), "manifest": read_json(manifest)}
    files = sorted(p for p in directory.rglob("*") if p.is_file()) if directory.is_dir() else []
    return {"dir": str(relative), "files": {str(p.relative_to(directory)): sha256_file(p) for p in files}}


def hub_revisions(cfg: Config, root: Path) -> dict[str, Any]:
    """Pinned (and, after `sycorec prefetch`, resolved) revisions of every model and dataset the run uses."""
    prefetch = root / PREFETCH_MANIFEST
    return {
        "base_model": {"name": cfg.base_model.name, "revision": cfg.base_model.revision},
        "judge": {"backend": cfg.judge.backend, "model": cfg.judge.model, "revision": cfg.judge.revision},
        "data": cfg.data.model_dump(mode="json", exclude={"synth"}) | {"source": cfg.data.source},
        "prefetch_manifest": read_json(prefetch) if prefetch.is_file() else None,
    }


def build_manifest(cfg: Config, root: Path = Path("."), outputs: list[Path] | None = None) -> dict[str, Any]:
    return {
        "profile": cfg.profile,
        "environment": provenance.environment_block(root),
        "params_sha256": provenance.params_hash(cfg),
        "revisions": hub_revisions(cfg, root),
        "inputs": {
            "raw": input_hashes(root, raw_dir(cfg)),
            "prepared": input_hashes(root, cfg.paths.prepared),
        },
        "outputs": {str(p): sha256_file(root / p) for p in sorted(outputs or [])},
        "stages": collect_environments(root / ENVIRONMENTS_DIR),
    }


def collect_environments(directory: Path) -> dict[str, Any]:
    """{DVC stage name: where it ran} from outputs/environments/*.json (each stage writes its own)."""
    records = [read_json(path) for path in sorted(directory.glob("*.json"))] if directory.is_dir() else []
    return {str(r.pop("stage")): r for r in records if isinstance(r, dict) and "stage" in r}


def collect_timings(directory: Path) -> dict[str, Any]:
    """{DVC stage name: seconds} from outputs/timings/*.json, plus their total."""
    stages: dict[str, float] = {}
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        record = read_json(path)
        if isinstance(record, dict) and "stage" in record and "seconds" in record:
            stages[str(record["stage"])] = float(record["seconds"])
    return {"stages": stages, "total_seconds": round(sum(stages.values()), 3)}
