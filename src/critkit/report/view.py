"""`critkit view RUN_DIR`: the run's report page with every sample row, served on 127.0.0.1.

Built on the standard library's http.server, as engine/serve.py is: a local, read-only viewer
needs no framework. At start the run's JSONL files are indexed by byte offset (samples.py); each
request for rows filters the index and reads back only the lines of its page, so a 50K-record run
is browsed without holding its files in memory. Loopback only: there is no authentication.

Endpoints: `GET /` (the page), `GET /api/rows?set=&model=&outcome=&flags=&q=&offset=&limit=`,
`GET /api/row?key=`, `GET /health`.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from .html import render_page, script_json
from .samples import Filters, RunSamples
from .summary import SynthStats, read_json

__all__ = ["make_view_server", "view"]


class Handler(BaseHTTPRequestHandler):
    server_version = "critkit-view"

    def do_GET(self):
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        path = url.path.rstrip("/") or "/"
        if path == "/":
            return self._send(200, self.server.page, "text/html; charset=utf-8")
        if path == "/health":
            return self._json(200, {"status": "ok", "rows": len(self.server.samples.refs)})
        if path == "/api/rows":
            try:
                offset = max(0, int((query.get("offset") or ["0"])[0]))
                limit = int((query.get("limit") or ["50"])[0])
            except ValueError:
                return self._json(400, {"error": "offset and limit must be whole numbers"})
            return self._json(200, self.server.samples.rows(Filters.from_query(query), offset, limit))
        if path == "/api/row":
            row = self.server.samples.row((query.get("key") or [""])[0])
            return self._json(200, row) if row else self._json(404, {"error": "no row with that key"})
        self._json(404, {"error": f"unknown path {path}"})

    def log_message(self, format, *args):
        if self.server.log_requests:
            super().log_message(format, *args)

    def _json(self, status: int, payload) -> None:
        # script_json: NaN from a file becomes null (JSON.parse rejects NaN), and <, >, & are escaped.
        self._send(status, script_json(payload).encode("utf-8"), "application/json")

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)


def make_view_server(run_dir: str | Path, host: str = "127.0.0.1", port: int = 0,
                     log_requests: bool = False) -> ThreadingHTTPServer:
    """A bound, not yet running server for one run folder (indexed now, once)."""
    root = Path(run_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such run folder")
    results = read_json(root / "results.json", [])
    stats = SynthStats()
    samples = RunSamples(root, results if isinstance(results, dict) else None, on_synth=stats.add)
    server = ThreadingHTTPServer((host, port), Handler)
    server.samples = samples
    server.page = render_page(root, live=True, index=samples, stats=stats).encode("utf-8")
    server.log_requests = log_requests
    return server


def view(run_dir: str | Path, port: int = 8765, host: str = "127.0.0.1", background: bool = False):
    """Serve until Ctrl-C (or, with background, from a daemon thread: returns (server, thread))."""
    server = make_view_server(run_dir, host, port)
    if background:
        thread = threading.Thread(target=server.serve_forever, name="critkit-view", daemon=True)
        thread.start()
        return server, thread
    print(f"critkit view: {len(server.samples.refs):,} rows of {run_dir} at http://{host}:{server.server_address[1]}/ "
          "(Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
