"""Git repositories in memory, as Gitiles reads them: objects hashed as git hashes them, refs,
revisions resolved as JGit's `Repository.resolve` does, visibility as Gitiles'
`VisibilityChecker` decides it, history walked in JGit's `RevWalk` order and tree diffs as
Gitiles' `CommitData` computes them (exact renames only).
"""

from __future__ import annotations

import hashlib
import heapq
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

ZERO_ID = "0" * 40
FILE_MODE = 0o100644
DEV_NULL = "/dev/null"
# JGit's RefDatabase.SEARCH_PATH: how a short name ("main") finds its ref.
SEARCH_PATH = ("{}", "refs/{}", "refs/tags/{}", "refs/heads/{}", "refs/remotes/{}")
# Refs Gitiles leaves out of its reachability check (VisibilityCache.otherRefs).
CHANGES_PREFIX = "refs/changes/"
HEX = re.compile(r"[0-9a-fA-F]{2,40}")
OPERATORS = re.compile(r"(?:[~^]\d*)*")
OPERATOR = re.compile(r"([~^])(\d*)")
TZ = re.compile(r"([+-])(\d\d)(\d\d)")
BAD_REF_CHARS = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")
DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

Json = dict[str, object]


class GitError(Exception):
    """A refused change, answered by the control API with `status` and the message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Ident:
    name: str
    email: str
    time: int  # seconds since the epoch
    tz: int  # minutes east of UTC

    def raw(self) -> str:
        return f"{self.name} <{self.email}> {self.time} {format_tz(self.tz)}"


@dataclass(frozen=True)
class Commit:
    id: str
    tree: str
    parents: tuple[str, ...]
    author: Ident
    committer: Ident
    message: str
    files: Mapping[str, str]  # the whole tree: path -> blob id


@dataclass(frozen=True)
class Tag:
    """An annotated tag object."""

    id: str
    object: str
    name: str
    tagger: Ident
    message: str


GitObject = Commit | Tag


def format_tz(minutes: int) -> str:
    sign = "-" if minutes < 0 else "+"
    hours, rest = divmod(abs(minutes), 60)
    return f"{sign}{hours:02d}{rest:02d}"


def parse_tz(text: str) -> int:
    match = TZ.fullmatch(text)
    if match is None:
        raise ValueError(f"time zone {text!r}: expected +HHMM or -HHMM")
    sign, hours, minutes = match.groups()
    value = int(hours) * 60 + int(minutes)
    return -value if sign == "-" else value


def gitiles_time(ident: Ident, *, zone_suffix: bool) -> str:
    """Gitiles' DateFormatter.Format.DEFAULT ("EEE MMM dd HH:mm:ss yyyy"): in UTC as
    googlesource.com's fixed time zone prints it, or in the ident's zone followed by "Z"."""
    offset = ident.tz if zone_suffix else 0
    when = datetime.fromtimestamp(ident.time, timezone(timedelta(minutes=offset)))
    text = f"{DAYS[when.weekday()]} {MONTHS[when.month - 1]} {when:%d %H:%M:%S} {when.year}"
    return f"{text} {format_tz(ident.tz)}" if zone_suffix else text


def object_id(kind: str, body: bytes) -> str:
    return hashlib.sha1(f"{kind} {len(body)}\0".encode() + body).hexdigest()


def blob_id(content: str) -> str:
    return object_id("blob", content.encode())


def tree_id(files: Mapping[str, str]) -> str:
    """The id of the tree holding `files` (path -> blob id), subtrees included."""
    root: dict[str, object] = {}
    for path, blob in files.items():
        *folders, name = path.split("/")
        node = root
        for folder in folders:
            child = node.setdefault(folder, {})
            assert isinstance(child, dict)
            node = child
        node[name] = blob
    return _write_tree(root)


def _write_tree(node: Mapping[str, object]) -> str:
    entries: list[tuple[bytes, bytes]] = []
    for name, value in node.items():
        if isinstance(value, Mapping):
            mode, key, target = b"40000", name.encode() + b"/", _write_tree(value)
        else:
            mode, key, target = b"100644", name.encode(), str(value)
        entries.append((key, mode + b" " + name.encode() + b"\0" + bytes.fromhex(target)))
    entries.sort()
    return object_id("tree", b"".join(entry for _, entry in entries))


def commit_body(
    tree: str, parents: Iterable[str], author: Ident, committer: Ident, message: str
) -> bytes:
    lines = [f"tree {tree}", *(f"parent {p}" for p in parents)]
    lines += [f"author {author.raw()}", f"committer {committer.raw()}"]
    return ("\n".join(lines) + "\n\n" + message).encode()


def tag_body(target: str, name: str, tagger: Ident, message: str) -> bytes:
    head = f"object {target}\ntype commit\ntag {name}\ntagger {tagger.raw()}\n\n"
    return (head + message).encode()


def check_ref_name(name: str) -> None:
    """git check-ref-format's rules, for a full ref name under refs/."""
    if not is_valid_ref_name(name) or not name.startswith("refs/"):
        raise GitError(400, f"bad ref name {name!r}: a ref is refs/… as git check-ref-format wants")


