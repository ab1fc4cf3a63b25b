"""preflight: everything the run's stages will touch, checked before any of them starts, without loading weights
or generating. It runs first, in the stages' own environment (image, env, Secrets, storage credentials).

- every model reference resolves and has the files its role needs: M0 (spec.model.base) its weights, tokenizer
  and chat template (the SFT stages render chats with it); a reward model (spec.filter.scorer, a rewardModel
  judge) its tokenizer and a classification head that is in the checkpoint (read from the safetensors
  index or header, against the head the model class would build: a causal LM has none);
- every data file exists, is readable, and its first records parse with the fields its stage needs;
- every `openai` judge answers one tiny request with its model and key (and says whether it gives logprobs);
- the run's storage takes one small object, written and removed.
Every problem is reported (not only the first), each as `<spec field>: <the cause's own words>`; any problem
exits 2, so the run fails at once with PreflightFailed. Outputs checks.json (each check and its outcome).

`python -m synpo_workloads.stages.preflight --config stage.json` runs the same checks without writing
anything but the storage probe (`synpo plan --preflight`).
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from synpo_operator.api.preflight import SPEC_KEY, spec_key

from .. import data_io, model_files, store
from ..errors import UserError

HEAD_BYTES = 64 << 10
"""How much of a data file is read: its first records are parsed, the rest is the stages' business."""
FIRST_RECORDS = 20
JUDGE_TIMEOUT = 30.0


class PreflightError(UserError):
    """One or more checks failed; the message lists each as `<spec field>: <cause>`."""


Check = tuple[str, str, Callable[[], str]]
"""(spec field, what is checked, the check: returns a note on success, raises on failure)."""


# ---------------------------------------------------------------------------------------------- models
def _causal_lm(ref: str) -> str:
    ckpt = model_files.open_checkpoint(ref)
    if ckpt.gguf:
        return f"{ckpt.where}: GGUF checkpoint (tokenizer and chat template inside)"
    _config(ckpt)
    if not ckpt.weight_files():
        raise UserError(f"{ref}: no weights in {ckpt.where} (no .safetensors, .bin or .gguf file)")
    _tokenizer(ckpt)
    if not _chat_template(ckpt):
        raise UserError(f"{ref}: its tokenizer has no chat template (tokenizer_config.json chat_template or "
                        "chat_template.jinja), which the prompt generator and improver SFT apply")
    return f"{ckpt.where}: weights, tokenizer and chat template present"


def _config(ckpt: model_files.Checkpoint) -> dict[str, Any]:
    if "config.json" not in ckpt.files:
        raise UserError(f"{ckpt.ref}: no config.json in {ckpt.where} (not a model checkpoint)")
    return ckpt.read_json("config.json")


def _tokenizer(ckpt: model_files.Checkpoint) -> None:
    if not any(f in ckpt.files for f in model_files.TOKENIZER_FILES):
        raise UserError(f"{ckpt.ref}: no tokenizer files in {ckpt.where} "
                        f"(none of {', '.join(model_files.TOKENIZER_FILES)})")


def _chat_template(ckpt: model_files.Checkpoint) -> bool:
    if any(f in ckpt.files for f in model_files.CHAT_TEMPLATE_FILES):
        return True
    return "tokenizer_config.json" in ckpt.files and bool(ckpt.read_json("tokenizer_config.json").get("chat_template"))


def _reward_model(ref: str, trust_remote_code: bool, field: str) -> str:
    from ..judges.reward_model import _refuse_pairwise

    ckpt = model_files.open_checkpoint(ref)
    if ckpt.gguf:
        raise UserError(f"{ref}: a GGUF causal-LM checkpoint ({ckpt.where}) has no classification head; a reward "
                        "model is a sequence-classification checkpoint")
    config_doc = _config(ckpt)
    if not ckpt.weight_files():
        raise UserError(f"{ref}: no weights in {ckpt.where}")
    _tokenizer(ckpt)
    if config_doc.get("auto_map") and not trust_remote_code:
        raise UserError(f"{ref} ships its own code (auto_map); set {field}.trustRemoteCode: true to run it "
                        "(only for checkpoints you trust)")
    config = _config_object(config_doc)
    _refuse_pairwise(config, ref, field)
    if config_doc.get("auto_map"):
        return f"{ckpt.where}: custom code (auto_map), trusted; its head is checked when the stage loads it"
    head = _head_weights(config, ref)
    names = ckpt.tensor_names()
    if names is None:
        return f"{ckpt.where}: pickled weights only; head {', '.join(head)} checked when the stage loads it"
    present, where = names
    missing = sorted(h for h in head if h not in present and not any(p.endswith("." + h) for p in present))
    if missing:
        raise UserError(f"{ref}: the weights {', '.join(missing)} are not in the checkpoint ({where}), so "
                        f"{config.architectures[0] if config.architectures else 'it'} loaded for sequence "
                        "classification would score with a randomly initialised head. Is it a causal LM or base "
                        "model rather than a reward model?")
    return f"{ckpt.where}: classification head {', '.join(head)} present ({where})"


