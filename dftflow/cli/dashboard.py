"""``dftflow dashboard``: serve a read-only web page over one project."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dftflow.cli.common import console

ProjectArg = Annotated[Path, typer.Option("--project", "-p", help="Project directory.")]


def dashboard(
    project: ProjectArg = Path("demo-project"),
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port (0: any free port).")] = 8765,
    host: Annotated[str, typer.Option(
        "--host", help="Interface to listen on; anything but loopback needs --token.")] = "127.0.0.1",
    token: Annotated[str | None, typer.Option(
        "--token", envvar="DFTFLOW_DASHBOARD_TOKEN",
        help="Secret every request must carry (?token=...); required beyond loopback.")] = None,
    poll: Annotated[float, typer.Option("--poll", min=0.5, help="Seconds between the page's job updates.")] = 3.0,
) -> None:
    """Funnel, candidates, DFT jobs (live), failures, dataset, training and reports of a project in a browser.

    Read-only: the project is never written, its databases are opened read-only, and only
    files inside it are served. Stop with Ctrl-C.
    """
    from dftflow.dashboard import DashboardConfig, make_server

    server = make_server(DashboardConfig(project=project, host=host, port=port, token=token,
                                         poll_ms=int(poll * 1000)))
    bound_host, bound_port = server.server_address[:2]
    shown = f"[{bound_host}]" if ":" in str(bound_host) else bound_host
    url = f"http://{shown}:{bound_port}/" + (f"?token={token}" if token else "")
    console.print(f"dashboard of {project.resolve()} at {url}", highlight=False, soft_wrap=True)
    console.file.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
