"""Thin helpers over the official Kubernetes client: configuration and JSON-in/JSON-out REST calls.

Objects are exchanged as plain API JSON dicts (camelCase), the same shape the pure code in `reconcile` and
`executors.manifests` works with. Requests go through `ApiClient.call_api` (the client's configuration,
authentication and connection pool) with no model (de)serialisation, which is both simpler and faster.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import select
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from .api.common import GROUP, VERSION

RUN_PLURAL = "synporuns"
TIMEOUT = 30.0
POOL_SIZE = 32
"""Connections kept to the API server (reconcile workers plus concurrent creates)."""

log = logging.getLogger("synpo.kube")

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
            cfg = client.Configuration.get_default_copy()
            cfg.connection_pool_maxsize = max(POOL_SIZE, cfg.connection_pool_maxsize or 0)
            _api = client.ApiClient(cfg)
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
    """The run as the API server has it: from the namespace's watch cache of runs (kept current by one
    WATCH and by our own status writes), else by a GET (a run the cache has not seen yet)."""
    cache = watch_cache(run_path(namespace), None)
    if cache is not None:
        cache.drain()
        cached = cache.get(name)
        if cached is not None:
            return copy.deepcopy(cached)
    try:
        body = request("GET", run_path(namespace, name))
    except KubeError as err:
        if err.not_found:
            return None
        raise
    if cache is not None and isinstance(body, dict):
        cache.put(copy.deepcopy(body))
    return body


def patch_run_status(namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any] | None:
    """Merge-patch the status subresource (never the spec)."""
    try:
        body = request("PATCH", run_path(namespace, name) + "/status", {"status": patch},
                       content_type="application/merge-patch+json")
    except KubeError as err:
        if err.not_found:
            return None
        raise
    cache = _caches.get(f"{run_path(namespace)}?") if CACHE_ENABLED else None
    if cache is not None and isinstance(body, dict):
        cache.put(copy.deepcopy(body))  # the next reconcile reads what we wrote, not an older copy
    return body


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


# ---- watch caches (informers) ------------------------------------------------------------------------------

def slim(obj: dict[str, Any]) -> dict[str, Any]:
    """The object without `metadata.managedFields` (a third to a half of a typical object)."""
    meta = obj.get("metadata")
    if isinstance(meta, dict) and "managedFields" in meta:
        obj = {**obj, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}
    return obj


def slim_job(obj: dict[str, Any]) -> dict[str, Any]:
    """A Job as the Jobs executor reads it: metadata, status and the few spec fields it uses (no pod
    template: that is most of a Job)."""
    obj = slim(obj)
    spec = obj.get("spec") or {}
    return {**obj, "spec": {k: spec[k] for k in ("suspend", "parallelism", "completions", "completionMode")
                            if k in spec}}


POD_STAGE_CONFIG_ANNOTATION = "synpo.dev/stage-config"
"""The stage config every stage pod carries (executors.manifests.ANNOTATION_STAGE_CONFIG): up to 192 KiB that
the executor never reads back, so not kept in the pod cache."""


def slim_pod(obj: dict[str, Any]) -> dict[str, Any]:
    """A pod as the Jobs executor reads it: metadata (without the stage config annotation), status and its
    containers' resource limits."""
    obj = slim(obj)
    meta = obj.get("metadata")
    if isinstance(meta, dict) and POD_STAGE_CONFIG_ANNOTATION in (meta.get("annotations") or {}):
        annotations = {k: v for k, v in meta["annotations"].items() if k != POD_STAGE_CONFIG_ANNOTATION}
        obj = {**obj, "metadata": {**meta, "annotations": annotations}}
    containers = ((obj.get("spec") or {}).get("containers")) or []
    return {**obj, "spec": {"containers": [{"name": c.get("name"), "resources": c.get("resources") or {}}
                                           for c in containers]}}


def _rv(obj: dict[str, Any]) -> int:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:  # resourceVersions are opaque; every API server in use returns integers
        return 0


