"""Download (or copy from a local mirror) the pinned input files, verify every one, then install them all at once.

Files land in a temporary directory beside the destination; only when every file passes its size, sha256,
git-blob and row checks (and its schema) is the directory renamed into place, so a bad or truncated file
leaves the destination exactly as it was.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError
from tqdm import tqdm

from sycorec.config import DataCfg, format_validation_error
from sycorec.data.schema import validated_rows
from sycorec.errors import DataError
from sycorec.hub import PIN_COMMAND, is_commit
from sycorec.io import staged_dir, write_json
from sycorec.paths import RAW_MANIFEST as MANIFEST

_CHUNK = 1 << 20


class FilePin(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    kind: str
    source: str  # sycophancy_eval | truthfulqa | study_code (GitHub) | training_data (HF dataset)
    remote_path: str
    pinned_revision: str | None = None
    git_blob_sha1: str | None = None
    sha256: str | None = None
    bytes: int | None = None
    rows: int | None = None


class PinTable(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    files: list[FilePin]


@dataclass(frozen=True)
class Resolved:
    """A pin plus where it comes from under the current params."""

    pin: FilePin
    repo: str
    revision: str
    url: str
    hub: bool  # Hugging Face dataset (else a raw GitHub file)


def default_pins_path() -> Path:
    return Path(str(resources.files("sycorec.data").joinpath("schemas/pins.yaml")))


def load_pins(path: str | Path | None = None) -> PinTable:
    path = Path(path) if path else default_pins_path()
    try:
        return PinTable.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    except (OSError, yaml.YAMLError) as exc:
        raise DataError(f"{path}: cannot read the pin table ({exc})") from None
    except ValidationError as exc:
        raise DataError(f"{path}: {format_validation_error(exc)}") from None


def resolve(pins: PinTable, data_cfg: DataCfg) -> list[Resolved]:
    """Attach repository, revision and URL from params to each pin; refuse a revision the hashes were not taken at."""
    out = []
    for pin in pins.files:
        if pin.source == "training_data":
            repo, revision, hub = data_cfg.training_data.hf_dataset, data_cfg.training_data.hf_revision, True
            url = f"https://huggingface.co/datasets/{repo}/resolve/{revision}/{pin.remote_path}"
        elif pin.source in ("sycophancy_eval", "truthfulqa", "study_code"):
            source = getattr(data_cfg, pin.source)
            repo, revision, hub = source.repo, source.commit, False
            url = f"https://raw.githubusercontent.com/{repo}/{revision}/{pin.remote_path}"
        else:
            raise DataError(f"pin {pin.path}: unknown source {pin.source!r}")
        if pin.pinned_revision and pin.pinned_revision != revision:
            raise DataError(
                f"{pin.path}: params data.{pin.source} asks for revision {revision} but its hashes are pinned for "
                f"{pin.pinned_revision}; update the pin table together with the revision"
            )
        out.append(Resolved(pin, repo, revision, url, hub))
    return out


def pinned(item: Resolved) -> bool:
    """The item's revision cannot move (the hub's training files have no published hashes, only their commit)."""
    return not item.hub or is_commit(item.revision)


def git_blob_sha1(path: Path) -> str:
    """The id git gives the file's content: sha1 of `blob <size>\\0` + content."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with path.open("rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _download(item: Resolved, target: Path) -> str:
    """Fetch one file over the network; return the exact revision it came from."""
    if item.hub:
        from huggingface_hub import hf_hub_download

        # honours HF_TOKEN and HF_HUB_OFFLINE (then the file comes from the cache `sycorec prefetch` filled)
        got = Path(hf_hub_download(item.repo, item.pin.remote_path, repo_type="dataset", revision=item.revision))
        shutil.copyfile(got, target)
        # the cache path is .../snapshots/<commit>/<remote_path>: record the exact commit behind a branch name
        parts = got.parts
        return parts[parts.index("snapshots") + 1] if "snapshots" in parts else item.revision
    with urllib.request.urlopen(item.url, timeout=120) as response, target.open("wb") as fh:
        shutil.copyfileobj(response, fh, _CHUNK)
    return item.revision


def count_rows(path: Path, kind: str) -> int:
    """Rows of a data file (schema-checked), or templates of the study's judge prompt module (read with `ast`)."""
    if kind == "judge_prompts":
        from sycorec.facts.judge_templates import read_study_prompts

        return len(read_study_prompts(path).texts)
    return len(validated_rows(path, kind))


