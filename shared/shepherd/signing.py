"""HMAC tokens that name an invocation, for `notify.userData`: unforgeable without the key."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import tempfile
from pathlib import Path
from typing import Protocol


class BadToken(ValueError):
    pass


class Signer(Protocol):
    def sign(self, job_id: str, invocation_id: int) -> str: ...

    def verify(self, token: str) -> tuple[str, int]:
        """Returns (job id, invocation id), or raises BadToken."""
        ...


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenSigner:
    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the signing key must have at least 16 bytes")
        self._key = key

    def _mac(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode("ascii"), hashlib.sha256).digest())

    def derive_key(self, purpose: str) -> bytes:
        """A key of its own for another use of the secret (such as the page's form tokens):
        what is signed with it never verifies as a notify.userData token, nor the reverse."""
        label = b"shepherd derived key\0" + purpose.encode("utf-8")
        return hmac.new(self._key, label, hashlib.sha256).digest()

    def sign(self, job_id: str, invocation_id: int) -> str:
        payload = json.dumps({"job": job_id, "inv": str(invocation_id)}, separators=(",", ":"))
        body = _b64(payload.encode("utf-8"))
        return f"{body}.{self._mac(body)}"

    def verify(self, token: str) -> tuple[str, int]:
        """Returns (job id, invocation id), or raises BadToken."""
        body, dot, mac = token.partition(".")
        if not dot or not body.isascii() or not mac.isascii():
            raise BadToken("malformed token")
        if not hmac.compare_digest(self._mac(body), mac):
            raise BadToken("signature does not verify")
        try:
            data = json.loads(_unb64(body))
            return str(data["job"]), int(data["inv"])
        except (ValueError, KeyError, TypeError) as e:
            raise BadToken("malformed token payload") from e


class NoKeySigner:
    """Where no key is configured (a deployed function that neither signs nor verifies)."""

    def sign(self, job_id: str, invocation_id: int) -> str:
        raise BadToken("SHEPHERD_SECRET is not set: this function cannot sign notify.userData")

    def verify(self, token: str) -> tuple[str, int]:
        raise BadToken("SHEPHERD_SECRET is not set: this function cannot verify notify.userData")


def load_or_create_key(secret: str | None, state_dir: Path) -> bytes:
    """The key from SHEPHERD_SECRET, or one generated once into the state directory."""
    if secret:
        return secret.encode("utf-8")
    path = state_dir / "secret.key"
    if path.exists():
        return path.read_bytes()
    state_dir.mkdir(parents=True, exist_ok=True)
    # A private file of its own (mode 0600 from the start), written whole, then linked into
    # place: link() refuses to overwrite, so processes racing here agree on the first key.
    fd, tmp = tempfile.mkstemp(dir=state_dir, prefix=".secret-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(secrets.token_bytes(32))
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        os.unlink(tmp)
    return path.read_bytes()