def is_valid_ref_name(name: str) -> bool:
    """JGit's Repository.isValidRefName."""
    parts = name.split("/")
    return not (
        len(parts) < 2
        or BAD_REF_CHARS.search(name)
        or ".." in name
        or "@{" in name
        or name.endswith((".", ".lock"))
        or any(not part or part.startswith(".") for part in parts)
    )


def check_path(path: str) -> None:
    parts = path.split("/")
    if any(part in ("", ".", "..", ".git") or "\0" in part for part in parts):
        raise GitError(400, f"bad file path {path!r}")


def apply_changes(files: Mapping[str, str], changes: Mapping[str, str | None]) -> dict[str, str]:
    """A new tree: `changes` maps paths to their new content, or None to delete them."""
    result = dict(files)
    for path, content in changes.items():
        check_path(path)
        if content is None:
            if result.pop(path, None) is None:
                raise GitError(400, f"cannot delete {path!r}: no such file")
        else:
            result[path] = blob_id(content)
    paths = set(result)
    for path in paths:
        folders = path.split("/")[:-1]
        for end in range(1, len(folders) + 1):
            if "/".join(folders[:end]) in paths:
                raise GitError(400, f"{path!r} needs {'/'.join(folders[:end])!r} to be a folder")
    return result


def now_utc() -> int:
    return int(datetime.now(UTC).timestamp())


class Repository:
    """One Gitiles project: its objects, its refs and its symbolic HEAD."""

    def __init__(self, name: str, head: str = "refs/heads/main", zone_suffix: bool = False):
        self.name = name
        self.head = head  # the ref HEAD points to
        self.zone_suffix = zone_suffix
        self.refs: dict[str, str] = {}  # full ref name -> object id
        self.objects: dict[str, GitObject] = {}

    # Reading.

    def peel(self, oid: str | None) -> Commit | None:
        """The commit an id names, through annotated tags (RevWalk.parseCommit)."""
        obj = self.objects.get(oid or "")
        while isinstance(obj, Tag):
            obj = self.objects.get(obj.object)
        return obj

    def ref_value(self, name: str) -> str | None:
        return self.refs.get(self.head if name == "HEAD" else name)

    def find_ref(self, short: str) -> str | None:
        """JGit's RefDatabase.findRef: the first of SEARCH_PATH that exists."""
        for pattern in SEARCH_PATH:
            name = pattern.format(short)
            if self.ref_value(name) is not None:
                return name
        return None

    def listed_refs(self) -> list[tuple[str, str]]:
        """Every ref, HEAD included when it resolves, in name order (JGit's getRefs())."""
        refs = dict(self.refs)
        if self.head in refs:
            refs["HEAD"] = refs[self.head]
        return sorted(refs.items())

    def abbreviated(self, prefix: str) -> list[str]:
        prefix = prefix.lower()
        return [oid for oid in self.objects if oid.startswith(prefix)]

    def resolve(self, revision: str) -> str | None:
        """JGit's Repository.resolve for NAME[~n|^n]…: the id, or None when it names nothing
        (ambiguous abbreviations included, as Gitiles' RevisionParser treats them)."""
        operator = re.search(r"[~^]", revision)
        cut = operator.start() if operator else len(revision)
        base, operators = revision[:cut], revision[cut:]
        if not base or not OPERATORS.fullmatch(operators):
            return None
        oid = self._resolve_simple(base)
        if oid is None or oid not in self.objects:
            return None
        for op, digits in OPERATOR.findall(operators):
            commit = self.peel(oid)
            n = int(digits) if digits else 1
            if commit is None:
                return None
            oid = self._parent(commit, op, n)
            if oid is None:
                return None
        return oid

    def _parent(self, commit: Commit, op: str, n: int) -> str | None:
        if op == "^":
            if n == 0:
                return commit.id
            return commit.parents[n - 1] if n <= len(commit.parents) else None
        current: Commit | None = commit
        for _ in range(n):
            if current is None or not current.parents:
                return None
            current = self.peel(current.parents[0])
        return current.id if current else None

    def _resolve_simple(self, name: str) -> str | None:
        if len(name) == 40 and HEX.fullmatch(name):
            return name.lower()
        if is_valid_ref_name("x/" + name):
            ref = self.find_ref(name)
            if ref is not None:
                return self.ref_value(ref)
        if HEX.fullmatch(name):
            matches = self.abbreviated(name)
            return matches[0] if len(matches) == 1 else None
        return None

    def ancestors(self, starts: Iterable[str]) -> set[str]:
        """Every commit reachable from `starts` (ids, tags peeled), the starts included."""
        pending = [c.id for c in map(self.peel, starts) if c is not None]
        seen: set[str] = set()
        while pending:
            oid = pending.pop()
            if oid in seen:
                continue
            seen.add(oid)
            commit = self.peel(oid)
            if commit is not None:
                pending.extend(commit.parents)
        return seen

    def is_visible(self, oid: str, known: Iterable[str] = ()) -> bool:
        """Gitiles' VisibilityCache.isVisible: a commit a ref points at, or one reachable from
        `known` or from any ref outside refs/changes/."""
        commit = self.peel(oid)
        if commit is None:
            return False
        for value in self.refs.values():
            peeled = self.peel(value)
            if oid in (value, peeled.id if peeled else None):
                return True
        tips = [value for name, value in self.refs.items() if not name.startswith(CHANGES_PREFIX)]
        return commit.id in self.ancestors([*known, *tips])

    def walk(self, start: str, hidden: str | None = None) -> Iterator[Commit]:
        """`git log hidden..start` in JGit's RevWalk order: newest commit time first, commits
        of equal time in the order they were reached."""
        first = self.peel(start)
        if first is None:
            return
        excluded = self.ancestors([hidden]) if hidden else set()
        queue = [(-first.committer.time, 0, first.id)]
        seen = {first.id}
        while queue:
            _, _, oid = heapq.heappop(queue)
            commit = self.objects[oid]
            assert isinstance(commit, Commit)
            if oid in excluded:
                continue
            yield commit
            for parent in commit.parents:
                if parent not in seen:
                    seen.add(parent)
                    reached = self.objects[parent]
                    assert isinstance(reached, Commit)
                    heapq.heappush(queue, (-reached.committer.time, len(seen), parent))

    def touches(self, commit: Commit, path: str) -> bool:
        """Whether `commit` changes anything at or under `path`, compared with every parent."""

        def under(files: Mapping[str, str]) -> dict[str, str]:
            return {p: b for p, b in files.items() if p == path or p.startswith(path + "/")}

        mine = under(commit.files)
        parents = [self.peel(p) for p in commit.parents] or [None]
        return all(under(p.files if p else {}) != mine for p in parents)

    def tree_diff(self, commit: Commit) -> list[Json]:
        """Gitiles' name-status entries: against the parent (the empty tree for a root
        commit), exact renames detected; nothing for a merge, as Gitiles does."""
        if len(commit.parents) > 1:
            return []
        parent = self.peel(commit.parents[0]) if commit.parents else None
        return diff_entries(parent.files if parent else {}, commit.files)

    # Writing.

    def add_commit(
        self,
        parents: list[str],
        changes: Mapping[str, str | None],
        author: Ident,
        committer: Ident,
        message: str,
    ) -> Commit:
        base = self.peel(parents[0]) if parents else None
        files = apply_changes(base.files if base else {}, changes)
        tree = tree_id(files)
        oid = object_id("commit", commit_body(tree, parents, author, committer, message))
        commit = Commit(oid, tree, tuple(parents), author, committer, message, files)
        self.objects.setdefault(oid, commit)
        return commit

    def add_tag(self, target: str, name: str, tagger: Ident, message: str) -> Tag:
        short = name.removeprefix("refs/tags/")
        oid = object_id("tag", tag_body(target, short, tagger, message))
        tag = Tag(oid, target, short, tagger, message)
        self.objects.setdefault(oid, tag)
        return tag

    def set_ref(self, name: str, new: str, *, force: bool) -> str | None:
        """Points `name` at `new`; a move that is no fast-forward needs `force`."""
        old = self.refs.get(name)
        if old is not None and not force and not self.fast_forward(old, new):
            raise GitError(409, f"{name}: non-fast-forward ({old} is not an ancestor of {new})")
        self.refs[name] = new
        return old

    def fast_forward(self, old: str, new: str) -> bool:
        old_commit = self.peel(old)
        return old_commit is not None and old_commit.id in self.ancestors([new])


