"""The store port on Firestore (native mode): one transaction per event, CAS on mutations.

Layout:
- `invocations/{id}`: the invocation as JSON (`state`) plus the fields queries need
  (`job_id`, `status`, `created_ns`, `mutation_count`);
- `invocations/{id}/log/{mutation count, 8 digits}`: the lines one change appended, so an event
  costs one read and two writes however many lines it logs; each entry is `t` (time), `x`
  (text), `k` (kind) and `c` (the outbound call, when it records one);
- `requests/{quoted job id}:{sha256 of the request id}`: the invocation a request id started.
Job ids carry "/" and spaces, so they are percent-quoted wherever they name a document.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from google.api_core import exceptions as gexc
from google.cloud import firestore

from ..model import Invocation, LogEntry, LogKind, Status
from ..ports import ConflictError, StoreStats

INVOCATIONS = "invocations"
REQUESTS = "requests"
LOG = "log"
ACTIVE = [Status.STARTING.value, Status.RUNNING.value]
VERSIONS_KEPT = 10_000


def request_doc_id(job_id: str, request_id: str) -> str:
    # Hashing the client's key keeps the id under Firestore's 1,500 bytes whatever it holds.
    digest = hashlib.sha256(request_id.encode()).hexdigest()
    return f"{quote(job_id, safe='')}:{digest}"


def _fields(invocation: Invocation) -> dict[str, Any]:
    return {
        "job_id": invocation.job_id,
        "status": invocation.status.value,
        "created_ns": invocation.created_ns,
        "mutation_count": invocation.mutation_count,
        "state": json.dumps(invocation.to_dict()),
    }


def _invocation(snapshot: Any) -> Invocation:
    return Invocation.from_dict(json.loads(snapshot.get("state")))


def _log_item(entry: LogEntry) -> dict[str, Any]:
    item: dict[str, Any] = {"t": entry.time_ns, "x": entry.text, "k": entry.kind.value}
    if entry.call is not None:
        item["c"] = entry.call
    return item


def _log_entry(item: dict[str, Any]) -> LogEntry:
    return LogEntry(item["t"], item["x"], LogKind.stored(item.get("k")), item.get("c"))


def _log_doc(entries: Sequence[LogEntry], retention_ns: int | None) -> dict[str, Any]:
    doc: dict[str, Any] = {"entries": [_log_item(e) for e in entries]}
    if retention_ns is not None:
        # The TTL policy on `log.expire_at` (terraform) deletes old chunks.
        expires = (entries[-1].time_ns + retention_ns) / 1e9
        doc["expire_at"] = datetime.fromtimestamp(expires, UTC)
    return doc


class FirestoreStore:
    def __init__(
        self, client: firestore.Client, prefix: str = "", retention_ns: int | None = None
    ) -> None:
        self._db = client
        self._retention_ns = retention_ns
        # The update time of each invocation version get() read: commit()'s precondition.
        self._versions: OrderedDict[tuple[int, int], Any] = OrderedDict()
        self.stats = StoreStats()
        self._invocations = client.collection(prefix + INVOCATIONS)
        self._requests = client.collection(prefix + REQUESTS)

    def _doc(self, invocation_id: int) -> Any:
        return self._invocations.document(str(invocation_id))

    def _log(self, invocation_id: int, mutation_count: int) -> Any:
        return self._doc(invocation_id).collection(LOG).document(f"{mutation_count:08d}")

    def create(self, invocation: Invocation, log: Sequence[LogEntry]) -> Invocation:
        request_id = invocation.request.request_id
        request_ref = (
            self._requests.document(request_doc_id(invocation.job_id, request_id))
            if request_id is not None
            else None
        )

        @firestore.transactional
        def run(txn: firestore.Transaction) -> Invocation:
            if request_ref is not None:
                found = request_ref.get(transaction=txn)
                if found.exists:
                    existing = self._doc(found.get("invocation_id")).get(transaction=txn)
                    return _invocation(existing)
                txn.create(request_ref, {"invocation_id": invocation.id})
            txn.create(self._doc(invocation.id), _fields(invocation))
            if log:
                txn.create(
                    self._log(invocation.id, invocation.mutation_count),
                    _log_doc(log, self._retention_ns),
                )
            return invocation

        created = run(self._db.transaction())
        self.stats.transactions += 1
        self.stats.reads += 1 if request_ref is not None else 0
        if created is invocation:
            self.stats.writes += 1 + (request_ref is not None) + bool(log)
        return created

    def get(self, invocation_id: int) -> Invocation | None:
        snapshot = self._doc(invocation_id).get()
        self.stats.reads += 1
        if not snapshot.exists:
            return None
        invocation = _invocation(snapshot)
        self._remember(invocation, snapshot.update_time)
        return invocation

    def commit(
        self, invocation: Invocation, expected_mutation_count: int, log: Sequence[LogEntry]
    ) -> None:
        ref = self._doc(invocation.id)
        version = self._versions.pop((invocation.id, expected_mutation_count), None)
        if version is not None:
            self._commit_if_unchanged(invocation, version, log)
            return

        @firestore.transactional
        def run(txn: firestore.Transaction) -> None:
            stored = ref.get(transaction=txn)
            if not stored.exists or stored.get("mutation_count") != expected_mutation_count:
                raise ConflictError(
                    f"invocation {invocation.id} was modified by someone else "
                    f"(expected mutation count {expected_mutation_count})"
                )
            txn.set(ref, _fields(invocation))
            if log:
                txn.set(
                    self._log(invocation.id, invocation.mutation_count),
                    _log_doc(log, self._retention_ns),
                )

        try:
            run(self._db.transaction())
        except (gexc.Aborted, gexc.Conflict) as e:
            # Firestore gave up on contention after its own retries: someone else won.
            raise ConflictError(f"invocation {invocation.id}: {e}") from e
        self.stats.reads += 1
        self.stats.writes += 2 if log else 1
        self.stats.transactions += 1

    def _commit_if_unchanged(
        self, invocation: Invocation, version: Any, log: Sequence[LogEntry]
    ) -> None:
        """One atomic batch, no read: the state write carries the update time that get()
        saw as its precondition, so a change in between fails the whole batch."""
        batch = self._db.batch()
        batch.update(
            self._doc(invocation.id),
            _fields(invocation),
            option=self._db.write_option(last_update_time=version),
        )
        if log:
            batch.create(
                self._log(invocation.id, invocation.mutation_count),
                _log_doc(log, self._retention_ns),
            )
        try:
            results = batch.commit()
        except (gexc.FailedPrecondition, gexc.Aborted, gexc.Conflict, gexc.NotFound) as e:
            raise ConflictError(f"invocation {invocation.id} was modified by someone else") from e
        self.stats.writes += 2 if log else 1
        self.stats.transactions += 1
        # The next change of this event (a launch saves twice) needs no read either.
        self._remember(invocation, results[0].update_time)

    def _remember(self, invocation: Invocation, update_time: Any) -> None:
        self._versions[(invocation.id, invocation.mutation_count)] = update_time
        while len(self._versions) > VERSIONS_KEPT:
            self._versions.popitem(last=False)

    def read_log(self, invocation_id: int) -> list[LogEntry]:
        docs = self._doc(invocation_id).collection(LOG).order_by("__name__").stream()
        return [_log_entry(e) for doc in docs for e in doc.get("entries")]

    def list_invocations(self, job_id: str, limit: int = 50) -> list[Invocation]:
        query = (
            self._invocations.where(filter=firestore.FieldFilter("job_id", "==", job_id))
            .order_by("created_ns", direction=firestore.Query.DESCENDING)
            .limit(limit)
        )
        return [_invocation(doc) for doc in query.stream()]

    def list_active(self) -> list[Invocation]:
        query = self._invocations.where(filter=firestore.FieldFilter("status", "in", ACTIVE))
        return [_invocation(doc) for doc in query.stream()]
