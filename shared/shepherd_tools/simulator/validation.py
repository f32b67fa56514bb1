"""Buildbucket's request validation, ported from luci-go with its error messages.

Sources: buildbucket/appengine/rpc/{schedule_build,common,get_build,cancel_build,batch}.go,
buildbucket/protoutil/builder.go and buildbucket/appengine/internal/clients/pubsub.go.
Each check returns the message Buildbucket answers with INVALID_ARGUMENT, or None. What needs
the datastore, the configs or IAM (bucket permissions, topic permissions, experiments that are
not well known, parent builds) is left out: the simulator serves every builder.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from google.protobuf import duration_pb2, struct_pb2

from .pb.buildbucket.proto import builds_service_pb2, common_pb2

# Go's regexp syntax, as printed by %q in the messages; matched here with Python's re.
PROJ_REGEX = r"^[a-z0-9\-_]+$"
BUCKET_REGEX = r"^[a-z0-9\-_.]{1,100}$"
BUILDER_REGEX = r"^[a-zA-Z0-9\-_.\(\) ]{1,128}$"
HOSTNAME_REGEX = r"^[a-z0-9][a-z0-9-]+(\.[a-z0-9-]+)*$"
SHA1_REGEX = r"^[a-f0-9]{40}$"
GITILES_COMMIT_REGEX = r"^commit/gitiles/([^/]+)/(.+?)/\+/([a-f0-9]{40})$"
GERRIT_CL_REGEX = r"^patch/gerrit/([^/]+)/(\d+)/(\d+)$"
TOPIC_NAME_REGEX = r"^projects/(.*)/topics/(.*)$"
CLOUD_PROJECT_ID_REGEX = r"^[a-z]([a-z0-9-]){4,28}[a-z0-9]$"
TOPIC_ID_REGEX = r"^[A-Za-z]([0-9A-Za-z\._\-~+%]){3,255}$"
DIMENSION_KEY_REGEX = r"^[a-zA-Z\-\_\.][0-9a-zA-Z\-\_\.]*$"
EXPERIMENT_NAME_REGEX = r"^[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)*$"
CIPD_REF_REGEX = r"^[a-z0-9_./\-]{1,256}$"
CIPD_TAG_KEY_REGEX = r"^[a-z0-9_\-]+$"
# From the service config in real Buildbucket; the simulator's has none.
WELL_KNOWN_EXPERIMENTS: frozenset[str] = frozenset()
BUILDSET_MAX_LENGTH = 1024
MAX_DIMENSION_KEY_LEN = 64
MAX_DIMENSION_VAL_LEN = 256
SUMMARY_MARKDOWN_MAX_LENGTH = 4000
USER_DATA_MAX_BYTES = 4096
RESERVED_TAG_KEYS = frozenset({"build_address"})
INTERNAL_REQUEST_ID_PREFIX = "__bb__:"
READ_REQS_SIZE_LIMIT = 1000
WRITE_REQS_SIZE_LIMIT = 200
PROHIBITED_PROPERTIES = (
    ("$recipe_engine/buildbucket",),
    ("$recipe_engine/runtime", "is_experimental"),
    ("$recipe_engine/runtime", "is_luci"),
    ("branch",),
    ("buildbucket",),
    ("buildername",),
    ("repository",),
)


def _q(text: str) -> str:
    """Go's %q of a string: double quotes, backslashes and quotes escaped."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _full(regex: str, text: str) -> bool:
    # Go's `$` matches only at the very end; Python's also before a final newline.
    return re.fullmatch(regex.removeprefix("^").removesuffix("$"), text) is not None


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


def validate_builder_id(b: common_pb2.BuilderID) -> str | None:
    parts = b.bucket.split(".")
    if not _full(PROJ_REGEX, b.project):
        return f"project must match {_q(PROJ_REGEX)}"
    if b.bucket and not _full(BUCKET_REGEX, b.bucket):
        return f"bucket must match {_q(BUCKET_REGEX)}"
    if b.builder and not _full(BUILDER_REGEX, b.builder):
        return f"builder must match {_q(BUILDER_REGEX)}"
    if b.bucket and parts[0] == "luci" and len(parts) > 2:
        return f"invalid use of v1 bucket in v2 API (hint: try {_q(parts[2])})"
    return None


