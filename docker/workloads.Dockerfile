# syntax=docker/dockerfile:1.7
# The SynPO stage image: `python -m synpo_workloads <stage> --config /etc/synpo/stage.json`, the same stage
# code `synpo run` runs on a laptop. CUDA runtime + torch + vLLM + TRL. Named in each SynPORun as
# spec.resources.image.
#
#   docker build -f docker/workloads.Dockerfile -t ghcr.io/synpo/synpo-workloads:0.1.0 .   # from the repo root
#   bash scripts/build-images.sh workloads
#
# Runs as uid/gid 1000. Stage pods mount the run's storage at /workspace and a cache at /cache
# (HF_HOME=/cache/huggingface and SYNPO_CACHE=/cache/synpo are set by the operator; the cache is the shared
# spec.storage.modelCache PVC when the run has one); nothing is written into the image at run time.
# Object storage: s3fs, gcsfs and adlfs come with the workloads extra (s3://, gs://, az:// URIs).

ARG CUDA_IMAGE=nvidia/cuda:12.9.1-cudnn-runtime-ubuntu24.04

FROM ${CUDA_IMAGE}
ARG VERSION=0.1.0
# Behind a TLS-intercepting proxy: pip's CA bundle, mounted at build time (scripts/build-images.sh, EXTRA_CA_FILE).
# Unset unless passed; never stored in the image.
ARG PIP_CERT
# vLLM pins the torch it was built against; install it first and let it choose torch, then the rest.
ARG VLLM_VERSION=0.32.0
LABEL org.opencontainers.image.title="synpo-workloads" \
      org.opencontainers.image.description="SynPO stage programs (vLLM, TRL, transformers) on CUDA" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/synpo PATH=/opt/synpo/bin:$PATH \
    HF_HOME=/cache/huggingface SYNPO_CACHE=/cache/synpo HF_HUB_DISABLE_TELEMETRY=1 \
    TOKENIZERS_PARALLELISM=false

# Ubuntu 24.04: python3.12; the image's own `ubuntu` user holds uid 1000, replace it with `synpo`.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.12 python3.12-venv python3.12-dev \
      build-essential git ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && (userdel --remove ubuntu 2>/dev/null || true) \
 && groupadd --gid 1000 synpo \
 && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/synpo --shell /bin/bash synpo \
 && python3.12 -m venv /opt/synpo \
 && pip install "pip==25.0.1" "setuptools==75.8.0" "wheel==0.45.1"

RUN pip install "vllm==${VLLM_VERSION}"

WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY workloads ./workloads
# `python -c` keeps torch as vLLM installed it: the workloads extra's torch range must contain it.
RUN pip install ".[workloads,vllm]" \
 && python -c "import torch, vllm, trl, transformers, s3fs, gcsfs, adlfs, synpo_workloads; print('torch', torch.__version__, 'vllm', vllm.__version__, 'trl', trl.__version__)" \
 && rm -rf /src /root/.cache

USER 1000:1000
WORKDIR /home/synpo
ENTRYPOINT ["python", "-m", "synpo_workloads"]
