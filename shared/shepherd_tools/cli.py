"""`shepherd`: run the local stack, replay scenarios, and operate a running shepherd."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from shepherd.config import DEFAULT_STATE, Config, ConfigError
from shepherd.tasks.buildbucket import finite_numbers
from shepherd.views import BuildRef, InvocationView

from .client import ClientError, ShepherdClient

T = TypeVar("T")
DEFAULT_URL = "http://127.0.0.1:8080"

app = typer.Typer(
    help=__doc__, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False
)
jobs_app = typer.Typer(help="Job files.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
out = Console(highlight=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)

State = Annotated[
    str,
    typer.Option(envvar="SHEPHERD_STATE", help="The SQLite store of the embedded defaults."),
]
Url = Annotated[
    str, typer.Option(envvar="SHEPHERD_URL", help="The local stack (its routes under it).")
]
TriggerUrl = Annotated[
    str | None,
    typer.Option(envvar="SHEPHERD_TRIGGER_URL", help="A deployment's trigger function URL."),
]
ApiUrl = Annotated[
    str | None, typer.Option(envvar="SHEPHERD_API_URL", help="A deployment's api function URL.")
]


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"shepherd: {message}", markup=False)
    return typer.Exit(code)


def print_table(headers: list[str] | None, rows: list[list[str]]) -> None:
    """A rich table on a terminal; tab-separated lines when piped, for scripts."""
    if not sys.stdout.isatty():
        for row in ([headers] if headers else []) + rows:
            print("\t".join(row))
        return
    table = Table(*(headers or []), show_header=headers is not None)
    for row in rows:
        table.add_row(*row)
    out.print(table)


def remote(
    url: str, trigger_url: str | None, api_url: str | None, call: Callable[[ShepherdClient], T]
) -> T:
    """One call to a running shepherd; its failure is a one-line error and exit 1."""
    try:
        return call(ShepherdClient.for_urls(url, trigger_url, api_url))
    except ClientError as e:
        raise fail(str(e)) from None


# --- local ------------------------------------------------------------------------------


@app.command()
def dev(
    jobs: Annotated[str | None, typer.Option(envvar="SHEPHERD_JOBS", help="The job file.")] = None,
    host: str = "127.0.0.1",
    port: int = 8080,
    state: State = DEFAULT_STATE,
) -> None:
    """Serve the functions on one port with the embedded store, queue and Pub/Sub."""
    from .devserver import serve

    if not jobs:
        raise fail("dev needs --jobs FILE (or SHEPHERD_JOBS)", 2)
    try:
        config = dataclasses.replace(Config.from_env(), jobs=jobs, state=Path(state))
    except ConfigError as e:
        raise fail(str(e), 2) from None
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("werkzeug", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        code = serve(config, host, port)
    except ConfigError as e:
        raise fail(str(e), 2) from None
    except OSError as e:
        raise fail(f"cannot serve on {host}:{port}: {e}") from None
    raise typer.Exit(code)


@app.command()
def replay(
    scenario: Annotated[str, typer.Argument(help='"seed", or a scenario TOML file')],
    state: State = DEFAULT_STATE,
) -> None:
    """Replay a scripted invocation in virtual time and print its debug log."""
    from .replay import load_scenario
    from .replay import replay as run

    try:
        loaded = load_scenario(scenario)
    except (OSError, ConfigError) as e:
        raise fail(f"cannot load scenario {scenario!r}: {e}", 2) from None
    sys.stdout.write(run(loaded, state).log_text)


@app.command()
def package(
    jobs: Annotated[str, typer.Option(help="The job file the deployment runs.")],
    out_path: Annotated[str, typer.Option("--out")] = "dist/functions.zip",
) -> None:
    """Build the functions' source archive that terraform deploys."""
    from .devserver import functions_source
    from .package import build

    try:
        names = build(Path(out_path), Path(jobs), functions_source(Config.from_env()))
    except ConfigError as e:
        raise fail(str(e), 2) from None
    print(f"{out_path}: {len(names)} files")


@jobs_app.command("validate")
def jobs_validate(path: Annotated[str, typer.Argument(help="The job file.")]) -> None:
    """Check a job file; every error names the file, the job and the field."""
    from shepherd.jobs import load_jobs
    from shepherd.tasks.registry import CONFIG_MODELS

    try:
        jobs = load_jobs(path, CONFIG_MODELS)
    except ConfigError as e:
        raise fail(str(e), 2) from None
    scheduled = sum(job.schedule is not None for job in jobs.jobs.values())
    print(f"{path}: OK, {len(jobs.jobs)} job(s), {scheduled} scheduled")


