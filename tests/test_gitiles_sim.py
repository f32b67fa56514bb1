"""The Gitiles simulator over real HTTP, read by a port of luci-go's REST client
(`common/api/gitiles/rest.go`): the cases of its rest_test.go, rest_treediff_test.go and
json_test.go against real answers instead of canned ones, the Gitiles answers behind each case
of `scheduler/appengine/task/gitiles/gitiles_test.go`, then pushes, new refs, force pushes,
404s and pagination."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest

from shepherd_tools.gitiles_sim.control import GitilesSimError, GitilesSimProcess

Json = dict[str, Any]
EPOCH = 1442270520  # gitiles_test.go's epoch
ZERO = "0" * 40
EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"  # git's empty tree


# The client: rest.go, line for line where it matters.


CODES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
}


class RpcError(Exception):
    """rest.go's getRaw: an HTTP status read as a gRPC code."""

    def __init__(self, status: int, body: str) -> None:
        self.code = CODES.get(status, "INTERNAL")
        super().__init__(f"{self.code}: HTTP {status} {body.strip()}")
        self.status = status


@dataclass
class User:
    name: str
    email: str
    time: datetime


@dataclass
class Commit:
    id: str
    tree: str
    parents: list[str]
    author: User
    committer: User
    message: str
    tree_diff: list[Json] = field(default_factory=list)


def path_escape(text: str) -> str:
    """Go's url.PathEscape."""
    return quote(text, safe="$&+,;=:@")


def parse_time(text: str) -> datetime:
    """json.go's ts.UnmarshalJSON: time.ANSIC, else ANSIC with a numeric zone."""
    try:
        return datetime.strptime(text, "%a %b %d %H:%M:%S %Y").replace(tzinfo=UTC)
    except ValueError:
        return datetime.strptime(text, "%a %b %d %H:%M:%S %Y %z")


def parse_user(raw: Json) -> User:
    return User(raw["name"], raw["email"], parse_time(raw["time"]))


def parse_commit(raw: Json) -> Commit:
    return Commit(
        raw["commit"],
        raw["tree"],
        raw["parents"],
        parse_user(raw["author"]),
        parse_user(raw["committer"]),
        raw["message"],
        raw.get("tree_diff") or [],
    )


class RestClient:
    """NewRESTClient(httpClient, host, auth): the /a/ prefix when authenticated."""

    def __init__(self, url: str, *, auth: bool = True) -> None:
        self.base = url + ("/a" if auth else "")
        # Go's http.Client follows redirects (Gitiles redirects X~n to its id).
        self.http = httpx.Client(timeout=10, follow_redirects=True)

    def close(self) -> None:
        self.http.close()

    def get_raw(self, path: str, query: Json) -> bytes:
        url = f"{self.base}/{path.removeprefix('/')}"
        if query:
            url += "?" + urlencode(sorted(query.items()))  # url.Values.Encode sorts by key
        response = self.http.get(url)
        if response.status_code != 200:
            raise RpcError(response.status_code, response.text)
        return response.content.removeprefix(b")]}'")

    def get(self, path: str, query: Json | None = None) -> Any:
        return json.loads(self.get_raw(path, {**(query or {}), "format": "JSON"}))

    def log(
        self,
        project: str,
        committish: str,
        exclude_ancestors_of: str = "",
        page_size: int = 0,
        tree_diff: bool = False,
        page_token: str = "",
        path: str = "",
    ) -> tuple[list[Commit], str]:
        params: Json = {}
        if page_size > 0:
            params["n"] = str(page_size)
        if tree_diff:
            params["name-status"] = "1"
        if page_token:
            params["s"] = page_token
        ref = committish
        if exclude_ancestors_of:
            ref = f"{exclude_ancestors_of}..{committish}"
        url = f"/{path_escape(project)}/+log/{path_escape(ref)}"
        if path:
            url = f"{url}/{path}"
        answer = self.get(url, params)
        return [parse_commit(c) for c in answer["log"]], answer.get("next", "")

    def paging_log(self, project: str, committish: str, limit: int, **request: Any) -> list[Commit]:
        """log.go's PagingLog: pages of request's page_size, at most `limit` commits."""
        commits: list[Commit] = []
        token = ""
        while True:
            page_size = request.get("page_size", 0)
            if page_size == 0 or page_size > limit - len(commits):
                page_size = limit - len(commits)
            page, token = self.log(
                project, committish, **{**request, "page_size": page_size, "page_token": token}
            )
            commits += page[: limit - len(commits)]
            if len(commits) == limit or not token:
                return commits

    def refs(self, project: str, refs_path: str) -> dict[str, str]:
        refs_path = refs_path.rstrip("/")
        answer = self.get(f"/{path_escape(project)}/+{path_escape(refs_path)}")
        revisions = {}
        for ref, value in answer.items():
            if not value.get("value"):
                continue
            if ref == "HEAD":
                revisions["HEAD"] = value["target"]
            elif refs_path != "refs":
                revisions[f"{refs_path}/{ref}"] = value["value"]
            else:
                revisions[ref] = value["value"]
        return revisions

    def get_project(self, name: str) -> Json:
        return self.get(f"/{name}", {})

    def projects(self) -> list[str]:
        return sorted(self.get("/", {}))


