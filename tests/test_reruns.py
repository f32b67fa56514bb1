"""Reruns in virtual time against the real simulator process: a build that ends with a status
the job's `reruns.on` lists is scheduled again within its invocation, at most `max` times, each
failure exactly once however its news is delivered."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localstack import FINAL, QUICK, DevProcess
from shepherd.jobs import ConfigError, parse_jobs
from shepherd.model import Invocation, Status
from shepherd.tasks.registry import CONFIG_MODELS
from shepherd.views import InvocationView, to_json
from shepherd.webpage import invocation_page
from shepherd_tools.replay import Scenario, VirtualStack, load_scenario
from shepherd_tools.simulator.control import SimulatorProcess

SHORT = [{"status": "SCHEDULED", "for": "2m"}, {"status": "STARTED", "for": "25m"}]


def scenario(reruns: dict[str, Any] | None, outcomes: list[str], **simulator: Any) -> Scenario:
    seed = load_scenario("seed")
    job = dict(seed.jobs["jobs"][0])
    if reruns is not None:
        job["reruns"] = reruns
    script = [*SHORT, {"outcomes": outcomes}]
    return dataclasses.replace(
        seed,
        jobs={**seed.jobs, "jobs": [job]},
        simulator={**seed.simulator, "script": script, **simulator},
    )


@dataclasses.dataclass
class Run:
    stack: VirtualStack
    invocation: Invocation

    @property
    def log(self) -> list[str]:
        return [e.text for e in self.stack.store.read_log(self.invocation.id)]

    @property
    def builds(self) -> list[dict[str, Any]]:
        return list(self.stack.sim.state()["builds"])

    def requests(self) -> list[dict[str, Any]]:
        return [
            json.loads(line.split("\n", 1)[1])
            for line in self.log
            if line.startswith("Buildbucket request:")
        ]


@pytest.fixture
def run(sim: SimulatorProcess, tmp_path: Path) -> Iterator[Any]:
    stacks: list[VirtualStack] = []

    def go(reruns: dict[str, Any] | None, outcomes: list[str], **simulator: Any) -> Run:
        stack = VirtualStack(scenario(reruns, outcomes, **simulator), tmp_path / "s.db", sim)
        stacks.append(stack)
        return Run(stack, stack.run_until_final(stack.trigger().id))

    yield go
    for stack in stacks:
        stack.close()


INFRA = {"max": 2, "on": ["INFRA_FAILURE"]}


def test_an_infra_failure_is_rerun_and_the_last_build_decides(run: Any) -> None:
    done = run(INFRA, ["INFRA_FAILURE", "SUCCESS"])
    assert done.invocation.status is Status.SUCCEEDED
    first, second = done.builds
    inv_id = done.invocation.id
    assert [r["requestId"] for r in done.requests()] == [str(inv_id), f"{inv_id}-rerun-1"]
    rerun_tags = {(t["key"], t["value"]) for t in done.requests()[1]["tags"]}
    assert ("rerun_of", first["id"]) in rerun_tags
    assert ("rerun_of", first["id"]) not in {
        (t["key"], t["value"]) for t in done.requests()[0]["tags"]
    }
    assert (
        f"Build {first['id']} ended with status INFRA_FAILURE, which reruns.on lists: "
        "rerun 1 of at most 2"
    ) in done.log
    data = done.invocation.task_data
    assert data["build_id"] == second["id"]
    assert [(b["id"], b["status"]) for b in data["builds"]] == [
        (first["id"], "INFRA_FAILURE"),
        (second["id"], "SUCCESS"),
    ]
    assert done.invocation.view_url.endswith(f"/build/{second['id']}")
    view = to_json(InvocationView.of(done.invocation))
    assert [(b["id"], b["status"]) for b in view["builds"]] == [
        (first["id"], "INFRA_FAILURE"),
        (second["id"], "SUCCESS"),
    ]
    assert view["build_id"] == second["id"] and view["view_url"] == view["builds"][1]["view_url"]
    entries = done.stack.store.read_log(inv_id)
    page = invocation_page(done.invocation, entries, done.stack.clock.now_ns(), "tok")
    # Both builds on the timeline, each linked with its status, and the Rerun button.
    phases = re.findall(r'<rect class="phase"[^>]*><title>(\w+) ', page)
    assert phases == ["SCHEDULED", "STARTED", "SCHEDULED", "STARTED"]
    assert page.count('<circle class="phase"') == 2
    assert f"/build/{first['id']}</a> INFRA_FAILURE → " in page
    assert f'<form id="rerun" method="post" action="invocations/{inv_id}/rerun">' in page
    running = dataclasses.replace(done.invocation, status=Status.RUNNING)
    assert 'id="rerun"' not in invocation_page(running, entries, 0, "tok")
    assert done.log[-1].endswith("with status SUCCEEDED")


def test_reruns_stop_at_max_and_the_last_failure_is_the_status(run: Any) -> None:
    done = run(INFRA, ["INFRA_FAILURE"] * 4 + ["SUCCESS"])
    assert done.invocation.status is Status.FAILED
    assert len(done.builds) == 3
    assert [b["status"] for b in done.invocation.task_data["builds"]] == ["INFRA_FAILURE"] * 3


@pytest.mark.parametrize(
    ("reruns", "outcome", "final"),
    [
        (None, "INFRA_FAILURE", Status.FAILED),  # no reruns by default
        (INFRA, "FAILURE", Status.FAILED),  # not listed
        ({"max": 0, "on": ["FAILURE"]}, "FAILURE", Status.FAILED),
    ],
)
def test_a_status_not_to_rerun_ends_the_invocation(
    run: Any, reruns: dict[str, Any] | None, outcome: str, final: Status
) -> None:
    done = run(reruns, [outcome, "SUCCESS"])
    assert done.invocation.status is final
    assert len(done.builds) == 1


def test_a_cancelled_build_is_rerun_when_on_lists_it(run: Any) -> None:
    done = run({"max": 1, "on": ["CANCELED"]}, ["CANCELED", "SUCCESS"])
    assert done.invocation.status is Status.SUCCEEDED
    assert len(done.builds) == 2


@pytest.mark.parametrize("drop", [0.0, 1.0])
def test_duplicated_or_lost_news_reruns_each_failure_once(run: Any, drop: float) -> None:
    done = run(
        INFRA,
        ["INFRA_FAILURE", "INFRA_FAILURE", "SUCCESS"],
        duplicate_notifications=True,
        drop_notifications=drop,
    )
    assert done.invocation.status is Status.SUCCEEDED
    assert len(done.builds) == 3
    assert done.stack.sim.state()["calls"]["ScheduleBuild"] == 3


def test_a_rerun_refused_for_a_while_comes_with_the_same_request_id(run: Any) -> None:
    # The launch's ScheduleBuild goes through; the rerun's next five calls fail (the client
    # tries 3 times per event), so its event comes again, and asks for the same rerun.
    faults = [{"method": "ScheduleBuild", "code": "UNAVAILABLE", "times": 5, "after": 1}]
    done = run(INFRA, ["INFRA_FAILURE", "SUCCESS"], faults=faults)
    assert done.invocation.status is Status.SUCCEEDED
    assert len(done.builds) == 2
    assert done.stack.sim.state()["calls"]["ScheduleBuild"] == 1 + 5 + 1
    inv_id = done.invocation.id
    # The failed tries left no line (an event that raises keeps nothing), the one that went
    # through did.
    assert [r["requestId"] for r in done.requests()] == [str(inv_id), f"{inv_id}-rerun-1"]


def test_an_aborted_build_is_never_rerun(sim: SimulatorProcess, tmp_path: Path) -> None:
    stack = VirtualStack(
        scenario({"max": 2, "on": ["CANCELED"]}, ["SUCCESS"]), tmp_path / "s.db", sim
    )
    try:
        invocation_id = stack.trigger().id
        while (inv := stack.store.get(invocation_id)) and inv.status is Status.STARTING:
            assert stack.step()
        assert stack.engine.abort(invocation_id).status is Status.ABORTED
        while stack.step():
            pass
        final = stack.store.get(invocation_id)
        assert final is not None and final.status is Status.ABORTED
        assert len(sim.state()["builds"]) == 1
    finally:
        stack.close()


@pytest.mark.parametrize(
    ("reruns", "message"),
    [
        ({"max": 2}, 'field "reruns": "on" must list at least one of'),
        ({"max": 11, "on": ["FAILURE"]}, 'field "reruns.max": Input should be less than or'),
        ({"max": 1, "on": ["SUCCESS"]}, 'field "reruns.on": "SUCCESS" is not one of'),
        ({"max": 1, "on": ["FAILURE", "FAILURE"]}, 'field "reruns.on": lists a status twice'),
        ({"max": 1, "on": ["FAILURE"], "if": 1}, 'field "reruns.if": Extra inputs'),
    ],
)
def test_bad_reruns_are_refused_naming_the_field(reruns: dict[str, Any], message: str) -> None:
    job = {"id": "a/b", "server": "x.example.com", "bucket": "ci", "builder": "b"}
    with pytest.raises(ConfigError, match=f'job "a/b": {message}'):
        parse_jobs({"jobs": [{**job, "reruns": reruns}]}, "jobs.toml", CONFIG_MODELS)


# --- POST /api/invocations/<id>/rerun ----------------------------------------------------------


@pytest.mark.stack
def test_rerun_by_hand_makes_a_trigger_of_the_newest_one(
    sim: SimulatorProcess, dev: DevProcess
) -> None:
    sim.configure({"publish_url": dev.url, "script": [*QUICK, {"status": "FAILURE"}]})
    first = dev.trigger(request_id="by-hand-1", properties={"n": 1})
    running = dev.http.post(f"{dev.url}/api/invocations/{first}/rerun")
    assert running.status_code == 409 and "not finished" in running.json()["error"]
    assert dev.wait_for(first, FINAL)["status"] == "FAILED"

    answer = dev.http.post(f"{dev.url}/api/invocations/{first}/rerun")
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["trigger_id"].startswith(f"rerun:{first}:") and body["invocation_id"]
    second = dev.wait_for(body["invocation_id"], FINAL)
    assert [t["id"] for t in second["triggers"]] == [body["trigger_id"]]
    sent = [
        json.loads(line.split("\n", 1)[1])
        for line in dev.log_lines(body["invocation_id"])
        if line.startswith("Buildbucket request:")
    ]
    assert sent[0]["properties"]["n"] == 1  # the newest trigger's, again
    assert dev.http.get(dev.url + body["url"]).json()["status"] == "STARTED"

    # The page's Rerun button: a form post with the page's token, back to the new invocation.
    page = dev.http.get(f"{dev.url}/api/?invocation={first}").text
    token = re.search(r'name="csrf" value="([^"]+)"', page)
    assert token is not None
    same_site = {"Origin": dev.url, "Sec-Fetch-Site": "same-origin"}
    action = f"{dev.url}/api/invocations/{first}/rerun"
    forged = dev.http.post(action, data={"csrf": "x"}, headers=same_site)
    assert forged.status_code == 403
    posted = dev.http.post(action, data={"csrf": token[1]}, headers=same_site)
    assert posted.status_code == 303 and posted.headers["Location"].startswith("../../?invocation=")
    third = posted.headers["Location"].removeprefix("../../?invocation=")
    assert third not in (first, body["invocation_id"])
    dev.wait_for(third, FINAL)

    # Named by the caller, a retried call is one trigger.
    named = [
        dev.http.post(f"{dev.url}/api/invocations/{first}/rerun", json={"request_id": "again"})
        for _ in range(2)
    ]
    assert [a.status_code for a in named] == [202, 202]
    assert named[0].json()["trigger_id"] == named[1].json()["trigger_id"] == "again"
    assert named[0].json()["invocation_id"] == named[1].json()["invocation_id"]


@pytest.mark.stack
def test_rerun_refusals(dev: DevProcess) -> None:
    def post(path: str, **kwargs: Any) -> tuple[int, str]:
        answer = dev.http.post(dev.url + path, **kwargs)
        return answer.status_code, answer.json()["error"]

    assert post("/api/invocations/42/rerun") == (404, "no invocation 42")
    assert post("/api/invocations/x/rerun")[0] == 400
    status, error = post("/api/invocations/42/rerun", json={"request_id": ""})
    assert status == 400 and "request_id" in error
    cross = {"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.test"}
    assert post("/api/invocations/42/rerun", headers=cross)[0] == 403
    assert dev.http.get(dev.url + "/api/invocations/42/rerun").status_code in (404, 405)
