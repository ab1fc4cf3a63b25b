"""Build the dev-cluster binaries from the Go module proxy, once, and cache them.

Layout of the cache (root: ``$SYNPO_DEVCLUSTER_CACHE`` or ``~/.cache/synpo/devcluster``)::

    <root>/<k8s-version>/src/      wrapper Go module (go.mod, tools.go, cmd/etcd/main.go)
    <root>/<k8s-version>/bin/      etcd kube-apiserver kube-controller-manager kube-scheduler kwok
    <root>/<k8s-version>/build-stamp.json   written last, only when every binary built

A build is skipped when the stamp matches the pinned versions and every binary exists.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# ---- pinned versions -------------------------------------------------------------------------
K8S_VERSION = "v1.36.3"  # k8s.io/kubernetes; staging modules map to v0.36.3
ETCD_VERSION = "v3.6.8"  # go.etcd.io/etcd/server/v3, the version k8s.io/kubernetes v1.36.3 pins
KWOK_VERSION = "v0.8.0"  # sigs.k8s.io/kwok (built against k8s.io/* v0.36.1)
# Bump when the build recipe (flags, layout) changes so caches are rebuilt.
RECIPE = 1

K8S_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
BINARIES = ("etcd",) + K8S_COMMANDS + ("kwok",)

_GO_DIR = Path(__file__).resolve().parent / "go"


class BuildError(RuntimeError):
    """A build step failed; the message is one line suitable for the CLI."""


@dataclass(frozen=True)
class Versions:
    k8s: str = K8S_VERSION
    etcd: str = ETCD_VERSION
    kwok: str = KWOK_VERSION

    @property
    def staging(self) -> str:
        return "v0." + self.k8s.lstrip("v").split(".", 1)[1]

    def stamp(self) -> dict:
        return {"k8s": self.k8s, "etcd": self.etcd, "kwok": self.kwok, "recipe": RECIPE}


def cache_root() -> Path:
    env = os.environ.get("SYNPO_DEVCLUSTER_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "synpo" / "devcluster"


def cache_dir(versions: Versions | None = None) -> Path:
    return cache_root() / (versions or Versions()).k8s


def bin_dir(versions: Versions | None = None) -> Path:
    return cache_dir(versions) / "bin"


def binary(name: str, versions: Versions | None = None) -> Path:
    return bin_dir(versions) / name


def _stamp_path(versions: Versions) -> Path:
    return cache_dir(versions) / "build-stamp.json"


def is_built(versions: Versions | None = None) -> bool:
    versions = versions or Versions()
    stamp = _stamp_path(versions)
    try:
        data = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return False
    if {k: data.get(k) for k in versions.stamp()} != versions.stamp():
        return False
    return all(os.access(binary(b, versions), os.X_OK) for b in BINARIES)


def _log(msg: str) -> None:
    print(f"[dev-cluster build] {msg}", file=sys.stderr, flush=True)


def _go() -> str:
    go = shutil.which("go")
    if not go:
        for cand in ("/usr/local/go/bin/go", str(Path.home() / "go" / "bin" / "go")):
            if os.access(cand, os.X_OK):
                return cand
        raise BuildError("Go toolchain not found on PATH (need Go >= 1.26 to build the dev cluster)")
    return go


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env["GOFLAGS"] = "-mod=mod"
    env.setdefault("GOPROXY", "https://proxy.golang.org,direct")
    env["CGO_ENABLED"] = "0"
    env.setdefault("GOTOOLCHAIN", "auto")
    return env


def _nice() -> list[str]:
    return ["nice", "-n", "15"] if shutil.which("nice") else []


def _run(cmd: list[str], cwd: Path, env: dict[str, str], what: str, capture: bool = False) -> str:
    t0 = time.monotonic()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            _nice() + cmd,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
            stderr=err,
            text=True,
        )
        out = ""
        if capture:
            out = proc.communicate()[0]
        else:
            next_beat = 60.0
            while proc.poll() is None:
                time.sleep(1)
                if time.monotonic() - t0 >= next_beat:
                    _log(f"{what}: still running ({next_beat / 60:.0f} min)")
                    next_beat += 60
        err.seek(0)
        stderr = err.read()
    if proc.returncode != 0:
        tail = " | ".join(stderr.strip().splitlines()[-6:])
        raise BuildError(f"{what} failed (exit {proc.returncode}): {tail}")
    if stderr and not capture:
        sys.stderr.write(stderr)
    _log(f"{what}: done in {time.monotonic() - t0:.0f}s")
    return out


def _staging_modules(
    go: str, versions: Versions, workdir: Path, env: dict[str, str]
) -> tuple[list[str], str]:
    """Staging modules that k8s.io/kubernetes replaces with ./staging/src/..., and its go directive."""
    out = _run(
        [go, "mod", "download", "-json", f"k8s.io/kubernetes@{versions.k8s}"],
        workdir,
        env | {"GOFLAGS": ""},
        f"download k8s.io/kubernetes@{versions.k8s} go.mod",
        capture=True,
    )
    info = json.loads(out)
    gomod = Path(info["GoMod"]).read_text()
    mods = sorted(set(re.findall(r"^\s*(k8s\.io/[\w.\-/]+)\s+=>\s+\./staging/", gomod, re.M)))
    if not mods:
        raise BuildError(f"no staging replaces found in k8s.io/kubernetes@{versions.k8s} go.mod")
    m = re.search(r"^go\s+(\S+)", gomod, re.M)
    return mods, (m.group(1) if m else "1.26.0")


def _ldflags(versions: Versions) -> str:
    major, minor = versions.k8s.lstrip("v").split(".")[:2]
    build_date = "2026-01-01T00:00:00Z"
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={versions.k8s}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate={build_date}",
        ]
    return " ".join(flags)


def build(force: bool = False, versions: Versions | None = None) -> Path:
    """Build (or reuse) all binaries; return the bin directory."""
    versions = versions or Versions()
    if not force and is_built(versions):
        _log(
            f"up to date: {bin_dir(versions)} (k8s {versions.k8s}, etcd {versions.etcd}, kwok {versions.kwok})"
        )
        return bin_dir(versions)
    go = _go()
    env = _go_env()
    root = cache_dir(versions)
    src = root / "src"
    out = root / "bin"
    src.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    _stamp_path(versions).unlink(missing_ok=True)
    t_start = time.monotonic()
    _log(
        f"building k8s {versions.k8s}, etcd {versions.etcd}, kwok {versions.kwok} into {out} (cold build: ~10-15 min on 2 cores)"
    )

    # 1. wrapper module for k8s + etcd
    mods, go_directive = _staging_modules(go, versions, src, env)
    replaces = "\n".join(f"\t{m} => {m} {versions.staging}" for m in mods)
    (src / "go.mod").write_text(
        (_GO_DIR / "go.mod.tmpl")
        .read_text()
        .format(
            go_directive=go_directive, k8s_version=versions.k8s, etcd_version=versions.etcd, replaces=replaces
        )
    )
    shutil.copyfile(_GO_DIR / "tools.go", src / "tools.go")
    (src / "cmd" / "etcd").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_GO_DIR / "etcd_main.go", src / "cmd" / "etcd" / "main.go")
    _log(f"wrapper module at {src} ({len(mods)} staging replaces -> {versions.staging})")
    _run([go, "mod", "tidy"], src, env, "go mod tidy (resolve + download modules)")

    ldflags = _ldflags(versions)
    common = ["build", "-trimpath", "-tags", "providerless"]
    for cmd in K8S_COMMANDS:
        _log(f"compiling {cmd} ...")
        _run(
            [go, *common, "-ldflags", ldflags, "-o", str(out / cmd), f"k8s.io/kubernetes/cmd/{cmd}"],
            src,
            env,
            f"build {cmd}",
        )
    _log("compiling etcd ...")
    _run([go, *common, "-ldflags", "-s -w", "-o", str(out / "etcd"), "./cmd/etcd"], src, env, "build etcd")

    # 2. kwok, built exactly from its own go.mod (module-aware `go install pkg@version`)
    _log(f"compiling kwok {versions.kwok} ...")
    kwok_env = env | {"GOBIN": str(out), "GOFLAGS": ""}
    _run(
        [
            go,
            "install",
            "-trimpath",
            "-ldflags",
            f"-s -w -X sigs.k8s.io/kwok/pkg/consts.Version={versions.kwok}",
            f"sigs.k8s.io/kwok/cmd/kwok@{versions.kwok}",
        ],
        root,
        kwok_env,
        "build kwok",
    )
    missing = [b for b in BINARIES if not os.access(out / b, os.X_OK)]
    if missing:
        raise BuildError(f"build finished but binaries are missing: {', '.join(missing)}")
    elapsed = time.monotonic() - t_start
    stamp = versions.stamp() | {
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "build_seconds": round(elapsed),
        "go": subprocess.run([go, "version"], capture_output=True, text=True).stdout.strip(),
    }
    _stamp_path(versions).write_text(json.dumps(stamp, indent=2) + "\n")
    _log(f"all binaries built in {elapsed / 60:.1f} min: {out}")
    return out


def kwok_module_dir(versions: Versions | None = None) -> Path | None:
    """The kwok module source in GOMODCACHE (for reference stages), if downloaded."""
    versions = versions or Versions()
    try:
        modcache = subprocess.run([_go(), "env", "GOMODCACHE"], capture_output=True, text=True).stdout.strip()
    except BuildError:
        return None
    p = Path(modcache) / f"sigs.k8s.io/kwok@{versions.kwok}"
    return p if p.is_dir() else None
