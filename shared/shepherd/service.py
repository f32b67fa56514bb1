"""Builds the engine and its adapters from a Config, once per process.

The one place that picks adapters: the embedded SQLite ones by default, Firestore, Cloud Tasks
and Pub/Sub when GOOGLE_CLOUD_PROJECT is set (interfaces.md, Environment). The Google Cloud
libraries are imported only on that path. Every function (and `shepherd dev`, which serves all
of them in one process) shares the one service; module import does nothing, the first request
builds it from the environment, unless `shepherd dev` installed the one it built.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .adapters.buildbucket_prpc import (
    EMAIL_SCOPE,
    GERRIT_SCOPE,
    GoogleAccessToken,
    ImpersonatedAccessToken,
    PrpcBuildsClient,
)
from .adapters.gitiles_rest import GitilesClient, GitilesClients
from .adapters.sqlite_delivery import SqliteDeliveryQueue, SqliteTopic
from .adapters.sqlite_store import SqliteStore
from .auth import OidcAuth, SharedTokenAuth, TimerAuth, timer_token
from .clock import Clock, RealClock
from .config import Config, ConfigError, required
from .durations import SECOND
from .engine import SWEEP_MARGIN_NS, Engine
from .jobs import JobsFile, load_jobs
from .logs import configure as configure_logs
from .model import QueuedTask
from .ports import NotificationTopic, Store, TimerQueue
from .signing import NoKeySigner, Signer, TokenSigner, load_or_create_key
from .tasks.registry import CONFIG_MODELS, make_kinds


@dataclass
class Service:
    engine: Engine
    embedded: SqliteDeliveryQueue | None  # the local queue and Pub/Sub, when not on GCP
    timer_auth: TimerAuth
    timer_headers: dict[str, str]  # what a local queue sends to be let in


_lock = threading.Lock()
_service: Service | None = None


def _timeout_s(config: Config) -> dict[str, float]:
    """The store's own default, unless SHEPHERD_STORE_TIMEOUT says otherwise."""
    if config.store_timeout_ns is None:
        return {}
    return {"timeout_s": config.store_timeout_ns / SECOND}


def _embedded(
    config: Config, jobs: JobsFile
) -> tuple[Store, TimerQueue, NotificationTopic, SqliteDeliveryQueue]:
    queue = SqliteDeliveryQueue(config.state, **_timeout_s(config))
    store = SqliteStore(config.state, **_timeout_s(config))
    return store, queue, SqliteTopic(queue, jobs.settings.app_id), queue


def _timer_auth(config: Config, key: bytes | None) -> tuple[TimerAuth, dict[str, str]]:
    account = config.tasks_service_account
    if account and not config.tasks_emulator_host:
        return OidcAuth(config.on_timer_url, account, config.oidc_certs_url), {}
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


def _cloud_tasks(config: Config, timer_headers: dict[str, str]) -> TimerQueue:
    from .adapters.cloud_tasks import CloudTasksQueue, make_client

    queue = CloudTasksQueue(
        make_client(config.tasks_emulator_host),
        required(config.tasks_queue, "SHEPHERD_TASKS_QUEUE"),
        config.on_timer_url,
        config.tasks_service_account,
        timer_headers,
    )
    if config.tasks_emulator_host:
        queue.ensure_queue()
    return queue


def _pubsub_topic(config: Config) -> NotificationTopic:
    from google.cloud import pubsub_v1

    from .adapters.pubsub_topic import PubSubTopic

    return PubSubTopic(pubsub_v1.PublisherClient(), required(config.topic, "SHEPHERD_TOPIC"))


def _google_cloud(
    config: Config, timer_headers: dict[str, str]
) -> tuple[Store, TimerQueue, NotificationTopic]:
    from google.cloud import firestore

    from .adapters.firestore_store import FirestoreStore

    store = FirestoreStore(
        firestore.Client(project=config.project),
        retention_ns=config.log_retention_ns,
        **_timeout_s(config),
    )
    queue = _LazyQueue(lambda: _cloud_tasks(config, timer_headers))
    return store, queue, _LazyTopic(lambda: _pubsub_topic(config))


def _builds_client(config: Config, clock: Clock) -> PrpcBuildsClient:
    """Buildbucket calls made as SHEPHERD_BUILDBUCKET_ACCOUNT when set (to https servers:
    local http ones get no token), else as the function's own account."""
    account = config.buildbucket_account
    token = ImpersonatedAccessToken(account) if account else None
    return PrpcBuildsClient(clock, token=token, token_over_http=False)


def _gitiles_clients(config: Config) -> Callable[[str], GitilesClient]:
    """Gitiles clients by host URL: https hosts read with a token when SHEPHERD_GITILES_AUTH
    says so (the /a/ paths, as LUCI reads them), local http simulators always anonymously."""
    token = (
        GoogleAccessToken((GERRIT_SCOPE, EMAIL_SCOPE)) if config.gitiles_auth == "token" else None
    )

    def client(host_url: str) -> GitilesClient:
        return GitilesClient(host_url, token=token if host_url.startswith("https://") else None)

    return GitilesClients(client)


def build_service(config: Config) -> Service:
    configure_logs(config.log_format, config.project)
    jobs_path = required(config.jobs, "SHEPHERD_JOBS")
    if config.project:
        # Refused at start, not at first use.
        required(config.tasks_queue, "SHEPHERD_TASKS_QUEUE")
        required(config.topic, "SHEPHERD_TOPIC")
    jobs = load_jobs(jobs_path, CONFIG_MODELS)
    # Deployed, the key comes from Secret Manager, and only to the functions that need it.
    key = config.secret
    if key is None and not config.project:
        key = load_or_create_key(None, config.state.parent)
    signer: Signer = TokenSigner(key) if key else NoKeySigner()
    timer_auth, timer_headers = _timer_auth(config, key)
    embedded = None
    if config.project:
        store, queue, topic = _google_cloud(config, timer_headers)
    else:
        store, queue, topic, embedded = _embedded(config, jobs)
    clock = RealClock()
    rng = random.Random()
    engine = Engine(
        jobs=jobs,
        kinds=make_kinds(_builds_client(config, clock), rng, _gitiles_clients(config)),
        store=store,
        queue=queue,
        topic=topic,
        clock=clock,
        signer=signer,
        rng=rng,
        sweep_margin_ns=config.sweep_margin_ns or SWEEP_MARGIN_NS,
    )
    return Service(engine, embedded, timer_auth, timer_headers)


def get_service() -> Service:
    """The process's service: the installed one, or one built from the environment once."""
    global _service
    with _lock:
        if _service is None:
            _service = build_service(Config.from_env())
        return _service


def install_service(service: Service | None) -> None:
    """Makes `service` the one every function uses (`shepherd dev` builds its own from its
    options); None forgets it, so that the next request builds one from the environment."""
    global _service
    with _lock:
        _service = service
