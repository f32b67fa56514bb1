"""The README stays true to the tree: its architecture map names every module."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def architecture_map() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Architecture", 1)[1]
    return re.search(r"```\n(.*?)```", section, re.S)[1]  # type: ignore[index]


def test_the_architecture_map_names_every_module() -> None:
    named = {Path(name).name for name in re.findall(r"[\w/]+\.py", architecture_map())}
    modules = [
        path.relative_to(ROOT).as_posix()
        for path in sorted((ROOT / "shared").rglob("*.py"))
        if path.name != "__init__.py" and path.name not in named
    ]
    assert not modules, f"the README's Architecture does not name: {modules}"
