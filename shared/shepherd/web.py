"""What each Cloud Function does with its request: parse, validate, call the engine, answer.

Bad input gets a 4xx with `{"error": "..."}`; a transient condition gets a 503 so that Cloud
Tasks or Pub/Sub deliver again; nothing answers with a traceback.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
from collections.abc import Callable
from functools import wraps
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from flask import Request, Response, has_request_context
from flask import request as current_request
from werkzeug.exceptions import HTTPException, ServiceUnavailable

from .auth import Unauthorized
from .csrf import SIMPLE_CONTENT_TYPES, BadFormToken, FormTokens, cross_origin, form_tokens
from .debuglog import format_log
from .engine import (
    InvocationFinished,
    InvocationRunning,
    JobPaused,
    RetryLater,
    UnknownInvocation,
    UnknownJob,
)
from .engine import Triggered as TriggerOutcome
from .logs import request_scope
from .model import PubSubMessage
from .policy import MAX_PENDING
from .ports import Unavailable
from .schemas import PushedMessage, RerunBody, TimerBody, TriggerBody
from .service import get_service
from .validation import ValidationError
from .views import (
    MAX_BODY_BYTES,
    Error,
    InvocationList,
    InvocationView,
    InvocationWithLog,
    JobDetail,
    JobList,
    JobView,
    TimerHandled,
    Triggered,
    TriggerView,
    to_json,
    trigger_path,
)

if TYPE_CHECKING:
    from cloudevents.http import CloudEvent

# Each function imports what only it needs when it first needs it: cold starts stay short.

logger = logging.getLogger(__name__)

_INT64_MAX = 2**63 - 1


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _json(status: int, body: Any) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")


def _answer(status: int, view: Any) -> Response:
    return _json(status, to_json(view))


def _error(status: int, message: str) -> Response:
    return _answer(status, Error(message))


def http_error(error: HTTPException) -> Response:
    """An HTTP error raised outside our handlers (the framework's routing or event parsing)."""
    message = error.description or error.name
    if "FUNCTION_SIGNATURE_TYPE=cloudevent" in message:
        message = "the body is neither a CloudEvent nor a Pub/Sub push message"
    return _error(error.code or 500, message)


def unreadable_event(error: Exception) -> Response:
    """A CloudEvent the framework could not parse (its data or its structured JSON)."""
    reason = "nested too deep" if isinstance(error, RecursionError) else type(error).__name__
    return _error(400, f"the body is not a readable CloudEvent: {reason}")


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors(include_url=False):
        where = ".".join(str(p) for p in item["loc"]) or "body"
        parts.append(f"{where}: {item['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def _guarded(handler: Callable[[Request], Response]) -> Callable[[Request], Response]:
    """Maps the engine's and the input's errors to answers, the same way in every function."""

    @wraps(handler)
    def run(request: Request) -> Response:
        try:
            return handler(request)
        except BadRequest as e:
            return _error(e.status, str(e))
        except HTTPException as e:
            return http_error(e)
        except ValidationError as e:
            return _error(400, _describe(e))
        except (RetryLater, Unavailable) as e:
            return _error(503, f"try again later: {e}")
        except Exception:
            logger.exception("%s failed", handler.__name__)
            return _error(500, "internal error; the request changed nothing it could not redo")

    return _traced(run)


def _traced(handler: Callable[[Request], Response]) -> Callable[[Request], Response]:
    """What the function logs carries the request's trace (and the invocation, once known)."""

    @wraps(handler)
    def run(request: Request) -> Response:
        with request_scope(request.headers):
            return handler(request)

    return run


def _body(request: Request, *, optional: bool = False) -> Any:
    """The request's JSON body (`optional`: an empty body is `{}`)."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise BadRequest(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
    if request.content_length is None:
        # A chunked body: reading stops one byte past the limit.
        request.max_content_length = MAX_BODY_BYTES + 1
    data = request.get_data(cache=True)
    if len(data) > MAX_BODY_BYTES:
        raise BadRequest(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
    if optional and not data.strip():
        return {}
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:  # deep nesting is refused with RecursionError
        raise BadRequest(400, f"the body is not valid JSON: {e}") from None


def _require(request: Request, method: str) -> None:
    if request.method != method:
        raise BadRequest(405, f"use {method}")


def _invocation_id(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) > _INT64_MAX:
        raise BadRequest(400, f'invocation id must be a decimal int64, not "{text}"')
    return int(text)


# --- trigger ---------------------------------------------------------------------------


@_guarded
def trigger(request: Request) -> Response:
    _require(request, "POST")
    # A browser may send a text/plain body to another site unasked: not to this one.
    if (refused := _from_another_site(request)) is not None:
        return refused
    body = TriggerBody.model_validate(_body(request))
    try:
        done = get_service().engine.trigger(body.to_request())
    except UnknownJob:
        return _error(404, f'unknown job "{body.job}"')
    except JobPaused as e:
        return _error(409, str(e))
    return _triggered(done)


def _triggered(done: TriggerOutcome) -> Response:
    """202 with the trigger, the invocation it started at once if it did, and its URL."""
    trigger, inv = done.trigger, done.invocation
    if inv is None:
        logger.info("trigger %s of %s: %s", trigger.id, trigger.job_id, trigger.status)
    else:
        logger.info("trigger %s of %s: invocation %d", trigger.id, trigger.job_id, inv.id)
    url = "/api/" + trigger_path(trigger.job_id, trigger.id)
    return _answer(202, Triggered(trigger.id, None if inv is None else str(inv.id), url))


# --- on_timer --------------------------------------------------------------------------


@_guarded
def on_timer(request: Request) -> Response:
    _require(request, "POST")
    service = get_service()
    try:
        service.timer_auth.check(request.headers)
    except Unauthorized as e:
        return _error(401, str(e))
    body = TimerBody.model_validate(_body(request))
    engine = service.engine
    outcome = engine.handle_task(_invocation_id(body.invocation_id), body.timer_id, body.name)
    logger.info("task %s: %s", body.timer_id, outcome.value)
    return _answer(200, TimerHandled(outcome.value))


# --- on_build_notification ---------------------------------------------------------------


def pubsub_message(event: CloudEvent) -> PubSubMessage | None:
    """The message in a messagePublished event, or None (logged) if it has none."""
    data = event.get_data()
    if isinstance(data, bytes | str):
        try:
            data = json.loads(data)
        except (ValueError, RecursionError):
            data = None
    message = data.get("message") if isinstance(data, dict) else None
    try:
        pushed = PushedMessage.model_validate(message)
        payload = base64.b64decode(pushed.data, validate=True)
    except (ValidationError, binascii.Error, ValueError) as e:
        logger.warning("event %s carries no Pub/Sub message: %s", event.get("id"), e)
        return None
    return PubSubMessage(payload, pushed.attributes, pushed.message_id or str(event.get("id")))


def on_build_notification(event: CloudEvent) -> None:
    """Acknowledges (2xx) whatever cannot be used; 503 only to be delivered again later."""
    with request_scope(current_request.headers if has_request_context() else {}):
        _notified(event)


def _notified(event: CloudEvent) -> None:
    message = pubsub_message(event)
    if message is None:
        return
    try:
        outcome = get_service().engine.handle_notification(message)
    except (RetryLater, Unavailable) as e:
        raise ServiceUnavailable(f"try again later: {e}") from None
    logger.info("notification %s: %s", message.message_id, outcome.value)


# --- scheduler -----------------------------------------------------------------------------


@_guarded
def scheduler(request: Request) -> Response:
    """One tick (Cloud Scheduler calls it every minute): the cron schedules, then the sweep
    that re-hands whatever checks and starts the queues lost."""
    from .cron import run_schedules

    _require(request, "POST")
    engine = get_service().engine
    results = run_schedules(engine, engine.clock.now_ns())
    swept = engine.sweep(engine.clock.now_ns())
    return _json(200, {"results": [r.to_json() for r in results], "sweep": swept.to_json()})


# --- api -------------------------------------------------------------------------------


@_guarded
def api(request: Request) -> Response:
    parts = [p for p in request.path.split("/") if p]
    store = get_service().engine.store
    if not parts:
        _require(request, "GET")
        return _html_page(request)
    if parts == ["openapi.json"]:
        from .openapi import document

        _require(request, "GET")
        return _json(200, document())
    if parts[0] == "invocations" and len(parts) in (2, 3):
        invocation_id = _invocation_id(parts[1])
        action = parts[2] if len(parts) == 3 else ""
        if action == "abort":
            _require(request, "POST")
            if (refused := _from_another_site(request)) is not None:
                return refused
            try:
                inv = get_service().engine.abort(invocation_id)
            except UnknownInvocation:
                return _error(404, f"no invocation {invocation_id}")
            except InvocationFinished as e:
                return _error(409, str(e))
            # 202: recorded, it completes on its own (see Engine.abort); never to be retried.
            return _answer(200 if inv.status.final else 202, InvocationView.of(inv))
        if action == "rerun":
            return _rerun(request, invocation_id)
        _require(request, "GET")
        found = store.get(invocation_id)
        if found is None:
            return _error(404, f"no invocation {invocation_id}")
        entries = store.read_log(invocation_id)
        if action == "log":
            return Response(format_log(entries), mimetype="text/plain")
        if action:
            return _error(404, f'no such route "{request.path}"')
        return _answer(200, InvocationWithLog.of_logged(found, entries))
    if parts[0] == "jobs":
        return _jobs(request, parts[1:])
    return _error(404, f'no such route "{request.path}"')


def _rerun(request: Request, invocation_id: int) -> Response:
    _require(request, "POST")
    if (refused := _from_another_site(request)) is not None:
        return refused
    engine = get_service().engine
    form = request.mimetype in SIMPLE_CONTENT_TYPES
    if form:
        # The page's Rerun button: only with its token (for the invocation's job).
        inv = engine.store.get(invocation_id)
        if inv is None:
            return _error(404, f"no invocation {invocation_id}")
        if (refused := _check_form_token(request, inv.job_id)) is not None:
            return refused
        request_id = None
    else:
        request_id = RerunBody.model_validate(_body(request, optional=True)).request_id
    try:
        done = engine.rerun(invocation_id, request_id)
    except UnknownInvocation:
        return _error(404, f"no invocation {invocation_id}")
    except UnknownJob as e:
        return _error(409, f'job "{e}" is no longer in the job file')
    except (InvocationRunning, JobPaused) as e:
        return _error(409, str(e))
    if not form:
        return _triggered(done)
    # The page is at <base>/, the form's action at <base>/invocations/<id>/rerun.
    started = done.invocation
    where = f"invocation={started.id}" if started else f"job={quote(done.trigger.job_id, safe='')}"
    return Response(status=303, headers={"Location": f"../../?{where}"})


def _jobs(request: Request, parts: list[str]) -> Response:
    """/api/jobs[/<project>/<name>[/invocations | /triggers/<id> | /pause | /resume | /abort]]:
    a job id is always "<project>/<name>" (neither part holds a "/"), a trigger id is the rest
    of the path."""
    engine = get_service().engine
    if not parts:
        _require(request, "GET")
        return _answer(200, JobList(tuple(_job_view(job_id) for job_id in engine.jobs.jobs)))
    job_id, rest = "/".join(parts[:2]), parts[2:]
    if engine.jobs.job(job_id) is None:
        return _error(404, f'unknown job "{job_id}"')
    action = rest[0] if rest else ""
    if action == "invocations" and len(rest) == 1:
        _require(request, "GET")
        views = tuple(InvocationView.of(i) for i in engine.store.list_invocations(job_id))
        return _answer(200, InvocationList(views))
    if action == "triggers" and len(rest) > 1:
        _require(request, "GET")
        marker = f"/{job_id}/triggers/"  # the id is the rest, "/" and all
        trigger_id = request.path[request.path.index(marker) + len(marker) :]
        found = engine.store.get_trigger(job_id, trigger_id)
        if found is None:
            return _error(404, f'no trigger "{trigger_id}" in job "{job_id}"')
        return _answer(200, TriggerView.of(found))
    if action in ("pause", "resume", "abort") and len(rest) == 1:
        _require(request, "POST")
        if (refused := _from_another_site(request)) is not None:
            return refused
        if request.mimetype in SIMPLE_CONTENT_TYPES:
            return _job_form_post(request, job_id, action)
        reason = ""
        if action == "pause":
            body = _body(request) if request.get_data(cache=True) else {}
            reason = body.get("reason", "") if isinstance(body, dict) else None
            if not isinstance(reason, str):
                return _error(400, 'the body must be {"reason": "<text>"}')
        _job_act(job_id, action, reason)
        return _answer(200, _job_detail(job_id))
    if not rest:
        _require(request, "GET")
        return _answer(200, _job_detail(job_id))
    return _error(404, f'no such route "{request.path}"')


def _job_detail(job_id: str) -> JobDetail:
    engine = get_service().engine
    job = engine.jobs.jobs[job_id]
    state = engine.store.get_job(job_id)
    pending = engine.store.list_pending(job_id, MAX_PENDING)
    running = [i for i in map(engine.store.get, state.active) if i and not i.status.final]
    newest = engine.store.list_invocations(job_id, limit=1)
    return JobDetail(
        id=job_id,
        kind=job.kind,
        paused=state.paused,
        schedule=job.schedule.text if job.schedule else None,
        running=len(running),
        pending=len(pending),
        last_status=newest[0].status if newest else None,
        paused_reason=state.paused_reason,
        triggering_policy=job.triggering_policy.to_json(),
        pending_triggers=tuple(TriggerView.of(t) for t in pending),
        running_invocations=tuple(InvocationView.of(i) for i in running),
    )


def _job_view(job_id: str) -> JobView:
    detail = _job_detail(job_id)
    return JobView(**{f.name: getattr(detail, f.name) for f in dataclasses.fields(JobView)})


def _job_act(job_id: str, action: str, reason: str) -> None:
    engine = get_service().engine
    if action == "pause":
        engine.pause(job_id, reason)
    elif action == "resume":
        engine.resume(job_id)
    else:
        engine.abort_job(job_id)


def _from_another_site(request: Request) -> Response | None:
    """A 403 for a browser's request made by another site's page; None for any other."""
    why = cross_origin(request.headers, _hosts(request))
    return None if why is None else _error(403, why)


def _hosts(request: Request) -> set[str]:
    """The names this request reached the service by: its Host, and a proxy's X-Forwarded-Host
    (which a browser cannot set on a request to another origin without asking first)."""
    forwarded = request.headers.get("X-Forwarded-Host", "").split(",")[0].strip()
    return {h.lower() for h in (request.host, forwarded) if h}


def _form_tokens() -> FormTokens:
    return form_tokens(get_service().engine.signer)


def _check_form_token(request: Request, job_id: str) -> Response | None:
    """A 403 unless the form carries the page's token for `job_id`."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise BadRequest(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
    request.max_content_length = MAX_BODY_BYTES
    try:
        token = request.form.get("csrf", "")
        _form_tokens().check(token, job_id, get_service().engine.clock.now_ns())
    except BadFormToken as e:
        return _error(403, str(e))
    return None


def _job_form_post(request: Request, job_id: str, action: str) -> Response:
    """A post of the page's form (or anything else a browser could send another site's way
    without asking first): only with the page's token; 303 back to the job's page."""
    if (refused := _check_form_token(request, job_id)) is not None:
        return refused
    form = request.form
    _job_act(job_id, action, form.get("reason", "").strip() if action == "pause" else "")
    # The page is at <base>/, the form's action at <base>/jobs/<project>/<name>/<action>.
    return Response(status=303, headers={"Location": f"../../../?job={quote(job_id, safe='')}"})


def _html_page(request: Request) -> Response:
    from . import webpage

    engine = get_service().engine
    now = engine.clock.now_ns()
    if "job" in request.args:
        return _html_job_page(request.args["job"], now)
    wanted = request.args.get("invocation")
    if wanted is None:
        views = [_job_view(job_id) for job_id in engine.jobs.jobs]
        listed = {
            job_id: engine.store.list_invocations(job_id, limit=20) for job_id in engine.jobs.jobs
        }
        return Response(webpage.index_page(views, listed, now), mimetype="text/html")
    invocation_id = _invocation_id(wanted)
    inv = engine.store.get(invocation_id)
    if inv is None:
        return _error(404, f"no invocation {invocation_id}")
    token = _form_tokens().issue(inv.job_id, now) if inv.status.final else None
    page = webpage.invocation_page(inv, engine.store.read_log(invocation_id), now, token)
    return Response(page, mimetype="text/html")


def _html_job_page(job_id: str, now_ns: int) -> Response:
    from . import webpage

    engine = get_service().engine
    if engine.jobs.job(job_id) is None:
        return _error(404, f'unknown job "{job_id}"')
    recent = engine.store.list_invocations(job_id, limit=20)
    token = _form_tokens().issue(job_id, now_ns)
    page = webpage.job_page(_job_detail(job_id), recent, token, now_ns)
    return Response(page, mimetype="text/html")
