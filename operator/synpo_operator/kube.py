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
import threading
import urllib.parse
from collections.abc import Callable
from typing import Any

from .api.common import GROUP, JOBSET_API_VERSION, KUEUE_API_VERSION, STAGE_CONFIG_ANNOTATION, VERSION
from .ratelimit import TokenBucket

RUN_PLURAL = "synporuns"
TIMEOUT = 30.0
POOL_SIZE = 64
"""Connections kept to the API server (reconcile workers, their concurrent creates, the Event poster)."""

log = logging.getLogger("synpo.kube")

_lock = threading.Lock()
_api: Any = None
_limiter: TokenBucket | None = None
"""The client-side QPS/burst limit of `request` (None: none); set by `set_rate_limit`."""
DEFAULT_QPS, DEFAULT_BURST = 200.0, 400
"""Far above a steady operator's needs, and about what one API server on 2 cores serves in writes: a
thousand runs applied at once are not slowed; a bug that loops on requests cannot flood the server."""


def set_rate_limit(qps: float, burst: int) -> None:
    """Limit this process's API requests to `qps` a second after a burst of `burst` (qps 0: no limit)."""
    global _limiter
    _limiter = TokenBucket(qps, burst) if qps > 0 else None


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
    if _limiter is not None:
        _limiter.take()
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
    """The run as the API server has it: from the runs informer (kept current by its WATCH and by our own
    status writes), else by a GET (no informer, or a run it has not seen yet)."""
    cache = informer("runs", namespace)
    cached = cache.get(namespace, name) if cache is not None else None
    return copy.deepcopy(cached) if cached is not None else refresh_run(namespace, name)


def _guarded_status(patch: dict[str, Any], resource_version: str | None) -> dict[str, Any]:
    """A merge patch of the status subresource; with a resourceVersion, the API server applies it only to that
    version of the object (409 Conflict otherwise)."""
    return {"status": patch, **({"metadata": {"resourceVersion": resource_version}} if resource_version else {})}


def patch_run_status(namespace: str, name: str, patch: dict[str, Any],
                     resource_version: str | None = None) -> dict[str, Any] | None:
    """Merge-patch the status subresource (never the spec). With `resource_version`, only if the run is still
    at that version (409 Conflict otherwise): a status computed from an older view never overwrites a newer
    one (another replica's write, a write whose watch event has not arrived)."""
    try:
        body = request("PATCH", run_path(namespace, name) + "/status", _guarded_status(patch, resource_version),
                       content_type="application/merge-patch+json")
    except KubeError as err:
        if err.not_found:
            return None
        raise
    cache = informer("runs", namespace)
    if cache is not None and isinstance(body, dict):
        cache.put(copy.deepcopy(body))  # the next reconcile reads what we wrote, not an older copy
    return body


def refresh_run(namespace: str, name: str) -> dict[str, Any] | None:
    """GET the run and store it in the runs informer (a run not cached yet, or after a 409: the cached copy
    was stale)."""
    try:
        body = request("GET", run_path(namespace, name))
    except KubeError as err:
        if err.not_found:
            return None
        raise
    cache = informer("runs", namespace)
    if cache is not None and isinstance(body, dict):
        cache.put(copy.deepcopy(body))
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


def patch_schedule_status(namespace: str, name: str, patch: dict[str, Any],
                          resource_version: str | None = None) -> dict[str, Any] | None:
    """Merge-patch the schedule's status subresource (never the spec); with `resource_version`, only if the
    schedule is still at that version (409 Conflict otherwise), as `patch_run_status`."""
    try:
        return request("PATCH", schedule_path(namespace, name) + "/status", _guarded_status(patch, resource_version),
                       content_type="application/merge-patch+json")
    except KubeError as err:
        if err.not_found:
            return None
        raise


def list_schedules(namespace: str | None = None) -> list[dict[str, Any]]:
    path = schedule_path(namespace) if namespace else f"/apis/{GROUP}/{VERSION}/{SCHEDULE_PLURAL}"
    return (request("GET", path) or {}).get("items") or []


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

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
POD_STAGE_CONFIG_ANNOTATION = STAGE_CONFIG_ANNOTATION
"""The stage config every stage pod carries: up to 192 KiB that the executor never reads back."""
_UNREAD_ANNOTATIONS = (LAST_APPLIED, POD_STAGE_CONFIG_ANNOTATION)


def slim(obj: dict[str, Any]) -> dict[str, Any]:
    """The object without what no reconcile reads: `metadata.managedFields` (a third to a half of a typical
    object), kubectl's last-applied copy of the object and the stage config a pod carries."""
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return obj
    annotations = meta.get("annotations") or {}
    if "managedFields" in meta or any(k in annotations for k in _UNREAD_ANNOTATIONS):
        meta = {k: v for k, v in meta.items() if k != "managedFields"}
        if annotations:
            meta["annotations"] = {k: v for k, v in annotations.items() if k not in _UNREAD_ANNOTATIONS}
        obj = {**obj, "metadata": meta}
    return obj


