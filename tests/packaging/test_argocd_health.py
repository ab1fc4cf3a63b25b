"""The Argo CD health checks (argocd/health/*.lua), run through a real Lua interpreter (lupa) the way Argo CD
runs them: the live object as the global `obj`, the script's return value a {status, message} table."""

from __future__ import annotations

import copy

import lupa  # dev extra: a missing lupa is an error, not a skip
import pytest
import yaml
from chart_helpers import ROOT

HEALTH = ROOT / "argocd" / "health"
ARGO_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}


def health(kind: str, obj: dict) -> tuple[str, str]:
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    script = (HEALTH / f"synpo.dev_{kind}.lua").read_text()
    result = lua.execute(script)
    assert result is not None, "the health script must return a table"
    status, message = result["status"], result["message"]
    assert status in ARGO_STATUSES
    assert isinstance(message, str) and message
    return status, message


def cond(ctype: str, status: str, reason: str = "", message: str = "", generation: int = 3) -> dict:
    return {"type": ctype, "status": status, "reason": reason, "message": message,
            "observedGeneration": generation, "lastTransitionTime": "2025-01-01T00:00:00Z"}


RUN = {
    "apiVersion": "synpo.dev/v1alpha1",
    "kind": "SynPORun",
    "metadata": {"name": "llama3-synpo", "namespace": "alignment", "generation": 3},
    "spec": {"model": {"base": "meta-llama/Meta-Llama-3-8B"}, "iterations": 4, "suspend": False},
}


def run(status: dict | None, **meta) -> dict:
    obj = copy.deepcopy(RUN)
    obj["metadata"].update(meta)
    if status is not None:
        obj["status"] = status
    return obj


# ---- SynPORun ---------------------------------------------------------------------------------------------
def test_run_without_status_is_progressing():
    assert health("SynPORun", run(None))[0] == "Progressing"


def test_run_with_empty_status_is_progressing():
    assert health("SynPORun", run({}))[0] == "Progressing"


def test_run_pending():
    status, message = health("SynPORun", run({
        "observedGeneration": 3, "phase": "Pending",
        "conditions": [cond("Ready", "False", "Queued", "waiting for Kueue admission in queue team-a")],
    }))
    assert status == "Progressing"
    assert "Kueue" in message


def test_run_running_names_iteration_and_stage():
    status, message = health("SynPORun", run({
        "observedGeneration": 3, "phase": "Running", "iteration": 2, "stage": "refine",
        "conditions": [cond("Ready", "False", "StageRunning", "i2-refine running")],
    }))
    assert status == "Progressing"
    assert "iteration 2/4" in message and "refine" in message


def test_run_succeeded_is_healthy():
    status, message = health("SynPORun", run({
        "observedGeneration": 3, "phase": "Succeeded", "iteration": 4, "latestWinRate": 0.31,
        "conditions": [cond("Ready", "True", "Succeeded", ""), cond("Succeeded", "True", "AllIterationsDone",
                                                                    "4 iterations done")],
    }))
    assert status == "Healthy"
    assert "4 iterations done" in message and "0.31" in message


def test_run_failed_is_degraded_with_the_failed_condition_message():
    status, message = health("SynPORun", run({
        "observedGeneration": 3, "phase": "Failed", "iteration": 1, "stage": "pairs",
        "conditions": [
            cond("Ready", "False", "StageFailed", "see Failed"),
            cond("Failed", "True", "StageFailed", "stage i1-pairs exited with code 2 (bad input): seed.jsonl row 7"),
        ],
    }))
    assert status == "Degraded"
    assert message == "StageFailed: stage i1-pairs exited with code 2 (bad input): seed.jsonl row 7"


def test_run_failed_falls_back_to_the_ready_condition():
    status, message = health("SynPORun", run({
        "observedGeneration": 3, "phase": "Failed",
        "conditions": [cond("Ready", "False", "InvalidSpec", "spec.data.seed: no such file")],
    }))
    assert (status, message) == ("Degraded", "InvalidSpec: spec.data.seed: no such file")


