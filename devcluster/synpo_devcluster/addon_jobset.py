"""The JobSet add-on of the dev cluster (`synpo dev-cluster up --addons jobset`): the real JobSet controller
(sigs.k8s.io/jobset), built from the Go module proxy, its CRD, and its admission webhooks.

Build: a wrapper Go module that requires exactly sigs.k8s.io/jobset@JOBSET_VERSION and builds its root
package (main.go). `go install pkg@version` does not work here: it asks the proxy for the module's version
list (deprecation check), which the proxy refuses for this module; a pinned require downloads fine. JobSet
v0.11.1 builds against k8s.io/* v0.35 (client-go one minor behind the v1.36 API server: supported skew).
Cached under ``<cache root>/addons/jobset-<version>/bin/jobset-controller`` with a stamp written last.

Webhooks (the choice): JobSet's manager always serves its defaulting/validating webhooks; in a cluster it
makes its own certificates and patches them into a Service-backed webhook configuration. The dev cluster
has no Services that reach a local process, so instead its internal certificate management is switched off
(config `internalCertManagement.enable: false`), the add-on makes a self-signed CA and a serving certificate
for 127.0.0.1 (openssl, like the cluster's own PKI), the manager serves them on a free local port, and the
webhook configurations point at ``https://127.0.0.1:<port>/<path>`` with that CA. So JobSets get JobSet's real
defaulting and validation. Its pod webhooks (exclusive placement only) are registered for JobSet pods alone
(objectSelector on the jobset-name label), so no other pod depends on this process.

The controller runs with the cluster's admin kubeconfig (system:masters: the dev cluster is single-user);
its pid is recorded with the cluster's, so `synpo dev-cluster down` stops it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from . import build as _build
from . import cluster as _cluster
from .client import CRD_PATH, ApiError, KubeClient

NAME = "jobset"
JOBSET_VERSION = "v0.11.1"
RECIPE = 1
BINARY = "jobset-controller"
CRD_FILE = "config/components/crd/bases/jobset.x-k8s.io_jobsets.yaml"
CRD_NAME = "jobsets.jobset.x-k8s.io"
API = "/apis/jobset.x-k8s.io/v1alpha2"
WEBHOOK_CONFIG = "synpo-dev-jobset"
JOBSET_POD_LABEL = "jobset.sigs.k8s.io/jobset-name"
CRD_HASH = "synpo.dev/crd-sha256"

_GO_MOD = """module synpo.dev/devcluster/jobset

go 1.25.0

require sigs.k8s.io/jobset {version}
"""
_TOOLS_GO = """//go:build tools

package tools

