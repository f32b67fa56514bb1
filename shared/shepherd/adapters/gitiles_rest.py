"""A Gitiles REST client, as luci-go's `common/api/gitiles/rest.go` speaks to Gitiles.

`GET {host}/{project}/+refs/{path}?format=JSON` and
`GET {host}/{project}/+log/{old}..{new}?format=JSON&n=N[&name-status=1][&s=TOKEN]`; every answer
starts with `)]}'`; the project is path-escaped (`chromium%2Fsrc`); pages follow `next`
(log.go's PagingLog). HTTP statuses become gRPC codes as rest.go's getRaw maps them. With a
token source, requests go to the authenticated `/a/` paths with `Authorization: Bearer`.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote, urlencode

import httpx

JSON_PREFIX = b")]}'"
DEFAULT_TIMEOUT_S = 60.0  # gitiles.go's gitilesRPCTimeout: a minute

# rest.go's getRaw: HTTP status → gRPC code; anything else is INTERNAL.
_CODES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
}
# Worth trying again later (as the Buildbucket client: LUCI's transient codes, deadlines, quota).
TRANSIENT_CODES = frozenset(
    {"UNKNOWN", "INTERNAL", "UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"}
)


class GitilesError(Exception):
    """A failed Gitiles call: its gRPC code (rest.go's) and HTTP status (0: none)."""

    def __init__(self, code: str, message: str, status: int = 0) -> None:
        super().__init__(f"rpc error: code = {code} desc = {message}")
        self.code = code
        self.status = status

    @property
    def transient(self) -> bool:
        return self.code in TRANSIENT_CODES

    @property
    def not_found(self) -> bool:
        return self.code == "NOT_FOUND"


@dataclass(frozen=True)
class TreeDiff:
    type: str
    old_path: str
    new_path: str


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# Go's time.ANSIC ("Mon Jan _2 15:04:05 2006"), then maybe " -0700", as json.go's ts reads it.
_ANSIC = re.compile(
    r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) ([A-Z][a-z]{2})  ?(\d{1,2}) (\d{1,2}):(\d{2}):(\d{2}) "
    r"(\d{4})(?: ([+-])(\d{2})(\d{2}))?"
)


def parse_gitiles_time(text: str) -> int | None:
    """A time as Gitiles prints it ("Mon Jan 02 15:04:05 2006", UTC unless a "+0100" zone
    follows), in ns since the epoch; None if it is not one."""
    match = _ANSIC.fullmatch(text)
    if match is None or match[1] not in _MONTHS:
        return None
    day, hour, minute, second, year = (int(match[i]) for i in (2, 3, 4, 5, 6))
    offset = 0
    if match[7]:
        offset = (int(match[8]) * 60 + int(match[9])) * (-1 if match[7] == "-" else 1)
    try:
        zone = timezone(timedelta(minutes=offset))
        when = datetime(year, _MONTHS.index(match[1]) + 1, day, hour, minute, second, tzinfo=zone)
    except ValueError:  # a day or hour out of range, as Go's time.Parse refuses it
        return None
    return int(when.timestamp()) * 10**9


@dataclass(frozen=True)
class Commit:
    id: str
    parents: tuple[str, ...]
    committer_time: str  # as Gitiles prints it (time.ANSIC, maybe with a zone)
    tree_diff: tuple[TreeDiff, ...] = field(default=())

    @property
    def committer_time_ns(self) -> int:
        """The committer time in ns since the epoch; 0 if Gitiles gave none it could read
        (LUCI's client would refuse the whole log; a poll here goes on without it)."""
        return parse_gitiles_time(self.committer_time) or 0


def path_escape(text: str) -> str:
    """Go's url.PathEscape."""
    return quote(text, safe="$&+,;=:@")


def _commit(raw: dict[str, Any]) -> Commit:
    diff = tuple(
        TreeDiff(d.get("type", ""), d.get("old_path", ""), d.get("new_path", ""))
        for d in raw.get("tree_diff") or ()
    )
    committer = raw.get("committer") or {}
    return Commit(raw["commit"], tuple(raw.get("parents", ())), committer.get("time", ""), diff)


