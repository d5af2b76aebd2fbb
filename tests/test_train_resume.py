"""Kill and resume: a resumed stage ends with the weights an uninterrupted one ends with, torn checkpoints are skipped,
and the same inputs give a model directory with the same DVC hash (tiny random Qwen3, a few steps on CPU)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from sycorec.io import read_json
from sycorec.train.common import checkpoint_problem, prepare_checkpoints, sort_adapter_config
from train_support import Killed, killer, make_run_root, tiny_config

torch = pytest.importorskip("torch")

# 16 rows in batches of 4: 4 steps an epoch, 8 in all, a checkpoint every 2 steps. A kill after the save at step 6
# stops the run two steps into its second epoch, where the data order is that epoch's shuffle, not the first one's;
# with checkpoint-6 torn, the run resumes from checkpoint-4, at the epoch boundary.
MID_EPOCH = {"train": {"sft": {"num_train_epochs": 2, "per_device_train_batch_size": 4, "save_steps": 2}}}
STEPS, KILL_AT = 8, 6


def dvc_hash(path: Path) -> str:
    """The md5 DVC records for an output directory (its own hashing, as `dvc status` compares it)."""
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem

    fs = LocalFileSystem()
    with tempfile.TemporaryDirectory() as odb_dir:
        _, _, obj = build(HashFileDB(fs, odb_dir), str(path), fs, "md5", dry_run=True)
    return obj.hash_info.value


def train_sft_in(root: Path, hook=None):
    from sycorec.train.sft import train_sft

    old = os.getcwd()
    os.chdir(root)
    try:
        return train_sft(tiny_config(root, **MID_EPOCH), hook=hook)
    finally:
        os.chdir(old)


def assert_same_weights(a_dir: Path, b_dir: Path) -> None:
    from safetensors.torch import load_file

    a, b = (load_file(d / "adapter/adapter_model.safetensors") for d in (a_dir, b_dir))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key  # bit-identical, not merely close


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted SFT run."""
    torch.set_num_threads(1)
    root = make_run_root(tmp_path_factory.mktemp("reference") / "run")
    result = train_sft_in(root)
    assert result.trainer.state.global_step == STEPS
    return root


def _killed_at_step(path: Path) -> Path:
    """A run root whose SFT run was killed right after saving checkpoint KILL_AT."""
    root = make_run_root(path)
    with pytest.raises(Killed):
        train_sft_in(root, killer(KILL_AT))
    return root


@pytest.mark.slow  # trains and kills the tiny model
def test_mid_epoch_kill_resumes_bit_identical(reference, tmp_path, capfd):
    root = _killed_at_step(tmp_path / "resumed")
    assert not (root / "outputs/models/sft").exists()  # nothing half-written
    capfd.readouterr()
    result = train_sft_in(root)
    log = capfd.readouterr().err
    assert f"sft: resuming from outputs/checkpoints/sft/checkpoint-{KILL_AT} at step {KILL_AT} of {STEPS}" in log
    assert f"({STEPS - KILL_AT} steps left)" in log
    assert result.trainer.state.global_step == STEPS
    assert_same_weights(reference / "outputs/models/sft", root / "outputs/models/sft")
    curves = [read_json(r / "results/curves/sft.json") for r in (reference, root)]
    assert curves[0] == curves[1]
    assert (root / f"outputs/checkpoints/sft/checkpoint-{STEPS}").is_dir()  # kept until DVC commits the model


@pytest.mark.slow  # trains and kills the tiny model
def test_a_finished_run_whose_commit_failed_is_not_trained_again(reference, tmp_path, capfd):
    """DVC removes a stage's outputs before running it again (as after a commit that failed): the re-run resumes
    at the final step, trains nothing and saves the same model."""
    root = tmp_path / "run"
    shutil.copytree(reference, root)
    shutil.rmtree(root / "outputs/models/sft")
    capfd.readouterr()
    result = train_sft_in(root)
    assert f"at step {STEPS} of {STEPS} (0 steps left)" in capfd.readouterr().err
    assert result.trainer.state.global_step == STEPS
    assert_same_weights(reference / "outputs/models/sft", root / "outputs/models/sft")


def _no_trainer_state(checkpoint: Path) -> None:
    (checkpoint / "trainer_state.json").unlink()


