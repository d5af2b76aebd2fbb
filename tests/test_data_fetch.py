"""`sycorec data fetch` from a local mirror: good files install with a manifest; bad ones leave data/raw untouched."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from sycorec.cli import main
from sycorec.data.fetch import check_installed, default_pins_path, fetch, git_blob_sha1, load_pins, resolve, verify
from sycorec.errors import DataError
from sycorec.io import read_json

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SE_COMMIT = "9a1694221e3639887138f61deae344335eca6752"

# (raw-layout path, shared file, kind, sha256, rows): the real subsets stand in for the upstream files
MIRROR_FILES = [
    ("sycophancy_eval/answer.jsonl", "sycophancy-eval/answer.truthful_qa.non_neutral.jsonl", "answer",
     "11340186ee1a710b9df323d4aab6c6acb8b9b198617f3c68189a9f1de0eb2c0b", 2451),
    ("sycophancy_eval/are_you_sure.jsonl", "sycophancy-eval/are_you_sure.head18.jsonl", "are_you_sure",
     "e21c9ecdc1da870515929f371a3af0d6fb67f0b0dbebf71266f2376799489a64", 18),
    ("sycophancy_eval/feedback.jsonl", "sycophancy-eval/feedback.arguments.jsonl", "feedback",
     "c1d75487c736653be74cb71b45be2394f048d274b34bbae81657e44f7b1da69d", 1500),
]  # fmt: skip


@pytest.fixture
def mirror(tmp_path) -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared not present: real SycophancyEval/TruthfulQA copies are needed")
    root = tmp_path / "mirror"
    for dest, src, *_ in MIRROR_FILES:
        (root / dest).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SHARED / src, root / dest)
    (root / "truthfulqa").mkdir()
    shutil.copyfile(SHARED / "truthfulqa/v0/TruthfulQA.csv", root / "truthfulqa/TruthfulQA.csv")
    return root


@pytest.fixture
def pins(tmp_path) -> Path:
    """The packaged TruthfulQA pin (real upstream hashes) plus test pins for the SycophancyEval subsets."""
    real = {p.path: p.model_dump(exclude_none=True) for p in load_pins().files}
    files = [real["truthfulqa/TruthfulQA.csv"]]
    for dest, _src, kind, sha, rows in MIRROR_FILES:
        files.append(
            {"path": dest, "kind": kind, "source": "sycophancy_eval", "remote_path": f"datasets/{kind}.jsonl",
             "pinned_revision": SE_COMMIT, "sha256": sha, "rows": rows}
        )  # fmt: skip
    path = tmp_path / "pins.yaml"
    path.write_text(yaml.safe_dump({"files": files}))
    return path


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_git_blob_sha1_matches_git(tmp_path):
    path = tmp_path / "f.txt"
    path.write_bytes(b"hello\nworld\n")
    expected = subprocess.run(["git", "hash-object", str(path)], capture_output=True, text=True, check=True).stdout
    assert git_blob_sha1(path) == expected.strip()


def test_real_truthfulqa_pin_verifies_the_real_file(cfg):
    if not SHARED.is_dir():
        pytest.skip("../shared not present")
    item = next(r for r in resolve(load_pins(), cfg.data) if r.pin.path == "truthfulqa/TruthfulQA.csv")
    assert item.url == (
        "https://raw.githubusercontent.com/sylinrl/TruthfulQA/013686a06be7a7bde5bf8223943e106c7250123c/data/v0/TruthfulQA.csv"
    )
    facts, problems = verify(item, SHARED / "truthfulqa/v0/TruthfulQA.csv")
    assert problems == [] and facts["rows"] == 817 and facts["git_blob_sha1"] == item.pin.git_blob_sha1


def test_packaged_pin_table_covers_the_raw_layout(cfg):
    items = resolve(load_pins(default_pins_path()), cfg.data)
    assert sorted(i.pin.path for i in items) == [
        "study/judge_prompts.py",
        "sycophancy_eval/answer.jsonl",
        "sycophancy_eval/are_you_sure.jsonl",
        "sycophancy_eval/feedback.jsonl",
        "training/augmented_prompts.jsonl",
        "training/dpo_pairs.jsonl",
        "training/honest_responses.jsonl",
        "training/sycophantic_training.jsonl",
        "truthfulqa/TruthfulQA.csv",
    ]
    code = [i for i in items if i.pin.kind == "judge_prompts"]
    # the study's judge prompts: no byte-exact copy was available when pinning, so the commit and the module's
    # structure (templates, placeholders) pin it; fetch records its sha256
    assert [(i.pin.pinned_revision, i.pin.rows) for i in code] == [(cfg.data.study_code.commit, 5)]
    assert all(i.pin.sha256 or i.pin.git_blob_sha1 for i in items if not i.hub and i not in code)
    hub = [i for i in items if i.hub]
    assert {i.repo for i in hub} == {"JNK789/sycophancy-recovery-data"} and {i.pin.rows for i in hub} == {3236}


def test_mirror_fetch_installs_verified_files_and_manifest(tmp_path, cfg, mirror, pins):
    dest = tmp_path / "data" / "raw"
    manifest = fetch(cfg.data, dest, mirror=mirror, pins_path=pins)
    for rel, _src, _kind, sha, rows in MIRROR_FILES:
        assert (dest / rel).read_bytes() == (mirror / rel).read_bytes()
        entry = manifest["files"][rel]
        assert (entry["sha256"], entry["rows"], entry["revision"]) == (sha, rows, SE_COMMIT)
        assert (
            entry["source"]
            == f"https://raw.githubusercontent.com/meg-tong/sycophancy-eval/{SE_COMMIT}/datasets/{_kind}.jsonl"
        )
        assert entry["bytes"] == (mirror / rel).stat().st_size and entry["via"] == "mirror"
    assert read_json(dest / "MANIFEST.json") == manifest
    assert manifest["files"]["truthfulqa/TruthfulQA.csv"]["rows"] == 817
    assert leftovers(dest.parent) == []


def tamper(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[100] = ord("X") if data[100] != ord("X") else ord("Y")
    path.write_bytes(bytes(data))


def test_tampered_file_is_rejected_and_nothing_written(tmp_path, cfg, mirror, pins):
    tamper(mirror / "sycophancy_eval/feedback.jsonl")
    dest = tmp_path / "data" / "raw"
    with pytest.raises(DataError, match=r"sycophancy_eval/feedback\.jsonl: sha256 [0-9a-f]{64} != pinned c1d7"):
        fetch(cfg.data, dest, mirror=mirror, pins_path=pins)
    assert not dest.exists() and leftovers(dest.parent) == []


def test_truncated_file_is_rejected_and_existing_raw_kept(tmp_path, cfg, mirror, pins):
    csv = mirror / "truthfulqa/TruthfulQA.csv"
    csv.write_bytes(csv.read_bytes()[:200_000])
    dest = tmp_path / "data" / "raw"
    dest.mkdir(parents=True)
    (dest / "old.txt").write_text("previous fetch")
    with pytest.raises(DataError) as exc:
        fetch(cfg.data, dest, mirror=mirror, pins_path=pins)
    message = str(exc.value)
    assert "truthfulqa/TruthfulQA.csv: 200000 bytes, pinned 443723" in message
    assert "git blob" in message and "nothing written" in message
    assert [p.name for p in dest.iterdir()] == ["old.txt"] and leftovers(dest.parent) == []


def test_truncated_jsonl_line_is_reported_with_its_line(tmp_path, cfg, mirror, pins):
    path = mirror / "sycophancy_eval/are_you_sure.jsonl"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataError, match=r"sycophancy_eval/are_you_sure\.jsonl:18: not valid JSON"):
        fetch(cfg.data, tmp_path / "raw", mirror=mirror, pins_path=pins)


def test_missing_mirror_file_and_wrong_revision(tmp_path, cfg, mirror, pins):
    (mirror / "sycophancy_eval/answer.jsonl").unlink()
    with pytest.raises(DataError, match=r"answer\.jsonl: not in the mirror"):
        fetch(cfg.data, tmp_path / "raw", mirror=mirror, pins_path=pins)
    other = cfg.data.model_copy(
        update={"sycophancy_eval": cfg.data.sycophancy_eval.model_copy(update={"commit": "abc"})}
    )
    with pytest.raises(DataError, match="asks for revision abc but its hashes are pinned for 9a1694"):
        fetch(other, tmp_path / "raw", mirror=mirror, pins_path=pins)
    assert not (tmp_path / "raw").exists()


def test_a_download_by_branch_name_is_refused_before_anything_is_fetched(tmp_path, monkeypatch):
    """The committed params: the training data's `hf_revision` is a branch until `sycorec prefetch --pin`."""
    shutil.copyfile(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sycorec.data.fetch._download", lambda *a: pytest.fail("downloaded an unpinned revision"))
    result = CliRunner().invoke(main, ["data", "fetch"])
    assert result.exit_code == 2
    assert "data.training_data.hf_revision is 'main', not a commit: `sycorec prefetch --pin`" in result.output
    assert not (tmp_path / "data").exists()


def test_cli_fetch_from_mirror(tmp_path, monkeypatch, mirror, pins):
    shutil.copyfile(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["data", "fetch", "--mirror", str(mirror), "--pins", str(pins)])
    assert result.exit_code == 0, result.output
    assert "sycophancy_eval/answer.jsonl: 2451 rows" in result.output
    assert (tmp_path / "data/raw/MANIFEST.json").is_file()
    tamper(mirror / "sycophancy_eval/answer.jsonl")
    shutil.rmtree(tmp_path / "data/raw")
    result = CliRunner().invoke(main, ["data", "fetch", "--mirror", str(mirror), "--pins", str(pins)])
    assert result.exit_code == 2 and "\nerror: verification failed, nothing written to data/raw" in result.output
    assert not (tmp_path / "data/raw").exists()


# --------------------------------------------------------------------------- only verified files are used or recorded


def test_installed_files_must_be_the_verified_ones(tmp_path, cfg, mirror, pins):
    dest = tmp_path / "raw"
    fetch(cfg.data, dest, mirror=mirror, pins_path=pins)
    assert check_installed(cfg.data, dest, pins)["files"].keys() == {r for r, *_ in MIRROR_FILES} | {
        "truthfulqa/TruthfulQA.csv"
    }
    # the packaged pins are the full upstream files: these subsets are not them
    with pytest.raises(DataError, match=r"sycophancy_eval/are_you_sure\.jsonl: sha256 e21c9e\w+ in MANIFEST\.json"):
        check_installed(cfg.data, dest)
    other = cfg.data.model_copy(update={"truthfulqa": cfg.data.truthfulqa.model_copy(update={"repo": "x/y"})})
    with pytest.raises(DataError, match=r"TruthfulQA\.csv: fetched from sylinrl/TruthfulQA@013686\w+, params pin x/y"):
        check_installed(other, dest, pins)
    tamper(dest / "sycophancy_eval/answer.jsonl")  # a file swapped in after fetch
    with pytest.raises(DataError, match=r"answer\.jsonl: changed since it was fetched"):
        check_installed(cfg.data, dest, pins)
    (dest / "MANIFEST.json").unlink()  # files copied in by hand
    with pytest.raises(DataError, match=r"no MANIFEST\.json, so `sycorec data fetch` did not verify these inputs"):
        check_installed(cfg.data, dest, pins)


def test_cli_verify_gates_recording(tmp_path, monkeypatch, mirror, pins):
    shutil.copyfile(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    assert CliRunner().invoke(main, ["data", "fetch", "--mirror", str(mirror), "--pins", str(pins)]).exit_code == 0
    result = CliRunner().invoke(main, ["data", "verify", "--pins", str(pins)])
    assert result.exit_code == 0 and "data/raw: 4 files verified against the pins" in result.output
    (tmp_path / "data/raw/truthfulqa/TruthfulQA.csv").write_text("Type,Category\n")
    result = CliRunner().invoke(main, ["data", "verify", "--pins", str(pins)])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "TruthfulQA.csv: changed since it was fetched" in result.output
    # make data runs verify between fetch and `dvc commit`, and make stops at the first failing command
    recipe = (ROOT / "Makefile").read_text().split("\ndata:")[1].split("\n\n")[0]
    assert recipe.index("sycorec data verify") < recipe.index("dvc commit -f data.dvc")