# Fixtures.


@pytest.fixture(scope="module")
def sim() -> Iterator[GitilesSimProcess]:
    with GitilesSimProcess() as process:
        yield process


@pytest.fixture
def gitiles(sim: GitilesSimProcess) -> GitilesSimProcess:
    sim.reset()
    return sim


@pytest.fixture
def client(gitiles: GitilesSimProcess) -> Iterator[RestClient]:
    rest = RestClient(gitiles.url)
    yield rest
    rest.close()


@pytest.fixture
def raw(gitiles: GitilesSimProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gitiles.url, timeout=10) as http:
        yield http


def spec(message: str, time: int, **more: Any) -> Json:
    return {"message": message, "time": time, **more}


def last_target(gitiles: GitilesSimProcess) -> str:
    return str(gitiles.state()["recent"][-1]["target"])


# rest_test.go


def test_log_without_pages_returns_all(gitiles: GitilesSimProcess, client: RestClient) -> None:
    """TestLog "Log w/o pages": master..<commit> with n=10."""
    gitiles.create_repo("repo", head="refs/heads/master")
    gitiles.push("repo", "refs/heads/master", [spec("base", 1500000000)])
    author2 = {"name": "Author 2", "email": "author-2@example.com"}
    author1 = {"name": "Author 1", "email": "author1@example.com"}
    bot = {"name": "Commit Bot", "email": "commit-bot@chromium.org"}
    pushed = gitiles.push(
        "repo",
        "refs/heads/feature",
        [
            spec("[Web Payments] second", 1500303673, author=author2, committer=bot),
            spec("Import wpt", 1500303763, author=author1, committer=bot),
        ],
        parent="refs/heads/master",
    )
    commits, _ = client.log("repo", pushed["new"], exclude_ancestors_of="master", page_size=10)
    assert len(commits) == 2
    assert commits[0].author.name == "Author 1"
    assert commits[1].id == pushed["commits"][0]
    assert commits[0].parents == [pushed["commits"][0]]
    assert commits[0].committer.email == "commit-bot@chromium.org"
    assert last_target(gitiles) == f"/a/repo/+log/master..{pushed['new']}?format=JSON&n=10"


def test_refs_all(gitiles: GitilesSimProcess, client: RestClient) -> None:
    """TestRefs "Refs All": full names, HEAD as its target."""
    gitiles.create_repo("repo", head="refs/heads/master")
    master = gitiles.push("repo", "refs/heads/master")["new"]
    config = gitiles.push("repo", "refs/heads/infra/config", parent=None)["new"]
    change = gitiles.push("repo", "refs/changes/01/123001/1")["new"]
    gitiles.set_ref("repo", "refs/other/ref", master)
    assert client.refs("repo", "refs") == {
        "HEAD": "refs/heads/master",
        "refs/heads/master": master,
        "refs/heads/infra/config": config,
        "refs/other/ref": master,
        "refs/changes/01/123001/1": change,
    }


def test_refs_heads(gitiles: GitilesSimProcess, client: RestClient, raw: httpx.Client) -> None:
    """TestRefs "Refs heads": Gitiles leaves the refs path out of each name; rest.go puts it
    back."""
    gitiles.create_repo("repo", head="refs/heads/master")
    master = gitiles.push("repo", "refs/heads/master")["new"]
    config = gitiles.push("repo", "refs/heads/infra/config", parent=None)["new"]
    gitiles.push("repo", "refs/tags/v1", parent=None)
    assert client.refs("repo", "refs/heads") == {
        "refs/heads/master": master,
        "refs/heads/infra/config": config,
    }
    assert last_target(gitiles) == "/a/repo/+refs%2Fheads?format=JSON"
    body = raw.get("/repo/+refs/heads/", params={"format": "JSON"}).content
    assert json.loads(body.removeprefix(b")]}'\n")) == {
        "infra/config": {"value": config},
        "master": {"value": master},
    }


def test_get_project_and_projects(gitiles: GitilesSimProcess, client: RestClient) -> None:
    """TestGetProject and TestProjects."""
    gitiles.create_repo("bar")
    gitiles.create_repo("All-Projects")
    project = client.get_project("bar")
    assert project == {"name": "bar", "clone_url": f"{gitiles.url}/bar"}
    assert client.projects() == ["All-Projects", "bar"]


