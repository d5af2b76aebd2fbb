"""How concurrent CPU stages should split the cores: the tiny base's training step under several thread layouts.

    python bench/cpu_share_bench.py [--steps 60]

Prints ms per step of each process and the machine's throughput (steps/s summed over processes) for: one process
with all cores, one with one thread, two at once with one thread each, two at once with all cores each (OpenMP
threads of two processes then wait on each other), and the all-cores layouts again with OpenMP's passive wait policy
(waiting threads sleep instead of spinning). `sycorec.demo.cpushare` gives a lone stage every core and two stages one
each, the best of both rows on a 2-core machine. The model and batch are the tiny profile's (train.pretrain_tiny).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

STEP = """
import json, sys, time, torch
from transformers import Qwen3Config, Qwen3ForCausalLM
base = json.loads(sys.argv[2])
torch.manual_seed(0)
config = Qwen3Config(vocab_size=base["vocab_size"], hidden_size=base["hidden_size"],
                     intermediate_size=base["intermediate_size"], num_hidden_layers=base["num_layers"],
                     num_attention_heads=base["num_heads"], num_key_value_heads=base["num_kv_heads"],
                     head_dim=base["hidden_size"] // base["num_heads"], tie_word_embeddings=True)
model = Qwen3ForCausalLM(config)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
ids = torch.randint(0, base["vocab_size"], (base["batch_size"], 60))  # transcripts of the corpus are ~60 tokens
def step():
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    opt.zero_grad()
for _ in range(5):
    step()
start = time.perf_counter()
for _ in range(int(sys.argv[1])):
    step()
print((time.perf_counter() - start) / int(sys.argv[1]))
"""


def tiny_base() -> str:
    """train.pretrain_tiny of the tiny profile, as JSON."""
    from sycorec.config import load_config

    root = Path(__file__).resolve().parents[1]
    return load_config(root / "params.yaml", "tiny").train.pretrain_tiny.model_dump_json()


def run(processes: int, threads: int, steps: int, base: str, wait_policy: str | None = None) -> list[float]:
    """Seconds per step of each of `processes` started together with `threads` threads each."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    if wait_policy:
        env["OMP_WAIT_POLICY"] = wait_policy
    procs = [
        subprocess.Popen([sys.executable, "-c", STEP, str(steps), base], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(processes)
    ]
    return [float(p.communicate()[0]) for p in procs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    steps = parser.parse_args().steps
    cores = len(os.sched_getaffinity(0))
    base = tiny_base()
    layouts = [("alone, all cores", 1, cores, None), ("alone, 1 thread", 1, 1, None)]
    layouts += [("2 at once, 1 thread each", 2, 1, None), ("2 at once, all cores each", 2, cores, None)]
    layouts += [("alone, all cores, passive", 1, cores, "PASSIVE")]
    layouts += [("2 at once, all cores, passive", 2, cores, "PASSIVE")]
    print(f"{cores} CPUs, {steps} steps per process")
    print(f"{'layout':<32}{'ms/step':>18}{'steps/s':>10}")
    first = None
    for name, processes, threads, wait_policy in layouts:
        times = run(processes, threads, steps, base, wait_policy)
        throughput = sum(1 / t for t in times)
        first = first or throughput
        per = ", ".join(f"{t * 1000:.0f}" for t in times)
        print(f"{name:<32}{per:>18}{throughput:>10.2f}  ×{throughput / first:.2f}")


if __name__ == "__main__":
    main()
