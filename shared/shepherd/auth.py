"""Who may deliver status checks to `on_timer`.

Deployed, Cloud Tasks calls with an OIDC identity token for the configured service account:
verified here with google-auth (audience = the on_timer URL), on top of Cloud Run's invoker
check. Locally (the embedded queue, or the Cloud Tasks emulator, which sends no token), the
queue sends a shared token derived from the signing key. Comparisons are constant-time, and no
token ever reaches a log line or an answer.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

TIMER_TOKEN_HEADER = "X-Shepherd-Timer-Token"
GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
GOOGLE_ISSUERS = ("accounts.google.com", "https://accounts.google.com")


class Unauthorized(Exception):
    """Refused; the message says why without repeating any credential."""


class TimerAuth(Protocol):
    def check(self, headers: Mapping[str, str]) -> None: ...


def timer_token(key: bytes) -> str:
    return hmac.new(key, b"shepherd on_timer", hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class SharedTokenAuth:
    token: str

    def headers(self) -> dict[str, str]:
        return {TIMER_TOKEN_HEADER: self.token}

    def check(self, headers: Mapping[str, str]) -> None:
        given = headers.get(TIMER_TOKEN_HEADER)
        if given is None:
            raise Unauthorized(f"missing {TIMER_TOKEN_HEADER} header")
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            raise Unauthorized(f"wrong {TIMER_TOKEN_HEADER} header")


@dataclass(frozen=True)
class OidcAuth:
    audience: str  # the on_timer URL the tasks target
    service_account: str
    certs_url: str = GOOGLE_CERTS_URL

    def check(self, headers: Mapping[str, str]) -> None:
        import google.auth.exceptions
        import google.auth.transport.requests
        import google.oauth2.id_token

        scheme, _, token = headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("missing bearer identity token")
        try:
            claims = google.oauth2.id_token.verify_token(
                token,
                google.auth.transport.requests.Request(),
                audience=self.audience,
                certs_url=self.certs_url,
            )
        except (ValueError, google.auth.exceptions.GoogleAuthError) as e:
            raise Unauthorized(f"identity token refused: {type(e).__name__}") from None
        if claims.get("iss") not in GOOGLE_ISSUERS:
            raise Unauthorized("identity token from an unexpected issuer")
        email = str(claims.get("email", ""))
        if not claims.get("email_verified") or not hmac.compare_digest(
            email.encode(), self.service_account.encode()
        ):
            raise Unauthorized("identity token for another account")