def test_log_with_tree_diff(gitiles: GitilesSimProcess, client: RestClient) -> None:
    """rest_treediff_test.go: name-status=1 gives each commit's tree_diff."""
    gitiles.create_repo("repo", head="refs/heads/master")
    base = gitiles.push(
        "repo",
        "refs/heads/master",
        [spec("base", EPOCH, files={"infra/config/recipes.cfg": "a\n", "keep": "k\n"})],
    )["new"]
    new = gitiles.push(
        "repo",
        "refs/heads/master",
        [
            spec("Roll recipe dependencies (trivial).", EPOCH + 60, files={"keep": "k2\n"}),
            spec("Roll", EPOCH + 120, files={"infra/config/recipes.cfg": "b\n"}),
        ],
    )["new"]
    commits, _ = client.log("repo", new, exclude_ancestors_of=base, page_size=10, tree_diff=True)
    assert len(commits) == 2
    assert commits[1].tree_diff[0] == {
        "type": "modify",
        "old_id": git_blob("k\n"),
        "old_mode": 33188,
        "old_path": "keep",
        "new_id": git_blob("k2\n"),
        "new_mode": 33188,
        "new_path": "keep",
    }
    assert "name-status=1" in last_target(gitiles)


def test_times_parse_as_json_go_reads_them(gitiles: GitilesSimProcess, client: RestClient) -> None:
    """json_test.go TestUser: 2016-03-09 03:46:18 UTC; in UTC with no zone by default (as
    googlesource.com answers), in the committer's zone with one if asked."""
    gitiles.create_repo("utc")
    gitiles.create_repo("zoned", time_zone_suffix=True)
    for project in ("utc", "zoned"):
        gitiles.push(project, "refs/heads/main", [spec("I am\na\nbanana", 1457495178, tz="-0800")])
    (utc,), _ = client.log("utc", "refs/heads/main")
    (zoned,), _ = client.log("zoned", "refs/heads/main")
    assert utc.author.time == zoned.author.time == datetime.fromtimestamp(1457495178, UTC)
    assert utc.message == "I am\na\nbanana\n"
    answer = client.get("/zoned/+log/main")
    assert answer["log"][0]["committer"]["time"] == "Tue Mar 08 19:46:18 2016 -0800"
    answer = client.get("/utc/+log/main")
    assert answer["log"][0]["committer"]["time"] == "Wed Mar 09 03:46:18 2016"


def test_answers_are_gsons(gitiles: GitilesSimProcess, raw: httpx.Client) -> None:
    """Gson as Gitiles sets it up: the )]}' line, pretty, HTML-safe escapes, no nulls."""
    gitiles.create_repo("repo")
    gitiles.push("repo", "refs/heads/main", [spec("TBR=a <b@c> & 'd'", EPOCH)])
    response = raw.get("/repo/+log/main", params={"format": "JSON"})
    assert response.headers["content-type"].startswith("application/json")
    text = response.text
    assert text.startswith(')]}\'\n{\n  "log": [\n    {\n      "commit": ')
    assert "TBR\\u003da \\u003cb@c\\u003e \\u0026 \\u0027d\\u0027\\n" in text
    assert "next" not in text and "previous" not in text and "tree_diff" not in text
    assert text.endswith("}\n")


# Commits are git's own.


