"""The Cloud Functions entry points. Each is deployed alone; `shepherd dev` serves them all."""

import functions_framework
from cloudevents.exceptions import GenericException
from cloudevents.http import CloudEvent
from flask import Request, Response
from werkzeug.exceptions import HTTPException

from shepherd import web


# The framework's own refusals (unknown path, not a CloudEvent) answer JSON too, and never echo
# the request's headers back.
@functions_framework.errorhandler(HTTPException)
def http_error(error: HTTPException) -> Response:
    return web.http_error(error)


# The framework parses a CloudEvent before our code runs: data it cannot decode (such as JSON
# nested thousands deep) would otherwise answer 500.
@functions_framework.errorhandler(GenericException)
@functions_framework.errorhandler(RecursionError)
def unreadable_event(error: Exception) -> Response:
    return web.unreadable_event(error)


@functions_framework.http
def trigger(request: Request) -> Response:
    return web.trigger(request)


@functions_framework.cloud_event
def on_build_notification(event: CloudEvent) -> None:
    web.on_build_notification(event)


@functions_framework.http
def on_timer(request: Request) -> Response:
    return web.on_timer(request)


@functions_framework.http
def api(request: Request) -> Response:
    return web.api(request)


@functions_framework.http
def scheduler(request: Request) -> Response:
    return web.scheduler(request)