def diff_entries(old: Mapping[str, str], new: Mapping[str, str]) -> list[Json]:
    deleted = sorted(p for p in old if p not in new)
    added = sorted(p for p in new if p not in old)
    entries = [_entry("modify", p, old[p], p, new[p]) for p in new if p in old and old[p] != new[p]]
    for path in list(added):
        source = next((d for d in deleted if old[d] == new[path]), None)
        if source is not None:
            deleted.remove(source)
            added.remove(path)
            entries.append(_entry("rename", source, old[source], path, new[path]) | {"score": 100})
    entries += [_entry("delete", p, old[p], DEV_NULL, ZERO_ID) for p in deleted]
    entries += [_entry("add", DEV_NULL, ZERO_ID, p, new[p]) for p in added]
    # JGit's RenameDetector order: by new path (old path for a delete), deletes before adds.
    order = {"delete": 1, "add": 2}
    entries.sort(key=lambda e: (_name_of(e), order.get(str(e["type"]), 10)))
    return entries


def _name_of(entry: Json) -> str:
    return str(entry["old_path"] if entry["type"] == "delete" else entry["new_path"])


def _entry(kind: str, old_path: str, old_id: str, new_path: str, new_id: str) -> Json:
    return {
        "type": kind,
        "old_id": old_id,
        "old_mode": 0 if old_path == DEV_NULL else FILE_MODE,
        "old_path": old_path,
        "new_id": new_id,
        "new_mode": 0 if new_path == DEV_NULL else FILE_MODE,
        "new_path": new_path,
    }
