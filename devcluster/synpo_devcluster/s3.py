"""A real S3-compatible server on this machine, for tests of object storage (test infrastructure, like the
dev cluster).

Preferred: SeaweedFS's S3 gateway (Apache-2.0), `weed mini` (master, volume, filer and S3 in one process),
built once from the Go module proxy and cached under ``$SYNPO_S3_CACHE`` or ``~/.cache/synpo/seaweedfs``:

    python -m synpo_devcluster.s3 build      # nice'd `go build ./weed` in the module (minutes on 2 cores)

Measured: 1739 Go packages; on the shared 2-core machine (load average ~16, nice 19, `-p 1`) the cold build
took about 74 min of wall time (a 30 min attempt that timed out, then 44 min on the warm build cache); the
binary is 164 MB. The store tests pass on it (and the credential test, which moto cannot check, runs).

Without that binary, moto's S3 server (the `moto[server]` package, a Werkzeug HTTP server speaking the S3
protocol) stands in. Either way the tests talk HTTP to a server on 127.0.0.1 with static credentials, through
the same clients (s3fs/botocore) that stage pods use.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .build import BuildError, _go, _go_env, _log, _run

SEAWEEDFS_MODULE = "github.com/seaweedfs/seaweedfs"
SEAWEEDFS_VERSION = "v0.0.0-20261109003541-7506e5f91cd6"
"""The proxy serves SeaweedFS only at pseudo-versions (no tagged release of the module path)."""
ACCESS_KEY = "synpo-test"
SECRET_KEY = "synpo-test-secret"


def cache_dir() -> Path:
    env = os.environ.get("SYNPO_S3_CACHE")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "synpo" / "seaweedfs"
    return root / SEAWEEDFS_VERSION


def weed_binary() -> Path | None:
    path = cache_dir() / "weed"
    return path if os.access(path, os.X_OK) else None


def build_seaweedfs(force: bool = False) -> Path:
    """`go build ./weed` inside the downloaded module (its own go.mod and go.sum), cached; returns the binary."""
    if not force and (found := weed_binary()):
        _log(f"up to date: {found}")
        return found
    go = _go()
    env = _go_env() | {"GOFLAGS": "-mod=readonly"}
    out = cache_dir()
    out.mkdir(parents=True, exist_ok=True)
    info = json.loads(_run([go, "mod", "download", "-json", f"{SEAWEEDFS_MODULE}@{SEAWEEDFS_VERSION}"], out,
                           env, f"download {SEAWEEDFS_MODULE}@{SEAWEEDFS_VERSION}", capture=True))
    if not info.get("Dir"):
        raise BuildError(f"go mod download gave no directory for {SEAWEEDFS_MODULE}: {info.get('Error')}")
    tmp = out / "weed.tmp"
    _run([go, "build", "-p", "1", "-trimpath", "-ldflags", "-s -w", "-o", str(tmp), "./weed"], Path(info["Dir"]),
         env, "go build seaweedfs ./weed")
    os.replace(tmp, out / "weed")  # written last: a half-built binary is never taken for a cached one
    return out / "weed"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    kind: str
    """"seaweedfs" or "moto"."""

    def env(self) -> dict[str, str]:
        """What a stage process needs: botocore reads AWS_ENDPOINT_URL itself (no s3fs option needed)."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_DEFAULT_REGION": "us-east-1"}

    def create_bucket(self, name: str) -> None:
        import boto3

        boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                     aws_secret_access_key=self.secret_key, region_name="us-east-1").create_bucket(Bucket=name)

    def filesystem(self):
        import s3fs

        return s3fs.S3FileSystem(key=self.access_key, secret=self.secret_key,
                                 client_kwargs={"endpoint_url": self.endpoint, "region_name": "us-east-1"},
                                 skip_instance_cache=True)


def _wait_http(url: str, proc: subprocess.Popen | None, timeout: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log else ""
            raise RuntimeError(f"S3 server exited with {proc.returncode}: {tail}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:  # any HTTP answer (403 for an anonymous list) means it is serving
            return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"S3 server at {url} did not answer within {timeout:.0f}s")


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the process that started it dies (a killed test session must not
    leave its S3 server running; the server's data is a temp dir of that session anyway). Linux only."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@contextmanager
def _seaweedfs(weed: Path, workdir: Path) -> Iterator[S3Server]:
    config = workdir / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "synpo", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}))
    data = workdir / "data"
    data.mkdir()
    s3_port = free_port()
    ports = {"master.port": free_port(), "volume.port": free_port(), "filer.port": free_port(), "s3.port": s3_port}
    # gRPC ports default to http port + 10000: pick them too, so two servers (or other tests) never clash
    grpc = {f"{k}.grpc": free_port() for k in ports}
    args = [str(weed), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-s3.config={config}",
            "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false", "-master.volumeSizeLimitMB=64"]
    args += [f"-{k}={v}" for k, v in {**ports, **grpc}.items()]
    log = workdir / "weed.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True,
                                preexec_fn=_die_with_parent)
    try:
        endpoint = f"http://127.0.0.1:{s3_port}"
        _wait_http(endpoint, proc, 90, log)
        yield S3Server(endpoint, ACCESS_KEY, SECRET_KEY, "seaweedfs")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def _moto() -> Iterator[S3Server]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            preexec_fn=_die_with_parent)
    try:
        endpoint = f"http://127.0.0.1:{port}"
        _wait_http(endpoint, proc, 60)
        yield S3Server(endpoint, ACCESS_KEY, SECRET_KEY, "moto")
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def s3_server(kind: str | None = None) -> Iterator[S3Server]:
    """A fresh S3 server in a temp dir on free ports: SeaweedFS when built (or `kind="seaweedfs"`), else moto.
    `$SYNPO_S3_SERVER` (seaweedfs | moto) overrides the choice."""
    kind = kind or os.environ.get("SYNPO_S3_SERVER") or ("seaweedfs" if weed_binary() else "moto")
    if kind == "seaweedfs":
        weed = weed_binary()
        if weed is None:
            raise RuntimeError("SeaweedFS is not built: run `python -m synpo_devcluster.s3 build`")
        workdir = Path(tempfile.mkdtemp(prefix="synpo-s3-"))
        try:
            with _seaweedfs(weed, workdir) as server:
                yield server
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    elif kind == "moto":
        with _moto() as server:
            yield server
    else:
        raise ValueError(f"SYNPO_S3_SERVER: {kind!r} is not one of seaweedfs, moto")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["build"]:
        t0 = time.monotonic()
        try:
            path = build_seaweedfs(force="--force" in argv)
        except BuildError as e:
            print(f"seaweedfs build: {e}", file=sys.stderr)
            return 1
        print(f"{path} ({time.monotonic() - t0:.0f}s)")
        return 0
    print("usage: python -m synpo_devcluster.s3 build [--force]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
