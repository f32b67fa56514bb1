"""Runs the Buildbucket simulator as its own process and drives its admin endpoints."""

from __future__ import annotations

from typing import Any

from ..process import ServerProcess


class SimulatorProcess(ServerProcess):
    """`with SimulatorProcess() as sim:` starts `python -m shepherd_tools.simulator` on a free
    port."""

    module = "shepherd_tools.simulator"
    name = "Buildbucket simulator"

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self._http.post(self.url + path, json=body)
        if response.status_code != 200:
            raise RuntimeError(f"simulator {path}: {response.status_code} {response.text}")
        return response.json()

    def configure(self, config: dict[str, Any]) -> None:
        self._post("/sim/config", config)

    def advance(self, to_ns: int) -> dict[str, Any]:
        return self._post("/sim/advance", {"to_ns": to_ns})

    def state(self) -> dict[str, Any]:
        response = self._http.get(self.url + "/sim/state")
        response.raise_for_status()
        return response.json()
