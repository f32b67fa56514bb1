"""A Gitiles simulator: `+refs` and `+log` over HTTP as Gitiles serves them to luci-go's
`common/api/gitiles/rest.go`, and a control API under /sim/ that pushes, branches, force-pushes,
deletes refs and injects failures.

Requests are read as Gitiles reads them (`GitilesFilter`'s URL patterns, `RevisionParser`,
`LogServlet`, `Paginator`, `RefServlet`); answers are Gson's pretty, HTML-safe JSON after the
`)]}'` line; failures carry Gitiles' status and its `X-Gitiles-Error` reason.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote

from ..httpserver import QuietHandler, serve
from .repo import (
    HEX,
    Commit,
    GitError,
    Ident,
    Repository,
    Tag,
    check_ref_name,
    gitiles_time,
    now_utc,
    parse_tz,
)

Json = dict[str, Any]
Params = dict[str, list[str]]

XSSI_PREFIX = b")]}'\n"
# GitilesFilter.REPO_PATH_REGEX: the repository, then the command (+log, +refs, …), then a path.
REPO_PATH = re.compile(r"/*(/.*?)/(\+[a-z0-9-]*)((?:/.*)?)", re.S)
OTHER_COMMANDS = frozenset({"+", "+show", "+archive", "+blame", "+describe", "+diff", "+doc"})
FORMATS = frozenset({"HTML", "TEXT", "JSON", "DEFAULT"})  # FormatType
DEFAULT_LIMIT = 100  # LogServlet
MAX_LIMIT = 10000
LONG = range(-(2**63), 2**63)
# Gson's HTML-safe escaping, and the two line separators it always escapes.
GSON_ESCAPES = {c: f"\\u{ord(c):04x}" for c in "<>&='\u2028\u2029"}
# GitilesRequestFailureException.FailureReason: status and message.
FAILURES = {
    "CANNOT_PARSE_GITILES_VIEW": (404, "Cannot parse URL as a Gitiles URL"),
    "OBJECT_NOT_FOUND": (404, "Object is not found"),
    "REPOSITORY_NOT_FOUND": (404, "Repository is not found"),
    "UNSUPPORTED_RESPONSE_FORMAT": (400, "The specified format type is not supported"),
    "INTERNAL_SERVER_ERROR": (500, "Internal server error"),
}
DEFAULT_NAME = "Sim Author"
DEFAULT_EMAIL = "author@example.com"
RECENT = 1000  # requests kept for /sim/state
KINDS = ("refs", "log", "other")


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: Mapping[str, str] = field(default_factory=dict)


class GitilesFailure(Exception):
    """A request Gitiles refuses, with its FailureReason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def answer(self) -> Answer:
        status, message = FAILURES[self.reason]
        return Answer(status, f"{message}\n".encode(), headers={"X-Gitiles-Error": self.reason})


def not_simulated(what: str) -> Answer:
    return Answer(501, f"not simulated: {what}\n".encode())


def gson(value: object) -> bytes:
    """Gson as Gitiles configures it: pretty-printed, HTML-safe, the non-executable prefix,
    a final newline."""
    text = json.dumps(value, indent=2, ensure_ascii=False)
    for char, escape in GSON_ESCAPES.items():
        text = text.replace(char, escape)
    return XSSI_PREFIX + text.encode() + b"\n"


def json_answer(value: object) -> Answer:
    headers = {"Content-Disposition": "attachment", "X-Content-Type-Options": "nosniff"}
    return Answer(200, gson(value), "application/json; charset=utf-8", headers)


@dataclass(frozen=True)
class Request:
    """A Gitiles URL as GitilesFilter splits it: the repository, the command, the path."""

    target: str  # as received: path and query
    host: str
    auth: bool  # the /a/ prefix
    project: str
    command: str  # "+log", "+refs", … or "" for an index
    rest: str  # what follows the command
    params: Params

    @property
    def kind(self) -> str:
        return {"+refs": "refs", "+log": "log"}.get(self.command, "other")


