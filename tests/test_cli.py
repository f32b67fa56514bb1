"""The `shepherd` command line as a subprocess against a running local stack."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from localstack import JOB, LONG, QUICK, DevProcess, write_jobs
from shepherd.timestamps import parse_rfc3339
from shepherd.views import InvocationView, InvocationWithLog
from shepherd_tools.gitiles_sim.control import GitilesSimProcess
from shepherd_tools.simulator.control import SimulatorProcess

pytestmark = pytest.mark.stack

REPO = "https://chromium.googlesource.com/chromium/src"
REV = "3ce3f1d71a1492176d69ed432d5cfa7b95be4a3e"
POLLER = "chromium/poller"


def shepherd(*args: str, url: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "shepherd_tools.cli", *args]
    if url:
        cmd += ["--url", url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def test_trigger_follow_show_and_list(sim: SimulatorProcess, dev: DevProcess) -> None:
    sim.configure({"publish_url": dev.url, "script": [*QUICK, {"status": "SUCCESS"}]})
    args = ["trigger", JOB, "--repo", REPO, "--ref", "refs/heads/main", "--commit", REV]
    args += [
        "--property",
        "n=3",
        "--property",
        "name=x",
        "--tag",
        "team:infra",
        "--request-id",
        "cli-1",
    ]
    started = shepherd(*args, url=dev.url)
    assert started.returncode == 0, started.stderr
    trigger_line, invocation_line = started.stdout.splitlines()
    assert trigger_line == "trigger cli-1"
    invocation_id = invocation_line.removeprefix("invocation ")
    assert invocation_id.isdigit()
    again = shepherd(*args, url=dev.url)
    assert again.stdout == started.stdout  # the same request id: the same trigger

    followed = shepherd("log", invocation_id, "--follow", url=dev.url)
    assert followed.returncode == 0
    lines = followed.stdout.splitlines()
    assert lines[0].endswith("] New invocation is queued and will start shortly")
    assert lines[-1].endswith("with status SUCCEEDED")
    request = followed.stdout.split("Buildbucket request:\n", 1)[1]
    assert '"n": 3' in request and '"name": "x"' in request
    assert '"key": "team"' in request and f'"id": "{REV}"' in request

    # show prints every field of the view, list a column per field; both as the API answers.
    answer = dev.invocation(invocation_id)
    shown = shepherd("show", invocation_id, url=dev.url)
    assert shown.returncode == 0
    rows = dict(line.split("\t", 1) for line in shown.stdout.splitlines())
    assert list(rows) == [f.name for f in dataclasses.fields(InvocationWithLog)]
    for name, value in rows.items():
        expected = answer[name]
        if name == "log":
            assert value == f"{len(expected)} lines"
        elif name == "triggers":
            assert value == "cli-1" and [t["id"] for t in expected] == ["cli-1"]
        elif name == "emitted_triggers":
            assert value == "0" and expected == []
        elif name == "builds":
            (build,) = expected
            assert value == f"{build['id']} SUCCESS" and build["status"] == "SUCCESS"
        else:
            assert value == ("—" if expected is None else str(expected))
    assert rows["status"] == "SUCCEEDED" and rows["build_id"].isdigit()
    listed = shepherd("list", JOB, url=dev.url)
    assert listed.returncode == 0
    header, *lines = [line.split("\t") for line in listed.stdout.splitlines()]
    assert header == [f.name for f in dataclasses.fields(InvocationView)]
    assert dict(zip(header, lines[0], strict=True)) == {name: rows[name] for name in header}


def test_rerun(sim: SimulatorProcess, dev: DevProcess) -> None:
    sim.configure({"publish_url": dev.url, "script": [*QUICK, {"status": "FAILURE"}]})
    triggered = shepherd("trigger", JOB, url=dev.url).stdout.splitlines()
    first = triggered[-1].removeprefix("invocation ")
    early = shepherd("rerun", first, url=dev.url)
    assert early.returncode == 1 and "409: invocation" in early.stderr
    dev.wait_for(first, {"FAILED"})
    again = shepherd("rerun", first, "--request-id", "rerun-by-cli", url=dev.url)
    assert again.returncode == 0, again.stderr
    lines = again.stdout.splitlines()
    assert lines[0] == "trigger rerun-by-cli" and lines[1].startswith("invocation ")
    second = lines[1].removeprefix("invocation ")
    assert second != first
    assert [t["id"] for t in dev.invocation(second)["triggers"]] == ["rerun-by-cli"]


def test_show_lists_the_triggers_a_poll_emitted(sim: SimulatorProcess, tmp_path: Path) -> None:
    """A gitiles poller's invocation: `shepherd show` (and the page) list what it emitted."""
    with GitilesSimProcess() as gitiles:
        gitiles.create_repo("chromium/src")
        head = gitiles.push("chromium/src", "refs/heads/main", [{"time": 1_700_000_000}])["new"]
        repo = gitiles.repo_url("chromium/src")
        jobs = write_jobs(tmp_path / "jobs.toml", sim.url)
        poller = [f'id = "{POLLER}"', 'kind = "gitiles"', f'repo = "{repo}"']
        poller += ['refs = ["refs/heads/main"]', f'triggers = ["{JOB}"]']
        jobs.write_text(jobs.read_text() + "\n[[jobs]]\n" + "\n".join(poller) + "\n")
        stack = DevProcess(tmp_path, jobs).start()
        try:
            sim.configure({"publish_url": stack.url, "script": LONG})
            started = shepherd("trigger", POLLER, url=stack.url)
            assert started.returncode == 0, started.stderr
            invocation_id = started.stdout.splitlines()[-1].removeprefix("invocation ")
            answer = stack.wait_for(invocation_id, {"SUCCEEDED", "FAILED"})
            shown = shepherd("show", invocation_id, url=stack.url)
            page = stack.http.get(f"{stack.url}/api/", params={"invocation": invocation_id})
        finally:
            stack.stop()
    assert answer["status"] == "SUCCEEDED"
    trigger_id, commit_url = f"{repo}/+/refs/heads/main@{head}", f"{repo}/+/{head}"
    emitted_at = parse_rfc3339(answer["emitted_triggers"][0].pop("created"))
    assert parse_rfc3339(answer["started"]) <= emitted_at <= parse_rfc3339(answer["finished"])
    assert answer["emitted_triggers"] == [
        {
            "id": trigger_id,
            "job": JOB,
            "title": head,
            "url": commit_url,
            "commit_time": "2023-11-14T22:13:20Z",
        }
    ]
    assert shown.returncode == 0, shown.stderr
    fields, emitted = shown.stdout.split("\n\n")
    rows = dict(line.split("\t", 1) for line in fields.splitlines())
    assert list(rows) == [f.name for f in dataclasses.fields(InvocationWithLog)]
    assert rows["emitted_triggers"] == "1, below"
    header, *lines = [line.split("\t") for line in emitted.splitlines()]
    assert header == ["id", "job", "title", "url", "commit_time"]
    assert lines == [[trigger_id, JOB, head, commit_url, "2023-11-14T22:13:20Z"]]
    assert page.status_code == 200
    assert (
        f'<a href="{commit_url}" rel="noreferrer">{head}</a>' in page.text.split('id="emitted"')[1]
    )


