#!/usr/bin/env bash
# Build the SynPO container images from the repository root.
#
#   bash scripts/build-images.sh [operator|workloads|all] [--push] [--local-base]
#
#   REGISTRY=ghcr.io/synpo  TAG=0.1.0 (default: the version in pyproject.toml)
#   BUILDER=docker|podman|buildah (default: the first one found that works)
#   EXTRA_CA_FILE=/path/ca.crt (default: $PIP_CERT if set) a CA bundle for pip inside the build, for networks
#     behind a TLS-intercepting proxy (podman/buildah: mounted read-only at build time, not kept in the image)
#
# Images:
#   $REGISTRY/synpo-operator:$TAG   docker/operator.Dockerfile   (python:3.11-slim, `.[operator]`, uid 1000)
#   $REGISTRY/synpo-workloads:$TAG  docker/workloads.Dockerfile  (CUDA runtime, torch, vLLM, TRL, uid 1000)
#
# Builders: docker (BuildKit) needs a running Docker engine. Without one, buildah works as root with
# `--isolation chroot --storage-driver vfs` (what this script uses for buildah: no daemon, no user namespaces,
# no overlay mounts needed), e.g. in a CI container: `apt-get install buildah`.
#
# Base images come from Docker Hub (python:3.11.11-slim-bookworm, nvidia/cuda:...). On a machine that reaches
# only package registries (PyPI, Debian, npm, Go proxy) the FROM pull fails:
#   Error: creating build container: initializing source docker://python:3.11.11-slim-bookworm:
#   pinging container registry registry-1.docker.io: ... no such host
# `--local-base` (operator image only) works around that: it builds an equivalent base with debootstrap from
# the Debian archive (bookworm: python 3.11 + venv), stores it as localhost/synpo-python-base:3.11-bookworm and
# builds against it, so the Dockerfile's own steps (wheel build, pip install of `.[operator]` from PyPI,
# non-root user, entrypoint) can be checked without Docker Hub. Seen on such a machine (2 cores, buildah 1.28
# from Debian): debootstrap ~1.5 min, operator image ~2.5 min, 410 MB, `synpo operator --help` runs as uid 1000.
# The workloads image has no such fallback (its CUDA base is not in the Debian archive).
set -euo pipefail
cd "$(dirname "$0")/.."

what="all"; push=0; local_base=0
for arg in "$@"; do
  case "$arg" in
    operator|workloads|all) what="$arg" ;;
    --push) push=1 ;;
    --local-base) local_base=1 ;;
    -h|--help) sed -n '2,/^set -euo/{/^#/p}' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

REGISTRY="${REGISTRY:-ghcr.io/synpo}"
TAG="${TAG:-$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)}"

pick_builder() {
  if [ -n "${BUILDER:-}" ]; then echo "$BUILDER"; return; fi
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then echo docker; return; fi
  if command -v podman >/dev/null; then echo podman; return; fi
  if command -v buildah >/dev/null; then echo buildah; return; fi
  echo "no image builder: start a Docker engine, or install podman or buildah (apt-get install buildah)" >&2
  exit 1
}
B="$(pick_builder)"
BUILDAH=(buildah --storage-driver "${STORAGE_DRIVER:-vfs}")
CA_ARGS=()
EXTRA_CA_FILE="${EXTRA_CA_FILE:-${PIP_CERT:-}}"
if [ -n "$EXTRA_CA_FILE" ] && [ "$B" != docker ]; then
  CA_ARGS=(--volume "$(readlink -f "$EXTRA_CA_FILE"):/run/synpo-build-ca.crt:ro" --build-arg PIP_CERT=/run/synpo-build-ca.crt)
fi

build() {  # build NAME DOCKERFILE [extra build args...]
  local name="$1" file="$2"; shift 2
  local image="$REGISTRY/$name:$TAG"
  echo "==> $image ($file, $B)" >&2
  case "$B" in
    docker) DOCKER_BUILDKIT=1 docker build -f "$file" -t "$image" --build-arg "VERSION=$TAG" "$@" . ;;
    podman) podman build -f "$file" --ignorefile "$file.dockerignore" -t "$image" --build-arg "VERSION=$TAG" \
              "${CA_ARGS[@]}" "$@" . ;;
    buildah) "${BUILDAH[@]}" bud --isolation chroot --layers -f "$file" --ignorefile "$file.dockerignore" \
               -t "$image" --build-arg "VERSION=$TAG" "${CA_ARGS[@]}" "$@" . ;;
    *) echo "unknown BUILDER=$B" >&2; exit 2 ;;
  esac
  if [ "$push" = 1 ]; then
    case "$B" in
      buildah) "${BUILDAH[@]}" push "$image" ;;
      *) "$B" push "$image" ;;
    esac
  fi
}

local_python_base() {  # debootstrap a bookworm + python3.11 base and commit it as a local image (buildah only)
  local ref="localhost/synpo-python-base:3.11-bookworm" root ctr mnt
  if "${BUILDAH[@]}" inspect --type image "$ref" >/dev/null 2>&1; then echo "$ref"; return; fi
  [ "$B" = buildah ] || { echo "--local-base needs BUILDER=buildah" >&2; exit 2; }
  command -v debootstrap >/dev/null || { echo "--local-base needs debootstrap (apt-get install debootstrap)" >&2; exit 1; }
  root="$(mktemp -d)"
  echo "==> debootstrap bookworm (python3.11) into $root" >&2
  debootstrap --variant=minbase \
    --include=python3.11,python3.11-venv,python3-distutils,python3-lib2to3,python3-pip-whl,python3-setuptools-whl,python-is-python3,ca-certificates,passwd \
    bookworm "$root" http://deb.debian.org/debian >&2
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
  ctr="$("${BUILDAH[@]}" from scratch)"
  mnt="$("${BUILDAH[@]}" mount "$ctr")"
  cp -a "$root"/. "$mnt"/
  "${BUILDAH[@]}" umount "$ctr" >/dev/null
  "${BUILDAH[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd /bin/bash "$ctr"
  "${BUILDAH[@]}" commit --rm "$ctr" "$ref" >&2
  rm -rf "$root"
  echo "$ref"
}

if [ "$what" = operator ] || [ "$what" = all ]; then
  if [ "$local_base" = 1 ]; then
    build synpo-operator docker/operator.Dockerfile --build-arg "PYTHON_IMAGE=$(local_python_base)"
  else
    build synpo-operator docker/operator.Dockerfile
  fi
fi
if [ "$what" = workloads ] || [ "$what" = all ]; then
  build synpo-workloads docker/workloads.Dockerfile
fi
