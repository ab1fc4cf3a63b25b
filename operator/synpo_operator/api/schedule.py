"""SynPOSchedule: SynPORuns on a cron schedule, each continuing from the last promoted model.

What CronJob is to Job. Missed-schedule handling follows CronJob: after an outage, at most one run is started
for the missed windows, and only if the latest missed time is within startingDeadlineSeconds (when set).
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from .common import AnnotationValue, ApiModel, Condition, LabelKey, LabelValue, ObjectMeta
from .run import SynPORunSpec


class ScheduleMeta(ObjectMeta):
    """Schedule metadata: names are shorter than run names, since run names append "-<minutes>"."""

    name: str = Field(min_length=1, max_length=31, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    """Schedule name: a DNS label of at most 31 characters (created runs are named <schedule>-<minutes>)."""


class RunTemplateMeta(ApiModel):
    """Labels and annotations copied onto every run the schedule creates."""

    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict, max_length=64)
    """Labels for created runs."""
    annotations: dict[str, AnnotationValue] = Field(default_factory=dict, max_length=64)
    """Annotations for created runs."""


class RunTemplate(ApiModel):
    """The run to create at each scheduled time."""

    metadata: RunTemplateMeta = Field(default_factory=RunTemplateMeta)
    """Labels and annotations for created runs."""
    spec: SynPORunSpec
    """The run's spec; in continual mode model.base is replaced by the promoted model."""


class PromotionSpec(ApiModel):
    """Continual mode: which finished run's model becomes the base of the next run (the promotion gate).

    The gate needs evidence, not a point estimate: the lower end of the 95% interval of the metric against the
    run's own M0 (which in continual mode is the promoted model) must exceed 0.5 + minImprovement."""

    enabled: bool = True
    """Start each run from the last promoted model (the template's model.base until one is promoted)."""
    metric: Literal["winRate", "lcWinRate"] = "winRate"
    """What the gate judges, from the first judge's comparison with M0 in the run's last evaluated iteration:
    winRate (95% Wilson interval) or lcWinRate (95% bootstrap interval). A figure against the references or a
    mean score is never used: neither is measured against the model the candidate would replace."""
    # an inclusive bound: the API server checks a whole number such as 0 against an exclusive 0.5 as against 0
    min_improvement: float = Field(default=0.0, ge=0.0, le=0.5)
    """Promote only when the interval's lower end exceeds 0.5 + this (0.5: never)."""


GATE_NEEDS_BASELINE = ("spec.runTemplate.spec.evaluation.baseline must be true when spec.promotion.enabled: the "
                       "promotion gate compares each run with its M0 (the promoted model), which needs M0 evaluated")


class SynPOScheduleSpec(ApiModel):
    """Desired state of a schedule."""

    model_config = ConfigDict(json_schema_extra={
        "x-kubernetes-validations": [{
            "rule": "!has(self.promotion) || !has(self.promotion.enabled) || !self.promotion.enabled "
                    "|| !has(self.runTemplate.spec.evaluation) || !has(self.runTemplate.spec.evaluation.baseline) "
                    "|| self.runTemplate.spec.evaluation.baseline",
            "message": GATE_NEEDS_BASELINE,
        }]
    })

    schedule: str = Field(min_length=9, max_length=128, pattern=r"^\S+( +\S+){4}$")
    """Cron expression (5 fields), e.g. "0 2 * * 0" for Sundays at 02:00."""
    time_zone: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z_]+(/[A-Za-z0-9_+-]+)*$")
    """IANA time zone of the schedule (default: UTC)."""
    concurrency_policy: Literal["Allow", "Forbid", "Replace"] = "Forbid"
    """Allow: runs may overlap; Forbid: skip a time while a run is active; Replace: delete the active run."""
    starting_deadline_seconds: int | None = Field(default=None, ge=1, le=30 * 86_400)
    """A scheduled time missed by more than this is skipped."""
    suspend: bool = False
    """Create no new runs (active runs continue)."""
    successful_runs_history_limit: int = Field(default=3, ge=0, le=100)
    """Finished successful runs to keep."""
    failed_runs_history_limit: int = Field(default=1, ge=0, le=100)
    """Failed runs to keep."""
    promotion: PromotionSpec = Field(default_factory=PromotionSpec)
    """Continual mode and its promotion gate."""
    run_template: RunTemplate
    """The run to create."""

    @field_validator("schedule")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        from croniter import croniter

        if len(value.split()) != 5 or not croniter.is_valid(value):
            raise ValueError(f"{value!r} is not a 5-field cron expression such as '0 2 * * 0'")
        return value

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is None:
            return value
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone such as 'Europe/Berlin'") from None
        return value

    @model_validator(mode="after")
    def _gate_has_its_opponent(self) -> SynPOScheduleSpec:
        if self.promotion.enabled and not self.run_template.spec.evaluation.baseline:
            raise ValueError(GATE_NEEDS_BASELINE)
        return self


