"""Runs that a GitOps tool (or Helm) keeps in the cluster: the TTL must not delete them.

Argo CD with `selfHeal` (and Flux, and the next `helm upgrade`) re-creates an object of its desired state that
has gone from the cluster: a run the TTL deleted would come back as a new run, with no status, and start its
stages again only to find its work done. No Argo CD sync option or annotation prevents that re-creation
(`Prune=false` and `Delete=false` are about deleting, `IgnoreExtraneous` about objects not in Git), so the
operator itself leaves such runs alone: `ttlSecondsAfterFinished` deletes only runs nothing re-creates — those a
SynPOSchedule created (its children, never tracked by Argo CD) and runs applied by hand. A tracked run stays,
finished, until its file leaves Git (and the Application prunes it). docs/gitops.md.
"""

from __future__ import annotations

from typing import Any

ARGOCD_TRACKING_ANNOTATION = "argocd.argoproj.io/tracking-id"
"""Argo CD's annotation tracking (the default from Argo CD 3.0)."""
INSTANCE_LABEL = "app.kubernetes.io/instance"
"""Argo CD's label tracking (the default before 3.0), and Helm's release label."""
FLUX_LABELS = ("kustomize.toolkit.fluxcd.io/name", "helm.toolkit.fluxcd.io/name")


def kept_by(body: dict[str, Any]) -> str | None:
    """What would re-create the run if it were deleted (e.g. "Argo CD (annotation argocd.argoproj.io/tracking-id)"),
    or None: a schedule's run, or one nothing tracks."""
    meta = body.get("metadata") or {}
    if any(ref.get("kind") == "SynPOSchedule" and ref.get("controller") for ref in meta.get("ownerReferences") or []):
        return None  # its schedule created it and deletes it (TTL, history limits); nothing re-creates it
    annotations, labels = meta.get("annotations") or {}, meta.get("labels") or {}
    if annotations.get(ARGOCD_TRACKING_ANNOTATION):
        return f"Argo CD (annotation {ARGOCD_TRACKING_ANNOTATION})"
    for label in FLUX_LABELS:
        if labels.get(label):
            return f"Flux (label {label})"
    if labels.get(INSTANCE_LABEL):
        return f"Argo CD or Helm (label {INSTANCE_LABEL})"
    return None
