import copy
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def quickstart_doc() -> dict:
    return yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())


@pytest.fixture
def cluster_doc() -> dict:
    return yaml.safe_load((ROOT / "examples" / "cluster-llama3.yaml").read_text())


def with_changes(doc: dict, **spec_changes) -> dict:
    doc = copy.deepcopy(doc)
    doc["spec"].update(spec_changes)
    return doc
