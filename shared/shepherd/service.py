"""Builds the engine and its adapters from the environment, once per process.

The one place that picks adapters: the embedded SQLite ones by default, Firestore, Cloud Tasks
and Pub/Sub when GOOGLE_CLOUD_PROJECT is set (interfaces.md, Environment). The Google Cloud
libraries are imported only on that path. Every function (and `shepherd dev`, which serves all
of them in one process) shares the one service; module import does nothing, the first request
builds it.
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .adapters.buildbucket_prpc import PrpcBuildsClient
from .adapters.sqlite_delivery import SqliteDeliveryQueue, SqliteTopic
from .adapters.sqlite_store import SqliteStore
from .auth import GOOGLE_CERTS_URL, OidcAuth, SharedTokenAuth, TimerAuth, timer_token
from .clock import RealClock
from .durations import parse_duration
from .engine import Engine
from .jobs import ConfigError, JobsFile, load_jobs
from .model import QueuedTask
from .ports import NotificationTopic, Store, TimerQueue
from .signing import NoKeySigner, Signer, TokenSigner, load_or_create_key
from .tasks.registry import CONFIG_MODELS, make_kinds

DEFAULT_STATE = ".shepherd/state.db"
DEFAULT_TIMER_URL = "http://127.0.0.1:8080/on-timer"


@dataclass
class Service:
    engine: Engine
    embedded: SqliteDeliveryQueue | None  # the local queue and Pub/Sub, when not on GCP
    timer_auth: TimerAuth
    timer_headers: dict[str, str]  # what a local queue sends to be let in


_lock = threading.Lock()
_service: Service | None = None


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise ConfigError(f"{name} is not set")
    return value


def state_path() -> Path:
    return Path(os.environ.get("SHEPHERD_STATE") or DEFAULT_STATE)


def _embedded(jobs: JobsFile) -> tuple[Store, TimerQueue, NotificationTopic, SqliteDeliveryQueue]:
    state = state_path()
    queue = SqliteDeliveryQueue(state)
    return SqliteStore(state), queue, SqliteTopic(queue, jobs.settings.app_id), queue


def _timer_auth(key: bytes | None) -> tuple[TimerAuth, dict[str, str]]:
    account = os.environ.get("SHEPHERD_TASKS_SERVICE_ACCOUNT")
    if account and not os.environ.get("CLOUD_TASKS_EMULATOR_HOST"):
        audience = os.environ.get("SHEPHERD_TIMER_URL") or DEFAULT_TIMER_URL
        certs = os.environ.get("SHEPHERD_OIDC_CERTS_URL") or GOOGLE_CERTS_URL
        return OidcAuth(audience, account, certs), {}
    if key is None:
        raise ConfigError(
            "on_timer needs SHEPHERD_TASKS_SERVICE_ACCOUNT (Cloud Tasks' OIDC identity) "
            "or SHEPHERD_SECRET (a shared token, for emulators)"
        )
    auth = SharedTokenAuth(timer_token(key))
    return auth, auth.headers()


class _OnFirstUse:
    """Builds an adapter, and imports its Google Cloud library, when first used: each library
    costs 0.2 s or more to import, and most functions never need most of them."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self._made: Any = None
        self._lock = threading.Lock()

    def _get(self) -> Any:
        with self._lock:
            if self._made is None:
                self._made = self._make()
            return self._made


class _LazyQueue(_OnFirstUse):
    def schedule(self, tasks: Sequence[QueuedTask]) -> None:
        if tasks:
            self._get().schedule(tasks)


class _LazyTopic(_OnFirstUse):
    def prepare(self, manager: str, publisher: str) -> str:
        return self._get().prepare(manager, publisher)


def _cloud_tasks(timer_headers: dict[str, str]) -> TimerQueue:
    from .adapters.cloud_tasks import CloudTasksQueue, make_client

    emulator = os.environ.get("CLOUD_TASKS_EMULATOR_HOST")
    queue = CloudTasksQueue(
        make_client(emulator),
        _env("SHEPHERD_TASKS_QUEUE"),
        os.environ.get("SHEPHERD_TIMER_URL") or DEFAULT_TIMER_URL,
        os.environ.get("SHEPHERD_TASKS_SERVICE_ACCOUNT"),
        timer_headers,
    )
    if emulator:
        queue.ensure_queue()
    return queue


def _pubsub_topic() -> NotificationTopic:
    from google.cloud import pubsub_v1

    from .adapters.pubsub_topic import PubSubTopic

    return PubSubTopic(pubsub_v1.PublisherClient(), _env("SHEPHERD_TOPIC"))


def _google_cloud(
    project: str, timer_headers: dict[str, str]
) -> tuple[Store, TimerQueue, NotificationTopic]:
    from google.cloud import firestore

    from .adapters.firestore_store import FirestoreStore

    _env("SHEPHERD_TASKS_QUEUE")  # refuse a missing setting at start, not at first use
    _env("SHEPHERD_TOPIC")
    retention = os.environ.get("SHEPHERD_LOG_RETENTION")
    store = FirestoreStore(
        firestore.Client(project=project),
        retention_ns=parse_duration(retention) if retention else None,
    )
    queue = _LazyQueue(lambda: _cloud_tasks(timer_headers))
    return store, queue, _LazyTopic(_pubsub_topic)


def build_service() -> Service:
    jobs = load_jobs(_env("SHEPHERD_JOBS"), CONFIG_MODELS)
    project = os.environ.get("GOOGLE_CLOUD_PROJECT")
    secret = os.environ.get("SHEPHERD_SECRET")
    # Deployed, the key comes from Secret Manager, and only to the functions that need it.
    if secret is not None and len(secret.encode()) < 16:
        raise ConfigError("SHEPHERD_SECRET must have at least 16 bytes")
    if project:
        key = secret.encode() if secret else None
    else:
        key = load_or_create_key(secret, state_path().parent)
    signer: Signer = TokenSigner(key) if key else NoKeySigner()
    timer_auth, timer_headers = _timer_auth(key)
    embedded = None
    if project:
        store, queue, topic = _google_cloud(project, timer_headers)
    else:
        store, queue, topic, embedded = _embedded(jobs)
    clock = RealClock()
    rng = random.Random()
    engine = Engine(
        jobs=jobs,
        kinds=make_kinds(PrpcBuildsClient(clock), rng),
        store=store,
        queue=queue,
        topic=topic,
        clock=clock,
        signer=signer,
        rng=rng,
    )
    return Service(engine, embedded, timer_auth, timer_headers)


def get_service() -> Service:
    global _service
    with _lock:
        if _service is None:
            _service = build_service()
        return _service