def git_blob(content: str) -> str:
    import hashlib

    data = content.encode()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_ids_are_the_ones_git_computes(
    gitiles: GitilesSimProcess, client: RestClient, tmp_path: Path
) -> None:
    gitiles.create_repo("repo")
    files = {"README.md": "hi\n", "src/a/b.py": "x = 1\n", "src/c.txt": "c\n", "src.txt": "s\n"}
    who = {"name": "A U Thor", "email": "author@example.com"}
    first = spec("First", EPOCH, files=files, author=who, tz="+0530")
    second = spec("Second\n\nBody.", EPOCH + 60, files={"src/c.txt": None}, author=who)
    pushed = gitiles.push("repo", "refs/heads/main", [first, second])
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "A U Thor",
        "GIT_AUTHOR_EMAIL": "author@example.com",
        "GIT_COMMITTER_NAME": "A U Thor",
        "GIT_COMMITTER_EMAIL": "author@example.com",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
    }

    def git(*args: str, when: str = "") -> str:
        run_env = {**env, "GIT_AUTHOR_DATE": when, "GIT_COMMITTER_DATE": when}
        done = subprocess.run(
            ["git", *args], cwd=tmp_path, env=run_env, capture_output=True, text=True, check=True
        )
        return done.stdout.strip()

    git("init", "-q")
    for path, content in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(content)
    git("add", "-A")
    git("commit", "-q", "-m", "First", when=f"@{EPOCH} +0530")
    (tmp_path / "src/c.txt").unlink()
    git("add", "-A")
    git("commit", "-q", "-m", "Second\n\nBody.", when=f"@{EPOCH + 60} +0000")
    assert pushed["commits"] == [git("rev-parse", "HEAD~1"), git("rev-parse", "HEAD")]
    commits, _ = client.log("repo", "refs/heads/main", tree_diff=True)
    assert commits[0].tree == git("rev-parse", "HEAD^{tree}")
    assert [d["old_path"] for d in commits[0].tree_diff] == ["src/c.txt"]
    assert commits[0].tree_diff[0]["type"] == "delete"
    assert commits[0].tree_diff[0]["new_path"] == "/dev/null"
    assert commits[0].tree_diff[0]["new_id"] == ZERO
    assert [d["new_path"] for d in commits[1].tree_diff] == sorted(files)
    assert {d["type"] for d in commits[1].tree_diff} == {"add"}
    tag = {"message": "Release 1", "time": EPOCH + 120, "tagger": who}
    tagged = gitiles.set_ref("repo", "refs/tags/v1", "main", tag=tag)
    git("tag", "-a", "v1", "-m", "Release 1", when=f"@{EPOCH + 120} +0000")
    assert tagged["new"] == git("rev-parse", "v1")


def test_an_empty_commit_has_the_empty_tree(gitiles: GitilesSimProcess, client: RestClient) -> None:
    gitiles.create_repo("repo")
    gitiles.push("repo", "refs/heads/main")
    (commit,), _ = client.log("repo", "refs/heads/main")
    assert commit.tree == EMPTY_TREE
    assert commit.parents == []


def test_exact_renames_and_merges(gitiles: GitilesSimProcess, client: RestClient) -> None:
    gitiles.create_repo("repo")
    gitiles.push("repo", "refs/heads/main", [spec("a", EPOCH, files={"old.txt": "same\n"})])
    side = gitiles.push("repo", "refs/heads/side", [spec("side", EPOCH + 1, files={"s": "s\n"})])
    gitiles.push(
        "repo",
        "refs/heads/main",
        [
            spec("move", EPOCH + 2, files={"old.txt": None, "new.txt": "same\n"}),
            spec("merge", EPOCH + 3, merge=[side["new"]]),
        ],
    )
    commits, _ = client.log("repo", "main", tree_diff=True)
    assert [c.message for c in commits] == ["merge\n", "move\n", "side\n", "a\n"]
    assert len(commits[0].parents) == 2
    assert commits[0].tree_diff == []  # Gitiles shows no diff for a merge
    (rename,) = commits[1].tree_diff
    assert (rename["type"], rename["old_path"], rename["new_path"]) == (
        "rename",
        "old.txt",
        "new.txt",
    )
    assert rename["score"] == 100


# The Gitiles answers behind gitiles_test.go's cases (TestTriggerBuild).


def test_configured_refs_that_match_nothing(gitiles: GitilesSimProcess, client: RestClient) -> None:
    """ "each configured ref must match resolved ref": the prefixes answer, without them."""
    gitiles.create_repo("b")
    gitiles.push("b", "refs/heads/not-master")
    gitiles.push("b", "refs/branch-heads/not-digits", parent=None)
    assert list(client.refs("b", "refs/heads")) == ["refs/heads/not-master"]
    assert list(client.refs("b", "refs/branch-heads")) == ["refs/branch-heads/not-digits"]


def test_new_ref_is_discovered(gitiles: GitilesSimProcess, client: RestClient) -> None:
    """ "new refs are discovered": the head alone, with n=1."""
    gitiles.create_repo("b", head="refs/heads/master")
    pushed = gitiles.push("b", "refs/heads/master", 3)
    gitiles.push("b", "refs/weird")
    tips = client.refs("b", "refs/heads")
    assert tips == {"refs/heads/master": pushed["new"]}
    commits = client.paging_log("b", tips["refs/heads/master"], 1, page_size=1)
    assert [c.id for c in commits] == [pushed["new"]]


