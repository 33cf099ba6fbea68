"""Open an Optuna storage from a URL, set up for several writers and a live reader.

- ``sqlite:///path.db``: a long busy timeout, so concurrent workers wait for the write lock instead of failing, and
  (``use_wal``, once the caller's checks have passed) WAL journal mode: readers such as the dashboard never block
  writers, and it persists in the file. Opening alone changes no byte of an existing file.
- ``postgresql://...`` / ``mysql://...``: Optuna's RDB storage; this is how several hosts share one study.
- ``journal:path.log``: Optuna's journal file storage.

RDB storages get Optuna's heartbeat: a trial whose worker died (SIGKILL, power loss) is failed once its heartbeat
is stale and re-queued with the same parameters by ``RetryHeartbeatStaleTrialCallback``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import sqlite3
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import optuna
from optuna.storages import BaseStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, ProgrammingError, SQLAlchemyError

from hpo.errors import HpoError

SQLITE_BUSY_TIMEOUT_S = 120
MAX_RETRY = 3
# Re-queues a trial whose worker died (or was interrupted) as a WAITING copy with the same parameters.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    RETRY_STALE = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
SCHEMA_RETRIES = 4
_PASSWORD = re.compile(r"(//[^/:@]*:).*@")  # up to the last @: a password may hold / or @
_UNUSABLE_IN_NAMES = re.compile(r"[/\\?#%\x00-\x1f]|^[.\s]|\s$")  # paths, URL syntax, control characters
MAX_NAME = 100  # with suffixes such as "-checkpoints", well within the 255 bytes a file name may have


def checked_study_name(text: str) -> str:
    """argparse type of ``--study-name``. The name also names files and folders (``studies/NAME.db``, its
    checkpoints and artifacts, ``reports/NAME/``) and goes into the default SQLite URL, so it may not hold a path
    separator, URL syntax (``? # %``) or control characters, start with a dot or a space, or run past MAX_NAME."""
    if not text or len(text) > MAX_NAME or _UNUSABLE_IN_NAMES.search(text):
        raise argparse.ArgumentTypeError(
            f"{text[:40]!r}{'...' if len(text) > 40 else ''} is not a usable study name: it names files, so give "
            f"1 to {MAX_NAME} characters without / \\ ? # % or control characters, not starting with a dot or a space"
        )
    return text


def default_storage_url(study_name: str, studies_dir: str | Path = "studies") -> str:
    return f"sqlite:///{Path(studies_dir) / f'{study_name}.db'}"


def files_dir(url: str) -> Path:
    """Where a study's files (checkpoints, weights, artifacts) live: beside a SQLite or journal file, else
    ``studies/`` (a database server's studies keep their files on the host that runs the command)."""
    if url.startswith("journal:"):
        return Path(url.removeprefix("journal:").removeprefix("//")).parent
    if url.startswith("sqlite:///"):
        return Path(make_url(url).database or "studies/x").parent
    return Path("studies")


def new_storage_file(url: str) -> bool:
    """Whether ``url`` names a SQLite or journal file that does not exist yet (opening it would create the file)."""
    if url.startswith("journal:"):
        return not Path(url.removeprefix("journal:").removeprefix("//")).exists()
    if not url.startswith("sqlite:///"):
        return False
    try:
        database = make_url(url).database
    except (ArgumentError, ValueError):
        return False  # malformed: open_storage says so
    return bool(database) and database != ":memory:" and "mode=memory" not in url and not Path(database).exists()


def open_storage(url: str, heartbeat_interval: int | None = 30, writable: bool = True) -> BaseStorage:
    """An Optuna storage for ``url``; a malformed or unreachable URL, an in-memory SQLite database (lost at exit,
    unseen by the workers) and, when ``writable``, a read-only study file or folder are an ``HpoError`` naming the
    problem."""
    if url.startswith("journal:"):
        return _journal(url.removeprefix("journal:").removeprefix("//"), writable)
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise HpoError(
            f"malformed storage URL {redact(url)!r}: "
            "use sqlite:///path.db, postgresql://user@host/db or journal:path.log"
        ) from None
    engine_kwargs: dict = {}
    if parsed.get_backend_name() == "sqlite":
        if not parsed.database or parsed.database == ":memory:" or parsed.query.get("mode") == "memory":
            raise HpoError(f"storage URL {url!r} names no database file: use sqlite:///studies/NAME.db")
        path = Path(parsed.database)
        if not writable and _frozen_wal_file(path):
            # SQLite cannot make the "-shm" file a WAL reader needs, and nobody can be writing: read it as it
            # stands. The URI is built here, from the path, so characters such as # and % stay part of it.
            uri = f"file:{quote(str(path.resolve()))}?immutable=1"
            engine_kwargs = {"creator": lambda: sqlite3.connect(uri, uri=True, check_same_thread=False)}
        else:
            _prepare_sqlite(path, writable)
            engine_kwargs = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    heartbeat = {}
    if heartbeat_interval:
        heartbeat = {
            "heartbeat_interval": heartbeat_interval,
            "grace_period": 3 * heartbeat_interval,
            "heartbeat_stale_trial_callback": RETRY_STALE,
        }
    for attempt in range(SCHEMA_RETRIES):
        try:
            with warnings.catch_warnings():
                # Optuna still labels heartbeat "experimental"; it is the mechanism we rely on.
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(url, engine_kwargs=engine_kwargs, **heartbeat)
        except (SQLAlchemyError, ImportError, ValueError) as err:
            error: Exception = err
            if not _lost_schema_race(err):
                break
            time.sleep(0.5 * (attempt + 1))
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    raise HpoError(f"cannot open storage {redact(url)}: {reason}")


def _lost_schema_race(err: Exception) -> bool:
    """Another host created the tables at the same moment: PostgreSQL's catalog collides (a unique violation) or
    the table it was about to create exists now ("relation ... already exists")."""
    return isinstance(err, IntegrityError) or (isinstance(err, ProgrammingError) and "already exists" in str(err))


def _prepare_sqlite(path: Path, writable: bool) -> None:
    """Check that the file can be opened, and written when ``writable`` (an existing file is left byte-for-byte as
    it was)."""
    if writable and path.exists() and not os.access(path, os.W_OK):
        raise HpoError(
            f"SQLite study file {path} is read-only: make it writable, or copy it and pass --storage with the copy"
        )
    if writable and path.exists() and not _writable_folder(path):  # SQLite writes its journal beside it
        raise HpoError(
            f"SQLite study file {path} is in a read-only folder: make {path.parent} writable, or copy the file "
            "and pass --storage with the copy"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S)
        try:
            conn.execute("PRAGMA schema_version").fetchone()
        finally:
            conn.close()
    except (OSError, sqlite3.Error) as err:
        raise HpoError(
            f"cannot open SQLite study file {path} ({err}): check that {path.parent} exists and is writable, "
            "or pass --storage with another location"
        ) from None


def _frozen_wal_file(path: Path) -> bool:
    """A WAL-mode SQLite file in a folder nobody may write, with no "-wal" or "-journal" file beside it (which
    would hold a writer's changes): it can only be read, and only as it stands."""
    if not path.is_file() or _writable_folder(path):
        return False
    if Path(f"{path}-wal").exists() or Path(f"{path}-journal").exists():
        return False
    try:
        with path.open("rb") as f:
            header = f.read(20)
    except OSError:
        return False  # unreadable: opening it says so in one line
    return header[:16] == b"SQLite format 3\x00" and header[18:20] == b"\x02\x02"  # file format 2: WAL


def _writable_folder(path: Path) -> bool:
    return os.access(path.parent, os.W_OK)


def use_wal(url: str) -> None:
    """Switch a SQLite study file to WAL journal mode (kept by the file); other storages are left alone.

    Call it only after the checks that may refuse the run, so a refused run changes nothing."""
    if not url.startswith("sqlite:///"):
        return
    path = Path(make_url(url).database or "")
    try:
        conn = sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S)
        try:
            conn.execute("PRAGMA journal_mode=WAL").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as err:
        raise HpoError(f"cannot switch SQLite study file {path} to WAL mode ({err})") from None


