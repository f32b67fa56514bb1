"""The Gitiles kind: polls a repository and emits triggers for new commits, as LUCI's gitiles
task does (`scheduler/appengine/task/gitiles/gitiles.go`, luci-go).

Each poll is one invocation of the poller job: launch fetches the watched refs' heads, compares
them with the heads the last poll saw (the store's per-job kind state), and emits one trigger
per new commit (oldest first, at most 50 a ref; a new ref or a force push: its head only) to
every job in `triggers`, titled with the commit id and linked to its page as LUCI's are. The
new heads are stored with the poll's end, in one transaction with the triggers it emitted,
which the engine then adds to their jobs (again on a redelivery, if that failed): a crash
anywhere loses neither (trigger ids are stable: the same commit twice is one trigger).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar
from urllib.parse import urlsplit

from ..adapters.gitiles_rest import Commit, GitilesClient, GitilesClients, GitilesError
from ..jobs import ConfigModel, triggers_field
from ..model import GitilesTrigger, LogKind, Status, TriggerRequest
from ..validation import Model, field
from .base import Controller, LaunchOnly, TaskError, TransientError
from .buildbucket import normalize_repo_url

MAX_TRIGGERS_PER_INVOCATION = 100  # defaultMaxTriggersPerInvocation
MAX_COMMITS_PER_REF_UPDATE = 50  # defaultMaxCommitsPerRefUpdate
TAGS_PREFIX = "refs/tags/"
_META = set("\\.+*?()|[]{}^$")


def literal_prefix(pattern: str) -> tuple[str, bool]:
    """Go's regexp.LiteralPrefix, near enough for ref patterns: the literal text a match must
    start with, and whether that is the whole pattern."""
    for i, char in enumerate(pattern):
        if char in _META:
            # A quantifier applies to the character before it, which is then not certain.
            cut = i - 1 if char in "*?{" and i > 0 else i
            return pattern[:cut], False
    return pattern, True


def _check_ref(ref: str) -> None:
    """gitiles.ValidateRefSet's rules for one entry."""
    if ref.startswith("regexp:"):
        pattern = ref.removeprefix("regexp:")
        if pattern.startswith("^") or pattern.endswith("$"):
            raise ValueError(
                f"{ref}: ^ and $ qualifiers are added automatically, please remove them"
            )
        try:
            re.compile(pattern)
        except re.error as e:
            raise ValueError(f"{ref}: invalid regexp: {e}") from None
        prefix, _ = literal_prefix(pattern)
        if prefix.count("/") < 2:
            raise ValueError(
                f'{ref}: fewer than 2 slashes in literal prefix "{prefix}", e.g., '
                '"refs/heads/\\d+" is accepted because of "refs/heads/" is the literal prefix, '
                'while "refs/.*" is too short'
            )
        if not prefix.startswith("refs/"):
            raise ValueError(f'{ref}: literal prefix "{prefix}" must start with "refs/"')
        return
    if not ref.startswith("refs/"):
        raise ValueError(f"ref must start with 'refs/' not \"{ref}\"")
    if ref.count("/") < 2:
        raise ValueError(f'fewer than 2 slashes in ref "{ref}"')


def _refs(value: tuple[str, ...]) -> tuple[str, ...]:
    if not value:
        raise ValueError("at least one ref is required")
    for ref in value:
        _check_ref(ref)
    return value


def _path_regexps(value: tuple[str, ...]) -> tuple[str, ...]:
    for pattern in value:
        if not pattern:
            raise ValueError("must not be empty")
        if pattern.startswith("^") or pattern.endswith("$"):
            raise ValueError(
                f'"{pattern}": ^ and $ qualifiers are added automatically, please remove them'
            )
        try:
            re.compile(pattern)
        except re.error as e:
            raise ValueError(f'"{pattern}": {e}') from None
    return value


def _repo(value: str) -> str:
    normalize_repo_url(value)  # refuses what LUCI's gitiles.ParseRepoURL refuses
    return value


