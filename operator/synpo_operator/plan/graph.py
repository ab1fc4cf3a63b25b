"""The SynPO stage graph of a run: which stages exist, what each reads and writes, what it waits for.

The pre-flight (iteration 0) comes first and every other stage waits for it: it checks every model, data
source, judge endpoint and the storage without loading weights, so a configuration error fails the run
before any GPU stage starts. Its output is keyed by the spec (api/preflight.spec_key): a changed spec is
checked again, an unchanged one never.

Iteration 0 holds the once-per-run stages (keywords, the prompt generator, the M0 baseline evaluation).
Iteration t = 1..T: prompts → responses (M_{t-1}) and base-responses (M0) → improver R_t → refine →
pairs (accumulated with pairs of t-1) → train (from M0 on all pairs) → evaluate.
In iteration 1 the policy *is* M0, so its responses are the base responses: refine reads those and no
second generation pass runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..api.preflight import spec_key
from ..api.run import SynPORunSpec

PREFLIGHT = "preflight"
KEYWORDS = "keywords"
PROMPT_GENERATOR = "prompt-generator"
PROMPTS = "prompts"
BASE_RESPONSES = "base-responses"
RESPONSES = "responses"
IMPROVER = "improver"
REFINE = "refine"
PAIRS = "pairs"
TRAIN = "train"
EVALUATE = "evaluate"

STAGES = (PREFLIGHT, KEYWORDS, PROMPT_GENERATOR, PROMPTS, BASE_RESPONSES, RESPONSES, IMPROVER, REFINE, PAIRS, TRAIN,
          EVALUATE)
SHARDED = frozenset({BASE_RESPONSES, RESPONSES, REFINE})
"""Stages split by prompt index across `generation.shards` pods (Indexed Jobs)."""


class Artifact(str):
    """A path relative to the run's artifact root (as opposed to a model id or data URI from the spec)."""


@dataclass(frozen=True, order=True)
class StageId:
    iteration: int
    name: str

    @property
    def key(self) -> str:
        """`i<t>-<stage>`: the suffix of the stage's Job name and its key in status."""
        return f"i{self.iteration}-{self.name}"

    @property
    def output(self) -> Artifact:
        return Artifact(f"iter-{self.iteration}/{self.name}")

    @classmethod
    def parse(cls, key: str) -> StageId:
        head, _, name = key.partition("-")
        if not head.startswith("i") or not head[1:].isdigit() or name not in STAGES:
            raise ValueError(f"not a stage key: {key!r}")
        return cls(int(head[1:]), name)


@dataclass(frozen=True)
class StageNode:
    id: StageId
    needs: tuple[StageId, ...]
    """Stages whose outputs this one reads; it starts only after all of them succeeded."""
    inputs: dict[str, Artifact] = field(default_factory=dict)
    """Artifact directories it reads, by role."""
    models: dict[str, str] = field(default_factory=dict)
    """Models it loads, by role: the spec's base model id, or an Artifact (a model trained by this run)."""
    data: dict[str, str] = field(default_factory=dict)
    """Input data files from the spec, by role."""
    shards: int = 1
    gpu: bool = True
    output_dir: Artifact | None = None
    """Where it writes, when not `iter-<t>/<stage>` (the pre-flight's output is keyed by the spec)."""

    @property
    def key(self) -> str:
        return self.id.key

    @property
    def output(self) -> Artifact:
        return self.output_dir or self.id.output


def model_artifact(stage: StageId) -> Artifact:
    """Where a model-producing stage saves its model."""
    return Artifact(f"{stage.output}/model")


def evaluated_iterations(spec: SynPORunSpec) -> list[int]:
    """Iterations whose model is evaluated: every `every`-th, the last always, and M0 when baseline is on."""
    last = spec.iterations
    chosen = [t for t in range(1, last + 1) if t % spec.evaluation.every == 0 or t == last]
    return ([0] if spec.evaluation.baseline else []) + chosen