import _ "sigs.k8s.io/jobset"
"""


def _log(msg: str) -> None:
    _build._log(f"jobset: {msg}")


# ---- build ---------------------------------------------------------------------------------------
def cache_dir(version: str = JOBSET_VERSION) -> Path:
    return _build.cache_root() / "addons" / f"jobset-{version}"


def binary(version: str = JOBSET_VERSION) -> Path:
    return cache_dir(version) / "bin" / BINARY


def crd_file(version: str = JOBSET_VERSION) -> Path:
    return cache_dir(version) / "jobset-crd.yaml"


def _stamp(version: str) -> dict[str, Any]:
    return {"jobset": version, "recipe": RECIPE}


def is_built(version: str = JOBSET_VERSION) -> bool:
    try:
        data = json.loads((cache_dir(version) / "build-stamp.json").read_text())
    except (OSError, ValueError):
        return False
    return ({k: data.get(k) for k in _stamp(version)} == _stamp(version) and os.access(binary(version), os.X_OK)
            and crd_file(version).is_file())


def build(force: bool = False, version: str = JOBSET_VERSION) -> Path:
    """Build (or reuse) the JobSet controller; returns the binary's path."""
    if not force and is_built(version):
        return binary(version)
    go, env = _build._go(), _build._go_env()
    root = cache_dir(version)
    src = root / "src"
    src.mkdir(parents=True, exist_ok=True)
    (root / "build-stamp.json").unlink(missing_ok=True)
    (src / "go.mod").write_text(_GO_MOD.format(version=version))
    (src / "tools.go").write_text(_TOOLS_GO)
    t0 = time.monotonic()
    _log(f"building sigs.k8s.io/jobset {version} (cold build: several minutes on 2 cores)")
    _build._run([go, "mod", "tidy"], src, env, f"go mod tidy (sigs.k8s.io/jobset {version})")
    _build._run([go, "build", "-trimpath", "-ldflags", "-s -w", "-o", str(binary(version)), "sigs.k8s.io/jobset"],
                src, env, f"build jobset-controller {version}")
    shutil.copyfile(module_dir(version) / CRD_FILE, crd_file(version))  # `up` needs no Go toolchain
    elapsed = time.monotonic() - t0
    stamp = _stamp(version) | {"built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "build_seconds": round(elapsed)}
    (root / "build-stamp.json").write_text(json.dumps(stamp, indent=2) + "\n")
    _log(f"built in {elapsed / 60:.1f} min: {binary(version)}")
    return binary(version)


def module_dir(version: str = JOBSET_VERSION) -> Path:
    """The module's source in GOMODCACHE (downloaded by the build): its CRD is copied from there."""
    out = subprocess.run([_build._go(), "mod", "download", "-json", f"sigs.k8s.io/jobset@{version}"],
                         capture_output=True, text=True, env=_build._go_env() | {"GOFLAGS": ""})
    if out.returncode != 0:
        raise _build.BuildError(f"go mod download sigs.k8s.io/jobset@{version} failed: {out.stderr.strip()}")
    return Path(json.loads(out.stdout)["Dir"])


# ---- run -----------------------------------------------------------------------------------------
def _state_file(info: _cluster.ClusterInfo) -> Path:
    return Path(info.state_dir) / f"addon-{NAME}.json"


def running(info: _cluster.ClusterInfo) -> bool:
    """The controller of this cluster runs and its webhooks answer (its readyz waits for them)."""
    try:
        st = json.loads(_state_file(info).read_text())
    except (OSError, ValueError):
        return False
    return _cluster._pid_alive(st["pid"]) and _cluster._http_ok(f"http://127.0.0.1:{st['health']}/readyz", False)


def _install_crd(admin: KubeClient, version: str) -> None:
    import yaml

    text = crd_file(version).read_text()
    digest = hashlib.sha256(text.encode()).hexdigest()
    cached = crd_file(version).with_suffix(".json")  # the YAML (~1 MiB) takes seconds to parse in pure Python
    try:
        crd = json.loads(cached.read_text())
    except (OSError, ValueError):
        crd = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        cached.write_text(json.dumps(crd))
    crd["metadata"].setdefault("annotations", {})[CRD_HASH] = digest
    # the same CRD is not written again: an update of this large schema costs the API server seconds
    admin.apply_crd(crd, unchanged=lambda current: (current["metadata"].get("annotations") or {}).get(CRD_HASH)
                    == digest, timeout=30)


def _webhooks(port: int, ca: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """JobSet's mutating and validating webhook configurations (config/components/webhook), by URL."""
    import base64

    bundle = base64.b64encode(ca).decode()

    def hook(name: str, path: str, group: str, resource: str, ops: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": name, "admissionReviewVersions": ["v1"], "sideEffects": "None", "failurePolicy": "Fail",
            "clientConfig": {"url": f"https://127.0.0.1:{port}{path}", "caBundle": bundle},
            "rules": [{"apiGroups": [group], "apiVersions": ["v1alpha2" if group else "v1"],
                       "operations": ops, "resources": [resource]}],
        }
        if resource == "pods":  # only JobSet's own pods wait for this process
            out["objectSelector"] = {"matchExpressions": [{"key": JOBSET_POD_LABEL, "operator": "Exists"}]}
        return out

    mutating = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
                "metadata": {"name": WEBHOOK_CONFIG}, "webhooks": [
                    hook("mjobset.kb.io", "/mutate-jobset-x-k8s-io-v1alpha2-jobset", "jobset.x-k8s.io", "jobsets",
                         ["CREATE"]),
                    hook("mpod.kb.io", "/mutate--v1-pod", "", "pods", ["CREATE"])]}
    validating = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
                  "metadata": {"name": WEBHOOK_CONFIG}, "webhooks": [
                      hook("vjobset.kb.io", "/validate-jobset-x-k8s-io-v1alpha2-jobset", "jobset.x-k8s.io",
                           "jobsets", ["CREATE", "UPDATE"]),
                      hook("vpod.kb.io", "/validate--v1-pod", "", "pods", ["CREATE"])]}
    return mutating, validating


