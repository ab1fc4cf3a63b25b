"""Concurrent-run caps (`--max-active-runs`, `--max-active-runs-per-namespace`): who may start, pure.

A run *holds a slot* from the moment it has started a stage (status.startTime or any status.stages entry)
until it finishes (Succeeded/Failed) or is deleted; suspending a started run keeps its slot. A run that has
not started any stage and is not suspended is *waiting*: waiting runs are admitted oldest first (by
creationTimestamp, then namespace and name), each one if both caps still have room once the active runs and
the runs admitted before it are counted. A run whose namespace is full is skipped, not a blocker: a younger
run in another namespace may start meanwhile.

`CapacityIndex` keeps the slot state of every run the operator watches, fed from run watch events and from
the operator's own decisions (no I/O here); `admit` serialises decisions, so two runs racing for the last
slot never both get it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

SlotState = Literal["active", "waiting", "idle"]
FINISHED = ("Succeeded", "Failed")


@dataclass(frozen=True)
class Caps:
    """The configured caps; None (or 0 from the command line) means unlimited."""

    max_active: int | None = None
    max_per_namespace: int | None = None

    @property
    def limited(self) -> bool:
        return self.max_active is not None or self.max_per_namespace is not None

    @staticmethod
    def parse(total: str | int | None, per_namespace: str | int | None) -> Caps:
        def num(value: str | int | None) -> int | None:
            if value in (None, ""):
                return None
            n = int(value)
            if n < 0:
                raise ValueError(f"a cap must be 0 (unlimited) or positive, got {n}")
            return n or None

        return Caps(num(total), num(per_namespace))


@dataclass(frozen=True)
class RunSlot:
    namespace: str
    name: str
    created: str
    """creationTimestamp (RFC 3339 strings sort chronologically)."""
    state: SlotState
    schedule: str | None = None
    """The owning schedule's name (label synpo.dev/schedule), if any."""
    phase: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


def slot_state(body: Mapping[str, Any]) -> SlotState:
    """active: started and not finished; waiting: not started, not suspended, not finished; idle: the rest."""
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    spec = body.get("spec") or {}
    if meta.get("deletionTimestamp") or status.get("phase") in FINISHED:
        return "idle"
    if status.get("startTime") or status.get("stages"):
        return "active"
    if spec.get("suspend"):
        return "idle"
    return "waiting"


def run_slot(body: Mapping[str, Any]) -> RunSlot:
    meta = body.get("metadata") or {}
    return RunSlot(namespace=meta.get("namespace") or "default", name=meta.get("name") or "",
                   created=meta.get("creationTimestamp") or "", state=slot_state(body),
                   schedule=(meta.get("labels") or {}).get("synpo.dev/schedule"),
                   phase=(body.get("status") or {}).get("phase"))


def _order(slot: RunSlot) -> tuple[str, str, str]:
    # a run without creationTimestamp (not yet stored) sorts last
    return (slot.created or "~", slot.namespace, slot.name)


def admissions(slots: Iterable[RunSlot], caps: Caps) -> set[tuple[str, str]]:
    """The waiting runs that may start now (oldest first, within both caps)."""
    slots = list(slots)
    waiting = sorted((s for s in slots if s.state == "waiting"), key=_order)
    if not caps.limited:
        return {s.key for s in waiting}
    total = sum(1 for s in slots if s.state == "active")
    per_ns: dict[str, int] = {}
    for s in slots:
        if s.state == "active":
            per_ns[s.namespace] = per_ns.get(s.namespace, 0) + 1
    admitted: set[tuple[str, str]] = set()
    for s in waiting:
        if caps.max_active is not None and total >= caps.max_active:
            break
        if caps.max_per_namespace is not None and per_ns.get(s.namespace, 0) >= caps.max_per_namespace:
            continue
        admitted.add(s.key)
        total += 1
        per_ns[s.namespace] = per_ns.get(s.namespace, 0) + 1
    return admitted


