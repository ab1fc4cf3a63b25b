"""The control plane restarting under a running operator (issue #8): kube-apiserver and etcd are each killed
(SIGKILL of the process group) mid-run, left down a few seconds and started again with the same command line
(`reliability.chaos.restart_component`). The operator keeps running throughout: it must not exit, its health
endpoint must answer afterwards, and the run must end exactly like an undisturbed one with no Job created
twice. These tests restart components of the dev cluster this session uses: give them their own cluster
(SYNPO_DEVCLUSTER_STATE) when other sessions share one.
"""

from __future__ import annotations

import time
import urllib.request

import pytest
from reliability.chaos import JobLedger, component_pid, restart_component, wait_api_ready

from .test_operator import RUNS, crds, operator, run_doc, wait_run  # noqa: F401 - fixtures
from .test_reliability_faults import DONE, assert_like_baseline, baseline, figure  # noqa: F401 - fixture

pytestmark = pytest.mark.integration


def _restart_mid_run(kube, dev_cluster, operator, namespace, baseline, component: str, down: float) -> None:  # noqa: F811
    ledger = JobLedger(kube, namespace)
    name = f"restart-{component.split('-')[-1]}"
    kube.post(RUNS.format(ns=namespace), run_doc(name, pods={"*": {"synpo.dev/fake-duration": "1500ms"}}))
    # restart once a few stages are done and others are running
    wait_run(kube, namespace, name, lambda s: sum(x["phase"] == "Succeeded" for x in s.get("stages", [])) >= 2,
             timeout=120)
    old = component_pid(dev_cluster.state_dir, component)
    new = restart_component(dev_cluster.state_dir, component, down_seconds=down)
    assert new != old
    waited = wait_api_ready(kube)
    done = None
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # the API may still answer 5xx/429 for a moment
        try:
            done = wait_run(kube, namespace, name, lambda s: s.get("phase") in DONE, timeout=240)
            break
        except TimeoutError as err:
            raise AssertionError(f"{err}\n{_cluster_state(kube, namespace)}\noperator log:\n"
                                 f"{operator.logs()[-4000:]}") from None
        except Exception:  # noqa: BLE001
            time.sleep(1)
    assert done is not None
    assert_like_baseline(done, baseline, ledger)
    assert operator.proc.poll() is None, f"the operator exited: {operator.logs()[-3000:]}"
    assert operator.starts == 1
    urllib.request.urlopen(f"http://127.0.0.1:{operator.port}/healthz", timeout=5).read()
    figure(fault=f"{component}-restart", restarts=1, down_s=down, api_ready_after_s=round(waited, 1), survived=1,
           duplicated_jobs=0, operator_restarts=operator.starts - 1,
           pairs_total=done["status"]["iterations"][-1]["pairsTotal"])


def _cluster_state(kube, namespace: str) -> str:
    """What the Jobs and pods look like, for a failure message (which stage is stuck, and where)."""
    lines = []
    for job in kube.get(f"/apis/batch/v1/namespaces/{namespace}/jobs")["items"]:
        st = job.get("status") or {}
        conds = ",".join(c["type"] for c in st.get("conditions") or [] if c.get("status") == "True")
        lines.append(f"job {job['metadata']['name']}: active={st.get('active')} succeeded={st.get('succeeded')} "
                     f"failed={st.get('failed')} conditions={conds}")
    for pod in kube.get(f"/api/v1/namespaces/{namespace}/pods")["items"]:
        st = pod.get("status") or {}
        lines.append(f"pod {pod['metadata']['name']}: {st.get('phase')} node={pod['spec'].get('nodeName')} "
                     f"conditions={[(c['type'], c['status']) for c in st.get('conditions') or []]}")
    return "\n".join(lines)


def test_apiserver_restart_mid_run(kube, dev_cluster, operator, namespace, baseline):  # noqa: F811
    _restart_mid_run(kube, dev_cluster, operator, namespace, baseline, "kube-apiserver", down=4.0)


def test_etcd_restart_mid_run(kube, dev_cluster, operator, namespace, baseline):  # noqa: F811
    _restart_mid_run(kube, dev_cluster, operator, namespace, baseline, "etcd", down=4.0)
