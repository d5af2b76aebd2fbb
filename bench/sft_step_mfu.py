"""Step time and MFU of one LoRA SFT step on a random-init, Qwen3-8B-shaped model (no download, no network).

    python bench/sft_step_mfu.py                      # Qwen3-8B shape, seq 1024, bf16 weights + bf16 autocast, CUDA
    python bench/sft_step_mfu.py --cpu                # tiny shape, CPU, float32 (tests/CI); shape flags override

Needs only torch, transformers, peft, accelerate and safetensors (bench/mfu_wheels.txt lists the exact wheels besides
torch), not the sycorec package: `bench/gpu_smoke.sh --mfu-only` runs it alone on a bare GPU box.
The step runs under torch.autocast(bfloat16) as the HF Trainer does with `bf16: true` (PEFT keeps the LoRA weights
in float32). The peak FLOP/s comes from the device name (PEAK_BF16_DENSE_TFLOPS); an unknown device is refused
unless --peak-tflops gives its peak.

Accounting (model FLOPs, gradient-checkpointing recompute not counted), T = tokens per step:
  frozen matmuls:   forward 2·N_frozen·T + backward input-gradients 2·N_frozen·T   = 4·N_frozen·T
  LoRA matmuls:     forward + input and weight gradients                           = 6·N_lora·T
  attention scores: QKᵀ and AV, forward 4·L·s·d_attn per token, backward twice that = 12·L·s·d_attn·T
  MFU = FLOPs / step_time / peak, peak = the device's dense bf16 tensor-core peak.
N counts matmul weights (every nn.Linear incl. lm_head; the embedding lookup is not a matmul). The full-finetune
convention 6·N·T is printed too, for comparison with reports that use it.
"""

from __future__ import annotations

import argparse
import json
import re
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import Qwen3Config, Qwen3ForCausalLM

# Dense bf16 tensor-core peaks from NVIDIA's datasheets (they print the 2:4-sparse figure, twice these), matched on
# torch.cuda.get_device_name(). H100 NVL, H200 NVL and the rest are refused rather than guessed.
PEAK_BF16_DENSE_TFLOPS = {
    "H100 SXM": (re.compile(r"^NVIDIA H100 (80GB HBM3|SXM5?( 80GB)?)$"), 989.4),
    "H100 PCIe": (re.compile(r"^NVIDIA H100 PCIe$"), 756.0),
    "H200": (re.compile(r"^NVIDIA H200$"), 989.4),
}
CPU_REFERENCE = "H100 SXM"  # --cpu: the arithmetic only, against the H100 SXM peak


def device_peak(name: str) -> tuple[str, float]:
    """(which GPU, its dense bf16 peak in TFLOP/s) for a CUDA device name; SystemExit for an unknown device."""
    for label, (pattern, tflops) in PEAK_BF16_DENSE_TFLOPS.items():
        if pattern.match(name):
            return label, tflops
    known = ", ".join(PEAK_BF16_DENSE_TFLOPS)
    raise SystemExit(f"error: no peak FLOP/s known for {name!r} (known: {known}); pass --peak-tflops")