def up(info: _cluster.ClusterInfo, build_if_needed: bool = True) -> None:
    """Install JobSet's CRD and webhook configurations, and start its controller unless it runs (idempotent:
    also puts back a CRD that was removed)."""
    if not is_built():
        if not build_if_needed:
            raise _cluster.ClusterError("the JobSet controller is not built; run `synpo dev-cluster up --addons jobset`")
        build()
    t0 = time.monotonic()
    sd = Path(info.state_dir)
    admin = info.client()
    _install_crd(admin, JOBSET_VERSION)
    if not running(info):
        _cluster.sign_serving_cert(Path(info.ca_file).parent, sd / "jobset-certs", "127.0.0.1")
        port, health = _cluster._free_ports(2)
        config = sd / "jobset-config.yaml"
        config.write_text(json.dumps({  # YAML is a superset of JSON
            "apiVersion": "config.jobset.x-k8s.io/v1alpha1", "kind": "Configuration",
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {"enable": False},
            "webhook": {"port": port, "host": "127.0.0.1", "certDir": str(sd / "jobset-certs")},
            "metrics": {"bindAddress": "0"},
            "health": {"healthProbeBindAddress": f"127.0.0.1:{health}"},
        }))
        procs: dict[str, subprocess.Popen] = {}
        _cluster._start(NAME, [str(binary()), f"--kubeconfig={info.kubeconfig}", f"--config={config}"],
                        sd / "logs", procs)
        _cluster._wait("JobSet controller /readyz (webhook server up)",
                       lambda: _cluster._http_ok(f"http://127.0.0.1:{health}/readyz", False), procs, sd / "logs")
        _state_file(info).write_text(json.dumps({"pid": procs[NAME].pid, "webhook": port, "health": health,
                                                 "version": JOBSET_VERSION}))
    port = json.loads(_state_file(info).read_text())["webhook"]
    mutating, validating = _webhooks(port, Path(info.ca_file).read_bytes())
    admin.apply("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations", mutating)
    admin.apply("/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations", validating)
    _wait_admission(admin)
    _cluster._log(f"jobset {JOBSET_VERSION} ready in {time.monotonic() - t0:.1f}s (webhooks at https://127.0.0.1:{port})")


_PROBE = {"apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet", "metadata": {"name": "synpo-dev-probe"},
          "spec": {"failurePolicy": {"rules": [{"name": "not a rule name", "action": "FailJobSet"}]},
                   "replicatedJobs": [{"name": "n", "replicas": 1, "template": {"spec": {"template": {"spec": {
                       "restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]}}}}}]}}


def _wait_admission(admin: KubeClient, timeout: float = 30.0) -> None:
    """Until the API server calls these webhooks: it reads webhook configurations through an informer, so for a
    moment after an update it still calls the old URL (a restarted controller's previous port). A dry-run
    JobSet that only JobSet's validation refuses tells when."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            admin.post(f"{API}/namespaces/default/jobsets", _PROBE, dryRun="All")
        except ApiError as e:
            if "denied the request" in str(e.body):
                return
            if time.monotonic() > deadline:
                raise _cluster.ClusterError(f"JobSet's webhooks do not answer the API server: {e}") from e
        else:
            raise _cluster.ClusterError("JobSet's validating webhook admitted an invalid JobSet")
        time.sleep(0.5)


def installed(client: KubeClient) -> bool:
    """The cluster serves JobSet's API (the CRD is installed)."""
    return client.exists(API)


def remove(admin: KubeClient) -> None:
    """Take JobSet's API away (its webhook configurations and CRD; the controller keeps running): for tests
    of a cluster without JobSet. `up` puts it back."""
    for path in ("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
                 "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"):
        admin.delete_if_exists(f"{path}/{WEBHOOK_CONFIG}")
    admin.delete_if_exists(f"{CRD_PATH}/{CRD_NAME}")
    admin.wait_gone(f"{CRD_PATH}/{CRD_NAME}")


__all__ = ["JOBSET_VERSION", "build", "installed", "is_built", "remove", "running", "up"]
