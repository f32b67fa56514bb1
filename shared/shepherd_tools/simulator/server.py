"""A Buildbucket v2 simulator: pRPC over HTTP, scripted build lifecycles, Pub/Sub notifications.

Requests are read with Buildbucket's own protos (simulator/pb, `make protos`) and validated as
Buildbucket validates them (validation.py); answers and notifications are built with them too.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import queue
import random
import sys
import threading
import time
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from google.protobuf import timestamp_pb2
from google.protobuf.message import Message

from shepherd.durations import parse_duration
from shepherd.grpc_codes import Code, RpcError
from shepherd.timestamps import format_rfc3339

from ..httpserver import QuietHandler, serve
from . import validation, wire
from .pb.buildbucket.proto import build_pb2, builds_service_pb2, common_pb2

Json = dict[str, Any]

SERVICE = "buildbucket.v2.Builds"
METHODS = ("ScheduleBuild", "GetBuild", "CancelBuild", "Batch")
SERVER_INFO = "ServerInfo"  # the fault name of GET /auth/api/v1/server/info
FINAL_STATUSES = frozenset({"SUCCESS", "FAILURE", "INFRA_FAILURE", "CANCELED"})
BUILDER_KEYS = ("project", "bucket", "builder")
STATUS_NAMES = tuple(common_pb2.Status.keys())
CALLER = "user:shepherd@localhost"
XSSI_PREFIX = b")]}'\n"
# The account the simulator says it publishes as (/auth/api/v1/server/info): the public
# instance's, as it stands in for cr-buildbucket.appspot.com in replays.
DEFAULT_SERVICE_ACCOUNT = "cr-buildbucket@appspot.gserviceaccount.com"
# Who answers a refused token without X-Prpc-Grpc-Code: a proxy or Google's front end.
RAW_REFUSALS = {401: Code.UNAUTHENTICATED, 403: Code.PERMISSION_DENIED}
PUSH_TRIES = 5
PUSH_BACKOFF_S = 0.2
DEFAULT_SCRIPT = [
    {"status": "SCHEDULED", "for": "1s"},
    {"status": "STARTED", "for": "2s"},
    {"status": "SUCCESS"},
]
CONFIG_KEYS = frozenset(
    {
        "script",
        "scripts",
        "faults",
        "drop_notifications",
        "duplicate_notifications",
        "latency",
        "sink_url",
        "publish_url",
        "seed",
        "clock",
        "start_ns",
        "first_build_id",
        "first_build_number",
        "service_account",
    }
)


class AdminError(Exception):
    """A refused admin request, answered with `status` and `{"error": message}`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Step:
    status: str
    for_ns: int | None
    # A last step may leave its status to each build: `outcomes` is a list (the builder's nth
    # build ends with the nth, the last one repeating) or weights to draw from (the seed's rng).
    outcomes: tuple[str, ...] | dict[str, float] | None = None

    def resolved(self, nth: int, rng: random.Random) -> Step:
        if isinstance(self.outcomes, tuple):
            return Step(self.outcomes[min(nth, len(self.outcomes) - 1)], None)
        if isinstance(self.outcomes, dict):
            names, weights = zip(*self.outcomes.items(), strict=True)
            return Step(rng.choices(names, weights)[0], None)
        return self


def _parse_outcomes(raw: Any, where: str) -> tuple[str, ...] | dict[str, float]:
    names = list(raw) if isinstance(raw, list | dict) else []
    if not names or any(n not in FINAL_STATUSES for n in names):
        raise ValueError(
            f"{where}: 'outcomes' is a non-empty list of final statuses, or weights by final "
            f"status ({', '.join(sorted(FINAL_STATUSES))})"
        )
    if isinstance(raw, list):
        return tuple(raw)
    weights = {name: raw[name] for name in names}
    if any(
        isinstance(w, bool) or not isinstance(w, int | float) or w < 0 for w in weights.values()
    ):
        raise ValueError(f"{where}: outcome weights must be non-negative numbers")
    if not sum(weights.values()):
        raise ValueError(f"{where}: outcome weights must not all be 0")
    return {name: float(w) for name, w in weights.items()}


