"""Thin helpers over the official Kubernetes client: configuration and JSON-in/JSON-out REST calls.

Objects are exchanged as plain API JSON dicts (camelCase), the same shape the pure code in `reconcile` and
`executors.manifests` works with. Requests go through `ApiClient.call_api` (the client's configuration,
authentication and connection pool) with no model (de)serialisation, which is both simpler and faster.
"""

from __future__ import annotations

import json
import os
import threading
import urllib.parse
from typing import Any

from .api.common import GROUP, VERSION

RUN_PLURAL = "synporuns"
TIMEOUT = 30.0

_lock = threading.Lock()
_api: Any = None


class KubeError(Exception):
    """A non-2xx answer of the API server."""

    def __init__(self, method: str, path: str, status: int, body: Any):
        self.status = status
        self.body = body
        self.reason = body.get("reason", "") if isinstance(body, dict) else ""
        message = body.get("message", body) if isinstance(body, dict) else body
        super().__init__(f"{method} {path}: HTTP {status} {self.reason}: {message}")

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409


def load_config() -> None:
    """In-cluster configuration when running in a pod, otherwise $KUBECONFIG / ~/.kube/config."""
    from kubernetes import config

    if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
        config.load_incluster_config()
    else:
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))


def api_client() -> Any:
    """The process-wide `kubernetes.client.ApiClient` (thread-safe; one urllib3 pool)."""
    global _api
    with _lock:
        if _api is None:
            from kubernetes import client

            load_config()
            _api = client.ApiClient()
        return _api


def request(method: str, path: str, body: Any = None, *, query: dict[str, Any] | None = None,
            content_type: str = "application/json", api: Any = None) -> Any:
    """One API call; returns the decoded JSON body. Raises KubeError for non-2xx answers."""
    api = api or api_client()
    if query:
        path += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
    headers = {"Accept": "application/json", "Content-Type": content_type}
    method_, url, headers, _, _ = api.param_serialize(method=method, resource_path=path, header_params=headers,
                                                      auth_settings=["BearerToken"])
    try:
        resp = api.call_api(method_, url, header_params=headers, body=body, _request_timeout=TIMEOUT)
    except Exception as err:  # the client raises ApiException for non-2xx in some versions
        status = getattr(err, "status", None)
        if status is None:
            raise
        raw = getattr(err, "body", None) or getattr(err, "data", None) or ""
        try:
            parsed = json.loads(raw)
        except (TypeError, ValueError):
            parsed = raw
        raise KubeError(method, path, int(status), parsed) from None
    resp.read()
    payload = resp.data
    if not 200 <= resp.status < 300:
        try:
            parsed = json.loads(payload)
        except (TypeError, ValueError):
            parsed = payload.decode(errors="replace") if isinstance(payload, bytes) else payload
        raise KubeError(method, path, resp.status, parsed)
    return json.loads(payload) if payload else None


def run_path(namespace: str, name: str | None = None) -> str:
    base = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{RUN_PLURAL}"
    return f"{base}/{name}" if name else base


def get_run(namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return request("GET", run_path(namespace, name))
    except KubeError as err:
        if err.not_found:
            return None
        raise


def patch_run_status(namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any] | None:
    """Merge-patch the status subresource (never the spec)."""
    try:
        return request("PATCH", run_path(namespace, name) + "/status", {"status": patch},
                       content_type="application/merge-patch+json")
    except KubeError as err:
        if err.not_found:
            return None
        raise


def delete_run(namespace: str, name: str) -> bool:
    try:
        request("DELETE", run_path(namespace, name), {"propagationPolicy": "Background"})
        return True
    except KubeError as err:
        if err.not_found:
            return False
        raise


# ---- schedules --------------------------------------------------------------------------------------------

SCHEDULE_PLURAL = "synposchedules"


def schedule_path(namespace: str, name: str | None = None) -> str:
    base = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{SCHEDULE_PLURAL}"
    return f"{base}/{name}" if name else base


def get_schedule(namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return request("GET", schedule_path(namespace, name))
    except KubeError as err:
        if err.not_found:
            return None
        raise


def patch_schedule_status(namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any] | None:
    """Merge-patch the schedule's status subresource (never the spec)."""
    try:
        return request("PATCH", schedule_path(namespace, name) + "/status", {"status": patch},
                       content_type="application/merge-patch+json")
    except KubeError as err:
        if err.not_found:
            return None
        raise


def list_runs(namespace: str | None = None, selector: str | None = None) -> list[dict[str, Any]]:
    """SynPORuns of a namespace (or of every namespace), optionally by label selector."""
    path = run_path(namespace) if namespace else f"/apis/{GROUP}/{VERSION}/{RUN_PLURAL}"
    return (request("GET", path, query={"labelSelector": selector}) or {}).get("items") or []


def create_run(namespace: str, body: dict[str, Any]) -> dict[str, Any] | None:
    """Create a run unless it exists: the created object, or None on 409 AlreadyExists."""
    try:
        return request("POST", run_path(namespace), body)
    except KubeError as err:
        if err.conflict:
            return None
        raise


def annotate_run(namespace: str, name: str, annotations: dict[str, str | None]) -> bool:
    """Merge-patch the run's annotations (metadata only); False when the run is gone."""
    try:
        request("PATCH", run_path(namespace, name), {"metadata": {"annotations": annotations}},
                content_type="application/merge-patch+json")
        return True
    except KubeError as err:
        if err.not_found:
            return False
        raise
