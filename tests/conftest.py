"""Session-wide fixtures: the Google Cloud emulators, started once and stopped at the end."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from emulators import Emulator, start_firestore, start_pubsub, start_tasks


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
