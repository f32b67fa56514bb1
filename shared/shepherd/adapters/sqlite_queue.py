"""The embedded timer queue: durable in SQLite, delivered over HTTP like Cloud Tasks.

`schedule` is what the engine sees (the TimerQueue port). `TimerDeliverer` runs inside
`shepherd dev`: it leases due tasks, POSTs each to `on_timer` with the Cloud Tasks headers, and
retries 5xx answers and connection errors with backoff. Task names are kept after delivery, so
scheduling a name again changes nothing (Cloud Tasks' dedup). Pending tasks survive a restart
and fire late rather than never.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from ..clock import Clock
from ..durations import MILLISECOND, SECOND
from ..model import QueuedTask

log = logging.getLogger(__name__)

LEASE_NS = 60 * SECOND
MAX_BACKOFF_NS = 10 * SECOND

_SCHEMA = """
CREATE TABLE IF NOT EXISTS timer_tasks (
    name TEXT PRIMARY KEY,
    invocation_id INTEGER NOT NULL,
    title TEXT NOT NULL,
    eta_ns INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    lease_ns INTEGER NOT NULL DEFAULT 0,
    done INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS timer_tasks_due ON timer_tasks (eta_ns) WHERE done = 0
"""


@dataclass(frozen=True)
class LeasedTask:
    task: QueuedTask
    attempts: int  # deliveries before this one, as X-CloudTasks-TaskRetryCount


class SqliteTimerQueue:
    def __init__(self, path: str | Path, queue_name: str = "shepherd-status-checks") -> None:
        self._path = str(path)
        self.queue_name = queue_name
        self.on_schedule: Callable[[], None] = lambda: None
        Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            for statement in _SCHEMA.split(";"):
                db.execute(statement)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self._path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    def schedule(self, tasks: Sequence[QueuedTask]) -> None:
        if not tasks:
            return
        with self._db() as db:
            db.executemany(
                "INSERT OR IGNORE INTO timer_tasks (name, invocation_id, title, eta_ns)"
                " VALUES (?, ?, ?, ?)",
                [(t.timer_id, t.invocation_id, t.name, t.eta_ns) for t in tasks],
            )
        self.on_schedule()

    def lease_due(self, now_ns: int, limit: int = 16) -> list[LeasedTask]:
        """Takes up to `limit` due tasks for LEASE_NS; an unfinished lease expires by itself."""
        with self._db() as db:
            rows = db.execute(
                "SELECT name, invocation_id, title, eta_ns, attempts FROM timer_tasks"
                " WHERE done = 0 AND eta_ns <= ? AND lease_ns <= ? ORDER BY eta_ns LIMIT ?",
                (now_ns, now_ns, limit),
            ).fetchall()
            db.executemany(
                "UPDATE timer_tasks SET lease_ns = ? WHERE name = ?",
                [(now_ns + LEASE_NS, row[0]) for row in rows],
            )
        return [
            LeasedTask(QueuedTask(inv, name, title, eta), n) for name, inv, title, eta, n in rows
        ]

    def complete(self, name: str) -> None:
        with self._db() as db:
            db.execute("UPDATE timer_tasks SET done = 1, lease_ns = 0 WHERE name = ?", (name,))

    def retry(self, name: str, eta_ns: int) -> None:
        with self._db() as db:
            db.execute(
                "UPDATE timer_tasks SET attempts = attempts + 1, eta_ns = ?, lease_ns = 0"
                " WHERE name = ?",
                (eta_ns, name),
            )

    def next_eta(self) -> int | None:
        with self._db() as db:
            (eta,) = db.execute(
                "SELECT MIN(MAX(eta_ns, lease_ns)) FROM timer_tasks WHERE done = 0"
            ).fetchone()
        return eta


class TimerDeliverer:
    """Delivers due tasks to `url` until stopped, a few at a time."""

    def __init__(
        self, queue: SqliteTimerQueue, url: str, clock: Clock, *, workers: int = 4
    ) -> None:
        self._queue = queue
        self._url = url
        self._clock = clock
        self._http = httpx.Client(timeout=120)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="timer-delivery")
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="timer-deliverer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join()
        self._pool.shutdown(wait=True)
        self._http.close()

    def poke(self) -> None:
        """Something was scheduled: look again now rather than at the next poll."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                leased = self._queue.lease_due(self._clock.now_ns())
            except sqlite3.Error:
                log.exception("cannot read the timer queue")
                leased = []
            for item in leased:
                self._pool.submit(self._deliver, item)
            if not leased:
                self._wake.wait(self._idle_wait_s())
                self._wake.clear()

    def _idle_wait_s(self) -> float:
        eta = self._queue.next_eta()
        if eta is None:
            return 0.5
        return min(0.5, max(0.0, (eta - self._clock.now_ns()) / SECOND))

    def _deliver(self, item: LeasedTask) -> None:
        task = item.task
        try:
            response = self._http.post(
                self._url,
                json=task.body(),
                headers={
                    "X-CloudTasks-TaskName": task.timer_id,
                    "X-CloudTasks-QueueName": self._queue.queue_name,
                    "X-CloudTasks-TaskRetryCount": str(item.attempts),
                    "X-CloudTasks-TaskExecutionCount": str(item.attempts),
                },
            )
            delivered = response.status_code < 500
            if response.status_code >= 400:
                log.warning("timer %s: %d %s", task.timer_id, response.status_code, response.text)
        except httpx.HTTPError as e:
            log.warning("timer %s: %s", task.timer_id, e)
            delivered = False
        try:
            if delivered:
                self._queue.complete(task.timer_id)
            else:
                backoff = min(100 * MILLISECOND * 2**item.attempts, MAX_BACKOFF_NS)
                self._queue.retry(task.timer_id, self._clock.now_ns() + backoff)
        except sqlite3.Error:
            log.exception("timer %s: cannot record the delivery", task.timer_id)
        self._wake.set()
