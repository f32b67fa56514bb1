"""The gitiles kind against a real Gitiles simulator (its own process), through the engine in
virtual time: each poll is an invocation of the poller job; what it emits lands in a target
job's pending set. Cases ported from luci-go's scheduler/appengine/task/gitiles/gitiles_test.go
where they fit, then transient and permanent errors, emission failures, and a Buildbucket
target that gets the commit as gitilesCommit."""

from __future__ import annotations

import dataclasses
import html
import json
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kinds import SleepKind
from shepherd.adapters.embedded import EmbeddedTopic, VirtualTimerQueue
from shepherd.adapters.gitiles_rest import GitilesClient, GitilesError, parse_gitiles_time
from shepherd.adapters.sqlite_store import SqliteStore
from shepherd.clock import VirtualClock
from shepherd.config import ConfigError
from shepherd.cron import run_schedules
from shepherd.durations import MINUTE, SECOND
from shepherd.engine import START_TASK, Engine
from shepherd.jobs import load_jobs, parse_jobs
from shepherd.model import GitilesTrigger, Invocation, Status, TriggerRequest
from shepherd.ports import Unavailable
from shepherd.signing import TokenSigner
from shepherd.tasks.buildbucket import SCHEDULER_PROPERTY
from shepherd.tasks.gitiles import GitilesKind, RefSet, literal_prefix
from shepherd.tasks.registry import CONFIG_MODELS
from shepherd.views import InvocationView, InvocationWithLog, trigger_path
from shepherd.webpage import invocation_page
from shepherd_tools.gitiles_sim.control import GitilesSimProcess
from shepherd_tools.replay import VirtualStack, load_scenario
from shepherd_tools.simulator.control import SimulatorProcess

PROJECT = "chromium/src"  # path-escaped on the wire: chromium%2Fsrc
COMMIT_TIME_S = 1_700_000_000  # a commit's committer time, far from the engine's virtual clock
COMMIT_TIME = "2023-11-14T22:13:20Z"
POLLER = "infra/poller"
TARGET = "infra/nap"
MAIN = "refs/heads/main"


@pytest.fixture(scope="module")
def gitiles_process() -> Iterator[GitilesSimProcess]:
    with GitilesSimProcess() as process:
        yield process


@pytest.fixture
def gitiles(gitiles_process: GitilesSimProcess) -> GitilesSimProcess:
    gitiles_process.reset()
    gitiles_process.create_repo(PROJECT)
    return gitiles_process


@dataclasses.dataclass
class Poller:
    engine: Engine
    clock: VirtualClock
    queue: VirtualTimerQueue
    repo: str
    polls: int = 0

    def poll(self) -> Invocation:
        """One poll (a trigger of the poller job), delivered until it ends."""
        self.polls += 1
        self.clock.advance(MINUTE)  # polls come a while apart
        started = self.engine.trigger(TriggerRequest(POLLER, request_id=f"poll-{self.polls}"))
        assert started.invocation is not None
        for _ in range(20):
            for task in self.queue.pop_due(self.clock.now_ns()):
                self.engine.handle_task(task.invocation_id, task.timer_id, task.name)
            inv = self.engine.store.get(started.invocation.id)
            assert inv is not None
            if inv.status.final:
                return inv
            eta = self.queue.next_eta()
            assert eta is not None
            self.clock.advance_to(eta)
        raise AssertionError("the poll did not end")

    def emitted(self) -> list[str]:
        """The target's triggers, oldest first: those its invocations took, then pending."""
        store = self.engine.store
        taken = [t.id for i in store.list_invocations(TARGET, 1000)[::-1] for t in i.triggers]
        return taken + [t.id for t in store.list_pending(TARGET, 1000)]

    def ids(self, ref: str, *commits: str) -> list[str]:
        return [f"{self.repo}/+/{ref}@{c}" for c in commits]

    def log(self, inv: Invocation) -> str:
        return "\n".join(e.text for e in self.engine.store.read_log(inv.id))

    def deliver_again(self) -> None:
        """The last poll's start, delivered once more (its delivery failed after the commit)."""
        (inv,) = self.engine.store.list_invocations(POLLER, 1)
        self.engine.handle_task(inv.id, f"{POLLER}:{inv.id}:start:1", START_TASK)

    def fail_to_add(self, monkeypatch: pytest.MonkeyPatch, trigger_id: str) -> None:
        """The store is unavailable when the trigger `trigger_id` is added, once."""
        real = self.engine.trigger

        def flaky(request: TriggerRequest, order: int = 0) -> Any:
            if request.request_id == trigger_id:
                monkeypatch.setattr(self.engine, "trigger", real)
                raise Unavailable("store down")
            return real(request, order)

        monkeypatch.setattr(self.engine, "trigger", flaky)


