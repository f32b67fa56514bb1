"""The pRPC client's credentials: a bearer token to real servers, none to local ones; the
impersonated Buildbucket account; refusals; the server's publisher account."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest

from localstack import serving, write_jobs
from shepherd.adapters.buildbucket_prpc import (
    EMAIL_SCOPE,
    GERRIT_SCOPE,
    GoogleAccessToken,
    ImpersonatedAccessToken,
    PrpcBuildsClient,
)
from shepherd.clock import VirtualClock
from shepherd.config import Config
from shepherd.grpc_codes import Code, RpcError
from shepherd.service import _builds_client


@pytest.fixture
def server() -> Iterator[tuple[str, list[str | None]]]:
    seen: list[str | None] = []

    class Builds(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(self.headers.get("Authorization"))
            body = b')]}\'\n{"id": "1", "status": "STARTED"}'
            self.send_response(200)
            self.send_header("X-Prpc-Grpc-Code", "0")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    with serving(Builds) as url:
        yield url, seen


def test_a_local_server_gets_no_credentials(server: tuple[str, list[str | None]]) -> None:
    url, seen = server
    client = PrpcBuildsClient(VirtualClock(0))
    assert client.get_build(url, "1")["status"] == "STARTED"
    assert seen == [None]


def test_the_token_goes_with_every_call(server: tuple[str, list[str | None]]) -> None:
    url, seen = server
    tokens = iter(["first", "second"])
    client = PrpcBuildsClient(VirtualClock(0), token=lambda: next(tokens))
    client.get_build(url, "1")
    client.get_build(url, "1")
    assert seen == ["Bearer first", "Bearer second"]


def test_missing_credentials_are_a_clear_fatal_error(server: tuple[str, list[str | None]]) -> None:
    url, seen = server

    def no_credentials() -> str:
        raise RuntimeError("Your default credentials were not found")

    client = PrpcBuildsClient(VirtualClock(0), token=no_credentials)
    with pytest.raises(RpcError) as failed:
        client.get_build(url, "1")
    assert failed.value.code is Code.UNAUTHENTICATED and not failed.value.transient
    assert "default credentials were not found" in str(failed.value)
    assert seen == []


ACCOUNT = "shepherd-buildbucket@example-project.iam.gserviceaccount.com"


class FakeGoogle:
    """OAuth's token endpoint and IAM Credentials' generateAccessToken, on a local port:
    what they were asked, and tokens that say where they came from."""

    def __init__(self) -> None:
        self.refreshes: list[dict[str, str]] = []
        self.mints: list[tuple[str, str | None, dict[str, Any]]] = []

    def handler(self) -> type[BaseHTTPRequestHandler]:
        google = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path == "/token":
                    google.refreshes.append(dict(parse_qsl(raw.decode())))
                    answer = {"access_token": "source-token", "expires_in": 3600}
                elif self.path.endswith(":generateAccessToken"):
                    auth = self.headers.get("Authorization")
                    google.mints.append((self.path, auth, json.loads(raw)))
                    answer = {"accessToken": "minted-token", "expireTime": "2099-01-01T00:00:00Z"}
                else:
                    self.send_error(404)
                    return
                body = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


SOURCE = "shepherd-timer@example-project.iam.gserviceaccount.com"


@pytest.fixture
def google(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, FakeGoogle]]:
    """Application default credentials (a function's service account key) whose token
    endpoint, and the IAM endpoint, are a local server."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    fake = FakeGoogle()
    with serving(fake.handler()) as url:
        adc = tmp_path / "adc.json"
        adc.write_text(
            json.dumps(
                {
                    "type": "service_account",
                    "project_id": "example-project",
                    "private_key_id": "k1",
                    "private_key": pem,
                    "client_email": SOURCE,
                    "client_id": "1",
                    "token_uri": f"{url}/token",
                }
            )
        )
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(adc))
        yield url, fake


