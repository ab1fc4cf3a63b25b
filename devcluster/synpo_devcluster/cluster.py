"""Run a local Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
kwok) as plain processes, no containers.

State lives in ``$SYNPO_DEVCLUSTER_STATE`` (default ``~/.cache/synpo/devcluster/state``)::

    state.json            ports, pids, versions (written once everything is up)
    admin.kubeconfig      token kubeconfig for the admin (group system:masters)
    pki/                  ca.{crt,key}, apiserver.{crt,key}, sa.{key,pub}, tokens.csv
    etcd/                 etcd data
    logs/<component>.log  each component's stdout+stderr

Python API::

    info = ensure_up()           # build if needed, start if not running; -> ClusterInfo
    info.client().get("/version")
    stop()                       # stop everything, remove state
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import build as _build
from .client import ApiError, KubeClient
from .kwok_stages import KWOK_NODE_ANNOTATION, KWOK_NODE_ANNOTATION_VALUE, STAGES_FILE
from .nodes import NodeShape, node_manifest

COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"
POD_CIDR = "10.244.0.0/16"  # kwok hands out pod IPs from here
NODE_IP = "10.240.0.1"  # InternalIP kwok reports for the fake node
DEFAULT_NODE = "kwok-gpu-0"
NODE_GPUS = 8
START_TIMEOUT = float(os.environ.get("SYNPO_DEVCLUSTER_START_TIMEOUT", "120"))


class ClusterError(RuntimeError):
    """Starting/stopping the dev cluster failed; the message is one line (plus a log tail)."""


@dataclass
class ClusterInfo:
    kubeconfig: str
    server: str
    token: str
    ca_file: str
    state_dir: str
    k8s_version: str
    node_name: str = DEFAULT_NODE
    ports: dict[str, int] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    started_by_fixture: bool = False

    def client(self, timeout: float = 30.0) -> KubeClient:
        return KubeClient(self.server, token=self.token, ca_file=self.ca_file, timeout=timeout)

    def env(self) -> dict[str, str]:
        return {"KUBECONFIG": self.kubeconfig}


# ---- paths -------------------------------------------------------------------------------------
def state_dir() -> Path:
    env = os.environ.get("SYNPO_DEVCLUSTER_STATE")
    if env:
        return Path(env).expanduser()
    return _build.cache_root() / "state"


def _lock_path() -> Path:
    sd = state_dir()
    return sd.parent / (sd.name + ".lock")


def _users_lock_path() -> Path:
    sd = state_dir()
    return sd.parent / (sd.name + ".users")


@contextlib.contextmanager
def _locked():
    """Serialise up/down across processes (e.g. several pytest sessions)."""
    p = _lock_path()
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _log(msg: str) -> None:
    print(f"[dev-cluster] {msg}", file=sys.stderr, flush=True)


# ---- process helpers ---------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            # state is the field after the parenthesised command name
            state = fh.read().rsplit(")", 1)[1].split()[0]
        if state in ("Z", "X"):
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)  # reap our own zombies
            return False
        return True
    except (FileNotFoundError, IndexError, ProcessLookupError):
        return False
    except OSError:
        try:
            os.kill(pid, 0)
            return True
        except OSError:
            return False


def _kill_group(pid: int, name: str, timeout: float = 10.0) -> None:
    if not _pid_alive(pid):
        return
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    # only signal the group when it is the component's own group (started with a new session)
    target = (lambda s: os.killpg(pgid, s)) if pgid == pid else (lambda s: os.kill(pid, s))
    with contextlib.suppress(ProcessLookupError):
        target(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return
        time.sleep(0.1)
    _log(f"{name} (pid {pid}) did not stop on SIGTERM; sending SIGKILL")
    with contextlib.suppress(ProcessLookupError):
        target(signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _pid_alive(pid):
        time.sleep(0.1)


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("    " + ln for ln in text[-lines:])


# ---- PKI ---------------------------------------------------------------------------------------
def _openssl(*args: str, cwd: Path) -> None:
    if not shutil.which("openssl"):
        raise ClusterError("openssl not found on PATH (needed to create the dev cluster's certificates)")
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ClusterError(f"openssl {args[0]} failed: {proc.stderr.strip().splitlines()[-1:]}")


def sign_serving_cert(pki: Path, out: Path, cn: str, sans: str = "IP:127.0.0.1,DNS:localhost",
                      name: str = "tls") -> None:
    """`name`.crt and `name`.key in `out`: a serving certificate for `sans`, signed by the dev cluster's CA in
    `pki` (the API server trusts it for webhooks by URL: their caBundle is the cluster's ca.crt)."""
    out.mkdir(parents=True, exist_ok=True)
    os.chmod(out, 0o700)  # keys
    (out / f"{name}.ext").write_text("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
                                     f"extendedKeyUsage=serverAuth\nsubjectAltName={sans}\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", f"/CN={cn}", cwd=out)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", str(pki / "ca.crt"), "-CAkey", str(pki / "ca.key"),
             "-CAcreateserial", "-CAserial", str(out / "ca.srl"), "-out", f"{name}.crt", "-days", "3650",
             "-extfile", f"{name}.ext", cwd=out)


