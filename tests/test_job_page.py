"""The jobs on the operator page, and its pause / resume / abort forms: drawn, protected
against other sites (a token, the request's origin), and used in a real headless Chromium."""

from __future__ import annotations

import re
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin

import functions_framework
import pytest
from flask.testing import FlaskClient

from devtools import Browser
from localstack import JOB, DevProcess, serving, write_jobs
from shepherd.config import Config
from shepherd.csrf import BadFormToken, FormTokens, cross_origin, form_tokens
from shepherd.durations import SECOND
from shepherd.model import Status, TriggerStatus
from shepherd.service import Service, build_service, install_service
from shepherd.views import InvocationView, JobDetail, JobView, TriggerView
from shepherd.webpage import index_page, job_page
from test_webpage import chromium

FUNCTIONS = Path(__file__).resolve().parents[1] / "functions" / "main.py"
ODD = "team x/<nightly>"  # a space, the slash between project and name, and markup
# What a job file allows that still needs encoding: spaces and parentheses.
LISTED = "team_x/Nightly (arm) 1.2"
OTHER = "other/job"
JOB_FILE = f"""[settings]
app_id = "luci-scheduler"

[[jobs]]
id = "{LISTED}"
server = "http://127.0.0.1:9"
bucket = "ci"
builder = "b"

[[jobs]]
id = "{OTHER}"
server = "http://127.0.0.1:9"
bucket = "ci"
builder = "b"
"""
HOUR = 3600 * SECOND


def detail(job_id: str = ODD, **changes: Any) -> JobDetail:
    fields: dict[str, Any] = {
        "id": job_id,
        "kind": "buildbucket",
        "paused": False,
        "schedule": None,
        "running": 0,
        "pending": 0,
        "last_status": None,
        "paused_reason": "",
        "triggering_policy": {"kind": "greedy_batching", "max_concurrent_invocations": 1},
        "pending_triggers": (),
        "running_invocations": (),
    }
    return JobDetail(**{**fields, **changes})


def running_view(invocation_id: str) -> InvocationView:
    return InvocationView(
        invocation_id, ODD, Status.RUNNING, 1, None, False, None,
        "https://ci.example/<b>", (), "2024-01-01T00:00:00Z", None, None, (),
    )  # fmt: skip


def forged(token: str) -> str:
    """The token with the last digit of its MAC changed."""
    return token[:-1] + ("0" if token[-1] != "0" else "1")


def forms(page: str) -> list[str]:
    return re.findall(r'<form id="(\w+)"', page)


# --- the pages, as HTML -------------------------------------------------------------------


def test_the_job_page_escapes_the_id_everywhere() -> None:
    trigger = TriggerView("<t> 1/2", ODD, TriggerStatus.PENDING, None, "2024-01-01T00:00:00Z", "")
    page = job_page(detail(pending=1, pending_triggers=(trigger,)), [], "tok", 0)
    assert "<nightly>" not in page and "<t>" not in page
    assert "<h1>team x/&lt;nightly&gt;</h1>" in page
    assert 'action="jobs/team%20x/%3Cnightly%3E/pause"' in page
    assert "&lt;t&gt; 1/2" in page
    assert 'name="csrf" value="tok"' in page
    assert "greedy_batching" in page and "max_concurrent_invocations: 1" in page
    assert 'http-equiv="refresh"' not in page  # it holds a form


def test_the_job_page_offers_what_applies() -> None:
    assert forms(job_page(detail(), [], "t", 0)) == ["pause"]
    paused = detail(paused=True, paused_reason="<maintenance>")
    page = job_page(paused, [], "t", 0)
    assert forms(page) == ["resume"]
    assert "paused: &lt;maintenance&gt;" in page
    busy = detail(paused=True, running=1, running_invocations=(running_view("17"),))
    page = job_page(busy, [], "t", 0)
    assert forms(page) == ["resume", "abort"]
    assert 'href="?invocation=17"' in page and 'href="https://ci.example/&lt;b&gt;"' in page
    assert "Abort all running (1)" in page


def test_the_index_lists_each_job_with_its_fields_and_link() -> None:
    job = JobView(ODD, "buildbucket", True, "every 5m", 2, 3, Status.SUCCEEDED)
    page = index_page([job], {ODD: []}, 0)
    row = re.search(r'<table id="jobs">.*?</table>', page)
    assert row is not None
    cells = re.findall(r"<td>(.*?)</td>", row[0])
    link = '<a href="?job=team%20x%2F%3Cnightly%3E">team x/&lt;nightly&gt;</a>'
    assert cells[0] == link
    assert cells[1:6] == ["buildbucket", "paused", "every 5m", "2", "3"]
    assert "SUCCEEDED" in cells[6]
    assert "<nightly>" not in page
    assert 'http-equiv="refresh"' in page  # something runs


