"""The OpenAPI document of the HTTP functions, served at /api/openapi.json.

Paths are those of the local stack (`shepherd dev`); deployed, each function has its own URL
and the paths below `/api` are the api function's.
"""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from .schemas import TimerBody, TriggerBody
from .views import (
    MAX_BODY_BYTES,
    Error,
    InvocationList,
    InvocationView,
    InvocationWithLog,
    TimerHandled,
    Triggered,
)

REF = "#/components/schemas/{model}"


def _ref(kind: type) -> dict[str, str]:
    return {"$ref": REF.format(model=kind.__name__)}


ERROR = _ref(Error)


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
        404: "unknown job or invocation",
        405: "wrong method",
        409: "the invocation already finished",
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


INVOCATION_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[0-9]{1,19}$"},
}


def document() -> dict[str, Any]:
    trigger_body = TriggerBody.model_json_schema(ref_template=REF)
    defs = trigger_body.pop("$defs", {})
    return {
        "openapi": "3.1.0",
        "info": {"title": "shepherd", "version": "1"},
        "paths": {
            "/trigger": {
                "post": {
                    "summary": "Start an invocation",
                    "requestBody": {"required": True, "content": _json(trigger_body)},
                    "responses": _responses(
                        "202 queued",
                        _json(_ref(Triggered)),
                        400,
                        404,
                        413,
                    ),
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
                    "summary": "One invocation with its log",
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
                    "responses": _responses(
                        "200 aborted", _json(_ref(InvocationView)), 400, 404, 409
                    ),
                }
            },
            "/api/jobs/{job}/invocations": {
                "get": {
                    "summary": "A job's invocations, newest first",
                    "parameters": [
                        {
                            "name": "job",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": _responses(
                        "200 the invocations",
                        _json(_ref(InvocationList)),
                        400,
                        404,
                    ),
                }
            },
        },
        "components": {
            "schemas": {
                **defs,
                "TimerTask": TimerBody.model_json_schema(),
                **_view_schemas(
                    Error,
                    Triggered,
                    TimerHandled,
                    InvocationView,
                    InvocationWithLog,
                    InvocationList,
                ),
            }
        },
    }