def _make_pki(pki: Path) -> dict[str, str]:
    pki.mkdir(parents=True, exist_ok=True)
    os.chmod(pki, 0o700)
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "3650",
        "-subj",
        "/CN=synpo-dev-cluster-ca",
        cwd=pki,
    )
    sign_serving_cert(pki, pki, "kube-apiserver", "IP:127.0.0.1,IP:" + SERVICE_IP + ",DNS:localhost,DNS:kubernetes,"
                      "DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local",
                      name="apiserver")
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "sa.key", cwd=pki)
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)
    tokens = {
        c: secrets.token_hex(24) for c in ("admin", "kube-controller-manager", "kube-scheduler", "kwok")
    }
    (pki / "tokens.csv").write_text(
        f'{tokens["admin"]},synpo-admin,uid-admin,"system:masters"\n'
        f"{tokens['kube-controller-manager']},system:kube-controller-manager,uid-kcm\n"
        f"{tokens['kube-scheduler']},system:kube-scheduler,uid-scheduler\n"
        f'{tokens["kwok"]},kwok-controller,uid-kwok,"system:masters"\n'
    )
    for f in pki.iterdir():
        os.chmod(f, 0o600)
    return tokens


def _kubeconfig(server: str, ca: Path, token: str, user: str) -> str:
    import yaml

    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "synpo-dev", "cluster": {"server": server, "certificate-authority": str(ca)}}
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": "synpo-dev", "context": {"cluster": "synpo-dev", "user": user}}],
            "current-context": "synpo-dev",
        },
        sort_keys=False,
    )


# ---- state -------------------------------------------------------------------------------------
def _read_state() -> dict | None:
    try:
        return json.loads((state_dir() / "state.json").read_text())
    except (OSError, ValueError):
        return None


def _info_from_state(st: dict) -> ClusterInfo:
    fields = ClusterInfo.__dataclass_fields__
    return ClusterInfo(**{k: v for k, v in st.items() if k in fields})


def _healthy(st: dict) -> bool:
    if not all(_pid_alive(st.get("pids", {}).get(c, 0)) for c in COMPONENTS):
        return False
    try:
        KubeClient(st["server"], token=st["token"], ca_file=st["ca_file"], timeout=5).get_text("/readyz")
        return True
    except Exception:
        return False


def running_info() -> ClusterInfo | None:
    """The running cluster's info, or None when it is not (fully) up."""
    st = _read_state()
    if st and _healthy(st):
        return _info_from_state(st)
    return None


def _pids_file() -> Path:
    return state_dir() / "pids.json"


def _record_pid(name: str, pid: int) -> None:
    p = _pids_file()
    pids = json.loads(p.read_text()) if p.exists() else {}
    pids[name] = pid
    p.write_text(json.dumps(pids))


def _cleanup_stale() -> None:
    sd = state_dir()
    if not sd.exists():
        return
    pids: dict[str, int] = {}
    for src in (sd / "state.json", _pids_file()):
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(src.read_text())
            pids.update(data.get("pids", data) if src.name == "state.json" else data)
    # add-ons (controllers started after the cluster, e.g. jobset) first, then the cluster in reverse order
    for name in [*(n for n in pids if n not in COMPONENTS), *reversed(COMPONENTS)]:
        if name in pids:
            _kill_group(int(pids[name]), name)
    shutil.rmtree(sd, ignore_errors=True)