def test_abort(sim: SimulatorProcess, dev: DevProcess) -> None:
    sim.configure({"publish_url": dev.url, "script": LONG})
    triggered = shepherd("trigger", JOB, url=dev.url).stdout.splitlines()
    invocation_id = triggered[-1].removeprefix("invocation ")
    dev.wait_for(invocation_id, {"RUNNING"})
    aborted = shepherd("abort", invocation_id, url=dev.url)
    assert aborted.returncode == 0 and aborted.stdout.strip() == f"{invocation_id} ABORTED"
    again = shepherd("abort", invocation_id, url=dev.url)
    assert (
        again.returncode == 1
        and "409: invocation" in again.stderr
        and "already finished" in again.stderr
    )


def test_jobs_list_show_pause_and_resume(sim: SimulatorProcess, dev: DevProcess) -> None:
    sim.configure({"publish_url": dev.url, "script": LONG})
    paused = shepherd("jobs", "pause", JOB, "--reason", "tree closed", url=dev.url)
    assert paused.returncode == 0, paused.stderr
    rows = dict(line.split("\t", 1) for line in paused.stdout.splitlines())
    assert rows["paused"] == "True" and rows["paused_reason"] == "tree closed"
    refused = shepherd("trigger", JOB, url=dev.url)
    assert refused.returncode == 1
    assert refused.stderr.strip().endswith(f'409: job "{JOB}" is paused: tree closed')
    header, *lines = [
        line.split("\t") for line in shepherd("jobs", "list", url=dev.url).stdout.splitlines()
    ]
    listed = dict(zip(header, lines[0], strict=True))
    assert listed["id"] == JOB and listed["paused"] == "True" and listed["kind"] == "buildbucket"
    assert shepherd("jobs", "resume", JOB, url=dev.url).returncode == 0
    triggered = shepherd("trigger", JOB, url=dev.url)
    assert triggered.returncode == 0
    invocation_id = triggered.stdout.splitlines()[-1].removeprefix("invocation ")
    dev.wait_for(invocation_id, {"RUNNING"})
    shown = dict(
        line.split("\t", 1)
        for line in shepherd("jobs", "show", JOB, url=dev.url).stdout.splitlines()
    )
    assert invocation_id in shown["running_invocations"]
    aborted = shepherd("jobs", "abort", JOB, url=dev.url)
    assert aborted.returncode == 0
    assert dev.wait_for(invocation_id, {"ABORTED"})["status"] == "ABORTED"


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["trigger", "chromium/nope"], 1, '404: unknown job "chromium/nope"'),
        (["trigger", JOB, "--tag", "novalue"], 2, 'tag "novalue" must be "key:value"'),
        (["trigger", JOB, "--property", "novalue"], 2, 'property "novalue" must be "key=value"'),
        (["trigger", JOB, "--commit", REV], 2, "needs --repo, --ref and --commit"),
        (["show", "42"], 1, "404: no invocation 42"),
        (["show", "x42"], 1, "400: invocation id must be a decimal int64"),
        (["log", "42"], 1, "404: no invocation 42"),
        (["list", "chromium/nope"], 1, '404: unknown job "chromium/nope"'),
        (["abort", "42"], 1, "404: no invocation 42"),
        (["jobs", "show", "chromium/nope"], 1, '404: unknown job "chromium/nope"'),
        (["jobs", "pause", "nope"], 1, "404: unknown job"),
    ],
)
def test_errors_are_one_line_with_a_nonzero_exit(
    dev: DevProcess, args: list[str], code: int, message: str
) -> None:
    done = shepherd(*args, url=dev.url)
    assert done.returncode == code, done
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_unreachable_server() -> None:
    done = shepherd("show", "42", url="http://127.0.0.1:9")
    assert done.returncode == 1
    assert done.stderr.startswith("shepherd: cannot reach http://127.0.0.1:9/api/invocations/42")


