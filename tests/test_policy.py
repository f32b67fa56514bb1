"""Triggering policies: luci-go's policy tests replayed through `decide` on a port of luci's
simulator, luci's validation cases through `parse_policy`, and the invariants as properties."""

from __future__ import annotations

import heapq
import itertools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shepherd.durations import HOUR, MINUTE, SECOND, format_duration, parse_duration
from shepherd.policy import (
    DEFAULT_POLICY,
    MAX_PENDING,
    Decision,
    TriggeringPolicy,
    _batching,
    decide,
    excess_message,
    parse_policy,
    sort_key,
    split_excess,
)

CASES = json.loads((Path(__file__).parent / "data" / "luci_policy_cases.json").read_text())


@dataclass(frozen=True)
class Trigger:
    id: str
    created_ns: int
    order: int = 0


@dataclass
class Invocation:
    triggers: tuple[Trigger, ...]
    created_ns: int
    running: bool = True


Policy = Callable[[int, int, Sequence[Trigger]], Decision[Trigger]]


class Simulator:
    """luci's simulator.go: every invocation runs for the same time; a triage follows each
    addition of triggers and each completion. A trigger id is accepted once, ever."""

    def __init__(self, policy: Policy, duration_ns: int, epoch_ns: int = 0) -> None:
        self.policy = policy
        self.duration_ns = duration_ns
        self.epoch_ns = self.now_ns = epoch_ns
        self.pending: list[Trigger] = []
        self.invocations: list[Invocation] = []
        self.discarded: list[Trigger] = []
        self.log: list[str] = []
        self.most_running = 0
        self._completions: list[tuple[int, int, Invocation]] = []
        self._seen: set[str] = set()
        # One counter for all arrivals, so insertion order is sort_key order as luci's
        # simulator assumes (it never sorts).
        self._arrivals = itertools.count()

    def add(self, delay_ns: int, ids: Sequence[str]) -> None:
        self.advance(delay_ns)
        for trigger_id in ids:
            if trigger_id not in self._seen:
                self._seen.add(trigger_id)
                self.pending.append(Trigger(trigger_id, self.now_ns, next(self._arrivals)))
        self._triage()

    def advance(self, delay_ns: int) -> None:
        assert delay_ns >= 0
        deadline = self.now_ns + delay_ns
        while self._completions and self._completions[0][0] <= deadline:
            self.now_ns, _, inv = heapq.heappop(self._completions)
            inv.running = False
            self._triage()
        self.now_ns = deadline

    def _triage(self) -> None:
        assert self.pending == sorted(self.pending, key=sort_key)
        running = sum(inv.running for inv in self.invocations)
        decision = self.policy(self.now_ns, running, tuple(self.pending))
        self.log.extend(decision.log)
        for batch in decision.batches:
            inv = Invocation(batch, self.now_ns)
            self.invocations.append(inv)
            eta = self.now_ns + self.duration_ns
            heapq.heappush(self._completions, (eta, len(self.invocations), inv))
        self.most_running = max(self.most_running, sum(i.running for i in self.invocations))
        started = {t.id for batch in decision.batches for t in batch}
        thrown = {t.id for t, _ in decision.discarded}
        assert not started & thrown
        self.discarded.extend(t for t in self.pending if t.id in thrown)
        self.pending = [t for t in self.pending if t.id not in started | thrown]

    def state(self) -> dict[str, Any]:
        return {
            "now": format_duration(self.now_ns - self.epoch_ns),
            "pending": [t.id for t in self.pending],
            "discarded": [t.id for t in self.discarded],
            "invocations": [
                {
                    "triggers": [t.id for t in inv.triggers],
                    "created": format_duration(inv.created_ns - self.epoch_ns),
                    "running": inv.running,
                }
                for inv in self.invocations
            ],
        }


def policy_of(case: dict[str, Any]) -> Policy:
    policy = parse_policy(case["policy"])
    if case.get("reducer") == "always_0":
        return lambda now, active, pending: _batching(policy, active, pending, lambda n: 0)
    return lambda now, active, pending: decide(policy, now, active, pending)


def check_go_asserts(sim: Simulator, asserts: dict[str, Any]) -> None:
    ids = [[t.id for t in inv.triggers] for inv in sim.invocations]
    got: dict[str, Any] = {
        "pending_count": len(sim.pending),
        "invocation_count": len(sim.invocations),
        "discarded_count": len(sim.discarded),
    }
    if sim.invocations:
        got["last_trigger_ids"] = ids[-1]
        got["last_trigger_ids_count"] = len(ids[-1])
        got["last_built_from"] = ids[-1][-1]
    got["invocation_trigger_ids"] = {
        str(i): ids[i] for i in map(int, asserts.get("invocation_trigger_ids", {}))
    }
    got["invocation_running"] = {
        str(i): sim.invocations[i].running for i in map(int, asserts.get("invocation_running", {}))
    }
    assert {key: got.get(key) for key in asserts} == asserts


