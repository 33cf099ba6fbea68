"""A throwaway PostgreSQL server for tests, and the ``postgres_url`` fixture built on it.

Use it from a test module with ``from tests.pg import postgres_url  # noqa: F401``. The fixture is
module-scoped: each module that imports it gets its own server (about a second to start), shared by
the module's tests, so give each test its own study names.

Without Debian's PostgreSQL binaries (``/usr/lib/postgresql/*/bin``) or ``psycopg2`` the fixture skips;
with ``HPO_REQUIRE_POSTGRES=1`` (set by CI after ``.ci/postgres-setup``) it fails instead.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

DATABASE = "hpo_test"
SUPERUSER = "postgres"
OS_USER = "postgres"  # PostgreSQL refuses to run as root; as root we run it as this user.
REQUIRE_ENV = "HPO_REQUIRE_POSTGRES"
_SOCKET_PATH_MAX = 100  # sockaddr_un holds 107 bytes; "/.s.PGSQL.NNNNN" takes the rest.


def _version_key(bindir: str) -> tuple[int, ...]:
    version = Path(bindir).parent.name
    return tuple(int(p) for p in version.split(".") if p.isdigit()) or (0,)


def find_pg_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/*/bin`` that has ``initdb`` and ``pg_ctl``, else ``None``."""
    for bindir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True):
        if all(os.access(os.path.join(bindir, tool), os.X_OK) for tool in ("initdb", "pg_ctl", "postgres")):
            return Path(bindir)
    return None


def unavailable_reason() -> str | None:
    """Why a server cannot be started here, or ``None`` when it can."""
    if find_pg_bindir() is None:
        return "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin (run .ci/postgres-setup)"
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return "psycopg2 is not installed (pip install psycopg2-binary, or run .ci/postgres-setup)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(OS_USER)
        except KeyError:
            return f"running as root but there is no {OS_USER!r} OS user to run PostgreSQL as"
        if shutil.which("runuser") is None:
            return "running as root but `runuser` is missing (needed to run PostgreSQL as the postgres user)"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_server_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", OS_USER, "--", *cmd] if os.geteuid() == 0 else cmd


def _run(cmd: list[str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(
            f"command failed ({proc.returncode}): {' '.join(cmd)}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


@contextlib.contextmanager
def postgres_server(tmp_dir: str | os.PathLike[str] | None = None) -> Iterator[str]:
    """Start a throwaway PostgreSQL server, yield a SQLAlchemy URL to a fresh database, then stop it.

    The server lives in a new directory inside ``tmp_dir`` (default: the system temp dir), listens on
    127.0.0.1 on a free port and on a unix socket in that directory, trusts every local connection,
    and runs with fsync off. As root it runs as the ``postgres`` OS user, so ``tmp_dir`` and its
    parents must be reachable by that user (pytest's ``tmp_path`` is not: /tmp/pytest-of-root is 0700).
    Everything is stopped (``pg_ctl stop -m immediate``) and deleted on exit.
    """
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(reason)
    bindir = find_pg_bindir()
    assert bindir is not None
    base = Path(tempfile.mkdtemp(prefix="hpo-pg-", dir=tmp_dir))
    base.chmod(0o755)
    if os.geteuid() == 0:
        user = pwd.getpwnam(OS_USER)
        os.chown(base, user.pw_uid, user.pw_gid)
    data = base / "data"
    log = base / "server.log"
    started = False
    try:
        _run(
            _as_server_user(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    SUPERUSER,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                    "--no-instructions",
                ]
            ),
            cwd=base,
        )
        socket_dir = str(base) if len(str(base)) <= _SOCKET_PATH_MAX else ""
        last_error: Exception | None = None
        for _ in range(3):  # the free port may be taken between probing and binding
            port = _free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories='{socket_dir}' "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100"
            )
            try:
                _run(
                    _as_server_user(
                        [
                            str(bindir / "pg_ctl"),
                            "start",
                            "-D",
                            str(data),
                            "-l",
                            str(log),
                            "-o",
                            options,
                            "-w",
                            "-t",
                            "60",
                        ]
                    ),
                    cwd=base,
                    timeout=90,
                )
            except RuntimeError as e:
                log_text = log.read_text(errors="replace") if log.exists() else ""
                last_error = RuntimeError(f"{e}\nserver log:\n{log_text}")
                continue
            started = True
            break
        if not started:
            raise RuntimeError(f"could not start PostgreSQL: {last_error}")
        _run(
            [str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", SUPERUSER, DATABASE],
            cwd=base,
        )
        yield f"postgresql+psycopg2://{SUPERUSER}@127.0.0.1:{port}/{DATABASE}"
    finally:
        if started:
            subprocess.run(
                _as_server_user([str(bindir / "pg_ctl"), "stop", "-D", str(data), "-m", "immediate", "-w"]),
                cwd=base,
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """SQLAlchemy URL of a fresh database on a throwaway server; skips (or fails under CI) without one."""
    reason = unavailable_reason()
    if reason is not None:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but PostgreSQL is unavailable: {reason}", pytrace=False)
        pytest.skip(f"PostgreSQL unavailable: {reason}")
    start = time.monotonic()
    with postgres_server() as url:
        print(f"postgres_server ready in {time.monotonic() - start:.1f}s: {url}")
        yield url
