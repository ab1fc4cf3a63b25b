"""Pure planning: the SynPO stage graph and the decision of what runs next."""

from .graph import STAGES, Artifact, StageId, StageNode, evaluated_iterations, model_artifact, stage_graph
from .planner import Decision, StagePhase, StageState, Start, plan
from .stage_config import run_root, stage_config

__all__ = [
    "STAGES", "Artifact", "Decision", "Start", "StageId", "StageNode", "StagePhase", "StageState",
    "evaluated_iterations", "model_artifact", "plan", "run_root", "stage_config", "stage_graph",
]