def validate_required_builder_id(b: common_pb2.BuilderID) -> str | None:
    if (error := validate_builder_id(b)) is not None:
        return error
    if not b.bucket:
        return "bucket is required"
    if not b.builder:
        return "builder is required"
    return None


def validate_commit(cm: common_pb2.GitilesCommit) -> str | None:
    if not cm.host:
        return "host is required"
    if not cm.project:
        return "project is required"
    if cm.ref:
        if not cm.ref.startswith("refs/"):
            return "ref must match refs/.*"
    elif cm.position != 0:
        return "position requires ref"
    if cm.id and not _full(SHA1_REGEX, cm.id):
        return f"id must match {_q(SHA1_REGEX)}"
    if not cm.ref and not cm.id:
        return "one of id or ref is required"
    return None


def validate_commit_with_ref(cm: common_pb2.GitilesCommit) -> str | None:
    if not cm.ref:
        return "ref is required"
    return validate_commit(cm)


def validate_build_set(bs: str) -> str | None:
    if len("buildset:") + _utf8_len(bs) > BUILDSET_MAX_LENGTH:
        return "buildset tag is too long"
    if bs.startswith("commit/gitiles/"):
        m = re.match(GITILES_COMMIT_REGEX.removesuffix("$") + r"\Z", bs)
        if m is None:
            return f'does not match regex "{GITILES_COMMIT_REGEX}"'
        if m[2].startswith("a/"):
            return 'gitiles project must not start with "a/"'
        if m[2].endswith(".git"):
            return 'gitiles project must not end with ".git"'
    elif bs.startswith("patch/gerrit/") and not _full(GERRIT_CL_REGEX, bs):
        return f'does not match regex "{GERRIT_CL_REGEX}"'
    return None


def validate_key_length(key: str) -> str | None:
    if not key:
        return "the key cannot be empty"
    if _utf8_len(key) > MAX_DIMENSION_KEY_LEN:
        return f"the key should be no longer than {MAX_DIMENSION_KEY_LEN} (got {_utf8_len(key)})"
    return None


def validate_tag_value(value: str) -> str | None:
    if _utf8_len(value) > MAX_DIMENSION_VAL_LEN:
        size = _utf8_len(value)
        return f"the value should be no longer than {MAX_DIMENSION_VAL_LEN} (got {size})"
    # Go's strings.TrimSpace: Unicode white space.
    if value.strip() != value:
        return "the value should have no leading or trailing spaces"
    return None


def validate_tags(tags: Iterable[common_pb2.StringPair]) -> str | None:
    """validateTags in TagNew mode (ScheduleBuild)."""
    seen_builder = ""
    for tag in tags:
        k, v = tag.key, tag.value
        if ":" in k:
            return f"tag key {_q(k)} cannot have a colon"
        if k == "buildset" and (error := validate_build_set(v)) is not None:
            return error
        if k == "builder":
            if not seen_builder:
                seen_builder = v
            elif v != seen_builder:
                return f'tag "builder:{v}" conflicts with tag "builder:{seen_builder}"'
        if k in RESERVED_TAG_KEYS:
            return f'tag "{k}" is reserved'
        if (error := validate_key_length(k) or validate_tag_value(v)) is not None:
            return error
    return None


def validate_request_id(request_id: str, allow_internal: bool = False) -> str | None:
    if "/" in request_id:
        return "request_id cannot contain '/'"
    if not allow_internal and request_id.startswith(INTERNAL_REQUEST_ID_PREFIX):
        return f"request_id prefix {_q(INTERNAL_REQUEST_ID_PREFIX)} is reserved for internal use"
    return None


def validate_pubsub_topic_name(topic: str) -> str | None:
    m = re.match(r"projects/(.*)/topics/(.*)\Z", topic, re.DOTALL)
    if m is None:
        return f"topic {_q(topic)} does not match {_q(TOPIC_NAME_REGEX)}"
    cloud_project, topic_id = m[1], m[2]
    if not cloud_project.startswith("google.com:") and not _full(
        CLOUD_PROJECT_ID_REGEX, cloud_project
    ):
        return f"cloud project id {_q(cloud_project)} does not match {_q(CLOUD_PROJECT_ID_REGEX)}"
    if topic_id.startswith("goog"):
        return f"topic id {_q(topic_id)} shouldn't begin with the string goog"
    if not _full(TOPIC_ID_REGEX, topic_id):
        return f"topic id {_q(topic_id)} does not match {_q(TOPIC_ID_REGEX)}"
    return None