# --- the token and the origin --------------------------------------------------------------


def test_a_token_is_good_for_its_job_until_it_expires() -> None:
    tokens = FormTokens(b"k" * 32)
    now = 1_700_000_000 * SECOND
    token = tokens.issue(ODD, now)
    tokens.check(token, ODD, now + HOUR - 1)
    wrong = [
        (token, OTHER, now, "not this job's"),
        (token, ODD, now + HOUR, "expired"),
        (tokens.issue(ODD, now - 2 * HOUR), ODD, now, "expired"),
        (FormTokens(b"x" * 32).issue(ODD, now), ODD, now, "not this job's"),  # another key
        (token.replace(token.split(".")[0], "99999999999"), ODD, now, "not this job's"),
        (forged(token), ODD, now, "not this job's"),
        ("", ODD, now, "no token"),
        ("nodot", ODD, now, "malformed"),
        ("12.é", ODD, now, "malformed"),
        ("-1.ab", ODD, now, "malformed"),
    ]
    for bad, job_id, at, why in wrong:
        with pytest.raises(BadFormToken, match=why):
            tokens.check(bad, job_id, at)


def test_form_tokens_are_keyed_from_the_signing_key(tmp_path: Path) -> None:
    service = build_service(Config(jobs=str(_jobs_file(tmp_path)), state=tmp_path / "s.db"))
    again = build_service(Config(jobs=str(_jobs_file(tmp_path)), state=tmp_path / "s.db"))
    token = form_tokens(service.engine.signer).issue(LISTED, 0)
    form_tokens(again.engine.signer).check(token, LISTED, 0)  # another instance, the same key
    with pytest.raises(BadFormToken):  # not the notify.userData key itself
        FormTokens(tmp_path.joinpath("secret.key").read_bytes()).check(token, LISTED, 0)


@pytest.mark.parametrize(
    ("headers", "refused"),
    [
        ({}, False),  # the command line: no browser headers
        ({"Sec-Fetch-Site": "same-origin", "Origin": "http://shepherd.test"}, False),
        ({"Origin": "http://SHEPHERD.test"}, False),
        ({"Sec-Fetch-Site": "cross-site"}, True),
        ({"Sec-Fetch-Site": "same-site", "Origin": "http://other.shepherd.test"}, True),
        ({"Origin": "http://evil.test"}, True),
        ({"Origin": "http://shepherd.test:8080"}, True),
        ({"Origin": "null"}, True),
    ],
)
def test_only_the_pages_own_origin_may_post(headers: dict[str, str], refused: bool) -> None:
    assert (cross_origin(headers, {"shepherd.test"}) is not None) == refused


# --- the api function, in process -----------------------------------------------------------


def _jobs_file(tmp_path: Path) -> Path:
    path = tmp_path / "jobs.toml"
    path.write_text(JOB_FILE)
    return path


@pytest.fixture
def app(tmp_path: Path) -> Iterator[tuple[FlaskClient, Service]]:
    service = build_service(Config(jobs=str(_jobs_file(tmp_path)), state=tmp_path / "state.db"))
    install_service(service)
    try:
        yield functions_framework.create_app("api", str(FUNCTIONS), "http").test_client(), service
    finally:
        install_service(None)


JOB_PATH = "/jobs/team_x/Nightly%20%28arm%29%201.2"
LINKED = "team_x%2FNightly%20%28arm%29%201.2"
FORM = "application/x-www-form-urlencoded"
SAME_ORIGIN = {"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"}


def page_token(client: FlaskClient, job_id: str = LISTED) -> str:
    page = client.get(f"/?job={quote(job_id, safe='')}")
    assert page.status_code == 200 and page.mimetype == "text/html"
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found is not None
    return found[1]


def job_json(client: FlaskClient) -> dict[str, Any]:
    answer = client.get(JOB_PATH)
    assert answer.status_code == 200
    return answer.json  # type: ignore[return-value]


