"""SynPOSchedule: SynPORuns on a cron schedule, each continuing from the last promoted model.

What CronJob is to Job. Missed-schedule handling follows CronJob: after an outage, at most one run is started
for the missed windows, and only if the latest missed time is within startingDeadlineSeconds (when set).
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, field_validator

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
    """Continual mode: which finished run's model becomes the base of the next run (the promotion gate)."""

    enabled: bool = True
    """Start each run from the last promoted model (the template's model.base until one is promoted)."""
    metric: Literal["winRate", "lcWinRate", "score"] = "winRate"
    """What the gate compares, from the run's last evaluated iteration. winRate and lcWinRate are pairwise
    against the run's own M0, which in continual mode is the promoted model, so they must exceed 0.5;
    score (the first judge's mean score) must exceed the promoted model's score."""
    min_improvement: float = Field(default=0.0, ge=0.0, le=1000.0)
    """The margin by which the new model must beat the promoted one (0.5 + this for win rates)."""


class SynPOScheduleSpec(ApiModel):
    """Desired state of a schedule."""

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
    """The promoted model's mean judge score (the baseline for score-gated promotion)."""
    promoted_at: str | None = None
    """When it was promoted."""


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
    """The gate's last decision, with both scores."""
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