# --- remote -----------------------------------------------------------------------------


JOB_COLUMNS = ["id", "kind", "paused", "schedule", "running", "pending", "last_status"]


@jobs_app.command("list")
def jobs_list(
    url: Url = DEFAULT_URL, trigger_url: TriggerUrl = None, api_url: ApiUrl = None
) -> None:
    """Every job: paused or not, its schedule, running invocations, pending triggers."""
    jobs = remote(url, trigger_url, api_url, lambda c: c.jobs())
    print_table(JOB_COLUMNS, [[_cell(job[k]) for k in JOB_COLUMNS] for job in jobs])


def _job_command(action: str, help_text: str) -> None:
    def command(
        job: Annotated[str, typer.Argument(help='The job id, "<project>/<job name>".')],
        reason: Annotated[str, typer.Option(help="Why (pause only).")] = "",
        url: Url = DEFAULT_URL,
        trigger_url: TriggerUrl = None,
        api_url: ApiUrl = None,
    ) -> None:
        body = {"reason": reason} if action == "pause" and reason else {}
        found = remote(url, trigger_url, api_url, lambda c: c.job(job, action, **body))
        rows = [[k, _cell(found[k])] for k in [*JOB_COLUMNS, "paused_reason"]]
        rows.append(["pending_triggers", ", ".join(t["id"] for t in found["pending_triggers"])])
        running = ", ".join(i["id"] for i in found["running_invocations"])
        print_table(None, [*rows, ["running_invocations", running]])

    command.__doc__ = help_text
    jobs_app.command(action or "show")(command)


_job_command("", "Show one job, its pending triggers and running invocations.")
_job_command("pause", "Pause a job: its pending triggers are discarded, new ones refused.")
_job_command("resume", "Resume a paused job.")
_job_command("abort", "Abort every running invocation of a job.")


def _pairs(items: list[str], sep: str, what: str) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        key, found, value = item.partition(sep)
        if not found or not key:
            raise fail(f'{what} "{item}" must be "key{sep}value"', 2)
        pairs.append((key, value))
    return pairs


class _NotFinite(ValueError):
    pass


def _not_finite(name: str) -> Any:
    raise _NotFinite(name)


def _property_value(key: str, text: str) -> Any:
    try:
        value = json.loads(text, parse_constant=_not_finite)
        finite = finite_numbers(value)
    except _NotFinite:
        finite = False
    except ValueError:
        return text
    if not finite:
        # NaN, Infinity or a number beyond a double (1e400) would go out as no JSON at all.
        quote = "" if text.lstrip()[:1] in ("[", "{") else f"; for the string: {key}='\"{text}\"'"
        raise fail(
            f"property {key}={text}: JSON (so Buildbucket) has no NaN, Infinity or number "
            f"beyond a double{quote}",
            2,
        )
    return value


@app.command()
def trigger(
    job: Annotated[str, typer.Argument(help='The job id, "<project>/<job name>".')],
    commit: Annotated[str | None, typer.Option(help="The gitiles revision.")] = None,
    ref: Annotated[str | None, typer.Option(help="The gitiles ref, e.g. refs/heads/main.")] = None,
    repo: Annotated[str | None, typer.Option(help="The gitiles repository URL.")] = None,
    prop: Annotated[
        list[str], typer.Option("--property", help="k=v (v as JSON if it parses)")
    ] = [],  # noqa: B006
    tag: Annotated[list[str], typer.Option(help="k:v")] = [],  # noqa: B006
    request_id: Annotated[
        str | None, typer.Option(help="The trigger's id: the same one twice is one trigger.")
    ] = None,
    url: Url = DEFAULT_URL,
    trigger_url: TriggerUrl = None,
    api_url: ApiUrl = None,
) -> None:
    """Trigger JOB: its triggering policy starts an invocation now or when a slot frees."""
    body: dict[str, Any] = {"job": job}
    gitiles = {"repo": repo, "ref": ref, "revision": commit}
    if any(gitiles.values()):
        missing = [f"--{k if k != 'revision' else 'commit'}" for k, v in gitiles.items() if not v]
        if missing:
            raise fail(
                f"a gitiles commit needs --repo, --ref and --commit (missing {', '.join(missing)})",
                2,
            )
        body["gitiles"] = gitiles
    if tag:
        body["tags"] = [f"{k}:{v}" for k, v in _pairs(tag, ":", "tag")]
    if prop:
        body["properties"] = {k: _property_value(k, v) for k, v in _pairs(prop, "=", "property")}
    # A key of its own even when none is given: the client's retries start one invocation.
    body["request_id"] = request_id or f"cli-{uuid.uuid4()}"
    _print_triggered(remote(url, trigger_url, api_url, lambda c: c.trigger(body)))