def test_the_form_pauses_and_resumes_then_goes_back_to_the_page(
    app: tuple[FlaskClient, Service],
) -> None:
    client, _ = app
    form = {"csrf": page_token(client), "reason": " lab outage "}
    done = client.post(f"{JOB_PATH}/pause", data=form, headers=SAME_ORIGIN)
    assert done.status_code == 303, done.text
    back = urljoin(f"http://localhost/api{JOB_PATH}/pause", done.headers["Location"])
    assert back == f"http://localhost/api/?job={LINKED}"
    assert job_json(client)["paused"] and job_json(client)["paused_reason"] == "lab outage"
    page = client.get(f"/?job={LINKED}").text
    assert forms(page) == ["resume"] and "paused: lab outage" in page
    done = client.post(f"{JOB_PATH}/resume", data={"csrf": page_token(client)})
    assert done.status_code == 303 and not job_json(client)["paused"]
    done = client.post(f"{JOB_PATH}/abort", data={"csrf": page_token(client)})
    assert done.status_code == 303  # nothing ran: nothing to abort


def test_a_form_without_this_jobs_live_token_is_refused(
    app: tuple[FlaskClient, Service],
) -> None:
    client, service = app
    tokens = form_tokens(service.engine.signer)
    now = service.engine.clock.now_ns()
    for token in [
        None,
        "",
        page_token(client, OTHER),
        tokens.issue(LISTED, now - 2 * HOUR),
        forged(tokens.issue(LISTED, now)),
    ]:
        form = {} if token is None else {"csrf": token}
        for action in ("pause", "resume", "abort"):
            refused = client.post(
                f"{JOB_PATH}/{action}", data=form, headers=SAME_ORIGIN, content_type=FORM
            )
            assert refused.status_code == 403, (token, action)
            assert refused.json is not None and "token" in refused.json["error"]
    assert not job_json(client)["paused"]


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.test"},
        {"Sec-Fetch-Site": "same-site", "Origin": "http://evil.localhost"},
        {"Origin": "https://evil.test"},
        {"Origin": "null"},
    ],
)
def test_another_site_is_refused_even_with_a_token(
    app: tuple[FlaskClient, Service], headers: dict[str, str]
) -> None:
    client, _ = app
    token = page_token(client)
    refused = client.post(f"{JOB_PATH}/pause", data={"csrf": token}, headers=headers)
    assert refused.status_code == 403
    assert "cannot change anything here" in refused.json["error"]  # type: ignore[index]
    json_post = client.post(f"{JOB_PATH}/pause", json={"reason": "x"}, headers=headers)
    assert json_post.status_code == 403
    assert not job_json(client)["paused"]


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/plain", '{"reason": "from another site"}'),
        ("text/plain;charset=UTF-8", "csrf=x"),
        ("application/x-www-form-urlencoded", '{"reason": "x"}'),
        ("multipart/form-data; boundary=x", '--x\r\nContent-Disposition: form-data; name="a"'),
    ],
)
def test_what_a_browser_may_send_anywhere_needs_the_token(
    app: tuple[FlaskClient, Service], content_type: str, body: str
) -> None:
    client, _ = app
    refused = client.post(f"{JOB_PATH}/pause", data=body, content_type=content_type)
    assert refused.status_code == 403
    assert not job_json(client)["paused"]


def test_the_command_lines_json_posts_answer_as_before(app: tuple[FlaskClient, Service]) -> None:
    client, _ = app
    done = client.post(f"{JOB_PATH}/pause", json={"reason": "cli"})
    assert done.status_code == 200 and done.json is not None
    assert done.json["paused"] and done.json["paused_reason"] == "cli"
    done = client.post(f"{JOB_PATH}/resume")  # no body, no content type (curl -X POST)
    assert done.status_code == 200 and not done.json["paused"]  # type: ignore[index]
    behind_proxy = {"Origin": "https://shepherd.example", "X-Forwarded-Host": "shepherd.example"}
    done = client.post(f"{JOB_PATH}/abort", json={}, headers=behind_proxy)
    assert done.status_code == 200


def test_the_page_of_an_unknown_job_is_404(app: tuple[FlaskClient, Service]) -> None:
    client, _ = app
    assert client.get("/?job=no%2Fsuch").status_code == 404
    index = client.get("/").text
    assert f'href="?job={LINKED}"' in index and 'href="?job=other%2Fjob"' in index


# --- in a real headless Chromium, against `shepherd dev` -------------------------------------


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevProcess]:
    workdir = tmp_path_factory.mktemp("jobpage")
    process = DevProcess(workdir, write_jobs(workdir / "jobs.toml", "http://127.0.0.1:9"))
    yield process.start()
    process.stop()


def job_url(dev: DevProcess) -> str:
    return f"{dev.url}/api/?job={quote(JOB, safe='')}"


def job_state(dev: DevProcess) -> dict[str, Any]:
    answer = dev.http.get(f"{dev.url}/api/jobs/{quote(JOB, safe='')}")
    assert answer.status_code == 200
    return answer.json()