def parse_request(target: str, host: str) -> Request:
    raw_path, _, raw_query = target.partition("?")
    auth = raw_path.startswith("/a/")
    path = unquote(raw_path[2:] if auth else raw_path)
    match = REPO_PATH.fullmatch(path)
    project = (match[1] if match else path).strip("/")
    command, rest = (match[2], match[3]) if match else ("", "")
    params = parse_qs(raw_query, keep_blank_values=True)
    return Request(target, host, auth, project, command, rest, params)


# Revisions, as Gitiles' RevisionParser reads them.


@dataclass(frozen=True)
class Revisions:
    name: str
    id: str
    old: tuple[str, str] | None  # the name and id before "..", if any
    path: str


def valid_revision(name: str) -> bool:
    """RevisionParser.isValidRevision: expressions Gitiles does not take."""
    return not (":" in name or "^{" in name or "@{" in name or name == "@")


def parse_revision(repo: Repository, path: str) -> Revisions | None:
    """RevisionParser.parse: `new`, `old..new` or `new^!`, then an optional path; the longest
    run of segments is not sought, the first that resolves wins."""
    path = path.removeprefix("/")
    old: tuple[str, str] | None = None
    built = ""
    for index, part in enumerate(path.split("/")):
        if not part:
            return None
        if index:
            built += "/"
        if old is None:
            dots, bang = part.find(".."), part.find("^!")
            if dots == 0 or bang == 0:
                return None
            if dots > 0:
                old_name = built + part[:dots]
                old_id = repo.resolve(old_name) if valid_revision(old_name) else None
                if old_id is None:
                    return None
                old, part, built = (old_name, old_id), part[dots + 2 :], ""
            elif bang > 0:
                if bang != len(part) - 2:
                    return None
                return _first_parent(repo, path, built + part[:bang])
        built += part
        if not valid_revision(built):
            return None
        oid = repo.resolve(built)
        if oid is not None:
            start = len(built) + (0 if old is None else len(old[0]) + 2)
            result = Revisions(built, oid, old, path[start:])
            return result if visible(repo, result) else None
    return None


def _first_parent(repo: Repository, path: str, name: str) -> Revisions | None:
    """`X^!`: X alone, `X^..X` (a root commit: its whole history, as Gitiles shows it)."""
    commit = repo.peel(repo.resolve(name)) if valid_revision(name) else None
    if commit is None:
        return None
    old = (name + "^", commit.parents[0]) if commit.parents else None
    result = Revisions(name, commit.id, old, path[len(name) + 2 :])
    return result if visible(repo, result) else None


def visible(repo: Repository, revisions: Revisions) -> bool:
    """RevisionParser.isVisible: a name that starts with a ref is; an id must be reachable."""
    if repo.find_ref(re.split(r"[~^]", revisions.name, maxsplit=1)[0]) is not None:
        return True
    if not repo.is_visible(revisions.id):
        return False
    return revisions.old is None or repo.is_visible(revisions.old[1], [revisions.id])


# +log, as LogServlet and Paginator serve it.


def parse_limit(params: Params) -> int:
    values = params.get("n")
    if not values or not re.fullmatch(r"-?\d+", values[0]) or int(values[0]) not in LONG:
        return DEFAULT_LIMIT
    limit = min(int(values[0]), MAX_LIMIT)
    if limit <= 0:  # Paginator's checkArgument: an uncaught IllegalArgumentException
        raise GitilesFailure("INTERNAL_SERVER_ERROR")
    return limit


def parse_start(repo: Repository, params: Params) -> str | None:
    """`s`: an abbreviated id of exactly one object, whether reachable or not."""
    values = params.get("s", [])
    if not values:
        return None
    if len(values) > 1 or not HEX.fullmatch(values[0]):
        raise GitilesFailure("OBJECT_NOT_FOUND")
    matches = repo.abbreviated(values[0])
    if len(matches) != 1:
        raise GitilesFailure("OBJECT_NOT_FOUND")
    return matches[0]


