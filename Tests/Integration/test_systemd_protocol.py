"""The daemon under systemd's protocols, without systemd: a notify-socket receiver, socket activation
with systemd-socket-activate, peer credentials, and the drain bound on SIGTERM."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "Tests" / "Emulator"))

from agent_harness import Agent, agent_binary  # noqa: E402
from harness import Emulator  # noqa: E402


class NotifyReceiver(threading.Thread):
    """A datagram socket standing in for systemd's NOTIFY_SOCKET; records (time, message) pairs."""

    def __init__(self, address: str):
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(("\0" + address[1:]) if address.startswith("@") else address)
        self.sock.settimeout(0.2)
        self.address = address
        self.messages: list[tuple[float, str]] = []
        self.running = True
        self.start()

    def run(self):
        while self.running:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def times(self, prefix: str) -> list[float]:
        return [t for t, m in list(self.messages) if any(line.startswith(prefix) for line in m.split("\n"))]

    def wait_for(self, prefix: str, timeout: float = 15.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.times(prefix)
            if found:
                return found[0]
            time.sleep(0.02)
        raise AssertionError(f"no {prefix!r} within {timeout}s; got {self.messages}")

    def stop(self):
        self.running = False
        self.sock.close()


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_ready_watchdog_status_and_stopping(tmp_path, abstract):
    address = f"@definite-agent-test-{os.getpid()}-{time.time_ns()}" if abstract else str(tmp_path / "notify.sock")
    receiver = NotifyReceiver(address)
    agent = Agent(tmp_path / "agent", env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1000000"})
    try:
        agent.start()
        ready = receiver.wait_for("READY=1")
        # READY=1 came only after the socket listened: a client can connect right away.
        with agent.connect() as conn:
            assert conn.request('{"a":1,"ack":"x"}')["ok"]
        time.sleep(3.2)
        pings = [t for t in receiver.times("WATCHDOG=1") if t > ready]
        # Half of WATCHDOG_USEC (1 s): about 6 pings in 3.2 s.
        assert 4 <= len(pings) <= 9, pings
        assert max(b - a for a, b in zip(pings, pings[1:])) < 0.9
        statuses = [m for _, m in receiver.messages if "STATUS=" in m]
        assert any("pending" in m for m in statuses), statuses
        agent.process.send_signal(signal.SIGTERM)
        receiver.wait_for("STOPPING=1", timeout=10)
        assert agent.process.wait(timeout=20) == 0
    finally:
        agent.finish()
        receiver.stop()


def test_a_stalled_spool_writer_stops_the_watchdog_pings(tmp_path):
    address = str(tmp_path / "notify.sock")
    receiver = NotifyReceiver(address)
    agent = Agent(tmp_path / "agent", env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1000000"})
    try:
        agent.start()
        receiver.wait_for("READY=1")
        # Another process holds the spool's write lock: the writer's next commit blocks (busy timeout).
        blocker = sqlite3.connect(agent.spool_path, timeout=1)
        blocker.execute("BEGIN IMMEDIATE")
        conn = agent.connect()
        conn.send('{"a":1,"ack":"stalled"}')
        stalled_at = time.monotonic()
        time.sleep(8)
        during = [t for t in receiver.times("WATCHDOG=1") if stalled_at + 6 < t < stalled_at + 8]
        assert during == [], "a wedged writer must stop the pings"
        blocker.rollback()
        blocker.close()
        reply = conn.reply()
        assert reply is not None  # answered (an error after the busy timeout, or ok)
        resumed = time.monotonic()
        time.sleep(2.5)
        assert [t for t in receiver.times("WATCHDOG=1") if t > resumed], "pings resume once the writer moves again"
        conn.close()
    finally:
        agent.finish()
        receiver.stop()


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None, reason="systemd-socket-activate is not installed")
def test_socket_activation_accepts_writes_before_the_daemon_runs(tmp_path):
    agent = Agent(tmp_path / "agent")
    socket_path = agent.socket_path
    launcher = subprocess.Popen(
        ["systemd-socket-activate", "-l", socket_path, "--fdname=intake",
         agent_binary(), "run", "--config", agent.config_path],
        stdout=open(agent.log_path, "ab"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(socket_path):
            assert time.monotonic() < deadline, "systemd-socket-activate did not listen"
            time.sleep(0.02)
        # The first connection starts the daemon; what the client writes meanwhile waits in the socket.
        with agent.connect() as conn:
            conn.send("".join(json.dumps({"i": i, "ack": str(i)}) + "\n" for i in range(1000)).encode())
            replies = [conn.reply() for _ in range(1000)]
        assert all(r and r["ok"] for r in replies)
        assert "passed by systemd" in agent.log()
        assert [r["i"] for r in agent.spooled_records()] == list(range(1000))
        # The daemon does not remove the socket it was given.
        launcher.send_signal(signal.SIGTERM)
        launcher.wait(timeout=20)
        assert os.path.exists(socket_path)
    finally:
        if launcher.poll() is None:
            launcher.kill()


def test_a_peer_whose_uid_is_not_allowed_is_refused(tmp_path):
    agent = Agent(tmp_path / "refused", extra_config="allow_uids = [4000000]\nallow_gids = [4000001]").start()
    try:
        with agent.connect() as conn:
            conn.send('{"a":1,"ack":"1"}')
            reply = conn.reply()
            assert reply["ok"] is False and reply["status"] == 403 and reply["code"] == "peer_not_allowed"
            assert f"uid {os.getuid()}" in reply["error"]
            assert conn.reply() is None
        assert agent.spooled_records() == []
        assert f"uid={os.getuid()}" in agent.log() and "pid=" in agent.log()
    finally:
        agent.finish()
    allowed = Agent(tmp_path / "allowed", extra_config=f"allow_uids = [4000000, {os.getuid()}]").start()
    try:
        with allowed.connect() as conn:
            assert conn.request('{"a":1,"ack":"1"}')["ok"]
    finally:
        allowed.finish()


def test_sigterm_with_a_slow_api_exits_within_the_drain_bound_and_loses_nothing(tmp_path):
    with Emulator() as emu:
        emu.control(latency_ms=8000)
        config = f"""
[api]
url = "{emu.stream_url}"
timeout = "30s"
[batch]
linger = "50ms"
[service]
drain_timeout = "1s"
"""
        agent = Agent(tmp_path / "agent", env={"DEFINITE_API_KEY": emu.api_key}, extra_config=config).start()
        try:
            with agent.connect() as conn:
                assert conn.request(json.dumps({"config": {"table": "bronze.slow"}, "data": [{"i": i} for i in range(50)], "ack": "a"}))["ok"]
            time.sleep(0.5)  # the batch is in flight, held by the emulator's latency
            started = time.monotonic()
            agent.process.send_signal(signal.SIGTERM)
            code = agent.process.wait(timeout=15)
            took = time.monotonic() - started
            assert code == 0
            assert took < 4, f"SIGTERM took {took:.1f}s with a 1s drain bound"
        finally:
            agent.finish()
        pending = agent.status()["pending"]
        assert pending == 50, "the unconfirmed batch stays in the spool"
        emu.control(latency_ms=0)
        agent.start()
        try:
            deadline = time.monotonic() + 30
            while agent.status()["pending"] and time.monotonic() < deadline:
                time.sleep(0.1)
            assert agent.status()["pending"] == 0
            # The slow request may have committed before the kill: at least once, never lost.
            assert emu.scalar("SELECT count(DISTINCT i) FROM lake.bronze.slow") == 50
        finally:
            agent.finish()


def test_a_sighup_during_start_up_reloads_without_announcing_the_daemon_ready_early(tmp_path):
    """A SIGHUP caught during start-up is handled once the operator-signals part starts, before the notifier
    (the last part) sends READY=1. It sent RELOADING=1 and READY=1 itself, so systemd heard "ready" before
    every part was up. The start is held here by an sqlite3 shell's exclusive lock on the spool."""
    address = str(tmp_path / "notify.sock")
    receiver = NotifyReceiver(address)
    agent = Agent(tmp_path / "agent", env={"NOTIFY_SOCKET": address})
    # A spool for the shell to lock: made by a first start.
    agent.start()
    assert agent.stop() == 0
    receiver.messages.clear()
    holder = sqlite3.connect(agent.spool_path, timeout=10, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        agent.spawn()
        time.sleep(1.0)  # the start waits on the lock (the early signal handler is in place by now)
        agent.process.send_signal(signal.SIGHUP)
        time.sleep(0.3)
        holder.execute("COMMIT")
        receiver.wait_for("READY=1")
        time.sleep(0.5)
        messages = [m for _, m in receiver.messages]
        first_ready = next(i for i, m in enumerate(messages) if "READY=1" in m)
        assert "STATUS=" in messages[first_ready], f"the first READY=1 is not the notifier's: {messages}"
        assert not any("RELOADING=1" in m for m in messages[:first_ready]), messages
        assert "SIGHUP: configuration reloaded" in agent.log_since_start(), agent.log_since_start()
        agent.process.send_signal(signal.SIGTERM)
        assert agent.process.wait(timeout=20) == 0
    finally:
        holder.close()
        agent.finish()
        receiver.stop()
