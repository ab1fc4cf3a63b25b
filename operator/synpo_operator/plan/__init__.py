"""Pure planning: the SynPO stage graph and the decision of what runs next."""

from .executor import Executor, StageRecord
from .graph import STAGES, Artifact, StageId, StageNode, evaluated_iterations, model_artifact, stage_graph
from .planner import Decision, StagePhase, StageState, Start, plan
from .stage_config import artifacts_uri, run_root, stage_config, storage_uri

__all__ = [
    "STAGES", "Artifact", "Decision", "Executor", "StageRecord", "Start", "StageId", "StageNode", "StagePhase", "StageState",
    "artifacts_uri", "evaluated_iterations", "model_artifact", "plan", "run_root", "stage_config", "stage_graph",
    "storage_uri",
]
