"""The synpo.dev/v1alpha1 API: pydantic models (the source of truth) and the CRDs generated from them."""

from .common import API_VERSION, GROUP, VERSION
from .run import SynPORun, SynPORunSpec, SynPORunStatus
from .schedule import SynPOSchedule, SynPOScheduleSpec, SynPOScheduleStatus

__all__ = [
    "API_VERSION", "GROUP", "VERSION", "SynPORun", "SynPORunSpec", "SynPORunStatus",
    "SynPOSchedule", "SynPOScheduleSpec", "SynPOScheduleStatus",
]
