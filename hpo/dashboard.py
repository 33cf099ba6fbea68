"""``python -m hpo.dashboard``: optuna-dashboard on a study's storage, with the study's artifacts.

Opens the storage the way the search does (SQLite in WAL mode with a busy timeout, so reading never blocks
running workers), refuses to create an empty study file, and prints the study's URL. Serves until Ctrl-C.
"""

from __future__ import annotations

import errno
import socket
import sys
from pathlib import Path
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from hpo.errors import ArgumentParser, HpoError, run_cli
from hpo.notes import artifact_dir_for
from hpo.storage import checked_study_name, default_storage_url, files_dir, load_existing_study, redact


class _ThreadedServer(ThreadingMixIn, WSGIServer):
    """What ``optuna-dashboard`` itself serves with: one thread per request (the page fetches in parallel)."""

    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    """Log failed requests only; the page polls the API every few seconds."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        if str(code).isdigit() and int(code) >= 400:
            super().log_request(code, size)


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m hpo.dashboard", description=__doc__.splitlines()[0])
    p.add_argument("--study-name", type=checked_study_name, default="cifar10", help="study to open (default cifar10)")
    p.add_argument("--storage", help="Optuna storage URL (default: sqlite:///studies/<study-name>.db)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    p.add_argument("--artifacts", type=Path, help="artifact folder (default: <study folder>/<study-name>-artifacts)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 <= args.port <= 65535:
        raise HpoError(f"--port must be in 0..65535 (0 picks a free one), got {args.port}")
    url = args.storage or default_storage_url(args.study_name)
    study = load_existing_study(args.study_name, url)

    from optuna.artifacts import FileSystemArtifactStore
    from optuna_dashboard import wsgi

    artifact_dir = args.artifacts or artifact_dir_for(args.study_name, files_dir(url))
    try:
        artifact_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise HpoError(f"cannot use artifact folder {artifact_dir} ({err.strerror}): pass --artifacts DIR") from None
    app = wsgi(study._storage, artifact_store=FileSystemArtifactStore(artifact_dir))
    try:
        server = make_server(args.host, args.port, app, server_class=_ThreadedServer, handler_class=_QuietHandler)
    except OSError as err:
        # An unknown host name, or an address this machine does not have, is the host's fault; the rest the port's.
        if isinstance(err, socket.gaierror) or err.errno == errno.EADDRNOTAVAIL:
            fix = "pass another --host (127.0.0.1, or 0.0.0.0 for every interface)"
        else:
            fix = "pass another --port (0 picks a free one)"
        raise HpoError(f"cannot listen on {args.host}:{args.port} ({err.strerror}): {fix}") from None
    port = server.server_address[1]
    print(f"study {args.study_name!r} in {redact(url)}, artifacts in {artifact_dir}", flush=True)
    print(
        f"optuna-dashboard: http://{args.host}:{port}/dashboard/studies/{study._study_id}  (Ctrl-C stops)", flush=True
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("dashboard stopped", file=sys.stderr)
    finally:
        server.server_close()
    return 0


def cli() -> None:
    run_cli(main)


if __name__ == "__main__":
    cli()
