"""Helpers for tests of processes: jobs for child processes, and which processes are still alive (Linux /proc)."""

import os
import signal
import time
from pathlib import Path


def record_pid_and_sleep(folder: str, seconds: float) -> None:
    (Path(folder) / str(os.getpid())).touch()
    time.sleep(seconds)


def value_and_pid(delay: float, value: str) -> tuple[str, int]:
    time.sleep(delay)
    return value, os.getpid()


def _state_and_parent(stat: Path) -> tuple[str, int]:
    """A process's state letter and parent pid from its /proc/PID/stat (after the command name, which may hold
    spaces and parentheses)."""
    state, ppid = stat.read_text().rsplit(")", 1)[1].split()[:2]
    return state, int(ppid)


def alive(pid: int) -> bool:
    try:
        return _state_and_parent(Path(f"/proc/{pid}/stat"))[0] != "Z"  # a zombie is dead
    except FileNotFoundError:
        return False


def children_running(marker: str, parent: int) -> list[int]:
    """The child processes of ``parent`` whose command line holds ``marker``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if _state_and_parent(stat)[1] == parent and marker.encode() in (stat.parent / "cmdline").read_bytes():
                found.append(int(stat.parent.name))
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found


def gone_within(pids: list[int], seconds: float) -> list[int]:
    """The pids still alive after waiting up to ``seconds`` for them to end."""
    deadline = time.time() + seconds
    while any(alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


def die_abruptly() -> None:
    os.kill(os.getpid(), 9)  # as the kernel's out-of-memory killer would


def fail(message: str) -> None:
    raise ValueError(message)


def interrupt_myself() -> str:
    os.kill(os.getpid(), signal.SIGINT)  # as a Ctrl-C at the terminal reaches every process of the group
    time.sleep(0.2)
    return "ignored"
