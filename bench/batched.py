"""`make bench` step "batched" (issue 18): what status checks cost at 1 to 1,000 concurrent builds
under each status policy, every notification lost, in virtual time against the simulator.

"luci" and "shepherd" check each invocation on its own timer, so their figures per build-hour
do not depend on how many builds run at once; "batched" checks all of a Buildbucket server's
running builds in Batch calls on one chain, so its figures fall as builds are added.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from shepherd.durations import HOUR, MINUTE, SECOND, format_duration
from shepherd.model import Status
from shepherd.ports import StoreStats
from shepherd.timestamps import parse_rfc3339
from shepherd_tools.replay import VirtualStack, load_scenario, many_at_once
from shepherd_tools.simulator.control import SimulatorProcess

SIZES = (1, 10, 100, 1000)
STATUS_POLICIES = ("luci", "shepherd", "batched")
# Above this many builds the per-invocation policies are not run: their figures per build-hour
# are those of this size (each invocation checks alone), and one run of 1,000 takes minutes.
PER_INVOCATION_UP_TO = 100
QUEUE_NS = 2 * MINUTE
BUILD_NS = 6 * HOUR
BILLING_STEP_S = 0.1  # Cloud Run functions bill each request's time rounded up to 100 ms
RPC_METHODS = ("ScheduleBuild", "GetBuild", "Batch", "CancelBuild")


def fleet_scenario(policy: str, builds: int, build_ns: int, seed: int = 18) -> Any:
    """The seed scenario's job and settings (status_check_max 10m) under `policy`, `builds` at
    once (greedy_batching, batches of 1), each SCHEDULED 2m → STARTED `build_ns` → SUCCESS,
    every notification lost."""
    script = [
        {"status": "SCHEDULED", "for": format_duration(QUEUE_NS)},
        {"status": "STARTED", "for": format_duration(build_ns)},
        {"status": "SUCCESS"},
    ]
    return many_at_once(
        dataclasses.replace(load_scenario("seed"), seed=seed),
        builds,
        settings={"status_policy": policy},
        simulator={"script": script, "drop_notifications": 1.0},
    )


@dataclasses.dataclass
class _Counts:
    """Cloud Function invocations (each handle_task / handle_notification is one), the time
    each took here (rounded up as billed), Cloud Tasks creations, builds read by Batch."""

    tasks: int = 0
    notifications: int = 0
    billed_s: float = 0.0
    slowest_s: float = 0.0
    tasks_created: int = 0
    batch_items: int = 0


def _count(stack: VirtualStack) -> _Counts:
    counts = _Counts()

    def timed(fn: Callable[..., Any], field: str) -> Callable[..., Any]:
        def counted(*args: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args)
            finally:
                took = time.perf_counter() - t0
                setattr(counts, field, getattr(counts, field) + 1)
                counts.billed_s += max(1, math.ceil(took / BILLING_STEP_S)) * BILLING_STEP_S
                counts.slowest_s = max(counts.slowest_s, took)

        return counted

    engine = stack.engine
    engine.handle_task = timed(engine.handle_task, "tasks")  # type: ignore[method-assign]
    engine.handle_notification = timed(  # type: ignore[method-assign]
        engine.handle_notification, "notifications"
    )
    schedule, batch = stack.queue.schedule, stack.client.batch_get_builds

    def scheduled(tasks: Sequence[Any]) -> None:
        counts.tasks_created += len(tasks)  # one Cloud Tasks create each, a duplicate too
        schedule(tasks)

    def batched(server: str, build_ids: Sequence[str]) -> Any:
        counts.batch_items += len(build_ids)
        return batch(server, build_ids)

    stack.queue.schedule = scheduled  # type: ignore[method-assign]
    stack.client.batch_get_builds = batched  # type: ignore[method-assign]
    return counts


def fleet_run(
    sim: SimulatorProcess, state_path: Path, policy: str, builds: int, build_ns: int = BUILD_NS
) -> dict[str, Any]:
    """`builds` invocations triggered at once under `policy`, run until nothing is left to
    deliver (a timer or check after the builds ended is a delivery too); figures per
    build-hour, a build-hour being a build's time in the queue and running."""
    t0 = time.perf_counter()
    stack = VirtualStack(fleet_scenario(policy, builds, build_ns), state_path, sim)
    counts = _count(stack)
    stats: StoreStats = stack.store.stats  # type: ignore[attr-defined]
    try:
        request = stack.scenario.trigger.to_request()
        ids = []
        for n in range(builds):
            started = stack.engine.trigger(dataclasses.replace(request, request_id=f"b{n}"))
            assert started.invocation is not None, "every trigger starts its own invocation"
            ids.append(started.invocation.id)
        stack.run_until_idle()
    finally:
        stack.close()
    store = dataclasses.replace(stats)  # before the reads below, which are the benchmark's
    state = sim.state()
    ended = {b["id"]: parse_rfc3339(b["endTime"]) for b in state["builds"]}
    finals = [stack.store.get(i) for i in ids]
    staleness = [
        (inv.finished_ns - ended[inv.task_data["build_id"]]) / SECOND
        for inv in finals
        if inv is not None and inv.finished_ns is not None
    ]
    calls = {m: state["calls"].get(m, 0) for m in RPC_METHODS}
    build_hours = builds * (QUEUE_NS + build_ns) / HOUR
    rpcs = sum(calls.values())
    functions = counts.tasks + counts.notifications
    return {
        "builds": builds,
        "build_hours": build_hours,
        "succeeded": sum(inv is not None and inv.status is Status.SUCCEEDED for inv in finals),
        "calls": calls,
        "rpcs_per_build_hour": rpcs / build_hours,
        "check_rpcs_per_build_hour": (rpcs - calls["ScheduleBuild"]) / build_hours,
        # Builds read: a GetBuild reads one, a Batch one per item.
        "builds_read_per_build_hour": (calls["GetBuild"] + counts.batch_items) / build_hours,
        "function_invocations": functions,
        "function_invocations_per_build_hour": functions / build_hours,
        "notifications_handled": counts.notifications,
        "function_billed_s": counts.billed_s,
        "slowest_function_s": counts.slowest_s,
        "store_reads_per_build_hour": store.reads / build_hours,
        "store_writes_per_build_hour": store.writes / build_hours,
        "store_queries_per_build_hour": store.queries / build_hours,
        "store_reads": store.reads,
        "store_writes": store.writes,
        "store_queries": store.queries,
        "tasks_created": counts.tasks_created,
        "worst_staleness_s": max(staleness),
        "mean_staleness_s": sum(staleness) / len(staleness),
        "wall_s": time.perf_counter() - t0,
    }


