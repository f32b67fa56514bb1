"""The OpenAPI document of the HTTP functions, served at /api/openapi.json.

Paths are those of the local stack (`shepherd dev`); deployed, each function has its own URL
and the paths below `/api` are the api function's.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterator
from typing import Any

from pydantic import TypeAdapter

from .schemas import RerunBody, TimerBody, TriggerBody
from .validation import Model
from .views import (
    MAX_BODY_BYTES,
    Error,
    InvocationList,
    InvocationView,
    InvocationWithLog,
    JobDetail,
    JobList,
    TimerHandled,
    Triggered,
    TriggerView,
)

REF = "#/components/schemas/{model}"


def _ref(kind: type) -> dict[str, str]:
    return {"$ref": REF.format(model=kind.__name__)}


ERROR = _ref(Error)


def _models(kind: type[Model]) -> Iterator[type[Model]]:
    """The model and the models its fields hold, however deep."""
    yield kind
    for hint in typing.get_type_hints(kind).values():
        for held in _types_in(hint):
            if isinstance(held, type) and issubclass(held, Model):
                yield from _models(held)


def _types_in(hint: Any) -> Iterator[Any]:
    yield hint
    for arg in typing.get_args(hint):
        yield from _types_in(arg)


def _body_schemas(kind: type[Model]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A request body's schema and those of the models it holds: the types as pydantic reads
    them, plus each field's constraints exactly as the validation applies them."""
    schema = TypeAdapter(kind).json_schema(ref_template=REF)
    defs = schema.pop("$defs", {})
    for model in _models(kind):
        target = schema if model is kind else defs[model.__name__]
        if model.extra == "forbid":
            target["additionalProperties"] = False
        for f in dataclasses.fields(model):  # type: ignore[arg-type]
            target["properties"][f.name].update(f.metadata.get("schema", {}))
    return schema, defs


def _view_schemas(*kinds: type) -> dict[str, Any]:
    """The JSON schemas of the views (views.py), each named after its class."""
    schemas: dict[str, Any] = {}
    for kind in kinds:
        schema = TypeAdapter(kind).json_schema(ref_template=REF)
        schemas.update(schema.pop("$defs", {}))
        schemas[kind.__name__] = schema
    return schemas


def _responses(ok: str, ok_schema: dict[str, Any] | None, *errors: int) -> dict[str, Any]:
    json_error = {"content": {"application/json": {"schema": ERROR}}}
    reasons = {
        400: "malformed or mistyped input",
        401: "not the timer queue",
        403: "a request from another site, or a form without its token",
        404: "unknown job, invocation or trigger",
        405: "wrong method",
        409: "the invocation already finished, or the job is paused",
        413: f"body larger than {MAX_BODY_BYTES} bytes",
        503: "a transient condition; nothing changed, try again",
    }
    out: dict[str, Any] = {
        ok[:3]: {"description": ok[4:], **({"content": ok_schema} if ok_schema else {})}
    }
    for code in (*errors, 503):
        out[str(code)] = {"description": reasons[code], **json_error}
    return out


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


# A job id is "<project>/<name>": its two parts are two path segments.
JOB_ID = {
    "name": "job",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "style": "simple",
}
JOB_ACTIONS = {
    "pause": "Pause: discard the pending triggers, refuse new ones, stop the schedule",
    "resume": "Resume a paused job",
    "abort": "Abort every running invocation of the job",
}
INVOCATION_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[0-9]{1,19}$"},
}


