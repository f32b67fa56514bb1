"""`shepherd package`: the one source archive every Cloud Function is built from.

main.py (functions/main.py) at the root, the shepherd package beside it, requirements.txt with
the runtime dependencies pinned to the versions tested here, and the job file as jobs.toml.
Entries carry a fixed time stamp, so the same sources give the same archive (and terraform sees
no change).
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import shepherd
from shepherd.jobs import load_jobs
from shepherd.tasks.registry import CONFIG_MODELS

RUNTIME = (
    "croniter",
    "functions-framework",
    "google-cloud-firestore",
    "google-cloud-pubsub",
    "google-cloud-tasks",
    "httpx",
    "pydantic",
)
JOBS_NAME = "jobs.toml"
_EPOCH = (2020, 1, 1, 0, 0, 0)


def requirements() -> str:
    return "".join(f"{name}=={metadata.version(name)}\n" for name in RUNTIME)


def _package_files(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            yield path


def build(out: Path, jobs: Path, functions_main: Path) -> list[str]:
    """Writes the archive; returns its entry names. Refuses an invalid job file."""
    load_jobs(jobs, CONFIG_MODELS)
    package = Path(shepherd.__file__).resolve().parent
    entries: list[tuple[str, bytes]] = [
        ("main.py", functions_main.read_bytes()),
        ("requirements.txt", requirements().encode()),
        (JOBS_NAME, jobs.read_bytes()),
    ]
    entries += [
        (f"shepherd/{p.relative_to(package).as_posix()}", p.read_bytes())
        for p in _package_files(package)
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            info = zipfile.ZipInfo(name, _EPOCH)
            info.external_attr = 0o644 << 16
            archive.writestr(info, data, zipfile.ZIP_DEFLATED)
    return [name for name, _ in entries]
