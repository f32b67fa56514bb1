"""Headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`:
JSON messages ending in NUL, on the browser's fds 3 and 4): enough to load a page, run a line
of script in it (a click, like a user's), and read what it shows."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import subprocess
import time
from pathlib import Path
from typing import Any


class DevToolsError(Exception):
    pass


def _high_fd(fd: int) -> int:
    """The fd moved above 10, so that placing it at 3 or 4 in the child clobbers nothing."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


class Browser:
    def __init__(self, chromium: str, profile: Path) -> None:
        to_browser_r, self._out = map(_high_fd, os.pipe())
        self._in, from_browser_w = map(_high_fd, os.pipe())

        def on_fds_3_and_4() -> None:
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        cmd = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu"]
        cmd += ["--remote-debugging-pipe", f"--user-data-dir={profile}", "about:blank"]
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(3, 4),
            preexec_fn=on_fds_3_and_4,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self._session = ""

    def __enter__(self) -> Browser:
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self._session = self.call("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        return self

    def __exit__(self, *_: object) -> None:
        with contextlib.suppress(DevToolsError, OSError):
            self.call("Browser.close", session=False)
        try:
            self._proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        os.close(self._out)
        os.close(self._in)

    def call(self, method: str, session: bool = True, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session and self._session:
            message["sessionId"] = self._session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read(timeout_s=60)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise DevToolsError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def _read(self, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._in], [], [], left)[0]:
                raise DevToolsError("Chromium did not answer")
            chunk = os.read(self._in, 1 << 16)
            if not chunk:
                raise DevToolsError("Chromium closed the pipe")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def go(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str) -> Any:
        """The expression's value (awaited if a promise), or None while the page changes."""
        try:
            done = self.call(
                "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
            )
        except DevToolsError:
            return None  # the page navigated away meanwhile
        return None if "exceptionDetails" in done else done["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 30) -> Any:
        """Evaluates the expression until it is truthy; its value."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"still false after {timeout_s}s: {expression}")
