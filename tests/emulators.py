"""The Google Cloud emulators as processes on free ports: Firestore, Pub/Sub, Cloud Tasks."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
TASKS_EMULATOR = REPO / ".venv-tasks-emulator" / "bin" / "gcloud-tasks-emulator"
PROJECT = "shepherd-test"
NO_SDK = (
    "the Google Cloud CLI is not installed; get it from "
    "https://cloud.google.com/sdk/docs/install (with its Firestore and Pub/Sub emulators)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sdk_root() -> Path | None:
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        return None
    root = Path(gcloud).resolve().parents[1]
    return root if (root / "platform").is_dir() else None


class Emulator:
    """One emulator in its own process group, stopped as a whole (its Java child too)."""

    def __init__(self, name: str, cmd: list[str], host: str, log: Path) -> None:
        self.name = name
        self.host = host
        with log.open("w") as out:
            self._proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=log.parent
            )

    def wait_http(self, timeout_s: float = 60) -> Emulator:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"the {self.name} emulator exited with {self._proc.returncode}")
            try:
                httpx.get(f"http://{self.host}/", timeout=1)
                return self
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError(f"the {self.name} emulator did not answer in {timeout_s}s")

    def wait_tcp(self, timeout_s: float = 60) -> Emulator:
        host, port = self.host.rsplit(":", 1)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"the {self.name} emulator exited with {self._proc.returncode}")
            try:
                socket.create_connection((host, int(port)), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"the {self.name} emulator did not listen in {timeout_s}s")

    def stop(self) -> None:
        try:
            os.killpg(self._proc.pid, signal.SIGTERM)
            self._proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
        except ProcessLookupError:
            pass


def start_firestore(workdir: Path) -> Emulator:
    root = sdk_root()
    if root is None:
        pytest.skip(NO_SDK)
    host = f"127.0.0.1:{free_port()}"
    launcher = root / "platform" / "cloud-firestore-emulator" / "cloud_firestore_emulator"
    cmd = [str(launcher), "start", "--host=127.0.0.1", f"--port={host.rsplit(':', 1)[1]}"]
    return Emulator("Firestore", cmd, host, workdir / "firestore.log").wait_http()


def start_pubsub(workdir: Path) -> Emulator:
    root = sdk_root()
    if root is None:
        pytest.skip(NO_SDK)
    host = f"127.0.0.1:{free_port()}"
    launcher = root / "platform" / "pubsub-emulator" / "bin" / "cloud-pubsub-emulator"
    cmd = [str(launcher), "--host=127.0.0.1", f"--port={host.rsplit(':', 1)[1]}"]
    return Emulator("Pub/Sub", cmd, host, workdir / "pubsub.log").wait_http()


def start_tasks(workdir: Path, port: int | None = None) -> Emulator:
    if not TASKS_EMULATOR.exists():
        pytest.fail(f"{TASKS_EMULATOR} is missing: `make test` installs it")
    host = f"127.0.0.1:{port or free_port()}"
    cmd = [str(TASKS_EMULATOR), "start", "--quiet", f"--port={host.rsplit(':', 1)[1]}"]
    return Emulator("Cloud Tasks", cmd, host, workdir / "tasks.log").wait_tcp()


def emulator_env(
    firestore: str, pubsub: str, tasks: str, name: str, **extra: str
) -> dict[str, str]:
    """What `shepherd dev` needs to run on the three emulators (hosts, or proxies in front of
    them), with a queue and a topic of its own called `name`."""
    return {
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "FIRESTORE_EMULATOR_HOST": firestore,
        "PUBSUB_EMULATOR_HOST": pubsub,
        "CLOUD_TASKS_EMULATOR_HOST": tasks,
        "SHEPHERD_TASKS_QUEUE": queue_name(name),
        "SHEPHERD_TOPIC": topic_name(name),
        **extra,
    }


def queue_name(name: str) -> str:
    return f"projects/{PROJECT}/locations/us-central1/queues/{name}"


def topic_name(name: str) -> str:
    return f"projects/{PROJECT}/topics/{name}"


def clear_firestore(host: str) -> None:
    url = f"http://{host}/emulator/v1/projects/{PROJECT}/databases/(default)/documents"
    httpx.delete(url, timeout=60).raise_for_status()


class TcpProxy:
    """A loopback TCP proxy to `upstream` that a test can cut and restore: an outage of the
    service behind it, as its clients see one. Threads, bounded: at most MAX_CONNECTIONS."""

    MAX_CONNECTIONS = 32

    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self._upstream = (host, int(port))
        self._port = free_port()
        self.host = f"127.0.0.1:{self._port}"
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        """Listens again on the same port."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self._port))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """Closes every live connection and refuses new ones until restore()."""
        listener, self._listener = self._listener, None
        if listener is not None:
            _close(listener)
        with self._lock:
            live, self._open = self._open, set()
        for sock in live:
            _close(sock)

    close = cut

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(self._upstream, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _close(client)
                continue
            with self._lock:
                if len(self._open) >= 2 * self.MAX_CONNECTIONS or self._listener is not listener:
                    _close(client)
                    _close(upstream)
                    continue
                self._open |= {client, upstream}
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            with self._lock:
                self._open.discard(sock)
            _close(sock)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