@pytest.mark.parametrize("case", CASES["simulations"], ids=lambda c: c["source"].split(":")[1])
def test_luci_simulations_replay_exactly(case: dict[str, Any]) -> None:
    sim = Simulator(policy_of(case), parse_duration(case["invocation_duration"]))
    for step in case["steps"]:
        if "add" in step:
            sim.add(parse_duration(step["add"]), step["triggers"])
        else:
            sim.advance(parse_duration(step["advance"]))
        assert sim.state() == step["state"]
        check_go_asserts(sim, step.get("go_asserts", {}))


def test_luci_long_simulation_of_five_days_of_commits() -> None:
    case = CASES["long_simulation"]
    table = case["minutes_between_commits_by_hour_utc"]
    sim = Simulator(
        policy_of(case), parse_duration(case["invocation_duration"]), case["epoch_unix_ns"]
    )
    commits = 0
    while sim.now_ns - sim.epoch_ns <= parse_duration(case["duration"]):
        hour = datetime.fromtimestamp(sim.now_ns // SECOND, tz=UTC).hour
        commits += 1
        sim.add(table[hour] * MINUTE, [f"t-{commits:03d}"])
    check_go_asserts(sim, case["go_asserts"])
    sizes = [len(inv.triggers) for inv in sim.invocations]
    assert {
        "commits": commits,
        "invocations": len(sim.invocations),
        "pending_at_end": len(sim.pending),
        "discarded": len(sim.discarded),
        "max_batch_seen": max(sizes),
        "min_batch_seen": min(sizes),
    } == case["summary"]
    assert sim.most_running == 2


@pytest.mark.parametrize("case", CASES["constructor"], ids=lambda c: c["source"].split("/")[-1])
def test_luci_constructor_errors(case: dict[str, Any]) -> None:
    with pytest.raises(ValueError) as error:
        TriggeringPolicy(**case["constructor"])
    assert str(error.value) == case["error"]
    with pytest.raises(ValueError) as error:
        parse_policy(case["config"])
    assert str(error.value) == case["config_error"]


@pytest.mark.parametrize("case", CASES["validation"], ids=lambda c: json.dumps(c["config"]))
def test_luci_validation_cases(case: dict[str, Any]) -> None:
    if case["error"] is None:
        assert parse_policy(case["config"]).kind == case["config"].get("kind", "greedy_batching")
        return
    with pytest.raises(ValueError) as error:
        parse_policy(case["config"])
    assert case["error"] in str(error.value)


def test_luci_engine_order_and_excess() -> None:
    (ordering,) = CASES["ordering"]
    triggers = [Trigger(t["id"], t["created_s"] * SECOND) for t in ordering["triggers"]]
    assert [t.id for t in sorted(triggers, key=sort_key)] == ordering["sorted"]
    (excess,) = CASES["excess"]
    triggers = sorted(
        (Trigger(t["id"], t["created_s"] * SECOND) for t in excess["triggers"]), key=sort_key
    )
    kept, dropped = split_excess(triggers, excess["limit"])
    assert ([t.id for t in kept], [t.id for t in dropped]) == (excess["kept"], excess["dropped"])
    assert excess_message(len(dropped), excess["limit"]) == excess["log"]


def test_order_within_an_arrival_comes_before_the_id() -> None:
    triggers = [Trigger("a", 5, order=2), Trigger("b", 5, order=1), Trigger("c", 4, order=9)]
    assert [t.id for t in sorted(triggers, key=sort_key)] == ["c", "b", "a"]


def test_more_than_max_pending_drops_the_oldest() -> None:
    triggers = [Trigger(f"t{i}", i) for i in range(MAX_PENDING + 3)]
    kept, dropped = split_excess(triggers)
    assert [t.id for t in dropped] == ["t0", "t1", "t2"]
    assert len(kept) == MAX_PENDING and kept[0].id == "t3"
    assert excess_message(3) == "Too many pending triggers (>1000), dropping 3 oldest"
    assert split_excess(triggers[:5]) == (tuple(triggers[:5]), ())


def ids(decision: Decision[Trigger]) -> tuple[list[list[str]], list[str]]:
    return [[t.id for t in b] for b in decision.batches], [t.id for t, _ in decision.discarded]


def pending(count: int, created_ns: int = 0) -> list[Trigger]:
    return [Trigger(f"t{i + 1}", created_ns, i) for i in range(count)]


REFUSING = "Max concurrent invocations is 2 and there's 2 running => refusing to launch more"


def test_batching_policies_log_refusal_only_with_triggers_pending() -> None:
    for kind in ("greedy_batching", "logarithmic_batching"):
        policy = TriggeringPolicy(kind=kind, max_concurrent_invocations=2)
        assert decide(policy, 0, 2, pending(3)) == Decision(log=(REFUSING,))
        assert decide(policy, 0, 2, []) == Decision()
        assert decide(policy, 0, 0, []) == Decision()


def test_newest_first_expires_even_when_full_and_logs_even_when_empty() -> None:
    policy = TriggeringPolicy(
        kind="newest_first", max_concurrent_invocations=2, pending_timeout_ns=HOUR
    )
    old = [Trigger("old", 0), Trigger("edge", 30 * MINUTE, 1), Trigger("new", 31 * MINUTE, 2)]
    full = decide(policy, 90 * MINUTE, 2, old)
    assert ids(full) == ([], ["old", "edge"])
    assert full.log == (REFUSING,)
    assert full.discarded[1][1] == "pending for 1h0m0s, not less than pending_timeout (1h0m0s)"
    assert decide(policy, 0, 2, []).log == (REFUSING,)
    assert ids(decide(policy, 90 * MINUTE, 1, old)) == ([["new"]], ["old", "edge"])


def test_logarithmic_recomputes_the_size_for_each_batch() -> None:
    policy = TriggeringPolicy(kind="logarithmic_batching", max_concurrent_invocations=3)
    # log2(8) = 3, then log2(5) = 2.32 -> 2, then log2(3) = 1.58 -> 1
    assert ids(decide(policy, 0, 0, pending(8)))[0] == [["t1", "t2", "t3"], ["t4", "t5"], ["t6"]]


@pytest.mark.parametrize(
    ("count", "base", "size"),
    [
        (1, 2.0, 1),
        (3, 2.0, 1),
        (5, 2.0, 2),
        (9, 2.0, 3),
        (11, 2.0, 3),
        (128, 2.0, 7),
        (1000, 10.0, 2),
        (10, 1.0001, 10),
    ],
)
def test_logarithmic_batch_size_rounds_down_and_takes_at_least_one(
    count: int, base: float, size: int
) -> None:
    policy = TriggeringPolicy(kind="logarithmic_batching", log_base=base)
    ((batch,),) = [decide(policy, 0, 0, pending(count)).batches]
    assert len(batch) == size


def test_greedy_batches_are_uneven_and_taken_from_the_oldest() -> None:
    policy = TriggeringPolicy(max_concurrent_invocations=3, max_batch_size=3)
    assert ids(decide(policy, 0, 1, pending(7))) == ([["t1", "t2", "t3"], ["t4", "t5", "t6"]], [])


def test_defaults_and_json_form() -> None:
    assert parse_policy({}) == DEFAULT_POLICY == TriggeringPolicy()
    assert DEFAULT_POLICY.to_json() == {
        "kind": "greedy_batching",
        "max_concurrent_invocations": 1,
        "max_batch_size": 1000,
    }
    newest = parse_policy({"kind": "newest_first"})
    assert newest.pending_timeout_ns == 168 * HOUR
    assert newest.to_json() == {
        "kind": "newest_first",
        "max_concurrent_invocations": 1,
        "pending_timeout": "168h0m0s",
    }
    log = parse_policy({"kind": "logarithmic_batching", "log_base": 3})
    assert log.to_json()["log_base"] == 3.0 and isinstance(log.log_base, float)
    # luci ignores a field that does not apply to the kind; it keeps its default.
    assert parse_policy({"log_base": 0.5, "max_batch_size": 7}) == TriggeringPolicy(
        max_batch_size=7
    )
    assert parse_policy({"kind": "newest_first", "max_batch_size": 7}).max_batch_size == 1000


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("greedy", 'should be a table such as {kind = "greedy_batching"'),
        ({"kind": "GREEDY_BATCHING"}, 'unrecognized policy kind "GREEDY_BATCHING" (known: greedy_'),
        (
            {"max_concurrent_invocations": True},
            "max_concurrent_invocations should be an integer, got true",
        ),
        ({"max_concurrent_invocations": 1.5}, "should be an integer, got 1.5"),
        ({"max_concurrent_invocations": 1001}, "max_concurrent_invocations should be at most 1000"),
        ({"max_batch_size": 1001}, "max_batch_size should be at most 1000, got 1001"),
        (
            {"kind": "logarithmic_batching", "log_base": "2"},
            'log_base should be a finite number, got "2"',
        ),
        ({"kind": "logarithmic_batching", "log_base": math.inf}, "should be a finite number"),
        ({"kind": "logarithmic_batching", "log_base": 1.00009}, "got 1.000090"),
        ({"kind": "newest_first", "pending_timeout": "0s"}, "should be positive, got 0s"),
        ({"kind": "newest_first", "pending_timeout": 3600}, 'such as "24h", got 3600'),
        ({"kind": "newest_first", "pending_timeout": "1 hour"}, "pending_timeout: time: "),
        ({"kind": "logarithmic_batching", "pending_timeout": "1h"}, 'set with kind "logarithmic_'),
        ({"max_concurrent": 2}, 'unknown key "max_concurrent" (known: kind, max_concurrent_'),
        (
            {"max_batch_size": 0, "colour": "red"},
            'unknown key "colour" (known: kind, max_concurrent_invocations, max_batch_size, '
            "log_base, pending_timeout); max_batch_size should be positive, got 0",
        ),
    ],
)
def test_parse_policy_refuses_naming_the_problem(raw: Any, message: str) -> None:
    with pytest.raises(ValueError) as error:
        parse_policy(raw)
    assert message in str(error.value)