def make_poller(tmp_path: Path, gitiles: GitilesSimProcess, **config: Any) -> Poller:
    repo = config.pop("repo", gitiles.repo_url(PROJECT))
    poller = {"id": POLLER, "kind": "gitiles", "repo": repo, "refs": [MAIN], "triggers": [TARGET]}
    jobs = parse_jobs(
        {
            "jobs": [
                {"id": TARGET, "kind": "sleep", "seconds": 600},
                {**poller, **config},
            ]
        },
        "jobs.toml",
        {**CONFIG_MODELS, SleepKind.name: SleepKind.config_model},
    )
    clock, queue = VirtualClock(0), VirtualTimerQueue()
    engine = Engine(
        jobs=jobs,
        kinds={SleepKind.name: SleepKind(), GitilesKind.name: GitilesKind()},
        store=SqliteStore(tmp_path / "s.db"),
        queue=queue,
        topic=EmbeddedTopic("shepherd-test"),
        clock=clock,
        signer=TokenSigner(b"k" * 32),
        rng=random.Random(1),
    )
    return Poller(engine, clock, queue, repo)


def files(*paths: str) -> list[dict[str, Any]]:
    return [{"files": {path: f"{n}"}} for n, path in enumerate(paths)]


# --- gitiles_test.go ------------------------------------------------------------------------


def test_a_new_ref_emits_its_head_only(tmp_path: Path, gitiles: GitilesSimProcess) -> None:
    head = gitiles.push(PROJECT, MAIN, 3)["new"]
    poller = make_poller(tmp_path, gitiles)
    inv = poller.poll()
    assert inv.status is Status.SUCCEEDED
    assert poller.emitted() == poller.ids(MAIN, head)
    log = poller.log(inv)
    assert f"Repo: {poller.repo}, Refs: [{MAIN}]" in log
    assert "Fetched refs: 0 from datastore, 1 from gitiles" in log
    assert f"Ref {MAIN} is new: {head}" in log
    assert "All 1 changed refs processed" in log and "Saved 1 known refs" in log
    trigger = poller.engine.store.get_trigger(TARGET, poller.ids(MAIN, head)[0])
    assert trigger is not None
    assert trigger.request.gitiles == GitilesTrigger(poller.repo, MAIN, head)
    assert poller.engine.store.get_kind_state(POLLER)["refs"] == {MAIN: head}
    again = poller.poll()  # nothing new
    assert again.status is Status.SUCCEEDED
    assert "No changes detected" in poller.log(again)
    assert poller.emitted() == poller.ids(MAIN, head)


def test_pushes_emit_one_trigger_per_commit_oldest_first(
    tmp_path: Path, gitiles: GitilesSimProcess
) -> None:
    first = gitiles.push(PROJECT, MAIN)["new"]
    poller = make_poller(tmp_path, gitiles)
    poller.poll()
    pushed = [gitiles.push(PROJECT, MAIN)["new"] for _ in range(3)]
    inv = poller.poll()
    assert poller.emitted() == poller.ids(MAIN, first, *pushed)
    assert f"Ref {MAIN} updated: {first} => {pushed[-1]}" in poller.log(inv)


