"""The simulators' own request handling behind the real ports, without sockets: fast enough
for histories of thousands of steps (the model-based test, the kind contract)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import httpx

from shepherd.adapters.buildbucket_prpc import batch_answers, batch_request
from shepherd.adapters.gitiles_rest import GitilesClient
from shepherd.grpc_codes import RpcError
from shepherd_tools.gitiles_sim.server import GitilesSim
from shepherd_tools.simulator.server import Simulator


class InProcessBuilds:
    """The BuildsAPI port on the Buildbucket simulator's state machine."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    def schedule_build(self, server: str, request: dict[str, Any]) -> dict[str, Any]:
        return self.sim.call("ScheduleBuild", json.loads(json.dumps(request)))

    def get_build(self, server: str, build_id: str) -> dict[str, Any]:
        return self.sim.call("GetBuild", {"id": build_id})

    def cancel_build(self, server: str, build_id: str, summary: str) -> dict[str, Any]:
        return self.sim.call("CancelBuild", {"id": build_id, "summaryMarkdown": summary})

    def batch_get_builds(
        self, server: str, build_ids: Sequence[str]
    ) -> list[dict[str, Any] | RpcError]:
        return batch_answers(self.sim.call("Batch", batch_request(build_ids)))

    def publisher_account(self, server: str) -> str:
        return str(self.sim.server_info()["service_account_name"])


class InProcessGitiles:
    """The real Gitiles REST client, its requests answered by the Gitiles simulator's handling."""

    def __init__(self, sim: GitilesSim) -> None:
        self.sim = sim

    def client(self, host_url: str) -> GitilesClient:
        return GitilesClient(host_url, transport=httpx.MockTransport(self._answer))

    def _answer(self, request: httpx.Request) -> httpx.Response:
        answer = self.sim.get(request.url.raw_path.decode(), request.url.netloc.decode())
        headers = {"Content-Type": answer.content_type, **answer.headers}
        return httpx.Response(answer.status, content=answer.body, headers=headers)