class PromotedModel(ApiModel):
    """The model new runs start from."""

    model: str = Field(max_length=2048)
    """Where it is stored."""
    run: str = Field(max_length=63)
    """The run that produced it."""
    metric: str | None = Field(default=None, max_length=32)
    """The metric the gate used."""
    value: float | None = None
    """Its value for the promoted model."""
    score: float | None = None
    """The promoted model's mean judge score (for information; the gate does not use it)."""
    promoted_at: str | None = None
    """When it was promoted."""


class PromotionEvidence(ApiModel):
    """The gate's last decision and the evidence it rested on."""

    run: str = Field(max_length=63)
    """The judged run."""
    promoted: bool
    """Whether its model was promoted."""
    metric: str | None = Field(default=None, max_length=32)
    """winRate or lcWinRate (first judge)."""
    against: str | None = Field(default=None, max_length=2048)
    """The opponent the figure is measured against: the run's M0 (the promoted model in continual mode)."""
    n: int | None = Field(default=None, ge=0)
    """Comparisons behind the figure."""
    value: float | None = None
    """The figure."""
    low: float | None = None
    """Lower end of its 95% interval."""
    high: float | None = None
    """Upper end of its 95% interval."""
    threshold: float | None = None
    """0.5 + minImprovement: what the lower end must exceed."""
    rule: str = Field(max_length=256)
    """The rule applied, in words."""


class SynPOScheduleStatus(ApiModel):
    """Observed state of a schedule, written by the operator only."""

    observed_generation: int | None = None
    """The .metadata.generation last acted on."""
    active: list[str] = Field(default_factory=list, max_length=100)
    """Names of runs that have not finished."""
    last_schedule_time: str | None = None
    """The last time a run was created."""
    last_successful_time: str | None = None
    """When the last run succeeded."""
    promoted: PromotedModel | None = None
    """The current promoted model."""
    last_promotion_decision: str | None = Field(default=None, max_length=1024)
    """The gate's last decision in words: n, the interval and the rule."""
    last_promotion: PromotionEvidence | None = None
    """The gate's last decision, field by field."""
    conditions: list[Condition] = Field(default_factory=list, max_length=16)
    """Ready, Suspended, with reasons."""


class SynPOSchedule(ApiModel):
    """Continual alignment: a SynPORun on a cron schedule, each continuing from the last promoted model."""

    model_config = ConfigDict(json_schema_extra={
        "x-kubernetes-validations": [{
            "rule": "size(self.metadata.name) <= 31",
            "message": "metadata.name must be at most 31 characters (run names append -<minutes>)",
        }]
    })

    api_version: Literal["synpo.dev/v1alpha1"] = "synpo.dev/v1alpha1"
    kind: Literal["SynPOSchedule"] = "SynPOSchedule"
    metadata: ScheduleMeta
    spec: SynPOScheduleSpec
    status: SynPOScheduleStatus | None = None
