"""`shepherd package`: the source archive terraform deploys."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from localstack import write_jobs

ROOT = Path(__file__).resolve().parents[1]


def package(tmp_path: Path, jobs: Path, out: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable,
        "-m",
        "shepherd.cli",
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
    assert "shepherd/engine.py" in names and "shepherd/scenarios/seed.toml" in names
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
