"""Container recipes: parsed and cross-checked (no container engine needed), and their install script run for real."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from configobj import ConfigObj

ROOT = Path(__file__).resolve().parents[1]
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
LOCK = "requirements/cluster.lock"
INSTALL = "docker/install.sh"


def dockerfile() -> list[str]:
    """Instructions with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text(encoding="utf-8"))
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def docker_args() -> dict[str, str]:
    return dict(
        line.split(None, 1)[1].split("=", 1) for line in dockerfile() if line.startswith("ARG ") and "=" in line
    )


def docker_final_stage() -> list[str]:
    lines = dockerfile()
    last_from = max(i for i, line in enumerate(lines) if line.startswith("FROM "))
    return lines[last_from:]


def docker_env() -> dict[str, str]:
    env = {}
    for line in docker_final_stage():
        if line.startswith("ENV "):
            env.update(pair.split("=", 1) for pair in line[4:].split())
    return env


def apptainer() -> str:
    return (ROOT / "apptainer.def").read_text(encoding="utf-8")


def apptainer_sections() -> dict[str, str]:
    """Section name (e.g. `post`, `files from uv`) -> body; the header (before any section) under ``."""
    sections: dict[str, str] = {}
    name = ""
    for line in apptainer().splitlines():
        if line.startswith("%"):
            name = line[1:].strip()
            sections.setdefault(name, "")
        else:
            sections[name] = sections.get(name, "") + line + "\n"
    return sections


def apptainer_froms() -> list[str]:
    return re.findall(r"^From:\s*(\S+)", apptainer(), flags=re.MULTILINE)


def apptainer_env() -> dict[str, str]:
    body = apptainer_sections()["environment"]
    return dict(line.strip()[len("export ") :].split("=", 1) for line in body.splitlines() if line.strip())


def normalise_git_sha(env: dict[str, str]) -> dict[str, str]:
    return {k: v.replace("${GIT_SHA}", "<sha>").replace("{{ GIT_SHA }}", "<sha>") for k, v in env.items()}


def test_every_base_image_is_pinned_by_digest():
    args = docker_args()
    froms = [line.split()[1] for line in dockerfile() if line.startswith("FROM ")]
    resolved = [args.get(ref.strip("${}"), ref) for ref in froms]
    assert resolved and all(DIGEST.search(ref) for ref in resolved), resolved
    assert apptainer_froms() and all(DIGEST.search(ref) for ref in apptainer_froms())


def test_both_recipes_build_on_the_same_cuda_base_and_uv():
    args = docker_args()
    assert args["CUDA_BASE"].startswith("nvidia/cuda:12.")
    assert set(apptainer_froms()) == {args["CUDA_BASE"], args["UV_IMAGE"]}
    final = docker_final_stage()[0]
    assert final.startswith("FROM ${CUDA_BASE}")


def test_both_recipes_install_the_cluster_lock_with_the_shared_hash_checking_script():
    docker_runs = " ".join(line for line in dockerfile() if line.startswith("RUN "))
    post = apptainer_sections()["post"]
    for recipe in (docker_runs, post):
        installs = re.findall(rf"\S*{INSTALL}[^\n&;]*", recipe)
        assert any(LOCK in call for call in installs), installs
        assert any("--project" in call for call in installs), installs
        assert "pip install" not in recipe, "everything goes through the shared install script"
    script = (ROOT / INSTALL).read_text(encoding="utf-8")
    assert "--require-hashes" in script
    assert os.access(ROOT / INSTALL, os.X_OK)


def test_files_the_recipes_copy_exist():
    copied = [line.split()[1:-1] for line in dockerfile() if line.startswith("COPY ") and "--from" not in line]
    sources = [src for group in copied for src in group]
    sources += [line.split()[0] for line in apptainer_sections()["files"].splitlines() if line.strip()]
    assert sources
    missing = [src for src in sources if not (ROOT / src).exists()]
    assert not missing, missing
    ignore = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    outside = [src for src in sources if src.split("/")[0] not in allowed]
    assert not outside, f"excluded from the docker build context by .dockerignore: {outside}"


