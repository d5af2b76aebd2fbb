"""Throwaway DVC pipelines for the tests of running stages at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# `barrier.py ME OTHER` waits until OTHER has started: a pair can only finish if the two ran at the same time.
BARRIER = (
    "import pathlib, sys, time\n"
    "me, other = sys.argv[1:]\n"
    "pathlib.Path(me + '.started').touch()\n"
    "for _ in range(1200):\n"
    "    if pathlib.Path(other + '.started').exists():\n"
    "        break\n"
    "    time.sleep(0.05)\n"
    "else:\n"
    "    sys.exit(other + ' never started: the stages did not run at the same time')\n"
    "pathlib.Path(me + '.txt').write_text(me)\n"
)

# The two stages that must overlap: `a` and `b`, each writing <name>.txt.
BARRIER_PAIR = (
    f"  a: {{cmd: {sys.executable} barrier.py a b, deps: [barrier.py], outs: [a.txt]}}\n"
    f"  b: {{cmd: {sys.executable} barrier.py b a, deps: [barrier.py], outs: [b.txt]}}\n"
)


def dvc_pipeline(root: Path, stages: str) -> Path:
    """`root` as a DVC project (no git) with barrier.py and a dvc.yaml of `stages` (YAML lines under `stages:`)."""
    (root / "barrier.py").write_text(BARRIER)
    (root / "dvc.yaml").write_text("stages:\n" + stages)
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=root, check=True)
    return root
