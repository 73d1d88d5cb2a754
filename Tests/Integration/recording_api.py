"""A stand-in for the Stream API that records every request whole (when it started and ended, its rows in
order, its config), for tests of what the agent sends: order, concurrency, the tags contract. It answers 200
after a configurable delay and writes nothing anywhere; the emulator is the one with a real lake."""
from __future__ import annotations

import gzip
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


@dataclass
class Request:
    table: str
    mode: str
    tags: dict
    rows: list
    started: float
    ended: float = 0.0


@dataclass
class RecordingAPI:
    """Starts at once on 127.0.0.1:<free port>; `delay` seconds per answer (may be changed while running)."""
    delay: float = 0.0
    requests: list = field(default_factory=list)

    def __post_init__(self):
        self.lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                started = time.monotonic()
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if "ndjson" in (self.headers.get("Content-Type") or ""):
                    query = {k: v[0] for k, v in parse_qs(urlparse(self.path).query).items()}
                    config = {"table": query.get("table"), "mode": query.get("mode", "append"),
                              "tags": json.loads(query.get("tags", "{}"))}
                    rows = [json.loads(line) for line in body.split(b"\n") if line.strip()]
                else:
                    document = json.loads(body)
                    config, rows = document["config"], document["data"]
                    rows = rows if isinstance(rows, list) else [rows]
                request = Request(config["table"], config.get("mode", "append"), config.get("tags") or {}, rows, started)
                with api.lock:
                    api.requests.append(request)
                time.sleep(api.delay)
                request.ended = time.monotonic()
                answer = json.dumps({"success": True, "request_id": f"req_{len(api.requests)}", "stream_id": "st_1",
                                     "table": config["table"], "accepted": len(rows), "successful_rows": len(rows),
                                     "rejected_rows": 0, "partitions": [], "snapshot_id": None, "warnings": [],
                                     "errors": []}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        # A backlog that takes a burst of new connections (Python's default of 5 drops SYNs: 1 s each).
        ThreadingHTTPServer.request_queue_size = 1024
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v2/stream"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def snapshot(self) -> list[Request]:
        with self.lock:
            return list(self.requests)

    def most_in_flight(self, table: str | None = None) -> int:
        """The most requests (of `table`, or of all) that were in flight at the same moment."""
        events = []
        for r in self.snapshot():
            if table is None or r.table == table:
                events += [(r.started, 1), (r.ended or float("inf"), -1)]
        most = current = 0
        for _, delta in sorted(events):
            current += delta
            most = max(most, current)
        return most
