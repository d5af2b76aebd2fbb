"""The demo's scheduler: independent stages at once, each as the SLURM chain runs it, in DVC's dependency order."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dvc_support import BARRIER_PAIR, dvc_pipeline
from sycorec.demo.workspace import run_concurrently
from sycorec.errors import SycorecError

pytestmark = pytest.mark.slow  # runs stage processes side by side

# Fails if another holder is inside: serial stages must never overlap.
EXCLUSIVE = (
    "import os, sys, time\n"
    "fd = os.open('busy', os.O_CREAT | os.O_EXCL | os.O_WRONLY)\n"
    "time.sleep(1.0)\n"
    "os.close(fd)\n"
    "os.remove('busy')\n"
    "open(sys.argv[1] + '.txt', 'w').write(sys.argv[1])\n"
)


def never_serial(stage: str) -> bool:
    return False


def test_independent_stages_run_at_once_and_downstream_waits_for_both(tmp_path):
    downstream = "  c: {cmd: cat a.txt b.txt > c.txt, deps: [a.txt, b.txt], outs: [c.txt]}\n"
    root = dvc_pipeline(tmp_path, BARRIER_PAIR + downstream)
    run_concurrently(root, (), 2, dict(os.environ), never_serial)
    assert (root / "c.txt").read_text() == "ab"
    lock = (root / "dvc.lock").read_text()
    assert all(f"\n  {stage}:\n" in lock for stage in "abc")
    assert (root / "outputs" / "logs" / "a.log").is_file()
    # Nothing changed: a second pass plans and starts no stage.
    before = (root / "dvc.lock").read_bytes()
    run_concurrently(root, (), 2, dict(os.environ), never_serial)
    assert (root / "dvc.lock").read_bytes() == before


def test_a_failed_stage_stops_its_downstream_and_names_its_log(tmp_path, capsys):
    root = dvc_pipeline(
        tmp_path,
        "  bad: {cmd: 'echo broken input >&2 && exit 3', outs: [bad.txt]}\n"
        "  after: {cmd: cp bad.txt after.txt, deps: [bad.txt], outs: [after.txt]}\n",
    )
    with pytest.raises(SycorecError, match=r"stage bad failed .*outputs/logs/bad\.log"):
        run_concurrently(root, (), 2, dict(os.environ), never_serial)
    out = capsys.readouterr().out
    assert "FAILED   bad" in out and "broken input" in out
    assert "started  after" not in out and not (root / "after.txt").exists()


def test_serial_stages_never_overlap(tmp_path):
    """Stages that share one cache file (`serial` in slurm/stages.yaml, the judges) run one after another."""
    (tmp_path / "exclusive.py").write_text(EXCLUSIVE)
    py = sys.executable
    root = dvc_pipeline(
        tmp_path,
        "".join(f"  j{i}: {{cmd: {py} exclusive.py j{i}, deps: [exclusive.py], outs: [j{i}.txt]}}\n" for i in range(3)),
    )
    run_concurrently(root, (), 3, dict(os.environ), lambda stage: stage.startswith("j"))
    assert all((root / f"j{i}.txt").is_file() for i in range(3))


def test_a_stage_takes_its_share_of_the_cpus(tmp_path, monkeypatch):
    """Alone a stage uses every core; beside another, its half; an unreadable share changes nothing."""
    import signal

    import torch

    from sycorec.demo import cpushare

    monkeypatch.setattr(cpushare, "cpus", lambda: 4)
    share = tmp_path / "cpu_share"
    before = torch.get_num_threads()
    try:
        for running, threads in ((1, 4), (2, 2), (3, 1), (8, 1)):
            cpushare.write_share(share, running)
            cpushare.apply_share(share)
            assert torch.get_num_threads() == threads
        share.write_text("")  # caught between two writes
        cpushare.apply_share(share)
        assert torch.get_num_threads() == 1
        monkeypatch.setenv(cpushare.SHARE_ENV, str(share))
        cpushare.follow_share()
        assert signal.getitimer(signal.ITIMER_REAL)[1] == cpushare.PERIOD_S
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        torch.set_num_threads(before)


def test_a_stage_following_its_share_survives_torch_import_and_exit(tmp_path):
    """The share timer may fire while torch is being imported and must not fire after Python tears down."""
    from sycorec.demo.cpushare import SHARE_ENV, cpus, write_share

    share = tmp_path / "cpu_share"
    write_share(share, 1)
    script = (
        "import time\n"
        "from sycorec.demo import cpushare\n"
        "cpushare.follow_share()\n"
        "time.sleep(0.99)\n"  # the first alarm lands while torch imports
        "import torch\n"
        "time.sleep(1.5)\n"
        "print(torch.get_num_threads())\n"
    )
    env = dict(os.environ, **{SHARE_ENV: str(share), "OMP_NUM_THREADS": "1"})
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout) == cpus()  # alone: every core