def test_regexp_refs_updated_and_new(gitiles: GitilesSimProcess, client: RestClient) -> None:
    """ "regexp refs are matched correctly": 1.1 moved two commits, 1.2 new, 1.2.3 beside."""
    gitiles.create_repo("b")
    old = gitiles.push("b", "refs/branch-heads/1.1", [spec("c02", EPOCH - 180)])["new"]
    moved = gitiles.push(
        "b", "refs/branch-heads/1.1", [spec("c01", EPOCH - 120), spec("c00", EPOCH - 60)]
    )
    new = gitiles.push("b", "refs/branch-heads/1.2", parent=None)["new"]
    gitiles.push("b", "refs/branch-heads/1.2.3", parent=None)
    tips = client.refs("b", "refs/branch-heads")
    assert set(tips) == {
        "refs/branch-heads/1.1",
        "refs/branch-heads/1.2",
        "refs/branch-heads/1.2.3",
    }
    commits = client.paging_log(
        "b", tips["refs/branch-heads/1.1"], 50, exclude_ancestors_of=old, page_size=50
    )
    assert [c.id for c in commits] == moved["commits"][::-1]  # newest first
    assert [c.committer.time.timestamp() for c in commits] == [EPOCH - 60, EPOCH - 120]
    assert client.paging_log("b", tips["refs/branch-heads/1.2"], 1, page_size=1)[0].id == new


def test_path_filters_read_tree_diffs(gitiles: GitilesSimProcess, client: RestClient) -> None:
    """ "Updated ref with pathfilters": every changed path, for the poller to filter."""
    gitiles.create_repo("b")
    old = gitiles.push("b", "refs/heads/master", [spec("04", EPOCH - 300)])["new"]
    files = [
        {"nothing-matched-means-skipped": "1"},
        {"skip/this-file": "2", "not-matched-file": "2", "but-still.emit": "2"},
        {"yup.emit": "3"},
        {"skip/commit": "4"},
    ]
    gitiles.push(
        "b",
        "refs/heads/master",
        [spec(f"0{3 - i}", EPOCH - 240 + 60 * i, files=f) for i, f in enumerate(files)],
    )
    commits = client.paging_log(
        "b", "refs/heads/master", 50, exclude_ancestors_of=old, page_size=50, tree_diff=True
    )
    assert [sorted(d["new_path"] for d in c.tree_diff) for c in commits] == [
        ["skip/commit"],
        ["yup.emit"],
        ["but-still.emit", "not-matched-file", "skip/this-file"],
        ["nothing-matched-means-skipped"],
    ]


def test_force_push_going_backwards(gitiles: GitilesSimProcess, client: RestClient) -> None:
    """ "force push going backwards": the old head still reachable (here from another branch),
    so old..new is an empty log."""
    gitiles.create_repo("b")
    pushed = gitiles.push("b", "refs/heads/master", 3)
    gitiles.set_ref("b", "refs/heads/keep", pushed["new"])
    with pytest.raises(GitilesSimError) as refused:
        gitiles.set_ref("b", "refs/heads/master", pushed["commits"][0])
    assert refused.value.status == 409  # not a fast-forward
    gitiles.set_ref("b", "refs/heads/master", pushed["commits"][0], force=True)
    commits = client.paging_log(
        "b", pushed["commits"][0], 50, exclude_ancestors_of=pushed["new"], page_size=50
    )
    assert commits == []


def test_force_push_wiping_out_prior_head(gitiles: GitilesSimProcess, client: RestClient) -> None:
    """ "force push wiping out prior HEAD": old..new and old are 404, new alone works — how
    the poller tells a force push from a fluke."""
    gitiles.create_repo("b")
    old = gitiles.push("b", "refs/heads/master", 3)["new"]
    forced = gitiles.force_push("b", "refs/heads/master", 2)
    assert forced["forced"] is True and forced["old"] == old
    new = client.refs("b", "refs/heads")["refs/heads/master"]
    assert new == forced["new"]
    with pytest.raises(RpcError) as missing:
        client.paging_log("b", new, 50, exclude_ancestors_of=old, page_size=50)
    assert missing.value.code == "NOT_FOUND"
    assert [c.id for c in client.paging_log("b", new, 1)] == [new]
    with pytest.raises(RpcError) as gone:
        client.paging_log("b", old, 1)
    assert gone.value.code == "NOT_FOUND"


def test_races_and_flukes(gitiles: GitilesSimProcess, client: RestClient) -> None:
    """ "race 1" / "race or fluke" / "weirdly, log(old) and log(new) work": injected 404s on
    the exact requests, then the same requests succeed."""
    gitiles.create_repo("b")
    old = gitiles.push("b", "refs/heads/master")["new"]
    new = gitiles.push("b", "refs/heads/master")["new"]
    gitiles.fail_next(1, 404, kind="log", contains=f"{old}..{new}")
    gitiles.fail_next(1, 404, kind="log", contains=f"+log/{new}?")
    for committish, exclude in ((new, old), (new, "")):
        with pytest.raises(RpcError) as fluke:
            client.log("b", committish, exclude_ancestors_of=exclude, page_size=1)
        assert fluke.value.code == "NOT_FOUND"
    assert [c.id for c in client.log("b", new, exclude_ancestors_of=old)[0]] == [new]
    assert [c.id for c in client.log("b", old, page_size=1)[0]] == [old]


