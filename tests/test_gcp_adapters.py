"""The Cloud Tasks and Pub/Sub adapters against their emulators."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from emulators import PROJECT, Emulator
from shepherd.adapters.cloud_tasks import CloudTasksQueue, make_client, task_id
from shepherd.adapters.pubsub_topic import PubSubTopic
from shepherd.model import QueuedTask

QUEUE = f"projects/{PROJECT}/locations/us-central1/queues/adapter-test"
TIMER = "chromium/Windows deterministic:8974454865591757088:2:0"


@given(st.text(min_size=1, max_size=300))
def test_task_ids_are_valid_deterministic_and_distinct(timer_id: str) -> None:
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,500}", task_id(timer_id))
    assert task_id(timer_id) == task_id(timer_id)
    assert task_id(timer_id) != task_id(timer_id + " ")


def test_a_timer_becomes_an_http_task_to_on_timer(tasks_emulator: Emulator) -> None:
    client = make_client(tasks_emulator.host)
    queue = CloudTasksQueue(
        client, QUEUE, "http://127.0.0.1:9/on-timer", "invoker@p.iam.gserviceaccount.com"
    )
    queue.ensure_queue()
    queue.ensure_queue()  # idempotent
    eta_ns = 4_000_000_000_000_000_000  # far ahead: the emulator must not deliver it here
    queue.schedule(
        [QueuedTask(8974454865591757088, TIMER, "check-buildbucket-build-status", eta_ns)]
    )
    (task,) = [t for t in client.list_tasks(parent=QUEUE) if t.name.endswith(task_id(TIMER))]
    assert task.name == f"{QUEUE}/tasks/{task_id(TIMER)}"
    assert task.http_request.url == "http://127.0.0.1:9/on-timer"
    assert json.loads(task.http_request.body) == {
        "invocation_id": "8974454865591757088",
        "timer_id": TIMER,
        "name": "check-buildbucket-build-status",
    }
    assert task.http_request.oidc_token.service_account_email == "invoker@p.iam.gserviceaccount.com"
    assert task.schedule_time.timestamp() == pytest.approx(eta_ns / 1e9)


@pytest.fixture
def publisher(pubsub_emulator: Emulator) -> Iterator[object]:
    from google.cloud import pubsub_v1

    with pytest.MonkeyPatch.context() as env:
        env.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator.host)
        client = pubsub_v1.PublisherClient()
    yield client


def test_topic_is_created_once_and_prepared_once_per_publisher(
    publisher: object, caplog: pytest.LogCaptureFixture
) -> None:
    name = f"projects/{PROJECT}/topics/prepare-test"
    calls: list[str] = []

    class Counting:
        def __getattr__(self, attr: str) -> object:
            calls.append(attr)
            return getattr(publisher, attr)

    topic = PubSubTopic(Counting(), name)  # type: ignore[arg-type]
    account = "buildbucket-test@example-project.iam.gserviceaccount.com"
    assert topic.prepare("buildbucket", account) == name
    assert publisher.get_topic(topic=name).name == name  # type: ignore[attr-defined]
    # The emulator has no IAM: what the adapter asked to grant is in its warning.
    assert f"serviceAccount:{account} not granted" in caplog.text
    first = list(calls)
    assert topic.prepare("buildbucket", account) == name
    assert calls == first, "a prepared publisher costs no call"
    topic.prepare("buildbucket", "other@appspot.gserviceaccount.com")
    assert len(calls) > len(first)
    assert "serviceAccount:other@appspot.gserviceaccount.com not granted" in caplog.text


def test_functions_import_only_the_google_libraries_they_use(
    firestore_emulator: Emulator, tmp_path: object
) -> None:
    """The api function answers on Firestore alone: Cloud Tasks and Pub/Sub stay unimported."""
    import subprocess
    import sys

    from localstack import write_jobs

    jobs = write_jobs(Path(str(tmp_path)) / "jobs.toml", "cr-buildbucket.appspot.com")
    code = (
        "import sys; from shepherd.service import get_service; s = get_service(); "
        "s.engine.store.list_invocations('chromium/Windows deterministic'); "
        "print(sorted(m for m in ('google.cloud.firestore', 'google.cloud.tasks_v2', "
        "'google.cloud.pubsub_v1') if m in sys.modules))"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "FIRESTORE_EMULATOR_HOST": firestore_emulator.host,
        "SHEPHERD_JOBS": str(jobs),
        "SHEPHERD_TASKS_QUEUE": QUEUE,
        "SHEPHERD_TOPIC": f"projects/{PROJECT}/topics/t-lazy",
        "SHEPHERD_TASKS_SERVICE_ACCOUNT": "invoker@p.iam.gserviceaccount.com",
    }
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['google.cloud.firestore']"
