"""Kopf wiring, the only kopf import: startup (informers, leader election), cleanup, the probes, and the
SynPOSchedule handlers (create/update/resume, a timer, deletion) that call the ScheduleController.
SynPORuns do not go through Kopf (see runs.py)."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from ..api.common import GROUP, VERSION
from ..kube import SCHEDULE_PLURAL
from .app import Operator
from .leader import LeaderElector
from .settings import Settings

FINALIZER = "synpo.dev/finalizer"
log = logging.getLogger("synpo.operator")


def registry(op: Operator) -> kopf.OperatorRegistry:
    """The handlers of one operator process, bound to `op` (no module state)."""
    reg = kopf.OperatorRegistry()
    settings = op.settings
    elector: dict[str, LeaderElector] = {}

    @kopf.on.startup(registry=reg)
    def configure(**kwargs: Any) -> None:
        settings_: kopf.OperatorSettings = kwargs["settings"]
        settings_.persistence.finalizer = FINALIZER  # SynPOSchedules only: runs have no kopf handlers
        settings_.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="synpo.dev")
        settings_.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="synpo.dev")
        settings_.posting.level = logging.WARNING  # kopf's own log lines become Events only when they matter
        settings_.execution.max_workers = 4
        settings_.watching.server_timeout = 300
        settings_.watching.client_timeout = 330
        settings_.watching.connect_timeout = 30
        settings_.networking.request_timeout = 60
        op.start()
        if not settings.leader_election:
            op.lead()
            return

        elector["it"] = LeaderElector(name=settings.lease_name, namespace=settings.lease_namespace,
                                      identity=settings.identity, lease_seconds=settings.lease_seconds,
                                      renew_seconds=settings.renew_seconds, on_started=op.lead,
                                      on_lost=op.follow)
        elector["it"].start()
        log.info("%s waits for lease %s/%s", settings.identity, settings.lease_namespace, settings.lease_name)

    @kopf.on.login(registry=reg)
    def login(**kwargs: Any) -> Any:
        """The kubernetes client's configuration (in-cluster or $KUBECONFIG), as kopf's default registry does."""
        return kopf.login_via_client(**kwargs)

    @kopf.on.cleanup(registry=reg)
    def shutdown(**_: Any) -> None:
        op.stop()
        if "it" in elector:
            elector["it"].release()

    @kopf.on.probe(id="runQueue", registry=reg)
    def queued_runs(**_: Any) -> int:
        """The liveness endpoint reports how many runs wait for a reconcile, and fails (HTTP 500: a permanent
        error ends kopf's probe activity at once) while the run workers are wedged, so the pod is restarted."""
        stalled = op.runs.stalled()
        if stalled:
            log.error("run workers wedged: %s", stalled)
            raise kopf.PermanentError(f"run workers wedged: {stalled}")
        return len(op.runs.queue)

    @kopf.on.resume(GROUP, VERSION, SCHEDULE_PLURAL, registry=reg)
    def schedule_resumed(namespace: str, name: str, **_: Any) -> None:
        op.schedules.trigger(namespace, name, "operator start")

    @kopf.on.create(GROUP, VERSION, SCHEDULE_PLURAL, registry=reg)
    def schedule_created(namespace: str, name: str, **_: Any) -> None:
        op.schedules.trigger(namespace, name, "schedule created")

    @kopf.on.update(GROUP, VERSION, SCHEDULE_PLURAL, registry=reg)
    def schedule_updated(namespace: str, name: str, **_: Any) -> None:
        op.schedules.trigger(namespace, name, "schedule changed")

    @kopf.timer(GROUP, VERSION, SCHEDULE_PLURAL, interval=settings.resync_seconds, sharp=False, registry=reg)
    def schedule_resync(body: Any, namespace: str, name: str, **_: Any) -> None:
        if (body.get("metadata") or {}).get("deletionTimestamp"):
            return
        op.schedules.trigger(namespace, name, "resync")

    @kopf.on.event(GROUP, VERSION, SCHEDULE_PLURAL, registry=reg)
    def schedule_event(type: str | None, namespace: str, name: str, **_: Any) -> None:  # noqa: A002 - kopf's name
        if type == "DELETED":
            op.schedules.forget(namespace, name)

    return reg


def run(settings: Settings) -> None:
    """Run the operator until it is stopped (SIGTERM, SIGINT)."""
    from .. import kube, metrics

    kube.set_rate_limit(settings.kube_qps, settings.kube_burst)
    op = Operator(settings)
    if settings.metrics_port:
        metrics.serve(settings.metrics_port, healthy=lambda: op.runs.stalled() is None, ready=op.ready)
    liveness = f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None
    kopf.run(registry=registry(op), standalone=True, clusterwide=not settings.namespaces,
             namespaces=list(settings.namespaces), liveness_endpoint=liveness)
