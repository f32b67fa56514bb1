"""The scheduler tick: triggers each scheduled job that is due, exactly once per tick.

Called every minute (Cloud Scheduler in production, `shepherd dev` locally), possibly twice:
each tick is a trigger whose id names the tick, so a second call adds nothing. An interval
schedule's ticks also come through the timer queue, `interval` after each invocation ends
(`Engine.tick_tasks`), so they may be seconds apart; this tick starts the first and catches up
one whose task was lost. A tick that comes while the job is busy waits in its pending set, as
any trigger does; a paused job's schedule is stopped.
"""

from __future__ import annotations

from dataclasses import dataclass

from .engine import Engine, JobPaused


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


def run_schedules(engine: Engine, now_ns: int) -> list[TickResult]:
    results = []
    for job in engine.jobs.jobs.values():
        if job.schedule is None:
            continue
        if engine.store.get_job(job.id).paused:
            results.append(TickResult(job.id, "skipped", "the job is paused"))
            continue
        request_id, reason = engine.due_tick(job, now_ns)
        if request_id is None:
            results.append(TickResult(job.id, "not due", reason))
            continue
        try:
            done = engine.tick(job.id, request_id)
        except JobPaused:
            results.append(TickResult(job.id, "skipped", "the job is paused"))
            continue
        inv = done.invocation
        results.append(
            TickResult(job.id, "triggered", job.schedule.text, inv and inv.id, done.trigger.id)
        )
    return results
