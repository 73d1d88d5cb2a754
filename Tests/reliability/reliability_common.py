"""Helpers shared by the reliability tests (crash loop, full disk, bad spool, secrets).

They reuse the integration harness (`Tests/Integration/agent_harness.py`) and the emulator harness
(`Tests/Emulator/harness.py`); nothing here changes either.
"""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

from agent_harness import spooled_records
from agent_harness import wait_until as harness_wait_until

ROOT = Path(__file__).resolve().parents[2]


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.05, message: str = ""):
    """`agent_harness.wait_until`, counting an exception from `predicate` (e.g. a CLI call racing a restart)
    as not yet."""
    return harness_wait_until(predicate, timeout, interval, message, tolerate_errors=True)


def integrity_check(spool_path: str) -> str:
    """`PRAGMA integrity_check` on a read-only connection (never writes the file)."""
    db = sqlite3.connect(f"file:{spool_path}?mode=ro", uri=True, timeout=30)
    try:
        rows = db.execute("PRAGMA integrity_check").fetchall()
    finally:
        db.close()
    return "\n".join(str(r[0]) for r in rows)


def spool_records(spool_path: str, table: str | None = None) -> list[dict]:
    """Every pending record in the spool, read directly (read-only), per target in sequence order."""
    return spooled_records(spool_path, table)


def envelope(rows: list[dict], table: str, ack: str, mode: str | None = None, primary_key: str | None = None) -> bytes:
    config: dict = {"table": table}
    if mode:
        config["mode"] = mode
    if primary_key:
        config["primary_key"] = [primary_key]
    return json.dumps({"data": rows, "config": config, "ack": ack}, separators=(",", ":")).encode()


class WindowedClient(threading.Thread):
    """Sends lines with acks on one connection, `window` lines at a time, until stopped or the agent dies.

    `next_window()` returns a list of (ack id, line bytes, payload) or None to stop. Acknowledged payloads
    go to `acked` (in order), lines sent without an ok answer stay in `unanswered`; refusals go to
    `refused`."""

    def __init__(self, agent, next_window, stop: threading.Event, pause: float = 0.0):
        super().__init__(daemon=True)
        self.agent = agent
        self.next_window = next_window
        self.stop_event = stop
        self.pause = pause
        self.acked: list = []
        self.unanswered: list = []
        self.refused: list = []
        self.error: BaseException | None = None

    def run(self):
        try:
            conn = self.agent.connect()
        except OSError as error:
            self.error = error
            return
        try:
            while not self.stop_event.is_set():
                window = self.next_window()
                if not window:
                    break
                try:
                    conn.sock.sendall(b"".join(line + b"\n" for _, line, _ in window))
                except OSError:
                    self.unanswered.extend(p for _, _, p in window)
                    break
                dead = False
                for ack, _, payload in window:
                    reply = None
                    if not dead:
                        try:
                            reply = conn.reply()
                        except (OSError, ValueError):
                            reply = None
                    if reply is None:
                        dead = True
                        self.unanswered.append(payload)
                    elif reply.get("ok"):
                        assert reply.get("ack") == ack, (reply, ack)
                        self.acked.append(payload)
                    else:
                        self.refused.append((payload, reply))
                if dead:
                    break
                if self.pause:
                    time.sleep(self.pause)
        except BaseException as error:  # noqa: BLE001 - reported by the test
            self.error = error
        finally:
            conn.close()


def run_cli(agent, *args, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return agent.cli(*args, env=env)


def run_to_exit(argv: list[str], env: dict | None = None, timeout: float = 20,
                preexec: list[str] | None = None) -> subprocess.CompletedProcess:
    """Runs a command that is expected to exit by itself (e.g. a daemon refusing its spool)."""
    return subprocess.run([*(preexec or []), *argv], capture_output=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})))