@pytest.mark.parametrize("zone_suffix", [False, True])
def test_each_trigger_carries_its_commit_as_luci_titles_and_links_it(
    tmp_path: Path, gitiles: GitilesSimProcess, zone_suffix: bool
) -> None:
    if zone_suffix:  # "Tue Nov 14 23:43:20 2023 +0130": the same instant, another zone
        gitiles.reset()
        gitiles.create_repo(PROJECT, time_zone_suffix=True)
    gitiles.push(PROJECT, MAIN)
    poller = make_poller(tmp_path, gitiles)
    poller.poll()
    times = [COMMIT_TIME_S, COMMIT_TIME_S - 3600]  # the newer commit has the older time
    pushed = gitiles.push(PROJECT, MAIN, [{"time": t, "tz": "+0130"} for t in times])["commits"]
    inv = poller.poll()
    expected = [
        (poller.ids(MAIN, c)[0], c, f"{poller.repo}/+/{c}", t * SECOND)
        for c, t in zip(pushed, times, strict=True)
    ]
    described = [
        (t.id, t.request.title, t.request.url, t.request.commit_time_ns)
        for t in inv.emitted_triggers
    ]
    assert described == expected
    pending = poller.engine.store.list_pending(TARGET, 10)  # as stored, in the order they came
    described = [(t.id, t.request.title, t.request.url, t.request.commit_time_ns) for t in pending]
    assert described == expected
    # Their own time is when they came, not the commits' (see Trigger.created_ns).
    assert {t.created_ns for t in pending} == {poller.clock.now_ns()}
    assert [(i.title, i.url) for i in (t.incoming() for t in pending)] == [
        (c, u) for _, c, u, _ in expected
    ]


def test_more_than_50_new_commits_emit_the_newest_50(
    tmp_path: Path, gitiles: GitilesSimProcess
) -> None:
    first = gitiles.push(PROJECT, MAIN)["new"]
    poller = make_poller(tmp_path, gitiles)
    poller.poll()
    pushed = gitiles.push(PROJECT, MAIN, 60)["commits"]
    poller.poll()
    assert poller.emitted() == poller.ids(MAIN, first, *pushed[-50:])
    assert poller.engine.store.get_kind_state(POLLER)["refs"] == {MAIN: pushed[-1]}


def test_a_force_push_emits_the_new_head_only(tmp_path: Path, gitiles: GitilesSimProcess) -> None:
    first = gitiles.push(PROJECT, MAIN, 2)["new"]
    poller = make_poller(tmp_path, gitiles)
    poller.poll()
    forced = gitiles.force_push(PROJECT, MAIN, 3)
    assert forced["forced"]
    inv = poller.poll()
    assert inv.status is Status.SUCCEEDED
    assert poller.emitted() == poller.ids(MAIN, first, forced["new"])
    log = poller.log(inv)
    assert f"Ref {MAIN}: log old..new is not found, investigating further..." in log
    assert f"Ref {MAIN}: force push detected; emitting trigger for new head" in log


def test_regexp_refs_new_deleted_and_unwatched(tmp_path: Path, gitiles: GitilesSimProcess) -> None:
    main = gitiles.push(PROJECT, MAIN)["new"]
    b1 = gitiles.push(PROJECT, "refs/branch-heads/1")["new"]
    b2 = gitiles.push(PROJECT, "refs/branch-heads/2")["new"]
    gitiles.push(PROJECT, "refs/branch-heads/x")  # not matched
    poller = make_poller(tmp_path, gitiles, refs=[MAIN, "regexp:refs/branch-heads/\\d+"])
    poller.poll()
    assert poller.emitted() == [  # ref by ref, in the order of their names
        *poller.ids("refs/branch-heads/1", b1),
        *poller.ids("refs/branch-heads/2", b2),
        *poller.ids(MAIN, main),
    ]
    gitiles.delete_ref(PROJECT, "refs/branch-heads/2")
    b3 = gitiles.push(PROJECT, "refs/branch-heads/3")["new"]
    inv = poller.poll()
    assert "Ref refs/branch-heads/2 deleted" in poller.log(inv)
    assert poller.emitted()[3:] == poller.ids("refs/branch-heads/3", b3)
    refs = poller.engine.store.get_kind_state(POLLER)["refs"]
    assert sorted(refs) == ["refs/branch-heads/1", "refs/branch-heads/3", MAIN]