def _torn_optimizer(checkpoint: Path) -> None:
    optimizer = checkpoint / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[: optimizer.stat().st_size // 2])


def _zeroed_optimizer(checkpoint: Path) -> None:
    """4 KiB of zeros in the middle, same size: what a node crash can leave."""
    _zero_middle(checkpoint / "optimizer.pt")


def _zero_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = bytes(len(data[middle : middle + 4096]))
    path.write_bytes(bytes(data))


@pytest.mark.slow  # trains and kills the tiny model
@pytest.mark.parametrize(
    ("tear", "why"),
    [
        (_no_trainer_state, "no trainer_state.json"),
        (_torn_optimizer, "torn optimizer.pt"),
        (_zeroed_optimizer, "damaged optimizer.pt (member"),
    ],
    ids=["no-trainer-state", "torn-optimizer", "zeroed-optimizer"],
)
def test_torn_checkpoint_is_skipped_for_the_newest_complete_one(reference, tmp_path, capfd, tear, why):
    root = _killed_at_step(tmp_path / "torn")
    checkpoints = root / "outputs/checkpoints/sft"
    tear(checkpoints / f"checkpoint-{KILL_AT}")
    capfd.readouterr()
    result = train_sft_in(root)
    log = capfd.readouterr().err
    assert f"sft: skipping outputs/checkpoints/sft/checkpoint-{KILL_AT} ({why}" in log
    assert f"resuming from outputs/checkpoints/sft/checkpoint-4 at step 4 of {STEPS}" in log
    assert result.trainer.state.global_step == STEPS
    assert_same_weights(reference / "outputs/models/sft", root / "outputs/models/sft")


@pytest.mark.slow  # trains and kills the tiny model
def test_same_inputs_give_the_same_model_directory_hash(reference, tmp_path):
    root = make_run_root(tmp_path / "again")
    train_sft_in(root)
    first, second = reference / "outputs/models/sft", root / "outputs/models/sft"
    differing = [
        str(p.relative_to(first))
        for p in sorted(first.rglob("*"))
        if p.is_file() and p.read_bytes() != (second / p.relative_to(first)).read_bytes()
    ]
    assert differing == []
    assert dvc_hash(first) == dvc_hash(second)
    # PEFT writes target_modules in per-process set order; one process cannot show that, the sorted list can
    for config in first.rglob("adapter_config.json"):
        modules = json.loads(config.read_text())["target_modules"]
        assert modules == sorted(modules) and len(modules) > 1


# --------------------------------------------------------------------------- units


def test_sort_adapter_config_orders_target_modules_and_keeps_the_rest(tmp_path):
    path = tmp_path / "adapter_config.json"
    config = {"r": 16, "target_modules": ["v_proj", "down_proj", "q_proj"], "modules_to_save": ["score", "a"]}
    path.write_text(json.dumps(config))
    sort_adapter_config(path)
    assert json.loads(path.read_text()) == {**config, "target_modules": ["down_proj", "q_proj", "v_proj"]}


def _complete_checkpoint(path: Path) -> Path:
    from safetensors.torch import save_file

    path.mkdir(parents=True)
    save_file({"w": torch.zeros(4)}, str(path / "adapter_model.safetensors"))
    torch.save({"state": {}}, path / "optimizer.pt")
    state = {"global_step": int(path.name.split("-")[1]), "max_steps": 20}
    (path / "trainer_state.json").write_text(json.dumps(state))
    return path


def test_checkpoint_problem_names_what_is_torn(tmp_path):
    good = _complete_checkpoint(tmp_path / "checkpoint-1")
    assert checkpoint_problem(good) is None
    weights = _complete_checkpoint(tmp_path / "checkpoint-2") / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])
    assert checkpoint_problem(weights.parent).startswith("torn adapter_model.safetensors")
    state = _complete_checkpoint(tmp_path / "checkpoint-3") / "trainer_state.json"
    state.write_text('{"global_step": 3, "max')
    assert checkpoint_problem(state.parent) == "torn trainer_state.json"
    optimizer = _complete_checkpoint(tmp_path / "checkpoint-4") / "optimizer.pt"
    torch.save({"state": torch.arange(8192.0)}, optimizer)
    _zero_middle(optimizer)
    assert checkpoint_problem(optimizer.parent).startswith("damaged optimizer.pt (member ")


def test_a_damaged_run_file_starts_afresh_instead_of_blocking_every_rerun(tmp_path, monkeypatch, capfd):
    from sycorec.train.common import CHECKPOINTS

    monkeypatch.chdir(tmp_path)
    run = CHECKPOINTS / "x"
    _complete_checkpoint(run / "checkpoint-2")
    (run / "run.json").write_bytes(b'{"fingerprint": "new\xff')
    assert prepare_checkpoints("x", "new", Path("outputs/models/x")) is None
    assert "x: params or inputs changed since its checkpoints were saved (or " in capfd.readouterr().err
    assert json.loads((run / "run.json").read_text()) == {"fingerprint": "new", "output": "outputs/models/x"}


def test_prepare_checkpoints_resumes_the_newest_complete_and_drops_stale_ones(tmp_path, monkeypatch, capfd):
    from sycorec.train.common import CHECKPOINTS

    monkeypatch.chdir(tmp_path)
    run = CHECKPOINTS / "x"
    _complete_checkpoint(run / "checkpoint-2")
    (run / "run.json").write_text(json.dumps({"fingerprint": "old"}))
    out = Path("outputs/models/x")
    assert prepare_checkpoints("x", "new", out) is None  # params changed: stale
    assert not (run / "checkpoint-2").exists()
    assert "params or inputs changed" in capfd.readouterr().err
    _complete_checkpoint(run / "checkpoint-4")
    _complete_checkpoint(run / "checkpoint-10")  # numeric order: 10 is newer than 4
    (run / "checkpoint-12").mkdir()  # killed before anything was written
    assert prepare_checkpoints("x", "new", out) == run / "checkpoint-10"
    assert not (run / "checkpoint-12").exists() and (run / "checkpoint-4").is_dir()
    log = capfd.readouterr().err
    assert "x: skipping outputs/checkpoints/x/checkpoint-12 (no trainer_state.json" in log
    assert "x: resuming from outputs/checkpoints/x/checkpoint-10 at step 10 of 20 (10 steps left)" in log
