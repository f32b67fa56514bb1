"""The task kinds shepherd knows. A new kind is added here; the engine does not change."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping

from ..adapters.gitiles_rest import GitilesClient
from ..jobs import ConfigModel
from ..ports import BuildsAPI
from .base import TaskKind
from .buildbucket import BuildbucketKind
from .gitiles import GitilesKind
from .noop import NoopKind
from .url_fetch import UrlFetchKind

CONFIG_MODELS: Mapping[str, ConfigModel] = {
    kind.name: kind.config_model for kind in (BuildbucketKind, NoopKind, UrlFetchKind, GitilesKind)
}


def make_kinds(
    builds: BuildsAPI,
    rng: random.Random | None = None,
    gitiles: Callable[[str], GitilesClient] | None = None,
) -> dict[str, TaskKind]:
    """`gitiles`: host URL → a Gitiles client (default: unauthenticated REST clients)."""
    return {
        BuildbucketKind.name: BuildbucketKind(builds, rng),
        NoopKind.name: NoopKind(),
        UrlFetchKind.name: UrlFetchKind(),
        GitilesKind.name: GitilesKind(gitiles) if gitiles else GitilesKind(),
    }
