"""Start and stop devcloud's processes by PID file: ``down`` stops exactly what ``up`` started."""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ProcSpec:
    """One long-running OpenStack process."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    health_url: str | None = None  # HTTP services: any answer below 500 means it serves
    group: str = ""  # the OpenStack service it belongs to, for status and progress
    stop_signal: signal.Signals = signal.SIGTERM


# Processes this interpreter started: kept so they are reaped on stop (no zombies) and not reported as
# "still running" when the Popen object would otherwise be collected. They outlive us by design.
_children: dict[int, subprocess.Popen[bytes]] = {}


@atexit.register
def _leave_running() -> None:
    """The services run on after this interpreter by design: mark them so Popen does not warn at exit."""
    for child in _children.values():
        if child.poll() is None:
            child.returncode = 0


def _pid_file(run_dir: Path, name: str) -> Path:
    return run_dir / f"{name}.pid"


def read_pid(run_dir: Path, name: str) -> int | None:
    """The PID of ``name`` if it runs and is still the process we started (not a recycled PID)."""
    try:
        pid_text, started = _pid_file(run_dir, name).read_text().split()[:2]
        pid = int(pid_text)
    except (FileNotFoundError, ValueError, IndexError):
        return None
    stat = _stat(pid)
    if stat is None or stat[0] == "Z" or stat[19] != started:
        return None
    return pid


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name: [0] state, [3] pgid, [19] start time."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def start(spec: ProcSpec, run_dir: Path, log_dir: Path) -> int:
    """Start ``spec`` detached (its own session, so Ctrl-C of the CLI leaves it running)."""
    existing = read_pid(run_dir, spec.name)
    if existing is not None:
        return existing
    run_dir.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **spec.env, "PYTHONUNBUFFERED": "1"}
    env.pop("VIRTUAL_ENV", None)
    with (log_dir / f"{spec.name}.log").open("ab") as log:
        log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} start {' '.join(spec.argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            list(spec.argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=run_dir,
            start_new_session=True,
        )
    _children[proc.pid] = proc
    stat = _stat(proc.pid)
    # PID and kernel start time together identify the process (setproctitle rewrites its environ and argv).
    _pid_file(run_dir, spec.name).write_text(f"{proc.pid} {stat[19] if stat else 0} {spec.stop_signal.name}\n")
    return proc.pid


def exited_early(run_dir: Path, name: str) -> bool:
    """The PID file exists but its process is gone: it crashed at start (see its log)."""
    return _pid_file(run_dir, name).exists() and read_pid(run_dir, name) is None


def stop(run_dir: Path, name: str, grace: float = 20.0, sig: signal.Signals = signal.SIGTERM) -> bool:
    """Signal the process group, wait up to ``grace`` seconds, then SIGKILL. True if one was running."""
    pid = read_pid(run_dir, name)
    pid_file = _pid_file(run_dir, name)
    recorded = pid_file.read_text().split()[2:3] if pid_file.exists() else []
    if recorded and recorded[0] in signal.Signals.__members__:
        sig = signal.Signals[recorded[0]]
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return False
    _signal_group(pid, sig)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _group_alive(pid):
        time.sleep(0.2)
    if _group_alive(pid):
        _signal_group(pid, signal.SIGKILL)
        while _group_alive(pid):
            time.sleep(0.1)
    child = _children.pop(pid, None)
    if child is not None:
        child.wait()
    pid_file.unlink(missing_ok=True)
    return True


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def _group_alive(pgid: int) -> bool:
    """Any non-zombie process left in the process group (uWSGI masters leave workers behind)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if fields[0] != "Z" and int(fields[3]) == pgid:
            return True
    return False


def group_rss_bytes(pid: int) -> int:
    """Resident memory of every process in ``pid``'s group."""
    total = 0
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
            if int(fields[3]) == pid:
                total += int((entry / "statm").read_text().split()[1]) * page
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def run_once(argv: Sequence[str], env: Mapping[str, str], log: Path, what: str) -> None:
    """A one-shot step (db sync, bootstrap); on failure raise with the tail of its output."""
    log.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **env}
    full_env.pop("VIRTUAL_ENV", None)
    result = subprocess.run(list(argv), env=full_env, capture_output=True, text=True, check=False)
    with log.open("a") as out:
        out.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n{result.stdout}{result.stderr}")
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise StepFailed(f"{what} failed (exit {result.returncode}); full output in {log}:\n{tail}")


class StepFailed(RuntimeError):
    """A devcloud step failed; the message says which and where its log is."""