def test_jobs_validate(tmp_path: Path) -> None:
    good = write_jobs(tmp_path / "good.toml", "cr-buildbucket.appspot.com")
    done = shepherd("jobs", "validate", str(good))
    assert done.returncode == 0 and "OK, 1 job(s), 0 scheduled" in done.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(good.read_text() + 'schedule = "every tuesday"\n')
    done = shepherd("jobs", "validate", str(bad))
    assert done.returncode == 2
    assert f'{bad}: job "{JOB}": field "schedule"' in done.stderr


def test_dev_refuses_a_bad_job_file_before_listening(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[[jobs]]\nid = "chromium/x"\nserver = "bad host!"\nbucket = "ci"\nbuilder = "b"\n'
    )
    done = shepherd("dev", "--jobs", str(bad), "--port", "0", "--state", str(tmp_path / "s.db"))
    assert done.returncode == 2
    assert 'job "chromium/x": field "server"' in done.stderr


def test_scheduler_route_triggers_a_tick_once(
    dev: DevProcess, sim: SimulatorProcess, tmp_path: Path
) -> None:
    jobs = write_jobs(tmp_path / "jobs.toml", sim.url)
    jobs.write_text(jobs.read_text() + 'schedule = "* * * * *"\n')
    cron = DevProcess(tmp_path, jobs).start()
    try:
        sim.configure({"publish_url": cron.url, "script": LONG})
        # shepherd dev ticks at start too: three calls of one tick, racing or not.
        first = cron.http.post(cron.url + "/scheduler").json()["results"]
        second = cron.http.post(cron.url + "/scheduler").json()["results"]
        actions = [first[0]["action"], second[0]["action"]]
        # A minute boundary may fall between the calls: then its tick waits, pending, because
        # the first invocation still runs. Never two invocations at once.
        assert actions.count("triggered") <= 1 and set(actions) <= {"triggered", "not due"}
        assert (
            len(
                cron.http.get(
                    f"{cron.url}/api/jobs/chromium%2FWindows%20deterministic/invocations"
                ).json()["invocations"]
            )
            == 1
        )
    finally:
        cron.stop()


def test_a_bad_scenario_is_one_line_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'start = "2022-07-10T12:31:53Z"\n[trigger]\njob = "a/b"\n[[jobs]]\nid = "a/b"\n'
        'server = "bad host"\nbucket = "c"\nbuilder = "b"\n'
    )
    done = shepherd("replay", str(bad))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and 'job "a/b": field "server"' in done.stderr
