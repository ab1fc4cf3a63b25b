"""SynPO stage programs: `python -m synpo_workloads <stage> --config stage.json [--shard N]`.

Modules: `stages/` (one per stage), `engines/` (transformers, vllm), `judges/` (similarity, rewardModel,
openai), `store` (artifacts and manifests), `models`, `data_io`, `training`, `report`; pure logic in `text`,
`templates`, `winrate`. Heavy imports (torch, transformers, trl, vllm) happen inside functions only.
"""