def can_list(kind: str, namespace: str | None) -> bool:
    """Whether this client may LIST `kind` in the namespace (None: every namespace) (False: the API is not served, e.g. a CRD that
    is not installed, or RBAC does not grant it), so an informer of it would never sync."""
    try:
        request("GET", collection_path(kind, namespace), query={"limit": 1})
        return True
    except KubeError as err:
        if err.not_found or err.status == 403:
            return False
        raise


def slim_job(obj: dict[str, Any]) -> dict[str, Any]:
    """A Job (or JobSet) as the Jobs executor reads it: metadata, status and the few spec fields it uses (no pod
    template: that is most of a Job)."""
    obj = slim(obj)
    spec = obj.get("spec") or {}
    return {**obj, "spec": {k: spec[k] for k in ("suspend", "parallelism", "completions", "completionMode")
                            if k in spec}}


def slim_pod(obj: dict[str, Any]) -> dict[str, Any]:
    """A pod as the Jobs executor reads it: metadata, status and its containers' resource limits."""
    obj = slim(obj)
    containers = ((obj.get("spec") or {}).get("containers")) or []
    return {**obj, "spec": {"containers": [{"name": c.get("name"), "resources": c.get("resources") or {}}
                                           for c in containers]}}


def slim_event(obj: dict[str, Any]) -> dict[str, Any]:
    """An Event as the Jobs executor reads it (what it is about, why, when)."""
    meta = obj.get("metadata") or {}
    out = {k: obj[k] for k in ("involvedObject", "reason", "message", "firstTimestamp", "lastTimestamp",
                               "eventTime", "count") if k in obj}
    out["metadata"] = {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                       if k in meta}
    return out


def _rv(obj: dict[str, Any]) -> int:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:  # resourceVersions are opaque; every API server in use returns integers
        return 0


