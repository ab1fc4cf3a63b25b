"""Property: any document is either rejected with messages that name a field, or accepted and planned.
Never a traceback, whatever the input."""

from __future__ import annotations

import copy
import re

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from synpo_operator.api.loader import SpecError, load_documents, parse_resource
from synpo_operator.api.run import SynPORun
from synpo_operator.plan import plan, stage_graph
from synpo_operator.render import describe_plan

from .conftest import ROOT

QUICKSTART = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
CLUSTER = yaml.safe_load((ROOT / "examples" / "cluster-llama3.yaml").read_text())
FIELD = re.compile(r"^(\(top level\)|malformed YAML|expected exactly one|\S.*?): \S")  # "<field>: <what's wrong>"

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=12), inner, max_size=3)),
                      max_leaves=6)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, sub in node.items():
            yield from _paths(sub, prefix + (key,))
    elif isinstance(node, list):
        for i, sub in enumerate(node):
            yield from _paths(sub, prefix + (i,))


@st.composite
def mutated_documents(draw):
    doc = copy.deepcopy(draw(st.sampled_from([QUICKSTART, CLUSTER])))
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p in _paths(doc) if p]
        path = draw(st.sampled_from(paths))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "delete":
            del parent[path[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=12))] = draw(values)
        else:
            parent[path[-1]] = draw(values)
    return doc


def check(doc) -> None:
    try:
        resource = parse_resource(doc, "input.yaml")
    except SpecError as err:
        assert err.problems
        for problem in err.problems:
            assert FIELD.match(problem), problem
        assert "Traceback" not in err.render()
        return
    describe_plan(resource)
    if isinstance(resource, SynPORun):
        assert plan(resource.spec, {}).start
        assert stage_graph(resource.spec)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_documents())
def test_mutated_runs_are_rejected_with_a_field_or_planned(doc):
    check(doc)


@settings(max_examples=200, deadline=None)
@given(values)
def test_arbitrary_documents_never_crash(doc):
    check(doc)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_never_crashes_the_loader(text):
    try:
        docs = load_documents(text, "input.yaml")
    except SpecError as err:
        assert err.problems[0].startswith("malformed YAML")
        return
    for doc in docs:
        check(doc)