def test_a_configured_ref_that_matches_nothing_fails_the_poll(
    tmp_path: Path, gitiles: GitilesSimProcess
) -> None:
    gitiles.push(PROJECT, MAIN)
    poller = make_poller(tmp_path, gitiles, refs=[MAIN, "refs/heads/missing"])
    inv = poller.poll()
    assert inv.status is Status.FAILED
    log = poller.log(inv)
    assert "didn't match a single actual ref: [refs/heads/missing]" in log
    assert "1 unresolved refs" in log
    assert poller.emitted() == []


def test_path_filters_use_tree_diffs(tmp_path: Path, gitiles: GitilesSimProcess) -> None:
    gitiles.push(PROJECT, MAIN, files("src/base.c"))
    poller = make_poller(
        tmp_path, gitiles, path_regexps=["src/.+"], path_regexps_exclude=["src/docs/.+"]
    )
    poller.poll()
    assert len(poller.emitted()) == 1
    pushed = gitiles.push(PROJECT, MAIN, files("README.md", "src/x.c", "src/docs/y.md"))
    inv = poller.poll()
    readme, source, docs = pushed["commits"]
    assert poller.emitted()[1:] == poller.ids(MAIN, source)
    log = poller.log(inv)
    assert f'skipping commit "{readme}" on "{MAIN}" because didn\'t match path filters' in log
    assert f'skipping commit "{docs}" on "{MAIN}"' in log
    assert gitiles.state()["recent"][-1]["target"].endswith("&n=50&name-status=1")


def test_tags_already_there_when_first_watched_emit_nothing(
    tmp_path: Path, gitiles: GitilesSimProcess
) -> None:
    head = gitiles.push(PROJECT, MAIN)["new"]
    gitiles.set_ref(PROJECT, "refs/tags/v1", head)
    poller = make_poller(tmp_path, gitiles, refs=["regexp:refs/tags/.+"])
    inv = poller.poll()
    assert "Tag refs/tags/v1 newly matched but already existed" in poller.log(inv)
    assert poller.emitted() == []
    gitiles.set_ref(PROJECT, "refs/tags/v2", gitiles.push(PROJECT, MAIN)["new"])
    poller.poll()
    assert [t.rpartition("@")[0] for t in poller.emitted()] == [f"{poller.repo}/+/refs/tags/v2"]


def test_many_changed_refs_are_postponed_to_the_next_poll(
    tmp_path: Path, gitiles: GitilesSimProcess
) -> None:
    """TestTriggerBuild "do not emit more than N triggers per invocation" (maxTriggers 10,
    maxCommits 5 there: a ref at a time until the next could pass the limit)."""
    heads = [gitiles.push(PROJECT, f"refs/heads/b{n}")["new"] for n in range(4)]
    poller = make_poller(tmp_path, gitiles, refs=["regexp:refs/heads/b\\d"])
    kind = poller.engine.kinds[GitilesKind.name]
    assert isinstance(kind, GitilesKind)
    kind.max_triggers, kind.max_commits = 3, 2
    inv = poller.poll()
    log = poller.log(inv)
    assert "Emitted 2 triggers, postponing the rest" in log
    assert "2 changed refs processed, 2 refs not yet examined" in log
    assert len(poller.emitted()) == 2
    poller.poll()
    emitted = poller.emitted()
    assert emitted == [i for n, h in enumerate(heads) for i in poller.ids(f"refs/heads/b{n}", h)]


def test_the_job_header_schedules_the_polls(tmp_path: Path, gitiles: GitilesSimProcess) -> None:
    first = gitiles.push(PROJECT, MAIN)["new"]
    poller = make_poller(tmp_path, gitiles, schedule="with 1s interval")
    pushed: list[str] = []
    for _ in range(3):
        poller.clock.advance(2 * SECOND)
        ticks = run_schedules(poller.engine, poller.clock.now_ns())
        assert [t.action for t in ticks] == ["triggered"]
        for task in poller.queue.pop_due(poller.clock.now_ns()):
            poller.engine.handle_task(task.invocation_id, task.timer_id, task.name)
        pushed.append(gitiles.push(PROJECT, MAIN)["new"])
    polls = poller.engine.store.list_invocations(POLLER)
    assert [i.status for i in polls] == [Status.SUCCEEDED] * 3
    assert poller.emitted() == poller.ids(MAIN, first, *pushed[:2])