# ---------------------------------------------------------------- properties

policies = st.one_of(
    st.builds(
        TriggeringPolicy,
        kind=st.just("greedy_batching"),
        max_concurrent_invocations=st.integers(1, 5),
        max_batch_size=st.integers(1, 8),
    ),
    st.builds(
        TriggeringPolicy,
        kind=st.just("logarithmic_batching"),
        max_concurrent_invocations=st.integers(1, 5),
        max_batch_size=st.integers(1, 8),
        log_base=st.one_of(st.sampled_from([1.0001, 1.185, 2.0, 10.0]), st.floats(1.0001, 50)),
    ),
    st.builds(
        TriggeringPolicy,
        kind=st.just("newest_first"),
        max_concurrent_invocations=st.integers(1, 5),
        pending_timeout_ns=st.integers(1, 50),
    ),
)


@st.composite
def pendings(draw: st.DrawFn) -> list[Trigger]:
    created = draw(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 3)), max_size=30))
    triggers = [Trigger(f"t{i}", c, o) for i, (c, o) in enumerate(created)]
    return sorted(triggers, key=sort_key)


@given(policies, st.integers(0, 60), st.integers(0, 6), pendings())
def test_decide_invariants(
    policy: TriggeringPolicy, later: int, active: int, triggers: list[Trigger]
) -> None:
    now = later + max((t.created_ns for t in triggers), default=0)
    decision = decide(policy, now, active, triggers)
    slots = max(0, policy.max_concurrent_invocations - active)
    taken = [t for batch in decision.batches for t in batch]
    thrown = [t for t, _ in decision.discarded]
    # Each trigger at most once, in one batch or discarded; and in their original order.
    assert len({t.id for t in taken + thrown}) == len(taken) + len(thrown)
    assert all(t in triggers for t in taken + thrown)
    assert taken == sorted(taken, key=sort_key) and thrown == sorted(thrown, key=sort_key)
    assert len(decision.batches) <= slots
    assert all(0 < len(batch) <= policy.max_batch_size for batch in decision.batches)
    fresh = [t for t in triggers if now - t.created_ns < policy.pending_timeout_ns]
    if policy.kind == "newest_first":
        assert thrown == [t for t in triggers if now - t.created_ns >= policy.pending_timeout_ns]
        assert decision.batches == tuple((t,) for t in fresh[len(fresh) - min(slots, len(fresh)) :])
        return
    assert thrown == []
    assert taken == triggers[: len(taken)]
    greedy = min(len(triggers), slots * policy.max_batch_size)
    if policy.kind == "greedy_batching":
        assert len(taken) == greedy
    else:
        sizes = [len(batch) for batch in decision.batches]
        assert sizes == sorted(sizes, reverse=True) and len(taken) <= greedy
        assert bool(taken) == bool(slots and triggers)


