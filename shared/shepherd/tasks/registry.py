"""The task kinds shepherd knows. A new kind is added here; the engine does not change."""

from __future__ import annotations

import random
from collections.abc import Mapping

from ..jobs import ConfigModel
from ..ports import BuildsAPI
from .base import TaskKind
from .buildbucket import BuildbucketKind

CONFIG_MODELS: Mapping[str, ConfigModel] = {BuildbucketKind.name: BuildbucketKind.config_model}


def make_kinds(builds: BuildsAPI, rng: random.Random | None = None) -> dict[str, TaskKind]:
    return {BuildbucketKind.name: BuildbucketKind(builds, rng)}