def _journal(path: str, writable: bool = True) -> BaseStorage:
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    journal = Path(path)
    if writable and journal.exists() and not (os.access(journal, os.W_OK) and _writable_folder(journal)):
        raise HpoError(
            f"journal file {path} or its folder is read-only (Optuna writes a lock file beside it): make both "
            "writable, or copy the file and pass --storage journal:<the copy>"
        )
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        _check_journal(Path(path))
        return JournalStorage(JournalFileBackend(path))
    except OSError as err:
        raise HpoError(f"cannot open journal file {path}: {err.strerror}") from None
    except (ValueError, KeyError, TypeError, AssertionError) as err:  # UnicodeDecodeError, JSONDecodeError: ValueError
        raise HpoError(
            f"{path} is not an Optuna journal file ({type(err).__name__}): pass --storage journal:<another file>"
        ) from None


def _check_journal(path: Path) -> None:
    """Refuse a file that is not empty and does not start with a journal record: Optuna would append to it (it
    takes a last line that does not parse for a write in progress), then fail."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with path.open("rb") as f:
        first = f.readline()
    record = json.loads(first)  # ValueError (UnicodeDecodeError, JSONDecodeError): caught by the caller
    if not isinstance(record, dict) or "op_code" not in record:
        raise ValueError("its first line is not a journal record")


def redact(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``: what may be printed or written to a file."""
    if url.startswith("journal:"):
        return url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return _PASSWORD.sub(r"\1***@", url)  # not a URL SQLAlchemy parses: hide anything like user:secret@


