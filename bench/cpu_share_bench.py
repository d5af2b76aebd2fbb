"""How concurrent CPU stages should split the cores: the tiny base's training step under four thread layouts.

    python bench/cpu_share_bench.py [--steps 60]

Prints ms per step of each process and the machine's throughput (steps/s summed over processes) for: one process
with all cores, one with one thread, two at once with one thread each, two at once with all cores each (OpenMP
threads of two processes then wait on each other). `sycorec.cpushare` gives a lone stage every core and two stages
one each, the best of both rows on a 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

STEP = """
import sys, time, torch
from transformers import Qwen3Config, Qwen3ForCausalLM
torch.manual_seed(0)
config = Qwen3Config(vocab_size=514, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=32, tie_word_embeddings=True)
model = Qwen3ForCausalLM(config)  # the tiny profile's base (train.pretrain_tiny)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
ids = torch.randint(0, 514, (32, 60))  # its batch: 32 transcripts of ~60 tokens
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


def run(processes: int, threads: int, steps: int) -> list[float]:
    """Seconds per step of each of `processes` started together with `threads` threads each."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    procs = [
        subprocess.Popen([sys.executable, "-c", STEP, str(steps)], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(processes)
    ]
    return [float(p.communicate()[0]) for p in procs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    steps = parser.parse_args().steps
    cores = len(os.sched_getaffinity(0))
    layouts = [("alone, all cores", 1, cores), ("alone, 1 thread", 1, 1)]
    layouts += [("2 at once, 1 thread each", 2, 1), ("2 at once, all cores each", 2, cores)]
    print(f"{cores} CPUs, {steps} steps per process")
    print(f"{'layout':<28}{'ms/step':>18}{'steps/s':>10}")
    base = None
    for name, processes, threads in layouts:
        times = run(processes, threads, steps)
        throughput = sum(1 / t for t in times)
        base = base or throughput
        per = ", ".join(f"{t * 1000:.0f}" for t in times)
        print(f"{name:<28}{per:>18}{throughput:>10.2f}  ×{throughput / base:.2f}")


if __name__ == "__main__":
    main()