@given(policies, st.lists(st.tuples(st.integers(0, 30), st.integers(0, 4)), max_size=25))
def test_simulated_triggers_are_never_lost_nor_over_run(
    policy: TriggeringPolicy, arrivals: list[tuple[int, int]]
) -> None:
    sim = Simulator(lambda now, active, p: decide(policy, now, active, p), duration_ns=20)
    names = (f"t{i}" for i in itertools.count())
    added = []
    for delay, count in arrivals:
        batch = [next(names) for _ in range(count)]
        added += batch
        sim.add(delay, batch)
    sim.advance(5000)
    started = [t.id for inv in sim.invocations for t in inv.triggers]
    assert sorted(started + [t.id for t in sim.discarded], key=lambda i: int(i[1:])) == added
    assert sim.pending == []
    assert sim.most_running <= policy.max_concurrent_invocations
    if policy.kind != "newest_first":
        assert sim.discarded == []


@given(pendings(), st.integers(0, 40))
def test_split_excess_keeps_the_newest(triggers: list[Trigger], limit: int) -> None:
    kept, dropped = split_excess(triggers, limit)
    assert list(dropped + kept) == triggers
    assert len(kept) == min(limit, len(triggers))


@given(policies)
def test_json_form_parses_back_to_the_same_policy(policy: TriggeringPolicy) -> None:
    assert parse_policy(policy.to_json()) == policy