@pytest.mark.browser
@pytest.mark.stack
def test_pausing_and_resuming_with_the_pages_buttons(dev: DevProcess, tmp_path: Path) -> None:
    with Browser(chromium(), tmp_path / "profile") as browser:
        browser.go(job_url(dev))
        browser.wait_for("document.querySelector('form#pause') !== null")
        browser.evaluate(
            "document.querySelector('#pause input[name=reason]').value = 'from chromium';"
            "document.querySelector('#pause button').click()"
        )
        browser.wait_for("document.querySelector('form#resume') !== null")
        assert browser.evaluate("location.href") == job_url(dev)  # 303 back to the page
        shown = browser.evaluate("document.querySelector('#paused').textContent")
        assert shown == "paused: from chromium"
        assert browser.evaluate("document.querySelector('form#pause')") is None
        assert job_state(dev)["paused_reason"] == "from chromium"
        browser.evaluate("document.querySelector('#resume button').click()")
        browser.wait_for("document.querySelector('form#pause') !== null")
    assert not job_state(dev)["paused"]


def attack_pages(target: str, token: str) -> type[BaseHTTPRequestHandler]:
    """Another origin's pages: one that posts to the job with fetch (bodies a browser sends
    without asking first), one whose form posts itself on load, with a valid token at that."""
    fetches = f"""<!doctype html><script>
    const sent = [
      fetch("{target}", {{method: "POST", mode: "no-cors", body: '{{"reason": "text"}}'}}),
      fetch("{target}", {{method: "POST", mode: "no-cors", body: new Blob(['{{}}'])}}),
    ];
    Promise.allSettled(sent).then(r => document.title = r.map(x => x.status).join());
    </script>"""
    form = f"""<!doctype html><body onload="document.forms[0].submit()">
    <form method="post" action="{target}"><input name="csrf" value="{token}">
    <input name="reason" value="cross-site"></form>"""
    pages = {"/fetch.html": fetches, "/form.html": form}

    class Pages(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = pages[self.path].encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    return Pages


@pytest.mark.browser
@pytest.mark.stack
def test_another_origins_page_cannot_pause_the_job(dev: DevProcess, tmp_path: Path) -> None:
    page = dev.http.get(job_url(dev)).text
    token = re.findall(r'name="csrf" value="([^"]+)"', page)[0]
    target = f"{dev.url}/api/jobs/{quote(JOB, safe='')}/pause"
    with serving(attack_pages(target, token)) as other, Browser(chromium(), tmp_path) as browser:
        browser.go(f"{other}/fetch.html")
        # Both reached the server (an opaque answer, not a network error).
        assert browser.wait_for("document.title") == "fulfilled,fulfilled"
        browser.go(f"{other}/form.html")
        browser.wait_for(f"location.href.startsWith({dev.url!r})")
        shown = browser.wait_for("document.body && document.body.innerText")
    assert "cannot change anything here" in shown
    assert not job_state(dev)["paused"]


def test_another_site_cannot_trigger_or_abort(app: tuple[FlaskClient, Service]) -> None:
    """/trigger reads a text/plain body as JSON, which any page can send anywhere unasked."""
    client, service = app
    trigger = functions_framework.create_app("trigger", str(FUNCTIONS), "http").test_client()
    body = '{"job": "other/job", "request_id": "from-elsewhere"}'
    cross = {"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.test"}
    refused = trigger.post("/", data=body, content_type="text/plain", headers=cross)
    assert refused.status_code == 403
    assert service.engine.store.get_trigger(OTHER, "from-elsewhere") is None
    assert client.post("/invocations/42/abort", headers=cross).status_code == 403
    assert client.post("/invocations/42/abort").status_code == 404  # the command line's
    allowed = trigger.post("/", data=body, content_type="text/plain")
    assert allowed.status_code == 202


def test_the_trigger_url_in_the_answer_leads_to_the_trigger(
    app: tuple[FlaskClient, Service],
) -> None:
    client, _ = app
    trigger = functions_framework.create_app("trigger", str(FUNCTIONS), "http").test_client()
    for trigger_id in ("repo/+/refs/heads/main@abc", "cron:v1:7", "a//b%20c", "triggers/x"):
        answer = trigger.post("/", json={"job": LISTED, "request_id": trigger_id})
        assert answer.status_code == 202, answer.text
        url = answer.json["url"]  # type: ignore[index]
        assert url.startswith("/api/jobs/team_x%2FNightly%20%28arm%29%201.2/triggers/")
        found = client.get(url.removeprefix("/api"))
        assert found.status_code == 200, found.text
        assert found.json["id"] == trigger_id and found.json["job"] == LISTED  # type: ignore[index]
