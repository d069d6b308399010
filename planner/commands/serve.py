"""`planner serve`: the planning service (HTTP jobs in SQLite, plan pages)."""

from __future__ import annotations

import logging
import secrets
import sys
from pathlib import Path

import click


class ServeError(click.ClickException):
    exit_code = 2


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
        raise ServeError(f"planner serve needs the engine extra (FastAPI, uvicorn): "
                         f"pip install -e '.[engine]' ({exc})") from None
    if token == "random":
        token = secrets.token_urlsafe(24)
        click.echo(f"token: {token}")
    try:
        Store(data_dir).close()  # a bad data folder is one line here, not a trace later
    except (StoreError, OSError) as exc:
        raise ServeError(str(exc)) from None
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(ServerConfig(data_dir, workers, token, max_body, cancel_grace))
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
    except OSError as exc:
        raise ServeError(f"cannot listen on {host}:{port} ({exc})") from None