def test_image_runs_as_a_non_root_user():
    users = [line.split()[1] for line in docker_final_stage() if line.startswith("USER ")]
    assert users and users[-1] not in {"root", "0"}
    creates = " ".join(line for line in docker_final_stage() if line.startswith("RUN "))
    assert re.search(rf"useradd\b[^&]*\b{users[-1]}\b", creates)


def test_environment_is_identical_in_both_recipes():
    docker, app = normalise_git_sha(docker_env()), normalise_git_sha(apptainer_env())
    assert docker == app
    assert docker["PATH"].startswith("/opt/venv/bin:")  # the image's sycorec and python come from its venv


def apt_packages(text: str) -> set[str]:
    return {
        word
        for call in re.findall(r"apt-get install ([^\n&;]*)", text)
        for word in call.split()
        if not word.startswith("-")
    }


def test_both_recipes_install_the_same_system_packages_with_a_c_compiler():
    docker = apt_packages(" ".join(line for line in docker_final_stage() if line.startswith("RUN ")))
    assert docker == apt_packages(apptainer_sections()["post"])
    # Triton compiles its launcher with `cc` at run time (vLLM's torch.compile, xgrammar): compiler + libc headers
    assert {"gcc", "libc6-dev"} <= docker


def test_home_and_compile_caches_are_writable_for_any_user():
    env = docker_env()
    for var in ("HOME", "XDG_CACHE_HOME", "TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR", "VLLM_CACHE_ROOT"):
        assert env[var] == "/tmp" or env[var].startswith("/tmp/"), var  # /tmp is world-writable in the base image


UNKNOWN_UID = """
import os, sys
os.getuid = lambda: 2**31 - 7  # a uid without a passwd entry, as under `docker run --user`
from dvc.cli import main
sys.exit(main(["status"]))
"""


def _default(value: str) -> str:
    """A recipe value as the container sees it with the variable unset: `${VAR:-word}` is `word`."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


@pytest.mark.parametrize("recipe", [docker_env, apptainer_env])
def test_dvc_runs_under_a_uid_without_a_passwd_entry(recipe, tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    base = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "DVC_NO_ANALYTICS": "1"}
    base["DVC_SITE_CACHE_DIR"] = str(tmp_path / "site")

    def dvc_status(env: dict[str, str]) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-c", UNKNOWN_UID]
        return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)

    bare = dvc_status(base)  # what the recipes did before: DVC's getpass.getuser() finds no name
    assert bare.returncode != 0 and "getpwuid" in bare.stderr
    names = {key: _default(recipe()[key]) for key in ("USER", "LOGNAME")}
    done = dvc_status(base | names)
    assert done.returncode == 0, done.stderr


def test_jobs_run_the_checked_out_code():
    """A job's working directory is where the checkout (what DVC hashes) is bound, and the checkout's package folder
    comes first on PYTHONPATH, before the image's baked copy."""
    (workdir,) = [line.split()[1] for line in docker_final_stage() if line.startswith("WORKDIR ")]
    sbatch = (ROOT / "slurm" / "base.sbatch.j2").read_text(encoding="utf-8")
    assert f'"$REPO:{workdir}' in sbatch and f"--pwd {workdir}" in sbatch
    package_root = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    for env in (docker_env(), apptainer_env()):
        assert env["PYTHONPATH"].split(":")[0] == f"{workdir}/{package_root['where'][0]}"


def test_build_leftovers_stay_out_of_the_image():
    ignore = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert {"**/__pycache__", "**/*.egg-info"} <= set(ignore)
    post = apptainer_sections()["post"]
    cleanup = next(line for line in post.splitlines() if "__pycache__" in line)
    assert "*.egg-info" in cleanup and "rm -rf" in cleanup
    assert post.index(cleanup) < post.index("--project /build/src")