@dataclass(frozen=True)
class GitilesConfig(Model):
    """A job's `kind = "gitiles"` fields."""

    repo: str = field(after=_repo)
    refs: tuple[str, ...] = field(after=_refs)
    path_regexps: tuple[str, ...] = field(default=(), after=_path_regexps)
    path_regexps_exclude: tuple[str, ...] = field(default=(), after=_path_regexps)
    # Job ids this poller triggers; parse_jobs checks that each is in the file.
    triggers: tuple[str, ...] = triggers_field()

    def check(self) -> None:
        if self.path_regexps_exclude and not self.path_regexps:
            raise ValueError(
                "Specifying path_regexps_exclude not allowed without at least one path_regexps"
            )


class RefSet:
    """gitiles.RefSet: literal refs and `regexp:` patterns, grouped by their namespace (the
    literal prefix up to its last "/"), each namespace listed with one +refs request."""

    def __init__(self, refs: Iterable[str]) -> None:
        self.literal: list[str] = []
        self.patterns: list[tuple[str, re.Pattern[str]]] = []
        self.namespaces: dict[str, list[re.Pattern[str] | str]] = {}
        for ref in refs:
            if ref.startswith("regexp:"):
                pattern = ref.removeprefix("regexp:")
                prefix, complete = literal_prefix(pattern)
                namespace = prefix[: prefix.rfind("/")]
                if complete:
                    self.literal.append(prefix)
                    self.namespaces.setdefault(namespace, []).append(prefix)
                else:
                    compiled = re.compile(f"(?:{pattern})")
                    self.patterns.append((ref, compiled))
                    self.namespaces.setdefault(namespace, []).append(compiled)
            else:
                self.literal.append(ref)
                self.namespaces.setdefault(ref[: ref.rfind("/")], []).append(ref)

    def has(self, ref: str) -> bool:
        for namespace, members in self.namespaces.items():
            if not ref.startswith(namespace + "/"):
                continue
            for member in members:
                if member == ref if isinstance(member, str) else member.fullmatch(ref):
                    return True
        return False

    def resolve(self, client: GitilesClient, project: str) -> tuple[dict[str, str], list[str]]:
        """The watched refs' heads, and the configured entries that matched no ref."""
        tips: dict[str, str] = {}
        for namespace in sorted(self.namespaces):
            for ref, tip in client.refs(project, namespace).items():
                if self.has(ref):
                    tips[ref] = tip
        missing = [ref for ref in self.literal if ref not in tips]
        missing += [ref for ref, p in self.patterns if not any(p.fullmatch(t) for t in tips)]
        return tips, missing


class PathFilter:
    """pathFilter: a commit is interesting if a path it touches (old or new) matches an
    include pattern and no exclude pattern. Inactive without include patterns."""

    def __init__(self, include: Sequence[str], exclude: Sequence[str]) -> None:
        self.include = re.compile(self._either(include)) if include else None
        self.exclude = re.compile(self._either(exclude)) if include and exclude else None

    @staticmethod
    def _either(patterns: Sequence[str]) -> str:
        return "(" + "|".join(f"({p})" for p in patterns) + ")"

    @property
    def active(self) -> bool:
        return self.include is not None

    def _interesting_path(self, path: str) -> bool:
        if not path or self.include is None:
            return False
        if self.exclude is not None and self.exclude.fullmatch(path):
            return False
        return self.include.fullmatch(path) is not None

    def interesting(self, commit: Commit) -> bool:
        return any(
            self._interesting_path(d.old_path) or self._interesting_path(d.new_path)
            for d in commit.tree_diff
        )


def go_list(items: Iterable[str]) -> str:
    """Go's %s of a []string."""
    return "[" + " ".join(items) + "]"


def _transient(error: Exception) -> TransientError:
    return TransientError(str(error))


def _fatal_or_transient(error: GitilesError) -> Exception:
    return TransientError(str(error)) if error.transient else TaskError(str(error))


