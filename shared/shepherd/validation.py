"""Validated frozen dataclasses for the job file and the request bodies, without pydantic.

pydantic costs more to import than everything else a function loads on its cold start, so the
models every function uses (the job file, the request bodies) validate with this instead. A
field's type comes from its annotation (str, int, bool, Any, Literal, X | None, list, tuple,
dict and nested models); its constraints are JSON Schema keywords (minLength, maxLength,
pattern, minimum, maximum) that openapi.py copies into the document as they are; `before`
converts the raw value instead of the type check, `after` checks the typed value. Errors have
pydantic's shape (`errors()` with `loc` and `msg`), so callers describe both alike.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable
from typing import Any, ClassVar, Literal, TypeVar

M = TypeVar("M", bound="Model")
_MISSING: Any = dataclasses.MISSING


class ValidationError(ValueError):
    def __init__(self, loc: tuple[str | int, ...], msg: str) -> None:
        super().__init__(f"{'.'.join(map(str, loc)) or 'input'}: {msg}")
        self.loc = loc
        self.msg = msg

    def errors(self, include_url: bool = False) -> list[dict[str, Any]]:
        return [{"loc": self.loc, "msg": self.msg, "type": "value_error"}]


def field(
    *,
    default: Any = _MISSING,
    default_factory: Any = _MISSING,
    before: Callable[[Any], Any] | None = None,
    after: Callable[[Any], Any] | None = None,
    alias: str | None = None,
    **schema: Any,
) -> Any:
    metadata = {"schema": schema, "before": before, "after": after, "alias": alias}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


class Model:
    """Base of the validated dataclasses (each also decorated with @dataclass(frozen=True))."""

    extra: ClassVar[Literal["forbid", "ignore"]] = "forbid"

    @classmethod
    def model_validate(cls: type[M], data: Any) -> M:
        return _model(cls, data, ())

    def check(self) -> None:
        """Checks across fields, after each field is valid: ValueError refuses the whole."""

    def model_copy(self: M, update: dict[str, Any] | None = None) -> M:
        return dataclasses.replace(self, **(update or {}))


_hints: dict[type, dict[str, Any]] = {}


def _type_hints(cls: type) -> dict[str, Any]:
    if cls not in _hints:
        _hints[cls] = typing.get_type_hints(cls)
    return _hints[cls]


def _model(cls: type[M], data: Any, loc: tuple[str | int, ...]) -> M:
    if not isinstance(data, dict):
        raise ValidationError(loc, "Input should be a valid dictionary or instance of the model")
    hints = _type_hints(cls)
    values: dict[str, Any] = {}
    known = set()
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        key = f.metadata.get("alias") or f.name
        known.add(key)
        if key not in data:
            if f.default is _MISSING and f.default_factory is _MISSING:
                raise ValidationError((*loc, key), "Field required")
            continue
        values[f.name] = _field(f, hints[f.name], data[key], (*loc, key))
    if cls.extra == "forbid":
        for key in data:
            if key not in known:
                raise ValidationError((*loc, key), "Extra inputs are not permitted")
    model = cls(**values)
    try:
        model.check()
    except ValueError as e:
        raise ValidationError(loc, str(e)) from None
    return model


def _field(f: dataclasses.Field[Any], hint: Any, value: Any, loc: tuple[str | int, ...]) -> Any:
    before, after = f.metadata.get("before"), f.metadata.get("after")
    try:
        value = before(value) if before else _typed(hint, value, loc)
        _constraints(f.metadata.get("schema", {}), value, loc)
        return after(value) if after else value
    except ValidationError:
        raise
    except ValueError as e:
        raise ValidationError(loc, str(e)) from None


def _typed(hint: Any, value: Any, loc: tuple[str | int, ...]) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _typed(inner, value, loc)
    if origin is Literal:
        if value not in args:
            raise ValidationError(loc, f"Input should be {' or '.join(map(repr, args))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ValidationError(loc, f"Input should be a valid {origin.__name__}")
        items = [_typed(args[0], v, (*loc, i)) for i, v in enumerate(value)]
        return origin(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ValidationError(loc, "Input should be a valid dictionary")
        return {_typed(args[0], k, loc): _typed(args[1], v, (*loc, k)) for k, v in value.items()}
    if isinstance(hint, type) and issubclass(hint, Model):
        return _model(hint, value, loc)
    expected = {str: "string", bool: "boolean", int: "integer"}.get(hint)
    if expected is None:
        raise TypeError(f"validation: unsupported type {hint!r}")
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ValidationError(loc, f"Input should be a valid {expected}")
    return value


def _constraints(schema: dict[str, Any], value: Any, loc: tuple[str | int, ...]) -> None:
    if value is None:
        return
    if "minLength" in schema and len(value) < schema["minLength"]:
        n = schema["minLength"]
        raise ValidationError(loc, f"String should have at least {n} character{'s' * (n > 1)}")
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        n = schema["maxLength"]
        raise ValidationError(loc, f"String should have at most {n} character{'s' * (n > 1)}")
    if "pattern" in schema and not re.search(schema["pattern"], value):
        raise ValidationError(loc, f"String should match pattern '{schema['pattern']}'")
    if "minimum" in schema and value < schema["minimum"]:
        raise ValidationError(loc, f"Input should be greater than or equal to {schema['minimum']}")
    if "maximum" in schema and value > schema["maximum"]:
        raise ValidationError(loc, f"Input should be less than or equal to {schema['maximum']}")