def heartbeat_interval(storage: BaseStorage) -> int | None:
    """The storage's heartbeat interval, or None. Duck-typed: Optuna wraps RDB storages in a caching layer."""
    getter = getattr(storage, "get_heartbeat_interval", None)
    return getter() if getter else None


@contextmanager
def ask_lock(storage: BaseStorage) -> Iterator[None]:
    """Hold an exclusive lock on a SQLite study's ``.ask-lock`` file beside it (else nothing) while the body runs.

    Optuna takes a queued (WAITING) trial by reading its state and then setting it to RUNNING; on SQLite nothing
    locks the row in between, so two workers asking at once can both take the same queued trial (seen with 2
    workers on one core: both ran the recipe and the second's ``tell`` crashed). PostgreSQL locks the row, and
    the journal storage has its own lock."""
    url = getattr(getattr(storage, "_backend", storage), "url", "")
    if not url.startswith("sqlite:///"):
        yield
        return
    with open(Path(make_url(url).database + ".ask-lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextmanager
def heartbeat(storage: BaseStorage, trial_id: int) -> Iterator[None]:
    """Record the trial's heartbeat in the background while the body runs (what ``Study.optimize`` does)."""
    interval = heartbeat_interval(storage)
    if not interval:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            # A missed beat is harmless; only a run of them (the grace period) makes the trial stale.
            with contextlib.suppress(SQLAlchemyError):
                storage.record_heartbeat(trial_id)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def load_existing_study(study_name: str, url: str | None = None, writable: bool = False) -> optuna.Study:
    """Load a study that must already exist (export, retrain, report, dashboard); never creates a file or study.
    ``writable``: the caller will write to it, so a read-only SQLite file (or folder) is refused now."""
    url = url or default_storage_url(study_name)
    path = None
    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:").removeprefix("//"))
    elif url.startswith("sqlite:///"):
        path = Path(make_url(url).database or "")
    if path is not None and not path.is_file():
        storage = "" if url == default_storage_url(study_name) else f" --storage {url}"
        raise HpoError(
            f"no study file {path}: run `python -m hpo.search --study-name {study_name}{storage}` to create it, "
            "or pass --storage/--study-name of an existing study"
        )
    storage = open_storage(url, heartbeat_interval=None, writable=writable)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage))
        held = f"it holds {', '.join(repr(n) for n in names)} (pass --study-name)" if names else "it holds no study"
        raise HpoError(f"no study {study_name!r} in {redact(url)}: {held}") from None
    if path is None or (os.access(path, os.W_OK) and _writable_folder(path)):
        use_wal(url)  # a reader beside running workers never blocks them; a read-only file is read as it is
    return study
