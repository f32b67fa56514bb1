"""What keeps other sites from pausing, resuming or aborting a job through an operator's
browser.

The page's forms carry a token: an HMAC over the job id and an expiry, keyed from the service's
signing key (or, where a function has none, a key of the process's own: the page must then be
reloaded after the function restarts). A browser request is refused unless it comes from the
page's own origin (`Sec-Fetch-Site`, `Origin`), whatever its token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from urllib.parse import urlsplit

from .durations import SECOND
from .signing import Signer, TokenSigner

FORM_TOKEN_TTL_NS = 3600 * SECOND
# What a browser sends to another origin without asking first (a CORS "simple request"): a POST
# of these needs the form's token.
SIMPLE_CONTENT_TYPES = frozenset(
    {"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"}
)
_PROCESS_KEY = secrets.token_bytes(32)


class BadFormToken(ValueError):
    pass


class FormTokens:
    def __init__(self, key: bytes, ttl_ns: int = FORM_TOKEN_TTL_NS) -> None:
        self._key = key
        self._ttl_ns = ttl_ns

    def _mac(self, job_id: str, expiry_s: int) -> str:
        message = f"{expiry_s}\n{job_id}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def issue(self, job_id: str, now_ns: int) -> str:
        expiry_s = (now_ns + self._ttl_ns) // SECOND
        return f"{expiry_s}.{self._mac(job_id, expiry_s)}"

    def check(self, token: str, job_id: str, now_ns: int) -> None:
        """Raises BadFormToken unless the token was issued for this job and is still valid."""
        if not token:
            raise BadFormToken("the form carries no token: reload the page")
        expiry, dot, mac = token.partition(".")
        if not (dot and expiry.isascii() and expiry.isdigit() and len(expiry) < 13):
            raise BadFormToken("the form's token is malformed")
        if not mac.isascii():  # compare_digest takes no other text
            raise BadFormToken("the form's token is malformed")
        if not hmac.compare_digest(self._mac(job_id, int(expiry)), mac):
            raise BadFormToken("the form's token is not this job's")
        if int(expiry) * SECOND <= now_ns:
            raise BadFormToken("the form's token expired: reload the page")


def form_tokens(signer: Signer) -> FormTokens:
    """Keyed from the signing key when the service has one, else from the process's key."""
    if isinstance(signer, TokenSigner):
        return FormTokens(signer.derive_key("form-token"))
    return FormTokens(_PROCESS_KEY)


def cross_origin(headers: Mapping[str, str], hosts: set[str]) -> str | None:
    """Why a browser request did not come from the page's own origin, or None if it did (or
    came from no browser: command-line clients send neither header). `hosts` are the names
    the service is reached by (the Host header, and X-Forwarded-Host behind a proxy)."""
    site = headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return f"a {site} request cannot change anything here"
    origin = headers.get("Origin")
    if origin is not None and urlsplit(origin).netloc.lower() not in hosts:
        return f'a request from "{origin}" cannot change anything here'
    return None
