"""Shared pieces of the API models: camelCase aliases, strictness, and small reusable types."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

GROUP = "synpo.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
JOBSET_API_VERSION = "jobset.x-k8s.io/v1alpha2"
"""The JobSet API (sigs.k8s.io/jobset) the operator creates for training on several nodes."""
KUEUE_API_VERSION = "kueue.x-k8s.io/v1beta2"
"""Kueue's API: the operator reads (watches) its Workloads to say why a queued stage waits."""
STAGE_CONFIG_ANNOTATION = f"{GROUP}/stage-config"
"""Pod-template annotation of a stage Job holding the stage config (projected into the pod as `stage.json`)."""


class ApiModel(BaseModel):
    """Base of every API type: camelCase in YAML, unknown fields rejected, docstrings become descriptions.
    Strict types, as the API server's schema checks them: `iterations: true` or `"4"` is an error, not 1 or 4
    (a whole number is still a valid float)."""

    model_config = ConfigDict(
        strict=True,
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
        validate_default=True,
    )

    def to_api(self) -> dict:
        """The object as it appears in YAML/JSON: camelCase, without unset optional fields."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def _no_traversal(value: str) -> str:
    parts = value.replace("\\", "/").split("/")
    if ".." in parts:
        raise ValueError("must not contain '..' path segments (storage paths cannot escape the run's root)")
    return value


def _matching(pattern: str, what: str) -> AfterValidator:
    """A check that the whole value matches `pattern`, failing with `what` (pydantic would print the regex)."""
    rx = re.compile(pattern)

    def check(value: str) -> str:
        if not rx.fullmatch(value):
            raise ValueError(what)
        return value

    return AfterValidator(check)


def _no_control(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters (NUL, newline, tab, ...)")
    return value


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NO_CONTROL_PATTERN = r"^[^\x00-\x1f\x7f]*$"
"""The same rule at apply time (the CRD's `pattern`, RE2 syntax)."""
_LABEL_NAME = r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)"
LABEL_VALUE_PATTERN = rf"^{_LABEL_NAME}?$"
LABEL_KEY_PATTERN = (r"^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*/)?"
                     + _LABEL_NAME + "$")
_LABEL_VALUE_RULE = ("must be a Kubernetes label value: at most 63 characters: letters, digits, '-', '_' or "
                     "'.', beginning and ending with a letter or digit (or empty)")
_LABEL_KEY_RULE = ("must be a Kubernetes label key: an optional DNS-subdomain prefix and '/', then a name of at "
                   "most 63 letters, digits, '-', '_' or '.', beginning and ending with a letter or digit")
LABEL_KEYS_RULE = {"rule": f"self.all(k, k.matches('{LABEL_KEY_PATTERN}'))".replace("\\", "\\\\"),
                   "message": "every key " + _LABEL_KEY_RULE}
"""CEL for a map of labels (a structural schema cannot constrain map keys otherwise)."""

# A DNS-1123 label: Kubernetes object names derived from these values must stay valid.
DnsLabel = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")]
# A DNS-1123 subdomain short enough to be a label value too: the name of a cluster object (a Kueue
# WorkloadPriorityClass) that is referred to by a label.
_DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
LabelledName = Annotated[str, Field(min_length=1, max_length=63, json_schema_extra={"pattern": _DNS_SUBDOMAIN_PATTERN}),
                         _matching(_DNS_SUBDOMAIN_PATTERN,
                                   "must be a DNS subdomain of at most 63 characters (it is used as a label value): "
                                   "lowercase letters, digits, '-' and '.', beginning and ending with a letter "
                                   "or digit")]
DnsSubdomain = Annotated[str, Field(min_length=1, max_length=253, json_schema_extra={"pattern": _DNS_SUBDOMAIN_PATTERN}),
                         _matching(_DNS_SUBDOMAIN_PATTERN,
                                   "must be a DNS subdomain: at most 253 lowercase letters, digits, '-' and '.', "
                                   "beginning and ending with a letter or digit")]
"""The name of a cluster object such as a PriorityClass or a Secret (the API server checks the pod's reference
to it only when the Job's pods are created, and the Job then fails to create them)."""
# A container image reference, in the grammar of github.com/distribution/reference (IPv6 hosts aside):
# [host[:port]/]path[:tag][@digest]. The kubelet refuses any other (InvalidImageName) only once a pod exists.
_PATH_COMPONENT = r"[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*"
_HOST_PART = r"([a-zA-Z0-9]|[a-zA-Z0-9][-a-zA-Z0-9]*[a-zA-Z0-9])"
_HOST = rf"{_HOST_PART}(\.{_HOST_PART})*(:[0-9]+)?"
IMAGE_PATTERN = (rf"^({_HOST}/)?{_PATH_COMPONENT}(/{_PATH_COMPONENT})*(:[A-Za-z0-9_][-A-Za-z0-9_.]{{0,127}})?"
                 r"(@[A-Za-z][A-Za-z0-9]*([-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$")
