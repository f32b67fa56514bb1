"""The scheduler tick: triggers each scheduled job that is due, exactly once per tick.

Called every minute (Cloud Scheduler in production, `shepherd dev` locally), possibly twice:
each tick is a trigger whose id names the tick, so a second call adds nothing. A tick that
comes while the job is busy waits in its pending set, as any trigger does; a paused job's
schedule is stopped.
"""

from __future__ import annotations

from dataclasses import dataclass

from .durations import MINUTE
from .engine import Engine, JobPaused
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
    trigger_id: str | None = None

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"job": self.job_id, "action": self.action}
        if self.detail:
            out["detail"] = self.detail
        if self.trigger_id is not None:
            out["trigger_id"] = self.trigger_id
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
    if engine.store.get_trigger(job.id, request_id) is not None:
        return None, "this tick already triggered"
    return request_id, ""


def run_schedules(engine: Engine, now_ns: int) -> list[TickResult]:
    results = []
    for job in engine.jobs.jobs.values():
        if job.schedule is None:
            continue
        if engine.store.get_job(job.id).paused:
            results.append(TickResult(job.id, "skipped", "the job is paused"))
            continue
        request_id, reason = _due_request(engine, job, now_ns)
        if request_id is None:
            results.append(TickResult(job.id, "not due", reason))
            continue
        try:
            done = engine.trigger(
                TriggerRequest(
                    job_id=job.id, tags=(f"scheduler_tick:{request_id}",), request_id=request_id
                )
            )
        except JobPaused:
            results.append(TickResult(job.id, "skipped", "the job is paused"))
            continue
        inv = done.invocation
        results.append(
            TickResult(job.id, "triggered", job.schedule.text, inv and inv.id, done.trigger.id)
        )
    return results
