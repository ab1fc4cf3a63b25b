"""Which runs the TTL leaves alone (operator/synpo_operator/gitops.py): those a GitOps tool or Helm would
re-create; the operator's side on a real API server is tests/integration/test_operator.py (ttl tests)."""

from __future__ import annotations

import pytest

from synpo_operator.controller.runs import RunController
from synpo_operator.controller.settings import Settings
from synpo_operator.events import EventPoster
from synpo_operator.gitops import kept_by
from synpo_operator.metrics import Metrics

SCHEDULE_OWNER = {"apiVersion": "synpo.dev/v1alpha1", "kind": "SynPOSchedule", "name": "weekly", "uid": "u",
                  "controller": True}


def body(annotations=None, labels=None, owners=None, ttl=0) -> dict:
    return {"metadata": {"name": "r", "namespace": "ns", "generation": 1, "annotations": annotations or {},
                         "labels": labels or {}, "ownerReferences": owners or []},
            "spec": {"ttlSecondsAfterFinished": ttl},
            "status": {"phase": "Succeeded", "observedGeneration": 1, "completionTime": "2020-01-01T00:00:00Z"}}


@pytest.mark.parametrize("meta, keeper", [
    ({"annotations": {"argocd.argoproj.io/tracking-id": "runs:synpo.dev/SynPORun:ns/r"}},
     "Argo CD (annotation argocd.argoproj.io/tracking-id)"),
    ({"labels": {"app.kubernetes.io/instance": "synpo-runs"}}, "Argo CD or Helm (label app.kubernetes.io/instance)"),
    ({"labels": {"kustomize.toolkit.fluxcd.io/name": "runs"}}, "Flux (label kustomize.toolkit.fluxcd.io/name)"),
    ({}, None),
    ({"labels": {"synpo.dev/schedule": "weekly"}}, None),
    # a schedule's run: the schedule created it and nothing re-creates it, whatever its template copied
    ({"owners": [SCHEDULE_OWNER], "labels": {"app.kubernetes.io/instance": "x"}}, None),
])
def test_kept_by_names_what_would_re_create_the_run(meta, keeper):
    assert kept_by(body(**meta)) == keeper


def test_the_resync_does_not_revisit_a_kept_run_past_its_ttl():
    controller = RunController(Settings(), Metrics(), EventPoster(send=lambda b: None))
    assert controller._resync_wanted(body(), full=False)  # deleted at the next pass
    tracked = body(annotations={"argocd.argoproj.io/tracking-id": "runs:synpo.dev/SynPORun:ns/r"})
    assert not controller._resync_wanted(tracked, full=False)  # not every 30 s for ever
