"""`shepherd dev` as a real process, and what the end-to-end tests do with it over HTTP."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

FINAL = {"SUCCEEDED", "FAILED", "ABORTED"}
# Simulator scripts: a build over in 1.8 s (its final step appended), and one that runs long.
QUICK = [{"status": "SCHEDULED", "for": "300ms"}, {"status": "STARTED", "for": "1500ms"}]
LONG = [
    {"status": "SCHEDULED", "for": "300ms"},
    {"status": "STARTED", "for": "10m"},
    {"status": "SUCCESS"},
]
SECRET = "local-stack-test-secret-0123456789"
JOB = "chromium/Windows deterministic"
BUILDSET = (
    "buildset:commit/gitiles/chromium.googlesource.com/chromium/src/+/"
    "3ce3f1d71a1492176d69ed432d5cfa7b95be4a3e"
)
# Buildbucket refuses a gitiles commit without a ref: the buildset tag needs its gitiles_ref.
COMMIT_TAGS = [BUILDSET, "gitiles_ref:refs/heads/main"]


# Most end-to-end tests run many invocations of the one job at once, one per trigger; the
# triggering policies' own tests give the job theirs.
CONCURRENT = "triggering_policy = {max_concurrent_invocations = 1000, max_batch_size = 1}"


def write_jobs(path: Path, sim_url: str, policy: str = CONCURRENT, **settings: str) -> Path:
    lines = ["[settings]", 'status_check_min = "1s"', 'status_check_max = "2s"']
    lines += [f'{key} = "{value}"' for key, value in settings.items()]
    lines += [
        "",
        "[[jobs]]",
        f'id = "{JOB}"',
        f'server = "{sim_url}"',
        'bucket = "ci"',
        'builder = "Windows deterministic"',
        policy,
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


class DevProcess:
    """`shepherd dev` on a free port, its state in `workdir`."""

    def __init__(self, workdir: Path, jobs: Path, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.jobs = jobs
        self.env = env or {}
        self.url = ""
        self._proc: subprocess.Popen[str] | None = None
        self.http = httpx.Client(timeout=30)

    def start(self, port: int = 0) -> DevProcess:
        env = {**os.environ, "SHEPHERD_SECRET": SECRET, **self.env}
        cmd = [sys.executable, "-m", "shepherd_tools.cli", "dev", "--jobs", str(self.jobs)]
        cmd += ["--state", str(self.workdir / "state.db"), "--port", str(port)]
        stderr = (self.workdir / "dev.log").open("a")
        self._proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env
        )
        stderr.close()
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().strip()
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"shepherd dev did not start: {line!r}; see {self.workdir}/dev.log")
        self.url = line.removeprefix("listening on ")
        return self

    @property
    def rss_bytes(self) -> int:
        """Resident memory of the running process, from /proc."""
        assert self._proc is not None
        for line in Path(f"/proc/{self._proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def kill(self) -> None:
        """SIGKILL: no clean-up at all, as a crashed machine."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGKILL)
        self._proc.wait()
        self._close_pipe()

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._close_pipe()

    def _close_pipe(self) -> None:
        if self._proc is not None and self._proc.stdout is not None:
            self._proc.stdout.close()
        self._proc = None

    # --- calls ---------------------------------------------------------------------------

    def trigger(self, **body: Any) -> str:
        response = self.http.post(
            self.url + "/trigger", json={"job": JOB, "tags": COMMIT_TAGS, **body}
        )
        assert response.status_code == 202, response.text
        invocation_id = response.json()["invocation_id"]
        assert invocation_id is not None, f"the trigger waits: {response.text}"
        return invocation_id

    def invocation(self, invocation_id: str) -> dict[str, Any]:
        response = self.http.get(f"{self.url}/api/invocations/{invocation_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def log_lines(self, invocation_id: str) -> list[str]:
        return [entry["text"] for entry in self.invocation(invocation_id)["log"]]

    def wait_for(
        self, invocation_id: str, statuses: set[str], timeout_s: float = 60
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            inv = self.invocation(invocation_id)
            if inv["status"] in statuses:
                return inv
            time.sleep(0.1)
        raise AssertionError(f"invocation {invocation_id} still {inv['status']} after {timeout_s}s")

    def push(self, data: Any, message_id: str = "test") -> httpx.Response:
        """Delivers a Pub/Sub push body to the notification function."""
        raw = data if isinstance(data, bytes) else json.dumps(data).encode()
        body = {
            "message": {"data": base64.b64encode(raw).decode(), "messageId": message_id},
            "subscription": "projects/test/subscriptions/test",
        }
        return self.http.post(self.url + "/on-build-notification", json=body)


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A throwaway HTTP server on a free loopback port, for what a test stands in for."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class Ticker:
    """Cloud Scheduler, faster: POSTs the scheduler URL every `period_s`; failed ticks (the
    store down) are counted, as Cloud Scheduler would log them."""

    def __init__(self, url: str, period_s: float) -> None:
        self._url = url
        self._period_s = period_s
        self._stop = threading.Event()
        self.sweeps: list[dict[str, int]] = []
        self.failed = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.wait(self._period_s):
                try:
                    answer = client.post(self._url)
                except httpx.HTTPError:
                    self.failed += 1
                    continue
                if answer.status_code == 200:
                    self.sweeps.append(answer.json()["sweep"])
                else:
                    self.failed += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
