"""The GPU check's scripts on the CPU: the MFU benchmark, its device table and its wheel list, the smoke script."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # runs the benchmark script in a fresh process
def test_sft_step_mfu_runs_on_cpu(tmp_path):
    out = tmp_path / "mfu.json"
    cmd = [
        sys.executable,
        str(ROOT / "bench/sft_step_mfu.py"),
        "--cpu",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--json",
        str(out),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "step time:" in done.stdout and "MFU (LoRA accounting):" in done.stdout
    figures = json.loads(out.read_text())
    assert figures["step_time_s"] > 0 and 0 < figures["mfu"] < 1
    assert figures["n_lora"] > 0 and figures["n_frozen_matmul"] > figures["n_lora"]
    # LoRA accounting: frozen matmuls 4 FLOPs/param/token, LoRA 6, attention scores 12·L·s·d_attn per token.
    shape, tokens = figures["shape"], figures["batch"] * figures["seq_len"]
    flops = (4 * figures["n_frozen_matmul"] + 6 * figures["n_lora"]) * tokens
    flops += 12 * shape["layers"] * figures["seq_len"] * shape["d_attn"] * tokens
    assert figures["mfu"] == pytest.approx(flops / figures["step_time_s"] / (figures["peak_tflops"] * 1e12))


def test_gpu_smoke_script_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(ROOT / "bench/gpu_smoke.sh")], capture_output=True).returncode == 0


def _mfu_module():
    spec = importlib.util.spec_from_file_location("sft_step_mfu", ROOT / "bench/sft_step_mfu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("name", "label", "tflops"),
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM", 989.4),
        ("NVIDIA H100 PCIe", "H100 PCIe", 756.0),
        ("NVIDIA H200", "H200", 989.4),
    ],
)
def test_mfu_peak_comes_from_the_device_name(name, label, tflops):
    assert _mfu_module().device_peak(name) == (label, tflops)


@pytest.mark.parametrize("name", ["NVIDIA H100 NVL", "NVIDIA H200 NVL", "NVIDIA A100-SXM4-80GB", "Tesla T4"])
def test_mfu_refuses_an_unknown_device(name):
    with pytest.raises(SystemExit, match="no peak FLOP/s known"):
        _mfu_module().device_peak(name)


def test_mfu_script_imports_nothing_beyond_its_wheels():
    source = (ROOT / "bench/sft_step_mfu.py").read_text()
    imported = set(re.findall(r"^(?:from|import) (\w+)", source, flags=re.MULTILINE))
    assert imported - set(sys.stdlib_module_names) == {"torch", "peft", "transformers"}


def _closure(names: list[str]) -> set[str]:
    """Installed distributions `names` need (markers evaluated here, extras left out)."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: set[str] = set()
    todo = [canonicalize_name(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for spec in metadata.requires(name) or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(req.name))
    return seen


def test_mfu_wheel_list_is_the_dependency_closure_at_the_locked_versions():
    from packaging.utils import canonicalize_name

    def pins(path: Path) -> dict[str, str]:
        lines = [line.split()[0] for line in path.read_text().splitlines() if line and line[0].isalnum()]
        return {canonicalize_name(n): v for n, v in (line.split("==") for line in lines if "==" in line)}

    wheels, lock = pins(ROOT / "bench/mfu_wheels.txt"), pins(ROOT / "requirements/cluster.lock")
    needed = _closure(["transformers", "peft", "accelerate", "safetensors"]) - _closure(["torch"])
    assert set(wheels) == needed
    assert {name: lock[name] for name in wheels} == wheels


def test_gpu_smoke_has_an_mfu_only_mode_without_sycorec():
    script = (ROOT / "bench/gpu_smoke.sh").read_text()
    mode = script[script.index("if ((mfu_only)); then") : script.index("exit 0", script.index("if ((mfu_only))"))]
    assert "bench/sft_step_mfu.py" in mode and "sycorec" not in mode
    assert script.index("if ((mfu_only)); then") < script.index("from sycorec")
