"""`planner serve`: the planning service (HTTP jobs in SQLite, plan pages)."""

from __future__ import annotations

import logging
import secrets
import socket
import sys
from pathlib import Path
from typing import Any

import click

from planner.errors import InputError


@click.command(name="serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (loopback by default).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path(".planner-server"), show_default=True,
              help="Folder of the SQLite file (planner.db) that keeps jobs, instances and plans.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Solves at once (worker processes); more jobs wait in a queue.")
@click.option("--token", envvar="PLANNER_TOKEN",
              help="Require 'Authorization: Bearer TOKEN' on every request (or env "
                   "PLANNER_TOKEN; 'random' prints a new one).")
@click.option("--max-body", type=click.IntRange(min=1024), default=8 * 2**20,
              show_default=True, help="Largest request body accepted, bytes.")
@click.option("--cancel-grace", type=click.FloatRange(min=0.1), default=10.0,
              show_default=True,
              help="Seconds a cancelled solve has to stop before its process is ended.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="info", show_default=True)
def serve(host: str, port: int, data_dir: Path, workers: int, token: str | None,
          max_body: int, cancel_grace: float, log_level: str) -> None:
    """Run the planning service: submit instances as jobs over HTTP.

    Jobs are solved in a bounded pool of worker processes; each improving plan
    is stored (SQLite, WAL) and streamed as a server-sent event. A restart keeps
    every finished job; jobs that were running become 'interrupted' with their
    best plan. API documentation: http://HOST:PORT/docs.

    \b
    Examples:
      planner serve --port 8000 --workers 2
      curl -X POST --data-binary @instances/tiny.json \\
          'http://127.0.0.1:8000/v1/jobs?time_limit_s=5'
      curl -N http://127.0.0.1:8000/v1/jobs/JOB/events      # improving plans, then done
      curl http://127.0.0.1:8000/v1/jobs/JOB/plan -o plan.json
      curl -X DELETE http://127.0.0.1:8000/v1/jobs/JOB      # cancel, keep the best plan
      open http://127.0.0.1:8000/jobs/JOB                    # the plan page
    """
    try:
        import uvicorn

        from planner.server.app import ServerConfig, create_app
        from planner.server.store import Store, StoreError
    except ImportError as exc:
        raise InputError([f"planner serve needs FastAPI and uvicorn ({exc})"],
                         hint="pip install -e '.[engine]'") from None
    if token == "random":
        token = secrets.token_urlsafe(24)
        click.echo(f"token: {token}")
    try:
        Store(data_dir).close()  # a bad data folder is one line here, not a trace later
    except (StoreError, OSError) as exc:
        raise InputError([str(exc)]) from None
    if port:
        try:  # a busy port is one line and exit code 2, before anything starts
            with socket.create_server((host, port)):
                pass
        except OSError as exc:
            raise InputError([f"cannot listen on {host}:{port} ({exc.strerror})"],
                             hint="another --port, or stop what listens there") from None
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(ServerConfig(data_dir, workers, token, max_body, cancel_grace))

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            app.state.closing.set()  # open event streams end, so shutdown need not wait
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                            timeout_graceful_shutdown=5)
    try:
        Server(config).run()
    except OSError as exc:
        raise InputError([f"cannot listen on {host}:{port} ({exc})"]) from None