@dataclass
class Fault:
    method: str
    code: Code
    times: int
    http_status: int | None = None  # answered raw, without X-Prpc-Grpc-Code
    after: int = 0  # calls of the method that go through before the fault starts


class RawHttpRefusal(RpcError):
    """A fault answered as a proxy answers: an HTTP status and no gRPC code."""

    def __init__(self, http_status: int) -> None:
        super().__init__(RAW_REFUSALS[http_status], f"simulated HTTP {http_status}")
        self.http_status = http_status


@dataclass
class Config:
    script: list[Step]
    scripts: dict[str, list[Step]]
    faults: list[Fault]
    drop_notifications: float
    duplicate_notifications: bool
    latency_ns: int
    sink_url: str | None
    publish_url: str | None
    seed: int
    clock: str
    start_ns: int
    first_build_id: int
    first_build_number: int
    service_account: str


def _get(raw: Json, key: str, kind: type | tuple[type, ...], default: Any) -> Any:
    value = raw.get(key, default)
    if value is None and default is None:
        return None
    if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
        raise ValueError(f"config {key!r}: wrong type {type(value).__name__}")
    return value


def _parse_script(raw: Any, where: str) -> list[Step]:
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{where}: must be a non-empty list of steps")
    steps = []
    for i, item in enumerate(raw):
        last = i == len(raw) - 1
        if last and isinstance(item, dict) and set(item) == {"outcomes"}:
            steps.append(Step("", None, _parse_outcomes(item["outcomes"], f"{where}[{i}]")))
            continue
        if not isinstance(item, dict) or set(item) - {"status", "for"}:
            raise ValueError(
                f'{where}[{i}]: a step is {{"status": NAME, "for": DURATION}} (the last one: '
                'no "for", or {"outcomes": ...})'
            )
        status = item.get("status")
        if not isinstance(status, str) or status not in STATUS_NAMES:
            names = ", ".join(STATUS_NAMES)
            raise ValueError(f"{where}[{i}]: the status must be one of Buildbucket's: {names}")
        if ("for" in item) == last:
            raise ValueError(f"{where}[{i}]: " + ("takes no 'for'" if last else "needs 'for'"))
        for_ns = None
        if not last:
            if not isinstance(item["for"], str):
                raise ValueError(f"{where}[{i}]: 'for' must be a duration string")
            for_ns = parse_duration(item["for"])
            if for_ns < 0:
                raise ValueError(f"{where}[{i}]: negative duration")
        steps.append(Step(status, for_ns))
    return steps


def parse_config(raw: Any) -> Config:
    """Validates an admin config object; raises ValueError saying what is wrong."""
    if not isinstance(raw, dict):
        raise ValueError("config must be a JSON object")
    if unknown := set(raw) - CONFIG_KEYS:
        raise ValueError(f"unknown config keys: {', '.join(sorted(unknown))}")
    scripts = _get(raw, "scripts", dict, {})
    faults = []
    for i, item in enumerate(_get(raw, "faults", list, [])):
        if not isinstance(item, dict) or not isinstance(item.get("method"), str):
            raise ValueError(f"faults[{i}]: needs a method")
        times, after = _get(item, "times", int, 1), _get(item, "after", int, 0)
        if times < 0 or after < 0:
            raise ValueError(f"faults[{i}]: negative times or after")
        http_status = _get(item, "http_status", int, None)
        if http_status is not None:
            if http_status not in RAW_REFUSALS or "code" in item:
                raise ValueError(
                    f"faults[{i}]: http_status is 401 or 403 (answered without a gRPC code), "
                    "and takes no code"
                )
            code = RAW_REFUSALS[http_status]
        else:
            code = Code.parse(item.get("code", "UNAVAILABLE"))
        faults.append(Fault(item["method"], code, times, http_status, after))
    drop = _get(raw, "drop_notifications", (int, float), 0)
    if not 0 <= drop <= 1:
        raise ValueError("config 'drop_notifications': must be within 0..1")
    sink_url = _get(raw, "sink_url", str, None)
    publish_url = _get(raw, "publish_url", str, None)
    for key, url in (("sink_url", sink_url), ("publish_url", publish_url)):
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError(f"config '{key}': must be an http(s) URL")
    clock = _get(raw, "clock", str, "real")
    if clock not in ("real", "manual"):
        raise ValueError("config 'clock': must be 'real' or 'manual'")
    service_account = _get(raw, "service_account", str, DEFAULT_SERVICE_ACCOUNT)
    if service_account.count("@") != 1:
        raise ValueError("config 'service_account': must be an email")
    latency_ns = parse_duration(_get(raw, "latency", str, "0s"))
    if latency_ns < 0:
        raise ValueError("config 'latency': negative duration")
    return Config(
        script=_parse_script(raw.get("script", DEFAULT_SCRIPT), "script"),
        scripts={name: _parse_script(s, f"scripts[{name!r}]") for name, s in scripts.items()},
        faults=faults,
        drop_notifications=float(drop),
        duplicate_notifications=_get(raw, "duplicate_notifications", bool, False),
        latency_ns=latency_ns,
        sink_url=sink_url,
        publish_url=publish_url,
        seed=_get(raw, "seed", int, 0),
        clock=clock,
        start_ns=_get(raw, "start_ns", int, 0),
        first_build_id=_get(raw, "first_build_id", int, 8809024803687588913),
        first_build_number=_get(raw, "first_build_number", int, 1),
        service_account=service_account,
    )


