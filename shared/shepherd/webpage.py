"""The operator's page served by the api function: jobs, invocations, one invocation's timeline
(an SVG drawn here, no script, no CDN) and its debug log with the JSON blocks folded."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any
from urllib.parse import quote

from .durations import SECOND, format_duration
from .model import Invocation, LogEntry, LogKind
from .timestamps import format_log_time, format_rfc3339, parse_rfc3339
from .views import (
    EmittedTrigger,
    InvocationView,
    JobDetail,
    JobView,
    TriggerRef,
    TriggerView,
    trigger_path,
)

REFRESH_SECONDS = 5
JOB_COLUMNS = ("job", "kind", "paused", "schedule", "running", "pending", "last status")
_STATUS_COLORS = {
    "SCHEDULED": "#9aa5b1",
    "STARTED": "#4c8bf5",
    "SUCCESS": "#2e9e5b",
    "SUCCEEDED": "#2e9e5b",
    "FAILURE": "#d64545",
    "INFRA_FAILURE": "#8e44ad",
    "FAILED": "#d64545",
    "CANCELED": "#e08a1e",
    "ABORTED": "#e08a1e",
    "STARTING": "#9aa5b1",
    "RUNNING": "#4c8bf5",
}
_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1f2933}
table{border-collapse:collapse}
td,th{padding:4px 12px;text-align:left;border-bottom:1px solid #e4e7eb}
.status{font-weight:600}.log{font:12px/1.5 ui-monospace,monospace;white-space:pre-wrap}
.log div{border-bottom:1px solid #f0f2f4}.t{color:#7b8794}details{display:inline}
summary{cursor:pointer;color:#2f6fde}svg text{font:11px system-ui,sans-serif;fill:#3e4c59}
.actions{margin:16px 0}.actions form{display:inline-block;margin-right:16px}
"""


def _status(text: str) -> str:
    color = _STATUS_COLORS.get(text, "#52606d")
    return f'<span class="status" style="color:{color}">{escape(text)}</span>'


