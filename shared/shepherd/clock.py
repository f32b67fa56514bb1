"""Clocks: the real one, and a virtual one that lets a six-hour build replay in seconds."""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def now_ns(self) -> int: ...

    def sleep(self, seconds: float) -> None: ...


class RealClock:
    def now_ns(self) -> int:
        return time.time_ns()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class VirtualClock:
    """Time moves only when told to; `sleep` moves it instead of waiting."""

    def __init__(self, start_ns: int) -> None:
        self._now = start_ns
        self._lock = threading.Lock()

    def now_ns(self) -> int:
        with self._lock:
            return self._now

    def sleep(self, seconds: float) -> None:
        self.advance(int(seconds * 1e9))

    def advance(self, ns: int) -> None:
        if ns < 0:
            raise ValueError("a virtual clock does not go backwards")
        with self._lock:
            self._now += ns

    def advance_to(self, ns: int) -> None:
        with self._lock:
            self._now = max(self._now, ns)
