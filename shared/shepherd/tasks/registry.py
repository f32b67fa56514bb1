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

CONFIG_MODELS: Mapping[str, ConfigModel] = {
    BuildbucketKind.name: BuildbucketKind.config_model,
    GitilesKind.name: GitilesKind.config_model,
}


def make_kinds(
    builds: BuildsAPI,
    rng: random.Random | None = None,
    gitiles: Callable[[str], GitilesClient] | None = None,
) -> dict[str, TaskKind]:
    """`gitiles`: host URL → a Gitiles client (default: unauthenticated REST clients)."""
    return {
        BuildbucketKind.name: BuildbucketKind(builds, rng),
        GitilesKind.name: GitilesKind(gitiles) if gitiles else GitilesKind(),
    }