def _duration(inv: Invocation, now_ns: int) -> str:
    end = inv.finished_ns if inv.finished_ns is not None else now_ns
    text = format_duration((end - inv.created_ns) // SECOND * SECOND)
    return text if inv.finished_ns is not None else f"{text} so far"


def _attempt(inv: Invocation, now_ns: int) -> str:
    """The launch attempt, and when the next comes while a retry waits."""
    if inv.next_attempt_ns is None:
        return str(inv.attempt)
    wait = format_duration(max(inv.next_attempt_ns - now_ns, 0) // SECOND * SECOND)
    return f"{inv.attempt}, next in {wait} ({format_rfc3339(inv.next_attempt_ns)})"


def _page(title: str, body: str, refresh: bool) -> str:
    meta = f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">' if refresh else ""
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">{meta}'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>{body}</body></html>"
    )


def _invocation_table(invocations: Sequence[Invocation], now_ns: int) -> str:
    if not invocations:
        return "<p>No invocations yet.</p>"
    rows = "".join(
        f'<tr><td><a href="?invocation={inv.id}">{inv.id}</a></td>'
        f"<td>{_status(inv.status)}</td><td>{escape(format_rfc3339(inv.created_ns))}</td>"
        f"<td>{escape(_duration(inv, now_ns))}</td></tr>"
        for inv in invocations
    )
    return (
        "<table><tr><th>invocation</th><th>status</th><th>created</th><th>duration</th></tr>"
        f"{rows}</table>"
    )


def _job_href(job_id: str) -> str:
    return f"?job={quote(job_id, safe='')}"


def _job_row(job: JobView) -> str:
    cells = [
        f'<a href="{escape(_job_href(job.id))}">{escape(job.id)}</a>',
        escape(job.kind),
        "paused" if job.paused else "no",
        escape(job.schedule or "—"),
        str(job.running),
        str(job.pending),
        _status(job.last_status) if job.last_status else "—",
    ]
    return "<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"


def _jobs_table(jobs: Sequence[JobView]) -> str:
    head = "".join(f"<th>{name}</th>" for name in JOB_COLUMNS)
    return f'<table id="jobs"><tr>{head}</tr>{"".join(_job_row(j) for j in jobs)}</table>'


def index_page(
    jobs: Sequence[JobView], invocations: Mapping[str, Sequence[Invocation]], now_ns: int
) -> str:
    """Every job (its fields, a link to its page), then each job's recent invocations."""
    parts = ["<h1>shepherd</h1>", "<h2>Jobs</h2>", _jobs_table(jobs)]
    for job_id, listed in invocations.items():
        parts.append(f'<h2><a href="{escape(_job_href(job_id))}">{escape(job_id)}</a></h2>')
        parts.append(_invocation_table(listed, now_ns))
    running = any(j.running for j in jobs) or any(
        not i.status.final for listed in invocations.values() for i in listed
    )
    return _page("shepherd", "".join(parts), refresh=running)


def _job_action_url(job_id: str, action: str) -> str:
    """Relative to the page (`/api/`): jobs/<project>/<name>/<action>, each part encoded."""
    project, _, name = job_id.partition("/")
    return f"jobs/{quote(project, safe='')}/{quote(name, safe='')}/{action}"


def _form(job_id: str, action: str, token: str, fields: str, label: str) -> str:
    return (
        f'<form id="{action}" method="post" action="{escape(_job_action_url(job_id, action))}">'
        f'<input type="hidden" name="csrf" value="{escape(token)}">{fields}'
        f'<button type="submit">{escape(label)}</button></form>'
    )


def _job_forms(job: JobDetail, token: str) -> str:
    """Pause while not paused, resume while paused, abort while something runs."""
    forms = []
    if job.paused:
        forms.append(_form(job.id, "resume", token, "", "Resume"))
    else:
        reason = '<input name="reason" placeholder="reason (optional)" maxlength="500"> '
        forms.append(_form(job.id, "pause", token, reason, "Pause"))
    if job.running:
        forms.append(_form(job.id, "abort", token, "", f"Abort all running ({job.running})"))
    return f'<div class="actions">{"".join(forms)}</div>'


def _policy(policy: Mapping[str, Any]) -> str:
    return ", ".join(f"{escape(str(k))}: {escape(str(v))}" for k, v in policy.items())


def _job_fields(job: JobDetail) -> str:
    paused = f"paused: {job.paused_reason}" if job.paused and job.paused_reason else None
    rows = [
        ("kind", escape(job.kind)),
        ("paused", escape(paused or ("paused" if job.paused else "no"))),
        ("schedule", escape(job.schedule or "—")),
        ("running", str(job.running)),
        ("pending", str(job.pending)),
        ("last status", _status(job.last_status) if job.last_status else "—"),
        ("triggering policy", _policy(job.triggering_policy)),
    ]
    cells = "".join(
        f'<tr><th>{name}</th><td id="{name.replace(" ", "-")}">{value}</td></tr>'
        for name, value in rows
    )
    return f'<table id="job">{cells}</table>'


def _triggers_table(triggers: Sequence[TriggerView]) -> str:
    if not triggers:
        return "<p>No pending triggers.</p>"
    rows = "".join(
        f"<tr><td>{escape(t.id)}</td><td>{escape(t.created)}</td></tr>" for t in triggers
    )
    return f'<table id="pending"><tr><th>trigger</th><th>created</th></tr>{rows}</table>'


def _running_table(invocations: Sequence[InvocationView]) -> str:
    if not invocations:
        return "<p>Nothing running.</p>"
    rows = "".join(
        f'<tr><td><a href="?invocation={escape(quote(i.id, safe=""))}">{escape(i.id)}</a></td>'
        f"<td>{_status(i.status)}</td><td>{escape(i.created)}</td>"
        f"<td>{_build_link(i.view_url)}</td></tr>"
        for i in invocations
    )
    return (
        '<table id="running"><tr><th>invocation</th><th>status</th><th>created</th>'
        f"<th>build</th></tr>{rows}</table>"
    )


def _build_link(url: str | None) -> str:
    if not url:
        return "—"
    return f'<a href="{escape(url)}" rel="noreferrer">{escape(url)}</a>'


def _titled_link(title: str | None, url: str | None) -> str:
    """A trigger's title linked to its url (an http(s) one only), either alone, or "—"."""
    text = escape(title or url or "—")
    if url and url.lower().startswith(("https://", "http://")):
        return f'<a href="{escape(url)}" rel="noreferrer">{text}</a>'
    return text


def _incoming_table(triggers: Sequence[TriggerRef]) -> str:
    """The triggers an invocation is made of, oldest first."""
    rows = "".join(
        f"<tr><td>{escape(t.id)}</td><td>{_titled_link(t.title, t.url)}</td>"
        f"<td>{escape(t.commit_time or '—')}</td><td>{escape(t.created)}</td></tr>"
        for t in triggers
    )
    return (
        '<table id="triggers"><tr><th>trigger</th><th>title</th><th>commit time</th>'
        f"<th>created</th></tr>{rows}</table>"
    )


def _emitted_section(triggers: Sequence[EmittedTrigger]) -> str:
    """The triggers an invocation emitted, each linked to where it is now (its JSON); nothing
    for one that emitted none (a Buildbucket invocation never does)."""
    if not triggers:
        return ""
    rows = "".join(
        f'<tr><td><a href="{escape(trigger_path(t.job, t.id))}">{escape(t.id)}</a></td>'
        f'<td><a href="{escape(_job_href(t.job))}">{escape(t.job)}</a></td>'
        f"<td>{_titled_link(t.title, t.url)}</td><td>{escape(t.commit_time or '—')}</td></tr>"
        for t in triggers
    )
    return (
        '<h2>Emitted triggers</h2><table id="emitted"><tr><th>trigger</th><th>job</th>'
        f"<th>title</th><th>commit time</th></tr>{rows}</table>"
    )


def job_page(job: JobDetail, recent: Sequence[Invocation], form_token: str, now_ns: int) -> str:
    """One job: its fields, the buttons that apply, its pending triggers, what runs, and its
    recent invocations. Never refreshes itself: it holds a form."""
    body = (
        f'<p><a href="./">all jobs</a></p><h1>{escape(job.id)}</h1>{_job_fields(job)}'
        f"{_job_forms(job, form_token)}"
        f"<h2>Pending triggers</h2>{_triggers_table(job.pending_triggers)}"
        f"<h2>Running invocations</h2>{_running_table(job.running_invocations)}"
        f"<h2>Recent invocations</h2>{_invocation_table(recent, now_ns)}"
    )
    return _page(job.id, body, refresh=False)


@dataclass(frozen=True)
class Mark:
    row: str
    time_ns: int
    label: str


def _builds(entries: Iterable[LogEntry]) -> Iterable[dict[str, Any]]:
    """The builds the log recorded, oldest first: the JSON after a build entry's first line."""
    for entry in entries:
        if entry.kind is LogKind.BUILD:
            try:
                yield json.loads(entry.text.partition("\n")[2])
            except ValueError:
                continue


def _phases(entries: Sequence[LogEntry], end_ns: int) -> list[tuple[str, int, int]]:
    """(status, from, to) of each build (the first, then its reruns), from the newest JSON the
    log has of each."""
    newest: dict[str, dict[str, Any]] = {}
    for build in _builds(entries):
        newest[str(build.get("id"))] = build  # dicts keep the first build first
    phases = []
    for build in newest.values():
        times = {
            k: parse_rfc3339(build[k]) for k in ("createTime", "startTime", "endTime") if k in build
        }
        if "createTime" not in times:
            continue
        started, ended = times.get("startTime"), times.get("endTime")
        phases.append(("SCHEDULED", times["createTime"], started or ended or end_ns))
        if started is not None:
            phases.append(("STARTED", started, ended or end_ns))
        if ended is not None:
            phases.append((str(build.get("status", "?")), ended, ended))
    return phases


_MARKED_KINDS = {
    LogKind.TIMER_HANDLED: ("timers", "timer"),
    LogKind.NOTIFICATION: ("notifications", "Pub/Sub notification"),
}


def marks(entries: Sequence[LogEntry]) -> list[Mark]:
    """The timeline's marks: each handled timer, each notification, each outbound call."""
    out = []
    for entry in entries:
        if entry.kind in _MARKED_KINDS:
            row, label = _MARKED_KINDS[entry.kind]
            out.append(Mark(row, entry.time_ns, label))
        if entry.call is not None:
            out.append(Mark("Buildbucket calls", entry.time_ns, entry.call))
    return out


def timeline_svg(
    inv: Invocation, entries: Sequence[LogEntry], now_ns: int, width: int = 1100
) -> str:
    start = inv.created_ns
    end = max(inv.finished_ns or now_ns, start + SECOND)
    left, right, row_h = 130, 20, 28
    span = end - start

    def x(t: int) -> float:
        return left + (width - left - right) * min(max(t - start, 0), span) / span

    rows = ["build", "Buildbucket calls", "timers", "notifications"]
    height = 30 + row_h * len(rows) + 30
    out = [
        f'<svg id="timeline" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="invocation timeline">'
    ]
    for i, row in enumerate(rows):
        y = 30 + i * row_h
        out.append(f'<text x="4" y="{y + 17}">{escape(row)}</text>')
        out.append(
            f'<line x1="{left}" y1="{y + row_h}" x2="{width - right}" y2="{y + row_h}" '
            'stroke="#e4e7eb"/>'
        )
    for status, t0, t1 in _phases(entries, end):
        color = _STATUS_COLORS.get(status, "#52606d")
        if t1 > t0:
            w = max(x(t1) - x(t0), 1.0)
            out.append(
                f'<rect class="phase" x="{x(t0):.1f}" y="36" width="{w:.1f}" height="16" '
                f'fill="{color}">'
                f"<title>{escape(status)} {escape(format_duration(t1 - t0))}</title></rect>"
            )
            if w > 70:
                out.append(
                    f'<text x="{x(t0) + 4:.1f}" y="48" style="fill:#fff">{escape(status)}</text>'
                )
        else:
            out.append(
                f'<circle class="phase" cx="{x(t0):.1f}" cy="44" r="6" fill="{color}">'
                f"<title>{escape(status)}</title></circle>"
            )
    for mark in marks(entries):
        y = 30 + rows.index(mark.row) * row_h
        out.append(
            f'<line class="mark" x1="{x(mark.time_ns):.1f}" y1="{y + 6}" '
            f'x2="{x(mark.time_ns):.1f}" '
            f'y2="{y + row_h - 6}" stroke="#3e4c59" stroke-width="1.5">'
            f"<title>{escape(mark.label)} at {escape(format_log_time(mark.time_ns))}</title></line>"
        )
    axis_y = 30 + row_h * len(rows) + 18
    for k in range(6):
        t = start + span * k // 5
        label = format_duration((t - start) // SECOND * SECOND)
        anchor = "start" if k == 0 else "end" if k == 5 else "middle"
        out.append(
            f'<text x="{x(t):.1f}" y="{axis_y}" text-anchor="{anchor}">+{escape(label)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def _log_html(entries: Sequence[LogEntry]) -> str:
    lines = []
    for entry in entries:
        head, newline, rest = entry.text.partition("\n")
        line = f'<span class="t">[{escape(format_log_time(entry.time_ns))}]</span> {escape(head)}'
        if newline:
            line += f"<details><summary>JSON</summary>{escape(rest)}</details>"
        lines.append(f"<div>{line}</div>")
    return f'<div class="log" id="log">{"".join(lines)}</div>'


def _rerun_form(inv: Invocation, token: str) -> str:
    return (
        f'<form id="rerun" method="post" action="invocations/{inv.id}/rerun">'
        f'<input type="hidden" name="csrf" value="{escape(token)}">'
        '<button type="submit">Rerun (a new trigger, as its newest)</button></form>'
    )


def invocation_page(
    inv: Invocation, entries: Sequence[LogEntry], now_ns: int, form_token: str | None = None
) -> str:
    """`form_token`: offers the Rerun button (a finished invocation's)."""
    view = InvocationView.of(inv)
    task = _build_link(inv.view_url)
    if len(view.builds) > 1:
        task = " → ".join(
            f"{_build_link(b.view_url)} {escape(b.status or '?')}" for b in view.builds
        )
    abort = " (abort requested)" if inv.abort_requested and not inv.status.final else ""
    body = (
        f'<p><a href="./">all invocations</a></p><h1>{escape(inv.job_id)}</h1>'
        f"<table><tr><th>invocation</th><td>{inv.id}</td></tr>"
        f"<tr><th>status</th><td>{_status(inv.status)}{abort}</td></tr>"
        f"<tr><th>duration</th><td>{escape(_duration(inv, now_ns))}</td></tr>"
        f"<tr><th>attempt</th><td>{escape(_attempt(inv, now_ns))}</td></tr>"
        f"<tr><th>build</th><td>{task}</td></tr>"
        f'<tr><th>raw</th><td><a href="invocations/{inv.id}">JSON</a> · '
        f'<a href="invocations/{inv.id}/log">text log</a></td></tr></table>'
        f"{_rerun_form(inv, form_token) if form_token and inv.status.final else ''}"
        f"<h2>Timeline</h2>{timeline_svg(inv, entries, now_ns)}"
        f"<h2>Triggers</h2>{_incoming_table(view.triggers)}"
        f"{_emitted_section([EmittedTrigger.of(t) for t in inv.emitted_triggers])}"
        f"<h2>Debug log</h2>{_log_html(entries)}"
    )
    return _page(f"{inv.job_id} {inv.id}", body, refresh=not inv.status.final)
