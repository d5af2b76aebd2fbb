"""The demo's warm server: a command forked from it behaves as the same command started cold."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sycorec.demo.warmstart import SOCKET_ENV, forward

pytestmark = pytest.mark.slow  # starts the warm server and its children

ROOT = Path(__file__).resolve().parents[1]
SYCOREC = [sys.executable, "-m", "sycorec.demo_stage"]  # the demo stages' `sycorec`


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A server that preloads only the CLI (torch is imported anyway, to refuse CUDA)."""
    path = tmp_path_factory.mktemp("warm") / "socket"
    proc = subprocess.Popen([sys.executable, "-m", "sycorec.demo_stage", "--serve", str(path), "sycorec.cli"])
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


def _blocked_client(cwd: Path, server: str) -> subprocess.Popen:
    """A command whose child blocks: its params.yaml is a FIFO that nobody writes."""
    os.mkfifo(cwd / "params.yaml")
    client = subprocess.Popen(
        [*SYCOREC, "config", "check"], cwd=cwd, env=dict(os.environ, **{SOCKET_ENV: server}), stdin=subprocess.DEVNULL
    )
    time.sleep(3)
    assert client.poll() is None, "the command did not block"
    return client


def _processes_in(directory: Path) -> set[int]:
    """Pids whose working directory is `directory` (Linux /proc)."""
    pids = set()
    for cwd in Path("/proc").glob("[0-9]*/cwd"):
        try:
            if os.readlink(cwd) == str(directory):
                pids.add(int(cwd.parent.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return pids


def _gone(directory: Path, seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while _processes_in(directory):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _config_dir(path: Path) -> Path:
    path.mkdir()
    (path / "params.yaml").write_bytes((ROOT / "params.yaml").read_bytes())
    (path / "profiles").symlink_to(ROOT / "profiles")
    return path


def test_killed_client_interrupts_its_child_and_the_server_goes_on(server, tmp_path):
    client = _blocked_client(tmp_path, server)
    assert _processes_in(tmp_path) - {client.pid}, "no forked child runs the command"
    client.kill()
    client.wait()
    assert _gone(tmp_path), "the forked child still runs after its client died"
    after = _run(["config", "check"], _config_dir(tmp_path / "next"), server)
    assert after.returncode == 0 and after.stdout.strip() == "ok"


def test_requests_run_at_once(server, tmp_path):
    """A stage blocked in the server does not hold up the next one (the demo runs independent stages at once)."""
    blocked = _blocked_client(tmp_path, server)
    try:
        after = _run(["config", "check"], _config_dir(tmp_path / "other"), server)
        assert after.returncode == 0 and after.stdout.strip() == "ok"
        assert blocked.poll() is None  # still blocked
    finally:
        blocked.kill()
        blocked.wait()


def test_no_server_means_run_cold(tmp_path, monkeypatch):
    monkeypatch.setenv(SOCKET_ENV, str(tmp_path / "absent"))
    assert forward(["sycorec", "--help"]) is None
    monkeypatch.delenv(SOCKET_ENV)
    assert forward(["sycorec", "--help"]) is None


def test_sigterm_during_a_warm_run_removes_the_socket_folder_and_says_so(tmp_path):
    code = (
        "import os, sys, time\n"
        "from sycorec.demo.warmstart import SOCKET_ENV, warm_server\n"
        "with warm_server(dict(os.environ)) as env:\n"
        "    print(env[SOCKET_ENV], flush=True)\n"
        "    time.sleep(600)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path
    )
    folder = Path(proc.stdout.readline().strip()).parent
    assert folder.is_dir() and folder.name.startswith("sycorec-warm-")
    proc.terminate()
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + 15 and not folder.exists()
    assert stderr.strip().splitlines() == ["error: stopped by SIGTERM; finished stages are kept, re-run to continue"]
