"""The OpenStack virtualenv is shared by checkouts on one Python and never removed under running processes."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from devcloud.settings import DevcloudSettings
from devcloud.venv import _in_use, requirements_digest


def test_checkouts_whose_interpreters_lead_to_one_python_share_the_venv(tmp_path: Path) -> None:
    link = tmp_path / "checkout" / ".venv" / "bin" / "python"
    link.parent.mkdir(parents=True)
    link.symlink_to(Path(sys.executable).resolve())
    ours = DevcloudSettings(python=sys.executable, cache_dir=tmp_path)
    theirs = DevcloudSettings(python=str(link), cache_dir=tmp_path)
    assert requirements_digest(ours) == requirements_digest(theirs)


def test_a_venv_a_process_runs_from_is_in_use_until_it_ends(tmp_path: Path) -> None:
    venv = tmp_path / "venv-0123456789ab"
    script = venv / "bin" / "service"
    script.parent.mkdir(parents=True)
    script.write_text("import time\ntime.sleep(60)\n")
    assert not _in_use(venv)
    proc = subprocess.Popen([sys.executable, str(script)])
    try:
        _wait_until_exec(proc.pid, script)  # Popen returns before the child has exec'd the interpreter
        assert _in_use(venv)
        assert not _in_use(tmp_path / "venv-other")
    finally:
        proc.kill()
        proc.wait()
    assert not _in_use(venv)


def _wait_until_exec(pid: int, script: Path) -> None:
    cmdline = Path(f"/proc/{pid}/cmdline")
    deadline = time.monotonic() + 10
    while str(script).encode() not in cmdline.read_bytes():
        assert time.monotonic() < deadline, f"process {pid} did not start {script} within 10 s"
        time.sleep(0.01)
