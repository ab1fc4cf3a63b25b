"""The operator's client-side QPS/burst limit (`synpo operator --kube-qps/--kube-burst`) holds its requests
to the real API server to the rate."""

from __future__ import annotations

import time

from synpo_operator import kube


def test_requests_to_the_api_server_are_held_to_the_qps_after_the_burst(dev_cluster):
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_kube_config(config_file=str(dev_cluster.kubeconfig), client_configuration=cfg)
    api = client.ApiClient(cfg)

    def timed(n: int) -> float:
        start = time.monotonic()
        for _ in range(n):
            assert kube.request("GET", "/version", api=api)["major"]
        return time.monotonic() - start

    timed(2)  # connection set up
    kube.set_rate_limit(10, 2)
    try:
        limited = timed(22)
    finally:
        kube.set_rate_limit(0, 0)
    unlimited = timed(22)
    assert limited >= (22 - 2) / 10 * 0.95  # 2 at once, then 10 a second
    assert unlimited < limited / 2