def paginate(
    commits: Iterator[Commit], limit: int, start: str | None
) -> tuple[list[Commit], str | None, str | None]:
    """Paginator: the page from `start` (the walk's first commit by default), the start of the
    page before it and of the page after it."""
    before: deque[str] = deque(maxlen=limit)
    first = None
    for commit in commits:
        if start is None or commit.id == start:
            first = commit
            break
        before.append(commit.id)
    previous = before[0] if before else None
    if first is None:
        return [], previous, None
    page, following = [first], None
    for commit in commits:
        if len(page) == limit:
            following = commit.id
            break
        page.append(commit)
    return page, previous, following


def ident_json(ident: Ident, repo: Repository) -> Json:
    return {
        "name": ident.name,
        "email": ident.email,
        "time": gitiles_time(ident, zone_suffix=repo.zone_suffix),
    }


def commit_json(repo: Repository, commit: Commit, tree_diff: bool) -> Json:
    result: Json = {
        "commit": commit.id,
        "tree": commit.tree,
        "parents": list(commit.parents),
        "author": ident_json(commit.author, repo),
        "committer": ident_json(commit.committer, repo),
        "message": commit.message,
    }
    if tree_diff:
        result["tree_diff"] = repo.tree_diff(commit)
    return result


def log_revisions(repo: Repository, rest: str) -> Revisions:
    if rest in ("", "/"):  # +log alone: HEAD's history
        head = repo.ref_value("HEAD")
        if head is None:
            raise GitilesFailure("OBJECT_NOT_FOUND")
        return Revisions("HEAD", head, None, "")
    revisions = parse_revision(repo, rest)
    if revisions is None:
        raise GitilesFailure("CANNOT_PARSE_GITILES_VIEW")
    return revisions


def serve_log(repo: Repository, revisions: Revisions, params: Params) -> Json:
    tree_diff = params.get("name-status", [None])[0] in ("1", "")
    limit = parse_limit(params)
    start = parse_start(repo, params)
    commits = repo.walk(revisions.id, revisions.old[1] if revisions.old else None)
    path = revisions.path.strip("/")
    if path:
        commits = (c for c in commits if repo.touches(c, path))
    page, previous, following = paginate(commits, limit, start)
    result: Json = {"log": [commit_json(repo, c, tree_diff) for c in page]}
    if previous is not None:
        result["previous"] = previous
    if following is not None:
        result["next"] = following
    return result


def parent_redirect(request: Request, revisions: Revisions) -> Answer:
    """ViewFilter.normalize: `+log/X~n` (no range) redirects to the id it names."""
    query = request.target.partition("?")[2]
    prefix = "/a" if request.auth else ""
    path = f"{prefix}/{quote(request.project)}/+log/{revisions.id}{revisions.path}"
    return Answer(302, b"", headers={"Location": path + (f"?{query}" if query else "")})


# +refs, as RefServlet serves it.


def serve_refs(repo: Repository, rest: str) -> Json:
    """All refs and HEAD by full name; `+refs/heads`: the names under refs/heads/ without it;
    `+refs/heads/main`: that ref alone, by full name."""
    path = rest.strip("/")
    prefix = ""
    refs = repo.listed_refs()
    if path and f"refs/{path}" in repo.refs:
        refs = [(f"refs/{path}", repo.refs[f"refs/{path}"])]
    elif path:
        prefix = f"refs/{path}/"
        refs = [(name, value) for name, value in refs if name.startswith(prefix)]
    return {name[len(prefix) :]: ref_json(repo, name, value) for name, value in refs}


def ref_json(repo: Repository, name: str, value: str) -> Json:
    result: Json = {"value": value}
    peeled = repo.peel(value)
    if isinstance(repo.objects.get(value), Tag) and peeled is not None:
        result["peeled"] = peeled.id
    if name == "HEAD":
        result["target"] = repo.head
    return result


def check_format(params: Params) -> None:
    fmt = params.get("format", [""])[0].upper()
    if fmt and fmt not in FORMATS:
        raise GitilesFailure("UNSUPPORTED_RESPONSE_FORMAT")
    if fmt != "JSON":
        raise NotSimulated(f"format={fmt or '(none)'}; the simulator serves format=JSON")


class NotSimulated(Exception):
    pass


# The control API's bodies.


