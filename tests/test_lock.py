"""The hash-locked requirement sets: every artifact hashed, the study's stack pinned, every direct need satisfied."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
REQ = ROOT / "requirements"
HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")
STUDY_PINS = {
    "torch": "2.6.0",
    "transformers": "4.57.6",
    "trl": "0.29.1",
    "peft": "0.18.1",
    "vllm": "0.8.5",
    "accelerate": "1.13.0",
    "datasets": "4.8.3",
    "scikit-learn": "1.8.0",
}


def entries(path: Path) -> list[str]:
    """Requirement entries with their continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    return [line.split("#", 1)[0].strip() for line in joined.splitlines() if line.split("#", 1)[0].strip()]


def pins(path: Path) -> dict[str, Version]:
    result = {}
    for entry in entries(path):
        req = Requirement(entry.split(" --hash", 1)[0])
        (spec,) = req.specifier
        assert spec.operator == "==", f"{path.name}: {entry[:60]} is not pinned with =="
        result[canonicalize_name(req.name)] = Version(spec.version)
    return result


@pytest.mark.parametrize("lock", ["cluster.lock", "dev.lock"])
def test_every_requirement_carries_a_sha256_hash(lock):
    found = entries(REQ / lock)
    assert found, f"{lock} has no requirements"
    unhashed = [entry.split()[0] for entry in found if not HASH.search(entry)]
    assert not unhashed, f"{lock}: entries without --hash=sha256: {unhashed}"


def test_cluster_lock_pins_the_study_stack():
    locked = pins(REQ / "cluster.lock")
    assert {name: str(locked.get(name)) for name in STUDY_PINS} == STUDY_PINS


@pytest.mark.parametrize(
    ("source", "locks"), [("cluster.in", ["cluster.lock"]), ("dev.in", ["dev.lock", "cluster.lock"])]
)
def test_every_direct_requirement_is_satisfied_by_its_pin(source, locks):
    locked: dict[str, Version] = {}
    for lock in locks:
        locked.update(pins(REQ / lock))
    for entry in entries(REQ / source):
        req = Requirement(entry)
        name = canonicalize_name(req.name)
        assert name in locked, f"{source}: {req.name} is not in {locks}"
        assert req.specifier.contains(locked[name], prereleases=True), f"{source}: {req} vs pinned {locked[name]}"


def test_dev_lock_agrees_with_cluster_lock():
    cluster, dev = pins(REQ / "cluster.lock"), pins(REQ / "dev.lock")
    clashes = {
        name: (str(cluster[name]), str(dev[name])) for name in cluster.keys() & dev.keys() if cluster[name] != dev[name]
    }
    assert not clashes, f"packages pinned differently in the two locks (installed together): {clashes}"
