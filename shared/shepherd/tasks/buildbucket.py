"""The Buildbucket task kind: schedules a build, then follows it to its end (LUCI's task)."""

from __future__ import annotations

import base64
import json
import math
import random
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NoReturn
from urllib.parse import unquote, urlsplit

from ..debuglog import DebugLog, json_block
from ..durations import SECOND, format_duration
from ..grpc_codes import RpcError
from ..jobs import Settings
from ..model import (
    IncomingTrigger,
    Invocation,
    LogKind,
    PubSubMessage,
    Status,
    TriggerRequest,
    tag_key,
)
from ..ports import BuildsAPI
from ..timestamps import parse_rfc3339
from ..validation import Model, field
from .base import Controller, TaskError, TransientError

STATUS_CHECK_TIMER = "check-buildbucket-build-status"
# The outbound calls the debug log records (LogEntry.call).
SCHEDULE_BUILD, GET_BUILD, CANCEL_BUILD = "ScheduleBuild", "GetBuild", "CancelBuild"
BATCH = "Batch"
RESERVED_TAGS = ("scheduler_invocation_id", "scheduler_job_id", "user_agent")
NOT_FINITE = "NaN, Infinity and numbers beyond a double are not JSON: Buildbucket refuses them"
_HOST = re.compile(r"^[a-z0-9]([a-z0-9\-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9\-]*[a-z0-9])?)*(:\d+)?$")
_BUILDSET = re.compile(r"^commit/gitiles/([^/]+)/(.+?)/\+/([a-f0-9]+)$")
SCHEDULER_PROPERTY = "$recipe_engine/scheduler"
# LUCI leaves the property out for these projects (crbug.com/981945, crbug.com/939368).
_NO_SCHEDULER_PROPERTY = ("chromium", "chrome")
MAX_TRIGGERS_IN_PROPERTY = 100  # as LUCI's maxTriggersAsSchedulerProperty (crbug.com/1006914)

_STATUS_MAP = {
    "SUCCESS": Status.SUCCEEDED,
    "FAILURE": Status.FAILED,
    "INFRA_FAILURE": Status.FAILED,
    "CANCELED": Status.ABORTED,
}
_ACTIVE = ("SCHEDULED", "STARTED")
# buildbucket.v2.Status by number: protojson accepts an enum as its number too.
_STATUS_NAMES = {
    0: "STATUS_UNSPECIFIED",
    1: "SCHEDULED",
    2: "STARTED",
    4: "ENDED_MASK",
    12: "SUCCESS",
    20: "FAILURE",
    36: "INFRA_FAILURE",
    68: "CANCELED",
}
_GO_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
}