def validate_notification_config(n: common_pb2.NotificationConfig) -> str | None:
    """The format checks; whether Buildbucket may publish to the topic is not simulated."""
    if not n.pubsub_topic:
        return "pubsub_topic must be specified"
    if len(n.user_data) > USER_DATA_MAX_BYTES:
        return "user_data cannot exceed 4096 bytes"
    if (error := validate_pubsub_topic_name(n.pubsub_topic)) is not None:
        return f"invalid pubsub_topic {n.pubsub_topic}: {error}"
    return None


def validate_gerrit_change(ch: common_pb2.GerritChange) -> str | None:
    if ch.change == 0:
        return "change must be specified"
    if not ch.host:
        return "host must be specified"
    if not _full(HOSTNAME_REGEX, ch.host):
        return f"host does not match pattern {_q(HOSTNAME_REGEX)}"
    if len(ch.host) > 255:
        return "host must not exceed 255 characters"
    if ch.patchset == 0:
        return "patchset must be specified"
    if not ch.project:
        return "project must be specified"
    return None


def validate_requested_dimensions(dims: Iterable[common_pb2.RequestedDimension]) -> str | None:
    non_empty: set[str] = set()
    empty: set[str] = set()
    for i, dim in enumerate(dims):
        if error := _validate_requested_dimension(dim):
            return f"[{i}]: {error}"
        if dim.value == "":
            if dim.key in non_empty:
                return f"contain both empty and non-empty value for the same key - {_q(dim.key)}"
            empty.add(dim.key)
        else:
            if dim.key in empty:
                return f"contain both empty and non-empty value for the same key - {_q(dim.key)}"
            non_empty.add(dim.key)
    return None


def _validate_expiration(d: duration_pb2.Duration) -> str | None:
    if d.nanos != 0:
        return "nanos must not be specified"
    if d.seconds < 0:
        return "seconds must not be negative"
    if d.seconds % 60 != 0:
        return "seconds must be a multiple of 60"
    return None


def _validate_dimension(dim: common_pb2.RequestedDimension, allow_empty_value: bool) -> str | None:
    if (error := _validate_expiration(dim.expiration)) is not None:
        return f"expiration: {error}"
    if (error := validate_key_length(dim.key)) is not None:
        return error
    if not _full(DIMENSION_KEY_REGEX, dim.key):
        return f"the key should match {DIMENSION_KEY_REGEX}"
    if allow_empty_value and not dim.value:
        return None
    if not dim.value:
        return "the value cannot be empty"
    return validate_tag_value(dim.value)


def _validate_requested_dimension(dim: common_pb2.RequestedDimension) -> str | None:
    if (error := _validate_dimension(dim, allow_empty_value=True)) is not None:
        return error
    if dim.key == "caches":
        return "key: caches may only be specified in builder configs (cr-buildbucket.cfg)"
    if dim.key == "pool":
        return "key: pool may only be specified in builder configs (cr-buildbucket.cfg)"
    return None


def validate_properties(p: struct_pb2.Struct) -> str | None:
    for path in PROHIBITED_PROPERTIES:
        if _struct_contains(p, path):
            return f"{_q('.'.join(path))} must not be specified"
    return None


def _struct_contains(s: struct_pb2.Struct, path: tuple[str, ...]) -> bool:
    for key in path:
        if key not in s.fields:
            return False
        s = s.fields[key].struct_value
    return True


