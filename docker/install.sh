#!/usr/bin/env bash
# Install hash-locked requirements (and optionally this project) into a virtual environment.
# The one install path of both container recipes (Dockerfile, apptainer.def); tests run it with a tiny lock.
#
# usage: docker/install.sh [--venv DIR] [--python VERSION|PATH] [--project DIR] [LOCK ...]
#   --venv DIR       environment to create or reuse (default /opt/venv)
#   --python SPEC    interpreter for a new environment (default 3.11; uv fetches a standalone build if absent)
#   --project DIR    also install the package at DIR, without its dependencies (they come from the locks)
#   LOCK             requirements file whose every line is pinned with --hash=sha256:... (uv pip compile --generate-hashes)
# Index and cache settings come from the usual UV_* variables (e.g. UV_NO_INDEX, UV_FIND_LINKS, UV_CACHE_DIR).
set -euo pipefail

venv=/opt/venv
python=3.11
project=
locks=()
while (($#)); do
  case "$1" in
    --venv) venv=$2; shift 2 ;;
    --python) python=$2; shift 2 ;;
    --project) project=$2; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    -*) echo "install.sh: unknown option $1" >&2; exit 2 ;;
    *) locks+=("$1"); shift ;;
  esac
done
if ((${#locks[@]} == 0)) && [[ -z "$project" ]]; then
  echo "install.sh: nothing to install (give a LOCK file and/or --project DIR)" >&2
  exit 2
fi
command -v uv >/dev/null || { echo "install.sh: uv not found on PATH" >&2; exit 2; }

if [[ ! -x "$venv/bin/python" ]]; then
  uv venv --python "$python" "$venv"
fi

if ((${#locks[@]})); then
  lock_args=()
  for lock in "${locks[@]}"; do
    [[ -f "$lock" ]] || { echo "install.sh: lock file $lock not found" >&2; exit 2; }
    lock_args+=(-r "$lock")
  done
  # --require-hashes: every artifact must match a recorded sha256, and every requirement must be pinned.
  uv pip install --python "$venv/bin/python" --require-hashes --strict "${lock_args[@]}"
fi

if [[ -n "$project" ]]; then
  # Build with the locked setuptools already in the environment; nothing unpinned is fetched.
  uv pip install --python "$venv/bin/python" --no-deps --no-build-isolation "$project"
fi
