"""kwok Stage configuration for the dev cluster's fake nodes (see kwok_stages.yaml)."""

from __future__ import annotations

from pathlib import Path

STAGES_FILE = Path(__file__).resolve().parent / "kwok_stages.yaml"

# Annotation on Node objects that kwok manages (kwok runs with
# --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake).
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_NODE_ANNOTATION_VALUE = "fake"

# Pod annotations understood by the stages.
FAKE_EXIT_CODE = "synpo.dev/fake-exit-code"  # "N": container terminates with N (N != 0 -> pod Failed)
FAKE_TERMINATION_MESSAGE = "synpo.dev/fake-termination-message"  # -> state.terminated.message
FAKE_HOLD = "synpo.dev/fake-hold"  # "true": stay Running until removed or the pod is deleted
FAKE_DURATION = "synpo.dev/fake-duration"  # Go duration ("5s"): time spent Running (default 1s)
FAKE_WAITING_REASON = "synpo.dev/fake-waiting-reason"  # stay Pending, containers waiting with this reason
FAKE_WAITING_MESSAGE = "synpo.dev/fake-waiting-message"  # -> state.waiting.message

ANNOTATIONS = (FAKE_EXIT_CODE, FAKE_TERMINATION_MESSAGE, FAKE_HOLD, FAKE_DURATION, FAKE_WAITING_REASON,
               FAKE_WAITING_MESSAGE)


def stages_yaml() -> str:
    return STAGES_FILE.read_text()


def stage_names() -> list[str]:
    import yaml

    return [d["metadata"]["name"] for d in yaml.safe_load_all(stages_yaml()) if d]
