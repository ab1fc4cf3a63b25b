"""The interface both executors implement, so one reconcile loop drives Jobs and local processes alike."""

from __future__ import annotations

from typing import Any, Protocol

from ..plan.planner import StageState, Start


class Executor(Protocol):
    """Runs the stages of one run. Every method is idempotent: reconcile loops call them again and again."""

    def observe(self) -> dict[str, StageState]:
        """State of every stage started so far, by stage key (`i<t>-<stage>`)."""
        ...

    def start(self, start: Start) -> None:
        """Start a stage (or its retry); a no-op when that attempt already exists."""
        ...

    def results(self) -> dict[str, dict[str, Any]]:
        """Result summaries (rows, pairsKept, winRate, …) of succeeded stages, by stage key."""
        ...

    def stop(self) -> None:
        """Stop every running stage (suspend, deletion); finished stage outputs are kept."""
        ...
