"""Start and drive the Stream API emulator from tests (this suite and the agent's).

    import sys; sys.path.insert(0, "<repo>/Tests/Emulator")
    from harness import Emulator

    with Emulator() as emu:                  # free port, temp lake dir, key "test-key"
        r = emu.post([{"id": 1}], {"table": "bronze.events", "wait": True})
        emu.control(error_rate=0.2)          # fault injection while it runs
        emu.query("SELECT count(*) AS n FROM lake.bronze.events")  # -> [{"n": 1}]
        emu.stats(); emu.requests()
    # stopped, temp dir removed

Only the standard library and `requests` are needed on the test side.
"""

from __future__ import annotations

import collections
import gzip as _gzip
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from urllib.parse import urlencode

import requests

HERE = os.path.dirname(os.path.abspath(__file__))
EMULATOR_PY = os.path.join(HERE, "emulator.py")


class Emulator:
    """An emulator subprocess on 127.0.0.1:<free port> with its own lake directory."""

    def __init__(self, *extra_args: str, api_keys=("test-key",), lake_dir: str | None = None,
                 namespaces=("bronze",), null: bool = False, auto_create: bool = True,
                 seed: int = 0, quiet: bool = False, keep_lake: bool = False,
                 startup_timeout: float = 60.0, env: dict | None = None, start: bool = True):
        self.api_keys = list(api_keys)
        self.api_key = self.api_keys[0] if self.api_keys else None
        self._own_dir = lake_dir is None
        self.lake_dir = lake_dir or tempfile.mkdtemp(prefix="stream-emulator-")
        self.keep_lake = keep_lake
        self.args = [sys.executable, "-u", EMULATOR_PY, "--listen", "127.0.0.1:0",
                     "--lake", self.lake_dir, "--namespaces", ",".join(namespaces),
                     "--seed", str(seed)]
        for k in self.api_keys:
            self.args += ["--api-key", k]
        if null:
            self.args.append("--null")
        if not auto_create:
            self.args.append("--no-auto-create")
        if quiet:
            self.args.append("--quiet")
        self.args += list(extra_args)
        self.env = dict(os.environ, **(env or {}))
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None
        self.url: str | None = None
        self.host: str | None = None
        self.port: int | None = None
        self.lines: collections.deque[str] = collections.deque(maxlen=10000)
        self.session = requests.Session()
        if start:
            self.start()

    # -- lifecycle ----------------------------------------------------------------

    def start(self):
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     env=self.env, text=True, bufsize=1)
        first: queue.Queue = queue.Queue()

        def reader():
            announced = False
            for line in self.proc.stdout:
                line = line.rstrip("\n")
                self.lines.append(line)
                if not announced and line.startswith("listening on "):
                    announced = True
                    first.put(line)
            if not announced:
                first.put(None)

        threading.Thread(target=reader, daemon=True).start()
        try:
            line = first.get(timeout=self.startup_timeout)
        except queue.Empty:
            line = None
        if line is None:
            self.stop()
            raise RuntimeError("emulator did not start:\n" + "\n".join(self.lines))
        addr = line[len("listening on "):].strip()
        host, _, port = addr.rpartition(":")
        self.host, self.port = host, int(port)
        self.url = f"http://{host}:{port}"
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.session.close()
        if self._own_dir and not self.keep_lake:
            shutil.rmtree(self.lake_dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    @property
    def stream_url(self) -> str:
        return self.url + "/v2/stream"

    @property
    def output(self) -> list[str]:
        """The emulator's stdout lines so far (one line per request)."""
        return list(self.lines)

    # -- test endpoints -------------------------------------------------------------

    def _post(self, path, obj=None):
        r = self.session.post(self.url + path, json=obj if obj is not None else {}, timeout=60)
        if r.status_code != 200:
            raise RuntimeError(f"POST {path} -> {r.status_code}: {r.text}")
        return r.json()

    def _get(self, path):
        r = self.session.get(self.url + path, timeout=60)
        r.raise_for_status()
        return r.json()

    def control(self, **settings) -> dict:
        """Change fault settings (see README); control(reset=True) restores startup ones."""
        return self._post("/_control", settings)

    def reset_faults(self) -> dict:
        return self.control(reset=True)

    def faults(self) -> dict:
        return self._get("/_control")

    def stats(self) -> dict:
        return self._get("/_stats")

    def reset_stats(self):
        return self._post("/_stats/reset")

    def requests(self) -> list[dict]:
        return self._get("/_requests")

    def reset_requests(self):
        return self._post("/_requests/reset")

    def query_raw(self, sql: str) -> dict:
        """{"columns": [...], "rows": [[...], ...]}"""
        return self._post("/_admin/query", {"sql": sql})

    def query(self, sql: str) -> list[dict]:
        """Rows of a SELECT as dicts (run inside the emulator: no file-lock clash)."""
        res = self.query_raw(sql)
        return [dict(zip(res["columns"], row)) for row in res["rows"]]

    def scalar(self, sql: str):
        res = self.query_raw(sql)
        return res["rows"][0][0] if res["rows"] else None

    def create_table(self, table: str, columns: dict):
        return self._post("/_admin/create_table", {"table": table, "columns": columns})

    def drop_table(self, table: str):
        return self._post("/_admin/drop_table", {"table": table})

    # -- sending ----------------------------------------------------------------------

    def post(self, data=None, config=None, *, body: bytes | None = None, ndjson: bool = False,
             gzip: bool = False, params: dict | None = None, headers: dict | None = None,
             api_key: str | None = "__default__", timeout: float = 60,
             session: requests.Session | None = None) -> requests.Response:
        """POST /v2/stream.

        JSON form: post(rows, {"table": ...}). NDJSON form: post(rows, ndjson=True,
        params={"table": ...}) (config from query parameters; dict values are
        JSON-encoded). `body` sends raw bytes as is.
        """
        h = {}
        if api_key == "__default__":
            api_key = self.api_key
        if api_key is not None:
            h["Authorization"] = f"Bearer {api_key}"
        if body is None:
            if ndjson:
                rows = data if isinstance(data, list) else [data]
                body = b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in rows)
                h["Content-Type"] = "application/x-ndjson"
            else:
                env = {"data": data}
                if config is not None:
                    env["config"] = config
                body = json.dumps(env, separators=(",", ":")).encode()
                h["Content-Type"] = "application/json"
        elif ndjson:
            h["Content-Type"] = "application/x-ndjson"
        else:
            h.setdefault("Content-Type", "application/json")
        if gzip:
            body = _gzip.compress(body, 6)
            h["Content-Encoding"] = "gzip"
        h.update(headers or {})
        url = self.stream_url
        if params:
            enc = {k: (json.dumps(v) if isinstance(v, (dict, list)) else
                       ("true" if v is True else "false" if v is False else v))
                   for k, v in params.items()}
            url += "?" + urlencode(enc)
        return (session or self.session).post(url, data=body, headers=h, timeout=timeout)

    def wait_until(self, predicate, timeout: float = 10.0, interval: float = 0.05):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(interval)
        return False
