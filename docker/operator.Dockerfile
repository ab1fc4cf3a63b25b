# syntax=docker/dockerfile:1.7
# The SynPO operator image: `synpo operator` (kopf + kubernetes client + prometheus-client), no ML stack.
#
#   docker build -f docker/operator.Dockerfile -t ghcr.io/synpo/synpo-operator:0.1.0 .     # from the repo root
#   bash scripts/build-images.sh operator                                                  # docker/podman/buildah
#
# Runs as uid/gid 1000 with a read-only root filesystem (the Helm chart mounts an emptyDir at /tmp).

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# ---- build: a wheel of this repository ------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build
# Behind a TLS-intercepting proxy: pip's CA bundle, mounted at build time (scripts/build-images.sh, EXTRA_CA_FILE).
# Unset unless passed; never stored in the image.
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/build/bin:$PATH
# a venv in both stages: the same steps work on python:*-slim and on a plain Debian python3.11 base
RUN python -m venv /opt/build \
 && pip install "pip==25.0.1" "setuptools==75.8.0" "wheel==0.45.1" "build==1.2.2.post1"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY workloads ./workloads
RUN python -m build --wheel --no-isolation --outdir /dist .

# ---- runtime ------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
# Behind a TLS-intercepting proxy: pip's CA bundle, mounted at build time (scripts/build-images.sh, EXTRA_CA_FILE).
# Unset unless passed; never stored in the image.
ARG PIP_CERT
LABEL org.opencontainers.image.title="synpo-operator" \
      org.opencontainers.image.description="SynPO operator: SynPORun/SynPOSchedule -> Kubernetes Jobs" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/synpo PATH=/opt/synpo/bin:$PATH
RUN groupadd --gid 1000 synpo \
 && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin synpo \
 && python -m venv /opt/synpo \
 && pip install "pip==25.0.1"
COPY docker/operator-constraints.txt /tmp/constraints.txt
COPY --from=build /dist/ /tmp/dist/
# only the operator extra: no torch, no vLLM; exact versions from the constraints file
RUN pip install --constraint /tmp/constraints.txt "$(ls /tmp/dist/synpo-*.whl)[operator]" \
 && rm -rf /tmp/dist /tmp/constraints.txt \
 && synpo --version
USER 1000:1000
WORKDIR /tmp
EXPOSE 8080 8081
ENTRYPOINT ["synpo"]
CMD ["operator", "--executor", "jobs"]