def _timestamp(ns: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)


@dataclass
class Build:
    id: int
    builder: common_pb2.BuilderID
    number: int
    create_ns: int
    script: list[Step]
    request: builds_service_pb2.ScheduleBuildRequest
    step: int = 0
    status: str = ""
    start_ns: int | None = None
    end_ns: int | None = None
    update_ns: int = 0
    next_ns: int | None = None

    def set_status(self, status: str, at: int) -> None:
        self.status = status
        self.update_ns = at
        if status == "STARTED":
            self.start_ns = at
        if status in FINAL_STATUSES:
            self.end_ns = at

    def enter(self, index: int, at: int) -> None:
        step = self.script[index]
        self.step = index
        self.set_status(step.status, at)
        self.next_ns = None if step.for_ns is None else at + step.for_ns

    @property
    def topic(self) -> str:
        return self.request.notify.pubsub_topic

    def tags(self) -> list[common_pb2.StringPair]:
        """The build's tags as ScheduleBuild sets them (setTags in luci-go's
        buildbucket/appengine/rpc/schedule_build.go): the request's, plus `builder`, and
        `buildset` and `gitiles_ref` from its gitiles commit; sorted by key."""
        pairs = [(t.key, t.value) for t in self.request.tags]
        pairs.append(("builder", self.builder.builder))
        commit = self.request.gitiles_commit
        if self.request.HasField("gitiles_commit"):
            if commit.host and commit.project and commit.id:
                buildset = f"commit/gitiles/{commit.host}/{commit.project}/+/{commit.id}"
                pairs.append(("buildset", buildset))
            pairs.append(("gitiles_ref", commit.ref))
        pairs.sort(key=lambda pair: pair[0])
        return [common_pb2.StringPair(key=k, value=v) for k, v in pairs]

    def to_proto(self, *, full: bool = False) -> build_pb2.Build:
        """The build as GetBuild's default fields show it; `full`: with its tags and input
        properties too, as notifications carry it."""
        build = build_pb2.Build(
            id=self.id,
            builder=self.builder,
            number=self.number,
            created_by=f"project:{self.builder.project}",
            create_time=_timestamp(self.create_ns),
            update_time=_timestamp(self.update_ns),
            status=common_pb2.Status.Value(self.status),
        )
        if self.start_ns is not None:
            build.start_time.CopyFrom(_timestamp(self.start_ns))
        if self.end_ns is not None:
            build.end_time.CopyFrom(_timestamp(self.end_ns))
        if self.request.HasField("gitiles_commit"):
            build.input.gitiles_commit.CopyFrom(self.request.gitiles_commit)
        if full:
            build.tags.extend(self.tags())
            if self.request.HasField("properties"):
                build.input.properties.CopyFrom(self.request.properties)
        return build

    def to_json(self) -> Json:
        return wire.encode(self.to_proto(full=True))


