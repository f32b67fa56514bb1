"""One SQLite transaction on a fresh connection, shared by the embedded adapters."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..ports import StoreUnavailable

DEFAULT_TIMEOUT_S = 30.0

# Primary result codes that say "not now" rather than "wrong": the lock was not had in time,
# or the disk failed. Anything else (no such table, a constraint) is a bug, not a 503.
_TRANSIENT = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_IOERR}


@contextmanager
def transaction(
    path: str, write: bool = False, timeout_s: float = DEFAULT_TIMEOUT_S
) -> Iterator[sqlite3.Connection]:
    # A connection per transaction: safe for any thread and process, and WAL lets readers run
    # beside the single writer. BEGIN IMMEDIATE takes the write lock up front, so a read inside
    # a compare-and-swap cannot go stale before its write.
    try:
        db = sqlite3.connect(path, timeout=timeout_s, isolation_level=None)
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
    except sqlite3.OperationalError as e:
        if e.sqlite_errorcode & 0xFF not in _TRANSIENT:
            raise
        raise StoreUnavailable(f"the SQLite store: {e}") from e


def create_schema(path: str, schema: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    with transaction(path, write=True, timeout_s=timeout_s) as db:
        for statement in schema.split(";"):
            if statement.strip():
                db.execute(statement)