def document() -> dict[str, Any]:
    # /trigger's answers, and a rerun's (which makes a trigger too)
    triggered = _responses(
        "202 the trigger, and the invocation it started at once if any",
        _json(_ref(Triggered)),
        400,
        404,
        409,
        413,
    )
    trigger_body, defs = _body_schemas(TriggerBody)
    timer_task, _ = _body_schemas(TimerBody)
    rerun_body, _ = _body_schemas(RerunBody)
    return {
        "openapi": "3.1.0",
        "info": {"title": "shepherd", "version": "1"},
        "paths": {
            "/trigger": {
                "post": {
                    "summary": "Add a trigger to its job; the job's policy starts it",
                    "requestBody": {"required": True, "content": _json(trigger_body)},
                    "responses": triggered,
                }
            },
            "/on-timer": {
                "post": {
                    "summary": "A status check or start, as Cloud Tasks delivers it",
                    "requestBody": {
                        "required": True,
                        "content": _json({"$ref": "#/components/schemas/TimerTask"}),
                    },
                    "responses": _responses(
                        "200 handled, stale or ignored",
                        _json(_ref(TimerHandled)),
                        400,
                        401,
                        413,
                    ),
                }
            },
            "/api/invocations/{id}": {
                "get": {
                    "summary": "One invocation with the triggers it emitted and its log",
                    "parameters": [INVOCATION_ID],
                    "responses": _responses(
                        "200 the invocation", _json(_ref(InvocationWithLog)), 400, 404
                    ),
                }
            },
            "/api/invocations/{id}/log": {
                "get": {
                    "summary": "The debug log as text",
                    "parameters": [INVOCATION_ID],
                    "responses": _responses(
                        "200 the log", {"text/plain": {"schema": {"type": "string"}}}, 400, 404
                    ),
                }
            },
            "/api/invocations/{id}/abort": {
                "post": {
                    "summary": "Cancel the build; the invocation ends ABORTED",
                    "parameters": [INVOCATION_ID],
                    "responses": {
                        **_responses("200 aborted", _json(_ref(InvocationView)), 400, 404, 409),
                        "202": {
                            "description": "the abort is recorded (abort_requested) and "
                            "completes on its own: the invocation is still starting, or "
                            "cancelling its build failed transiently",
                            "content": _json(_ref(InvocationView)),
                        },
                    },
                }
            },
            "/api/invocations/{id}/rerun": {
                "post": {
                    "summary": "A new trigger of a finished invocation's job, made from its "
                    "newest trigger; the job's policy starts it",
                    "parameters": [INVOCATION_ID],
                    "requestBody": {"required": False, "content": _json(rerun_body)},
                    "responses": triggered,
                }
            },
            "/api/jobs": {
                "get": {
                    "summary": "Every job",
                    "responses": _responses("200 the jobs", _json(_ref(JobList))),
                }
            },
            "/api/jobs/{job}": {
                "get": {
                    "summary": "One job: its pending triggers and running invocations",
                    "parameters": [JOB_ID],
                    "responses": _responses("200 the job", _json(_ref(JobDetail)), 404),
                }
            },
            "/api/jobs/{job}/invocations": {
                "get": {
                    "summary": "A job's invocations, newest first",
                    "parameters": [JOB_ID],
                    "responses": _responses(
                        "200 the invocations",
                        _json(_ref(InvocationList)),
                        400,
                        404,
                    ),
                }
            },
            "/api/jobs/{job}/triggers/{trigger}": {
                "get": {
                    "summary": "One trigger: PENDING, STARTED (in an invocation) or DISCARDED",
                    "parameters": [
                        JOB_ID,
                        {
                            "name": "trigger",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                    ],
                    "responses": _responses("200 the trigger", _json(_ref(TriggerView)), 404),
                }
            },
            **{
                f"/api/jobs/{{job}}/{action}": {
                    "post": {
                        "summary": summary,
                        "parameters": [JOB_ID],
                        "requestBody": {
                            "required": False,
                            "content": _json(
                                {
                                    "type": "object",
                                    "properties": {"reason": {"type": "string"}},
                                    "additionalProperties": False,
                                }
                            ),
                        },
                        "responses": _responses(
                            "200 the job", _json(_ref(JobDetail)), 400, 403, 404
                        ),
                    }
                }
                for action, summary in JOB_ACTIONS.items()
            },
        },
        "components": {
            "schemas": {
                **defs,
                "TimerTask": timer_task,
                **_view_schemas(
                    Error,
                    Triggered,
                    TimerHandled,
                    InvocationView,
                    InvocationWithLog,
                    InvocationList,
                    JobList,
                    JobDetail,
                    TriggerView,
                ),
            }
        },
    }
