"""Failures of the machine, not the code (full disk, unreachable hub, umask): one line, exit 2, nothing half-written."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from eval_support import eval_config, save_tiny_model, write_manifests
from sycorec.cli import library_failure, main
from sycorec.errors import DiskFullError
from sycorec.evaluation.store import AppendStore, recover_rows
from sycorec.io import WEIGHTS_RECORD, seal_weights, staged_dir, write_json, write_jsonl
from sycorec.paths import generations_path

ROOT = Path(__file__).resolve().parents[1]


def run_sycorec(cwd: Path, *args: str, env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
    """`sycorec ARGS` in a new interpreter that runs this checkout's code, with `env` over this environment."""
    path = os.pathsep.join([str(ROOT / "code"), os.environ.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "sycorec", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": path, **(env or {})},
        **kw,
    )


ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
EFBIG = OSError(errno.EFBIG, os.strerror(errno.EFBIG))  # the file size limit (`ulimit -f`)


class FullDisk:
    """`Path.open` whose writes fail with ENOSPC once `budget` bytes are written: the disk fills up mid-stage.

    The write that crosses the budget writes what still fits first, as a real one would (a torn line).
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, budget: int, error: OSError = ENOSPC) -> None:
        self.left, self.error = budget, error
        real_open = Path.open

        def open_(path: Path, mode: str = "r", *args, **kwargs):
            fh = real_open(path, mode, *args, **kwargs)
            return fh if mode.startswith("r") else _Limited(fh, self)

        monkeypatch.setattr(Path, "open", open_)


class _Limited:
    def __init__(self, fh, disk: FullDisk) -> None:
        self._fh, self._disk = fh, disk

    def write(self, data):
        fits = data[: max(self._disk.left, 0)]
        self._disk.left -= len(data)
        if len(fits) < len(data):
            self._fh.write(fits)
            self._fh.flush()
            raise self._disk.error
        return self._fh.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._fh.close()

    def __getattr__(self, name):
        return getattr(self._fh, name)


def one_line_exit_2(result, needle: str) -> str:
    assert result.exit_code == 2, result.output
    lines = [line[line.index("error:") :] for line in result.output.splitlines() if "error:" in line]  # after tqdm's \r
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in result.output, result.output
    return lines[0]


def no_temp_files(root: Path) -> bool:
    return not [p for p in root.rglob(".*") if p.name.endswith(".tmp") or ".tmp" in p.name]


# --------------------------------------------------------------------------- a full disk


@pytest.fixture
def eval_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = eval_config(tmp_path)
    profile = tmp_path / "profiles/tiny.yaml"  # the CLI reads the files: short replies keep the test fast
    profile.write_text(profile.read_text().replace("  max_new_tokens: 24\n", "  max_new_tokens: 6\n", 1))
    write_manifests(cfg, n_facts=3)
    save_tiny_model(cfg)
    return cfg


def files(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} if root.exists() else {}


@pytest.mark.slow  # generates and scores with the tiny model
def test_full_disk_in_generate_and_score(eval_root, monkeypatch):
    """generate keeps whole rows and resumes to the uninterrupted replies; score writes nothing."""
    runner = CliRunner()
    generate = ["--profile", "tiny", "generate", "--model", "base"]
    assert runner.invoke(main, generate).exit_code == 0
    assert runner.invoke(main, ["--profile", "tiny", "judge", "--models", "base"]).exit_code == 0
    results = files(eval_root.paths.results)
    with monkeypatch.context() as patch:
        FullDisk(patch, budget=0)
        one_line_exit_2(runner.invoke(main, ["--profile", "tiny", "score", "--model", "base"]), "nothing was written")
    assert files(eval_root.paths.results) == results and no_temp_files(Path.cwd())

    path = generations_path(eval_root, "base", "answer")
    whole = path.read_bytes()
    for dataset in ("answer", "are_you_sure", "feedback"):
        generations_path(eval_root, "base", dataset).unlink()
    with monkeypatch.context() as patch:
        FullDisk(patch, budget=len(whole) // 2)
        line = one_line_exit_2(runner.invoke(main, generate), "No space left on device")
    assert str(path) in line and "ends at its last whole row" in line
    partial = path.read_bytes()
    assert partial.endswith(b"\n") and 0 < len(recover_rows(path)) == partial.count(b"\n")
    assert runner.invoke(main, generate).exit_code == 0  # space freed: it resumes
    resumed = {(r["item_id"], r["pass"]): r["response"] for r in recover_rows(path)}
    assert resumed == {(r["item_id"], r["pass"]): r["response"] for r in map(json.loads, whole.splitlines())}


def test_full_disk_in_prepare_leaves_prepared_as_it_was(tmp_path, monkeypatch):
    synth_root(tmp_path)
    monkeypatch.chdir(tmp_path)
    with monkeypatch.context() as patch:
        FullDisk(patch, budget=20_000)
        line = one_line_exit_2(CliRunner().invoke(main, ["--profile", "tiny", "data", "prepare"]), "data/prepared:")
    assert "no space left on device; nothing was written" in line
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["synth"]


def test_full_disk_in_training_is_one_line_and_leaves_no_model(tmp_path, monkeypatch):
    from train_support import make_run_root

    root = make_run_root(tmp_path / "r")
    monkeypatch.chdir(root)
    monkeypatch.setitem(sys.modules, "vllm", sys.modules.get("vllm"))  # the train group hides vLLM; undo after

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "model.safetensors")

    import safetensors.torch
    import torch

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    monkeypatch.setattr(torch, "save", full)
    result = CliRunner().invoke(main, ["--profile", "tiny", "train", "sft"])
    line = one_line_exit_2(result, "model.safetensors: No space left on device (sycorec train)")
    assert line.endswith("free space and re-run")
    assert sorted(p.name for p in (root / "outputs/models").iterdir()) == ["base"]  # no sft, no staging leftovers


def test_full_disk_while_writing_one_file_leaves_the_old_one(tmp_path, monkeypatch):
    write_json(tmp_path / "m.json", {"old": 1})
    with monkeypatch.context() as patch:
        FullDisk(patch, budget=3)
        with pytest.raises(Exception, match=r"m\.json: No space left on device; nothing was written"):
            write_json(tmp_path / "m.json", {"new": 2})
    assert json.loads((tmp_path / "m.json").read_text()) == {"old": 1}
    assert os.listdir(tmp_path) == ["m.json"]


def test_a_file_size_limit_in_a_cache_keeps_its_whole_rows(tmp_path, monkeypatch):
    store = AppendStore(tmp_path / "cache.jsonl", key=lambda row: row["key"])
    store.append([{"key": "a", "raw": "x" * 40}])
    whole = store.path.read_bytes()
    with monkeypatch.context() as patch:
        FullDisk(patch, budget=30, error=EFBIG)
        with pytest.raises(DiskFullError) as info:
            store.append([{"key": "b", "raw": "y" * 40}])
    assert str(info.value) == (
        f"{store.path}: File too large after 0 new rows; the file ends at its last whole row, "
        "raise the file size limit (ulimit -f) and re-run to continue"
    )
    assert store.path.read_bytes() == whole  # the torn row is cut off


def test_library_failures_that_are_not_the_machine_keep_their_traceback():
    assert library_failure(ValueError("bug"), "train") is None
    assert library_failure(OSError(errno.EIO, "Input/output error"), "train") is None


# --------------------------------------------------------------------------- permissions


def synth_root(tmp_path: Path) -> Path:
    from test_data_prepare import make_raw

    for name in ("params.yaml", "profiles/tiny.yaml"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text((ROOT / name).read_text())
    make_raw(tmp_path / "data/synth")
    return tmp_path


def deny(monkeypatch: pytest.MonkeyPatch, under: Path, code: int, writing: bool) -> None:
    """What the kernel says to a user without access (tests may run as root, whom permissions do not stop)."""
    real_open, real_mkdir = Path.open, Path.mkdir

    def refused(path: Path) -> bool:
        return Path(path).resolve().is_relative_to(under.resolve())

    def open_(path: Path, mode: str = "r", *args, **kwargs):
        if refused(path) and (mode[0] != "r") == writing:
            raise PermissionError(code, os.strerror(code), str(path))
        return real_open(path, mode, *args, **kwargs)

    def mkdir(path: Path, *args, **kwargs):
        if writing and refused(path) and not Path(path).exists():  # an existing folder is EEXIST first
            raise PermissionError(code, os.strerror(code), str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(Path, "open", open_)
    monkeypatch.setattr(Path, "mkdir", mkdir)


@pytest.mark.parametrize(
    ("code", "writing", "where", "needle"),
    [
        (errno.EACCES, False, "data/synth", "Permission denied (sycorec data)"),  # an unreadable input
        (errno.EROFS, True, "data", "Read-only file system (sycorec data)"),  # a read-only output folder
    ],
    ids=["unreadable-input", "read-only-output"],
)
def test_a_file_or_folder_this_user_may_not_use_is_one_line(tmp_path, monkeypatch, code, writing, where, needle):
    root = synth_root(tmp_path)
    monkeypatch.chdir(root)
    with monkeypatch.context() as patch:
        deny(patch, root / where, code, writing)
        line = one_line_exit_2(CliRunner().invoke(main, ["--profile", "tiny", "data", "prepare"]), needle)
    assert line.endswith("give this user access to it (or its folder) and re-run")
    assert sorted(p.name for p in (root / "data").iterdir()) == ["synth"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root is not stopped by file modes")
def test_a_read_only_data_folder_is_one_line_for_a_plain_user(tmp_path):
    root = synth_root(tmp_path)
    (root / "data").chmod(0o555)
    try:
        proc = run_sycorec(root, "--profile", "tiny", "data", "prepare")
    finally:
        (root / "data").chmod(0o755)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "Permission denied (sycorec data)" in proc.stderr.strip().splitlines()[-1]


# --------------------------------------------------------------------------- an unreachable hub


@pytest.mark.parametrize(
    "network",
    [
        {"HF_ENDPOINT": "http://127.0.0.1:9"},  # nothing listens: connection refused at once
        # a dead HTTPS proxy: huggingface_hub re-raises requests' ProxyError instead of falling back to the cache
        {"HTTPS_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "NO_PROXY": "", "no_proxy": ""},
    ],
    ids=["refused", "dead-proxy"],
)
def test_train_base_without_a_reachable_hub_is_one_line(tmp_path, network):
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    env = {"HF_HOME": str(tmp_path / "hf"), **network, "HF_HUB_OFFLINE": "0"}  # nothing cached
    proc = run_sycorec(tmp_path, "train", "base", env=env)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("error: model Qwen/Qwen3-8B@") and "hub cannot be reached" in lines[0]
    assert "sycorec prefetch --only Qwen/Qwen3-8B" in lines[0]
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "results").exists()


def test_model_loading_without_a_reachable_hub_is_one_line():
    """from_pretrained wraps the hub's error in a plain OSError: the cause chain still says what happened."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        try:
            raise LocalEntryNotFoundError("cannot find the requested files in the disk cache")
        except LocalEntryNotFoundError as exc:
            raise OSError("We couldn't connect to 'https://huggingface.co' to load the files") from exc
    except OSError as wrapped:
        line = library_failure(wrapped, "generate")
    assert line is not None and line.startswith("sycorec generate: the Hugging Face hub cannot be reached")
    assert "OSError: We couldn't connect" in line and "\n" not in line


def test_staged_dir_clears_what_a_killed_run_left(tmp_path):
    """SIGKILL skips the cleanup: the next write of the same destination removes the dead run's staging directory."""
    (tmp_path / "out").mkdir()
    leftover = tmp_path / ".model.0123456789ab.tmp"
    (leftover / "shard").mkdir(parents=True)
    other = tmp_path / ".model-2.0123456789ab.tmp"
    other.mkdir()
    with staged_dir(tmp_path / "model") as staging:
        (staging / "config.json").write_text("{}")
    assert not leftover.exists() and other.exists()  # only the same destination's
    assert (tmp_path / "model" / "config.json").is_file()


# --------------------------------------------------------------------------- the umask


@pytest.mark.parametrize(("umask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775)])
def test_atomic_writes_follow_the_umask(tmp_path, umask, file_mode, dir_mode):
    old = os.umask(umask)
    try:
        write_json(tmp_path / "metrics.json", {"a": 1})
        write_jsonl(tmp_path / "rows.jsonl", [{"a": 1}])
        with staged_dir(tmp_path / "prepared") as staging:
            write_jsonl(staging / "x.jsonl", [{"a": 1}])
    finally:
        os.umask(old)
    for name in ("metrics.json", "rows.jsonl", "prepared/x.jsonl"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == file_mode, name
    assert stat.S_IMODE((tmp_path / "prepared").stat().st_mode) == dir_mode


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664)])
def test_saved_weight_files_follow_the_umask(tmp_path, umask, mode):
    """safetensors creates its files 0600; a saved model's weights get the umask's mode like every other output."""
    import torch
    from safetensors.torch import save_file

    old = os.umask(umask)
    try:
        with staged_dir(tmp_path / "model") as staging:
            save_file({"w": torch.zeros(2)}, staging / "model.safetensors")
            (staging / "adapter").mkdir()
            save_file({"w": torch.zeros(2)}, staging / "adapter" / "adapter_model.safetensors")
            seal_weights(staging)
    finally:
        os.umask(old)
    for name in ("model.safetensors", "adapter/adapter_model.safetensors", WEIGHTS_RECORD):
        assert stat.S_IMODE((tmp_path / "model" / name).stat().st_mode) == mode, name


@pytest.mark.slow  # trains the tiny SFT in a subprocess
@pytest.mark.parametrize(
    ("share", "needle"),
    [
        # the LoRA adapter (~0.6 of the base model) fits, the optimizer state (twice the adapter) does not
        (1.0, "torch could not write a file (sycorec train: RuntimeError: [enforce fail at inline_container.cc"),
        # not even the adapter fits
        (0.5, "safetensors: File too large (sycorec train); raise the file size limit (ulimit -f) and re-run"),
    ],
    ids=["torch-optimizer", "safetensors-adapter"],
)
def test_a_file_size_limit_in_training_is_one_line_and_leaves_no_model(tmp_path, share, needle):
    """A real limit (RLIMIT_FSIZE, as `ulimit -f` sets): torch's and safetensors' writers fail without an OSError."""
    import resource

    from train_support import make_run_root

    root = make_run_root(tmp_path / "r")
    limit = int((root / "outputs/models/base/model.safetensors").stat().st_size * share) - 4096

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = run_sycorec(root, "--profile", "tiny", "train", "sft", preexec_fn=limited)
    errors = [line[line.index("error:") :] for line in proc.stderr.splitlines() if "error:" in line]  # after tqdm's
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(errors) == 1 and errors[0].startswith(f"error: {needle}"), proc.stderr
    assert sorted(p.name for p in (root / "outputs/models").iterdir()) == ["base"]  # no sft, no staging leftovers