# Qwen/Qwen3-8B's config.json, and a tiny shape of the same family for CPU runs.
QWEN3_8B = {
    "layers": 36,
    "hidden": 4096,
    "intermediate": 12288,
    "heads": 32,
    "kv_heads": 8,
    "head_dim": 128,
    "vocab": 151936,
    "seq_len": 1024,
    "batch": 1,
}
TINY = {
    "layers": 2,
    "hidden": 64,
    "intermediate": 128,
    "heads": 4,
    "kv_heads": 2,
    "head_dim": 16,
    "vocab": 256,
    "seq_len": 32,
    "batch": 2,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu", action="store_true", help="run on CPU in float32 (tiny shapes, for tests/CI)")
    for name in QWEN3_8B:
        p.add_argument(
            f"--{name.replace('_', '-')}",
            type=int,
            default=None,
            help=f"default {QWEN3_8B[name]} (--cpu: {TINY[name]})",
        )
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lora-alpha", type=int, default=32)
    p.add_argument("--grad-ckpt", action=argparse.BooleanOptionalAction, default=True, help="as the study trained")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    p.add_argument("--peak-tflops", type=float, default=None, help="override the device table (unknown devices)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", dest="json_path", default=None, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    for name, value in (TINY if args.cpu else QWEN3_8B).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def build_model(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    config = Qwen3Config(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        head_dim=args.head_dim,
        max_position_embeddings=max(40960, args.seq_len),
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
        use_cache=False,
    )
    torch.manual_seed(args.seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:  # initialise on the target device: an 8B model is built in seconds on a GPU
            model = Qwen3ForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    if args.grad_ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    lora = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=0.05, target_modules="all-linear")
    return get_peft_model(model, lora)


def matmul_params(model: torch.nn.Module) -> tuple[int, int]:
    """(frozen, trainable) weights of linear layers; LoRA A/B are Linear modules too."""
    frozen = trainable = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            n = module.weight.numel()
            if module.weight.requires_grad:
                trainable += n
            else:
                frozen += n
    return frozen, trainable


def step_flops(n_frozen: int, n_lora: int, layers: int, seq: int, d_attn: int, tokens: int) -> float:
    return (4 * n_frozen + 6 * n_lora) * tokens + 12 * layers * seq * d_attn * tokens


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.cpu:
        device, dtype, name = torch.device("cpu"), torch.float32, "cpu"
        torch.set_num_threads(1)
    elif torch.cuda.is_available():
        device, dtype, name = torch.device("cuda"), torch.bfloat16, torch.cuda.get_device_name(0)
    else:
        raise SystemExit("error: no CUDA device (use --cpu for the tiny CPU variant)")
    if args.peak_tflops:
        peak_label, peak_tflops = "--peak-tflops", args.peak_tflops
    elif args.cpu:
        peak_label, peak_tflops = CPU_REFERENCE, PEAK_BF16_DENSE_TFLOPS[CPU_REFERENCE][1]
    else:
        peak_label, peak_tflops = device_peak(name)  # before building 8B parameters

    model = build_model(args, device, dtype)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=2e-4, fused=device.type == "cuda")
    generator = torch.Generator(device=device).manual_seed(args.seed)
    batch = torch.randint(0, args.vocab, (args.batch, args.seq_len), device=device, generator=generator)

    def step() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for _ in range(args.warmup):
        step()
    times = sorted(step() for _ in range(args.steps))
    step_time = times[len(times) // 2]

    n_frozen, n_lora = matmul_params(model)
    tokens = args.batch * args.seq_len
    d_attn = args.heads * args.head_dim
    flops = step_flops(n_frozen, n_lora, args.layers, args.seq_len, d_attn, tokens)
    peak = peak_tflops * 1e12
    result = {
        "device": name,
        "dtype": str(dtype).removeprefix("torch."),
        "autocast": "bfloat16" if device.type == "cuda" else None,
        "shape": {
            "layers": args.layers,
            "hidden": args.hidden,
            "intermediate": args.intermediate,
            "vocab": args.vocab,
            "d_attn": d_attn,
        },
        "batch": args.batch,
        "seq_len": args.seq_len,
        "gradient_checkpointing": args.grad_ckpt,
        "n_frozen_matmul": n_frozen,
        "n_lora": n_lora,
        "step_time_s": step_time,
        "tokens_per_s": tokens / step_time,
        "model_tflops_per_step": flops / 1e12,
        "peak_tflops": peak_tflops,
        "peak_of": peak_label,
        "mfu": flops / step_time / peak,
        "mfu_6nt": 6 * (n_frozen + n_lora) * tokens / step_time / peak,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
    }
    print(f"device {result['device']} ({result['dtype']}), batch {args.batch} x seq {args.seq_len}")
    print(f"matmul params: frozen {n_frozen / 1e6:.2f} M, LoRA {n_lora / 1e6:.3f} M")
    print(f"step time: {step_time * 1e3:.1f} ms (median of {args.steps}), {result['tokens_per_s']:.0f} tokens/s")
    print(f"MFU (LoRA accounting): {result['mfu'] * 100:.3g}% of {peak_tflops:g} TFLOP/s ({peak_label})")
    print(f"MFU (6·N·T convention): {result['mfu_6nt'] * 100:.3g}%")
    if result["peak_memory_gib"] is not None:
        print(f"peak GPU memory: {result['peak_memory_gib']:.1f} GiB")
    if args.json_path:
        with open(args.json_path, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)
            fh.write("\n")
    return result


if __name__ == "__main__":
    main()