def test_tags_newly_matched_by_changed_patterns_are_not_new(
    tmp_path: Path, gitiles: GitilesSimProcess
) -> None:
    """ "skip pre-existing refs when ref patterns change"."""
    head = gitiles.push(PROJECT, MAIN)["new"]
    for tag in ("foobar", "baz", "foobaz"):
        gitiles.set_ref(PROJECT, f"refs/tags/{tag}", head)
    poller = make_poller(tmp_path, gitiles, refs=["regexp:refs/tags/.*"])
    state = {"refs": {"refs/tags/foobar": head}, "watched": ["regexp:refs/tags/foo.*"]}
    poller.engine.store.put_kind_state(POLLER, {"repo": poller.repo, **state})
    inv = poller.poll()
    assert poller.emitted() == poller.ids("refs/tags/foobaz", head)
    assert "Tag refs/tags/baz newly matched but already existed" in poller.log(inv)
    refs = poller.engine.store.get_kind_state(POLLER)["refs"]
    assert sorted(refs) == ["refs/tags/baz", "refs/tags/foobar", "refs/tags/foobaz"]


def test_a_ref_moved_back_moves_the_state_and_emits_nothing(
    tmp_path: Path, gitiles: GitilesSimProcess
) -> None:
    """ "force push going backwards": old..new is empty (the old head still visible, here from
    another ref; unreachable, Gitiles answers 404 for it and that is a force push)."""
    older, newer = gitiles.push(PROJECT, MAIN, 2)["commits"]
    gitiles.set_ref(PROJECT, "refs/heads/keep", newer)
    poller = make_poller(tmp_path, gitiles)
    poller.poll()
    gitiles.set_ref(PROJECT, MAIN, older, force=True)
    inv = poller.poll()
    assert inv.status is Status.SUCCEEDED
    assert poller.emitted() == poller.ids(MAIN, newer)
    assert poller.engine.store.get_kind_state(POLLER)["refs"] == {MAIN: older}


def test_a_moved_ref_without_interesting_commits_moves_the_state_only(
    tmp_path: Path, gitiles: GitilesSimProcess
) -> None:
    """ "Updated ref without matched commits"."""
    gitiles.push(PROJECT, MAIN, files("must-match"))
    poller = make_poller(tmp_path, gitiles, path_regexps=["must-match"])
    poller.poll()
    pushed = gitiles.push(PROJECT, MAIN, files("nope0", "nope1", "nope2"))
    poller.poll()
    assert len(poller.emitted()) == 1
    assert poller.engine.store.get_kind_state(POLLER)["refs"] == {MAIN: pushed["new"]}


def test_a_404_of_old_to_new_while_both_exist_is_a_fluke_retried(
    tmp_path: Path, gitiles: GitilesSimProcess
) -> None:
    """ "race or fluke": log(old..new) 404 but log(old) and log(new) work: try again."""
    first = gitiles.push(PROJECT, MAIN)["new"]
    poller = make_poller(tmp_path, gitiles)
    poller.poll()
    pushed = gitiles.push(PROJECT, MAIN, 2)
    gitiles.fail_next(1, 404, kind="log", contains="..")
    inv = poller.poll()
    assert inv.status is Status.SUCCEEDED and inv.attempt == 2
    log = poller.log(inv)
    assert f"weirdly, log({first}) and log({pushed['new']}) work" in log
    assert poller.emitted() == poller.ids(MAIN, first, *pushed["commits"])


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "kind"), [(500, "log"), (503, "refs"), (502, "log")])
def test_a_transient_gitiles_error_retries_the_poll_and_loses_nothing(
    tmp_path: Path, gitiles: GitilesSimProcess, status: int, kind: str
) -> None:
    first = gitiles.push(PROJECT, MAIN)["new"]
    poller = make_poller(tmp_path, gitiles)
    poller.poll()
    pushed = gitiles.push(PROJECT, MAIN, 2)["commits"]
    gitiles.fail_next(2, status, kind=kind)
    inv = poller.poll()
    assert inv.status is Status.SUCCEEDED and inv.attempt == 3
    assert poller.emitted() == poller.ids(MAIN, first, *pushed)
    assert "The invocation will be retried" in poller.log(inv)


