# The two commands of the README. Both are idempotent and work on a fresh machine.
.PHONY: quickstart test setup lint crds

setup:
	bash scripts/setup.sh

quickstart: setup
	.venv/bin/synpo run examples/quickstart.yaml

test: setup
	bash scripts/test.sh

lint: setup
	.venv/bin/ruff check operator workloads tests bench

crds: setup
	.venv/bin/synpo crds --write crds --write helm/synpo-operator/crds