@pytest.mark.parametrize(
    ("status", "code"),
    [(503, "UNAVAILABLE"), (502, "UNAVAILABLE"), (429, "RESOURCE_EXHAUSTED"), (500, "INTERNAL")],
)
def test_transient_failures(
    gitiles: GitilesSimProcess, client: RestClient, status: int, code: str
) -> None:
    """ "Ensure progress": a flake on the log, the refs still answer, then it works."""
    gitiles.create_repo("b")
    head = gitiles.push("b", "refs/heads/master")["new"]
    gitiles.fail_next(2, status, kind="log", project="b")
    for _ in range(2):
        with pytest.raises(RpcError) as flake:
            client.log("b", head, page_size=1)
        assert flake.value.code == code
        assert client.refs("b", "refs/heads") == {"refs/heads/master": head}
    assert client.log("b", head, page_size=1)[0][0].id == head
    assert gitiles.state()["faults"] == []


def test_tags_new_and_annotated(
    gitiles: GitilesSimProcess, client: RestClient, raw: httpx.Client
) -> None:
    """ "skip pre-existing refs when ref patterns change": refs/tags, lightweight and annotated
    (the value is the tag object, `peeled` its commit; the log peels it)."""
    gitiles.create_repo("b")
    head = gitiles.push("b", "refs/heads/master")["new"]
    gitiles.set_ref("b", "refs/tags/foobar", head)
    tag = gitiles.set_ref("b", "refs/tags/foobaz", head, tag={"message": "v2", "time": EPOCH})
    assert tag["new"] != head
    tips = client.refs("b", "refs/tags")
    assert tips == {"refs/tags/foobar": head, "refs/tags/foobaz": tag["new"]}
    body = raw.get("/b/+refs/tags", params={"format": "JSON"}).content
    assert json.loads(body[5:])["foobaz"] == {"value": tag["new"], "peeled": head}
    assert [c.id for c in client.log("b", tag["new"], page_size=1)[0]] == [head]
    assert [c.id for c in client.log("b", "refs/tags/foobaz", page_size=1)[0]] == [head]


# Pushes, new refs, deleted refs.


def test_pushes_fast_forward_and_count_requests(
    gitiles: GitilesSimProcess, client: RestClient
) -> None:
    gitiles.create_repo("chromium/src")
    first = gitiles.push("chromium/src", "refs/heads/main", 2)
    assert first["old"] is None and first["forced"] is False
    second = gitiles.push("chromium/src", "refs/heads/main", 3)
    assert second["old"] == first["new"] and second["forced"] is False
    commits, _ = client.log("chromium/src", second["new"], exclude_ancestors_of=first["new"])
    assert [c.id for c in commits] == second["commits"][::-1]
    assert commits[-1].parents == [first["new"]]
    assert last_target(gitiles) == (
        f"/a/chromium%2Fsrc/+log/{first['new']}..{second['new']}?format=JSON"
    )
    client.refs("chromium/src", "refs")
    counts = gitiles.request_counts()
    assert counts == {"refs": 1, "log": 1, "other": 0}


def test_new_branch_from_another(gitiles: GitilesSimProcess, client: RestClient) -> None:
    gitiles.create_repo("repo")
    main = gitiles.push("repo", "refs/heads/main", 2)
    branch = gitiles.push("repo", "refs/branch-heads/1", 1, parent="refs/heads/main")
    assert branch["old"] is None
    commits, _ = client.log("repo", "refs/branch-heads/1", exclude_ancestors_of="refs/heads/main")
    assert [c.id for c in commits] == branch["commits"]
    assert commits[0].parents == [main["new"]]
    created = gitiles.set_ref("repo", "refs/heads/release", "main~1")
    assert created == {"ref": "refs/heads/release", "old": None, "new": main["commits"][0]}


def test_deleted_ref_disappears_and_its_commits_go_dark(
    gitiles: GitilesSimProcess, client: RestClient
) -> None:
    """ "New, updated, and deleted refs": a deleted ref is gone from +refs, and commits only it
    reached are no longer visible by id."""
    gitiles.create_repo("b")
    gitiles.push("b", "refs/heads/master")
    only = gitiles.push("b", "refs/branch-heads/x", parent=None)["new"]
    gitiles.delete_ref("b", "refs/branch-heads/x")
    assert client.refs("b", "refs/branch-heads") == {}
    with pytest.raises(RpcError) as dark:
        client.log("b", only)
    assert dark.value.code == "NOT_FOUND"
    with pytest.raises(GitilesSimError) as missing:
        gitiles.delete_ref("b", "refs/branch-heads/x")
    assert missing.value.status == 404


