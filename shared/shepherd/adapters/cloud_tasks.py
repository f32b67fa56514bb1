"""The TimerQueue port on Cloud Tasks: each timer becomes an HTTP task to `on_timer`.

Task names derive from timer ids, so Cloud Tasks refuses a second task for the same timer in
production. Correctness does not rest on that: a timer delivered twice, or one whose
invocation moved on, is ignored by the handler (the emulator neither dedups nor deletes).
Transient Cloud Tasks errors become Unavailable: the function answers 503, and the event,
delivered again, hands its timers again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from google.api_core import exceptions as gexc
from google.cloud import tasks_v2
from google.protobuf import duration_pb2, timestamp_pb2

from .. import queue_policy
from ..model import QueuedTask
from ..ports import Unavailable
from .google_errors import TRANSIENT, describe

logger = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def task_id(timer_id: str) -> str:
    """A valid, deterministic task id: readable prefix, then a hash for uniqueness."""
    readable = _UNSAFE.sub("-", timer_id).strip("-")[:80]
    digest = hashlib.sha256(timer_id.encode()).hexdigest()[:32]
    return f"{readable}-{digest}"


def _duration(ns: int) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(ns)
    return duration


def retry_config() -> tasks_v2.RetryConfig:
    """queue_policy as Cloud Tasks spells it (terraform/tasks.tf says the same)."""
    return tasks_v2.RetryConfig(
        max_attempts=queue_policy.MAX_ATTEMPTS,
        min_backoff=_duration(queue_policy.MIN_BACKOFF_NS),
        max_backoff=_duration(queue_policy.MAX_BACKOFF_NS),
        max_doublings=queue_policy.MAX_DOUBLINGS,
    )


def make_client(emulator_host: str | None) -> tasks_v2.CloudTasksClient:
    if not emulator_host:
        return tasks_v2.CloudTasksClient()
    import grpc
    from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

    channel = grpc.insecure_channel(emulator_host)
    return tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))


@contextmanager
def _unavailable_on_transient_errors() -> Iterator[None]:
    try:
        yield
    except TRANSIENT as e:
        raise Unavailable(f"Cloud Tasks: {describe(e)}") from e


class CloudTasksQueue:
    def __init__(
        self,
        client: tasks_v2.CloudTasksClient,
        queue: str,
        url: str,
        service_account: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self._client = client
        self._queue = queue
        self._url = url
        self._service_account = service_account
        self._headers = {"Content-Type": "application/json", **(headers or {})}
        self._ensures_queue = False

    def ensure_queue(self) -> None:
        """Creates the queue if it is missing (on an emulator; terraform makes the real one),
        retrying as the real one does; from then on, again whenever it has gone (an emulator
        restarted empty)."""
        self._ensures_queue = True
        parent, _, _ = self._queue.rpartition("/queues/")
        queue = tasks_v2.Queue(name=self._queue, retry_config=retry_config())
        with _unavailable_on_transient_errors(), contextlib.suppress(gexc.AlreadyExists):
            self._client.create_queue(parent=parent, queue=queue)

    def schedule(self, tasks: Sequence[QueuedTask]) -> None:
        with _unavailable_on_transient_errors():
            for task in tasks:
                self._create(task)

    def _create(self, task: QueuedTask) -> None:
        eta = timestamp_pb2.Timestamp()
        eta.FromNanoseconds(task.eta_ns)
        http = tasks_v2.HttpRequest(
            url=self._url,
            http_method=tasks_v2.HttpMethod.POST,
            headers=self._headers,
            body=json.dumps(task.body()).encode(),
        )
        if self._service_account:
            http.oidc_token = tasks_v2.OidcToken(service_account_email=self._service_account)
        name = f"{self._queue}/tasks/{task_id(task.timer_id)}"
        request = tasks_v2.Task(name=name, schedule_time=eta, http_request=http)
        try:
            try:
                self._client.create_task(parent=self._queue, task=request)
            except gexc.FailedPrecondition:  # "Queue ... does not exist"
                if not self._ensures_queue:
                    raise
                logger.warning("queue %s is gone: creating it again", self._queue)
                self.ensure_queue()
                self._client.create_task(parent=self._queue, task=request)
        except gexc.AlreadyExists:
            logger.info("task %s exists already", name)