class WatchCache:
    """The objects of one collection (e.g. a namespace's Jobs) that carry a label, kept current by one LIST
    and a WATCH, and indexed by that label's value: what a client-go informer does.

    Readers get copies-free views (do not mutate them). `put` writes an object the caller just created or
    read (newer resourceVersions win), so a reconcile sees its own creates before the watch delivers them.
    `drain()` is a best-effort barrier: it waits (briefly) until every byte the API server has sent on the
    watch connection is processed, so an event that triggered a reconcile on another connection is in the
    cache by the time the reconcile reads it."""

    def __init__(self, path: str, label: str | None, *, server_timeout: int = 300,
                 transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None):
        self.path = path
        self.label = label
        self.transform = transform or slim
        """Applied to every object stored: drops what readers never look at (memory)."""
        self.server_timeout = server_timeout
        self._objects: dict[str, dict[str, Any]] = {}
        self._by_value: dict[str, dict[str, dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self.synced = threading.Event()
        self.failed: Exception | None = None
        self._stop = threading.Event()
        self._sock: Any = None
        self._reading = False
        self._reads = 0
        self._thread = threading.Thread(target=self._loop, daemon=True, name=f"watch {path}")
        self._api: Any = None

    def start(self) -> WatchCache:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    # -- reads
    def get(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self._objects.get(name)

    def by_label(self, value: str) -> list[dict[str, Any]]:
        with self._lock:
            return list((self._by_value.get(value) or {}).values())

    def put(self, obj: dict[str, Any]) -> None:
        with self._lock:
            self._store(obj)

    def drain(self, timeout: float = 0.2) -> None:
        """Wait until what the API server had sent on the watch connection when this was called is
        processed: the reads in progress and the one after it finish, or the reader waits on an empty
        socket. Never longer than `timeout`."""
        start = self._reads
        deadline = time.monotonic() + timeout
        while True:
            sock = self._sock
            if sock is None:
                return  # not watching (relisting, or no socket to look at): nothing to wait for
            if self._reading:
                try:
                    idle = not (sock.pending() if hasattr(sock, "pending") else 0) and \
                        not select.select([sock], [], [], 0)[0]
                except (OSError, ValueError):
                    return
                if idle or self._reads >= start + 2:
                    return
            if time.monotonic() >= deadline:
                return
            time.sleep(0.001)

    # -- the informer loop
    def _store(self, obj: dict[str, Any]) -> None:
        obj = self.transform(obj)
        meta = obj.get("metadata") or {}
        name = meta.get("name")
        if not name:
            return
        old = self._objects.get(name)
        if old is not None and _rv(old) > _rv(obj) and (old.get("metadata") or {}).get("uid") == meta.get("uid"):
            return  # an older copy (a create's response arriving after the watch event)
        self._remove(name)
        self._objects[name] = obj
        value = (meta.get("labels") or {}).get(self.label) if self.label else None
        if value is not None:
            self._by_value.setdefault(value, {})[name] = obj

    def _remove(self, name: str) -> None:
        old = self._objects.pop(name, None)
        if old is not None:
            value = ((old.get("metadata") or {}).get("labels") or {}).get(self.label) if self.label else None
            bucket = self._by_value.get(value)
            if bucket is not None:
                bucket.pop(name, None)
                if not bucket:
                    self._by_value.pop(value, None)

    def _relist(self) -> str:
        items: list[dict[str, Any]] = []
        cont = None
        while True:
            page = request("GET", self.path, query={"labelSelector": self.label or None, "limit": 500,
                                                    "continue": cont}) or {}
            items += page.get("items") or []
            cont = (page.get("metadata") or {}).get("continue")
            if not cont:
                rv = (page.get("metadata") or {}).get("resourceVersion") or ""
                break
        with self._lock:
            self._objects.clear()
            self._by_value.clear()
            for obj in items:
                self._store(obj)
        self.synced.set()
        return rv

    def _loop(self) -> None:
        from kubernetes import client

        api_client()  # configuration loaded
        self._api = client.ApiClient(client.Configuration.get_default_copy())
        rv = ""
        failures = 0
        while not self._stop.is_set():
            try:
                if not rv:
                    rv = self._relist()
                rv = self._watch(rv)
                failures = 0
            except Exception as err:  # noqa: BLE001 - reconnect with a fresh LIST after a pause
                failures += 1
                if failures >= 3 and not self.synced.is_set():
                    self.failed = err
                    self.synced.set()  # readers fall back to LISTs
                log.debug("watch %s: %s; relisting", self.path, err)
                rv = ""
                self._stop.wait(min(5.0, 0.2 * failures))

    def _watch(self, rv: str) -> str:
        query = {"watch": "true", "labelSelector": self.label, "resourceVersion": rv,
                 "allowWatchBookmarks": "true", "timeoutSeconds": self.server_timeout}
        query = {k: v for k, v in query.items() if v}
        path = self.path + "?" + urllib.parse.urlencode(query)
        headers = {"Accept": "application/json"}
        method_, url, headers, _, _ = self._api.param_serialize(
            method="GET", resource_path=path, header_params=headers, auth_settings=["BearerToken"])
        resp = self._api.call_api(method_, url, header_params=headers,
                                  _request_timeout=(10, self.server_timeout + 30))
        raw = resp.response
        if raw.status != 200:
            raw.release_conn()
            raise KubeError("WATCH", self.path, raw.status, raw.data[:500] if raw.data else "")
        try:
            self._sock = _socket_of(raw)
            buf = b""
            while not self._stop.is_set():
                self._reading = True
                chunk = raw.read1(65536) if hasattr(raw, "read1") else raw.read(65536)
                self._reading = False
                self._reads += 1
                if not chunk:
                    return rv
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        return ""  # 410 Gone and friends: relist
                    new_rv = (obj.get("metadata") or {}).get("resourceVersion")
                    with self._lock:
                        if kind in ("ADDED", "MODIFIED"):
                            self._store(obj)
                        elif kind == "DELETED":
                            name = (obj.get("metadata") or {}).get("name")
                            if name:
                                self._remove(name)
                    rv = new_rv or rv
            return rv
        finally:
            self._reading = False
            self._sock = None
            raw.release_conn()


def _socket_of(resp: Any) -> Any:
    """The (TLS) socket under a urllib3 response, for the drain barrier; None when not reachable."""
    try:
        fp = resp._fp  # http.client.HTTPResponse
        return fp.fp.raw._sock
    except AttributeError:
        return None


_caches: dict[str, WatchCache] = {}
_caches_lock = threading.Lock()
CACHE_ENABLED = os.environ.get("SYNPO_OPERATOR_CACHE", "1") != "0"


def watch_cache(path: str, label: str | None, wait: float = 30.0,
                transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> WatchCache | None:
    """The process-wide cache of `path` (a collection) for objects with `label`, started on first use;
    None when caching is off or the cache could not sync (callers LIST instead)."""
    if not CACHE_ENABLED:
        return None
    key = f"{path}?{label or ''}"
    with _caches_lock:
        cache = _caches.get(key)
        if cache is None:
            cache = _caches[key] = WatchCache(path, label, transform=transform).start()
    if not cache.synced.wait(wait) or cache.failed is not None:
        with _caches_lock:
            if _caches.get(key) is cache and cache.failed is not None:
                cache.stop()
                _caches.pop(key, None)
        return None
    return cache


def stop_caches() -> None:
    with _caches_lock:
        for cache in _caches.values():
            cache.stop()
        _caches.clear()

