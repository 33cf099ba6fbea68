"""User-facing errors: one clear line, a non-zero exit, no traceback."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class HpoError(Exception):
    """A problem the user can fix; its message says what is wrong and how to fix it."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as an interrupt. Unlike a Ctrl-C at the terminal it reaches one process only, so a command
    that started processes passes it on to them (or stops them)."""


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Treat SIGTERM (kill, a job scheduler) like Ctrl-C: a running trial is recorded, child processes are stopped,
    and the command ends with "interrupted"."""

    def handler(signum, frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def interrupts_deferred():
    """Hold a Ctrl-C or SIGTERM that arrives inside the block until it ends, then raise it (``KeyboardInterrupt``,
    ``Terminated``): for a step that must not be cut in two. Outside the main thread signals cannot be held."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum)) for sig in HELD_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if signal.SIGTERM in caught:
        raise Terminated
    if caught:
        raise KeyboardInterrupt


def run_cli(main: Callable[[], int | None]) -> None:
    """Run a command's ``main`` and turn an ``HpoError`` into one line on stderr and exit code 2, and a Ctrl-C or
    SIGTERM into "interrupted" and exit code 130."""
    try:
        with sigterm_as_interrupt():
            code = main()
    except HpoError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad option is an ``HpoError``: one line, exit 2, no usage dump; and a description taken
    from a module docstring loses its reStructuredText ````code```` marks in ``--help``."""

    def __init__(self, *args, description: str | None = None, **kwargs) -> None:
        super().__init__(*args, description=description and description.replace("``", ""), **kwargs)

    def error(self, message: str) -> NoReturn:
        raise HpoError(f"{message} (see {self.prog} --help)")


def missing_folders(path: Path) -> list[Path]:
    """``path`` and its parents that do not exist yet, innermost first: what ``mkdir(parents=True)`` would make."""
    return [p for p in (path, *path.parents) if not p.exists()]


def remove_empty(folders: list[Path]) -> None:
    """Remove each of ``folders`` (innermost first) that is empty; one that holds something is kept."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def output_folder(path: Path, flag: str) -> Path:
    """Check, before any work, that the folder an output goes to can be made and written, or refuse it in one line
    naming ``flag``. Folders made to find out are removed again: the output's writer makes them."""
    if path.exists() and not path.is_dir():
        raise HpoError(f"{path} is a file, not a folder: pass another {flag}")
    made = missing_folders(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK):
            raise HpoError(f"cannot write to {path} (permission denied): pass another {flag}")
    except OSError as err:  # a file in the way, no permission, a read-only file system
        raise HpoError(f"cannot write to {path} ({err.strerror}): pass another {flag}") from None
    finally:
        remove_empty(made)
    return path


def output_file(path: Path, flag: str) -> Path:
    """Check, before any work, that the file ``path`` can be written (its folder made if missing)."""
    if path.is_dir():
        raise HpoError(f"{path} is a folder: pass another {flag}, a file name")
    output_folder(path.parent, flag)
    if path.exists() and not os.access(path, os.W_OK):
        raise HpoError(f"cannot write to {path} (permission denied): pass another {flag}")
    return path


def write_output(path: Path, text: str, flag: str) -> None:
    """Write an output that ``output_file`` checked, making its folder; a failure now is still one line."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as err:
        raise HpoError(f"cannot write {path} ({err.strerror}): pass another {flag}") from None
