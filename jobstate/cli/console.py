"""`jobstate console`: the web console on a local port."""

from __future__ import annotations

import time

import click

from ..console.server import start
from .base import actor_flag, cli, connection, out, settings, who


@cli.command()
@connection
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (it has no login: keep it local).")
@click.option("--port", type=click.IntRange(0, 65535), default=8321, show_default=True)
@actor_flag
def console(host: str, port: int, actor: str | None) -> None:
    """Serve the web console: jobs with live progress, a job's steps, children, effects and
    history, and cancel / redrive / pause / resume (recorded with --as or your OS user)."""
    server, stop = start(settings().store(), who=who(actor), host=host, port=port)
    out.print(f"jobstate console on http://{host}:{server.server_address[1]}/ "
              "(Ctrl-C stops it)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        stop()
