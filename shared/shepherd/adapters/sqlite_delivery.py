"""The embedded stand-ins for Cloud Tasks and Pub/Sub push: durable in SQLite, over HTTP.

Both are "deliver this HTTP request at or after its ETA, at least once": a status-check timer
goes to `on_timer` with the Cloud Tasks headers; a message published to a registered topic goes
to `on_build_notification` as the push body a Pub/Sub subscription sends. `Deliverer` runs
inside `shepherd dev`: it leases due deliveries, POSTs them, and retries 5xx answers and
connection errors without limit, with backoff (timers as queue_policy, as the deployed queue;
pushes capped at 10 s). Names are kept after delivery, so scheduling a timer name again
changes nothing (Cloud Tasks' dedup). Pending deliveries survive a restart and arrive late
rather than never.
"""

from __future__ import annotations

import json
import logging
import secrets
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import queue_policy
from ..clock import Clock
from ..durations import MILLISECOND, SECOND
from ..model import QueuedTask
from ..ports import StoreUnavailable
from ..timestamps import format_rfc3339
from .embedded import topic_name
from .sqlite_db import DEFAULT_TIMEOUT_S, create_schema, transaction

logger = logging.getLogger(__name__)

LEASE_NS = 180 * SECOND  # longer than a delivery's HTTP timeout, so none is sent twice at once
PUSH_MAX_BACKOFF_NS = 10 * SECOND
TIMER, PUSH = "timer", "push"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    name TEXT PRIMARY KEY,
    target TEXT NOT NULL,
    body TEXT NOT NULL,
    eta_ns INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    lease_ns INTEGER NOT NULL DEFAULT 0,
    done INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (eta_ns) WHERE done = 0;
