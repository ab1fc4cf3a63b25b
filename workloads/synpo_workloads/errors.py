"""Errors a user can fix (bad data, bad config, a missing engine): exit code 2 with a one-line message."""

from __future__ import annotations

from synpo_operator.api.results import BAD_INPUT_EXIT_CODE


class UserError(Exception):
    """Bad input the user can fix. `python -m synpo_workloads` prints `str(e)` and exits 2, no traceback."""

    exit_code = BAD_INPUT_EXIT_CODE


class DataError(UserError):
    """A data file that cannot be used: missing, empty, malformed JSONL, missing columns, not UTF-8."""


class ConfigError(UserError):
    """A stage config or spec setting that cannot be honoured (names the field)."""


class ModelError(UserError):
    """A model reference that cannot be resolved (no such directory, package or URI)."""
