"""The OpenStack virtualenv: built once per requirements file, reused by every later ``up``."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

from devcloud.procs import StepFailed
from devcloud.settings import DevcloudSettings

REQUIREMENTS = Path(__file__).with_name("requirements.txt")


def requirements_digest(settings: DevcloudSettings) -> str:
    digest = hashlib.sha256(REQUIREMENTS.read_bytes())
    # The interpreter the path leads to: checkouts whose own virtualenvs share a Python share one devcloud venv.
    digest.update(str(Path(settings.python).resolve()).encode())
    return digest.hexdigest()[:12]


def venv_path(settings: DevcloudSettings) -> Path:
    return settings.cache_dir / f"venv-{requirements_digest(settings)}"


def is_ready(settings: DevcloudSettings) -> bool:
    return (venv_path(settings) / ".devcloud-complete").exists()


def _uv() -> list[str]:
    found = shutil.which("uv")
    return [found] if found else [sys.executable, "-m", "uv"]


def ensure_venv(settings: DevcloudSettings) -> Path:
    """Create the virtualenv from devcloud/requirements.txt unless an identical one exists."""
    venv = venv_path(settings)
    marker = venv / ".devcloud-complete"
    if marker.exists():
        return venv
    if venv.exists():  # a previous install was interrupted
        shutil.rmtree(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    steps = [
        [*_uv(), "venv", "--quiet", "--python", settings.python, str(venv)],
        [*_uv(), "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), "-r", str(REQUIREMENTS)],
    ]
    for argv in steps:
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            raise StepFailed(
                f"installing OpenStack into {venv} failed: {' '.join(argv)}\n{result.stderr.strip()[-2000:]}\n"
                "Check that PyPI is reachable and that `uv` works (pip install uv)."
            )
    marker.write_text(REQUIREMENTS.read_text())
    # Older virtualenvs of other requirement sets are no longer needed, unless a process still runs from one
    # (a devcloud started from another checkout).
    for other in venv.parent.glob("venv-*"):
        if other != venv and not _in_use(other):
            shutil.rmtree(other, ignore_errors=True)
    return venv


def _in_use(venv: Path) -> bool:
    """Whether a running process was started from ``venv`` (its command line names a file in it)."""
    needle = str(venv).encode() + b"/"
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if needle in cmdline.read_bytes():
                return True
        except OSError:  # the process ended meanwhile, or is not ours to read
            continue
    return False
