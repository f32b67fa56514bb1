"""Talks to a running shepherd: the local stack, or a deployment's trigger and api functions."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import httpx

from shepherd.views import InvocationView, InvocationWithLog

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
RETRIES_ON_503 = 4
V = TypeVar("V")


class ClientError(Exception):
    """A one-line reason, for the command line to print."""


def is_local(url: str) -> bool:
    return urlsplit(url).hostname in LOCAL_HOSTS


def identity_token(audience: str) -> str:
    """A Google identity token for a deployed function (IAM invoker), from google-auth."""
    import google.auth.exceptions
    import google.auth.transport.requests
    import google.oauth2.id_token

    try:
        request = google.auth.transport.requests.Request()
        return google.oauth2.id_token.fetch_id_token(request, audience)
    except google.auth.exceptions.GoogleAuthError as e:
        raise ClientError(f"cannot get an identity token for {audience}: {e}") from None


@dataclass
class ShepherdClient:
    trigger_url: str  # the trigger function's URL
    api_url: str  # the api function's URL (its routes below it)
    timeout_s: float = 30

    @classmethod
    def for_urls(cls, url: str, trigger_url: str | None, api_url: str | None) -> ShepherdClient:
        base = url.rstrip("/")
        return cls(trigger_url or f"{base}/trigger", (api_url or f"{base}/api").rstrip("/"))

    def _call(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        headers = {}
        if not is_local(url):
            audience = f"{urlsplit(url).scheme}://{urlsplit(url).netloc}"
            headers["Authorization"] = f"Bearer {identity_token(audience)}"
        # A 503 means the request changed nothing (a lost race on the invocation): try again.
        for attempt in range(RETRIES_ON_503 + 1):
            try:
                response = httpx.request(
                    method, url, headers=headers, timeout=self.timeout_s, **kwargs
                )
            except httpx.HTTPError as e:
                raise ClientError(f"cannot reach {url}: {e}") from None
            if response.status_code != 503 or attempt == RETRIES_ON_503:
                break
            time.sleep(0.2 * 2**attempt)
        if response.status_code >= 400:
            try:
                message = response.json()["error"]
            except (ValueError, KeyError, TypeError):
                message = response.text.strip()[:200] or response.reason_phrase
            raise ClientError(f"{response.status_code}: {message}")
        return response

    def trigger(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", self.trigger_url, json=body).json()

    def _view(self, read: Callable[[Any], V], response: httpx.Response) -> V:
        """The answer as its view (shepherd/views.py); a ClientError for any other shape."""
        try:
            return read(response.json())
        except (ValueError, KeyError, TypeError) as e:
            raise ClientError(f"unexpected answer from {response.url}: {e!r}") from None

    def invocation(self, invocation_id: str) -> InvocationWithLog:
        url = f"{self.api_url}/invocations/{quote(invocation_id)}"
        return self._view(InvocationWithLog.from_json, self._call("GET", url))

    def log(self, invocation_id: str) -> str:
        return self._call("GET", f"{self.api_url}/invocations/{quote(invocation_id)}/log").text

    def list(self, job_id: str) -> list[InvocationView]:
        url = f"{self.api_url}/jobs/{quote(job_id, safe='')}/invocations"
        return self._view(
            lambda data: [InvocationView.from_json(i) for i in data["invocations"]],
            self._call("GET", url),
        )

    def abort(self, invocation_id: str) -> InvocationView:
        url = f"{self.api_url}/invocations/{quote(invocation_id)}/abort"
        return self._view(InvocationView.from_json, self._call("POST", url))

    def rerun(self, invocation_id: str, body: dict[str, Any]) -> dict[str, Any]:
        url = f"{self.api_url}/invocations/{quote(invocation_id)}/rerun"
        return self._call("POST", url, json=body).json()

    def jobs(self) -> list[dict[str, Any]]:
        return self._view(
            lambda data: list(data["jobs"]), self._call("GET", f"{self.api_url}/jobs")
        )

    def job(self, job_id: str, action: str = "", **body: Any) -> dict[str, Any]:
        """One job (GET), or pause / resume / abort it (POST): the job as it is then."""
        url = f"{self.api_url}/jobs/{job_id}" + (f"/{action}" if action else "")
        answer = self._call("POST", url, json=body) if action else self._call("GET", url)
        return self._view(dict, answer)
