"""The demo's warm server: a command forked from it behaves as the same command started cold."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sycorec.warmstart import SOCKET_ENV, forward

ROOT = Path(__file__).resolve().parents[1]
SYCOREC = [sys.executable, "-m", "sycorec"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A server that preloads only the CLI (torch is imported anyway, to refuse CUDA)."""
    path = tmp_path_factory.mktemp("warm") / "socket"
    proc = subprocess.Popen([sys.executable, "-m", "sycorec.warmstart", str(path), "sycorec.cli"])
    deadline = time.monotonic() + 600
    while not path.exists():
        assert proc.poll() is None, "warm server exited"
        assert time.monotonic() < deadline, "warm server did not start"
        time.sleep(0.2)
    time.sleep(0.5)  # bound before listening: let it listen
    yield str(path)
    proc.terminate()
    proc.wait()


def _run(args: list[str], cwd: Path, socket: str | None, **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != SOCKET_ENV}
    if socket:
        env[SOCKET_ENV] = socket
    return subprocess.run(SYCOREC + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, **kwargs)


@pytest.mark.parametrize("args", [["config", "check"], ["--params", "missing.yaml", "config", "check"]])
def test_warm_command_matches_cold(server, tmp_path, args):
    (tmp_path / "params.yaml").write_bytes((ROOT / "params.yaml").read_bytes())
    (tmp_path / "profiles").symlink_to(ROOT / "profiles")
    cold = _run(args, tmp_path, None)
    warm = _run(args, tmp_path, server)
    assert (warm.returncode, warm.stdout, warm.stderr) == (cold.returncode, cold.stdout, cold.stderr)
    assert cold.returncode in (0, 2)


def test_child_sees_the_clients_directory_and_environment(server, tmp_path):
    (tmp_path / "params.yaml").write_bytes((ROOT / "params.yaml").read_bytes())
    (tmp_path / "profiles").symlink_to(ROOT / "profiles")
    cmd = ["--profile", "tiny", "config", "show"]
    assert _run(cmd, tmp_path, server).stdout == _run(cmd, tmp_path, None).stdout
    missing = _run(["--profile", "nope", "config", "check"], tmp_path, server)
    assert missing.returncode == 2 and "nope" in missing.stderr


def test_killed_client_interrupts_its_child_and_the_server_goes_on(server, tmp_path):
    env = dict(os.environ, **{SOCKET_ENV: server})
    # `data validate -` would read stdin: the child blocks on a pipe that stays open until we kill the client.
    client = subprocess.Popen(
        [*SYCOREC, "data", "validate", "/dev/stdin"],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    time.sleep(3)
    client.kill()
    client.wait()
    client.stdin.close()
    (tmp_path / "params.yaml").write_bytes((ROOT / "params.yaml").read_bytes())
    (tmp_path / "profiles").symlink_to(ROOT / "profiles")
    after = _run(["config", "check"], tmp_path, server)
    assert after.returncode == 0 and after.stdout.strip() == "ok"


def test_no_server_means_run_cold(tmp_path, monkeypatch):
    monkeypatch.setenv(SOCKET_ENV, str(tmp_path / "absent"))
    assert forward(["sycorec", "--help"]) is None
    monkeypatch.delenv(SOCKET_ENV)
    assert forward(["sycorec", "--help"]) is None
