"""Triggering policies: which pending triggers start invocations, as the LUCI Scheduler decides.

A port of luci-go's `scheduler/appengine/engine/policy` (greedy_batching, logarithmic_batching,
newest_first): `decide` is called on every triage with the job's pending triggers, oldest first,
and answers which batches start an invocation each and which triggers are discarded. Pure: no
I/O, standard library only (deployed functions import it).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from .durations import HOUR, format_duration, parse_duration

KINDS = ("greedy_batching", "logarithmic_batching", "newest_first")
DEFAULT_PENDING_TIMEOUT_NS = 168 * HOUR
# luci's maxAllowedTriggers: the oldest pending triggers beyond it are dropped before `decide`.
MAX_PENDING = 1000
MAX_CONCURRENT_INVOCATIONS = 1000
MAX_BATCH_SIZE = 1000
MIN_LOG_BASE = 1.0001

_FIELDS = ("kind", "max_concurrent_invocations", "max_batch_size", "log_base", "pending_timeout")


@dataclass(frozen=True)
class TriggeringPolicy:
    """A job's policy. Fields that do not apply to the kind are kept at their defaults."""

    kind: str = "greedy_batching"
    max_concurrent_invocations: int = 1
    max_batch_size: int = 1000
    log_base: float = 2.0  # logarithmic_batching only
    pending_timeout_ns: int = DEFAULT_PENDING_TIMEOUT_NS  # newest_first only

    def __post_init__(self) -> None:
        # luci's constructors' checks and texts, in their order (config-time checks: parse_policy).
        if self.kind not in KINDS:
            raise ValueError(f"unrecognized policy kind {self.kind!r}")
        if self.kind == "logarithmic_batching" and not self.log_base >= MIN_LOG_BASE:
            raise ValueError(f"log_base should be more or equal than {MIN_LOG_BASE}")
        if self.max_concurrent_invocations <= 0:
            raise ValueError("max_concurrent_invocations should be positive")
        if self.kind == "newest_first":
            if self.pending_timeout_ns <= 0:
                raise ValueError("pending_timeout should be positive")
        elif self.max_batch_size <= 0:
            raise ValueError("max_batch_size should be positive")

    def to_json(self) -> dict[str, Any]:
        """The TOML/JSON form parse_policy reads, with only the fields that apply to the kind."""
        out: dict[str, Any] = {
            "kind": self.kind,
            "max_concurrent_invocations": self.max_concurrent_invocations,
        }
        if self.kind == "newest_first":
            out["pending_timeout"] = format_duration(self.pending_timeout_ns)
        else:
            out["max_batch_size"] = self.max_batch_size
        if self.kind == "logarithmic_batching":
            out["log_base"] = self.log_base
        return out


DEFAULT_POLICY = TriggeringPolicy()


