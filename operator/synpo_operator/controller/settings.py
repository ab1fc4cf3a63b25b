"""The operator's settings: built once from the command line (`controller.cli`) and passed to what needs
them; nothing reads them from the environment."""

from __future__ import annotations

import fnmatch
import os
import socket
from dataclasses import dataclass, field

from ..capacity import Caps
from ..kube import DEFAULT_BURST, DEFAULT_QPS


@dataclass(frozen=True)
class Settings:
    executor: str = "jobs"
    """jobs: a Job per stage; local: stages as processes of the operator."""
    namespaces: tuple[str, ...] = ()
    """Watched namespaces (glob patterns allowed); empty: every namespace."""
    resync_seconds: float = 30.0
    """How often runs with time-driven work (and schedules) are looked at without an event."""
    workers: int = 16
    """Reconcile threads."""
    stall_seconds: float = 300.0
    """Liveness fails when a reconcile has run this long, or runs have waited this long with none handed out."""
    caps: Caps = field(default_factory=Caps)
    """Concurrent-run caps."""
    metrics_port: int = 8080
    health_port: int = 8081
    verbose: bool = False
    leader_election: bool = True
    """Only the holder of the Lease reconciles (several replicas: one active, the others on standby)."""
    lease_name: str = "synpo-operator"
    lease_namespace: str = "default"
    lease_seconds: float = 15.0
    """A standby takes over this long after the leader's last renewal."""
    renew_seconds: float = 5.0
    """The leader renews this often (and gives up leading when it could not renew for `lease_seconds`)."""
    kube_qps: float = DEFAULT_QPS
    """Client-side limit of the operator's API requests per second (0: none), after a burst of `kube_burst`."""
    kube_burst: int = DEFAULT_BURST
    identity: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")

    @property
    def scopes(self) -> list[str | None]:
        """Namespaces to start informers in (None: all), one per literal namespace; patterns watch all."""
        if self.namespaces and not any(ch in n for n in self.namespaces for ch in "*?["):
            return list(self.namespaces)
        return [None]

    def watched(self, namespace: str) -> bool:
        return not self.namespaces or any(fnmatch.fnmatch(namespace, p) for p in self.namespaces)
