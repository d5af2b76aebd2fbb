"""Multi-GPU: `sycorec --gpus N <stage>` (dvc.yaml's cmd of every training stage) runs the stage under
`accelerate launch` (DDP, configs/accelerate/ddp_4gpu.yaml) on exactly N GPUs when more than one is visible."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from sycorec.errors import HardwareError

ACCELERATE_CONFIG = Path("configs/accelerate/ddp_4gpu.yaml")
LAUNCHED = "SYCOREC_LAUNCHED"


def free_port() -> int:
    """A TCP port free on this node now: two DDP jobs sharing a node must not both take accelerate's fixed 29500."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def relaunch(num_gpus: int, argv: list[str] | None = None) -> bool:
    """Run this command on `num_gpus` GPUs when more than one is visible; True when the launched child did the work.

    One GPU visible, or already inside a launched process: False, run here. Several visible: restrict
    CUDA_VISIBLE_DEVICES to the first `num_gpus` (so the HF Trainer never falls back to DataParallel) and run the
    same command under DDP (or as one process when `num_gpus` is 1).
    """
    if os.environ.get(LAUNCHED) or "LOCAL_RANK" in os.environ:
        return False
    import torch

    visible = torch.cuda.device_count()
    if visible <= 1:
        return False
    if visible < num_gpus:
        raise HardwareError(f"this stage trains on {num_gpus} GPUs (num_gpus in params) but {visible} are visible")
    ids = os.environ.get("CUDA_VISIBLE_DEVICES", ",".join(map(str, range(visible)))).split(",")
    env = {**os.environ, LAUNCHED: "1", "CUDA_VISIBLE_DEVICES": ",".join(ids[:num_gpus])}
    args = sys.argv[1:] if argv is None else argv
    if num_gpus > 1:
        if not ACCELERATE_CONFIG.is_file():
            raise HardwareError(f"{ACCELERATE_CONFIG} not found (run from the repository root)")
        launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE_CONFIG)]
        cmd = [*launcher, "--num_processes", str(num_gpus)]
        cmd += ["--main_process_port", str(free_port()), "-m", "sycorec", *args]
    else:
        cmd = [sys.executable, "-m", "sycorec", *args]
    code = subprocess.run(cmd, env=env, check=False).returncode
    if code:
        sys.exit(code)
    return True
