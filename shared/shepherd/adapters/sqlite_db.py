"""One SQLite transaction on a fresh connection, shared by the embedded adapters."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def transaction(path: str, write: bool = False) -> Iterator[sqlite3.Connection]:
    # A connection per transaction: safe for any thread and process, and WAL lets readers run
    # beside the single writer. BEGIN IMMEDIATE takes the write lock up front, so a read inside
    # a compare-and-swap cannot go stale before its write.
    db = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    finally:
        db.close()


def create_schema(path: str, schema: str) -> None:
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    with transaction(path, write=True) as db:
        for statement in schema.split(";"):
            if statement.strip():
                db.execute(statement)
