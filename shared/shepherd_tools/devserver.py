"""`shepherd dev`: the functions on one port, with the embedded store, queue and topic."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import functions_framework
import httpx
from werkzeug.serving import make_server
from werkzeug.wrappers import Request

from shepherd.adapters.sqlite_delivery import Deliverer, SqliteDeliveryQueue, UnknownTopic
from shepherd.clock import RealClock
from shepherd.config import Config
from shepherd.ports import StoreUnavailable
from shepherd.service import build_service, install_service

logger = logging.getLogger(__name__)

# route -> (target in functions/main.py, signature type)
ROUTES = {
    "/trigger": ("trigger", "http"),
    "/on-build-notification": ("on_build_notification", "cloudevent"),
    "/on-timer": ("on_timer", "http"),
    "/api": ("api", "http"),
    "/scheduler": ("scheduler", "http"),
}

PUBSUB_ROUTE = "/v1"

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def functions_source(config: Config) -> Path:
    """functions/main.py of this checkout, or SHEPHERD_FUNCTIONS_SOURCE."""
    return config.functions_source or Path(__file__).resolve().parents[2] / "functions" / "main.py"


class Dispatcher:
    """Hands each request to the function mounted at its route, at exactly that path.

    werkzeug's DispatcherMiddleware would answer the bare route with a redirect to "route/",
    which neither Pub/Sub push nor Cloud Tasks follows.
    """

    def __init__(self, apps: dict[str, WsgiApp]) -> None:
        self._apps = apps

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        for prefix, app in self._apps.items():
            if path == prefix or path.startswith(prefix + "/"):
                environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + prefix
                environ["PATH_INFO"] = path[len(prefix) :] or "/"
                return app(environ, start_response)
        body = json.dumps({"error": f'no function at "{path}"; routes: {", ".join(self._apps)}'})
        start_response("404 Not Found", [("Content-Type", "application/json")])
        return [body.encode()]


def _json_response(start_response: Callable[..., Any], status: str, body: Any) -> list[bytes]:
    start_response(status, [("Content-Type", "application/json")])
    return [json.dumps(body).encode()]


class PubSubPublish:
    """Pub/Sub's REST publish, `POST /v1/projects/P/topics/T:publish`, for registered topics.

    Each message then reaches `on_build_notification` as a push subscription delivers it.
    """

    def __init__(self, queue: SqliteDeliveryQueue) -> None:
        self._queue = queue
        self._clock = RealClock()

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        request = Request(environ)
        topic, _, verb = request.path.strip("/").partition(":")
        if request.method != "POST" or verb != "publish" or not topic.startswith("projects/"):
            return _json_response(
                start_response, "404 Not Found", _pubsub_error(404, "NOT_FOUND", "no such method")
            )
        try:
            body = json.loads(request.get_data())
            messages = body["messages"]
            if not isinstance(messages, list) or not all(
                isinstance(m, dict) and isinstance(m.get("data", ""), str) for m in messages
            ):
                raise ValueError("messages must be a list of {data, attributes}")
        except (ValueError, KeyError, TypeError, RecursionError) as e:
            return _json_response(
                start_response, "400 Bad Request", _pubsub_error(400, "INVALID_ARGUMENT", str(e))
            )
        try:
            ids = self._queue.publish(topic, messages, self._clock.now_ns())
        except UnknownTopic:
            error = _pubsub_error(404, "NOT_FOUND", f"Resource not found (resource={topic}).")
            return _json_response(start_response, "404 Not Found", error)
        except StoreUnavailable as e:
            error = _pubsub_error(503, "UNAVAILABLE", str(e))
            return _json_response(start_response, "503 Service Unavailable", error)
        return _json_response(start_response, "200 OK", {"messageIds": ids})


def _pubsub_error(code: int, status: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "status": status}}


def ensure_push_subscription(topic: str, endpoint: str) -> str:
    """On the Pub/Sub emulator: a push subscription from the topic to our own function."""
    from google.api_core import exceptions as gexc
    from google.cloud import pubsub_v1

    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    with contextlib.suppress(gexc.AlreadyExists):
        publisher.create_topic(name=topic)
    project, _, topic_id = topic.removeprefix("projects/").partition("/topics/")
    name = f"projects/{project}/subscriptions/{topic_id}-shepherd-dev"
    push = pubsub_v1.types.PushConfig(push_endpoint=endpoint)
    try:
        subscriber.create_subscription(name=name, topic=topic, push_config=push)
    except gexc.AlreadyExists:
        subscriber.modify_push_config(subscription=name, push_config=push)
    subscriber.close()
    return name


class SchedulerTicker:
    """Calls /scheduler at start, then at the start of every minute as Cloud Scheduler does
    when deployed: the cron schedules and the sweep. (An interval schedule's later ticks come
    through the timer queue.)"""

    def __init__(self, url: str) -> None:
        self._url = url
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scheduler-ticker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with httpx.Client(timeout=60) as client:
            wait = 0.0
            while not self._stop.wait(wait):
                try:
                    client.post(self._url)
                except httpx.HTTPError as e:
                    logger.warning("scheduler tick failed: %s", e)
                wait = 60 - time.time() % 60


def serve(config: Config, host: str, port: int) -> int:
    source = str(functions_source(config))
    apps: dict[str, WsgiApp] = {}
    server = make_server(host, port, Dispatcher(apps), threaded=True)
    url = f"http://{host}:{server.port}"
    if config.timer_url is None:
        config = dataclasses.replace(config, timer_url=url + "/on-timer")
    try:
        service = build_service(config)  # fails here, before serving, on a bad job file
    except BaseException:
        server.server_close()
        raise
    install_service(service)  # what the functions' apps below answer with
    for route, (target, kind) in ROUTES.items():
        apps[route] = functions_framework.create_app(target, source, kind)
    deliverer = None
    if service.embedded is not None:
        apps[PUBSUB_ROUTE] = PubSubPublish(service.embedded)
        deliverer = Deliverer(
            service.embedded, url, RealClock(), timer_headers=service.timer_headers
        )
        service.embedded.on_schedule = deliverer.poke
    elif config.pubsub_emulator and config.topic:
        name = ensure_push_subscription(config.topic, url + "/on-build-notification")
        logger.info("push subscription %s -> %s/on-build-notification", name, url)
    recovered = service.engine.recover()
    if deliverer is not None:
        deliverer.start()
    # Every minute even with no schedule: the tick also runs the sweep.
    ticker = SchedulerTicker(url + "/scheduler")
    ticker.start()

    def stop(signum: int, frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"listening on {url}", flush=True)
    if recovered:
        logger.info("handed %d pending timers to the queue again", recovered)
    try:
        server.serve_forever()
    finally:
        ticker.stop()
        if deliverer is not None:
            deliverer.stop()
        server.server_close()
    return 0