# ---- waiting -----------------------------------------------------------------------------------
def _wait(what: str, check, procs: dict[str, subprocess.Popen], logs: Path, timeout: float = START_TIMEOUT):
    deadline = time.monotonic() + timeout
    last_err: Any = None
    while time.monotonic() < deadline:
        for name, p in procs.items():
            if p.poll() is not None:
                raise ClusterError(
                    f"{name} exited with code {p.returncode} while waiting for {what}; "
                    f"last lines of {logs / (name + '.log')}:\n{_log_tail(logs / (name + '.log'))}"
                )
        try:
            result = check()
            if result:
                return result
        except Exception as e:  # noqa: BLE001 - keep polling
            last_err = e
        time.sleep(0.2)
    raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last_err})")


def _http_ok(url: str, insecure_tls: bool = True) -> bool:
    ctx = ssl._create_unverified_context() if insecure_tls else None
    with urllib.request.urlopen(url, timeout=3, context=ctx) as r:
        return r.status == 200


# ---- up / down ---------------------------------------------------------------------------------
def _node_manifest(name: str) -> dict:
    return node_manifest(name, NodeShape(
        resources={"cpu": "64", "memory": "512Gi", "pods": "110", "nvidia.com/gpu": str(NODE_GPUS),
                   "ephemeral-storage": "1Ti"},
        labels={"nvidia.com/gpu.present": "true", "nvidia.com/gpu.product": "H100",
                "nvidia.com/gpu.count": str(NODE_GPUS), "nvidia.com/gpu.memory": "81559"}))


def _start(name: str, args: list[str], logs: Path, procs: dict[str, subprocess.Popen]) -> None:
    log_path = logs / f"{name}.log"
    with open(log_path, "ab") as log:
        log.write(f"# {' '.join(args)}\n".encode())
        log.flush()
        p = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=str(logs.parent),
        )
    procs[name] = p
    _record_pid(name, p.pid)


def up(build_if_needed: bool = True, started_by_fixture: bool = False, pin: bool = False) -> ClusterInfo:
    """Start the cluster unless it is already running; returns its info.

    pin=True (the CLI's `up`): keep it running after test sessions end even if one of them started it."""
    with _locked():
        if pin:
            (state_dir() / SessionLease.MARKER).unlink(missing_ok=True)
        st = _read_state()
        if st and _healthy(st):
            _log(f"already up: {st['server']} (kubeconfig {st['kubeconfig']})")
            return _info_from_state(st)
        if state_dir().exists():
            _log("cleaning up stale dev-cluster state")
            _cleanup_stale()
        versions = _build.Versions()
        if not _build.is_built(versions):
            if not build_if_needed:
                raise ClusterError("dev-cluster binaries are not built; run `synpo dev-cluster build`")
            _build.build(versions=versions)
        try:
            return _up_locked(versions, started_by_fixture)
        except BaseException:
            _cleanup_stale_keep_logs()
            raise


def _cleanup_stale_keep_logs() -> None:
    """After a failed start: stop what was started, keep logs for diagnosis."""
    sd = state_dir()
    with contextlib.suppress(OSError, ValueError):
        for name, pid in reversed(list(json.loads(_pids_file().read_text()).items())):
            _kill_group(int(pid), name)
    with contextlib.suppress(OSError):
        _pids_file().unlink()
    shutil.rmtree(sd / "etcd", ignore_errors=True)


