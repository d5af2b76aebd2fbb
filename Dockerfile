# syntax=docker/dockerfile:1.7
# The pinned image of the study: CUDA 12.4 runtime, Python 3.11, requirements/cluster.lock installed with hash checking.
#   docker build --build-arg GIT_SHA=$(git rev-parse HEAD) -t sycorec .      (or: make image)
# Mount points: the repository at /work (the run root, with its DVC cache .dvc/cache), the HF cache at /cache/hf.
#   docker run --gpus all -v "$PWD:/work" -v "$HF_HOME:/cache/hf" sycorec config check
# Base images are pinned by digest; bump them deliberately (docker buildx imagetools inspect <image:tag>).
ARG CUDA_BASE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04@sha256:2fcc4280646484290cc50dce5e65f388dd04352b07cbe89a635703bd1f9aedb6
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.9.18@sha256:5713fa8217f92b80223bc83aac7db36ec80a84437dbc0d04bbc659cae030d8c9

FROM ${UV_IMAGE} AS uv

# ---- build: Python 3.11 (uv's standalone build) + the locked environment in /opt/venv -------------------------------
FROM ${CUDA_BASE} AS build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1
COPY docker/install.sh /build/docker/install.sh
COPY requirements/cluster.lock /build/requirements/cluster.lock
# The lock layer is cached until the lock changes; the project layer below rebuilds on every code change.
RUN --mount=type=cache,target=/root/.cache/uv \
    /build/docker/install.sh --venv /opt/venv --python 3.11 /build/requirements/cluster.lock
COPY pyproject.toml README.md /build/src/
COPY code /build/src/code
RUN --mount=type=cache,target=/root/.cache/uv \
    /build/docker/install.sh --venv /opt/venv --project /build/src

# ---- runtime: the same base, the environment copied in, a non-root user -----------------------------------------------
FROM ${CUDA_BASE} AS runtime
ARG GIT_SHA=unknown
LABEL org.opencontainers.image.title="sycorec" \
      org.opencontainers.image.description="Sycophancy-recovery study: training, evaluation, probing, report" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.revision="${GIT_SHA}"
# git: DVC reads the repository's history; safe.directory because the bind-mounted repo belongs to the host user.
# gcc + libc6-dev: Triton compiles its launcher with `cc` at run time (vLLM's torch.compile, xgrammar's bitmask).
RUN apt-get update \
    && apt-get install -y --no-install-recommends git ca-certificates gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* \
    && git config --system --add safe.directory /work \
    && useradd --create-home --uid 1000 --shell /bin/bash sycorec \
    && mkdir -p /work /cache/hf \
    && chown sycorec:sycorec /work /cache/hf
COPY --from=build /opt/python /opt/python
COPY --from=build /opt/venv /opt/venv
# HOME and the compile caches (Triton, Inductor, vLLM) point at /tmp, writable under any `docker run --user`.
# USER/LOGNAME: DVC asks getpass.getuser(), which fails for a `--user` uid without a passwd entry.
# PYTHONPATH=/work/code: with the checkout bind-mounted at /work, jobs run its code (what DVC hashes), not the copy
# baked in at build time; the baked copy only serves when nothing is mounted.
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONNOUSERSITE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/cache/hf \
    HF_HUB_DISABLE_TELEMETRY=1 \
    DVC_NO_ANALYTICS=1 \
    HOME=/tmp \
    USER=${USER:-sycorec} \
    LOGNAME=${LOGNAME:-sycorec} \
    XDG_CACHE_HOME=/tmp/.cache \
    TRITON_CACHE_DIR=/tmp/.cache/triton \
    TORCHINDUCTOR_CACHE_DIR=/tmp/.cache/inductor \
    VLLM_CACHE_ROOT=/tmp/.cache/vllm \
    PYTHONPATH=/work/code \
    SYCOREC_GIT_SHA=${GIT_SHA}
USER sycorec
WORKDIR /work
ENTRYPOINT ["sycorec"]
CMD ["--help"]