def test_run_failed_without_conditions_still_says_failed():
    assert health("SynPORun", run({"observedGeneration": 3, "phase": "Failed"})) == ("Degraded", "Run failed")


def test_run_suspended():
    obj = run({"observedGeneration": 3, "phase": "Suspended",
               "conditions": [cond("Suspended", "True", "SuspendedBySpec", "spec.suspend is true")]})
    obj["spec"]["suspend"] = True
    status, message = health("SynPORun", obj)
    assert status == "Suspended"
    assert "spec.suspend" in message


@pytest.mark.parametrize("phase", ["Pending", "Running", "Succeeded", "Failed", "Suspended"])
def test_run_with_stale_observed_generation_is_progressing(phase):
    status, message = health("SynPORun", run({"observedGeneration": 2, "phase": phase}, generation=3))
    assert status == "Progressing"
    assert "generation 3" in message and "observed: 2" in message


def test_run_with_status_but_no_observed_generation_is_progressing():
    assert health("SynPORun", run({"phase": "Succeeded"}))[0] == "Progressing"


def test_run_unknown_future_phase_is_progressing_not_an_error():
    assert health("SynPORun", run({"observedGeneration": 3, "phase": "Terminating"}))[0] == "Progressing"


# ---- SynPOSchedule ----------------------------------------------------------------------------------------
SCHEDULE = {
    "apiVersion": "synpo.dev/v1alpha1",
    "kind": "SynPOSchedule",
    "metadata": {"name": "weekly", "namespace": "alignment", "generation": 5},
    "spec": {"schedule": "0 2 * * 0", "suspend": False, "runTemplate": {"spec": {}}},
}


def schedule(status: dict | None, suspend: bool = False, **meta) -> dict:
    obj = copy.deepcopy(SCHEDULE)
    obj["metadata"].update(meta)
    obj["spec"]["suspend"] = suspend
    if status is not None:
        obj["status"] = status
    return obj


def test_schedule_without_status_is_progressing():
    assert health("SynPOSchedule", schedule(None))[0] == "Progressing"


def test_schedule_active_is_healthy():
    status, message = health("SynPOSchedule", schedule({
        "observedGeneration": 5, "active": ["weekly-29000000"], "lastScheduleTime": "2025-01-05T02:00:00Z",
        "promoted": {"model": "pvc://ws/alignment/weekly-28990000/iter-4/train/model", "run": "weekly-28990000"},
        "conditions": [cond("Ready", "True", "Scheduled", "next run 2025-01-12T02:00:00Z", 5)],
    }))
    assert status == "Healthy"
    assert "1 active run" in message and "2025-01-05T02:00:00Z" in message and "weekly-28990000" in message


def test_schedule_observed_without_conditions_is_healthy():
    assert health("SynPOSchedule", schedule({"observedGeneration": 5}))[0] == "Healthy"


def test_schedule_suspended():
    status, message = health("SynPOSchedule", schedule({"observedGeneration": 5, "active": []}, suspend=True))
    assert status == "Suspended"
    assert "spec.suspend" in message


def test_schedule_failing_is_degraded_with_the_ready_message():
    status, message = health("SynPOSchedule", schedule({
        "observedGeneration": 5,
        "conditions": [cond("Ready", "False", "InvalidSchedule", "spec.timeZone: unknown time zone Mars/Base", 5)],
    }))
    assert (status, message) == ("Degraded", "InvalidSchedule: spec.timeZone: unknown time zone Mars/Base")


def test_schedule_ready_unknown_is_progressing():
    status, _ = health("SynPOSchedule", schedule({
        "observedGeneration": 5, "conditions": [cond("Ready", "Unknown", "Starting", "", 5)]}))
    assert status == "Progressing"