def fleet_cost(
    run: dict[str, Any], prices: dict[str, Any], vcpu: float, gib: float
) -> dict[str, Any]:
    """What the run's events cost at list prices: each function invocation a request and its
    billed time, each store read and write a Firestore one, each Cloud Tasks create and
    delivery an operation. Buildbucket calls cost no money (quota: reported apart)."""
    functions = run["function_invocations"]
    cost = {
        "function_requests": functions * prices["function_request"],
        "function_compute": run["function_billed_s"]
        * (vcpu * prices["function_vcpu_second"] + gib * prices["function_gib_second"]),
        "firestore_reads": run["store_reads"] * prices["firestore_read"],
        "firestore_writes": run["store_writes"] * prices["firestore_write"],
        "cloud_tasks": (
            run["tasks_created"] + run["function_invocations"] - run["notifications_handled"]
        )
        * prices["cloud_tasks_operation"],
    }
    total = sum(cost.values())
    return {
        "usd": cost,
        "total_usd": total,
        "usd_per_1000_build_hours": total / run["build_hours"] * 1000,
    }


def batched_checks(
    sim: SimulatorProcess,
    workdir: Path,
    prices: dict[str, Any],
    billing: tuple[float, float],
    sizes: Sequence[int] = SIZES,
    build_ns: int = BUILD_NS,
    per_invocation_up_to: int = PER_INVOCATION_UP_TO,
) -> dict[str, Any]:
    """Every policy at every size; "luci" and "shepherd" only up to `per_invocation_up_to`
    builds, their larger rows those of the largest size they ran at (marked so)."""
    runs: dict[str, dict[str, Any]] = {}
    for n in sizes:
        row: dict[str, Any] = {}
        for policy in STATUS_POLICIES:
            if policy != "batched" and n > per_invocation_up_to:
                measured = max(s for s in sizes if s <= per_invocation_up_to)
                row[policy] = {**runs[str(measured)][policy], "taken_from_builds": measured}
                continue
            path = workdir / f"batched-{policy}-{n}"
            path.mkdir(parents=True, exist_ok=True)
            row[policy] = fleet_run(sim, path / "s.db", policy, n, build_ns)
            row[policy]["cost"] = fleet_cost(row[policy], prices, *billing)
        luci, ours = row["luci"], row["batched"]
        row["ratio_rpcs_batched_to_luci"] = (
            ours["rpcs_per_build_hour"] / luci["rpcs_per_build_hour"]
        )
        row["ratio_check_rpcs_batched_to_luci"] = (
            ours["check_rpcs_per_build_hour"] / luci["check_rpcs_per_build_hour"]
        )
        runs[str(n)] = row
    return {
        "build": f"SCHEDULED {QUEUE_NS / MINUTE:g} min → STARTED {build_ns / HOUR:g} h → SUCCESS",
        "notifications_dropped": 1.0,
        "status_check_max_s": 600,
        "status_check_batch_size": 1000,
        "per_invocation_measured_up_to": per_invocation_up_to,
        "note": f"luci and shepherd check each invocation alone: above {per_invocation_up_to} "
        f"builds their per-build-hour figures are those measured at {per_invocation_up_to} "
        "(taken_from_builds); batched is measured at every size",
        "goal": "batched ≤ 0.1× LUCI's RPCs per build-hour at 100 builds, worst staleness "
        "≤ status_check_max",
        "runs": runs,
    }