def _config_object(doc: dict[str, Any]):
    from transformers import AutoConfig

    doc = {k: v for k, v in doc.items() if k != "auto_map"}
    if "model_type" not in doc:
        raise UserError("config.json has no model_type")
    return AutoConfig.for_model(**doc)


def _head_weights(config, ref: str) -> list[str]:
    """The parameters AutoModelForSequenceClassification adds on top of the base model (its head), from a
    model built on the meta device: no memory, no weights read."""
    import torch
    from transformers import AutoModelForSequenceClassification

    try:
        with torch.device("meta"):
            model = AutoModelForSequenceClassification.from_config(config)
    except (ValueError, KeyError) as e:
        raise UserError(f"{ref}: not a sequence-classification architecture ({e})") from e
    prefix = f"{model.base_model_prefix}."
    return sorted(n for n in model.state_dict() if not n.startswith(prefix))


# ---------------------------------------------------------------------------------------------- data
def _data(ref: str, role: str) -> str:
    raw, whole = _head(data_io.resolve(ref))
    if not whole:  # a partial last line is the cut, not bad data
        raw = raw[: raw.rfind(b"\n") + 1]
    lines = raw.split(b"\n")
    rows = data_io.parse_jsonl(b"\n".join(lines[:FIRST_RECORDS]), ref, data_io.REQUIRED_COLUMNS[role])
    return f"first {len(rows)} record(s) parse with {', '.join(data_io.REQUIRED_COLUMNS[role])}"


def _head(path: str) -> tuple[bytes, bool]:
    """The first HEAD_BYTES of a file, and whether that is all of it."""
    try:
        if store.is_uri(path):
            fs, inner = store._fs(path)
            with fs.open(inner, "rb") as f:
                raw = f.read(HEAD_BYTES + 1)
        else:
            with open(store._local(path), "rb") as f:
                raw = f.read(HEAD_BYTES + 1)
    except FileNotFoundError as e:
        raise UserError(f"{path}: file not found") from e
    except IsADirectoryError as e:
        raise UserError(f"{path}: is a directory, expected a JSONL file") from e
    return raw[:HEAD_BYTES], len(raw) <= HEAD_BYTES


# ---------------------------------------------------------------------------------------------- judges
def judge_key(index: int) -> str | None:
    """The judge's API key as the stage pods get it (executors/manifests.py): its own variable, else the
    first judge's."""
    return os.environ.get(f"SYNPO_JUDGE_{index}_API_KEY") or os.environ.get("SYNPO_JUDGE_API_KEY")


def _ask_judge(endpoint: str, model: str, key: str | None) -> str:
    import openai

    from ..judges.openai_judge import SYSTEM, TEMPLATE, parse_verdict

    client = openai.OpenAI(base_url=endpoint, api_key=key or "none", timeout=JUDGE_TIMEOUT, max_retries=1)
    # one comparison as the judge words it, on an obvious pair
    content = TEMPLATE.format(instruction="Say hello.", a="Hello!", b="The capital of France is Paris.")
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": content}]
    logprobs = True
    try:
        try:
            reply = client.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0,
                                                   logprobs=True, top_logprobs=5)
        except (openai.BadRequestError, openai.UnprocessableEntityError):
            logprobs = False  # the judge asks without logprobs then, and reads the letter
            reply = client.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0)
    except openai.APIConnectionError as e:
        raise _JudgeProblem("endpoint", f"{endpoint} does not answer ({_cause(e)})") from e
    except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
        raise _JudgeProblem("apiKeySecretRef", f"{endpoint} refused the key: HTTP {e.status_code}: "
                                               f"{_api_message(e)}") from e
    except openai.NotFoundError as e:
        raise _JudgeProblem("model", f"{endpoint} has no model {model!r}: HTTP 404: {_api_message(e)}") from e
    except openai.OpenAIError as e:
        raise _JudgeProblem("endpoint", f"{endpoint} (model {model}): {type(e).__name__}: {_api_message(e)}") from e
    choice = reply.choices[0] if reply.choices else None
    text = (choice.message.content or "") if choice else ""
    if not text.strip():
        raise _JudgeProblem("model", f"{endpoint} (model {model}) answered with no text")
    got_logprobs = bool(logprobs and choice.logprobs and choice.logprobs.content)
    verdict = parse_verdict(text)
    return (f"{endpoint} (model {model}) answered {text.strip()[:40]!r} (verdict {verdict or 'none'}); "
            f"logprobs {'given' if got_logprobs else 'not given'}")


class _JudgeProblem(UserError):
    def __init__(self, part: str, message: str):
        super().__init__(message)
        self.part = part


def _cause(e: BaseException) -> str:
    while e.__cause__ is not None and str(e.__cause__):
        e = e.__cause__
    return str(e)[:300] or type(e).__name__


def _api_message(e: Exception) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])[:300]
    return str(e)[:300]


