"""``dftflow dashboard``: a local, read-only web page over one project (docs/dashboard.md).

:mod:`~dftflow.dashboard.views` reads the project (SQLite read-only, files as they are),
:mod:`~dftflow.dashboard.server` serves the page, its JSON and the project's files, and
:mod:`~dftflow.dashboard.files` decides which files may be served.
"""

from dftflow.dashboard.server import DashboardConfig, make_server, serve_in_thread

__all__ = ["DashboardConfig", "make_server", "serve_in_thread"]