def test_the_image_leaves_the_dvc_cache_to_the_repository():
    """No DVC config of the image moves the cache out of /work (the repository's .dvc/cache, one mount with it)."""
    assert not any(key.startswith("DVC_") and "CONFIG" in key for key in docker_env())
    assert not any(key.startswith("DVC_") and "CONFIG" in key for key in apptainer_env())
    assert "dir" not in ConfigObj(str(ROOT / ".dvc/config")).get("cache", {})


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build_wheel(directory: Path, name: str = "sycorec_fixture", version: str = "0.1.0") -> Path:
    files = {
        f"{name}/__init__.py": b"VALUE = 42\n",
        f"{name}-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{name}-{version}.dist-info/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{path},{_record_hash(data)},{len(data)}\n" for path, data in files.items())
    files[f"{name}-{version}.dist-info/RECORD"] = (record + f"{name}-{version}.dist-info/RECORD,,\n").encode()
    directory.mkdir(parents=True, exist_ok=True)
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(zipfile.ZipInfo(path, (2020, 1, 1, 0, 0, 0)), data)
    return wheel


@pytest.fixture
def tiny_index(tmp_path, monkeypatch):
    if shutil.which("uv") is None:
        pytest.skip("uv not on PATH: the install script needs it")
    wheel = build_wheel(tmp_path / "wheels")
    monkeypatch.setenv("UV_NO_INDEX", "1")
    monkeypatch.setenv("UV_FIND_LINKS", str(wheel.parent))
    monkeypatch.setenv("UV_CACHE_DIR", str(tmp_path / "uv-cache"))
    monkeypatch.setenv("UV_PYTHON_DOWNLOADS", "never")
    return hashlib.sha256(wheel.read_bytes()).hexdigest()


def run_install(tmp_path: Path, lock_text: str) -> tuple[subprocess.CompletedProcess, Path]:
    lock, venv = tmp_path / "fixture.lock", tmp_path / "venv"
    lock.write_text(lock_text, encoding="utf-8")
    cmd = [str(ROOT / INSTALL), "--venv", str(venv), "--python", sys.executable, str(lock)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120), venv


def imports_fixture(venv: Path) -> bool:
    probe = [str(venv / "bin/python"), "-c", "import sycorec_fixture; assert sycorec_fixture.VALUE == 42"]
    return subprocess.run(probe, capture_output=True).returncode == 0


def test_install_script_installs_a_hash_locked_requirement(tmp_path, tiny_index):
    done, venv = run_install(tmp_path, f"sycorec-fixture==0.1.0 \\\n    --hash=sha256:{tiny_index}\n")
    assert done.returncode == 0, done.stderr
    assert imports_fixture(venv)


def test_install_script_rejects_a_tampered_hash(tmp_path, tiny_index):
    tampered = tiny_index[:-1] + ("0" if tiny_index[-1] != "0" else "1")
    done, venv = run_install(tmp_path, f"sycorec-fixture==0.1.0 \\\n    --hash=sha256:{tampered}\n")
    assert done.returncode != 0
    assert "hash mismatch" in done.stderr.lower()
    assert not imports_fixture(venv)


def test_install_script_rejects_an_unhashed_requirement(tmp_path, tiny_index):
    done, venv = run_install(tmp_path, "sycorec-fixture==0.1.0\n")
    assert done.returncode != 0
    assert "hash" in done.stderr.lower()
    assert not imports_fixture(venv)


def test_install_script_refuses_to_run_without_a_lock(tmp_path):
    done = subprocess.run([str(ROOT / INSTALL), "--venv", str(tmp_path / "v")], capture_output=True, text=True)
    assert done.returncode == 2
    assert "nothing to install" in done.stderr
    assert not (tmp_path / "v").exists()
