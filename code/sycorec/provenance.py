"""Provenance: where a result came from (code, environment, params, inputs, hardware)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

TRACKED_PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "vllm", "dvc", "scikit-learn")
LOCK_FILE = Path("requirements/cluster.lock")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, check=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_state() -> dict[str, Any]:
    sha = _git("rev-parse", "HEAD") or os.environ.get("SYCOREC_GIT_SHA")
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"sha": sha, "dirty": bool(status) if status is not None else None}


def code_origin(root: Path = Path(".")) -> dict[str, Any]:
    """Which copy of sycorec is running: the checkout (what git/DVC hash) or an installed one (e.g. the image's)."""
    import sycorec

    package = Path(sycorec.__file__).resolve().parent
    return {
        "package_dir": str(package),
        "from_checkout": package.is_relative_to(root.resolve()),
        "image_git_sha": os.environ.get("SYCOREC_GIT_SHA"),
    }


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def driver_version() -> str | None:
    """The NVIDIA driver's version (NVML, which vLLM's environment ships), or None without one."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no NVML library, no driver, no GPU: nothing to record
        return None
    return version.decode() if isinstance(version, bytes) else str(version)


def hardware(import_torch: bool = True) -> dict[str, Any]:
    """CPU and GPUs; with `import_torch` False, GPUs only as the running stage saw them (a stage that never imported
    torch used none, and is not slowed by importing it)."""
    info: dict[str, Any] = {"machine": platform.machine(), "cpus": os.cpu_count(), "cuda": None, "gpus": []}
    try:
        if not import_torch and "torch" not in sys.modules:
            return info
        import torch

        if torch.cuda.is_available():
            info["cuda"] = torch.version.cuda
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            info["driver"] = driver_version()
    except ImportError:
        pass
    return info


def image_digest() -> str | None:
    """Set by the container recipes (SYCOREC_IMAGE_DIGEST) or Apptainer's own variables."""
    for var in ("SYCOREC_IMAGE_DIGEST", "APPTAINER_CONTAINER", "SINGULARITY_CONTAINER"):
        if value := os.environ.get(var):
            return value
    return None


def lock_hash(root: Path = Path(".")) -> str | None:
    path = root / LOCK_FILE
    if not path.exists():
        return None
    with path.open("rb") as fh:  # provenance stands on nothing of the package: every layer may record it
        return hashlib.file_digest(fh, "sha256").hexdigest()


def params_hash(slice_: Any) -> str:
    """Stable hash of a params slice (a pydantic model or plain data)."""
    if hasattr(slice_, "model_dump"):
        slice_ = slice_.model_dump(mode="json")
    return hashlib.sha256(json.dumps(slice_, sort_keys=True, default=str).encode()).hexdigest()


def stage_environment(root: Path = Path(".")) -> dict[str, Any]:
    """Where one DVC stage ran: written by the stage itself (inside the image, on the compute node), not by the
    report, which may run on a login node outside the image."""
    return {
        "node": platform.node(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "git": git_state(),
        "code": code_origin(root),
        "versions": package_versions(),
        "hardware": hardware(import_torch=False),
        "image_digest": image_digest(),
    }


def environment_block(root: Path = Path(".")) -> dict[str, Any]:
    return {
        "git": git_state(),
        "code": code_origin(root),
        "lock_sha256": lock_hash(root),
        "versions": package_versions(),
        "hardware": hardware(),
        "image_digest": image_digest(),
    }