def test_control_refuses_bad_requests(gitiles: GitilesSimProcess) -> None:
    gitiles.create_repo("repo")
    cases: list[tuple[str, Json]] = [
        ("/sim/repos", {"project": "repo"}),  # exists: 409
        ("/sim/repos", {"project": "a/b"}),
        ("/sim/repos", {"project": "x+y"}),
        ("/sim/push", {"project": "nope", "ref": "refs/heads/main", "commits": [{}]}),
        ("/sim/push", {"project": "repo", "ref": "main", "commits": [{}]}),
        ("/sim/push", {"project": "repo", "ref": "refs/heads/main", "commits": []}),
        (
            "/sim/push",
            {"project": "repo", "ref": "refs/heads/x", "commits": [{"files": {"../x": "1"}}]},
        ),
        ("/sim/push", {"project": "repo", "ref": "refs/heads/x", "commits": [{"tz": "EST"}]}),
        ("/sim/push", {"project": "repo", "ref": "refs/heads/x", "commits": [{"bogus": 1}]}),
        ("/sim/refs", {"project": "repo", "ref": "refs/heads/x", "to": "nothing"}),
        ("/sim/faults", {"status": 200}),
    ]
    answers = [httpx.post(gitiles.url + path, json=body).status_code for path, body in cases]
    assert answers == [409, 400, 400, 404, 400, 400, 400, 400, 400, 404, 400]
    assert gitiles.state()["repos"]["repo"]["refs"] == {}


# 404s and other refusals.


def test_not_found(gitiles: GitilesSimProcess, client: RestClient, raw: httpx.Client) -> None:
    gitiles.create_repo("repo")
    head = gitiles.push("repo", "refs/heads/main")["new"]
    missing = {
        "/nope/+refs?format=JSON": "REPOSITORY_NOT_FOUND",
        "/nope/+log/main?format=JSON": "REPOSITORY_NOT_FOUND",
        "/repo/+log/refs/heads/nope?format=JSON": "CANNOT_PARSE_GITILES_VIEW",
        f"/repo/+log/{'f' * 40}?format=JSON": "CANNOT_PARSE_GITILES_VIEW",
        f"/repo/+log/{'f' * 40}..main?format=JSON": "CANNOT_PARSE_GITILES_VIEW",
        "/repo/+log/..main?format=JSON": "CANNOT_PARSE_GITILES_VIEW",
        f"/repo/+log/main..{head}..main?format=JSON": "CANNOT_PARSE_GITILES_VIEW",
        "/repo/+log/main~5?format=JSON": "CANNOT_PARSE_GITILES_VIEW",
        "/repo/+log/main@{1}?format=JSON": "CANNOT_PARSE_GITILES_VIEW",
        "/repo/+log/main?format=JSON&s=zz": "OBJECT_NOT_FOUND",
        f"/repo/+log/main?format=JSON&s={'e' * 40}": "OBJECT_NOT_FOUND",
        "/repo/+nope/main?format=JSON": "CANNOT_PARSE_GITILES_VIEW",
    }
    for target, reason in missing.items():
        response = raw.get(target)
        assert (response.status_code, response.headers.get("x-gitiles-error")) == (404, reason), (
            target
        )
    with pytest.raises(RpcError) as unknown:
        client.log("repo", "refs/heads/nope")
    assert unknown.value.code == "NOT_FOUND"
    with pytest.raises(RpcError) as no_repo:
        client.refs("nope", "refs/heads")
    assert no_repo.value.code == "NOT_FOUND"


def test_formats_and_limits(gitiles: GitilesSimProcess, raw: httpx.Client) -> None:
    """format=XML is Gitiles' 400; HTML and TEXT are not simulated; n=0 fails Paginator's
    check (500); a bad n is the default."""
    gitiles.create_repo("repo")
    gitiles.push("repo", "refs/heads/main", 3)
    assert raw.get("/repo/+log/main?format=XML").status_code == 400
    assert raw.get("/repo/+refs?format=TEXT").status_code == 501
    assert raw.get("/repo/+log/main").status_code == 501
    assert raw.get("/repo/+log/main?format=json").status_code == 200
    assert raw.get("/repo/+log/main?format=JSON&n=0").status_code == 500
    bad_n = raw.get("/repo/+log/main?format=JSON&n=lots").content
    assert len(json.loads(bad_n[5:])["log"]) == 3
    assert raw.post("/repo/+log/main?format=JSON").status_code == 405


