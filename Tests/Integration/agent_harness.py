"""Starts the real definite-agent binary on temporary paths and talks to it over its real socket."""
from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.05, message: str = "",
               tolerate_errors: bool = False):
    """Polls `predicate` until it returns something truthy (which is returned); fails after `timeout` s.
    With `tolerate_errors`, an exception from `predicate` (e.g. a CLI call racing a restart) counts as a
    falsy value and is shown as the last value if time runs out."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = predicate()
        except Exception as error:  # noqa: BLE001 - only when asked to
            if not tolerate_errors:
                raise
            last = error
        if last and not isinstance(last, Exception):
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message or predicate} (last value {last!r})")
        time.sleep(interval)


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value)  # strings and lists of strings: valid TOML


def agent_config(url: str | None = None, *, api: dict | None = None, batch: dict | None = None,
                 retry: dict | None = None, metrics: dict | None = None, tables: tuple = ()) -> str:
    """TOML sections for Agent(extra_config=...): fast linger and retries unless overridden. (`[spool]` is
    written by the harness: pass spool settings as Agent(spool_config=...).)"""
    sections = {
        "api": {**({"url": url} if url else {}), **(api or {})},
        "batch": {"linger": "100ms", **(batch or {})},
        "retry": {"initial": "50ms", "max": "500ms", **(retry or {})},
    }
    if metrics:
        sections["metrics"] = metrics
    text = ""
    for name, values in sections.items():
        if values:
            text += f"[{name}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in values.items())
    for table in tables:
        text += "[[table]]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in table.items())
    return text


def spooled_records(spool_path: str, table: str | None = None) -> list[dict]:
    """Every pending record in the spool, read directly (read-only), per target in sequence order."""
    db = sqlite3.connect(f"file:{spool_path}?mode=ro", uri=True, timeout=30)
    try:
        # A segment keeps small appends' records in its row and larger ones in segment_records.
        query = ("SELECT coalesce(s.records, (SELECT r.records FROM segment_records r WHERE r.id = s.records_id)) "
                 "FROM segments s JOIN targets t ON t.id = s.target_id "
                 + ("WHERE t.table_name = ? " if table else "") + "ORDER BY s.target_id, s.first_seq")
        rows = db.execute(query, (table,) if table else ()).fetchall()
    finally:
        db.close()
    records = []
    for (blob,) in rows:
        records.extend(json.loads(line) for line in bytes(blob).split(b"\n") if line)
    return records


def agent_binary() -> str:
    path = os.environ.get("DEFINITE_AGENT_BIN", str(ROOT / ".build" / "debug" / "definite-agent"))
    if not os.path.exists(path):
        raise RuntimeError(f"{path} not found: build first (swift build) or set DEFINITE_AGENT_BIN")
    return path


class Agent:
    """One daemon on a temporary directory: config, spool and socket all live there."""

    def __init__(self, directory: Path, extra_config: str = "", default_table: str | None = "bronze.events",
                 durability: str = "full", env: dict | None = None, spool_path: str | None = None,
                 spool_config: str = "", command_prefix: list[str] | None = None, http_socket: bool = True):
        """`spool_path` puts the spool elsewhere (default: in `directory`); `spool_config` adds lines to the
        `[spool]` table (e.g. `max_bytes = "1GiB"`); `command_prefix` runs the daemon through another
        command (e.g. `setpriv --reuid=nobody ...`); `http_socket=False` turns the local Stream API's
        socket off."""
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.socket_path = str(self.directory / "agent.sock")
        self.http_socket_path = str(self.directory / "http.sock") if http_socket else ""
        self.spool_path = spool_path or str(self.directory / "spool.db")
        self.command_prefix = list(command_prefix or [])
        self.config_path = str(self.directory / "agent.toml")
        default = f'default_table = "{default_table}"' if default_table else ""
        Path(self.config_path).write_text(f"""