def test_a_missing_repository_fails_the_poll(tmp_path: Path, gitiles: GitilesSimProcess) -> None:
    poller = make_poller(tmp_path, gitiles, repo=gitiles.repo_url("no/such"))
    inv = poller.poll()
    assert inv.status is Status.FAILED and inv.attempt == 1
    assert "Error fetching state of the world: rpc error: code = NOT_FOUND" in poller.log(inv)


def test_triggers_not_stored_are_added_when_the_delivery_comes_again(
    tmp_path: Path, gitiles: GitilesSimProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = gitiles.push(PROJECT, MAIN)["new"]
    poller = make_poller(tmp_path, gitiles)
    poller.poll()
    pushed = gitiles.push(PROJECT, MAIN, 2)["commits"]
    poller.fail_to_add(monkeypatch, poller.ids(MAIN, pushed[1])[0])
    with pytest.raises(Unavailable):  # after the poll's commit: the delivery answers 503
        poller.poll()
    # The heads were stored with the poll's end, and so were the triggers still to add.
    assert poller.engine.store.get_kind_state(POLLER)["refs"] == {MAIN: pushed[1]}
    assert poller.emitted() == poller.ids(MAIN, first, pushed[0])
    poller.deliver_again()
    assert poller.emitted() == poller.ids(MAIN, first, *pushed)
    # The failed delivery also skipped the triage after the poll's end: the sweep's frees it.
    poller.engine.triage(POLLER, reconcile=True)
    inv = poller.poll()
    assert "No changes detected" in poller.log(inv)
    assert poller.emitted() == poller.ids(MAIN, first, *pushed)


def test_a_poll_whose_delivery_failed_is_not_forgotten_by_the_next(
    tmp_path: Path, gitiles: GitilesSimProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the model-based test: the heads were written only once the triggers were added,
    so when that failed (a 503, a crash) the redelivery added them but never wrote the heads,
    and the next poll took the ref for a new one: of the commits pushed since, only the head."""
    first = gitiles.push(PROJECT, MAIN)["new"]
    poller = make_poller(tmp_path, gitiles)
    poller.fail_to_add(monkeypatch, poller.ids(MAIN, first)[0])
    with pytest.raises(Unavailable):
        poller.poll()
    poller.deliver_again()
    pushed = gitiles.push(PROJECT, MAIN, 3)["commits"]
    poller.engine.triage(POLLER, reconcile=True)
    poller.poll()
    assert poller.emitted() == poller.ids(MAIN, first, *pushed)


# --- a Buildbucket target -------------------------------------------------------------------


def test_a_new_commit_reaches_a_build_as_its_gitiles_commit(
    sim: SimulatorProcess, gitiles: GitilesSimProcess, tmp_path: Path
) -> None:
    seed = load_scenario("seed")
    builder = {**seed.jobs["jobs"][0], "bucket": "infra:ci"}
    repo = gitiles.repo_url(PROJECT)
    poller = {"id": "infra/poller", "kind": "gitiles", "repo": repo, "refs": [MAIN]}
    poller["triggers"] = [builder["id"]]
    script = [{"status": "STARTED", "for": "1m"}, {"status": "SUCCESS"}]
    scenario = dataclasses.replace(
        seed,
        jobs={**seed.jobs, "jobs": [builder, poller]},
        simulator={**seed.simulator, "script": script, "drop_notifications": 0.0},
    )
    head = gitiles.push(PROJECT, MAIN, [{"time": COMMIT_TIME_S}])["new"]
    stack = VirtualStack(scenario, tmp_path / "state.db", sim)
    try:
        stack.trigger_at(stack.clock.now_ns(), TriggerRequest("infra/poller", request_id="p1"))
        stack.run_until_idle()
    finally:
        stack.close()
    (build,) = stack.store.list_invocations(builder["id"])
    assert build.status is Status.SUCCEEDED
    trigger_id, commit_url = f"{repo}/+/{MAIN}@{head}", f"{repo}/+/{head}"
    assert [(t.id, t.title, t.url) for t in build.triggers] == [(trigger_id, head, commit_url)]
    sent = next(
        json.loads(e.text.split("\n", 1)[1])
        for e in stack.store.read_log(build.id)
        if e.text.startswith("Buildbucket request:")
    )
    host = gitiles.url.removeprefix("http://")
    assert sent["gitilesCommit"] == {"host": host, "project": PROJECT, "id": head, "ref": MAIN}
    # The build's $recipe_engine/scheduler names the trigger as LUCI's protojson does.
    assert sent["properties"][SCHEDULER_PROPERTY]["triggers"] == [
        {
            "id": trigger_id,
            "title": head,
            "url": commit_url,
            "gitiles": {"repo": repo, "ref": MAIN, "revision": head},
        }
    ]
    (ref,) = InvocationView.of(build).triggers
    assert (ref.title, ref.url, ref.commit_time) == (head, commit_url, COMMIT_TIME)
    # The poll that emitted it lists it: in its JSON and on its page.
    (poll,) = stack.store.list_invocations("infra/poller")
    shown = InvocationWithLog.of_logged(poll, stack.store.read_log(poll.id))
    assert [dataclasses.astuple(t) for t in shown.emitted_triggers] == [
        (trigger_id, builder["id"], shown.finished, head, commit_url, COMMIT_TIME)
    ]
    page = invocation_page(poll, stack.store.read_log(poll.id), poll.finished_ns or 0)
    emitted = page.split('<table id="emitted">', 1)[1].split("</table>", 1)[0]
    assert f'href="{html.escape(trigger_path(builder["id"], trigger_id))}"' in emitted
    assert f'<a href="{commit_url}" rel="noreferrer">{head}</a>' in emitted
    assert html.escape(builder["id"]) in emitted and COMMIT_TIME in emitted


# --- configuration and pieces ---------------------------------------------------------------


def _parse(**config: Any) -> None:
    job = {"id": POLLER, "kind": "gitiles", "repo": "https://x.googlesource.com/p"}
    parse_jobs({"jobs": [{**job, "refs": [MAIN], **config}]}, "jobs.toml", CONFIG_MODELS)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"triggers": ["infra/nowhere"]},
            'field "triggers": referencing unknown job "infra/nowhere"',
        ),
        ({"refs": ["main"]}, "ref must start with 'refs/'"),
        ({"refs": ["regexp:refs/.*"]}, "fewer than 2 slashes in literal prefix"),
        ({"refs": ["regexp:^refs/heads/x"]}, "^ and $ qualifiers"),
        ({"path_regexps_exclude": ["a"]}, "path_regexps_exclude not allowed"),
        ({"path_regexps": ["a$"]}, "^ and $ qualifiers"),
        ({"repo": "https://example.com/p"}, "only .googlesource.com repos"),
    ],
)
def test_bad_configs_are_refused(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=f'job "{POLLER}".*{re.escape(message)}'):
        _parse(**config)


def test_refsets_as_luci_groups_them() -> None:
    assert literal_prefix("refs/branch-heads/\\d+") == ("refs/branch-heads/", False)
    assert literal_prefix("refs/heads/main") == ("refs/heads/main", True)
    refs = RefSet(["refs/heads/main", "regexp:refs/branch-heads/\\d+", "regexp:refs/heads/x"])
    assert sorted(refs.namespaces) == ["refs/branch-heads", "refs/heads"]
    assert refs.has("refs/branch-heads/12") and not refs.has("refs/branch-heads/12a")
    assert refs.has("refs/heads/x") and not refs.has("refs/heads/y")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("Tue Nov 14 22:13:20 2023", COMMIT_TIME_S),  # googlesource.com: UTC, no zone
        ("Tue Nov 14 23:43:20 2023 +0130", COMMIT_TIME_S),
        ("Tue Nov 14 17:13:20 2023 -0500", COMMIT_TIME_S),
        ("Mon Jan  2 15:04:05 2006", 1_136_214_245),  # Go's _2: a day padded with a space
        ("Mon Jan 2 15:04:05 2006", 1_136_214_245),
        ("Mon Feb 30 15:04:05 2006", None),  # Go's time.Parse refuses these
        ("Mon Jan 02 24:00:00 2006", None),
        ("2006-01-02T15:04:05Z", None),
        ("", None),
    ],
)
def test_commit_times_read_as_lucis_client_reads_them(text: str, seconds: int | None) -> None:
    assert parse_gitiles_time(text) == (None if seconds is None else seconds * SECOND)


def test_the_client_speaks_rest_go(gitiles: GitilesSimProcess) -> None:
    head = gitiles.push(PROJECT, MAIN, 3)
    client = GitilesClient(gitiles.url)
    try:
        assert client.refs(PROJECT, "refs/heads") == {MAIN: head["new"]}
        target = gitiles.state()["recent"][-1]["target"]
        assert target == "/chromium%2Fsrc/+refs%2Fheads?format=JSON"
        commits = client.paging_log(PROJECT, head["new"], 3, page_size=1)
        assert [c.id for c in commits] == head["commits"][::-1]
        with pytest.raises(GitilesError) as error:
            client.refs("no/such", "refs/heads")
        assert error.value.not_found and not error.value.transient
    finally:
        client.close()


def test_only_pollers_may_run_more_often_than_a_minute() -> None:
    _parse(schedule="with 1s interval")
    builder = {"id": "infra/b", "server": "x.example.com", "bucket": "ci", "builder": "b"}
    with pytest.raises(ConfigError, match=r'job "infra/b": field "schedule": .* at least 1m'):
        parse_jobs({"jobs": [{**builder, "schedule": "with 1s interval"}]}, "j", CONFIG_MODELS)


def test_with_a_token_the_client_uses_the_authenticated_paths() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if "+log" in request.url.path:
            return httpx.Response(500, text="boom")
        return httpx.Response(200, content=b')]}\'\n{"main": {"value": "' + b"a" * 40 + b'"}}')

    client = GitilesClient(
        "https://x.googlesource.com", token=lambda: "t0k", transport=httpx.MockTransport(answer)
    )
    try:
        assert client.refs("chromium/src", "refs/heads") == {MAIN: "a" * 40}
        with pytest.raises(GitilesError) as error:
            client.log("chromium/src", "b" * 40, "a" * 40, page_size=50, tree_diff=True)
    finally:
        client.close()
    assert error.value.code == "INTERNAL" and error.value.transient
    assert seen[0].headers["Authorization"] == "Bearer t0k"
    assert str(seen[0].url) == (
        "https://x.googlesource.com/a/chromium%2Fsrc/+refs%2Fheads?format=JSON"
    )
    assert str(seen[1].url) == (
        "https://x.googlesource.com/a/chromium%2Fsrc/+log/"
        f"{'a' * 40}..{'b' * 40}?format=JSON&n=50&name-status=1"
    )


def test_no_token_is_a_clear_error_not_a_crash() -> None:
    def no_credentials() -> str:
        raise RuntimeError("Your default credentials were not found")

    client = GitilesClient("https://x.googlesource.com", token=no_credentials)
    try:
        with pytest.raises(GitilesError) as error:
            client.refs("chromium/src", "refs/heads")
    finally:
        client.close()
    assert error.value.code == "UNAUTHENTICATED" and not error.value.transient
    assert "no OAuth token for https://x.googlesource.com/a: Your default credentials" in str(
        error.value
    )


def test_the_interfaces_example_parses(tmp_path: Path) -> None:
    path = tmp_path / "jobs.toml"
    path.write_text(
        """
[[jobs]]
id = "chromium/Linux"
server = "cr-buildbucket.appspot.com"
bucket = "ci"
builder = "Linux"

[[jobs]]
id = "chromium/src poller"
kind = "gitiles"
repo = "https://chromium.googlesource.com/chromium/src"
refs = ["refs/heads/main", "regexp:refs/branch-heads/\\\\d+"]
path_regexps = []
schedule = "with 30s interval"
triggers = ["chromium/Linux"]
""",
        encoding="utf-8",
    )
    job = load_jobs(path, CONFIG_MODELS).jobs["chromium/src poller"]
    assert job.kind == "gitiles" and job.schedule is not None
    assert job.schedule.interval_ns == 30 * SECOND
    assert job.config.refs == ("refs/heads/main", "regexp:refs/branch-heads/\\d+")
    assert job.config.triggers == ("chromium/Linux",)