def test_buildbucket_calls_carry_the_impersonated_accounts_token(
    server: tuple[str, list[str | None]], google: tuple[str, FakeGoogle]
) -> None:
    url, seen = server
    google_url, fake = google
    token = ImpersonatedAccessToken(ACCOUNT, iam_url=google_url)
    client = PrpcBuildsClient(VirtualClock(0), token=token)
    client.get_build(url, "1")
    client.get_build(url, "1")
    assert seen == ["Bearer minted-token", "Bearer minted-token"]
    (refresh,) = fake.refreshes  # the source credentials' own token, by a signed JWT
    assert refresh["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    # One token minted for both calls, for the target principal, with LUCI's scope, asked
    # with the source credentials' own token.
    assert fake.mints == [
        (
            f"/v1/projects/-/serviceAccounts/{ACCOUNT}:generateAccessToken",
            "Bearer source-token",
            {"delegates": None, "scope": [EMAIL_SCOPE], "lifetime": "3600s"},
        )
    ]
    assert token.identity == client.identity(url) == ACCOUNT


@pytest.mark.parametrize(
    ("status", "header", "code"),
    [
        (403, None, Code.PERMISSION_DENIED),
        (401, None, Code.UNAUTHENTICATED),
        (403, "7", Code.PERMISSION_DENIED),
        (401, "16", Code.UNAUTHENTICATED),
    ],
)
def test_a_refused_caller_is_fatal_and_named(
    google: tuple[str, FakeGoogle], status: int, header: str | None, code: Code
) -> None:
    calls: list[str] = []

    class Refusing(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            calls.append(self.path)
            body = b"Forbidden\n"
            self.send_response(status)
            if header is not None:
                self.send_header("X-Prpc-Grpc-Code", header)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    google_url, _ = google
    token = ImpersonatedAccessToken(ACCOUNT, iam_url=google_url)
    client = PrpcBuildsClient(VirtualClock(0), token=token)
    request = {"builder": {"project": "chromium", "bucket": "ci", "builder": "b"}}
    with serving(Refusing) as url, pytest.raises(RpcError) as refused:
        client.schedule_build(url, request)
    assert refused.value.code is code and not refused.value.transient
    assert len(calls) == 1, "a refusal is not retried"
    assert f'it was called as "{ACCOUNT}"' in refused.value.hint
    assert refused.value.hint.endswith(
        'needs the Buildbucket permission buildbucket.builds.add in bucket "chromium/ci"'
    )


def test_an_unlabelled_server_error_stays_transient() -> None:
    class Failing(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(502)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    client = PrpcBuildsClient(VirtualClock(0), attempts=1)
    with serving(Failing) as url, pytest.raises(RpcError) as failed:
        client.get_build(url, "1")
    assert failed.value.code is Code.UNKNOWN and failed.value.transient and not failed.value.hint


def test_the_service_calls_buildbucket_as_the_configured_account(tmp_path: Path) -> None:
    jobs = str(write_jobs(tmp_path / "jobs.toml", "cr-buildbucket.appspot.com"))
    config = Config(jobs=jobs, state=tmp_path / "s.db", buildbucket_account=ACCOUNT)
    client = _builds_client(config, VirtualClock(0))
    assert client.identity("https://cr-buildbucket.appspot.com") == ACCOUNT
    # Local servers still get no token: nothing is minted for them.
    assert client.identity("http://127.0.0.1:8") == "anonymous (no token goes to http:// servers)"
    plain = _builds_client(Config(jobs=jobs), VirtualClock(0))
    assert plain.identity("http://127.0.0.1:8").startswith("anonymous")


def test_the_publisher_account_is_asked_of_the_server_once() -> None:
    asked: list[str] = []
    answers = iter([(503, b"busy"), (200, b'{"service_account_name": "bb@example.com"}')])

    class Info(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            status, body = next(answers)
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    client = PrpcBuildsClient(VirtualClock(0))
    with serving(Info) as url:
        with pytest.raises(RpcError) as busy:
            client.publisher_account(url)
        assert busy.value.transient and "HTTP 503" in busy.value.message
        assert client.publisher_account(url) == "bb@example.com"
        assert client.publisher_account(url) == "bb@example.com"
    assert asked == ["/auth/api/v1/server/info"] * 2


def test_gitiles_tokens_are_scoped_for_gerrit(google: tuple[str, FakeGoogle]) -> None:
    _, fake = google
    token = GoogleAccessToken((GERRIT_SCOPE, EMAIL_SCOPE))
    assert token() == "source-token"
    (refresh,) = fake.refreshes
    claims = refresh["assertion"].split(".")[1]
    scopes = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))["scope"]
    assert scopes.split() == [GERRIT_SCOPE, EMAIL_SCOPE]


def test_the_default_credentials_name_their_service_account(
    google: tuple[str, FakeGoogle],
) -> None:
    token = GoogleAccessToken()
    assert token.identity == "the application default credentials"  # not loaded yet
    assert token() == "source-token"
    assert token.identity == SOURCE
