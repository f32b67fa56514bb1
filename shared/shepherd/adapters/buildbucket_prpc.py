"""Buildbucket v2 over pRPC (JSON over HTTP), the way real Buildbucket serves it."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..clock import Clock
from ..durations import MILLISECOND, SECOND
from ..grpc_codes import Code, RpcError
from ..tasks.buildbucket import server_url

if TYPE_CHECKING:
    import httpx

SERVICE = "buildbucket.v2.Builds"
XSSI_PREFIX = b")]}'"
SERVER_INFO_PATH = "/auth/api/v1/server/info"
# The realm permission Buildbucket checks for each method (luci-go's buildbucket/bbperms).
PERMISSIONS = {
    "ScheduleBuild": "buildbucket.builds.add",
    "GetBuild": "buildbucket.builds.get",
    "CancelBuild": "buildbucket.builds.cancel",
}
# What an answer without X-Prpc-Grpc-Code means: a proxy or Google's front end refused the
# token before Buildbucket saw the call. Anything else unlabelled may be a passing outage.
_UNLABELLED = {200: Code.OK, 401: Code.UNAUTHENTICATED, 403: Code.PERMISSION_DENIED}
_REFUSED = (Code.UNAUTHENTICATED, Code.PERMISSION_DENIED)


def _decode(response: httpx.Response) -> dict[str, Any]:
    header = response.headers.get("X-Prpc-Grpc-Code")
    try:
        code = Code.parse(header) if header is not None else None
    except ValueError:
        code = None
    if code is None:
        code = _UNLABELLED.get(response.status_code, Code.UNKNOWN)
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
# What LUCI asks for to read Gitiles and Gerrit.
GERRIT_SCOPE = "https://www.googleapis.com/auth/gerritcodereview"
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
IAM_CREDENTIALS_URL = "https://iamcredentials.googleapis.com"


class GoogleAccessToken:
    """The function's own identity, as Buildbucket expects callers: an OAuth access token
    from the application default credentials, refreshed when it expires."""

    def __init__(self, scopes: Sequence[str] = (EMAIL_SCOPE,)) -> None:
        self._scopes = list(scopes)
        self._credentials: Any = None
        self._lock = threading.Lock()

    @property
    def identity(self) -> str:
        """Who the tokens speak for, as far as the credentials tell (user credentials don't)."""
        email = getattr(self._credentials, "service_account_email", None)
        if isinstance(email, str) and "@" in email:
            return email
        return "the application default credentials"

    def _make(self) -> Any:
        import google.auth

        credentials, _ = google.auth.default(scopes=self._scopes)
        return credentials

    def __call__(self) -> str:
        import google.auth.transport.requests

        with self._lock:
            if self._credentials is None:
                self._credentials = self._make()
            if not self._credentials.valid:
                self._credentials.refresh(google.auth.transport.requests.Request())
            return str(self._credentials.token)


class ImpersonatedAccessToken(GoogleAccessToken):
    """Tokens of `account` (SHEPHERD_BUILDBUCKET_ACCOUNT), minted by IAM Credentials'
    generateAccessToken with the application default credentials, which need
    roles/iam.serviceAccountTokenCreator on that account. `iam_url` stands in for
    iamcredentials.googleapis.com (tests)."""

    def __init__(self, account: str, *, iam_url: str = IAM_CREDENTIALS_URL) -> None:
        super().__init__()
        self._account = account
        self._endpoint = (
            f"{iam_url.rstrip('/')}/v1/projects/-/serviceAccounts/{account}:generateAccessToken"
        )

    @property
    def identity(self) -> str:
        return self._account

    def _make(self) -> Any:
        import google.auth
        from google.auth import impersonated_credentials

        source, _ = google.auth.default(scopes=[CLOUD_PLATFORM_SCOPE])
        return impersonated_credentials.Credentials(
            source_credentials=source,
            target_principal=self._account,
            target_scopes=[EMAIL_SCOPE],
            iam_endpoint_override=self._endpoint,
        )


class PrpcBuildsClient:
    """The `BuildsAPI` port over httpx. Transient failures are retried with backoff.

    `endpoints` maps a configured server host to another base URL (a simulator standing in
    for "cr-buildbucket.appspot.com" in a replay); log lines keep the configured host.
    Requests to https servers carry `Authorization: Bearer` from `token` (by default the
    application default credentials); local http servers get none, unless `token` is given
    and `token_over_http` (tests). A refused caller
    (UNAUTHENTICATED, PERMISSION_DENIED) gets an RpcError whose `hint` names the identity
    and the permission the method needs.
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
        token_over_http: bool = True,
    ) -> None:
        self._clock = clock
        self._endpoints = dict(endpoints or {})
        self._attempts = attempts
        self._backoff_ns = backoff_ns
        self._timeout_s = timeout_s
        self._http = http
        self._lock = threading.Lock()
        self._token = token
        self._token_over_http = token_over_http
        self._publishers: dict[str, str] = {}

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

    def _base_url(self, server: str) -> str:
        return self._endpoints.get(server, server_url(server))

    def call(self, server: str, method: str, body: dict[str, Any]) -> dict[str, Any]:
        url = f"{self._base_url(server)}/prpc/{SERVICE}/{method}"
        delay = self._backoff_ns
        for attempt in range(1, self._attempts + 1):
            try:
                return self._call_once(url, body)
            except RpcError as e:
                if e.code in _REFUSED:
                    e.hint = self._refusal_hint(e.code, url, method, body)
                if not e.transient or attempt == self._attempts:
                    raise
            self._clock.sleep(delay / SECOND)
            delay *= 2
        raise AssertionError("unreachable")

    def _sends_token(self, url: str) -> bool:
        return url.startswith("https://") or (self._token is not None and self._token_over_http)

    def identity(self, url: str) -> str:
        """Who a call to `url` is made as, for the line that explains a refusal."""
        if not self._sends_token(url) or self._token is None:
            return "anonymous (no token goes to http:// servers)"
        identity = getattr(self._token, "identity", None)
        return identity if isinstance(identity, str) else "the owner of the configured token"

    def _refusal_hint(self, code: Code, url: str, method: str, body: dict[str, Any]) -> str:
        permission = PERMISSIONS.get(method, "a Buildbucket permission")
        builder = body.get("builder")
        where = "the build's bucket"
        if isinstance(builder, dict) and {"project", "bucket"} <= builder.keys():
            where = f'bucket "{builder["project"]}/{builder["bucket"]}"'
        refused = "was not let in" if code is Code.UNAUTHENTICATED else "was refused"
        return (
            f'{method} {refused}: it was called as "{self.identity(url)}", which needs '
            f"the Buildbucket permission {permission} in {where}"
        )

    def publisher_account(self, server: str) -> str:
        """The account `server` acts as, which publishes its build notifications: asked of the
        server as LUCI asks (GET /auth/api/v1/server/info), once per server and process."""
        with self._lock:
            known = self._publishers.get(server)
        if known is not None:
            return known
        import httpx

        url = self._base_url(server) + SERVER_INFO_PATH
        try:
            response = self._client().get(url, headers={"Accept": "application/json"})
        except httpx.TransportError as e:
            raise RpcError(Code.UNAVAILABLE, f"{url}: {e}") from e
        if not response.is_success:
            code = Code.UNAVAILABLE if response.status_code >= 500 else Code.UNKNOWN
            text = response.text.strip()[:200]
            raise RpcError(code, f"{url}: HTTP {response.status_code}: {text}")
        try:
            account = response.json()["service_account_name"]
        except (ValueError, KeyError, TypeError):
            account = None
        if not isinstance(account, str) or "@" not in account:
            raise RpcError(Code.UNKNOWN, f"{url} did not name the server's service account")
        with self._lock:
            self._publishers[server] = account
        return account

    def _headers(self, url: str) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._token is None and url.startswith("https://"):
            self._token = GoogleAccessToken()
        if self._token is not None and self._sends_token(url):
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

    def batch_get_builds(
        self, server: str, build_ids: Sequence[str]
    ) -> list[dict[str, Any] | RpcError]:
        return batch_answers(self.call(server, "Batch", batch_request(build_ids)))


def batch_request(build_ids: Sequence[str]) -> dict[str, Any]:
    return {"requests": [{"getBuild": {"id": build_id}} for build_id in build_ids]}


def batch_answers(response: dict[str, Any]) -> list[dict[str, Any] | RpcError]:
    """A Batch response's answers in request order: each a build, or the item's own error."""
    answers: list[dict[str, Any] | RpcError] = []
    for item in response.get("responses", []):
        if "getBuild" in item:
            answers.append(item["getBuild"])
            continue
        error = item.get("error", {})
        try:
            code = Code(int(error.get("code", Code.UNKNOWN)))
        except ValueError:
            code = Code.UNKNOWN
        answers.append(RpcError(code, str(error.get("message", ""))))
    return answers