CREATE TABLE IF NOT EXISTS topics (name TEXT PRIMARY KEY, publisher TEXT NOT NULL)
"""


class UnknownTopic(LookupError):
    pass


@dataclass(frozen=True)
class Delivery:
    name: str
    target: str
    body: dict[str, Any]
    attempts: int  # deliveries before this one, as X-CloudTasks-TaskRetryCount


class SqliteDeliveryQueue:
    """The TimerQueue port, and the topics with their push subscription, in one SQLite file.
    A busy lock past `timeout_s`, or a failing disk, raises StoreUnavailable."""

    def __init__(
        self,
        path: str | Path,
        queue_name: str = "shepherd-status-checks",
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self._path = str(path)
        self._timeout_s = timeout_s
        self.queue_name = queue_name
        self.on_schedule: Callable[[], None] = lambda: None
        create_schema(self._path, _SCHEMA, timeout_s)

    def _db(self) -> AbstractContextManager[sqlite3.Connection]:
        return transaction(self._path, write=True, timeout_s=self._timeout_s)

    def _insert(self, rows: list[tuple[str, str, str, int]]) -> None:
        if not rows:
            return
        with self._db() as db:
            db.executemany(
                "INSERT OR IGNORE INTO deliveries (name, target, body, eta_ns) VALUES (?, ?, ?, ?)",
                rows,
            )
        self.on_schedule()

    def schedule(self, tasks: Sequence[QueuedTask]) -> None:
        self._insert([(t.timer_id, TIMER, json.dumps(t.body()), t.eta_ns) for t in tasks])

    def register_topic(self, topic: str, publisher: str) -> None:
        with self._db() as db:
            db.execute(
                "INSERT OR IGNORE INTO topics (name, publisher) VALUES (?, ?)", (topic, publisher)
            )

    def publish(self, topic: str, messages: Sequence[dict[str, Any]], now_ns: int) -> list[str]:
        """Pub/Sub's publish: each message (`data` base64, `attributes`) goes to the topic's
        push subscription. Returns the message ids."""
        with self._db() as db:
            if db.execute("SELECT 1 FROM topics WHERE name = ?", (topic,)).fetchone() is None:
                raise UnknownTopic(topic)
        ids, rows = [], []
        subscription = topic.replace("/topics/", "/subscriptions/", 1)
        for message in messages:
            message_id = str(secrets.randbits(53))
            push = {
                "message": {
                    "data": message.get("data", ""),
                    "attributes": message.get("attributes", {}),
                    "messageId": message_id,
                    "publishTime": format_rfc3339(now_ns),
                },
                "subscription": subscription,
            }
            ids.append(message_id)
            rows.append((f"{PUSH}:{message_id}", PUSH, json.dumps(push), now_ns))
        self._insert(rows)
        return ids

    def lease_due(self, now_ns: int, limit: int = 16) -> list[Delivery]:
        """Takes up to `limit` due deliveries for LEASE_NS; an unfinished lease expires."""
        with self._db() as db:
            rows = db.execute(
                "SELECT name, target, body, attempts FROM deliveries"
                " WHERE done = 0 AND eta_ns <= ? AND lease_ns <= ? ORDER BY eta_ns LIMIT ?",
                (now_ns, now_ns, limit),
            ).fetchall()
            db.executemany(
                "UPDATE deliveries SET lease_ns = ? WHERE name = ?",
                [(now_ns + LEASE_NS, row[0]) for row in rows],
            )
        return [Delivery(name, target, json.loads(body), n) for name, target, body, n in rows]

    def complete(self, name: str) -> None:
        with self._db() as db:
            db.execute("UPDATE deliveries SET done = 1, lease_ns = 0 WHERE name = ?", (name,))

    def retry(self, name: str, eta_ns: int) -> None:
        with self._db() as db:
            db.execute(
                "UPDATE deliveries SET attempts = attempts + 1, eta_ns = ?, lease_ns = 0"
                " WHERE name = ?",
                (eta_ns, name),
            )

    def next_eta(self) -> int | None:
        with self._db() as db:
            (eta,) = db.execute(
                "SELECT MIN(MAX(eta_ns, lease_ns)) FROM deliveries WHERE done = 0"
            ).fetchone()
        return eta


def backoff_ns(item: Delivery) -> int:
    """The wait before delivering `item` again; no delivery is ever given up."""
    if item.target == TIMER:
        return queue_policy.backoff_ns(item.attempts)
    return min(100 * MILLISECOND << min(item.attempts, 16), PUSH_MAX_BACKOFF_NS)


class SqliteTopic:
    """The NotificationTopic port: names topics as LUCI does and registers them for publishing."""

    def __init__(self, queue: SqliteDeliveryQueue, app_id: str) -> None:
        self._queue = queue
        self._app_id = app_id

    def prepare(self, manager: str, publisher: str) -> str:
        topic = topic_name(self._app_id, manager, publisher)
        self._queue.register_topic(topic, publisher)
        return topic


class Deliverer:
    """Delivers due timers and pushes to the local stack until stopped, a few at a time."""

    def __init__(
        self,
        queue: SqliteDeliveryQueue,
        base_url: str,
        clock: Clock,
        *,
        timer_headers: dict[str, str] | None = None,
        workers: int = 4,
    ) -> None:
        self._queue = queue
        self._timer_headers = timer_headers or {}
        self._urls = {TIMER: base_url + "/on-timer", PUSH: base_url + "/on-build-notification"}
        self._clock = clock
        import httpx  # only the local stack delivers; deployed functions never import it

        self._http = httpx.Client(timeout=120)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="delivery")
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="deliverer", daemon=True)

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
                for item in leased:
                    self._pool.submit(self._deliver, item)
                wait_s = 0.0 if leased else self._idle_wait_s()
            except StoreUnavailable as e:
                logger.warning("cannot read the delivery queue: %s", e)
                wait_s = 0.5
            except sqlite3.Error:
                # A broken store must not end the thread either: look again shortly.
                logger.exception("cannot read the delivery queue")
                wait_s = 0.5
            if wait_s:
                self._wake.wait(wait_s)
                self._wake.clear()

    def _idle_wait_s(self) -> float:
        eta = self._queue.next_eta()
        if eta is None:
            return 0.5
        return min(0.5, max(0.0, (eta - self._clock.now_ns()) / SECOND))

    def _headers(self, item: Delivery) -> dict[str, str]:
        if item.target != TIMER:
            return {}
        return {
            **self._timer_headers,
            "X-CloudTasks-TaskName": item.name,
            "X-CloudTasks-QueueName": self._queue.queue_name,
            "X-CloudTasks-TaskRetryCount": str(item.attempts),
            "X-CloudTasks-TaskExecutionCount": str(item.attempts),
        }

    def _deliver(self, item: Delivery) -> None:
        import httpx

        try:
            response = self._http.post(
                self._urls[item.target], json=item.body, headers=self._headers(item)
            )
            # A 4xx means the request itself is wrong: sending it again would not help.
            delivered = response.status_code < 500
            if response.status_code >= 400:
                logger.warning("%s: %d %s", item.name, response.status_code, response.text)
        except httpx.HTTPError as e:
            logger.warning("%s: %s", item.name, e)
            delivered = False
        try:
            if delivered:
                self._queue.complete(item.name)
            else:
                self._queue.retry(item.name, self._clock.now_ns() + backoff_ns(item))
        except StoreUnavailable as e:
            # Not recorded: the lease runs out and the delivery comes again, late.
            logger.warning("%s: cannot record the delivery: %s", item.name, e)
        except sqlite3.Error:
            logger.exception("%s: cannot record the delivery", item.name)
        self._wake.set()
