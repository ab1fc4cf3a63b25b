"""The pre-flight stage's contract (both packages read it): which spec a pre-flight checked.

A passing pre-flight holds for the spec it checked. `spec_key` names that spec: the hash of every field that
can change what the stages read, call or write. Run-control fields (suspend, deadlines, TTL, retries) are left
out, so suspending and resuming a run never redoes its pre-flight; any other change does.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

SPEC_KEY = "specKey"
"""The pre-flight's result key: `spec_key` of the spec it checked."""

RUN_CONTROL = frozenset({"suspend", "activeDeadlineSeconds", "ttlSecondsAfterFinished", "backoffLimit",
                         "stageDeadlineSeconds", "stuckPodTimeoutSeconds"})
"""Spec fields (camelCase) that change how the run is driven, not what its stages touch."""


def spec_key(spec: Mapping[str, Any]) -> str:
    """12 hex digits naming a spec (camelCase, as `SynPORunSpec.to_api()` gives it) for the pre-flight."""
    body = {k: v for k, v in spec.items() if k not in RUN_CONTROL}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]
