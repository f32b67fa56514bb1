"""Runs the Gitiles simulator as its own process and drives its control API."""

from __future__ import annotations

from typing import Any

from ..process import ServerProcess

Json = dict[str, Any]


class GitilesSimError(RuntimeError):
    """A refused control request: its HTTP status and the simulator's message."""

    def __init__(self, path: str, status: int, message: str) -> None:
        super().__init__(f"gitiles simulator {path}: {status} {message}")
        self.status = status


class GitilesSimProcess(ServerProcess):
    """`with GitilesSimProcess() as gitiles:` starts `python -m shepherd_tools.gitiles_sim` on a
    free port; `gitiles.repo_url("chromium/src")` is the repo URL a gitiles job polls."""

    module = "shepherd_tools.gitiles_sim"
    name = "Gitiles simulator"

    def repo_url(self, project: str) -> str:
        return f"{self.url}/{project}"

    def _post(self, path: str, body: Json) -> Json:
        response = self._http.post(self.url + path, json=body)
        if response.status_code != 200:
            try:
                message = response.json()["error"]
            except (ValueError, KeyError, TypeError):
                message = response.text
            raise GitilesSimError(path, response.status_code, message)
        return response.json()

    def reset(self) -> None:
        """Forgets every repository, fault and request count."""
        self._post("/sim/reset", {})

    def create_repo(self, project: str, **options: Any) -> Json:
        """options: head ("refs/heads/main"), time_zone_suffix (False: times in UTC without a
        zone, as googlesource.com prints them)."""
        return self._post("/sim/repos", {"project": project, **options})

    def push(
        self,
        project: str,
        ref: str,
        commits: int | list[Json] = 1,
        *,
        parent: str | None = "",
        force: bool = False,
    ) -> Json:
        """Commits (a count, or specs: message, files {path: content or None}, author,
        committer, time, tz, merge) on top of the ref's head, or of `parent` (a revision; None:
        a new root). Answers {"ref", "old", "new", "commits" (oldest first), "forced"}."""
        specs = [{} for _ in range(commits)] if isinstance(commits, int) else commits
        body: Json = {"project": project, "ref": ref, "commits": specs, "force": force}
        if parent != "":
            body["parent"] = parent
        return self._post("/sim/push", body)

    def force_push(self, project: str, ref: str, commits: int | list[Json] = 1) -> Json:
        """Replaces the ref's history with new, unrelated commits."""
        return self.push(project, ref, commits, force=True, parent=None)

    def set_ref(
        self, project: str, ref: str, to: str, *, force: bool = False, tag: Json | None = None
    ) -> Json:
        """Creates or moves `ref` to the revision `to`; `tag` ({message, tagger, time, tz})
        makes it an annotated tag."""
        body: Json = {"project": project, "ref": ref, "to": to, "force": force}
        if tag is not None:
            body["tag"] = tag
        return self._post("/sim/refs", body)

    def delete_ref(self, project: str, ref: str) -> Json:
        return self._post("/sim/refs", {"project": project, "ref": ref, "to": None})

    def fail_next(
        self,
        times: int,
        status: int = 503,
        *,
        kind: str = "*",
        project: str | None = None,
        contains: str | None = None,
    ) -> None:
        """The next `times` Gitiles requests of `kind` ("refs", "log", "other" or "*") for
        `project`, whose decoded URL contains `contains`, answer `status`."""
        body: Json = {"status": status, "times": times, "kind": kind}
        if project is not None:
            body["project"] = project
        if contains is not None:
            body["contains"] = contains
        self._post("/sim/faults", body)

    def state(self) -> Json:
        response = self._http.get(self.url + "/sim/state")
        response.raise_for_status()
        return response.json()

    def request_counts(self) -> dict[str, int]:
        """Gitiles requests served so far, by kind: refs, log, other."""
        return dict(self.state()["requests"])