def validate_schedule(
    req: builds_service_pb2.ScheduleBuildRequest,
    well_known_experiments: frozenset[str] = WELL_KNOWN_EXPERIMENTS,
) -> str | None:
    """validateSchedule, then validateRequestID, as validateScheduleBuild calls them."""
    if not req.HasField("builder") and req.template_build_id == 0:
        return "builder or template_build_id is required"
    checks: list[tuple[bool, str, Callable[[], str | None]]] = [
        (req.HasField("builder"), "builder", lambda: validate_required_builder_id(req.builder)),
        (True, "dimensions", lambda: validate_requested_dimensions(req.dimensions)),
        (True, "exe", lambda: _validate_executable(req.exe)),
        (True, "gerrit_changes", lambda: _validate_gerrit_changes(req.gerrit_changes)),
        (
            req.HasField("gitiles_commit"),
            "gitiles_commit",
            lambda: validate_commit_with_ref(req.gitiles_commit),
        ),
        (req.HasField("notify"), "notify", lambda: validate_notification_config(req.notify)),
    ]
    for applies, field, check in checks:
        if applies and (error := check()) is not None:
            return f"{field}: {error}"
    if req.priority < 0 or req.priority > 255:
        return "priority must be in [0, 255]"
    if req.HasField("properties") and (error := validate_properties(req.properties)):
        return f"properties: {error}"
    # No parent build is ever found here: a parent needs a build token.
    if req.can_outlive_parent != common_pb2.UNSET:
        return "can_outlive_parent is specified without parent"
    if (error := validate_tags(req.tags)) is not None:
        return f"tags: {error}"
    for name in req.experiments:
        if (error := validate_experiment_name(name, well_known_experiments)) is not None:
            return f"experiment {_q(name)}: {error}"
    return validate_request_id(req.request_id)


def _validate_executable(exe: common_pb2.Executable) -> str | None:
    if exe.cipd_package:
        return "cipd_package must not be specified"
    if exe.cipd_version and (error := validate_cipd_version(exe.cipd_version)) is not None:
        return f"cipd_version: {error}"
    return None


def validate_cipd_version(version: str) -> str | None:
    """cipd's ValidateInstanceVersion: an instance id, a ref or a "key:value" tag."""
    instance_id = _full(r"^[0-9a-f]{40}$", version) or _full(r"^[0-9A-Za-z_\-]{44,}$", version)
    ref = _full(CIPD_REF_REGEX, version)
    key, colon, value = version.partition(":")
    tag = bool(colon) and _full(CIPD_TAG_KEY_REGEX, key) and value.strip(" ") == value != ""
    if instance_id or ref or (tag and len(version) <= 400):
        return None
    return f"bad version {_q(version)}: not an instance ID, a ref or a tag"


def validate_experiment_name(name: str, well_known: frozenset[str]) -> str | None:
    if not _full(EXPERIMENT_NAME_REGEX, name):
        return f"does not match {_q(EXPERIMENT_NAME_REGEX)}"
    if name.startswith("luci.") and name not in well_known:
        return 'unknown experiment has reserved prefix "luci."'
    return None


def _validate_gerrit_changes(changes: Iterable[common_pb2.GerritChange]) -> str | None:
    for i, ch in enumerate(changes):
        if (error := validate_gerrit_change(ch)) is not None:
            return f"[{i}]: {error}"
    return None


def validate_get(req: builds_service_pb2.GetBuildRequest) -> str | None:
    if req.id != 0:
        if req.HasField("builder") or req.build_number != 0:
            return "id is mutually exclusive with (builder and build_number)"
        return None
    if req.HasField("builder") and req.build_number != 0:
        if (error := validate_required_builder_id(req.builder)) is not None:
            return f"builder: {error}"
        return None
    return "one of id or (builder and build_number) is required"


def validate_cancel(req: builds_service_pb2.CancelBuildRequest) -> str | None:
    if req.id == 0:
        return "id is required"
    if not req.summary_markdown:
        return "summary_markdown is required"
    size = _utf8_len(req.summary_markdown)
    if size > SUMMARY_MARKDOWN_MAX_LENGTH:
        return f"summary_markdown: too big to accept ({size} > {SUMMARY_MARKDOWN_MAX_LENGTH} bytes)"
    return None


def validate_batch(req: builds_service_pb2.BatchRequest) -> str | None:
    reads = writes = 0
    for item in req.requests:
        kind = item.WhichOneof("request")
        if kind in ("get_build", "search_builds", "get_build_status"):
            reads += 1
        elif kind in ("schedule_build", "cancel_build"):
            writes += 1
        else:
            return "request includes an unsupported type"
    if reads > READ_REQS_SIZE_LIMIT:
        return f"the maximum allowed read request count in Batch is {READ_REQS_SIZE_LIMIT}."
    if writes > WRITE_REQS_SIZE_LIMIT:
        return f"the maximum allowed write request count in Batch is {WRITE_REQS_SIZE_LIMIT}."
    return None
