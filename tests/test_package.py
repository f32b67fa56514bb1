"""`shepherd package`: the source archive terraform deploys."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from localstack import write_jobs

ROOT = Path(__file__).resolve().parents[1]


def package(tmp_path: Path, jobs: Path, out: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable,
        "-m",
        "shepherd_tools.cli",
        "package",
        "--jobs",
        str(jobs),
        "--out",
        str(tmp_path / out),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=60)


def test_archive_holds_main_package_requirements_and_jobs(tmp_path: Path) -> None:
    jobs = write_jobs(tmp_path / "jobs.toml", "cr-buildbucket.appspot.com")
    done = package(tmp_path, jobs, "a.zip")
    assert done.returncode == 0, done.stderr
    with zipfile.ZipFile(tmp_path / "a.zip") as archive:
        names = archive.namelist()
        assert archive.read("main.py") == (ROOT / "functions" / "main.py").read_bytes()
        assert archive.read("jobs.toml") == jobs.read_bytes()
        requirements = archive.read("requirements.txt").decode().splitlines()
    assert "shepherd/engine.py" in names
    # Local tooling (CLI, dev server, replays, the simulator) is never deployed.
    assert not [n for n in names if n.startswith("shepherd_tools/") or "/simulator/" in n]
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert all("==" in line for line in requirements)
    assert {line.split("==")[0] for line in requirements} >= {
        "functions-framework",
        "google-cloud-firestore",
    }
    # The same sources give the same bytes: terraform sees no change.
    assert package(tmp_path, jobs, "b.zip").returncode == 0
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()


def test_an_invalid_job_file_is_refused(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.toml"
    jobs.write_text(
        '[[jobs]]\nid = "chromium/x"\nserver = "bad host!"\nbucket = "ci"\nbuilder = "b"\n'
    )
    done = package(tmp_path, jobs, "c.zip")
    assert done.returncode == 2
    assert 'job "chromium/x": field "server"' in done.stderr
    assert not (tmp_path / "c.zip").exists()


@pytest.mark.slow
def test_archive_runs_on_its_own_requirements(tmp_path: Path) -> None:
    """What Cloud Functions does with the archive: a fresh virtualenv with only its
    requirements.txt, then every module it holds imported from the unpacked archive."""
    jobs = write_jobs(tmp_path / "jobs.toml", "cr-buildbucket.appspot.com")
    assert package(tmp_path, jobs, "a.zip").returncode == 0
    deployed = tmp_path / "deployed"
    with zipfile.ZipFile(tmp_path / "a.zip") as archive:
        archive.extractall(deployed)
        modules = sorted(
            name.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
            for name in archive.namelist()
            if name.endswith(".py")
        )
    assert "main" in modules and "shepherd.engine" in modules
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "pip"), "install", "--quiet", "-r", "requirements.txt"]
    done = subprocess.run(pip, cwd=deployed, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    script = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", script, *modules],
        cwd=deployed,
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(deployed)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
