"""A tool's HTTP server as a process of its own: started on a free port, stopped on exit."""

from __future__ import annotations

import subprocess
import sys
from types import TracebackType
from typing import Self

import httpx


class ServerProcess:
    """`with Sub() as server:` runs `python -m <module> --host HOST --port 0` and waits for its
    first line, `listening on URL`; `self.url` is then that URL and `self._http` a client."""

    module = ""  # set by each subclass
    name = ""  # how errors call it

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._host = host
        self._proc: subprocess.Popen[str] | None = None
        self.url = ""
        self._http = httpx.Client(timeout=30)

    def __enter__(self) -> Self:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", self.module, "--host", self._host, "--port", "0"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().strip()
        if not line.startswith("listening on "):
            self.close()
            raise RuntimeError(f"the {self.name} did not start: {line!r}")
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
