"""on_timer's OIDC check with real google-auth, against identity tokens signed by a local key
whose public half a local certs endpoint serves (Google's own certs are not reachable here)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import crypt, jwt

from localstack import serving
from shepherd.auth import OidcAuth, SharedTokenAuth, Unauthorized

AUDIENCE = "https://us-central1-p.cloudfunctions.net/on-timer"
ACCOUNT = "shepherd-tasks-invoker@p.iam.gserviceaccount.com"


def pem_pair() -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


GOOD_PRIVATE, GOOD_PUBLIC = pem_pair()
OTHER_PRIVATE, _ = pem_pair()


@pytest.fixture(scope="module")
def certs_url() -> Iterator[str]:
    body = json.dumps({"k1": GOOD_PUBLIC.decode()}).encode()

    class Certs(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    with serving(Certs) as url:
        yield url + "/certs"


def token(private: bytes = GOOD_PRIVATE, **claims: Any) -> str:
    now = int(time.time())
    payload = {
        "iss": "https://accounts.google.com",
        "aud": AUDIENCE,
        "email": ACCOUNT,
        "email_verified": True,
        "iat": now,
        "exp": now + 600,
        **claims,
    }
    return jwt.encode(crypt.RSASigner.from_string(private, key_id="k1"), payload).decode()


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def test_cloud_tasks_token_for_the_configured_account_passes(certs_url: str) -> None:
    OidcAuth(AUDIENCE, ACCOUNT, certs_url).check(bearer(token()))


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing bearer"),
        ({"Authorization": "Basic abc"}, "missing bearer"),
        (bearer(token(aud="https://elsewhere")), "identity token refused"),
        (bearer(token(email="intruder@p.iam.gserviceaccount.com")), "another account"),
        (bearer(token(email_verified=False)), "another account"),
        (bearer(token(iss="https://evil.example.com")), "unexpected issuer"),
        (bearer(token(exp=int(time.time()) - 3600, iat=int(time.time()) - 7200)), "refused"),
        (bearer(token(OTHER_PRIVATE)), "identity token refused"),
        (bearer("not.a.jwt"), "identity token refused"),
    ],
)
def test_anything_else_is_refused_without_echoing_it(
    certs_url: str, headers: dict[str, str], reason: str
) -> None:
    with pytest.raises(Unauthorized, match=reason) as refused:
        OidcAuth(AUDIENCE, ACCOUNT, certs_url).check(headers)
    given = headers.get("Authorization", "").partition(" ")[2]
    assert not given or given not in str(refused.value)


def test_shared_token() -> None:
    auth = SharedTokenAuth("s3cret-token")
    auth.check(auth.headers())
    for headers in ({}, {"X-Shepherd-Timer-Token": "s3cret-tokeN"}, {"X-Shepherd-Timer-Token": ""}):
        with pytest.raises(Unauthorized) as refused:
            auth.check(headers)
        assert "s3cret" not in str(refused.value)