def _up_locked(versions: _build.Versions, started_by_fixture: bool) -> ClusterInfo:
    t0 = time.monotonic()
    sd = state_dir()
    logs = sd / "logs"
    pki = sd / "pki"
    logs.mkdir(parents=True, exist_ok=True)
    os.chmod(sd, 0o700)
    tokens = _make_pki(pki)
    bins = {c: str(_build.binary(c, versions)) for c in COMPONENTS}
    p_etcd, p_peer, p_api, p_kcm, p_sched, p_kwok = _free_ports(6)
    ports = {
        "etcd": p_etcd,
        "etcd-peer": p_peer,
        "kube-apiserver": p_api,
        "kube-controller-manager": p_kcm,
        "kube-scheduler": p_sched,
        "kwok": p_kwok,
    }
    server = f"https://127.0.0.1:{p_api}"
    ca = pki / "ca.crt"
    kubeconfigs = {}
    for comp, user in (
        ("admin", "synpo-admin"),
        ("kube-controller-manager", "system:kube-controller-manager"),
        ("kube-scheduler", "system:kube-scheduler"),
        ("kwok", "kwok-controller"),
    ):
        path = sd / f"{comp}.kubeconfig"
        path.write_text(_kubeconfig(server, ca, tokens[comp], user))
        os.chmod(path, 0o600)
        kubeconfigs[comp] = path
    procs: dict[str, subprocess.Popen] = {}
    _log(f"starting dev cluster (k8s {versions.k8s}) in {sd}")

    _start(
        "etcd",
        [
            bins["etcd"],
            "--name=synpo-dev",
            f"--data-dir={sd / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{p_etcd}",
            f"--advertise-client-urls=http://127.0.0.1:{p_etcd}",
            f"--listen-peer-urls=http://127.0.0.1:{p_peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{p_peer}",
            f"--initial-cluster=synpo-dev=http://127.0.0.1:{p_peer}",
            "--initial-cluster-state=new",
            "--unsafe-no-fsync=true",
            "--log-level=warn",
            "--quota-backend-bytes=2147483648",
        ],
        logs,
        procs,
    )
    _wait("etcd /health", lambda: _http_ok(f"http://127.0.0.1:{p_etcd}/health", False), procs, logs)

    _start(
        "kube-apiserver",
        [
            bins["kube-apiserver"],
            f"--etcd-servers=http://127.0.0.1:{p_etcd}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={p_api}",
            f"--cert-dir={sd / 'apiserver-certs'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={ca}",
            f"--token-auth-file={pki / 'tokens.csv'}",
            "--authorization-mode=Node,RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # added to the default-on plugins (NamespaceLifecycle, LimitRanger, ServiceAccount, Priority,
            # DefaultTolerationSeconds, ResourceQuota, PodSecurity, webhooks, ...), none of which needs more
            # than what runs here
            "--enable-admission-plugins=NodeRestriction",
            "--allow-privileged=true",
            # the kubernetes Service cannot point at a loopback address; nothing in-cluster needs it
            "--endpoint-reconciler-type=none",
            "--profiling=false",
            "--v=1",
        ],
        logs,
        procs,
    )
    admin = KubeClient(server, token=tokens["admin"], ca_file=ca, timeout=5)
    _wait("kube-apiserver /readyz", lambda: admin.get_text("/readyz") == "ok", procs, logs)

    common = ["--bind-address=127.0.0.1", "--leader-elect=false", "--v=1"]
    _start(
        "kube-controller-manager",
        [
            bins["kube-controller-manager"],
            f"--kubeconfig={kubeconfigs['kube-controller-manager']}",
            f"--secure-port={p_kcm}",
            f"--cert-dir={sd / 'kcm-certs'}",
            *common,
            "--controllers=*",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={ca}",
            "--use-service-account-credentials=true",
            f"--cluster-signing-cert-file={ca}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allocate-node-cidrs=false",
        ],
        logs,
        procs,
    )
    _start(
        "kube-scheduler",
        [
            bins["kube-scheduler"],
            f"--kubeconfig={kubeconfigs['kube-scheduler']}",
            f"--secure-port={p_sched}",
            f"--cert-dir={sd / 'scheduler-certs'}",
            *common,
        ],
        logs,
        procs,
    )
    _start(
        "kwok",
        [
            bins["kwok"],
            f"--kubeconfig={kubeconfigs['kwok']}",
            f"--config={STAGES_FILE}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}={KWOK_NODE_ANNOTATION_VALUE}",
            f"--server-address=127.0.0.1:{p_kwok}",
            "--node-lease-duration-seconds=40",
            f"--cidr={POD_CIDR}",
            f"--node-ip={NODE_IP}",
        ],
        logs,
        procs,
    )
    _wait(
        "kube-controller-manager /healthz",
        lambda: _http_ok(f"https://127.0.0.1:{p_kcm}/healthz"),
        procs,
        logs,
    )
    _wait("kube-scheduler /healthz", lambda: _http_ok(f"https://127.0.0.1:{p_sched}/healthz"), procs, logs)
    _wait(
        "ServiceAccount default/default (service-account controller)",
        lambda: admin.exists("/api/v1/namespaces/default/serviceaccounts/default"),
        procs,
        logs,
    )

    node = DEFAULT_NODE
    try:
        admin.post("/api/v1/nodes", _node_manifest(node))
    except ApiError as e:
        if e.status != 409:
            raise ClusterError(f"registering fake node {node} failed: {e}") from None

    def node_ready() -> bool:
        obj = admin.get(f"/api/v1/nodes/{node}")
        conds = {c["type"]: c["status"] for c in obj.get("status", {}).get("conditions", [])}
        gpus = obj.get("status", {}).get("allocatable", {}).get("nvidia.com/gpu")
        taints = [
            t for t in obj.get("spec", {}).get("taints", []) if t["key"].startswith("node.kubernetes.io/")
        ]
        return conds.get("Ready") == "True" and gpus == str(NODE_GPUS) and not taints

    _wait(f"fake node {node} Ready with {NODE_GPUS} GPUs (kwok)", node_ready, procs, logs)
    version = admin.get("/version").get("gitVersion", "")

    info = ClusterInfo(
        kubeconfig=str(kubeconfigs["admin"]),
        server=server,
        token=tokens["admin"],
        ca_file=str(ca),
        state_dir=str(sd),
        k8s_version=version,
        node_name=node,
        ports=ports,
        pids={n: p.pid for n, p in procs.items()},
        started_by_fixture=started_by_fixture,
    )
    tmp = sd / "state.json.tmp"
    tmp.write_text(json.dumps(asdict(info), indent=2))
    os.chmod(tmp, 0o600)
    tmp.replace(sd / "state.json")
    _log(f"up in {time.monotonic() - t0:.1f}s: {server} ({version}); kubeconfig: {info.kubeconfig}")
    return info


