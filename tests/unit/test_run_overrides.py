"""`synpo run --set FIELD=VALUE` (make quickstart-vllm): fields replaced before validation, bad ones named."""

from __future__ import annotations

import pytest

from synpo_operator.api.loader import SpecError, load_file

from .conftest import ROOT

QUICKSTART = ROOT / "examples" / "quickstart.yaml"


def test_overrides_replace_fields_before_validation():
    run = load_file(QUICKSTART, ["metadata.name=quickstart-vllm", "spec.generation.engine=vllm",
                                 "spec.generation.gpuMemoryUtilization=0.25", "spec.iterations=2"])
    assert run.metadata.name == "quickstart-vllm"
    assert run.spec.generation.engine == "vllm" and run.spec.generation.gpu_memory_utilization == 0.25
    assert run.spec.iterations == 2
    assert load_file(QUICKSTART).spec.generation.engine == "transformers"


@pytest.mark.parametrize("override, field", [
    ("spec.generation.engine=tensorrt", "spec.generation.engine"),
    ("spec.generation.gpuMemoryUtilization=2", "spec.generation.gpuMemoryUtilization"),
    ("spec.generation", "--set 'spec.generation'"),
    ("spec.iterations.x=1", "--set spec.iterations.x"),
])
def test_bad_overrides_name_the_field(override, field):
    with pytest.raises(SpecError) as err:
        load_file(QUICKSTART, [override])
    assert field in err.value.render()
