"""The pRPC client's credentials: a bearer token to real servers, none to local ones."""

from __future__ import annotations

from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from localstack import serving
from shepherd.adapters.buildbucket_prpc import PrpcBuildsClient
from shepherd.clock import VirtualClock
from shepherd.grpc_codes import Code, RpcError


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
