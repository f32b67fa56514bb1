"""The embedded store: invocations and their logs in one SQLite file (stdlib sqlite3).

Every write is one transaction. A commit is a compare-and-swap on the mutation count, so two
handlers racing on one invocation cannot both win, across threads and processes alike.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from ..model import Invocation, JobState, LogEntry, LogKind, Trigger
from ..ports import ConflictError, StoreStats, TriagePlan, TriageView
from .sqlite_db import DEFAULT_TIMEOUT_S, create_schema, transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS invocations (
    id INTEGER PRIMARY KEY,
    job_id TEXT NOT NULL,
    status TEXT NOT NULL,
    mutation_count INTEGER NOT NULL,
    created_ns INTEGER NOT NULL,
    data TEXT NOT NULL,
    next_check_ns INTEGER
);
CREATE INDEX IF NOT EXISTS invocations_job ON invocations (job_id, created_ns DESC);
CREATE INDEX IF NOT EXISTS invocations_active ON invocations (status)
    WHERE status IN ('STARTING', 'RUNNING');
CREATE TABLE IF NOT EXISTS log_lines (
    invocation_id INTEGER NOT NULL,
    mutation_count INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    time_ns INTEGER NOT NULL,
    text TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT 'info',
    call TEXT,
    PRIMARY KEY (invocation_id, mutation_count, idx)
);
CREATE TABLE IF NOT EXISTS triggers (
    job_id TEXT NOT NULL,
    id TEXT NOT NULL,
    status TEXT NOT NULL,
    created_ns INTEGER NOT NULL,
    ord INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (job_id, id)
);
CREATE INDEX IF NOT EXISTS triggers_pending ON triggers (job_id, created_ns, ord, id)
    WHERE status = 'PENDING';
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS kind_state (
    job_id TEXT PRIMARY KEY,
    data TEXT NOT NULL
);
"""
# Columns added since the first schema: a file written before them gains them on open.
_ADDED_LOG_COLUMNS = {"kind": "TEXT NOT NULL DEFAULT 'info'", "call": "TEXT"}
# Created after the migration below, since an older file lacks the column until then.
_NEXT_CHECK_INDEX = """
CREATE INDEX IF NOT EXISTS invocations_next_check ON invocations (next_check_ns)
    WHERE next_check_ns IS NOT NULL
"""
_CHECK_GROUP_INDEX = """
CREATE INDEX IF NOT EXISTS invocations_check_group ON invocations (check_group)
    WHERE check_group IS NOT NULL
"""


def _add_missing_columns(path: str, timeout_s: float) -> None:
    with transaction(path, write=True, timeout_s=timeout_s) as db:
        present = {row[1] for row in db.execute("PRAGMA table_info(log_lines)")}
        for name, definition in _ADDED_LOG_COLUMNS.items():
            if name not in present:
                db.execute(f"ALTER TABLE log_lines ADD COLUMN {name} {definition}")
        present = {row[1] for row in db.execute("PRAGMA table_info(invocations)")}
        if "next_check_ns" not in present:
            db.execute("ALTER TABLE invocations ADD COLUMN next_check_ns INTEGER")
            # Unfinished invocations of an older file are due at once: the sweep looks at them.
            db.execute(
                "UPDATE invocations SET next_check_ns = created_ns"
                " WHERE status IN ('STARTING', 'RUNNING')"
            )
        db.execute(_NEXT_CHECK_INDEX)
        if "check_group" not in present:
            db.execute("ALTER TABLE invocations ADD COLUMN check_group TEXT")
        db.execute(_CHECK_GROUP_INDEX)


