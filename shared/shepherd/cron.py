"""The scheduler tick: triggers each scheduled job that is due, exactly once per tick.

Called every minute (Cloud Scheduler in production, `shepherd dev` locally), possibly twice:
each tick triggers with a request id naming the tick, so the store's request-id dedup makes a
second call a no-op. A job whose previous invocations still run up to its
`max_concurrent_invocations` skips the tick.
"""

from __future__ import annotations

from dataclasses import dataclass

from .durations import MINUTE
from .engine import Engine
from .jobs import Job
from .model import TriggerRequest

# A tick missed by less than this (a late or failed scheduler call) still runs; older ones don't.
CATCH_UP_NS = 10 * MINUTE


@dataclass(frozen=True)
class TickResult:
    job_id: str
    action: str  # "triggered", "skipped", "not due"
    detail: str = ""
    invocation_id: int | None = None

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"job": self.job_id, "action": self.action}
        if self.detail:
            out["detail"] = self.detail
        if self.invocation_id is not None:
            out["invocation_id"] = str(self.invocation_id)
        return out


def _due_request(engine: Engine, job: Job, now_ns: int) -> tuple[str | None, str]:
    """(request id of the due tick, or None with the reason)."""
    assert job.schedule is not None
    recent = engine.store.list_invocations(job.id, limit=max(10, job.max_concurrent_invocations))
    running = [inv for inv in recent if not inv.status.final]
    if job.schedule.interval_ns is not None:
        if running:
            return None, f"invocation {running[0].id} still runs"
        if not recent:
            return "interval:first", ""
        last = recent[0]
        assert last.finished_ns is not None
        if now_ns < last.finished_ns + job.schedule.interval_ns:
            return None, "interval not over"
        return f"interval:after:{last.id}", ""
    tick = job.schedule.latest_tick(now_ns)
    if now_ns - tick > CATCH_UP_NS:
        return None, "no tick in the last 10 minutes"
    request_id = f"cron:{tick}"
    if any(inv.request.request_id == request_id for inv in recent):
        return None, "this tick already triggered"
    if len(running) >= job.max_concurrent_invocations:
        return None, f"skipped: {len(running)} invocation(s) still running"
    return request_id, ""


def run_schedules(engine: Engine, now_ns: int) -> list[TickResult]:
    results = []
    for job in engine.jobs.jobs.values():
        if job.schedule is None:
            continue
        request_id, reason = _due_request(engine, job, now_ns)
        if request_id is None:
            action = "skipped" if reason.startswith("skipped") else "not due"
            results.append(TickResult(job.id, action, reason.removeprefix("skipped: ")))
            continue
        inv = engine.trigger(
            TriggerRequest(
                job_id=job.id, tags=(f"scheduler_tick:{request_id}",), request_id=request_id
            )
        )
        results.append(TickResult(job.id, "triggered", job.schedule.text, inv.id))
    return results