class GitilesClient:
    """The REST client of one Gitiles host (`https://host`, or `http://127.0.0.1:PORT`)."""

    def __init__(
        self,
        host_url: str,
        token: Callable[[], str] | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._base = host_url.rstrip("/") + ("/a" if token is not None else "")
        self._token = token
        # Go's http.Client follows redirects (Gitiles redirects X~n to its commit id).
        self._http = httpx.Client(timeout=timeout_s, follow_redirects=True, transport=transport)

    @property
    def authenticated(self) -> bool:
        return self._token is not None

    def close(self) -> None:
        self._http.close()

    def _bearer(self) -> str:
        assert self._token is not None
        try:
            return self._token()
        except Exception as e:  # google.auth's errors: no credentials, a refused refresh
            raise GitilesError("UNAUTHENTICATED", f"no OAuth token for {self._base}: {e}") from e

    def _get(self, path: str, query: dict[str, str]) -> Any:
        url = f"{self._base}/{path.removeprefix('/')}"
        url += "?" + urlencode(sorted({**query, "format": "JSON"}.items()))
        headers = {"Authorization": f"Bearer {self._bearer()}"} if self._token else {}
        try:
            response = self._http.get(url, headers=headers)
        except httpx.TimeoutException as e:
            raise GitilesError("DEADLINE_EXCEEDED", f"{url}: {e}") from e
        except httpx.HTTPError as e:
            raise GitilesError("UNKNOWN", f"{url}: {e}") from e
        status = response.status_code
        if status != 200:
            messages = {
                400: response.text,
                401: "unauthenticated",
                403: "permission denied",
                404: "not found",
                429: "insufficient Gitiles quota",
                502: "bad gateway",
                503: "service unavailable",
            }
            message = messages.get(status, f"unexpected HTTP {status} from Gitiles")
            raise GitilesError(_CODES.get(status, "INTERNAL"), message, status)
        try:
            return json.loads(response.content.removeprefix(JSON_PREFIX))
        except ValueError as e:
            raise GitilesError("INTERNAL", f"bad JSON from Gitiles: {e}", status) from e

    def refs(self, project: str, refs_path: str) -> dict[str, str]:
        """Refs under `refs_path` ("refs/heads"): full name → commit (a tag: its tag object,
        as Gitiles' `value`; symbolic refs skipped)."""
        refs_path = refs_path.rstrip("/")
        answer = self._get(f"/{path_escape(project)}/+{path_escape(refs_path)}", {})
        revisions: dict[str, str] = {}
        for ref, value in answer.items():
            if not value.get("value") or ref == "HEAD":
                continue
            revisions[ref if refs_path == "refs" else f"{refs_path}/{ref}"] = value["value"]
        return revisions

    def log(
        self,
        project: str,
        committish: str,
        exclude_ancestors_of: str = "",
        page_size: int = 0,
        tree_diff: bool = False,
        page_token: str = "",
    ) -> tuple[list[Commit], str]:
        """One page of the log, newest first, and the next page's token ("" at the end)."""
        query: dict[str, str] = {}
        if page_size > 0:
            query["n"] = str(page_size)
        if tree_diff:
            query["name-status"] = "1"
        if page_token:
            query["s"] = page_token
        revs = f"{exclude_ancestors_of}..{committish}" if exclude_ancestors_of else committish
        answer = self._get(f"/{path_escape(project)}/+log/{path_escape(revs)}", query)
        return [_commit(c) for c in answer.get("log", ())], str(answer.get("next", ""))

    def paging_log(
        self,
        project: str,
        committish: str,
        limit: int,
        exclude_ancestors_of: str = "",
        page_size: int = 0,
        tree_diff: bool = False,
    ) -> list[Commit]:
        """log.go's PagingLog: pages until `limit` commits or the end, newest first."""
        commits: list[Commit] = []
        token = ""
        while True:
            size = page_size
            if size == 0 or size > limit - len(commits):
                size = limit - len(commits)
            page, token = self.log(
                project, committish, exclude_ancestors_of, size, tree_diff, token
            )
            commits += page[: limit - len(commits)]
            if len(commits) >= limit or not token:
                return commits


class GitilesClients:
    """One client per host URL, made on first use and kept: a client costs tens of
    milliseconds to make (httpx loads the CA bundle), more than a whole poll otherwise."""

    def __init__(self, make: Callable[[str], GitilesClient] = GitilesClient) -> None:
        self._make = make
        self._clients: dict[str, GitilesClient] = {}
        self._lock = threading.Lock()

    def __call__(self, host_url: str) -> GitilesClient:
        with self._lock:
            if host_url not in self._clients:
                self._clients[host_url] = self._make(host_url)
            return self._clients[host_url]