def _get(body: Json, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    if key not in body:
        if default is ...:
            raise GitError(400, f"{key!r} is required")
        return default
    value = body[key]
    if value is None and default is None:
        return None
    if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
        raise GitError(400, f"{key!r}: wrong type {type(value).__name__}")
    return value


def _only(body: Any, keys: set[str], where: str) -> Json:
    if not isinstance(body, dict):
        raise GitError(400, f"{where}: expected a JSON object")
    if unknown := set(body) - keys:
        raise GitError(400, f"{where}: unknown keys {', '.join(sorted(unknown))}")
    return body


def parse_ident(raw: Any, default: Ident, where: str) -> Ident:
    if raw is None:
        return default
    body = _only(raw, {"name", "email"}, where)
    return Ident(
        _get(body, "name", str, default.name),
        _get(body, "email", str, default.email),
        default.time,
        default.tz,
    )


def check_project(name: str) -> None:
    parts = name.split("/")
    if any(not p or p in (".", "..") for p in parts) or "+" in name or name.endswith(".git"):
        raise GitError(400, f"bad project name {name!r}")
    if parts[0] == "a":
        raise GitError(400, f"{name!r}: a first folder 'a' reads as the /a/ prefix")


@dataclass
class Fault:
    status: int
    times: int
    kind: str = "*"
    project: str | None = None
    contains: str | None = None

    def matches(self, kind: str, project: str, target: str) -> bool:
        return (
            self.times > 0
            and self.kind in ("*", kind)
            and self.project in (None, project)
            and (self.contains is None or self.contains in target)
        )


class GitilesSim:
    """The repositories, faults and request counts, behind one lock; no sockets."""

    def __init__(self, clock: Callable[[], int] = now_utc) -> None:
        self._lock = threading.RLock()
        self._clock = clock
        self.reset()

    def reset(self) -> Json:
        with self._lock:
            self.repos: dict[str, Repository] = {}
            self.faults: list[Fault] = []
            self.counts: Counter[str] = Counter(dict.fromkeys(KINDS, 0))
            self.recent: deque[Json] = deque(maxlen=RECENT)
            return {}

    # Gitiles.

    def get(self, target: str, host: str) -> Answer:
        request = parse_request(target, host)
        with self._lock:
            self.counts[request.kind] += 1
            fault = self._take_fault(request)
            answer = fault or self._serve(request)
            self.recent.append(
                {
                    "kind": request.kind,
                    "project": request.project,
                    "target": target,
                    "status": answer.status,
                }
            )
            return answer

    def _take_fault(self, request: Request) -> Answer | None:
        for fault in self.faults:
            if fault.matches(request.kind, request.project, unquote(request.target)):
                fault.times -= 1
                return Answer(fault.status, f"simulated HTTP {fault.status}\n".encode())
        return None

    def _serve(self, request: Request) -> Answer:
        command, params = request.command, request.params
        try:
            if not command:
                return self._index(request)
            repo = self.repos.get(request.project)
            if repo is None:
                raise GitilesFailure("REPOSITORY_NOT_FOUND")
            if command == "+refs":
                check_format(params)
                return json_answer(serve_refs(repo, request.rest))
            if command == "+log":
                revisions = log_revisions(repo, request.rest)
                if revisions.old is None and re.search(r"[~^]", revisions.name):
                    return parent_redirect(request, revisions)
                check_format(params)
                return json_answer(serve_log(repo, revisions, params))
            if command in OTHER_COMMANDS:
                return not_simulated(command)
            raise GitilesFailure("CANNOT_PARSE_GITILES_VIEW")
        except GitilesFailure as e:
            return e.answer()
        except NotSimulated as e:
            return not_simulated(str(e))

    def _index(self, request: Request) -> Answer:
        """HostIndexServlet (`/`) and RepositoryIndexServlet (`/{project}`)."""

        def describe(name: str) -> Json:
            return {"name": name, "clone_url": f"http://{request.host}/{name}"}

        project = request.project
        if project and project not in self.repos:
            raise GitilesFailure("REPOSITORY_NOT_FOUND")
        check_format(request.params)
        if project:
            return json_answer(describe(project))
        return json_answer({name: describe(name) for name in sorted(self.repos)})

    # Control.

    def create_repo(self, body: Any) -> Json:
        body = _only(body, {"project", "head", "time_zone_suffix"}, "repo")
        project = _get(body, "project", str)
        check_project(project)
        head = _get(body, "head", str, "refs/heads/main")
        check_ref_name(head)
        with self._lock:
            if project in self.repos:
                raise GitError(409, f"repository {project!r} exists")
            zone_suffix = _get(body, "time_zone_suffix", bool, False)
            self.repos[project] = Repository(project, head, zone_suffix)
            return {"project": project, "head": head}

    def _repo(self, body: Json) -> Repository:
        project = _get(body, "project", str)
        repo = self.repos.get(project)
        if repo is None:
            raise GitError(404, f"no repository {project!r}")
        return repo

    def push(self, body: Any) -> Json:
        """Commits on top of `parent` (the ref's head by default; null: a new root) and the ref
        moved to the last; a move that is no fast-forward needs `force`."""
        body = _only(body, {"project", "ref", "commits", "parent", "force"}, "push")
        ref = _get(body, "ref", str)
        check_ref_name(ref)
        specs = _get(body, "commits", list)
        if not specs:
            raise GitError(400, "'commits': push at least one")
        force = _get(body, "force", bool, False)
        with self._lock:
            repo = self._repo(body)
            parents = self._parents(repo, body, ref)
            known = set(repo.objects)
            try:
                commits = [self._commit(repo, spec, parents, i) for i, spec in enumerate(specs)]
                old = repo.set_ref(ref, commits[-1].id, force=force)
            except GitError:
                for oid in set(repo.objects) - known:
                    del repo.objects[oid]
                raise
            return {
                "ref": ref,
                "old": old,
                "new": commits[-1].id,
                "commits": [c.id for c in commits],
                "forced": old is not None and not repo.fast_forward(old, commits[-1].id),
            }

    def _parents(self, repo: Repository, body: Json, ref: str) -> list[str]:
        if "parent" not in body:
            head = repo.peel(repo.refs.get(ref))
            return [head.id] if head else []
        parent = _get(body, "parent", str, None)
        if parent is None:
            return []
        return [self._commit_named(repo, parent).id]

    @staticmethod
    def _commit_named(repo: Repository, revision: str) -> Commit:
        commit = repo.peel(repo.resolve(revision))
        if commit is None:
            raise GitError(404, f"no commit {revision!r} in {repo.name!r}")
        return commit

    def _commit(self, repo: Repository, raw: Any, parents: list[str], index: int) -> Commit:
        where = f"commits[{index}]"
        keys = {"message", "files", "author", "committer", "time", "tz", "merge"}
        spec = _only(raw, keys, where)
        try:
            tz = parse_tz(_get(spec, "tz", str, "+0000"))
        except ValueError as e:
            raise GitError(400, f"{where}: {e}") from None
        when = Ident(DEFAULT_NAME, DEFAULT_EMAIL, _get(spec, "time", int, self._clock()), tz)
        author = parse_ident(spec.get("author"), when, f"{where}.author")
        committer = parse_ident(spec.get("committer"), author, f"{where}.committer")
        message = _get(spec, "message", str, f"Commit {len(repo.objects) + 1}")
        files = _get(spec, "files", dict, {})
        if not all(isinstance(v, str | None) for v in files.values()):
            raise GitError(400, f"{where}.files: each value is the content, or null to delete")
        merged = [self._commit_named(repo, r).id for r in _get(spec, "merge", list, [])]
        message = message if message.endswith("\n") else message + "\n"
        commit = repo.add_commit([*parents, *merged], files, author, committer, message)
        parents[:] = [commit.id]
        return commit

    def set_ref(self, body: Any) -> Json:
        """Creates or moves a ref to an existing revision (an annotated tag with `tag`), or
        deletes it (`to`: null)."""
        body = _only(body, {"project", "ref", "to", "force", "tag"}, "ref")
        ref = _get(body, "ref", str)
        check_ref_name(ref)
        to = _get(body, "to", str, None)
        with self._lock:
            repo = self._repo(body)
            if to is None:
                if repo.refs.pop(ref, None) is None:
                    raise GitError(404, f"no ref {ref!r} in {repo.name!r}")
                return {"ref": ref, "deleted": True}
            target = repo.resolve(to)
            if target is None:
                raise GitError(404, f"no revision {to!r} in {repo.name!r}")
            tag = _get(body, "tag", dict, None)
            if tag is not None:
                target = self._tag(repo, ref, target, tag).id
            old = repo.set_ref(ref, target, force=_get(body, "force", bool, False))
            return {"ref": ref, "old": old, "new": target}

    def _tag(self, repo: Repository, ref: str, target: str, raw: Json) -> Tag:
        spec = _only(raw, {"message", "tagger", "time", "tz"}, "tag")
        commit = self._commit_named(repo, target)
        try:
            tz = parse_tz(_get(spec, "tz", str, "+0000"))
        except ValueError as e:
            raise GitError(400, f"tag: {e}") from None
        when = Ident(DEFAULT_NAME, DEFAULT_EMAIL, _get(spec, "time", int, self._clock()), tz)
        tagger = parse_ident(spec.get("tagger"), when, "tag.tagger")
        message = _get(spec, "message", str, ref.rsplit("/", 1)[-1])
        message = message if message.endswith("\n") else message + "\n"
        return repo.add_tag(commit.id, ref, tagger, message)

    def add_fault(self, body: Any) -> Json:
        """The next `times` matching Gitiles requests answer `status`."""
        body = _only(body, {"status", "times", "kind", "project", "contains"}, "fault")
        status = _get(body, "status", int)
        times = _get(body, "times", int, 1)
        kind = _get(body, "kind", str, "*")
        if not 400 <= status <= 599 or times < 1 or kind not in ("*", *KINDS):
            raise GitError(400, "fault: status 400..599, times >= 1, kind refs, log, other or *")
        fault = Fault(
            status, times, kind, _get(body, "project", str, None), _get(body, "contains", str, None)
        )
        with self._lock:
            self.faults.append(fault)
        return {}

    def state(self) -> Json:
        with self._lock:
            return {
                "requests": dict(self.counts),
                "recent": list(self.recent),
                "faults": [asdict(f) for f in self.faults if f.times > 0],
                "repos": {
                    name: {"head": repo.head, "refs": dict(sorted(repo.refs.items()))}
                    for name, repo in sorted(self.repos.items())
                },
            }

    def control(self, path: str, body: Any) -> Json:
        handlers: dict[str, Callable[[Any], Json]] = {
            "/sim/reset": lambda _: self.reset(),
            "/sim/repos": self.create_repo,
            "/sim/push": self.push,
            "/sim/refs": self.set_ref,
            "/sim/faults": self.add_fault,
        }
        handler = handlers.get(path)
        if handler is None:
            raise GitError(404, f"no control endpoint {path}")
        return handler(body)


class SimServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], sim: GitilesSim) -> None:
        super().__init__(address, Handler)
        self.sim = sim


class Handler(QuietHandler):
    server: SimServer

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] == "/sim/state":
            self._json(200, self.server.sim.state())
            return
        self._answer(self.server.sim.get(self.path, self.headers.get("Host", "localhost")))

    def do_POST(self) -> None:
        raw = self._body()
        path = self.path.split("?", 1)[0]
        if not path.startswith("/sim/"):
            self._answer(Answer(405, b"Gitiles answers GET only\n"))
            return
        try:
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                raise GitError(400, "the body is not JSON") from None
            self._json(200, self.server.sim.control(path, body))
        except GitError as e:
            self._json(e.status, {"error": str(e)})

    def _answer(self, answer: Answer) -> None:
        self._send(answer.status, answer.body, answer.content_type, answer.headers)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="shepherd-gitiles-sim", description="Serves simulated Gitiles repositories."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        server = SimServer((args.host, args.port), GitilesSim())
    except OSError as e:
        print(f"cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 1
    return serve(server, args.host)