[spool]
path = "{self.spool_path}"
durability = "{durability}"
{spool_config}
[intake]
socket = "{self.socket_path}"
http_socket = "{self.http_socket_path}"
{default}
{extra_config}
""")
        # SwiftNIO's strict mode: what it would only print (a task scheduled on an event loop already shut
        # down, "upgraded to a forced crash in future SwiftNIO versions") ends the daemon, which every
        # test's exit status then shows.
        self.env = dict(os.environ, SWIFTNIO_STRICT="1", **(env or {}))
        self.process: subprocess.Popen | None = None
        self.log_path = self.directory / "agent.log"

    # -- lifecycle

    READY_LINE = "ready: every listener accepts"

    def spawn(self) -> subprocess.Popen:
        """Starts the daemon and returns at once (see `start` to wait until it is ready)."""
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen([*self.command_prefix, agent_binary(), "run", "--config", self.config_path],
                                        stdout=log, stderr=log, env=self.env)
        return self.process

    def start(self, timeout: float = 15.0) -> "Agent":
        """Starts the daemon and waits until it is ready: every configured listener accepts (its log says
        so) and the intake socket takes a connection."""
        self.spawn()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"agent exited with {self.process.returncode}: {self.log()}")
            if self.READY_LINE in self.log_since_start():
                try:
                    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                        probe.connect(self.socket_path)
                    return self
                except OSError:
                    pass
            time.sleep(0.02)
        raise RuntimeError("agent did not start listening: " + self.log())

    def log_since_start(self) -> str:
        """The log of the last `start`/`spawn` only."""
        with open(self.log_path, "rb") as log:
            log.seek(getattr(self, "_log_offset", 0))
            return log.read().decode(errors="replace")

    def kill9(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout: float = 20.0) -> int:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            return self.process.wait(timeout=timeout)
        return self.process.returncode if self.process else 0

    def stop_and_assert_clean(self, within: float = 20.0) -> None:
        """Ends the daemon with SIGTERM and asserts it exits 0 within `within` seconds (and, if it is still
        running then, kills it so that no test leaves a daemon behind)."""
        if self.process is None:
            return
        if self.process.poll() is not None:
            assert self.process.returncode == 0, f"the agent had already exited with {self.process.returncode}:\n{self.log()[-3000:]}"
            return
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=within)
        except subprocess.TimeoutExpired:
            self.kill9()
            raise AssertionError(f"SIGTERM: the agent did not exit within {within}s:\n{self.log()[-3000:]}")
        assert code == 0, f"SIGTERM: the agent exited with {code} after {time.monotonic() - started:.1f}s:\n{self.log()[-3000:]}"

    def finish(self) -> None:
        """Ends a test's daemon: with SIGTERM, asserting a clean exit (`stop_and_assert_clean`); but when the
        test is already failing (called from a `finally` while an exception propagates), with SIGKILL, so
        that the first failure is the one reported."""
        if sys.exc_info()[0] is not None:
            self.kill9()
        else:
            self.stop_and_assert_clean()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def rss_kib(self) -> int:
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    # -- talking to it

    def connect(self) -> "Connection":
        return Connection(self.socket_path)

    def cli(self, *args: str, input: bytes | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([agent_binary(), *args, "--config", self.config_path], input=input,
                              capture_output=True, env=dict(self.env, **(env or {})), timeout=120)

    def status(self) -> dict:
        result = self.cli("status", "--json")
        assert result.returncode == 0, result.stderr.decode()
        return json.loads(result.stdout)

    # -- reading the spool directly

    def spooled_records(self, table: str | None = None) -> list[dict]:
        """Every pending record, per target in sequence order."""
        return spooled_records(self.spool_path, table)


class Connection:
    """A client connection speaking the line protocol."""

    def __init__(self, path: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.sock.settimeout(30)
        self.buffer = b""

    def send(self, line: bytes | str) -> None:
        if isinstance(line, str):
            line = line.encode()
        self.sock.sendall(line if line.endswith(b"\n") else line + b"\n")

    def reply(self) -> dict | None:
        while b"\n" not in self.buffer:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:  # closed by the agent with our input unread
                return None
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def request(self, line: bytes | str) -> dict | None:
        self.send(line)
        return self.reply()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
