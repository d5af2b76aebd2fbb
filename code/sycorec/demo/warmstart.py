"""Warm start for the CPU demo's stage processes.

Every DVC stage runs `sycorec …` as a new process, and importing torch, transformers and TRL costs a 2-core machine
seconds per stage, about forty times per demo. `sycorec demo` starts one server that imports them once; each stage's
`sycorec` command then asks it to fork a child that runs the same click command with the stage's argv, working
directory, environment and standard streams, and exits with the child's status. The stage code is the same as in a
cold process; only how the process starts differs.

Fork is unsafe once CUDA or a thread pool has started, so the server only imports before forking, and refuses a
machine where CUDA is available (cluster stages always start cold). The client imports nothing but the standard
library, and runs the command itself when no server answers.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

SOCKET_ENV = "SYCOREC_WARM_SOCKET"
# What stages import at the top of their work; importing more than a stage needs costs nothing per stage once warm.
PRELOAD = (
    "torch",
    "transformers",
    "transformers.trainer",
    "peft",
    "datasets",
    "dvclive",
    "safetensors.torch",
    "sklearn.metrics",
    "matplotlib.pyplot",
    "sycorec.cli",
)
# TRL classes the training stages build; imported with vLLM hidden, as the train group does in a cold process.
TRL_NAMES = ("SFTTrainer", "DPOTrainer", "RewardTrainer", "GRPOTrainer")
GRACE_SECONDS = 10.0
_HEADER = struct.Struct("!I")
Runner = Callable[[Sequence[str]], None]  # runs one command's argv in the forked child (the CLI)
_STATUS = struct.Struct("!i")


# --------------------------------------------------------------------------- client


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def forward(argv: Sequence[str]) -> int | None:
    """Run `argv` in the warm server named by $SYCOREC_WARM_SOCKET: its exit status, or None when none answers."""
    path = os.environ.get(SOCKET_ENV)
    if not path:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        return None
    with sock:
        payload = json.dumps({"argv": list(argv), "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
        socket.send_fds(sock, [_HEADER.pack(len(payload))], [0, 1, 2])
        sock.sendall(payload)
        try:
            reply = _recv_exact(sock, _STATUS.size)
        except KeyboardInterrupt:
            return 130  # closing the socket tells the server to interrupt the child
    if len(reply) != _STATUS.size:
        print(f"error: the warm server at {path} went away while running {' '.join(argv[1:])}", file=sys.stderr)
        return 1
    return _STATUS.unpack(reply)[0]


# --------------------------------------------------------------------------- server


def preload(modules: Sequence[str] = PRELOAD) -> None:
    import importlib

    for name in modules:
        importlib.import_module(name)
    hidden = sys.modules.setdefault("vllm", None) is None
    try:
        import trl

        for name in TRL_NAMES:
            getattr(trl, name)
        importlib.import_module("trl.experimental.cpo")
    finally:
        if hidden:
            del sys.modules["vllm"]  # a child that needs vLLM imports it as a cold process would


def _exit_status(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def _wait(pid: int, conn: socket.socket) -> int:
    """The child's exit status; if the client goes away first, interrupt the child as Ctrl-C would, then kill it."""
    pidfd = os.pidfd_open(pid)
    try:
        deadline = None
        while True:
            watched = [pidfd] if deadline else [pidfd, conn]
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select(watched, [], [], timeout)
            if pidfd in ready:
                return _exit_status(os.waitpid(pid, 0)[1])
            if conn in ready and not conn.recv(1):
                os.kill(pid, signal.SIGINT)
                deadline = time.monotonic() + GRACE_SECONDS
            elif deadline is not None and not ready:
                os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 3600.0
    finally:
        os.close(pidfd)


def _run_child(request: dict, fds: Sequence[int], run: Runner) -> int:
    """In the forked child: become the client's process (streams, cwd, env, argv) and run the command."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0 and "torch" in sys.modules:  # as a cold process reads it at import
        sys.modules["torch"].set_num_threads(int(threads))
    sys.argv = list(request["argv"])
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the process's own streams, open until exit
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    code = 1
    try:
        run(sys.argv)
        code = 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    return code


def _serve_one(conn: socket.socket, run: Runner) -> None:
    header, fds, _, _ = socket.recv_fds(conn, _HEADER.size, 3)
    if len(header) != _HEADER.size or len(fds) != 3:
        for fd in fds:
            os.close(fd)
        return
    request = json.loads(_recv_exact(conn, _HEADER.unpack(header)[0]))
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            conn.close()
            code = _run_child(request, fds, run)
        finally:
            os._exit(code)
    for fd in fds:
        os.close(fd)
    conn.sendall(_STATUS.pack(_wait(pid, conn)))


def _handle(listener: socket.socket, conn: socket.socket, run: Runner) -> None:
    """Serve `conn` from a forked handler, so the server takes the next request while this one runs."""
    if os.fork():
        conn.close()
        return
    code = 1
    try:
        listener.close()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the handler waits for its own child
        with conn:
            conn.settimeout(None)
            _serve_one(conn, run)
        code = 0
    finally:
        os._exit(code)


def serve(path: str, run: Runner, modules: Sequence[str] = PRELOAD) -> None:
    """Import `modules`, then fork one child per request that calls `run(argv)` (requests run concurrently) until the
    parent goes away."""
    import torch

    if torch.cuda.is_available():
        raise SystemExit("warm start is for CPU runs only: CUDA does not survive fork")
    preload(modules)
    parent = os.getppid()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # handlers are reaped by the kernel
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(8)
    listener.settimeout(1.0)
    with listener:
        while os.getppid() == parent:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            _handle(listener, conn, run)


@contextmanager
def warm_server(env: Mapping[str, str]) -> Iterator[dict[str, str]]:
    """Run a server while the block runs; yield `env` plus the variable that routes `sycorec` commands to it.

    The socket appears once the server has imported everything: commands that start earlier run cold.
    """
    directory = tempfile.mkdtemp(prefix="sycorec-warm-")
    path = os.path.join(directory, "socket")
    server = subprocess.Popen(
        [sys.executable, "-m", "sycorec.demo_stage", "--serve", path],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        env=env,
    )
    # SIGTERM's default action would skip the cleanup below and say nothing: make it an exit that runs it
    before = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield {**env, SOCKET_ENV: path}
    finally:
        signal.signal(signal.SIGTERM, before)
        server.terminate()
        server.wait()
        shutil.rmtree(directory, ignore_errors=True)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    print("error: stopped by SIGTERM; finished stages are kept, re-run to continue", file=sys.stderr)
    raise SystemExit(128 + signum)
