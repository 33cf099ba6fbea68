"""Run independent jobs (retrain seeds, benchmark studies) in child processes that stop when this one does.

The standard pools fall short here. A ``concurrent.futures`` process pool cannot terminate its workers before
Python 3.14: after a Ctrl-C, leaving its ``with`` block waits for every queued job (minutes of training), and when
the caller is killed its workers are orphaned and train on. ``multiprocessing.Pool`` can terminate, but when a
worker dies it waits for ever for that job's result, and its ``terminate()`` can then hang on a lock. So this is a
small pool of our own: one pipe per child, a Ctrl-C, SIGTERM (as hpo's commands raise it), error or closing the
generator terminates every child at once, a child that dies is an error, and on Linux the kernel kills the children
if this process dies (``PR_SET_PDEATHSIG``), whatever killed it.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import Connection, wait
from typing import Any

PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>


class ChildDied(RuntimeError):
    """A child process ended without returning its job's result (killed, or crashed outside Python)."""


class ChildTraceback(Exception):
    """The traceback of an exception raised in a child, as text: the ``__cause__`` of the exception re-raised here."""


def map_in_processes(function: Callable[..., Any], tasks: Iterable[tuple], jobs: int) -> Iterator[Any]:
    """``function(*task)`` for each task, yielded in order, computed ``jobs`` at a time in fresh (spawned)
    processes: no inherited thread pools or CUDA state. ``function`` must be importable (a module-level name)."""
    queue = list(enumerate(tasks))[::-1]  # popped from the end: first task first
    total = len(queue)
    context = multiprocessing.get_context("spawn")
    children: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []
    busy: dict[Connection, tuple[int, multiprocessing.process.BaseProcess]] = {}
    results: dict[int, Any] = {}
    try:
        for _ in range(min(jobs, len(queue))):
            here, there = context.Pipe()
            child = context.Process(target=_serve, args=(there, function, os.getpid()), daemon=True)
            child.start()
            there.close()
            children.append((child, here))
        for child, conn in children:
            _give_next(queue, conn, child, busy)
        for index in range(total):
            while index not in results:
                ready = wait([*busy, *(child.sentinel for _, child in busy.values())])
                for conn, (i, child) in list(busy.items()):
                    if conn not in ready and child.sentinel not in ready:
                        continue
                    reply = _receive(conn)
                    if reply is None:
                        raise ChildDied(
                            f"the child process running {function.__name__} (job {i}) died without a result "
                            f"(exit code {child.exitcode})"
                        )
                    del busy[conn]
                    results[i] = _unwrap(reply)
                    _give_next(queue, conn, child, busy)
            yield results.pop(index)
    finally:
        for child, _ in children:
            child.terminate()  # idle ones too: they wait for a job that will not come
        for child, conn in children:
            child.join()
            conn.close()


def _give_next(queue: list, conn: Connection, child, busy: dict) -> None:
    """Send the child the next task; with none left, close its pipe so that it exits now, not when the caller
    drops the generator (the retrain keeps it until it returns)."""
    if queue:
        index, task = queue.pop()
        conn.send(task)
        busy[conn] = (index, child)
    else:
        conn.close()


def _receive(conn: Connection) -> tuple | None:
    """The child's reply, or None if it has none and never will (it died: the pipe is closed)."""
    try:
        return conn.recv() if conn.poll() else None
    except EOFError:
        return None


def _unwrap(reply: tuple[bool, Any, str]) -> Any:
    ok, value, text = reply
    if ok:
        return value
    raise value from ChildTraceback(text)


def _serve(conn: Connection, function: Callable[..., Any], parent: int) -> None:
    """A child's loop: run each task it is sent, send back (ok, result or exception, traceback text)."""
    # Ctrl-C is the parent's to handle (it terminates us); here it would only print a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent)
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        try:
            reply = (True, function(*task), "")
        except Exception as err:
            reply = (False, err, traceback.format_exc())
        try:
            conn.send(reply)
        except Exception:  # a result or exception that cannot be pickled
            conn.send((False, RuntimeError(f"{function.__name__} returned or raised something unpicklable"), ""))


def die_with_parent(parent: int) -> None:
    """Ask the kernel to SIGKILL this process when ``parent`` (its parent's pid) dies; exit now if it already has."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)  # the parent died before the request took effect
