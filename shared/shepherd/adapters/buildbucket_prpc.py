"""Buildbucket v2 over pRPC (JSON over HTTP), the way real Buildbucket serves it."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..clock import Clock
from ..durations import MILLISECOND, SECOND
from ..grpc_codes import Code, RpcError
from ..tasks.buildbucket import server_url

if TYPE_CHECKING:
    import httpx

SERVICE = "buildbucket.v2.Builds"
XSSI_PREFIX = b")]}'"


def _decode(response: httpx.Response) -> dict[str, Any]:
    header = response.headers.get("X-Prpc-Grpc-Code")
    try:
        code = Code.parse(header) if header is not None else None
    except ValueError:
        code = None
    if code is None:
        code = Code.OK if response.status_code == 200 else Code.UNKNOWN
    if code is not Code.OK:
        message = response.text.strip() or f"HTTP {response.status_code}"
        raise RpcError(code, message)
    body = response.content
    if body.startswith(XSSI_PREFIX):
        body = body[len(XSSI_PREFIX) :]
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise RpcError(Code.INTERNAL, "the server answered something that is not JSON") from None
    if not isinstance(data, dict):
        raise RpcError(Code.INTERNAL, "the server answered JSON that is not an object")
    return data


EMAIL_SCOPE = "https://www.googleapis.com/auth/userinfo.email"


class GoogleAccessToken:
    """The function's own identity, as Buildbucket expects callers: an OAuth access token
    from the application default credentials, refreshed when it expires."""

    def __init__(self) -> None:
        self._credentials: Any = None
        self._lock = threading.Lock()

    def __call__(self) -> str:
        import google.auth
        import google.auth.transport.requests

        with self._lock:
            if self._credentials is None:
                self._credentials, _ = google.auth.default(scopes=[EMAIL_SCOPE])
            if not self._credentials.valid:
                self._credentials.refresh(google.auth.transport.requests.Request())
            return str(self._credentials.token)


class PrpcBuildsClient:
    """The `BuildsAPI` port over httpx. Transient failures are retried with backoff.

    `endpoints` maps a configured server host to another base URL (a simulator standing in
    for "cr-buildbucket.appspot.com" in a replay); log lines keep the configured host.
    Requests to https servers carry `Authorization: Bearer` from `token` (by default the
    application default credentials); local http servers get none.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        endpoints: Mapping[str, str] | None = None,
        attempts: int = 3,
        backoff_ns: int = 500 * MILLISECOND,
        timeout_s: float = 30.0,  # 3 tries stay under a function's 120 s
        http: httpx.Client | None = None,
        token: Callable[[], str] | None = None,
    ) -> None:
        self._clock = clock
        self._endpoints = dict(endpoints or {})
        self._attempts = attempts
        self._backoff_ns = backoff_ns
        self._timeout_s = timeout_s
        self._http = http
        self._lock = threading.Lock()
        self._token = token

    def _client(self) -> httpx.Client:
        # Made on the first call: httpx and its TLS context cost ~60 ms, which a function
        # that never calls Buildbucket (api, trigger) should not pay at cold start.
        with self._lock:
            if self._http is None:
                import httpx

                self._http = httpx.Client(timeout=self._timeout_s)
            return self._http

    def close(self) -> None:
        if self._http is not None:
            self._http.close()

    def call(self, server: str, method: str, body: dict[str, Any]) -> dict[str, Any]:
        url = f"{self._endpoints.get(server, server_url(server))}/prpc/{SERVICE}/{method}"
        delay = self._backoff_ns
        for attempt in range(1, self._attempts + 1):
            try:
                return self._call_once(url, body)
            except RpcError as e:
                if not e.transient or attempt == self._attempts:
                    raise
            self._clock.sleep(delay / SECOND)
            delay *= 2
        raise AssertionError("unreachable")

    def _headers(self, url: str) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._token is None and url.startswith("https://"):
            self._token = GoogleAccessToken()
        if self._token is not None:
            try:
                headers["Authorization"] = f"Bearer {self._token()}"
            except Exception as e:  # no credentials here: say so, as Buildbucket would
                raise RpcError(Code.UNAUTHENTICATED, f"no credentials for {url}: {e}") from e
        return headers

    def _call_once(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        headers = self._headers(url)
        try:
            response = self._client().post(url, content=json.dumps(body).encode(), headers=headers)
        except httpx.TimeoutException as e:
            raise RpcError(Code.DEADLINE_EXCEEDED, f"{url}: {str(e) or 'timed out'}") from e
        except httpx.TransportError as e:
            raise RpcError(Code.UNAVAILABLE, f"{url}: {e}") from e
        return _decode(response)

    def schedule_build(self, server: str, request: dict[str, Any]) -> dict[str, Any]:
        return self.call(server, "ScheduleBuild", request)

    def get_build(self, server: str, build_id: str) -> dict[str, Any]:
        return self.call(server, "GetBuild", {"id": build_id})

    def cancel_build(self, server: str, build_id: str, summary: str) -> dict[str, Any]:
        return self.call(server, "CancelBuild", {"id": build_id, "summaryMarkdown": summary})
