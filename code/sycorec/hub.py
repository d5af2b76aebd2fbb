"""Offline-aware resolution of Hugging Face models and datasets, and the one check that CUDA GPUs are there.

Compute nodes run with `HF_HUB_OFFLINE=1`: everything must already sit in the HF cache, put there by
`sycorec prefetch` on a node with network. A miss fails with one line naming the exact prefetch command,
before the calling stage has written anything.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from sycorec.errors import HardwareError, MissingInputError

# What a model snapshot needs: weights, configs and tokenizer files. No *.py: remote code is never run.
MODEL_PATTERNS = ("*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja")
# Datasets are small; take the whole repo.
DATASET_PATTERNS = None

_TRUE = {"1", "true", "yes", "on"}


def hub_offline() -> bool:
    """True when the HF hub must not be contacted (env var, read now, or huggingface_hub's constant)."""
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE or bool(constants.HF_HUB_OFFLINE)


def first_line(exc: BaseException) -> str:
    return f"{exc.__class__.__name__}: {(str(exc).strip().splitlines() or [''])[0]}"


def hub_unreachable(exc: BaseException) -> bool:
    """True when `exc` (or anything in its cause chain) says the hub gave no answer (and nothing was cached).

    transformers' `from_pretrained` wraps that case in a plain OSError; the chain keeps huggingface_hub's error.
    """
    import requests
    from huggingface_hub.errors import LocalEntryNotFoundError

    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        # a dead proxy or a TLS failure: huggingface_hub re-raises these instead of falling back to the cache
        if isinstance(link, LocalEntryNotFoundError | requests.exceptions.ConnectionError):
            return True
        seen.add(id(link))
        link = link.__cause__ or link.__context__
    return False


def prefetch_command(repo_id: str) -> str:
    return f"sycorec prefetch --only {repo_id}"


COMMIT = re.compile(r"[0-9a-f]{40}")
PIN_COMMAND = "sycorec prefetch --pin"  # resolves each revision and writes the commit into params.yaml


def is_commit(revision: str) -> bool:
    """A revision that cannot move: a branch or tag name can, under a week-long run."""
    return COMMIT.fullmatch(revision) is not None


def resolve_snapshot(repo_id: str, revision: str | None, repo_type: str = "model") -> str:
    """Local snapshot directory of `repo_id@revision`; downloads it unless offline.

    Offline and not cached -> MissingInputError naming the prefetch command. Nothing is written in that case.
    """
    import requests
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    offline = hub_offline()
    patterns = list(MODEL_PATTERNS) if repo_type == "model" else DATASET_PATTERNS
    where = f"{repo_type} {repo_id}@{revision or 'main'}"
    try:
        path = snapshot_download(
            repo_id, repo_type=repo_type, revision=revision, allow_patterns=patterns, local_files_only=offline
        )
    except LocalEntryNotFoundError:
        if offline:
            raise MissingInputError(
                f"{where} is not in the HF cache and HF_HUB_OFFLINE=1; "
                f"run `{prefetch_command(repo_id)}` on a node with network"
            ) from None
        raise MissingInputError(
            f"{where}: the Hugging Face hub cannot be reached and it is not in the HF cache; check the network, "
            f"or run `{prefetch_command(repo_id)}` on a node with network"
        ) from None
    except requests.exceptions.ConnectionError as exc:  # a dead HTTPS proxy, a TLS failure
        raise MissingInputError(
            f"{where}: the Hugging Face hub cannot be reached ({first_line(exc)}); check the network and HTTPS_PROXY, "
            f"or run `{prefetch_command(repo_id)}` on a node with network"
        ) from None
    except HfHubHTTPError as exc:  # unknown repo or revision, gated, server error
        raise MissingInputError(f"{where}: the hub refused it ({first_line(exc)})") from None
    if repo_type == "model" and not (Path(path) / "config.json").is_file():
        raise MissingInputError(
            f"{where}: cached snapshot {path} is incomplete (no config.json); rerun `{prefetch_command(repo_id)}`"
        )
    return path


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def require_gpu(what: str, count: int = 1) -> None:
    """Fail in one line when `what` (a stage, profile or backend) lacks the CUDA GPUs it needs."""
    if (found := visible_gpus()) < count:
        raise HardwareError(
            f"{what} needs {count} CUDA GPU(s) but {found} are visible; "
            "run it on a GPU node (see slurm/) or use `--profile tiny` on CPU"
        )
