"""A small HTTP client for the hub API, used by the ``cloud-hub`` CLI commands."""

from __future__ import annotations

import os
from typing import Any

import httpx

from edge_runtime.errors import EdgeError


class HubClientError(EdgeError):
    """What the hub answered (its own status, ``code`` and ``field``), or ``hub_unreachable``."""

    status_code = 503
    code = "hub_unreachable"


class HubClient:
    def __init__(self, url: str | None = None, api_key: str | None = None, timeout: float = 30.0) -> None:
        self.url = (url or os.environ.get("HUB_URL") or "http://127.0.0.1:8000").rstrip("/")
        key = api_key or os.environ.get("HUB_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def request(self, method: str, path: str, **kw: Any) -> Any:
        try:
            r = self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise HubClientError(f"cannot reach the hub at {self.url}: {exc}") from exc
        if r.status_code >= 400:
            body: Any = None
            try:
                body = r.json()
            except ValueError:
                pass
            if not isinstance(body, dict):
                body = {"error": r.text[:200]}
            raise HubClientError(
                f"hub answered {r.status_code}: {body.get('error') or body}",
                code=str(body.get("code") or "internal_error"),
                field=body.get("field"),
                status_code=r.status_code,
            )
        if not r.content:
            return None
        ctype = r.headers.get("content-type", "")
        return r.json() if "json" in ctype else r.content

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Any:
        return self.request("POST", path, **kw)

    def close(self) -> None:
        self.http.close()
