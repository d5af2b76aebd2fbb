"""Fetch every pinned model and dataset into the HF cache and record the commit each revision resolved to.

Run on a node with network (a login node); compute nodes then read the cache with `HF_HUB_OFFLINE=1`.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sycorec.config import Config
from sycorec.errors import SycorecError
from sycorec.hub import DATASET_PATTERNS, MODEL_PATTERNS
from sycorec.io import read_json, write_json, write_text_atomic

MANIFEST = Path("outputs/prefetch_manifest.json")
# The params key that pins each role's revision (full scale refuses a branch name there).
PARAM_KEYS = {
    "base_model": "base_model.revision",
    "judge": "judge.revision",
    "truthfulqa": "data.truthfulqa.hf_revision",
    "training_data": "data.training_data.hf_revision",
}


@dataclass(frozen=True)
class HubItem:
    role: str  # what the study uses it for
    repo_id: str
    repo_type: str  # model | dataset
    revision: str


def pinned_items(cfg: Config) -> list[HubItem]:
    """Every hub input the config needs; local/tiny models and the rule judge need nothing."""
    items: list[HubItem] = []
    if not cfg.is_tiny:
        items.append(HubItem("base_model", cfg.base_model.name, "model", cfg.base_model.revision))
    if cfg.judge.backend == "llm":
        items.append(HubItem("judge", cfg.judge.model, "model", cfg.judge.revision))
    if cfg.data.source == "fetch":
        tqa, training = cfg.data.truthfulqa, cfg.data.training_data
        items.append(HubItem("truthfulqa", tqa.hf_dataset, "dataset", tqa.hf_revision))
        items.append(HubItem("training_data", training.hf_dataset, "dataset", training.hf_revision))
    return items


def select(items: list[HubItem], only: tuple[str, ...]) -> list[HubItem]:
    if not only:
        return items
    known = {item.repo_id for item in items}
    unknown = [repo for repo in only if repo not in known]
    if unknown:
        raise SycorecError(f"--only {', '.join(unknown)}: not a pinned input of this config (pinned: {sorted(known)})")
    return [item for item in items if item.repo_id in only]


def fetch_item(item: HubItem) -> dict[str, Any]:
    """Resolve the revision to a commit, download that snapshot, return the manifest record."""
    from huggingface_hub import HfApi, snapshot_download

    commit = HfApi().repo_info(item.repo_id, repo_type=item.repo_type, revision=item.revision).sha
    patterns = list(MODEL_PATTERNS) if item.repo_type == "model" else DATASET_PATTERNS
    # Download by the configured revision (not the sha) so the cache records refs/<revision> for offline lookups.
    path = snapshot_download(item.repo_id, repo_type=item.repo_type, revision=item.revision, allow_patterns=patterns)
    if Path(path).name != commit:
        raise SycorecError(
            f"{item.repo_id}@{item.revision} moved from {commit} to {Path(path).name} during prefetch; run it again"
        )
    return {**asdict(item), "commit": commit, "snapshot": str(path)}


def prefetch(items: list[HubItem], manifest: Path = MANIFEST) -> dict[str, Any]:
    """Fetch `items`; merge their records into `manifest` (keyed by repo) and write it atomically."""
    from tqdm import tqdm

    records = {(r["repo_type"], r["repo_id"]): r for r in _existing(manifest)}
    for item in tqdm(items, desc="prefetch", unit="repo"):
        records[(item.repo_type, item.repo_id)] = fetch_item(item)
    document = {
        "updated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "items": sorted(records.values(), key=lambda r: (r["repo_type"], r["repo_id"])),
    }
    write_json(manifest, document)
    return document


# The text of a YAML scalar value: quoted, or plain up to a comment, a comma or the end of a flow mapping.
_SCALAR = re.compile(r"""'[^']*'|"[^"]*"|[^\s#,}]+""")


def pin_revisions(params: Path, commits: dict[str, str]) -> list[str]:
    """Write each commit at its dotted key in `params`, changing only that value's text (comments and layout stay,
    so the diff is one line per pin). Returns the keys that changed."""
    from ruamel.yaml import YAML

    text = params.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    document = YAML().load(text)
    changed = []
    for key, commit in commits.items():
        *parents, leaf = key.split(".")
        node = document
        for part in parents:
            node = node.get(part) if hasattr(node, "get") else None
        if node is None or leaf not in node:
            raise SycorecError(f"{params}: no {key} to pin (set it there, not only in a profile)")
        if node[leaf] == commit:
            continue
        row, column = node.lc.value(leaf)
        old = _SCALAR.match(lines[row], column)
        lines[row] = lines[row][:column] + commit + lines[row][old.end() :]
        changed.append(key)
    if changed:
        write_text_atomic(params, "".join(lines))
    return changed


def _existing(manifest: Path) -> list[dict[str, Any]]:
    return read_json(manifest)["items"] if manifest.is_file() else []


def describe(items: list[HubItem]) -> str:
    return "\n".join(f"{item.repo_type:<8} {item.repo_id}@{item.revision}  ({item.role})" for item in items)