class SqliteStore:
    """A busy lock past `timeout_s`, or a failing disk, raises StoreUnavailable."""

    def __init__(self, path: str | Path, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self._path = str(path)
        self._timeout_s = timeout_s
        self.stats = StoreStats()
        create_schema(self._path, _SCHEMA, timeout_s)
        _add_missing_columns(self._path, timeout_s)

    def _transaction(self, write: bool = False) -> AbstractContextManager[sqlite3.Connection]:
        return transaction(self._path, write, self._timeout_s)

    def _append_log(
        self, db: sqlite3.Connection, invocation: Invocation, log: Sequence[LogEntry]
    ) -> None:
        # Keyed by the change that wrote them, like Firestore's log chunks: no read needed.
        if not log:
            return
        db.executemany(
            "INSERT INTO log_lines (invocation_id, mutation_count, idx, time_ns, text, kind, call)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (invocation.id, invocation.mutation_count, i, e.time_ns, e.text, e.kind, e.call)
                for i, e in enumerate(log)
            ],
        )
        self.stats.writes += 1

    @staticmethod
    def _row(invocation: Invocation) -> tuple[str, int, str, int | None, str | None]:
        return (
            invocation.status.value,
            invocation.mutation_count,
            json.dumps(invocation.to_dict()),
            invocation.next_check_ns,
            invocation.check_group,
        )

    def create(self, invocation: Invocation, log: Sequence[LogEntry]) -> None:
        with self._transaction(write=True) as db:
            self._insert(db, invocation, log)
            self.stats.transactions += 1

    def _insert(
        self, db: sqlite3.Connection, invocation: Invocation, log: Sequence[LogEntry]
    ) -> None:
        status, count, data, next_check, group = self._row(invocation)
        try:
            db.execute(
                "INSERT INTO invocations (id, job_id, status, mutation_count,"
                " created_ns, data, next_check_ns, check_group) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    invocation.id,
                    invocation.job_id,
                    status,
                    count,
                    invocation.created_ns,
                    data,
                    next_check,
                    group,
                ),
            )
        except sqlite3.IntegrityError:
            raise ConflictError(f"invocation {invocation.id} exists already") from None
        self._append_log(db, invocation, log)
        self.stats.writes += 1

    def get(self, invocation_id: int) -> Invocation | None:
        with self._transaction() as db:
            row = db.execute("SELECT data FROM invocations WHERE id = ?", (invocation_id,))
            found = row.fetchone()
        self.stats.reads += 1
        return Invocation.from_dict(json.loads(found[0])) if found else None

    def commit(
        self,
        invocation: Invocation,
        expected_mutation_count: int,
        log: Sequence[LogEntry],
        kind_state: dict[str, Any] | None = None,
    ) -> None:
        status, count, data, next_check, group = self._row(invocation)
        with self._transaction(write=True) as db:
            updated = db.execute(
                "UPDATE invocations SET status = ?, mutation_count = ?, data = ?,"
                " next_check_ns = ?, check_group = ? WHERE id = ? AND mutation_count = ?",
                (status, count, data, next_check, group, invocation.id, expected_mutation_count),
            ).rowcount
            if updated != 1:
                raise ConflictError(
                    f"invocation {invocation.id} was modified by someone else "
                    f"(expected mutation count {expected_mutation_count})"
                )
            self._append_log(db, invocation, log)
            self.stats.writes += 1
            self.stats.transactions += 1
            if kind_state is not None:
                self._put_kind_state(db, invocation.job_id, kind_state)

    def read_log(self, invocation_id: int) -> list[LogEntry]:
        with self._transaction() as db:
            rows = db.execute(
                "SELECT time_ns, text, kind, call FROM log_lines WHERE invocation_id = ?"
                " ORDER BY mutation_count, idx",
                (invocation_id,),
            ).fetchall()
        return [LogEntry(t, text, LogKind.stored(kind), call) for t, text, kind, call in rows]

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        """The `data` column of the rows a query finds, parsed and counted."""
        with self._transaction() as db:
            rows = db.execute(sql, params).fetchall()
        self.stats.reads += len(rows)
        self.stats.queries += 1
        return [json.loads(r[0]) for r in rows]

    def list_invocations(self, job_id: str, limit: int = 50) -> list[Invocation]:
        sql = (
            "SELECT data FROM invocations WHERE job_id = ? ORDER BY created_ns DESC, id DESC"
            " LIMIT ?"
        )
        return [Invocation.from_dict(d) for d in self._query(sql, (job_id, limit))]

    def list_active(self) -> list[Invocation]:
        with self._transaction() as db:
            rows = db.execute(
                "SELECT data FROM invocations WHERE status IN ('STARTING', 'RUNNING')"
            ).fetchall()
        return [Invocation.from_dict(json.loads(r[0])) for r in rows]

    # Planned on the partial index invocations_check_group (tests/test_store_contract.py).
    CHECK_GROUP_QUERY = "SELECT data FROM invocations WHERE check_group = ? ORDER BY id LIMIT ?"

    def list_check_group(self, group: str, limit: int | None = None) -> list[Invocation]:
        params = (group, -1 if limit is None else limit)
        return [Invocation.from_dict(d) for d in self._query(self.CHECK_GROUP_QUERY, params)]

    # Planned on the partial index invocations_next_check (tests/test_store_contract.py).
    OVERDUE_QUERY = (
        "SELECT data FROM invocations WHERE next_check_ns IS NOT NULL AND next_check_ns < ?"
        " ORDER BY next_check_ns LIMIT ?"
    )

    def list_overdue(self, before_ns: int, limit: int) -> list[Invocation]:
        params = (before_ns, limit)
        return [Invocation.from_dict(d) for d in self._query(self.OVERDUE_QUERY, params)]

    # --- triggers and jobs ---

    def add_trigger(self, trigger: Trigger) -> Trigger:
        with self._transaction(write=True) as db:
            found = db.execute(
                "SELECT data FROM triggers WHERE job_id = ? AND id = ?",
                (trigger.job_id, trigger.id),
            ).fetchone()
            self.stats.reads += 1
            if found:
                return Trigger.from_dict(json.loads(found[0]))
            db.execute(
                "INSERT INTO triggers (job_id, id, status, created_ns, ord, data)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    trigger.job_id,
                    trigger.id,
                    trigger.status.value,
                    trigger.created_ns,
                    trigger.order,
                    json.dumps(trigger.to_dict()),
                ),
            )
            self.stats.writes += 1
            self.stats.transactions += 1
        return trigger

    def get_trigger(self, job_id: str, trigger_id: str) -> Trigger | None:
        with self._transaction() as db:
            found = db.execute(
                "SELECT data FROM triggers WHERE job_id = ? AND id = ?", (job_id, trigger_id)
            ).fetchone()
        self.stats.reads += 1
        return Trigger.from_dict(json.loads(found[0])) if found else None

    PENDING_QUERY = (
        "SELECT data FROM triggers WHERE job_id = ? AND status = 'PENDING'"
        " ORDER BY created_ns, ord, id LIMIT ?"
    )

    def list_pending(self, job_id: str, limit: int) -> list[Trigger]:
        return [Trigger.from_dict(d) for d in self._query(self.PENDING_QUERY, (job_id, limit))]

    def get_job(self, job_id: str) -> JobState:
        with self._transaction() as db:
            found = db.execute("SELECT data FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        self.stats.reads += 1
        return JobState.from_dict(json.loads(found[0])) if found else JobState(job_id)

    def get_kind_state(self, job_id: str) -> dict[str, Any]:
        with self._transaction() as db:
            found = db.execute("SELECT data FROM kind_state WHERE job_id = ?", (job_id,)).fetchone()
        self.stats.reads += 1
        return dict(json.loads(found[0])) if found else {}

    def put_kind_state(self, job_id: str, state: dict[str, Any]) -> None:
        with self._transaction(write=True) as db:
            self._put_kind_state(db, job_id, state)

    def _put_kind_state(self, db: sqlite3.Connection, job_id: str, state: dict[str, Any]) -> None:
        db.execute(
            "INSERT INTO kind_state (job_id, data) VALUES (?, ?)"
            " ON CONFLICT (job_id) DO UPDATE SET data = excluded.data",
            (job_id, json.dumps(state, sort_keys=True)),
        )
        self.stats.writes += 1

    def triage(
        self,
        job_id: str,
        limit: int,
        plan: Callable[[TriageView], TriagePlan | None],
        read_active: bool = True,
    ) -> TriagePlan | None:
        # BEGIN IMMEDIATE: the reads below cannot go stale before the writes.
        with self._transaction(write=True) as db:
            found = db.execute("SELECT data FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            job = JobState.from_dict(json.loads(found[0])) if found else JobState(job_id)
            rows = db.execute(self.PENDING_QUERY, (job_id, limit)).fetchall()
            pending = tuple(Trigger.from_dict(json.loads(r[0])) for r in rows)
            running = set(job.active)
            if read_active:
                running = {
                    row[0]
                    for row in db.execute(
                        "SELECT id FROM invocations WHERE status IN ('STARTING', 'RUNNING')"
                        f" AND id IN ({','.join('?' * len(job.active))})",
                        job.active,
                    )
                }
                self.stats.reads += len(job.active)
            self.stats.reads += 1 + len(pending)
            decided = plan(TriageView(job, pending, frozenset(job.active) - running))
            if decided is None:
                return None
            db.execute(
                "INSERT INTO jobs (job_id, version, data) VALUES (?, 0, ?)"
                " ON CONFLICT (job_id) DO UPDATE SET data = excluded.data",
                (job_id, json.dumps(decided.job.to_dict())),
            )
            db.executemany(
                "UPDATE triggers SET status = ?, data = ? WHERE job_id = ? AND id = ?",
                [
                    (t.status.value, json.dumps(t.to_dict()), t.job_id, t.id)
                    for t in decided.triggers
                ],
            )
            for invocation, log in decided.invocations:
                self._insert(db, invocation, log)
            self.stats.writes += 1 + len(decided.triggers)
            self.stats.transactions += 1
        return decided
