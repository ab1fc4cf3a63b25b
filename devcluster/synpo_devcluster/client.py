"""A minimal Kubernetes REST client: JSON over HTTPS with a bearer token (stdlib only).

Made for the dev cluster and the integration tests; it is not a general client. Paths are API paths,
e.g. ``/api/v1/namespaces/default/pods`` or ``/apis/batch/v1/namespaces/ns/jobs/name/status``.

    c = KubeClient(server, token=token, ca_file=ca)
    c.post("/api/v1/namespaces", {"metadata": {"name": "x"}})
    c.get("/api/v1/namespaces/x")                      # -> dict
    c.patch(path, {"metadata": {"labels": {...}}})     # merge patch by default
    c.delete(path, propagationPolicy="Foreground")
    c.wait_for(path, lambda obj: ..., timeout=60)      # poll until predicate(obj) is truthy
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
PATCH_TYPES = {
    "merge": "application/merge-patch+json",
    "strategic": "application/strategic-merge-patch+json",
    "json": "application/json-patch+json",
    "apply": "application/apply-patch+yaml",
}


class ApiError(Exception):
    """A non-2xx answer from the API server."""

    def __init__(self, method: str, path: str, status: int, body: Any):
        self.method = method
        self.path = path
        self.status = status
        self.body = body
        self.reason = body.get("reason", "") if isinstance(body, dict) else ""
        msg = body.get("message", body) if isinstance(body, dict) else body
        super().__init__(f"{method} {path}: HTTP {status} {self.reason}: {msg}")


class KubeClient:
    def __init__(
        self,
        server: str,
        token: str | None = None,
        ca_file: str | Path | None = None,
        timeout: float = 30.0,
        insecure: bool = False,
    ):
        self.server = server.rstrip("/")
        self.token = token
        self.ca_file = str(ca_file) if ca_file else None
        self.timeout = timeout
        if insecure:
            self._ctx = ssl._create_unverified_context()
        else:
            self._ctx = ssl.create_default_context(cafile=self.ca_file)

    @classmethod
    def from_kubeconfig(cls, path: str | Path, **kw: Any) -> KubeClient:
        """Token + CA-file kubeconfigs only (what ``synpo dev-cluster`` writes)."""
        import yaml

        cfg = yaml.safe_load(Path(path).read_text())
        ctx_name = cfg.get("current-context")
        ctx = next(c["context"] for c in cfg["contexts"] if c["name"] == ctx_name)
        cluster = next(c["cluster"] for c in cfg["clusters"] if c["name"] == ctx["cluster"])
        user = next(u["user"] for u in cfg["users"] if u["name"] == ctx["user"])
        return cls(
            cluster["server"], token=user.get("token"), ca_file=cluster.get("certificate-authority"), **kw
        )

    def with_token(self, token: str) -> KubeClient:
        """Same server and CA, another identity (e.g. a ServiceAccount token)."""
        return KubeClient(self.server, token=token, ca_file=self.ca_file, timeout=self.timeout)

    # ---- raw -------------------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: dict[str, Any] | None = None,
        content_type: str = "application/json",
        raw: bool = False,
    ) -> Any:
        url = self.server + path
        if params:
            q = {
                k: ("true" if v is True else "false" if v is False else v)
                for k, v in params.items()
                if v is not None
            }
            url += ("&" if "?" in url else "?") + urllib.parse.urlencode(q)
        data = None
        headers = {"Accept": "application/json"}
        if body is not None:
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            headers["Content-Type"] = content_type
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, context=self._ctx, timeout=self.timeout) as resp:
                payload = resp.read()
        except urllib.error.HTTPError as e:
            text = e.read().decode(errors="replace")
            try:
                parsed: Any = json.loads(text)
            except ValueError:
                parsed = text
            raise ApiError(method, path, e.code, parsed) from None
        if raw:
            return payload.decode(errors="replace")
        return json.loads(payload) if payload else None

    # ---- verbs -----------------------------------------------------------------------------
    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params)

    def get_text(self, path: str, **params: Any) -> str:
        return self.request("GET", path, params=params, raw=True)

    def post(self, path: str, body: Any, **params: Any) -> Any:
        return self.request("POST", path, body, params=params)

    def put(self, path: str, body: Any, **params: Any) -> Any:
        return self.request("PUT", path, body, params=params)

    def patch(self, path: str, body: Any, patch_type: str = "merge", **params: Any) -> Any:
        """patch_type: merge | strategic | json | apply (apply needs fieldManager=... in params)."""
        return self.request("PATCH", path, body, params=params, content_type=PATCH_TYPES[patch_type])

    def delete(self, path: str, body: Any = None, **params: Any) -> Any:
        return self.request("DELETE", path, body, params=params)

    # ---- conveniences ----------------------------------------------------------------------
    def exists(self, path: str) -> bool:
        try:
            self.get(path)
            return True
        except ApiError as e:
            if e.status == 404:
                return False
            raise

    def delete_if_exists(self, path: str, **params: Any) -> bool:
        try:
            self.delete(path, **params)
            return True
        except ApiError as e:
            if e.status == 404:
                return False
            raise

    def apply(self, collection: str, obj: dict, *, unchanged: Callable[[dict], bool] | None = None) -> None:
        """Create the object in `collection`, or replace the one there unless `unchanged(current)` says it is
        the same."""
        try:
            self.post(collection, obj)
            return
        except ApiError as e:
            if e.status != 409:
                raise
        path = f"{collection}/{obj['metadata']['name']}"
        current = self.get(path)
        if unchanged is None or not unchanged(current):
            self.put(path, {**obj, "metadata": {**obj["metadata"],
                                                "resourceVersion": current["metadata"]["resourceVersion"]}})

    def apply_crd(self, crd: dict, *, unchanged: Callable[[dict], bool] | None = None,
                  timeout: float = 60.0) -> None:
        """`apply` a CustomResourceDefinition, then wait until it is Established."""
        self.apply(CRD_PATH, crd, unchanged=unchanged)
        self.wait_for(f"{CRD_PATH}/{crd['metadata']['name']}", lambda o: any(
            c.get("type") == "Established" and c.get("status") == "True"
            for c in (o.get("status") or {}).get("conditions") or []), timeout=timeout)

    def wait_for(
        self,
        path: str,
        predicate: Callable[[Any], Any],
        timeout: float = 60.0,
        interval: float = 0.25,
        **params: Any,
    ) -> Any:
        """Poll GET path until predicate(obj) is truthy; return obj. 404s count as 'not yet'.

        Raises TimeoutError carrying the last object seen."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            try:
                last = self.get(path, **params)
                if predicate(last):
                    return last
            except ApiError as e:
                if e.status != 404:
                    raise
                last = e
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f}s waiting on {path}; last: {_short(last)}")
            time.sleep(interval)

    def wait_gone(self, path: str, timeout: float = 60.0, interval: float = 0.25) -> None:
        deadline = time.monotonic() + timeout
        while self.exists(path):
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {path} to be deleted")
            time.sleep(interval)

    def version(self) -> dict:
        return self.get("/version")

    def can_i(
        self, verb: str, resource: str, namespace: str | None = None, group: str = "", name: str = ""
    ) -> bool:
        """SelfSubjectAccessReview for the client's own identity."""
        attrs: dict[str, Any] = {"verb": verb, "resource": resource, "group": group}
        if namespace:
            attrs["namespace"] = namespace
        if name:
            attrs["name"] = name
        review = self.post(
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": attrs},
            },
        )
        return bool(review.get("status", {}).get("allowed"))

    def request_token(
        self,
        namespace: str,
        service_account: str,
        expiration_seconds: int = 3600,
        audiences: list[str] | None = None,
    ) -> str:
        """TokenRequest API: a bound token for a ServiceAccount."""
        spec: dict[str, Any] = {"expirationSeconds": expiration_seconds}
        if audiences:
            spec["audiences"] = audiences
        tr = self.post(
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
        )
        return tr["status"]["token"]


def _short(obj: Any, limit: int = 600) -> str:
    s = json.dumps(obj.get("status", obj) if isinstance(obj, dict) else str(obj), default=str)
    return s if len(s) <= limit else s[:limit] + "..."
