"""The whole flow on the Google Cloud emulators: `shepherd dev` with Firestore, the Cloud Tasks
emulator delivering timers, the Pub/Sub emulator pushing the simulator's notifications."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from emulators import Emulator, clear_firestore, emulator_env, topic_name
from localstack import FINAL, QUICK, DevProcess, write_jobs
from shepherd_tools.simulator.control import SimulatorProcess

pytestmark = pytest.mark.stack

TOPIC = topic_name("gcp-stack")


@pytest.fixture(scope="module")
def dev(
    sim: SimulatorProcess,
    firestore_emulator: Emulator,
    pubsub_emulator: Emulator,
    tasks_emulator: Emulator,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[DevProcess]:
    clear_firestore(firestore_emulator.host)
    workdir = tmp_path_factory.mktemp("gcp")
    env = emulator_env(
        firestore_emulator.host, pubsub_emulator.host, tasks_emulator.host, "gcp-stack"
    )
    process = DevProcess(workdir, write_jobs(workdir / "jobs.toml", sim.url), env).start()
    yield process
    process.stop()


def run(
    sim: SimulatorProcess, dev: DevProcess, pubsub: Emulator, **config: object
) -> tuple[str, list[str]]:
    # Buildbucket publishes to the topic on the Pub/Sub emulator (its REST publish API).
    sim.configure({"publish_url": f"http://{pubsub.host}", **config})
    invocation_id = dev.trigger()
    dev.wait_for(invocation_id, FINAL)
    return invocation_id, dev.log_lines(invocation_id)


def test_success_through_pubsub_push(
    sim: SimulatorProcess, dev: DevProcess, pubsub_emulator: Emulator
) -> None:
    invocation_id, lines = run(sim, dev, pubsub_emulator, script=[*QUICK, {"status": "SUCCESS"}])
    assert dev.invocation(invocation_id)["status"] == "SUCCEEDED"
    assert f'PubSub topic is "{TOPIC}"' in lines
    request = json.loads(
        next(line for line in lines if line.startswith("Buildbucket request:")).split("\n", 1)[1]
    )
    assert request["notify"] == {"pubsubTopic": TOPIC}
    assert any(line.startswith("Received PubSub notification with the build") for line in lines)
    assert sim.state()["calls"]["ScheduleBuild"] == 1


def test_failure(sim: SimulatorProcess, dev: DevProcess, pubsub_emulator: Emulator) -> None:
    invocation_id, lines = run(sim, dev, pubsub_emulator, script=[*QUICK, {"status": "FAILURE"}])
    assert dev.invocation(invocation_id)["status"] == "FAILED"
    assert lines[-1].endswith("with status FAILED")


def test_timers_from_cloud_tasks_alone_finish(
    sim: SimulatorProcess, dev: DevProcess, pubsub_emulator: Emulator
) -> None:
    invocation_id, lines = run(
        sim, dev, pubsub_emulator, script=[*QUICK, {"status": "SUCCESS"}], drop_notifications=1.0
    )
    assert dev.invocation(invocation_id)["status"] == "SUCCEEDED"
    assert not any(line.startswith("Received PubSub notification") for line in lines)
    handled = [line for line in lines if line.startswith("Handling timer")]
    assert handled and sim.state()["calls"]["GetBuild"] == len(handled)


def test_state_lives_in_firestore(dev: DevProcess, firestore_emulator: Emulator) -> None:
    listed = dev.http.get(f"{dev.url}/api/jobs/chromium%2FWindows%20deterministic/invocations")
    assert listed.status_code == 200
    ids = [inv["id"] for inv in listed.json()["invocations"]]
    assert len(ids) >= 3  # the runs above, read back through the Firestore store
    clear_firestore(firestore_emulator.host)
    assert dev.http.get(f"{dev.url}/api/invocations/{ids[0]}").status_code == 404
