"""The Firestore layout: document ids that survive any job id, and the indexes queries need."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from shepherd.adapters.firestore_store import INVOCATIONS, TRIGGERS, trigger_doc_id

INDEXES = Path(__file__).resolve().parents[1] / "terraform" / "firestore.indexes.json"


JOB_IDS = st.from_regex(r"[a-z0-9_\-]{1,40}/[0-9A-Za-z_\-. ()]{1,100}", fullmatch=True)


@given(JOB_IDS, st.text(min_size=1, max_size=200))
def test_trigger_doc_ids_are_valid_and_distinct(job_id: str, request_id: str) -> None:
    doc_id = trigger_doc_id(job_id, request_id)
    assert "/" not in doc_id and doc_id not in (".", "..")
    assert not (doc_id.startswith("__") and doc_id.endswith("__"))
    assert len(doc_id.encode()) <= 1500
    assert doc_id.count(":") == 1  # the separator; quoting escapes any ":" in the job id
    assert trigger_doc_id(job_id + ":", request_id) != trigger_doc_id(job_id, ":" + request_id)


def test_the_job_listing_query_has_its_composite_index() -> None:
    indexes = json.loads(INDEXES.read_text())["indexes"]
    wanted = [
        {"fieldPath": "job_id", "order": "ASCENDING"},
        {"fieldPath": "created_ns", "order": "DESCENDING"},
    ]
    assert any(i["collectionGroup"] == INVOCATIONS and i["fields"] == wanted for i in indexes)


def test_the_pending_triggers_query_has_its_composite_index() -> None:
    indexes = json.loads(INDEXES.read_text())["indexes"]
    fields = ["job_id", "status", "created_ns", "order", "id"]
    wanted = [{"fieldPath": f, "order": "ASCENDING"} for f in fields]
    assert any(i["collectionGroup"] == TRIGGERS and i["fields"] == wanted for i in indexes)
