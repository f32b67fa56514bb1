"""The url_fetch task kind: one GET, whose answer is the outcome (LUCI's urlfetch task,
scheduler/appengine/task/urlfetch/urlfetch.go, with its debug-log lines)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

from ..durations import SECOND, format_duration
from ..jobs import go_duration
from ..model import LogKind, Status
from ..validation import Model, field
from .base import Controller, LaunchOnly
from .buildbucket import LOCAL_HOSTS

if TYPE_CHECKING:
    import httpx

# LUCI allows 1 s to 8 min (timeout_sec). Here at most 4 min: a launch that takes longer than
# the engine's START_GRACE_NS (5 min) would have its start handed again by the sweep.
MIN_TIMEOUT, MAX_TIMEOUT = SECOND, 240 * SECOND
BODY_LIMIT = 4096  # LUCI logs the first 4 KiB of the body
_TEXT_TYPES = ("text/", "application/json", "application/xml")


def _url(value: str) -> str:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (a bad port raises here)
    except ValueError as e:
        raise ValueError(f"invalid URL {value!r}: {e}") from None
    if not parts.scheme or not parts.hostname:
        raise ValueError(f"not an absolute url: {value!r}")
    if parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in LOCAL_HOSTS):
        return value
    raise ValueError(
        f"{value!r}: must be an https:// URL (http:// only for a loopback host: "
        f"{', '.join(LOCAL_HOSTS)})"
    )


def _timeout(value: Any) -> int:
    ns = go_duration(value)
    if ns < MIN_TIMEOUT:
        raise ValueError(f"minimum allowed is {format_duration(MIN_TIMEOUT)}, got {value}")
    if ns > MAX_TIMEOUT:
        raise ValueError(f"maximum allowed is {format_duration(MAX_TIMEOUT)}, got {value}")
    return ns


@dataclass(frozen=True)
class UrlFetchConfig(Model):
    """A job's `kind = "url_fetch"` fields."""

    url: str = field(after=_url)
    timeout: int = field(default=60 * SECOND, before=_timeout)


@dataclass(frozen=True)
class Answer:
    """What the server answered: the status line, headers and the body's first bytes."""

    status_code: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    content_length: int | None


def _canonical(key: str) -> str:
    """A header name as Go's http.CanonicalHeaderKey writes it."""
    return "-".join(p[:1].upper() + p[1:].lower() for p in key.split("-"))


def dump_answer(answer: Answer) -> str:
    """The answer as LUCI's dumpResponse writes it: status line, headers (sorted, as Go's
    Header.Write), a blank line, then the body if it is text."""
    lines = [f"{answer.status_code} {answer.reason}".rstrip()]
    lines += sorted(f"{_canonical(k)}: {v}" for k, v in answer.headers)
    lines.append("")
    content_type = next((v for k, v in answer.headers if k.lower() == "content-type"), "")
    if not answer.body:
        lines.append("<empty body>")
    elif content_type.startswith(_TEXT_TYPES):
        lines.append(answer.body.decode("utf-8", errors="replace").removesuffix("\n"))
        if answer.content_length is not None and len(answer.body) < answer.content_length:
            lines.append("<truncated>")
    else:
        lines.append("<binary response>")
    return "\n".join(lines)


def _read_head(response: httpx.Response) -> bytes:
    """The body's first BODY_LIMIT bytes; a read error ends it (the status is what counts)."""
    import httpx

    body = b""
    try:
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) >= BODY_LIMIT:
                break
    except httpx.HTTPError:
        pass
    return body[:BODY_LIMIT]


class FetchError(Exception):
    """No answer: the request failed, or took longer than its timeout."""


def fetch(url: str, timeout_ns: int) -> Answer:
    """GET `url` with a deadline of `timeout_ns` for the whole of it, as Go's context timeout
    (httpx's timeouts bound each operation only): the request runs on a thread of its own,
    left to end by itself, bounded by the same timeouts, when the deadline passes first."""
    result: list[Answer | Exception] = []
    done = threading.Event()

    def run() -> None:
        try:
            result.append(_get(url, timeout_ns))
        except Exception as e:  # handed to the caller
            result.append(e)
        done.set()

    threading.Thread(target=run, name="url-fetch", daemon=True).start()
    if not done.wait(timeout_ns / SECOND):
        raise FetchError(f'Get "{url}": no answer within {format_duration(timeout_ns)}')
    if isinstance(answer := result[0], Answer):
        return answer
    raise FetchError(_describe(answer, url)) from answer


def _get(url: str, timeout_ns: int) -> Answer:
    """GET `url`, following redirects as Go's client does."""
    import httpx

    with (
        httpx.Client(timeout=timeout_ns / SECOND, follow_redirects=True) as client,
        client.stream("GET", url) as response,
    ):
        length = response.headers.get("content-length", "")
        headers = [(k, v) for k, v in response.headers.multi_items() if k != "transfer-encoding"]
        return Answer(
            status_code=response.status_code,
            reason=response.reason_phrase,
            headers=headers,
            body=_read_head(response),
            content_length=int(length) if length.isdigit() else None,
        )


def _describe(error: Exception, url: str) -> str:
    """An error as Go's url.Error words it: `Get "URL": what went wrong`."""
    return f'Get "{url}": {str(error) or type(error).__name__}'


class UrlFetchKind(LaunchOnly):
    """One GET at launch: 2xx → SUCCEEDED, any other answer → FAILED, and so is no answer
    (refused, timed out: LUCI retries nothing either). The debug log has LUCI's lines."""

    name: ClassVar[str] = "url_fetch"
    config_model: ClassVar[type[UrlFetchConfig]] = UrlFetchConfig

    def launch(self, ctl: Controller) -> None:
        cfg: UrlFetchConfig = ctl.config
        started = ctl.now_ns()
        ctl.debug_log.write(LogKind.REQUEST, f"GET {cfg.url}")
        ctl.save()  # the fetch may take minutes: the line is stored before it
        try:
            answer: Answer | None = fetch(cfg.url, cfg.timeout)
            error = ""
        except FetchError as e:
            answer, error = None, str(e)
        ok = answer is not None and 200 <= answer.status_code < 300
        status = Status.SUCCEEDED if ok else Status.FAILED
        took = format_duration(ctl.now_ns() - started)
        ctl.debug_log.write(LogKind.INFO, f"Finished with overall status {status} in {took}")
        if answer is None:
            ctl.debug_log.write(LogKind.ERROR, f"URL fetch error: {error}")
        else:
            ctl.debug_log.write(LogKind.INFO, dump_answer(answer))
        ctl.status = status