def down() -> bool:
    """Stop all components (process groups) and remove the state dir. Returns whether anything ran."""
    with _locked():
        sd = state_dir()
        existed = sd.exists()
        _cleanup_stale()
        return existed


stop = down


def status() -> dict:
    st = _read_state()
    if not st:
        pids = {}
        with contextlib.suppress(OSError, ValueError):
            pids = json.loads(_pids_file().read_text())
        alive = {n: _pid_alive(int(p)) for n, p in pids.items()}
        return {
            "state": "down" if not any(alive.values()) else "starting-or-stale",
            "processes": alive,
            "state_dir": str(state_dir()),
        }
    procs = {c: _pid_alive(st["pids"].get(c, 0)) for c in COMPONENTS}
    ready = False
    if all(procs.values()):
        with contextlib.suppress(Exception):
            ready = (
                KubeClient(st["server"], token=st["token"], ca_file=st["ca_file"], timeout=5).get_text(
                    "/readyz"
                )
                == "ok"
            )
    return {
        "state": "up" if ready else "degraded",
        "server": st["server"],
        "version": st.get("k8s_version"),
        "kubeconfig": st["kubeconfig"],
        "node": st.get("node_name"),
        "processes": procs,
        "ports": st.get("ports", {}),
        "state_dir": st["state_dir"],
        "logs": str(Path(st["state_dir"]) / "logs"),
    }


def ensure_up(build_if_needed: bool = True) -> ClusterInfo:
    """Return the running cluster, starting (and building) it first if needed."""
    info = running_info()
    if info:
        return info
    return up(build_if_needed=build_if_needed)


# ---- shared use by several test sessions -------------------------------------------------------
class SessionLease:
    """Holds a shared lock while a (pytest) session uses the cluster.

    ``release()`` stops the cluster when a session lease started it (marker file in the state dir) and no
    other session still holds a lease; a cluster started with ``synpo dev-cluster up`` is left running."""

    MARKER = "started-by-session"

    def __init__(self) -> None:
        p = _users_lock_path()
        p.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(p, "a+")  # noqa: SIM115 - held for the session
        fcntl.flock(self._fh, fcntl.LOCK_SH)
        try:
            was_up = running_info() is not None
            self.info = ensure_up()
        except BaseException:
            self._fh.close()
            raise
        self.started = not was_up
        if self.started:
            (Path(self.info.state_dir) / self.MARKER).touch()

    def release(self, keep: bool = False) -> None:
        if self._fh.closed:
            return
        try:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            if keep or not (state_dir() / self.MARKER).exists():
                return
            try:
                fcntl.flock(self._fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                _log("dev cluster still in use by another session; leaving it up")
                return
            down()
        finally:
            self._fh.close()