class _Refs:
    """refsState: heads seen before (`known`), heads now (`current`), refs changed so far."""

    def __init__(
        self, watched: RefSet, previous: RefSet, known: dict[str, str], current: dict[str, str]
    ) -> None:
        self.watched = watched
        self.previous = previous
        self.known = known
        self.current = current
        self.changed = 0

    def prune_known(self, log: Callable[[str], None]) -> None:
        for ref in sorted(self.known):
            if not self.watched.has(ref):
                log(f"Ref {ref} is no longer watched")
            elif not self.current.get(ref):
                log(f"Ref {ref} deleted")
            else:
                continue
            del self.known[ref]
            self.changed += 1


class GitilesKind(LaunchOnly):
    name: ClassVar[str] = "gitiles"
    config_model: ClassVar[ConfigModel] = GitilesConfig

    def __init__(self, client: Callable[[str], GitilesClient] | None = None) -> None:
        # host URL ("https://host" or "http://127.0.0.1:PORT") → its client, kept for the
        # next polls (the kind never closes one).
        self._client = client or GitilesClients()
        self.max_triggers = MAX_TRIGGERS_PER_INVOCATION
        self.max_commits = MAX_COMMITS_PER_REF_UPDATE

    def launch(self, ctl: Controller) -> None:
        cfg: GitilesConfig = ctl.config

        def log(text: str) -> None:
            ctl.debug_log.write(LogKind.POLL, text)

        log(f"Repo: {cfg.repo}, Refs: {go_list(cfg.refs)}")
        host, project = normalize_repo_url(cfg.repo)
        scheme = urlsplit(cfg.repo).scheme
        client = self._client(f"{scheme}://{host}")
        refs = self._fetch_refs_state(ctl, cfg, client, project, log)
        refs.prune_known(log)
        left, error = self._emit_ref_at_a_time(ctl, cfg, client, project, refs, log)
        if error is not None:
            if refs.changed > 0:
                log(f"ignoring error {error} as transient")
            else:
                log(f"no progress made due to {error}")
                raise error
        if refs.changed == 0:
            log("No changes detected")
            ctl.status = Status.SUCCEEDED
            return
        if left > 0:
            log(f"{refs.changed} changed refs processed, {left} refs not yet examined")
        else:
            log(f"All {refs.changed} changed refs processed")
        # Stored by the engine with the poll's end and the triggers emitted above.
        ctl.put_kind_state({"repo": cfg.repo, "refs": refs.known, "watched": list(cfg.refs)})
        log(f"Saved {len(refs.known)} known refs")
        ctl.status = Status.SUCCEEDED

    def _fetch_refs_state(
        self,
        ctl: Controller,
        cfg: GitilesConfig,
        client: GitilesClient,
        project: str,
        log: Callable[[str], None],
    ) -> _Refs:
        state = ctl.get_kind_state()
        same_repo = state.get("repo") == cfg.repo  # LUCI keys the state by job and repo
        known = {str(k): str(v) for k, v in state.get("refs", {}).items()} if same_repo else {}
        previous = RefSet(state.get("watched", ()) if same_repo else ())
        watched = RefSet(cfg.refs)
        try:
            current, missing = watched.resolve(client, project)
        except GitilesError as e:
            log(f"Error fetching state of the world: {e}")
            raise _fatal_or_transient(e) from e
        log(f"Fetched refs: {len(known)} from datastore, {len(current)} from gitiles")
        if missing:
            resolved = " ".join(f'"{r}"' for r in sorted(current))
            log(
                "The following configured refs didn't match a single actual ref: "
                f"{go_list(sorted(missing))}\n"
                f'Hint: have you granted read access to LUCI Scheduler on relevant refs in "'
                f'{cfg.repo}"\nResolved refs from gitiles:\n[{resolved}]?\n'
            )
            error = TaskError(f"{len(missing)} unresolved refs")
            log(f"Error fetching state of the world: {error}")
            raise error
        return _Refs(watched, previous, known, current)

    def _emit_ref_at_a_time(
        self,
        ctl: Controller,
        cfg: GitilesConfig,
        client: GitilesClient,
        project: str,
        refs: _Refs,
        log: Callable[[str], None],
    ) -> tuple[int, Exception | None]:
        """emitTriggersRefAtATime: (refs left to examine, the error that stopped it)."""
        emitted = 0
        names = sorted(refs.current)
        path_filter = PathFilter(cfg.path_regexps, cfg.path_regexps_exclude)
        for i, ref in enumerate(names):
            try:
                commits = self._new_commits(client, project, refs, ref, path_filter, log)
            except (TransientError, TaskError) as e:
                return len(names) - i, e
            if ref.startswith(TAGS_PREFIX) and not refs.previous.has(ref):
                log(f"Tag {ref} newly matched but already existed")
                continue
            for commit in reversed(commits):  # newest first from Gitiles: emit oldest first
                if path_filter.active and not path_filter.interesting(commit):
                    log(
                        f'skipping commit "{commit.id}" on "{ref}" because didn\'t match '
                        "path filters"
                    )
                    continue
                trigger_id = f"{cfg.repo}/+/{ref}@{commit.id}"
                for target in cfg.triggers:
                    ctl.emit_trigger(
                        target,
                        TriggerRequest(
                            job_id=target,
                            gitiles=GitilesTrigger(repo=cfg.repo, ref=ref, revision=commit.id),
                            request_id=trigger_id,
                            # LUCI's title and url; its creation time is the commit's, which
                            # is kept for show only (see Trigger.created_ns).
                            title=commit.id,
                            url=f"{cfg.repo}/+/{commit.id}",
                            commit_time_ns=commit.committer_time_ns,
                        ),
                    )
                emitted += 1
            if emitted + self.max_commits > self.max_triggers:
                log(f"Emitted {emitted} triggers, postponing the rest")
                return len(names) - i - 1, None
        return 0, None

    def _new_commits(
        self,
        client: GitilesClient,
        project: str,
        refs: _Refs,
        ref: str,
        path_filter: PathFilter,
        log: Callable[[str], None],
    ) -> list[Commit]:
        """refsState.newCommits: the ref's new commits, newest first; advances `known`."""
        new_head = refs.current[ref]
        old_head = refs.known.get(ref)
        limit = self.max_commits
        if old_head is None:
            log(f"Ref {ref} is new: {new_head}")
            limit = 1
        elif old_head != new_head:
            log(f"Ref {ref} updated: {old_head} => {new_head}")
        else:
            return []
        try:
            commits = client.paging_log(
                project,
                new_head,
                limit,
                exclude_ancestors_of=old_head or "",
                page_size=limit,
                tree_diff=path_filter.active,
            )
        except GitilesError as e:
            if not e.not_found:
                log(
                    f"Ref {ref}: failed to fetch log between old {old_head} and new {new_head} revs"
                )
                raise _transient(e) from e
            error: GitilesError = e
        else:
            refs.known[ref] = new_head
            refs.changed += 1
            return commits
        # Either the old head is gone (a force push), the new one is not visible yet, or a
        # fluke: only the first is handled now, the others are retried.
        if old_head is None:
            log(f"Ref {ref}: log of first rev {new_head} not found")
            raise _transient(error)
        log(f"Ref {ref}: log old..new is not found, investigating further...")
        try:
            commits = client.paging_log(project, new_head, 1)
        except GitilesError as e:
            log(f"Ref {ref}: failed to fetch even log of just new rev {new_head} {error}")
            raise _transient(e) from e
        try:
            client.paging_log(project, old_head, 1, tree_diff=path_filter.active)
        except GitilesError as e:
            if e.not_found:
                log(f"Ref {ref}: force push detected; emitting trigger for new head")
                refs.known[ref] = new_head
                refs.changed += 1
                return commits
            log(f"Ref {ref}: failed to fetch log of just old rev {old_head}: {e}")
            raise _transient(error) from e
        log(
            f"Ref {ref}: weirdly, log({old_head}) and log({new_head}) work, "
            f"but not log({old_head}..{new_head})"
        )
        raise _transient(error)