ImageRef = Annotated[str, Field(min_length=1, max_length=512, json_schema_extra={"pattern": IMAGE_PATTERN}),
                     _matching(IMAGE_PATTERN, "must be a container image reference, [registry[:port]/]name[:tag]"
                                              "[@sha256:digest], with no whitespace or control characters and a "
                                              "lowercase name")]
# A URI or path without '..' segments.
# The same check at apply time (CEL; RE2 has no lookahead, so the rule negates a match of a '..' segment).
_NO_TRAVERSAL_RULE = {"rule": r"!self.matches('(^|[/\\\\])[.][.]([/\\\\]|$)')",
                      "message": "must not contain '..' path segments (storage paths cannot escape the run's root)"}
SafePath = Annotated[str, Field(min_length=1, max_length=1024,
                                json_schema_extra={"pattern": _NO_CONTROL_PATTERN,
                                                   "x-kubernetes-validations": [_NO_TRAVERSAL_RULE]}),
                     AfterValidator(_no_control), AfterValidator(_no_traversal)]
# Label keys and values (the syntax the API server enforces on objects: checked before any Job is created).
LabelKey = Annotated[str, Field(min_length=1, max_length=317), _matching(LABEL_KEY_PATTERN, _LABEL_KEY_RULE)]
LabelValue = Annotated[str, Field(max_length=63, json_schema_extra={"pattern": LABEL_VALUE_PATTERN}),
                       _matching(LABEL_VALUE_PATTERN, _LABEL_VALUE_RULE)]
NodeSelector = Annotated[dict[LabelKey, LabelValue],
                         Field(max_length=32, json_schema_extra={"x-kubernetes-validations": [LABEL_KEYS_RULE]})]
# Values of annotation maps (Kubernetes bounds them; so do we, for CEL cost and sanity).
AnnotationValue = Annotated[str, Field(max_length=4096)]
# A Kubernetes resource quantity such as "8Gi" or "500m".
Quantity = Annotated[str, Field(max_length=64, pattern=r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$")]


class SecretKeyRef(ApiModel):
    """A key of a Secret in the run's namespace. Secrets are only ever referenced, never copied."""

    name: DnsLabel
    """Name of the Secret."""
    key: str = Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")
    """Key inside the Secret."""


class EnvVar(ApiModel):
    """An environment variable for every stage container: a literal value or a Secret reference."""

    model_config = ConfigDict(json_schema_extra={
        "x-kubernetes-validations": [{
            "rule": "has(self.value) != has(self.secretKeyRef)",
            "message": "set exactly one of value or secretKeyRef",
        }]
    })

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """Variable name."""
    value: str | None = Field(default=None, max_length=4096)
    """Literal value (for non-secret settings only)."""
    secret_key_ref: SecretKeyRef | None = None
    """Take the value from a Secret key."""

    @model_validator(mode="after")
    def _one_source(self) -> EnvVar:
        if (self.value is None) == (self.secret_key_ref is None):
            raise ValueError("set exactly one of value or secretKeyRef")
        return self


class Toleration(ApiModel):
    """A pod toleration (same meaning as in a Pod spec)."""

    key: LabelKey | None = None
    """Taint key (label-key syntax: the API server refuses a Job with any other); unset with operator Exists
    matches all taints."""
    operator: Literal["Exists", "Equal"] = "Equal"
    """Exists or Equal."""
    value: LabelValue | None = None
    """Taint value for operator Equal (label-value syntax)."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to match; empty matches all effects."""
    toleration_seconds: int | None = Field(default=None, ge=0)
    """For NoExecute: how long the pod stays bound after the taint appears."""


class Condition(ApiModel):
    """A standard Kubernetes condition."""

    type: str = Field(max_length=316)
    """Condition type, e.g. Ready, Succeeded, Failed, Suspended."""
    status: Literal["True", "False", "Unknown"]
    """True, False or Unknown."""
    reason: str = Field(default="", max_length=1024)
    """Machine-readable CamelCase reason."""
    message: str = Field(default="", max_length=32768)
    """Human-readable explanation."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The .metadata.generation this condition was computed from."""
    last_transition_time: str | None = None
    """When the status last changed (RFC 3339)."""


class ObjectMeta(ApiModel):
    """The part of metadata the models check (the API server owns the rest)."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=40, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    """Run name: a DNS label of at most 40 characters, so that child Job names stay within 63."""
    namespace: str | None = Field(default=None, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    """Namespace (the operator's default namespace when omitted)."""
    labels: dict[LabelKey, LabelValue] | None = None
    annotations: dict[str, AnnotationValue] | None = None