def go_quote(value: str) -> str:
    """`value` as Go's %q (strconv.Quote) writes it, for LUCI's debug lines: printable
    characters as they are (not JSON's \\u escapes), the others escaped as Go does."""
    out = ['"']
    for char in value:
        if char in '"\\':
            out.append("\\" + char)
        elif char.isprintable():  # Unicode's letters, marks, numbers, punctuation, symbols, " "
            out.append(char)
        elif char in _GO_ESCAPES:
            out.append(_GO_ESCAPES[char])
        elif (code := ord(char)) < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        else:
            out.append(f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def _server(value: str) -> str:
    if value.startswith("http://"):
        parts = urlsplit(value)
        if not parts.hostname or parts.path not in ("", "/") or parts.query:
            raise ValueError('a local server must look like "http://HOST:PORT"')
        return value.rstrip("/")
    if not _HOST.match(value):
        raise ValueError(f'"{value}" is not a host name such as "cr-buildbucket.appspot.com"')
    return value


def _bucket(value: str) -> str:
    if not value:
        raise ValueError("is required")
    if value.startswith("luci."):
        raise ValueError(f'legacy v1 bucket names like "{value}" are no longer allowed')
    return value


def _finite(value: dict[str, Any]) -> dict[str, Any]:
    if not finite_numbers(value):
        raise ValueError(NOT_FINITE)
    return value


def _tags(value: tuple[str, ...]) -> tuple[str, ...]:
    for tag in value:
        if (key := tag_key(tag)) in RESERVED_TAGS:
            raise ValueError(f'tag "{key}" is reserved')
    return value


# The build statuses a rerun may follow (never SUCCESS).
RERUNNABLE = ("FAILURE", "INFRA_FAILURE", "CANCELED")
MAX_RERUNS = 10


def _rerun_on(value: tuple[str, ...]) -> tuple[str, ...]:
    for status in value:
        if status not in RERUNNABLE:
            raise ValueError(f'"{status}" is not one of {", ".join(RERUNNABLE)}')
    if len(set(value)) != len(value):
        raise ValueError("lists a status twice")
    return value


@dataclass(frozen=True)
class Reruns(Model):
    """`reruns = {max = 2, on = ["INFRA_FAILURE"]}`: a build that ends with a status in `on`
    is scheduled again within its invocation, at most `max` times."""

    max: int = field(default=0, minimum=0, maximum=MAX_RERUNS)
    on: tuple[str, ...] = field(default=(), after=_rerun_on)

    def check(self) -> None:
        if self.max > 0 and not self.on:
            raise ValueError(f'"on" must list at least one of {", ".join(RERUNNABLE)}')


@dataclass(frozen=True)
class BuildbucketConfig(Model):
    """A job's `kind = "buildbucket"` fields."""

    server: str = field(after=_server)
    bucket: str = field(after=_bucket)
    builder: str = field(minLength=1)
    properties: dict[str, Any] = field(default_factory=dict, after=_finite)
    tags: tuple[str, ...] = field(default=(), after=_tags)
    reruns: Reruns = field(default_factory=Reruns)


def server_url(server: str) -> str:
    """The base URL of a configured server: a host means https, an http:// URL stays."""
    return server if server.startswith("http://") else "https://" + server


@dataclass(frozen=True)
class GitilesCommit:
    host: str
    project: str
    id: str
    ref: str = ""

    def to_json(self) -> dict[str, str]:
        out = {"host": self.host, "project": self.project, "id": self.id}
        if self.ref:
            out["ref"] = self.ref
        return out


def normalize_ref(ref: str) -> str:
    return "refs/heads/" + ref if ref and not ref.startswith("refs/") else ref


LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def normalize_repo_url(url: str) -> tuple[str, str]:
    """(host, project) of a gitiles repository URL, refused as luci-go's gitiles.ParseRepoURL
    refuses it (the LUCI Scheduler parses every repo URL with it). One addition, as for a
    job's `server`: a local Gitiles at `http://HOST:PORT/project` (a loopback host), whose host
    is then `HOST:PORT` (interfaces.md)."""
    try:
        parts = urlsplit(url)
    except ValueError as e:
        raise ValueError(f"invalid URL: {e}") from None
    host, path = parts.netloc.rpartition("@")[2], unquote(parts.path)
    local = parts.scheme == "http" and parts.hostname in LOCAL_HOSTS
    if parts.scheme != "https" and not local:
        raise ValueError("only https scheme is supported")
    if not local and not host.endswith(".googlesource.com"):
        raise ValueError("only .googlesource.com repos are supported")
    if "+" in path:
        raise ValueError("repo URL path must not contain +")
    if not path.startswith("/"):
        raise ValueError("repo URL path must start with a slash")
    if path == "/":
        raise ValueError("repo URL path must be not just a slash")
    if parts.query:
        raise ValueError("repo URL must not have query")
    if parts.fragment:
        raise ValueError("repo URL must not have fragment")
    if path.startswith("/a/"):
        path = path.removeprefix("/a")
    return host, path.strip("/").removesuffix(".git")


def gitiles_buildset(commit: GitilesCommit) -> str:
    """The buildset tag value of a commit (protoutil.GitilesBuildSet)."""
    return f"commit/gitiles/{commit.host}/{commit.project}/+/{commit.id}"


def _commit_from_trigger(request: TriggerRequest) -> GitilesCommit | None:
    if request.gitiles is None:
        return None
    try:
        host, project = normalize_repo_url(request.gitiles.repo)
    except ValueError as e:
        raise TaskError(
            f"failed to prepare gitiles_commit: bad repo URL {go_quote(request.gitiles.repo)}: {e}"
        ) from None
    # Buildbucket requires "refs/..." ("ref must match refs/.*"): "main" means refs/heads/main.
    ref = normalize_ref(request.gitiles.ref)
    return GitilesCommit(host, project, request.gitiles.revision, ref)


def refless_buildset(tags: Iterable[str]) -> str | None:
    """The buildset tag whose commit would reach Buildbucket without a ref, which it refuses
    ("gitiles_commit: ref is required"); None when the tags give the commit a ref or none."""
    buildset, ref = None, ""
    for tag in tags:
        key, _, value = tag.partition(":")
        if key == "gitiles_ref":
            ref = normalize_ref(value)
        elif key == "buildset" and buildset is None and _BUILDSET.match(value):
            buildset = tag
    return None if ref else buildset


def finite_numbers(value: Any) -> bool:
    """Whether every number in a JSON value is finite: JSON has no NaN or Infinity, so
    Buildbucket answers "could not decode body" to a request that carries one."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, int):  # JSON numbers are doubles: 10**400 is Infinity too
        return abs(value) <= sys.float_info.max
    if isinstance(value, dict):
        return all(map(finite_numbers, value.values()))
    return all(map(finite_numbers, value)) if isinstance(value, list) else True


def _pop_commit_from_tags(
    debug_log: DebugLog, props: dict[str, Any], tags: list[str]
) -> GitilesCommit | None:
    """Takes gitiles information out of tags and properties, which Buildbucket v2 refuses."""
    commit: GitilesCommit | None = None
    ref = ""
    kept = []
    for tag in tags:
        key, _, value = tag.partition(":")
        if key == "gitiles_ref":
            if ref:
                debug_log.write(LogKind.INFO, f"Ignoring extra gitiles_ref {go_quote(ref)}")
            ref = normalize_ref(value)
        elif key == "buildset":
            if commit is not None:
                debug_log.write(LogKind.INFO, f"Ignoring extra buildset tag {go_quote(tag)}")
            elif m := _BUILDSET.match(value):
                commit = GitilesCommit(m[1], m[2], m[3])
                debug_log.write(LogKind.INFO, f"Popped buildset tag {go_quote(tag)}")
            else:
                debug_log.write(LogKind.INFO, f"Ignoring unrecognized buildset tag {go_quote(tag)}")
        else:
            kept.append(tag)
    tags[:] = kept

    if commit is not None:
        commit = GitilesCommit(commit.host, commit.project, commit.id, ref)
    else:
        # LUCI writes this line whenever no buildset tag names a commit, gitiles_ref or not.
        debug_log.write(LogKind.INFO, "Ignoring gitiles_ref tag without the buildset tag")

    def pop(key: str) -> str:
        value = props.pop(key, None)
        return value if isinstance(value, str) else ""

    repository, branch, revision = pop("repository"), normalize_ref(pop("branch")), pop("revision")
    if commit is None:
        for key, value in (("repository", repository), ("branch", branch), ("revision", revision)):
            if value:
                quoted = go_quote(value)
                debug_log.write(
                    LogKind.INFO, f'No buildset tag present, ignoring property "{key}": {quoted}'
                )
        return None
    if repository:
        try:
            host, project = normalize_repo_url(repository)
        except ValueError:
            debug_log.write(
                LogKind.INFO, f'Ignoring invalid property "repository": {go_quote(repository)}'
            )
        else:
            if host != commit.host:
                debug_log.write(
                    LogKind.INFO,
                    f"Git host in properties {go_quote(host)} doesn't match "
                    f"the one in tags {go_quote(commit.host)}",
                )
            if project != commit.project:
                debug_log.write(
                    LogKind.INFO,
                    f"Git project in properties {go_quote(project)} doesn't match "
                    f"the one in tags {go_quote(commit.project)}",
                )
    if branch and branch != commit.ref:
        debug_log.write(
            LogKind.INFO,
            f"Git ref in properties {go_quote(branch)} doesn't match "
            f"the one in tags {go_quote(commit.ref)}",
        )
    if revision and revision != commit.id:
        debug_log.write(
            LogKind.INFO,
            f"Git commit in properties {go_quote(revision)} doesn't match "
            f"the one in tags {go_quote(commit.id)}",
        )
    return commit


def builder_id(cfg: BuildbucketConfig, job_id: str) -> dict[str, str]:
    project, bucket = job_id.split("/", 1)[0], cfg.bucket
    if ":" in bucket:
        project, bucket = bucket.split(":", 1)
    return {"project": project, "bucket": bucket, "builder": cfg.builder}


def properties_and_tags(trigger: TriggerRequest, debug_log: DebugLog) -> tuple[dict, list[str]]:
    """The properties and tags a trigger brings (LUCI's policy.RequestBuilder): a gitiles
    trigger adds its commit as the v1 properties and tags, which the request pops again."""
    gitiles = trigger.gitiles
    if gitiles is None:
        return dict(trigger.properties), list(trigger.tags)
    try:
        host, project = normalize_repo_url(gitiles.repo)
    except ValueError as e:
        debug_log.write(LogKind.INFO, f"Bad repo URL {go_quote(gitiles.repo)} in the trigger - {e}")
        return {}, []
    derived = {"revision": gitiles.revision, "branch": gitiles.ref, "repository": gitiles.repo}
    buildset = gitiles_buildset(GitilesCommit(host, project, gitiles.revision))
    tags = [f"buildset:{buildset}", f"gitiles_ref:{gitiles.ref}", *trigger.tags]
    return {**trigger.properties, **derived}, list(dict.fromkeys(tags))


def scheduler_property(
    *,
    hostname: str,
    job_id: str,
    invocation_id: int,
    triggers: Sequence[IncomingTrigger],
    debug_log: DebugLog,
) -> dict[str, Any]:
    """`$recipe_engine/scheduler`, which the recipes' scheduler module reads: the invocation
    and its triggers (the latest MAX_TRIGGERS_IN_PROPERTY of them, oldest first)."""
    if len(triggers) > MAX_TRIGGERS_IN_PROPERTY:
        debug_log.write(
            LogKind.INFO,
            f"Capping {len(triggers)} triggers passed to the build to just "
            f"{MAX_TRIGGERS_IN_PROPERTY} latest ones",
        )
        triggers = triggers[-MAX_TRIGGERS_IN_PROPERTY:]
    value: dict[str, Any] = {"hostname": hostname} if hostname else {}
    value |= {
        "job": job_id,
        "invocation": str(invocation_id),
        "triggers": [t.to_json() for t in triggers],
    }
    return value


def _struct(value: Any) -> Any:
    """A google.protobuf.Struct value with its keys sorted, as protojson writes maps."""
    if isinstance(value, dict):
        return {key: _struct(value[key]) for key in sorted(value)}
    return [_struct(v) for v in value] if isinstance(value, list) else value


def build_schedule_request(
    cfg: BuildbucketConfig,
    *,
    job_id: str,
    invocation_id: int,
    triggers: Sequence[IncomingTrigger],
    app_id: str,
    debug_log: DebugLog,
    hostname: str = "",
) -> dict[str, Any]:
    """The ScheduleBuild request, without `notify`, made from the newest of the invocation's
    triggers (the last); logs what LUCI logs on the way."""
    trigger = triggers[-1].request if triggers else None
    trigger_props, trigger_tags = properties_and_tags(trigger, debug_log) if trigger else ({}, [])
    tags = [
        f"scheduler_invocation_id:{invocation_id}",
        f"scheduler_job_id:{job_id}",
        f"user_agent:{app_id}",
        *cfg.tags,
        *trigger_tags,
    ]
    props = {**cfg.properties, **trigger_props}
    builder = builder_id(cfg, job_id)
    if builder["project"] not in _NO_SCHEDULER_PROPERTY:
        props[SCHEDULER_PROPERTY] = scheduler_property(
            hostname=hostname,
            job_id=job_id,
            invocation_id=invocation_id,
            triggers=triggers,
            debug_log=debug_log,
        )
    commit = _commit_from_trigger(trigger) if trigger else None
    from_tags = _pop_commit_from_tags(debug_log, props, tags)
    if commit is None and from_tags is not None:
        debug_log.write(LogKind.INFO, "Reconstructed gitiles commit from tags")
        commit = from_tags
    elif commit is not None and from_tags is not None:
        if commit == from_tags:
            debug_log.write(LogKind.INFO, "Popped gitiles commit info from properties and tags")
        else:
            debug_log.write(
                LogKind.INFO,
                "crbug.com/1182002: Gitiles commit from triggers doesn't match the one from tags",
            )
            debug_log.write(LogKind.INFO, "From triggers:\n" + json_block(commit.to_json()))
            debug_log.write(LogKind.INFO, "From properties:\n" + json_block(from_tags.to_json()))
            debug_log.write(LogKind.INFO, "Using the one from tags")
            commit = from_tags
    out: dict[str, Any] = {
        "requestId": str(invocation_id),
        "builder": builder,
        "properties": _struct(props),
    }
    if commit is not None:
        out["gitilesCommit"] = commit.to_json()
    out["tags"] = [
        {"key": key, "value": value} for key, _, value in (t.partition(":") for t in tags)
    ]
    return out


def build_status(build: dict[str, Any]) -> str:
    """A build's status by name, as LUCI prints it: protojson leaves the zero value out (and
    reads null as it), so no status is STATUS_UNSPECIFIED; a number is its name, or itself
    when buildbucket.v2.Status has no such value."""
    status = build.get("status")
    if status is None:
        return "STATUS_UNSPECIFIED"
    if isinstance(status, int) and not isinstance(status, bool):
        return _STATUS_NAMES.get(status, str(status))
    return str(status)


def invocation_status(build: dict[str, Any], debug_log: DebugLog) -> Status | None:
    """The invocation status a build's status means; None while the build is active."""
    status = build_status(build)
    if status in _ACTIVE:
        return None
    if status in _STATUS_MAP:
        return _STATUS_MAP[status]
    debug_log.write(
        LogKind.ERROR, f"Unexpected Build status {status}, marking the invocation as failed"
    )
    return Status.FAILED


def _explain_refusal(ctl: Controller, error: RpcError) -> None:
    """Who was refused and which permission it lacks, when the server refused the caller."""
    if error.hint:
        ctl.debug_log.write(LogKind.ERROR, error.hint)


class BuildbucketKind:
    name: ClassVar[str] = "buildbucket"
    config_model: ClassVar[type[BuildbucketConfig]] = BuildbucketConfig
    check_group_prefix: ClassVar[str] = "buildbucket:"

    def __init__(self, api: BuildsAPI, rng: random.Random | None = None) -> None:
        self._api = api
        self._rng = rng or random.Random()

    def launch(self, ctl: Controller) -> None:
        self._schedule(ctl, rerun=0)
        self._check_later(ctl)

    def _schedule(self, ctl: Controller, rerun: int) -> None:
        """ScheduleBuild: the invocation's build (rerun 0), or its `rerun`th rerun, whose
        requestId is its own (so a retried event asks for the same build again) and whose
        `rerun_of` tag names the build before it."""
        cfg: BuildbucketConfig = ctl.config
        request = build_schedule_request(
            cfg,
            job_id=ctl.job_id,
            invocation_id=ctl.invocation_id,
            triggers=ctl.triggers,
            app_id=ctl.settings.app_id,
            hostname=ctl.settings.hostname,
            debug_log=ctl.debug_log,
        )
        builds = list(ctl.task_data.get("builds", ()))
        if rerun:
            request["requestId"] = f"{ctl.invocation_id}-rerun-{rerun}"
            request["tags"].append({"key": "rerun_of", "value": builds[-1]["id"]})
        url = server_url(cfg.server)
        ctl.debug_log.write(LogKind.INFO, f"Preparing PubSub topic for {go_quote(url)}")
        try:
            topic, token = ctl.prepare_topic(self._api.publisher_account(cfg.server))
        except Exception as e:
            ctl.debug_log.write(LogKind.ERROR, f"Failed to prepare PubSub topic - {e}")
            raise TransientError(f"failed to prepare PubSub topic - {e}") from e
        ctl.debug_log.write(LogKind.INFO, f"PubSub topic is {go_quote(topic)}")
        request["notify"] = {"pubsubTopic": topic}
        ctl.debug_log.write(LogKind.REQUEST, "Buildbucket request:\n" + json_block(request))
        # The token goes in only after the request was logged: it must not reach the log.
        request["notify"]["userData"] = base64.b64encode(token.encode()).decode("ascii")
        if not rerun:
            ctl.save()  # an event handler keeps nothing of a try that raises: no save there
        try:
            build = self._api.schedule_build(cfg.server, request)
        except RpcError as e:
            ctl.debug_log.write(
                LogKind.ERROR, f"Failed to schedule Buildbucket build - {e}", call=SCHEDULE_BUILD
            )
            _explain_refusal(ctl, e)
            raise (TransientError if e.transient else TaskError)(str(e)) from e
        ctl.debug_log.write(
            LogKind.BUILD, "Scheduled build:\n" + json_block(build), call=SCHEDULE_BUILD
        )
        ctl.status = Status.RUNNING
        ctl.view_url = f"{url}/build/{build['id']}"
        builds.append({"id": str(build["id"]), "status": "", "view_url": ctl.view_url})
        ctl.task_data = {
            "build_id": str(build["id"]),
            "update_time": build.get("updateTime"),
            "builds": builds,
        }
        ctl.debug_log.write(LogKind.INFO, f"Task URL: {ctl.view_url}")
        # A retried request with the same requestId may find the build finished already.
        self._take_status(ctl, build, invocation_status(build, ctl.debug_log))

    def examine_notification(self, message: PubSubMessage) -> str | None:
        if token := message.attributes.get("auth_token"):
            return token
        try:
            body = json.loads(message.data)
        except (ValueError, RecursionError):  # deep nesting is refused with RecursionError
            return None
        if not isinstance(body, dict):
            return None
        if isinstance(user_data := body.get("userData"), str):
            try:
                return base64.b64decode(user_data, validate=True).decode("utf-8")
            except ValueError:
                return None
        legacy = body.get("user_data")
        return legacy if isinstance(legacy, str) and legacy else None

    def handle_notification(self, ctl: Controller, message: PubSubMessage) -> None:
        build = self._build_in(message) if ctl.settings.status_policy == "shepherd" else None
        if (
            build is None
            or ctl.status is not Status.RUNNING
            or build.get("id") != ctl.task_data.get("build_id")
        ):
            ctl.debug_log.write(
                LogKind.NOTIFICATION,
                "Received PubSub notification, asking Buildbucket for the build status",
            )
            self._check_status(ctl)
            return
        # The message is authentic (its signed userData names this invocation, and only
        # Buildbucket may publish to the topic) and carries the whole build: no GetBuild needed.
        if not self._is_news(ctl, build):
            ctl.debug_log.write(
                LogKind.NOTIFICATION,
                "Received PubSub notification, nothing newer than what is known",
            )
            return
        ctl.debug_log.write(
            LogKind.NOTIFICATION,
            f"Received PubSub notification with the build as of {build['updateTime']}",
        )
        self._apply(ctl, build, call=None)

    def handle_timer(self, ctl: Controller, name: str, payload: dict[str, Any] | None) -> None:
        if name == STATUS_CHECK_TIMER:
            self._check_status(ctl)
            self._check_later(ctl)

    def abort(self, ctl: Controller) -> None:
        if ctl.status is Status.STARTING:
            raise TransientError(f'can\'t abort Buildbucket invocation in state "{ctl.status}"')
        build_id = self._build_id(ctl)
        # CancelBuild writes no line of its own: it follows the engine's abort or timeout line.
        ctl.debug_log.record_call(CANCEL_BUILD)
        try:
            self._api.cancel_build(ctl.config.server, build_id, "Canceled via shepherd")
        except RpcError as e:
            _explain_refusal(ctl, e)
            raise (TransientError if e.transient else TaskError)(str(e)) from e

    def _build_id(self, ctl: Controller) -> str:
        build_id = ctl.task_data.get("build_id")
        if not isinstance(build_id, str):
            ctl.status = Status.FAILED
            raise TaskError("could not parse TaskData: no build_id")
        return build_id

    @staticmethod
    def _build_in(message: PubSubMessage) -> dict[str, Any] | None:
        """The build a v2 notification carries, if it has what a status check needs."""
        try:
            build = json.loads(message.data)["buildPubsub"]["build"]
            parse_rfc3339(build["updateTime"])
        except (ValueError, RecursionError, KeyError, TypeError):
            return None
        return build if isinstance(build.get("id"), str) and "status" in build else None

    @staticmethod
    def _is_news(ctl: Controller, build: dict[str, Any]) -> bool:
        known = ctl.task_data.get("update_time")
        return known is None or parse_rfc3339(build["updateTime"]) > parse_rfc3339(known)

    def _check_later(self, ctl: Controller) -> None:
        if ctl.status.final:
            return
        if (group := self.check_group_of(ctl.config, ctl.settings)) is not None:
            every = format_duration(ctl.settings.status_check_max)
            ctl.debug_log.write(
                LogKind.INFO,
                f"The build's status is checked every {every} with every running build of "
                f"{ctl.config.server}, in Batch calls",
            )
            ctl.check_with_group(group)
            return
        low, high = ctl.settings.status_check_min, ctl.settings.status_check_max
        if ctl.settings.status_policy == "shepherd":
            # Notifications bring the news; the check is the fallback that bounds staleness to
            # status_check_max, so it comes exactly that late.
            delay = high
        else:
            delay = low + (self._rng.randrange(high - low) if high > low else 0)
        ctl.add_timer(delay - delay % SECOND, STATUS_CHECK_TIMER)

    def _apply(self, ctl: Controller, build: dict[str, Any], call: str | None) -> None:
        """Takes in a build that `call` fetched (None: a notification brought it)."""
        if "updateTime" in build:
            ctl.task_data = {**ctl.task_data, "update_time": build["updateTime"]}
        if (final := invocation_status(build, ctl.debug_log)) is not None:
            ctl.debug_log.write(LogKind.BUILD, "Build:\n" + json_block(build), call=call)
        else:
            ctl.debug_log.write(
                LogKind.BUILD_STATUS, f"Build status: {build_status(build)}", call=call
            )
        self._take_status(ctl, build, final)

    def _take_status(self, ctl: Controller, build: dict[str, Any], final: Status | None) -> None:
        """The build's status becomes the invocation's once `final`, unless the job reruns it."""
        status = build_status(build)
        builds = ctl.task_data.get("builds")
        if builds:  # an invocation stored before builds were listed has none
            latest = {**builds[-1], "status": status}
            ctl.task_data = {**ctl.task_data, "builds": [*builds[:-1], latest]}
        if final is None:
            return
        reruns: Reruns = ctl.config.reruns
        done = max(len(builds or ()) - 1, 0)
        if status in reruns.on and done < reruns.max and not ctl.abort_requested:
            ctl.debug_log.write(
                LogKind.INFO,
                f"Build {build['id']} ended with status {status}, which reruns.on lists: "
                f"rerun {done + 1} of at most {reruns.max}",
            )
            self._schedule(ctl, rerun=done + 1)
            return
        ctl.status = final

    # --- status_policy "batched": one check chain per server ---

    def check_group_of(self, config: BuildbucketConfig, settings: Settings) -> str | None:
        if settings.status_policy != "batched":
            return None
        return self.check_group_prefix + config.server

    def check_group(
        self, group: str, invocations: Sequence[Invocation], settings: Settings
    ) -> dict[int, dict[str, Any] | RpcError]:
        """Every member's build in Batch calls of up to status_check_batch_size; a failed call
        is a transient error (the whole check comes again) or, refused, each member's error."""
        server = group.removeprefix(self.check_group_prefix)
        members = [
            (inv.id, build_id)
            for inv in invocations
            if isinstance(build_id := inv.task_data.get("build_id"), str)
        ]
        found: dict[int, dict[str, Any] | RpcError] = {}
        size = settings.status_check_batch_size
        for start in range(0, len(members), size):
            chunk = members[start : start + size]
            try:
                answers: Sequence[dict[str, Any] | RpcError] = self._api.batch_get_builds(
                    server, [build_id for _, build_id in chunk]
                )
            except RpcError as e:
                if e.transient:
                    raise TransientError(f"Batch: {e}") from e
                answers = [e] * len(chunk)
            if len(answers) != len(chunk):
                raise TransientError(f"Batch: {len(answers)} answers to {len(chunk)} requests")
            found.update((inv_id, a) for (inv_id, _), a in zip(chunk, answers, strict=True))
        return found

    def handle_group_check(self, ctl: Controller, found: dict[str, Any] | RpcError) -> None:
        if ctl.status is not Status.RUNNING:
            return
        if isinstance(found, RpcError):
            self._fetch_failed(ctl, found, call=BATCH)
        # A build a rerun replaced, or nothing newer than what is known: nothing to write.
        if found.get("id") != ctl.task_data.get("build_id") or not self._is_news(ctl, found):
            return
        self._apply(ctl, found, call=BATCH)

    def _check_status(self, ctl: Controller) -> None:
        if ctl.status is Status.STARTING:
            raise TransientError("invocation is still starting, try again later")
        if ctl.status is not Status.RUNNING:
            raise TaskError(f'unexpected invocation status "{ctl.status}", expecting "RUNNING"')
        build_id = self._build_id(ctl)
        try:
            build = self._api.get_build(ctl.config.server, build_id)
        except RpcError as e:
            self._fetch_failed(ctl, e, call=GET_BUILD)
        self._apply(ctl, build, call=GET_BUILD)

    @staticmethod
    def _fetch_failed(ctl: Controller, error: RpcError, call: str) -> NoReturn:
        """A build that could not be fetched: the event comes again if the error is transient,
        the invocation fails otherwise."""
        ctl.debug_log.write(LogKind.ERROR, f"Failed to fetch build - {error}", call=call)
        _explain_refusal(ctl, error)
        if error.transient:
            raise TransientError(str(error)) from error
        ctl.status = Status.FAILED
        raise TaskError(str(error)) from error
