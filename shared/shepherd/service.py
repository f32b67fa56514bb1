"""Builds the engine and its adapters from the environment, once per process.

Every function (and `shepherd dev`, which serves all four in one process) shares this one
service; module import does nothing, the first request builds it.
"""

from __future__ import annotations

import os
import random
import threading
from dataclasses import dataclass
from pathlib import Path

from .adapters.buildbucket_prpc import PrpcBuildsClient
from .adapters.sqlite_delivery import SqliteDeliveryQueue, SqliteTopic
from .adapters.sqlite_store import SqliteStore
from .clock import RealClock
from .engine import Engine
from .jobs import ConfigError, load_jobs
from .signing import TokenSigner, load_or_create_key
from .tasks.registry import CONFIG_MODELS, make_kinds

DEFAULT_STATE = ".shepherd/state.db"


@dataclass
class Service:
    engine: Engine
    queue: SqliteDeliveryQueue


_lock = threading.Lock()
_service: Service | None = None


def state_path() -> Path:
    return Path(os.environ.get("SHEPHERD_STATE") or DEFAULT_STATE)


def build_service() -> Service:
    jobs_file = os.environ.get("SHEPHERD_JOBS")
    if not jobs_file:
        raise ConfigError("SHEPHERD_JOBS is not set: it must name the job file")
    jobs = load_jobs(jobs_file, CONFIG_MODELS)
    state = state_path()
    clock = RealClock()
    rng = random.Random()
    queue = SqliteDeliveryQueue(state)
    engine = Engine(
        jobs=jobs,
        kinds=make_kinds(PrpcBuildsClient(clock), rng),
        store=SqliteStore(state),
        queue=queue,
        topic=SqliteTopic(queue, jobs.settings.app_id),
        clock=clock,
        signer=TokenSigner(load_or_create_key(os.environ.get("SHEPHERD_SECRET"), state.parent)),
        rng=rng,
    )
    return Service(engine, queue)


def get_service() -> Service:
    global _service
    with _lock:
        if _service is None:
            _service = build_service()
        return _service
