"""The dashboard's HTTP server: the standard library's ``ThreadingHTTPServer``, GET only, read-only.

Routes: ``/`` (the page), ``/static/<name>`` (its script and style, from the package),
``/api/<view>`` (JSON from :mod:`dftflow.dashboard.views`) and ``/files/<path>`` (a file
inside the project, :func:`dftflow.dashboard.files.inside`). With a token every request
must carry it (``?token=`` or the ``X-Dftflow-Token`` header); without one the server
only listens on the loopback interface and only answers requests addressed to it by a
loopback name (a page elsewhere cannot reach it through DNS rebinding).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import re
import shutil
import socket
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from dftflow.dashboard import files, views
from dftflow.errors import InputError

_STATIC = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8",
           "index.html": "text/html; charset=utf-8"}
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}


def is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_name(header: str) -> str:
    """The host name of a ``Host`` header (``name``, ``name:port``, ``[v6]`` or ``[v6]:port``)."""
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _int(params: dict[str, list[str]], key: str, default: int) -> int:
    try:
        return int(params.get(key, [default])[0])
    except ValueError:
        return default


def _api(root: Path) -> dict[str, Callable[[dict[str, list[str]]], Any]]:
    return {
        "overview": lambda q: views.overview(root),
        "funnel": lambda q: views.funnel(root),
        "candidates": lambda q: views.candidates(root, q.get("q", [""])[0], q.get("state", [""])[0],
                                                 _int(q, "offset", 0), _int(q, "limit", 100)),
        "jobs": lambda q: views.jobs(root),
        "datasets": lambda q: views.datasets(root),
        "training": lambda q: views.training(root),
        "reports": lambda q: views.reports(root),
    }


@dataclass(kw_only=True)
class DashboardConfig:
    """What one dashboard serves and to whom."""

    project: Path
    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    poll_ms: int = 3000


class _Handler(BaseHTTPRequestHandler):
    server_version = "dftflow-dashboard"
    config: DashboardConfig
    routes: dict[str, Callable[[dict[str, list[str]]], Any]]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # quiet: the terminal shows the URL, not every poll

    # -- checks ------------------------------------------------------------------------------------
    def _allowed(self, query: dict[str, list[str]]) -> bool:
        token = self.config.token
        if token is not None:
            given = (self.headers.get("X-Dftflow-Token") or query.get("token", [""])[0]
                     or self._cookie(self._cookie_name()))
            return hmac.compare_digest(given.encode(), token.encode())
        return is_loopback(_host_name(self.headers.get("Host") or ""))

    def _cookie_name(self) -> str:
        return f"dftflow_dashboard_{self.server.server_address[1]}"

    def _cookie(self, name: str) -> str:
        from http.cookies import CookieError, SimpleCookie

        try:
            jar = SimpleCookie(self.headers.get("Cookie") or "")
        except CookieError:
            return ""
        return jar[name].value if name in jar else ""

    # -- responses ---------------------------------------------------------------------------------
    def _headers(self, status: int, ctype: str, length: int | None, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Type", ctype)
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", _CSP)
        self.send_header("Referrer-Policy", "no-referrer")
        self.end_headers()

    def _send(self, status: int, body: bytes, ctype: str, extra: dict[str, str] | None = None) -> None:
        self._headers(status, ctype, len(body), extra)
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data: Any) -> None:
        self._send(status, json.dumps(data, default=str, allow_nan=False).encode(), "application/json")

    def _error(self, status: HTTPStatus, message: str) -> None:
        self._json(status, {"error": message})

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if not self._allowed(query):
            self._error(HTTPStatus.FORBIDDEN, "forbidden: a valid token is needed" if self.config.token
                        else "forbidden: not a loopback host name")
            return
        path = url.path
        if path in ("/", "/index.html"):
            self._static("index.html")
        elif path.startswith("/static/"):
            self._static(path.removeprefix("/static/"))
        elif path.startswith("/api/"):
            self._view(path.removeprefix("/api/"), query)
        elif path.startswith("/files/"):
            self._file(path.removeprefix("/files/"))
        else:
            self._error(HTTPStatus.NOT_FOUND, "not found")

    do_HEAD = do_GET

    def _refuse(self) -> None:
        self._error(HTTPStatus.METHOD_NOT_ALLOWED, "the dashboard is read-only")

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse

    def _static(self, name: str) -> None:
        if name not in _STATIC:
            self._error(HTTPStatus.NOT_FOUND, "not found")
            return
        body = resources.files("dftflow.dashboard").joinpath("static", name).read_bytes()
        extra = {}
        if name == "index.html":
            body = body.replace(b"__POLL_MS__", str(int(self.config.poll_ms)).encode())
            if self.config.token:  # the page's own requests (script, style, images) then carry the token
                extra["Set-Cookie"] = (f"{self._cookie_name()}={self.config.token}; Path=/; HttpOnly; "
                                       "SameSite=Strict")
        self._send(HTTPStatus.OK, body, _STATIC[name], extra)

    def _view(self, name: str, query: dict[str, list[str]]) -> None:
        view = self.routes.get(name)
        if view is None:
            self._error(HTTPStatus.NOT_FOUND, f"no view {name!r}")
            return
        try:
            data = view(query)
        except sqlite3.DatabaseError as exc:  # a database changing under an immutable read: the next poll reads it
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, f"database busy or changing ({exc}); try again")
            return
        except (OSError, ValueError) as exc:  # a file removed or half-written by the build: reported, page goes on
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{name}: {type(exc).__name__}: {exc}")
            return
        self._json(HTTPStatus.OK, data)

    def _file(self, url_path: str) -> None:
        target = files.inside(self.config.project, url_path)
        if target is None:
            self._error(HTTPStatus.NOT_FOUND, "no such file in the project")
            return
        try:  # the path was resolved: a link put in its place since then is not followed
            fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            self._error(HTTPStatus.NOT_FOUND, "no such file in the project")
            return
        with os.fdopen(fd, "rb") as fh:
            size = os.fstat(fd).st_size
            self._headers(HTTPStatus.OK, files.content_type(target), size)
            if self.command != "HEAD":
                shutil.copyfileobj(fh, self.wfile)


class DashboardServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Server6(DashboardServer):
    address_family = socket.AF_INET6


def make_server(config: DashboardConfig) -> DashboardServer:
    """A bound (not yet serving) dashboard server; ``server.server_address`` has the real port."""
    root = config.project.resolve()
    if not root.is_dir():
        raise InputError(f"{config.project}: no such project directory")
    if config.token is not None and not re.fullmatch(r"[A-Za-z0-9._~-]{8,}", config.token):
        raise InputError("--token: use at least 8 letters, digits or . _ ~ - (it travels in URLs and a cookie)")
    if not is_loopback(config.host) and not config.token:
        raise InputError(f"--host {config.host}: serving beyond this machine needs --token "
                         "(every request must then carry it)")
    config = DashboardConfig(project=root, host=config.host, port=config.port, token=config.token or None,
                             poll_ms=config.poll_ms)
    import dftflow.screening.stages  # noqa: F401 - pymatgen and co. load here, not during the first request

    handler = type("DashboardHandler", (_Handler,), {"config": config, "routes": _api(root)})
    host = config.host.strip("[]")
    cls = _Server6 if ":" in host else DashboardServer
    try:
        return cls((host, config.port), handler)
    except OSError as exc:
        raise InputError(f"--host {config.host} --port {config.port}: cannot listen there ({exc.strerror}); "
                         "try another --port (0: any free one)") from exc


def serve_in_thread(config: DashboardConfig) -> tuple[DashboardServer, threading.Thread]:
    """Start a dashboard in a daemon thread (for Python callers and benchmarks); ``server.shutdown()`` stops it."""
    server = make_server(config)
    thread = threading.Thread(target=server.serve_forever, name="dftflow-dashboard", daemon=True)
    thread.start()
    return server, thread
