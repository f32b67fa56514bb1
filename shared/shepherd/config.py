"""Every setting shepherd takes from the environment, read once into one frozen object.

`Config.from_env()` is the only place that reads the process environment; everything else is
handed a Config. Only the standard library is imported here: the functions read it at start.
(The Google Cloud libraries read their own emulator variables, FIRESTORE_EMULATOR_HOST and
PUBSUB_EMULATOR_HOST, themselves.)
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from .auth import GOOGLE_CERTS_URL
from .durations import parse_duration
from .logs import FORMATS, JSON, TEXT

DEFAULT_STATE = ".shepherd/state.db"
DEFAULT_TIMER_URL = "http://127.0.0.1:8080/on-timer"
MIN_SECRET_BYTES = 16
GITILES_AUTH = ("token", "anonymous")

_QUEUE = re.compile(r"^projects/[^/]+/locations/[^/]+/queues/[^/]+$")
_TOPIC = re.compile(r"^projects/[^/]+/topics/[^/]+$")
_ACCOUNT = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class ConfigError(ValueError):
    """A setting that cannot be used; the message names it and says why, on one line."""


@dataclass(frozen=True)
class Config:
    jobs: str | None = None  # SHEPHERD_JOBS: the job file
    state: Path = Path(DEFAULT_STATE)  # SHEPHERD_STATE: the embedded SQLite store
    secret: bytes | None = field(default=None, repr=False)  # SHEPHERD_SECRET
    project: str | None = None  # GOOGLE_CLOUD_PROJECT: Firestore, Cloud Tasks, Pub/Sub if set
    tasks_queue: str | None = None  # SHEPHERD_TASKS_QUEUE
    timer_url: str | None = None  # SHEPHERD_TIMER_URL; see on_timer_url
    tasks_service_account: str | None = None  # SHEPHERD_TASKS_SERVICE_ACCOUNT
    topic: str | None = None  # SHEPHERD_TOPIC
    # SHEPHERD_BUILDBUCKET_ACCOUNT: the service account every Buildbucket call is made as
    # (impersonated); None: the application default credentials.
    buildbucket_account: str | None = None
    log_retention_ns: int | None = None  # SHEPHERD_LOG_RETENTION (Firestore TTL on log chunks)
    oidc_certs_url: str = GOOGLE_CERTS_URL  # SHEPHERD_OIDC_CERTS_URL (tests)
    tasks_emulator_host: str | None = None  # CLOUD_TASKS_EMULATOR_HOST
    pubsub_emulator: bool = False  # whether PUBSUB_EMULATOR_HOST is set
    # SHEPHERD_STORE_TIMEOUT: how long one store call may wait (SQLite's lock, Firestore's own
    # retries) before the function answers 503; None: the store's default.
    store_timeout_ns: int | None = None
    functions_source: Path | None = None  # SHEPHERD_FUNCTIONS_SOURCE (`shepherd dev`, package)
    # SHEPHERD_LOG_FORMAT: "json" (Cloud Logging's structured lines) or "text"; by default JSON
    # where Cloud Run or Cloud Functions serve (K_SERVICE is set), text elsewhere.
    log_format: str = TEXT
    # SHEPHERD_SWEEP_MARGIN: how late a status check must be before the scheduler tick's sweep
    # takes it for lost and hands it again; None: the engine's default (1 minute).
    sweep_margin_ns: int | None = None
    # SHEPHERD_GITILES_AUTH: "token" (https Gitiles read through its authenticated /a/ paths
    # with an OAuth token of the application default credentials, as LUCI reads it) or
    # "anonymous"; by default a token where a cloud project is set, anonymous elsewhere.
    gitiles_auth: str = "anonymous"

    @property
    def on_timer_url(self) -> str:
        """Where the timer queue delivers: the on_timer URL, and the OIDC tokens' audience."""
        return self.timer_url or DEFAULT_TIMER_URL

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        """From `environ` (the process environment by default). An empty value counts as
        unset; a bad value raises ConfigError."""
        env = os.environ if environ is None else environ

        def _env(name: str) -> str | None:
            return env.get(name) or None

        secret = _env("SHEPHERD_SECRET")
        if secret is not None and len(secret.encode()) < MIN_SECRET_BYTES:
            raise ConfigError(f"SHEPHERD_SECRET must have at least {MIN_SECRET_BYTES} bytes")
        queue = _env("SHEPHERD_TASKS_QUEUE")
        if queue is not None and not _QUEUE.match(queue):
            raise ConfigError(
                f'SHEPHERD_TASKS_QUEUE must be "projects/P/locations/L/queues/Q", not "{queue}"'
            )
        topic = _env("SHEPHERD_TOPIC")
        if topic is not None and not _TOPIC.match(topic):
            raise ConfigError(f'SHEPHERD_TOPIC must be "projects/P/topics/T", not "{topic}"')
        account = _env("SHEPHERD_BUILDBUCKET_ACCOUNT")
        if account is not None and not _ACCOUNT.match(account):
            raise ConfigError(
                f'SHEPHERD_BUILDBUCKET_ACCOUNT must be a service account email, not "{account}"'
            )
        log_format = _env("SHEPHERD_LOG_FORMAT") or (JSON if _env("K_SERVICE") else TEXT)
        if log_format not in FORMATS:
            raise ConfigError(f'SHEPHERD_LOG_FORMAT must be "json" or "text", not "{log_format}"')
        gitiles_auth = _env("SHEPHERD_GITILES_AUTH") or (
            "token" if _env("GOOGLE_CLOUD_PROJECT") else "anonymous"
        )
        if gitiles_auth not in GITILES_AUTH:
            raise ConfigError(
                f'SHEPHERD_GITILES_AUTH must be "token" or "anonymous", not "{gitiles_auth}"'
            )
        state = _env("SHEPHERD_STATE")
        source = _env("SHEPHERD_FUNCTIONS_SOURCE")
        return cls(
            jobs=_env("SHEPHERD_JOBS"),
            state=Path(state) if state else Path(DEFAULT_STATE),
            secret=secret.encode() if secret else None,
            project=_env("GOOGLE_CLOUD_PROJECT"),
            tasks_queue=queue,
            timer_url=_url("SHEPHERD_TIMER_URL", _env("SHEPHERD_TIMER_URL")),
            tasks_service_account=_env("SHEPHERD_TASKS_SERVICE_ACCOUNT"),
            topic=topic,
            buildbucket_account=account,
            log_retention_ns=_duration("SHEPHERD_LOG_RETENTION", _env("SHEPHERD_LOG_RETENTION")),
            oidc_certs_url=_url("SHEPHERD_OIDC_CERTS_URL", _env("SHEPHERD_OIDC_CERTS_URL"))
            or GOOGLE_CERTS_URL,
            tasks_emulator_host=_env("CLOUD_TASKS_EMULATOR_HOST"),
            pubsub_emulator=bool(_env("PUBSUB_EMULATOR_HOST")),
            store_timeout_ns=_duration("SHEPHERD_STORE_TIMEOUT", _env("SHEPHERD_STORE_TIMEOUT")),
            functions_source=Path(source) if source else None,
            log_format=log_format,
            sweep_margin_ns=_duration("SHEPHERD_SWEEP_MARGIN", _env("SHEPHERD_SWEEP_MARGIN")),
            gitiles_auth=gitiles_auth,
        )


def required(value: str | None, name: str) -> str:
    """A setting the chosen adapters need: its absence is refused in one line."""
    if not value:
        raise ConfigError(f"{name} is not set")
    return value


def _duration(name: str, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        ns = parse_duration(value)
    except ValueError:
        raise ConfigError(
            f'{name} must be a Go duration such as "90s" or "2160h", not "{value}"'
        ) from None
    if ns <= 0:
        raise ConfigError(f'{name} must be positive, not "{value}"')
    return ns


def _url(name: str, value: str | None) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f'{name} must be an http(s) URL, not "{value}"')
    return value