# ---------------------------------------------------------------------------------------------- storage
def _storage(run_root: str) -> str:
    probe = store.join(run_root, f".preflight-{uuid.uuid4().hex[:12]}")
    store.write_bytes_atomic(probe, b"synpo pre-flight probe\n")
    if store.read_bytes(probe) != b"synpo pre-flight probe\n":
        raise UserError(f"{probe}: read back other bytes than written")
    store._remove(probe)
    if store.exists(probe):
        raise UserError(f"{probe}: still there after removal")
    return f"{run_root}: wrote, read and removed a probe object"


# ---------------------------------------------------------------------------------------------- the checks
def checks(spec, run_root: str | None) -> Iterator[Check]:
    """Every check the run needs, in spec order. `run_root` None: storage not reachable from here (a PVC)."""
    yield "spec.model.base", "model (M0)", lambda: _causal_lm(spec.model.base)
    for role in ("seed", "corpus", "eval"):
        ref = getattr(spec.data, role)
        yield f"spec.data.{role}", f"data {role}", lambda ref=ref, role=role: _data(ref, role)
    scorers = [("spec.filter.scorer", spec.filter.scorer)] + [
        (f"spec.evaluation.judges[{i}]", j) for i, j in enumerate(spec.evaluation.judges)]
    for i, (field, scorer) in enumerate(scorers):
        if scorer.type == "rewardModel":
            yield f"{field}.model", "reward model", lambda s=scorer, f=field: _reward_model(
                s.model, s.trust_remote_code, f)
        elif scorer.type == "openai" and field == "spec.filter.scorer":
            yield f"{field}.type", "filter scorer", _refuse_openai_filter
        elif scorer.type == "openai":
            yield field, "openai judge", lambda s=scorer, k=i - 1: _ask_judge(s.endpoint, s.model, judge_key(k))
        elif scorer.model:
            yield f"{field}.model", "embedding model", lambda s=scorer: _embedding(s.model)
    if run_root is not None:
        storage_field = "spec.storage.volume" if spec.storage.volume is not None else "spec.storage.uri"
        yield storage_field, "storage", lambda: _storage(run_root)


def _refuse_openai_filter() -> str:
    raise UserError("openai is a pairwise judge for evaluation only; use rewardModel or similarity to filter")


def _embedding(ref: str) -> str:
    from ..judges.similarity import packaged_model_dir

    if ref in ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        return packaged_model_dir()
    ckpt = model_files.open_checkpoint(ref)
    _config(ckpt)
    return f"{ckpt.where}: present"


def run_checks(spec, run_root: str | None, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run every check; returns their outcomes ({field, check, ok, note|error, seconds})."""
    outcomes = []
    for field, what, check in checks(spec, run_root):
        started = time.monotonic()
        try:
            note = check()
            outcome = {"field": field, "check": what, "ok": True, "note": note}
        except _JudgeProblem as e:
            outcome = {"field": f"{field}.{e.part}", "check": what, "ok": False, "error": str(e)}
        except Exception as e:  # noqa: BLE001 - every failure is reported with its own words, none stops the rest
            outcome = {"field": field, "check": what, "ok": False, "error": _words(e)}
        outcome["seconds"] = round(time.monotonic() - started, 3)
        log(f"{'ok  ' if outcome['ok'] else 'FAIL'} {outcome['field']}: {outcome.get('note') or outcome['error']}")
        outcomes.append(outcome)
    return outcomes


def _words(e: Exception) -> str:
    text = str(e).replace("\n", " ").strip()
    return text if isinstance(e, UserError) and text else f"{type(e).__name__}: {text}"[:600]


def failure(outcomes: list[dict[str, Any]]) -> str | None:
    bad = [o for o in outcomes if not o["ok"]]
    return "; ".join(f"{o['field']}: {o['error']}" for o in bad) or None


def run(ctx) -> dict:
    outcomes = run_checks(ctx.spec, ctx.config["runRoot"], log=lambda line: print(line, flush=True))
    problem = failure(outcomes)
    if problem:
        raise PreflightError(problem)
    ctx.writer.write_json("checks.json", outcomes)
    return {SPEC_KEY: spec_key(ctx.raw_spec), "checks": len(outcomes)}


def main(argv: list[str] | None = None) -> int:
    """Checks only, nothing written but the storage probe: `synpo plan --preflight`."""
    import argparse

    from synpo_operator.api.run import SynPORunSpec

    parser = argparse.ArgumentParser(prog="python -m synpo_workloads.stages.preflight")
    parser.add_argument("--config", required=True, help="the pre-flight's stage config (plan/stage_config.py)")
    parser.add_argument("--no-storage", action="store_true", help="skip the storage check (a PVC)")
    args = parser.parse_args(argv)
    with open(args.config, encoding="utf-8") as f:
        config = json.load(f)
    spec = SynPORunSpec.model_validate(config["spec"])
    outcomes = run_checks(spec, None if args.no_storage else config["runRoot"])
    problem = failure(outcomes)
    if problem:
        print(f"pre-flight failed: {problem}", file=sys.stderr)
        return 2
    print(f"pre-flight passed: {len(outcomes)} checks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
