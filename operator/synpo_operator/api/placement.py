"""Placement of stage pods beyond nodeSelector and tolerations: Kubernetes affinity and image pull Secrets.

The affinity types are the Pod spec's own (same field names and meaning), typed so that the API server checks
them at apply time (operators, weights, sizes) and a run cannot smuggle any other pod field through them. They
are passed through to every stage pod unchanged.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, model_validator

from .common import ApiModel, DnsLabel, DnsSubdomain, LabelKey, LabelValue, NodeSelector

SecretName = DnsSubdomain
"""A Secret's name."""


_SET_RULES = [
    {"rule": "!(self.operator in ['In', 'NotIn']) || size(self.values) > 0",
     "message": "operators In and NotIn need at least one value"},
    {"rule": "!(self.operator in ['Exists', 'DoesNotExist']) || size(self.values) == 0",
     "message": "operators Exists and DoesNotExist take no values"},
]
"""The same rules as the models' validators, at apply time."""


def _check_set_values(operator: str, values: list[str]) -> None:
    """The rule node and label selector requirements share: In/NotIn need values, Exists/DoesNotExist take none."""
    if operator in ("In", "NotIn") and not values:
        raise ValueError(f"operator {operator} needs at least one value")
    if operator in ("Exists", "DoesNotExist") and values:
        raise ValueError(f"operator {operator} takes no values")


class NodeSelectorRequirement(ApiModel):
    """A node label (or field) and the values it must (not) have."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        *_SET_RULES, {"rule": "!(self.operator in ['Gt', 'Lt']) || size(self.values) == 1",
                      "message": "operators Gt and Lt need exactly one integer value"}]})

    key: LabelKey
    """The label key (for matchFields: metadata.name)."""
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]
    """In, NotIn, Exists, DoesNotExist, Gt or Lt."""
    values: list[Annotated[str, Field(max_length=253)]] = Field(default_factory=list, max_length=64)
    """Values for In and NotIn (one or more), Gt and Lt (exactly one integer); empty for Exists and DoesNotExist."""

    @model_validator(mode="after")
    def _values_fit_operator(self) -> NodeSelectorRequirement:
        _check_set_values(self.operator, self.values)
        if self.operator in ("Gt", "Lt") and (len(self.values) != 1 or not self.values[0].lstrip("-").isdigit()):
            raise ValueError(f"operator {self.operator} needs exactly one integer value")
        return self


class NodeSelectorTerm(ApiModel):
    """Requirements that must all hold (ANDed)."""

    match_expressions: list[NodeSelectorRequirement] = Field(default_factory=list, max_length=32)
    """Requirements on node labels."""
    match_fields: list[NodeSelectorRequirement] = Field(default_factory=list, max_length=8)
    """Requirements on node fields (metadata.name)."""


class RequiredNodeSelector(ApiModel):
    """Terms of which at least one must match (ORed)."""

    node_selector_terms: list[NodeSelectorTerm] = Field(min_length=1, max_length=16)
    """The terms; a node matching any of them is eligible."""


class PreferredSchedulingTerm(ApiModel):
    """A weighted preference for nodes matching a term."""

    weight: int = Field(ge=1, le=100)
    """1-100: added to a node's score when it matches."""
    preference: NodeSelectorTerm
    """The nodes preferred."""


class NodeAffinity(ApiModel):
    """Which nodes stage pods may (required) or should (preferred) run on."""

    required_during_scheduling_ignored_during_execution: RequiredNodeSelector | None = None
    """Hard requirement: a pod is only scheduled on a matching node."""
    preferred_during_scheduling_ignored_during_execution: list[PreferredSchedulingTerm] = Field(
        default_factory=list, max_length=16)
    """Soft preferences."""


class LabelSelectorRequirement(ApiModel):
    """A pod label and the values it must (not) have."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": _SET_RULES})

    key: LabelKey
    """The label key."""
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    """In, NotIn, Exists or DoesNotExist."""
    values: list[LabelValue] = Field(default_factory=list, max_length=64)
    """Values for In and NotIn; empty for Exists and DoesNotExist."""

    @model_validator(mode="after")
    def _values_fit_operator(self) -> LabelSelectorRequirement:
        _check_set_values(self.operator, self.values)
        return self


class LabelSelector(ApiModel):
    """Selects pods by label (e.g. synpo.dev/run and synpo.dev/stage-key: the shards of one stage)."""

    match_labels: NodeSelector = Field(default_factory=dict)
    """Labels that must all be present with these values."""
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list, max_length=16)
    """Requirements that must all hold."""


class PodAffinityTerm(ApiModel):
    """Pods matching `labelSelector` in the run's namespace (or `namespaces`), on nodes sharing `topologyKey`."""

    label_selector: LabelSelector
    """The pods this term is about."""
    topology_key: LabelKey
    """The node label that defines "the same place", e.g. kubernetes.io/hostname or topology.kubernetes.io/zone."""
    namespaces: list[DnsLabel] = Field(default_factory=list, max_length=16)
    """Namespaces of those pods (empty: the run's)."""


class WeightedPodAffinityTerm(ApiModel):
    """A weighted soft pod (anti-)affinity."""

    weight: int = Field(ge=1, le=100)
    """1-100: added to a node's score when the term holds there."""
    pod_affinity_term: PodAffinityTerm
    """The term."""


class PodAffinity(ApiModel):
    """Co-location (podAffinity) or spreading (podAntiAffinity) with respect to other pods."""

    required_during_scheduling_ignored_during_execution: list[PodAffinityTerm] = Field(
        default_factory=list, max_length=16)
    """Hard terms."""
    preferred_during_scheduling_ignored_during_execution: list[WeightedPodAffinityTerm] = Field(
        default_factory=list, max_length=16)
    """Soft terms."""


class Affinity(ApiModel):
    """The Pod spec's affinity, passed through to every stage pod."""

    node_affinity: NodeAffinity | None = None
    """Constraints on nodes (e.g. a GPU model via nvidia.com/gpu.product In [...])."""
    pod_affinity: PodAffinity | None = None
    """Run near other pods."""
    pod_anti_affinity: PodAffinity | None = None
    """Run away from other pods (e.g. spread generation shards: labelSelector on synpo.dev/stage-key,
    topologyKey kubernetes.io/hostname)."""