BATCH_METHODS = {
    "get_build": "GetBuild",
    "schedule_build": "ScheduleBuild",
    "cancel_build": "CancelBuild",
}
REQUEST_TYPES: dict[str, type[Message]] = {
    "ScheduleBuild": builds_service_pb2.ScheduleBuildRequest,
    "GetBuild": builds_service_pb2.GetBuildRequest,
    "CancelBuild": builds_service_pb2.CancelBuildRequest,
    "Batch": builds_service_pb2.BatchRequest,
}


def _encoded_data(message: Json) -> str:
    return base64.b64encode(json.dumps(message["data"], separators=(",", ":")).encode()).decode()


def publish_body(message: Json) -> Json:
    """The body of Pub/Sub's REST publish, as Buildbucket publishes to the build's topic."""
    return {"messages": [{"data": _encoded_data(message), "attributes": message["attributes"]}]}


def push_body(message: Json, topic: str) -> Json:
    """The body Pub/Sub POSTs to a push subscription for `message`."""
    return {
        "message": {
            "data": _encoded_data(message),
            "attributes": message["attributes"],
            "messageId": message["messageId"],
            "publishTime": message["publishTime"],
        },
        "subscription": f"projects/sim/subscriptions/{topic.rsplit('/', 1)[-1]}",
    }


