"""Runs the Buildbucket simulator as its own process and drives its admin endpoints."""

from __future__ import annotations

import subprocess
import sys
from types import TracebackType
from typing import Any

import httpx


class SimulatorProcess:
    """`with SimulatorProcess() as sim:` starts `python -m shepherd_tools.simulator` on a free
    port."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._host = host
        self._proc: subprocess.Popen[str] | None = None
        self.url = ""
        self._http = httpx.Client(timeout=30)

    def __enter__(self) -> SimulatorProcess:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "shepherd_tools.simulator", "--host", self._host, "--port", "0"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().strip()
        if not line.startswith("listening on "):
            self.close()
            raise RuntimeError(f"the Buildbucket simulator did not start: {line!r}")
        self.url = line.removeprefix("listening on ")
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            if self._proc.stdout is not None:
                self._proc.stdout.close()
            self._proc = None

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
