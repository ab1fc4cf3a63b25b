"""The Helm chart (helm/synpo-operator): lint, render for several value sets, schema rejects bad values,
least-privilege RBAC, restricted pod security, CRDs identical to the generated ones in crds/.

Needs the helm binary (`bash scripts/install-kube-tools.sh`); without it these tests fail, they do not skip.
The server-side checks against a real API server live in tests/integration/test_helm_install.py."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import yaml
from chart_helpers import CHART, ROOT, by_kind, render, run_helm, set_args

VALUE_SETS = {
    "default": {},
    "cluster": {"rbac": {"scope": "cluster"}},
    "namespaced-two": {"rbac": {"scope": "namespaced"}, "watchNamespaces": ["team-a", "team-b"]},
    "monitoring": {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}}},
                   "grafana": {"dashboard": {"enabled": True, "namespace": "monitoring"}}},
    "custom": {
        "image": {"repository": "registry.example/synpo/operator", "tag": "0.1.0-rc1", "pullPolicy": "Always"},
        "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"cpu": 1, "memory": "1Gi"}},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "control", "effect": "NoSchedule"}],
        "priorityClassName": "system-cluster-critical",
        "podAnnotations": {"example.com/team": "alignment"},
        "serviceAccount": {"create": True, "name": "synpo", "annotations": {"iam.example/role": "synpo"}},
        "logLevel": "debug",
        "operator": {"maxActiveRuns": 4, "maxActiveRunsPerNamespace": 2, "workers": 16, "resyncSeconds": 60},
        "metrics": {"port": 9090},
    },
}

FORBIDDEN_VERBS = {"*", "escalate", "bind", "impersonate"}
SECURITY_CONTEXT = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "capabilities": {"drop": ["ALL"]},
}


@pytest.fixture(scope="module")
def rendered(helm) -> dict[str, list[dict]]:
    return {name: render(helm, values) for name, values in VALUE_SETS.items()}


def deployment(docs: list[dict]) -> dict:
    (dep,) = by_kind(docs, "Deployment")
    return dep


def rules_of(docs: list[dict]) -> list[dict]:
    return [r for d in docs if d["kind"] in ("Role", "ClusterRole") for r in d["rules"]]


# ---- lint & render ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_helm_lint(helm, name):
    proc = run_helm(helm, "lint", "--strict", str(CHART), *set_args(VALUE_SETS[name]))
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_rendered_object_is_well_formed(rendered, name):
    docs = rendered[name]
    kinds = sorted(d["kind"] for d in docs)
    assert {"ServiceAccount", "Deployment", "Service", "ClusterRole", "ClusterRoleBinding"} <= set(kinds)
    for d in docs:
        assert d["apiVersion"] and d["metadata"]["name"]
        assert d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "synpo"


def test_default_is_the_release_namespace_only(rendered):
    """Least privilege by default: Roles in the release namespace, which is the one namespace watched; the only
    cluster-wide grant is kopf's reads (CRDs, namespace names)."""
    docs = rendered["default"]
    roles = [r["metadata"]["namespace"] for r in by_kind(docs, "Role") + by_kind(docs, "RoleBinding")]
    assert roles == ["synpo-system"] * 4  # the operator's Role and the leader-election Role, and their bindings
    (cluster_role,) = by_kind(docs, "ClusterRole")
    assert {res for r in cluster_role["rules"] for res in r["resources"]} == {"customresourcedefinitions",
                                                                             "namespaces"}
    args = deployment(docs)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert [args[i + 1] for i, a in enumerate(args) if a == "--namespace"] == ["synpo-system"]


