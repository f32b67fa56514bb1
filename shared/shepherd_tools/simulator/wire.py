"""pRPC bodies as Buildbucket's protos read and write them (protojson)."""

from __future__ import annotations

import json
import math
import re
import sys
import zlib
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from shepherd.grpc_codes import Code, RpcError

from .pb.buildbucket.proto import build_pb2, notification_pb2

M = TypeVar("M", bound=Message)
Json = dict[str, Any]


class DecodeError(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise DecodeError(f"invalid JSON value {name}")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> Json:
    out: Json = {}
    for key, value in pairs:
        if key in out:
            raise DecodeError(f"duplicate field {json.dumps(key)}")
        out[key] = value
    return out


def _check_finite(value: Any) -> None:
    # JSON has no NaN or Infinity; a number too large for a double (1e400) is refused as
    # Go's protojson refuses it ("invalid value for double type").
    if isinstance(value, float) and not math.isfinite(value):
        raise DecodeError(f"invalid value for a number: {value}")
    if isinstance(value, int) and abs(value) > sys.float_info.max:
        raise DecodeError("invalid value for a number: beyond a double")
    if isinstance(value, dict):
        for item in value.values():
            _check_finite(item)
    elif isinstance(value, list):
        for item in value:
            _check_finite(item)


# Go's protojson takes standard or URL-safe base64, padded or not, and nothing else; Python's
# json_format drops the characters it does not know.
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}|[A-Za-z0-9\-_]*={0,2}")


def _check_bytes(body: Any, descriptor: Descriptor) -> None:
    if not isinstance(body, dict) or descriptor.full_name.startswith("google.protobuf."):
        return
    fields = {f.json_name: f for f in descriptor.fields} | {f.name: f for f in descriptor.fields}
    for key, value in body.items():
        field = fields.get(key)
        if field is None or value is None:
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            for item in value.values() if isinstance(value, dict) else ():
                _check_value(item, value_field)
        elif field.is_repeated and isinstance(value, list):
            for item in value:
                _check_value(item, field)
        else:
            _check_value(value, field)


def _check_value(value: Any, field: FieldDescriptor) -> None:
    if field.type == FieldDescriptor.TYPE_BYTES:
        if isinstance(value, str) and not _BASE64.fullmatch(value):
            raise DecodeError(f"invalid value for bytes field {field.json_name}: {value!r}")
    elif field.message_type is not None:
        _check_bytes(value, field.message_type)


def parse_json(raw: bytes) -> Any:
    """JSON as Go's decoder reads it: no NaN/Infinity literals, no duplicate keys."""
    try:
        value = json.loads(raw, parse_constant=_refuse_constant, object_pairs_hook=_no_duplicates)
    except DecodeError:
        raise
    except (ValueError, RecursionError) as e:
        raise DecodeError(f"syntax error: {e}") from None
    _check_finite(value)
    return value


def decode(body: Any, message_type: type[M]) -> M:
    """A request message from its parsed JSON, strictly: unknown fields and bad values refused.

    Raises INVALID_ARGUMENT "could not decode body: ..." as pRPC does (its own decoder skips
    unknown fields; the simulator refuses them, so a misspelt field is found here).
    """
    message = message_type()
    try:
        if isinstance(body, (bytes, bytearray)):
            body = parse_json(bytes(body) or b"{}")
        else:
            _check_finite(body)
        if not isinstance(body, dict):
            raise DecodeError("the body is not a JSON object")
        _check_bytes(body, message.DESCRIPTOR)
        json_format.ParseDict(body, message, ignore_unknown_fields=False)
    except (DecodeError, json_format.ParseError) as e:
        raise RpcError(Code.INVALID_ARGUMENT, f"could not decode body: {e}") from None
    return message


def encode(message: Message) -> Json:
    """protojson with Go's defaults: camelCase names, zero values left out."""
    return json_format.MessageToDict(message)


def notification(build: build_pb2.Build, user_data: bytes) -> Json:
    """The PubSubCallBack of notification.go: input/output properties and steps move out of
    the build into buildLargeFields, a zlib-compressed serialized Build (the default topic
    compression)."""
    small = build_pb2.Build()
    small.CopyFrom(build)
    large = build_pb2.Build()
    # Go sets Input and Output in any case, and their properties only when the build has them.
    large.input.SetInParent()
    large.output.SetInParent()
    if build.input.HasField("properties"):
        large.input.properties.CopyFrom(build.input.properties)
    if build.output.HasField("properties"):
        large.output.properties.CopyFrom(build.output.properties)
    large.steps.extend(build.steps)
    small.ClearField("steps")
    if small.HasField("input"):
        small.input.ClearField("properties")
    if small.HasField("output"):
        small.output.ClearField("properties")
    callback = notification_pb2.PubSubCallBack(
        build_pubsub=notification_pb2.BuildsV2PubSub(
            build=small,
            build_large_fields=zlib.compress(large.SerializeToString()),
        ),
        user_data=user_data,
    )
    return encode(callback)


def large_fields(data: Json) -> build_pb2.Build:
    """The build's large fields back out of a notification's data (for tests and tools)."""
    raw = json_format.ParseDict(data, notification_pb2.PubSubCallBack())
    return build_pb2.Build.FromString(zlib.decompress(raw.build_pubsub.build_large_fields))