PREFLIGHT_KEY = StageId(0, PREFLIGHT).key
"""The pre-flight's stage key (`i0-preflight`): its Job name suffix and its key in status."""


def preflight_node(spec: SynPORunSpec) -> StageNode:
    """The pre-flight: reads the whole spec (every model, data file, judge and the storage), on a CPU."""
    sid = StageId(0, PREFLIGHT)
    return StageNode(sid, (), models={"base": spec.model.base},
                     data={"seed": spec.data.seed, "corpus": spec.data.corpus, "eval": spec.data.eval},
                     gpu=False, output_dir=Artifact(f"{sid.output}/{spec_key(spec.to_api())}"))


def stage_graph(spec: SynPORunSpec) -> list[StageNode]:
    """All stages of the run in a valid execution order (each after everything it needs): the pre-flight
    first, and every stage that needs nothing else needs it."""
    preflight = preflight_node(spec)
    return [preflight, *(replace(n, needs=n.needs or (preflight.id,)) for n in _synpo_stages(spec))]


def _synpo_stages(spec: SynPORunSpec) -> list[StageNode]:
    base = spec.model.base
    shards = spec.generation.shards
    keywords = StageId(0, KEYWORDS)
    generator = StageId(0, PROMPT_GENERATOR)
    nodes = [
        StageNode(keywords, (), data={"seed": spec.data.seed, "corpus": spec.data.corpus}, gpu=False),
        StageNode(generator, (keywords,), inputs={"keywords": keywords.output}, models={"base": base}),
    ]
    evaluated = set(evaluated_iterations(spec))
    if 0 in evaluated:
        nodes.append(StageNode(StageId(0, EVALUATE), (), models={"policy": base}, data={"eval": spec.data.eval}))

    for t in range(1, spec.iterations + 1):
        previous_train = StageId(t - 1, TRAIN) if t > 1 else None
        policy = model_artifact(previous_train) if previous_train else base
        prompts = StageId(t, PROMPTS)
        base_responses = StageId(t, BASE_RESPONSES)
        improver = StageId(t, IMPROVER)
        refine = StageId(t, REFINE)
        pairs = StageId(t, PAIRS)
        train = StageId(t, TRAIN)
        nodes.append(StageNode(prompts, (keywords, generator),
                               inputs={"keywords": keywords.output},
                               models={"generator": model_artifact(generator)}))
        nodes.append(StageNode(base_responses, (prompts,), inputs={"prompts": prompts.output},
                               models={"policy": base}, shards=shards))
        if previous_train:
            responses = StageId(t, RESPONSES)
            nodes.append(StageNode(responses, (prompts, previous_train), inputs={"prompts": prompts.output},
                                   models={"policy": policy}, shards=shards))
        else:
            responses = base_responses
        nodes.append(StageNode(improver, (previous_train,) if previous_train else (),
                               models={"base": base, "policy": policy}, data={"seed": spec.data.seed}))
        nodes.append(StageNode(refine, (responses, improver), inputs={"responses": responses.output},
                               models={"improver": model_artifact(improver)}, shards=shards))
        previous_pairs = (StageId(t - 1, PAIRS),) if t > 1 else ()
        nodes.append(StageNode(pairs, (refine, base_responses, *previous_pairs),
                               inputs={"refined": refine.output, "rejected": base_responses.output,
                                       **({"previous": previous_pairs[0].output} if previous_pairs else {})},
                               gpu=spec.filter.scorer.type in ("rewardModel", "pairRM")))
        nodes.append(StageNode(train, (pairs,), inputs={"pairs": pairs.output}, models={"base": base}))
        if t in evaluated:
            baseline = {"baseline": StageId(0, EVALUATE).output} if 0 in evaluated else {}
            nodes.append(StageNode(StageId(t, EVALUATE), (train, *((StageId(0, EVALUATE),) if baseline else ())),
                                   inputs=baseline, models={"policy": model_artifact(train)},
                                   data={"eval": spec.data.eval}))
    return nodes
