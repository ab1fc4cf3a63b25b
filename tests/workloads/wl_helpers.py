"""Helpers of the workloads tests: a tiny random-initialised Llama with a locally trained tokenizer.

The tokenizer is a byte-level BPE (vocab ~1k) trained on the shipped data, with ChatML special tokens and a
chat template, so the model stays tiny (hidden 64, 2 layers) and fast on 2 CPU cores. The SynPO tags are
single (non-special) tokens, so the tiny generator can learn the tagged format in a few steps.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from synpo_operator.api.run import SynPORunSpec
from synpo_operator.plan.graph import stage_graph
from synpo_operator.plan.stage_config import stage_config

# This machine sets PYTHONDONTWRITEBYTECODE=1 and site-packages holds no .pyc files, so every process would
# recompile transformers/trl/peft (~20-30 s). Bytecode goes to a cache outside the tree instead; subprocesses
# inherit it through PYTHONPYCACHEPREFIX.
os.environ.setdefault("PYTHONPYCACHEPREFIX", str(Path.home() / ".cache" / "synpo-test" / "pycache"))
sys.pycache_prefix = os.environ["PYTHONPYCACHEPREFIX"]
sys.dont_write_bytecode = False
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
os.environ.setdefault("OMP_NUM_THREADS", "1")  # tiny models: one thread each beats contention on 2 shared cores
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("SYNPO_CACHE", str(Path.home() / ".cache" / "synpo-test"))

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "workloads" / "synpo_workloads" / "data"
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _texts() -> list[str]:
    out = []
    for name in ("seed.jsonl", "corpus.jsonl", "eval.jsonl"):
        for line in (DATA / name).read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                out.extend(v for v in row.values() if isinstance(v, str))
    return out


def build_tiny_model(target: Path, vocab_size: int = 1024, *, head_dim: int = 16, begin_of_text: bool = False) -> Path:
    """head_dim 16 (4 heads of a hidden size of 64) unless given: vLLM's CPU attention needs 32 or more.
    begin_of_text: a Llama-3-style tokenizer, whose BOS `<|begin_of_text|>` both the chat template and
    plain tokenisation (add_special_tokens) put first."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + (["<|begin_of_text|>"] if begin_of_text else [])
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(_texts(), trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bos = "<|begin_of_text|>" if begin_of_text else "<|im_start|>"
    if begin_of_text:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.add_tokens(["<question>", "</question>", "<solution>", "</solution>"])
    fast.chat_template = ("{{ bos_token }}" if begin_of_text else "") + CHAT_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=head_dim, max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
                         pad_token_id=fast.pad_token_id)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = fast.eos_token_id
    model.generation_config.pad_token_id = fast.pad_token_id
    model.save_pretrained(target)
    fast.save_pretrained(target)
    return target


def tiny_spec(model: str, storage: str, **overrides) -> dict:
    """A SynPORun spec (camelCase) sized for the tiny model: seconds per stage on 2 cores."""
    spec = {
        "model": {"base": model, "dtype": "float32"},
        "data": {"seed": "builtin:seed.jsonl", "corpus": "builtin:corpus.jsonl", "eval": "builtin:eval.jsonl"},
        "iterations": 2,
        "promptsPerIteration": 12,
        "pairsPerIteration": 4,
        "randomSeed": 7,
        "generation": {"engine": "transformers", "temperature": 0.7, "topP": 0.95, "maxNewTokens": 24,
                       "batchSize": 16, "shards": 1},
        "promptGenerator": {"epochs": 2, "learningRate": 5e-3, "batchSize": 16, "maxLength": 128},
        "improver": {"epochs": 1, "learningRate": 1e-3, "batchSize": 8, "maxLength": 192, "maxSeedExamples": 16},
        "filter": {"scorer": {"type": "similarity"}, "minMargin": -1.0, "maxRepetition": 0.9},
        "training": {"loss": "simpo", "beta": 2.0, "gamma": 0.5, "learningRate": 1e-3, "epochs": 1,
                     "batchSize": 4, "maxLength": 128},
        "evaluation": {"judges": [{"type": "similarity"}], "maxPrompts": 6},
        "storage": {"uri": storage},
        "resources": {"gpusPerPod": 0},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = copy.deepcopy(value)
    return spec


# ---- driving the stage graph the way an executor would (plan.stage_graph + plan.stage_config)


def stage_configs(spec: dict, storage_root: str, run: str = "test", namespace: str = "default"):
    """(node, config) for every stage of the run, in execution order."""
    parsed = SynPORunSpec.model_validate(spec)
    for node in stage_graph(parsed):
        yield node, stage_config(parsed, node, namespace=namespace, run=run, storage_root=storage_root)


def run_in_process(node, config, timings: dict | None = None) -> list[dict]:
    import time

    from synpo_workloads.runtime import run_stage

    started = time.time()
    results = [run_stage(node.id.name, config, shard) for shard in range(node.shards)]
    if timings is not None:
        timings[node.key] = round(time.time() - started, 1)
    return results


def run_subprocess(stage: str, config: dict, workdir: Path, shard: int = 0, env: dict | None = None,
                   timeout: float = 600) -> subprocess.CompletedProcess:
    path = workdir / f"{config.get('iteration', 0)}-{stage}-config.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(
        [str(REPO / "workloads"), str(REPO / "operator"), os.environ.get("PYTHONPATH", "")]), **(env or {})}
    return subprocess.run([sys.executable, "-m", "synpo_workloads", stage, "--config", str(path), "--shard",
                           str(shard)], capture_output=True, text=True, env=full_env, timeout=timeout)


def run_graph(spec: dict, storage_root: str, *, stop_after: str | None = None, timings: dict | None = None):
    """Run every stage in order (in-process); stop after the stage with key `stop_after` (e.g. "i1-pairs")."""
    out = {}
    for node, config in stage_configs(spec, storage_root):
        out[node.key] = (node, config, run_in_process(node, config, timings))
        if node.key == stop_after:
            break
    return out


def run_attempt(executor, node, attempt: int, timeout: float = 600):
    """Start one attempt of `node` on a LocalExecutor and wait until it is no longer running; its record."""
    from synpo_operator.plan.planner import StagePhase, Start

    assert executor.start([Start(node, attempt)]) == [True]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = executor.records()[node.key]
        if record.state.phase != StagePhase.RUNNING:
            return record
        executor.wait(2)
    executor.stop()
    raise AssertionError(f"{node.key} still running after {timeout}s")