def _print_triggered(answer: dict[str, Any]) -> None:
    print(f"trigger {answer['trigger_id']}")
    if answer["invocation_id"] is not None:
        print(f"invocation {answer['invocation_id']}")


# `shepherd show`'s second table; where each trigger is now: GET /api/jobs/{job}/triggers/{id}.
EMITTED_COLUMNS = ["id", "job", "title", "url", "commit_time"]


@app.command()
def show(
    invocation_id: Annotated[str, typer.Argument(metavar="ID")],
    url: Url = DEFAULT_URL,
    trigger_url: TriggerUrl = None,
    api_url: ApiUrl = None,
) -> None:
    """Show one invocation, then the triggers it emitted (if any), one a row."""
    inv = remote(url, trigger_url, api_url, lambda c: c.invocation(invocation_id))
    rows = []
    for field in dataclasses.fields(inv):
        value = getattr(inv, field.name)
        if field.name == "log":
            rows.append([field.name, f"{len(value)} lines"])
        elif field.name == "emitted_triggers":
            rows.append([field.name, f"{len(value)}, below" if value else "0"])
        else:
            rows.append([field.name, _cell(value)])
    print_table(None, rows)
    if inv.emitted_triggers:
        print()
        print_table(
            EMITTED_COLUMNS,
            [[_cell(getattr(t, c)) for c in EMITTED_COLUMNS] for t in inv.emitted_triggers],
        )


def _cell(value: Any) -> str:
    if isinstance(value, tuple) and all(isinstance(v, BuildRef) for v in value):
        # an invocation's builds, oldest first: each with its status (its reruns follow it)
        return ", ".join(f"{b.id} {b.status or '?'}" for b in value) or "—"
    if isinstance(value, tuple):  # an invocation's triggers: their ids
        return ", ".join(t.id for t in value)
    return "—" if value is None else str(value)


@app.command()
def log(
    invocation_id: Annotated[str, typer.Argument(metavar="ID")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing until it ends.")
    ] = False,
    url: Url = DEFAULT_URL,
    trigger_url: TriggerUrl = None,
    api_url: ApiUrl = None,
) -> None:
    """Print an invocation's debug log."""
    api = ShepherdClient.for_urls(url, trigger_url, api_url)
    printed = 0
    try:
        while True:
            text = api.log(invocation_id)
            sys.stdout.write(text[printed:])
            sys.stdout.flush()
            printed = len(text)
            if not follow or api.invocation(invocation_id).status.final:
                # One more read: lines committed with the final status are in it.
                sys.stdout.write(api.log(invocation_id)[printed:])
                return
            time.sleep(1)
    except ClientError as e:
        raise fail(str(e)) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


@app.command("list")
def list_invocations(
    job: Annotated[str, typer.Argument(help="The job id.")],
    url: Url = DEFAULT_URL,
    trigger_url: TriggerUrl = None,
    api_url: ApiUrl = None,
) -> None:
    """List a job's invocations, newest first."""
    invocations = remote(url, trigger_url, api_url, lambda c: c.list(job))
    columns = [field.name for field in dataclasses.fields(InvocationView)]
    print_table(
        columns, [[_cell(getattr(inv, column)) for column in columns] for inv in invocations]
    )


@app.command()
def abort(
    invocation_id: Annotated[str, typer.Argument(metavar="ID")],
    url: Url = DEFAULT_URL,
    trigger_url: TriggerUrl = None,
    api_url: ApiUrl = None,
) -> None:
    """Abort an invocation (cancels its build); once accepted it completes on its own."""
    inv = remote(url, trigger_url, api_url, lambda c: c.abort(invocation_id))
    print(f"{inv.id} {inv.status if inv.status.final else 'abort requested'}")


@app.command()
def rerun(
    invocation_id: Annotated[str, typer.Argument(metavar="ID")],
    request_id: Annotated[
        str | None, typer.Option(help="The new trigger's id (default: one of its own).")
    ] = None,
    url: Url = DEFAULT_URL,
    trigger_url: TriggerUrl = None,
    api_url: ApiUrl = None,
) -> None:
    """Trigger a finished invocation's job again with its newest trigger; the job's triggering
    policy starts it."""
    # A key of its own even when none is given: the client's retries make one trigger.
    body = {"request_id": request_id or f"cli-{uuid.uuid4()}"}
    _print_triggered(remote(url, trigger_url, api_url, lambda c: c.rerun(invocation_id, body)))


def main() -> None:
    app(prog_name="shepherd")


if __name__ == "__main__":
    main()