class Simulator:
    """The builds and their scripted lifecycles, behind one lock; no sockets."""

    def __init__(self, config: Json | None = None) -> None:
        self._lock = threading.Condition(threading.RLock())
        self._closed = False
        # None, put by close(), ends push_forever.
        self.sink: queue.Queue[tuple[str, Json] | None] = queue.Queue()
        self.configure(config or {})

    def configure(self, raw: Json) -> None:
        """Replaces the config and resets every build, counter and the outbox."""
        try:
            config = parse_config(raw)
        except ValueError as e:
            raise AdminError(400, str(e)) from None
        with self._lock:
            self.config = config
            self._now = config.start_ns
            self._builds: dict[int, Build] = {}
            self._by_request: dict[str, int] = {}
            self._numbers: dict[tuple[str, ...], int] = {}
            self._next_id = config.first_build_id
            self._message_id = 0
            self._rng = random.Random(config.seed)
            self._outbox: list[Json] = []
            self.calls: dict[str, int] = dict.fromkeys(METHODS, 0)
            self.server_info_requests = 0
            self._lock.notify_all()

    def now_ns(self) -> int:
        with self._lock:
            return self._now if self.config.clock == "manual" else time.time_ns()

    def inject_fault(self, method: str, code: Code, times: int = 1) -> None:
        """The next `times` calls of `method` fail with `code`, on top of the configured faults."""
        with self._lock:
            self.config.faults.append(Fault(method, code, times))

    def server_info(self) -> Json:
        """LUCI's /auth/api/v1/server/info: who this server is and acts as. Fails as a
        fault for the method "ServerInfo" says ("*" does not cover it)."""
        with self._lock:
            self.server_info_requests += 1
            self._fault(SERVER_INFO)
            account = self.config.service_account
            return {"app_id": account.split("@")[0], "service_account_name": account}

    def builds_by_request(self) -> dict[str, str]:
        """requestId -> the id of the build it made."""
        with self._lock:
            return {request: str(build_id) for request, build_id in self._by_request.items()}

    def latency_s(self) -> float:
        with self._lock:
            return 0.0 if self.config.clock == "manual" else self.config.latency_ns / 1e9

    def next_event_ns(self) -> int | None:
        with self._lock:
            pending = [b.next_ns for b in self._builds.values() if b.next_ns is not None]
            return min(pending, default=None)

    def call(self, method: str, request: Any) -> Json:
        """One RPC as received (its body parsed JSON, or the raw bytes): counted, then faulted
        if configured, then decoded strictly, validated and served."""
        with self._lock:
            self.calls[method] = self.calls.get(method, 0) + 1
            self._fault(method)
            message_type = REQUEST_TYPES.get(method)
            if message_type is None:
                raise RpcError(
                    Code.UNIMPLEMENTED, f'method "{method}" of service "{SERVICE}" not implemented'
                )
            return wire.encode(self._serve(method, wire.decode(request, message_type)))

    def schedule_build(self, request: Json) -> Json:
        return self.call("ScheduleBuild", request)

    def get_build(self, request: Json) -> Json:
        return self.call("GetBuild", request)

    def cancel_build(self, request: Json) -> Json:
        return self.call("CancelBuild", request)

    def batch(self, request: Json) -> Json:
        return self.call("Batch", request)

    def _fault(self, method: str) -> None:
        for fault in self.config.faults:
            wildcard = "*" if method != SERVER_INFO else None
            if fault.times > 0 and fault.method in (method, wildcard):
                if fault.after > 0:
                    fault.after -= 1
                    continue
                fault.times -= 1
                if fault.http_status is not None:
                    raise RawHttpRefusal(fault.http_status)
                raise RpcError(fault.code, f"simulated {fault.code.name} fault")

    def _serve(self, method: str, request: Any) -> Message:
        if method == "ScheduleBuild":
            return self._schedule(request)
        if method == "GetBuild":
            return self._get(request)
        if method == "CancelBuild":
            return self._cancel(request)
        return self._batch(request)

    def _schedule(self, request: builds_service_pb2.ScheduleBuildRequest) -> build_pb2.Build:
        if (error := validation.validate_schedule(request)) is not None:
            raise RpcError(Code.INVALID_ARGUMENT, error)
        if not request.HasField("builder"):
            raise RpcError(Code.UNIMPLEMENTED, "template_build_id is not simulated")
        now = self._catch_up()
        if request.request_id in self._by_request:
            return self._builds[self._by_request[request.request_id]].to_proto()
        builder = request.builder
        key = (builder.project, builder.bucket, builder.builder)
        number = self._numbers.get(key, self.config.first_build_number)
        self._numbers[key] = number + 1
        script = self.config.scripts.get(builder.builder, self.config.script)
        nth = number - self.config.first_build_number
        build = Build(
            id=self._next_id,
            builder=builder,
            number=number,
            create_ns=now,
            script=[*script[:-1], script[-1].resolved(nth, self._rng)],
            request=request,
        )
        self._next_id -= 1
        build.enter(0, now)
        self._builds[build.id] = build
        if request.request_id:
            self._by_request[request.request_id] = build.id
        self._lock.notify_all()
        return build.to_proto()

    def _get(self, request: builds_service_pb2.GetBuildRequest) -> build_pb2.Build:
        if (error := validation.validate_get(request)) is not None:
            raise RpcError(Code.INVALID_ARGUMENT, error)
        self._catch_up()
        if request.id:
            return self._find(request.id).to_proto()
        wanted = (request.builder.SerializeToString(deterministic=True), request.build_number)
        for build in self._builds.values():
            if (build.builder.SerializeToString(deterministic=True), build.number) == wanted:
                return build.to_proto()
        raise self._not_found()

    def _cancel(self, request: builds_service_pb2.CancelBuildRequest) -> build_pb2.Build:
        if (error := validation.validate_cancel(request)) is not None:
            raise RpcError(Code.INVALID_ARGUMENT, error)
        now = self._catch_up()
        build = self._find(request.id)
        if build.status not in FINAL_STATUSES:
            build.set_status("CANCELED", now)
            build.next_ns = None
            self._publish(build, now)
            self._lock.notify_all()
        return build.to_proto()

    def _batch(self, request: builds_service_pb2.BatchRequest) -> Message:
        """Batch.go: one answer per request, each a build or its error; a configured fault for
        an item's method fails that item alone."""
        if (error := validation.validate_batch(request)) is not None:
            raise RpcError(Code.INVALID_ARGUMENT, error)
        response = builds_service_pb2.BatchResponse()
        for item in request.requests:
            kind = item.WhichOneof("request")
            answer = response.responses.add()
            method = BATCH_METHODS.get(kind or "")
            try:
                if method is None:
                    raise RpcError(Code.UNIMPLEMENTED, f"{kind} is not simulated")
                self._fault(method)
                getattr(answer, kind).CopyFrom(self._serve(method, getattr(item, kind)))
            except RpcError as e:
                answer.error.code = int(e.code)
                answer.error.message = e.message
        return response

    def advance(self, to_ns: int) -> Json:
        """Manual clock: applies every transition due up to `to_ns`, then takes the outbox."""
        with self._lock:
            if self.config.clock != "manual":
                raise AdminError(409, "advance needs the manual clock")
            if to_ns < self._now:
                raise AdminError(400, f"cannot go back in time from {self._now} to {to_ns}")
            self._apply_due(to_ns)
            self._now = to_ns
            return self.take_outbox()

    def take_outbox(self) -> Json:
        with self._lock:
            now = self._catch_up()
            published, self._outbox = self._outbox, []
            return {"now_ns": now, "published": published, "next_event_ns": self.next_event_ns()}

    def state(self) -> Json:
        with self._lock:
            now = self._catch_up()
            return {
                "now_ns": now,
                "next_event_ns": self.next_event_ns(),
                "calls": dict(self.calls),
                "server_info_requests": self.server_info_requests,
                "builds": [b.to_json() for b in self._builds.values()],
            }

    def run_clock(self) -> None:
        """Real clock: applies transitions as time reaches them, until close()."""
        with self._lock:
            while not self._closed:
                timeout = None
                if self.config.clock == "real":
                    now = self._catch_up()
                    upcoming = self.next_event_ns()
                    if upcoming is not None:
                        timeout = max(upcoming - now, 0) / 1e9
                self._lock.wait(timeout)

    def close(self) -> None:
        """Stops the clock and the pushes: those not yet sent are dropped, as a Buildbucket
        that goes away would never send them."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        with contextlib.suppress(queue.Empty):
            while True:
                self.sink.get_nowait()
        self.sink.put(None)

    def _find(self, build_id: int) -> Build:
        build = self._builds.get(build_id)
        if build is None:
            raise self._not_found()
        return build

    @staticmethod
    def _not_found() -> RpcError:
        return RpcError(
            Code.NOT_FOUND,
            f'requested resource not found or "{CALLER}" does not have permission to view it',
        )

    def _catch_up(self) -> int:
        if self.config.clock == "manual":
            return self._now
        now = time.time_ns()
        self._apply_due(now)
        return now

    def _apply_due(self, until: int) -> None:
        while True:
            due = [
                (b.next_ns, b)
                for b in self._builds.values()
                if b.next_ns is not None and b.next_ns <= until
            ]
            if not due:
                return
            at, build = min(due, key=lambda pair: pair[0])
            build.enter(build.step + 1, at)
            self._publish(build, at)

    def _publish(self, build: Build, at: int) -> None:
        if not build.topic or self._rng.random() < self.config.drop_notifications:
            return
        self._message_id += 1
        data = wire.notification(build.to_proto(full=True), build.request.notify.user_data)
        completed = common_pb2.Status.Value(build.status) & common_pb2.ENDED_MASK
        message = {
            "data": data,
            "attributes": {key: getattr(build.builder, key) for key in BUILDER_KEYS}
            | {"is_completed": "true" if completed else "false", "version": "v2"},
            "messageId": str(self._message_id),
            "publishTime": format_rfc3339(at),
        }
        for _ in range(2 if self.config.duplicate_notifications else 1):
            self._outbox.append(message)
            if self.config.sink_url:
                self.sink.put((self.config.sink_url, push_body(message, build.topic)))
            if self.config.publish_url:
                url = f"{self.config.publish_url.rstrip('/')}/v1/{build.topic}:publish"
                self.sink.put((url, publish_body(message)))


def deliver(client: httpx.Client, url: str, body: Json) -> bool:
    """POSTs one push body, retrying connection errors and 5xx answers with backoff."""
    for attempt in range(PUSH_TRIES):
        if attempt:
            time.sleep(PUSH_BACKOFF_S * 2 ** (attempt - 1))
        try:
            response = client.post(url, json=body)
        except httpx.TransportError:
            continue
        if response.status_code < 500:
            return response.is_success
    return False


def push_forever(sink: queue.Queue[tuple[str, Json] | None]) -> None:
    with httpx.Client(timeout=10) as client:
        while (item := sink.get()) is not None:
            url, body = item
            # A broken sink (bad URL, odd answers) must never take the simulator down.
            with contextlib.suppress(Exception):
                deliver(client, url, body)


class SimServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], sim: Simulator) -> None:
        super().__init__(address, Handler)
        self.sim = sim


class Handler(QuietHandler):
    server: SimServer

    def do_GET(self) -> None:
        sim = self.server.sim
        path = self.path.split("?", 1)[0]
        if path == "/sim/state":
            self._json(200, sim.state())
        elif path == "/sim/outbox":
            self._json(200, sim.take_outbox())
        elif path == "/auth/api/v1/server/info":
            try:
                self._json(200, sim.server_info())
            except RpcError as e:
                self._send(e.code.http_status, (e.message + "\n").encode(), "text/plain")
        else:
            self._send(404, b"not found\n", "text/plain")

    def do_POST(self) -> None:
        raw = self._body()
        path = self.path.split("?", 1)[0]
        parts = path.split("/")
        if len(parts) == 4 and parts[1] == "prpc":
            self._prpc(parts[2], parts[3], raw)
        elif path in ("/sim/config", "/sim/advance"):
            self._admin(path, raw)
        else:
            self._send(404, b"not found\n", "text/plain")

    def _prpc(self, service: str, method: str, raw: bytes) -> None:
        sim = self.server.sim
        if latency := sim.latency_s():
            time.sleep(latency)
        try:
            if service != SERVICE:
                raise RpcError(Code.UNIMPLEMENTED, f'service "{service}" not implemented')
            content_type = self.headers.get("Content-Type", "").split(";")[0].strip()
            if content_type != "application/json":
                # pRPC reads binary protobuf without a Content-Type; the simulator speaks JSON.
                raise RpcError(
                    Code.INVALID_ARGUMENT,
                    f"bad Content-Type header: {content_type!r}, the "
                    "simulator reads application/json",
                )
            response = sim.call(method, raw)
        except RawHttpRefusal as e:
            body = f"HTTP {e.http_status}: the token was refused\n".encode()
            self._send(e.http_status, body, "text/plain")
            return
        except RpcError as e:
            headers = {"X-Prpc-Grpc-Code": str(int(e.code))}
            self._send(e.code.http_status, (e.message + "\n").encode(), "text/plain", headers)
            return
        body = XSSI_PREFIX + json.dumps(response).encode()
        self._send(200, body, "application/json", {"X-Prpc-Grpc-Code": "0"})

    def _admin(self, path: str, raw: bytes) -> None:
        sim = self.server.sim
        try:
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                raise AdminError(400, "the body is not JSON") from None
            if path == "/sim/config":
                sim.configure(body)
                self._json(200, {})
                return
            to_ns = body.get("to_ns") if isinstance(body, dict) else None
            if isinstance(to_ns, bool) or not isinstance(to_ns, int):
                raise AdminError(400, "to_ns: must be an integer")
            self._json(200, sim.advance(to_ns))
        except AdminError as e:
            self._json(e.status, {"error": str(e)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="shepherd-buildbucket-sim", description="Serves a simulated Buildbucket v2 over pRPC."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--config", type=Path, help="a JSON config, as POST /sim/config takes")
    args = parser.parse_args(argv)
    try:
        sim = Simulator(json.loads(args.config.read_text()) if args.config else None)
    except (OSError, ValueError, AdminError) as e:
        parser.error(f"--config: {e}")
    try:
        server = SimServer((args.host, args.port), sim)
    except OSError as e:
        print(f"cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 1
    threads = [
        threading.Thread(target=sim.run_clock, name="sim-clock", daemon=True),
        threading.Thread(target=push_forever, args=(sim.sink,), name="sim-push", daemon=True),
    ]
    for thread in threads:
        thread.start()

    def close() -> None:
        # Joined, not left to die with the interpreter: a daemon thread still running during
        # finalization made the process exit with SIGSEGV now and then.
        sim.close()
        for thread in threads:
            thread.join(timeout=2)
        if any(thread.is_alive() for thread in threads):
            # A push still waits on a sink that does not answer (up to its 10 s timeout): end
            # here rather than finalize the interpreter with it running.
            sys.stdout.flush()
            os._exit(0)

    return serve(server, args.host, on_close=close)