def test_schedule_with_stale_observed_generation_is_progressing():
    obj = schedule({"observedGeneration": 4, "conditions": [cond("Ready", "True", "Scheduled", "", 4)]}, suspend=True)
    status, message = health("SynPOSchedule", obj)
    assert status == "Progressing"
    assert "generation 5" in message


# ---- the statuses the operator can really write are accepted by the CRD schema -----------------------------
def test_recorded_run_statuses_match_the_crd_schema():
    import jsonschema

    crd = yaml.safe_load((ROOT / "crds" / "synporuns.synpo.dev.yaml").read_text())
    status_schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    for phase in ["Pending", "Running", "Succeeded", "Failed", "Suspended"]:
        jsonschema.validate({"observedGeneration": 1, "phase": phase, "iteration": 1, "stage": "train",
                             "conditions": [cond("Ready", "False", "StageRunning", "x")]}, status_schema)


# ---- argocd-cm-patch.yaml carries exactly these scripts ----------------------------------------------------
def test_argocd_cm_patch_embeds_the_health_scripts_verbatim():
    patch = yaml.safe_load((ROOT / "argocd" / "argocd-cm-patch.yaml").read_text())
    assert patch["kind"] == "ConfigMap" and patch["metadata"]["name"] == "argocd-cm"
    for kind in ("SynPORun", "SynPOSchedule"):
        key = f"resource.customizations.health.synpo.dev_{kind}"
        assert patch["data"][key] == (HEALTH / f"synpo.dev_{kind}.lua").read_text(), key


def test_example_application_points_at_the_chart():
    apps = list(yaml.safe_load_all((ROOT / "argocd" / "application.yaml").read_text()))
    chart_app = next(a for a in apps if a["metadata"]["name"] == "synpo-operator")
    assert (ROOT / chart_app["spec"]["source"]["path"] / "Chart.yaml").is_file()
    for app in apps:
        assert app["kind"] == "Application"
        assert "ignoreDifferences" not in app["spec"], "the operator never writes spec: no ignoreDifferences"


# ---- a stuck stage (the StageStuck condition) --------------------------------------------------------------
@pytest.mark.parametrize("phase", ["Pending", "Running"])
def test_a_stuck_stage_is_degraded_with_its_reason_and_message(phase):
    status, message = health("SynPORun", run({
        "observedGeneration": 3, "phase": phase, "iteration": 1, "stage": "prompts",
        "conditions": [cond("Ready", "False", "StageRunning", "i1-prompts running"),
                       cond("StageStuck", "True", "ImagePullFailed",
                            "stage i1-prompts: pod i1-prompts-0: ErrImagePull: registry.example/synpo:1 not found")],
    }))
    assert status == "Degraded"
    assert message == ("Stage stuck: ImagePullFailed: stage i1-prompts: pod i1-prompts-0: ErrImagePull: "
                       "registry.example/synpo:1 not found")


def test_a_stage_waiting_for_resources_or_no_longer_stuck_is_progressing():
    waiting = health("SynPORun", run({"observedGeneration": 3, "phase": "Running", "conditions": [
        cond("StageStuck", "True", "WaitingForResources", "stage i1-train waits for 8 GPUs")]}))
    assert waiting == ("Progressing", "Stage stuck: WaitingForResources: stage i1-train waits for 8 GPUs")
    cleared = health("SynPORun", run({"observedGeneration": 3, "phase": "Running", "iteration": 1,
                                      "stage": "prompts", "conditions": [cond("StageStuck", "False", "NotStuck")]}))
    assert cleared[0] == "Progressing" and "iteration 1/4" in cleared[1]
    # a finished run's verdict wins over a stale StageStuck
    done = health("SynPORun", run({"observedGeneration": 3, "phase": "Failed", "conditions": [
        cond("StageStuck", "True", "Unschedulable", "x"), cond("Failed", "True", "StageFailed", "stuck too long")]}))
    assert done == ("Degraded", "StageFailed: stuck too long")