def _f(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def batched_markdown(b: dict[str, Any]) -> list[str]:
    lines = [
        "",
        f"Status checks at scale: N invocations triggered at once, builds {b['build']}, every "
        f"notification lost, status_check_max {b['status_check_max_s'] / 60:.0f} min, in "
        "virtual time against the Buildbucket simulator. Per build-hour (queue + run): "
        "Buildbucket RPCs (ScheduleBuild, GetBuild, Batch, CancelBuild; in brackets without "
        "ScheduleBuild, the checks alone), builds read (a Batch reads one per item), function "
        "invocations (timer deliveries and notifications), store reads / writes / queries; "
        "worst staleness (build end → invocation end). \\* luci and shepherd check each "
        "invocation alone, so their figures per build-hour do not depend on N: above "
        f"{b['per_invocation_measured_up_to']} builds they are those measured at "
        f"{b['per_invocation_measured_up_to']} (a run of 1,000 would take minutes); batched is "
        "measured at every size.",
        "",
        "| N | policy | RPCs (checks) | builds read | function invocations | store r / w / q "
        "| worst staleness | vs LUCI RPCs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n, row in b["runs"].items():
        for policy in STATUS_POLICIES:
            r = row[policy]
            star = "\\*" if "taken_from_builds" in r else ""
            ratio = f"{row['ratio_rpcs_batched_to_luci']:.3f}" if policy == "batched" else "—"
            lines.append(
                f"| {int(n):,} | {policy}{star} | {_f(r['rpcs_per_build_hour'])} "
                f"({_f(r['check_rpcs_per_build_hour'])}) | {_f(r['builds_read_per_build_hour'])} "
                f"| {_f(r['function_invocations_per_build_hour'])} "
                f"| {_f(r['store_reads_per_build_hour'])} / {_f(r['store_writes_per_build_hour'])}"
                f" / {_f(r['store_queries_per_build_hour'])} "
                f"| {r['worst_staleness_s']:.0f} s | {ratio} |"
            )
    worst = max(row["batched"]["worst_staleness_s"] for row in b["runs"].values())
    at_100 = b["runs"].get("100")
    lines += [
        "",
        f"Goal: {b['goal']}. Measured: "
        + (f"{at_100['ratio_rpcs_batched_to_luci']:.3f}× at 100, " if at_100 else "")
        + f"worst staleness {worst:.0f} s against {b['status_check_max_s']} s (the builds all "
        "end at the same moment, so each run samples one phase of the check period).",
    ]
    lines += [
        "",
        "Cost of the N builds' checks at list prices (function requests and billed "
        "time, 100 ms steps of the time each took here; Firestore reads and writes; Cloud Tasks "
        "creates and deliveries); Buildbucket RPCs cost no money but count against its quota.",
        "",
        "| N | luci | shepherd | batched | Buildbucket RPCs luci / shepherd / batched |",
        "|---|---|---|---|---|",
    ]
    for n, row in b["runs"].items():
        scale = int(n) / row["luci"]["builds"]  # a row taken from a smaller size, scaled up
        usd = [row[p]["cost"]["total_usd"] * int(n) / row[p]["builds"] for p in STATUS_POLICIES]
        rpcs = [sum(row[p]["calls"].values()) * int(n) / row[p]["builds"] for p in STATUS_POLICIES]
        star = "\\*" if scale != 1 else ""
        lines.append(
            f"| {int(n):,} | ${usd[0]:.4f}{star} | ${usd[1]:.4f}{star} | ${usd[2]:.4f} "
            f"| {rpcs[0]:,.0f}{star} / {rpcs[1]:,.0f}{star} / {rpcs[2]:,.0f} |"
        )
    return lines
