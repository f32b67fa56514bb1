"""The task kinds shepherd knows. A new kind is added here; the engine does not change."""

from __future__ import annotations

import random
from collections.abc import Mapping

from ..jobs import ConfigModel
from ..ports import BuildsAPI
from .base import TaskKind
from .buildbucket import BuildbucketKind
from .noop import NoopKind
from .url_fetch import UrlFetchKind

CONFIG_MODELS: Mapping[str, ConfigModel] = {
    kind.name: kind.config_model for kind in (BuildbucketKind, NoopKind, UrlFetchKind)
}


def make_kinds(builds: BuildsAPI, rng: random.Random | None = None) -> dict[str, TaskKind]:
    return {
        BuildbucketKind.name: BuildbucketKind(builds, rng),
        NoopKind.name: NoopKind(),
        UrlFetchKind.name: UrlFetchKind(),
    }
