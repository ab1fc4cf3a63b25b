"""What a training pod needs for a fast interconnect between nodes (docs/distributed.md, "Interconnect"):
extended resources (RDMA / InfiniBand HCAs, AWS EFA interfaces), pod annotations and labels (Multus secondary
networks), and an opt-in IPC_LOCK capability. NCCL's settings travel in spec.env.

Keys are checked with the Kubernetes syntax at apply time (CEL) and here. Keys under prefixes that Kubernetes,
its SIG projects (Kueue, JobSet) or synpo itself read are refused: a run must not steer admission, security
profiles or the operator's own bookkeeping through them.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field

from .common import LABEL_KEYS_RULE, AnnotationValue, LabelKey, LabelValue, _matching

RESERVED_PREFIX_PATTERN = r"^([^/]*\.)?(kubernetes\.io|k8s\.io|x-k8s\.io|synpo\.dev)/"
"""Prefixes (and their subdomains) a run may not set on its pods: kubernetes.io, k8s.io (core, including
AppArmor/seccomp and Job bookkeeping), x-k8s.io (Kueue, JobSet), synpo.dev (the operator)."""
_RESERVED = re.compile(RESERVED_PREFIX_PATTERN)
_RESERVED_MESSAGE = "is under a reserved prefix (kubernetes.io, k8s.io, x-k8s.io, synpo.dev and their subdomains)"
_RESERVED_RULE = {"rule": f"self.all(k, !k.matches('{RESERVED_PREFIX_PATTERN}'))".replace("\\", "\\\\"),
                  "message": f"a key {_RESERVED_MESSAGE}"}


def _not_reserved(key: str) -> str:
    if _RESERVED.match(key):
        raise ValueError(_RESERVED_MESSAGE)
    return key


_PodMetaKey = Annotated[LabelKey, AfterValidator(_not_reserved)]
_KEY_RULES = {"x-kubernetes-validations": [LABEL_KEYS_RULE, _RESERVED_RULE]}

PodLabels = Annotated[dict[_PodMetaKey, LabelValue], Field(max_length=16, json_schema_extra=_KEY_RULES)]
"""Extra labels of training pods (the stage's own synpo.dev labels always win)."""
PodAnnotations = Annotated[dict[_PodMetaKey, AnnotationValue], Field(max_length=16, json_schema_extra=_KEY_RULES)]
"""Extra annotations of training pods, e.g. k8s.v1.cni.cncf.io/networks for Multus."""

EXTENDED_RESOURCE_PATTERN = (r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*"
                             r"/[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_EXTENDED_RESOURCE_RULE = ("must be an extended resource name: a DNS-subdomain prefix, '/', and a name of at most "
                           "63 letters, digits, '-', '_' or '.' (e.g. rdma/ib, vpc.amazonaws.com/efa)")
_EXTENDED_RULES = {"x-kubernetes-validations": [
    {"rule": f"self.all(k, k.matches('{EXTENDED_RESOURCE_PATTERN}'))".replace("\\", "\\\\"),
     "message": f"every key {_EXTENDED_RESOURCE_RULE}"},
    {"rule": "self.all(k, !k.startsWith('requests.') && !k.matches('^([^/]*[.])?kubernetes[.]io/'))",
     "message": "a key is a Kubernetes-reserved resource name (kubernetes.io/..., requests....)"}]}


def _extended(name: str) -> str:
    if name.startswith("requests.") or re.match(r"^([^/]*\.)?kubernetes\.io/", name):
        raise ValueError("is a Kubernetes-reserved resource name (kubernetes.io/..., requests....), not an "
                         "extended resource")
    return name


_ResourceName = Annotated[str, Field(max_length=253), _matching(EXTENDED_RESOURCE_PATTERN, _EXTENDED_RESOURCE_RULE),
                          AfterValidator(_extended)]
ExtraResources = Annotated[dict[_ResourceName, Annotated[int, Field(ge=1, le=1024)]],
                           Field(max_length=8, json_schema_extra=_EXTENDED_RULES)]
"""Extended resources (whole units) each training pod requests besides its GPUs."""

__all__ = ["ExtraResources", "PodAnnotations", "PodLabels"]