class WatchCache:
    """The objects of one collection (e.g. the Jobs of a namespace, or of every namespace) that carry a
    label, kept current by one LIST and a WATCH, and indexed by namespace and that label's value: what a
    client-go informer does.

    `on_event(type, old, new)` is called on the watch thread after each change is stored (type ADDED,
    MODIFIED or DELETED; a relist reports every object as ADDED and the vanished ones as DELETED), so whoever
    it triggers reads a cache at least as fresh as the trigger. Readers get shared views (do not mutate
    them). `put` stores an object the caller just wrote (newer resourceVersions win), so a reconcile sees its
    own writes before the watch delivers them."""

    def __init__(self, path: str, label: str | None, *, server_timeout: int = 60,
                 transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                 on_event: Callable[[str, dict[str, Any] | None, dict[str, Any]], None] | None = None,
                 index: str | None = None, field: str | None = None):
        self.path = path
        self.label = label
        """Only objects carrying this label are listed and watched (None: all)."""
        self.field = field
        """And only those matching this field selector (None: all)."""
        self.index = index or label
        """`by_label` looks objects up by this label's value (default: `label`)."""
        self.transform = transform or slim
        """Applied to every object stored: drops what readers never look at (memory)."""
        self.on_event = on_event
        self.server_timeout = server_timeout
        """The server ends each WATCH after this long (we resume from the last resourceVersion) and a read
        gives up 30 s after it: a stream that silently stops delivering costs at most 90 s, not minutes."""
        self._objects: dict[tuple[str, str], dict[str, Any]] = {}
        self._by_value: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self.synced = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name=f"watch {path}")
        self._api: Any = None

    def start(self) -> WatchCache:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    # -- reads
    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self._objects.get((namespace, name))

    def by_label(self, namespace: str, value: str) -> list[dict[str, Any]]:
        with self._lock:
            return list((self._by_value.get((namespace, value)) or {}).values())

    def items(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._objects.values())

    def put(self, obj: dict[str, Any]) -> None:
        with self._lock:
            self._store(obj)

    # -- the informer loop
    @staticmethod
    def _key(obj: dict[str, Any]) -> tuple[str, str] | None:
        meta = obj.get("metadata") or {}
        return (meta.get("namespace") or "", meta["name"]) if meta.get("name") else None

    def _store(self, obj: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """(old, new); new is None when obj is older than what is stored (a write's response arriving
        after the watch event)."""
        obj = self.transform(obj)
        key = self._key(obj)
        if key is None:
            return None, None
        old = self._objects.get(key)
        if old is not None and _rv(old) > _rv(obj) and _uid(old) == _uid(obj):
            return old, None
        self._remove(key)
        self._objects[key] = obj
        value = ((obj.get("metadata") or {}).get("labels") or {}).get(self.index) if self.index else None
        if value is not None:
            self._by_value.setdefault((key[0], value), {})[key[1]] = obj
        return old, obj

    def _remove(self, key: tuple[str, str]) -> dict[str, Any] | None:
        old = self._objects.pop(key, None)
        if old is not None and self.index:
            value = ((old.get("metadata") or {}).get("labels") or {}).get(self.index)
            bucket = self._by_value.get((key[0], value))
            if bucket is not None:
                bucket.pop(key[1], None)
                if not bucket:
                    self._by_value.pop((key[0], value), None)
        return old

    def _notify(self, type_: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        if self.on_event is None or new is None:
            return
        try:
            self.on_event(type_, old, new)
        except Exception:  # noqa: BLE001 - a failing callback must not stop the informer
            log.exception("watch %s: event callback failed", self.path)

    def _relist(self) -> str:
        items: list[dict[str, Any]] = []
        cont = None
        while True:
            page = request("GET", self.path, query={"labelSelector": self.label or None, "limit": 500,
                                                    "fieldSelector": self.field or None, "continue": cont}) or {}
            items += page.get("items") or []
            cont = (page.get("metadata") or {}).get("continue")
            if not cont:
                rv = (page.get("metadata") or {}).get("resourceVersion") or ""
                break
        with self._lock:
            before = self._objects
            self._objects, self._by_value = {}, {}
            changes = [self._store(obj) for obj in items]
            gone = [obj for key, obj in before.items() if key not in self._objects]
        for old, new in changes:
            self._notify("ADDED", old, new)
        for obj in gone:
            self._notify("DELETED", obj, obj)
        self.synced.set()  # after the callbacks: whoever waits for it finds every object reported
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
                log.log(logging.WARNING if failures >= 3 else logging.DEBUG, "watch %s: %s; relisting",
                        self.path, err)
                rv = ""
                self._stop.wait(min(5.0, 0.2 * failures))

    def _watch(self, rv: str) -> str:
        query = {"watch": "true", "labelSelector": self.label, "fieldSelector": self.field, "resourceVersion": rv,
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
            buf = b""
            while not self._stop.is_set():
                chunk = raw.read1(65536) if hasattr(raw, "read1") else raw.read(65536)
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
                    rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                    if kind in ("ADDED", "MODIFIED"):
                        with self._lock:
                            old, new = self._store(obj)
                        self._notify(kind, old, new)
                    elif kind == "DELETED" and (key := self._key(obj)) is not None:
                        with self._lock:
                            old = self._remove(key)
                        self._notify(kind, old, self.transform(obj))
            return rv
        finally:
            raw.release_conn()


def _uid(obj: dict[str, Any]) -> str | None:
    return (obj.get("metadata") or {}).get("uid")


# ---- the operator's informers ---------------------------------------------------------------------------------

CACHE_READS = os.environ.get("SYNPO_OPERATOR_CACHE", "1") != "0"
"""Whether reconciles read runs, Jobs and pods from the informers (off: GET/LIST per reconcile; the
benchmarks' baseline)."""

_informers: dict[str, list[tuple[str | None, WatchCache]]] = {}
"""kind (runs, jobs, jobsets, pods) -> [(namespace or None for all namespaces, cache)], filled by `start_informers`."""


def collection_path(kind: str, namespace: str | None) -> str:
    base = {"runs": f"/apis/{GROUP}/{VERSION}", "jobs": "/apis/batch/v1", "pods": "/api/v1", "events": "/api/v1",
            "jobsets": f"/apis/{JOBSET_API_VERSION}", "workloads": f"/apis/{KUEUE_API_VERSION}"}[kind]
    plural = RUN_PLURAL if kind == "runs" else kind
    return f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"


def start_informers(namespaces: list[str | None], specs: dict[str, tuple[str | None, Any, Any]],
                    index: dict[str, str] | None = None,
                    fields: dict[str, str] | None = None) -> dict[str, list[WatchCache]]:
    """Start one informer per kind and namespace (None: every namespace) and wait until each has listed
    once (however long that takes: an informer retries its LIST until the API server answers).
    specs: kind -> (label selector, transform, on_event); index: kind -> the label `by_label` looks up;
    fields: kind -> a field selector."""
    for kind, (label, transform, on_event) in specs.items():
        _informers[kind] = [(ns, WatchCache(collection_path(kind, ns), label, transform=transform,
                                            on_event=on_event, index=(index or {}).get(kind),
                                            field=(fields or {}).get(kind)).start())
                            for ns in namespaces]
    for caches in _informers.values():
        for _, cache in caches:
            while not cache.synced.wait(30):
                log.warning("still waiting for the first LIST of %s", cache.path)
    return {kind: [c for _, c in caches] for kind, caches in _informers.items()}


def informer(kind: str, namespace: str) -> WatchCache | None:
    """The started informer covering `namespace` for reads, or None (not started, or cache reads off)."""
    if not CACHE_READS:
        return None
    for ns, cache in _informers.get(kind, ()):
        if ns is None or ns == namespace:
            return cache
    return None


def stop_informers() -> None:
    for caches in _informers.values():
        for _, cache in caches:
            cache.stop()
    _informers.clear()