def test_cluster_scope_is_opt_in(rendered):
    docs = rendered["cluster"]
    # the only namespaced RBAC: the leader-election Lease in the release namespace
    assert [r["metadata"]["name"] for r in by_kind(docs, "Role") + by_kind(docs, "RoleBinding")] == [
        "synpo-synpo-operator-leader-election"] * 2
    (crb,) = by_kind(docs, "ClusterRoleBinding")
    (sa,) = by_kind(docs, "ServiceAccount")
    assert crb["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                "namespace": "synpo-system"}]
    args = deployment(docs)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace" not in args
    assert not by_kind(docs, "ServiceMonitor") and not by_kind(docs, "ConfigMap")


def test_namespaced_scope_has_a_role_per_namespace_and_a_small_cluster_role(rendered):
    docs = rendered["namespaced-two"]
    roles = [r for r in by_kind(docs, "Role") if not r["metadata"]["name"].endswith("-leader-election")]
    bindings = [b for b in by_kind(docs, "RoleBinding") if not b["metadata"]["name"].endswith("-leader-election")]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for b in bindings:
        assert b["roleRef"]["kind"] == "Role"
        assert b["subjects"][0]["namespace"] == "synpo-system"
    (cluster_role,) = by_kind(docs, "ClusterRole")
    cluster_resources = {res for r in cluster_role["rules"] for res in r["resources"]}
    assert cluster_resources == {"customresourcedefinitions", "namespaces"}
    for r in cluster_role["rules"]:
        assert set(r["verbs"]) <= {"get", "list", "watch"}
    args = deployment(docs)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert [args[i + 1] for i, a in enumerate(args) if a == "--namespace"] == ["team-a", "team-b"]


def test_monitoring_objects(rendered):
    docs = rendered["monitoring"]
    (sm,) = by_kind(docs, "ServiceMonitor")
    (svc,) = by_kind(docs, "Service")
    assert sm["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"] == "metrics"
    assert sm["spec"]["endpoints"][0]["honorLabels"] is True
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert all(sm["spec"]["selector"]["matchLabels"][k] == v for k, v in svc["metadata"]["labels"].items()
               if k in sm["spec"]["selector"]["matchLabels"])
    (cm,) = by_kind(docs, "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "monitoring"
    dashboard = json.loads(cm["data"]["synpo-operator.json"])
    assert dashboard["uid"] == "synpo-operator" and dashboard["panels"]
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    exposed = exposed_series()
    used = set(re.findall(r"\bsynpo_[a-z_]+", exprs))
    assert used <= exposed, f"dashboard queries series the operator does not expose: {used - exposed}"
    for family, series in operator_metric_families().items():
        assert series in used, f"metric {family} ({series}) has no dashboard panel"


def operator_metric_families() -> dict[str, str]:
    """Every metric family of synpo_operator.metrics -> the series a panel should query."""
    from synpo_operator.metrics import Metrics

    suffix = {"counter": "_total", "histogram": "_bucket"}
    return {f.name: f.name + suffix.get(f.type, "") for f in Metrics().registry.collect()}


def exposed_series() -> set[str]:
    from synpo_operator.metrics import Metrics

    names = set()
    for f in Metrics().registry.collect():
        names.add(f.name)
        names.update(f.name + s for s in ("_total", "_bucket", "_sum", "_count", "_created"))
    return names


def test_custom_values_reach_the_deployment(rendered):
    dep = deployment(rendered["custom"])
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == "registry.example/synpo/operator:0.1.0-rc1"
    assert c["imagePullPolicy"] == "Always"
    assert c["resources"] == VALUE_SETS["custom"]["resources"]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"] == VALUE_SETS["custom"]["tolerations"]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["serviceAccountName"] == "synpo"
    assert dep["spec"]["template"]["metadata"]["annotations"]["example.com/team"] == "alignment"
    args = c["args"]
    assert "--verbose" in args
    assert args[args.index("--workers") + 1] == "16"
    assert args[args.index("--max-active-runs") + 1] == "4"
    assert args[args.index("--max-active-runs-per-namespace") + 1] == "2"
    assert args[args.index("--metrics-port") + 1] == "9090"
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"metrics": 9090, "health": 8081}
    (svc,) = by_kind(rendered["custom"], "Service")
    assert svc["spec"]["ports"][0]["port"] == 9090


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_container_args_are_accepted_by_synpo_operator(rendered, name):
    """The chart and `synpo operator` (controller/cli.py) agree on every flag: parse the rendered args with the
    real command-line parser."""
    from synpo_operator.cli import build_parser

    (c,) = deployment(rendered[name])["spec"]["template"]["spec"]["containers"]
    args = build_parser().parse_args(c["args"])
    assert args.command == "operator" and args.executor == "jobs"
    cluster = VALUE_SETS[name].get("rbac", {}).get("scope") == "cluster"
    assert args.namespace == VALUE_SETS[name].get("watchNamespaces", [] if cluster else ["synpo-system"])
    assert args.metrics_port == VALUE_SETS[name].get("metrics", {}).get("port", 8080)
    assert args.health_port == 8081


def test_default_image_tag_is_the_app_version(rendered):
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == "0.1.0"
    (c,) = deployment(rendered["default"])["spec"]["template"]["spec"]["containers"]
    assert c["image"].endswith(":0.1.0")
    assert c["args"][:3] == ["operator", "--executor", "jobs"]


# ---- deployment shape & pod security ----------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_deployment_is_two_leader_elected_replicas_rolled_with_probes(rendered, name):
    dep = deployment(rendered[name])
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["strategy"] == {"type": "RollingUpdate",
                                       "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert "--leader-elect" in c["args"] and "--lease-seconds" in c["args"]
    env = {e["name"] for e in c["env"]}
    assert {"POD_NAME", "POD_NAMESPACE"} <= env  # the Lease's holder identity and namespace
    (pdb,) = by_kind(rendered[name], "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}  # kopf's liveness endpoint
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}  # synpo's metrics server
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_pod_security_is_restricted(rendered, name):
    pod = deployment(rendered[name])["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 1000
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    for c in pod["containers"]:
        sc = c["securityContext"]
        for key, want in SECURITY_CONTEXT.items():
            assert sc[key] == want, key
        assert sc.get("privileged") in (None, False)
    # the read-only root filesystem leaves only emptyDir scratch space; no hostPath
    assert all("emptyDir" in v for v in pod.get("volumes", []))


# ---- least-privilege RBAC ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_rbac_is_least_privilege(rendered, name):
    rules = rules_of(rendered[name])
    assert rules
    for r in rules:
        assert "*" not in r["apiGroups"] and "*" not in r["resources"], r
        assert not FORBIDDEN_VERBS & set(r["verbs"]), r
        assert "secrets" not in r["resources"], r
        assert not any(res.startswith("pods/") for res in r["resources"]), r  # no exec, attach, portforward
        assert "nonResourceURLs" not in r
        assert "resourceNames" not in r or r["resources"] == ["leases"], r  # a name only narrows: the Lease
    grants: dict[tuple[str, str], set[str]] = {}
    for r in rules:
        for g in r["apiGroups"]:
            for res in r["resources"]:
                grants.setdefault((g, res), set()).update(r["verbs"])
    assert grants[("", "pods")] <= {"get", "list", "watch"}
    # never update a Job; patch only fails a stuck stage's Job (annotation + activeDeadlineSeconds)
    assert grants[("batch", "jobs")] == {"get", "list", "watch", "create", "delete", "patch"}
    assert {"list", "watch"} <= grants[("", "events")]  # FailedCreate Events: why a stage has no pods
    assert grants[("kueue.x-k8s.io", "workloads")] == {"list", "watch"}  # why a queued stage waits; never written
    assert ("", "nodes") not in grants and ("", "pods/exec") not in grants
    assert ("", "configmaps") not in grants  # stage configs travel in their Jobs
    assert grants[("apiextensions.k8s.io", "customresourcedefinitions")] == {"get", "list", "watch"}
    assert {"create", "delete"} <= grants[("synpo.dev", "synporuns")]
    assert not {"create", "delete"} & grants[("synpo.dev", "synposchedules")]
    assert "patch" in grants[("synpo.dev", "synporuns/status")]
    assert "update" in grants[("synpo.dev", "synporuns/finalizers")]
    assert {"create", "patch"} <= grants[("events.k8s.io", "events")]
    # leader election: the Lease only, in the release namespace only (a Role, not the ClusterRole)
    assert grants[("coordination.k8s.io", "leases")] == {"get", "create", "update"}
    (lease_role,) = [d for d in rendered[name] if d["kind"] == "Role"
                     and any("coordination.k8s.io" in r["apiGroups"] for r in d["rules"])]
    assert lease_role["metadata"]["namespace"] == "synpo-system"  # the release namespace


@pytest.mark.parametrize("scope", [{}, {"rbac": {"scope": "namespaced"}, "watchNamespaces": ["team-a"]}])
def test_jobsets_are_granted_only_when_enabled(helm, scope):
    """Training on several nodes creates JobSets: granted (never updated) with jobset.enabled, else not at all."""
    def grants(values):
        return {res: set(r["verbs"]) for r in rules_of(render(helm, values))
                for g in r["apiGroups"] for res in r["resources"] if g == "jobset.x-k8s.io"}

    assert grants(scope) == {}
    assert grants({**scope, "jobset": {"enabled": True}}) == {"jobsets": {"get", "list", "watch", "create", "delete"}}


def test_rbac_create_false_renders_no_rbac(helm):
    docs = render(helm, {"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "existing"}})
    assert not [d for d in docs if d["kind"].endswith(("Role", "RoleBinding"))]
    assert not by_kind(docs, "ServiceAccount")
    assert deployment(docs)["spec"]["template"]["spec"]["serviceAccountName"] == "existing"


# ---- values.schema.json -----------------------------------------------------------------------------------
BAD_VALUES = [
    ({"rbac": {"scope": "bogus"}}, "scope"),
    ({"spread": {"nodes": "always"}}, "nodes"),
    ({"replicas": 2}, "replicas"),
    ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
    ({"image": {"registry": "x"}}, "registry"),
    ({"metrics": {"port": "http"}}, "port"),
    ({"metrics": {"port": 80}}, "port"),
    ({"metrics": {"serviceMonitor": {"enabled": "yes"}}}, "enabled"),
    ({"watchNamespaces": ["Team_A"]}, "watchNamespaces"),
    ({"logLevel": "verbose"}, "logLevel"),
    ({"operator": {"maxActiveRuns": -1}}, "maxActiveRuns"),
    ({"operator": {"leaderElection": {"enabled": False}}}, "needs operator.leaderElection.enabled"),
    ({"operator": {"leaderElection": {"renewSeconds": 20}}}, "renewSeconds must be shorter"),
    ({"podDisruptionBudget": {"maxUnavailable": 0}}, "maxUnavailable"),
    ({"grafana": {"dashboard": {"enabled": True, "folder": "x"}}}, "folder"),
]


@pytest.mark.parametrize(("values", "needle"), BAD_VALUES, ids=[n for _, n in BAD_VALUES])
def test_helm_rejects_bad_values(helm, values, needle):
    proc = run_helm(helm, "template", "synpo", str(CHART), *set_args(values), check=False)
    assert proc.returncode != 0, f"helm accepted {values}"
    assert needle in proc.stderr, proc.stderr


def test_schema_is_strict_at_every_level():
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.validate(defaults, schema)

    def walk(node: dict, path: str, value):
        if node.get("type") == "object" and "properties" in node:
            assert node.get("additionalProperties") is False, f"{path}: additionalProperties must be false"
            assert isinstance(value, dict), path
            assert set(value) <= set(node["properties"]), f"{path}: values.yaml has keys the schema lacks"
            for key, sub in node["properties"].items():
                if key in value:
                    walk(sub, f"{path}.{key}", value[key])
        else:
            assert "type" in node or "anyOf" in node, f"{path}: no type"

    walk(schema, "values", defaults)


def test_namespaced_and_duplicate_namespaces_fail_with_a_clear_message(helm):
    proc = run_helm(helm, "template", "synpo", str(CHART), *set_args({"watchNamespaces": ["a", "a"]}), check=False)
    assert proc.returncode != 0 and "watchNamespaces" in proc.stderr


# ---- CRDs -------------------------------------------------------------------------------------------------
def test_chart_crds_equal_the_generated_crds():
    repo = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    chart = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    assert chart == repo, "copy crds/*.yaml into helm/synpo-operator/crds/"
    for name in repo:
        assert (CHART / "crds" / name).read_bytes() == (ROOT / "crds" / name).read_bytes(), (
            f"helm/synpo-operator/crds/{name} differs from crds/{name}: cp crds/*.yaml helm/synpo-operator/crds/")


def test_crds_are_installed_by_helm_not_templated(helm):
    docs = render(helm, include_crds=True)
    crds = by_kind(docs, "CustomResourceDefinition")
    assert sorted(c["metadata"]["name"] for c in crds) == ["synporuns.synpo.dev", "synposchedules.synpo.dev"]
    assert not by_kind(render(helm), "CustomResourceDefinition"), "CRDs belong in crds/, not templates/"


def test_notes_render(helm):
    proc = run_helm(helm, "install", "synpo", str(CHART), "--dry-run=client", "--namespace", "synpo-system",
                    *set_args(VALUE_SETS["namespaced-two"]))
    assert "team-a, team-b" in proc.stdout and "kubectl apply --server-side -f crds/" in proc.stdout


# ---- availability of the two replicas ---------------------------------------------------------------------
def _pod_spec(helm, values: dict) -> dict:
    return deployment(render(helm, values))["spec"]["template"]["spec"]


def test_replicas_are_kept_apart_by_default(rendered):
    pod = deployment(rendered["default"])["spec"]["template"]["spec"]
    selector = {"app.kubernetes.io/name": "synpo-operator", "app.kubernetes.io/instance": "synpo"}
    (preferred,) = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert preferred["podAffinityTerm"] == {"labelSelector": {"matchLabels": selector},
                                            "topologyKey": "kubernetes.io/hostname"}
    assert deployment(rendered["default"])["spec"]["selector"]["matchLabels"] == selector  # the same pods
    (spread,) = pod["topologySpreadConstraints"]
    assert spread == {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                      "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": selector}}


def test_spread_hard_none_and_an_own_anti_affinity(helm):
    hard = _pod_spec(helm, {"spread": {"nodes": "hard", "zones": False}})
    (term,) = hard["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname" and "topologySpreadConstraints" not in hard
    assert "affinity" not in _pod_spec(helm, {"spread": {"nodes": "none"}})
    own = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "x"}}, "topologyKey": "topology.kubernetes.io/zone"}]},
        "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["control"]}]}]}}}
    assert _pod_spec(helm, {"affinity": own})["affinity"] == own
    node_only = {"nodeAffinity": own["nodeAffinity"]}
    merged = _pod_spec(helm, {"affinity": node_only})["affinity"]
    assert merged["nodeAffinity"] == own["nodeAffinity"] and "podAntiAffinity" in merged


def test_lease_rules_name_the_operators_lease(rendered):
    for name in ("default", "cluster"):
        (role,) = [r for r in by_kind(rendered[name], "Role") if r["metadata"]["name"].endswith("-leader-election")]
        args = deployment(rendered[name])["spec"]["template"]["spec"]["containers"][0]["args"]
        lease = args[args.index("--lease-name") + 1]
        assert role["rules"] == [
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": [lease],
             "verbs": ["get", "update"]}]
