"""Dev-cluster add-on: a real Kueue (sigs.k8s.io/kueue) manager admitting the cluster's Jobs.

`synpo dev-cluster up --addons kueue` (or ``up(info)``) builds Kueue once from the Go module proxy, installs
its CRDs and runs its manager as one more plain process of the dev cluster (stopped by `down` with the rest).

Cache (``<cache root>/kueue-<version>/``): ``bin/kueue``, ``crds/*.yaml`` (from the module's
``config/components/crd/bases/``), ``build-stamp.json`` written last.
State (``<state dir>/kueue/``): ``config.yaml``, ``webhook-certs/``; log in ``<state dir>/logs/kueue.log``.

How it runs against the dev cluster (Kueue normally runs in-cluster behind a webhook Service whose
certificates it manages itself):
- ``internalCertManagement.enable: false``. Internal cert management issues a certificate for
  ``kueue-webhook-service.kueue-system.svc`` and waits until it has injected that CA into its webhook
  configurations and the CRDs' conversion webhooks; nothing here can reach a Service name (the API server and
  Kueue are processes on 127.0.0.1), so it would wait forever.
- The webhook server still starts (Kueue always registers its handlers) on 127.0.0.1 with a certificate from
  the dev cluster's CA (SAN 127.0.0.1), but no Mutating/ValidatingWebhookConfiguration is registered: the
  cluster is shared by test sessions, and a registered Job webhook with failurePolicy Fail would refuse every
  Job in every namespace whenever this process is down. Kueue's batch/job integration does not need it: the
  webhook only suspends labelled Jobs on create and validates objects, while the SynPO operator already creates
  its Jobs suspended with the queue-name label, and Kueue's own controller creates the Workloads.
  ``manageJobsWithoutQueueName: false``: Jobs without the label are left alone.
- Without internal cert management Kueue's main reads its metrics serving certificate from the fixed path
  ``/etc/kueue/metrics/certs`` (in a Deployment, a mounted Secret), even with the metrics server off; a
  throwaway self-signed pair is written there when absent (the metrics endpoint itself is disabled).
- CRDs are installed as the module ships them, without the conversion-webhook patches: everything here speaks
  the storage version, kueue.x-k8s.io/v1beta2.
- VisibilityOnDemand (an aggregated API server) and MultiKueue are off; integrations: batch/job and JobSet
  (`FRAMEWORKS`; Kueue sets up the JobSet one once the JobSet API exists, and leaves JobSets without the
  queue-name label alone). A manager started with other integrations is restarted by ``up``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from . import build as _build
from . import cluster as _cluster

VERSION = "v0.17.0"
MODULE = "sigs.k8s.io/kueue"
RECIPE = 1
NAMESPACE = "kueue-system"
API = "kueue.x-k8s.io/v1beta2"
METRICS_CERT_DIR = Path("/etc/kueue/metrics/certs")  # hard-coded in Kueue's cmd/kueue/main.go
START_TIMEOUT = float(os.environ.get("SYNPO_DEVCLUSTER_START_TIMEOUT", "120"))
FRAMEWORKS = ["batch/job", "jobset.x-k8s.io/jobset"]


@dataclass
class KueueInfo:
    pid: int
    health_port: int
    webhook_port: int
    log: str
    version: str = VERSION


# ---- build -------------------------------------------------------------------------------------
def cache_dir() -> Path:
    return _build.cache_root() / f"kueue-{VERSION}"


def binary() -> Path:
    return cache_dir() / "bin" / "kueue"


def crd_dir() -> Path:
    return cache_dir() / "crds"


def _stamp() -> Path:
    return cache_dir() / "build-stamp.json"


def is_built() -> bool:
    try:
        data = json.loads(_stamp().read_text())
    except (OSError, ValueError):
        return False
    return (data.get("version"), data.get("recipe")) == (VERSION, RECIPE) and os.access(binary(), os.X_OK) \
        and any(crd_dir().glob("*.yaml"))


def build(force: bool = False) -> Path:
    """Build (or reuse) the Kueue manager and copy its CRDs into the cache; returns the binary."""
    if not force and is_built():
        _build._log(f"kueue {VERSION} up to date: {binary()}")
        return binary()
    go, env = _build._go(), _build._go_env() | {"GOFLAGS": ""}
    root = cache_dir()
    (root / "bin").mkdir(parents=True, exist_ok=True)
    _stamp().unlink(missing_ok=True)
    t0 = time.monotonic()
    _build._log(f"building kueue {VERSION} into {root} (cold: ~9 min of CPU; 54 min wall on a busy 2-core machine)")
    info = json.loads(_build._run([go, "mod", "download", "-json", f"{MODULE}@{VERSION}"], root, env,
                                  f"download {MODULE}@{VERSION}", capture=True))
    # built from its own go.mod (no replace directives), like kwok
    _build._run([go, "install", "-trimpath",
                 "-ldflags", f"-s -w -X {MODULE}/pkg/version.GitVersion={VERSION}",
                 f"{MODULE}/cmd/kueue@{VERSION}"], root, env | {"GOBIN": str(root / "bin")}, "build kueue")
    shutil.rmtree(crd_dir(), ignore_errors=True)
    crd_dir().mkdir()
    for src in sorted((Path(info["Dir"]) / "config" / "components" / "crd" / "bases").glob("*.yaml")):
        shutil.copyfile(src, crd_dir() / src.name)
    if not os.access(binary(), os.X_OK) or not any(crd_dir().glob("*.yaml")):
        raise _build.BuildError(f"kueue build finished but {binary()} or its CRDs are missing")
    elapsed = time.monotonic() - t0
    _stamp().write_text(json.dumps({"version": VERSION, "recipe": RECIPE, "build_seconds": round(elapsed),
                                    "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=2))
    _build._log(f"kueue built in {elapsed / 60:.1f} min: {binary()}")
    return binary()


# ---- run ---------------------------------------------------------------------------------------
def _state(info: _cluster.ClusterInfo) -> Path:
    return Path(info.state_dir) / "kueue"


def _read(info: _cluster.ClusterInfo) -> KueueInfo | None:
    with contextlib.suppress(OSError, ValueError, TypeError):
        return KueueInfo(**json.loads((_state(info) / "state.json").read_text()))
    return None


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=3) as r:
            return r.status == 200
    except OSError:
        return False


def running(info: _cluster.ClusterInfo) -> KueueInfo | None:
    """The Kueue manager of this cluster when it runs and answers /readyz."""
    st = _read(info)
    if st and _cluster._pid_alive(st.pid) and _ready(st.health_port) and _frameworks(info) == FRAMEWORKS:
        return st
    return None


def _frameworks(info: _cluster.ClusterInfo) -> list[str] | None:
    """The integrations the running manager was started with (its config file)."""
    import yaml

    with contextlib.suppress(OSError, ValueError, AttributeError, TypeError):
        return yaml.safe_load((_state(info) / "config.yaml").read_text())["integrations"]["frameworks"]
    return None


def up(info: _cluster.ClusterInfo, build_if_needed: bool = True) -> KueueInfo:
    """Start Kueue on the running dev cluster unless it already runs there; returns its info."""
    st = running(info)
    if st:
        return st
    if not is_built():
        if not build_if_needed:
            raise _cluster.ClusterError("kueue is not built; run `synpo dev-cluster up --addons kueue`")
        build()
    with _cluster._locked():  # one starter among concurrent sessions
        st = running(info)
        if st:
            return st
        return _start(info)


def _apply_crds(info: _cluster.ClusterInfo) -> None:
    import yaml

    kube = info.client()
    for path in sorted(crd_dir().glob("*.yaml")):
        kube.apply_crd(yaml.safe_load(path.read_text()))


def _certs(info: _cluster.ClusterInfo, webhook_dir: Path) -> None:
    _cluster.sign_serving_cert(Path(info.ca_file).parent, webhook_dir, "kueue-webhook")
    if (METRICS_CERT_DIR / "tls.crt").exists() and (METRICS_CERT_DIR / "tls.key").exists():
        return
    try:
        METRICS_CERT_DIR.mkdir(parents=True, exist_ok=True)
        _cluster._openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "tls.key", "-out", "tls.crt",
                          "-days", "3650", "-subj", "/CN=kueue-metrics-unused", cwd=METRICS_CERT_DIR)
    except OSError as err:
        raise _cluster.ClusterError(
            f"kueue {VERSION} reads a metrics certificate from {METRICS_CERT_DIR} when internal cert management "
            f"is off, and that directory is not writable here ({err}); create tls.crt and tls.key there "
            "(any self-signed pair: the metrics endpoint is disabled)") from None


def _config(health: int, webhook: int, cert_dir: Path) -> dict:
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health}"},
        "metrics": {"bindAddress": "0"},
        "webhook": {"host": "127.0.0.1", "port": webhook, "certDir": str(cert_dir)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "manageJobsWithoutQueueName": False,
        "integrations": {"frameworks": list(FRAMEWORKS)},
        "featureGates": {"VisibilityOnDemand": False, "MultiKueue": False},
        "clientConnection": {"qps": 50, "burst": 100},
    }


def _start(info: _cluster.ClusterInfo) -> KueueInfo:
    import yaml

    t0 = time.monotonic()
    state = _state(info)
    old = _read(info)
    if old:
        _cluster._kill_group(old.pid, "kueue")
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    kube = info.client()
    if not kube.exists(f"/api/v1/namespaces/{NAMESPACE}"):
        kube.post("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
    _apply_crds(info)
    _certs(info, state / "webhook-certs")
    health, webhook = _cluster._free_ports(2)
    (state / "config.yaml").write_text(yaml.safe_dump(_config(health, webhook, state / "webhook-certs")))
    logs = Path(info.state_dir) / "logs"
    log_path = logs / "kueue.log"
    args = [str(binary()), f"--config={state / 'config.yaml'}"]
    with open(log_path, "ab") as log:
        log.write(f"# {' '.join(args)}\n".encode())
        log.flush()
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=str(state),
                                env={**os.environ, "KUBECONFIG": info.kubeconfig})
    _cluster._record_pid("kueue", proc.pid)  # `down` stops it with the cluster
    st = KueueInfo(pid=proc.pid, health_port=health, webhook_port=webhook, log=str(log_path))
    try:
        _cluster._wait("kueue /readyz", lambda: _ready(health), {"kueue": proc}, logs, timeout=START_TIMEOUT)
    except BaseException:
        _cluster._kill_group(proc.pid, "kueue")
        raise
    (state / "state.json").write_text(json.dumps(asdict(st), indent=2))
    _cluster._log(f"kueue {VERSION} up in {time.monotonic() - t0:.1f}s (log {log_path})")
    return st
