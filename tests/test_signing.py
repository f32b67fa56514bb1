"""notify.userData tokens and the signing key."""

from __future__ import annotations

import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shepherd.signing import BadToken, TokenSigner, load_or_create_key

SIGNER = TokenSigner(b"k" * 32)


@given(job=st.text(min_size=1), invocation=st.integers(0, 2**63 - 1))
def test_tokens_round_trip(job: str, invocation: int) -> None:
    assert SIGNER.verify(SIGNER.sign(job, invocation)) == (job, invocation)


@pytest.mark.parametrize(
    "token",
    [
        TokenSigner(b"x" * 32).sign("a/b", 1),  # another key
        SIGNER.sign("a/b", 1)[:-1] + "A",  # a changed signature
        "nodot",
        "ü.ü",
        "",
    ],
)
def test_anything_else_is_a_bad_token(token: str) -> None:
    with pytest.raises(BadToken):
        SIGNER.verify(token)


def test_racing_processes_agree_on_one_private_key(tmp_path: Path) -> None:
    with ThreadPoolExecutor(8) as pool:
        keys = set(pool.map(lambda _: load_or_create_key(None, tmp_path), range(32)))
    assert len(keys) == 1 and len(next(iter(keys))) == 32
    key_file = tmp_path / "secret.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["secret.key"]  # no temporary files left
    assert load_or_create_key("configured", tmp_path) == b"configured"
