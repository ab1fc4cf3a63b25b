"""The operator's clock. Real time, unless SYNPO_CLOCK_FILE names a file holding an RFC 3339 time:
then that time, re-read on every call, so integration tests move time forward without sleeping."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any


def now() -> datetime:
    path = os.environ.get("SYNPO_CLOCK_FILE")
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read().strip()
            if text:
                moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
                return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        except (OSError, ValueError):
            pass  # a missing or half-written file falls back to real time for this call
    return datetime.now(UTC)


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: Any) -> datetime | None:
    """A datetime from an RFC 3339 string (or a datetime); None for anything unreadable."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not value or not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
