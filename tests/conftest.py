"""Shared fixtures: the Google Cloud emulators (once a session), and a simulator with a local
stack beside it (once a module; a module that needs another kind defines its own)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from emulators import Emulator, TcpProxy, start_firestore, start_pubsub, start_tasks
from localstack import DevProcess, write_jobs
from shepherd_tools.simulator.control import SimulatorProcess

EMULATOR_FIXTURES = {"firestore_emulator", "pubsub_emulator", "tasks_emulator"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses an emulator is marked `emulator`, so the fast loop can leave it out."""
    for item in items:
        if EMULATOR_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.emulator)


@pytest.fixture(scope="session")
def firestore_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    emulator = start_firestore(tmp_path_factory.mktemp("firestore"))
    yield emulator
    emulator.stop()


@pytest.fixture(scope="session")
def pubsub_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    emulator = start_pubsub(tmp_path_factory.mktemp("pubsub"))
    yield emulator
    emulator.stop()


@pytest.fixture(scope="session")
def tasks_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    emulator = start_tasks(tmp_path_factory.mktemp("tasks"))
    yield emulator
    emulator.stop()


@pytest.fixture
def firestore_proxy(firestore_emulator: Emulator) -> Iterator[TcpProxy]:
    """The Firestore emulator behind a proxy that the test may cut: a Firestore outage."""
    proxy = TcpProxy(firestore_emulator.host)
    yield proxy
    proxy.close()


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorProcess]:
    with SimulatorProcess() as process:
        yield process


@pytest.fixture(scope="module")
def dev(sim: SimulatorProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevProcess]:
    workdir = tmp_path_factory.mktemp("dev")
    process = DevProcess(workdir, write_jobs(workdir / "jobs.toml", sim.url)).start()
    yield process
    process.stop()