def test_project_escaped_or_not_with_or_without_a(
    gitiles: GitilesSimProcess, raw: httpx.Client
) -> None:
    gitiles.create_repo("chromium/src")
    head = gitiles.push("chromium/src", "refs/heads/main")["new"]
    for prefix in ("", "/a"):
        for project in ("chromium/src", "chromium%2Fsrc"):
            for ref in ("refs/heads/main", "refs%2Fheads%2Fmain", "main", head[:7]):
                response = raw.get(f"{prefix}/{project}/+log/{ref}?format=JSON&n=1")
                assert response.status_code == 200, (prefix, project, ref)
                assert json.loads(response.content[5:])["log"][0]["commit"] == head


def test_log_of_a_path_and_head(gitiles: GitilesSimProcess, client: RestClient) -> None:
    """`+log/REV/PATH`: the commits that touch PATH; `+log` alone: HEAD's log."""
    gitiles.create_repo("repo")
    pushed = gitiles.push(
        "repo",
        "refs/heads/main",
        [
            spec("a", EPOCH, files={"dir/a": "1", "other": "1"}),
            spec("b", EPOCH + 1, files={"other": "2"}),
            spec("c", EPOCH + 2, files={"dir/sub/c": "3"}),
        ],
    )
    commits, _ = client.log("repo", "main", path="dir")
    assert [c.id for c in commits] == [pushed["commits"][2], pushed["commits"][0]]
    head = client.get("/repo/+log")["log"]
    assert [c["commit"] for c in head] == pushed["commits"][::-1]


def test_parent_expressions_redirect_to_the_id(
    gitiles: GitilesSimProcess, client: RestClient, raw: httpx.Client
) -> None:
    """ViewFilter.normalize: +log/main~1 answers 302 to +log/<id>, which rest.go follows."""
    gitiles.create_repo("repo")
    pushed = gitiles.push("repo", "refs/heads/main", 3)
    response = raw.get("/a/repo/+log/main~1/x?format=JSON&n=1")
    assert response.status_code == 302
    assert response.headers["location"] == f"/a/repo/+log/{pushed['commits'][1]}/x?format=JSON&n=1"
    commits, _ = client.log("repo", "main^", page_size=5)
    assert [c.id for c in commits] == pushed["commits"][1::-1]
    only, _ = client.log("repo", f"{pushed['new']}^!")
    assert [c.id for c in only] == [pushed["new"]]


# Pagination.


def test_pages_follow_next(
    gitiles: GitilesSimProcess, client: RestClient, raw: httpx.Client
) -> None:
    gitiles.create_repo("repo")
    ids = gitiles.push("repo", "refs/heads/main", [spec(str(i), EPOCH + i) for i in range(7)])[
        "commits"
    ][::-1]
    pages = []
    token = ""
    while True:
        page, token = client.log("repo", "main", page_size=3, page_token=token)
        pages.append([c.id for c in page])
        if not token:
            break
    assert pages == [ids[0:3], ids[3:6], ids[6:7]]
    second = json.loads(raw.get(f"/repo/+log/main?format=JSON&n=3&s={ids[3]}").content[5:])
    assert (second["previous"], second["next"]) == (ids[0], ids[6])
    exact = json.loads(raw.get("/repo/+log/main?format=JSON&n=7").content[5:])
    assert "next" not in exact and len(exact["log"]) == 7


def test_paging_log_asks_for_what_is_left(gitiles: GitilesSimProcess, client: RestClient) -> None:
    """log.go's PagingLog with page size 2 and limit 5: n=2, 2, then 1, each from `next`."""
    gitiles.create_repo("repo")
    ids = gitiles.push("repo", "refs/heads/main", [spec(str(i), EPOCH + i) for i in range(9)])[
        "commits"
    ][::-1]
    commits = client.paging_log("repo", "refs/heads/main", 5, page_size=2)
    assert [c.id for c in commits] == ids[:5]
    targets = [r["target"] for r in gitiles.state()["recent"]]
    assert targets == [
        "/a/repo/+log/refs%2Fheads%2Fmain?format=JSON&n=2",
        f"/a/repo/+log/refs%2Fheads%2Fmain?format=JSON&n=2&s={ids[2]}",
        f"/a/repo/+log/refs%2Fheads%2Fmain?format=JSON&n=1&s={ids[4]}",
    ]


def test_a_start_outside_the_range_gives_an_empty_page(
    gitiles: GitilesSimProcess, raw: httpx.Client
) -> None:
    gitiles.create_repo("repo")
    ids = gitiles.push("repo", "refs/heads/main", 4)["commits"]
    answer = json.loads(
        raw.get(f"/repo/+log/{ids[1]}..main?format=JSON&n=2&s={ids[0]}").content[5:]
    )
    assert answer == {"log": [], "previous": ids[3]}