def capacity_left(slots: Iterable[RunSlot], namespace: str, caps: Caps) -> int | None:
    """Runs a schedule in `namespace` may still create: the caps minus active *and* waiting runs (a schedule
    never adds to the queue), or None when unlimited."""
    if not caps.limited:
        return None
    busy = [s for s in slots if s.state in ("active", "waiting")]
    left: list[int] = []
    if caps.max_active is not None:
        left.append(caps.max_active - len(busy))
    if caps.max_per_namespace is not None:
        left.append(caps.max_per_namespace - sum(1 for s in busy if s.namespace == namespace))
    return max(0, min(left))


def wait_message(slots: Iterable[RunSlot], run: RunSlot, caps: Caps) -> str:
    """Why `run` waits, with the counts (stable while nothing changes, so status is not rewritten)."""
    slots = list(slots)
    active = [s for s in slots if s.state == "active"]
    ns_active = sum(1 for s in active if s.namespace == run.namespace)
    ahead = sum(1 for s in slots if s.state == "waiting" and _order(s) < _order(run)
                and (caps.max_per_namespace is None or caps.max_active is not None or s.namespace == run.namespace))
    parts = []
    if caps.max_active is not None:
        parts.append(f"{len(active)}/{caps.max_active} runs active (--max-active-runs)")
    if caps.max_per_namespace is not None:
        parts.append(f"{ns_active}/{caps.max_per_namespace} active in namespace {run.namespace} "
                     f"(--max-active-runs-per-namespace)")
    return f"waiting for capacity: {', '.join(parts)}; {ahead} waiting run(s) ahead"


class CapacityIndex:
    """Slot state of every watched run, kept from watch events and from admissions made here.

    An admission is sticky: once this process let a run start, the run holds its slot even if a late watch
    event still shows it unstarted, until an event shows it finished, deleted or suspended-before-start."""

    def __init__(self, caps: Caps | None = None):
        self.caps = caps or Caps()
        self._lock = threading.Lock()
        self._slots: dict[tuple[str, str], RunSlot] = {}
        self._admitted: set[tuple[str, str]] = set()

    def _put(self, slot: RunSlot) -> RunSlot | None:
        old = self._slots.get(slot.key)
        if slot.state == "waiting" and slot.key in self._admitted:
            slot = replace(slot, state="active")
        elif slot.state == "idle":
            self._admitted.discard(slot.key)
        if not slot.created and old is not None:
            slot = replace(slot, created=old.created)
        self._slots[slot.key] = slot
        return old

    def update(self, body: Mapping[str, Any]) -> tuple[RunSlot | None, RunSlot]:
        """Record a run as seen; returns (previous, current)."""
        with self._lock:
            slot = run_slot(body)
            old = self._put(slot)
            return old, self._slots[slot.key]

    def forget(self, namespace: str, name: str) -> RunSlot | None:
        with self._lock:
            self._admitted.discard((namespace, name))
            return self._slots.pop((namespace, name), None)

    def replace_all(self, bodies: Iterable[Mapping[str, Any]]) -> None:
        """Prime the index from a full listing (operator start)."""
        with self._lock:
            for body in bodies:
                self._put(run_slot(body))

    def slots(self) -> list[RunSlot]:
        with self._lock:
            return list(self._slots.values())

    def admit(self, body: Mapping[str, Any]) -> tuple[bool, str]:
        """May this run start its first stage now? (True, "") or (False, why). Admitting reserves the slot."""
        with self._lock:
            slot = run_slot(body)
            self._put(slot)
            slot = self._slots[slot.key]
            if slot.state == "active" or not self.caps.limited:
                return True, ""
            if slot.state == "idle":
                return False, "the run is not waiting to start"
            if slot.key in admissions(self._slots.values(), self.caps):
                self._admitted.add(slot.key)
                self._slots[slot.key] = replace(slot, state="active")
                return True, ""
            return False, wait_message(self._slots.values(), slot, self.caps)

    def capacity_left(self, namespace: str) -> int | None:
        with self._lock:
            return capacity_left(self._slots.values(), namespace, self.caps)

    def admissible(self) -> list[tuple[str, str]]:
        """Waiting runs that would be admitted now (to nudge them when a slot frees up)."""
        with self._lock:
            return sorted(admissions(self._slots.values(), self.caps))
