"""The package's import architecture: import-linter's contracts (pyproject.toml) hold, and the graph of top-level
modules and folders is a shallow DAG."""

from __future__ import annotations

import functools
import graphlib
import os
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
MAX_LAYERS = 7


def test_import_contracts_are_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def top_level_graph() -> dict[str, set[str]]:
    """sycorec.<module or folder> -> the top-level modules and folders it imports."""
    graph = grimp.build_graph("sycorec")

    def top(module: str) -> str:
        return ".".join(module.split(".")[:2])

    edges: dict[str, set[str]] = {top(m): set() for m in graph.modules if m != "sycorec"}
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            source, target = top(module), top(imported)
            if source != target and "sycorec" not in (source, target):
                edges[source].add(target)
    return edges


def test_top_level_imports_form_a_shallow_dag():
    edges = top_level_graph()
    order = list(graphlib.TopologicalSorter(edges).static_order())  # CycleError: an import runs back up

    @functools.cache
    def layers(node: str) -> int:
        return 1 + max((layers(n) for n in edges[node]), default=0)

    deepest = max(order, key=layers)
    assert layers(deepest) <= MAX_LAYERS, f"{deepest} stands on {layers(deepest)} layers"


def test_a_stage_command_loads_no_demo_machinery(tmp_path):
    """The installed `sycorec` (what a cluster job runs) is the plain CLI: no warm-server client, no CPU-share timer."""
    (tmp_path / "params.yaml").write_bytes((ROOT / "params.yaml").read_bytes())
    script = (
        "import signal, sys\n"
        "from sycorec.cli import main\n"
        "main(['config', 'check'], standalone_mode=False)\n"
        "print(sorted(m for m in sys.modules if m.startswith('sycorec.demo')), signal.getitimer(signal.ITIMER_REAL))\n"
    )
    (tmp_path / "share").write_text("1")
    env = dict(os.environ, SYCOREC_CPU_SHARE=str(tmp_path / "share"))  # even where a job inherits the demo's variable
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines()[-1] == "[] (0.0, 0.0)"
