"""The store port on Firestore (native mode): one transaction per event, CAS on mutations.

Layout:
- `invocations/{id}`: the invocation as JSON (`state`) plus the fields queries need
  (`job_id`, `status`, `created_ns`, `mutation_count`, and `next_check_ns`, null once final:
  the sweep's range query on its automatic single-field index skips nulls; `check_group`, null
  unless RUNNING in a group, which a group's status check reads by equality);
- `invocations/{id}/log/{mutation count, 8 digits}`: the lines one change appended, so an event
  costs one read and two writes however many lines it logs; each entry is `t` (time), `x`
  (text), `k` (kind) and `c` (the outbound call, when it records one);
- `triggers/{quoted job id}:{sha256 of the trigger id}`: a trigger (`state`) and the fields its
  job's pending query reads (`job_id`, `status`, `created_ns`, `order`, `id`; composite index in
  terraform/firestore.indexes.json); triggers arrive as documents of their own, so adding one
  never contends with its job's document;
- `jobs/{quoted job id}`: the job's state (`state`); a triage reads and writes it, its pending
  triggers and its active invocations in one transaction;
- `kind_state/{quoted job id}`: what a job's task kind keeps between invocations (`state`, JSON:
  a Gitiles poller's last seen commit per ref), written with the change of the invocation that
  made it (its transaction or batch).
Job ids carry "/" and spaces, so they are percent-quoted wherever they name a document.

Firestore's transient errors (unavailable, deadline, internal, exhausted, an abort outside the
compare-and-swap, the client's retries running out) become StoreUnavailable; a lost
compare-and-swap is ConflictError, however Firestore reports it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import wraps
from typing import Any, TypeVar
from urllib.parse import quote

from google.api_core import exceptions as gexc
from google.api_core import retry as retries
from google.cloud import firestore

from ..model import Invocation, JobState, LogEntry, LogKind, Status, Trigger, TriggerStatus
from ..ports import ConflictError, StoreStats, StoreUnavailable, TriagePlan, TriageView
from .google_errors import describe, transient_cause

INVOCATIONS = "invocations"
TRIGGERS = "triggers"
JOBS = "jobs"
KIND_STATE = "kind_state"
LOG = "log"
ACTIVE = [Status.STARTING.value, Status.RUNNING.value]
VERSIONS_KEPT = 10_000
# Contending transactions abort each other; with the library's 5 attempts, 8 contenders on a busy
# machine could all give up and none win. One of them winning is what the CAS promises.
TRANSACTION_ATTEMPTS = 20
DEFAULT_TIMEOUT_S = 10.0

T = TypeVar("T")


def trigger_doc_id(job_id: str, trigger_id: str) -> str:
    # Hashing the client's id keeps the document's under Firestore's 1,500 bytes.
    digest = hashlib.sha256(trigger_id.encode()).hexdigest()
    return f"{quote(job_id, safe='')}:{digest}"


def _fields(invocation: Invocation) -> dict[str, Any]:
    return {
        "job_id": invocation.job_id,
        "status": invocation.status.value,
        "created_ns": invocation.created_ns,
        "mutation_count": invocation.mutation_count,
        "next_check_ns": invocation.next_check_ns,
        "check_group": invocation.check_group,
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


@contextmanager
def _unavailable_on_transient_errors() -> Iterator[None]:
    try:
        yield
    except (ConflictError, StoreUnavailable):
        raise
    except Exception as e:
        cause = transient_cause(e)
        if cause is None:
            raise
        raise StoreUnavailable(f"Firestore: {describe(cause)}") from e


def _translated(method: Callable[..., T]) -> Callable[..., T]:
    @wraps(method)
    def run(*args: Any, **kwargs: Any) -> T:
        with _unavailable_on_transient_errors():
            return method(*args, **kwargs)

    return run


def _bound_calls(client: firestore.Client, timeout_s: float) -> None:
    """Every call of this client gives up after `timeout_s`, its own retries included.

    Firestore's defaults retry for 60 s (300 s for reads and queries), longer than a function
    should wait before answering 503, and a transaction's begin, commit and rollback take no
    retry argument. So the bound goes on every method of the client's transport, keeping each
    method's own choice of errors to retry (the transport's table is private to the library;
    tests/test_store_unavailable.py sees an outage answered within the bound)."""
    for call in client._firestore_api._transport._wrapped_methods.values():
        if call._retry is not None:
            call._retry = call._retry.with_timeout(timeout_s).with_delay(
                initial=0.05, maximum=1.0, multiplier=2.0
            )
        call._timeout = timeout_s


class FirestoreStore:
    def __init__(
        self,
        client: firestore.Client,
        prefix: str = "",
        retention_ns: int | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self._db = client
        _bound_calls(client, timeout_s)
        # Queries resume a broken stream by themselves; they get the same bound explicitly.
        self._read_retry = retries.Retry(
            predicate=retries.if_transient_error, initial=0.05, maximum=1.0, multiplier=2.0
        ).with_timeout(timeout_s)
        self._timeout_s = timeout_s
        self._retention_ns = retention_ns
        # The update time of each invocation version get() read: commit()'s precondition.
        self._versions: OrderedDict[tuple[int, int], Any] = OrderedDict()
        self.stats = StoreStats()
        self._invocations = client.collection(prefix + INVOCATIONS)
        self._triggers = client.collection(prefix + TRIGGERS)
        self._jobs = client.collection(prefix + JOBS)
        self._kind_state = client.collection(prefix + KIND_STATE)

    def _doc(self, invocation_id: int) -> Any:
        return self._invocations.document(str(invocation_id))

    def _log(self, invocation_id: int, mutation_count: int) -> Any:
        return self._doc(invocation_id).collection(LOG).document(f"{mutation_count:08d}")

    @_translated
    def create(self, invocation: Invocation, log: Sequence[LogEntry]) -> None:
        batch = self._db.batch()
        batch.create(self._doc(invocation.id), _fields(invocation))
        if log:
            batch.create(
                self._log(invocation.id, invocation.mutation_count),
                _log_doc(log, self._retention_ns),
            )
        try:
            batch.commit()
        except gexc.AlreadyExists as e:
            raise ConflictError(f"invocation {invocation.id} exists already") from e
        self.stats.transactions += 1
        self.stats.writes += 1 + bool(log)

    @_translated
    def get(self, invocation_id: int) -> Invocation | None:
        snapshot = self._doc(invocation_id).get()
        self.stats.reads += 1
        if not snapshot.exists:
            return None
        invocation = _invocation(snapshot)
        self._remember(invocation, snapshot.update_time)
        return invocation

    @_translated
    def commit(
        self,
        invocation: Invocation,
        expected_mutation_count: int,
        log: Sequence[LogEntry],
        kind_state: dict[str, Any] | None = None,
    ) -> None:
        ref = self._doc(invocation.id)
        version = self._versions.pop((invocation.id, expected_mutation_count), None)
        if version is not None:
            self._commit_if_unchanged(invocation, version, log, kind_state)
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
            if kind_state is not None:
                txn.set(*self._kind_state_doc(invocation.job_id, kind_state))

        try:
            run(self._db.transaction(max_attempts=TRANSACTION_ATTEMPTS))
        except (gexc.Aborted, gexc.Conflict) as e:
            # Contention on the invocation's document: someone else is changing it.
            raise ConflictError(f"invocation {invocation.id}: {e}") from e
        except ValueError as e:
            # The transaction helper gave up after retrying aborts: someone else won.
            if not isinstance(e.__cause__, gexc.Aborted):
                raise
            raise ConflictError(f"invocation {invocation.id}: {e}") from e
        self.stats.reads += 1
        self.stats.writes += (2 if log else 1) + (kind_state is not None)
        self.stats.transactions += 1

    def _commit_if_unchanged(
        self,
        invocation: Invocation,
        version: Any,
        log: Sequence[LogEntry],
        kind_state: dict[str, Any] | None,
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
        if kind_state is not None:
            batch.set(*self._kind_state_doc(invocation.job_id, kind_state))
        try:
            results = batch.commit()
        except (gexc.FailedPrecondition, gexc.Aborted, gexc.Conflict, gexc.NotFound) as e:
            raise ConflictError(f"invocation {invocation.id} was modified by someone else") from e
        self.stats.writes += (2 if log else 1) + (kind_state is not None)
        self.stats.transactions += 1
        # The next change of this event (a launch saves twice) needs no read either.
        self._remember(invocation, results[0].update_time)

    def _remember(self, invocation: Invocation, update_time: Any) -> None:
        self._versions[(invocation.id, invocation.mutation_count)] = update_time
        while len(self._versions) > VERSIONS_KEPT:
            self._versions.popitem(last=False)

    def _stream(self, query: Any) -> Iterator[Any]:
        return query.stream(retry=self._read_retry, timeout=self._timeout_s)

    def _query(self, query: Any) -> list[Any]:
        """The documents a query finds, counted as Firestore bills them (an empty query: one
        read)."""
        docs = list(self._stream(query))
        self.stats.reads += max(1, len(docs))
        self.stats.queries += 1
        return docs

    @_translated
    def read_log(self, invocation_id: int) -> list[LogEntry]:
        docs = self._stream(self._doc(invocation_id).collection(LOG).order_by("__name__"))
        return [_log_entry(e) for doc in docs for e in doc.get("entries")]

    @_translated
    def list_invocations(self, job_id: str, limit: int = 50) -> list[Invocation]:
        query = (
            self._invocations.where(filter=firestore.FieldFilter("job_id", "==", job_id))
            .order_by("created_ns", direction=firestore.Query.DESCENDING)
            .limit(limit)
        )
        return [_invocation(doc) for doc in self._query(query)]

    @_translated
    def list_active(self) -> list[Invocation]:
        query = self._invocations.where(filter=firestore.FieldFilter("status", "in", ACTIVE))
        return [_invocation(doc) for doc in self._stream(query)]

    @_translated
    def list_overdue(self, before_ns: int, limit: int) -> list[Invocation]:
        query = (
            self._invocations.where(filter=firestore.FieldFilter("next_check_ns", "<", before_ns))
            .order_by("next_check_ns")
            .limit(limit)
        )
        return [_invocation(doc) for doc in self._query(query)]

    @_translated
    def list_check_group(self, group: str, limit: int | None = None) -> list[Invocation]:
        query = self._invocations.where(filter=firestore.FieldFilter("check_group", "==", group))
        return [
            _invocation(doc) for doc in self._query(query if limit is None else query.limit(limit))
        ]

    # --- triggers and jobs ---

    def _trigger_doc(self, job_id: str, trigger_id: str) -> Any:
        return self._triggers.document(trigger_doc_id(job_id, trigger_id))

    @staticmethod
    def _trigger_fields(trigger: Trigger) -> dict[str, Any]:
        return {
            "job_id": trigger.job_id,
            "id": trigger.id,
            "status": trigger.status.value,
            "created_ns": trigger.created_ns,
            "order": trigger.order,
            "state": json.dumps(trigger.to_dict()),
        }

    @_translated
    def add_trigger(self, trigger: Trigger) -> Trigger:
        ref = self._trigger_doc(trigger.job_id, trigger.id)
        try:
            ref.create(self._trigger_fields(trigger))
        except gexc.AlreadyExists:
            found = self.get_trigger(trigger.job_id, trigger.id)
            assert found is not None  # triggers are never deleted
            return found
        self.stats.writes += 1
        return trigger

    @_translated
    def get_trigger(self, job_id: str, trigger_id: str) -> Trigger | None:
        snapshot = self._trigger_doc(job_id, trigger_id).get()
        self.stats.reads += 1
        return Trigger.from_dict(json.loads(snapshot.get("state"))) if snapshot.exists else None

    @_translated
    def list_pending(self, job_id: str, limit: int) -> list[Trigger]:
        query = self._pending_query(job_id, limit)
        return [Trigger.from_dict(json.loads(doc.get("state"))) for doc in self._query(query)]

    @_translated
    def get_job(self, job_id: str) -> JobState:
        snapshot = self._jobs.document(quote(job_id, safe="")).get()
        self.stats.reads += 1
        if not snapshot.exists:
            return JobState(job_id)
        return JobState.from_dict(json.loads(snapshot.get("state")))

    @_translated
    def get_kind_state(self, job_id: str) -> dict[str, Any]:
        snapshot = self._kind_state.document(quote(job_id, safe="")).get()
        self.stats.reads += 1
        return dict(json.loads(snapshot.get("state"))) if snapshot.exists else {}

    @_translated
    def put_kind_state(self, job_id: str, state: dict[str, Any]) -> None:
        ref, doc = self._kind_state_doc(job_id, state)
        ref.set(doc)
        self.stats.writes += 1

    def _kind_state_doc(self, job_id: str, state: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        doc = {"job_id": job_id, "state": json.dumps(state, sort_keys=True)}
        return self._kind_state.document(quote(job_id, safe="")), doc

    def _pending_query(self, job_id: str, limit: int) -> Any:
        return (
            self._triggers.where(filter=firestore.FieldFilter("job_id", "==", job_id))
            .where(filter=firestore.FieldFilter("status", "==", TriggerStatus.PENDING.value))
            .order_by("created_ns")
            .order_by("order")
            .order_by("id")
            .limit(limit)
        )

    @_translated
    def triage(
        self,
        job_id: str,
        limit: int,
        plan: Callable[[TriageView], TriagePlan | None],
        read_active: bool = True,
    ) -> TriagePlan | None:
        job_ref = self._jobs.document(quote(job_id, safe=""))
        # The query runs outside the transaction and its documents are read again inside:
        # point reads lock far less than a query does (the emulator serialises contending
        # queries for tens of seconds). A trigger added meanwhile is its own triage's.
        candidates = [d.reference for d in self._stream(self._pending_query(job_id, limit))]
        if not job_ref.get().exists:
            # Contending transactions that would each create it wait on one another far
            # longer than ones that update it.
            # Aborted: a contending transaction holds it, so it is being made anyway.
            with contextlib.suppress(gexc.AlreadyExists, gexc.Aborted):
                job_ref.create({"state": json.dumps(JobState(job_id).to_dict())})

        @firestore.transactional
        def run(txn: firestore.Transaction) -> TriagePlan | None:
            stored = job_ref.get(transaction=txn)
            job = JobState.from_dict(json.loads(stored.get("state"))) if stored.exists else None
            job = job or JobState(job_id)
            docs = list(self._db.get_all(candidates, transaction=txn)) if candidates else []
            found = [Trigger.from_dict(json.loads(d.get("state"))) for d in docs if d.exists]
            pending = tuple(
                sorted(
                    (t for t in found if t.status is TriggerStatus.PENDING),
                    key=lambda t: (t.created_ns, t.order, t.id),
                )
            )
            refs = [self._doc(i) for i in job.active] if read_active else []
            running = {
                int(d.id)
                for d in (self._db.get_all(refs, transaction=txn) if refs else ())
                if d.exists and d.get("status") in ACTIVE
            }
            if not read_active:
                running = set(job.active)
            self.stats.reads += 1 + max(1, len(pending)) + len(refs)
            decided = plan(TriageView(job, pending, frozenset(job.active) - running))
            if decided is None:
                return None
            txn.set(job_ref, {"state": json.dumps(decided.job.to_dict())})
            for trigger in decided.triggers:
                ref = self._trigger_doc(trigger.job_id, trigger.id)
                txn.set(ref, self._trigger_fields(trigger))
            for invocation, log in decided.invocations:
                txn.create(self._doc(invocation.id), _fields(invocation))
                if log:
                    txn.create(
                        self._log(invocation.id, invocation.mutation_count),
                        _log_doc(log, self._retention_ns),
                    )
            return decided

        try:
            decided = run(self._db.transaction(max_attempts=TRANSACTION_ATTEMPTS))
        except (gexc.Aborted, gexc.Conflict, gexc.AlreadyExists) as e:
            raise ConflictError(f"job {job_id}: {e}") from e
        except ValueError as e:
            if not isinstance(e.__cause__, gexc.Aborted):
                raise
            raise ConflictError(f"job {job_id}: {e}") from e
        if decided is not None:
            self.stats.writes += 1 + len(decided.triggers) + 2 * len(decided.invocations)
            self.stats.transactions += 1
        return decided