class PendingTrigger(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def created_ns(self) -> int: ...

    @property
    def order(self) -> int: ...  # its place among the triggers that arrived with it


T = TypeVar("T", bound=PendingTrigger)


def sort_key(trigger: PendingTrigger) -> tuple[int, int, str]:
    """Oldest first, as luci's isTriggerOlder: creation time, then order, then id."""
    return trigger.created_ns, trigger.order, trigger.id


@dataclass(frozen=True)
class Decision(Generic[T]):
    # Each batch (oldest first) starts one invocation, built from its newest trigger.
    batches: tuple[tuple[T, ...], ...] = ()
    discarded: tuple[tuple[T, str], ...] = ()  # (trigger, why)
    log: tuple[str, ...] = ()  # what luci's policies write to the triage log


def decide(policy: TriggeringPolicy, now_ns: int, active: int, pending: Sequence[T]) -> Decision[T]:
    """What to start and what to discard, given `active` running invocations and the pending
    triggers sorted by sort_key. Triggers in neither answer stay pending."""
    if policy.kind == "newest_first":
        return _newest_first(policy, now_ns, active, pending)
    if policy.kind == "logarithmic_batching":
        ln_base = math.log(policy.log_base)
        return _batching(policy, active, pending, lambda n: _log_size(n, ln_base))
    return _batching(policy, active, pending, lambda n: n)


def split_excess(
    pending: Sequence[T], limit: int = MAX_PENDING
) -> tuple[tuple[T, ...], tuple[T, ...]]:
    """(kept, dropped): the oldest triggers beyond `limit` are dropped without asking the policy."""
    excess = max(0, len(pending) - limit)
    return tuple(pending[excess:]), tuple(pending[:excess])


def excess_message(dropped: int, limit: int = MAX_PENDING) -> str:
    return f"Too many pending triggers (>{limit}), dropping {dropped} oldest"


def _refusing(policy: TriggeringPolicy, active: int) -> str:
    return (
        f"Max concurrent invocations is {policy.max_concurrent_invocations} "
        f"and there's {active} running => refusing to launch more"
    )


def _log_size(n: int, ln_base: float) -> int:
    # Go: min(max(floor(ln n / ln base), 1), n), in float64 as here.
    return int(min(max(math.floor(math.log(n) / ln_base), 1), n))


def _batching(
    policy: TriggeringPolicy, active: int, pending: Sequence[T], size_of: Callable[[int], int]
) -> Decision[T]:
    """luci's basePolicy: batches from the oldest end, one per free slot; `size_of` (the
    reducer) is asked again for each batch with the number of triggers still left."""
    slots = policy.max_concurrent_invocations - active
    if not pending:
        return Decision()
    if slots <= 0:
        return Decision(log=(_refusing(policy, active),))
    rest = tuple(pending)
    batches = []
    while slots > 0 and rest:
        wanted = size_of(len(rest))
        if wanted == 0:
            break
        if wanted > len(rest):
            raise AssertionError(f"the reducer asked for {wanted} of {len(rest)} triggers")
        size = min(policy.max_batch_size, wanted)
        batches.append(rest[:size])
        rest = rest[size:]
        slots -= 1
    return Decision(batches=tuple(batches))


def _newest_first(
    policy: TriggeringPolicy, now_ns: int, active: int, pending: Sequence[T]
) -> Decision[T]:
    timeout = policy.pending_timeout_ns
    # Age >= timeout expires (the boundary too), even when no slot is free.
    expired = bisect.bisect_right(pending, now_ns - timeout, key=lambda t: t.created_ns)
    discarded = tuple(
        (
            t,
            f"pending for {format_duration(now_ns - t.created_ns)}, "
            f"not less than pending_timeout ({format_duration(timeout)})",
        )
        for t in pending[:expired]
    )
    slots = policy.max_concurrent_invocations - active
    if slots <= 0:
        return Decision(discarded=discarded, log=(_refusing(policy, active),))
    fresh = pending[expired:]
    chosen = fresh[max(0, len(fresh) - slots) :]
    return Decision(batches=tuple((t,) for t in chosen), discarded=discarded)


def _describe(value: Any) -> str:
    """A value as TOML spells it."""
    if isinstance(value, bool):
        return str(value).lower()
    return f'"{value}"' if isinstance(value, str) else repr(value)


def _int_field(raw: Mapping[str, Any], key: str, maximum: int, errors: list[str]) -> int | None:
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, int):
        errors.append(f"{key} should be an integer, got {_describe(value)}")
    elif value <= 0:
        errors.append(f"{key} should be positive, got {value}")
    elif value > maximum:
        errors.append(f"{key} should be at most {maximum}, got {value}")
    else:
        return value
    return None


def parse_policy(raw: Any) -> TriggeringPolicy:
    """Validates the job file's `triggering_policy` table, with luci's messages where luci has
    them; every problem is reported at once, "; "-separated, as luci's validation does."""
    if isinstance(raw, TriggeringPolicy):
        return raw
    if not isinstance(raw, Mapping):
        raise ValueError(
            'should be a table such as {kind = "greedy_batching", max_concurrent_invocations = 1}'
        )
    errors: list[str] = []
    for key in raw:
        if key not in _FIELDS:
            errors.append(f'unknown key "{key}" (known: {", ".join(_FIELDS)})')
    kind = raw.get("kind", "greedy_batching")
    if kind not in KINDS:
        errors.append(f"unrecognized policy kind {_describe(kind)} (known: {', '.join(KINDS)})")
    values: dict[str, Any] = {"kind": kind}
    if "max_concurrent_invocations" in raw:
        count = _int_field(raw, "max_concurrent_invocations", MAX_CONCURRENT_INVOCATIONS, errors)
        values["max_concurrent_invocations"] = count
    # luci ignores max_batch_size with newest_first and log_base with the other kinds; so do we.
    if "max_batch_size" in raw:
        size = _int_field(raw, "max_batch_size", MAX_BATCH_SIZE, errors)
        if kind != "newest_first":
            values["max_batch_size"] = size
    if "log_base" in raw:
        base = raw["log_base"]
        if isinstance(base, bool) or not isinstance(base, int | float) or not math.isfinite(base):
            errors.append(f"log_base should be a finite number, got {_describe(base)}")
        elif kind == "logarithmic_batching":
            if base < MIN_LOG_BASE:
                errors.append(f"log_base should be larger or equal {MIN_LOG_BASE}, got {base:f}")
            values["log_base"] = float(base)
    if "pending_timeout" in raw:
        text = raw["pending_timeout"]
        if not isinstance(text, str):
            errors.append(
                f'pending_timeout should be a duration such as "24h", got {_describe(text)}'
            )
        else:
            try:
                timeout = parse_duration(text)
            except ValueError as e:
                errors.append(f"pending_timeout: {e}")
            else:
                if timeout <= 0:
                    errors.append(
                        f"pending_timeout should be positive, got {format_duration(timeout)}"
                    )
                values["pending_timeout_ns"] = timeout
        if kind in KINDS and kind != "newest_first":
            errors.append(
                f'pending_timeout is set with kind "{kind}", '
                'but pending_timeout applies only to kind "newest_first"'
            )
    if errors:
        raise ValueError("; ".join(errors))
    return TriggeringPolicy(**values)