def verify(item: Resolved, path: Path) -> tuple[dict[str, Any], list[str]]:
    """Facts about a fetched file and what disagrees with its pin."""
    pin = item.pin
    size = path.stat().st_size
    facts: dict[str, Any] = {"bytes": size, "sha256": _sha256(path), "git_blob_sha1": git_blob_sha1(path)}
    problems = []
    if pin.bytes is not None and size != pin.bytes:
        problems.append(f"{size} bytes, pinned {pin.bytes}")
    if pin.sha256 and facts["sha256"] != pin.sha256:
        problems.append(f"sha256 {facts['sha256']} != pinned {pin.sha256}")
    if pin.git_blob_sha1 and facts["git_blob_sha1"] != pin.git_blob_sha1:
        problems.append(f"git blob {facts['git_blob_sha1']} != pinned {pin.git_blob_sha1}")
    try:
        facts["rows"] = count_rows(path, pin.kind)
    except DataError as exc:
        problems.append(str(exc).replace(str(path), pin.path, 1))
        facts["rows"] = None
    if facts["rows"] is not None and pin.rows is not None and facts["rows"] != pin.rows:
        problems.append(f"{facts['rows']} rows, pinned {pin.rows}")
    return facts, problems


def fetch(
    data_cfg: DataCfg, dest: str | Path, mirror: str | Path | None = None, pins_path: str | Path | None = None
) -> dict:
    """Fetch every pinned file into `dest` (or copy it from `mirror`, a dir in the raw layout); return the manifest."""
    dest = Path(dest)
    items = resolve(load_pins(pins_path), data_cfg)
    if mirror is not None and not Path(mirror).is_dir():
        raise DataError(f"mirror {mirror}: not a directory")
    if mirror is None:  # a download by branch name gets whatever the branch holds today; a mirror is fixed bytes
        unpinned = sorted({f"data.{i.pin.source}.hf_revision is {i.revision!r}" for i in items if not pinned(i)})
        if unpinned:
            raise DataError(
                f"{'; '.join(unpinned)}, not a commit: `{PIN_COMMAND}` writes the commit it resolves to into "
                "params.yaml (review and commit the diff); nothing was downloaded"
            )
    with staged_dir(dest) as staging:
        manifest: dict[str, Any] = {"files": {}}
        failures: list[str] = []
        for item in tqdm(items, desc="fetch", unit="file"):
            target = staging / item.pin.path
            target.parent.mkdir(parents=True, exist_ok=True)
            if mirror is not None:
                source = Path(mirror) / item.pin.path
                if not source.is_file():
                    failures.append(f"{item.pin.path}: not in the mirror")
                    continue
                shutil.copyfile(source, target)
                revision = item.revision
            else:
                try:
                    revision = _download(item, target)
                except Exception as exc:  # any network/hub failure becomes one line naming the file
                    failures.append(
                        f"{item.pin.path}: download from {item.url} failed ({exc.__class__.__name__}: {exc})"
                    )
                    continue
            facts, problems = verify(item, target)
            failures.extend(f"{item.pin.path}: {p}" for p in problems)
            manifest["files"][item.pin.path] = {
                "source": item.url,
                "repo": item.repo,
                "revision": revision,
                "via": "mirror" if mirror is not None else ("huggingface_hub" if item.hub else "https"),
                **facts,
            }
        if failures:
            raise DataError(f"verification failed, nothing written to {dest}: " + "; ".join(failures))
        write_json(staging / MANIFEST, manifest)
    return manifest


PINNED_FACTS = ("sha256", "git_blob_sha1", "bytes", "rows")


def check_installed(data_cfg: DataCfg, raw: str | Path, pins_path: str | Path | None = None) -> dict:
    """Refuse a raw directory that `fetch` did not verify: its MANIFEST.json must agree with the pin table and
    params (revision, pinned hashes, bytes, rows), and every file must still have the sha256 recorded there.

    One DataError lists what disagrees. Returns the manifest.
    """
    raw = Path(raw)
    how = "run `make data` (sycorec data fetch) to install verified files"
    try:
        manifest = json.loads((raw / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
        if not isinstance(files, dict):
            raise TypeError
    except FileNotFoundError:
        raise DataError(f"{raw}: no {MANIFEST}, so `sycorec data fetch` did not verify these inputs; {how}") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{raw}/{MANIFEST}: unreadable ({exc.__class__.__name__}); {how}") from None
    problems = []
    for item in resolve(load_pins(pins_path), data_cfg):
        pin, entry = item.pin, files.get(item.pin.path)
        if not isinstance(entry, dict):
            problems.append(f"{pin.path}: not in {MANIFEST}")
            continue
        if entry.get("repo") != item.repo or (not item.hub and entry.get("revision") != item.revision):
            got = f"{entry.get('repo')}@{entry.get('revision')}"
            problems.append(f"{pin.path}: fetched from {got}, params pin {item.repo}@{item.revision}")
        for fact in PINNED_FACTS:
            pinned = getattr(pin, fact)
            if pinned is not None and entry.get(fact) != pinned:
                problems.append(f"{pin.path}: {fact} {entry.get(fact)} in {MANIFEST}, pinned {pinned}")
        path = raw / pin.path
        if not path.is_file():
            problems.append(f"{pin.path}: missing")
        elif _sha256(path) != entry.get("sha256"):
            problems.append(f"{pin.path}: changed since it was fetched (sha256 differs from {MANIFEST})")
    if problems:
        raise DataError(f"{raw}: inputs are not the verified pinned files ({'; '.join(problems)}); {how}")
    return manifest
